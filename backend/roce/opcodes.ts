/**
 * The RoCEv2 opcode table: for every wire opcode vrdma speaks, which
 * extension headers follow the BTH, where each one starts, how long the
 * headers are in total and what the packet means (request or response,
 * position in its message, payload, receive WQE, responder completion).
 * Packet building and parsing both read this one table, as Linux soft-RoCE
 * does with `rxe_opcode[]`, so the two can never disagree about a layout.
 *
 * A second table says which work-request opcodes each QP type accepts and
 * which wire opcodes carry them.
 *
 * Layouts and numbers: shared/WIRE.md (beside the checkout).
 *
 * @module
 */

import type { QpType, WrOpcodeName } from "../../protocol/verbs.ts";

/** Wire opcodes by IBA name (transport prefix + operation). */
export const Opcode = {
  RC_SEND_FIRST: 0x00,
  RC_SEND_MIDDLE: 0x01,
  RC_SEND_LAST: 0x02,
  RC_SEND_LAST_WITH_IMMEDIATE: 0x03,
  RC_SEND_ONLY: 0x04,
  RC_SEND_ONLY_WITH_IMMEDIATE: 0x05,
  RC_RDMA_WRITE_FIRST: 0x06,
  RC_RDMA_WRITE_MIDDLE: 0x07,
  RC_RDMA_WRITE_LAST: 0x08,
  RC_RDMA_WRITE_LAST_WITH_IMMEDIATE: 0x09,
  RC_RDMA_WRITE_ONLY: 0x0a,
  RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE: 0x0b,
  RC_RDMA_READ_REQUEST: 0x0c,
  RC_RDMA_READ_RESPONSE_FIRST: 0x0d,
  RC_RDMA_READ_RESPONSE_MIDDLE: 0x0e,
  RC_RDMA_READ_RESPONSE_LAST: 0x0f,
  RC_RDMA_READ_RESPONSE_ONLY: 0x10,
  RC_ACKNOWLEDGE: 0x11,
  RC_ATOMIC_ACKNOWLEDGE: 0x12,
  RC_COMPARE_SWAP: 0x13,
  RC_FETCH_ADD: 0x14,
  RC_SEND_LAST_WITH_INVALIDATE: 0x16,
  RC_SEND_ONLY_WITH_INVALIDATE: 0x17,
  UC_SEND_FIRST: 0x20,
  UC_SEND_MIDDLE: 0x21,
  UC_SEND_LAST: 0x22,
  UC_SEND_LAST_WITH_IMMEDIATE: 0x23,
  UC_SEND_ONLY: 0x24,
  UC_SEND_ONLY_WITH_IMMEDIATE: 0x25,
  UC_RDMA_WRITE_FIRST: 0x26,
  UC_RDMA_WRITE_MIDDLE: 0x27,
  UC_RDMA_WRITE_LAST: 0x28,
  UC_RDMA_WRITE_LAST_WITH_IMMEDIATE: 0x29,
  UC_RDMA_WRITE_ONLY: 0x2a,
  UC_RDMA_WRITE_ONLY_WITH_IMMEDIATE: 0x2b,
  UD_SEND_ONLY: 0x64,
  UD_SEND_ONLY_WITH_IMMEDIATE: 0x65,
} as const;

/** The name of a wire opcode in {@linkcode Opcode}. */
export type OpcodeName = keyof typeof Opcode;

/**
 * Extension header bits of {@linkcode OpcodeInfo.headers}. The numeric order
 * of the bits is the order of the headers on the wire.
 */
export const Header = {
  DETH: 1,
  RETH: 2,
  ATOMIC_ETH: 4,
  AETH: 8,
  ATOMIC_ACK_ETH: 16,
  IMM_DT: 32,
  IETH: 64,
} as const;

/** Bytes of the base transport header. */
export const BTH_BYTES = 12;
/** Bytes of the invariant CRC that ends every packet. */
export const ICRC_BYTES = 4;

/** Bytes of each extension header, keyed by its {@linkcode Header} name. */
export const HEADER_BYTES: Readonly<Record<keyof typeof Header, number>> = {
  DETH: 8,
  RETH: 16,
  ATOMIC_ETH: 28,
  AETH: 4,
  ATOMIC_ACK_ETH: 8,
  IMM_DT: 4,
  IETH: 4,
};

