/**
 * CREATE_SRQ, MODIFY_SRQ, DESTROY_SRQ, CREATE_AH, DESTROY_AH.
 *
 * @module
 */

import { Errno } from "../../protocol/device_interface.ts";
import { parseAddressVector } from "./ah_attr.ts";
import {
  checkKeys,
  CommandError,
  type Fields,
  fieldValue,
  intField,
  invalid,
  mapField,
} from "./fields.ts";
import type { GuestState } from "./guest_state.ts";
import type { Ah, Srq } from "./objects.ts";

/**
 * CREATE_SRQ `{pd, maxWr, maxSge, srqLimit?, ring}` -> `{srq, queue, maxWr, maxSge}`.
 * `srqLimit` (default 0, not armed) may not exceed `maxWr`.
 */
export function createSrq(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op", "pd", "maxWr", "maxSge", "srqLimit", "ring"]);
  const pd = state.pds.find(cmd);
  const l = state.limits;
  const maxWr = intField(cmd, "maxWr", { min: 1, max: l.maxSrqWr });
  const maxSge = intField(cmd, "maxSge", { min: 1, max: l.maxSrqSge });
  const srqLimit = intField(cmd, "srqLimit", { optional: true });
  if (srqLimit > maxWr) throw invalid(`srqLimit ${srqLimit} exceeds maxWr ${maxWr}`);
  const layout = state.ring(cmd, "ring", { size: maxWr, what: "maxWr" });
  state.srqs.checkRoom(l.maxSrq);
  state.queues.checkRoom(1);
  const queueId = state.queues.alloc();
  const srq = state.srqs.add((handle): Srq => ({
    handle,
    guest: state.guest,
    live: true,
    pd,
    maxWr,
    maxSge,
    srqLimit,
    queue: state.queueFor(layout),
    queueId,
  }));
  state.queues.bind(queueId, { kind: "srq", object: srq });
  state.use(pd);
  state.count("srqs", 1);
  state.count("queues", 1);
  return { srq: srq.handle, queue: queueId, maxWr, maxSge };
}

/**
 * MODIFY_SRQ `{srq, srqLimit?, maxWr?}` -> `{}`. A `srqLimit` (<= maxWr)
 * arms SRQ_LIMIT_REACHED (0 disarms); resizing with `maxWr` is EOPNOTSUPP.
 */
export function modifySrq(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op", "srq", "srqLimit", "maxWr"]);
  const srq = state.srqs.find(cmd);
  if (fieldValue(cmd, "maxWr") !== undefined) {
    throw new CommandError(
      Errno.EOPNOTSUPP,
      `srq ${srq.handle}: resizing (maxWr) is not supported`,
    );
  }
  if (fieldValue(cmd, "srqLimit") !== undefined) {
    const srqLimit = intField(cmd, "srqLimit");
    if (srqLimit > srq.maxWr) throw invalid(`srqLimit ${srqLimit} exceeds maxWr ${srq.maxWr}`);
    srq.srqLimit = srqLimit;
  }
  return {};
}

/** DESTROY_SRQ `{srq}` -> `{}`; EBUSY while a QP uses it. */
export function destroySrqCommand(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op", "srq"]);
  const srq = state.srqs.find(cmd);
  state.checkUnused(srq, "srq", "QPs");
  destroySrq(state, srq);
  return {};
}

/** Frees an SRQ no QP uses. */
export function destroySrq(state: GuestState, srq: Srq): void {
  state.queues.release(srq.queueId);
  state.srqs.remove(srq);
  state.unuse(srq.pd);
  state.count("srqs", -1);
  state.count("queues", -1);
}

/** CREATE_AH `{pd, ahAttr}` -> `{ah}`. */
export function createAh(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op", "pd", "ahAttr"]);
  const pd = state.pds.find(cmd);
  const ahAttr = parseAddressVector(mapField(cmd, "ahAttr"), state.config.gids.length);
  state.ahs.checkRoom(state.limits.maxAh);
  const ah = state.ahs.add((handle): Ah => ({
    handle,
    guest: state.guest,
    live: true,
    pd,
    ahAttr,
  }));
  state.use(pd);
  state.count("ahs", 1);
  return { ah: ah.handle };
}

/** DESTROY_AH `{ah}` -> `{}`. */
export function destroyAhCommand(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op", "ah"]);
  destroyAh(state, state.ahs.find(cmd));
  return {};
}

/** Frees an AH. */
export function destroyAh(state: GuestState, ah: Ah): void {
  state.ahs.remove(ah);
  state.unuse(ah.pd);
  state.count("ahs", -1);
}
