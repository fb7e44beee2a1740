/**
 * The wire as it really is: packets captured on the loopback while they
 * travel (`tshark -i lo`), decoded by tshark as InfiniBand and their ICRCs
 * checked by scapy (shared/interop/icrc_check.py).
 *
 * - The capture path itself, with packets the UDP transport sends: one per
 *   opcode in the table, built by `buildPacket`.
 * - Two hosts (127.0.0.22 and 127.0.0.23, one random shared port) and a
 *   guest on each doing every operation across them — SEND, SEND_WITH_IMM,
 *   RDMA_WRITE, RDMA_WRITE_WITH_IMM, RDMA_READ, both atomics, each once in
 *   one packet and once in three at path MTU 1024, and UD SENDs — must put
 *   every request and response opcode on the wire (ACK, READ RESPONSE
 *   FIRST/MIDDLE/LAST/ONLY, ATOMIC ACK included), every packet decoding as
 *   InfiniBand with DF set and IP ID 0, and every ICRC right.
 *
 * Capturing needs root and tshark, the ICRC check scapy; without them the
 * tests (or that part) are skipped, saying why.
 */

import assert from "node:assert/strict";
import {
  Access,
  type Backend,
  type Cq,
  type Device,
  type GuestBuffer,
  type Mr,
  openDevice,
  type Pd,
  type Qp,
  SendFlags,
  type SendWr,
  startBackend,
  type WorkCompletion,
} from "../../../mod.ts";
import { IPV4_DF, parseIpv4 } from "../../../backend/roce/ipv4.ts";
import { Opcode, OPCODES } from "../../../backend/roce/opcodes.ts";
import { buildPacket } from "../../../backend/roce/packet.ts";
import { DatagramBatch, UdpTransport } from "../../../backend/roce/transport.ts";
import {
  captureLo,
  captureUnavailable,
  icrcCheck,
  removeCapture,
  scapyUnavailable,
  tsharkFields,
} from "../../helpers/capture.ts";
import { tempSocket } from "../../helpers/backend.ts";
import { randomFields, Rng } from "./fixtures/random.ts";

const IP_A = "127.0.0.22";
const IP_B = "127.0.0.23";

const whyNoCapture = await captureUnavailable();
const whyNoScapy = await scapyUnavailable();
if (whyNoCapture !== null) console.log(`skipping live capture tests: ${whyNoCapture}`);
else if (whyNoScapy !== null) console.log(`skipping the scapy ICRC checks: ${whyNoScapy}`);

const NAMES = new Map<number, string>(OPCODES.map((o) => [o.opcode, o.name]));
const names = (ops: Iterable<number>) => [...ops].map((o) => NAMES.get(o) ?? `${o}`).join(", ");

function randomPort(): number {
  return 20000 + Math.floor(Math.random() * 40000);
}

/** What every captured packet must show, field by field. */
const FIELDS = [
  "ip.src",
  "ip.dst",
  "ip.id",
  "ip.flags.df",
  "udp.srcport",
  "udp.dstport",
  "infiniband.bth.opcode",
  "infiniband.bth.destqp",
  "infiniband.bth.psn",
  "infiniband.invariant.crc",
  "_ws.malformed",
] as const;

type Row = Record<(typeof FIELDS)[number], string>;

async function decode(pcap: string, port: number): Promise<Row[]> {
  const rows = await tsharkFields(pcap, { udpPort: port, fields: FIELDS });
  return rows.map((cols) => Object.fromEntries(FIELDS.map((f, i) => [f, cols[i] ?? ""])) as Row);
}

/** tshark prints booleans as 1/0 or True/False depending on its version. */
function isTrue(value: string): boolean {
  return value === "1" || value.toLowerCase() === "true";
}

/** Asserts every packet decodes as InfiniBand, from one host to the other on `port`, DF, ID 0. */
function assertWellFormed(rows: Row[], port: number): void {
  rows.forEach((r, i) => {
    const what = `packet ${i + 1} (${r["ip.src"]}:${r["udp.srcport"]} -> ${r["ip.dst"]}:${
      r["udp.dstport"]
    } opcode ${r["infiniband.bth.opcode"]})`;
    assert.notEqual(r["infiniband.bth.opcode"], "", `${what} does not decode as InfiniBand`);
    assert.equal(r["_ws.malformed"], "", `${what} is malformed to tshark`);
    assert.ok(
      (r["ip.src"] === IP_A && r["ip.dst"] === IP_B) ||
        (r["ip.src"] === IP_B && r["ip.dst"] === IP_A),
      `${what} is not between the two hosts`,
    );
    assert.equal(Number(r["udp.dstport"]), port, `${what}: destination port`);
    assert.equal(Number(r["ip.id"]), 0, `${what}: IPv4 ID`);
    assert.ok(isTrue(r["ip.flags.df"]), `${what}: DF is not set (${r["ip.flags.df"]})`);
  });
}

