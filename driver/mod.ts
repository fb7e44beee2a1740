/**
 * The guest-side driver: open a vrdma device and use it with ibverbs-style
 * verbs.
 *
 * @module
 */

export { Device, GUEST_BASE, openDevice } from "./device.ts";
export type { AsyncEvent, GuestBuffer, OpenDeviceOptions } from "./device.ts";
export { VerbsError } from "./errors.ts";
export { Pd } from "./pd.ts";
export { Mr } from "./mr.ts";
export type { MrRange } from "./mr.ts";
export { Cq } from "./cq.ts";
export { MAX_INLINE_DATA, Qp } from "./qp.ts";
export { Srq } from "./srq.ts";
export { Ah } from "./ah.ts";
export {
  Access,
  QpState,
  SendFlags,
  WcFlags,
  WcOpcode,
  WcStatus,
  WrOpcode,
} from "../protocol/verbs.ts";
export type {
  AhAttr,
  AtomicInfo,
  ConnectionInfo,
  ConnectOptions,
  CqInit,
  QpAttr,
  QpCap,
  QpInit,
  QpQueryResult,
  QpStateName,
  QpType,
  RdmaInfo,
  RecvWr,
  SendWr,
  Sge,
  SrqInit,
  UdInfo,
  WcOpcodeName,
  WcStatusName,
  WorkCompletion,
  WrOpcodeName,
} from "./types.ts";
