import assert from "node:assert/strict";
import { Op } from "../../../protocol/device_interface.ts";
import { BASE, makeCq, makeGuest, makePd, qpArgs, snapshot } from "./model_fixture.ts";

Deno.test("CREATE_SRQ returns handle, queue id and the granted sizes", () => {
  const g = makeGuest();
  const pd = makePd(g);
  const ring = g.ring(16);
  const r = g.ok(Op.CREATE_SRQ, { pd, maxWr: 10, maxSge: 3, srqLimit: 4, ring });
  assert.deepEqual(r, { status: 0, srq: 1, queue: 2, maxWr: 10, maxSge: 3 });
  const srq = g.model.srq(1)!;
  assert.equal(srq.pd, g.model.pd(pd));
  assert.equal(srq.maxWr, 10);
  assert.equal(srq.maxSge, 3);
  assert.equal(srq.srqLimit, 4);
  assert.deepEqual(srq.queue.layout, ring);
  assert.deepEqual(g.model.queueOwner(2), { kind: "srq", object: srq });
  assert.equal(g.counters.get("srqs"), 1);
  assert.equal(g.counters.get("queues"), 1);
  const noLimit = g.ok(Op.CREATE_SRQ, { pd, maxWr: 1, maxSge: 1, ring: g.ring(1) });
  assert.equal(g.model.srq(noLimit.srq as number)?.srqLimit, 0, "srqLimit defaults to 0");
});

Deno.test("CREATE_SRQ checks sizes, limit and ring; failures change nothing", () => {
  const g = makeGuest({ limits: { maxSrq: 1 } });
  const pd = makePd(g);
  const before = snapshot(g);
  const args = (extra: Record<string, unknown>) => ({
    pd,
    maxWr: 8,
    maxSge: 1,
    ring: g.ring(8),
    ...extra,
  });
  g.fail(Op.CREATE_SRQ, args({ maxWr: 0 }), "EINVAL", /maxWr = 0 is not an integer in 1..16384/);
  g.fail(Op.CREATE_SRQ, args({ maxWr: 16385 }), "EINVAL", /maxWr = 16385/);
  g.fail(Op.CREATE_SRQ, args({ maxSge: 0 }), "EINVAL", /maxSge = 0 is not an integer in 1..16/);
  g.fail(Op.CREATE_SRQ, args({ maxSge: 17 }), "EINVAL", /maxSge = 17/);
  g.fail(Op.CREATE_SRQ, args({ srqLimit: 9 }), "EINVAL", /srqLimit 9 exceeds maxWr 8/);
  g.fail(Op.CREATE_SRQ, args({ maxWr: 9 }), "EINVAL", /ring.size 8 is smaller than maxWr 9/);
  g.fail(Op.CREATE_SRQ, args({ ring: { ...g.ring(8), desc: BASE - 16 } }), "EFAULT", /^ring: /);
  g.fail(Op.CREATE_SRQ, args({ pd: 2 }), "EINVAL", /pd 2 does not exist/);
  g.fail(Op.CREATE_SRQ, args({ cq: 1 }), "EINVAL", /cq is not a field here/);
  assert.deepEqual(snapshot(g), before);
  g.ok(Op.CREATE_SRQ, args({}));
  g.fail(Op.CREATE_SRQ, args({}), "ENOMEM", /srq limit reached: 1 live/);
  g.fail(Op.DEALLOC_PD, { pd }, "EBUSY", /pd 1 is still used by 1/);
});

Deno.test("MODIFY_SRQ arms the limit; resizing is EOPNOTSUPP", () => {
  const g = makeGuest();
  const pd = makePd(g);
  const srq = g.ok(Op.CREATE_SRQ, { pd, maxWr: 8, maxSge: 1, ring: g.ring(8) }).srq as number;
  g.ok(Op.MODIFY_SRQ, { srq, srqLimit: 3 });
  assert.equal(g.model.srq(srq)?.srqLimit, 3);
  g.fail(Op.MODIFY_SRQ, { srq, srqLimit: 9 }, "EINVAL", /srqLimit 9 exceeds maxWr 8/);
  g.fail(
    Op.MODIFY_SRQ,
    { srq, maxWr: 16 },
    "EOPNOTSUPP",
    /srq 1: resizing \(maxWr\) is not supported/,
  );
  g.fail(Op.MODIFY_SRQ, { srq, srqLimit: 1, maxWr: 8 }, "EOPNOTSUPP", /resizing/);
  g.fail(Op.MODIFY_SRQ, { srq, srqLimit: "2" }, "EINVAL", /srqLimit = "2"/);
  g.fail(Op.MODIFY_SRQ, { srq: 5, srqLimit: 1 }, "EINVAL", /srq 5 does not exist/);
  assert.equal(g.model.srq(srq)?.srqLimit, 3, "failures changed nothing");
  g.ok(Op.MODIFY_SRQ, { srq, srqLimit: 0 });
  assert.equal(g.model.srq(srq)?.srqLimit, 0);
  g.ok(Op.MODIFY_SRQ, { srq });
});