/** Runs the ICRC check unless scapy is missing (then says so); asserts all `count` packets right. */
async function assertIcrcs(pcap: string, port: number, count: number): Promise<void> {
  if (whyNoScapy !== null) {
    console.log(`not checking ICRCs: ${whyNoScapy}`);
    return;
  }
  const r = await icrcCheck(pcap, port);
  console.log(`scapy: ${r.packets} RoCE packets, ${r.icrcBad} bad ICRCs`);
  assert.equal(r.packets, count, "scapy sees as many RoCE packets as tshark");
  assert.equal(r.icrcBad, 0, "packets whose ICRC scapy computes differently");
  assert.equal(r.code, 0);
}

Deno.test({
  name:
    "captureLo records what the UDP transport sends: tshark decodes it, scapy agrees with every ICRC",
  ignore: whyNoCapture !== null,
  async fn() {
    let a: UdpTransport | undefined;
    let b: UdpTransport | undefined;
    for (let attempt = 0; b === undefined; attempt++) {
      const port = randomPort();
      try {
        a = UdpTransport.open({ ip: IP_A, port });
        b = UdpTransport.open({ ip: IP_B, port });
      } catch (e) {
        a?.close();
        a = undefined;
        if (attempt >= 4) throw e;
      }
    }
    using sender = a!;
    using receiver = b!;
    const port = sender.localPort;
    // One packet per opcode, from the sender's own port: an ICRC computed
    // for that source port stays right whichever socket sends it.
    const flow = {
      srcIp: parseIpv4(IP_A),
      dstIp: parseIpv4(IP_B),
      ipId: 0,
      ipFlags: IPV4_DF,
      srcPort: port,
      dstPort: port,
    };
    const rng = new Rng(22);
    const sent = OPCODES.map((info) => {
      const out = new Uint8Array(2048);
      const n = buildPacket(out, randomFields(rng, info, { icrc: flow, maxPayload: 1024 }));
      return { opcode: info.opcode, bytes: out.slice(0, n) };
    });
    const batch = new DatagramBatch(64, 2048);
    let received = 0;
    const pcap = await captureLo(`udp port ${port}`, async () => {
      for (const p of sent) {
        assert.ok(sender.send(p.bytes, { ip: receiver.localIp, port, sourcePort: port }));
      }
      const deadline = performance.now() + 5000;
      while (received < sent.length && performance.now() < deadline) {
        received += receiver.receive(batch);
        if (received < sent.length) await new Promise((r) => setTimeout(r, 5));
      }
    });
    try {
      assert.equal(received, sent.length, "datagrams that arrived");
      const rows = await decode(pcap, port);
      assert.equal(
        rows.length,
        sent.length,
        "packets captured: exactly those sent, canaries cut out",
      );
      assertWellFormed(rows, port);
      rows.forEach((r, i) => {
        const p = sent[i]!;
        assert.equal(Number(r["infiniband.bth.opcode"]), p.opcode, `packet ${i + 1}: opcode`);
        const icrc = new DataView(p.bytes.buffer).getUint32(p.bytes.length - 4);
        assert.equal(Number(r["infiniband.invariant.crc"]), icrc, `packet ${i + 1}: ICRC bytes`);
      });
      await assertIcrcs(pcap, port, sent.length);
    } finally {
      await removeCapture(pcap);
    }
  },
});

// ---------------------------------------------------------------------------
// Two hosts
// ---------------------------------------------------------------------------

const MTU = 1024;
const SMALL = 100;
/** Three packets at MTU 1024: FIRST, MIDDLE, LAST. */
const LARGE = 3000;
const WAIT_MS = 10_000;
const UD_QKEY = 0x11111111;
const GRH = 40;
const ALL_ACCESS = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ |
  Access.REMOTE_ATOMIC;
// Buffer layout of each guest.
const SRC = 0;
const DST = 16 << 10;
const RESULT = 32 << 10;
const WORD = 36 << 10;

