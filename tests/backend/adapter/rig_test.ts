/**
 * The adapter rig validated where the engine works today: both players on
 * one host (the memory-copy path), with real WQE and CQE bytes, the fake
 * clock driving RNR and no-response timers, and the fabric taps and
 * `decide` hook exercised with hand-built packets. The scenarios here are
 * the ones adapter_test.ts runs across two hosts.
 */

import assert from "node:assert/strict";
import { Opcode } from "../../../backend/roce/opcodes.ts";
import { buildPacket } from "../../../backend/roce/packet.ts";
import { DatagramBatch } from "../../../backend/roce/transport.ts";
import { SysError } from "../../../virtqueue/sys/libc.ts";
import { pattern } from "./fixtures/bytes.ts";
import { pair } from "./fixtures/pair.ts";
import { Rig, stat } from "./fixtures/rig.ts";
import {
  BIG_REGION,
  bigMessages,
  everyRcOp,
  remoteAccessError,
  ucOps,
  udSend,
} from "./fixtures/scenarios.ts";
import { ackTimeoutMs, rnrMs, type WireEvent } from "./fixtures/wire.ts";

const SAME_HOST = { hosts: [0, 0] as const };

Deno.test("rig: hosts at 127.0.0.2.. on one fabric, each with its own tables, counters and engine", () => {
  using rig = new Rig({ hosts: 3 });
  assert.deepEqual(rig.hosts.map((h) => h.gid), [
    "::ffff:127.0.0.2",
    "::ffff:127.0.0.3",
    "::ffff:127.0.0.4",
  ]);
  assert.deepEqual(rig.hosts.map((h) => h.endpoint.localPort), [4791, 4791, 4791]);
  assert.throws(
    () => rig.fabric.endpoint("127.0.0.3"),
    (e) => e instanceof SysError && /127\.0\.0\.3:4791/.test(e.message),
    "each host holds its address on the fabric",
  );
  // QPNs are per host: the first QP of every host gets the same number.
  const { a, b } = pair(rig, { hosts: [0, 1], unconnected: true });
  const c = pair(rig, { hosts: [2, 2], unconnected: true });
  assert.equal(a.qp.qpNum, 0x11);
  assert.equal(b.qp.qpNum, 0x11);
  assert.deepEqual([c.a.qp.qpNum, c.b.qp.qpNum], [0x11, 0x12], "two guests share host 2's QPNs");
  assert.notEqual(a.guest.id, b.guest.id);
  assert.equal(stat(rig.host(0), "qps"), 1);
  assert.equal(stat(rig.host(2), "qps"), 2);
  assert.throws(() => rig.total("noSuchCounter"), /no counter "noSuchCounter".*qps/);
  assert.throws(() => rig.host(3), RangeError);
});

Deno.test("rig, same host: every RC operation with real WQE and CQE bytes", () => {
  using rig = new Rig();
  const { a, b } = pair(rig, SAME_HOST);
  everyRcOp(rig, a, b);
  assert.ok(stat(rig.host(0), "localOps") >= 9, "the same-host path moved the data");
  assert.equal(rig.fabric.counters.sent, 0, "nothing went on the fabric");
  assert.equal(rig.total("udpPacketsSent"), 0);
});

Deno.test("rig, same host: UC SEND and WRITEs", () => {
  using rig = new Rig();
  const { a, b } = pair(rig, { ...SAME_HOST, qpType: "UC" });
  ucOps(rig, a, b);
});

Deno.test("rig, same host: UD SENDs get the GRH, a wrong Q_Key is dropped", () => {
  using rig = new Rig();
  udSend(rig, 0, 0);
});

Deno.test("rig, same host: messages of 0..3*MTU+5 bytes at every MTU", () => {
  using rig = new Rig();
  for (const mtu of [256, 4096]) {
    const { a, b } = pair(rig, { ...SAME_HOST, pathMtu: mtu, mrBytes: 20 * BIG_REGION });
    bigMessages(rig, a, b, mtu);
  }
});

Deno.test("rig, same host: a bad R_Key completes REM_ACCESS_ERR and flushes the rest", () => {
  using rig = new Rig();
  const { a, b } = pair(rig, SAME_HOST);
  remoteAccessError(rig, a, b);
});

