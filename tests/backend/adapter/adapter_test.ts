/**
 * State machines of the RoCE host adapter, two hosts on one seeded
 * `LossyFabric` (fixtures/rig.ts), checked against the IBA semantics in
 * shared/WIRE.md: every operation with its bytes, segmentation at every
 * MTU, go-back-N under drop/reorder/duplicate/corrupt, duplicate READs and
 * atomics answered from saved state, ACK coalescing, sequence NAKs, RNR,
 * retry and RNR-retry exhaustion on the fake clock, remote access errors,
 * max_rd_atomic, PSN wrap, and replay from the seed.
 *
 * Packets are watched with the rig's taps: "sent" events come from the
 * fabric's `decide` hook (before impairments), "received" ones from the
 * hosts' transports (what a host really got).
 */

import assert from "node:assert/strict";
import type { SendWr, WorkCompletion } from "../../../driver/types.ts";
import { Op } from "../../../protocol/device_interface.ts";
import type { Impairments } from "../../../backend/roce/lossy_fabric.ts";
import { Opcode, OpFlag } from "../../../backend/roce/opcodes.ts";
import { SEND_WINDOW } from "../../../backend/adapter/requester.ts";
import { assertBytes, assertFilled, pattern } from "./fixtures/bytes.ts";
import { pair, type PairOptions, type Side } from "./fixtures/pair.ts";
import { Rig, stat } from "./fixtures/rig.ts";
import {
  BIG_REGION,
  bigMessages,
  bigSizes,
  everyRcOp,
  remoteAccessError,
  SENTINEL,
  ucOps,
  UD_QKEY,
  udSend,
} from "./fixtures/scenarios.ts";
import {
  ackTimeoutMs,
  aethKind,
  describeEvent,
  isNak,
  isReadOrAtomicRequest,
  isRequest,
  isRnrNak,
  NakCode,
  opcodeName,
  rnrMs,
  type WireEvent,
} from "./fixtures/wire.ts";

// ---- helpers -------------------------------------------------------------

/** Every wire event of `rig` from now on. */
function record(rig: Rig): WireEvent[] {
  const events: WireEvent[] = [];
  rig.tap((e) => events.push(e));
  return events;
}

/** Parsed packets sent by host `from`. */
function sentBy(
  events: readonly WireEvent[],
  from: number,
): (WireEvent & { packet: NonNullable<WireEvent["packet"]> })[] {
  return events.filter((e): e is WireEvent & { packet: NonNullable<WireEvent["packet"]> } =>
    e.direction === "sent" && e.from === from && e.packet !== null
  );
}

/** Parsed packets received by host `to`. */
function receivedBy(
  events: readonly WireEvent[],
  to: number,
): (WireEvent & { packet: NonNullable<WireEvent["packet"]> })[] {
  return events.filter((e): e is WireEvent & { packet: NonNullable<WireEvent["packet"]> } =>
    e.direction === "received" && e.to === to && e.packet !== null
  );
}

/** `psn + n` modulo 2^24. */
function psnPlus(psn: number, n: number): number {
  return (psn + n) & 0xff_ffff;
}

/** Packets a message of `length` bytes takes at `mtu` (at least one). */
function packetsFor(length: number, mtu: number): number {
  return Math.max(1, Math.ceil(length / mtu));
}

/** How many times each PSN was sent in `packets`. */
function psnCounts(packets: readonly { packet: { psn: number } }[]): Map<number, number> {
  const counts = new Map<number, number>();
  for (const e of packets) counts.set(e.packet.psn, (counts.get(e.packet.psn) ?? 0) + 1);
  return counts;
}

/** Asserts the completions are `[wrId, status]` pairs in order. */
function assertStatuses(
  wcs: readonly WorkCompletion[],
  want: [bigint, string][],
  what: string,
): void {
  assert.deepEqual(wcs.map((w) => [w.wrId, w.status]), want, what);
}

/** Two hosts, two connected players. */
function twoHosts(
  options: PairOptions & { seed?: number; impairments?: Impairments } = {},
): { rig: Rig; a: Side; b: Side; psnA: number; psnB: number } {
  const rig = new Rig({ hosts: 2, seed: options.seed ?? 1, impairments: options.impairments });
  const { a, b, path } = pair(rig, options);
  return { rig, a, b, psnA: path!.a.psn, psnB: path!.b.psn };
}

// ---- every operation -------------------------------------------------------

Deno.test("adapter: every RC operation across two hosts, bytes and completions verified", () => {
  const { rig, a, b } = twoHosts();
  using _ = rig;
  const events = record(rig);
  everyRcOp(rig, a, b);
  assert.equal(rig.total("localOps"), 0, "nothing took the same-host path");
  assert.ok(stat(rig.host(0), "udpPacketsSent") > 0 && stat(rig.host(1), "udpPacketsSent") > 0);
  assert.ok(stat(rig.host(1), "udpPacketsReceived") > 0);
  const sent = events.filter((e) => e.direction === "sent");
  assert.ok(sent.length >= 9, "requests and responses crossed the fabric");
  for (const e of sent) {
    assert.ok(e.packet !== null, `${describeEvent(e)}: parses`);
    assert.ok(e.icrcOk, `${describeEvent(e)}: ICRC right for its addresses and ports`);
    assert.equal(e.packet!.info.transport, "RC");
  }
  // Both first QPs are 0x11: rxe's RC source port for QPN 0x11 with 0x11 is 49441 (WIRE.md).
  assert.deepEqual([...new Set(sent.map((e) => e.sourcePort))], [49441], "RC UDP source port");
  const opcodes = new Set(sentBy(events, 0).map((e) => opcodeName(e.packet.opcode)));
  for (
    const name of [
      "RC_SEND_FIRST",
      "RC_SEND_LAST",
      "RC_SEND_ONLY_WITH_IMMEDIATE",
      "RC_SEND_ONLY",
      "RC_RDMA_WRITE_FIRST",
      "RC_RDMA_WRITE_LAST",
      "RC_RDMA_WRITE_LAST_WITH_IMMEDIATE",
      "RC_RDMA_READ_REQUEST",
      "RC_COMPARE_SWAP",
      "RC_FETCH_ADD",
    ]
  ) {
    assert.ok(opcodes.has(name), `A sent ${name} (it sent ${[...opcodes].join(", ")})`);
  }
  const answers = new Set(sentBy(events, 1).map((e) => opcodeName(e.packet.opcode)));
  for (const name of ["RC_ACKNOWLEDGE", "RC_ATOMIC_ACKNOWLEDGE", "RC_RDMA_READ_RESPONSE_FIRST"]) {
    assert.ok(answers.has(name), `B sent ${name} (it sent ${[...answers].join(", ")})`);
  }
});

