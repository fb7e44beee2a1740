import assert from "node:assert/strict";
import { Op } from "../../../protocol/device_interface.ts";
import { HostTables } from "../../../backend/device/host_tables.ts";
import {
  BASE,
  CAP,
  makeCq,
  makeGuest,
  makePd,
  makeQp,
  qpArgs,
  queryQp,
  snapshot,
  type TestGuest,
} from "./model_fixture.ts";

function srqOn(g: TestGuest, pd: number): number {
  return g.ok(Op.CREATE_SRQ, { pd, maxWr: 8, maxSge: 1, ring: g.ring(8) }).srq as number;
}

Deno.test("CREATE_QP returns handle, host QPN, queue ids and the granted cap", () => {
  const g = makeGuest();
  const pd = makePd(g);
  const cq = makeCq(g).cq as number; // queue id 2
  const r = g.ok(Op.CREATE_QP, qpArgs(g, pd, cq, "RC", { sqSigAll: true }));
  assert.deepEqual(r, { status: 0, qp: 1, qpNum: 0x11, sqQueue: 3, rqQueue: 4, cap: CAP });
  const qp = g.model.qp(1)!;
  assert.equal(qp.qpNum, 0x11);
  assert.equal(qp.qpType, "RC");
  assert.equal(qp.state, "RESET");
  assert.equal(qp.pd, g.model.pd(pd));
  assert.equal(qp.sendCq, g.model.cq(cq));
  assert.equal(qp.recvCq, g.model.cq(cq));
  assert.equal(qp.srq, null);
  assert.equal(qp.sqSigAll, true);
  assert.deepEqual(qp.cap, CAP);
  assert.equal(qp.sq.size, 8);
  assert.equal(qp.rq?.size, 8);
  assert.equal(qp.guest.memory, g.memory);
  assert.equal(g.host.qpByNum(0x11), qp);
  assert.deepEqual(g.model.queueOwner(3), { kind: "sq", object: qp });
  assert.deepEqual(g.model.queueOwner(4), { kind: "rq", object: qp });
  assert.equal(g.model.queueOwner(5), undefined);
  assert.equal(g.counters.get("qps"), 1);
  assert.equal(g.counters.get("queues"), 3);
  const second = g.ok(Op.CREATE_QP, qpArgs(g, pd, cq, "UD"));
  assert.equal(second.qp, 2);
  assert.equal(second.qpNum, 0x12);
});

Deno.test("QUERY_QP of a new QP: RESET, every attribute with its initial value", () => {
  const g = makeGuest();
  const rc = makeQp(g, "RC");
  const q = queryQp(g, rc.qp);
  assert.deepEqual(q, {
    status: 0,
    state: "RESET",
    qpType: "RC",
    qpNum: rc.qpNum,
    attr: {
      qpState: "RESET",
      curQpState: "RESET",
      pathMtu: 256,
      qkey: 0,
      rqPsn: 0,
      sqPsn: 0,
      destQpNum: 0,
      qpAccessFlags: 0,
      ahAttr: {
        dgid: "::",
        portNum: 1,
        sgidIndex: 0,
        hopLimit: 0,
        trafficClass: 0,
        flowLabel: 0,
        sl: 0,
      },
      pkeyIndex: 0,
      enSqdAsyncNotify: 0,
      maxRdAtomic: 0,
      maxDestRdAtomic: 0,
      minRnrTimer: 0,
      portNum: 1,
      timeout: 0,
      retryCnt: 0,
      rnrRetry: 0,
    },
    cap: CAP,
    sqSigAll: false,
  });
  // UD cannot set a path MTU: it carries the port's active MTU from the start.
  const ud = makeQp(g, "UD");
  assert.equal((queryQp(g, ud.qp).attr as Record<string, unknown>).pathMtu, 4096);
  assert.equal(queryQp(g, ud.qp).qpType, "UD");
  g.fail(Op.QUERY_QP, { qp: 99 }, "EINVAL", /qp 99 does not exist/);
});

