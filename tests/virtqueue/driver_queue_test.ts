import assert from "node:assert/strict";
import { GuestMemory } from "../../virtqueue/memory.ts";
import { VirtqueueError } from "../../virtqueue/errors.ts";
import { DriverQueue } from "../../virtqueue/driver_queue.ts";
import {
  layoutAt,
  queueAreaSizes,
  type QueueLayout,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT as INDIRECT,
  VIRTQ_DESC_F_NEXT as NEXT,
  VIRTQ_DESC_F_WRITE as WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
} from "../../virtqueue/layout.ts";

const BASE = 0x10000;

function setup(size = 8, options = {}): { mem: GuestMemory; layout: QueueLayout; q: DriverQueue } {
  const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(0x10000), BASE);
  const { layout } = layoutAt(BASE + 0x100, size);
  const q = new DriverQueue(layout, options);
  q.init(mem);
  return { mem, layout, q };
}

interface RawDesc {
  addr: number;
  len: number;
  flags: number;
  next: number;
}

function readDesc(mem: GuestMemory, at: number, i: number): RawDesc {
  const a = at + 16 * i;
  return {
    addr: mem.addr64(a),
    len: mem.u32(a + 8),
    flags: mem.u16(a + 12),
    next: mem.u16(a + 14),
  };
}

/** What a device would do: write a used entry and bump used idx. */
function deviceUses(mem: GuestMemory, layout: QueueLayout, id: number, len: number): void {
  const idx = mem.u16(layout.used + 2);
  const e = layout.used + 4 + 8 * (idx % layout.size);
  mem.setU32(e, id);
  mem.setU32(e + 4, len);
  mem.storeU16(layout.used + 2, (idx + 1) & 0xffff);
}

function isKind(kind: string, text?: string): (e: unknown) => boolean {
  return (e: unknown) =>
    e instanceof VirtqueueError && e.kind === kind && (text === undefined || e.message === text);
}

Deno.test("init zeroes the three areas and frees every descriptor", () => {
  const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(0x10000), BASE);
  mem.fill(BASE, 0x10000, 0xff);
  const { layout, bytes } = layoutAt(BASE + 0x100, 16);
  const q = new DriverQueue(layout);
  q.init(mem);
  const sizes = queueAreaSizes(16);
  assert.ok(mem.bytes(layout.desc, sizes.desc).every((b) => b === 0));
  assert.ok(mem.bytes(layout.avail, sizes.avail).every((b) => b === 0));
  assert.ok(mem.bytes(layout.used, sizes.used).every((b) => b === 0));
  assert.equal(mem.u8(BASE + 0xff), 0xff, "byte before the queue untouched");
  assert.equal(mem.u8(BASE + 0x100 + bytes), 0xff, "byte after the queue untouched");
  assert.equal(q.numFree, 16);
  assert.deepEqual(q.state, {
    freeHead: 0,
    numFree: 16,
    nextAvail: 0,
    publishedAvail: 0,
    lastUsed: 0,
    outstanding: 0,
    interruptsDisabled: false,
  });
});

Deno.test("add writes a linked chain and an available entry; publish exposes it with the idx", () => {
  const { mem, layout, q } = setup();
  const head = q.add(mem, [{ addr: 0x12000, len: 10 }, { addr: 0x12100, len: 20 }], [{
    addr: 2 ** 40 + 0x100,
    len: 0xffffffff,
  }]);
  assert.equal(head, 0);
  assert.deepEqual(readDesc(mem, layout.desc, 0), { addr: 0x12000, len: 10, flags: NEXT, next: 1 });
  assert.deepEqual(readDesc(mem, layout.desc, 1), { addr: 0x12100, len: 20, flags: NEXT, next: 2 });
  assert.deepEqual(readDesc(mem, layout.desc, 2), {
    addr: 2 ** 40 + 0x100,
    len: 0xffffffff,
    flags: WRITE,
    next: 0,
  });
  assert.equal(mem.u16(layout.avail + 4), 0, "ring[0] = head 0");
  assert.equal(mem.u16(layout.avail + 2), 0, "not visible before publish");
  assert.equal(q.numFree, 5);
  assert.equal(q.publish(mem), true, "used flags 0: notify");
  assert.equal(mem.u16(layout.avail + 2), 1);
  assert.equal(q.publish(mem), false, "nothing new: no notification");
  const h2 = q.addOne(mem, 0x13000, 64, true);
  assert.equal(h2, 3);
  assert.deepEqual(readDesc(mem, layout.desc, 3), {
    addr: 0x13000,
    len: 64,
    flags: WRITE,
    next: 0,
  });
  assert.equal(mem.u16(layout.avail + 6), 3);
  mem.setU16(layout.used, VIRTQ_USED_F_NO_NOTIFY);
  assert.equal(q.publish(mem), false, "device set NO_NOTIFY");
  assert.equal(mem.u16(layout.avail + 2), 2);
});