Deno.test("adapter: UC SEND and WRITEs across two hosts", () => {
  const { rig, a, b } = twoHosts({ qpType: "UC" });
  using _ = rig;
  const events = record(rig);
  ucOps(rig, a, b);
  const sent = events.filter((e) => e.direction === "sent");
  assert.ok(sent.length > 0 && sent.every((e) => e.packet?.info.transport === "UC"));
  assert.ok(sent.every((e) => e.from === 0), "UC: the responder sends nothing back");
});

Deno.test("adapter: UD SENDs across two hosts carry DETH and arrive with the GRH", () => {
  using rig = new Rig();
  const events = record(rig);
  udSend(rig, 0, 1);
  const ud = sentBy(events, 0);
  assert.deepEqual(
    ud.map((e) => opcodeName(e.packet.opcode)),
    ["UD_SEND_ONLY", "UD_SEND_ONLY_WITH_IMMEDIATE", "UD_SEND_ONLY"],
  );
  assert.deepEqual(ud.map((e) => e.packet.qkey), [UD_QKEY, UD_QKEY, 0x2222]);
  assert.deepEqual(ud.map((e) => e.packet.payloadLength), [200, 64, 32]);
});

// ---- segmentation --------------------------------------------------------

for (const mtu of [256, 512, 1024, 2048, 4096]) {
  Deno.test(`adapter: segmentation at MTU ${mtu}: FIRST/MIDDLE/LAST/ONLY, PSNs, READ responses`, () => {
    const { rig, a, b, psnA } = twoHosts({ pathMtu: mtu, mrBytes: 20 * BIG_REGION });
    using _ = rig;
    const events = record(rig);
    bigMessages(rig, a, b, mtu);
    // What IBA says A must send for SEND, WRITE, READ of each size, in order.
    const want: string[] = [];
    const reads: { psn: number; length: number }[] = [];
    let psn = psnA;
    for (const size of bigSizes(mtu)) {
      for (const op of ["SEND", "RDMA_WRITE"] as const) {
        const n = packetsFor(size, mtu);
        for (let i = 0; i < n; i++) {
          const part = n === 1 ? "ONLY" : i === 0 ? "FIRST" : i === n - 1 ? "LAST" : "MIDDLE";
          const bytes = i < n - 1 ? mtu : size - (n - 1) * mtu;
          const reth = op === "RDMA_WRITE" && i === 0 ? ` dma ${size}` : "";
          want.push(`RC_${op}_${part} psn ${psnPlus(psn, i)} ${bytes} B${reth}`);
        }
        psn = psnPlus(psn, n);
      }
      want.push(`RC_RDMA_READ_REQUEST psn ${psn} 0 B dma ${size}`);
      reads.push({ psn, length: size });
      psn = psnPlus(psn, packetsFor(size, mtu));
    }
    const got = sentBy(events, 0).filter((e) => isRequest(e.packet)).map((e) => {
      const p = e.packet;
      const bytes = (p.info.flags & OpFlag.PAYLOAD) !== 0 ? p.payloadLength : 0;
      const reth = p.info.offsets.reth >= 0 ? ` dma ${p.rethDmaLen}` : "";
      return `${opcodeName(p.opcode)} psn ${p.psn} ${bytes} B${reth}`;
    });
    assert.deepEqual(got, want, "A's requests on a clean fabric: each once, in order");
    // B answers each READ with one response per MTU, on the READ's PSNs.
    const wantResponses: string[] = [];
    for (const r of reads) {
      const n = packetsFor(r.length, mtu);
      for (let i = 0; i < n; i++) {
        const part = n === 1 ? "ONLY" : i === 0 ? "FIRST" : i === n - 1 ? "LAST" : "MIDDLE";
        const bytes = i < n - 1 ? mtu : r.length - (n - 1) * mtu;
        wantResponses.push(`RC_RDMA_READ_RESPONSE_${part} psn ${psnPlus(r.psn, i)} ${bytes} B`);
      }
    }
    const responses = sentBy(events, 1)
      .filter((e) => e.packet.info.name.startsWith("RC_RDMA_READ_RESPONSE"))
      .map((e) => `${opcodeName(e.packet.opcode)} psn ${e.packet.psn} ${e.packet.payloadLength} B`);
    assert.deepEqual(responses, wantResponses, "READ responses");
    for (const e of sentBy(events, 1)) {
      if (e.packet.info.offsets.aeth >= 0) {
        assert.equal(
          aethKind(e.packet.syndrome),
          "ACK",
          `${describeEvent(e)}: no NAK on a clean fabric`,
        );
      }
    }
  });
}

