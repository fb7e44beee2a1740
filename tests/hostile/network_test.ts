/**
 * Hostile network against a live backend (issue 7): real backends on
 * 127.0.0.62 (victim host B) and 127.0.0.63 (peer host A), real guests, and
 * UDP sockets at 127.0.0.64 (the attacker, which the victim's `rc`, `uc`
 * and `noAccess` QPs name as their peer) and 127.0.0.65 (a spoofer, nobody's
 * peer), all on one random port. See fixtures/net_live_world.ts.
 *
 * Each step sends forged datagrams at B and checks: B keeps running and
 * hits no bug (`adapterErrors` 0), each datagram is counted where the rules
 * say, memory the attacker may not write is unchanged byte for byte, no
 * secret byte comes back (READ responses only for a valid rkey with access),
 * and, at the end, the legitimate A <-> B connections were never disturbed
 * and still carry verified traffic.
 *
 * Steps marked "was a bug" found one in production code, since fixed; they
 * guard it. `VRDMA_FUZZ_CASES` sizes the
 * mutation step (a tenth of it, at least 200); `VRDMA_FUZZ_SEED` seeds it.
 */

import assert from "node:assert/strict";
import { Access, type Mr, openDevice, SendFlags } from "../../mod.ts";
import { Opcode } from "../../backend/roce/opcodes.ts";
import { hostilePacket } from "./fixtures/net_cases.ts";
import { type ForgeFields, mutate, opcodeLabel, Rng } from "./fixtures/net_forge.ts";
import {
  FAKE_RQ_PSN,
  FAKE_SQ_PSN,
  type FakeName,
  LiveWorld,
  MTU,
  sleep,
} from "./fixtures/net_live_world.ts";
import { arrival } from "./fixtures/net_oracle.ts";
import { core, probe, type ProbeResult } from "./fixtures/net_probe.ts";
import type { Station } from "./fixtures/net_station.ts";

const SEED = envInt("VRDMA_FUZZ_SEED", 1);
const LIVE_CASES = Math.max(200, Math.floor(envInt("VRDMA_FUZZ_CASES", 3000) / 10));

function envInt(name: string, fallback: number): number {
  const text = Deno.env.get(name);
  if (text === undefined || text === "") return fallback;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new RangeError(`${name} must be a non-negative integer, got "${text}"`);
  }
  return n;
}

/** Runs `body`, then `cleanup` whatever happened: a failed step leaves no QP state behind. */
async function cleanly(body: () => Promise<void>, cleanup: () => Promise<void>): Promise<void> {
  try {
    await body();
  } finally {
    await cleanup();
  }
}

/** NAK syndromes (AETH): PSN sequence error, invalid request, remote access error. */
const NAK = { SEQ: 0x60, INVALID: 0x61, ACCESS: 0x62 } as const;

/** The AETH syndromes of the ACK/NAKs in `r`, as `[psn, syndrome]`. */
function acks(r: ProbeResult): [number, number][] {
  return r.packets.filter((p) => p.opcode === Opcode.RC_ACKNOWLEDGE).map((
    p,
  ) => [p.psn, p.syndrome]);
}

/** Payload bytes the attacker got back (READ responses). */
function payloads(r: ProbeResult): number {
  let n = 0;
  for (const p of r.packets) if (p.opcode !== Opcode.RC_ACKNOWLEDGE) n += p.payloadLength;
  return n;
}

/** Fails if any secret byte run is in what the attacker received. */
function assertNoLeak(world: LiveWorld, r: ProbeResult, what: string): void {
  for (const p of r.packets) {
    const leak = world.secrets.find(p.payload);
    assert.equal(
      leak,
      null,
      `${what}: ${opcodeLabel(new Uint8Array([p.opcode]))} PSN ${p.psn} ` +
        `carried ${leak?.secret} bytes from offset ${leak?.secretOffset}`,
    );
  }
}

/** Fails if protected memory changed. */
function assertFrozen(world: LiveWorld, what: string): void {
  assert.deepEqual(world.frozen.changes(), [], `${what}: protected memory changed`);
}

/** The state of victim QP `name` as the device has it. */
async function state(world: LiveWorld, name: keyof LiveWorld["qps"]): Promise<string> {
  return (await world.qps[name].query()).state;
}

/** A WRITE ONLY from the attacker to victim QP `name`. */
function write(
  world: LiveWorld,
  name: FakeName,
  reth: { va: bigint; rkey: number; dmaLen?: number },
  data: Uint8Array,
  psn = world.expectedPsn(world.qps[name].qpNum),
): ForgeFields {
  const uc = name === "uc";
  return {
    opcode: uc ? Opcode.UC_RDMA_WRITE_ONLY : Opcode.RC_RDMA_WRITE_ONLY,
    destQp: world.qps[name].qpNum,
    psn,
    ackReq: !uc,
    reth: { va: reth.va, rkey: reth.rkey, dmaLen: reth.dmaLen ?? data.length },
    payload: data,
  };
}

/** A READ request from the attacker to victim QP `name`. */
function read(
  world: LiveWorld,
  name: FakeName,
  reth: { va: bigint; rkey: number; dmaLen: number },
  psn = world.expectedPsn(world.qps[name].qpNum),
): ForgeFields {
  return {
    opcode: Opcode.RC_RDMA_READ_REQUEST,
    destQp: world.qps[name].qpNum,
    psn,
    ackReq: true,
    reth,
  };
}

/** An atomic from the attacker to victim QP `name`. */
function atomic(
  world: LiveWorld,
  name: FakeName,
  va: bigint,
  rkey: number,
  cas = false,
): ForgeFields {
  return {
    opcode: cas ? Opcode.RC_COMPARE_SWAP : Opcode.RC_FETCH_ADD,
    destQp: world.qps[name].qpNum,
    psn: world.expectedPsn(world.qps[name].qpNum),
    ackReq: true,
    atomicEth: { va, rkey, swapAdd: 0x1111_2222_3333_4444n, compare: 0n },
  };
}

