import assert from "node:assert/strict";
import { GuestMemory } from "../../virtqueue/memory.ts";
import { VirtqueueError } from "../../virtqueue/errors.ts";
import {
  layoutAt,
  mapRings,
  MAX_QUEUE_SIZE,
  queueAreaSizes,
  type QueueLayout,
  ringArrays,
  validateLayout,
  validateQueueSize,
} from "../../virtqueue/layout.ts";

function kindOf(kind: string, text: RegExp): (e: unknown) => boolean {
  return (e: unknown) => e instanceof VirtqueueError && e.kind === kind && text.test(e.message);
}

Deno.test("validateQueueSize accepts powers of two up to 32768 and names any other value", () => {
  for (let n = 1; n <= MAX_QUEUE_SIZE; n *= 2) validateQueueSize(n);
  for (const bad of [0, 3, 100, 65536, 1.5, -4, NaN, 2 ** 16 + 1]) {
    assert.throws(
      () => validateQueueSize(bad),
      (e: unknown) => e instanceof RangeError && e.message.includes(`queue size ${bad} `),
      `size ${bad}`,
    );
  }
});

Deno.test("queueAreaSizes follows the table of VIRTIO 1.2 section 2.7", () => {
  assert.deepEqual(queueAreaSizes(1), { desc: 16, avail: 8, used: 14 });
  assert.deepEqual(queueAreaSizes(256), { desc: 4096, avail: 518, used: 2054 });
  assert.deepEqual(queueAreaSizes(32768), { desc: 524288, avail: 65542, used: 262150 });
  assert.throws(() => queueAreaSizes(12), RangeError);
});

Deno.test("layoutAt places the areas contiguously, aligned, and counts the bytes from base", () => {
  for (const base of [0, 0x10000, 0x10003, 0x1000e]) {
    for (const size of [1, 2, 4, 8, 256, 32768]) {
      const { layout, bytes } = layoutAt(base, size);
      const sizes = queueAreaSizes(size);
      assert.equal(layout.size, size);
      assert.equal(layout.desc % 16, 0);
      assert.ok(layout.desc >= base && layout.desc - base < 16, "desc is base rounded up to 16");
      assert.equal(layout.avail, layout.desc + sizes.desc, "avail right after the table");
      assert.equal(layout.used % 4, 0);
      assert.ok(
        layout.used >= layout.avail + sizes.avail && layout.used - (layout.avail + sizes.avail) < 4,
      );
      assert.equal(bytes, layout.used + sizes.used - base);
    }
  }
  assert.deepEqual(layoutAt(0x10003, 4), {
    layout: { size: 4, desc: 0x10010, avail: 0x10050, used: 0x10060 },
    bytes: 0x10060 + 38 - 0x10003,
  });
  assert.throws(() => layoutAt(-16, 4), /queue base -16 /);
  assert.throws(() => layoutAt(0, 6), /queue size 6 /);
});

Deno.test("validateLayout accepts a layout from layoutAt in memory at a nonzero base", () => {
  const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(0x4000), 0x10000);
  const { layout, bytes } = layoutAt(0x10000, 256);
  assert.ok(bytes <= 0x4000);
  validateLayout(mem, layout);
});

Deno.test("validateLayout names the misaligned area", () => {
  const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(0x4000), 0x10000);
  const good = layoutAt(0x10000, 8).layout;
  const cases: [Partial<QueueLayout>, RegExp][] = [
    [{ desc: good.desc + 8 }, /^descriptor table at 0x10008 is not 16-byte aligned$/],
    [{ avail: good.avail + 1 }, /^available ring at 0x10081 is not 2-byte aligned$/],
    [{ used: good.used + 2 }, /^used ring at 0x1009a is not 4-byte aligned$/],
  ];
  for (const [change, text] of cases) {
    assert.throws(() => validateLayout(mem, { ...good, ...change }), kindOf("misaligned", text));
  }
});

Deno.test("validateLayout names the area outside guest memory", () => {
  const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(0x1000), 0x10000);
  const good = layoutAt(0x10000, 8).layout;
  const cases: [Partial<QueueLayout>, RegExp][] = [
    [{ desc: 0x0 }, /^descriptor table 0x0\+128 is not inside guest memory$/],
    [{ avail: 0x10ffe }, /^available ring 0x10ffe\+22 is not inside guest memory$/],
    [{ used: 0x10ff0 }, /^used ring 0x10ff0\+70 is not inside guest memory$/],
    [{ used: -4 }, /^used ring -4\+70 is not inside guest memory$/],
  ];
  for (const [change, text] of cases) {
    assert.throws(
      () => validateLayout(mem, { ...good, ...change }),
      kindOf("area-outside-memory", text),
    );
  }
});