Deno.test("CREATE_QP with an SRQ: no RQ ring, no rq queue id, maxRecvWr may be 0", () => {
  const g = makeGuest();
  const pd = makePd(g);
  const cq = makeCq(g).cq as number;
  const srq = srqOn(g, pd);
  const args = qpArgs(g, pd, cq, "RC", { srq, rq: undefined, cap: { ...CAP, maxRecvWr: 0 } });
  const r = g.ok(Op.CREATE_QP, args);
  assert.equal(r.rqQueue, undefined);
  assert.equal(r.sqQueue, 4);
  const qp = g.model.qp(r.qp as number)!;
  assert.equal(qp.srq, g.model.srq(srq));
  assert.equal(qp.rq, null);
  assert.equal(qp.rqQueue, null);
  assert.equal(g.counters.get("queues"), 3, "CQ, SRQ and SQ");
  g.fail(Op.DESTROY_SRQ, { srq }, "EBUSY", /srq 1 is still used by 1 QPs/);
  g.fail(
    Op.CREATE_QP,
    qpArgs(g, pd, cq, "RC", { srq }),
    "EINVAL",
    /rq must be absent: receives come from srq 1/,
  );
  g.ok(Op.DESTROY_QP, { qp: r.qp });
  assert.equal(g.counters.get("queues"), 2);
  g.ok(Op.DESTROY_SRQ, { srq });
});

Deno.test("CREATE_QP checks every argument; failures change nothing", () => {
  const g = makeGuest();
  const pd = makePd(g);
  const cq = makeCq(g).cq as number;
  const before = snapshot(g);
  const args = (extra: Record<string, unknown>) => qpArgs(g, pd, cq, "RC", extra);
  const cap = (c: Record<string, unknown>) => args({ cap: { ...CAP, ...c } });
  g.fail(Op.CREATE_QP, args({ qpType: "RD" }), "EINVAL", /qpType = "RD" is not one of RC, UC, UD/);
  g.fail(Op.CREATE_QP, args({ qpType: 2 }), "EINVAL", /qpType = 2/);
  g.fail(Op.CREATE_QP, args({ pd: 5 }), "EINVAL", /pd 5 does not exist/);
  g.fail(Op.CREATE_QP, args({ sendCq: 5 }), "EINVAL", /sendCq 5 does not exist/);
  g.fail(Op.CREATE_QP, args({ recvCq: 0 }), "EINVAL", /recvCq 0 does not exist/);
  g.fail(Op.CREATE_QP, args({ srq: 3, rq: undefined }), "EINVAL", /srq 3 does not exist/);
  g.fail(
    Op.CREATE_QP,
    cap({ maxSendWr: 0 }),
    "EINVAL",
    /cap.maxSendWr = 0 is not an integer in 1..16384/,
  );
  g.fail(Op.CREATE_QP, cap({ maxSendWr: 16385 }), "EINVAL", /cap.maxSendWr = 16385/);
  g.fail(
    Op.CREATE_QP,
    cap({ maxRecvWr: 0 }),
    "EINVAL",
    /cap.maxRecvWr = 0 is not an integer in 1..16384/,
  );
  g.fail(
    Op.CREATE_QP,
    cap({ maxSendSge: 17 }),
    "EINVAL",
    /cap.maxSendSge = 17 is not an integer in 0..16/,
  );
  g.fail(Op.CREATE_QP, cap({ maxRecvSge: -1 }), "EINVAL", /cap.maxRecvSge = -1/);
  g.fail(
    Op.CREATE_QP,
    cap({ maxInlineData: 257 }),
    "EINVAL",
    /cap.maxInlineData = 257 is not an integer in 0..256/,
  );
  g.fail(Op.CREATE_QP, cap({ maxSendSge: undefined }), "EINVAL", /cap.maxSendSge = undefined/);
  g.fail(Op.CREATE_QP, cap({ maxRdAtomic: 1 }), "EINVAL", /cap.maxRdAtomic is not a field here/);
  g.fail(Op.CREATE_QP, args({ cap: 8 }), "EINVAL", /cap = 8 is not a map/);
  g.fail(
    Op.CREATE_QP,
    cap({ maxSendWr: 9 }),
    "EINVAL",
    /sq.size 8 is smaller than cap.maxSendWr 9/,
  );
  g.fail(
    Op.CREATE_QP,
    cap({ maxRecvWr: 9 }),
    "EINVAL",
    /rq.size 8 is smaller than cap.maxRecvWr 9/,
  );
  g.fail(Op.CREATE_QP, args({ rq: undefined }), "EINVAL", /rq is missing and there is no srq/);
  g.fail(Op.CREATE_QP, args({ sq: { ...g.ring(8), used: BASE - 4096 } }), "EFAULT", /^sq: /);
  g.fail(Op.CREATE_QP, args({ rq: { ...g.ring(8), desc: 8 } }), "EFAULT", /^rq: /);
  g.fail(Op.CREATE_QP, args({ sq: { ...g.ring(8), avail: g.alloc(64) + 1 } }), "EINVAL", /^sq: /);
  g.fail(Op.CREATE_QP, args({ sqSigAll: "yes" }), "EINVAL", /sqSigAll = "yes" is not a boolean/);
  g.fail(Op.CREATE_QP, args({ psn: 1 }), "EINVAL", /psn is not a field here/);
  assert.deepEqual(snapshot(g), before);
  assert.equal(g.ok(Op.CREATE_QP, args({})).qp, 1);
});