/** Every opcode the operations below must put on the wire, requests and responses. */
const EXPECTED_OPCODES: readonly number[] = [
  Opcode.RC_SEND_FIRST,
  Opcode.RC_SEND_MIDDLE,
  Opcode.RC_SEND_LAST,
  Opcode.RC_SEND_LAST_WITH_IMMEDIATE,
  Opcode.RC_SEND_ONLY,
  Opcode.RC_SEND_ONLY_WITH_IMMEDIATE,
  Opcode.RC_RDMA_WRITE_FIRST,
  Opcode.RC_RDMA_WRITE_MIDDLE,
  Opcode.RC_RDMA_WRITE_LAST,
  Opcode.RC_RDMA_WRITE_LAST_WITH_IMMEDIATE,
  Opcode.RC_RDMA_WRITE_ONLY,
  Opcode.RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE,
  Opcode.RC_RDMA_READ_REQUEST,
  Opcode.RC_RDMA_READ_RESPONSE_FIRST,
  Opcode.RC_RDMA_READ_RESPONSE_MIDDLE,
  Opcode.RC_RDMA_READ_RESPONSE_LAST,
  Opcode.RC_RDMA_READ_RESPONSE_ONLY,
  Opcode.RC_ACKNOWLEDGE,
  Opcode.RC_ATOMIC_ACKNOWLEDGE,
  Opcode.RC_COMPARE_SWAP,
  Opcode.RC_FETCH_ADD,
  Opcode.UD_SEND_ONLY,
  Opcode.UD_SEND_ONLY_WITH_IMMEDIATE,
];

interface Side {
  host: Backend;
  dev: Device;
  pd: Pd;
  buf: GuestBuffer;
  mr: Mr;
  cq: Cq;
  rc: Qp;
  ud: Qp;
}

async function startHosts(): Promise<[Backend, Backend]> {
  for (let attempt = 0;; attempt++) {
    const port = randomPort();
    let first: Backend | undefined;
    try {
      first = await startBackend({
        socket: tempSocket("wire"),
        ip: IP_A,
        port,
        logLevel: "silent",
      });
      const second = await startBackend({
        socket: tempSocket("wire"),
        ip: IP_B,
        port,
        logLevel: "silent",
      });
      return [first, second];
    } catch (e) {
      await first?.close();
      if (attempt >= 4) throw e;
    }
  }
}

async function openSide(host: Backend): Promise<Side> {
  const dev = await openDevice({ socket: host.socket, memoryBytes: 4 << 20 });
  const pd = await dev.allocPd();
  const buf = dev.allocBuffer(64 << 10, 4096);
  const mr = await pd.regMr(buf, ALL_ACCESS);
  const cq = await dev.createCq({ cqe: 64 });
  const cap = { maxSendWr: 16, maxRecvWr: 16, maxSendSge: 1, maxRecvSge: 1, maxInlineData: 0 };
  const rc = await pd.createQp({ qpType: "RC", sendCq: cq, recvCq: cq, cap });
  const ud = await pd.createQp({ qpType: "UD", sendCq: cq, recvCq: cq, cap });
  return { host, dev, pd, buf, mr, cq, rc, ud };
}

async function connectRc(p: Side, peer: Side): Promise<void> {
  await p.rc.connect({ qpNum: peer.rc.qpNum, psn: peer.rc.psn, gid: peer.host.gid }, {
    pathMtu: MTU,
  });
  await p.ud.modify({ qpState: "INIT", pkeyIndex: 0, portNum: 1, qkey: UD_QKEY });
  await p.ud.modify({ qpState: "RTR" });
  await p.ud.modify({ qpState: "RTS", sqPsn: p.ud.psn });
}

/** The next completion of `cq`, or a failure naming `what` after {@linkcode WAIT_MS}. */
async function nextWc(cq: Cq, what: string): Promise<WorkCompletion> {
  const wc = cq.next();
  wc.catch(() => {}); // a waiter left behind is rejected when the device closes
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`no completion within ${WAIT_MS} ms: ${what}`)),
      WAIT_MS,
    );
  });
  try {
    return await Promise.race([wc, late]);
  } finally {
    clearTimeout(timer);
  }
}

function expectWc(wc: WorkCompletion, want: Partial<WorkCompletion>, what: string): void {
  const got = Object.fromEntries(Object.keys(want).map((k) => [k, wc[k as keyof WorkCompletion]]));
  assert.deepEqual(
    got,
    want,
    `${what}: completion ${JSON.stringify(wc, (_, v) => typeof v === "bigint" ? `${v}` : v)}`,
  );
}

