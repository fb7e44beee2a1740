import assert from "node:assert/strict";
import { GuestMemory } from "../../virtqueue/memory.ts";
import { VirtqueueError } from "../../virtqueue/errors.ts";
import { DescriptorChain } from "../../virtqueue/descriptor_chain.ts";
import {
  VIRTQ_DESC_F_INDIRECT as INDIRECT,
  VIRTQ_DESC_F_NEXT as NEXT,
  VIRTQ_DESC_F_WRITE as WRITE,
} from "../../virtqueue/layout.ts";

const BASE = 0x10000;
const TABLE = BASE; // descriptor table of the tests, 16 entries
const SIZE = 16;

function setup(bytes = 0x10000): { mem: GuestMemory; table: DataView } {
  const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(bytes), BASE);
  const b = mem.bytes(TABLE, SIZE * 16);
  return { mem, table: new DataView(b.buffer, b.byteOffset, b.byteLength) };
}

function desc(
  mem: GuestMemory,
  at: number,
  i: number,
  addr: number,
  len: number,
  flags: number,
  next = 0,
): void {
  const a = at + 16 * i;
  mem.setAddr64(a, addr);
  mem.setU32(a + 8, len);
  mem.setU16(a + 12, flags);
  mem.setU16(a + 14, next);
}

function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed) & 0xff;
  return out;
}

function isKind(kind: string): (e: unknown) => boolean {
  return (e: unknown) => e instanceof VirtqueueError && e.kind === kind;
}

Deno.test("fill follows next links and splits readable from writable buffers", () => {
  const { mem, table } = setup();
  // head 5 -> 2 -> 9 -> 0: two readable, two writable, out of table order.
  desc(mem, TABLE, 5, BASE + 0x1000, 10, NEXT, 2);
  desc(mem, TABLE, 2, BASE + 0x2000, 20, NEXT, 9);
  desc(mem, TABLE, 9, BASE + 0x3000, 30, NEXT | WRITE, 0);
  desc(mem, TABLE, 0, BASE + 0x4000, 40, WRITE);
  const chain = new DescriptorChain(2);
  chain.fill(mem, table, SIZE, 5, false);
  assert.equal(chain.head, 5);
  assert.equal(chain.count, 4);
  assert.equal(chain.readableCount, 2);
  assert.equal(chain.writableCount, 2);
  assert.equal(chain.readableBytes, 30);
  assert.equal(chain.writableBytes, 70);
  assert.deepEqual(chain.readable(), [{ addr: BASE + 0x1000, len: 10 }, {
    addr: BASE + 0x2000,
    len: 20,
  }]);
  assert.deepEqual(chain.writable(), [{ addr: BASE + 0x3000, len: 30 }, {
    addr: BASE + 0x4000,
    len: 40,
  }]);
  assert.deepEqual([0, 1, 2, 3, 4].map((i) => chain.isWritable(i)), [
    false,
    false,
    true,
    true,
    false,
  ]);
  assert.equal(chain.memory, mem);
});

Deno.test("a chain copies the descriptors: rewriting the table afterwards changes nothing", () => {
  const { mem, table } = setup();
  desc(mem, TABLE, 0, BASE + 0x1000, 8, 0);
  const chain = new DescriptorChain();
  chain.fill(mem, table, SIZE, 0, false);
  desc(mem, TABLE, 0, 0xdead0000, 0xffff, WRITE);
  assert.deepEqual(chain.readable(), [{ addr: BASE + 0x1000, len: 8 }]);
  assert.equal(chain.writableCount, 0);
});

Deno.test("a chain object grows for long chains and is reused without stale contents", () => {
  const { mem, table } = setup();
  for (let i = 0; i < SIZE; i++) {
    desc(mem, TABLE, i, BASE + 0x1000 + i * 16, 16, i < SIZE - 1 ? NEXT : 0, i + 1);
  }
  const chain = new DescriptorChain(1);
  chain.fill(mem, table, SIZE, 0, false);
  assert.equal(chain.count, SIZE, "a chain exactly as long as the table is allowed");
  assert.equal(chain.readableBytes, SIZE * 16);
  assert.equal(chain.addr(SIZE - 1), BASE + 0x1000 + (SIZE - 1) * 16);
  desc(mem, TABLE, 3, BASE + 0x8000, 5, WRITE);
  chain.fill(mem, table, SIZE, 3, false);
  assert.equal(chain.count, 1);
  assert.equal(chain.readableCount, 0);
  assert.equal(chain.readableBytes, 0);
  assert.deepEqual(chain.writable(), [{ addr: BASE + 0x8000, len: 5 }]);
});

