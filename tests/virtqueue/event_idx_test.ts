import assert from "node:assert/strict";
import { GuestMemory } from "../../virtqueue/memory.ts";
import { DeviceQueue } from "../../virtqueue/device_queue.ts";
import { DriverQueue } from "../../virtqueue/driver_queue.ts";
import {
  layoutAt,
  type QueueLayout,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_USED_F_NO_NOTIFY,
} from "../../virtqueue/layout.ts";

const SIZE = 8;

interface Rig {
  mem: GuestMemory;
  layout: QueueLayout;
  driver: DriverQueue;
  device: DeviceQueue;
  /** Guest address of used_event (end of the available ring). */
  usedEvent: number;
  /** Guest address of avail_event (end of the used ring). */
  availEvent: number;
}

function rig(): Rig {
  const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(0x4000), 0x10000);
  const { layout } = layoutAt(0x10000, SIZE);
  const driver = new DriverQueue(layout, { eventIdx: true });
  driver.init(mem);
  const device = new DeviceQueue(layout, { eventIdx: true });
  return {
    mem,
    layout,
    driver,
    device,
    usedEvent: layout.avail + 4 + 2 * SIZE,
    availEvent: layout.used + 4 + 8 * SIZE,
  };
}

/** The spec's rule, written out on its own: notify iff `event` is in `[old, now)` modulo 2^16. */
function needEvent(event: number, now: number, old: number): boolean {
  return ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);
}

/** Runs `n` chains through both sides, leaving every index at `n` (mod 2^16). */
function advance(r: Rig, n: number): void {
  for (let i = 0; i < n; i++) {
    r.driver.addOne(r.mem, 0x12000, 1, true);
    r.driver.publish(r.mem);
    const c = r.device.pop(r.mem)!;
    r.device.pushUsed(r.mem, c.head, 0);
    r.device.needsNotify(r.mem);
    r.driver.popUsed(r.mem);
  }
}

Deno.test("the driver kicks exactly when avail_event falls in the published range", () => {
  const r = rig();
  r.mem.setU16(r.availEvent, 0);
  r.driver.addOne(r.mem, 0x12000, 1, false);
  assert.equal(r.driver.publish(r.mem), true, "idx 0 -> 1 crosses avail_event 0");
  r.driver.addOne(r.mem, 0x12000, 1, false);
  r.driver.addOne(r.mem, 0x12000, 1, false);
  assert.equal(r.driver.publish(r.mem), false, "idx 1 -> 3 does not cross 0");
  r.mem.setU16(r.availEvent, 4);
  r.driver.addOne(r.mem, 0x12000, 1, false);
  assert.equal(r.driver.publish(r.mem), false, "idx 3 -> 4 does not reach entry 4");
  // With EVENT_IDX the driver ignores the flag: set it and still expect the kick.
  r.mem.setU16(r.layout.used, VIRTQ_USED_F_NO_NOTIFY);
  r.driver.addOne(r.mem, 0x12000, 1, false);
  r.driver.addOne(r.mem, 0x12000, 1, false);
  assert.equal(r.driver.publish(r.mem), true, "idx 4 -> 6 crosses avail_event 4");
});

Deno.test("kick and interrupt decisions stay right across the 16-bit wrap", () => {
  const cases: [number, boolean][] = [
    [0xfffe, true],
    [0xffff, true],
    [0x0001, true],
    [0x0002, false],
    [0xfffd, false],
  ];
  for (const [event, expected] of cases) {
    const s = rig();
    advance(s, 0xfffe);
    assert.equal(s.driver.state.nextAvail, 0xfffe);
    assert.equal(s.device.saveState().usedIdx, 0xfffe);
    s.mem.setU16(s.availEvent, event);
    for (let i = 0; i < 4; i++) s.driver.addOne(s.mem, 0x12000, 1, false);
    assert.equal(needEvent(event, 0x0002, 0xfffe), expected, `the rule itself for ${event}`);
    assert.equal(
      s.driver.publish(s.mem),
      expected,
      `publish 0xfffe -> 0x0002 with avail_event ${event}`,
    );
    // The device side, same range: used idx 0xfffe -> 0x0002 against used_event.
    const chains = [0, 1, 2, 3].map(() => s.device.pop(s.mem)!);
    for (const c of chains) s.device.addUsed(s.mem, c.head, 0);
    s.device.publishUsed(s.mem);
    s.mem.setU16(s.usedEvent, event);
    assert.equal(s.device.needsNotify(s.mem), expected, `needsNotify with used_event ${event}`);
  }
});

