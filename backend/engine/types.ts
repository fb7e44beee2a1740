/**
 * What the data-path engine needs from the device model's objects. The
 * model's own types satisfy these structurally; the engine reads and writes
 * only the fields named here.
 *
 * @module
 */

import type { DeviceQueue } from "../../virtqueue/device_queue.ts";
import type { GuestMemory } from "../../virtqueue/memory.ts";
import type { DeviceEvent } from "../../protocol/device_interface.ts";
import type { AhAttr, QpCap, QpStateName, QpType } from "../../protocol/verbs.ts";
import type { Counters } from "../data_plane/stats.ts";

/** A protection domain. */
export interface EnginePd {
  /** Handle in its guest. */
  readonly handle: number;
}

/** A memory region. */
export interface EngineMr {
  /** Handle in its guest. */
  readonly handle: number;
  /** Its protection domain. */
  readonly pd: EnginePd;
  /** Guest address of the first byte. */
  readonly addr: number;
  /** Bytes. */
  readonly length: number;
  /** Access flags (`Access`). */
  readonly access: number;
  /** Local key. */
  readonly lkey: number;
  /** Remote key. */
  readonly rkey: number;
}

/** A completion queue. */
export interface EngineCq {
  /** Handle in its guest. */
  readonly handle: number;
  /** Its virtqueue of CQE slots. */
  readonly queue: DeviceQueue;
  /** A second ring (CQs above 32768 entries): completion k goes to ring k mod 2. */
  readonly queue2: DeviceQueue | null;
  /** Guest address of the arm word. */
  readonly armAddr: number;
}

/** A shared receive queue. */
export interface EngineSrq {
  /** Handle in its guest. */
  readonly handle: number;
  /** Its protection domain. */
  readonly pd: EnginePd;
  /** Its virtqueue of receive WQEs. */
  readonly queue: DeviceQueue;
  /** SGEs per receive WR. */
  readonly maxSge: number;
  /** Limit for SRQ_LIMIT_REACHED; 0 = not armed. */
  srqLimit: number;
}

/** An address handle. */
export interface EngineAh {
  /** Handle in its guest. */
  readonly handle: number;
  /** Its protection domain. */
  readonly pd: EnginePd;
  /** Where it points. */
  readonly ahAttr: AhAttr;
}

/** A queue pair. */
export interface EngineQp {
  /** Handle in its guest. */
  readonly handle: number;
  /** QP number on this host. */
  readonly qpNum: number;
  /** Transport. */
  readonly qpType: QpType;
  /** Current state. */
  state: QpStateName;
  /** Its protection domain. */
  readonly pd: EnginePd;
  /** Send completions go here. */
  readonly sendCq: EngineCq;
  /** Receive completions go here. */
  readonly recvCq: EngineCq;
  /** Receives come from here instead of `rq`, or null. */
  readonly srq: EngineSrq | null;
  /** Capabilities. */
  readonly cap: QpCap;
  /** Every send WR completes. */
  readonly sqSigAll: boolean;
  /** Send queue. */
  readonly sq: DeviceQueue;
  /** Receive queue, or null with an SRQ. */
  readonly rq: DeviceQueue | null;
  /** Destination QPN (RC, UC). */
  readonly destQpNum: number;
  /** Remote access allowed on this QP. */
  readonly qpAccessFlags: number;
  /** Primary path (RC, UC). */
  readonly ahAttr: AhAttr;
  /** Q_Key (UD). */
  readonly qkey: number;
  /** Minimum RNR NAK timer code this QP asks senders to wait. */
  readonly minRnrTimer: number;
  /** RNR retries (7 = infinite). */
  readonly rnrRetry: number;
  /** Transport retries. */
  readonly retryCnt: number;
  /** Local ACK timeout code. */
  readonly timeout: number;
  /** Path MTU in bytes. */
  readonly pathMtu: number;
  /** First PSN the send queue uses (RTS). */
  readonly sqPsn: number;
  /** First PSN the receive side expects (RTR). */
  readonly rqPsn: number;
  /** READs and atomics this QP may have outstanding as requester. */
  readonly maxRdAtomic: number;
  /** READs and atomics this QP keeps answers for as responder. */
  readonly maxDestRdAtomic: number;
}

/** One guest as the engine sees it. */
export interface EngineGuest {
  /** Guest number. */
  readonly id: number;
  /** Its memory. */
  readonly memory: GuestMemory;
  /** Delivers an event on its event queue. */
  postEvent(event: DeviceEvent): void;
  /** Resolves an address handle of this guest. */
  ah(handle: number): EngineAh | undefined;
  /** Moves a QP to a new state as the device does by itself (errors, drained SQ). */
  moveQp(qp: EngineQp, to: QpStateName): void;
  /**
   * Reports that one of `qp`'s queues (its SQ, RQ or SRQ) broke while the
   * device read it. Harmless when none did, and for a queue already reported.
   */
  queueBroken?(qp: EngineQp): void;
  /**
   * The backend's counters, for what the engine counts where it has no
   * counters of its own at hand (receive WQEs taken, on either path).
   * Optional so test guests need not carry one.
   */
  readonly counters?: Counters;
}

/** Host-wide lookups shared by every guest. */
export interface EngineHost {
  /** This host's GID (`::ffff:a.b.c.d`). */
  readonly gid: string;
  /** This host's IPv4 address. */
  readonly ip: string;
  /** A QP on this host by number, with its guest. */
  qp(qpNum: number): { qp: EngineQp; guest: EngineGuest } | undefined;
  /** A live MR by lkey or rkey (tag checked), with its guest. */
  mr(key: number): { mr: EngineMr; guest: EngineGuest } | undefined;
}