Deno.test("several adds become visible at once with one publish", () => {
  const { mem, layout, q } = setup();
  for (let i = 0; i < 5; i++) q.addOne(mem, 0x12000 + i * 64, 64, false);
  assert.equal(mem.u16(layout.avail + 2), 0);
  assert.equal(q.state.nextAvail, 5);
  assert.equal(q.publish(mem), true);
  assert.equal(mem.u16(layout.avail + 2), 5);
  assert.deepEqual([0, 1, 2, 3, 4].map((i) => mem.u16(layout.avail + 4 + 2 * i)), [0, 1, 2, 3, 4]);
});

Deno.test("add refuses a chain that does not fit and names the counts; nothing changes", () => {
  const { mem, layout, q } = setup(4);
  q.add(mem, [{ addr: 0x12000, len: 1 }, { addr: 0x12000, len: 1 }], []);
  const before = q.state;
  const availBefore = mem.bytes(layout.avail, 14).slice();
  assert.throws(
    () =>
      q.add(mem, [{ addr: 0x12000, len: 1 }], [{ addr: 0x12000, len: 1 }, {
        addr: 0x12000,
        len: 1,
      }]),
    (e: unknown) =>
      e instanceof RangeError &&
      e.message ===
        "chain of 1 readable + 2 writable buffers needs 3 descriptors but only 2 are free",
  );
  assert.throws(
    () => q.add(mem, [], []),
    (e: unknown) =>
      e instanceof RangeError &&
      /chain of 0 readable \+ 0 writable buffers is empty/.test(e.message),
  );
  assert.throws(
    () => q.add(mem, [{ addr: -1, len: 1 }], []),
    /readable buffer 0: address -1 is not/,
  );
  assert.throws(
    () => q.add(mem, [], [{ addr: 0, len: 2 ** 32 }]),
    /writable buffer 0: length 4294967296 is not a u32/,
  );
  assert.throws(() => q.addOne(mem, 0.5, 1, false), /buffer address 0.5 is not a guest address/);
  assert.throws(() => q.addOne(mem, 0, -1, false), /buffer length -1 is not a u32/);
  assert.deepEqual(q.state, before);
  assert.deepEqual(mem.bytes(layout.avail, 14), availBefore);
  q.addOne(mem, 0x12000, 1, false);
  q.addOne(mem, 0x12000, 1, false);
  assert.throws(
    () => q.addOne(mem, 0x12000, 1, false),
    (e: unknown) =>
      e instanceof RangeError &&
      e.message === "chain of 1 buffer needs 1 descriptor but 0 are free",
  );
});

