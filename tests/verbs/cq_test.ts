/**
 * Completion queues, as rdma-core's test_cq.py covers them: sizes and their
 * limits, polling that never blocks and never returns more than asked,
 * `next()` that waits without spinning and fails when the device goes, one
 * CQ shared by several QPs, destroy while in use. Cases with one player run on
 * one host only; the rest also across two.
 */

import assert from "node:assert/strict";
import {
  addrOf,
  connectPlayers,
  counts,
  createPlayer,
  DEFAULT_CAP,
  expectRejects,
  expectThrows,
  expectWc,
  pollCq,
  recvSrcQp,
  SendFlags,
  sendSrcQp,
  sge,
  sleep,
  verbsSuite,
  WAIT_MS,
  withTimeout,
} from "./players.ts";
import { eventually } from "../helpers/backend.ts";

verbsSuite("verbs: cq", (test) => {
  test("create CQ: cqe 1..maxCqe, the granted size is at least the request", {
    only: "same",
  }, async ({ a: host }) => {
    await using p = await createPlayer(host);
    for (const cqe of [1, 3, 100, 1000]) {
      const cq = await p.dev.createCq({ cqe });
      assert.ok(cq.cqe >= cqe, `cqe ${cq.cqe} >= ${cqe}`);
      assert.deepEqual(cq.poll(4), [], "a new CQ is empty");
      await cq.destroy();
    }
    const before = counts(host).cqs;
    await expectRejects(p.dev.createCq({ cqe: 0 }), "EINVAL", /cqe/);
    await expectRejects(p.dev.createCq({ cqe: p.dev.attr.maxCqe + 1 }), "EINVAL", /cqe/);
    await expectRejects(p.dev.createCq({ cqe: -1 }), "EINVAL", /cqe/);
    assert.equal(counts(host).cqs, before, "refused CQs were not created");
  });

  test("poll(n) returns at most n, in completion order, and [] when empty", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    assert.deepEqual(client.cq.poll(16), []);
    // The client's host writes the client's CQEs and counts them.
    const host = hosts.a;
    const start = (host.stats() as Record<string, number>).completions;
    assert.ok(start !== undefined, "host.stats() counts completions");
    client.qp.postSend(Array.from({ length: 10 }, (_, i) => ({
      wrId: BigInt(i),
      opcode: "RDMA_WRITE" as const,
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(client, 0, 32)],
      rdma: { remoteAddr: addrOf(server, 0), rkey: server.mr.rkey },
    })));
    // Wait until all 10 are written, without taking any (the host counts completions).
    const written = () => (host.stats() as Record<string, number>).completions ?? 0;
    assert.ok(await eventually(() => written() >= start + 10, WAIT_MS), `${written() - start}`);
    const first = client.cq.poll(3);
    assert.equal(first.length, 3);
    const rest = await pollCq(client.cq, 7);
    [...first, ...rest].forEach((wc, i) =>
      expectWc(wc, {
        wrId: BigInt(i),
        status: "SUCCESS",
        opcode: "RDMA_WRITE",
        byteLen: 32,
        immData: undefined,
        qpNum: client.qp.qpNum,
        srcQp: sendSrcQp(client),
      }, `completion ${i}`)
    );
    assert.deepEqual(client.cq.poll(16), []);
  });

  test("a CQ keeps working past its size when polled: slots are recycled", async (hosts) => {
    await using client = await createPlayer(hosts.a, { cqe: 4 });
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    for (let round = 0; round < 20; round++) {
      client.qp.postSend(Array.from({ length: 3 }, (_, i) => ({
        wrId: BigInt(round * 3 + i),
        opcode: "RDMA_WRITE" as const,
        sendFlags: SendFlags.SIGNALED,
        sgList: [sge(client, 0, 8)],
        rdma: { remoteAddr: addrOf(server, 0), rkey: server.mr.rkey },
      })));
      const wcs = await pollCq(client.cq, 3);
      assert.deepEqual(
        wcs.map((w) => [w.wrId, w.status]),
        [0, 1, 2].map((i) => [BigInt(round * 3 + i), "SUCCESS"]),
        `round ${round}`,
      );
    }
  });

  test("cq.next() waits for the next completion without resolving early", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    let resolved = false;
    const waiting = client.cq.next().then((wc) => {
      resolved = true;
      return wc;
    });
    await sleep(40);
    assert.equal(resolved, false, "no completion yet");
    client.qp.postSend({
      wrId: 77n,
      opcode: "RDMA_WRITE",
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(client, 0, 16)],
      rdma: { remoteAddr: addrOf(server, 0), rkey: server.mr.rkey },
    });
    const wc = await withTimeout(waiting, WAIT_MS, "cq.next()");
    expectWc(wc, {
      wrId: 77n,
      status: "SUCCESS",
      opcode: "RDMA_WRITE",
      byteLen: 16,
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    });
    // A completion already in the CQ is returned at once.
    client.qp.postSend({
      wrId: 78n,
      opcode: "RDMA_WRITE",
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(client, 0, 16)],
      rdma: { remoteAddr: addrOf(server, 0), rkey: server.mr.rkey },
    });
    await sleep(20);
    const again = await withTimeout(client.cq.next(), 500, "cq.next() with a ready completion");
    assert.equal(again.wrId, 78n);
  });

  test("concurrent cq.next() callers resolve in order with distinct completions", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    const waits = Array.from({ length: 5 }, () => client.cq.next());
    await sleep(10);
    for (let i = 0; i < 5; i++) {
      server.qp.postRecv({ wrId: BigInt(i), sgList: [sge(server, server.dstOff, 64)] });
    }
    client.qp.postSend(Array.from({ length: 5 }, (_, i) => ({
      wrId: BigInt(10 + i),
      opcode: "SEND" as const,
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(client, 0, 8)],
    })));
    const wcs = await withTimeout(Promise.all(waits), WAIT_MS, "five cq.next()");
    assert.deepEqual(wcs.map((w) => w.wrId), [10n, 11n, 12n, 13n, 14n]);
    const recvs = await pollCq(server.cq, 5);
    recvs.forEach((wc, i) =>
      expectWc(wc, {
        wrId: BigInt(i),
        status: "SUCCESS",
        opcode: "RECV",
        byteLen: 8,
        immData: undefined,
        qpNum: server.qp.qpNum,
        srcQp: recvSrcQp(client),
      }, `receive ${i}`)
    );
  });

  test("cq.next() rejects with ENODEV when the device closes", {
    only: "same",
  }, async ({ a: host }) => {
    const p = await createPlayer(host);
    const waiting = p.cq.next();
    waiting.catch(() => {});
    await sleep(10);
    await p.dev.close();
    await expectRejects(waiting, "ENODEV");
    expectThrows(() => p.cq.poll(1), "ENODEV");
  });

  test("one CQ for several QPs: each completion names its QP", async (hosts) => {
    await using server = await createPlayer(hosts.b);
    await using c1 = await createPlayer(hosts.a);
    await using c2 = await createPlayer(hosts.a);
    const qp2 = await server.pd.createQp({
      qpType: "RC",
      sendCq: server.cq,
      recvCq: server.cq,
      cap: DEFAULT_CAP,
    });
    await connectPlayers(c1, server);
    await c2.qp.connect({ qpNum: qp2.qpNum, psn: qp2.psn, gid: hosts.b.gid });
    await qp2.connect({ qpNum: c2.qp.qpNum, psn: c2.qp.psn, gid: hosts.a.gid });
    server.qp.postRecv({ wrId: 1n, sgList: [sge(server, server.dstOff, 64)] });
    qp2.postRecv({ wrId: 2n, sgList: [sge(server, server.dstOff + 64, 64)] });
    c2.qp.postSend({ wrId: 20n, opcode: "SEND", sendFlags: SendFlags.SIGNALED, sgList: [] });
    await pollCq(c2.cq, 1);
    c1.qp.postSend({ wrId: 10n, opcode: "SEND", sendFlags: SendFlags.SIGNALED, sgList: [] });
    await pollCq(c1.cq, 1);
    const [a, b] = await pollCq(server.cq, 2);
    expectWc(a, {
      wrId: 2n,
      status: "SUCCESS",
      opcode: "RECV",
      byteLen: 0,
      immData: undefined,
      qpNum: qp2.qpNum,
      srcQp: c2.qp.qpNum,
    }, "via the second QP");
    expectWc(b, {
      wrId: 1n,
      status: "SUCCESS",
      opcode: "RECV",
      byteLen: 0,
      immData: undefined,
      qpNum: server.qp.qpNum,
      srcQp: c1.qp.qpNum,
    }, "via the first QP");
  });

  test("destroy CQ while a QP uses it is EBUSY; after the QP is gone it works", {
    only: "same",
  }, async ({ a: host }) => {
    await using p = await createPlayer(host, { separateRecvCq: true });
    await expectRejects(p.cq.destroy(), "EBUSY");
    await expectRejects(p.recvCq.destroy(), "EBUSY");
    assert.equal(counts(host).cqs, 2);
    await p.qp.destroy();
    await p.cq.destroy();
    await p.recvCq.destroy();
    assert.equal(counts(host).cqs, 0);
  });
});
