import assert from "node:assert/strict";
import { GuestMemory } from "../../virtqueue/memory.ts";
import { DescriptorChain } from "../../virtqueue/descriptor_chain.ts";
import { DeviceQueue } from "../../virtqueue/device_queue.ts";
import { DriverQueue } from "../../virtqueue/driver_queue.ts";
import {
  layoutAt,
  type QueueLayout,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_USED_F_NO_NOTIFY,
} from "../../virtqueue/layout.ts";

interface Rig {
  mem: GuestMemory;
  layout: QueueLayout;
  driver: DriverQueue;
  device: DeviceQueue;
}

function rig(base: number, size = 8): Rig {
  const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(0x10000), base);
  const { layout } = layoutAt(base + 0x40, size);
  const driver = new DriverQueue(layout);
  driver.init(mem);
  return { mem, layout, driver, device: new DeviceQueue(layout) };
}

for (const base of [0, 0x10000]) {
  Deno.test(`a chain goes driver -> device -> driver with its bytes (guest base 0x${base.toString(16)})`, () => {
    const { mem, layout, driver, device } = rig(base);
    const request = new TextEncoder().encode("request bytes");
    mem.write(base + 0x2000, request);
    const head = driver.add(mem, [{ addr: base + 0x2000, len: request.length }], [
      { addr: base + 0x3000, len: 4 },
      { addr: base + 0x3100, len: 16 },
    ]);
    assert.equal(device.pending(mem), 0, "not published yet");
    assert.equal(device.pop(mem), null);
    driver.publish(mem);
    assert.equal(device.pending(mem), 1);
    const chain = device.pop(mem);
    assert.ok(chain !== null);
    assert.equal(chain.head, head);
    assert.deepEqual(chain.readable(), [{ addr: base + 0x2000, len: request.length }]);
    assert.deepEqual(chain.writable(), [{ addr: base + 0x3000, len: 4 }, {
      addr: base + 0x3100,
      len: 16,
    }]);
    const got = new Uint8Array(request.length);
    chain.reader.read(got);
    assert.deepEqual(got, request);
    chain.writer.write(new TextEncoder().encode("response"));
    device.pushUsed(mem, chain.head, chain.writer.position);
    assert.equal(mem.u16(layout.used + 2), 1);
    assert.deepEqual([mem.u32(layout.used + 4), mem.u32(layout.used + 8)], [head, 8]);
    assert.deepEqual(driver.popUsed(mem), { id: head, len: 8 });
    assert.equal(new TextDecoder().decode(mem.bytes(base + 0x3000, 4)), "resp");
    assert.equal(new TextDecoder().decode(mem.bytes(base + 0x3100, 4)), "onse");
    assert.equal(device.pending(mem), 0);
    assert.equal(device.broken, false);
  });
}

Deno.test("popInto reuses one chain object and returns false when nothing is available", () => {
  const { mem, driver, device } = rig(0x10000);
  const heads = [0, 1, 2].map((i) => driver.addOne(mem, 0x12000 + i * 64, 64, false));
  driver.publish(mem);
  const chain = new DescriptorChain();
  const seen: number[] = [];
  while (device.popInto(mem, chain)) seen.push(chain.head);
  assert.deepEqual(seen, heads);
  assert.equal(device.popInto(mem, chain), false);
  assert.equal(device.saveState().lastAvail, 3);
});

Deno.test("addUsed entries become visible only with one publishUsed", () => {
  const { mem, layout, driver, device } = rig(0x10000);
  for (let i = 0; i < 4; i++) driver.addOne(mem, 0x12000, 8, true);
  driver.publish(mem);
  const chain = new DescriptorChain();
  const popped: number[] = [];
  while (device.popInto(mem, chain)) popped.push(chain.head);
  // Complete out of order, as a device may.
  for (const h of [2, 0, 3, 1]) device.addUsed(mem, popped[h]!, h);
  assert.equal(mem.u16(layout.used + 2), 0, "nothing visible before publishUsed");
  assert.equal(driver.popUsed(mem), null);
  device.publishUsed(mem);
  assert.equal(mem.u16(layout.used + 2), 4);
  const back = [];
  for (let u = driver.popUsed(mem); u !== null; u = driver.popUsed(mem)) back.push(u);
  assert.deepEqual(back, [{ id: popped[2], len: 2 }, { id: popped[0], len: 0 }, {
    id: popped[3],
    len: 3,
  }, {
    id: popped[1],
    len: 1,
  }]);
});

