/**
 * The receiving side of a local (same-host) operation: taking a receive WQE
 * from a QP's RQ or its SRQ, checking remote access against an rkey, and
 * completing receives.
 *
 * @module
 */

import { DescriptorChain } from "../../virtqueue/descriptor_chain.ts";
import { EventType } from "../../protocol/device_interface.ts";
import { Access, WcFlags, WcOpcode, WcStatus } from "../../protocol/verbs.ts";
import type { Counters } from "../data_plane/stats.ts";
import { complete } from "./completion.ts";
import { ParsedWqe, readWqe } from "./wqe_reader.ts";
import type { EngineGuest, EngineHost, EngineMr, EngineQp } from "./types.ts";

/** States in which a QP accepts incoming requests (the same-host path and the wire alike). */
export function canReceive(qp: EngineQp): boolean {
  return qp.state === "RTR" || qp.state === "RTS" || qp.state === "SQD" || qp.state === "SQE";
}

/** A receive WQE taken for one message. */
export interface TakenRecv {
  /** Its parsed contents. */
  wqe: ParsedWqe;
  /** Set when the WQE was malformed: what was wrong. */
  error: string | null;
}

const recvChain = new DescriptorChain(2);
const recvWqe = new ParsedWqe();

/**
 * Takes the next receive WQE of `qp` (from its SRQ when it has one) and
 * retires its ring entry at once: the WQE's contents were copied out.
 * Returns undefined when none is posted (RNR on RC, a drop on UD/UC).
 */
export function takeRecv(guest: EngineGuest, qp: EngineQp): TakenRecv | undefined {
  const mem = guest.memory;
  const queue = qp.srq ? qp.srq.queue : qp.rq;
  if (queue == null || queue.broken) return undefined;
  if (!queue.popInto(mem, recvChain)) {
    // Hostile ring contents break the queue here, on the sender's traffic:
    // the guest must hear of it now, not when it next rings this queue.
    if (queue.broken) guest.queueBroken?.(qp);
    return undefined;
  }
  // Counted here, where both the same-host path and the host adapter take
  // their receives, malformed ones included (as sendWqes counts every WQE).
  guest.counters?.add("recvWqes");
  const maxSge = qp.srq ? qp.srq.maxSge : qp.cap.maxRecvSge;
  const error = readWqe(recvChain, recvWqe, { maxSge, maxInline: 0, recv: true });
  queue.addUsed(mem, recvChain.head, 0);
  queue.publishUsed(mem);
  const srq = qp.srq;
  if (srq && srq.srqLimit > 0 && queue.pending(mem) < srq.srqLimit) {
    srq.srqLimit = 0; // the limit event fires once per arming
    guest.postEvent({ type: EventType.SRQ_LIMIT_REACHED, element: srq.handle, info: 0 });
  }
  return { wqe: recvWqe, error };
}

/** Why a remote access to `target` was refused, or the MR that allows it. */
export function checkRemote(
  host: EngineHost,
  target: { guest: EngineGuest; qp: EngineQp },
  access: { rkey: number; addr: number; length: number; need: number },
): { mr: EngineMr } | string {
  const { rkey, addr, length, need } = access;
  const found = host.mr(rkey);
  if (found === undefined) return `rkey 0x${rkey.toString(16)} is not a live MR`;
  const mr = found.mr;
  if (found.guest !== target.guest || mr.rkey !== rkey) {
    return `rkey 0x${rkey.toString(16)} is not the target's`;
  }
  if (mr.pd !== target.qp.pd) return `rkey 0x${rkey.toString(16)} is in another PD`;
  if ((mr.access & need) === 0) return `MR lacks access 0x${need.toString(16)}`;
  if ((target.qp.qpAccessFlags & need) === 0) {
    return `QP 0x${target.qp.qpNum.toString(16)} does not allow access 0x${need.toString(16)}`;
  }
  if (!(addr >= mr.addr && addr + length <= mr.addr + mr.length)) {
    return `0x${addr.toString(16)}+${length} is outside the MR`;
  }
  return { mr };
}

/** The access bit an operation needs at the target. */
export const REMOTE = {
  write: Access.REMOTE_WRITE,
  read: Access.REMOTE_READ,
  atomic: Access.REMOTE_ATOMIC,
} as const;

/** Completes a receive on `qp`'s receive CQ. */
export function completeRecv(
  guest: EngineGuest,
  qp: EngineQp,
  recv: { readonly wrId: bigint },
  fields: {
    status: number;
    byteLen: number;
    srcQp: number;
    imm?: number;
    withWrite?: boolean;
    grh?: boolean;
    solicited?: boolean;
  },
  counters: Counters,
): void {
  let wcFlags = 0;
  if (fields.imm !== undefined) wcFlags |= WcFlags.WITH_IMM;
  if (fields.grh) wcFlags |= WcFlags.GRH;
  complete(guest, qp.recvCq, {
    wrId: recv.wrId,
    status: fields.status,
    opcode: fields.withWrite ? WcOpcode.RECV_RDMA_WITH_IMM : WcOpcode.RECV,
    wcFlags,
    byteLen: fields.status === WcStatus.SUCCESS ? fields.byteLen : 0,
    immData: fields.imm ?? 0,
    qpNum: qp.qpNum,
    srcQp: fields.srcQp,
    solicited: fields.solicited ?? false,
  }, counters);
}
