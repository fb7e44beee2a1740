import assert from "node:assert/strict";
import { RocePacket } from "../../../backend/roce/headers.ts";
import { checkIcrc } from "../../../backend/roce/icrc.ts";
import { Header, Opcode, opcodeInfo, OPCODES, OpFlag } from "../../../backend/roce/opcodes.ts";
import {
  buildPacket,
  MAX_PACKET_BYTES,
  type PacketFields,
  ParseFailure,
  parsePacket,
} from "../../../backend/roce/packet.ts";
import { randomFields, randomFlow, Rng } from "./fixtures/random.ts";

function parsed(bytes: Uint8Array): RocePacket {
  const p = parsePacket(bytes);
  if (p instanceof ParseFailure) throw p.toError();
  return p;
}

function failure(bytes: Uint8Array | number[]): ParseFailure {
  const p = parsePacket(bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes));
  assert.ok(p instanceof ParseFailure, "expected a parse failure");
  return p;
}

Deno.test("build -> parse round trip for every opcode with random fields", () => {
  const rng = new Rng(2024);
  const out = new Uint8Array(8192);
  for (const info of OPCODES) {
    for (let round = 0; round < 40; round++) {
      const flow = randomFlow(rng);
      const f = randomFields(rng, info, { icrc: flow, maxPayload: round < 35 ? 64 : 4096 });
      const start = rng.int(8);
      const n = buildPacket(out.subarray(start), f);
      const payloadBytes = f.payload?.length ?? 0;
      const pad = -payloadBytes & 3;
      assert.equal(n, info.length + payloadBytes + pad + 4, info.name);
      const bytes = out.subarray(start, start + n);
      const p = parsed(bytes);
      assert.equal(p.info, info);
      assert.equal(p.opcode, f.opcode);
      assert.equal(p.destQp, f.destQp);
      assert.equal(p.psn, f.psn);
      assert.equal(p.pkey, f.pkey);
      assert.equal(p.se, f.se);
      assert.equal(p.mig, f.mig);
      assert.equal(p.fecn, f.fecn);
      assert.equal(p.becn, f.becn);
      assert.equal(p.ackReq, f.ackReq);
      assert.equal(p.tver, 0);
      assert.equal(p.padCnt, pad);
      assert.equal(bytes[4]! & 0x3f, 0, "BTH reserved bits zero");
      assert.equal(bytes[8]! & 0x7f, 0, "BTH reserved bits zero");
      if (f.deth) {
        assert.equal(p.qkey, f.deth.qkey);
        assert.equal(p.srcQp, f.deth.srcQp);
        assert.equal(bytes[info.offsets.deth + 4], 0, "DETH reserved byte zero");
      }
      if (f.reth) {
        assert.equal(p.rethVa, f.reth.va);
        assert.equal(p.rethRkey, f.reth.rkey);
        assert.equal(p.rethDmaLen, f.reth.dmaLen);
      }
      if (f.atomicEth) {
        assert.equal(p.atomicVa, f.atomicEth.va);
        assert.equal(p.atomicRkey, f.atomicEth.rkey);
        assert.equal(p.swapAdd, f.atomicEth.swapAdd);
        assert.equal(p.compare, f.atomicEth.compare);
      }
      if (f.aeth) {
        assert.equal(p.syndrome, f.aeth.syndrome);
        assert.equal(p.msn, f.aeth.msn);
      }
      if (f.origData !== undefined) assert.equal(p.origData, f.origData);
      if (f.immDt !== undefined) assert.equal(p.immDt, f.immDt);
      if (f.iethRkey !== undefined) assert.equal(p.iethRkey, f.iethRkey);
      assert.equal(p.payloadLength, payloadBytes);
      assert.deepEqual(p.payload, f.payload ?? new Uint8Array(0));
      assert.ok(
        bytes.subarray(info.length + payloadBytes, n - 4).every((b) => b === 0),
        "zero pad",
      );
      assert.ok(checkIcrc(flow, bytes), `${info.name}: ICRC`);
      assert.equal(p.icrc, new DataView(bytes.buffer, bytes.byteOffset + n - 4).getUint32(0, true));
    }
  }
});

Deno.test("build: defaults are P_Key 0xFFFF, flags clear; null icrc leaves zeros", () => {
  const out = new Uint8Array(32).fill(0xaa);
  const n = buildPacket(out, {
    opcode: Opcode.RC_ACKNOWLEDGE,
    destQp: 0x11,
    psn: 0x214fec,
    aeth: { syndrome: 0x1f, msn: 1 },
    icrc: null,
  });
  assert.equal(n, 20);
  assert.deepEqual(
    [...out.subarray(0, 21)],
    [0x11, 0, 0xff, 0xff, 0, 0, 0, 0x11, 0, 0x21, 0x4f, 0xec, 0x1f, 0, 0, 1, 0, 0, 0, 0, 0xaa],
  );
});

