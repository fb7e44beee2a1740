/**
 * The pieces every perf loop shares: the run context, the send WR of a
 * test's verb, and the `--check` helpers that need the wire (a read-back
 * of the peer's memory).
 *
 * @module
 */

import { SendFlags, type SendWr, type WorkCompletion } from "../../mod.ts";
import { expectSuccess } from "./perf_errors.ts";
import type { PerfGuest } from "./perf_guest.ts";
import type { AtomicType, Verb } from "./perf_options.ts";
import type { Pacer } from "./perf_pacer.ts";
import type { Progress } from "./perf_progress.ts";
import type { KeyMessage } from "./perf_wire.ts";

/** What a loop runs with. */
export interface RunContext {
  /** How to wait. */
  pacer: Pacer;
  /** "client" or "server", for messages. */
  side: string;
  /** Makes the progress bar of a run of `total` steps. */
  progress: (label: string, total: number) => Progress;
  /** Verify the data. */
  check: boolean;
  /** Atomics this side sent to the peer so far (the peer's counter starts at 0). */
  atomics: number;
}

/** Where results of atomics land in the scratch area. */
export const ATOMIC_RESULT_OFFSET = 0;
/** Where read-backs land in the scratch area (after the atomic result). */
export const READ_BACK_OFFSET = 64;

/** How the send WRs of a run look. */
export interface WrShape {
  /** The test's verb. */
  verb: Verb;
  /** Message size. */
  size: number;
  /** The atomic operation. */
  atomicType: AtomicType;
  /** Inline data the QP takes: messages that fit go inline. */
  inline: number;
}

/**
 * Makes the WRs of a run: `make(index, signaled)` returns WR `index` (its
 * wrId). WRITE and SEND carry the `out` area, READ lands there, atomics
 * target the peer's counter (FETCH_AND_ADD adds 1; CMP_AND_SWAP moves the
 * counter from its expected value to the next, so both count operations)
 * and return the old value to the scratch area. The objects besides the WR
 * itself are shared: the driver copies a WR into its WQE when posting.
 */
export function wrMaker(
  g: PerfGuest,
  remote: KeyMessage,
  shape: WrShape,
  ctx: RunContext,
): (index: number, signaled: boolean) => SendWr {
  const inline = shape.verb !== "read" && shape.verb !== "atomic" && shape.size <= shape.inline
    ? SendFlags.INLINE
    : 0;
  const rdma = { remoteAddr: remote.vaddr, rkey: remote.rkey };
  if (shape.verb === "atomic") {
    const sgList = [{
      addr: g.scratchAddr + BigInt(ATOMIC_RESULT_OFFSET),
      length: 8,
      lkey: g.mr.lkey,
    }];
    const opcode = shape.atomicType === "FETCH_AND_ADD"
      ? "ATOMIC_FETCH_AND_ADD" as const
      : "ATOMIC_CMP_AND_SWP" as const;
    const add = { remoteAddr: remote.vaddr, rkey: remote.rkey, compareAdd: 1n, swap: 0n };
    return (index, signaled) => {
      const seq = BigInt(ctx.atomics++);
      return {
        wrId: BigInt(index),
        opcode,
        sendFlags: signaled ? SendFlags.SIGNALED : 0,
        sgList,
        atomic: opcode === "ATOMIC_FETCH_AND_ADD"
          ? add
          : { remoteAddr: remote.vaddr, rkey: remote.rkey, compareAdd: seq, swap: seq + 1n },
      };
    };
  }
  const sgList = [{ addr: g.outAddr, length: shape.size, lkey: g.mr.lkey }];
  const opcode = shape.verb === "write"
    ? "RDMA_WRITE" as const
    : shape.verb === "read"
    ? "RDMA_READ" as const
    : "SEND" as const;
  return (index, signaled) => ({
    wrId: BigInt(index),
    opcode,
    sendFlags: (signaled ? SendFlags.SIGNALED : 0) | inline,
    sgList,
    ...(opcode === "SEND" ? {} : { rdma }),
  });
}

/** Polls `cq` until one completion arrives (pacing as the context says) and checks it. */
export async function nextCompletion(
  g: PerfGuest,
  which: "send" | "recv",
  ctx: RunContext,
  what: () => string,
): Promise<WorkCompletion> {
  const cq = which === "send" ? g.sendCq : g.recvCq;
  for (;;) {
    const wc = cq.poll(1)[0];
    if (wc !== undefined) {
      ctx.pacer.progress();
      expectSuccess(wc, ctx.side, what);
      return wc;
    }
    await ctx.pacer.idle(what);
  }
}

/**
 * Reads `length` bytes at `offset` of the peer's `in` area back into this
 * side's scratch area (an RDMA READ the run does not time) and returns them.
 * Called after a loop: every loop ends with its last WR signaled and
 * polled, so the next send completion is this READ's.
 */
export async function readBack(
  g: PerfGuest,
  remote: KeyMessage,
  offset: number,
  length: number,
  ctx: RunContext,
): Promise<Uint8Array> {
  if (READ_BACK_OFFSET + length > g.scratch.length) {
    throw new RangeError(`a read-back of ${length} B does not fit the scratch area`);
  }
  const into = g.scratch.subarray(READ_BACK_OFFSET, READ_BACK_OFFSET + length);
  into.fill(0);
  g.qp.postSend({
    wrId: 0xc4ec4n,
    opcode: "RDMA_READ",
    sendFlags: SendFlags.SIGNALED,
    sgList: [{ addr: g.scratchAddr + BigInt(READ_BACK_OFFSET), length, lkey: g.mr.lkey }],
    rdma: { remoteAddr: remote.vaddr + BigInt(offset), rkey: remote.rkey },
  });
  await nextCompletion(g, "send", ctx, () => `the --check read-back of ${length} B`);
  return into;
}
