/**
 * The verbs part of the device interface: flags and enums named as
 * libibverbs names them, the fixed binary layouts of work queue entries
 * (WQEs) and completion queue entries (CQEs), and the shapes of the control
 * commands that create and change verbs objects. Both sides import this file;
 * it imports nothing from either side.
 *
 * Queues of verbs objects are ordinary split virtqueues in guest memory:
 * - SQ, RQ, SRQ: each WR is a chain of one device-readable buffer holding one
 *   WQE ({@linkcode WQE_HEADER_BYTES} header, then SGEs or inline data). The
 *   device marks the chain used when the WR is retired, which frees its slot.
 * - CQ: the driver keeps it stocked with device-writable slots of
 *   {@linkcode CQE_BYTES}; the device writes one CQE per slot and marks it used,
 *   so polling is reading the used ring.
 * - A CQ also has an 8-byte arm word in guest memory
 *   ({@linkcode CqArm}): the driver stores the arm state there (no command
 *   round trip), the device takes it when it writes a CQE and posts a
 *   COMPLETION event on the event queue.
 * Each created queue gets a queue id from the device: its doorbell bit.
 *
 * @module
 */

/** MR access flags and QP access flags (`enum ibv_access_flags`). */
export const Access = {
  LOCAL_WRITE: 1,
  REMOTE_WRITE: 2,
  REMOTE_READ: 4,
  REMOTE_ATOMIC: 8,
  MW_BIND: 16,
  ZERO_BASED: 32,
  ON_DEMAND: 64,
} as const;

/** Every access bit vrdma knows; others are EINVAL. */
export const ACCESS_MASK = 0x7f;

/** Send flags of a send WR (`enum ibv_send_flags`). */
export const SendFlags = {
  FENCE: 1,
  SIGNALED: 2,
  SOLICITED: 4,
  INLINE: 8,
} as const;

/** Work completion flags (`enum ibv_wc_flags`). */
export const WcFlags = {
  GRH: 1,
  WITH_IMM: 2,
} as const;

/** Send WR opcodes, numbered as `enum ibv_wr_opcode`. */
export const WrOpcode = {
  RDMA_WRITE: 0,
  RDMA_WRITE_WITH_IMM: 1,
  SEND: 2,
  SEND_WITH_IMM: 3,
  RDMA_READ: 4,
  ATOMIC_CMP_AND_SWP: 5,
  ATOMIC_FETCH_AND_ADD: 6,
} as const;

/** A send WR opcode name. */
export type WrOpcodeName = keyof typeof WrOpcode;

/** Receive WQEs carry this opcode so a stray send WQE on an RQ is recognised. */
export const RECV_OPCODE = 0x80;

/** Work completion opcodes, numbered as `enum ibv_wc_opcode`. */
export const WcOpcode = {
  SEND: 0,
  RDMA_WRITE: 1,
  RDMA_READ: 2,
  COMP_SWAP: 3,
  FETCH_ADD: 4,
  BIND_MW: 5,
  RECV: 128,
  RECV_RDMA_WITH_IMM: 129,
} as const;

/** A work completion opcode name. */
export type WcOpcodeName = keyof typeof WcOpcode;

/** Work completion statuses, numbered as `enum ibv_wc_status`. */
export const WcStatus = {
  SUCCESS: 0,
  LOC_LEN_ERR: 1,
  LOC_QP_OP_ERR: 2,
  LOC_EEC_OP_ERR: 3,
  LOC_PROT_ERR: 4,
  WR_FLUSH_ERR: 5,
  MW_BIND_ERR: 6,
  BAD_RESP_ERR: 7,
  LOC_ACCESS_ERR: 8,
  REM_INV_REQ_ERR: 9,
  REM_ACCESS_ERR: 10,
  REM_OP_ERR: 11,
  RETRY_EXC_ERR: 12,
  RNR_RETRY_EXC_ERR: 13,
  LOC_RDD_VIOL_ERR: 14,
  REM_INV_RD_REQ_ERR: 15,
  REM_ABORT_ERR: 16,
  INV_EECN_ERR: 17,
  INV_EEC_STATE_ERR: 18,
  FATAL_ERR: 19,
  RESP_TIMEOUT_ERR: 20,
  GENERAL_ERR: 21,
} as const;

/** A work completion status name. */
export type WcStatusName = keyof typeof WcStatus;