Deno.test("an indirect table after direct descriptors forms one chain; its WRITE flag is ignored", () => {
  const { mem, table } = setup();
  const ind = BASE + 0x6000;
  desc(mem, TABLE, 1, BASE + 0x1000, 4, NEXT, 7);
  // The spec says the device ignores WRITE on the descriptor naming a table.
  desc(mem, TABLE, 7, ind, 3 * 16, INDIRECT | WRITE);
  desc(mem, ind, 0, BASE + 0x2000, 6, NEXT, 2);
  desc(mem, ind, 2, BASE + 0x3000, 7, NEXT | WRITE, 1);
  desc(mem, ind, 1, BASE + 0x4000, 8, WRITE);
  const chain = new DescriptorChain();
  chain.fill(mem, table, SIZE, 1, true);
  assert.deepEqual(chain.readable(), [{ addr: BASE + 0x1000, len: 4 }, {
    addr: BASE + 0x2000,
    len: 6,
  }]);
  assert.deepEqual(chain.writable(), [{ addr: BASE + 0x3000, len: 7 }, {
    addr: BASE + 0x4000,
    len: 8,
  }]);
});

Deno.test("the reader copies across buffers, zero-length ones included, in any chunk sizes", () => {
  const { mem, table } = setup();
  const lens = [5, 0, 300, 1, 17];
  let addr = BASE + 0x1000;
  const all: number[] = [];
  lens.forEach((len, i) => {
    const bytes = pattern(len, i * 7 + 1);
    mem.write(addr, bytes);
    all.push(...bytes);
    desc(mem, TABLE, i, addr, len, i < lens.length - 1 ? NEXT : 0, i + 1);
    addr += len + 13; // gaps between buffers
  });
  desc(mem, TABLE, lens.length - 1, addr - 17 - 13, 17, NEXT, 5);
  desc(mem, TABLE, 5, BASE + 0x5000, 64, WRITE);
  const chain = new DescriptorChain();
  chain.fill(mem, table, SIZE, 0, false);
  assert.equal(chain.readableBytes, all.length);
  const r = chain.reader;
  const got: number[] = [];
  for (const n of [3, 4, 0, 250, 2, 60, 4]) {
    const part = new Uint8Array(n);
    r.read(part);
    got.push(...part);
  }
  assert.equal(r.remaining, 0);
  assert.equal(r.position, all.length);
  assert.deepEqual(got, all);
  r.rewind();
  r.skip(6);
  const one = new Uint8Array(1);
  r.read(one);
  assert.equal(one[0], all[6]);
});

Deno.test("the reader refuses to read past the readable bytes and reads nothing then", () => {
  const { mem, table } = setup();
  mem.write(BASE + 0x1000, pattern(8, 3));
  desc(mem, TABLE, 0, BASE + 0x1000, 8, NEXT, 1);
  desc(mem, TABLE, 1, BASE + 0x2000, 100, WRITE);
  const chain = new DescriptorChain();
  chain.fill(mem, table, SIZE, 0, false);
  const r = chain.reader;
  r.skip(5);
  const dst = new Uint8Array(4).fill(0xee);
  assert.throws(
    () => r.read(dst),
    (e: unknown) =>
      isKind("overrun")(e) &&
      (e as Error).message === "4 bytes wanted but only 3 readable bytes remain in the chain",
  );
  assert.deepEqual([...dst], [0xee, 0xee, 0xee, 0xee], "nothing was copied");
  assert.equal(r.position, 5);
  assert.throws(() => r.skip(4), isKind("overrun"));
  assert.throws(() => r.skip(-1), isKind("overrun"));
});

Deno.test("the writer fills writable buffers in order and its position is the used length", () => {
  const { mem, table } = setup();
  desc(mem, TABLE, 0, BASE + 0x1000, 4, NEXT, 1); // readable: the writer must skip it
  desc(mem, TABLE, 1, BASE + 0x2000, 3, NEXT | WRITE, 2);
  desc(mem, TABLE, 2, BASE + 0x3000, 0, NEXT | WRITE, 3);
  desc(mem, TABLE, 3, BASE + 0x4000, 400, WRITE);
  const chain = new DescriptorChain();
  chain.fill(mem, table, SIZE, 0, false);
  const data = pattern(320, 9);
  const w = chain.writer;
  w.write(data.subarray(0, 2));
  w.write(data.subarray(2, 300)); // crosses into the big buffer, over the small-copy limit
  w.skip(5);
  w.write(data.subarray(300, 320));
  assert.equal(w.position, 325);
  assert.equal(w.remaining, 403 - 325);
  assert.deepEqual([...mem.bytes(BASE + 0x1000, 4)], [0, 0, 0, 0], "readable buffer untouched");
  assert.deepEqual([...mem.bytes(BASE + 0x2000, 3)], [...data.subarray(0, 3)]);
  assert.deepEqual([...mem.bytes(BASE + 0x4000, 297)], [...data.subarray(3, 300)]);
  assert.deepEqual(
    [...mem.bytes(BASE + 0x4000 + 297, 5)],
    [0, 0, 0, 0, 0],
    "skipped bytes untouched",
  );
  assert.deepEqual([...mem.bytes(BASE + 0x4000 + 302, 20)], [...data.subarray(300, 320)]);
});