// ---- loss, reordering, duplication, corruption ---------------------------

/**
 * Mixed traffic for lossy runs: per round a 3000-byte SEND, a 5000-byte
 * WRITE, a 4000-byte READ and a fetch-and-add of 3, `rounds` times. Checks
 * completions in order, receive lengths, bytes and atomic results.
 */
function mixedTraffic(rig: Rig, a: Side, b: Side, rounds: number): void {
  const A = a.mr, B = b.mr;
  const REGION = 8192;
  A.bytes.fill(SENTINEL);
  B.bytes.fill(SENTINEL);
  const counter = B.at + 7 * REGION;
  b.guest.memory.setU64(counter, 1000n);
  const sends: SendWr[] = [];
  const recvs = [];
  for (let r = 0; r < rounds; r++) {
    // Round r uses MR offset r * 3 * REGION .. for its three data regions.
    const base = (r % 2) * 3 * REGION;
    const [s, w, rd] = [base, base + REGION, base + 2 * REGION];
    A.bytes.set(pattern(3000, 10 * r + 1), s);
    A.bytes.set(pattern(5000, 10 * r + 2), w);
    B.bytes.set(pattern(4000, 10 * r + 3), rd);
    recvs.push({ wrId: BigInt(500 + r), sgList: [B.sge(s, 4096)] });
    const id = BigInt(10 * r);
    sends.push(
      { wrId: id + 1n, opcode: "SEND", sgList: [A.sge(s, 3000)] },
      {
        wrId: id + 2n,
        opcode: "RDMA_WRITE",
        sgList: [A.sge(w, 5000)],
        rdma: { remoteAddr: B.addrAt(w), rkey: B.rkey },
      },
      {
        wrId: id + 3n,
        opcode: "RDMA_READ",
        sgList: [A.sge(rd, 4000)],
        rdma: { remoteAddr: B.addrAt(rd), rkey: B.rkey },
      },
      {
        wrId: id + 4n,
        opcode: "ATOMIC_FETCH_AND_ADD",
        sgList: [A.sge(6 * REGION + 8 * r, 8)],
        atomic: { remoteAddr: BigInt(counter), rkey: B.rkey, compareAdd: 3n },
      },
    );
    // Two rounds share the regions: finish each pair before reusing them.
    if (r % 2 === 1 || r === rounds - 1) {
      b.qp.postRecv(recvs.splice(0));
      const batch = sends.splice(0);
      a.qp.postSend(batch);
      const wcs = rig.collect(a.cq, batch.length, { what: `round ${r} send completions` });
      assertStatuses(wcs, batch.map((x) => [x.wrId, "SUCCESS"]), `round ${r}: in order`);
      const done = r % 2 === 1 ? [r - 1, r] : [r];
      const got = rig.collect(b.cq, done.length, { what: `round ${r} receives` });
      assert.deepEqual(
        got.map((w) => [w.wrId, w.status, w.byteLen]),
        done.map((k) => [BigInt(500 + k), "SUCCESS", 3000]),
      );
      for (const k of done) {
        const kb = (k % 2) * 3 * REGION;
        assertBytes(B.bytes.subarray(kb, kb + 3000), pattern(3000, 10 * k + 1), `SEND ${k}`);
        assertBytes(
          B.bytes.subarray(kb + REGION, kb + REGION + 5000),
          pattern(5000, 10 * k + 2),
          `WRITE ${k}`,
        );
        assertBytes(
          A.bytes.subarray(kb + 2 * REGION, kb + 2 * REGION + 4000),
          pattern(4000, 10 * k + 3),
          `READ ${k}`,
        );
        assert.equal(
          a.guest.memory.u64(A.at + 6 * REGION + 8 * k),
          1000n + 3n * BigInt(k),
          `fetch-and-add ${k} saw the counter after ${k} adds`,
        );
      }
    }
  }
  assert.equal(b.guest.memory.u64(counter), 1000n + 3n * BigInt(rounds), "each add executed once");
  // Whatever is still in flight (duplicates, late retransmissions) changes nothing.
  rig.advance(500);
  assert.deepEqual(a.cq.poll(), [], "no completion beyond one per WR");
  assert.deepEqual(b.cq.poll(), [], "no receive consumed twice");
  assert.equal(b.guest.memory.u64(counter), 1000n + 3n * BigInt(rounds));
}

for (const seed of [1, 2, 3]) {
  Deno.test(`adapter: go-back-N under drop, reorder, duplicate and corrupt (seed ${seed})`, () => {
    const { rig, a, b } = twoHosts({
      seed,
      impairments: { drop: 0.1, reorder: 0.1, duplicate: 0.1, corrupt: 0.05 },
      timeout: 8,
    });
    using _ = rig;
    const events = record(rig);
    mixedTraffic(rig, a, b, 6);
    assert.ok(rig.fabric.counters.dropped > 0 && rig.fabric.counters.reordered > 0);
    const resent = [...psnCounts(sentBy(events, 0).filter((e) => isRequest(e.packet))).values()]
      .filter((n) => n > 1).length;
    assert.ok(resent > 0, "some requests were sent again");
    assert.equal(a.qp.state, "RTS");
    assert.equal(b.qp.state, "RTS");
  });
}