Deno.test("rig, same host: RNR waits on the fake clock, then a posted receive completes the SEND", () => {
  using rig = new Rig();
  const minRnrTimer = 14; // 1.28 ms
  const { a, b } = pair(rig, { ...SAME_HOST, b: { minRnrTimer } });
  a.mr.bytes.set(pattern(700, 9));
  const start = rig.now;
  a.qp.postSend({ wrId: 1n, opcode: "SEND", sgList: [a.mr.sge(0, 700)] });
  assert.equal(stat(rig.host(0), "rnrNaks"), 1, "no receive posted: RNR at once");
  rig.advance(5);
  assert.deepEqual(a.cq.poll(), [], "the SEND waits while there is no receive");
  // A retry every 1.28 ms of fake time: at 1.28, 2.56 and 3.84 ms.
  assert.equal(stat(rig.host(0), "rnrNaks"), 4, "one retry per RNR delay");
  b.qp.postRecv({ wrId: 2n, sgList: [b.mr.sge(0, 1024)] });
  const [wc] = rig.collect(a.cq, 1);
  assert.equal(wc!.status, "SUCCESS");
  const elapsed = rig.now - start;
  assert.ok(
    Math.abs(elapsed - 4 * rnrMs(minRnrTimer)) < 1e-4,
    `completed at the 4th retry (4 RNR delays), got ${elapsed} ms`,
  );
  const [recv] = rig.collect(b.cq, 1);
  assert.equal(recv!.byteLen, 700);
  assert.deepEqual(b.mr.bytes.subarray(0, 700), pattern(700, 9));
});

Deno.test("rig, same host: rnrRetry 2 ends in RNR_RETRY_EXC_ERR after 2 RNR waits", () => {
  using rig = new Rig();
  const minRnrTimer = 10; // 0.32 ms
  const { a } = pair(rig, { ...SAME_HOST, a: { rnrRetry: 2 }, b: { minRnrTimer } });
  const start = rig.now;
  a.qp.postSend([
    { wrId: 1n, opcode: "SEND", sgList: [a.mr.sge(0, 64)] },
    { wrId: 2n, opcode: "SEND", sgList: [a.mr.sge(0, 64)] },
  ]);
  const wcs = rig.collect(a.cq, 2);
  assert.deepEqual(wcs.map((w) => [w.wrId, w.status]), [
    [1n, "RNR_RETRY_EXC_ERR"],
    [2n, "WR_FLUSH_ERR"],
  ]);
  assert.equal(stat(rig.host(0), "rnrNaks"), 3, "the first try and two retries");
  const elapsed = rig.now - start;
  assert.ok(
    Math.abs(elapsed - 2 * rnrMs(minRnrTimer)) < 1e-5,
    `two RNR delays passed, got ${elapsed} ms`,
  );
  assert.equal(a.qp.state, "ERR");
});

Deno.test("rig, same host: a peer that does not answer ends in RETRY_EXC_ERR on fake time", () => {
  using rig = new Rig();
  const timeout = 10; // 4.194 ms
  const retryCnt = 3;
  const { a, b } = pair(rig, { ...SAME_HOST, a: { timeout, retryCnt } });
  b.qp.modify({ qpState: "ERR" });
  const start = rig.now;
  a.qp.postSend([
    {
      wrId: 1n,
      opcode: "RDMA_WRITE",
      sgList: [a.mr.sge(0, 64)],
      rdma: {
        remoteAddr: b.mr.addr,
        rkey: b.mr.rkey,
      },
    },
    { wrId: 2n, opcode: "SEND", sgList: [a.mr.sge(0, 64)] },
  ]);
  const wcs = rig.collect(a.cq, 2);
  assert.deepEqual(wcs.map((w) => [w.wrId, w.status]), [
    [1n, "RETRY_EXC_ERR"],
    [2n, "WR_FLUSH_ERR"],
  ]);
  const t = ackTimeoutMs(timeout);
  const elapsed = rig.now - start;
  // The memory-copy path counts retryCnt waits; the wire retries retryCnt
  // times after the first timeout, so retryCnt + 1. Either is a bound here.
  assert.ok(
    elapsed >= retryCnt * t - 1e-6 && elapsed <= (retryCnt + 1) * t + 1e-5,
    `retryCnt..retryCnt+1 timeouts of ${t} ms passed, got ${elapsed} ms`,
  );
});

