/**
 * RoCE packet layer speed: ICRC throughput on 4 KiB packets and build/parse
 * cost per packet. Run: `deno run -A tests/backend/roce/roce_bench.ts`.
 * Figures drift between runs; compare ratios within one run.
 */
import { crc32 } from "node:zlib";
import { computeIcrc, recoverIpIds, writeIcrc } from "../../../backend/roce/icrc.ts";
import { Opcode } from "../../../backend/roce/opcodes.ts";
import {
  buildPacket,
  type PacketFields,
  ParseFailure,
  parsePacket,
} from "../../../backend/roce/packet.ts";

const flow = { srcIp: 0x0a630001, dstIp: 0x0a630002, ipId: 0, srcPort: 49441 };

function time(label: string, iterations: number, body: (i: number) => void, bytes = 0): number {
  for (let i = 0; i < Math.min(iterations, 20_000); i++) body(i); // warm up
  const t0 = performance.now();
  for (let i = 0; i < iterations; i++) body(i);
  const ns = ((performance.now() - t0) * 1e6) / iterations;
  const rate = bytes > 0 ? `  ${(bytes / ns).toFixed(2)} GB/s` : "";
  console.log(`${label.padEnd(52)} ${ns.toFixed(0).padStart(7)} ns${rate}`);
  return ns;
}

const packet4k = new Uint8Array(12 + 4096 + 4);
crypto.getRandomValues(packet4k);
packet4k[0] = Opcode.RC_RDMA_WRITE_MIDDLE;
packet4k[1] = 0;
let sink = 0;
time("zlib crc32 alone, 4112 B", 200_000, () => {
  sink ^= crc32(packet4k);
}, packet4k.length);
time("computeIcrc, 4 KiB payload (4112 B RoCE packet)", 200_000, () => {
  sink ^= computeIcrc(flow, packet4k);
}, packet4k.length);
time("computeIcrc, 1 KiB payload", 500_000, () => {
  sink ^= computeIcrc(flow, packet4k.subarray(0, 12 + 1024 + 4));
}, 1040);
time("computeIcrc, ACK (20 B)", 1_000_000, () => {
  sink ^= computeIcrc(flow, packet4k.subarray(0, 20));
});
writeIcrc({ ...flow, ipId: 4321 }, packet4k);
time("recoverIpIds, 4 KiB payload", 50_000, () => {
  sink ^= recoverIpIds(flow, packet4k).length;
});

const out = new Uint8Array(8192);
const payload64 = new Uint8Array(64);
const payload4k = new Uint8Array(4096);
const cases: Array<[string, PacketFields]> = [
  ["RC ACK", {
    opcode: Opcode.RC_ACKNOWLEDGE,
    destQp: 17,
    psn: 1,
    aeth: { syndrome: 0x1f, msn: 1 },
    icrc: flow,
  }],
  ["RC SEND only, 64 B", {
    opcode: Opcode.RC_SEND_ONLY,
    destQp: 17,
    psn: 1,
    payload: payload64,
    icrc: flow,
  }],
  [
    "RC WRITE first, 4 KiB",
    {
      opcode: Opcode.RC_RDMA_WRITE_FIRST,
      destQp: 17,
      psn: 1,
      reth: { va: 0x1000n, rkey: 5, dmaLen: 65536 },
      payload: payload4k,
      icrc: flow,
    },
  ],
];
for (const [name, fields] of cases) {
  const n = buildPacket(out, fields);
  const bytes = out.subarray(0, n);
  time(`build ${name}`, 300_000, () => {
    sink ^= buildPacket(out, fields);
  });
  time(`build ${name}, ICRC left to caller`, 300_000, () => {
    sink ^= buildPacket(out, { ...fields, icrc: null });
  });
  buildPacket(out, fields);
  time(`parse ${name} (+ read PSN, payload length)`, 1_000_000, () => {
    const p = parsePacket(bytes);
    if (!(p instanceof ParseFailure)) sink ^= p.psn ^ p.payloadLength;
  });
  time(`build + parse ${name}`, 300_000, () => {
    const m = buildPacket(out, fields);
    const p = parsePacket(out.subarray(0, m));
    if (!(p instanceof ParseFailure)) sink ^= p.psn;
  });
}
const garbage = new Uint8Array([0x15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
time("parse garbage (unknown opcode -> ParseFailure)", 1_000_000, () => {
  sink ^= parsePacket(garbage) instanceof ParseFailure ? 1 : 0;
});
time("for comparison: new SyntaxError(message)", 200_000, (i) => {
  sink ^= new SyntaxError(`opcode 0x${i.toString(16)} is not supported`).message.length;
});
console.log(`(sink ${sink & 1})`);
