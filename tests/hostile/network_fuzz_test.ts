/**
 * Seeded mutation fuzzing of the RoCE host adapter's state machines, in
 * process: the adapter rig's hosts on one in-memory fabric, a victim guest
 * whose MRs cover every access combination between guard ranges, and an
 * attacker that is the peer of some of the victim's QPs (so its packets
 * pass the source check and reach the requester and responder) plus a
 * spoofer that is nobody's peer. See fixtures/net_rig_world.ts.
 *
 * Each case is one datagram: a hostile but well-formed request or response
 * (fixtures/net_cases.ts), often mutated, usually re-signed so it gets past
 * the ICRC; sometimes random bytes. After each case:
 * - it was counted on arrival where the rules say (fixtures/net_oracle.ts):
 *   `badPackets`, `icrcErrors`, `unknownQp`, or its QP's `rcvdPkts`;
 * - the adapter hit no bug (`adapterErrors` stays 0; nothing threw);
 * - nothing the victim sent carries 11+ bytes of a secret region (MRs
 *   without REMOTE_READ, another PD's, another guest's, a deregistered
 *   one's, the guards between MRs);
 * - the spoofer got nothing back, and a spoofed packet changed no memory.
 * Every 256 cases and at the end, regions the attacker may not write are
 * compared byte for byte. At the end the QPs connected to the legitimate
 * peer host were never disturbed and still carry verified traffic.
 *
 * Size: `VRDMA_FUZZ_CASES` (default 5000; the nightly runs 100000 or more).
 * Seed: `VRDMA_FUZZ_SEED` (default 1), printed with every failure.
 */

import assert from "node:assert/strict";
import { SendFlags } from "../../protocol/verbs.ts";
import { COUNTER_NAMES, type CounterName } from "../../backend/data_plane/stats.ts";
import { OpFlag } from "../../backend/roce/opcodes.ts";
import { ParseFailure, parsePacket } from "../../backend/roce/packet.ts";
import { stat } from "../backend/adapter/fixtures/rig.ts";
import { pattern } from "../backend/adapter/fixtures/bytes.ts";
import { hostilePacket } from "./fixtures/net_cases.ts";
import { mutate, opcodeLabel, Rng } from "./fixtures/net_forge.ts";
import { arrival } from "./fixtures/net_oracle.ts";
import { RigWorld } from "./fixtures/net_rig_world.ts";
import type { Station } from "./fixtures/net_station.ts";

/** Cases per run. */
const CASES = envInt("VRDMA_FUZZ_CASES", 5000);
/** The run's seed. */
const SEED = envInt("VRDMA_FUZZ_SEED", 1);

function envInt(name: string, fallback: number): number {
  const text = Deno.env.get(name);
  if (text === undefined || text === "") return fallback;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new RangeError(`${name} must be a non-negative integer, got "${text}"`);
  }
  return n;
}

/** Counters that move for every datagram, so they say nothing about where it went. */
const ALWAYS = new Set<CounterName>(["udpPacketsReceived", "udpBytesReceived"]);

