/**
 * Building and parsing whole RoCE packets (BTH up to and including the
 * ICRC; the IPv4 and UDP headers belong to the socket). Both directions are
 * driven by the opcode table in `opcodes.ts`.
 *
 * Building is the trusted side: bad fields are programming errors and throw
 * (`RangeError` for a value out of range, `TypeError` for a header the
 * opcode does not have or lacks). Parsing is the untrusted side: it never
 * throws and never reads outside the bytes it is given; a malformed packet
 * comes back as a {@linkcode ParseFailure} naming what was wrong.
 *
 * @module
 */

import { RocePacket } from "./headers.ts";
import {
  setAethMsn,
  setAethSyndrome,
  setAtomicAckEthOrigData,
  setAtomicEthCompare,
  setAtomicEthRkey,
  setAtomicEthSwapAdd,
  setAtomicEthVa,
  setBthAckReq,
  setBthBecn,
  setBthDestQp,
  setBthFecn,
  setBthMig,
  setBthOpcode,
  setBthPadCnt,
  setBthPkey,
  setBthPsn,
  setBthSe,
  setDethQkey,
  setDethSrcQp,
  setIethRkey,
  setImmDt,
  setRethDmaLen,
  setRethRkey,
  setRethVa,
} from "./headers.ts";
import { computeIcrc, type IcrcFlow } from "./icrc.ts";
import { BTH_BYTES, Header, ICRC_BYTES, type OpcodeInfo, opcodeInfo, OpFlag } from "./opcodes.ts";

/** The most bytes a RoCE packet can have inside one IPv4 UDP datagram. */
export const MAX_PACKET_BYTES = 0xffff - 20 - 8;

/** Everything {@linkcode buildPacket} writes. */
export interface PacketFields {
  /** Wire opcode; it decides which of the header fields below must be given. */
  readonly opcode: number;
  /** Destination QP number (24 bits). */
  readonly destQp: number;
  /** Packet sequence number (24 bits). */
  readonly psn: number;
  /** Partition key; default 0xFFFF, the default partition. */
  readonly pkey?: number;
  /** Solicited event; default false. */
  readonly se?: boolean;
  /** Migration request; default false. */
  readonly mig?: boolean;
  /** Forward congestion notification; default false. */
  readonly fecn?: boolean;
  /** Backward congestion notification; default false. */
  readonly becn?: boolean;
  /** Acknowledge request; default false. */
  readonly ackReq?: boolean;
  /** DETH (UD only). */
  readonly deth?: { readonly qkey: number; readonly srcQp: number };
  /** RETH (WRITE first/only, READ request). */
  readonly reth?: { readonly va: bigint; readonly rkey: number; readonly dmaLen: number };
  /** AtomicETH (compare-and-swap, fetch-and-add). */
  readonly atomicEth?: {
    readonly va: bigint;
    readonly rkey: number;
    readonly swapAdd: bigint;
    readonly compare: bigint;
  };
  /** AETH (ACK, atomic ACK, READ response first/last/only). */
  readonly aeth?: { readonly syndrome: number; readonly msn: number };
  /** AtomicAckETH original remote data (atomic ACK). */
  readonly origData?: bigint;
  /** ImmDt (the "with immediate" opcodes). */
  readonly immDt?: number;
  /** IETH R_Key (the "with invalidate" opcodes). */
  readonly iethRkey?: number;
  /**
   * Payload, for opcodes that carry one; copied into the packet. It may
   * already sit in `out` at the opcode's header length (a view of those very
   * bytes), which saves a copy: the headers are written around it.
   */
  readonly payload?: Uint8Array;
  /**
   * The IPv4 and UDP fields the ICRC covers, or `null` to leave the ICRC
   * zero (for a caller that fills it in later with `writeIcrc`).
   */
  readonly icrc: IcrcFlow | null;
}

function checkUint(what: string, value: number, bits: number): void {
  if (!(Number.isInteger(value) && value >= 0 && value < 2 ** bits)) {
    throw new RangeError(`${what} ${value} is not a ${bits}-bit unsigned integer`);
  }
}

function checkU64(what: string, value: bigint): void {
  if (typeof value !== "bigint" || value < 0n || value > 0xffffffffffffffffn) {
    throw new RangeError(`${what} ${value} is not a 64-bit unsigned bigint`);
  }
}

// A header field is given exactly when the opcode has that header.
function checkPresence(info: OpcodeInfo, bit: number, given: boolean, field: string): boolean {
  const wanted = (info.headers & bit) !== 0;
  if (wanted && !given) throw new TypeError(`${info.name} needs fields.${field}`);
  if (!wanted && given) throw new TypeError(`${info.name} carries no ${field}`);
  return wanted;
}

