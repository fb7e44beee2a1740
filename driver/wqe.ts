/**
 * Work requests to and from their fixed binary form: the checks
 * `ibv_post_send` / `ibv_post_recv` make before a WR may be posted, the
 * encoding of send and receive WQEs into a slot, and the decoding of a CQE
 * into a {@linkcode WorkCompletion}. Layouts are those of
 * `protocol/verbs.ts`; everything is little-endian.
 *
 * The checks return a description of the first problem instead of throwing,
 * so the caller can name the WR's index the way `bad_wr` does.
 *
 * @module
 */

import {
  Cqe,
  type QpType,
  RECV_OPCODE,
  SendFlags,
  SGE_BYTES,
  WcFlags,
  WcOpcode,
  type WcOpcodeName,
  WcStatus,
  type WcStatusName,
  Wqe,
  WQE_HEADER_BYTES,
  WrOpcode,
  type WrOpcodeName,
} from "../protocol/verbs.ts";
import type { GuestMemory } from "../virtqueue/memory.ts";
import type { RecvWr, SendWr, Sge, WorkCompletion } from "./types.ts";

/** Longest message a WR may describe (rxe's limit, 2^31 bytes). */
export const MAX_MESSAGE_BYTES = 0x8000_0000;

const U64_MAX = (1n << 64n) - 1n;
const ALL_SEND_FLAGS = SendFlags.FENCE | SendFlags.SIGNALED | SendFlags.SOLICITED |
  SendFlags.INLINE;
const WITH_IMM = new Set<WrOpcodeName>(["SEND_WITH_IMM", "RDMA_WRITE_WITH_IMM"]);
const RDMA = new Set<WrOpcodeName>(["RDMA_WRITE", "RDMA_WRITE_WITH_IMM", "RDMA_READ"]);
const ATOMIC = new Set<WrOpcodeName>(["ATOMIC_CMP_AND_SWP", "ATOMIC_FETCH_AND_ADD"]);
/** Opcodes whose payload can travel inline (rxe's WR_INLINE_MASK). */
const INLINE = new Set<WrOpcodeName>([
  "SEND",
  "SEND_WITH_IMM",
  "RDMA_WRITE",
  "RDMA_WRITE_WITH_IMM",
]);
/** Which send opcodes each transport allows (IBA 9.4; rxe's wr_opcode_mask). */
const ALLOWED: Record<QpType, ReadonlySet<WrOpcodeName>> = {
  RC: new Set(Object.keys(WrOpcode) as WrOpcodeName[]),
  UC: new Set<WrOpcodeName>(["SEND", "SEND_WITH_IMM", "RDMA_WRITE", "RDMA_WRITE_WITH_IMM"]),
  UD: new Set<WrOpcodeName>(["SEND", "SEND_WITH_IMM"]),
};

/** What a send queue can hold, for {@linkcode sendWrProblem}. */
export interface SendLimits {
  /** The QP's transport. */
  qpType: QpType;
  /** SGEs per WR (`cap.maxSendSge`). */
  maxSge: number;
  /** Inline bytes per WR (`cap.maxInlineData`). */
  maxInline: number;
  /** Where INLINE payloads are read from; without it INLINE sends are refused. */
  mem?: GuestMemory | null;
}

/** What a receive queue can hold, for {@linkcode recvWrProblem}. */
export interface RecvLimits {
  /** SGEs per WR. */
  maxSge: number;
  /** The name of that limit in messages. Default `"maxRecvSge"`. */
  capName?: string;
}

/** Where and how {@linkcode encodeSendWqe} writes. */
export interface SendWqeOptions {
  /** Byte offset of the slot in the view. Default 0. */
  offset?: number;
  /** Guest memory the INLINE payload is copied from. */
  mem?: GuestMemory | null;
  /** The QP is UD: write the WR's `ud` destination. Default false. */
  ud?: boolean;
}

/** A short description of a value for a message. */
function show(value: unknown): string {
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "string") return JSON.stringify(value.slice(0, 40));
  if (Array.isArray(value)) return "an array";
  if (value === null || typeof value !== "object") return String(value);
  return "an object";
}

