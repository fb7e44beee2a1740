/**
 * Numbers of the vhost-user control channel: header layout, flag bits,
 * request codes, feature bits and payload limits.
 *
 * Values follow the vhost-user specification (QEMU `docs/interop/vhost-user.rst`)
 * wherever one exists, so a capture of vrdma's control socket reads like any
 * other vhost-user session. vrdma fixes the byte order to little-endian (the
 * specification says "machine native", which is little-endian on every host
 * vrdma runs on).
 *
 * @module
 */

/** Bytes in a message header: `request u32, flags u32, size u32`. */
export const HEADER_SIZE = 12;

/**
 * Largest payload the codec accepts, in bytes.
 *
 * The largest legitimate payloads are GET_CONFIG / SET_CONFIG: a 12-byte
 * config header plus the device config space. QEMU caps the config space at
 * 256 bytes and DPDK at 0xf00 (3840); a full 8-region SET_MEM_TABLE is 264.
 * One page (4096) holds all of them with room to grow, and bounds what a
 * hostile peer can make the reader buffer per connection to
 * `HEADER_SIZE + MAX_PAYLOAD` bytes: a larger size field is refused from the
 * header alone.
 */
export const MAX_PAYLOAD = 4096;

/** Header flag bits. */
export const MessageFlag = {
  /** The protocol version vrdma speaks, in bits 0-1. */
  VERSION: 0x1,
  /** Bits 0-1 hold the version. */
  VERSION_MASK: 0x3,
  /** Set on every reply from the back-end. */
  REPLY: 0x4,
  /** The front-end asks for a REPLY_ACK status reply. */
  NEED_REPLY: 0x8,
} as const;

/** Every flag bit a valid header may have set; the rest are reserved and must be 0. */
export const KNOWN_FLAGS_MASK: number = MessageFlag.VERSION_MASK | MessageFlag.REPLY |
  MessageFlag.NEED_REPLY;

/**
 * Front-end request codes vrdma implements, numbered as in the vhost-user
 * specification.
 *
 * @example
 * ```ts
 * import { Request } from "./vhost_user_constants.ts";
 * if (Request.SET_VRING_ADDR !== 9) throw new Error("numbering changed");
 * ```
 */
export const Request = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
} as const;

/** One of the request codes in {@linkcode Request}. */
export type RequestCode = typeof Request[keyof typeof Request];

const REQUEST_NAMES: ReadonlyMap<number, string> = new Map(
  Object.entries(Request).map(([name, code]) => [code, name]),
);

/** True when `code` is one of the requests in {@linkcode Request}. */
export function isRequestCode(code: number): code is RequestCode {
  return REQUEST_NAMES.has(code);
}

/**
 * The name of a request code for messages and logs: `"SET_VRING_ADDR"`, or
 * `"request 9999"` for a code vrdma does not know.
 *
 * @example
 * ```ts
 * import { requestName } from "./vhost_user_constants.ts";
 * if (requestName(9) !== "SET_VRING_ADDR") throw new Error("wrong name");
 * if (requestName(9999) !== "request 9999") throw new Error("wrong fallback");
 * ```
 */
export function requestName(code: number): string {
  return REQUEST_NAMES.get(code) ?? `request ${code}`;
}

/**
 * vhost-user protocol feature bit numbers (GET/SET_PROTOCOL_FEATURES), from
 * the specification. The specification's older text calls BACKEND_REQ and
 * BACKEND_SEND_FD "SLAVE_REQ" and "SLAVE_SEND_FD"; the numbers are the same.
 */
export const ProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
} as const;

/** Virtio feature bit numbers (GET/SET_FEATURES) that vrdma uses. */
export const VirtioFeature = {
  /** Descriptors may point at an indirect descriptor table. */
  RING_INDIRECT_DESC: 28,
  /** used_event / avail_event suppress notifications. */
  RING_EVENT_IDX: 29,
  /** VIRTIO 1.x (non-legacy) device. */
  VERSION_1: 32,
} as const;

/**
 * The feature bit (30, "UNUSED" in VIRTIO) the back-end sets in GET_FEATURES
 * to say it speaks GET/SET_PROTOCOL_FEATURES.
 */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;

/**
 * The mask of feature bit `bit` in a u64 feature word.
 *
 * @example
 * ```ts
 * import { featureMask, VirtioFeature } from "./vhost_user_constants.ts";
 * if (featureMask(VirtioFeature.VERSION_1) !== 0x1_0000_0000n) throw new Error("wrong mask");
 * ```
 */
export function featureMask(bit: number): bigint {
  if (!Number.isInteger(bit) || bit < 0 || bit > 63) {
    throw new RangeError(`feature bit ${bit} is not in 0..63`);
  }
  return 1n << BigInt(bit);
}

/** Most regions one SET_MEM_TABLE may carry (VHOST_MEMORY_MAX_NREGIONS). */
export const MAX_MEM_REGIONS = 8;

/** Bytes of the SET_MEM_TABLE header before the regions: `nregions u32, padding u32`. */
export const MEM_TABLE_HEADER_SIZE = 8;

/** Bytes of one memory region description. */
export const MEM_REGION_SIZE = 32;

/** Bytes of a vring address description (SET_VRING_ADDR). */
export const VRING_ADDR_SIZE = 40;

/** Bytes of a vring state description `{index u32, num u32}`. */
export const VRING_STATE_SIZE = 8;

/** Bytes of the config header before the config bytes: `offset, size, flags` (u32 each). */
export const CONFIG_HEADER_SIZE = 12;

/** KICK/CALL/ERR u64: bits 0-7 hold the queue index. */
export const VRING_INDEX_MASK = 0xff;

/** KICK/CALL/ERR u64: bit 8 says no fd travels with the message (VHOST_USER_VRING_NOFD_MASK). */
export const VRING_NOFD_MASK = 0x100;

/** SET_VRING_ADDR flags bit 0 (VHOST_VRING_F_LOG): log used-ring writes. */
export const VRING_F_LOG = 0x1;

/** SET_CONFIG / GET_CONFIG flags value: a front-end write of writable fields. */
export const CONFIG_FLAG_FRONTEND = 0;

/** SET_CONFIG / GET_CONFIG flags value: config restored during live migration. */
export const CONFIG_FLAG_MIGRATION = 1;

/** Largest split virtqueue size (VIRTIO 1.2, 2.7). */
export const MAX_QUEUE_SIZE = 32768;
