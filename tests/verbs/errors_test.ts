/**
 * Failure paths, as the IBA and rdma-core's tests expect them: remote access
 * and protection errors with the QP going to ERR and later WRs flushed,
 * length errors on both sides, RNR NAK retries, post-time refusals naming the
 * first bad WR, CQ overrun, MR key lifetime, illegal QP transitions that
 * change nothing, resource counts, the same-host path staying off UDP and
 * the two-host path using it. Cases with one player, or about one host's
 * counters, run on one host only; the rest also across two.
 */

import assert from "node:assert/strict";
import {
  Access,
  addrOf,
  bytesAt,
  connectPlayers,
  counts,
  createPlayer,
  describeWcs,
  expectBytes,
  expectFilled,
  expectNoWc,
  expectOneWc,
  expectPostRefused,
  expectRejects,
  expectThrows,
  expectWc,
  hostList,
  nextAsyncEvent,
  pattern,
  type Player,
  pollCq,
  recvSrcQp,
  SendFlags,
  sendSrcQp,
  SENTINEL,
  sge,
  traffic,
  verbsSuite,
  WAIT_MS,
} from "./players.ts";
import { eventually } from "../helpers/backend.ts";
import type { Backend } from "../../mod.ts";

verbsSuite("verbs: errors", (test) => {
  function write(
    p: Player,
    peer: Player,
    wrId: bigint,
    flags: number = SendFlags.SIGNALED,
    length = 64,
  ) {
    return {
      wrId,
      opcode: "RDMA_WRITE" as const,
      sendFlags: flags,
      sgList: [sge(p, 0, length)],
      rdma: { remoteAddr: addrOf(peer, peer.dstOff), rkey: peer.mr.rkey },
    };
  }

  function send(p: Player, wrId: bigint, flags: number = SendFlags.SIGNALED, length = 64) {
    return { wrId, opcode: "SEND" as const, sendFlags: flags, sgList: [sge(p, 0, length)] };
  }

  /** The flush completion of a send WR: only wrId, status, qpNum and srcQp are defined. */
  function flushed(p: Player, wrId: bigint, srcQp = sendSrcQp(p)) {
    return { wrId, status: "WR_FLUSH_ERR" as const, immData: undefined, qpNum: p.qp.qpNum, srcQp };
  }

  test("RDMA WRITE to an MR without REMOTE_WRITE: REM_ACCESS_ERR, QP to ERR, the rest flushed", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b, {
      access: Access.LOCAL_WRITE | Access.REMOTE_READ,
    });
    await connectPlayers(client, server);
    bytesAt(server, server.dstOff, 128).fill(SENTINEL);
    client.qp.postSend([
      write(client, server, 1n),
      send(client, 2n),
      write(client, server, 3n, 0), // unsignaled: a flushed WR completes anyway
    ]);
    const [first, second, third] = await pollCq(client.cq, 3);
    expectWc(first, {
      wrId: 1n,
      status: "REM_ACCESS_ERR",
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    }, "the refused WRITE");
    expectWc(second, flushed(client, 2n), "the SEND after it");
    expectWc(third, flushed(client, 3n), "the unsignaled WRITE after it");
    assert.equal((await client.qp.query()).state, "ERR");
    expectFilled(bytesAt(server, server.dstOff, 128), SENTINEL, "the target is untouched");

    // Posting on a QP in ERR is allowed and flushes at once.
    client.qp.postSend(send(client, 4n));
    client.qp.postRecv({ wrId: 5n, sgList: [sge(client, client.dstOff, 64)] });
    const late = await pollCq(client.cq, 2);
    const bySq = late.find((w) => w.wrId === 4n);
    const byRq = late.find((w) => w.wrId === 5n);
    expectWc(bySq, flushed(client, 4n), "a SEND posted in ERR");
    expectWc(byRq, flushed(client, 5n, 0), "a receive posted in ERR (no source QP)");
  });

  test("bad lkey: LOC_PROT_ERR at the requester, nothing sent", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    server.qp.postRecv({ wrId: 1n, sgList: [sge(server, server.dstOff, 256)] });
    client.qp.postSend({
      wrId: 2n,
      opcode: "SEND",
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(client, 0, 64, (client.mr.lkey ^ 0xff) >>> 0)],
    });
    await expectOneWc(client.cq, {
      wrId: 2n,
      status: "LOC_PROT_ERR",
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    });
    assert.equal((await client.qp.query()).state, "ERR");
    await expectNoWc(server.cq, 20, "the receive was not consumed");
    assert.equal((await server.qp.query()).state, "RTS", "the responder is unaffected");
  });

  test("receive buffer too small: LOC_LEN_ERR at the receiver, REM_INV_REQ_ERR at the sender", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    server.qp.postRecv({ wrId: 7n, sgList: [sge(server, server.dstOff, 100)] });
    client.qp.postSend(send(client, 8n, SendFlags.SIGNALED, 101));
    await expectOneWc(server.cq, {
      wrId: 7n,
      status: "LOC_LEN_ERR",
      immData: undefined,
      qpNum: server.qp.qpNum,
      srcQp: recvSrcQp(client),
    }, "receiver");
    await expectOneWc(client.cq, {
      wrId: 8n,
      status: "REM_INV_REQ_ERR",
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    }, "sender");
    assert.equal((await client.qp.query()).state, "ERR");
    assert.equal((await server.qp.query()).state, "ERR");
  });

  test("no receive posted: RNR NAKs retried rnrRetry times, then RNR_RETRY_EXC_ERR", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    // 5.12 ms per RNR wait, 3 retries: at least ~15 ms before the error.
    await connectPlayers(client, server, { minRnrTimer: 18, rnrRetry: 3 });
    const stats = (h: Backend) => h.stats() as Record<string, number>;
    const before = { a: stats(hosts.a), b: stats(hosts.b) };
    const t0 = performance.now();
    client.qp.postSend(send(client, 1n));
    await expectOneWc(client.cq, {
      wrId: 1n,
      status: "RNR_RETRY_EXC_ERR",
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    });
    const elapsed = performance.now() - t0;
    assert.ok(elapsed >= 15, `3 RNR waits of 5.12 ms took only ${elapsed.toFixed(2)} ms`);
    assert.ok(elapsed < 1000, `RNR retries took ${elapsed.toFixed(0)} ms`);
    assert.equal((await client.qp.query()).state, "ERR");
    // One RNR NAK, then 3 retries NAKed. One host counts them as `rnrNaks`;
    // across hosts the responder counts the NAKs it sent, the requester those it got.
    const counted = hosts.topology === "same"
      ? [[hosts.a, "rnrNaks", before.a]] as const
      : [[hosts.b, "rnrNaksSent", before.b], [hosts.a, "rnrNaksReceived", before.a]] as const;
    for (const [host, key, was] of counted) {
      const now = stats(host);
      assert.ok(key in now, `${host.ip} has no "${key}" counter`);
      assert.equal(now[key]! - was[key]!, 4, `${key} on ${host.ip}`);
    }
  });

  test("RNR with rnrRetry 0 fails on the first NAK; minRnrTimer 1 keeps retries fast", async (hosts) => {
    for (const rnrRetry of [0, 2]) {
      await using client = await createPlayer(hosts.a);
      await using server = await createPlayer(hosts.b);
      await connectPlayers(client, server, { minRnrTimer: 1, rnrRetry });
      const t0 = performance.now();
      client.qp.postSend(send(client, 1n));
      await expectOneWc(client.cq, {
        wrId: 1n,
        status: "RNR_RETRY_EXC_ERR",
        immData: undefined,
        qpNum: client.qp.qpNum,
        srcQp: sendSrcQp(client),
      }, `rnrRetry ${rnrRetry}`);
      assert.ok(performance.now() - t0 < 500, "0.01 ms RNR waits must not take long");
    }
  });

  test("a receive posted during the RNR wait lets the SEND succeed", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server, { minRnrTimer: 14, rnrRetry: 7 }); // 1.28 ms, forever
    bytesAt(client, 0, 300).set(pattern(1, 300));
    client.qp.postSend(send(client, 1n, SendFlags.SIGNALED, 300));
    await expectNoWc(client.cq, 40, "the SEND waits while the responder has no receive");
    assert.equal((await client.qp.query()).state, "RTS");
    server.qp.postRecv({ wrId: 2n, sgList: [sge(server, server.dstOff, 512)] });
    await expectOneWc(client.cq, {
      wrId: 1n,
      status: "SUCCESS",
      opcode: "SEND",
      byteLen: 300,
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    });
    await expectOneWc(server.cq, {
      wrId: 2n,
      status: "SUCCESS",
      opcode: "RECV",
      byteLen: 300,
      immData: undefined,
      qpNum: server.qp.qpNum,
      srcQp: recvSrcQp(client),
    });
    expectBytes(bytesAt(server, server.dstOff, 300), pattern(1, 300), "payload after RNR");
  });

  test("misaligned atomic is refused at post time with EINVAL", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    expectPostRefused(
      () =>
        client.qp.postSend({
          wrId: 1n,
          opcode: "ATOMIC_CMP_AND_SWP",
          sendFlags: SendFlags.SIGNALED,
          sgList: [sge(client, 0, 8)],
          atomic: {
            remoteAddr: addrOf(server, 12),
            rkey: server.mr.rkey,
            compareAdd: 0n,
            swap: 1n,
          },
        }),
      "EINVAL",
      0,
      /align/i,
    );
    await expectNoWc(client.cq, 20, "nothing posted");
    assert.equal((await client.qp.query()).state, "RTS", "a refused post changes no state");
  });

  test("QP to ERR flushes every outstanding send and receive WR with WR_FLUSH_ERR", async (hosts) => {
    await using client = await createPlayer(hosts.a, { separateRecvCq: true });
    await using server = await createPlayer(hosts.b);
    // The server never posts a receive and asks for 491 ms RNR waits: the
    // client's SENDs stay outstanding until the QP goes to ERR.
    await connectPlayers(client, server, { minRnrTimer: 31, rnrRetry: 7 });
    client.qp.postSend([send(client, 1n), send(client, 2n, 0), send(client, 3n)]);
    client.qp.postRecv([10n, 11n, 12n, 13n].map((wrId) => ({
      wrId,
      sgList: [sge(client, client.dstOff, 64)],
    })));
    await expectNoWc(client.cq, 30, "sends are held by RNR");
    await client.qp.modify({ qpState: "ERR" });
    const sends = await pollCq(client.cq, 3);
    [1n, 2n, 3n].forEach((id, i) => expectWc(sends[i], flushed(client, id), `send ${id}`));
    const recvs = await pollCq(client.recvCq, 4);
    [10n, 11n, 12n, 13n].forEach((id, i) =>
      expectWc(recvs[i], flushed(client, id, 0), `receive ${id}`)
    );
    await expectNoWc(client.cq, 10, "nothing more on the send CQ");
    await expectNoWc(client.recvCq, 10, "nothing more on the receive CQ");
    assert.equal((await client.qp.query()).state, "ERR");
  });

  test("postSend refusals: wrong state, too many SGEs, inline too long; earlier WRs posted", async (hosts) => {
    await using client = await createPlayer(hosts.a, { cap: { maxSendSge: 2, maxInlineData: 32 } });
    await using server = await createPlayer(hosts.b);
    // Wrong state: RESET, INIT and RTR refuse sends.
    expectThrows(() => client.qp.postSend(send(client, 1n)), "EINVAL", /RESET/);
    await client.qp.modify({
      qpState: "INIT",
      pkeyIndex: 0,
      portNum: 1,
      qpAccessFlags: Access.REMOTE_WRITE,
    });
    expectThrows(() => client.qp.postSend(send(client, 1n)), "EINVAL", /INIT/);
    await client.qp.modify({ qpState: "RESET" });
    await connectPlayers(client, server);

    for (let i = 0; i < 3; i++) {
      server.qp.postRecv({ wrId: BigInt(i), sgList: [sge(server, server.dstOff + i * 64, 64)] });
    }
    bytesAt(client, 0, 64).set(pattern(0, 64));
    const tooMany = {
      ...send(client, 12n),
      sgList: [sge(client, 0, 8), sge(client, 8, 8), sge(client, 16, 8)],
    };
    expectPostRefused(
      () => client.qp.postSend([send(client, 10n), send(client, 11n), tooMany, send(client, 13n)]),
      "EINVAL",
      2,
      /SGE|sge/,
    );
    const sent = await pollCq(client.cq, 2);
    expectWc(sent[0], {
      wrId: 10n,
      status: "SUCCESS",
      opcode: "SEND",
      byteLen: 64,
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    }, "WR 0 was posted");
    expectWc(sent[1], {
      wrId: 11n,
      status: "SUCCESS",
      opcode: "SEND",
      byteLen: 64,
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    }, "WR 1 was posted");
    await expectNoWc(client.cq, 20, "WRs 2 and 3 were not posted");
    assert.equal(server.cq.poll(8).length, 2, "exactly two messages arrived");

    expectPostRefused(
      () =>
        client.qp.postSend([
          { ...send(client, 20n, SendFlags.SIGNALED | SendFlags.INLINE, 32) },
          { ...send(client, 21n, SendFlags.SIGNALED | SendFlags.INLINE, 33) },
        ]),
      "EINVAL",
      1,
      /inline/i,
    );
    await expectOneWc(client.cq, {
      wrId: 20n,
      status: "SUCCESS",
      opcode: "SEND",
      byteLen: 32,
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    }, "the inline WR within the limit");
    await expectNoWc(client.cq, 20, "the inline WR over the limit was not posted");
  });

  test("postSend and postRecv refuse a full queue with ENOMEM, naming the first WR that did not fit", async (hosts) => {
    await using client = await createPlayer(hosts.a, { cap: { maxSendWr: 4, maxRecvWr: 4 } });
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server, { minRnrTimer: 31, rnrRetry: 7 });
    // The device may grant more than asked: fill what was granted.
    const maxRecv = client.qp.cap.maxRecvWr;
    const maxSend = client.qp.cap.maxSendWr;
    assert.ok(maxRecv >= 4 && maxSend >= 4, `granted ${maxSend}/${maxRecv}`);
    const recvIds = Array.from({ length: maxRecv + 2 }, (_, i) => BigInt(100 + i));
    expectPostRefused(
      () =>
        client.qp.postRecv(recvIds.map((wrId) => ({
          wrId,
          sgList: [sge(client, client.dstOff, 64)],
        }))),
      "ENOMEM",
      maxRecv,
      /full|outstanding|maxRecvWr/i,
    );
    // Sends: the server never receives, so all stay outstanding.
    const sendIds = Array.from({ length: maxSend + 1 }, (_, i) => BigInt(i));
    expectPostRefused(
      () => client.qp.postSend(sendIds.map((id) => send(client, id, 0))),
      "ENOMEM",
      maxSend,
      /full|outstanding|maxSendWr/i,
    );
    expectPostRefused(() => client.qp.postSend(send(client, 9999n)), "ENOMEM", 0, /full/i);
    await client.qp.modify({ qpState: "ERR" });
    const wcs = await pollCq(client.cq, maxSend + maxRecv);
    const ids = wcs.map((w) => w.wrId).sort((a, b) => Number(a - b));
    assert.deepEqual(
      ids,
      [...sendIds.slice(0, maxSend), ...recvIds.slice(0, maxRecv)],
      "exactly the posted WRs flushed",
    );
    assert.ok(wcs.every((w) => w.status === "WR_FLUSH_ERR"), describeWcs(wcs));
    await expectNoWc(client.cq, 10);
  });

  test(
    "postRecv refusals: RESET state and too many SGEs",
    { only: "same" },
    async ({ a: host }) => {
      await using p = await createPlayer(host, { cap: { maxRecvSge: 2 } });
      expectThrows(
        () => p.qp.postRecv({ wrId: 1n, sgList: [sge(p, 0, 8)] }),
        "EINVAL",
        /RESET/,
      );
      await p.qp.modify({
        qpState: "INIT",
        pkeyIndex: 0,
        portNum: 1,
        qpAccessFlags: Access.REMOTE_WRITE,
      });
      // INIT accepts receives.
      expectPostRefused(
        () =>
          p.qp.postRecv([
            { wrId: 1n, sgList: [sge(p, 0, 8)] },
            { wrId: 2n, sgList: [sge(p, 0, 8), sge(p, 8, 8), sge(p, 16, 8)] },
          ]),
        "EINVAL",
        1,
        /SGE|sge/,
      );
      await p.qp.modify({ qpState: "ERR" });
      await expectOneWc(p.cq, flushed(p, 1n, 0), "only the first receive was posted");
      await expectNoWc(p.cq, 10);
    },
  );

  test("CQ overrun raises an async CQ_ERR event for that CQ", async (hosts) => {
    await using client = await createPlayer(hosts.a, { cqe: 4 });
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    const n = client.cq.cqe + 4;
    client.qp.postSend(
      Array.from({ length: n }, (_, i) => write(client, server, BigInt(i), SendFlags.SIGNALED, 8)),
    );
    const event = await nextAsyncEvent(client.dev);
    assert.equal(event.type, "CQ_ERR");
    assert.equal(event.element, client.cq.handle);
    // The completions past the CQ's size are lost and counted (the counter may trail the event).
    const overruns = () => (hosts.a.stats() as Record<string, number>).cqOverruns ?? 0;
    assert.ok(await eventually(() => overruns() === n - client.cq.cqe, WAIT_MS), `${overruns()}`);
    // The CQ still holds the completions that fit, oldest first.
    const kept = await pollCq(client.cq, client.cq.cqe);
    assert.deepEqual(
      kept.map((w) => [w.wrId, w.status]),
      Array.from({ length: client.cq.cqe }, (_, i) => [BigInt(i), "SUCCESS"]),
    );
  });

  test("MR: REMOTE_WRITE or REMOTE_ATOMIC without LOCAL_WRITE is EINVAL and registers nothing", {
    only: "same",
  }, async ({ a: host }) => {
    await using p = await createPlayer(host);
    const buf = p.dev.allocBuffer(4096);
    const mrs = counts(host).mrs!;
    await expectRejects(p.pd.regMr(buf, Access.REMOTE_WRITE), "EINVAL", /LOCAL_WRITE/);
    await expectRejects(
      p.pd.regMr(buf, Access.REMOTE_ATOMIC | Access.REMOTE_READ),
      "EINVAL",
      /LOCAL_WRITE/,
    );
    assert.equal(counts(host).mrs, mrs, "no MR was created");
    const ok = await p.pd.regMr(buf, Access.REMOTE_READ);
    assert.equal(counts(host).mrs, mrs + 1, "REMOTE_READ alone is fine");
    await ok.dereg();
  });

  test("MR: after dereg the old rkey fails remotely, also once its slot is reused", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    const extra = server.dev.allocBuffer(8192, 4096);
    const old = await server.pd.regMr(extra, Access.LOCAL_WRITE | Access.REMOTE_WRITE);
    const oldKey = old.rkey;
    const oldAddr = old.addr;
    // It works while registered.
    client.qp.postSend({
      ...write(client, server, 1n),
      rdma: { remoteAddr: oldAddr, rkey: oldKey },
    });
    await expectOneWc(client.cq, {
      wrId: 1n,
      status: "SUCCESS",
      opcode: "RDMA_WRITE",
      byteLen: 64,
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    });
    await old.dereg();
    // Register again over the same memory: the table may reuse the slot, never the key.
    const again = await server.pd.regMr(extra, Access.LOCAL_WRITE | Access.REMOTE_WRITE);
    assert.notEqual(again.rkey, oldKey, "a new registration has a new rkey");
    assert.notEqual(again.lkey, old.lkey, "and a new lkey");
    extra.bytes.fill(SENTINEL);
    client.qp.postSend({
      ...write(client, server, 2n),
      rdma: { remoteAddr: oldAddr, rkey: oldKey },
    });
    await expectOneWc(client.cq, {
      wrId: 2n,
      status: "REM_ACCESS_ERR",
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    });
    expectFilled(extra.bytes, SENTINEL, "nothing written through the stale rkey");
  });

  test("QP state machine: illegal transitions and attributes are EINVAL and change nothing", async (hosts) => {
    await using p = await createPlayer(hosts.a);
    await using peer = await createPlayer(hosts.b);
    const qp = p.qp;
    const stateIs = async (state: string, what: string) =>
      assert.equal((await qp.query()).state, state, what);

    await expectRejects(qp.modify({ qpState: "RTR" }), "EINVAL", /RESET|RTR/);
    await stateIs("RESET", "RESET->RTR refused");
    await expectRejects(qp.modify({ qpState: "RTS", sqPsn: 1 }), "EINVAL", /RESET|RTS/);
    await expectRejects(
      qp.modify({ qpState: "INIT", pkeyIndex: 0, portNum: 1 }),
      "EINVAL",
      /qpAccessFlags/,
    );
    await expectRejects(
      qp.modify({ qpState: "INIT", pkeyIndex: 0, portNum: 1, qpAccessFlags: 0, timeout: 14 }),
      "EINVAL",
      /timeout/,
    );
    await expectRejects(
      qp.modify({ qpState: "INIT", pkeyIndex: 0, portNum: 1, qpAccessFlags: 0, qkey: 5 }),
      "EINVAL",
      /qkey/,
    );
    await expectRejects(
      qp.modify({ qpState: "INIT", pkeyIndex: 0, portNum: 2, qpAccessFlags: 0 }),
      "EINVAL",
      /portNum/,
    );
    await expectRejects(
      qp.modify({ qpState: "INIT", pkeyIndex: 1, portNum: 1, qpAccessFlags: 0 }),
      "EINVAL",
      /pkeyIndex/,
    );
    await expectRejects(
      qp.modify({ qpState: "INIT", curQpState: "RTS", pkeyIndex: 0, portNum: 1, qpAccessFlags: 0 }),
      "EINVAL",
      /curQpState|RTS/,
    );
    await stateIs("RESET", "every refused RESET->INIT left the QP in RESET");

    await qp.modify({
      qpState: "INIT",
      pkeyIndex: 0,
      portNum: 1,
      qpAccessFlags: Access.REMOTE_WRITE,
    });
    await expectRejects(qp.modify({ qpState: "RTS", sqPsn: 0 }), "EINVAL", /INIT|RTS/);
    const rtr = {
      qpState: "RTR" as const,
      pathMtu: 1024,
      destQpNum: peer.qp.qpNum,
      rqPsn: 0,
      maxDestRdAtomic: 1,
      minRnrTimer: 12,
      ahAttr: { dgid: hosts.b.gid, portNum: 1 },
    };
    const { destQpNum: _d, ...noDest } = rtr;
    await expectRejects(qp.modify(noDest), "EINVAL", /destQpNum/);
    await expectRejects(qp.modify({ ...rtr, pathMtu: 1000 }), "EINVAL", /pathMtu/);
    await expectRejects(qp.modify({ ...rtr, pathMtu: 8192 }), "EINVAL", /pathMtu/);
    await expectRejects(qp.modify({ ...rtr, rqPsn: 1 << 24 }), "EINVAL", /rqPsn/);
    await expectRejects(qp.modify({ ...rtr, minRnrTimer: 32 }), "EINVAL", /minRnrTimer/);
    await expectRejects(qp.modify({ ...rtr, destQpNum: 1 << 24 }), "EINVAL", /destQpNum/);
    await expectRejects(qp.modify({ ...rtr, maxDestRdAtomic: 1000 }), "EINVAL", /maxDestRdAtomic/);
    await expectRejects(qp.modify({ ...rtr, sqPsn: 0 }), "EINVAL", /sqPsn/);
    const q = await qp.query();
    assert.equal(q.state, "INIT", "every refused INIT->RTR left the QP in INIT");
    assert.notEqual(q.attr.pathMtu, 8192, "a refused pathMtu was not applied");
    assert.notEqual(q.attr.destQpNum, 1 << 24);

    await qp.modify(rtr);
    const rts = {
      qpState: "RTS" as const,
      sqPsn: 5,
      timeout: 14,
      retryCnt: 7,
      rnrRetry: 7,
      maxRdAtomic: 1,
    };
    const { sqPsn: _s, ...noPsn } = rts;
    await expectRejects(qp.modify(noPsn), "EINVAL", /sqPsn/);
    await expectRejects(qp.modify({ ...rts, retryCnt: 8 }), "EINVAL", /retryCnt/);
    await expectRejects(qp.modify({ ...rts, timeout: 32 }), "EINVAL", /timeout/);
    await expectRejects(qp.modify({ ...rts, pathMtu: 1024 }), "EINVAL", /pathMtu/);
    await stateIs("RTR", "every refused RTR->RTS left the QP in RTR");
    await qp.modify(rts);
    await stateIs("RTS", "the legal path still works after the refusals");
    await expectRejects(qp.modify({ qpState: "INIT" }), "EINVAL", /RTS|INIT/);
    await expectRejects(qp.modify({ qpState: "SQE" }), "EINVAL", /RTS|SQE/);
    await stateIs("RTS", "RTS->INIT and RTS->SQE refused");
    await qp.modify({ qpState: "ERR" });
    await stateIs("ERR", "any state -> ERR");
    await expectRejects(qp.modify({ qpState: "RTS" }), "EINVAL", /ERR|RTS/);
    await qp.modify({ qpState: "RESET" });
    await stateIs("RESET", "any state -> RESET");
  });

  test("UD QP state machine: qkey required at INIT, RC-only attributes refused", {
    only: "same",
  }, async ({ a: host }) => {
    await using p = await createPlayer(host, { qpType: "UD" });
    await expectRejects(
      p.qp.modify({ qpState: "INIT", pkeyIndex: 0, portNum: 1 }),
      "EINVAL",
      /qkey/,
    );
    await expectRejects(
      p.qp.modify({ qpState: "INIT", pkeyIndex: 0, portNum: 1, qkey: 1, qpAccessFlags: 0 }),
      "EINVAL",
      /qpAccessFlags/,
    );
    assert.equal((await p.qp.query()).state, "RESET");
    await p.qp.modify({ qpState: "INIT", pkeyIndex: 0, portNum: 1, qkey: 0x1234 });
    await expectRejects(
      p.qp.modify({ qpState: "RTR", destQpNum: 0x11 }),
      "EINVAL",
      /destQpNum/,
    );
    await p.qp.modify({ qpState: "RTR" });
    await expectRejects(p.qp.modify({ qpState: "RTS" }), "EINVAL", /sqPsn/);
    await expectRejects(
      p.qp.modify({ qpState: "RTS", sqPsn: 0, retryCnt: 7 }),
      "EINVAL",
      /retryCnt/,
    );
    await p.qp.modify({ qpState: "RTS", sqPsn: 0 });
    const q = await p.qp.query();
    assert.equal(q.state, "RTS");
    assert.equal(q.attr.qkey, 0x1234);
  });

  test("resource counts return to 0 after destroying everything, and after dev.close()", {
    only: "same",
  }, async ({ a: host }) => {
    const zero = { pds: 0, mrs: 0, cqs: 0, qps: 0, srqs: 0, ahs: 0 };
    assert.deepEqual(counts(host), zero);
    {
      await using p = await createPlayer(host, { separateRecvCq: true });
      const srq = await p.pd.createSrq({ maxWr: 16, maxSge: 1 });
      const ah = await p.pd.createAh({ dgid: host.gid, portNum: 1 });
      assert.deepEqual(counts(host), { pds: 1, mrs: 1, cqs: 2, qps: 1, srqs: 1, ahs: 1 });
      // Parents refuse while children live, and stay.
      await expectRejects(p.pd.dealloc(), "EBUSY");
      await expectRejects(p.cq.destroy(), "EBUSY");
      assert.deepEqual(counts(host), { pds: 1, mrs: 1, cqs: 2, qps: 1, srqs: 1, ahs: 1 });
      await p.qp.destroy();
      assert.equal(counts(host).qps, 0);
      await srq.destroy();
      await ah.destroy();
      await p.recvCq.destroy();
      await p.cq.destroy();
      await expectRejects(p.pd.dealloc(), "EBUSY");
      await p.mr.dereg();
      await p.pd.dealloc();
      assert.deepEqual(counts(host), zero, "all destroyed");
      // A destroyed object is gone: using it again fails.
      expectThrows(() => p.qp.postSend(send(p, 1n)), "EINVAL");
    }
    const p = await createPlayer(host);
    await p.pd.createSrq({ maxWr: 8, maxSge: 1 });
    await p.pd.createAh({ dgid: host.gid, portNum: 1 });
    await p.dev.createCq({ cqe: 8 });
    assert.deepEqual(counts(host), { pds: 1, mrs: 1, cqs: 2, qps: 1, srqs: 1, ahs: 1 });
    await p.dev.close();
    assert.ok(
      await eventually(() => host.stats().guests === 0, WAIT_MS),
      "the guest is gone after close",
    );
    assert.deepEqual(counts(host), zero, "closing the device freed everything");
    await expectRejects(p.dev.allocPd(), "ENODEV");
  });

  test("same-host path: data moves without UDP packets", { only: "same" }, async ({ a: host }) => {
    await using client = await createPlayer(host);
    await using server = await createPlayer(host);
    await connectPlayers(client, server);
    const before = host.stats() as Record<string, number>;
    await traffic(client, server, { opcode: "SEND", iters: 4, size: 4096 });
    await traffic(client, server, { opcode: "RDMA_WRITE", iters: 4, size: 4096 });
    await traffic(client, server, { opcode: "RDMA_READ", iters: 4, size: 4096 });
    const after = host.stats() as Record<string, number>;
    const wire = Object.keys(after).filter((k) => /udp|packet|pkt|icrc|retrans/i.test(k));
    for (const key of wire) {
      assert.equal(after[key], before[key], `${key} moved on the same-host path`);
    }
    if ("localBytes" in after) {
      assert.equal(
        after.localBytes! - before.localBytes!,
        3 * 2 * 4 * 4096,
        "every byte went through the local path",
      );
    }
  });

  test("two-host path: data moves as UDP packets both ways, none through the local path", {
    only: "two",
  }, async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    const before = hostList(hosts).map((h) => h.stats());
    await traffic(client, server, { opcode: "SEND", iters: 4, size: 4096 });
    await traffic(client, server, { opcode: "RDMA_WRITE", iters: 4, size: 4096 });
    await traffic(client, server, { opcode: "RDMA_READ", iters: 4, size: 4096 });
    hostList(hosts).forEach((h, i) => {
      const was = before[i]!;
      const now = h.stats();
      // Each host was requester for 12 messages and answered 12: it sent and received.
      assert.ok(now.udpPacketsSent - was.udpPacketsSent >= 12, `${h.ip} sent UDP packets`);
      assert.ok(now.udpPacketsReceived - was.udpPacketsReceived >= 12, `${h.ip} received some`);
      assert.equal(now.localOps, was.localOps, `localOps moved on ${h.ip}`);
      assert.equal(now.localBytes, was.localBytes, `localBytes moved on ${h.ip}`);
    });
  });

  test("a peer QP that is gone: the requester retries, then RETRY_EXC_ERR", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    // timeout 1 = 8.192 us per retry; retryCnt 2.
    await connectPlayers(client, server, { timeout: 1, retryCnt: 2 });
    await server.qp.destroy();
    client.qp.postSend(send(client, 1n));
    await expectOneWc(client.cq, {
      wrId: 1n,
      status: "RETRY_EXC_ERR",
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    });
    assert.equal((await client.qp.query()).state, "ERR");
  });
});