Deno.test("adapter: corrupted packets are counted as ICRC errors and dropped", () => {
  const { rig, a, b } = twoHosts({ seed: 7, impairments: { corrupt: 0.2 }, timeout: 8 });
  using _ = rig;
  const events = record(rig);
  mixedTraffic(rig, a, b, 4);
  const bad = events.filter((e) => e.direction === "received" && !e.icrcOk);
  const badParsed = bad.filter((e) => e.packet !== null).length;
  assert.ok(bad.length > 0, "some corrupted packets reached a host");
  const icrc = rig.total("icrcErrors");
  assert.ok(
    icrc >= badParsed && icrc <= bad.length,
    `icrcErrors ${icrc}: every corrupted packet that parses (${badParsed}), at most all (${bad.length})`,
  );
});

// ---- duplicates answered from saved state --------------------------------

Deno.test("adapter: a READ whose response was lost is asked and answered again", () => {
  const { rig, a, b, psnA } = twoHosts({ timeout: 8 });
  using _ = rig;
  const events = record(rig);
  const data = pattern(3000, 41);
  b.mr.bytes.set(data, 8192);
  a.mr.bytes.fill(SENTINEL);
  // The READ takes PSNs psnA..psnA+2; lose its middle response once.
  const middle = psnPlus(psnA, 1);
  let lost = false;
  rig.decide = (p) => {
    if (
      !lost && p.sourceIp === rig.host(1).endpoint.localIp &&
      p.bytes[0] === Opcode.RC_RDMA_READ_RESPONSE_MIDDLE
    ) {
      lost = true;
      return "drop";
    }
    return undefined;
  };
  a.qp.postSend([
    {
      wrId: 1n,
      opcode: "RDMA_READ",
      sgList: [a.mr.sge(0, 3000)],
      rdma: { remoteAddr: b.mr.addrAt(8192), rkey: b.mr.rkey },
    },
    {
      wrId: 2n,
      opcode: "RDMA_READ",
      sgList: [a.mr.sge(4096, 1000)],
      rdma: { remoteAddr: b.mr.addrAt(8192), rkey: b.mr.rkey },
    },
  ]);
  const wcs = rig.collect(a.cq, 2);
  assertStatuses(wcs, [[1n, "SUCCESS"], [2n, "SUCCESS"]], "both READs");
  assert.ok(lost, "a middle response was dropped");
  assertBytes(a.mr.bytes.subarray(0, 3000), data, "first READ");
  assertBytes(a.mr.bytes.subarray(4096, 5096), data.subarray(0, 1000), "second READ");
  const readRequests = sentBy(events, 0).filter((e) =>
    e.packet.opcode === Opcode.RC_RDMA_READ_REQUEST
  );
  assert.ok(
    readRequests.length >= 3 &&
      readRequests.slice(2).some((e) => e.packet.psn === psnA || e.packet.psn === middle),
    `the first READ was requested again from its start or its lost PSN:\n${rig.trace()}`,
  );
  const middles = sentBy(events, 1).filter((e) =>
    e.packet.psn === middle && e.packet.info.name.startsWith("RC_RDMA_READ_RESPONSE")
  );
  assert.ok(middles.length >= 2, "the responder answered the repeated READ");
  assertFilled(a.mr.bytes.subarray(3000, 4096), SENTINEL, "between the READ targets");
});

Deno.test("adapter: atomics execute once when their ACKs are lost (answered from saved state)", () => {
  const { rig, a, b, psnA } = twoHosts({ timeout: 8 });
  using _ = rig;
  const events = record(rig);
  const target = b.mr.at + 1024;
  b.guest.memory.setU64(target, 1000n);
  const acked = new Set<number>();
  rig.decide = (p) => {
    if (p.bytes[0] !== Opcode.RC_ATOMIC_ACKNOWLEDGE) return undefined;
    const psn = (p.bytes[9]! << 16) | (p.bytes[10]! << 8) | p.bytes[11]!;
    if (acked.has(psn)) return undefined;
    acked.add(psn); // the first ACK of every atomic is lost
    return "drop";
  };
  const n = 8;
  a.qp.postSend(Array.from({ length: n }, (_, i) => ({
    wrId: BigInt(i + 1),
    opcode: "ATOMIC_FETCH_AND_ADD" as const,
    sgList: [a.mr.sge(8 * i, 8)],
    atomic: { remoteAddr: BigInt(target), rkey: b.mr.rkey, compareAdd: 3n },
  })));
  const wcs = rig.collect(a.cq, n);
  assertStatuses(wcs, Array.from({ length: n }, (_, i) => [BigInt(i + 1), "SUCCESS"]), "all adds");
  for (let i = 0; i < n; i++) {
    assert.equal(a.guest.memory.u64(a.mr.at + 8 * i), 1000n + 3n * BigInt(i), `add ${i} result`);
  }
  rig.advance(100);
  assert.equal(
    b.guest.memory.u64(target),
    1000n + 3n * BigInt(n),
    "each add executed exactly once",
  );
  const requests = psnCounts(
    sentBy(events, 0).filter((e) => e.packet.opcode === Opcode.RC_FETCH_ADD),
  );
  assert.ok([...requests.values()].some((c) => c > 1), "some atomics were sent again");
  const acks = psnCounts(
    sentBy(events, 1).filter((e) => e.packet.opcode === Opcode.RC_ATOMIC_ACKNOWLEDGE),
  );
  for (
    const e of sentBy(events, 1).filter((e) => e.packet.opcode === Opcode.RC_ATOMIC_ACKNOWLEDGE)
  ) {
    const i = (e.packet.psn - psnA) & 0xff_ffff;
    assert.equal(
      e.packet.origData,
      1000n + 3n * BigInt(i),
      `${describeEvent(e)}: the saved original`,
    );
  }
  assert.ok([...acks.values()].some((c) => c > 1), "duplicates were answered again");
});

