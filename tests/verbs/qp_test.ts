/**
 * Queue pairs, as rdma-core's test_qp.py covers them: creation with
 * capabilities and their limits, QP numbers, query after every transition,
 * the `connect` convenience and its documented defaults, RESET and reuse,
 * SQD and back, COMM_EST, destroy. Cases about one host's QP table (numbers,
 * limits, destroy) run on one host only; the rest also across two.
 */

import assert from "node:assert/strict";
import {
  Access,
  connectPlayers,
  counts,
  createPlayer,
  DEFAULT_CAP,
  expectRejects,
  expectThrows,
  nextAsyncEvent,
  pattern,
  pollCq,
  SendFlags,
  sge,
  traffic,
  verbsSuite,
} from "./players.ts";

verbsSuite("verbs: qp", (test) => {
  test("create RC and UD QPs: RESET, numbers from 0x11 up, unique across guests, caps granted", {
    only: "same",
  }, async ({ a: host }) => {
    await using a = await createPlayer(host);
    await using b = await createPlayer(host, { qpType: "UD" });
    const nums = new Set<number>([a.qp.qpNum, b.qp.qpNum]);
    const more = [];
    for (let i = 0; i < 10; i++) {
      const owner = i % 2 ? a : b;
      more.push(
        await owner.pd.createQp({
          qpType: i % 3 ? "RC" : "UD",
          sendCq: owner.cq,
          recvCq: owner.cq,
          cap: DEFAULT_CAP,
        }),
      );
    }
    for (const qp of more) nums.add(qp.qpNum);
    assert.equal(nums.size, 12, "12 distinct QP numbers");
    for (const n of nums) assert.ok(n >= 0x11 && n < 1 << 24, `qpNum 0x${n.toString(16)}`);
    assert.equal(counts(host).qps, 12);

    const q = await a.qp.query();
    assert.equal(q.state, "RESET");
    assert.equal(q.qpType, "RC");
    assert.equal(q.qpNum, a.qp.qpNum);
    assert.equal(q.sqSigAll, false);
    for (const key of Object.keys(DEFAULT_CAP) as (keyof typeof DEFAULT_CAP)[]) {
      assert.ok(q.cap[key] >= DEFAULT_CAP[key], `cap.${key} ${q.cap[key]} >= ${DEFAULT_CAP[key]}`);
    }
    assert.equal((await b.qp.query()).qpType, "UD");
    for (const qp of more) await qp.destroy();
    assert.equal(counts(host).qps, 2);
  });

  test("create QP: capabilities outside the device limits are EINVAL and create nothing", {
    only: "same",
  }, async ({ a: host }) => {
    await using p = await createPlayer(host);
    const attr = p.dev.attr;
    const qps = counts(host).qps;
    const create = (cap: Partial<typeof DEFAULT_CAP>, qpType: "RC" | "UD" | "XRC" = "RC") =>
      p.pd.createQp({
        qpType: qpType as "RC",
        sendCq: p.cq,
        recvCq: p.cq,
        cap: { ...DEFAULT_CAP, ...cap },
      });
    await expectRejects(create({ maxSendWr: 0 }), "EINVAL", /maxSendWr/);
    await expectRejects(create({ maxSendWr: attr.maxQpWr + 1 }), "EINVAL", /maxSendWr/);
    await expectRejects(create({ maxRecvWr: 0 }), "EINVAL", /maxRecvWr/);
    await expectRejects(create({ maxRecvWr: attr.maxQpWr + 1 }), "EINVAL", /maxRecvWr/);
    await expectRejects(create({ maxSendSge: attr.maxSge + 1 }), "EINVAL", /maxSendSge/);
    await expectRejects(create({ maxRecvSge: attr.maxSge + 1 }), "EINVAL", /maxRecvSge/);
    await expectRejects(create({ maxInlineData: 257 }), "EINVAL", /maxInlineData/);
    await expectRejects(create({}, "XRC"), "EINVAL", /qpType|XRC/);
    assert.equal(counts(host).qps, qps, "no QP was created");
    const big = await create({
      maxSendWr: attr.maxQpWr,
      maxSendSge: attr.maxSge,
      maxInlineData: 256,
    });
    assert.ok((await big.query()).cap.maxInlineData >= 256);
    await big.destroy();
  });

  test("explicit RC bring-up: every attribute reads back with query()", async (hosts) => {
    await using a = await createPlayer(hosts.a);
    await using b = await createPlayer(hosts.b);
    await a.qp.modify({
      qpState: "INIT",
      pkeyIndex: 0,
      portNum: 1,
      qpAccessFlags: Access.REMOTE_WRITE | Access.REMOTE_READ,
    });
    let q = await a.qp.query();
    assert.equal(q.state, "INIT");
    assert.equal(q.attr.qpAccessFlags, Access.REMOTE_WRITE | Access.REMOTE_READ);
    assert.equal(q.attr.portNum, 1);
    assert.equal(q.attr.pkeyIndex, 0);
    // INIT->INIT changes attributes in place.
    await a.qp.modify({ qpAccessFlags: Access.REMOTE_WRITE });
    assert.equal((await a.qp.query()).attr.qpAccessFlags, Access.REMOTE_WRITE);

    await a.qp.modify({
      qpState: "RTR",
      pathMtu: 2048,
      destQpNum: b.qp.qpNum,
      rqPsn: 0xabcdef,
      maxDestRdAtomic: 4,
      minRnrTimer: 9,
      ahAttr: { dgid: hosts.b.gid, portNum: 1 },
    });
    q = await a.qp.query();
    assert.equal(q.state, "RTR");
    assert.equal(q.attr.pathMtu, 2048);
    assert.equal(q.attr.destQpNum, b.qp.qpNum);
    assert.equal(q.attr.rqPsn, 0xabcdef);
    assert.equal(q.attr.maxDestRdAtomic, 4);
    assert.equal(q.attr.minRnrTimer, 9);
    assert.equal(q.attr.ahAttr?.dgid, hosts.b.gid);

    await a.qp.modify({
      qpState: "RTS",
      sqPsn: 0x123456,
      timeout: 10,
      retryCnt: 5,
      rnrRetry: 3,
      maxRdAtomic: 2,
    });
    q = await a.qp.query();
    assert.equal(q.state, "RTS");
    assert.equal(q.attr.sqPsn, 0x123456);
    assert.equal(q.attr.timeout, 10);
    assert.equal(q.attr.retryCnt, 5);
    assert.equal(q.attr.rnrRetry, 3);
    assert.equal(q.attr.maxRdAtomic, 2);
    // RTS->RTS: minRnrTimer may change.
    await a.qp.modify({ minRnrTimer: 20 });
    q = await a.qp.query();
    assert.equal(q.state, "RTS");
    assert.equal(q.attr.minRnrTimer, 20);
  });

  test("qp.connect: RTS with the documented defaults", async (hosts) => {
    await using a = await createPlayer(hosts.a);
    await using b = await createPlayer(hosts.b);
    await connectPlayers(a, b);
    assert.ok(Number.isInteger(a.qp.psn) && a.qp.psn >= 0 && a.qp.psn < 1 << 24, `psn ${a.qp.psn}`);
    const q = await a.qp.query();
    assert.equal(q.state, "RTS");
    assert.equal(q.attr.destQpNum, b.qp.qpNum);
    assert.equal(q.attr.rqPsn, b.qp.psn);
    assert.equal(q.attr.sqPsn, a.qp.psn);
    assert.equal(q.attr.pathMtu, a.dev.queryPort(1).activeMtu);
    assert.equal(q.attr.timeout, 14);
    assert.equal(q.attr.retryCnt, 7);
    assert.equal(q.attr.rnrRetry, 7);
    assert.equal(q.attr.minRnrTimer, 12);
    assert.equal(q.attr.maxRdAtomic, 16);
    assert.equal(q.attr.maxDestRdAtomic, 16);
    assert.equal(
      q.attr.qpAccessFlags,
      Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC,
    );
    assert.equal(q.attr.ahAttr?.dgid, hosts.b.gid);
    await traffic(a, b, { opcode: "SEND", iters: 2, size: 100 });
  });

  test("RESET empties the queues; the QP reconnects and carries traffic again", async (hosts) => {
    await using a = await createPlayer(hosts.a);
    await using b = await createPlayer(hosts.b);
    await connectPlayers(a, b);
    await traffic(a, b, { opcode: "SEND", iters: 2, size: 256 });
    // Leave receives posted, then reset both: they vanish without completions.
    a.qp.postRecv({ wrId: 99n, sgList: [sge(a, a.dstOff, 64)] });
    await a.qp.modify({ qpState: "RESET" });
    await b.qp.modify({ qpState: "RESET" });
    assert.equal((await a.qp.query()).state, "RESET");
    assert.deepEqual(a.cq.poll(8), [], "RESET completes nothing");
    expectThrows(
      () => a.qp.postSend({ wrId: 1n, opcode: "SEND", sendFlags: 0, sgList: [] }),
      "EINVAL",
    );
    await connectPlayers(a, b);
    await traffic(a, b, { opcode: "SEND", iters: 3, size: 256 });
    await traffic(a, b, { opcode: "RDMA_WRITE", iters: 2, size: 256 });
  });

  test("RTS -> SQD -> RTS: the QP drains and then carries traffic again", async (hosts) => {
    await using a = await createPlayer(hosts.a);
    await using b = await createPlayer(hosts.b);
    await connectPlayers(a, b);
    await a.qp.modify({ qpState: "SQD" });
    assert.equal((await a.qp.query()).state, "SQD");
    await a.qp.modify({ qpState: "RTS" });
    assert.equal((await a.qp.query()).state, "RTS");
    await traffic(a, b, { opcode: "SEND", iters: 2, size: 128 });
  });

  test("COMM_EST: a QP in RTR that receives raises the async event", async (hosts) => {
    await using a = await createPlayer(hosts.a);
    await using b = await createPlayer(hosts.b);
    await connectPlayers(a, b);
    // Take b back to RTR by a fresh bring-up that stops short of RTS.
    await b.qp.modify({ qpState: "RESET" });
    await b.qp.modify({
      qpState: "INIT",
      pkeyIndex: 0,
      portNum: 1,
      qpAccessFlags: Access.REMOTE_WRITE,
    });
    await b.qp.modify({
      qpState: "RTR",
      pathMtu: 1024,
      destQpNum: a.qp.qpNum,
      rqPsn: a.qp.psn,
      maxDestRdAtomic: 1,
      minRnrTimer: 12,
      ahAttr: { dgid: hosts.a.gid, portNum: 1 },
    });
    b.qp.postRecv({ wrId: 1n, sgList: [sge(b, b.dstOff, 64)] });
    a.buf.bytes.set(pattern(2, 64), 0);
    a.qp.postSend({
      wrId: 2n,
      opcode: "SEND",
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(a, 0, 64)],
    });
    await pollCq(a.cq, 1);
    const [wc] = await pollCq(b.cq, 1);
    assert.equal(wc?.status, "SUCCESS", "an RTR QP receives");
    const event = await nextAsyncEvent(b.dev);
    assert.equal(event.type, "COMM_EST");
    assert.equal(event.element, b.qp.handle);
  });

  test("destroy: the QP number is released and the object refuses further use", {
    only: "same",
  }, async ({ a: host }) => {
    await using p = await createPlayer(host);
    const num = p.qp.qpNum;
    await p.qp.destroy();
    assert.equal(counts(host).qps, 0);
    await expectRejects(p.qp.query(), "EINVAL");
    await expectRejects(p.qp.modify({ qpState: "INIT" }), "EINVAL");
    // A new QP does not get the number back (QPNs are not reused until they wrap).
    const again = await p.pd.createQp({
      qpType: "RC",
      sendCq: p.cq,
      recvCq: p.cq,
      cap: DEFAULT_CAP,
    });
    assert.notEqual(again.qpNum, num);
  });
});