Deno.test("build: the same bytes scapy produced for a UD SEND", () => {
  const out = new Uint8Array(64);
  const n = buildPacket(out, {
    opcode: Opcode.UD_SEND_ONLY,
    destQp: 0x14,
    psn: 0x100,
    deth: { qkey: 0x11111111, srcQp: 0x13 },
    payload: new TextEncoder().encode("hello"),
    icrc: { srcIp: 0x0a630001, dstIp: 0x0a630002, srcPort: 53368 },
  });
  const hex = [...out.subarray(0, n)].map((b) => b.toString(16).padStart(2, "0")).join("");
  assert.equal(hex, "6430ffff0000001400000100111111110000001368656c6c6f000000dbf2ceee");
});

Deno.test("build rejects wrong fields with TypeError / RangeError naming the value", () => {
  const out = new Uint8Array(128);
  const base = { destQp: 1, psn: 1, icrc: null } as const;
  const cases: Array<[PacketFields, string, string]> = [
    [{ ...base, opcode: 0x15 }, "RangeError", "opcode 21 is not one vrdma builds"],
    [
      { ...base, opcode: Opcode.RC_RDMA_WRITE_FIRST },
      "TypeError",
      "RC_RDMA_WRITE_FIRST needs fields.reth",
    ],
    [
      { ...base, opcode: Opcode.RC_SEND_ONLY, reth: { va: 0n, rkey: 0, dmaLen: 0 } },
      "TypeError",
      "RC_SEND_ONLY carries no reth",
    ],
    [
      { ...base, opcode: Opcode.RC_SEND_ONLY, immDt: 5 },
      "TypeError",
      "RC_SEND_ONLY carries no immDt",
    ],
    [{ ...base, opcode: Opcode.UD_SEND_ONLY }, "TypeError", "UD_SEND_ONLY needs fields.deth"],
    [
      {
        ...base,
        opcode: Opcode.RC_ACKNOWLEDGE,
        aeth: { syndrome: 0, msn: 0 },
        payload: new Uint8Array(4),
      },
      "TypeError",
      "RC_ACKNOWLEDGE carries no payload, got 4 bytes",
    ],
    [
      { ...base, opcode: Opcode.RC_SEND_ONLY, psn: 0x1000000 },
      "RangeError",
      "psn 16777216 is not a 24-bit unsigned integer",
    ],
    [
      { ...base, opcode: Opcode.RC_SEND_ONLY, destQp: -1 },
      "RangeError",
      "destQp -1 is not a 24-bit unsigned integer",
    ],
    [
      { ...base, opcode: Opcode.RC_SEND_ONLY, pkey: 1.5 },
      "RangeError",
      "pkey 1.5 is not a 16-bit unsigned integer",
    ],
    [
      { ...base, opcode: Opcode.RC_SEND_ONLY_WITH_IMMEDIATE, immDt: 2 ** 32 },
      "RangeError",
      "immDt 4294967296 is not a 32-bit unsigned integer",
    ],
    [
      {
        ...base,
        opcode: Opcode.RC_FETCH_ADD,
        atomicEth: { va: -1n, rkey: 0, swapAdd: 0n, compare: 0n },
      },
      "RangeError",
      "atomicEth.va -1 is not a 64-bit unsigned bigint",
    ],
    [
      {
        ...base,
        opcode: Opcode.RC_ATOMIC_ACKNOWLEDGE,
        aeth: { syndrome: 0, msn: 0 },
        origData: 1n << 64n,
      },
      "RangeError",
      "origData 18446744073709551616 is not a 64-bit unsigned bigint",
    ],
    [
      { ...base, opcode: Opcode.RC_ACKNOWLEDGE, aeth: { syndrome: 256, msn: 0 } },
      "RangeError",
      "aeth.syndrome 256 is not a 8-bit unsigned integer",
    ],
    [
      { ...base, opcode: Opcode.RC_SEND_ONLY, payload: new Uint8Array(200) },
      "RangeError",
      "RC_SEND_ONLY packet needs 216 bytes, out has 128",
    ],
    [
      { ...base, opcode: Opcode.RC_SEND_ONLY, payload: new Uint8Array(MAX_PACKET_BYTES) },
      "RangeError",
      "a 65524-byte packet does not fit in a UDP datagram",
    ],
  ];
  for (const [fields, name, message] of cases) {
    assert.throws(() => buildPacket(out, fields), { name, message });
  }
});