Deno.test("the writer refuses to write past the writable bytes and writes nothing then", () => {
  const { mem, table } = setup();
  desc(mem, TABLE, 0, BASE + 0x2000, 6, NEXT | WRITE, 1);
  desc(mem, TABLE, 1, BASE + 0x3000, 6, WRITE);
  mem.fill(BASE + 0x2000, 0x2000, 0x5a);
  const chain = new DescriptorChain();
  chain.fill(mem, table, SIZE, 0, false);
  assert.throws(
    () => chain.writer.write(new Uint8Array(13)),
    (e: unknown) =>
      isKind("overrun")(e) &&
      (e as Error).message === "13 bytes wanted but only 12 writable bytes remain in the chain",
  );
  assert.ok(mem.bytes(BASE + 0x2000, 0x2000).every((b) => b === 0x5a), "no byte written");
  assert.equal(chain.writer.position, 0);
  assert.throws(() => new DescriptorChain().reader.read(new Uint8Array(1)), isKind("overrun"));
});

Deno.test("large reads and writes take the bulk path and move the same bytes", () => {
  const { mem, table } = setup(0x40000);
  const data = pattern(0x9000, 77);
  mem.write(BASE + 0x10000, data.subarray(0, 0x5000));
  mem.write(BASE + 0x18000, data.subarray(0x5000));
  desc(mem, TABLE, 0, BASE + 0x10000, 0x5000, NEXT, 1);
  desc(mem, TABLE, 1, BASE + 0x18000, 0x4000, NEXT, 2);
  desc(mem, TABLE, 2, BASE + 0x20000, 0x9000, WRITE);
  const chain = new DescriptorChain();
  chain.fill(mem, table, SIZE, 0, false);
  const got = new Uint8Array(0x9000);
  chain.reader.read(got);
  assert.deepEqual(got, data);
  chain.writer.write(got);
  assert.deepEqual(mem.bytes(BASE + 0x20000, 0x9000), data);
});

Deno.test("refilling a chain rewinds its reader and writer", () => {
  const { mem, table } = setup();
  mem.write(BASE + 0x1000, pattern(4, 1));
  mem.write(BASE + 0x1100, pattern(4, 2));
  desc(mem, TABLE, 0, BASE + 0x1000, 4, NEXT, 1);
  desc(mem, TABLE, 1, BASE + 0x2000, 4, WRITE);
  desc(mem, TABLE, 2, BASE + 0x1100, 4, NEXT, 3);
  desc(mem, TABLE, 3, BASE + 0x2100, 4, WRITE);
  const chain = new DescriptorChain();
  chain.fill(mem, table, SIZE, 0, false);
  chain.reader.read(new Uint8Array(4));
  chain.writer.write(new Uint8Array([1, 2]));
  chain.fill(mem, table, SIZE, 2, false);
  assert.equal(chain.reader.position, 0);
  assert.equal(chain.writer.position, 0);
  const got = new Uint8Array(4);
  chain.reader.read(got);
  assert.deepEqual(got, pattern(4, 2));
  chain.writer.write(new Uint8Array([9, 9, 9, 9]));
  assert.deepEqual([...mem.bytes(BASE + 0x2100, 4)], [9, 9, 9, 9]);
  assert.deepEqual([...mem.bytes(BASE + 0x2000, 4)], [1, 2, 0, 0]);
});

Deno.test("the reader and writer stay inside the buffers checked at fill, whatever the guest does next", () => {
  // Both buffers end exactly at the end of guest memory; the copies go
  // straight to the region found at fill, so their bounds are the only guard.
  const { mem, table } = setup(0x10000);
  const end = BASE + 0x10000;
  mem.write(end - 0x100 - 8, pattern(8, 3));
  desc(mem, TABLE, 0, end - 0x100 - 8, 8, NEXT, 1);
  desc(mem, TABLE, 1, end - 8, 8, WRITE);
  const chain = new DescriptorChain();
  chain.fill(mem, table, SIZE, 0, false);
  // The guest moves and grows both buffers after the pop: nothing follows it.
  desc(mem, TABLE, 0, 0, 0x7fffffff, NEXT, 1);
  desc(mem, TABLE, 1, end + 0x1000, 0x1000, WRITE);
  const got = new Uint8Array(6);
  chain.reader.read(got);
  assert.deepEqual(got, pattern(8, 3).subarray(0, 6));
  assert.throws(() => chain.reader.read(new Uint8Array(3)), isKind("overrun"));
  assert.equal(chain.reader.position, 6, "a refused read reads nothing");
  chain.reader.read(got.subarray(0, 2));
  assert.deepEqual(got.subarray(0, 2), pattern(8, 3).subarray(6, 8));
  chain.writer.write(new Uint8Array(8).fill(0x5a));
  assert.throws(() => chain.writer.write(new Uint8Array(1)), isKind("overrun"));
  assert.deepEqual([...mem.bytes(end - 8, 8)], new Array(8).fill(0x5a));
  assert.equal(chain.writer.position, 8);
});