function pattern(seed: number, length: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (seed * 31 + i * 7 + (i >> 8)) & 0xff);
}

function bytesAt(p: Side, offset: number, length: number): Uint8Array {
  return p.buf.bytes.subarray(offset, offset + length);
}

function sge(p: Side, offset: number, length: number) {
  return { addr: p.buf.addr + BigInt(offset), length, lkey: p.mr.lkey };
}

function u64(p: Side, offset: number): DataView {
  return new DataView(p.buf.bytes.buffer, p.buf.bytes.byteOffset + offset, 8);
}

let seed = 0;

/** One RC operation from `a` to `b`, every completion and byte checked. */
async function rcOp(a: Side, b: Side, op: SendWr["opcode"], size: number): Promise<void> {
  const what = `${op} of ${size} B`;
  const data = pattern(++seed, size);
  const wrId = BigInt(seed);
  const imm = op.endsWith("WITH_IMM") ? 0x80000000 + seed : undefined;
  const consumesRecv = op === "SEND" || op === "SEND_WITH_IMM" || op === "RDMA_WRITE_WITH_IMM";
  bytesAt(b, DST, size + 64).fill(0xee);
  if (consumesRecv) {
    b.rc.postRecv({
      wrId: wrId + 1000n,
      sgList: op.startsWith("SEND") ? [sge(b, DST, LARGE)] : [],
    });
  }
  let wcOpcode: string;
  if (op === "RDMA_READ") {
    bytesAt(b, SRC, size).set(data);
    bytesAt(a, DST, size + 64).fill(0xee);
    a.rc.postSend({
      wrId,
      opcode: op,
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(a, DST, size)],
      rdma: { remoteAddr: b.buf.addr + BigInt(SRC), rkey: b.mr.rkey },
    });
    wcOpcode = "RDMA_READ";
  } else {
    bytesAt(a, SRC, size).set(data);
    a.rc.postSend({
      wrId,
      opcode: op,
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(a, SRC, size)],
      ...(imm !== undefined ? { immData: imm } : {}),
      ...(op.startsWith("RDMA_WRITE")
        ? { rdma: { remoteAddr: b.buf.addr + BigInt(DST), rkey: b.mr.rkey } }
        : {}),
    });
    wcOpcode = op.startsWith("SEND") ? "SEND" : "RDMA_WRITE";
  }
  expectWc(await nextWc(a.cq, `${what}: requester`), {
    wrId,
    status: "SUCCESS",
    opcode: wcOpcode as WorkCompletion["opcode"],
    qpNum: a.rc.qpNum,
  }, `${what}: requester`);
  if (consumesRecv) {
    expectWc(await nextWc(b.cq, `${what}: receiver`), {
      wrId: wrId + 1000n,
      status: "SUCCESS",
      opcode: op === "RDMA_WRITE_WITH_IMM" ? "RECV_RDMA_WITH_IMM" : "RECV",
      byteLen: size,
      immData: imm,
      qpNum: b.rc.qpNum,
      srcQp: a.rc.qpNum,
    }, `${what}: receiver`);
  }
  const landed = op === "RDMA_READ" ? bytesAt(a, DST, size + 64) : bytesAt(b, DST, size + 64);
  assert.deepEqual(landed.subarray(0, size), data, `${what}: bytes`);
  assert.ok(landed.subarray(size).every((x) => x === 0xee), `${what}: bytes after the target`);
}

async function atomic(
  a: Side,
  b: Side,
  op: "ATOMIC_CMP_AND_SWP" | "ATOMIC_FETCH_AND_ADD",
  compareAdd: bigint,
  swap: bigint,
): Promise<bigint> {
  const wrId = BigInt(++seed);
  a.rc.postSend({
    wrId,
    opcode: op,
    sendFlags: SendFlags.SIGNALED,
    sgList: [sge(a, RESULT, 8)],
    atomic: { remoteAddr: b.buf.addr + BigInt(WORD), rkey: b.mr.rkey, compareAdd, swap },
  });
  expectWc(await nextWc(a.cq, op), {
    wrId,
    status: "SUCCESS",
    opcode: op === "ATOMIC_CMP_AND_SWP" ? "COMP_SWAP" : "FETCH_ADD",
    byteLen: 8,
  }, op);
  return u64(a, RESULT).getBigUint64(0, true);
}

