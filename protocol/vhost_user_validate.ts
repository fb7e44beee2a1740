/**
 * The syntactic check every vhost-user message passes before its handler
 * gives it meaning: header flags, the exact payload size of the request,
 * reserved bits, the file descriptors that came with it, queue indices,
 * memory table geometry and config ranges.
 *
 * It does not know session state (whether features were negotiated, whether
 * a queue is running): handlers check that. On any error the caller closes
 * every fd that arrived with the message.
 *
 * @module
 */

import {
  MAX_QUEUE_SIZE,
  MessageFlag,
  Request,
  type RequestCode,
  requestName,
} from "./vhost_user_constants.ts";
import { hex, VhostUserRangeError, VhostUserSyntaxError } from "./vhost_user_errors.ts";
import { checkHeader, type VhostUserMessage } from "./vhost_user_message.ts";
import {
  decodeConfig,
  decodeMemoryTable,
  decodeU64,
  decodeVringAddr,
  decodeVringFile,
  decodeVringState,
  type DeviceConfig,
  type MemoryRegionDesc,
  type VringAddr,
  type VringFile,
  type VringState,
} from "./vhost_user_payloads.ts";

type R = typeof Request;
/** Requests without a payload. */
export type NoPayloadRequest =
  | R["GET_FEATURES"]
  | R["SET_OWNER"]
  | R["RESET_OWNER"]
  | R["GET_PROTOCOL_FEATURES"]
  | R["GET_QUEUE_NUM"];
/** Requests whose payload is a feature word. */
export type U64Request = R["SET_FEATURES"] | R["SET_PROTOCOL_FEATURES"];
/** Requests whose payload is a vring state description. */
export type VringStateRequest =
  | R["SET_VRING_NUM"]
  | R["SET_VRING_BASE"]
  | R["GET_VRING_BASE"]
  | R["SET_VRING_ENABLE"];
/** Requests whose payload is the queue-index-and-NOFD u64. */
export type VringFileRequest = R["SET_VRING_KICK"] | R["SET_VRING_CALL"] | R["SET_VRING_ERR"];
/** Requests whose payload is a device config access. */
export type ConfigRequest = R["GET_CONFIG"] | R["SET_CONFIG"];

/** A request that passed {@linkcode validateMessage}, with its decoded payload in `body`. */
export type ValidRequest =
  & {
    /** Header flags as received. */
    flags: number;
    /** The front-end asked for a REPLY_ACK status. */
    needReply: boolean;
  }
  & (
    | { request: NoPayloadRequest; body: undefined }
    | { request: U64Request; body: bigint }
    | { request: R["SET_MEM_TABLE"]; body: MemoryRegionDesc[] }
    | { request: VringStateRequest; body: VringState }
    | { request: R["SET_VRING_ADDR"]; body: VringAddr }
    | { request: VringFileRequest; body: VringFile }
    | { request: ConfigRequest; body: DeviceConfig }
  );

/** What {@linkcode validateMessage} checks a message against. */
export interface ValidateOptions {
  /** File descriptors that arrived with the message (SCM_RIGHTS). */
  fdCount: number;
  /** Queues the device has: every queue index must be below this. */
  maxQueues: number;
  /** Bytes of the device config space: config accesses must stay inside. */
  configSize: number;
}

const U64_END = 1n << 64n;

function checkOption(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`validateMessage: option ${name} ${value} is not a non-negative integer`);
  }
}

function expectEmpty(request: number, payload: Uint8Array): void {
  if (payload.length !== 0) {
    throw new VhostUserSyntaxError(
      request,
      "size",
      `${requestName(request)}: payload is ${payload.length} bytes, expected 0`,
    );
  }
}

function expectFds(request: number, fdCount: number, expected: number, why = ""): void {
  if (fdCount !== expected) {
    throw new VhostUserSyntaxError(
      request,
      "fds",
      `${requestName(request)}: ${fdCount} fds received, expected ${expected}${why}`,
    );
  }
}

function checkQueue(request: number, index: number, maxQueues: number): void {
  if (index >= maxQueues) {
    throw new VhostUserRangeError(
      request,
      "index",
      `${requestName(request)}: queue index ${index} is not below maxQueues ${maxQueues}`,
    );
  }
}

function outOfRange(request: number, field: string, detail: string): VhostUserRangeError {
  return new VhostUserRangeError(request, field, `${requestName(request)}: ${detail}`);
}

