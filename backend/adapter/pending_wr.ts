/**
 * A send WR between its post and its completion on a QP whose peer is on
 * another host: what the requester needs to send (and send again) its
 * packets, taken out of the WQE once, since the WQE's slot is guest memory.
 *
 * @module
 */

import { SendFlags, WrOpcode } from "../../protocol/verbs.ts";
import type { ParsedWqe } from "../engine/wqe_reader.ts";

/** Whether an opcode is answered with data (READ) or an original value (atomics). */
export function isReadOrAtomic(opcode: number): boolean {
  return opcode === WrOpcode.RDMA_READ || opcode === WrOpcode.ATOMIC_CMP_AND_SWP ||
    opcode === WrOpcode.ATOMIC_FETCH_AND_ADD;
}

/** One outstanding send WR. */
export class PendingWr {
  /** Its SQ ring head, given back when it completes. */
  readonly head: number;
  /** Work request id. */
  readonly wrId: bigint;
  /** WR opcode. */
  readonly opcode: number;
  /** Send flags. */
  readonly flags: number;
  /** Immediate data. */
  readonly immData: number;
  /** Remote address (RDMA, atomic). */
  readonly remoteAddr: number;
  /** Remote key. */
  readonly rkey: number;
  /** Atomic compare (CMP_AND_SWP) or add (FETCH_AND_ADD) operand. */
  readonly compareAdd: bigint;
  /** Atomic swap operand. */
  readonly swap: bigint;
  /**
   * The local bytes: the payload to send, or where READ data and an atomic's
   * original value land. Views of guest memory (or a copy of inline data).
   */
  readonly views: Uint8Array[];
  /** Message length in bytes. */
  readonly length: number;
  /** Set when the WR failed locally before it was sent: its completion status. */
  readonly localError: number | null;
  /** First PSN of the message. */
  firstPsn = 0;
  /** PSNs it takes: its packets, or a READ's response packets. */
  psnCount = 1;

  /** Takes what it needs out of `wqe`; `views` are the resolved local SGEs. */
  constructor(
    head: number,
    wqe: ParsedWqe,
    local: { views: Uint8Array[]; length: number; error: number | null },
  ) {
    this.head = head;
    this.wrId = wqe.wrId;
    this.opcode = wqe.opcode;
    this.flags = wqe.flags;
    this.immData = wqe.immData;
    this.remoteAddr = wqe.remoteAddr;
    this.rkey = wqe.rkey;
    this.compareAdd = wqe.compareAdd;
    this.swap = wqe.swap;
    this.views = local.views;
    this.length = local.length;
    this.localError = local.error;
  }

  /** Whether it waits for READ data or an atomic's value (counts against max_rd_atomic). */
  get readOrAtomic(): boolean {
    return isReadOrAtomic(this.opcode);
  }

  /** Whether FENCE asks it to wait for earlier READs and atomics. */
  get fenced(): boolean {
    return (this.flags & SendFlags.FENCE) !== 0;
  }
}

/** Copies `length` bytes of `views` from byte `offset` into `out` at `at`. */
export function gatherAt(
  views: readonly Uint8Array[],
  offset: number,
  out: Uint8Array,
  at: number,
  length: number,
): void {
  let i = 0;
  while (i < views.length && offset >= views[i]!.length) offset -= views[i++]!.length;
  while (length > 0 && i < views.length) {
    const v = views[i++]!;
    const n = Math.min(length, v.length - offset);
    out.set(n === v.length ? v : v.subarray(offset, offset + n), at);
    at += n;
    length -= n;
    offset = 0;
  }
}

/**
 * Copies `src` into `views` from byte `offset` on; returns the bytes that
 * fit (fewer when the views end first).
 */
export function scatterAt(views: readonly Uint8Array[], offset: number, src: Uint8Array): number {
  let i = 0;
  while (i < views.length && offset >= views[i]!.length) offset -= views[i++]!.length;
  let done = 0;
  while (done < src.length && i < views.length) {
    const v = views[i++]!;
    const n = Math.min(src.length - done, v.length - offset);
    v.set(done === 0 && n === src.length ? src : src.subarray(done, done + n), offset);
    done += n;
    offset = 0;
  }
  return done;
}
