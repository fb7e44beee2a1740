/**
 * The vrdma device interface: what the driver and the device agree on beyond
 * the vhost-user framing. Both sides import this file; it imports nothing
 * from either side.
 *
 * - Queue 0 is the control queue: each command is a chain [request | response],
 *   both CBOR, the request `{op, ...args}`, the response `{status, ...result}`
 *   with an errno-style status.
 * - Queue 1 is the event queue: device-writable slots of
 *   {@linkcode EVENT_SLOT_BYTES} bytes carrying async and completion events.
 * - One kick eventfd per device (given with `SET_VRING_KICK` for queue 0) and
 *   one call eventfd per device (given with `SET_VRING_CALL` for queue 1).
 *   A doorbell bitmap in guest memory says which queues a kick is about, so a
 *   device with thousands of queues needs no thread or fd per queue.
 *
 * @module
 */

/** Queue index of the control queue. */
export const CONTROL_QUEUE = 0;
/** Queue index of the event queue. */
export const EVENT_QUEUE = 1;
/** Number of queues set up over vhost-user; later queues are created by commands. */
export const FIXED_QUEUES = 2;

/** Control-queue command codes (the `op` of a request). */
export const Op = {
  QUERY_DEVICE: 1,
  QUERY_PORT: 2,
  QUERY_GID: 3,
  ALLOC_PD: 4,
  DEALLOC_PD: 5,
  REG_MR: 6,
  DEREG_MR: 7,
  CREATE_CQ: 8,
  DESTROY_CQ: 9,
  REQ_NOTIFY_CQ: 10,
  CREATE_QP: 11,
  MODIFY_QP: 12,
  QUERY_QP: 13,
  DESTROY_QP: 14,
  CREATE_AH: 15,
  DESTROY_AH: 16,
  CREATE_SRQ: 17,
  MODIFY_SRQ: 18,
  DESTROY_SRQ: 19,
} as const;

/** A control-queue command code. */
export type OpCode = typeof Op[keyof typeof Op];

/** The name of a command code, for messages. */
export function opName(op: number): string {
  for (const [name, code] of Object.entries(Op)) if (code === op) return name;
  return `op ${op}`;
}

/** Errno values carried in responses and events (Linux numbering). */
export const Errno = {
  OK: 0,
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  ENOSPC: 28,
  ERANGE: 34,
  ENOSYS: 38,
  EPROTO: 71,
  EMSGSIZE: 90,
  EOPNOTSUPP: 95,
  ECONNRESET: 104,
  ETIMEDOUT: 110,
  ECONNREFUSED: 111,
} as const;

/** An errno name such as `"EINVAL"`. */
export type ErrnoName = keyof typeof Errno;

/** The name of an errno value (`22` gives `"EINVAL"`). */
export function errnoName(value: number): ErrnoName | `E${number}` {
  for (const [name, code] of Object.entries(Errno)) if (code === value) return name as ErrnoName;
  return `E${value}`;
}

/** Async event types, numbered as `enum ibv_event_type`, plus completion events. */
export const EventType = {
  CQ_ERR: 0,
  QP_FATAL: 1,
  QP_REQ_ERR: 2,
  QP_ACCESS_ERR: 3,
  COMM_EST: 4,
  SQ_DRAINED: 5,
  PATH_MIG: 6,
  PATH_MIG_ERR: 7,
  DEVICE_FATAL: 8,
  PORT_ACTIVE: 9,
  PORT_ERR: 10,
  LID_CHANGE: 11,
  PKEY_CHANGE: 12,
  SM_CHANGE: 13,
  SRQ_ERR: 14,
  SRQ_LIMIT_REACHED: 15,
  QP_LAST_WQE_REACHED: 16,
  CLIENT_REREGISTER: 17,
  GID_CHANGE: 18,
  WQ_FATAL: 19,
  /** Not an ibverbs async event: "CQ `element` has new completions" (a completion channel event). */
  COMPLETION: 0x100,
} as const;

/** An event type name. */
export type EventTypeName = keyof typeof EventType;

/** The name of an event type code. */
export function eventTypeName(code: number): EventTypeName | `event ${number}` {
  for (const [name, value] of Object.entries(EventType)) {
    if (value === code) return name as EventTypeName;
  }
  return `event ${code}`;
}