Deno.test("adapter: a fabric that duplicates every packet: each SEND and atomic takes effect once", () => {
  const { rig, a, b } = twoHosts({ impairments: { duplicate: 1 }, seed: 4 });
  using _ = rig;
  const target = b.mr.at + 2048;
  b.guest.memory.setU64(target, 50n);
  a.mr.bytes.set(pattern(1500, 51), 0);
  b.qp.postRecv(
    Array.from(
      { length: 8 },
      (_, i) => ({ wrId: BigInt(100 + i), sgList: [b.mr.sge(4096 * (i + 1), 4096)] }),
    ),
  );
  const wrs: SendWr[] = [];
  for (let i = 0; i < 6; i++) {
    wrs.push({ wrId: BigInt(2 * i + 1), opcode: "SEND", sgList: [a.mr.sge(0, 1500)] });
    wrs.push({
      wrId: BigInt(2 * i + 2),
      opcode: "ATOMIC_CMP_AND_SWP",
      sgList: [a.mr.sge(2048 + 8 * i, 8)],
      // Swaps 50+i for 51+i: a second execution would find 51+i and fail.
      atomic: {
        remoteAddr: BigInt(target),
        rkey: b.mr.rkey,
        compareAdd: BigInt(50 + i),
        swap: BigInt(51 + i),
      },
    });
  }
  a.qp.postSend(wrs);
  const wcs = rig.collect(a.cq, wrs.length);
  assertStatuses(wcs, wrs.map((w) => [w.wrId, "SUCCESS"]), "all WRs");
  for (let i = 0; i < 6; i++) {
    assert.equal(
      a.guest.memory.u64(a.mr.at + 2048 + 8 * i),
      BigInt(50 + i),
      `CAS ${i} found its value`,
    );
  }
  assert.equal(b.guest.memory.u64(target), 56n, "six swaps, each once");
  const recvs = rig.collect(b.cq, 6);
  assert.deepEqual(
    recvs.map((w) => [w.wrId, w.byteLen]),
    Array.from({ length: 6 }, (_, i) => [BigInt(100 + i), 1500]),
  );
  rig.advance(200);
  assert.deepEqual(b.cq.poll(), [], "duplicated SENDs consumed no further receive");
  assert.ok(rig.fabric.counters.duplicated > 0);
});

// ---- ACKs and NAKs -------------------------------------------------------

Deno.test("adapter: one ACK covering several messages completes them all without a resend", () => {
  const timeout = 16; // 268 ms: any retransmission would show in the elapsed time
  const { rig, a, b, psnA } = twoHosts({ timeout });
  using _ = rig;
  const events = record(rig);
  const last = psnPlus(psnA, 3);
  // Lose every ACK except the one for the last message's PSN.
  rig.decide = (p) => {
    if (p.bytes[0] !== Opcode.RC_ACKNOWLEDGE) return undefined;
    const psn = (p.bytes[9]! << 16) | (p.bytes[10]! << 8) | p.bytes[11]!;
    return psn === last ? undefined : "drop";
  };
  a.mr.bytes.set(pattern(4 * 512, 61));
  const start = rig.now;
  a.qp.postSend(Array.from({ length: 4 }, (_, i) => ({
    wrId: BigInt(i + 1),
    opcode: "RDMA_WRITE" as const,
    sgList: [a.mr.sge(512 * i, 512)],
    rdma: { remoteAddr: b.mr.addrAt(512 * i), rkey: b.mr.rkey },
  })));
  const wcs = rig.collect(a.cq, 4);
  assertStatuses(
    wcs,
    [[1n, "SUCCESS"], [2n, "SUCCESS"], [3n, "SUCCESS"], [4n, "SUCCESS"]],
    "all four",
  );
  assert.ok(
    rig.now - start < ackTimeoutMs(timeout),
    `no timeout ran out (${rig.now - start} ms)`,
  );
  const counts = psnCounts(sentBy(events, 0).filter((e) => isRequest(e.packet)));
  assert.deepEqual([...counts.values()], [1, 1, 1, 1], "each WRITE sent once");
  assertBytes(b.mr.bytes.subarray(0, 2048), pattern(2048, 61), "the written bytes");
});

Deno.test("adapter: a lost packet in a multi-packet WRITE draws a PSN sequence NAK and a resend", () => {
  const timeout = 16;
  const { rig, a, b, psnA } = twoHosts({ timeout, pathMtu: 1024 });
  using _ = rig;
  const events = record(rig);
  const missing = psnPlus(psnA, 2);
  let dropped = false;
  rig.decide = (p) => {
    const psn = (p.bytes[9]! << 16) | (p.bytes[10]! << 8) | p.bytes[11]!;
    if (!dropped && p.sourceIp === rig.host(0).endpoint.localIp && psn === missing) {
      dropped = true;
      return "drop";
    }
    return undefined;
  };
  const data = pattern(8192, 71);
  a.mr.bytes.set(data);
  const start = rig.now;
  a.qp.postSend({
    wrId: 1n,
    opcode: "RDMA_WRITE",
    sgList: [a.mr.sge(0, 8192)],
    rdma: { remoteAddr: b.mr.addrAt(0), rkey: b.mr.rkey },
  });
  const [wc] = rig.collect(a.cq, 1);
  assert.equal(wc!.status, "SUCCESS");
  const naks = sentBy(events, 1).filter((e) => isNak(e.packet, NakCode.PSN_SEQUENCE_ERROR));
  assert.ok(naks.length >= 1, `B sent a PSN sequence error NAK:\n${rig.trace()}`);
  assert.equal(naks[0]!.packet.psn, missing, "the NAK names the PSN B expects");
  assert.ok(rig.now - start < ackTimeoutMs(timeout), "resent on the NAK, not on a timeout");
  const resent = sentBy(events, 0).filter((e) => e.packet.psn === missing);
  assert.equal(resent.length, 2, "the missing packet went out again");
  assertBytes(b.mr.bytes.subarray(0, 8192), data, "the WRITE");
});