/** Legitimate traffic on the A <-> B connections, every byte checked. */
async function legitTraffic(world: LiveWorld, tag: number): Promise<void> {
  const { peerMr, peerCq, peerQps } = world;
  const target = world.mrs.get("mrAll")!;
  const recv = world.mrs.get("recv")!;
  const data = new Rng(tag).bytes(3000);
  peerMr.bytes.set(data, 0);
  peerMr.bytes.fill(0, 4096, 4096 + 3000);
  world.pollVictim();
  world.qps.rcA.postRecv({
    wrId: 7000n + BigInt(tag),
    sgList: [{ addr: recv.addr, length: 4096, lkey: recv.lkey }],
  });
  const sge = (offset: number, length: number) => ({
    addr: peerMr.mr.addr + BigInt(offset),
    length,
    lkey: peerMr.mr.lkey,
  });
  peerQps.rc.postSend([
    {
      wrId: 1n,
      opcode: "RDMA_WRITE",
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(0, 3000)],
      rdma: { remoteAddr: target.addr, rkey: target.rkey },
    },
    {
      wrId: 2n,
      opcode: "RDMA_READ",
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(4096, 3000)],
      rdma: { remoteAddr: target.addr, rkey: target.rkey },
    },
    { wrId: 3n, opcode: "SEND", sendFlags: SendFlags.SIGNALED, sgList: [sge(0, 3000)] },
  ]);
  peerQps.uc.postSend({
    wrId: 4n,
    opcode: "RDMA_WRITE",
    sendFlags: SendFlags.SIGNALED,
    sgList: [sge(0, 100)],
    rdma: { remoteAddr: target.addr + 3500n, rkey: target.rkey },
  });
  const wcs = [];
  const deadline = performance.now() + 5000;
  while (wcs.length < 4 && performance.now() < deadline) {
    wcs.push(...peerCq.poll(4));
    if (wcs.length < 4) await sleep(1);
  }
  assert.deepEqual(
    wcs.map((w) => [w.wrId, w.status]).sort((a, b) => Number(a[0]) - Number(b[0])),
    [[1n, "SUCCESS"], [2n, "SUCCESS"], [3n, "SUCCESS"], [4n, "SUCCESS"]],
    "legit traffic completions",
  );
  const regionAll = world.regions.get("mrAll")!.view;
  assert.deepEqual(regionAll.subarray(0, 3000), data, "the peer's RC WRITE landed");
  assert.deepEqual(peerMr.bytes.subarray(4096, 4096 + 3000), data, "the peer's READ came back");
  let recvWc;
  for (let i = 0; i < 2000 && recvWc === undefined; i++) {
    recvWc = world.pollVictim().find((w) => w.wrId === 7000n + BigInt(tag));
    if (recvWc === undefined) await sleep(1);
  }
  assert.equal(recvWc?.status, "SUCCESS", "the victim's receive of the peer's SEND");
  assert.equal(recvWc?.byteLen, 3000);
  assert.deepEqual(world.regions.get("recv")!.view.subarray(0, 3000), data, "the peer's SEND");
  for (let i = 0; i < 1000; i++) {
    if (regionAll[3599] === data[99]) break;
    await sleep(1);
  }
  assert.deepEqual(regionAll.subarray(3500, 3600), data.subarray(0, 100), "the peer's UC WRITE");
}