/** Bytes in one event-queue slot. */
export const EVENT_SLOT_BYTES = 16;

/** One event as the device writes it into an event-queue slot. */
export interface DeviceEvent {
  /** An {@linkcode EventType} code. */
  type: number;
  /** What it is about: a CQ, QP or SRQ handle, or a port number. */
  element: number;
  /** Extra detail (an errno for fatal events), 0 when unused. */
  info: number;
}

/** Writes `event` into a slot. `view` must hold at least {@linkcode EVENT_SLOT_BYTES}. */
export function encodeEvent(event: DeviceEvent, view: DataView, offset = 0): void {
  view.setUint32(offset, event.type, true);
  view.setUint32(offset + 4, event.element, true);
  view.setUint32(offset + 8, event.info, true);
  view.setUint32(offset + 12, 0, true);
}

/** Reads an event from a slot. */
export function decodeEvent(view: DataView, offset = 0): DeviceEvent {
  return {
    type: view.getUint32(offset, true),
    element: view.getUint32(offset + 4, true),
    info: view.getUint32(offset + 8, true),
  };
}

/**
 * The doorbell area in guest memory, 8-byte aligned, registered with
 * `SET_CONFIG` at {@linkcode DRIVER_AREA_OFFSET}. Two levels, so the device
 * finds the rung queues among thousands with a few loads:
 *
 * | offset | field |
 * |---|---|
 * | 0 | u32 `deviceAwake`: the device sets it while it polls; the driver then skips the eventfd write |
 * | 4 | u32 reserved |
 * | 8 | summary: u32 words; bit `w & 31` of word `w >> 5` set = bitmap word `w` has bits |
 * | {@linkcode doorbellLayout}`.bitmap` | bitmap: u32 words; bit `q & 31` of word `q >> 5` set = queue `q` has new work |
 *
 * The driver sets the queue's bitmap bit, then its summary bit, then reads
 * `deviceAwake`; the device takes a summary word, then each bitmap word it
 * names. Either the device sees the work or the driver sees it asleep.
 */
export const DOORBELL_AWAKE = 0;
/** Offset of the first summary word. */
export const DOORBELL_SUMMARY = 8;

/** Where the parts of a doorbell area covering `queues` queues are, and its size. */
export function doorbellLayout(queues: number): { words: number; bitmap: number; bytes: number } {
  const words = Math.ceil(queues / 32);
  const summaryWords = Math.ceil(words / 32);
  const bitmap = DOORBELL_SUMMARY + summaryWords * 4;
  return { words, bitmap, bytes: bitmap + words * 4 };
}

/** Bytes of a doorbell area covering `queues` queues. */
export function doorbellBytes(queues: number): number {
  return doorbellLayout(queues).bytes;
}

/**
 * The driver-writable part of the config space, after the device attributes:
 * `doorbellAddr u64, doorbellQueues u32, reserved u32`. `SET_CONFIG` may write
 * only here.
 */
export const DRIVER_AREA_BYTES = 16;

/** Where the driver area starts; the read-only config space is before it. */
export { CONFIG_SIZE as DRIVER_AREA_OFFSET } from "./device_config.ts";

/** What the driver writes into the driver area. */
export interface DriverArea {
  /** Guest address of the doorbell area (8-byte aligned). */
  doorbellAddr: number;
  /** Queues the bitmap covers. */
  doorbellQueues: number;
}

/** Encodes the driver area. */
export function encodeDriverArea(area: DriverArea): Uint8Array {
  const out = new Uint8Array(DRIVER_AREA_BYTES);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(area.doorbellAddr), true);
  view.setUint32(8, area.doorbellQueues, true);
  return out;
}

/** Decodes the driver area. Throws a `RangeError` for an address beyond 2^53. */
export function decodeDriverArea(bytes: Uint8Array): DriverArea {
  if (bytes.length !== DRIVER_AREA_BYTES) {
    throw new RangeError(`driver area is ${bytes.length} bytes, expected ${DRIVER_AREA_BYTES}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const addr = view.getBigUint64(0, true);
  if (addr > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new RangeError(`doorbell address 0x${addr.toString(16)} is beyond guest memory`);
  }
  return { doorbellAddr: Number(addr), doorbellQueues: view.getUint32(8, true) };
}

/** Largest CBOR request or response on the control queue. */
export const MAX_COMMAND_BYTES = 4096;