/**
 * Checks a request from the front-end and decodes its payload.
 *
 * @throws {VhostUserSyntaxError} for a malformed message: version or reserved
 *   flag bits, the reply flag on a request, an unknown request, a payload of
 *   the wrong size, reserved payload bits, an fd count that does not match.
 * @throws {VhostUserRangeError} for a value out of range: payload above
 *   `MAX_PAYLOAD`, queue index, region count or geometry, queue size, config range.
 *
 * @example
 * ```ts
 * import { encodeVringState, Request, validateMessage } from "./vhost_user.ts";
 * const msg = {
 *   request: Request.SET_VRING_NUM,
 *   flags: 0x1,
 *   payload: encodeVringState({ index: 1, num: 256 }),
 * };
 * const valid = validateMessage(msg, { fdCount: 0, maxQueues: 4, configSize: 64 });
 * if (valid.request !== Request.SET_VRING_NUM || valid.body.num !== 256) throw new Error("bad");
 * ```
 */
export function validateMessage(msg: VhostUserMessage, options: ValidateOptions): ValidRequest {
  const { fdCount, maxQueues, configSize } = options;
  checkOption("fdCount", fdCount);
  checkOption("maxQueues", maxQueues);
  checkOption("configSize", configSize);
  const { flags, payload } = msg;
  checkHeader(msg.request, flags, payload.length);
  const request = msg.request as RequestCode;
  if ((flags & MessageFlag.REPLY) !== 0) {
    throw new VhostUserSyntaxError(
      request,
      "flags",
      `${requestName(request)}: flags ${hex(flags)} has the reply bit set on a request`,
    );
  }
  const head = { flags, needReply: (flags & MessageFlag.NEED_REPLY) !== 0 };
  switch (request) {
    case Request.GET_FEATURES:
    case Request.SET_OWNER:
    case Request.RESET_OWNER:
    case Request.GET_PROTOCOL_FEATURES:
    case Request.GET_QUEUE_NUM:
      expectEmpty(request, payload);
      expectFds(request, fdCount, 0);
      return { ...head, request, body: undefined };
    case Request.SET_FEATURES:
    case Request.SET_PROTOCOL_FEATURES: {
      const body = decodeU64(payload, request);
      expectFds(request, fdCount, 0);
      return { ...head, request, body };
    }
    case Request.SET_MEM_TABLE:
      return { ...head, request, body: checkMemoryTable(request, payload, fdCount) };
    case Request.SET_VRING_NUM:
    case Request.SET_VRING_BASE:
    case Request.GET_VRING_BASE:
    case Request.SET_VRING_ENABLE: {
      const body = decodeVringState(payload, request);
      expectFds(request, fdCount, 0);
      checkQueue(request, body.index, maxQueues);
      checkVringNum(request, body.num);
      return { ...head, request, body };
    }
    case Request.SET_VRING_ADDR: {
      const body = decodeVringAddr(payload, request);
      expectFds(request, fdCount, 0);
      checkQueue(request, body.index, maxQueues);
      checkRingAlignment(request, body);
      return { ...head, request, body };
    }
    case Request.SET_VRING_KICK:
    case Request.SET_VRING_CALL:
    case Request.SET_VRING_ERR: {
      const body = decodeVringFile(payload, request);
      expectFds(request, fdCount, body.noFd ? 0 : 1, body.noFd ? " (NOFD bit set)" : "");
      checkQueue(request, body.index, maxQueues);
      return { ...head, request, body };
    }
    case Request.GET_CONFIG:
    case Request.SET_CONFIG: {
      const body = decodeConfig(payload, request);
      expectFds(request, fdCount, 0);
      const end = body.offset + body.data.length;
      if (end > configSize) {
        throw outOfRange(
          request,
          "offset",
          `offset ${body.offset} + size ${body.data.length} = ${end} is past the config ` +
            `space of ${configSize} bytes`,
        );
      }
      return { ...head, request, body };
    }
  }
}

/** The per-request meaning of `num` in a vring state, checked where it has a range. */
function checkVringNum(request: VringStateRequest, num: number): void {
  if (request === Request.SET_VRING_NUM) {
    if (num === 0 || num > MAX_QUEUE_SIZE || (num & (num - 1)) !== 0) {
      throw outOfRange(
        request,
        "num",
        `queue size num ${num} is not a power of two in 1..${MAX_QUEUE_SIZE}`,
      );
    }
  } else if (request === Request.SET_VRING_BASE) {
    // A split ring's available index is 16 bits wide.
    if (num > 0xffff) throw outOfRange(request, "num", `ring base num ${num} is above 0xffff`);
  } else if (request === Request.SET_VRING_ENABLE) {
    if (num > 1) {
      throw outOfRange(request, "num", `num ${num} is neither 0 (disable) nor 1 (enable)`);
    }
  }
  // GET_VRING_BASE: num carries nothing in a request.
}

