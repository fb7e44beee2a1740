/**
 * Public types of the guest verbs API: work requests, work completions and
 * the arguments of the create calls, named as libibverbs names them in
 * camelCase. Also the narrow view of a device the verbs objects work
 * against ({@linkcode VerbsDevice}), so they can run over a fake in tests.
 *
 * @module
 */

import type { DeviceAttr, PortAttr } from "../protocol/device_config.ts";
import type {
  AhAttr,
  QpAttr,
  QpCap,
  QpStateName,
  QpType,
  WcOpcodeName,
  WcStatusName,
  WrOpcodeName,
} from "../protocol/verbs.ts";
import type { GuestMemory } from "../virtqueue/memory.ts";
import type { RangeAllocator } from "./allocator.ts";
import type { VerbsError } from "./errors.ts";
import type { Ah } from "./ah.ts";
import type { Cq } from "./cq.ts";
import type { Srq } from "./srq.ts";

export type {
  AhAttr,
  QpAttr,
  QpCap,
  QpStateName,
  QpType,
  WcOpcodeName,
  WcStatusName,
  WrOpcodeName,
};

/** One scatter/gather entry (`struct ibv_sge`). */
export interface Sge {
  /** Guest address of the first byte. */
  addr: bigint;
  /** Bytes (u32). */
  length: number;
  /** Local key of the MR holding the range (not checked for INLINE sends). */
  lkey: number;
}

/** Remote side of an RDMA WRITE or READ. */
export interface RdmaInfo {
  /** Guest address in the remote MR. */
  remoteAddr: bigint;
  /** Remote key of that MR. */
  rkey: number;
}

/** Operands of an atomic WR. */
export interface AtomicInfo {
  /** Guest address of the remote 8 bytes: must be 8-byte aligned. */
  remoteAddr: bigint;
  /** Remote key of the MR holding it. */
  rkey: number;
  /** Compare value (CMP_AND_SWP) or addend (FETCH_AND_ADD), u64. */
  compareAdd: bigint;
  /** Swap value (CMP_AND_SWP only), u64. */
  swap?: bigint;
}

/** Destination of a UD send. */
export interface UdInfo {
  /** Address handle of the destination port. */
  ah: Ah;
  /** Destination QP number (24 bits). */
  remoteQpn: number;
  /** Destination Q_Key (u32). */
  remoteQkey: number;
}

/** A send work request (`struct ibv_send_wr`). */
export interface SendWr {
  /** Returned in the completion (u64). */
  wrId: bigint;
  /** What to do. */
  opcode: WrOpcodeName;
  /** `SendFlags` bits (SIGNALED, FENCE, SOLICITED, INLINE). Default 0. */
  sendFlags?: number;
  /** Local buffers: the data to send or write, or where a READ/atomic result goes. Default none. */
  sgList?: readonly Sge[];
  /** Immediate data (u32): required by SEND_WITH_IMM and RDMA_WRITE_WITH_IMM. */
  immData?: number;
  /** Remote buffer of RDMA_WRITE(_WITH_IMM) and RDMA_READ. */
  rdma?: RdmaInfo;
  /** Operands of ATOMIC_CMP_AND_SWP and ATOMIC_FETCH_AND_ADD. */
  atomic?: AtomicInfo;
  /** Destination on a UD QP. */
  ud?: UdInfo;
}

/** A receive work request (`struct ibv_recv_wr`). */
export interface RecvWr {
  /** Returned in the completion (u64). */
  wrId: bigint;
  /** Where incoming data goes. Default none (a zero-length receive). */
  sgList?: readonly Sge[];
}

/** A work completion (`struct ibv_wc`). */
export interface WorkCompletion {
  /** The WR's `wrId`. */
  wrId: bigint;
  /** Outcome. */
  status: WcStatusName;
  /** What completed (meaningful on success). */
  opcode: WcOpcodeName;
  /** Bytes transferred; for UD receives including the 40-byte GRH. */
  byteLen: number;
  /** Immediate data; present only when `wcFlags` has `WcFlags.WITH_IMM`. */
  immData?: number;
  /** The local QP number. */
  qpNum: number;
  /** The remote QP number (receives). */
  srcQp: number;
  /** `WcFlags` bits (GRH, WITH_IMM). */
  wcFlags: number;
}