Deno.test("add with indirectAt writes the table in guest memory and takes one descriptor", () => {
  const { mem, layout, q } = setup(8, { indirect: true });
  const table = 0x14000;
  const head = q.add(mem, [{ addr: 0x12000, len: 7 }], [{ addr: 0x12100, len: 8 }, {
    addr: 0x12200,
    len: 9,
  }], {
    indirectAt: table,
  });
  assert.equal(q.numFree, 7);
  assert.deepEqual(readDesc(mem, layout.desc, head), {
    addr: table,
    len: 48,
    flags: INDIRECT,
    next: 0,
  });
  assert.deepEqual(readDesc(mem, table, 0), { addr: 0x12000, len: 7, flags: NEXT, next: 1 });
  assert.deepEqual(readDesc(mem, table, 1), {
    addr: 0x12100,
    len: 8,
    flags: NEXT | WRITE,
    next: 2,
  });
  assert.deepEqual(readDesc(mem, table, 2), { addr: 0x12200, len: 9, flags: WRITE, next: 0 });
  const plain = setup(8);
  assert.throws(
    () => plain.q.add(plain.mem, [{ addr: 0x12000, len: 1 }], [], { indirectAt: table }),
    (e: unknown) =>
      e instanceof TypeError &&
      /indirectAt 0x14000 needs VIRTIO_RING_F_INDIRECT_DESC/.test(e.message),
  );
  const nine = Array.from({ length: 9 }, () => ({ addr: 0x12000, len: 1 }));
  assert.throws(
    () => q.add(mem, nine, [], { indirectAt: table }),
    /does not fit an indirect table of at most 8/,
  );
  assert.throws(
    () => q.add(mem, [{ addr: 0x12000, len: 1 }], [], { indirectAt: 0x30000 }),
    RangeError,
  );
  assert.equal(q.numFree, 7, "a table outside guest memory takes no descriptor");
});

Deno.test("popUsed returns chains in used order and recycles their descriptors", () => {
  const { mem, layout, q } = setup(4);
  const a = q.add(mem, [{ addr: 0x12000, len: 4 }], [{ addr: 0x12100, len: 100 }]);
  const b = q.addOne(mem, 0x12200, 50, true);
  const c = q.addOne(mem, 0x12300, 8, false);
  q.publish(mem);
  assert.equal(q.numFree, 0);
  assert.equal(q.popUsed(mem), null);
  deviceUses(mem, layout, b, 50);
  deviceUses(mem, layout, a, 99);
  assert.deepEqual(q.popUsed(mem), { id: b, len: 50 });
  assert.equal(q.numFree, 1);
  assert.equal(q.popUsedId(mem), a);
  assert.equal(q.usedLen, 99);
  assert.equal(q.numFree, 3);
  assert.equal(q.popUsed(mem), null);
  assert.equal(q.outstanding, 1);
  // The freed descriptors make a chain of three again.
  const d = q.add(mem, [{ addr: 0x12400, len: 1 }, { addr: 0x12400, len: 1 }, {
    addr: 0x12400,
    len: 1,
  }], []);
  assert.equal(q.numFree, 0);
  q.publish(mem);
  deviceUses(mem, layout, c, 0);
  deviceUses(mem, layout, d, 0);
  assert.deepEqual(q.popUsed(mem), { id: c, len: 0 });
  assert.deepEqual(q.popUsed(mem), { id: d, len: 0 });
  assert.equal(q.numFree, 4);
});

Deno.test("the driver survives the 16-bit index wrap", () => {
  const { mem, layout, q } = setup(2);
  for (let i = 0; i < 70000; i++) {
    const h = q.addOne(mem, 0x12000, 4, true);
    q.publish(mem);
    deviceUses(mem, layout, h, i & 3);
    assert.deepEqual(q.popUsed(mem), { id: h, len: i & 3 });
  }
  assert.equal(q.state.nextAvail, 70000 & 0xffff);
  assert.equal(mem.u16(layout.avail + 2), 70000 & 0xffff);
  assert.equal(q.state.lastUsed, 70000 & 0xffff);
  assert.equal(q.numFree, 2);
});

Deno.test("popUsed rejects a used id that is not outstanding and changes nothing", () => {
  const { mem, layout, q } = setup(4);
  const h = q.addOne(mem, 0x12000, 4, true);
  q.publish(mem);
  deviceUses(mem, layout, 3, 0); // descriptor 3 is free, not a head in flight
  const before = q.state;
  assert.throws(
    () => q.popUsed(mem),
    isKind(
      "used-id",
      "used ring returns id 3, which is not an outstanding head of the 4-entry queue",
    ),
  );
  assert.deepEqual(q.state, before);
  mem.setU32(layout.used + 4, 0xffffffff);
  assert.throws(() => q.popUsedId(mem), isKind("used-id"));
  mem.setU32(layout.used + 4, h);
  const other = q.addOne(mem, 0x12000, 4, true);
  q.publish(mem);
  assert.notEqual(other, h);
  assert.equal(q.popUsedId(mem), h, "a corrected entry is accepted");
  deviceUses(mem, layout, h, 0);
  assert.throws(() => q.popUsed(mem), isKind("used-id"), "the same head twice");
});