Deno.test("rig: run() reports a stall, a step limit and a time limit, with what it waited for", () => {
  using rig = new Rig();
  assert.throws(
    () => rig.run(() => false, { what: "nothing" }),
    (e) =>
      e instanceof Error && !(e instanceof RangeError) &&
      /waiting for nothing: stalled/.test(e.message),
  );
  // An RNR loop that never ends (rnrRetry 7: forever): a timer is always pending.
  const { a } = pair(rig, { ...SAME_HOST, b: { minRnrTimer: 1 } });
  a.qp.postSend({ wrId: 1n, opcode: "SEND", sgList: [a.mr.sge(0, 8)] });
  assert.throws(
    () => rig.run(() => false, 50),
    (e) => e instanceof RangeError && /no success in 50 steps/.test(e.message),
  );
  assert.throws(
    () => rig.run(() => false, { maxMs: 0.5, what: "a receive" }),
    (e) => e instanceof RangeError && /a receive: not done within 0.5 fake ms/.test(e.message),
  );
  const before = stat(rig.host(0), "rnrNaks");
  const r = rig.run(() => a.cq.poll().length > 0 || stat(rig.host(0), "rnrNaks") >= before + 20);
  assert.ok(r.steps > 0 && r.elapsedMs > 0, "the clock moved to each RNR retry");
});

Deno.test("rig: taps see packets as sent and as received; decide drops and corrupts them", () => {
  using rig = new Rig({ hosts: 2, seed: 5 });
  const [h0, h1] = [rig.host(0), rig.host(1)];
  const events: WireEvent[] = [];
  rig.tap((e) => events.push(e));
  const out = new Uint8Array(256);
  const send = (psn: number) => {
    const n = buildPacket(out, {
      opcode: Opcode.RC_SEND_ONLY,
      destQp: 0x11,
      psn,
      ackReq: true,
      payload: pattern(40, psn),
      icrc: { srcIp: h0.endpoint.localIp, dstIp: h1.endpoint.localIp, srcPort: 49441 },
    });
    h0.transport.send(out.subarray(0, n), {
      ip: h1.transport.localIp,
      port: 4791,
      sourcePort: 49441,
    });
  };
  const received = () => {
    const batch = new DatagramBatch(8, 512);
    return h1.transport.receive(batch);
  };
  send(1);
  rig.fabric.deliver();
  assert.equal(received(), 1);
  rig.decide = (p) => p.index === 1 ? "drop" : p.index === 2 ? "corrupt" : undefined;
  send(2);
  send(3);
  rig.fabric.deliver();
  assert.equal(received(), 1, "the dropped one never arrives");
  const summary = events.map((
    e,
  ) => [e.direction, e.from, e.to, e.packet?.psn ?? -1, e.icrcOk, e.action ?? "-"]);
  assert.equal(summary.length, 5);
  assert.deepEqual(summary.slice(0, 4), [
    ["sent", 0, 1, 1, true, "-"],
    ["received", 0, 1, 1, true, "-"],
    ["sent", 0, 1, 2, true, "drop"],
    ["sent", 0, 1, 3, true, "corrupt"],
  ]);
  const last = events[4]!;
  assert.equal(last.direction, "received");
  assert.equal(last.icrcOk, false, "the corrupted datagram arrives with a bad ICRC");
  assert.equal(events[0]!.packet?.payloadLength, 40);
  assert.match(rig.trace(), /sent h0->h1 RC_SEND_ONLY qp 0x11 psn 0x000002 A .*\[drop\]/);
});

Deno.test("rig: globalClock lends the fake clock to performance.now only while the rig lives", () => {
  const real = performance.now();
  {
    using rig = new Rig({ startMs: 123, globalClock: true });
    assert.equal(performance.now(), 123);
    rig.advance(2);
    assert.equal(performance.now(), 125);
  }
  assert.ok(performance.now() >= real, "performance.now is the real clock again");
  using rig = new Rig({ startMs: 50, globalClock: false });
  assert.notEqual(performance.now(), rig.now);
});