/** Meaning bits of {@linkcode OpcodeInfo.flags} (rxe's `RXE_*_MASK`). */
export const OpFlag = {
  /** Sent by a requester. */
  REQUEST: 1 << 0,
  /** Sent by a responder (ACK, atomic ACK, read response). */
  RESPONSE: 1 << 1,
  /** First packet of a message (with LAST as well: an ONLY packet). */
  FIRST: 1 << 2,
  /** A middle packet: exactly one path MTU of payload. */
  MIDDLE: 1 << 3,
  /** Last packet of a message. */
  LAST: 1 << 4,
  /** Carries payload (possibly zero bytes) and therefore may carry pad. */
  PAYLOAD: 1 << 5,
  /** The responder takes a receive WQE for this packet's message here. */
  CONSUMES_RECV: 1 << 6,
  /** The responder completes the receive WQE with this packet. */
  COMPLETES: 1 << 7,
  /** Part of a SEND. */
  SEND: 1 << 8,
  /** Part of an RDMA WRITE. */
  WRITE: 1 << 9,
  /** An RDMA READ request (responses are RESPONSE with PAYLOAD). */
  READ: 1 << 10,
  /** An atomic request. */
  ATOMIC: 1 << 11,
  /** Carries immediate data (ImmDt). */
  IMMEDIATE: 1 << 12,
  /** Carries an R_Key to invalidate (IETH). */
  INVALIDATE: 1 << 13,
} as const;

/** Per-header byte offsets from the start of the BTH; `-1` where absent. */
export interface HeaderOffsets {
  /** DETH offset or -1. */
  readonly deth: number;
  /** RETH offset or -1. */
  readonly reth: number;
  /** AtomicETH offset or -1. */
  readonly atomicEth: number;
  /** AETH offset or -1. */
  readonly aeth: number;
  /** AtomicAckETH offset or -1. */
  readonly atomicAckEth: number;
  /** ImmDt offset or -1. */
  readonly immDt: number;
  /** IETH offset or -1. */
  readonly ieth: number;
  /** Where payload starts: the total header length. */
  readonly payload: number;
}

/** One row of the opcode table. */
export interface OpcodeInfo {
  /** The wire opcode (BTH byte 0). */
  readonly opcode: number;
  /** Its IBA name, as in {@linkcode Opcode}. */
  readonly name: OpcodeName;
  /** The transport, from opcode bits 7-5. */
  readonly transport: QpType;
  /** Which extension headers follow the BTH ({@linkcode Header} bits). */
  readonly headers: number;
  /** What the packet means ({@linkcode OpFlag} bits). */
  readonly flags: number;
  /** BTH plus all extension headers, in bytes. */
  readonly length: number;
  /** Where each extension header starts. */
  readonly offsets: HeaderOffsets;
}

const H = Header;
const F = OpFlag;
const REQ = F.REQUEST;
const RSP = F.RESPONSE;
const PAY = F.PAYLOAD;
const ONLY = F.FIRST | F.LAST;

// [opcode, headers, flags] per request/response kind. RC and UC share the
// SEND and WRITE rows: UC is RC without responses, at opcode + 0x20.
const SEND_AND_WRITE_ROWS: ReadonlyArray<readonly [number, number, number]> = [
  [0x00, 0, REQ | PAY | F.SEND | F.FIRST | F.CONSUMES_RECV],
  [0x01, 0, REQ | PAY | F.SEND | F.MIDDLE],
  [0x02, 0, REQ | PAY | F.SEND | F.LAST | F.COMPLETES],
  [0x03, H.IMM_DT, REQ | PAY | F.SEND | F.LAST | F.COMPLETES | F.IMMEDIATE],
  [0x04, 0, REQ | PAY | F.SEND | ONLY | F.CONSUMES_RECV | F.COMPLETES],
  [0x05, H.IMM_DT, REQ | PAY | F.SEND | ONLY | F.CONSUMES_RECV | F.COMPLETES | F.IMMEDIATE],
  [0x06, H.RETH, REQ | PAY | F.WRITE | F.FIRST],
  [0x07, 0, REQ | PAY | F.WRITE | F.MIDDLE],
  [0x08, 0, REQ | PAY | F.WRITE | F.LAST],
  // Only WRITE with immediate touches the receive queue, and only at its end.
  [0x09, H.IMM_DT, REQ | PAY | F.WRITE | F.LAST | F.CONSUMES_RECV | F.COMPLETES | F.IMMEDIATE],
  [0x0a, H.RETH, REQ | PAY | F.WRITE | ONLY],
  [
    0x0b,
    H.RETH | H.IMM_DT,
    REQ | PAY | F.WRITE | ONLY | F.CONSUMES_RECV | F.COMPLETES | F.IMMEDIATE,
  ],
];

const RC_ONLY_ROWS: ReadonlyArray<readonly [number, number, number]> = [
  [0x0c, H.RETH, REQ | F.READ | ONLY],
  [0x0d, H.AETH, RSP | PAY | F.FIRST],
  [0x0e, 0, RSP | PAY | F.MIDDLE],
  [0x0f, H.AETH, RSP | PAY | F.LAST],
  [0x10, H.AETH, RSP | PAY | ONLY],
  [0x11, H.AETH, RSP | ONLY],
  [0x12, H.AETH | H.ATOMIC_ACK_ETH, RSP | ONLY],
  [0x13, H.ATOMIC_ETH, REQ | F.ATOMIC | ONLY],
  [0x14, H.ATOMIC_ETH, REQ | F.ATOMIC | ONLY],
  [0x16, H.IETH, REQ | PAY | F.SEND | F.LAST | F.COMPLETES | F.INVALIDATE],
  [0x17, H.IETH, REQ | PAY | F.SEND | ONLY | F.CONSUMES_RECV | F.COMPLETES | F.INVALIDATE],
];

