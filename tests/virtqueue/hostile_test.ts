/**
 * One negative test per way a driver can attack the device side. Each
 * asserts the specific error kind, that `pop` did not throw, that the queue
 * is broken for good, and that no byte of memory changed.
 *
 * `GuestMemory` maps whole buffers, so the canaries are not bytes around a
 * sub-range of one buffer: the guest is three regions with holes between
 * them (low canary region, main region, high canary region), the hostile
 * addresses aim at the holes, across region ends and past the top, and
 * every byte of every buffer (plus a neighbouring guest's buffer) is
 * compared before and after.
 */

import assert from "node:assert/strict";
import { GuestMemory } from "../../virtqueue/memory.ts";
import { type VirtqueueErrorKind } from "../../virtqueue/errors.ts";
import { DeviceQueue } from "../../virtqueue/device_queue.ts";
import { DriverQueue } from "../../virtqueue/driver_queue.ts";
import {
  layoutAt,
  type QueueLayout,
  type QueueOptions,
  VIRTQ_DESC_F_INDIRECT as INDIRECT,
  VIRTQ_DESC_F_NEXT as NEXT,
  VIRTQ_DESC_F_WRITE as WRITE,
} from "../../virtqueue/layout.ts";

const SIZE = 8;
const LOW = 0x8000; // low canary region: 0x8000..0x9000, then a hole up to MAIN
const MAIN = 0x10000; // the queue and the buffers: 0x10000..0x20000
const MAIN_END = 0x20000; // hole from here up to HIGH
const HIGH = 0x21000; // high canary region: 0x21000..0x22000, nothing above
const TOP = 0x22000;
const BUF = MAIN + 0x4000; // where the tests put legitimate buffers
const TABLE = MAIN + 0x8000; // where they put indirect tables

interface Rig {
  mem: GuestMemory;
  layout: QueueLayout;
  driver: DriverQueue;
  device: DeviceQueue;
  /** Every buffer that must not change: the three regions and another guest's memory. */
  buffers: Uint8Array[];
}

function rig(driverOptions: QueueOptions = {}, deviceOptions: QueueOptions = driverOptions): Rig {
  const low = new SharedArrayBuffer(0x1000);
  const main = new SharedArrayBuffer(MAIN_END - MAIN);
  const high = new SharedArrayBuffer(TOP - HIGH);
  const neighbour = new SharedArrayBuffer(0x1000);
  for (const b of [low, main, high, neighbour]) new Uint8Array(b).fill(0xa5);
  const mem = new GuestMemory([
    { guestAddr: LOW, buffer: low },
    { guestAddr: MAIN, buffer: main },
    { guestAddr: HIGH, buffer: high },
  ]);
  const { layout } = layoutAt(MAIN, SIZE);
  const driver = new DriverQueue(layout, driverOptions);
  driver.init(mem);
  return {
    mem,
    layout,
    driver,
    device: new DeviceQueue(layout, deviceOptions),
    buffers: [low, main, high, neighbour].map((b) => new Uint8Array(b)),
  };
}

function descAddr(r: Rig, i: number): number {
  return r.layout.desc + 16 * i;
}

/**
 * Pops on a queue the driver has made hostile and checks the outcome: no
 * throw, no chain, the queue broken with `kind` (message matching `text`),
 * still broken and silent afterwards, and not one byte written anywhere.
 */
function expectBroken(r: Rig, kind: VirtqueueErrorKind, text: RegExp): void {
  const before = r.buffers.map((b) => b.slice());
  let chain: unknown = "not called";
  assert.doesNotThrow(() => {
    chain = r.device.pop(r.mem);
  });
  assert.equal(chain, null);
  assert.equal(r.device.broken, true);
  const error = r.device.error;
  assert.ok(error !== null && error instanceof RangeError);
  assert.equal(error.kind, kind, error.message);
  assert.match(error.message, text);
  r.buffers.forEach((b, i) => assert.deepEqual(b, before[i], `pop wrote into buffer ${i}`));
  // Broken for good: even a well-formed chain now gets nothing, and the
  // device writes nothing (no used entry, no flag, no event index).
  r.driver.addOne(r.mem, BUF, 8, false);
  r.driver.publish(r.mem);
  const published = r.buffers.map((b) => b.slice());
  assert.doesNotThrow(() => {
    assert.equal(r.device.pop(r.mem), null);
    assert.equal(r.device.pending(r.mem), 0);
    r.device.pushUsed(r.mem, 0, 0);
    assert.equal(r.device.needsNotify(r.mem), false);
    r.device.disableNotifications(r.mem);
    assert.equal(r.device.enableNotifications(r.mem), false);
  });
  assert.equal(r.device.error, error, "the first error is kept");
  r.buffers.forEach((b, i) =>
    assert.deepEqual(b, published[i], `buffer ${i} changed after the break`)
  );
}

