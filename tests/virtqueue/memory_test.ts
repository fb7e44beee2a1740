import assert from "node:assert/strict";
import { GuestMemory, GuestMemoryError } from "../../virtqueue/memory.ts";

Deno.test("guest memory reads and writes little-endian values at guest addresses", () => {
  const sab = new SharedArrayBuffer(256);
  const mem = GuestMemory.fromBuffer(sab, 0x1000);
  mem.setU32(0x1004, 0x11223344);
  assert.deepEqual([...new Uint8Array(sab, 4, 4)], [0x44, 0x33, 0x22, 0x11]);
  mem.setU64(0x1008, 0x0102030405060708n);
  assert.equal(mem.u64(0x1008), 0x0102030405060708n);
  mem.setAddr64(0x1010, 2 ** 40 + 5);
  assert.equal(mem.addr64(0x1010), 2 ** 40 + 5);
  mem.setU64(0x1010, 0xffff_ffff_ffff_ffffn);
  assert.equal(mem.addr64(0x1010), -1, "addresses beyond 2^53 read as -1");
  mem.storeU16(0x1020, 0xbeef);
  assert.equal(mem.loadU16(0x1020), 0xbeef);
  assert.equal(mem.u16(0x1020), 0xbeef);
  mem.write(0x10fe, new Uint8Array([9, 8]));
  assert.deepEqual([...mem.bytes(0x10fe, 2)], [9, 8]);
  assert.equal(mem.size, 256);
});

Deno.test("guest memory rejects every access outside it and touches nothing", () => {
  const sab = new SharedArrayBuffer(64);
  const all = new Uint8Array(sab).fill(0xaa);
  const mem = new GuestMemory([{ guestAddr: 0x100, buffer: sab }]);
  const outside: [string, () => unknown][] = [
    ["below", () => mem.u8(0xff)],
    ["past end", () => mem.u32(0x13e)],
    ["straddling end", () => mem.setU64(0x13c, 1n)],
    ["negative", () => mem.bytes(-1, 1)],
    ["NaN", () => mem.u16(NaN)],
    ["fraction", () => mem.bytes(256.5, 1)],
    ["huge length", () => mem.bytes(0x100, 2 ** 60)],
    ["unaligned atomic", () => mem.storeU16(0x101, 1)],
  ];
  for (const [what, access] of outside) {
    assert.throws(
      access,
      (e: unknown) => e instanceof GuestMemoryError && e instanceof RangeError,
      what,
    );
  }
  assert.ok(all.every((b) => b === 0xaa), "no byte changed");
  assert.throws(() => mem.u32(0x200), { message: "guest range 0x200+4 is outside guest memory" });
  assert.equal(mem.contains(0x140, 0), true, "an empty range at the end is inside");
  assert.equal(mem.contains(0x13f, 2), false);
});

Deno.test("guest memory with several regions finds each and refuses overlaps", () => {
  const a = new SharedArrayBuffer(32), b = new SharedArrayBuffer(32);
  const mem = new GuestMemory([{ guestAddr: 0x2000, buffer: b }, { guestAddr: 0x1000, buffer: a }]);
  mem.setU8(0x1000, 1);
  mem.setU8(0x2000, 2);
  assert.equal(new Uint8Array(a)[0], 1);
  assert.equal(new Uint8Array(b)[0], 2);
  assert.deepEqual(mem.regions, [{ guestAddr: 0x1000, size: 32 }, { guestAddr: 0x2000, size: 32 }]);
  assert.throws(() => mem.bytes(0x101f, 2), GuestMemoryError, "a range across a gap is refused");
  assert.throws(
    () => new GuestMemory([{ guestAddr: 0, buffer: a }, { guestAddr: 16, buffer: b }]),
    { name: "RangeError", message: /overlap/ },
  );
  assert.throws(() => new GuestMemory([{ guestAddr: 0, buffer: new ArrayBuffer(0) }]), /size 0/);
  assert.throws(() => new GuestMemory([]), /at least one region/);
});

Deno.test("32-bit atomics set and take doorbell bits", () => {
  const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(64), 0x40);
  assert.equal(mem.orU32(0x48, 1 << 3), 0);
  assert.equal(mem.orU32(0x48, 1 << 31), 1 << 3);
  assert.equal(mem.exchangeU32(0x48, 0) >>> 0, (1 << 3 | 1 << 31) >>> 0);
  assert.equal(mem.loadU32(0x48), 0);
  mem.storeU32(0x4c, 7);
  assert.equal(mem.u32(0x4c), 7);
  assert.throws(() => mem.orU32(0x4a, 1), /not 4-byte aligned/);
  assert.throws(() => mem.loadU32(0x80), GuestMemoryError);
});
