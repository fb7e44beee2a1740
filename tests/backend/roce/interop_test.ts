/**
 * Our packets against independent decoders: scapy's RoCE layer must agree
 * with every ICRC (shared/interop/icrc_check.py, beside the checkout) and tshark must
 * decode every opcode and header field as InfiniBand. Both tools come from
 * Debian packages; without them these tests are skipped, saying why.
 */
import assert from "node:assert/strict";
import { recoverIpIds } from "../../../backend/roce/icrc.ts";
import { parseIpv4 } from "../../../backend/roce/ipv4.ts";
import { Header, OPCODES } from "../../../backend/roce/opcodes.ts";
import { buildPacket, type PacketFields } from "../../../backend/roce/packet.ts";
import { ipv4Datagram, pcapFile } from "./fixtures/pcap.ts";
import { randomFields, Rng } from "./fixtures/random.ts";

const PYTHON = "/usr/bin/python3";
// shared/ sits beside the checkout, here and in CI.
const ICRC_CHECK = new URL("../../../../shared/interop/icrc_check.py", import.meta.url).pathname;

async function runs(cmd: string, args: string[]): Promise<boolean> {
  try {
    const r = await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output();
    return r.success;
  } catch {
    return false;
  }
}

const haveScapy = await runs(PYTHON, ["-c", "import scapy.contrib.roce"]) &&
  (await Deno.stat(ICRC_CHECK).then(() => true, () => false));
const haveTshark = await runs("tshark", ["--version"]);
if (!haveScapy) {
  console.log(
    `skipping scapy ICRC checks: ${PYTHON} cannot import scapy.contrib.roce or ${ICRC_CHECK} is missing`,
  );
}
if (!haveTshark) console.log("skipping tshark decoding checks: tshark is not installed");

interface Sent {
  fields: PacketFields;
  datagram: Uint8Array;
}

// Three packets per opcode: a short payload, none, and one 4 KiB MTU's
// worth, from rxe's address plan (10.99.0.x), as a DF socket sends them.
function packets(seed: number, ipIds: (i: number) => number): Sent[] {
  const rng = new Rng(seed);
  const sent: Sent[] = [];
  const out = new Uint8Array(8192);
  for (const info of OPCODES) {
    for (const maxPayload of [40, 0, 4096]) {
      const flow = {
        srcIp: parseIpv4("10.99.0.1"),
        dstIp: parseIpv4("10.99.0.2"),
        ipId: ipIds(sent.length),
        ipFlags: 0x4000,
        srcPort: 0xc000 | rng.int(0x4000),
      };
      const fields = randomFields(rng, info, { icrc: flow, maxPayload });
      const payload = fields.payload && maxPayload === 4096 ? rng.bytes(4096) : fields.payload;
      const final = { ...fields, payload };
      const n = buildPacket(out, final);
      sent.push({ fields: final, datagram: ipv4Datagram(flow, out.slice(0, n)) });
    }
  }
  return sent;
}

async function icrcCheck(datagrams: Uint8Array[]): Promise<{ code: number; summary: string }> {
  const file = await Deno.makeTempFile({ suffix: ".pcap" });
  try {
    await Deno.writeFile(file, pcapFile(datagrams));
    const r = await new Deno.Command(PYTHON, {
      args: [ICRC_CHECK, file],
      stdout: "piped",
      stderr: "piped",
    })
      .output();
    return { code: r.code, summary: new TextDecoder().decode(r.stdout).trim() };
  } finally {
    await Deno.remove(file);
  }
}

Deno.test({
  name: "scapy agrees with the ICRC of every opcode (IP ID 0, DF, TTL 64)",
  ignore: !haveScapy,
  async fn() {
    const sent = packets(1, () => 0);
    const { code, summary } = await icrcCheck(sent.map((s) => s.datagram));
    const result = JSON.parse(summary);
    assert.equal(result.packets, sent.length);
    assert.equal(result.icrc_bad, 0);
    assert.deepEqual(result.opcodes, OPCODES.map((i) => i.opcode));
    assert.equal(code, 0);
  },
});

Deno.test({
  name: "scapy agrees with nonzero IP IDs too, and IP ID recovery finds them",
  ignore: !haveScapy,
  async fn() {
    // rxe itself sends kernel-chosen IDs, counting up from a random start.
    const sent = packets(2, (i) => (0xfff0 + i * 3) & 0xffff);
    const { code, summary } = await icrcCheck(sent.map((s) => s.datagram));
    assert.equal(code, 0, summary);
    for (const { fields, datagram } of sent) {
      const { ipId, ...unknown } = fields.icrc!;
      assert.deepEqual(recoverIpIds(unknown, datagram.subarray(28)), [ipId]);
    }
  },
});

Deno.test({
  name: "scapy's check can fail: one wrong ICRC makes it exit 1",
  ignore: !haveScapy,
  async fn() {
    const datagrams = packets(3, () => 0).map((s) => s.datagram);
    const victim = datagrams[7]!;
    victim[victim.length - 1]! ^= 0x80;
    const { code, summary } = await icrcCheck(datagrams);
    assert.equal(JSON.parse(summary).icrc_bad, 1);
    assert.equal(code, 1);
  },
});

// Upper-layer dissectors tshark tries on InfiniBand payload
// (`tshark -G heuristic-decodes`, table infiniband.payload).
const PAYLOAD_DISSECTORS = [
  "smc",
  "smb_direct",
  "rpcordma",
  "nvme-rdma",
  "lnet",
  "iser",
  "infiniband.eoib",
  "infiniband_sdp",
  "fcoib",
];

