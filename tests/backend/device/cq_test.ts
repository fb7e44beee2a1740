import assert from "node:assert/strict";
import { Op } from "../../../protocol/device_interface.ts";
import { CQ_ARM_BYTES, CqArm } from "../../../protocol/verbs.ts";
import { DriverQueue } from "../../../virtqueue/driver_queue.ts";
import { BASE, makeCq, makeGuest, makePd, qpArgs, snapshot } from "./model_fixture.ts";

Deno.test("CREATE_CQ returns the handle, a queue id from 2 and the ring size as cqe", () => {
  const g = makeGuest();
  const ring = g.ring(64);
  const armAddr = g.alloc(CQ_ARM_BYTES, 8);
  const r = g.ok(Op.CREATE_CQ, { cqe: 50, ring, armAddr });
  assert.deepEqual(r, { status: 0, cq: 1, queue: 2, cqe: 64 });
  const cq = g.model.cq(1)!;
  assert.equal(cq.cqe, 64);
  assert.equal(cq.queueId, 2);
  assert.equal(cq.armAddr, armAddr);
  assert.deepEqual(cq.queue.layout, ring);
  assert.deepEqual(g.model.queueOwner(2), { kind: "cq", object: cq });
  assert.equal(g.counters.get("cqs"), 1);
  assert.equal(g.counters.get("queues"), 1);
  assert.equal(makeCq(g).queue, 3, "the next CQ gets the next id");
});

Deno.test("a CQ's device queue serves what the driver posts, with EVENT_IDX as negotiated", () => {
  for (const eventIdx of [false, true]) {
    const g = makeGuest({ eventIdx });
    const ring = g.ring(8);
    g.ok(Op.CREATE_CQ, { cqe: 8, ring, armAddr: g.alloc(8, 8) });
    const driver = new DriverQueue(ring, { eventIdx });
    driver.init(g.memory);
    const slot = g.alloc(40);
    driver.addOne(g.memory, slot, 40, true);
    driver.publish(g.memory);
    const queue = g.model.cq(1)!.queue;
    const chain = queue.pop(g.memory)!;
    assert.equal(chain.writableBytes, 40);
    queue.pushUsed(g.memory, chain.head, 40);
    assert.equal(driver.popUsed(g.memory)?.len, 40);
    // With EVENT_IDX the device publishes avail_event after the used ring; without, it does not.
    queue.enableNotifications(g.memory);
    const availEvent = g.memory.u16(ring.used + 4 + 8 * ring.size);
    assert.equal(availEvent, eventIdx ? 1 : 0, `eventIdx ${eventIdx}`);
  }
});

Deno.test("CREATE_CQ checks cqe, the ring and the arm area; failures change nothing", () => {
  const g = makeGuest();
  const armAddr = g.alloc(8, 8);
  const before = snapshot(g);
  const args = (extra: Record<string, unknown>) => ({ cqe: 8, ring: g.ring(8), armAddr, ...extra });
  g.fail(Op.CREATE_CQ, args({ cqe: 0 }), "EINVAL", /cqe = 0 is not an integer in 1\.\./);
  g.fail(Op.CREATE_CQ, args({ cqe: 70000 }), "EINVAL", /cqe 70000 exceeds maxCqe 65536/);
  g.fail(Op.CREATE_CQ, args({ cqe: 40000 }), "EINVAL", /cqe 40000 needs two rings/);
  g.fail(Op.CREATE_CQ, args({ ring2: g.ring(8) }), "EINVAL", /ring2 is only for cqe above 32768/);
  g.fail(Op.CREATE_CQ, args({ cqe: 9 }), "EINVAL", /ring.size 8 is smaller than cqe 9/);
  const ring = g.ring(8);
  g.fail(
    Op.CREATE_CQ,
    args({ ring: { ...ring, size: 12 } }),
    "EINVAL",
    /queue size 12 is not a power/,
  );
  g.fail(
    Op.CREATE_CQ,
    args({ ring: { ...ring, desc: ring.desc + 8 } }),
    "EINVAL",
    /misaligned|align/,
  );
  g.fail(
    Op.CREATE_CQ,
    args({ ring: { ...ring, used: BASE + g.memory.size } }),
    "EFAULT",
    /ring: .*used ring/,
  );
  g.fail(Op.CREATE_CQ, args({ ring: { ...ring, avail: ring.desc } }), "EINVAL", /overlap/);
  g.fail(
    Op.CREATE_CQ,
    args({ ring: { ...ring, extra: 1 } }),
    "EINVAL",
    /ring.extra is not a field/,
  );
  g.fail(Op.CREATE_CQ, args({ ring: [1, 2, 3, 4] }), "EINVAL", /ring = an array is not a map/);
  g.fail(Op.CREATE_CQ, args({ ring: undefined }), "EINVAL", /ring = undefined is not a map/);
  g.fail(
    Op.CREATE_CQ,
    args({ armAddr: armAddr + 2 }),
    "EINVAL",
    /armAddr 0x100[0-9a-f]+ is not 4-byte aligned/,
  );
  g.fail(
    Op.CREATE_CQ,
    args({ armAddr: BASE + g.memory.size - 4 }),
    "EFAULT",
    /armAddr .*\+8 is not inside/,
  );
  g.fail(Op.CREATE_CQ, args({ armAddr: 12 }), "EFAULT", /armAddr 0xc\+8/);
  assert.deepEqual(snapshot(g), before);
  assert.equal(makeCq(g).cq, 1);
});