/** QP states, numbered as `enum ibv_qp_state`. */
export const QpState = {
  RESET: 0,
  INIT: 1,
  RTR: 2,
  RTS: 3,
  SQD: 4,
  SQE: 5,
  ERR: 6,
} as const;

/** A QP state name. */
export type QpStateName = keyof typeof QpState;

/** QP transport types. */
export type QpType = "RC" | "UC" | "UD";

/** Reverse lookup: the name of `value` in one of the tables above. */
export function nameOf<T extends Record<string, number>>(
  table: T,
  value: number,
): keyof T | undefined {
  for (const [name, v] of Object.entries(table)) if (v === value) return name as keyof T;
  return undefined;
}

// ---------------------------------------------------------------------------
// WQE layout (little-endian)
// ---------------------------------------------------------------------------

/**
 * Offsets in a WQE header. Send and receive WQEs share it; a receive WQE
 * uses only `wrId`, `opcode` (= {@linkcode RECV_OPCODE}) and `numSge`.
 */
export const Wqe = {
  /** u64 work request id, returned in the completion. */
  WR_ID: 0,
  /** u8 {@linkcode WrOpcode} (send) or {@linkcode RECV_OPCODE}. */
  OPCODE: 8,
  /** u8 {@linkcode SendFlags}. */
  FLAGS: 9,
  /** u16 scatter/gather entries after the header (0 with INLINE). */
  NUM_SGE: 10,
  /** u32 immediate data (network order value as the application gave it). */
  IMM_DATA: 12,
  /** u64 remote address (RDMA and atomic). */
  REMOTE_ADDR: 16,
  /** u32 remote key (RDMA and atomic). */
  RKEY: 24,
  /** u32 bytes of inline data after the header (INLINE only). */
  INLINE_LEN: 28,
  /** u64 compare (CMP_AND_SWP) or add (FETCH_AND_ADD) operand. */
  COMPARE_ADD: 32,
  /** u64 swap operand (CMP_AND_SWP). */
  SWAP: 40,
  /** u32 address handle (UD). */
  AH: 48,
  /** u32 remote QPN (UD). */
  REMOTE_QPN: 52,
  /** u32 remote Q_Key (UD). */
  REMOTE_QKEY: 56,
} as const;

/** Bytes of a WQE header; SGEs or inline data follow. */
export const WQE_HEADER_BYTES = 64;
/** Bytes of one SGE: addr u64, length u32, lkey u32. */
export const SGE_BYTES = 16;

/** Bytes a WQE slot needs for `maxSge` SGEs or `maxInline` inline bytes, 64-aligned. */
export function wqeSlotBytes(maxSge: number, maxInline = 0): number {
  const body = Math.max(maxSge * SGE_BYTES, maxInline);
  return Math.ceil((WQE_HEADER_BYTES + body) / 64) * 64;
}

// ---------------------------------------------------------------------------
// CQE layout (little-endian)
// ---------------------------------------------------------------------------

/** Offsets in a CQE. */
export const Cqe = {
  /** u64 work request id. */
  WR_ID: 0,
  /** u8 {@linkcode WcStatus}. */
  STATUS: 8,
  /** u8 {@linkcode WcOpcode}. */
  OPCODE: 9,
  /** u16 {@linkcode WcFlags}. */
  WC_FLAGS: 10,
  /** u32 bytes transferred (receives: bytes placed, GRH included for UD). */
  BYTE_LEN: 12,
  /** u32 immediate data (valid with WITH_IMM). */
  IMM_DATA: 16,
  /** u32 local QP number. */
  QP_NUM: 20,
  /** u32 source QP number (receives). */
  SRC_QP: 24,
  /** u32 vendor error (a vrdma reason code for errors, 0 otherwise). */
  VENDOR_ERR: 28,
  /** u16 P_Key index. */
  PKEY_INDEX: 32,
  /** u8 service level. */
  SL: 34,
  /** u8 DLID path bits. */
  DLID_PATH_BITS: 35,
  /** u32 source LID (0 on RoCE). */
  SLID: 36,
} as const;

/** Bytes of one CQE slot. */
export const CQE_BYTES = 40;

/**
 * The CQ arm word (u32 at the CQ's `armAddr`, 4-byte aligned) and, right
 * after it, a u32 the device bumps on every overrun.
 */
export const CqArm = {
  /** Not armed. */
  NONE: 0,
  /** Post a COMPLETION event for the next completion. */
  NEXT: 1,
  /** Post a COMPLETION event for the next solicited (or error) completion. */
  SOLICITED: 2,
} as const;