Deno.test("popUsed rejects a used length above the chain's writable bytes", () => {
  const { mem, layout, q } = setup(4);
  const h = q.add(mem, [{ addr: 0x12000, len: 1000 }], [{ addr: 0x12100, len: 10 }, {
    addr: 0x12200,
    len: 6,
  }]);
  q.publish(mem);
  deviceUses(mem, layout, h, 17);
  assert.throws(
    () => q.popUsed(mem),
    isKind(
      "used-len",
      "used ring says 17 bytes written to chain 0, which has only 16 writable bytes",
    ),
  );
  assert.equal(q.outstanding, 1);
});

Deno.test("popUsed rejects a used idx ahead of the chains the device was given", () => {
  const { mem, layout, q } = setup(4);
  q.addOne(mem, 0x12000, 4, true);
  q.publish(mem);
  q.addOne(mem, 0x12000, 4, true); // added, not published: the device cannot have it
  mem.storeU16(layout.used + 2, 2);
  assert.throws(
    () => q.popUsed(mem),
    isKind(
      "used-idx-jump",
      "used idx 2 is 2 entries ahead of 0, but only 1 chains are outstanding",
    ),
  );
  assert.equal(q.state.lastUsed, 0);
});

Deno.test("interrupt suppression without EVENT_IDX uses the NO_INTERRUPT flag", () => {
  const { mem, layout, q } = setup(4);
  q.disableInterrupts(mem);
  assert.equal(mem.u16(layout.avail), VIRTQ_AVAIL_F_NO_INTERRUPT);
  assert.equal(q.state.interruptsDisabled, true);
  assert.equal(q.enableInterrupts(mem), false, "nothing used meanwhile");
  assert.equal(mem.u16(layout.avail), 0);
  const h = q.addOne(mem, 0x12000, 4, true);
  q.publish(mem);
  q.disableInterrupts(mem);
  deviceUses(mem, layout, h, 0); // used while interrupts were off
  assert.equal(q.enableInterrupts(mem), true, "the caller must poll again");
  assert.deepEqual(q.popUsed(mem), { id: h, len: 0 });
  assert.equal(q.enableInterrupts(mem), false);
});

Deno.test("popUsedBatch takes every used entry at once, recycling each chain", () => {
  const { mem, layout, q } = setup(8);
  const heads = [0, 1, 2].map((i) => q.add(mem, [], [{ addr: BASE + 0x2000 + i * 64, len: 64 }]));
  q.publish(mem);
  deviceUses(mem, layout, heads[2]!, 10);
  deviceUses(mem, layout, heads[0]!, 20);
  const ids = new Uint32Array(8), lens = new Uint32Array(8);
  assert.equal(q.popUsedBatch(mem, ids, lens), 2);
  assert.deepEqual([...ids.subarray(0, 2)], [heads[2], heads[0]]);
  assert.deepEqual([...lens.subarray(0, 2)], [10, 20]);
  assert.equal(q.numFree, 7, "two chains recycled, one still out");
  assert.equal(q.popUsedBatch(mem, ids, lens), 0, "nothing more");
  assert.throws(() => q.popUsedBatch(mem, ids, new Uint32Array(2)), RangeError);
});

Deno.test("popUsedBatch stops before a bad entry; the next call reports it and changes nothing", () => {
  const { mem, layout, q } = setup(8);
  const a = q.add(mem, [], [{ addr: BASE + 0x2000, len: 64 }]);
  q.add(mem, [], [{ addr: BASE + 0x2100, len: 64 }]);
  q.publish(mem);
  deviceUses(mem, layout, a, 8);
  deviceUses(mem, layout, 7, 0); // never handed out
  const ids = new Uint32Array(4);
  assert.equal(q.popUsedBatch(mem, ids), 1, "the good entry before the bad one");
  assert.equal(ids[0], a);
  const before = q.state;
  assert.throws(() => q.popUsedBatch(mem, ids), isKind("used-id"));
  assert.deepEqual(q.state, before, "a refused batch changes nothing");
});