Deno.test("UD and UC QPs are created with the same arguments as RC ones", () => {
  const g = makeGuest();
  const pd = makePd(g);
  const cq = makeCq(g).cq as number;
  const r = g.ok(Op.CREATE_QP, qpArgs(g, pd, cq, "UD", { sqSigAll: false }));
  assert.equal(g.model.qp(r.qp as number)?.qpType, "UD");
  const uc = g.ok(Op.CREATE_QP, qpArgs(g, pd, cq, "UC"));
  assert.equal(g.model.qp(uc.qp as number)?.qpType, "UC");
});

Deno.test("maxQp is a per-guest limit: ENOMEM", () => {
  const g = makeGuest({ limits: { maxQp: 2 } });
  const pd = makePd(g);
  const cq = makeCq(g).cq as number;
  g.ok(Op.CREATE_QP, qpArgs(g, pd, cq));
  g.ok(Op.CREATE_QP, qpArgs(g, pd, cq, "UD"));
  const before = snapshot(g);
  g.fail(Op.CREATE_QP, qpArgs(g, pd, cq), "ENOMEM", /qp limit reached: 2 live/);
  assert.deepEqual(snapshot(g), before);
});

Deno.test("a QP needs two free queue ids (one with an SRQ): ENOMEM changes nothing", () => {
  const g = makeGuest({ limits: { maxQueues: 5 } }); // ids 2, 3, 4
  const pd = makePd(g);
  const cq = makeCq(g).cq as number; // 2
  const srq = srqOn(g, pd); // 3
  const before = snapshot(g);
  g.fail(Op.CREATE_QP, qpArgs(g, pd, cq), "ENOMEM", /2 needed, 1 free/);
  assert.deepEqual(snapshot(g), before);
  const r = g.ok(Op.CREATE_QP, qpArgs(g, pd, cq, "RC", { srq, rq: undefined }));
  assert.equal(r.sqQueue, 4);
});

Deno.test("a full QPN space is ENOMEM and changes nothing", () => {
  const g = makeGuest({ host: new HostTables({ qpnLimit: 0x13 }) }); // QPNs 0x11, 0x12
  const pd = makePd(g);
  const cq = makeCq(g).cq as number;
  g.ok(Op.CREATE_QP, qpArgs(g, pd, cq));
  g.ok(Op.CREATE_QP, qpArgs(g, pd, cq));
  const before = snapshot(g);
  g.fail(Op.CREATE_QP, qpArgs(g, pd, cq), "ENOMEM", /every QP number of this host is in use/);
  assert.deepEqual(snapshot(g), before);
  assert.equal(g.counters.get("queues"), 5, "no queue id leaked");
  g.ok(Op.DESTROY_QP, { qp: 1 });
  assert.deepEqual(g.ok(Op.CREATE_QP, qpArgs(g, pd, cq)).qpNum, 0x11);
});

Deno.test("DESTROY_QP releases the QPN, queue ids and the hold on PD and CQs", () => {
  const g = makeGuest();
  const { pd, cq, qp, qpNum } = makeQp(g);
  const object = g.model.qp(qp)!;
  assert.deepEqual(g.ok(Op.DESTROY_QP, { qp }), { status: 0 });
  assert.equal(object.live, false);
  assert.equal(g.host.qpByNum(qpNum), undefined);
  assert.equal(g.model.queueOwner(object.sqQueue), undefined);
  assert.equal(g.model.queueOwner(object.rqQueue!), undefined);
  assert.equal(g.counters.get("qps"), 0);
  assert.equal(g.counters.get("queues"), 1, "the CQ's");
  g.fail(Op.DESTROY_QP, { qp }, "EINVAL", /qp 1 does not exist/);
  g.fail(Op.QUERY_QP, { qp }, "EINVAL", /qp 1 does not exist/);
  g.ok(Op.DESTROY_CQ, { cq });
  g.ok(Op.DEALLOC_PD, { pd });
  assert.deepEqual(snapshot(g), {
    pds: 0,
    mrs: 0,
    cqs: 0,
    qps: 0,
    srqs: 0,
    ahs: 0,
    queues: 0,
    liveQps: 0,
    liveKeys: 0,
  });
});