Deno.test("addUsed refuses a head past the table or a length that is not a u32", () => {
  const { mem, device } = rig(0x10000);
  assert.throws(
    () => device.addUsed(mem, 8, 0),
    (e: unknown) =>
      e instanceof RangeError &&
      e.message === "used head 8 is not a descriptor index of a 8-entry queue",
  );
  assert.throws(() => device.addUsed(mem, 1.5, 0), RangeError);
  assert.throws(() => device.addUsed(mem, 0, 2 ** 32), /used length 4294967296 is not a u32/);
  assert.equal(device.saveState().usedIdx, 0);
});

Deno.test("popBatch pops up to max chains in order with one idx load, then none", () => {
  const { mem, driver, device } = rig(0x10000);
  const heads = [0, 1, 2, 3, 4].map((i) => driver.addOne(mem, 0x12000 + 16 * i, 16, i % 2 === 0));
  driver.publish(mem);
  const chains = [new DescriptorChain(), new DescriptorChain(), new DescriptorChain()];
  assert.equal(device.popBatch(mem, chains, 2), 2, "max limits the batch");
  assert.deepEqual(chains.slice(0, 2).map((c) => c.head), heads.slice(0, 2));
  assert.equal(chains[0]!.writableBytes, 16);
  assert.equal(chains[1]!.readableBytes, 16);
  assert.equal(device.popBatch(mem, chains), 3, "the array length limits it by default");
  assert.deepEqual(chains.map((c) => c.addr(0)), [0x12020, 0x12030, 0x12040]);
  assert.equal(device.popBatch(mem, chains), 0, "nothing left");
  assert.equal(device.popBatch(mem, chains, 0), 0);
  assert.equal(device.saveState().lastAvail, 5);
  for (const bad of [-1, 1.5, NaN]) {
    assert.throws(
      () => device.popBatch(mem, chains, bad),
      (e: unknown) =>
        e instanceof RangeError && e.message === `max ${bad} is not a non-negative integer`,
    );
  }
});

Deno.test("popBatch ends at a hostile chain: the chains before it stay, the queue breaks", () => {
  const { mem, layout, driver, device } = rig(0x10000);
  driver.addOne(mem, 0x12000, 8, false);
  const bad = driver.addOne(mem, 0x12010, 8, false);
  driver.addOne(mem, 0x12020, 8, false);
  driver.publish(mem);
  mem.setAddr64(layout.desc + 16 * bad, 0x7_0000_0000); // outside guest memory
  const chains = [new DescriptorChain(), new DescriptorChain(), new DescriptorChain()];
  assert.equal(device.popBatch(mem, chains), 1);
  assert.equal(chains[0]!.addr(0), 0x12000);
  assert.equal(device.broken, true);
  assert.equal(device.error?.kind, "address");
  assert.match(device.error!.message, /head 1: buffer 0x700000000\+8 is outside guest memory/);
  assert.equal(device.popBatch(mem, chains), 0, "a broken queue pops nothing");
});

Deno.test("popBatch refuses an available idx that jumps, as popInto does", () => {
  const { mem, layout, device } = rig(0x10000);
  mem.setU16(layout.avail + 2, 9); // 9 chains on an 8-entry queue
  assert.equal(device.popBatch(mem, [new DescriptorChain()]), 0);
  assert.equal(device.error?.kind, "avail-idx-jump");
});

