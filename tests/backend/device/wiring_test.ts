import assert from "node:assert/strict";
import { openDevice, VerbsError } from "../../../mod.ts";
import type { Device } from "../../../driver/device.ts";
import { Op } from "../../../protocol/device_interface.ts";
import { CQ_ARM_BYTES } from "../../../protocol/verbs.ts";
import { layoutAt } from "../../../virtqueue/layout.ts";
import { eventually, testBackend } from "../../helpers/backend.ts";

function ring(dev: Device, size: number): Record<string, number> {
  const { bytes } = layoutAt(0, size);
  const { layout } = layoutAt(dev.allocator.alloc(bytes, 64), size);
  return { size, desc: layout.desc, avail: layout.avail, used: layout.used };
}

async function qpOn(dev: Device): Promise<{ pd: number; qpNum: number; lkey: number }> {
  const { pd } = await dev.command(Op.ALLOC_PD) as { pd: number };
  const buf = dev.allocBuffer(4096);
  const mr = await dev.command(Op.REG_MR, { pd, addr: buf.addr, length: 4096, access: 7 });
  const armAddr = dev.allocator.alloc(CQ_ARM_BYTES, 8);
  const { cq } = await dev.command(Op.CREATE_CQ, { cqe: 16, ring: ring(dev, 16), armAddr });
  const qp = await dev.command(Op.CREATE_QP, {
    pd,
    qpType: "RC",
    sendCq: cq,
    recvCq: cq,
    cap: { maxSendWr: 4, maxRecvWr: 4, maxSendSge: 1, maxRecvSge: 1, maxInlineData: 0 },
    sq: ring(dev, 4),
    rq: ring(dev, 4),
  });
  return { pd, qpNum: qp.qpNum as number, lkey: mr.lkey as number };
}

Deno.test("the backend's guests share one set of host tables and counters", async () => {
  await using host = await testBackend();
  const a = await openDevice({ socket: host.socket, memoryBytes: 1 << 20 });
  const b = await openDevice({ socket: host.socket, memoryBytes: 1 << 20 });
  const qa = await qpOn(a);
  const qb = await qpOn(b);
  assert.notEqual(qa.qpNum, qb.qpNum, "QPNs are unique across guests");
  assert.notEqual(qa.lkey, qb.lkey, "keys are unique across guests");
  const stats = host.stats();
  assert.deepEqual(
    [stats.pds, stats.mrs, stats.cqs, stats.qps],
    [2, 2, 2, 2],
  );
  assert.equal(stats.queues, 2 * 2 + 2 * 3, "two fixed queues and CQ, SQ, RQ per guest");
  const q = await a.command(Op.QUERY_QP, { qp: 1 });
  assert.equal(q.state, "RESET");
  assert.equal(q.qpNum, qa.qpNum);
  // Guest b's handle 1 is its own QP, not a's.
  assert.equal((await b.command(Op.QUERY_QP, { qp: 1 })).qpNum, qb.qpNum);
  await assert.rejects(
    b.command(Op.DEALLOC_PD, { pd: qb.pd }),
    (e) => e instanceof VerbsError && e.errno === "EBUSY" && /pd 1 is still used/.test(e.message),
  );
  await a.close();
  assert.ok(await eventually(() => host.stats().qps === 1), "a's objects are gone with it");
  assert.deepEqual([host.stats().pds, host.stats().mrs, host.stats().cqs], [1, 1, 1]);
  await b.close();
  assert.ok(await eventually(() => host.stats().guests === 0));
  const end = host.stats();
  assert.deepEqual(
    [end.pds, end.mrs, end.cqs, end.qps, end.srqs, end.ahs, end.queues],
    [0, 0, 0, 0, 0, 0, 0],
  );
});
