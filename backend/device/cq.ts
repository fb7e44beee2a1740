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

/** CREATE_CQ `{cqe, ring, armAddr}` -> `{cq, queue, cqe}` (`cqe` = the ring size). */
export function createCq(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op", "cqe", "ring", "armAddr"]);
  const cqe = intField(cmd, "cqe", { min: 1, max: 0xffff_ffff });
  if (cqe > state.limits.maxCqe) throw invalid(`cqe ${cqe} exceeds maxCqe ${state.limits.maxCqe}`);
  const layout = state.ring(cmd, "ring", { size: cqe, what: "cqe" });
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
  state.queues.checkRoom(1);
  const queueId = state.queues.alloc();
  const cq = state.cqs.add((handle): Cq => ({
    handle,
    guest: state.guest,
    live: true,
    cqe: layout.size,
    queue: state.queueFor(layout),
    queueId,
    armAddr,
  }));
  state.queues.bind(queueId, { kind: "cq", object: cq });
  state.count("cqs", 1);
  state.count("queues", 1);
  return { cq: cq.handle, queue: queueId, cqe: cq.cqe };
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
  state.cqs.remove(cq);
  state.count("cqs", -1);
  state.count("queues", -1);
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
