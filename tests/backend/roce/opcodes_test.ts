import assert from "node:assert/strict";
import {
  BTH_BYTES,
  Header,
  HEADER_BYTES,
  Opcode,
  OpcodeInfo,
  opcodeInfo,
  OPCODES,
  OpFlag,
  WR_PACKETS,
  wrPackets,
} from "../../../backend/roce/opcodes.ts";
import { WrOpcode, type WrOpcodeName } from "../../../protocol/verbs.ts";

// Wire order of the extension headers and where each one's offset lives.
const WIRE_ORDER: ReadonlyArray<[keyof typeof Header, keyof OpcodeInfo["offsets"]]> = [
  ["DETH", "deth"],
  ["RETH", "reth"],
  ["ATOMIC_ETH", "atomicEth"],
  ["AETH", "aeth"],
  ["ATOMIC_ACK_ETH", "atomicAckEth"],
  ["IMM_DT", "immDt"],
  ["IETH", "ieth"],
];

Deno.test("opcode table: offsets add up for every entry", () => {
  assert.equal(OPCODES.length, 37, "23 RC + 12 UC + 2 UD");
  for (const info of OPCODES) {
    let at = BTH_BYTES;
    for (const [header, key] of WIRE_ORDER) {
      if ((info.headers & Header[header]) !== 0) {
        assert.equal(info.offsets[key], at, `${info.name} ${header} offset`);
        at += HEADER_BYTES[header];
      } else {
        assert.equal(info.offsets[key], -1, `${info.name} has no ${header}`);
      }
    }
    assert.equal(info.offsets.payload, at, `${info.name} payload offset`);
    assert.equal(info.length, at, `${info.name} header length`);
    assert.equal(info.length % 4, 0, `${info.name} headers keep 4-byte alignment`);
    assert.equal(opcodeInfo(info.opcode), info, `${info.name} lookup`);
    assert.equal(Opcode[info.name], info.opcode, `${info.name} name matches number`);
  }
});

Deno.test("opcode table: header sets as WIRE.md lists them", () => {
  const H = Header;
  const expected: Record<number, number> = {
    0x00: 0,
    0x01: 0,
    0x02: 0,
    0x03: H.IMM_DT,
    0x04: 0,
    0x05: H.IMM_DT,
    0x06: H.RETH,
    0x07: 0,
    0x08: 0,
    0x09: H.IMM_DT,
    0x0a: H.RETH,
    0x0b: H.RETH | H.IMM_DT,
    0x0c: H.RETH,
    0x0d: H.AETH,
    0x0e: 0,
    0x0f: H.AETH,
    0x10: H.AETH,
    0x11: H.AETH,
    0x12: H.AETH | H.ATOMIC_ACK_ETH,
    0x13: H.ATOMIC_ETH,
    0x14: H.ATOMIC_ETH,
    0x16: H.IETH,
    0x17: H.IETH,
    0x64: H.DETH,
    0x65: H.DETH | H.IMM_DT,
  };
  for (const [op, headers] of Object.entries(expected)) {
    assert.equal(opcodeInfo(Number(op))?.headers, headers, `opcode ${op}`);
  }
  // UC is RC's SEND and WRITE rows moved up by 0x20, flags and all.
  for (let op = 0; op <= 0x0b; op++) {
    const rc = opcodeInfo(op)!;
    const uc = opcodeInfo(0x20 + op)!;
    assert.equal(uc.headers, rc.headers, uc.name);
    assert.equal(uc.flags, rc.flags, uc.name);
    assert.equal(uc.transport, "UC");
    assert.equal(uc.name, rc.name.replace("RC_", "UC_"));
  }
  // Total lengths spot-checked by hand.
  assert.equal(opcodeInfo(Opcode.RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE)!.length, 32);
  assert.equal(opcodeInfo(Opcode.RC_COMPARE_SWAP)!.length, 40);
  assert.equal(opcodeInfo(Opcode.RC_ATOMIC_ACKNOWLEDGE)!.length, 24);
  assert.equal(opcodeInfo(Opcode.RC_ATOMIC_ACKNOWLEDGE)!.offsets.atomicAckEth, 16);
  assert.equal(opcodeInfo(Opcode.UD_SEND_ONLY_WITH_IMMEDIATE)!.offsets.immDt, 20);
  assert.equal(opcodeInfo(Opcode.UD_SEND_ONLY_WITH_IMMEDIATE)!.length, 24);
});

Deno.test("opcode table: unknown opcodes are undefined", () => {
  const known = new Set(OPCODES.map((i) => i.opcode));
  for (let op = -1; op <= 256; op++) {
    assert.equal(opcodeInfo(op) === undefined, !known.has(op), `opcode ${op}`);
  }
  for (const op of [0x15, 0x18, 0x2c, 0x40, 0x60, 0x63, 0x66, 0x81]) {
    assert.equal(opcodeInfo(op), undefined, `0x${op.toString(16)} is not spoken`);
  }
  assert.equal(opcodeInfo(1.5), undefined);
});