/**
 * The most PSNs host 0 had sent beyond the oldest one not yet acknowledged
 * (as far as host 0 knew from what it received) between events `from` and `to`.
 */
function maxInFlight(events: readonly WireEvent[], start: number, from = 0, to = Infinity): number {
  let unacked = start;
  let most = 0;
  for (const [i, e] of events.entries()) {
    if (e.packet === null || i >= to) continue;
    if (e.direction === "received" && e.to === 0 && e.packet.opcode === Opcode.RC_ACKNOWLEDGE) {
      const kind = aethKind(e.packet.syndrome);
      // An ACK acknowledges its PSN; a NAK the ones before it.
      const through = kind === "ACK" ? psnPlus(e.packet.psn, 1) : e.packet.psn;
      if (((through - unacked) & 0xff_ffff) < 0x80_0000) unacked = through;
    } else if (i >= from && e.direction === "sent" && e.from === 0 && isRequest(e.packet)) {
      most = Math.max(most, ((e.packet.psn - unacked) & 0xff_ffff) + 1);
    }
  }
  return most;
}

Deno.test("adapter: a loss halves the congestion window; a lost last packet is found by the timer", () => {
  const { rig, a, b, psnA } = twoHosts({ pathMtu: 1024, mrBytes: 1 << 20, timeout: 12 });
  using _ = rig;
  const events = record(rig);
  // 1024 packets. PSN 700 is lost once: a sequence NAK. The last packet is
  // lost when it goes out again after that (its first copy may leave before
  // the NAK comes back): only the timer finds that.
  const sends = new Map<number, number>();
  rig.decide = (p) => {
    if (p.sourceIp !== rig.host(0).endpoint.localIp) return undefined;
    const psn = (p.bytes[9]! << 16) | (p.bytes[10]! << 8) | p.bytes[11]!;
    const n = (sends.get(psn) ?? 0) + 1;
    sends.set(psn, n);
    if (psn === psnPlus(psnA, 700) && n === 1) return "drop";
    if (psn === psnPlus(psnA, 1023) && n === 2) return "drop";
    return undefined;
  };
  const data = pattern(1 << 20, 5);
  a.mr.bytes.set(data);
  a.qp.postSend({
    wrId: 1n,
    opcode: "RDMA_WRITE",
    sgList: [a.mr.sge(0, 1 << 20)],
    rdma: { remoteAddr: b.mr.addrAt(0), rkey: b.mr.rkey },
  });
  const [wc] = rig.collect(a.cq, 1);
  assert.equal(wc!.status, "SUCCESS");
  assertBytes(b.mr.bytes, data, "the WRITE");
  const isNakEvent = (e: WireEvent) =>
    e.direction === "received" && e.to === 0 && e.packet !== null &&
    isNak(e.packet, NakCode.PSN_SEQUENCE_ERROR);
  const nakAt = events.findIndex(isNakEvent);
  assert.ok(nakAt > 0, `host 0 got a sequence NAK:\n${rig.trace()}`);
  const before = maxInFlight(events, psnA, 0, nakAt);
  assert.equal(before, SEND_WINDOW, "a clean start runs at the full window");
  const after = maxInFlight(events, psnA, nakAt);
  assert.ok(after <= SEND_WINDOW / 2, `after the loss at most ${SEND_WINDOW / 2}, got ${after}`);
  // The last packet's loss is only found by the timer: one packet to resend, then done.
  assert.equal(stat(rig.host(0), "timeouts"), 1);
  assert.equal(
    sends.get(psnPlus(psnA, 1023)),
    3,
    "the last packet's third copy, after the timeout",
  );
});

// ---- RNR -----------------------------------------------------------------

Deno.test("adapter: RNR NAK with the responder's timer, then success once a receive is posted", () => {
  const minRnrTimer = 14; // 1.28 ms
  const { rig, a, b, psnA } = twoHosts({ b: { minRnrTimer } });
  using _ = rig;
  const events = record(rig);
  a.mr.bytes.set(pattern(700, 81));
  a.qp.postSend({ wrId: 1n, opcode: "SEND", sgList: [a.mr.sge(0, 700)] });
  rig.run(() => sentBy(events, 1).some((e) => isRnrNak(e.packet)), { what: "an RNR NAK" });
  const rnr = sentBy(events, 1).find((e) => isRnrNak(e.packet))!;
  assert.equal(rnr.packet.syndrome & 0x1f, minRnrTimer, "the NAK carries B's min_rnr_timer");
  assert.equal(rnr.packet.psn, psnA, "for the SEND's PSN");
  rig.advance(5);
  assert.deepEqual(a.cq.poll(), [], "no completion while B has no receive");
  const tries = sentBy(events, 0).filter((e) => e.packet.psn === psnA && isRequest(e.packet));
  assert.ok(
    tries.length >= 3,
    `the SEND was tried again after each RNR wait (${tries.length} tries)`,
  );
  for (let i = 1; i < tries.length; i++) {
    assert.ok(
      tries[i]!.at - tries[i - 1]!.at >= rnrMs(minRnrTimer) - 1e-6,
      `try ${i} waited at least ${rnrMs(minRnrTimer)} ms`,
    );
  }
  b.qp.postRecv({ wrId: 2n, sgList: [b.mr.sge(0, 1024)] });
  const [wc] = rig.collect(a.cq, 1);
  assert.equal(wc!.status, "SUCCESS");
  const [recv] = rig.collect(b.cq, 1);
  assert.deepEqual([recv!.wrId, recv!.status, recv!.byteLen], [2n, "SUCCESS", 700]);
  assertBytes(b.mr.bytes.subarray(0, 700), pattern(700, 81), "the SEND");
});

