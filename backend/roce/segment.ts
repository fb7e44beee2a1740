/**
 * How a work request becomes packets on the wire: the requester's
 * segmentation at the path MTU and the PSNs each message takes.
 *
 * - SEND and RDMA WRITE: FIRST, MIDDLE..., LAST, or ONLY when the payload
 *   fits one MTU (a zero-length message is one ONLY packet). FIRST and MIDDLE
 *   carry exactly one MTU, LAST the rest (1..MTU). One PSN per packet.
 * - RDMA READ: one request packet, but the responder answers with one
 *   packet per MTU of the requested length, and each of those answers takes
 *   a PSN: the request consumes `ceil(length / mtu)` PSNs (at least 1).
 * - Atomics: one request, one PSN.
 * - UD: one packet; a message longer than the MTU is refused.
 * - RC requests ask for an ACK on the last packet of each message, as rxe
 *   does (WIRE.md); UC and UD never do.
 *
 * @module
 */

import type { QpType, WrOpcodeName } from "../../protocol/verbs.ts";
import { wrPackets } from "./opcodes.ts";
import { psnAdd } from "./psn.ts";

/** The path MTUs IBA allows, in bytes. */
export const PATH_MTUS: readonly number[] = [256, 512, 1024, 2048, 4096];

/** One packet of a message: which opcode, which PSN, which bytes. */
export interface Segment {
  /** Wire opcode. */
  opcode: number;
  /** Its PSN. */
  psn: number;
  /** Offset of its payload within the message. */
  offset: number;
  /** Payload bytes it carries. */
  length: number;
  /** The AckReq bit. */
  ackReq: boolean;
}

/** A whole message's plan. */
export interface MessagePlan {
  /** The packets the requester sends, in order. */
  segments: Segment[];
  /** PSNs the message consumes (READ: its responses' PSNs). */
  psnCount: number;
  /** The PSN the next message starts at. */
  nextPsn: number;
}

/**
 * Plans the packets of a `length`-byte `wr` on a `qpType` QP at `mtu`,
 * starting at PSN `psn`. Throws a `TypeError` for an opcode the QP type does
 * not allow and a `RangeError` for a bad MTU, length or PSN, or a UD message
 * longer than the MTU.
 *
 * @example
 * ```ts
 * import { planMessage } from "./segment.ts";
 * const plan = planMessage({ qpType: "RC", wr: "RDMA_WRITE", length: 2500, mtu: 1024, psn: 0xfffffe });
 * const names = plan.segments.map((s) => [s.psn, s.length]);
 * if (JSON.stringify(names) !== "[[16777214,1024],[16777215,1024],[0,452]]") throw new Error("bad plan");
 * ```
 */
export function planMessage(
  message: { qpType: QpType; wr: WrOpcodeName; length: number; mtu: number; psn: number },
): MessagePlan {
  const { qpType, wr, length, mtu, psn } = message;
  const ops = wrPackets(qpType, wr);
  if (ops === undefined) throw new TypeError(`${wr} is not allowed on a ${qpType} QP`);
  if (!PATH_MTUS.includes(mtu)) {
    throw new RangeError(`path MTU ${mtu} is not one of ${PATH_MTUS.join(", ")}`);
  }
  if (!Number.isInteger(length) || length < 0 || length > 0x8000_0000) {
    throw new RangeError(`message length ${length} is not in 0..2^31`);
  }
  if (!Number.isInteger(psn) || psn < 0 || psn > 0xff_ffff) {
    throw new RangeError(`PSN ${psn} is not a 24-bit number`);
  }
  const packets = Math.max(1, Math.ceil(length / mtu));
  const reliable = qpType === "RC";
  if (wr === "RDMA_READ" || wr === "ATOMIC_CMP_AND_SWP" || wr === "ATOMIC_FETCH_AND_ADD") {
    // One request; a READ's responses each take one of its PSNs.
    const psnCount = wr === "RDMA_READ" ? packets : 1;
    return {
      segments: [{ opcode: ops.only, psn, offset: 0, length: 0, ackReq: reliable }],
      psnCount,
      nextPsn: psnAdd(psn, psnCount),
    };
  }
  if (packets > 1 && ops.first < 0) {
    throw new RangeError(`a ${qpType} ${wr} of ${length} bytes exceeds the path MTU ${mtu}`);
  }
  const segments: Segment[] = [];
  for (let i = 0; i < packets; i++) {
    const last = i === packets - 1;
    const opcode = packets === 1 ? ops.only : i === 0 ? ops.first : last ? ops.last : ops.middle;
    segments.push({
      opcode,
      psn: psnAdd(psn, i),
      offset: i * mtu,
      length: last ? length - i * mtu : mtu,
      ackReq: reliable && last,
    });
  }
  return { segments, psnCount: packets, nextPsn: psnAdd(psn, packets) };
}