async function udSend(a: Side, b: Side, withImm: boolean): Promise<void> {
  const what = `UD ${withImm ? "SEND_WITH_IMM" : "SEND"}`;
  const data = pattern(++seed, SMALL);
  const wrId = BigInt(seed);
  const imm = withImm ? 0x12345678 : undefined;
  bytesAt(b, DST, GRH + SMALL + 64).fill(0xee);
  b.ud.postRecv({ wrId: wrId + 1000n, sgList: [sge(b, DST, GRH + SMALL)] });
  bytesAt(a, SRC, SMALL).set(data);
  const ah = await a.pd.createAh({ dgid: b.host.gid, portNum: 1 });
  a.ud.postSend({
    wrId,
    opcode: withImm ? "SEND_WITH_IMM" : "SEND",
    sendFlags: SendFlags.SIGNALED,
    sgList: [sge(a, SRC, SMALL)],
    ...(imm !== undefined ? { immData: imm } : {}),
    ud: { ah, remoteQpn: b.ud.qpNum, remoteQkey: UD_QKEY },
  });
  expectWc(
    await nextWc(a.cq, `${what}: sender`),
    { wrId, status: "SUCCESS", opcode: "SEND" },
    what,
  );
  expectWc(await nextWc(b.cq, `${what}: receiver`), {
    wrId: wrId + 1000n,
    status: "SUCCESS",
    opcode: "RECV",
    byteLen: GRH + SMALL,
    immData: imm,
    srcQp: a.ud.qpNum,
  }, `${what}: receiver`);
  assert.deepEqual(bytesAt(b, DST + GRH, SMALL), data, `${what}: bytes`);
}

Deno.test({
  name: "two hosts on the wire: every operation's opcodes decode as InfiniBand, every ICRC right",
  ignore: whyNoCapture !== null,
  async fn() {
    const [hostA, hostB] = await startHosts();
    await using _hostA = hostA;
    await using _hostB = hostB;
    const port = hostA.port;
    const a = await openSide(hostA);
    await using _devA = a.dev;
    const b = await openSide(hostB);
    await using _devB = b.dev;
    await connectRc(a, b);
    await connectRc(b, a);
    const pcap = await captureLo(`udp port ${port}`, async () => {
      for (
        const op of [
          "SEND",
          "SEND_WITH_IMM",
          "RDMA_WRITE",
          "RDMA_WRITE_WITH_IMM",
          "RDMA_READ",
        ] as const
      ) {
        for (const size of [SMALL, LARGE]) await rcOp(a, b, op, size);
      }
      u64(b, WORD).setBigUint64(0, 5n, true);
      assert.equal(await atomic(a, b, "ATOMIC_CMP_AND_SWP", 5n, 9n), 5n, "CMP_SWAP original");
      assert.equal(u64(b, WORD).getBigUint64(0, true), 9n, "swapped");
      assert.equal(await atomic(a, b, "ATOMIC_FETCH_AND_ADD", 7n, 0n), 9n, "FETCH_ADD original");
      assert.equal(u64(b, WORD).getBigUint64(0, true), 16n, "added");
      await udSend(a, b, false);
      await udSend(a, b, true);
    });
    try {
      const rows = await decode(pcap, port);
      const seen = new Map<number, number>();
      for (const r of rows) {
        const op = Number(r["infiniband.bth.opcode"]);
        seen.set(op, (seen.get(op) ?? 0) + 1);
      }
      console.log(
        `captured ${rows.length} packets on UDP ${port}: ${
          [...seen].sort(([x], [y]) => x - y).map(([op, n]) => `${NAMES.get(op) ?? op} x${n}`).join(
            ", ",
          )
        }`,
      );
      assert.ok(rows.length > 0, "no packet captured: the hosts did not talk over UDP");
      assertWellFormed(rows, port);
      const missing = EXPECTED_OPCODES.filter((op) => !seen.has(op));
      const extra = [...seen.keys()].filter((op) => !EXPECTED_OPCODES.includes(op));
      assert.deepEqual(missing, [], `opcodes never on the wire: ${names(missing)}`);
      assert.deepEqual(extra, [], `opcodes not expected: ${names(extra)}`);
      await assertIcrcs(pcap, port, rows.length);
    } finally {
      await removeCapture(pcap);
    }
  },
});
