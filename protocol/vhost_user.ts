/**
 * The vhost-user-style control channel codec: message framing, payload
 * encodings, a streaming reader for stream sockets, and the syntactic check
 * each message passes before its handler. Pure code: no sockets, no FFI.
 *
 * Wire format (little-endian): header `request u32, flags u32, size u32`,
 * then `size` payload bytes. Flags: version 0x1 in bits 0-1, reply 0x4,
 * need-reply 0x8, every other bit reserved. File descriptors travel beside
 * the bytes (SCM_RIGHTS); `validateMessage` takes their count.
 *
 * Bad input from the peer raises `VhostUserSyntaxError` (a `SyntaxError`:
 * malformed) or `VhostUserRangeError` (a `RangeError`: a value out of range);
 * both name the request, the field and the value.
 *
 * @example
 * ```ts
 * import {
 *   encodeMessage,
 *   encodeVringAddr,
 *   MessageReader,
 *   Request,
 *   validateMessage,
 * } from "./vhost_user.ts";
 * const wire = encodeMessage(
 *   Request.SET_VRING_ADDR,
 *   encodeVringAddr({
 *     index: 0,
 *     flags: 0,
 *     descUserAddr: 0x1000n,
 *     usedUserAddr: 0x3000n,
 *     availUserAddr: 0x2000n,
 *     logGuestAddr: 0n,
 *   }),
 * );
 * const reader = new MessageReader();
 * reader.push(wire);
 * for (const msg of reader.drain()) {
 *   const valid = validateMessage(msg, { fdCount: 0, maxQueues: 2, configSize: 0 });
 *   if (valid.request !== Request.SET_VRING_ADDR || valid.body.usedUserAddr !== 0x3000n) {
 *     throw new Error("unexpected message");
 *   }
 * }
 * ```
 *
 * @module
 */

export * from "./vhost_user_constants.ts";
export * from "./vhost_user_errors.ts";
export * from "./vhost_user_payloads.ts";
export * from "./vhost_user_message.ts";
export * from "./vhost_user_reader.ts";
export * from "./vhost_user_validate.ts";