// tshark field -> how to read our expected value in its output format.
function big(value: string): bigint {
  return BigInt(value.split(",")[0]!);
}

Deno.test({
  name: "tshark decodes every opcode and header field as InfiniBand",
  ignore: !haveTshark,
  async fn() {
    const sent = packets(4, (i) => i);
    const file = await Deno.makeTempFile({ suffix: ".pcap" });
    const columns = [
      "infiniband.bth.opcode",
      "infiniband.bth.destqp",
      "infiniband.bth.psn",
      "infiniband.bth.p_key",
      "infiniband.bth.padcnt",
      "infiniband.reth.va",
      "infiniband.reth.r_key",
      "infiniband.reth.dmalen",
      "infiniband.aeth.syndrome",
      "infiniband.aeth.msn",
      "infiniband.deth.q_key",
      "infiniband.deth.srcqp",
      "infiniband.atomiceth.swapdt",
      "infiniband.atomiceth.cmpdt",
      "infiniband.atomicacketh.origremdt",
      "infiniband.immdt",
      "infiniband.ieth",
      "infiniband.invariant.crc",
      "_ws.malformed",
    ];
    let text: string;
    try {
      await Deno.writeFile(file, pcapFile(sent.map((s) => s.datagram)));
      // Random payload bytes can look like an upper-layer protocol to one of
      // the heuristic payload dissectors (RPC-over-RDMA, Mellanox EoIB on an
      // empty UD payload, ...), which then calls them malformed: turn those
      // off, so "malformed" below can only mean the InfiniBand headers.
      const args = ["-r", file, "-d", "udp.port==4791,infiniband"];
      for (const p of PAYLOAD_DISSECTORS) args.push("--disable-protocol", p);
      args.push("-T", "fields", "-E", "separator=|", ...columns.flatMap((c) => ["-e", c]));
      const r = await new Deno.Command("tshark", { args, stdout: "piped", stderr: "piped" })
        .output();
      assert.ok(r.success, new TextDecoder().decode(r.stderr));
      text = new TextDecoder().decode(r.stdout);
    } finally {
      await Deno.remove(file);
    }
    const rows = text.trimEnd().split("\n").map((line) => line.split("|"));
    assert.equal(rows.length, sent.length);
    rows.forEach((row, i) => {
      const f = sent[i]!.fields;
      const roce = sent[i]!.datagram.subarray(28);
      const col = (name: string) => row[columns.indexOf(name)]!;
      const what = `packet ${i} opcode ${f.opcode}`;
      assert.equal(Number(col("infiniband.bth.opcode")), f.opcode, what);
      assert.equal(Number(col("infiniband.bth.destqp")), f.destQp, what);
      assert.equal(Number(col("infiniband.bth.psn")), f.psn, what);
      assert.equal(Number(col("infiniband.bth.p_key")), f.pkey, what);
      assert.equal(Number(col("infiniband.bth.padcnt")), -(f.payload?.length ?? 0) & 3, what);
      if (f.reth) {
        assert.equal(big(col("infiniband.reth.va")), f.reth.va, what);
        assert.equal(Number(col("infiniband.reth.r_key")), f.reth.rkey, what);
        assert.equal(Number(col("infiniband.reth.dmalen")), f.reth.dmaLen, what);
      }
      if (f.atomicEth) {
        // tshark files the AtomicETH address and key under the RETH fields.
        assert.equal(big(col("infiniband.reth.va")), f.atomicEth.va, what);
        assert.equal(Number(col("infiniband.reth.r_key")), f.atomicEth.rkey, what);
        assert.equal(big(col("infiniband.atomiceth.swapdt")), f.atomicEth.swapAdd, what);
        assert.equal(big(col("infiniband.atomiceth.cmpdt")), f.atomicEth.compare, what);
      }
      if (f.aeth) {
        assert.equal(Number(col("infiniband.aeth.syndrome")), f.aeth.syndrome, what);
        assert.equal(Number(col("infiniband.aeth.msn")), f.aeth.msn, what);
      }
      if (f.deth) {
        assert.equal(Number(col("infiniband.deth.q_key")), f.deth.qkey, what);
        assert.equal(Number(col("infiniband.deth.srcqp")), f.deth.srcQp, what);
      }
      if (f.origData !== undefined) {
        assert.equal(big(col("infiniband.atomicacketh.origremdt")), f.origData, what);
      }
      if (f.immDt !== undefined) {
        assert.equal(parseInt(col("infiniband.immdt").split(",")[0]!, 16), f.immDt, what);
      }
      if (f.iethRkey !== undefined) {
        assert.equal(parseInt(col("infiniband.ieth").split(",")[0]!, 16), f.iethRkey, what);
      }
      const headers = OPCODES.find((o) => o.opcode === f.opcode)!.headers;
      if (!(headers & (Header.RETH | Header.ATOMIC_ETH))) {
        assert.equal(col("infiniband.reth.va"), "", what);
      }
      // tshark shows the ICRC bytes as one big-endian number.
      const stored = new DataView(roce.buffer, roce.byteOffset + roce.length - 4).getUint32(0);
      assert.equal(Number(col("infiniband.invariant.crc")), stored, what);
      assert.equal(col("_ws.malformed"), "", `${what} is malformed to tshark`);
    });
  },
});