/** Split-ring alignment (VIRTIO 1.2, 2.7): descriptors 16, available ring 2, used ring 4. */
function checkRingAlignment(request: number, addr: VringAddr): void {
  const rules: [keyof VringAddr, bigint, bigint][] = [
    ["descUserAddr", addr.descUserAddr, 16n],
    ["availUserAddr", addr.availUserAddr, 2n],
    ["usedUserAddr", addr.usedUserAddr, 4n],
  ];
  for (const [field, value, align] of rules) {
    if (value % align !== 0n) {
      throw outOfRange(request, field, `${field} ${hex(value)} is not ${align}-byte aligned`);
    }
  }
}

function checkMemoryTable(
  request: number,
  payload: Uint8Array,
  fdCount: number,
): MemoryRegionDesc[] {
  const regions = decodeMemoryTable(payload, request);
  if (regions.length === 0) {
    throw outOfRange(request, "nregions", `nregions 0, expected 1..8`);
  }
  expectFds(request, fdCount, regions.length, ` for nregions ${regions.length}`);
  regions.forEach((r, i) => {
    if (r.memorySize === 0n) {
      throw outOfRange(request, "memorySize", `regions[${i}] memorySize 0: the region is empty`);
    }
    for (const field of ["guestPhysAddr", "userspaceAddr", "mmapOffset"] as const) {
      if (r[field] + r.memorySize > U64_END) {
        throw outOfRange(
          request,
          field,
          `regions[${i}] ${field} ${hex(r[field])} + memorySize ${hex(r.memorySize)} ` +
            `overflows u64`,
        );
      }
    }
  });
  checkDisjoint(request, regions, "guestPhysAddr", "guest");
  // Vring addresses are user addresses: overlapping user ranges would make
  // their translation ambiguous.
  checkDisjoint(request, regions, "userspaceAddr", "user");
  return regions;
}

function checkDisjoint(
  request: number,
  regions: MemoryRegionDesc[],
  field: "guestPhysAddr" | "userspaceAddr",
  space: string,
): void {
  const order = regions.map((_, i) => i).sort((a, b) => {
    const x = regions[a]![field], y = regions[b]![field];
    return x < y ? -1 : x > y ? 1 : 0;
  });
  for (let k = 1; k < order.length; k++) {
    const i = order[k - 1]!, j = order[k]!;
    const prev = regions[i]!, cur = regions[j]!;
    if (prev[field] + prev.memorySize > cur[field]) {
      throw outOfRange(
        request,
        field,
        `regions[${i}] ${hex(prev[field])}+${hex(prev.memorySize)} and regions[${j}] ` +
          `${hex(cur[field])}+${hex(cur.memorySize)} overlap in ${space} address space`,
      );
    }
  }
}

/**
 * Checks the back-end's reply to `expected` and decodes it: a vring state for
 * GET_VRING_BASE, a device config for GET_CONFIG, and a u64 for everything
 * else (GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, or the REPLY_ACK
 * status of any request).
 *
 * @throws {VhostUserSyntaxError} for bad flags (reply bit missing, need-reply
 *   set), a reply to another request, or a payload of the wrong size.
 * @throws {VhostUserRangeError} for a payload above `MAX_PAYLOAD`.
 *
 * @example
 * ```ts
 * import { encodeU64Reply, MessageReader, Request, validateReply } from "./vhost_user.ts";
 * const reader = new MessageReader();
 * reader.push(encodeU64Reply(Request.GET_FEATURES, 1n << 32n));
 * if (validateReply(reader.next()!, Request.GET_FEATURES) !== 1n << 32n) throw new Error("bad");
 * ```
 */
export function validateReply(msg: VhostUserMessage, expected: R["GET_VRING_BASE"]): VringState;
export function validateReply(msg: VhostUserMessage, expected: R["GET_CONFIG"]): DeviceConfig;
export function validateReply(msg: VhostUserMessage, expected: number): bigint;
export function validateReply(
  msg: VhostUserMessage,
  expected: number,
): bigint | VringState | DeviceConfig {
  const { request, flags, payload } = msg;
  checkHeader(request, flags, payload.length);
  const name = requestName(request);
  if ((flags & MessageFlag.REPLY) === 0 || (flags & MessageFlag.NEED_REPLY) !== 0) {
    throw new VhostUserSyntaxError(
      request,
      "flags",
      `${name}: flags ${hex(flags)} on a reply, expected the reply bit and no need-reply bit`,
    );
  }
  if (request !== expected) {
    throw new VhostUserSyntaxError(
      request,
      "request",
      `${name}: got a reply to request ${request}, expected a reply to ` +
        `${requestName(expected)} (${expected})`,
    );
  }
  if (request === Request.GET_VRING_BASE) return decodeVringState(payload, request);
  if (request === Request.GET_CONFIG) return decodeConfig(payload, request);
  return decodeU64(payload, request);
}