Deno.test("hostile: a descriptor loop ends at the time-to-live", () => {
  const r = rig();
  r.driver.add(r.mem, [{ addr: BUF, len: 4 }, { addr: BUF, len: 4 }, { addr: BUF, len: 4 }], []);
  r.driver.publish(r.mem);
  r.mem.setU16(descAddr(r, 2) + 12, NEXT); // 0 -> 1 -> 2 -> 0 -> ...
  r.mem.setU16(descAddr(r, 2) + 14, 0);
  expectBroken(
    r,
    "chain-too-long",
    /^descriptor chain at head 0 does not end within 8 descriptors/,
  );
});

Deno.test("hostile: a loop inside an indirect table ends at the table's time-to-live", () => {
  const r = rig({ indirect: true });
  r.driver.add(r.mem, [{ addr: BUF, len: 4 }, { addr: BUF, len: 4 }], [], { indirectAt: TABLE });
  r.driver.publish(r.mem);
  r.mem.setU16(TABLE + 16 + 12, NEXT); // entry 1 -> entry 0
  r.mem.setU16(TABLE + 16 + 14, 0);
  expectBroken(
    r,
    "chain-too-long",
    /^descriptor chain at head 0 does not end within 2 descriptors/,
  );
});

Deno.test("hostile: a next index past the descriptor table", () => {
  const r = rig();
  r.driver.add(r.mem, [{ addr: BUF, len: 4 }, { addr: BUF, len: 4 }], []);
  r.driver.publish(r.mem);
  r.mem.setU16(descAddr(r, 0) + 14, SIZE);
  expectBroken(r, "next-out-of-range", /next 8 is past the descriptor table of 8 entries/);
});

Deno.test("hostile: a next index past an indirect table", () => {
  const r = rig({ indirect: true });
  r.driver.add(r.mem, [{ addr: BUF, len: 4 }, { addr: BUF, len: 4 }], [], { indirectAt: TABLE });
  r.driver.publish(r.mem);
  r.mem.setU16(TABLE + 14, 2); // the table has entries 0 and 1
  expectBroken(r, "next-out-of-range", /next 2 is past the indirect table of 2 entries/);
});

Deno.test("hostile: a buffer past the top of guest memory", () => {
  const r = rig();
  r.driver.addOne(r.mem, TOP, 1, false);
  r.driver.publish(r.mem);
  expectBroken(r, "address", /buffer 0x22000\+1 is outside guest memory/);
});

Deno.test("hostile: a buffer running from a region into the hole after it", () => {
  const r = rig();
  r.driver.addOne(r.mem, MAIN_END - 8, 16, true);
  r.driver.publish(r.mem);
  expectBroken(r, "address", /buffer 0x1fff8\+16 is outside guest memory/);
});

Deno.test("hostile: a buffer inside a hole between regions", () => {
  const r = rig();
  r.driver.add(r.mem, [{ addr: BUF, len: 4 }], [{ addr: 0x9800, len: 4 }]);
  r.driver.publish(r.mem);
  expectBroken(r, "address", /buffer 0x9800\+4 is outside guest memory/);
});

Deno.test("hostile: a 64-bit buffer address beyond any guest address", () => {
  const r = rig();
  r.driver.addOne(r.mem, BUF, 16, false);
  r.driver.publish(r.mem);
  r.mem.setU64(descAddr(r, 0), 0xffff_ffff_ffff_fff0n); // + 16 would wrap to 0 in 64 bits
  expectBroken(r, "address", /buffer -1\+16 is outside guest memory/);
});

Deno.test("hostile: an indirect table outside guest memory", () => {
  const r = rig({ indirect: true });
  r.driver.add(r.mem, [{ addr: BUF, len: 4 }], [], { indirectAt: TABLE });
  r.driver.publish(r.mem);
  r.mem.setAddr64(descAddr(r, 0), MAIN_END - 8);
  expectBroken(r, "address", /buffer 0x1fff8\+16 is outside guest memory/);
});

Deno.test("hostile: lengths adding up to 2^32", () => {
  const r = rig();
  r.driver.add(r.mem, [{ addr: BUF, len: 0xffff_ffff }], [{ addr: BUF, len: 1 }]);
  r.driver.publish(r.mem);
  expectBroken(r, "length-overflow", /total length 4294967296 reaches 2\^32/);
});

