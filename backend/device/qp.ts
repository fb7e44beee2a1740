/**
 * CREATE_QP, QUERY_QP, DESTROY_QP. (MODIFY_QP is in `qp_modify.ts`.)
 *
 * @module
 */

import type { QpCap, QpType } from "../../protocol/verbs.ts";
import { addressVectorToWire, emptyAddressVector } from "./ah_attr.ts";
import {
  boolField,
  checkKeys,
  enumField,
  type Fields,
  fieldValue,
  intField,
  invalid,
  mapField,
} from "./fields.ts";
import type { GuestState } from "./guest_state.ts";
import type { Qp, QpAttrValues, Srq } from "./objects.ts";

const QP_TYPES: readonly QpType[] = ["RC", "UC", "UD"];
const CAP_KEYS = ["maxSendWr", "maxRecvWr", "maxSendSge", "maxRecvSge", "maxInlineData"];

/** Reads `cap`: WR counts within maxQpWr (a receive queue needs one), SGEs within maxSge. */
function readCap(state: GuestState, cmd: Fields, withSrq: boolean): QpCap {
  const map = mapField(cmd, "cap");
  checkKeys(map, CAP_KEYS, "cap.");
  const l = state.limits;
  const where = "cap.";
  return {
    maxSendWr: intField(map, "maxSendWr", { min: 1, max: l.maxQpWr, where }),
    maxRecvWr: intField(map, "maxRecvWr", { min: withSrq ? 0 : 1, max: l.maxQpWr, where }),
    maxSendSge: intField(map, "maxSendSge", { max: l.maxSge, where }),
    maxRecvSge: intField(map, "maxRecvSge", { max: l.maxSge, where }),
    maxInlineData: intField(map, "maxInlineData", { max: l.maxInlineData, where }),
  };
}

/** Attribute values of a new QP: zero, port 1, and the port MTU for UD (which cannot set one). */
function initialAttrs(state: GuestState, qpType: QpType): QpAttrValues {
  return {
    pathMtu: qpType === "UD" ? state.config.port.activeMtu : 256,
    qkey: 0,
    rqPsn: 0,
    sqPsn: 0,
    destQpNum: 0,
    qpAccessFlags: 0,
    ahAttr: emptyAddressVector(),
    pkeyIndex: 0,
    enSqdAsyncNotify: 0,
    maxRdAtomic: 0,
    maxDestRdAtomic: 0,
    minRnrTimer: 0,
    portNum: 1,
    timeout: 0,
    retryCnt: 0,
    rnrRetry: 0,
  };
}

/**
 * CREATE_QP `CreateQpArgs` -> `CreateQpResult`. The QP starts in RESET with
 * a host-unique QPN; its SQ (and RQ, without an SRQ) get doorbell queue ids.
 */
export function createQp(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op", "pd", "qpType", "sendCq", "recvCq", "srq", "cap", "sqSigAll", "sq", "rq"]);
  const pd = state.pds.find(cmd);
  const qpType = enumField(cmd, "qpType", QP_TYPES);
  const sendCq = state.cqs.find(cmd, "sendCq");
  const recvCq = state.cqs.find(cmd, "recvCq");
  const srq: Srq | null = fieldValue(cmd, "srq") === undefined ? null : state.srqs.find(cmd, "srq");
  const cap = readCap(state, cmd, srq !== null);
  const sqSigAll = boolField(cmd, "sqSigAll", true);
  const sqLayout = state.ring(cmd, "sq", { size: cap.maxSendWr, what: "cap.maxSendWr" });
  let rqLayout = null;
  if (srq !== null) {
    if (fieldValue(cmd, "rq") !== undefined) {
      throw invalid(`rq must be absent: receives come from srq ${srq.handle}`);
    }
  } else {
    if (fieldValue(cmd, "rq") === undefined) throw invalid("rq is missing and there is no srq");
    rqLayout = state.ring(cmd, "rq", { size: cap.maxRecvWr, what: "cap.maxRecvWr" });
  }
  state.qps.checkRoom(state.limits.maxQp);
  state.queues.checkRoom(rqLayout === null ? 1 : 2);
  let qp: Qp | undefined;
  state.host.allocQpn((qpNum) => {
    const sqQueue = state.queues.alloc();
    const rqQueue = rqLayout === null ? null : state.queues.alloc();
    qp = state.qps.add((handle): Qp => ({
      handle,
      guest: state.guest,
      live: true,
      qpNum,
      qpType,
      state: "RESET",
      pd,
      sendCq,
      recvCq,
      srq,
      cap,
      sqSigAll,
      sq: state.queueFor(sqLayout),
      sqQueue,
      rq: rqLayout === null ? null : state.queueFor(rqLayout),
      rqQueue,
      ...initialAttrs(state, qpType),
    }));
    return qp;
  });
  const made = qp!;
  state.queues.bind(made.sqQueue, { kind: "sq", object: made });
  if (made.rqQueue !== null) state.queues.bind(made.rqQueue, { kind: "rq", object: made });
  for (const used of [pd, sendCq, recvCq, srq]) if (used !== null) state.use(used);
  state.count("qps", 1);
  state.count("queues", made.rqQueue === null ? 1 : 2);
  const result: Fields = {
    qp: made.handle,
    qpNum: made.qpNum,
    sqQueue: made.sqQueue,
    cap: { ...cap },
  };
  if (made.rqQueue !== null) result.rqQueue = made.rqQueue;
  return result;
}

/** QUERY_QP `{qp}` -> `{state, qpType, qpNum, attr, cap, sqSigAll}` with every attribute. */
export function queryQp(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op", "qp"]);
  const qp = state.qps.find(cmd);
  return {
    state: qp.state,
    qpType: qp.qpType,
    qpNum: qp.qpNum,
    attr: {
      qpState: qp.state,
      curQpState: qp.state,
      pathMtu: qp.pathMtu,
      qkey: qp.qkey,
      rqPsn: qp.rqPsn,
      sqPsn: qp.sqPsn,
      destQpNum: qp.destQpNum,
      qpAccessFlags: qp.qpAccessFlags,
      ahAttr: addressVectorToWire(qp.ahAttr),
      pkeyIndex: qp.pkeyIndex,
      enSqdAsyncNotify: qp.enSqdAsyncNotify,
      maxRdAtomic: qp.maxRdAtomic,
      maxDestRdAtomic: qp.maxDestRdAtomic,
      minRnrTimer: qp.minRnrTimer,
      portNum: qp.portNum,
      timeout: qp.timeout,
      retryCnt: qp.retryCnt,
      rnrRetry: qp.rnrRetry,
    },
    cap: { ...qp.cap },
    sqSigAll: qp.sqSigAll,
  };
}

/** DESTROY_QP `{qp}` -> `{}`. */
export function destroyQpCommand(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op", "qp"]);
  destroyQp(state, state.qps.find(cmd));
  return {};
}

/**
 * Frees a QP: the destroy listeners hear of it first (the engine drops its
 * state), then its QPN, queue ids and its hold on the PD, CQs and SRQ go.
 */
export function destroyQp(state: GuestState, qp: Qp): void {
  state.emitDestroy(qp);
  state.host.releaseQpn(qp.qpNum);
  state.queues.release(qp.sqQueue);
  if (qp.rqQueue !== null) state.queues.release(qp.rqQueue);
  state.qps.remove(qp);
  for (const used of [qp.pd, qp.sendCq, qp.recvCq, qp.srq]) if (used !== null) state.unuse(used);
  state.count("qps", -1);
  state.count("queues", qp.rqQueue === null ? -1 : -2);
}