Deno.test("parse: each malformed shape gets its own failure kind and message", () => {
  const ack = [0x11, 0, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0, 1, 0x1f, 0, 0, 1, 0, 0, 0, 0];
  assert.ok(parsePacket(new Uint8Array(ack)) instanceof RocePacket);

  let f = failure([]);
  assert.equal(f.kind, "truncated-header");
  assert.equal(f.message, "0 bytes cannot hold a BTH and an ICRC (16)");
  f = failure(ack.slice(0, 16));
  assert.equal(f.kind, "truncated-header");
  assert.equal(f.message, "RC_ACKNOWLEDGE needs 20 bytes of headers and ICRC, got 16");
  f = failure([0x15, ...ack.slice(1)]);
  assert.equal(f.kind, "unknown-opcode");
  assert.equal(f.message, "opcode 0x15 is not supported");
  f = failure([0x11, 0x01, ...ack.slice(2)]);
  assert.equal(f.kind, "bad-tver");
  assert.equal(f.message, "RC_ACKNOWLEDGE has TVer 1, not 0");
  f = failure([...ack, 0, 0]);
  assert.equal(f.kind, "unaligned-length");
  assert.equal(f.message, "RC_ACKNOWLEDGE of 22 bytes: not a multiple of 4");
  f = failure([...ack, 0, 0, 0, 0]);
  assert.equal(f.kind, "unexpected-payload");
  assert.equal(f.message, "RC_ACKNOWLEDGE carries no payload, yet 4 bytes follow its headers");
  f = failure([0x11, 0x10, ...ack.slice(2)]);
  assert.equal(f.kind, "pad-length");
  assert.equal(f.message, "RC_ACKNOWLEDGE carries no payload, yet PadCnt is 1");
  // A SEND with PadCnt 3 but no payload bytes at all.
  f = failure([0x04, 0x30, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]);
  assert.equal(f.kind, "pad-length");
  assert.equal(f.message, "RC_SEND_ONLY has PadCnt 3 but only 0 bytes after its headers");
  assert.equal(f.toError().name, "SyntaxError");
  assert.equal(
    f.toError().message,
    "pad-length: RC_SEND_ONLY has PadCnt 3 but only 0 bytes after its headers",
  );
});

Deno.test("parse: a zero-length SEND and a 4-byte payload with pad 0 are fine", () => {
  const empty = parsed(new Uint8Array([0x04, 0, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]));
  assert.equal(empty.payloadLength, 0);
  assert.equal(empty.payload.length, 0);
  const one = parsed(
    new Uint8Array([0x04, 0x30, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0, 1, 9, 0, 0, 0, 0, 0, 0, 0]),
  );
  assert.deepEqual([...one.payload], [9]);
});

Deno.test("parse: a packet in the middle of a larger buffer reads only its own bytes", () => {
  const big = new Uint8Array(100).fill(0x77);
  const n = buildPacket(big.subarray(10), {
    opcode: Opcode.RC_RDMA_WRITE_ONLY,
    destQp: 5,
    psn: 6,
    reth: { va: 1n, rkey: 2, dmaLen: 3 },
    payload: new Uint8Array([1, 2, 3, 4, 5]),
    icrc: null,
  });
  const p = parsed(big.subarray(10, 10 + n));
  assert.equal(p.payload.byteOffset, 10 + 28);
  assert.deepEqual([...p.payload], [1, 2, 3, 4, 5]);
  assert.equal(big[10 + n], 0x77, "nothing written past the packet");
  assert.equal(big[9], 0x77, "nothing written before it");
  // Cut one 4-byte word: the same bytes now lack room for pad + ICRC.
  const cut = parsePacket(big.subarray(10, 10 + n - 4));
  assert.ok(cut instanceof RocePacket, "28 + 8 bytes still parse as 1 payload byte + pad 3");
  assert.equal(cut.payloadLength, 1);
});

Deno.test("every opcode in the table is parsed by its own row", () => {
  for (const info of OPCODES) {
    const bytes = new Uint8Array(info.length + 4);
    bytes[0] = info.opcode;
    const p = parsed(bytes);
    assert.equal(p.info, opcodeInfo(info.opcode));
    assert.equal(p.payloadLength, 0);
    if (info.headers & Header.AETH) assert.equal(p.syndrome, 0);
    if (!(info.flags & OpFlag.PAYLOAD)) {
      const longer = new Uint8Array(info.length + 8);
      longer[0] = info.opcode;
      assert.equal(failure(longer).kind, "unexpected-payload", info.name);
    }
  }
});

Deno.test("build: a payload already in place in out is kept, not clobbered", () => {
  const out = new Uint8Array(64);
  const info = opcodeInfo(Opcode.RC_RDMA_WRITE_FIRST)!;
  out.set([1, 2, 3, 4, 5, 6], info.length);
  const n = buildPacket(out, {
    opcode: info.opcode,
    destQp: 3,
    psn: 4,
    reth: { va: 0x10n, rkey: 9, dmaLen: 6 },
    payload: out.subarray(info.length, info.length + 6),
    icrc: null,
  });
  const p = parsed(out.subarray(0, n));
  assert.deepEqual([...p.payload], [1, 2, 3, 4, 5, 6]);
  assert.equal(p.rethDmaLen, 6);
  assert.equal(p.padCnt, 2);
});
