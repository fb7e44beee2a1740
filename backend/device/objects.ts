/**
 * The verbs objects of the device model, as plain data.
 *
 * The model creates them from control commands and the data-path engine
 * reads them: a QP's queues, CQs, attributes and state, an MR's range and
 * access. Fields the engine may change (a QP's state through
 * `DeviceModel.moveQp`, an SRQ's limit once it fired) are mutable; the rest
 * is fixed for the object's life. `live` turns false when the object is
 * destroyed, so a reference the engine kept is recognisably stale.
 *
 * @module
 */

import type { AhAttr, QpCap, QpStateName, QpType } from "../../protocol/verbs.ts";
import type { DeviceQueue } from "../../virtqueue/device_queue.ts";
import type { GuestMemory } from "../../virtqueue/memory.ts";

/** Which guest an object belongs to: lets host-wide lookups reach its memory. */
export interface GuestRef {
  /** The guest number the model was given (its `GuestDevice` id). */
  readonly id: number;
  /** The guest's memory: every address of the object is in it. */
  readonly memory: GuestMemory;
}

/** Fields every object has. */
export interface ObjectBase {
  /** Handle, per guest and per kind, from 1, never reused while the guest lives. */
  readonly handle: number;
  /** The owning guest. */
  readonly guest: GuestRef;
  /** False once destroyed. */
  live: boolean;
}

/** A protection domain. */
export type Pd = ObjectBase;

/** A memory region. `lkey` and `rkey` are the same host-wide key, as in rxe. */
export interface Mr extends ObjectBase {
  /** Its protection domain. */
  readonly pd: Pd;
  /** Guest address of the first byte. */
  readonly addr: number;
  /** Length in bytes (at least 1). */
  readonly length: number;
  /** {@linkcode Access} bits. */
  readonly access: number;
  /** Local key: `(slot << 8) | tag`. */
  readonly lkey: number;
  /** Remote key: equal to `lkey`. */
  readonly rkey: number;
}

/** A completion queue. */
export interface Cq extends ObjectBase {
  /** CQE slots: the ring size (>= what was asked for). */
  readonly cqe: number;
  /** The ring the driver stocks with CQE slots. */
  readonly queue: DeviceQueue;
  /** Its doorbell queue id. */
  readonly queueId: number;
  /** A CQ above 32768 entries: the second ring, taking every odd completion. */
  readonly queue2: DeviceQueue | null;
  /** Doorbell queue id of `queue2`. */
  readonly queueId2: number | null;
  /** Guest address of the arm word and overrun counter ({@linkcode CqArm}). */
  readonly armAddr: number;
}

/** A shared receive queue. */
export interface Srq extends ObjectBase {
  /** Its protection domain (receive lkeys are checked against it). */
  readonly pd: Pd;
  /** Outstanding WRs allowed. */
  readonly maxWr: number;
  /** SGEs per WR. */
  readonly maxSge: number;
  /** SRQ_LIMIT_REACHED fires when fewer WRs than this remain; 0 = not armed. */
  srqLimit: number;
  /** The ring of receive WQEs. */
  readonly queue: DeviceQueue;
  /** Its doorbell queue id. */
  readonly queueId: number;
}

/** An address vector with every field filled in, and the GID parsed. */
export interface AddressVector extends Required<AhAttr> {
  /** `dgid` as 16 bytes in wire order. */
  readonly gid: Uint8Array;
}

/** An address handle. */
export interface Ah extends ObjectBase {
  /** Its protection domain. */
  readonly pd: Pd;
  /** Where it points. */
  readonly ahAttr: AddressVector;
}

/** Every QP attribute MODIFY_QP can set, with a value whether set or not. */
export interface QpAttrValues {
  /** Path MTU in bytes. UD QPs keep the port's active MTU. */
  pathMtu: number;
  /** Q_Key (UD). */
  qkey: number;
  /** Next expected receive PSN (24 bits). */
  rqPsn: number;
  /** Next send PSN (24 bits). */
  sqPsn: number;
  /** Destination QPN (RC, UC). */
  destQpNum: number;
  /** Remote access allowed on this QP ({@linkcode Access} bits). */
  qpAccessFlags: number;
  /** Primary path (RC, UC). */
  ahAttr: AddressVector;
  /** P_Key index. */
  pkeyIndex: number;
  /** Post SQ_DRAINED when the SQ has drained in SQD. */
  enSqdAsyncNotify: number;
  /** Outstanding RDMA READ/atomic as initiator. */
  maxRdAtomic: number;
  /** Outstanding RDMA READ/atomic as target. */
  maxDestRdAtomic: number;
  /** Minimum RNR NAK timer code (0..31). */
  minRnrTimer: number;
  /** Port number. */
  portNum: number;
  /** Local ack timeout code (0..31). */
  timeout: number;
  /** Retry count (0..7). */
  retryCnt: number;
  /** RNR retry count (0..7, 7 = infinite). */
  rnrRetry: number;
}

/** Names of the attributes in {@linkcode QpAttrValues}. */
export type QpAttrName = keyof QpAttrValues;

/** A queue pair. */
export interface Qp extends ObjectBase, QpAttrValues {
  /** QP number, unique on the host (24 bits). */
  readonly qpNum: number;
  /** Transport. */
  readonly qpType: QpType;
  /** Current state. */
  state: QpStateName;
  /** Its protection domain. */
  readonly pd: Pd;
  /** CQ for send completions. */
  readonly sendCq: Cq;
  /** CQ for receive completions. */
  readonly recvCq: Cq;
  /** SRQ receives come from, or null. */
  readonly srq: Srq | null;
  /** Capabilities as granted. */
  readonly cap: Readonly<QpCap>;
  /** Every send WR completes (`sq_sig_all`). */
  readonly sqSigAll: boolean;
  /** Send queue ring. */
  readonly sq: DeviceQueue;
  /** Doorbell queue id of the SQ. */
  readonly sqQueue: number;
  /** Receive queue ring, or null with an SRQ. */
  readonly rq: DeviceQueue | null;
  /** Doorbell queue id of the RQ, or null with an SRQ. */
  readonly rqQueue: number | null;
}

/** What a doorbell queue id belongs to. */
export type QueueOwner =
  | { readonly kind: "sq"; readonly object: Qp }
  | { readonly kind: "rq"; readonly object: Qp }
  | { readonly kind: "srq"; readonly object: Srq }
  | { readonly kind: "cq"; readonly object: Cq };