Deno.test("hostile: an available idx more than a queue size ahead", () => {
  const r = rig();
  r.driver.addOne(r.mem, BUF, 4, false);
  r.driver.publish(r.mem);
  r.mem.storeU16(r.layout.avail + 2, SIZE + 1);
  expectBroken(
    r,
    "avail-idx-jump",
    /^available idx 9 is 9 entries ahead of 0, more than the queue size 8$/,
  );
});

Deno.test("hostile: an available idx that jumps breaks the queue through pending() too", () => {
  const r = rig();
  r.mem.storeU16(r.layout.avail + 2, 0xffff); // "behind" is a huge jump ahead modulo 2^16
  const before = r.buffers.map((b) => b.slice());
  assert.equal(r.device.pending(r.mem), 0);
  assert.equal(r.device.error?.kind, "avail-idx-jump");
  assert.equal(r.device.enableNotifications(r.mem), false);
  r.buffers.forEach((b, i) => assert.deepEqual(b, before[i]));
});

Deno.test("hostile: a head index past the descriptor table", () => {
  const r = rig();
  r.driver.addOne(r.mem, BUF, 4, false);
  r.driver.publish(r.mem);
  r.mem.setU16(r.layout.avail + 4, SIZE);
  expectBroken(
    r,
    "head-out-of-range",
    /^available ring names head 8, past the descriptor table of 8 entries$/,
  );
});

Deno.test("hostile: an indirect descriptor inside an indirect table", () => {
  const r = rig({ indirect: true });
  r.driver.add(r.mem, [{ addr: BUF, len: 4 }, { addr: TABLE, len: 16 }], [], { indirectAt: TABLE });
  r.driver.publish(r.mem);
  r.mem.setU16(TABLE + 16 + 12, INDIRECT);
  expectBroken(r, "nested-indirect", /indirect table entry 1 is itself INDIRECT/);
});

for (
  const [len, why] of [
    [40, "not a multiple of 16"],
    [0, "zero"],
    [(SIZE + 1) * 16, "more entries than the queue size"],
  ] as const
) {
  Deno.test(`hostile: an indirect table length that is ${why}`, () => {
    const r = rig({ indirect: true });
    r.driver.add(r.mem, [{ addr: BUF, len: 4 }], [], { indirectAt: TABLE });
    r.driver.publish(r.mem);
    r.mem.setU32(descAddr(r, 0) + 8, len);
    expectBroken(
      r,
      "indirect-length",
      new RegExp(
        `indirect table length ${len} is not a non-zero multiple of 16 of at most 128 bytes`,
      ),
    );
  });
}

Deno.test("hostile: INDIRECT together with NEXT", () => {
  const r = rig({ indirect: true });
  r.driver.add(r.mem, [{ addr: BUF, len: 4 }], [], { indirectAt: TABLE });
  r.driver.publish(r.mem);
  r.mem.setU16(descAddr(r, 0) + 12, INDIRECT | NEXT);
  expectBroken(r, "indirect-with-next", /descriptor 0 sets both INDIRECT and NEXT/);
});

Deno.test("hostile: an indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC", () => {
  const r = rig({ indirect: true }, { indirect: false });
  r.driver.add(r.mem, [{ addr: BUF, len: 4 }], [], { indirectAt: TABLE });
  r.driver.publish(r.mem);
  expectBroken(
    r,
    "indirect-not-negotiated",
    /descriptor 0 is INDIRECT but VIRTIO_RING_F_INDIRECT_DESC/,
  );
});

Deno.test("hostile: a readable descriptor after a writable one", () => {
  const r = rig();
  r.driver.add(r.mem, [{ addr: BUF, len: 4 }, { addr: BUF, len: 4 }], []);
  r.driver.publish(r.mem);
  r.mem.setU16(descAddr(r, 0) + 12, NEXT | WRITE);
  expectBroken(r, "readable-after-writable", /buffer 1 is device-readable after a writable one/);
});

Deno.test("hostile: a readable indirect entry after a writable direct descriptor", () => {
  const r = rig({ indirect: true });
  r.driver.add(r.mem, [{ addr: BUF, len: 4 }], [], { indirectAt: TABLE });
  r.driver.publish(r.mem);
  // Turn the chain into: writable direct descriptor 1 -> indirect descriptor 0.
  r.mem.setAddr64(descAddr(r, 1), BUF + 64);
  r.mem.setU32(descAddr(r, 1) + 8, 4);
  r.mem.setU16(descAddr(r, 1) + 12, WRITE | NEXT);
  r.mem.setU16(descAddr(r, 1) + 14, 0);
  r.mem.setU16(r.layout.avail + 4, 1);
  expectBroken(r, "readable-after-writable", /buffer 1 is device-readable after a writable one/);
});