/** Bytes of a CQ's arm area: arm u32, overrun counter u32. */
export const CQ_ARM_BYTES = 8;

// ---------------------------------------------------------------------------
// Control command shapes (CBOR maps on the control queue)
// ---------------------------------------------------------------------------

/** A split ring's placement in guest memory, as commands carry it. */
export interface RingDesc {
  /** Entries: a power of two. */
  size: number;
  /** Guest address of the descriptor table (16-aligned). */
  desc: number;
  /** Guest address of the available ring (2-aligned). */
  avail: number;
  /** Guest address of the used ring (4-aligned). */
  used: number;
}

/** QP capabilities (`struct ibv_qp_cap`). */
export interface QpCap {
  /** Outstanding send WRs. */
  maxSendWr: number;
  /** Outstanding receive WRs (0 with an SRQ). */
  maxRecvWr: number;
  /** SGEs per send WR. */
  maxSendSge: number;
  /** SGEs per receive WR. */
  maxRecvSge: number;
  /** Inline bytes per send WR. */
  maxInlineData: number;
}

/** Address vector (`struct ibv_ah_attr`), RoCE form. */
export interface AhAttr {
  /** Destination GID as IPv6 text (`::ffff:127.0.0.3`). */
  dgid: string;
  /** Local port: 1. */
  portNum?: number;
  /** Source GID index: 0. */
  sgidIndex?: number;
  /** Hop limit (IPv4 TTL). */
  hopLimit?: number;
  /** Traffic class (DSCP/ECN). */
  trafficClass?: number;
  /** Flow label. */
  flowLabel?: number;
  /** Service level. */
  sl?: number;
}

/** QP attributes as `MODIFY_QP` carries them; only present keys are applied. */
export interface QpAttr {
  /** Target state. */
  qpState?: QpStateName;
  /** Assumed current state. */
  curQpState?: QpStateName;
  /** Path MTU in bytes (256..4096). */
  pathMtu?: number;
  /** Q_Key (UD). */
  qkey?: number;
  /** Receive PSN (24 bits). */
  rqPsn?: number;
  /** Send PSN (24 bits). */
  sqPsn?: number;
  /** Destination QPN (RC/UC). */
  destQpNum?: number;
  /** Remote access allowed on this QP ({@linkcode Access} bits). */
  qpAccessFlags?: number;
  /** Primary path. */
  ahAttr?: AhAttr;
  /** P_Key index. */
  pkeyIndex?: number;
  /** Enable the SQ drained async event. */
  enSqdAsyncNotify?: number;
  /** Outstanding RDMA READ/atomic as initiator. */
  maxRdAtomic?: number;
  /** Outstanding RDMA READ/atomic as target. */
  maxDestRdAtomic?: number;
  /** Minimum RNR NAK timer code (0..31). */
  minRnrTimer?: number;
  /** Port number. */
  portNum?: number;
  /** Local ack timeout code (0..31): 4.096 us * 2^timeout. */
  timeout?: number;
  /** Retry count (0..7). */
  retryCnt?: number;
  /** RNR retry count (0..7, 7 = infinite). */
  rnrRetry?: number;
}

/** `CREATE_QP` arguments. */
export interface CreateQpArgs {
  /** Protection domain handle. */
  pd: number;
  /** Transport. */
  qpType: QpType;
  /** CQ handle for send completions. */
  sendCq: number;
  /** CQ handle for receive completions. */
  recvCq: number;
  /** SRQ handle, when receives come from an SRQ. */
  srq?: number;
  /** Requested capabilities. */
  cap: QpCap;
  /** Every send WR generates a completion (`sq_sig_all`). */
  sqSigAll?: boolean;
  /** The SQ ring (size >= cap.maxSendWr). */
  sq: RingDesc;
  /** The RQ ring (absent with an SRQ). */
  rq?: RingDesc;
}

/** `CREATE_QP` result fields. */
export interface CreateQpResult {
  /** QP handle (per guest). */
  qp: number;
  /** QP number (per host, 24 bits). */
  qpNum: number;
  /** Doorbell queue id of the SQ. */
  sqQueue: number;
  /** Doorbell queue id of the RQ (absent with an SRQ). */
  rqQueue?: number;
  /** Granted capabilities (>= requested). */
  cap: QpCap;
}