Deno.test("DESTROY_SRQ: EBUSY while a QP uses it, then frees queue id and PD", () => {
  const g = makeGuest();
  const pd = makePd(g);
  const cq = makeCq(g).cq as number;
  const srq = g.ok(Op.CREATE_SRQ, { pd, maxWr: 8, maxSge: 1, ring: g.ring(8) });
  const qp = g.ok(Op.CREATE_QP, qpArgs(g, pd, cq, "UD", { srq: srq.srq, rq: undefined }));
  g.fail(Op.DESTROY_SRQ, { srq: srq.srq }, "EBUSY", /srq 1 is still used by 1 QPs/);
  g.ok(Op.DESTROY_QP, { qp: qp.qp });
  const object = g.model.srq(srq.srq as number)!;
  g.ok(Op.DESTROY_SRQ, { srq: srq.srq });
  assert.equal(object.live, false);
  assert.equal(g.model.queueOwner(srq.queue as number), undefined);
  assert.equal(g.counters.get("srqs"), 0);
  g.fail(Op.DESTROY_SRQ, { srq: srq.srq }, "EINVAL", /srq 1 does not exist/);
  g.ok(Op.DESTROY_CQ, { cq });
  g.ok(Op.DEALLOC_PD, { pd });
});

Deno.test("CREATE_AH fills in defaults; DESTROY_AH", () => {
  const g = makeGuest();
  const pd = makePd(g);
  const r = g.ok(Op.CREATE_AH, { pd, ahAttr: { dgid: "::ffff:10.1.2.3", portNum: 1 } });
  assert.deepEqual(r, { status: 0, ah: 1 });
  const ah = g.model.ah(1)!;
  assert.equal(ah.pd, g.model.pd(pd));
  assert.deepEqual(ah.ahAttr, {
    dgid: "::ffff:10.1.2.3",
    gid: new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]),
    portNum: 1,
    sgidIndex: 0,
    hopLimit: 64,
    trafficClass: 0,
    flowLabel: 0,
    sl: 0,
  });
  const full = g.ok(Op.CREATE_AH, {
    pd,
    ahAttr: { dgid: "fe80::1", hopLimit: 1, trafficClass: 0x10, flowLabel: 5, sl: 3, sgidIndex: 0 },
  });
  const av = g.model.ah(full.ah as number)!.ahAttr;
  assert.deepEqual([av.hopLimit, av.trafficClass, av.flowLabel, av.sl], [1, 0x10, 5, 3]);
  assert.equal(av.gid[0], 0xfe);
  assert.equal(g.counters.get("ahs"), 2);
  g.ok(Op.DESTROY_AH, { ah: 1 });
  assert.equal(ah.live, false);
  assert.equal(g.model.ah(1), undefined);
  assert.equal(g.counters.get("ahs"), 1);
  g.fail(Op.DESTROY_AH, { ah: 1 }, "EINVAL", /ah 1 does not exist/);
});

Deno.test("CREATE_AH checks the GID, port and ranges; maxAh is ENOMEM", () => {
  const g = makeGuest({ limits: { maxAh: 1 } });
  const pd = makePd(g);
  const before = snapshot(g);
  const ah = (ahAttr: unknown) => ({ pd, ahAttr });
  g.fail(Op.CREATE_AH, ah({ dgid: "1.2.3.4" }), "EINVAL", /ahAttr.dgid: "1.2.3.4" is not a GID/);
  g.fail(Op.CREATE_AH, ah({ dgid: "::ffff:1.2.3.400" }), "EINVAL", /is not a GID/);
  g.fail(Op.CREATE_AH, ah({ dgid: "::1", portNum: 2 }), "EINVAL", /ahAttr.portNum = 2/);
  g.fail(Op.CREATE_AH, ah({ dgid: "::1", portNum: 0 }), "EINVAL", /ahAttr.portNum = 0/);
  g.fail(Op.CREATE_AH, ah({ portNum: 1 }), "EINVAL", /ahAttr.dgid = undefined is not a string/);
  g.fail(Op.CREATE_AH, ah({ dgid: "x".repeat(100) }), "EINVAL", /is not a string of at most 64/);
  g.fail(Op.CREATE_AH, ah(new Map([["dgid", "::1"]])), "EINVAL", /ahAttr = a Map is not a map/);
  g.fail(Op.CREATE_AH, { pd: 3, ahAttr: { dgid: "::1" } }, "EINVAL", /pd 3 does not exist/);
  assert.deepEqual(snapshot(g), before);
  g.ok(Op.CREATE_AH, ah({ dgid: "::1" }));
  g.fail(Op.CREATE_AH, ah({ dgid: "::1" }), "ENOMEM", /ah limit reached: 1 live/);
});
