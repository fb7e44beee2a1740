/**
 * vhost-user message framing: the 12-byte header, its checks, and encoders
 * for whole messages (requests and replies).
 *
 * @module
 */

import {
  HEADER_SIZE,
  isRequestCode,
  KNOWN_FLAGS_MASK,
  MAX_PAYLOAD,
  MessageFlag,
  requestName,
} from "./vhost_user_constants.ts";
import { hex, VhostUserRangeError, VhostUserSyntaxError } from "./vhost_user_errors.ts";
import { encodeU64 } from "./vhost_user_payloads.ts";

/** One framed message: header fields and the payload bytes after the header. */
export interface VhostUserMessage {
  /** Request code (see `Request`). */
  request: number;
  /** Header flags: version, reply, need-reply. */
  flags: number;
  /** The payload; its length is the header's size field. */
  payload: Uint8Array;
}

/** Options of {@linkcode encodeMessage}. */
export interface EncodeOptions {
  /** Set the reply flag (messages from the back-end). */
  reply?: boolean;
  /** Set the need-reply flag (ask for a REPLY_ACK status). */
  needReply?: boolean;
}

/**
 * Checks header fields as they arrive, before any payload: version bits 0x1,
 * no reserved flag bits, a request vrdma knows, and a size of at most
 * `MAX_PAYLOAD` — so a 4 GiB size field fails at once instead of making the
 * reader wait for 4 GiB.
 *
 * @throws {VhostUserSyntaxError} for wrong version bits, reserved flag bits or an unknown request.
 * @throws {VhostUserRangeError} for a size above `MAX_PAYLOAD`.
 */
export function checkHeader(request: number, flags: number, size: number): void {
  const name = requestName(request);
  const version = flags & MessageFlag.VERSION_MASK;
  if (version !== MessageFlag.VERSION) {
    throw new VhostUserSyntaxError(
      request,
      "flags",
      `${name}: version ${version} in flags ${hex(flags)}, expected ${MessageFlag.VERSION}`,
    );
  }
  const reserved = flags & ~KNOWN_FLAGS_MASK;
  if (reserved !== 0) {
    throw new VhostUserSyntaxError(
      request,
      "flags",
      `${name}: flags ${hex(flags >>> 0)} has reserved bits ${hex(reserved >>> 0)} set`,
    );
  }
  if (!isRequestCode(request)) {
    throw new VhostUserSyntaxError(request, "request", `vhost-user: unknown request ${request}`);
  }
  if (size > MAX_PAYLOAD) {
    throw new VhostUserRangeError(
      request,
      "size",
      `${name}: payload size ${size} exceeds MAX_PAYLOAD ${MAX_PAYLOAD}`,
    );
  }
}

/**
 * Frames `payload` as a message of `request`: header (version 1, plus the
 * reply / need-reply flags asked for) followed by the payload.
 *
 * @throws {RangeError} for an unknown request or a payload above `MAX_PAYLOAD`.
 *
 * @example
 * ```ts
 * import { encodeMessage, Request } from "./vhost_user.ts";
 * const bytes = encodeMessage(Request.SET_OWNER, new Uint8Array(0), { needReply: true });
 * const v = new DataView(bytes.buffer);
 * if (v.getUint32(0, true) !== 3 || v.getUint32(4, true) !== 0x9 || bytes.length !== 12) {
 *   throw new Error("unexpected header");
 * }
 * ```
 */
export function encodeMessage(
  request: number,
  payload: Uint8Array,
  options: EncodeOptions = {},
): Uint8Array {
  if (!isRequestCode(request)) throw new RangeError(`unknown request ${request}`);
  if (payload.length > MAX_PAYLOAD) {
    throw new RangeError(
      `${requestName(request)}: payload of ${payload.length} bytes exceeds MAX_PAYLOAD ` +
        `${MAX_PAYLOAD}`,
    );
  }
  const flags = MessageFlag.VERSION | (options.reply ? MessageFlag.REPLY : 0) |
    (options.needReply ? MessageFlag.NEED_REPLY : 0);
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
  v.setUint32(0, request, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, payload.length, true);
  out.set(payload, HEADER_SIZE);
  return out;
}

/** Frames `payload` as the back-end's reply to `request` (reply flag set). */
export function encodeReply(request: number, payload: Uint8Array): Uint8Array {
  return encodeMessage(request, payload, { reply: true });
}

/**
 * Frames a u64 reply: GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, or
 * the REPLY_ACK status (0 success, non-zero failure) of any request.
 *
 * @example
 * ```ts
 * import { encodeU64Reply, Request } from "./vhost_user.ts";
 * const bytes = encodeU64Reply(Request.GET_QUEUE_NUM, 4n);
 * if (bytes.length !== 20 || bytes[4] !== 0x5 || bytes[12] !== 4) throw new Error("bad reply");
 * ```
 */
export function encodeU64Reply(request: number, value: bigint): Uint8Array {
  return encodeReply(request, encodeU64(value));
}