Deno.test("opcode table: flags are consistent with positions and headers", () => {
  const F = OpFlag;
  for (const info of OPCODES) {
    const f = info.flags;
    const has = (bit: number) => (f & bit) !== 0;
    assert.ok(has(F.REQUEST) !== has(F.RESPONSE), `${info.name}: request xor response`);
    assert.ok(has(F.MIDDLE) ? !has(F.FIRST) && !has(F.LAST) : has(F.FIRST) || has(F.LAST));
    assert.equal(has(F.IMMEDIATE), (info.headers & Header.IMM_DT) !== 0, info.name);
    assert.equal(has(F.INVALIDATE), (info.headers & Header.IETH) !== 0, info.name);
    assert.equal(info.transport, info.opcode < 0x20 ? "RC" : info.opcode < 0x40 ? "UC" : "UD");
    // A receive WQE is consumed only by requests, and a completion needs a last packet.
    if (has(F.CONSUMES_RECV)) assert.ok(has(F.REQUEST) && (has(F.SEND) || has(F.IMMEDIATE)));
    if (has(F.COMPLETES)) assert.ok(has(F.LAST) && has(F.REQUEST), info.name);
    // Every WRITE that starts a message names its target.
    if (has(F.WRITE) && has(F.FIRST)) assert.ok((info.headers & Header.RETH) !== 0, info.name);
    if (has(F.READ) || has(F.ATOMIC)) assert.ok(!has(F.PAYLOAD), `${info.name} has no payload`);
  }
  const rwr = OPCODES.filter((i) => i.flags & F.CONSUMES_RECV).map((i) => i.name).sort();
  assert.deepEqual(rwr, [
    "RC_RDMA_WRITE_LAST_WITH_IMMEDIATE",
    "RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE",
    "RC_SEND_FIRST",
    "RC_SEND_ONLY",
    "RC_SEND_ONLY_WITH_IMMEDIATE",
    "RC_SEND_ONLY_WITH_INVALIDATE",
    "UC_RDMA_WRITE_LAST_WITH_IMMEDIATE",
    "UC_RDMA_WRITE_ONLY_WITH_IMMEDIATE",
    "UC_SEND_FIRST",
    "UC_SEND_ONLY",
    "UC_SEND_ONLY_WITH_IMMEDIATE",
    "UD_SEND_ONLY",
    "UD_SEND_ONLY_WITH_IMMEDIATE",
  ]);
  const noPayload = OPCODES.filter((i) => !(i.flags & F.PAYLOAD)).map((i) => i.opcode);
  assert.deepEqual(noPayload, [0x0c, 0x11, 0x12, 0x13, 0x14]);
});

Deno.test("WR table: RC allows all, UC send and write, UD send", () => {
  const all = Object.keys(WrOpcode) as WrOpcodeName[];
  const allowed = (t: "RC" | "UC" | "UD") => all.filter((wr) => wrPackets(t, wr) !== undefined);
  assert.deepEqual(allowed("RC"), all);
  assert.deepEqual(allowed("UC").sort(), [
    "RDMA_WRITE",
    "RDMA_WRITE_WITH_IMM",
    "SEND",
    "SEND_WITH_IMM",
  ]);
  assert.deepEqual(allowed("UD").sort(), ["SEND", "SEND_WITH_IMM"]);
  // Every wire opcode named is in the table, on the QP's own transport, and
  // sits in the position it is named for.
  for (const [qpType, wrs] of Object.entries(WR_PACKETS)) {
    for (const [wr, p] of Object.entries(wrs)) {
      for (
        const [slot, flag] of [
          ["first", OpFlag.FIRST],
          ["middle", OpFlag.MIDDLE],
          ["last", OpFlag.LAST],
          ["only", OpFlag.FIRST | OpFlag.LAST],
        ] as const
      ) {
        const op = p![slot];
        if (op === -1) continue;
        const info = opcodeInfo(op);
        assert.ok(info, `${qpType} ${wr} ${slot}`);
        assert.equal(info.transport, qpType);
        assert.equal(info.flags & (OpFlag.FIRST | OpFlag.MIDDLE | OpFlag.LAST), flag, info.name);
        assert.ok(info.flags & OpFlag.REQUEST);
      }
    }
  }
  assert.equal(
    wrPackets("RC", "RDMA_WRITE_WITH_IMM")?.last,
    Opcode.RC_RDMA_WRITE_LAST_WITH_IMMEDIATE,
  );
  assert.equal(wrPackets("RC", "RDMA_READ")?.only, Opcode.RC_RDMA_READ_REQUEST);
  assert.equal(wrPackets("RC", "RDMA_READ")?.first, -1);
  assert.equal(wrPackets("UD", "SEND_WITH_IMM")?.only, Opcode.UD_SEND_ONLY_WITH_IMMEDIATE);
  assert.equal(wrPackets("UC", "RDMA_READ"), undefined);
  assert.equal(wrPackets("UD", "ATOMIC_FETCH_AND_ADD"), undefined);
});