/**
 * Writes the packet `fields` describe into `out` from byte 0: BTH, the
 * opcode's extension headers, payload, zero pad to 4 bytes, ICRC. Returns
 * the packet's length. Reserved bits are written as zero.
 *
 * @throws {RangeError} when a field is out of range or `out` is too short.
 * @throws {TypeError} when a header field is missing or does not belong to
 *   the opcode, or a payload is given to an opcode without one.
 *
 * @example
 * ```ts
 * import { buildPacket, parsePacket, ParseFailure } from "./packet.ts";
 * import { Opcode } from "./opcodes.ts";
 * const out = new Uint8Array(64);
 * const n = buildPacket(out, {
 *   opcode: Opcode.RC_SEND_ONLY, destQp: 0x11, psn: 5, ackReq: true,
 *   payload: new TextEncoder().encode("hello"), icrc: null,
 * });
 * // 12 BTH + 5 payload + 3 pad + 4 ICRC
 * const p = parsePacket(out.subarray(0, n));
 * if (n !== 24 || p instanceof ParseFailure || p.payloadLength !== 5) throw new Error("send");
 * ```
 */
export function buildPacket(out: Uint8Array, fields: PacketFields): number {
  const info = opcodeInfo(fields.opcode);
  if (info === undefined) {
    throw new RangeError(`opcode ${fields.opcode} is not one vrdma builds`);
  }
  checkUint("destQp", fields.destQp, 24);
  checkUint("psn", fields.psn, 24);
  const pkey = fields.pkey ?? 0xffff;
  checkUint("pkey", pkey, 16);
  const payload = fields.payload;
  const payloadBytes = payload?.byteLength ?? 0;
  if (payload !== undefined && (info.flags & OpFlag.PAYLOAD) === 0) {
    throw new TypeError(`${info.name} carries no payload, got ${payloadBytes} bytes`);
  }
  const pad = -payloadBytes & 3;
  const length = info.length + payloadBytes + pad + ICRC_BYTES;
  if (length > MAX_PACKET_BYTES) {
    throw new RangeError(`a ${length}-byte packet does not fit in a UDP datagram`);
  }
  if (out.byteLength < length) {
    throw new RangeError(`${info.name} packet needs ${length} bytes, out has ${out.byteLength}`);
  }
  const view = new DataView(out.buffer, out.byteOffset, length);
  const o = info.offsets;

  out.fill(0, 0, BTH_BYTES);
  setBthOpcode(view, 0, info.opcode);
  setBthSe(view, 0, fields.se ?? false);
  setBthMig(view, 0, fields.mig ?? false);
  setBthPadCnt(view, 0, pad);
  setBthPkey(view, 0, pkey);
  setBthFecn(view, 0, fields.fecn ?? false);
  setBthBecn(view, 0, fields.becn ?? false);
  setBthDestQp(view, 0, fields.destQp);
  setBthAckReq(view, 0, fields.ackReq ?? false);
  setBthPsn(view, 0, fields.psn);

  const deth = fields.deth;
  if (checkPresence(info, Header.DETH, deth !== undefined, "deth") && deth !== undefined) {
    checkUint("deth.qkey", deth.qkey, 32);
    checkUint("deth.srcQp", deth.srcQp, 24);
    setDethQkey(view, o.deth, deth.qkey);
    setDethSrcQp(view, o.deth, deth.srcQp);
  }
  const reth = fields.reth;
  if (checkPresence(info, Header.RETH, reth !== undefined, "reth") && reth !== undefined) {
    checkU64("reth.va", reth.va);
    checkUint("reth.rkey", reth.rkey, 32);
    checkUint("reth.dmaLen", reth.dmaLen, 32);
    setRethVa(view, o.reth, reth.va);
    setRethRkey(view, o.reth, reth.rkey);
    setRethDmaLen(view, o.reth, reth.dmaLen);
  }
  const atomic = fields.atomicEth;
  if (
    checkPresence(info, Header.ATOMIC_ETH, atomic !== undefined, "atomicEth") &&
    atomic !== undefined
  ) {
    checkU64("atomicEth.va", atomic.va);
    checkUint("atomicEth.rkey", atomic.rkey, 32);
    checkU64("atomicEth.swapAdd", atomic.swapAdd);
    checkU64("atomicEth.compare", atomic.compare);
    setAtomicEthVa(view, o.atomicEth, atomic.va);
    setAtomicEthRkey(view, o.atomicEth, atomic.rkey);
    setAtomicEthSwapAdd(view, o.atomicEth, atomic.swapAdd);
    setAtomicEthCompare(view, o.atomicEth, atomic.compare);
  }
  const aeth = fields.aeth;
  if (checkPresence(info, Header.AETH, aeth !== undefined, "aeth") && aeth !== undefined) {
    checkUint("aeth.syndrome", aeth.syndrome, 8);
    checkUint("aeth.msn", aeth.msn, 24);
    setAethSyndrome(view, o.aeth, aeth.syndrome);
    setAethMsn(view, o.aeth, aeth.msn);
  }
  const orig = fields.origData;
  if (
    checkPresence(info, Header.ATOMIC_ACK_ETH, orig !== undefined, "origData") &&
    orig !== undefined
  ) {
    checkU64("origData", orig);
    setAtomicAckEthOrigData(view, o.atomicAckEth, orig);
  }
  const imm = fields.immDt;
  if (checkPresence(info, Header.IMM_DT, imm !== undefined, "immDt") && imm !== undefined) {
    checkUint("immDt", imm, 32);
    setImmDt(view, o.immDt, imm);
  }
  const inv = fields.iethRkey;
  if (checkPresence(info, Header.IETH, inv !== undefined, "iethRkey") && inv !== undefined) {
    checkUint("iethRkey", inv, 32);
    setIethRkey(view, o.ieth, inv);
  }

  if (payload !== undefined) out.set(payload, info.length);
  // Pad and the ICRC slot start zeroed: IBA wants zero pad bytes.
  out.fill(0, info.length + payloadBytes, length);
  if (fields.icrc !== null) {
    view.setUint32(length - ICRC_BYTES, computeIcrc(fields.icrc, out.subarray(0, length)), true);
  }
  return length;
}

