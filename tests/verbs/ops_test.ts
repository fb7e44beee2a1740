/**
 * Every operation, on one host and across two, as rdma-core's test_qpex.py
 * runs them: SEND, SEND_WITH_IMM, RDMA_WRITE, RDMA_WRITE_WITH_IMM, RDMA_READ and
 * the two atomics over RC; then inline data, several SGEs, zero-length
 * messages, unsignaled WRs, FENCE, SOLICITED with solicited-only arming, and
 * UC.
 */

import assert from "node:assert/strict";
import {
  addrOf,
  bytesAt,
  connectPlayers,
  createPlayer,
  expectBytes,
  expectNoWc,
  expectOneWc,
  expectTransport,
  expectWc,
  pattern,
  pollCq,
  recvSrcQp,
  SendFlags,
  sendSrcQp,
  SENTINEL,
  sge,
  sleep,
  traffic,
  verbsSuite,
  WAIT_MS,
  withTimeout,
} from "./players.ts";

verbsSuite("verbs: ops", (test) => {
  test("RC SEND: 10 messages each way, every completion field and byte checked", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    await expectTransport(
      hosts,
      client,
      () => traffic(client, server, { opcode: "SEND", iters: 10, size: 1024 }),
    );
  });

  test("RC SEND_WITH_IMM: immediate data arrives with WITH_IMM set", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    await expectTransport(
      hosts,
      client,
      () => traffic(client, server, { opcode: "SEND_WITH_IMM", iters: 10, size: 777 }),
    );
  });

  test("RC RDMA_WRITE: bytes land at the remote address, no receive completion", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    await expectTransport(
      hosts,
      client,
      () => traffic(client, server, { opcode: "RDMA_WRITE", iters: 10, size: 4096 }),
    );
    await expectNoWc(server.cq, 20, "a plain RDMA WRITE consumes no receive");
    await expectNoWc(client.cq, 0, "nothing left over at the client");
  });

  test("RC RDMA_WRITE_WITH_IMM: consumes a receive, RECV_RDMA_WITH_IMM with byteLen", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    await expectTransport(
      hosts,
      client,
      () => traffic(client, server, { opcode: "RDMA_WRITE_WITH_IMM", iters: 10, size: 3000 }),
    );
  });

  test("RC RDMA_READ: the requester gets the responder's bytes", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    await expectTransport(
      hosts,
      client,
      () => traffic(client, server, { opcode: "RDMA_READ", iters: 10, size: 2048 }),
    );
    await expectNoWc(server.cq, 20, "the responder of a READ sees no completion");
  });

  test("RC ATOMIC_CMP_AND_SWP and ATOMIC_FETCH_AND_ADD: original value back, target updated", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    const target = new DataView(server.buf.bytes.buffer, server.buf.bytes.byteOffset + 64, 8);
    const local = new DataView(client.buf.bytes.buffer, client.buf.bytes.byteOffset + 128, 8);
    target.setBigUint64(0, 0x0102030405060708n, true);
    client.qp.postSend({
      wrId: 1n,
      opcode: "ATOMIC_CMP_AND_SWP",
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(client, 128, 8)],
      atomic: {
        remoteAddr: addrOf(server, 64),
        rkey: server.mr.rkey,
        compareAdd: 0x0102030405060708n,
        swap: 0xfedcba9876543210n,
      },
    });
    await expectOneWc(client.cq, {
      wrId: 1n,
      status: "SUCCESS",
      opcode: "COMP_SWAP",
      byteLen: 8,
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    });
    assert.equal(local.getBigUint64(0, true), 0x0102030405060708n, "original value returned");
    assert.equal(target.getBigUint64(0, true), 0xfedcba9876543210n, "swapped");

    client.qp.postSend({
      wrId: 2n,
      opcode: "ATOMIC_FETCH_AND_ADD",
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(client, 128, 8)],
      atomic: { remoteAddr: addrOf(server, 64), rkey: server.mr.rkey, compareAdd: 0x10n, swap: 0n },
    });
    await expectOneWc(client.cq, {
      wrId: 2n,
      status: "SUCCESS",
      opcode: "FETCH_ADD",
      byteLen: 8,
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    });
    assert.equal(local.getBigUint64(0, true), 0xfedcba9876543210n, "value before the add");
    assert.equal(target.getBigUint64(0, true), 0xfedcba9876543220n, "added");
    await expectNoWc(server.cq, 20, "atomics consume no receive");
  });

  test("messages of many MTUs and odd lengths: SEND, WRITE, READ of 64 KiB + 3", async (hosts) => {
    await using client = await createPlayer(hosts.a, { bufBytes: 512 << 10 });
    await using server = await createPlayer(hosts.b, { bufBytes: 512 << 10 });
    await connectPlayers(client, server, { pathMtu: 1024 });
    const size = (64 << 10) + 3;
    await traffic(client, server, { opcode: "SEND", iters: 2, size });
    await traffic(client, server, { opcode: "RDMA_WRITE", iters: 2, size });
    await traffic(client, server, { opcode: "RDMA_READ", iters: 2, size });
    await traffic(client, server, { opcode: "RDMA_WRITE_WITH_IMM", iters: 2, size: 1 });
  });

  test("inline SEND and RDMA_WRITE: data is taken at post time, lkey not needed", async (hosts) => {
    await using client = await createPlayer(hosts.a, { cap: { maxInlineData: 128 } });
    await using server = await createPlayer(hosts.b, { cap: { maxInlineData: 128 } });
    await connectPlayers(client, server);
    await traffic(client, server, {
      opcode: "SEND",
      iters: 4,
      size: 100,
      sendFlags: SendFlags.INLINE,
    });
    await traffic(client, server, {
      opcode: "RDMA_WRITE_WITH_IMM",
      iters: 4,
      size: 128,
      sendFlags: SendFlags.INLINE,
    });

    // The source is overwritten right after posting, and the SGE's lkey is
    // garbage: with INLINE neither may matter.
    const message = pattern(99, 64);
    bytesAt(client, 0, 64).set(message);
    bytesAt(server, server.dstOff, 128).fill(SENTINEL);
    server.qp.postRecv({ wrId: 5n, sgList: [sge(server, server.dstOff, 128)] });
    client.qp.postSend({
      wrId: 6n,
      opcode: "SEND",
      sendFlags: SendFlags.SIGNALED | SendFlags.INLINE,
      sgList: [sge(client, 0, 64, 0xdeadbeef)],
    });
    bytesAt(client, 0, 64).fill(0);
    await expectOneWc(client.cq, {
      wrId: 6n,
      status: "SUCCESS",
      opcode: "SEND",
      byteLen: 64,
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    });
    await expectOneWc(server.cq, {
      wrId: 5n,
      status: "SUCCESS",
      opcode: "RECV",
      byteLen: 64,
      immData: undefined,
      qpNum: server.qp.qpNum,
      srcQp: recvSrcQp(client),
    });
    expectBytes(bytesAt(server, server.dstOff, 64), message, "inline payload");
  });

  test("several SGEs: gather on send, scatter on receive, for SEND, WRITE and READ", async (hosts) => {
    await using client = await createPlayer(hosts.a, { cap: { maxSendSge: 5, maxRecvSge: 3 } });
    await using server = await createPlayer(hosts.b, { cap: { maxSendSge: 5, maxRecvSge: 3 } });
    await connectPlayers(client, server);
    await traffic(client, server, {
      opcode: "SEND",
      iters: 3,
      size: 5000,
      sendSges: 5,
      recvSges: 3,
    });
    await traffic(client, server, { opcode: "SEND_WITH_IMM", iters: 2, size: 33, sendSges: 4 });
    await traffic(client, server, { opcode: "RDMA_WRITE", iters: 3, size: 9000, sendSges: 5 });
    await traffic(client, server, { opcode: "RDMA_READ", iters: 3, size: 9000, sendSges: 5 });
  });

  test("zero-length SEND, SEND_WITH_IMM, WRITE_WITH_IMM, WRITE and READ complete with byteLen 0", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    await traffic(client, server, { opcode: "SEND", iters: 2, size: 0 });
    await traffic(client, server, { opcode: "SEND_WITH_IMM", iters: 2, size: 0 });
    await traffic(client, server, { opcode: "RDMA_WRITE_WITH_IMM", iters: 2, size: 0 });
    await traffic(client, server, { opcode: "RDMA_WRITE", iters: 2, size: 0 });
    await traffic(client, server, { opcode: "RDMA_READ", iters: 2, size: 0 });

    // No SGE at all on either side.
    server.qp.postRecv({ wrId: 40n, sgList: [] });
    client.qp.postSend({ wrId: 41n, opcode: "SEND", sendFlags: SendFlags.SIGNALED, sgList: [] });
    await expectOneWc(client.cq, {
      wrId: 41n,
      status: "SUCCESS",
      opcode: "SEND",
      byteLen: 0,
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    });
    await expectOneWc(server.cq, {
      wrId: 40n,
      status: "SUCCESS",
      opcode: "RECV",
      byteLen: 0,
      immData: undefined,
      qpNum: server.qp.qpNum,
      srcQp: recvSrcQp(client),
    });
  });

  test("unsignaled WRs complete silently; signaled ones report, in order", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    const n = 12;
    for (let i = 0; i < n; i++) {
      server.qp.postRecv({
        wrId: BigInt(100 + i),
        sgList: [sge(server, server.dstOff + i * 64, 64)],
      });
    }
    const wrs = Array.from({ length: n }, (_, i) => {
      bytesAt(client, i * 64, 64).set(pattern(i, 64));
      return {
        wrId: BigInt(i),
        opcode: "SEND" as const,
        // Every 4th WR signaled, as perftest's cq-mod does.
        sendFlags: i % 4 === 3 ? SendFlags.SIGNALED : 0,
        sgList: [sge(client, i * 64, 64)],
      };
    });
    client.qp.postSend(wrs);
    const sent = await pollCq(client.cq, 3);
    sent.forEach((wc, k) =>
      expectWc(wc, {
        wrId: BigInt(4 * k + 3),
        status: "SUCCESS",
        opcode: "SEND",
        byteLen: 64,
        immData: undefined,
        qpNum: client.qp.qpNum,
        srcQp: sendSrcQp(client),
      }, `signaled WR ${4 * k + 3}`)
    );
    await expectNoWc(client.cq, 20, "unsignaled WRs must not complete");
    const received = await pollCq(server.cq, n);
    received.forEach((wc, i) =>
      expectWc(wc, {
        wrId: BigInt(100 + i),
        status: "SUCCESS",
        opcode: "RECV",
        byteLen: 64,
        immData: undefined,
        qpNum: server.qp.qpNum,
        srcQp: recvSrcQp(client),
      }, `receive ${i}`)
    );
    for (let i = 0; i < n; i++) {
      expectBytes(bytesAt(server, server.dstOff + i * 64, 64), pattern(i, 64), `message ${i}`);
    }
    // The unsignaled WRs freed their slots: the SQ takes maxSendWr more WRs.
    for (let round = 0; round < 2; round++) {
      const batch = Array.from({ length: client.cap.maxSendWr }, (_, i) => ({
        wrId: BigInt(1000 + i),
        opcode: "RDMA_WRITE" as const,
        sendFlags: i === client.cap.maxSendWr - 1 ? SendFlags.SIGNALED : 0,
        sgList: [sge(client, 0, 8)],
        rdma: { remoteAddr: addrOf(server, 0), rkey: server.mr.rkey },
      }));
      client.qp.postSend(batch);
      const [last] = await pollCq(client.cq, 1);
      assert.equal(last?.wrId, BigInt(1000 + client.cap.maxSendWr - 1));
      assert.equal(last?.status, "SUCCESS");
    }
  });

  test("a polled send completion frees its SQ slots at once: a full SQ can be reposted", async (hosts) => {
    // ibv_poll_cq semantics: once the signaled WR's completion is polled, it
    // and the unsignaled WRs before it are retired, so the application may
    // post that many again right away (perftest's cq-mod loop relies on it).
    await using client = await createPlayer(hosts.a, { cap: { maxSendWr: 16 } });
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    // 64 KiB messages keep the device busy while the application polls, as in a bandwidth test.
    const depth = client.qp.cap.maxSendWr;
    const half = depth / 2;
    let next = 0;
    const batch = () =>
      Array.from({ length: half }, (_, i) => ({
        wrId: BigInt(next++),
        opcode: "RDMA_WRITE" as const,
        sendFlags: i === half - 1 ? SendFlags.SIGNALED : 0,
        sgList: [sge(client, 0, 64 << 10)],
        rdma: { remoteAddr: addrOf(server, 0), rkey: server.mr.rkey },
      }));
    // Two half-depth batches in flight; each polled completion makes room for one more.
    client.qp.postSend(batch());
    client.qp.postSend(batch());
    // The point is SQ slot accounting, not volume: across hosts 100 rounds
    // (51 MiB) exercise it as well and keep the case short.
    const rounds = hosts.topology === "two" ? 100 : 500;
    for (let round = 0; round < rounds; round++) {
      // Alternate a spinning poll and an event-driven wait, as applications do.
      let wcs = client.cq.poll(1);
      if (round % 2 === 0) {
        const deadline = performance.now() + WAIT_MS;
        while (wcs.length === 0 && performance.now() < deadline) wcs = client.cq.poll(1);
      } else if (wcs.length === 0) {
        wcs = [await withTimeout(client.cq.next(), WAIT_MS, `batch ${round}`)];
      }
      expectWc(wcs[0], {
        wrId: BigInt(round * half + half - 1),
        status: "SUCCESS",
        opcode: "RDMA_WRITE",
        byteLen: 64 << 10,
        immData: undefined,
        qpNum: client.qp.qpNum,
        srcQp: sendSrcQp(client),
      }, `batch ${round}`);
      client.qp.postSend(batch());
    }
    await pollCq(client.cq, 2);
  });

  test("sqSigAll: every send WR completes even without SIGNALED", async (hosts) => {
    await using client = await createPlayer(hosts.a, { sqSigAll: true });
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    client.qp.postSend([0, 1, 2].map((i) => ({
      wrId: BigInt(i),
      opcode: "RDMA_WRITE" as const,
      sendFlags: 0,
      sgList: [sge(client, 0, 16)],
      rdma: { remoteAddr: addrOf(server, 0), rkey: server.mr.rkey },
    })));
    const wcs = await pollCq(client.cq, 3);
    wcs.forEach((wc, i) =>
      expectWc(wc, {
        wrId: BigInt(i),
        status: "SUCCESS",
        opcode: "RDMA_WRITE",
        byteLen: 16,
        immData: undefined,
        qpNum: client.qp.qpNum,
        srcQp: sendSrcQp(client),
      }, `WR ${i}`)
    );
  });

  test("FENCE: a SEND fenced behind an RDMA_READ carries the bytes the READ fetched", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    const size = 16 << 10;
    for (let round = 0; round < 3; round++) {
      const data = pattern(500 + round, size);
      bytesAt(server, server.srcOff, size).set(data);
      bytesAt(client, client.dstOff, size).fill(0);
      bytesAt(server, server.dstOff, size).fill(SENTINEL);
      server.qp.postRecv({ wrId: 70n, sgList: [sge(server, server.dstOff, size)] });
      client.qp.postSend([
        {
          wrId: 71n,
          opcode: "RDMA_READ",
          sendFlags: SendFlags.SIGNALED,
          sgList: [sge(client, client.dstOff, size)],
          rdma: { remoteAddr: addrOf(server, server.srcOff), rkey: server.mr.rkey },
        },
        {
          wrId: 72n,
          opcode: "SEND",
          sendFlags: SendFlags.SIGNALED | SendFlags.FENCE,
          sgList: [sge(client, client.dstOff, size)],
        },
      ]);
      const [read, send] = await pollCq(client.cq, 2);
      expectWc(read, {
        wrId: 71n,
        status: "SUCCESS",
        opcode: "RDMA_READ",
        byteLen: size,
        immData: undefined,
        qpNum: client.qp.qpNum,
        srcQp: sendSrcQp(client),
      }, "the READ");
      expectWc(send, {
        wrId: 72n,
        status: "SUCCESS",
        opcode: "SEND",
        byteLen: size,
        immData: undefined,
        qpNum: client.qp.qpNum,
        srcQp: sendSrcQp(client),
      }, "the fenced SEND");
      await expectOneWc(server.cq, {
        wrId: 70n,
        status: "SUCCESS",
        opcode: "RECV",
        byteLen: size,
        immData: undefined,
        qpNum: server.qp.qpNum,
        srcQp: recvSrcQp(client),
      });
      expectBytes(bytesAt(server, server.dstOff, size), data, `round ${round}: fenced SEND`);
    }
  });

  test("SOLICITED: a solicited-only armed CQ raises an event for solicited messages only", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    const events: number[] = [];
    const stop = server.dev.onCompletion(server.cq.handle, () => events.push(server.cq.handle));
    try {
      for (let i = 0; i < 4; i++) {
        server.qp.postRecv({
          wrId: BigInt(i),
          sgList: [sge(server, server.dstOff + i * 256, 256)],
        });
      }
      const send = (wrId: bigint, flags: number) =>
        client.qp.postSend({
          wrId,
          opcode: "SEND_WITH_IMM",
          immData: Number(wrId),
          sendFlags: SendFlags.SIGNALED | flags,
          sgList: [sge(client, 0, 32)],
        });
      const expectRecv = (wrId: bigint) =>
        expectOneWc(server.cq, {
          wrId,
          status: "SUCCESS",
          opcode: "RECV",
          byteLen: 32,
          immData: Number(wrId) + 10,
          qpNum: server.qp.qpNum,
          srcQp: recvSrcQp(client),
        }, `receive ${wrId}`);

      await server.cq.reqNotify(true);
      send(10n, 0);
      await pollCq(client.cq, 1);
      await expectRecv(0n);
      await sleep(30);
      assert.deepEqual(events, [], "an unsolicited message must not raise the event");

      send(11n, SendFlags.SOLICITED);
      await pollCq(client.cq, 1);
      await expectRecv(1n);
      const deadline = performance.now() + WAIT_MS;
      while (events.length === 0 && performance.now() < deadline) await sleep(2);
      assert.deepEqual(events, [server.cq.handle], "the solicited message raised one event");

      // The arm is one-shot: another solicited message without re-arming is silent.
      send(12n, SendFlags.SOLICITED);
      await pollCq(client.cq, 1);
      await expectRecv(2n);
      await sleep(30);
      assert.deepEqual(events, [server.cq.handle], "no event without re-arming");

      // Armed for any completion: an unsolicited message raises it.
      await server.cq.reqNotify(false);
      send(13n, 0);
      await pollCq(client.cq, 1);
      await expectRecv(3n);
      const deadline2 = performance.now() + WAIT_MS;
      while (events.length === 1 && performance.now() < deadline2) await sleep(2);
      assert.deepEqual(events, [server.cq.handle, server.cq.handle], "armed NEXT fires on any");
    } finally {
      stop();
    }
  });

  test("many WRs in flight complete in posting order on both sides", async (hosts) => {
    await using client = await createPlayer(hosts.a, { cap: { maxSendWr: 128, maxRecvWr: 128 } });
    await using server = await createPlayer(hosts.b, { cap: { maxSendWr: 128, maxRecvWr: 128 } });
    await connectPlayers(client, server);
    const n = 100;
    server.qp.postRecv(Array.from({ length: n }, (_, i) => ({
      wrId: BigInt(i),
      sgList: [sge(server, server.dstOff + i * 100, 100)],
    })));
    for (let i = 0; i < n; i++) bytesAt(client, i * 100, 100).set(pattern(i, 100));
    client.qp.postSend(Array.from({ length: n }, (_, i) => ({
      wrId: BigInt(i),
      opcode: "SEND" as const,
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(client, i * 100, 100 - (i % 7))],
    })));
    const sent = await pollCq(client.cq, n);
    const got = await pollCq(server.cq, n);
    for (let i = 0; i < n; i++) {
      expectWc(sent[i], {
        wrId: BigInt(i),
        status: "SUCCESS",
        opcode: "SEND",
        byteLen: 100 - (i % 7),
        immData: undefined,
        qpNum: client.qp.qpNum,
        srcQp: sendSrcQp(client),
      }, `send ${i}`);
      expectWc(got[i], {
        wrId: BigInt(i),
        status: "SUCCESS",
        opcode: "RECV",
        byteLen: 100 - (i % 7),
        immData: undefined,
        qpNum: server.qp.qpNum,
        srcQp: recvSrcQp(client),
      }, `receive ${i}`);
      expectBytes(
        bytesAt(server, server.dstOff + i * 100, 100 - (i % 7)),
        pattern(i, 100).subarray(0, 100 - (i % 7)),
        `message ${i}`,
      );
    }
  });

  test("UC: SEND, SEND_WITH_IMM, RDMA_WRITE and RDMA_WRITE_WITH_IMM", async (hosts) => {
    await using client = await createPlayer(hosts.a, { qpType: "UC" });
    await using server = await createPlayer(hosts.b, { qpType: "UC" });
    await connectPlayers(client, server);
    await expectTransport(
      hosts,
      client,
      () => traffic(client, server, { opcode: "SEND", iters: 3, size: 5000 }),
    );
    await traffic(client, server, { opcode: "SEND_WITH_IMM", iters: 3, size: 10 });
    await traffic(client, server, { opcode: "RDMA_WRITE", iters: 3, size: 5000 });
    await traffic(client, server, { opcode: "RDMA_WRITE_WITH_IMM", iters: 3, size: 5000 });
  });
});
