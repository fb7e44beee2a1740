/**
 * Shared receive queues, as rdma-core's test_srq.py uses them: several QPs
 * of one guest take receives from one SRQ in posting order; limits and post
 * refusals; an SRQ outlives the error state of a QP using it; EBUSY while in
 * use. Cases with one guest run on one host only; in the others the SRQ's
 * guest is on the second host, its senders on the first.
 */

import assert from "node:assert/strict";
import {
  bytesAt,
  connectPlayers,
  counts,
  createPlayer,
  expectBytes,
  expectNoWc,
  expectOneWc,
  expectPostRefused,
  expectRejects,
  expectWc,
  nextAsyncEvent,
  pattern,
  type Player,
  pollCq,
  recvSrcQp,
  SendFlags,
  sendSrcQp,
  sge,
  traffic,
  verbsSuite,
} from "./players.ts";

verbsSuite("verbs: srq", (test) => {
  test("two QPs share one SRQ: receives are consumed in posting order, completions name each QP", async (hosts) => {
    await using base = await createPlayer(hosts.b);
    const srq = await base.pd.createSrq({ maxWr: 64, maxSge: 2 });
    await using s1 = await createPlayer(hosts.b, { dev: base.dev, pd: base.pd, srq });
    await using s2 = await createPlayer(hosts.b, { dev: base.dev, pd: base.pd, srq });
    await using c1 = await createPlayer(hosts.a);
    await using c2 = await createPlayer(hosts.a);
    await connectPlayers(c1, s1);
    await connectPlayers(c2, s2);
    const n = 8;
    srq.postRecv(Array.from({ length: n }, (_, i) => ({
      wrId: BigInt(100 + i),
      sgList: [sge(base, i * 256, 256)],
    })));
    const senders: Player[] = [c1, c2, c2, c1, c1, c1, c2, c1];
    for (let i = 0; i < n; i++) {
      const c = senders[i]!;
      const s = c === c1 ? s1 : s2;
      bytesAt(c, 0, 200).set(pattern(i, 200));
      c.qp.postSend({
        wrId: BigInt(i),
        opcode: i % 2 ? "SEND_WITH_IMM" : "SEND",
        sendFlags: SendFlags.SIGNALED,
        sgList: [sge(c, 0, 200)],
        ...(i % 2 ? { immData: i } : {}),
      });
      await expectOneWc(c.cq, {
        wrId: BigInt(i),
        status: "SUCCESS",
        opcode: "SEND",
        byteLen: 200,
        immData: undefined,
        qpNum: c.qp.qpNum,
        srcQp: sendSrcQp(c),
      }, `send ${i}`);
      await expectOneWc(s.recvCq, {
        wrId: BigInt(100 + i),
        status: "SUCCESS",
        opcode: "RECV",
        byteLen: 200,
        immData: i % 2 ? i : undefined,
        qpNum: s.qp.qpNum,
        srcQp: recvSrcQp(c),
      }, `receive ${i}`);
      expectBytes(bytesAt(base, i * 256, 200), pattern(i, 200), `message ${i}`);
    }
    // The traffic helper works through SRQ players too.
    await traffic(c1, s1, { opcode: "SEND", iters: 3, size: 1000, bothWays: false });
    await traffic(c1, s1, { opcode: "RDMA_WRITE_WITH_IMM", iters: 2, size: 64, bothWays: false });
  });

  test("create SRQ: maxWr and maxSge limits, srqLimit <= maxWr; refusals create nothing", {
    only: "same",
  }, async ({ a: host }) => {
    await using p = await createPlayer(host);
    const attr = p.dev.attr;
    const before = counts(host).srqs!;
    await expectRejects(p.pd.createSrq({ maxWr: 0, maxSge: 1 }), "EINVAL", /maxWr/);
    await expectRejects(p.pd.createSrq({ maxWr: attr.maxSrqWr + 1, maxSge: 1 }), "EINVAL", /maxWr/);
    await expectRejects(p.pd.createSrq({ maxWr: 16, maxSge: 0 }), "EINVAL", /maxSge/);
    await expectRejects(
      p.pd.createSrq({ maxWr: 16, maxSge: attr.maxSrqSge + 1 }),
      "EINVAL",
      /maxSge/,
    );
    await expectRejects(
      p.pd.createSrq({ maxWr: 16, maxSge: 1, srqLimit: 17 }),
      "EINVAL",
      /srqLimit/,
    );
    assert.equal(counts(host).srqs, before);
    const srq = await p.pd.createSrq({ maxWr: 16, maxSge: 1, srqLimit: 4 });
    assert.equal(counts(host).srqs, before + 1);
    await srq.destroy();
    assert.equal(counts(host).srqs, before);
  });

  test("srq.postRecv refusals: too many SGEs and a full SRQ, naming the first bad WR", {
    only: "same",
  }, async ({ a: host }) => {
    await using p = await createPlayer(host);
    const srq = await p.pd.createSrq({ maxWr: 4, maxSge: 1 });
    expectPostRefused(
      () =>
        srq.postRecv([
          { wrId: 1n, sgList: [sge(p, 0, 8)] },
          { wrId: 2n, sgList: [sge(p, 0, 8), sge(p, 8, 8)] },
        ]),
      "EINVAL",
      1,
      /SGE|sge/,
    );
    // One is posted; maxWr - 1 more fit (the device may grant more than 4), the next does not.
    const room = srq.maxWr - 1;
    assert.ok(srq.maxWr >= 4, `maxWr ${srq.maxWr}`);
    expectPostRefused(
      () =>
        srq.postRecv(
          Array.from(
            { length: room + 1 },
            (_, i) => ({ wrId: BigInt(10 + i), sgList: [sge(p, 0, 8)] }),
          ),
        ),
      "ENOMEM",
      room,
      /full|outstanding|maxWr/i,
    );
  });

  test("a QP with an SRQ going to ERR leaves the SRQ's receives for the other QPs", async (hosts) => {
    await using base = await createPlayer(hosts.b);
    const srq = await base.pd.createSrq({ maxWr: 16, maxSge: 1 });
    await using s1 = await createPlayer(hosts.b, { dev: base.dev, pd: base.pd, srq });
    await using s2 = await createPlayer(hosts.b, { dev: base.dev, pd: base.pd, srq });
    await using c2 = await createPlayer(hosts.a);
    await connectPlayers(c2, s2);
    srq.postRecv([{ wrId: 1n, sgList: [sge(base, 0, 64)] }, {
      wrId: 2n,
      sgList: [sge(base, 64, 64)],
    }]);
    await s1.qp.modify({ qpState: "ERR" });
    await expectNoWc(s1.recvCq, 30, "SRQ receives are not flushed by one QP's error");
    c2.qp.postSend({ wrId: 9n, opcode: "SEND", sendFlags: SendFlags.SIGNALED, sgList: [] });
    await pollCq(c2.cq, 1);
    await expectOneWc(s2.recvCq, {
      wrId: 1n,
      status: "SUCCESS",
      opcode: "RECV",
      byteLen: 0,
      immData: undefined,
      qpNum: s2.qp.qpNum,
      srcQp: recvSrcQp(c2),
    }, "the first SRQ receive went to the live QP");
  });

  test("destroy SRQ while a QP uses it is EBUSY; dealloc PD with an SRQ is EBUSY", {
    only: "same",
  }, async ({ a: host }) => {
    await using base = await createPlayer(host);
    const srq = await base.pd.createSrq({ maxWr: 8, maxSge: 1 });
    const qp = await base.pd.createQp({
      qpType: "RC",
      sendCq: base.cq,
      recvCq: base.cq,
      srq,
      cap: { maxSendWr: 4, maxRecvWr: 0, maxSendSge: 1, maxRecvSge: 1, maxInlineData: 0 },
    });
    await expectRejects(srq.destroy(), "EBUSY");
    await qp.destroy();
    await base.qp.destroy();
    await base.mr.dereg();
    await expectRejects(base.pd.dealloc(), "EBUSY");
    await srq.destroy();
    await base.pd.dealloc();
    assert.equal(counts(host).srqs, 0);
    assert.equal(counts(host).pds, 0);
  });

  test("SRQ limit: SRQ_LIMIT_REACHED once the SRQ drops below srqLimit", async (hosts) => {
    await using base = await createPlayer(hosts.b);
    const srq = await base.pd.createSrq({ maxWr: 16, maxSge: 1 });
    await using s = await createPlayer(hosts.b, { dev: base.dev, pd: base.pd, srq });
    await using c = await createPlayer(hosts.a);
    await connectPlayers(c, s);
    srq.postRecv(Array.from({ length: 4 }, (_, i) => ({
      wrId: BigInt(i),
      sgList: [sge(base, i * 64, 64)],
    })));
    await srq.modify({ srqLimit: 3 });
    c.qp.postSend([1n, 2n].map((wrId) => ({
      wrId,
      opcode: "SEND" as const,
      sendFlags: SendFlags.SIGNALED,
      sgList: [],
    })));
    const sent = await pollCq(c.cq, 2);
    sent.forEach((wc, i) =>
      expectWc(wc, {
        wrId: BigInt(i + 1),
        status: "SUCCESS",
        opcode: "SEND",
        byteLen: 0,
        immData: undefined,
        qpNum: c.qp.qpNum,
        srcQp: sendSrcQp(c),
      }, `send ${i}`)
    );
    const event = await nextAsyncEvent(base.dev);
    assert.equal(event.type, "SRQ_LIMIT_REACHED");
    assert.equal(event.element, srq.handle);
    await expectRejects(srq.modify({ maxWr: 32 }), "EOPNOTSUPP");
  });
});
