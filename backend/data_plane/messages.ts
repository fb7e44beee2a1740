/**
 * Commands from the service thread to the data-plane Worker, and its replies.
 *
 * The Worker spends its life blocked in `epoll_wait` (FFI), where it cannot
 * receive `postMessage`. So every command is posted first and then announced
 * by one write to the Worker's control eventfd; the eventfd's counter tells
 * the Worker how many commands to wait for before it goes back to sleep.
 *
 * @module
 */

import type { QueueLayout } from "../../virtqueue/layout.ts";
import type { QpCounters } from "../adapter/qp_counters.ts";

/** A guest memory region as the Worker maps it: the service thread's mapping, by address. */
export interface RegionMapping {
  /** Guest address of the first byte. */
  guestAddr: number;
  /** Bytes in the region. */
  size: number;
  /** Process address of the mapping (`SharedMemory.address`), rebuilt in the Worker. */
  hostAddr: bigint;
}

/** Everything the Worker needs to know about one virtqueue. */
export interface VringSetup {
  /** Queue index. */
  index: number;
  /** Where the rings are, in guest addresses. */
  layout: QueueLayout;
  /** The available index the device resumes from (SET_VRING_BASE). */
  base: number;
  /** VIRTIO_RING_F_EVENT_IDX was negotiated. */
  eventIdx: boolean;
  /** VIRTIO_RING_F_INDIRECT_DESC was negotiated. */
  indirect: boolean;
}

/** A command to the data-plane Worker. */
export type DataPlaneCommand =
  | { cmd: "addGuest"; guest: number; ip: string }
  | { cmd: "setMemory"; guest: number; regions: RegionMapping[] }
  | { cmd: "setVring"; guest: number; vring: VringSetup }
  | { cmd: "enableVring"; guest: number; index: number; enabled: boolean }
  | { cmd: "stopVring"; guest: number; index: number }
  | { cmd: "setKick"; guest: number; index: number; fd: number }
  | { cmd: "setCall"; guest: number; index: number; fd: number }
  | { cmd: "setDoorbell"; guest: number; addr: number; queues: number }
  | { cmd: "notifyFatal"; guest: number; errno: number }
  | { cmd: "removeGuest"; guest: number }
  /** Asks for every QP's wire counters; the reply carries them in `qps`. */
  | { cmd: "qpCounters" }
  | { cmd: "stop" };

/**
 * One QP's wire counters as the Worker reports them: the engine's
 * `qpCounters()` row plus what the QP is (its guest, type, state and peer),
 * read at the same moment.
 */
export interface QpCounterRow {
  /** The guest (session id) that owns the QP. */
  guest: number;
  /** QP number on this host. */
  qpNum: number;
  /** The QP's handle in its guest. */
  qpHandle: number;
  /** Transport: "RC", "UC" or "UD". */
  qpType: string;
  /** Current state ("RTS", "ERR", ...). */
  state: string;
  /** The peer's QPN (RC/UC; 0 for UD). */
  destQpNum: number;
  /** The peer's GID (RC/UC; "" for UD). */
  dgid: string;
  /** The counters (`backend/adapter/qp_counters.ts`), copied. */
  counters: QpCounters;
}

/** A command with the sequence number its reply carries. */
export type SequencedCommand = DataPlaneCommand & { seq: number };

/** The Worker's answer to one command. */
export interface DataPlaneReply {
  /** The command's sequence number. */
  seq: number;
  /** Set when the command failed: what was wrong. */
  error?: string;
  /** A command's result (`stopVring`: the last available index). */
  value?: number;
  /** `qpCounters`' result. */
  qps?: QpCounterRow[];
}

/** What the Worker posts without being asked. */
export type DataPlaneNotice =
  | { notice: "ready" }
  /** The Worker could not start (the RoCE port could not be bound): startBackend fails with it. */
  | { notice: "failed"; message: string }
  | { notice: "broken"; guest: number; queue: number; error: string }
  | { notice: "log"; level: "debug" | "info" | "warn" | "error"; message: string };