Deno.test("adapter: rnrRetry 2 exhausted: RNR_RETRY_EXC_ERR after 3 RNR NAKs, the rest flushed", () => {
  const minRnrTimer = 10; // 0.32 ms
  const { rig, a, psnA } = twoHosts({ a: { rnrRetry: 2 }, b: { minRnrTimer } });
  using _ = rig;
  const events = record(rig);
  // One SEND alone, so no later request of the pipeline draws a NAK of its own.
  a.qp.postSend({ wrId: 1n, opcode: "SEND", sgList: [a.mr.sge(0, 64)] });
  const [wc] = rig.collect(a.cq, 1);
  assert.equal(wc!.status, "RNR_RETRY_EXC_ERR");
  a.qp.postSend([
    { wrId: 2n, opcode: "SEND", sgList: [a.mr.sge(0, 64)] },
    {
      wrId: 3n,
      opcode: "RDMA_WRITE",
      sgList: [a.mr.sge(0, 64)],
      rdma: { remoteAddr: 0n, rkey: 0 },
    },
  ]);
  const flushed = rig.collect(a.cq, 2);
  assertStatuses(flushed, [[2n, "WR_FLUSH_ERR"], [3n, "WR_FLUSH_ERR"]], "later WRs flushed");
  assert.equal(a.qp.state, "ERR");
  const rnrs = receivedBy(events, 0).filter((e) => isRnrNak(e.packet) && e.packet.psn === psnA);
  assert.equal(rnrs.length, 3, "the first try and two retries were each refused");
  const tries = sentBy(events, 0).filter((e) => e.packet.psn === psnA && isRequest(e.packet));
  assert.equal(tries.length, 3, "rnrRetry + 1 transmissions");
});

// ---- transport timeouts ----------------------------------------------------

for (const how of ["the fabric drops everything", "its QP is destroyed"] as const) {
  Deno.test(`adapter: peer gone (${how}): RETRY_EXC_ERR after retryCnt+1 timeouts`, () => {
    const timeout = 10; // 4.194 ms
    const retryCnt = 3;
    const { rig, a, b, psnA } = twoHosts({ a: { timeout, retryCnt } });
    using _ = rig;
    const events = record(rig);
    if (how === "the fabric drops everything") rig.decide = () => "drop";
    else b.guest.ok(Op.DESTROY_QP, { qp: b.qp.handle });
    const start = rig.now;
    a.qp.postSend([
      {
        wrId: 1n,
        opcode: "RDMA_WRITE",
        sgList: [a.mr.sge(0, 256)],
        rdma: { remoteAddr: b.mr.addr, rkey: b.mr.rkey },
      },
      { wrId: 2n, opcode: "SEND", sgList: [a.mr.sge(0, 64)] },
    ]);
    const wcs = rig.collect(a.cq, 2);
    assertStatuses(wcs, [[1n, "RETRY_EXC_ERR"], [2n, "WR_FLUSH_ERR"]], "statuses");
    const t = ackTimeoutMs(timeout);
    const elapsed = rig.now - start;
    assert.ok(
      elapsed >= (retryCnt + 1) * t - 1e-6 && elapsed < (retryCnt + 2) * t,
      `about ${retryCnt + 1} timeouts of ${t} ms, got ${elapsed} ms`,
    );
    const tries = sentBy(events, 0).filter((e) => e.packet.psn === psnA);
    assert.equal(tries.length, retryCnt + 1, "the first try and retryCnt retransmissions");
    assert.equal(a.qp.state, "ERR");
    if (how === "its QP is destroyed") assert.ok(stat(rig.host(1), "unknownQp") > 0);
  });
}

// ---- errors --------------------------------------------------------------

Deno.test("adapter: a bad R_Key draws a remote access NAK: REM_ACCESS_ERR, the rest flushed", () => {
  const { rig, a, b, psnA } = twoHosts();
  using _ = rig;
  const events = record(rig);
  remoteAccessError(rig, a, b);
  const naks = sentBy(events, 1).filter((e) => isNak(e.packet, NakCode.REMOTE_ACCESS_ERROR));
  assert.equal(naks.length, 1, `one remote access NAK:\n${rig.trace()}`);
  assert.equal(naks[0]!.packet.psn, psnA, "for the refused WRITE's PSN");
  assert.equal(naks[0]!.packet.syndrome, 0x62);
});

// ---- max_rd_atomic -------------------------------------------------------