const UD_ROWS: ReadonlyArray<readonly [number, number, number]> = [
  [0x64, H.DETH, REQ | PAY | F.SEND | ONLY | F.CONSUMES_RECV | F.COMPLETES],
  [
    0x65,
    H.DETH | H.IMM_DT,
    REQ | PAY | F.SEND | ONLY | F.CONSUMES_RECV | F.COMPLETES | F.IMMEDIATE,
  ],
];

const NAME_BY_OPCODE = new Map<number, OpcodeName>(
  (Object.entries(Opcode) as [OpcodeName, number][]).map(([name, op]) => [op, name]),
);

function transportOf(opcode: number): QpType {
  switch (opcode & 0xe0) {
    case 0x00:
      return "RC";
    case 0x20:
      return "UC";
    case 0x60:
      return "UD";
  }
  throw new RangeError(`opcode 0x${opcode.toString(16)} is not RC, UC or UD`);
}

// Offsets follow from the header bits alone: walk the headers in wire order
// and add up their sizes, so no row can carry a hand-typed offset that lies.
function describe(opcode: number, headers: number, flags: number): OpcodeInfo {
  const name = NAME_BY_OPCODE.get(opcode);
  if (name === undefined) throw new RangeError(`opcode 0x${opcode.toString(16)} has no name`);
  let at = BTH_BYTES;
  function place(bit: number, bytes: number): number {
    if ((headers & bit) === 0) return -1;
    const start = at;
    at += bytes;
    return start;
  }
  const deth = place(H.DETH, HEADER_BYTES.DETH);
  const reth = place(H.RETH, HEADER_BYTES.RETH);
  const atomicEth = place(H.ATOMIC_ETH, HEADER_BYTES.ATOMIC_ETH);
  const aeth = place(H.AETH, HEADER_BYTES.AETH);
  const atomicAckEth = place(H.ATOMIC_ACK_ETH, HEADER_BYTES.ATOMIC_ACK_ETH);
  const immDt = place(H.IMM_DT, HEADER_BYTES.IMM_DT);
  const ieth = place(H.IETH, HEADER_BYTES.IETH);
  const offsets = Object.freeze({
    deth,
    reth,
    atomicEth,
    aeth,
    atomicAckEth,
    immDt,
    ieth,
    payload: at,
  });
  return Object.freeze({
    opcode,
    name,
    transport: transportOf(opcode),
    headers,
    flags,
    length: at,
    offsets,
  });
}

function buildTable(): readonly OpcodeInfo[] {
  const rows: OpcodeInfo[] = [];
  for (const [op, headers, flags] of SEND_AND_WRITE_ROWS) rows.push(describe(op, headers, flags));
  for (const [op, headers, flags] of RC_ONLY_ROWS) rows.push(describe(op, headers, flags));
  for (const [op, headers, flags] of SEND_AND_WRITE_ROWS) {
    rows.push(describe(0x20 + op, headers, flags));
  }
  for (const [op, headers, flags] of UD_ROWS) rows.push(describe(op, headers, flags));
  rows.sort((a, b) => a.opcode - b.opcode);
  return Object.freeze(rows);
}

/** Every opcode vrdma builds and parses, in opcode order. */
export const OPCODES: readonly OpcodeInfo[] = buildTable();

// Indexed by the opcode byte so a lookup on the receive path is one load.
const BY_OPCODE: ReadonlyArray<OpcodeInfo | undefined> = (() => {
  const table = new Array<OpcodeInfo | undefined>(256).fill(undefined);
  for (const info of OPCODES) table[info.opcode] = info;
  return table;
})();

/**
 * The table row of wire opcode `opcode`, or `undefined` for an opcode vrdma
 * does not speak (or a value that is not a byte).
 *
 * @example
 * ```ts
 * import { Header, Opcode, opcodeInfo } from "./opcodes.ts";
 * const info = opcodeInfo(Opcode.RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE)!;
 * if (info.length !== 32 || info.offsets.immDt !== 28) throw new Error("layout");
 * if ((info.headers & Header.RETH) === 0) throw new Error("no RETH");
 * if (opcodeInfo(0x15) !== undefined) throw new Error("0x15 is reserved");
 * ```
 */
export function opcodeInfo(opcode: number): OpcodeInfo | undefined {
  return BY_OPCODE[opcode];
}