Deno.test("addUsedBatch adds every entry, lengths 0 without lens, one publish shows them", () => {
  const { mem, layout, driver, device } = rig(0x10000);
  const heads = [0, 1, 2].map((i) => driver.addOne(mem, 0x12000 + 16 * i, 16, true));
  driver.publish(mem);
  const chains = [new DescriptorChain(), new DescriptorChain(), new DescriptorChain()];
  assert.equal(device.popBatch(mem, chains), 3);
  device.addUsedBatch(mem, new Uint32Array([heads[2]!, heads[0]!]), [7, 3], 2);
  device.addUsedBatch(mem, [heads[1]!], null, 1);
  assert.equal(mem.u16(layout.used + 2), 0, "not published yet");
  device.publishUsed(mem);
  assert.equal(mem.u16(layout.used + 2), 3);
  assert.deepEqual(
    [driver.popUsed(mem), driver.popUsed(mem), driver.popUsed(mem)],
    [{ id: heads[2], len: 7 }, { id: heads[0], len: 3 }, { id: heads[1], len: 0 }],
  );
});

Deno.test("addUsedBatch checks every entry first: a bad one throws with nothing added", () => {
  const { mem, device } = rig(0x10000);
  const refused = (f: () => void, text: string): void => {
    assert.throws(f, (e: unknown) => e instanceof RangeError && e.message === text);
    assert.equal(device.saveState().usedIdx, 0);
  };
  refused(
    () => device.addUsedBatch(mem, [1, 2, 8], null, 3),
    "used head 8 is not a descriptor index of a 8-entry queue",
  );
  refused(() => device.addUsedBatch(mem, [1, 2], [0, -1], 2), "used length -1 is not a u32");
  refused(
    () => device.addUsedBatch(mem, [1, 2], null, 3),
    "count 3 is not in 0..2 (the heads given)",
  );
  refused(
    () => device.addUsedBatch(mem, [1, 2], [0], 2),
    "lens has 1 entries, fewer than the count 2",
  );
  device.addUsedBatch(mem, [1, 2, 8], null, 2); // only the first two count
  assert.equal(device.saveState().usedIdx, 2);
});

Deno.test("both queues work the same over rings that are not word-aligned in their buffer", () => {
  // Memory starts 2 bytes below the rings: typed views cannot alias them,
  // so every ring access takes the DataView path.
  const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(0x10002), 0xfffe);
  const { layout } = layoutAt(0x10000, 8);
  const driver = new DriverQueue(layout);
  driver.init(mem);
  const device = new DeviceQueue(layout);
  for (let lap = 0; lap < 3; lap++) {
    mem.write(0x12000, new Uint8Array([lap, 2, 3]));
    const a = driver.addOne(mem, 0x12000, 3, false);
    const b = driver.addOne(mem, 0x2_0000_0000, 4, true); // outside memory, above 4 GiB
    driver.publish(mem);
    const chain = new DescriptorChain();
    assert.equal(device.popInto(mem, chain), true);
    const got = new Uint8Array(3);
    chain.reader.read(got);
    assert.deepEqual([...got], [lap, 2, 3]);
    device.addUsedBatch(mem, [a], [0], 1);
    device.publishUsed(mem);
    assert.deepEqual(driver.popUsed(mem), { id: a, len: 0 });
    assert.equal(mem.u32(layout.desc + 16 * b + 4), 2, "high word of the address");
    // The second chain is hostile (outside memory): it breaks the device queue.
    assert.equal(device.popInto(mem, chain), false);
    assert.equal(device.error?.kind, "address");
    device.reset();
    device.restoreState({
      lastAvail: 2 * (lap + 1),
      usedIdx: 2 * lap + 1,
      signalledUsed: 0,
      broken: null,
    });
    device.pushUsed(mem, b, 0);
    assert.deepEqual(driver.popUsed(mem), { id: b, len: 0 });
  }
});