for (const [maxRdAtomic, impairments] of [[1, {}], [2, {}], [2, { drop: 0.05 }]] as const) {
  const label = `maxRdAtomic ${maxRdAtomic}${"drop" in impairments ? " with 5% drop" : ""}`;
  Deno.test(`adapter: ${label}: never more READ/atomic requests in flight`, () => {
    const mtu = 1024;
    const { rig, a, b } = twoHosts({
      pathMtu: mtu,
      impairments,
      seed: 11,
      timeout: 8,
      a: { maxRdAtomic },
      b: { maxDestRdAtomic: maxRdAtomic },
    });
    using _ = rig;
    // Outstanding requests, keyed by the PSN of their last response: a READ
    // re-asked from a lost middle response keeps its key. A request counts
    // from when A sends it until A receives that last response.
    const outstanding = new Set<number>();
    let most = 0;
    rig.tap((e) => {
      const p = e.packet;
      if (p === null) return;
      if (e.direction === "sent" && e.from === 0 && isReadOrAtomicRequest(p)) {
        const n = p.opcode === Opcode.RC_RDMA_READ_REQUEST ? packetsFor(p.rethDmaLen, mtu) : 1;
        outstanding.add(psnPlus(p.psn, n - 1));
        most = Math.max(most, outstanding.size);
      } else if (
        e.direction === "received" && e.to === 0 &&
        (p.opcode === Opcode.RC_RDMA_READ_RESPONSE_LAST ||
          p.opcode === Opcode.RC_RDMA_READ_RESPONSE_ONLY ||
          p.opcode === Opcode.RC_ATOMIC_ACKNOWLEDGE)
      ) {
        outstanding.delete(p.psn);
      }
    });
    const counter = b.mr.at + 60000;
    b.guest.memory.setU64(counter, 0n);
    const data = pattern(1500, 91);
    b.mr.bytes.set(data, 0);
    const wrs: SendWr[] = [];
    for (let i = 0; i < 12; i++) {
      wrs.push(
        i % 3 === 2
          ? {
            wrId: BigInt(i),
            opcode: "ATOMIC_FETCH_AND_ADD",
            sgList: [a.mr.sge(50000 + 8 * i, 8)],
            atomic: { remoteAddr: BigInt(counter), rkey: b.mr.rkey, compareAdd: 1n },
          }
          : {
            wrId: BigInt(i),
            opcode: "RDMA_READ",
            sgList: [a.mr.sge(2048 * i, 1500)],
            rdma: { remoteAddr: b.mr.addr, rkey: b.mr.rkey },
          },
      );
    }
    a.qp.postSend(wrs);
    const wcs = rig.collect(a.cq, wrs.length);
    assertStatuses(wcs, wrs.map((w) => [w.wrId, "SUCCESS"]), "all READs and atomics");
    assert.ok(most >= 1 && most <= maxRdAtomic, `at most ${maxRdAtomic} in flight, saw ${most}`);
    for (let i = 0; i < 12; i++) {
      if (i % 3 !== 2) {
        assertBytes(a.mr.bytes.subarray(2048 * i, 2048 * i + 1500), data, `READ ${i}`);
      }
    }
    assert.equal(b.guest.memory.u64(counter), 4n, "four adds");
  });
}

// ---- PSN wrap --------------------------------------------------------------

Deno.test("adapter: PSNs wrap from 0xffffff to 0 in both directions, under loss", () => {
  const { rig, a, b } = twoHosts({
    seed: 12,
    impairments: { drop: 0.1 },
    timeout: 8,
    a: { psn: 0xfffff0 },
    b: { psn: 0xfffffc },
  });
  using _ = rig;
  const events = record(rig);
  mixedTraffic(rig, a, b, 2);
  // B sends to A as well: its PSNs start 4 before the wrap.
  const back = pattern(6000, 95);
  b.mr.bytes.set(back, 40000);
  a.qp.postRecv(
    Array.from(
      { length: 3 },
      (_, i) => ({ wrId: BigInt(700 + i), sgList: [a.mr.sge(20000 * i, 8192)] }),
    ),
  );
  b.qp.postSend(
    Array.from(
      { length: 3 },
      (_, i) => ({
        wrId: BigInt(800 + i),
        opcode: "SEND" as const,
        sgList: [b.mr.sge(40000, 6000)],
      }),
    ),
  );
  const sent = rig.collect(b.cq, 3, { what: "B's SENDs" });
  assertStatuses(sent, [[800n, "SUCCESS"], [801n, "SUCCESS"], [802n, "SUCCESS"]], "B's SENDs");
  const got = rig.collect(a.cq, 3, { what: "A's receives" });
  assert.deepEqual(got.map((w) => [w.wrId, w.byteLen]), [[700n, 6000], [701n, 6000], [702n, 6000]]);
  for (let i = 0; i < 3; i++) {
    assertBytes(a.mr.bytes.subarray(20000 * i, 20000 * i + 6000), back, `B's SEND ${i}`);
  }
  for (const from of [0, 1]) {
    const psns = new Set(
      sentBy(events, from).filter((e) => isRequest(e.packet)).map((e) => e.packet.psn),
    );
    assert.ok(psns.has(0xffffff) && psns.has(0), `host ${from}'s requests crossed the wrap`);
  }
});

// ---- replay --------------------------------------------------------------

/** The described wire events and elapsed time of a lossy mixed run with `seed`. */
function lossyRun(seed: number): { trace: string[]; elapsed: number } {
  const { rig, a, b } = twoHosts({
    seed,
    impairments: { drop: 0.1, reorder: 0.1, duplicate: 0.1, corrupt: 0.05 },
    timeout: 8,
  });
  using _ = rig;
  const trace: string[] = [];
  rig.tap((e) => trace.push(describeEvent(e)));
  mixedTraffic(rig, a, b, 2);
  return { trace, elapsed: rig.elapsed };
}

Deno.test("adapter: the same seed replays the same run; another seed does not", () => {
  const one = lossyRun(21);
  const two = lossyRun(21);
  assert.ok(one.trace.length > 50);
  assert.deepEqual(two.trace, one.trace, "same packets, same order, same fake times");
  assert.equal(two.elapsed, one.elapsed);
  assert.notDeepEqual(lossyRun(22).trace, one.trace);
});