/** The wire opcodes that carry one work request, by position in its message. */
export interface WrPackets {
  /** The opcode of a message that fits in one packet. */
  readonly only: number;
  /** First packet of a longer message; `-1` where the message never spans packets. */
  readonly first: number;
  /** Middle packets; `-1` where the message never spans packets. */
  readonly middle: number;
  /** Last packet; `-1` where the message never spans packets. */
  readonly last: number;
}

function spans(first: number, middle: number, last: number, only: number): WrPackets {
  return Object.freeze({ first, middle, last, only });
}

const O = Opcode;
const RC_WR: Readonly<Partial<Record<WrOpcodeName, WrPackets>>> = Object.freeze({
  SEND: spans(O.RC_SEND_FIRST, O.RC_SEND_MIDDLE, O.RC_SEND_LAST, O.RC_SEND_ONLY),
  SEND_WITH_IMM: spans(
    O.RC_SEND_FIRST,
    O.RC_SEND_MIDDLE,
    O.RC_SEND_LAST_WITH_IMMEDIATE,
    O.RC_SEND_ONLY_WITH_IMMEDIATE,
  ),
  RDMA_WRITE: spans(
    O.RC_RDMA_WRITE_FIRST,
    O.RC_RDMA_WRITE_MIDDLE,
    O.RC_RDMA_WRITE_LAST,
    O.RC_RDMA_WRITE_ONLY,
  ),
  RDMA_WRITE_WITH_IMM: spans(
    O.RC_RDMA_WRITE_FIRST,
    O.RC_RDMA_WRITE_MIDDLE,
    O.RC_RDMA_WRITE_LAST_WITH_IMMEDIATE,
    O.RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE,
  ),
  // The request is one packet; the responses are READ RESPONSE packets.
  RDMA_READ: spans(-1, -1, -1, O.RC_RDMA_READ_REQUEST),
  ATOMIC_CMP_AND_SWP: spans(-1, -1, -1, O.RC_COMPARE_SWAP),
  ATOMIC_FETCH_AND_ADD: spans(-1, -1, -1, O.RC_FETCH_ADD),
});

const UC_WR: Readonly<Partial<Record<WrOpcodeName, WrPackets>>> = Object.freeze({
  SEND: spans(O.UC_SEND_FIRST, O.UC_SEND_MIDDLE, O.UC_SEND_LAST, O.UC_SEND_ONLY),
  SEND_WITH_IMM: spans(
    O.UC_SEND_FIRST,
    O.UC_SEND_MIDDLE,
    O.UC_SEND_LAST_WITH_IMMEDIATE,
    O.UC_SEND_ONLY_WITH_IMMEDIATE,
  ),
  RDMA_WRITE: spans(
    O.UC_RDMA_WRITE_FIRST,
    O.UC_RDMA_WRITE_MIDDLE,
    O.UC_RDMA_WRITE_LAST,
    O.UC_RDMA_WRITE_ONLY,
  ),
  RDMA_WRITE_WITH_IMM: spans(
    O.UC_RDMA_WRITE_FIRST,
    O.UC_RDMA_WRITE_MIDDLE,
    O.UC_RDMA_WRITE_LAST_WITH_IMMEDIATE,
    O.UC_RDMA_WRITE_ONLY_WITH_IMMEDIATE,
  ),
});

// UD messages never span packets: a UD SEND is at most one path MTU.
const UD_WR: Readonly<Partial<Record<WrOpcodeName, WrPackets>>> = Object.freeze({
  SEND: spans(-1, -1, -1, O.UD_SEND_ONLY),
  SEND_WITH_IMM: spans(-1, -1, -1, O.UD_SEND_ONLY_WITH_IMMEDIATE),
});

/**
 * The second table: per QP type, the work-request opcodes it allows and the
 * wire opcodes that carry each. RC allows all, UC SEND and RDMA WRITE (with
 * or without immediate), UD SEND only.
 */
export const WR_PACKETS: Readonly<
  Record<QpType, Readonly<Partial<Record<WrOpcodeName, WrPackets>>>>
> = Object.freeze({ RC: RC_WR, UC: UC_WR, UD: UD_WR });

/**
 * The wire opcodes for work request `wr` on a `qpType` QP, or `undefined`
 * when that QP type does not allow it (ibv_post_send's EINVAL).
 *
 * @example
 * ```ts
 * import { Opcode, wrPackets } from "./opcodes.ts";
 * if (wrPackets("UD", "RDMA_WRITE") !== undefined) throw new Error("UD cannot write");
 * if (wrPackets("UC", "SEND")?.middle !== Opcode.UC_SEND_MIDDLE) throw new Error("UC send");
 * ```
 */
export function wrPackets(qpType: QpType, wr: WrOpcodeName): WrPackets | undefined {
  return WR_PACKETS[qpType][wr];
}