function isU32(value: unknown): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= 0 &&
    value <= 0xffff_ffff;
}

function isU64(value: unknown): value is bigint {
  return typeof value === "bigint" && value >= 0n && value <= U64_MAX;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** The problem with an `sgList` (count, each entry, total length), or null. */
function sgListProblem(sgList: unknown, maxSge: number, capName: string): string | null {
  if (sgList === undefined) return null;
  if (!Array.isArray(sgList)) return `sgList must be an array, got ${show(sgList)}`;
  if (sgList.length > maxSge) return `${sgList.length} SGEs exceed ${capName} ${maxSge}`;
  let total = 0;
  for (let i = 0; i < sgList.length; i++) {
    const sge: unknown = sgList[i];
    if (!isObject(sge)) return `sgList[${i}] must be an object, got ${show(sge)}`;
    if (!isU64(sge.addr)) return `sgList[${i}].addr ${show(sge.addr)} is not a u64 bigint`;
    if (!isU32(sge.length)) return `sgList[${i}].length ${show(sge.length)} is not a u32`;
    if (!isU32(sge.lkey)) return `sgList[${i}].lkey ${show(sge.lkey)} is not a u32`;
    total += sge.length;
  }
  if (total > MAX_MESSAGE_BYTES) {
    return `sgList totals ${total} bytes, more than a message may hold (${MAX_MESSAGE_BYTES})`;
  }
  return null;
}

/** The problem with the remote part of an RDMA or atomic WR, or null. */
function remoteProblem(name: "rdma" | "atomic", value: unknown): string | null {
  if (!isObject(value)) {
    return `needs ${name} { remoteAddr, rkey${name === "atomic" ? ", ..." : ""} }`;
  }
  if (!isU64(value.remoteAddr)) {
    return `${name}.remoteAddr ${show(value.remoteAddr)} is not a u64 bigint`;
  }
  if (!isU32(value.rkey)) return `${name}.rkey ${show(value.rkey)} is not a u32`;
  return null;
}

function totalLength(sgList: readonly Sge[] | undefined): number {
  let total = 0;
  for (const sge of sgList ?? []) total += sge.length;
  return total;
}

/**
 * Says what `ibv_post_send` would reject in `wr` on a send queue with
 * `limits`, or returns null when it may be posted. INLINE sends read their
 * SGEs from `limits.mem` when encoded, so those ranges must lie inside it.
 *
 * @example
 * ```ts
 * import { sendWrProblem } from "./wqe.ts";
 * const limits = { qpType: "UD" as const, maxSge: 1, maxInline: 0 };
 * const why = sendWrProblem({ wrId: 1n, opcode: "RDMA_READ" }, limits);
 * if (why !== "opcode RDMA_READ is not allowed on a UD QP") throw new Error(String(why));
 * ```
 */
export function sendWrProblem(wr: SendWr, limits: SendLimits): string | null {
  if (!isObject(wr)) return `a send WR must be an object, got ${show(wr)}`;
  if (!isU64(wr.wrId)) return `wrId ${show(wr.wrId)} is not a u64 bigint`;
  const op = wr.opcode;
  if (typeof op !== "string" || !Object.hasOwn(WrOpcode, op)) {
    return `opcode ${show(op)} is not a send opcode (${Object.keys(WrOpcode).join(", ")})`;
  }
  if (!ALLOWED[limits.qpType].has(op)) {
    return `opcode ${op} is not allowed on a ${limits.qpType} QP`;
  }
  const flags = wr.sendFlags ?? 0;
  if (!isU32(flags) || (flags & ~ALL_SEND_FLAGS) !== 0) {
    return `sendFlags ${show(flags)} has bits outside SendFlags (0x${ALL_SEND_FLAGS.toString(16)})`;
  }
  const sgProblem = sgListProblem(wr.sgList, limits.maxSge, "maxSendSge");
  if (sgProblem !== null) return sgProblem;
  if (WITH_IMM.has(op) && !isU32(wr.immData)) {
    return `opcode ${op} needs immData as a u32, got ${show(wr.immData)}`;
  }
  if (RDMA.has(op)) {
    const problem = remoteProblem("rdma", wr.rdma);
    if (problem !== null) return `opcode ${op} ${problem}`;
  }
  if (ATOMIC.has(op)) {
    const problem = atomicProblem(wr);
    if (problem !== null) return `opcode ${op} ${problem}`;
  }
  if (limits.qpType === "UD") {
    const problem = udProblem(wr.ud);
    if (problem !== null) return problem;
  }
  if ((flags & SendFlags.INLINE) !== 0) {
    return inlineProblem(wr, op, limits.maxInline, limits.mem ?? null);
  }
  return null;
}

function atomicProblem(wr: SendWr): string | null {
  const a = wr.atomic;
  const problem = remoteProblem("atomic", a);
  if (problem !== null) return problem;
  if (a!.remoteAddr % 8n !== 0n) {
    return `atomic.remoteAddr 0x${a!.remoteAddr.toString(16)} is not 8-byte aligned`;
  }
  if (!isU64(a!.compareAdd)) return `atomic.compareAdd ${show(a!.compareAdd)} is not a u64 bigint`;
  if (wr.opcode === "ATOMIC_CMP_AND_SWP" && !isU64(a!.swap)) {
    return `atomic.swap ${show(a!.swap)} is not a u64 bigint`;
  }
  const sgl = wr.sgList ?? [];
  if (sgl.length !== 1 || sgl[0]!.length !== 8) {
    const got = sgl.length === 1 ? `an SGE of ${sgl[0]!.length} bytes` : `${sgl.length} SGEs`;
    return `needs exactly one SGE of 8 bytes for the result, got ${got}`;
  }
  return null;
}

function udProblem(ud: unknown): string | null {
  if (!isObject(ud)) return "a UD send needs ud { ah, remoteQpn, remoteQkey }";
  const ah = ud.ah;
  if (!isObject(ah) || typeof ah.handle !== "number") {
    return `ud.ah must be an address handle from pd.createAh, got ${show(ah)}`;
  }
  if (ah.destroyed === true) return `ud.ah (AH ${ah.handle}) was destroyed`;
  if (!isU32(ud.remoteQpn) || ud.remoteQpn > 0xff_ffff) {
    return `ud.remoteQpn ${show(ud.remoteQpn)} is not a 24-bit QP number`;
  }
  if (!isU32(ud.remoteQkey)) return `ud.remoteQkey ${show(ud.remoteQkey)} is not a u32`;
  return null;
}

function inlineProblem(
  wr: SendWr,
  op: WrOpcodeName,
  maxInline: number,
  mem: GuestMemory | null,
): string | null {
  if (!INLINE.has(op)) return `opcode ${op} cannot carry INLINE data`;
  const total = totalLength(wr.sgList);
  if (total > maxInline) return `inline data of ${total} bytes exceeds maxInlineData ${maxInline}`;
  const sgl = wr.sgList ?? [];
  for (let i = 0; i < sgl.length; i++) {
    const { addr, length } = sgl[i]!;
    if (length === 0) continue;
    if (
      mem === null || addr > BigInt(Number.MAX_SAFE_INTEGER) || !mem.contains(Number(addr), length)
    ) {
      return `inline sgList[${i}] 0x${addr.toString(16)}+${length} is not inside guest memory`;
    }
  }
  return null;
}

/**
 * Says what `ibv_post_recv` would reject in `wr` on a receive queue with
 * `limits`, or returns null.
 *
 * @example
 * ```ts
 * import { recvWrProblem } from "./wqe.ts";
 * const sge = { addr: 0x1000n, length: 64, lkey: 7 };
 * const why = recvWrProblem({ wrId: 1n, sgList: [sge, sge] }, { maxSge: 1 });
 * if (why !== "2 SGEs exceed maxRecvSge 1") throw new Error(String(why));
 * ```
 */
export function recvWrProblem(wr: RecvWr, limits: RecvLimits): string | null {
  if (!isObject(wr)) return `a receive WR must be an object, got ${show(wr)}`;
  if (!isU64(wr.wrId)) return `wrId ${show(wr.wrId)} is not a u64 bigint`;
  return sgListProblem(wr.sgList, limits.maxSge, limits.capName ?? "maxRecvSge");
}

/** Zeroes a WQE header, so a reused slot never shows a field of an earlier WR. */
function clearHeader(view: DataView, offset: number): void {
  new Uint8Array(view.buffer, view.byteOffset + offset, WQE_HEADER_BYTES).fill(0);
}

function writeSges(view: DataView, offset: number, sgList: readonly Sge[]): void {
  let o = offset + WQE_HEADER_BYTES;
  for (const sge of sgList) {
    view.setBigUint64(o, sge.addr, true);
    view.setUint32(o + 8, sge.length, true);
    view.setUint32(o + 12, sge.lkey, true);
    o += SGE_BYTES;
  }
}

/**
 * Writes the send WQE of `wr` (checked by {@linkcode sendWrProblem}) at
 * `options.offset` in `view` and returns its length in bytes: the header,
 * then the SGEs, or with INLINE the bytes the SGEs name, copied from
 * `options.mem`. Fields the opcode does not use are zero.
 *
 * @example
 * ```ts
 * import { encodeSendWqe } from "./wqe.ts";
 * import { Wqe, WrOpcode } from "../protocol/verbs.ts";
 * const view = new DataView(new ArrayBuffer(128));
 * const sge = { addr: 0x1_0000_2000n, length: 64, lkey: 0x105 };
 * const len = encodeSendWqe(view, { wrId: 9n, opcode: "SEND", sgList: [sge] });
 * if (len !== 80 || view.getUint8(Wqe.OPCODE) !== WrOpcode.SEND) throw new Error("bad WQE");
 * ```
 */
export function encodeSendWqe(view: DataView, wr: SendWr, options: SendWqeOptions = {}): number {
  const offset = options.offset ?? 0;
  const mem = options.mem ?? null;
  const op = wr.opcode;
  const flags = wr.sendFlags ?? 0;
  const sgList = wr.sgList ?? [];
  clearHeader(view, offset);
  view.setBigUint64(offset + Wqe.WR_ID, wr.wrId, true);
  view.setUint8(offset + Wqe.OPCODE, WrOpcode[op]);
  view.setUint8(offset + Wqe.FLAGS, flags);
  if (WITH_IMM.has(op)) view.setUint32(offset + Wqe.IMM_DATA, wr.immData!, true);
  const remote = RDMA.has(op) ? wr.rdma : ATOMIC.has(op) ? wr.atomic : undefined;
  if (remote !== undefined) {
    view.setBigUint64(offset + Wqe.REMOTE_ADDR, remote.remoteAddr, true);
    view.setUint32(offset + Wqe.RKEY, remote.rkey, true);
  }
  if (ATOMIC.has(op)) {
    view.setBigUint64(offset + Wqe.COMPARE_ADD, wr.atomic!.compareAdd, true);
    view.setBigUint64(offset + Wqe.SWAP, wr.atomic!.swap ?? 0n, true);
  }
  if (options.ud === true && wr.ud !== undefined) {
    view.setUint32(offset + Wqe.AH, wr.ud.ah.handle, true);
    view.setUint32(offset + Wqe.REMOTE_QPN, wr.ud.remoteQpn, true);
    view.setUint32(offset + Wqe.REMOTE_QKEY, wr.ud.remoteQkey, true);
  }
  if ((flags & SendFlags.INLINE) === 0) {
    view.setUint16(offset + Wqe.NUM_SGE, sgList.length, true);
    writeSges(view, offset, sgList);
    return WQE_HEADER_BYTES + sgList.length * SGE_BYTES;
  }
  // INLINE: the payload is copied now, so the application may reuse its
  // buffer as soon as the post returns (and needs no MR for it).
  let o = view.byteOffset + offset + WQE_HEADER_BYTES;
  for (const sge of sgList) {
    if (sge.length === 0) continue;
    new Uint8Array(view.buffer, o, sge.length).set(mem!.bytes(Number(sge.addr), sge.length));
    o += sge.length;
  }
  const total = o - (view.byteOffset + offset + WQE_HEADER_BYTES);
  view.setUint32(offset + Wqe.INLINE_LEN, total, true);
  return WQE_HEADER_BYTES + total;
}

/**
 * Writes the receive WQE of `wr` (checked by {@linkcode recvWrProblem}) at
 * `offset` in `view` and returns its length in bytes.
 *
 * @example
 * ```ts
 * import { encodeRecvWqe } from "./wqe.ts";
 * import { RECV_OPCODE, Wqe } from "../protocol/verbs.ts";
 * const view = new DataView(new ArrayBuffer(128));
 * const len = encodeRecvWqe(view, { wrId: 3n, sgList: [{ addr: 0x2000n, length: 8, lkey: 1 }] });
 * if (len !== 80 || view.getUint8(Wqe.OPCODE) !== RECV_OPCODE) throw new Error("bad WQE");
 * ```
 */
export function encodeRecvWqe(view: DataView, wr: RecvWr, offset = 0): number {
  const sgList = wr.sgList ?? [];
  clearHeader(view, offset);
  view.setBigUint64(offset + Wqe.WR_ID, wr.wrId, true);
  view.setUint8(offset + Wqe.OPCODE, RECV_OPCODE);
  view.setUint16(offset + Wqe.NUM_SGE, sgList.length, true);
  writeSges(view, offset, sgList);
  return WQE_HEADER_BYTES + sgList.length * SGE_BYTES;
}

const STATUS_NAMES: WcStatusName[] = [];
for (const [name, code] of Object.entries(WcStatus)) STATUS_NAMES[code] = name as WcStatusName;
const OPCODE_NAMES = new Map<number, WcOpcodeName>();
for (const [name, code] of Object.entries(WcOpcode)) OPCODE_NAMES.set(code, name as WcOpcodeName);

/**
 * Reads the CQE at `offset` in `view`. A status or opcode code this driver
 * does not know (a device bug) becomes a `GENERAL_ERR` completion, with
 * opcode `RECV` or `SEND` by bit 7 as `enum ibv_wc_opcode` groups them, so a
 * poll never loses the WR id.
 *
 * @example
 * ```ts
 * import { decodeCqe } from "./wqe.ts";
 * import { Cqe } from "../protocol/verbs.ts";
 * const view = new DataView(new ArrayBuffer(40));
 * view.setBigUint64(Cqe.WR_ID, 5n, true);
 * view.setUint32(Cqe.BYTE_LEN, 64, true);
 * const wc = decodeCqe(view, 0);
 * if (wc.wrId !== 5n || wc.status !== "SUCCESS" || wc.opcode !== "SEND") throw new Error("bad");
 * ```
 */
export function decodeCqe(view: DataView, offset = 0): WorkCompletion {
  const statusCode = view.getUint8(offset + Cqe.STATUS);
  const opcodeCode = view.getUint8(offset + Cqe.OPCODE);
  const wcFlags = view.getUint16(offset + Cqe.WC_FLAGS, true);
  let status = STATUS_NAMES[statusCode];
  let opcode = OPCODE_NAMES.get(opcodeCode);
  if (status === undefined || opcode === undefined) {
    status = "GENERAL_ERR";
    opcode ??= (opcodeCode & WcOpcode.RECV) !== 0 ? "RECV" : "SEND";
  }
  const wc: WorkCompletion = {
    wrId: view.getBigUint64(offset + Cqe.WR_ID, true),
    status,
    opcode,
    byteLen: view.getUint32(offset + Cqe.BYTE_LEN, true),
    qpNum: view.getUint32(offset + Cqe.QP_NUM, true),
    srcQp: view.getUint32(offset + Cqe.SRC_QP, true),
    wcFlags,
  };
  if ((wcFlags & WcFlags.WITH_IMM) !== 0) wc.immData = view.getUint32(offset + Cqe.IMM_DATA, true);
  return wc;
}