Deno.test("validateLayout rejects an area that crosses from one region into the next", () => {
  const mem = new GuestMemory([
    { guestAddr: 0x10000, buffer: new SharedArrayBuffer(0x1000) },
    { guestAddr: 0x11000, buffer: new SharedArrayBuffer(0x1000) },
  ]);
  const { layout } = layoutAt(0x10fc0, 8); // the table runs from 0x10fc0 to 0x11040
  assert.throws(
    () => validateLayout(mem, layout),
    kindOf("area-outside-memory", /^descriptor table 0x10fc0\+128 /),
  );
});

Deno.test("validateLayout names overlapping areas", () => {
  const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(0x4000), 0x10000);
  const good = layoutAt(0x10000, 8).layout;
  assert.throws(
    () => validateLayout(mem, { ...good, avail: good.desc + 16 }),
    kindOf("areas-overlap", /^descriptor table at 0x10000 overlaps available ring at 0x10010$/),
  );
  assert.throws(
    () => validateLayout(mem, { ...good, used: good.avail }),
    kindOf("areas-overlap", /^available ring at 0x10080 overlaps used ring at 0x10080$/),
  );
});

Deno.test("validateLayout rejects rings whose atomics would be misaligned inside the region", () => {
  // A region at an odd guest address: guest-aligned rings sit at odd buffer offsets.
  const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(0x1000), 0x10001);
  const { layout } = layoutAt(0x10010, 8);
  assert.throws(
    () => validateLayout(mem, layout),
    kindOf(
      "misaligned",
      /^available ring \(inside its memory region\) at 0x10090 is not 2-byte aligned$/,
    ),
  );
});

Deno.test("mapRings gives views that alias the three areas in guest memory", () => {
  const sab = new SharedArrayBuffer(0x2000);
  const mem = GuestMemory.fromBuffer(sab, 0x10000);
  const { layout } = layoutAt(0x10400, 16);
  const rings = mapRings(mem, layout);
  assert.equal(rings.desc.byteOffset, 0x400);
  assert.equal(rings.desc.byteLength, 256);
  assert.equal(rings.avail.byteLength, 38);
  assert.equal(rings.used.byteLength, 134);
  rings.desc.setUint32(16 * 3 + 8, 0xabcd, true);
  assert.equal(mem.u32(layout.desc + 16 * 3 + 8), 0xabcd);
  mem.setU16(layout.avail + 2, 0x1234);
  assert.equal(rings.avail.getUint16(2, true), 0x1234);
  rings.used.setUint32(4, 7, true);
  assert.equal(new DataView(sab).getUint32(layout.used - 0x10000 + 4, true), 7);
  assert.throws(() => mapRings(mem, { ...layout, desc: 0x30000 }), VirtqueueError);
});

Deno.test("ringArrays aliases the rings as words and halves, or is null when not word-aligned", () => {
  const sab = new SharedArrayBuffer(0x2000);
  const mem = GuestMemory.fromBuffer(sab, 0x10000);
  const { layout } = layoutAt(0x10400, 16);
  const arrays = ringArrays(mapRings(mem, layout));
  assert.ok(arrays !== null);
  assert.equal(arrays.desc.length, 64);
  assert.equal(arrays.avail.length, 19);
  assert.equal(arrays.used.length, 33);
  mem.setU32(layout.desc + 16 * 2 + 8, 0xdead_beef);
  assert.equal(arrays.desc[2 * 4 + 2], 0xdead_beef);
  mem.setU16(layout.avail + 2, 0x4321);
  assert.equal(arrays.avail[1], 0x4321);
  arrays.used[1 + 2 * 3] = 5; // id of used entry 3
  assert.equal(mem.u32(layout.used + 4 + 8 * 3), 5);
  arrays.usedHalves[1] = 0x0102;
  assert.equal(mem.u16(layout.used + 2), 0x0102);
  // A region 2 bytes below a 16-aligned guest address: the table and the
  // used ring sit at offsets of 2 modulo 4 in the buffer.
  const odd = GuestMemory.fromBuffer(new SharedArrayBuffer(0x2002), 0xfffe);
  assert.equal(ringArrays(mapRings(odd, layoutAt(0x10000, 16).layout)), null);
});