function hex(bytes: Uint8Array, max = 64): string {
  return [...bytes.subarray(0, max)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** The counters that moved between two snapshots, as `name+n`. */
function moved(before: Record<string, number>, after: Record<string, number>): string[] {
  const out: string[] = [];
  for (const name of COUNTER_NAMES) {
    const d = after[name]! - before[name]!;
    if (d !== 0 && !ALWAYS.has(name)) out.push(d === 1 ? name : `${name}+${d}`);
  }
  return out;
}

/** One case as it was run, for failure messages. */
interface CaseNote {
  index: number;
  from: string;
  kind: string;
  how: string;
  signed: boolean;
  bytes: Uint8Array;
}

function describe(c: CaseNote): string {
  return `seed ${SEED} case ${c.index} (replay: VRDMA_FUZZ_SEED=${SEED} VRDMA_FUZZ_CASES=${
    c.index + 1
  }): ${c.kind} from ${c.from}, mutation ${c.how}, ${c.signed ? "signed" : "unsigned"}, ` +
    `${opcodeLabel(c.bytes)} ${c.bytes.length} B: ${hex(c.bytes)}`;
}

/** Legitimate traffic between the victim's `rcA`/`ucA` and the peer host, bytes checked. */
function legitTraffic(world: RigWorld): void {
  const { rig, peerMr, peerCq } = world;
  const mrAll = world.mrs.get("mrAll")!;
  const recv = world.mrs.get("recv")!;
  const rc = world.peerQps.rc;
  const data = pattern(2500, SEED);
  peerMr.bytes.set(data, 0);
  peerMr.bytes.fill(0, 4096, 4096 + 2500);
  world.pollVictim();
  world.qps.rcA.postRecv({ wrId: 900n, sgList: [recv.sge(0, 4096)] });
  rc.postSend([
    {
      wrId: 1n,
      opcode: "RDMA_WRITE",
      sendFlags: SendFlags.SIGNALED,
      sgList: [peerMr.sge(0, 2500)],
      rdma: { remoteAddr: mrAll.addr, rkey: mrAll.rkey },
    },
    {
      wrId: 2n,
      opcode: "RDMA_READ",
      sendFlags: SendFlags.SIGNALED,
      sgList: [peerMr.sge(4096, 2500)],
      rdma: { remoteAddr: mrAll.addr, rkey: mrAll.rkey },
    },
    { wrId: 3n, opcode: "SEND", sendFlags: SendFlags.SIGNALED, sgList: [peerMr.sge(0, 2500)] },
  ]);
  const wcs = rig.collect(peerCq, 3, { maxMs: 10_000, what: "legit RC traffic" });
  assert.deepEqual(wcs.map((w) => [w.wrId, w.status]), [[1n, "SUCCESS"], [2n, "SUCCESS"], [
    3n,
    "SUCCESS",
  ]]);
  assert.deepEqual(mrAll.bytes.subarray(0, 2500), data, "the peer's WRITE landed");
  assert.deepEqual(peerMr.bytes.subarray(4096, 4096 + 2500), data, "the peer's READ came back");
  const recvs = rig.collect(world.cq, 1, { what: "the victim's receive" });
  assert.equal(recvs[0]!.status, "SUCCESS");
  assert.equal(recvs[0]!.byteLen, 2500);
  assert.deepEqual(recv.bytes.subarray(0, 2500), data, "the peer's SEND arrived");

  world.peerQps.uc.postSend({
    wrId: 4n,
    opcode: "RDMA_WRITE",
    sendFlags: SendFlags.SIGNALED,
    sgList: [peerMr.sge(0, 100)],
    rdma: { remoteAddr: mrAll.addrAt(3000), rkey: mrAll.rkey },
  });
  const uc = rig.collect(peerCq, 1, { what: "legit UC WRITE" });
  assert.equal(uc[0]!.status, "SUCCESS");
  rig.settle();
  assert.deepEqual(mrAll.bytes.subarray(3000, 3100), data.subarray(0, 100), "the UC WRITE landed");
}

Deno.test(`network fuzz (rig): ${CASES} hostile datagrams at the adapter, seed ${SEED}`, () => {
  using world = new RigWorld({ seed: SEED });
  const rng = new Rng(SEED);
  const { host, attacker, spoofer, target, secrets, frozen } = world;
  const mrAll = world.mrs.get("mrAll")!;
  const outcomes = new Map<string, number>();
  const kinds = new Map<string, number>();
  let spoofed = 0, random = 0, leaksChecked = 0, responseBytes = 0;
  const started = performance.now();

  // Warm-up: legitimate traffic works before the attack.
  legitTraffic(world);

  for (let index = 0; index < CASES; index++) {
    if (index % 4 === 0) world.repair();
    if (index % 16 === 8) world.victimRequest(rng);
    if (index % 500 === 499) world.advance(100);

    // Who sends what.
    const roll = rng.int(100);
    let station: Station = attacker;
    let bytes: Uint8Array;
    let kind = "random";
    let how = "none";
    let signed = false;
    if (roll < 5) {
      bytes = rng.bytes(rng.int(96));
      random++;
    } else {
      station = roll < 15 ? spoofer : attacker;
      const base = hostilePacket(rng, target);
      kind = base.kind;
      bytes = station.forger.build(base.fields);
      signed = true;
      if (rng.bool()) {
        const m = mutate(rng, bytes);
        bytes = m.bytes;
        how = m.how;
        signed = rng.int(5) !== 0;
        if (signed) station.forger.sign(bytes);
      }
      if (base.kind === "uc-write" || base.kind === "uc-send") world.sentUc(base.fields.psn);
    }
    if (station === spoofer) spoofed++;
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
    const note: CaseNote = { index, from: station.address, kind, how, signed, bytes };

    const expected = arrival(bytes, station.forger.flow, (qpn) => world.hasQp(qpn));
    const before = host.counters.snapshot();
    const rcvdBefore = world.rcvdPkts();
    // Datagrams nobody may act on: from the spoofer, or (whatever the mutation did) for a
    // QP whose peer is the legitimate host. mrAll must not change for them.
    const parsed = parsePacket(bytes);
    const refusedBySource = station === spoofer ||
      (!(parsed instanceof ParseFailure) && target.otherQpns.includes(parsed.destQp));
    const allBefore = refusedBySource ? mrAll.bytes.slice() : null;

    station.send(bytes);
    const got = world.deliver();

    const after = host.counters.snapshot();
    assert.equal(after.adapterErrors, 0, `adapter error (a bug): ${describe(note)}`);
    assert.equal(
      after.udpPacketsReceived - before.udpPacketsReceived,
      1,
      `the victim host received the datagram: ${describe(note)}`,
    );
    if (expected.counter === "rcvdPkts") {
      const was = rcvdBefore.get(expected.qpn) ?? 0;
      const now = world.rcvdPkts().get(expected.qpn) ?? 0;
      assert.equal(now - was, 1, `QP 0x${expected.qpn.toString(16)} counts it: ${describe(note)}`);
    } else {
      assert.equal(
        after[expected.counter] - before[expected.counter],
        1,
        `counted as ${expected.counter}: ${describe(note)}`,
      );
    }
    const key = moved(before, after).join(" ") || "(rcvdPkts only)";
    outcomes.set(key, (outcomes.get(key) ?? 0) + 1);

    assert.deepEqual(
      got.spoofer.map((c) => opcodeLabel(c.bytes)),
      [],
      `the spoofer (nobody's peer) got answers: ${describe(note)}`,
    );
    for (const c of got.attacker) {
      const p = c.packet;
      if (p === null || (p.info.flags & OpFlag.PAYLOAD) === 0) continue;
      leaksChecked++;
      responseBytes += p.payload.length;
      const leak = secrets.find(p.payload);
      assert.equal(
        leak,
        null,
        `the victim sent ${leak?.secret} bytes from offset ${leak?.secretOffset} in ${
          opcodeLabel(c.bytes)
        } PSN ${p.psn}: ${describe(note)}`,
      );
    }
    if (allBefore !== null) {
      assert.deepEqual(mrAll.bytes, allBefore, `a spoofed packet changed mrAll: ${describe(note)}`);
    }
    if (index % 256 === 255 || index === CASES - 1) {
      assert.deepEqual(frozen.changes(), [], `protected memory changed by case ${describe(note)}`);
    }
  }
  world.repair();

  // The connections to the legitimate peer were never disturbed.
  assert.equal(world.qps.rcA.state, "RTS", "rcA");
  assert.equal(world.qps.ucA.state, "RTS", "ucA");
  legitTraffic(world);
  assert.deepEqual(frozen.changes(), [], "protected memory after the legit traffic");
  assert.equal(stat(host, "adapterErrors"), 0);

  const ms = performance.now() - started;
  const top = [...outcomes].sort((a, b) => b[1] - a[1]).slice(0, 25);
  console.log(
    `network fuzz (rig): seed ${SEED}, ${CASES} cases in ${ms.toFixed(0)} ms ` +
      `(${(CASES / (ms / 1000)).toFixed(0)}/s): ${spoofed} spoofed, ${random} random; ` +
      `${world.resets} QP resets; ${leaksChecked} payloads (${responseBytes} B) scanned for ` +
      `${secrets.size} secret bytes; victim completions ${
        JSON.stringify(Object.fromEntries(world.completions))
      }`,
  );
  console.log(`kinds: ${JSON.stringify(Object.fromEntries(kinds))}`);
  console.log(`outcomes (counters moved per case, top 25):`);
  for (const [k, n] of top) console.log(`  ${String(n).padStart(6)}  ${k}`);
});