Deno.test("a fill that fails leaves the chain empty: nothing unchecked can be read or written", () => {
  const { mem, table } = setup();
  mem.write(BASE + 0x1000, pattern(8, 4));
  desc(mem, TABLE, 0, BASE + 0x1000, 8, 0);
  // One good readable buffer, then one outside memory: the walk has pushed
  // the first before the address check fails.
  desc(mem, TABLE, 1, BASE + 0x1000, 8, NEXT, 2);
  desc(mem, TABLE, 2, 0x7000_0000, 8, WRITE);
  // A single descriptor outside memory (the one-descriptor path).
  desc(mem, TABLE, 3, 0x7000_0000, 8, 0);
  const chain = new DescriptorChain();
  for (const bad of [1, 3]) {
    chain.fill(mem, table, SIZE, 0, false);
    chain.reader.read(new Uint8Array(2)); // a reader part-way through the good chain
    assert.throws(() => chain.fill(mem, table, SIZE, bad, false), isKind("address"));
    assert.equal(chain.count, 0, `chain ${bad}`);
    assert.equal(chain.readableBytes + chain.writableBytes, 0);
    assert.equal(chain.reader.remaining, 0);
    assert.throws(() => chain.reader.read(new Uint8Array(1)), isKind("overrun"));
    assert.throws(() => chain.writer.write(new Uint8Array(1)), isKind("overrun"));
  }
});

Deno.test("a writer left unused while the generations come round is still rewound", () => {
  const { mem, table } = setup();
  desc(mem, TABLE, 0, BASE + 0x1000, 8, NEXT, 1);
  desc(mem, TABLE, 1, BASE + 0x2000, 8, WRITE);
  const chain = new DescriptorChain();
  chain.fill(mem, table, SIZE, 0, false);
  chain.writer.write(new Uint8Array(4).fill(1)); // the writer stands at byte 4 at generation g
  const g = chain.generation;
  // The guest posts the same chain until the generation comes round to g.
  let fills = 0;
  do {
    chain.fill(mem, table, SIZE, 0, false);
    fills++;
  } while (chain.generation !== g && fills < 1 << 22);
  assert.equal(chain.generation, g, `the generation came round after ${fills} fills`);
  // A fresh chain: the writer starts again at its first writable byte.
  assert.equal(chain.writer.position, 0);
  chain.writer.write(new Uint8Array(8).fill(2));
  assert.deepEqual([...mem.bytes(BASE + 0x2000, 8)], new Array(8).fill(2));
});

Deno.test("an empty chain has no memory yet", () => {
  const chain = new DescriptorChain();
  assert.equal(chain.head, -1);
  assert.equal(chain.count, 0);
  assert.throws(() => chain.memory, TypeError);
});

Deno.test("the reader and writer find each buffer's region in multi-region memory", () => {
  const mem = new GuestMemory([
    { guestAddr: BASE, buffer: new SharedArrayBuffer(0x1000) },
    { guestAddr: 0x40000, buffer: new SharedArrayBuffer(0x1000) },
    { guestAddr: 0x80000, buffer: new SharedArrayBuffer(0x1000) },
  ]);
  const b = mem.bytes(TABLE, SIZE * 16);
  const table = new DataView(b.buffer, b.byteOffset, b.byteLength);
  mem.write(0x80010, pattern(20, 5));
  mem.write(0x40020, pattern(12, 6));
  desc(mem, TABLE, 0, 0x80010, 20, NEXT, 1);
  desc(mem, TABLE, 1, 0x40020, 12, NEXT, 2);
  desc(mem, TABLE, 2, 0x40800, 8, NEXT | WRITE, 3);
  desc(mem, TABLE, 3, 0x80800, 8, WRITE);
  const chain = new DescriptorChain();
  chain.fill(mem, table, SIZE, 0, false);
  const got = new Uint8Array(32);
  chain.reader.read(got);
  assert.deepEqual(got, new Uint8Array([...pattern(20, 5), ...pattern(12, 6)]));
  chain.writer.write(pattern(16, 7));
  assert.deepEqual(mem.bytes(0x40800, 8), pattern(16, 7).subarray(0, 8));
  assert.deepEqual(mem.bytes(0x80800, 8), pattern(16, 7).subarray(8));
});
