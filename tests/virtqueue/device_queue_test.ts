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