Deno.test({
  name: "hostile network (live): forged RoCE datagrams at a backend",
  // The backend's Worker and sockets outlive single steps by design.
  sanitizeOps: false,
  sanitizeResources: false,
}, async (t) => {
  const started = performance.now();
  await using world = await LiveWorld.start(SEED);
  const { attacker, spoofer } = world;
  const mrAll = world.mrs.get("mrAll")!;
  const allView = world.regions.get("mrAll")!.view;
  let forged = 0;
  const count = (n: number) => (forged += n, n);
  console.log(
    `hostile network (live): hosts up in ${(performance.now() - started).toFixed(0)} ms, ` +
      `port ${world.port}, seed ${SEED}`,
  );

  await t.step("legitimate A <-> B traffic works before the attack", async () => {
    await legitTraffic(world, 1);
  });

  await t.step(
    "random bytes of every length 0..96: badPackets or icrcErrors, nothing else",
    async () => {
      const rng = new Rng(SEED);
      const want: Record<string, number> = {};
      const all: Uint8Array[] = [];
      for (let len = 0; len <= 96; len++) {
        const bytes = rng.bytes(len);
        if (len > 0 && rng.bool()) bytes[0] = rng.pick([0x04, 0x0a, 0x0c, 0x11, 0x64]);
        all.push(bytes);
        const a = arrival(bytes, attacker.forger.flow, () => true);
        want[a.counter] = (want[a.counter] ?? 0) + 1;
      }
      const r = await probe(world, "random bytes", count(all.length), () => {
        for (const b of all) attacker.send(b);
      }, want);
      assert.deepEqual(r.delta, want);
      assert.deepEqual(r.attacker, [], "no answer to garbage");
    },
  );

  await t.step(
    "truncated real packets, unsigned: dropped on arrival, memory untouched",
    async () => {
      const before = allView.slice();
      const full = attacker.forger.build(
        write(world, "rc", { va: mrAll.addr, rkey: mrAll.rkey }, new Rng(2).bytes(64)),
      );
      const cuts = [...Array(full.length).keys()].map((n) => full.slice(0, n));
      const want: Record<string, number> = {};
      for (const b of cuts) {
        const a = arrival(b, attacker.forger.flow, () => true);
        want[a.counter] = (want[a.counter] ?? 0) + 1;
      }
      const r = await probe(world, "truncations", count(cuts.length), () => {
        for (const b of cuts) attacker.send(b);
      }, want);
      assert.deepEqual(r.delta, want);
      assert.deepEqual(r.attacker, []);
      assert.deepEqual(allView, before, "mrAll");
    },
  );

  await t.step("bit flips outside the masked BTH byte 4, unsigned: all refused", async () => {
    const rng = new Rng(SEED + 3);
    const before = allView.slice();
    const base = attacker.forger.build(
      write(world, "rc", { va: mrAll.addr, rkey: mrAll.rkey }, rng.bytes(64)),
    );
    const flipped: Uint8Array[] = [];
    const want: Record<string, number> = {};
    for (let i = 0; i < 200; i++) {
      const b = base.slice();
      let at = rng.int(b.length);
      if (at === 4) at = 5; // FECN/BECN/reserved: masked out of the ICRC on purpose
      b[at]! ^= 1 << rng.int(8);
      flipped.push(b);
      const a = arrival(b, attacker.forger.flow, () => true);
      assert.notEqual(a.counter, "rcvdPkts", `flip at ${at} passes the ICRC`);
      want[a.counter] = (want[a.counter] ?? 0) + 1;
    }
    const r = await probe(world, "bit flips", count(flipped.length), () => {
      for (const b of flipped) attacker.send(b);
    }, want);
    assert.deepEqual(r.delta, want);
    assert.deepEqual(r.attacker, []);
    assert.deepEqual(allView, before, "mrAll");
  });

  await t.step(
    "truncated, then signed: the WRITE disagrees with its RETH: invalid request NAK",
    async () => {
      const before = allView.slice();
      for (const keep of [60, 32, 4, 0]) {
        await world.resetFake("rc");
        const fields = write(
          world,
          "rc",
          { va: mrAll.addr, rkey: mrAll.rkey, dmaLen: 64 },
          new Rng(keep).bytes(keep),
        );
        const r = await probe(world, `WRITE of 64 with ${keep} bytes`, count(1), () => {
          attacker.forge(fields);
        }, { fatalNaksSent: 1 });
        assert.deepEqual(acks(r), [[fields.psn, NAK.INVALID]], `${keep} bytes: the NAK`);
        assert.deepEqual(allView, before, `${keep} bytes: mrAll`);
        assert.equal(await state(world, "rc"), "ERR");
      }
    },
  );

  await t.step("a QP in ERR takes nothing: droppedNotReady", async () => {
    const before = allView.slice();
    const fields = write(world, "rc", { va: mrAll.addr, rkey: mrAll.rkey }, new Uint8Array(8));
    const r = await probe(world, "WRITE to a QP in ERR", count(3), () => {
      for (let i = 0; i < 3; i++) attacker.forge({ ...fields, psn: FAKE_RQ_PSN.rc + i });
    }, { droppedNotReady: 3 });
    assert.deepEqual(core(r.delta), { droppedNotReady: 3 });
    assert.deepEqual(r.attacker, []);
    assert.deepEqual(allView, before);
    await world.resetFake("rc");
    await world.topUp();
  });

  await t.step(
    "unknown QPNs (reserved, never used, destroyed, the peer host's): unknownQp",
    async () => {
      const gone = await (await world.victim.allocPd()).createQp({
        qpType: "RC",
        sendCq: world.cq,
        recvCq: world.cq,
        cap: { maxSendWr: 1, maxRecvWr: 1, maxSendSge: 1, maxRecvSge: 1, maxInlineData: 0 },
      });
      const goneQpn = gone.qpNum;
      await gone.destroy();
      const qpns = [0, 1, 2, 0x10, 0xff_ffff, 0x80_0000, goneQpn, world.peerQps.rc.qpNum + 0x1000];
      const r = await probe(world, "unknown QPNs", count(qpns.length), () => {
        for (const destQp of qpns) {
          attacker.forge({
            opcode: Opcode.RC_SEND_ONLY,
            destQp,
            psn: 0,
            payload: new Uint8Array(8),
          });
        }
      }, { unknownQp: qpns.length });
      assert.deepEqual(r.delta, { unknownQp: qpns.length });
      assert.deepEqual(r.attacker, []);
    },
  );

  await t.step("P_Keys outside the default partition: badPackets", async () => {
    const before = allView.slice();
    const fields = write(world, "rc", { va: mrAll.addr, rkey: mrAll.rkey }, new Uint8Array(8));
    const pkeys = [0, 0x1234, 0x8001, 0x7ffe];
    const r = await probe(world, "bad P_Keys", count(pkeys.length), () => {
      for (const pkey of pkeys) attacker.forge({ ...fields, pkey });
    }, { badPackets: pkeys.length });
    assert.deepEqual(r.delta, { badPackets: pkeys.length });
    assert.deepEqual(r.attacker, []);
    assert.deepEqual(allView, before);
  });

  await t.step(
    "transport mismatch (UC opcode to RC, RC to UC and UD, UD to RC): badPackets",
    async () => {
      const before = allView.slice();
      const reth = { va: mrAll.addr, rkey: mrAll.rkey, dmaLen: 8 };
      const eight = new Uint8Array(8).fill(0x77);
      const packets: ForgeFields[] = [
        {
          opcode: Opcode.UC_RDMA_WRITE_ONLY,
          destQp: world.qps.rc.qpNum,
          psn: 0,
          reth,
          payload: eight,
        },
        {
          opcode: Opcode.RC_RDMA_WRITE_ONLY,
          destQp: world.qps.uc.qpNum,
          psn: 0,
          reth,
          payload: eight,
        },
        { opcode: Opcode.RC_SEND_ONLY, destQp: world.qps.ud.qpNum, psn: 0, payload: eight },
        {
          opcode: Opcode.UD_SEND_ONLY,
          destQp: world.qps.rc.qpNum,
          psn: 0,
          deth: { qkey: 0x1234_5678, srcQp: 5 },
          payload: eight,
        },
        { opcode: Opcode.RC_RDMA_READ_REQUEST, destQp: world.qps.ud.qpNum, psn: 0, reth },
      ];
      const r = await probe(world, "transport mismatch", count(packets.length), () => {
        for (const f of packets) attacker.forge(f);
      }, { badPackets: packets.length });
      assert.deepEqual(r.delta, { badPackets: packets.length });
      assert.deepEqual(r.attacker, []);
      assert.deepEqual(allView, before);
    },
  );

  await t.step(
    "spoofed sources: the right QPN and PSN from the wrong address: badPackets",
    async () => {
      const before = allView.slice();
      const data = new Uint8Array(16).fill(0x5a);
      const psnA = (await world.qps.rcA.query()).attr.rqPsn ?? 0;
      const spoofs: [Station, ForgeFields][] = [
        // The attacker's own QP, from the spoofer's address.
        [spoofer, write(world, "rc", { va: mrAll.addr, rkey: mrAll.rkey }, data)],
        [spoofer, read(world, "rc", { va: mrAll.addr, rkey: mrAll.rkey, dmaLen: 64 })],
        // The QPs of the legitimate peer host, from the attacker and the spoofer.
        ...[attacker, spoofer].flatMap((s): [Station, ForgeFields][] => [
          [s, {
            opcode: Opcode.RC_RDMA_WRITE_ONLY,
            destQp: world.qps.rcA.qpNum,
            psn: psnA,
            ackReq: true,
            reth: { va: mrAll.addr, rkey: mrAll.rkey, dmaLen: 16 },
            payload: data,
          }],
          [s, {
            opcode: Opcode.RC_RDMA_READ_REQUEST,
            destQp: world.qps.rcA.qpNum,
            psn: psnA,
            reth: { va: mrAll.addr, rkey: mrAll.rkey, dmaLen: 64 },
          }],
          [s, {
            opcode: Opcode.RC_ACKNOWLEDGE,
            destQp: world.qps.rcA.qpNum,
            psn: 0,
            aeth: { syndrome: 0x62, msn: 0 },
          }],
          [s, { opcode: Opcode.UC_SEND_ONLY, destQp: world.qps.ucA.qpNum, psn: 0, payload: data }],
        ]),
      ];
      const r = await probe(world, "spoofed sources", count(spoofs.length), () => {
        for (const [station, f] of spoofs) station.forge(f);
      }, { badPackets: spoofs.length });
      assert.deepEqual(r.delta, { badPackets: spoofs.length });
      assert.deepEqual(r.attacker, [], "answers to the attacker");
      assert.deepEqual(r.spoofer, [], "answers to the spoofer");
      assert.deepEqual(allView, before, "mrAll");
      assert.equal(await state(world, "rcA"), "RTS", "the legitimate RC connection");
      assert.equal(await state(world, "ucA"), "RTS", "the legitimate UC connection");
    },
  );

  /**
   * Sends `fields` at a freshly reset `name` and checks the remote access
   * (or invalid request) NAK: counted, the QP in ERR, nothing read back,
   * no memory changed.
   */
  const refused = async (
    name: FakeName,
    fields: ForgeFields,
    nak: number,
    what: string,
    options: { receives?: boolean } = {},
  ) => {
    await world.resetFake(name);
    if (options.receives) await world.topUp();
    const writable = ["mrAll", "mrWo", "mrAtomic"].map((n) => world.regions.get(n)!.view.slice());
    const counter = nak === NAK.ACCESS ? "accessNaksSent" : "fatalNaksSent";
    const psn = fields.psn;
    const r = await probe(world, what, count(1), () => attacker.forge(fields), { [counter]: 1 });
    assert.deepEqual(acks(r), [[psn, nak]], `${what}: the NAK`);
    assert.equal(payloads(r), 0, `${what}: bytes came back`);
    assert.equal(r.delta[counter], 1, `${what}: ${counter}`);
    if (nak === NAK.ACCESS) assert.equal(r.delta.accessErrors, 1, `${what}: accessErrors`);
    assert.deepEqual(
      ["mrAll", "mrWo", "mrAtomic"].map((n) => world.regions.get(n)!.view),
      writable,
      `${what}: remotely writable MRs changed`,
    );
    assertFrozen(world, what);
    assertNoLeak(world, r, what);
    assert.equal(await state(world, name), "ERR", `${what}: the QP goes to ERR`);
  };

  await t.step(
    "forged rkeys, guessed in sequence (slots 1..32, tags 0..2): all REM_ACCESS NAKed",
    async () => {
      const data = new Uint8Array(8).fill(0xa5);
      let guesses = 0;
      for (let slot = 1; slot <= 32; slot++) {
        for (let tag = 0; tag < 3; tag++) {
          const rkey = ((slot << 8) | tag) >>> 0;
          if (rkey === mrAll.rkey) continue; // the one key that opens mrAll
          await refused(
            "rc",
            write(world, "rc", { va: mrAll.addr, rkey }, data),
            NAK.ACCESS,
            `WRITE rkey 0x${rkey.toString(16)}`,
          );
          guesses++;
        }
      }
      for (const rkey of [0, 0xff, 0xffff_ffff, mrAll.rkey ^ 0x80, mrAll.rkey + 0x1000]) {
        await refused(
          "rc",
          read(world, "rc", { va: mrAll.addr, rkey, dmaLen: 64 }),
          NAK.ACCESS,
          `READ rkey 0x${rkey.toString(16)}`,
        );
        guesses++;
      }
      console.log(`  ${guesses} guessed rkeys refused`);
    },
  );

  await t.step(
    "keys of MRs without the access, of another PD, another guest, a deregistered MR; a QP without remote access",
    async () => {
      const m = (name: string) => world.target.mrs.find((x) => x.name === name)!;
      const eight = new Uint8Array(8).fill(0x3c);
      const cases: [FakeName, ForgeFields, string][] = [];
      for (const name of ["mrRo", "mrNone", "mrAtomic", "mrPd2", "mrStale", "otherMr"]) {
        cases.push([
          "rc",
          write(world, "rc", { va: m(name).addr, rkey: m(name).rkey }, eight),
          `WRITE ${name}`,
        ]);
      }
      for (const name of ["mrWo", "mrNone", "mrAtomic", "mrPd2", "mrStale", "otherMr"]) {
        cases.push([
          "rc",
          read(world, "rc", { va: m(name).addr, rkey: m(name).rkey, dmaLen: 64 }),
          `READ ${name}`,
        ]);
      }
      for (const name of ["mrRo", "mrWo", "mrNone", "mrPd2", "mrStale", "otherMr"]) {
        cases.push(["rc", atomic(world, "rc", m(name).addr, m(name).rkey), `FETCH_ADD ${name}`]);
      }
      const noAcc = (f: ForgeFields) => ({
        ...f,
        destQp: world.qps.noAccess.qpNum,
        psn: FAKE_RQ_PSN.noAccess,
      });
      cases.push([
        "noAccess",
        noAcc(write(world, "rc", { va: mrAll.addr, rkey: mrAll.rkey }, eight)),
        "WRITE mrAll on a QP without access",
      ]);
      cases.push([
        "noAccess",
        noAcc(read(world, "rc", { va: mrAll.addr, rkey: mrAll.rkey, dmaLen: 64 })),
        "READ mrAll on a QP without access",
      ]);
      cases.push([
        "noAccess",
        noAcc(atomic(world, "rc", mrAll.addr, mrAll.rkey)),
        "FETCH_ADD mrAll on a QP without access",
      ]);
      for (const [name, fields, what] of cases) {
        await refused(
          name,
          { ...fields, psn: name === "rc" ? FAKE_RQ_PSN.rc : fields.psn },
          NAK.ACCESS,
          what,
        );
      }
    },
  );

  await t.step(
    "DMA lengths past the MR, va+len overflow, huge READs: REM_ACCESS NAKed",
    async () => {
      const end = mrAll.addr + BigInt(mrAll.length);
      const key = mrAll.rkey;
      const u64 = 0xffff_ffff_ffff_ffffn;
      const psn = FAKE_RQ_PSN.rc;
      const sixteen = new Uint8Array(16).fill(0x99);
      const cases: [ForgeFields, string][] = [
        [write(world, "rc", { va: end - 8n, rkey: key }, sixteen, psn), "WRITE 16 at end-8"],
        [write(world, "rc", { va: end, rkey: key }, sixteen, psn), "WRITE at the end"],
        [write(world, "rc", { va: mrAll.addr - 8n, rkey: key }, sixteen, psn), "WRITE 8 before"],
        [write(world, "rc", { va: u64 - 7n, rkey: key }, sixteen, psn), "WRITE at 2^64-8 (wraps)"],
        [
          write(world, "rc", { va: mrAll.addr + (1n << 32n), rkey: key }, sixteen, psn),
          "WRITE at va+2^32",
        ],
        [
          write(world, "rc", { va: mrAll.addr | (1n << 63n), rkey: key }, sixteen, psn),
          "WRITE at va|2^63",
        ],
        [write(world, "rc", { va: 1n << 53n, rkey: key }, sixteen, psn), "WRITE at 2^53"],
        [{
          opcode: Opcode.RC_RDMA_WRITE_FIRST,
          destQp: world.qps.rc.qpNum,
          psn,
          reth: { va: mrAll.addr, rkey: key, dmaLen: 0xffff_ffff },
          payload: new Uint8Array(MTU),
        }, "WRITE FIRST of 2^32-1 bytes"],
        [
          read(world, "rc", { va: mrAll.addr, rkey: key, dmaLen: mrAll.length + 1 }, psn),
          "READ length+1",
        ],
        [read(world, "rc", { va: end - 8n, rkey: key, dmaLen: 16 }, psn), "READ 16 at end-8"],
        [
          read(world, "rc", { va: mrAll.addr, rkey: key, dmaLen: 0xffff_ffff }, psn),
          "READ 2^32-1 bytes",
        ],
        [
          read(world, "rc", { va: mrAll.addr, rkey: key, dmaLen: 0x8000_0000 }, psn),
          "READ 2^31 bytes",
        ],
        [read(world, "rc", { va: u64 - 7n, rkey: key, dmaLen: 16 }, psn), "READ at 2^64-8 (wraps)"],
        [
          read(world, "rc", { va: mrAll.addr + (1n << 32n), rkey: key, dmaLen: 8 }, psn),
          "READ at va+2^32",
        ],
        [
          read(world, "rc", { va: mrAll.addr - (1n << 32n), rkey: key, dmaLen: 8 }, psn),
          "READ at va-2^32",
        ],
        [{ ...atomic(world, "rc", end, key), psn }, "FETCH_ADD at the end"],
        [{ ...atomic(world, "rc", u64 - 7n, key), psn }, "FETCH_ADD at 2^64-8"],
        [
          { ...atomic(world, "rc", mrAll.addr + (1n << 32n), key, true), psn },
          "CMP_SWAP at va+2^32",
        ],
      ];
      for (const [fields, what] of cases) await refused("rc", fields, NAK.ACCESS, what);
    },
  );

  await t.step("misaligned atomics: invalid request NAK, the words untouched", async () => {
    for (const off of [1n, 2n, 4n, 7n]) {
      for (const cas of [false, true]) {
        const f = {
          ...atomic(world, "rc", mrAll.addr + off, mrAll.rkey, cas),
          psn: FAKE_RQ_PSN.rc,
        };
        await refused("rc", f, NAK.INVALID, `${cas ? "CMP_SWAP" : "FETCH_ADD"} at +${off}`);
      }
    }
  });

  await t.step(
    "opcode sequence violations and a SEND longer than the receive: invalid request NAK",
    async () => {
      const recvBefore = world.regions.get("recv")!.view.slice();
      const rc = world.qps.rc.qpNum;
      const psn = FAKE_RQ_PSN.rc;
      const cases: [ForgeFields, string][] = [
        [
          { opcode: Opcode.RC_RDMA_WRITE_MIDDLE, destQp: rc, psn, payload: new Uint8Array(MTU) },
          "WRITE MIDDLE first",
        ],
        [
          { opcode: Opcode.RC_RDMA_WRITE_LAST, destQp: rc, psn, payload: new Uint8Array(8) },
          "WRITE LAST first",
        ],
        [
          { opcode: Opcode.RC_SEND_MIDDLE, destQp: rc, psn, payload: new Uint8Array(MTU) },
          "SEND MIDDLE first",
        ],
        [{
          opcode: Opcode.RC_SEND_ONLY,
          destQp: rc,
          psn,
          ackReq: true,
          payload: new Uint8Array(200).fill(1),
        }, "SEND of 200 into 64"],
      ];
      for (const [fields, what] of cases) {
        await refused("rc", fields, NAK.INVALID, what, { receives: true });
      }
      assert.deepEqual(world.regions.get("recv")!.view, recvBefore, "receive buffers");
      world.pollVictim();
      assert.ok(
        (world.completions.get("LOC_LEN_ERR") ?? 0) >= 1,
        "the receive completed LOC_LEN_ERR",
      );
    },
  );

  await t.step(
    "PSNs far outside the window: one sequence NAK, duplicates re-ACKed, nothing executed twice",
    async () => {
      await world.resetFake("rc");
      const e = FAKE_RQ_PSN.rc;
      const data = new Uint8Array(8).fill(0x42);
      const before = allView.slice();
      const ahead = await probe(world, "far ahead", count(3), () => {
        for (const d of [0x40_0000, 0x40_0001, 0x7f_ffff]) {
          attacker.forge(
            write(world, "rc", { va: mrAll.addr, rkey: mrAll.rkey }, data, (e + d) & 0xff_ffff),
          );
        }
      }, { outOfSequence: 3 });
      assert.deepEqual(core(ahead.delta), { outOfSequence: 3, seqNaksSent: 1 });
      assert.deepEqual(
        acks(ahead),
        [[e, NAK.SEQ]],
        "one sequence NAK for the gap, at the expected PSN",
      );
      assert.deepEqual(allView, before, "nothing executed");

      // The expected PSN executes; the same PSN again and far-behind PSNs are duplicates.
      const ok = await probe(world, "in sequence", count(1), () => {
        attacker.forge(write(world, "rc", { va: mrAll.addr, rkey: mrAll.rkey }, data, e));
      }, { acksSent: 1 });
      assert.deepEqual(acks(ok), [[e, 0x1f]]);
      assert.deepEqual(allView.subarray(0, 8), data);
      allView.set(before.subarray(0, 8));
      const behind = await probe(world, "duplicates", count(3), () => {
        for (const psn of [e, (e - 0x40_0000) & 0xff_ffff, (e - 0x10) & 0xff_ffff]) {
          attacker.forge(write(world, "rc", { va: mrAll.addr, rkey: mrAll.rkey }, data, psn));
        }
      }, { duplicateRequests: 3 });
      assert.equal(behind.delta.duplicateRequests, 3);
      assert.deepEqual(allView, before, "a duplicate WRITE is not executed again");
      const old = await probe(world, "an old READ", count(1), () => {
        attacker.forge(
          read(world, "rc", { va: mrAll.addr, rkey: mrAll.rkey, dmaLen: 64 }, (e - 5) & 0xff_ffff),
        );
      }, { duplicateRequests: 1 });
      assert.equal(old.delta.duplicatesDropped, 1, "a READ that was never seen is not answered");
      assert.equal(payloads(old), 0);
      assert.equal(await state(world, "rc"), "RTS");
    },
  );

  await t.step("responses when the QP never sent anything: staleResponses", async () => {
    await world.resetFake("rc");
    const rc = world.qps.rc.qpNum;
    const local = world.regions.get("local")!.view.slice();
    const responses: ForgeFields[] = [
      {
        opcode: Opcode.RC_ACKNOWLEDGE,
        destQp: rc,
        psn: FAKE_SQ_PSN,
        aeth: { syndrome: 0x1f, msn: 1 },
      },
      {
        opcode: Opcode.RC_ACKNOWLEDGE,
        destQp: rc,
        psn: FAKE_SQ_PSN,
        aeth: { syndrome: NAK.ACCESS, msn: 1 },
      },
      {
        opcode: Opcode.RC_RDMA_READ_RESPONSE_ONLY,
        destQp: rc,
        psn: FAKE_SQ_PSN,
        aeth: { syndrome: 0x1f, msn: 1 },
        payload: new Uint8Array(64).fill(0xee),
      },
      {
        opcode: Opcode.RC_ATOMIC_ACKNOWLEDGE,
        destQp: rc,
        psn: FAKE_SQ_PSN,
        aeth: { syndrome: 0x1f, msn: 1 },
        origData: 0xdead_beefn,
      },
    ];
    const r = await probe(world, "unsolicited responses", count(responses.length), () => {
      for (const f of responses) attacker.forge(f);
    }, { staleResponses: responses.length });
    assert.deepEqual(r.delta, { staleResponses: responses.length });
    assert.deepEqual(world.regions.get("local")!.view, local);
    assert.equal(await state(world, "rc"), "RTS");
  });

  await t.step({
    name:
      "responses nobody asked for while and after the victim's own requests: counted, no effect",
    // WAS A BUG, fixed (backend/adapter/requester.ts): Requester.onResponse returns without a counter when
    // nothing is outstanding, and #onReadResponse / #onAtomicAck return without one for a
    // response whose PSN is the oldest outstanding but whose WR is not a READ / an atomic.
    fn: () =>
      cleanly(async () => {
        await world.resetFake("rc");
        const rc = world.qps.rc.qpNum;
        const localRegion = world.regions.get("local")!.view;
        localRegion.fill(0x0f);
        const local = localRegion.slice();
        const wrId = world.postToAttacker("SEND", 16);
        await world.settle(() => world.requestPsn !== null);
        const psn = world.requestPsn!;
        assert.equal(psn, FAKE_SQ_PSN, "the victim's SEND went out");
        const bogus: ForgeFields[] = [
          {
            opcode: Opcode.RC_RDMA_READ_RESPONSE_ONLY,
            destQp: rc,
            psn,
            aeth: { syndrome: 0x1f, msn: 1 },
            payload: new Uint8Array(16).fill(0xee),
          },
          {
            opcode: Opcode.RC_ATOMIC_ACKNOWLEDGE,
            destQp: rc,
            psn,
            aeth: { syndrome: 0x1f, msn: 1 },
            origData: 0xdead_beefn,
          },
          {
            opcode: Opcode.RC_ACKNOWLEDGE,
            destQp: rc,
            psn: psn + 100,
            aeth: { syndrome: 0x1f, msn: 9 },
          },
        ];
        const r1 = await probe(world, "bogus responses to a SEND", count(bogus.length), () => {
          for (const f of bogus) attacker.forge(f);
        });
        const counted = (d: Record<string, number>) =>
          (d.staleResponses ?? 0) + (d.badResponses ?? 0) + (d.duplicateResponses ?? 0);
        assert.equal(
          counted(r1.delta),
          bogus.length,
          `each bogus response counted: ${JSON.stringify(r1.delta)}`,
        );
        assert.deepEqual(localRegion, local, "nothing scattered into the victim's buffer");
        assert.equal(
          world.pollVictim().filter((w) => w.wrId === wrId).length,
          0,
          "the SEND is not completed by them",
        );

        // The real ACK completes it; afterwards nothing is outstanding.
        await probe(world, "the real ACK", count(1), () => {
          attacker.forge({
            opcode: Opcode.RC_ACKNOWLEDGE,
            destQp: rc,
            psn,
            aeth: { syndrome: 0x1f, msn: 1 },
          });
        });
        let done;
        for (let i = 0; i < 1000 && done === undefined; i++) {
          done = world.pollVictim().find((w) => w.wrId === wrId);
          if (done === undefined) await sleep(1);
        }
        assert.equal(done?.status, "SUCCESS");
        const r2 = await probe(
          world,
          "responses after everything completed",
          count(bogus.length),
          () => {
            for (const f of bogus) attacker.forge({ ...f, psn });
          },
        );
        assert.equal(
          counted(r2.delta),
          bogus.length,
          `each late response counted: ${JSON.stringify(r2.delta)}`,
        );
        assert.deepEqual(localRegion, local, "nothing scattered into the victim's buffer");
      }, () => world.resetFake("rc")),
  });

  await t.step(
    "UD: a wrong Q_Key is dropped, a datagram longer than the receive is LOC_LEN_ERR",
    async () => {
      const ud = world.qps.ud.qpNum;
      const recv = world.regions.get("recv")!.view;
      const before = recv.slice();
      const wrong = await probe(world, "wrong Q_Keys", count(3), () => {
        for (const qkey of [0, 0x1234_5679, 0x8001_0000]) {
          attacker.forge({
            opcode: Opcode.UD_SEND_ONLY,
            destQp: ud,
            psn: 0,
            deth: { qkey, srcQp: 0x77 },
            payload: new Uint8Array(32).fill(0x11),
          });
        }
      }, { udDropped: 3 });
      assert.deepEqual(wrong.delta, { udDropped: 3 });
      assert.deepEqual(recv, before, "nothing delivered");
      world.pollVictim();
      const long = await probe(world, "a long datagram", count(1), () => {
        attacker.forge({
          opcode: Opcode.UD_SEND_ONLY,
          destQp: ud,
          psn: 0,
          deth: { qkey: 0x1234_5678, srcQp: 0x77 },
          payload: new Uint8Array(1000).fill(0x22), // + 40 GRH > 1024
        });
      }, { completions: 1 });
      assert.equal(long.delta.completions, 1);
      assert.deepEqual(recv, before, "nothing written for a datagram that does not fit");
      const wc = world.pollVictim().find((w) => w.qpNum === ud);
      assert.equal(wc?.status, "LOC_LEN_ERR", "the receive");
      await world.topUp();
    },
  );

  await t.step({
    name: "UC: an access violation drops the message and the QP carries on (IBA class E, as rxe)",
    // WAS A BUG, fixed (backend/adapter/responder.ts #fatal): for UC a REMOTE_ACCESS violation marks the
    // responder dead and moves the QP to ERR; rxe (rxe_resp.c RESPST_ERR_RKEY_VIOLATION,
    // UC without SRQ) drops the message and leaves the QP in RTS.
    fn: () =>
      cleanly(async () => {
        await world.resetFake("uc");
        const before = world.regions.get("mrRo")!.view.slice();
        const mrRo = world.mrs.get("mrRo")!;
        const r = await probe(world, "UC WRITE to a read-only MR", count(1), () => {
          attacker.forge(
            write(
              world,
              "uc",
              { va: mrRo.addr, rkey: mrRo.rkey },
              new Uint8Array(8),
              FAKE_RQ_PSN.uc,
            ),
          );
        }, { accessErrors: 1 });
        assert.deepEqual(r.attacker, [], "UC answers nothing");
        assert.deepEqual(world.regions.get("mrRo")!.view, before);
        assert.equal(await state(world, "uc"), "RTS", "the UC QP carries on");
      }, () => world.resetFake("uc")),
  });

  await t.step({
    name: "a duplicate READ after its MR was deregistered returns nothing of that memory",
    // WAS A BUG, fixed (backend/adapter/responder.ts #duplicate): a READ whose PSN falls in a saved
    // request is answered again from the saved va/length (pump() reads guest memory)
    // without checking that the MR behind it still exists; after DEREG_MR the peer can
    // read back whatever the guest put in that memory since.
    fn: () =>
      cleanly(async () => {
        await world.resetFake("rc");
        const buf = world.victim.allocBuffer(4096);
        buf.bytes.fill(0x33);
        const mr = await mrAll.pd.regMr(buf, Access.LOCAL_WRITE | Access.REMOTE_READ);
        const psn = FAKE_RQ_PSN.rc;
        const ask = () =>
          attacker.forge(read(world, "rc", { va: mr.addr, rkey: mr.rkey, dmaLen: 256 }, psn));
        const answered = (p: { opcode: number; psn: number } | null) =>
          p?.opcode === Opcode.RC_RDMA_READ_RESPONSE_ONLY && p.psn === psn;
        const seen = world.captured.length;
        ask();
        count(1);
        await world.settle(() => world.captured.slice(seen).some((c) => answered(c.packet)));
        const reply = world.captured.slice(seen).find((c) => answered(c.packet));
        assert.deepEqual(reply?.packet?.payload, new Uint8Array(256).fill(0x33), "the valid READ");
        await mr.dereg();
        world.secrets.fill("deregistered", buf.bytes, new Rng(SEED + 9));
        const dup = await probe(world, "the same READ again", count(1), ask, {
          duplicateRequests: 1,
        });
        assertNoLeak(world, dup, "duplicate READ after DEREG_MR");
        assert.equal(payloads(dup), 0, "bytes of a deregistered MR came back");
        buf.free();
      }, () => world.resetFake("rc")),
  });

  await t.step(
    "a deregistered MR's rkey fails after its slot is reused with a new tag",
    async () => {
      await world.resetFake("rc");
      const buf = world.victim.allocBuffer(4096);
      buf.bytes.fill(0x44);
      const old = await mrAll.pd.regMr(
        buf,
        Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ,
      );
      const oldKey = old.rkey;
      await old.dereg();
      const held: Mr[] = [];
      let reused: Mr | undefined;
      for (let i = 0; i < 64 && reused === undefined; i++) {
        const mr = await mrAll.pd.regMr(
          buf,
          Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ,
        );
        if (mr.rkey >>> 8 === oldKey >>> 8) reused = mr;
        else held.push(mr);
      }
      for (const mr of held) await mr.dereg();
      assert.ok(reused !== undefined, `slot 0x${(oldKey >>> 8).toString(16)} came back`);
      assert.notEqual(reused.rkey, oldKey, "with a new tag");
      const fresh = reused;
      const before = buf.bytes.slice();
      await refused(
        "rc",
        write(world, "rc", { va: reused.addr, rkey: oldKey }, new Uint8Array(8), FAKE_RQ_PSN.rc),
        NAK.ACCESS,
        "WRITE with the stale key",
      );
      await refused(
        "rc",
        read(world, "rc", { va: reused.addr, rkey: oldKey, dmaLen: 64 }, FAKE_RQ_PSN.rc),
        NAK.ACCESS,
        "READ with the stale key",
      );
      assert.deepEqual(buf.bytes, before, "the new MR's bytes");
      // The new key works: the refusals were about the key, not the address.
      await world.resetFake("rc");
      const ok = await probe(world, "WRITE with the new key", count(1), () => {
        attacker.forge(
          write(
            world,
            "rc",
            { va: fresh.addr, rkey: fresh.rkey },
            new Uint8Array(8).fill(0x55),
            FAKE_RQ_PSN.rc,
          ),
        );
      }, { acksSent: 1 });
      assert.deepEqual(acks(ok), [[FAKE_RQ_PSN.rc, 0x1f]]);
      assert.deepEqual(buf.bytes.subarray(0, 8), new Uint8Array(8).fill(0x55));
      await fresh.dereg();
      buf.free();
    },
  );

  await t.step(
    `mutation fuzz over UDP: ${LIVE_CASES} hostile datagrams, seed ${SEED}`,
    async () => {
      const rng = new Rng(SEED ^ 0xf00d);
      const known = new Set(Object.values(world.qps).map((q) => q.qpNum));
      const outcomes = new Map<string, number>();
      const begun = performance.now();
      for (let i = 0; i < LIVE_CASES; i++) {
        if (i % 8 === 0) await world.repair();
        const station = rng.int(10) === 0 ? spoofer : attacker;
        const base = hostilePacket(rng, world.target);
        let bytes = station.forger.build(base.fields);
        let how = "none";
        if (rng.bool()) {
          const m = mutate(rng, bytes);
          bytes = m.bytes;
          how = m.how;
          if (rng.int(5) !== 0) station.forger.sign(bytes);
        }
        const what =
          `case ${i} (seed ${SEED}): ${base.kind} from ${station.address}, mutation ${how}, ` +
          `${opcodeLabel(bytes)} ${bytes.length} B`;
        const expected = arrival(bytes, station.forger.flow, (qpn) => known.has(qpn));
        const rows = expected.counter === "rcvdPkts" ? await world.victimHost.qpCounters() : [];
        const rcvd = (list: typeof rows, qpn: number) =>
          list.find((row) => row.qpNum === qpn)?.counters.rcvdPkts ?? 0;
        const r = await probe(
          world,
          what,
          count(1),
          () => station.send(bytes),
          expected.counter === "rcvdPkts" ? {} : { [expected.counter]: 1 },
          { quietMs: 1 },
        );
        if (expected.counter === "rcvdPkts") {
          const now = await world.victimHost.qpCounters();
          assert.equal(
            rcvd(now, expected.qpn) - rcvd(rows, expected.qpn),
            1,
            `${what}: its QP counts it`,
          );
        } else {
          assert.equal(r.delta[expected.counter], 1, `${what}: counted as ${expected.counter}`);
        }
        assert.equal(r.delta.adapterErrors, undefined, `${what}: adapter error (a bug)`);
        assert.deepEqual(r.spoofer, [], `${what}: the spoofer got answers`);
        assertNoLeak(world, r, what);
        const key = Object.keys(r.delta).sort().join(" ") || "(rcvdPkts only)";
        outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
        if (i % 50 === 49) assertFrozen(world, what);
      }
      assertFrozen(world, "after the mutation fuzz");
      const ms = performance.now() - begun;
      console.log(
        `  ${LIVE_CASES} datagrams in ${ms.toFixed(0)} ms; ${world.resets} QP resets so far; ` +
          `outcomes: ${
            JSON.stringify(
              Object.fromEntries([...outcomes].sort((a, b) => b[1] - a[1]).slice(0, 12)),
            )
          }`,
      );
    },
  );

  await t.step(
    "afterwards: nothing protected changed, B serves on, legitimate A <-> B traffic works",
    async () => {
      assertFrozen(world, "end");
      const s = world.stats();
      assert.equal(s.adapterErrors, 0, "adapter errors");
      assert.equal(s.brokenQueues, 0, "broken queues");
      assert.equal(await state(world, "rcA"), "RTS", "the legitimate RC connection");
      assert.equal(await state(world, "ucA"), "RTS", "the legitimate UC connection");
      await legitTraffic(world, 2);
      assertFrozen(world, "after the legitimate traffic");
      const fresh = await openDevice({ socket: world.victimHost.socket, memoryBytes: 1 << 20 });
      await (await fresh.allocPd()).dealloc();
      await fresh.close();
      console.log(
        `hostile network (live): ${forged} forged datagrams, ${world.captured.length} answers ` +
          `captured, ${world.resets} QP resets, victim completions ${
            JSON.stringify(Object.fromEntries(world.completions))
          }; ${(performance.now() - started).toFixed(0)} ms in all`,
      );
    },
  );
});
