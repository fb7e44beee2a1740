/**
 * Reads a WQE out of a popped descriptor chain into a reusable object.
 *
 * The chain's bytes are guest memory the guest may still be scribbling on,
 * so the header and SGE list are copied out once, checked, and used from the
 * copy (no time-of-check/time-of-use gap). Inline data is copied too.
 *
 * @module
 */

import type { DescriptorChain } from "../../virtqueue/descriptor_chain.ts";
import {
  RECV_OPCODE,
  SendFlags,
  SGE_BYTES,
  Wqe,
  WQE_HEADER_BYTES,
  WrOpcode,
} from "../../protocol/verbs.ts";

/** Most SGEs a WQE may carry (the device's maxSge). */
export const MAX_WQE_SGES = 16;
/** Most inline bytes a WQE may carry. */
export const MAX_INLINE = 256;

/** One parsed WQE; reused from WR to WR. */
export class ParsedWqe {
  /** Work request id. */
  wrId = 0n;
  /** WR opcode, or RECV_OPCODE. */
  opcode = 0;
  /** Send flags. */
  flags = 0;
  /** Immediate data. */
  immData = 0;
  /** Remote address (RDMA, atomic). */
  remoteAddr = 0;
  /** Remote key. */
  rkey = 0;
  /** Atomic compare/add operand. */
  compareAdd = 0n;
  /** Atomic swap operand. */
  swap = 0n;
  /** UD address handle. */
  ah = 0;
  /** UD remote QPN. */
  remoteQpn = 0;
  /** UD remote Q_Key. */
  remoteQkey = 0;
  /** SGEs in use. */
  numSge = 0;
  /** SGE addresses (guest), `numSge` valid. */
  readonly sgeAddr: number[] = new Array(MAX_WQE_SGES).fill(0);
  /** SGE lengths. */
  readonly sgeLen: number[] = new Array(MAX_WQE_SGES).fill(0);
  /** SGE lkeys. */
  readonly sgeKey: number[] = new Array(MAX_WQE_SGES).fill(0);
  /** Inline payload bytes in use (INLINE). */
  inlineLen = 0;
  /** Inline payload. */
  readonly inline = new Uint8Array(MAX_INLINE);

  /** Total bytes the SGEs (or the inline data) describe. */
  get totalLength(): number {
    if ((this.flags & SendFlags.INLINE) !== 0) return this.inlineLen;
    let n = 0;
    for (let i = 0; i < this.numSge; i++) n += this.sgeLen[i]!;
    return n;
  }
}

/**
 * Whether a send opcode can carry its payload inline (rxe's WR_INLINE_MASK):
 * a READ or an atomic has no outgoing payload, so INLINE on one is malformed.
 */
function inlineAllowed(opcode: number): boolean {
  return opcode === WrOpcode.SEND || opcode === WrOpcode.SEND_WITH_IMM ||
    opcode === WrOpcode.RDMA_WRITE || opcode === WrOpcode.RDMA_WRITE_WITH_IMM;
}

const scratch = new Uint8Array(WQE_HEADER_BYTES + MAX_WQE_SGES * SGE_BYTES);
const view = new DataView(scratch.buffer);

/**
 * Fills `out` from `chain`. Returns null when the WQE is well formed, or a
 * message saying what is wrong (the caller completes the WR with an error).
 * `maxSge` and `maxInline` are the queue's limits; `recv` says which kind of
 * WQE is expected.
 */
export function readWqe(
  chain: DescriptorChain,
  out: ParsedWqe,
  limits: { maxSge: number; maxInline: number; recv: boolean },
): string | null {
  // `out` is reused from WR to WR (and guest to guest): a WQE refused before
  // its header is read must not complete with the last one's wr_id.
  out.wrId = 0n;
  out.opcode = limits.recv ? RECV_OPCODE : 0;
  out.flags = 0;
  out.numSge = 0;
  out.inlineLen = 0;
  const available = chain.readableBytes;
  if (available < WQE_HEADER_BYTES) return `WQE of ${available} bytes is shorter than its header`;
  const reader = chain.reader;
  try {
    reader.read(scratch.subarray(0, WQE_HEADER_BYTES));
  } catch (e) {
    return `WQE header unreadable: ${(e as Error).message}`;
  }
  out.wrId = view.getBigUint64(Wqe.WR_ID, true);
  out.opcode = view.getUint8(Wqe.OPCODE);
  out.flags = view.getUint8(Wqe.FLAGS);
  out.numSge = view.getUint16(Wqe.NUM_SGE, true);
  out.immData = view.getUint32(Wqe.IMM_DATA, true);
  const hi = view.getUint32(Wqe.REMOTE_ADDR + 4, true);
  // Addresses beyond 2^53 cannot be guest memory; -1 makes every range check fail.
  out.remoteAddr = hi >= 0x200000 ? -1 : hi * 0x1_0000_0000 + view.getUint32(Wqe.REMOTE_ADDR, true);
  out.rkey = view.getUint32(Wqe.RKEY, true);
  out.inlineLen = 0;
  out.compareAdd = view.getBigUint64(Wqe.COMPARE_ADD, true);
  out.swap = view.getBigUint64(Wqe.SWAP, true);
  out.ah = view.getUint32(Wqe.AH, true);
  out.remoteQpn = view.getUint32(Wqe.REMOTE_QPN, true);
  out.remoteQkey = view.getUint32(Wqe.REMOTE_QKEY, true);
  if (limits.recv !== (out.opcode === RECV_OPCODE)) {
    return `opcode ${out.opcode} on a ${limits.recv ? "receive" : "send"} queue`;
  }
  if ((out.flags & SendFlags.INLINE) !== 0 && !limits.recv) {
    // The driver refuses these, but a guest can write its ring directly: read
    // as inline, a READ would run with no SGEs and "succeed" reading nothing.
    if (!inlineAllowed(out.opcode)) return `opcode ${out.opcode} cannot carry INLINE data`;
    const len = view.getUint32(Wqe.INLINE_LEN, true);
    if (len > limits.maxInline) return `inline data of ${len} bytes exceeds ${limits.maxInline}`;
    if (available < WQE_HEADER_BYTES + len) return `inline data of ${len} bytes runs past the WQE`;
    try {
      reader.read(out.inline.subarray(0, len));
    } catch (e) {
      return `inline data unreadable: ${(e as Error).message}`;
    }
    out.inlineLen = len;
    out.numSge = 0;
    return null;
  }
  if (out.numSge > limits.maxSge) return `${out.numSge} SGEs exceed the queue's ${limits.maxSge}`;
  const bytes = out.numSge * SGE_BYTES;
  if (available < WQE_HEADER_BYTES + bytes) return `${out.numSge} SGEs run past the WQE`;
  try {
    reader.read(scratch.subarray(WQE_HEADER_BYTES, WQE_HEADER_BYTES + bytes));
  } catch (e) {
    return `SGE list unreadable: ${(e as Error).message}`;
  }
  for (let i = 0; i < out.numSge; i++) {
    const at = WQE_HEADER_BYTES + i * SGE_BYTES;
    const sgeHi = view.getUint32(at + 4, true);
    out.sgeAddr[i] = sgeHi >= 0x200000 ? -1 : sgeHi * 0x1_0000_0000 + view.getUint32(at, true);
    out.sgeLen[i] = view.getUint32(at + 8, true);
    out.sgeKey[i] = view.getUint32(at + 12, true);
  }
  return null;
}