/** Why {@linkcode parsePacket} rejected a packet. */
export type ParseFailureKind =
  /** Shorter than BTH + ICRC, or than the opcode's headers + ICRC. */
  | "truncated-header"
  /** An opcode vrdma does not speak (reserved, RD, CNP, ...). */
  | "unknown-opcode"
  /** BTH TVer is not 0. */
  | "bad-tver"
  /** The length is not a multiple of 4, which headers + payload + pad always are. */
  | "unaligned-length"
  /** Bytes after the headers of an opcode that carries no payload. */
  | "unexpected-payload"
  /** PadCnt set without payload, or larger than the bytes after the headers. */
  | "pad-length";

/**
 * A rejected packet: what was wrong and with what values. Deliberately not
 * an `Error` (a garbage flood should not cost a stack trace per packet);
 * {@linkcode ParseFailure.toError} makes one when a caller wants to throw.
 */
export class ParseFailure {
  /** Which rule the packet broke. */
  readonly kind: ParseFailureKind;
  /** What was wrong, with the values involved. */
  readonly message: string;

  /** A failure of kind `kind` described by `message`. */
  constructor(kind: ParseFailureKind, message: string) {
    this.kind = kind;
    this.message = message;
  }

  /** The same failure as a `SyntaxError` (unparseable input) to throw. */
  toError(): SyntaxError {
    return new SyntaxError(`${this.kind}: ${this.message}`);
  }
}

/** What {@linkcode parsePacket} returns. */
export type ParseResult = RocePacket | ParseFailure;

/**
 * Reads `bytes` (one UDP payload: BTH up to and including the ICRC) as a
 * RoCE packet. Every length is checked before any field past the BTH is
 * read and before the payload length is computed, so the returned packet's
 * getters stay inside `bytes`. Never throws. The ICRC is not checked here
 * (that needs the IP header; see `icrc.ts`).
 *
 * @example
 * ```ts
 * import { parsePacket, ParseFailure } from "./packet.ts";
 * const r = parsePacket(new Uint8Array([0x15, 0, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]));
 * if (!(r instanceof ParseFailure) || r.kind !== "unknown-opcode") throw new Error("0x15");
 * ```
 */
export function parsePacket(bytes: Uint8Array): ParseResult {
  const length = bytes.byteLength;
  if (length < BTH_BYTES + ICRC_BYTES) {
    return new ParseFailure(
      "truncated-header",
      `${length} bytes cannot hold a BTH and an ICRC (${BTH_BYTES + ICRC_BYTES})`,
    );
  }
  const opcode = bytes[0]!;
  const info = opcodeInfo(opcode);
  if (info === undefined) {
    return new ParseFailure("unknown-opcode", `opcode 0x${opcode.toString(16)} is not supported`);
  }
  const tver = bytes[1]! & 0x0f;
  if (tver !== 0) return new ParseFailure("bad-tver", `${info.name} has TVer ${tver}, not 0`);
  if (length < info.length + ICRC_BYTES) {
    return new ParseFailure(
      "truncated-header",
      `${info.name} needs ${info.length + ICRC_BYTES} bytes of headers and ICRC, got ${length}`,
    );
  }
  if ((length & 3) !== 0) {
    return new ParseFailure(
      "unaligned-length",
      `${info.name} of ${length} bytes: not a multiple of 4`,
    );
  }
  const pad = (bytes[1]! >>> 4) & 3;
  const rest = length - info.length - ICRC_BYTES;
  if ((info.flags & OpFlag.PAYLOAD) === 0) {
    if (rest !== 0) {
      return new ParseFailure(
        "unexpected-payload",
        `${info.name} carries no payload, yet ${rest} bytes follow its headers`,
      );
    }
    if (pad !== 0) {
      return new ParseFailure(
        "pad-length",
        `${info.name} carries no payload, yet PadCnt is ${pad}`,
      );
    }
  } else if (pad > rest) {
    return new ParseFailure(
      "pad-length",
      `${info.name} has PadCnt ${pad} but only ${rest} bytes after its headers`,
    );
  }
  return new RocePacket(bytes, info);
}
