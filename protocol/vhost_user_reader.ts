/**
 * Reassembles vhost-user messages from the bytes of a stream socket.
 *
 * @module
 */

import { HEADER_SIZE } from "./vhost_user_constants.ts";
import { checkHeader, type VhostUserMessage } from "./vhost_user_message.ts";

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Initial buffer size: a header plus the common payloads, grown on demand. */
const INITIAL_CAPACITY = 512;

/**
 * Turns arbitrary chunks read from a stream socket into complete messages.
 * A message may arrive split across reads, and one read may hold several.
 *
 * `push` stores bytes; `next` returns the next complete message, or
 * `undefined` while more bytes are needed. Errors are thrown, not returned:
 * `next` throws a `VhostUserSyntaxError` or `VhostUserRangeError` (see
 * `checkHeader`) as soon as the 12 header bytes of a bad message are in,
 * without waiting for its payload. Messages before the bad one are all
 * delivered first. A stream cannot be resynchronised after a bad header, so
 * the reader is then broken: every later `push` or `next` throws the same
 * error, and the caller closes the connection.
 *
 * Payloads are copies, so they stay valid after later pushes.
 *
 * @example
 * ```ts
 * import { encodeMessage, MessageReader, Request } from "./vhost_user.ts";
 * const bytes = encodeMessage(Request.GET_FEATURES, new Uint8Array(0));
 * const reader = new MessageReader();
 * reader.push(bytes.subarray(0, 5));
 * if (reader.next() !== undefined) throw new Error("only 5 bytes so far");
 * reader.push(bytes.subarray(5));
 * if (reader.next()?.request !== Request.GET_FEATURES) throw new Error("message expected");
 * ```
 */
export class MessageReader {
  #buf: Uint8Array = new Uint8Array(INITIAL_CAPACITY);
  #view: DataView = viewOf(this.#buf);
  /** Offset of the first unread byte. */
  #start = 0;
  /** Offset one past the last stored byte. */
  #end = 0;
  #error: Error | undefined;

  /** Bytes received but not yet returned as part of a message. */
  get buffered(): number {
    return this.#end - this.#start;
  }

  /** Stores a chunk read from the socket. Throws only if the reader is already broken. */
  push(chunk: Uint8Array): void {
    if (this.#error !== undefined) throw this.#error;
    if (chunk.length === 0) return;
    if (this.#end + chunk.length > this.#buf.length) this.#makeRoom(chunk.length);
    this.#buf.set(chunk, this.#end);
    this.#end += chunk.length;
  }

  /**
   * Returns the next complete message, or `undefined` until enough bytes
   * have arrived.
   *
   * @throws {VhostUserSyntaxError} for wrong version bits, reserved flag bits or an unknown request.
   * @throws {VhostUserRangeError} for a size field above `MAX_PAYLOAD`.
   */
  next(): VhostUserMessage | undefined {
    if (this.#error !== undefined) throw this.#error;
    const start = this.#start;
    const available = this.#end - start;
    if (available < HEADER_SIZE) return undefined;
    const request = this.#view.getUint32(start, true);
    const flags = this.#view.getUint32(start + 4, true);
    const size = this.#view.getUint32(start + 8, true);
    try {
      checkHeader(request, flags, size);
    } catch (e) {
      this.#error = e as Error;
      throw e;
    }
    if (available < HEADER_SIZE + size) return undefined;
    const payload = this.#buf.slice(start + HEADER_SIZE, start + HEADER_SIZE + size);
    this.#start = start + HEADER_SIZE + size;
    // Rewind when drained so the common one-message-per-read case never copies.
    if (this.#start === this.#end) this.#start = this.#end = 0;
    return { request, flags, payload };
  }

  /** Yields every complete message stored so far (calls {@linkcode MessageReader.next}). */
  *drain(): Generator<VhostUserMessage, void, undefined> {
    for (let msg = this.next(); msg !== undefined; msg = this.next()) yield msg;
  }

  /** Moves unread bytes to the front, and grows the buffer if `extra` more still do not fit. */
  #makeRoom(extra: number): void {
    const used = this.#end - this.#start;
    const needed = used + extra;
    if (needed > this.#buf.length) {
      const grown = new Uint8Array(Math.max(needed, this.#buf.length * 2));
      grown.set(this.#buf.subarray(this.#start, this.#end));
      this.#buf = grown;
      this.#view = viewOf(grown);
    } else {
      this.#buf.copyWithin(0, this.#start, this.#end);
    }
    this.#start = 0;
    this.#end = used;
  }
}