Deno.test("maxCq is a per-guest limit: ENOMEM", () => {
  const g = makeGuest({ limits: { maxCq: 2 } });
  makeCq(g);
  makeCq(g);
  g.fail(
    Op.CREATE_CQ,
    { cqe: 1, ring: g.ring(1), armAddr: g.alloc(8, 8) },
    "ENOMEM",
    /cq limit reached: 2/,
  );
  assert.equal(g.counters.get("cqs"), 2);
});

Deno.test("running out of doorbell queue ids is ENOMEM; destroyed ids are reused", () => {
  const g = makeGuest({ limits: { maxQueues: 4 } }); // ids 2 and 3
  const a = makeCq(g);
  const b = makeCq(g);
  assert.deepEqual([a.queue, b.queue], [2, 3]);
  const before = snapshot(g);
  g.fail(
    Op.CREATE_CQ,
    { cqe: 1, ring: g.ring(1), armAddr: g.alloc(8, 8) },
    "ENOMEM",
    /no doorbell queue ids left/,
  );
  assert.deepEqual(snapshot(g), before);
  g.ok(Op.DESTROY_CQ, { cq: a.cq });
  assert.equal(g.model.queueOwner(2), undefined);
  const c = makeCq(g);
  assert.equal(c.queue, 2);
  assert.equal(c.cq, 3);
});

Deno.test("DESTROY_CQ frees the queue id; EBUSY while a QP uses the CQ", () => {
  const g = makeGuest();
  const pd = makePd(g);
  const cq = makeCq(g).cq as number;
  const other = makeCq(g).cq as number;
  const qp = g.ok(Op.CREATE_QP, { ...qpArgs(g, pd, cq), recvCq: other }).qp;
  g.fail(Op.DESTROY_CQ, { cq }, "EBUSY", /cq 1 is still used by 1 QPs/);
  g.fail(Op.DESTROY_CQ, { cq: other }, "EBUSY", /cq 2 is still used by 1 QPs/);
  g.fail(Op.DEALLOC_PD, { pd }, "EBUSY", /pd 1 is still used by 1/);
  g.ok(Op.DESTROY_QP, { qp });
  const cqObject = g.model.cq(cq)!;
  assert.deepEqual(g.ok(Op.DESTROY_CQ, { cq }), { status: 0 });
  assert.equal(cqObject.live, false);
  assert.equal(g.model.cq(cq), undefined);
  assert.equal(g.model.queueOwner(cqObject.queueId), undefined);
  g.fail(Op.DESTROY_CQ, { cq }, "EINVAL", /cq 1 does not exist/);
  assert.equal(g.counters.get("cqs"), 1);
  // A CQ shared by both sides of a QP counts twice and frees after one destroy.
  const qp2 = g.ok(Op.CREATE_QP, qpArgs(g, pd, other)).qp;
  g.fail(Op.DESTROY_CQ, { cq: other }, "EBUSY", /used by 2 QPs/);
  g.ok(Op.DESTROY_QP, { qp: qp2 });
  g.ok(Op.DESTROY_CQ, { cq: other });
  assert.equal(g.counters.get("queues"), 0);
});

Deno.test("REQ_NOTIFY_CQ stores the arm word", () => {
  const g = makeGuest();
  const armAddr = g.alloc(8, 8);
  const cq = g.ok(Op.CREATE_CQ, { cqe: 4, ring: g.ring(4), armAddr }).cq;
  assert.equal(g.memory.u32(armAddr), CqArm.NONE);
  g.ok(Op.REQ_NOTIFY_CQ, { cq, solicitedOnly: false });
  assert.equal(g.memory.u32(armAddr), CqArm.NEXT);
  g.ok(Op.REQ_NOTIFY_CQ, { cq, solicitedOnly: true });
  assert.equal(g.memory.u32(armAddr), CqArm.SOLICITED);
  g.ok(Op.REQ_NOTIFY_CQ, { cq });
  assert.equal(g.memory.u32(armAddr), CqArm.NEXT, "solicitedOnly defaults to false");
  g.memory.setU32(armAddr, 0);
  g.fail(
    Op.REQ_NOTIFY_CQ,
    { cq, solicitedOnly: 1 },
    "EINVAL",
    /solicitedOnly = 1 is not a boolean/,
  );
  g.fail(Op.REQ_NOTIFY_CQ, { cq: 9 }, "EINVAL", /cq 9 does not exist/);
  assert.equal(g.memory.u32(armAddr), 0, "failures did not arm");
});
