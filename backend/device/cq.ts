/**
 * CREATE_CQ, DESTROY_CQ, REQ_NOTIFY_CQ.
 *
 * @module
 */

import { Errno } from "../../protocol/device_interface.ts";
import { CQ_ARM_BYTES, CqArm } from "../../protocol/verbs.ts";
import {
  addrField,
  boolField,
  checkKeys,
  CommandError,
  type Fields,
  intField,
  invalid,
} from "./fields.ts";
import type { GuestState } from "./guest_state.ts";
import type { Cq } from "./objects.ts";

/** Slots one virtqueue can hold (VIRTIO 1.2, 2.7). */
const MAX_RING = 0x8000;

/** CREATE_CQ `{cqe, ring, armAddr}` -> `{cq, queue, cqe}` (`cqe` = the ring size). */
export function createCq(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op", "cqe", "ring", "ring2", "armAddr"]);
  const cqe = intField(cmd, "cqe", { min: 1, max: 0xffff_ffff });
  if (cqe > state.limits.maxCqe) throw invalid(`cqe ${cqe} exceeds maxCqe ${state.limits.maxCqe}`);
  // A virtqueue holds at most 32768 slots, so a larger CQ has two rings of
  // equal size that take completions in strict alternation (completion k
  // goes to ring k mod 2): order is kept and the capacity doubles.
  const split = cqe > MAX_RING;
  if (!split && cmd.ring2 !== undefined) {
    throw invalid(`ring2 is only for cqe above ${MAX_RING}; cqe is ${cqe}`);
  }
  if (split && cmd.ring2 === undefined) {
    throw invalid(`cqe ${cqe} needs two rings (ring and ring2) of ${MAX_RING} slots`);
  }
  const perRing = split ? Math.ceil(cqe / 2) : cqe;
  const layout = state.ring(cmd, "ring", { size: perRing, what: split ? "half of cqe" : "cqe" });
  const layout2 = split ? state.ring(cmd, "ring2", { size: perRing, what: "half of cqe" }) : null;
  if (layout2 !== null && layout2.size !== layout.size) {
    throw invalid(`ring2.size ${layout2.size} differs from ring.size ${layout.size}`);
  }
  const armAddr = addrField(cmd, "armAddr");
  if (armAddr % 4 !== 0) throw invalid(`armAddr 0x${armAddr.toString(16)} is not 4-byte aligned`);
  if (!state.memory.contains(armAddr, CQ_ARM_BYTES)) {
    throw new CommandError(
      Errno.EFAULT,
      `armAddr 0x${armAddr.toString(16)}+${CQ_ARM_BYTES} is not inside guest memory`,
    );
  }
  // Atomics need the word aligned in the backing buffer too, not only in guest addresses.
  if (state.memory.bytes(armAddr, CQ_ARM_BYTES).byteOffset % 4 !== 0) {
    throw invalid(`armAddr 0x${armAddr.toString(16)} is not 4-byte aligned in its region`);
  }
  state.cqs.checkRoom(state.limits.maxCq);
  state.queues.checkRoom(layout2 === null ? 1 : 2);
  const queueId = state.queues.alloc();
  const queueId2 = layout2 === null ? null : state.queues.alloc();
  const cq = state.cqs.add((handle): Cq => ({
    handle,
    guest: state.guest,
    live: true,
    cqe: layout.size * (layout2 === null ? 1 : 2),
    queue: state.queueFor(layout),
    queueId,
    queue2: layout2 === null ? null : state.queueFor(layout2),
    queueId2,
    armAddr,
  }));
  state.queues.bind(queueId, { kind: "cq", object: cq });
  if (queueId2 !== null) state.queues.bind(queueId2, { kind: "cq", object: cq });
  state.count("cqs", 1);
  state.count("queues", queueId2 === null ? 1 : 2);
  const result: Fields = { cq: cq.handle, queue: queueId, cqe: cq.cqe };
  if (queueId2 !== null) result.queue2 = queueId2;
  return result;
}

/** DESTROY_CQ `{cq}` -> `{}`; EBUSY while a QP uses it. */
export function destroyCqCommand(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op", "cq"]);
  const cq = state.cqs.find(cmd);
  state.checkUnused(cq, "cq", "QPs");
  destroyCq(state, cq);
  return {};
}

/** Frees a CQ no QP uses. */
export function destroyCq(state: GuestState, cq: Cq): void {
  state.queues.release(cq.queueId);
  if (cq.queueId2 !== null) state.queues.release(cq.queueId2);
  state.cqs.remove(cq);
  state.count("cqs", -1);
  state.count("queues", cq.queueId2 === null ? -1 : -2);
}

/**
 * REQ_NOTIFY_CQ `{cq, solicitedOnly}` -> `{}`: stores the arm word, exactly
 * what the driver does when it arms the CQ itself.
 */
export function reqNotifyCq(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op", "cq", "solicitedOnly"]);
  const cq = state.cqs.find(cmd);
  const solicitedOnly = boolField(cmd, "solicitedOnly", true);
  state.memory.storeU32(cq.armAddr, solicitedOnly ? CqArm.SOLICITED : CqArm.NEXT);
  return {};
}