Deno.test("needsNotify without EVENT_IDX: only for new used entries, unless NO_INTERRUPT", () => {
  const { mem, layout, driver, device } = rig(0x10000);
  for (let i = 0; i < 3; i++) driver.addOne(mem, 0x12000, 8, true);
  driver.publish(mem);
  assert.equal(device.needsNotify(mem), false, "nothing used yet");
  const a = device.pop(mem)!;
  device.pushUsed(mem, a.head, 0);
  assert.equal(device.needsNotify(mem), true);
  assert.equal(device.needsNotify(mem), false, "already decided for this entry");
  driver.disableInterrupts(mem);
  assert.equal(mem.u16(layout.avail), VIRTQ_AVAIL_F_NO_INTERRUPT);
  const b = device.pop(mem)!;
  device.pushUsed(mem, b.head, 0);
  assert.equal(device.needsNotify(mem), false, "driver set NO_INTERRUPT");
  driver.enableInterrupts(mem);
  const c = device.pop(mem)!;
  device.pushUsed(mem, c.head, 0);
  assert.equal(device.needsNotify(mem), true);
});

Deno.test("notification suppression without EVENT_IDX uses NO_NOTIFY; enable re-checks the ring", () => {
  const { mem, layout, driver, device } = rig(0x10000);
  device.disableNotifications(mem);
  assert.equal(mem.u16(layout.used), VIRTQ_USED_F_NO_NOTIFY);
  driver.addOne(mem, 0x12000, 8, false);
  assert.equal(driver.publish(mem), false, "the driver sees NO_NOTIFY");
  assert.equal(device.enableNotifications(mem), true, "a chain arrived while disabled");
  assert.equal(mem.u16(layout.used), 0);
  device.pop(mem);
  assert.equal(device.enableNotifications(mem), false);
  driver.addOne(mem, 0x12000, 8, false);
  assert.equal(driver.publish(mem), true);
});

Deno.test("saveState and restoreState move a queue to a new DeviceQueue mid-stream", () => {
  const { mem, layout, driver, device } = rig(0x10000);
  for (let i = 0; i < 5; i++) driver.addOne(mem, 0x12000 + i, 1, true);
  driver.publish(mem);
  const first = device.pop(mem)!;
  const second = device.pop(mem)!;
  device.pushUsed(mem, first.head, 1);
  device.needsNotify(mem);
  const saved = device.saveState();
  assert.deepEqual(saved, { lastAvail: 2, usedIdx: 1, signalledUsed: 1, broken: null });
  const moved = new DeviceQueue(layout);
  moved.restoreState(saved);
  assert.equal(moved.pending(mem), 3);
  assert.equal(moved.pop(mem)!.head, 2);
  moved.pushUsed(mem, second.head, 0);
  assert.equal(mem.u16(layout.used + 2), 2);
  assert.deepEqual([driver.popUsed(mem)?.id, driver.popUsed(mem)?.id], [first.head, second.head]);
  moved.reset();
  assert.deepEqual(moved.saveState(), { lastAvail: 0, usedIdx: 0, signalledUsed: 0, broken: null });
});

Deno.test("restoreState refuses values that are not 16-bit indices", () => {
  const { device } = rig(0);
  const good = device.saveState();
  for (
    const [bad, text] of [
      [{ ...good, lastAvail: 65536 }, "lastAvail 65536 is not a 16-bit ring index"],
      [{ ...good, usedIdx: -1 }, "usedIdx -1 is not a 16-bit ring index"],
      [{ ...good, signalledUsed: -2 }, "signalledUsed -2 is not a 16-bit ring index or -1"],
      [{ ...good, lastAvail: 0.5 }, "lastAvail 0.5 is not a 16-bit ring index"],
    ] as const
  ) {
    assert.throws(
      () => device.restoreState(bad),
      (e: unknown) => e instanceof RangeError && e.message === text,
    );
  }
  assert.deepEqual(device.saveState(), good);
});

Deno.test("a layout that does not fit guest memory breaks the queue instead of throwing", () => {
  const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(0x1000), 0x10000);
  const { layout } = layoutAt(0x10f00, 64); // runs past the end of memory
  const device = new DeviceQueue(layout);
  assert.equal(device.pending(mem), 0);
  assert.equal(device.pop(mem), null);
  assert.equal(device.broken, true);
  assert.equal(device.error?.kind, "area-outside-memory");
  assert.equal(device.needsNotify(mem), false);
  assert.equal(device.enableNotifications(mem), false);
  device.pushUsed(mem, 0, 0);
  assert.equal(device.saveState().usedIdx, 0, "a broken queue writes nothing");
});