Deno.test("the device notifies once per used_event, and popUsed moves used_event on", () => {
  const r = rig();
  for (let i = 0; i < 4; i++) r.driver.addOne(r.mem, 0x12000, 1, true);
  r.driver.publish(r.mem);
  assert.equal(r.driver.enableInterrupts(r.mem), false);
  assert.equal(r.mem.u16(r.usedEvent), 0);
  const [a, b, c, d] = [0, 1, 2, 3].map(() => r.device.pop(r.mem)!);
  r.device.pushUsed(r.mem, a!.head, 0);
  assert.equal(r.device.needsNotify(r.mem), true, "used idx reached used_event + 1");
  r.device.pushUsed(r.mem, b!.head, 0);
  assert.equal(r.device.needsNotify(r.mem), false, "the driver has not asked again");
  r.driver.popUsed(r.mem);
  assert.equal(r.mem.u16(r.usedEvent), 1, "popUsed asks for the next entry");
  r.driver.popUsed(r.mem);
  assert.equal(r.mem.u16(r.usedEvent), 2);
  // A batch of two published at once crosses used_event 2: one notification.
  r.device.addUsed(r.mem, c!.head, 0);
  r.device.addUsed(r.mem, d!.head, 0);
  r.device.publishUsed(r.mem);
  assert.equal(r.device.needsNotify(r.mem), true);
  assert.equal(r.device.needsNotify(r.mem), false, "nothing new since");
  assert.equal(r.mem.u16(r.layout.avail), 0, "with EVENT_IDX the driver keeps avail flags 0");
});

Deno.test("disableInterrupts with EVENT_IDX moves used_event away; enableInterrupts catches the race", () => {
  const r = rig();
  for (let i = 0; i < SIZE; i++) r.driver.addOne(r.mem, 0x12000, 1, true);
  r.driver.publish(r.mem);
  r.driver.disableInterrupts(r.mem);
  assert.equal(r.mem.u16(r.usedEvent), 0x8000);
  assert.equal(r.mem.u16(r.layout.avail) & VIRTQ_AVAIL_F_NO_INTERRUPT, 0, "flags stay 0");
  for (let i = 0; i < SIZE; i++) {
    const c = r.device.pop(r.mem)!;
    r.device.pushUsed(r.mem, c.head, 0);
    assert.equal(r.device.needsNotify(r.mem), false, `entry ${i}: interrupts are off`);
  }
  for (let i = 0; i < 3; i++) assert.notEqual(r.driver.popUsed(r.mem), null);
  assert.equal(r.mem.u16(r.usedEvent), 0x8000, "popUsed leaves used_event alone while disabled");
  // Entries are waiting: enabling must say so, or the driver would sleep on them.
  assert.equal(r.driver.enableInterrupts(r.mem), true);
  assert.equal(r.mem.u16(r.usedEvent), 3);
  while (r.driver.popUsed(r.mem) !== null);
  assert.equal(r.driver.enableInterrupts(r.mem), false);
});

Deno.test("device notification suppression with EVENT_IDX writes avail_event, never the flag", () => {
  const r = rig();
  r.device.disableNotifications(r.mem);
  assert.equal(r.mem.u16(r.availEvent), 0x8000);
  assert.equal(r.mem.u16(r.layout.used), 0, "flags stay 0");
  for (let i = 0; i < SIZE; i++) {
    r.driver.addOne(r.mem, 0x12000, 1, false);
    assert.equal(r.driver.publish(r.mem), false, `chain ${i}: notifications are off`);
  }
  r.device.pop(r.mem);
  r.device.pop(r.mem);
  assert.equal(r.device.enableNotifications(r.mem), true, "six chains already wait");
  assert.equal(r.mem.u16(r.availEvent), 2);
  while (r.device.pop(r.mem) !== null);
  assert.equal(r.device.enableNotifications(r.mem), false);
  assert.equal(r.mem.u16(r.availEvent), SIZE);
});

Deno.test("after a restore with an unknown signalled index the device notifies once", () => {
  const r = rig();
  r.driver.addOne(r.mem, 0x12000, 1, true);
  r.driver.addOne(r.mem, 0x12000, 1, true);
  r.driver.publish(r.mem);
  r.driver.disableInterrupts(r.mem);
  const c = r.device.pop(r.mem)!;
  r.device.pushUsed(r.mem, c.head, 0);
  assert.equal(r.device.needsNotify(r.mem), false);
  const fresh = new DeviceQueue(r.layout, { eventIdx: true });
  fresh.restoreState({ ...r.device.saveState(), signalledUsed: -1 });
  assert.equal(fresh.needsNotify(r.mem), true, "unknown history: notify to be safe");
  assert.equal(fresh.needsNotify(r.mem), false);
});