/** Arguments of `dev.createCq` (`ibv_create_cq`). */
export interface CqInit {
  /** Completions the CQ must hold at least; it gets the next power of two. */
  cqe: number;
}

/** Arguments of `pd.createQp` (`struct ibv_qp_init_attr`). */
export interface QpInit {
  /** Transport. */
  qpType: QpType;
  /** CQ for send completions. */
  sendCq: Cq;
  /** CQ for receive completions. */
  recvCq: Cq;
  /** Shared receive queue; the QP then has no RQ of its own (set `cap.maxRecvWr` 0). */
  srq?: Srq;
  /** Requested capabilities. */
  cap: QpCap;
  /** Every send WR completes, SIGNALED or not. */
  sqSigAll?: boolean;
}

/** Arguments of `pd.createSrq` (`struct ibv_srq_init_attr`). */
export interface SrqInit {
  /** Outstanding receive WRs. */
  maxWr: number;
  /** SGEs per receive WR. */
  maxSge: number;
  /** Fire SRQ_LIMIT_REACHED when fewer WRs remain (0: not armed). */
  srqLimit?: number;
}

/** What two peers exchange out of band before connecting (as ibv_rc_pingpong does). */
export interface ConnectionInfo {
  /** The peer's QP number. */
  qpNum: number;
  /** The peer's initial PSN (its send PSN, our receive PSN). */
  psn: number;
  /** The peer's GID as IPv6 text. */
  gid: string;
}

/**
 * Overrides for {@linkcode Qp.connect}'s attributes; each left out keeps the
 * usual value (in brackets). The reliability ones apply to RC only.
 */
export interface ConnectOptions {
  /** Remote access the QP allows [REMOTE_WRITE | REMOTE_READ | REMOTE_ATOMIC]. */
  accessFlags?: number;
  /** Path MTU in bytes [the port's active MTU]. */
  pathMtu?: number;
  /** Outstanding READ/atomic as target [16]. */
  maxDestRdAtomic?: number;
  /** The RNR timer code senders are asked to wait [12]. */
  minRnrTimer?: number;
  /** This QP's first send PSN [{@linkcode Qp.psn}]. */
  sqPsn?: number;
  /** Local ACK timeout code, 4.096 us * 2^timeout [14]. */
  timeout?: number;
  /** Transport retries [7]. */
  retryCnt?: number;
  /** RNR retries, 7 = infinite [7]. */
  rnrRetry?: number;
  /** Outstanding READ/atomic as initiator [16]. */
  maxRdAtomic?: number;
}

/** What `qp.query()` returns (`ibv_query_qp`). */
export interface QpQueryResult {
  /** Current state. */
  state: QpStateName;
  /** Transport. */
  qpType: QpType;
  /** QP number. */
  qpNum: number;
  /** Every attribute. */
  attr: QpAttr;
  /** Capabilities. */
  cap: QpCap;
  /** Every send WR completes. */
  sqSigAll: boolean;
}

/**
 * @internal What the verbs objects need from a device: `Device` provides
 * it, and tests can provide a fake.
 */
export interface VerbsDevice {
  /** Device limits. */
  readonly attr: DeviceAttr;
  /** Every ring of this device uses VIRTIO_RING_F_EVENT_IDX. */
  readonly eventIdx: boolean;
  /** Guest memory. */
  readonly memory: GuestMemory;
  /** Allocator over guest memory. */
  readonly allocator: RangeAllocator;
  /** The device's error once it is closed or failed, else null. */
  readonly error: VerbsError | null;
  /** Throws {@linkcode VerbsDevice.error} when it is set. */
  checkUsable(): void;
  /** Runs a control command; rejects with a `VerbsError`. */
  command(op: number, args?: Record<string, unknown>): Promise<Record<string, unknown>>;
  /** Rings the doorbell of queue `queue`. */
  ring(queue: number): void;
  /** Subscribes to COMPLETION events; returns the unsubscribe function. */
  onCompletion(cq: number, listener: () => void): () => void;
  /** Subscribes to device failure; returns the unsubscribe function. */
  onFail(listener: (error: VerbsError) => void): () => void;
  /** Port attributes. */
  queryPort(portNum: number): PortAttr;
}
