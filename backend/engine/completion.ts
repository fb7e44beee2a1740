/**
 * Writes completions into a CQ's slots and raises completion events.
 *
 * A CQ with no free slot has overrun: as on hardware, that is an async
 * CQ_ERR event, the completion is lost, and the CQ stays in error.
 *
 * @module
 */

import { DescriptorChain } from "../../virtqueue/descriptor_chain.ts";
import { EventType } from "../../protocol/device_interface.ts";
import { CqArm, Cqe, CQE_BYTES, WcStatus } from "../../protocol/verbs.ts";
import type { Counters } from "../data_plane/stats.ts";
import type { EngineCq, EngineGuest } from "./types.ts";

/** The fields of one completion. */
export interface Completion {
  /** Work request id. */
  wrId: bigint;
  /** WcStatus code. */
  status: number;
  /** WcOpcode code. */
  opcode: number;
  /** WcFlags. */
  wcFlags: number;
  /** Bytes transferred. */
  byteLen: number;
  /** Immediate data. */
  immData: number;
  /** Local QPN. */
  qpNum: number;
  /** Source QPN. */
  srcQp: number;
  /** The completion is for a message sent with SOLICITED. */
  solicited: boolean;
}

const slot = new Uint8Array(CQE_BYTES);
const view = new DataView(slot.buffer);
const chain = new DescriptorChain(2);
const overrun = new WeakSet<EngineCq>();
/** Completions written to each two-ring CQ: the next goes to ring (count & 1). */
const written = new WeakMap<EngineCq, number>();

/**
 * Writes `c` into the next slot of `cq`. Returns false when the CQ had no
 * slot (overrun: CQ_ERR posted once, the completion dropped).
 */
export function complete(
  guest: EngineGuest,
  cq: EngineCq,
  c: Completion,
  counters: Counters,
): boolean {
  const mem = guest.memory;
  const count = cq.queue2 === null ? 0 : written.get(cq) ?? 0;
  const queue = (count & 1) === 0 ? cq.queue : cq.queue2!;
  if (overrun.has(cq) || queue.broken || !queue.popInto(mem, chain)) {
    // Counted before the event, so whoever the event wakes sees the count.
    counters.add("cqOverruns");
    if (!overrun.has(cq)) {
      overrun.add(cq);
      try {
        mem.setU32(cq.armAddr + 4, (mem.u32(cq.armAddr + 4) + 1) >>> 0);
      } catch {
        // The arm area was checked at CREATE_CQ; a guest cannot unmap it, but stay safe.
      }
      guest.postEvent({ type: EventType.CQ_ERR, element: cq.handle, info: 0 });
    }
    return false;
  }
  view.setBigUint64(Cqe.WR_ID, c.wrId, true);
  view.setUint8(Cqe.STATUS, c.status);
  view.setUint8(Cqe.OPCODE, c.opcode);
  view.setUint16(Cqe.WC_FLAGS, c.wcFlags, true);
  view.setUint32(Cqe.BYTE_LEN, c.byteLen >>> 0, true);
  view.setUint32(Cqe.IMM_DATA, c.immData >>> 0, true);
  view.setUint32(Cqe.QP_NUM, c.qpNum, true);
  view.setUint32(Cqe.SRC_QP, c.srcQp, true);
  view.setUint32(Cqe.VENDOR_ERR, 0, true);
  view.setUint16(Cqe.PKEY_INDEX, 0, true);
  view.setUint8(Cqe.SL, 0);
  view.setUint8(Cqe.DLID_PATH_BITS, 0);
  view.setUint32(Cqe.SLID, 0, true);
  let bytes = 0;
  if (chain.writableBytes >= CQE_BYTES) {
    try {
      chain.writer.write(slot);
      bytes = CQE_BYTES;
    } catch {
      bytes = 0; // a slot outside guest memory: the driver sees an empty entry
    }
  }
  queue.addUsed(mem, chain.head, bytes);
  queue.publishUsed(mem);
  if (cq.queue2 !== null) written.set(cq, count + 1);
  counters.add("completions");
  const arm = mem.loadU32(cq.armAddr);
  if (
    arm === CqArm.NEXT ||
    (arm === CqArm.SOLICITED && (c.solicited || c.status !== WcStatus.SUCCESS))
  ) {
    mem.storeU32(cq.armAddr, CqArm.NONE);
    guest.postEvent({ type: EventType.COMPLETION, element: cq.handle, info: 0 });
  }
  return true;
}

/** True once `cq` has overrun. */
export function hasOverrun(cq: EngineCq): boolean {
  return overrun.has(cq);
}
