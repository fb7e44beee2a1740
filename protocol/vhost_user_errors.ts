/**
 * The two errors the vhost-user codec throws for bad input from a peer.
 *
 * - {@linkcode VhostUserSyntaxError}: the bytes do not form a well-formed
 *   message — wrong version bits, reserved bits set, unknown request, a
 *   payload of the wrong size for its request, a file descriptor count that
 *   does not match the message.
 * - {@linkcode VhostUserRangeError}: the message is well-formed but a value is
 *   out of its allowed range — a size field above `MAX_PAYLOAD`, a queue
 *   index, a region count, overlapping or overflowing memory regions, a
 *   config access past the config space.
 *
 * Both carry the request number (when there is one) and the name of the
 * offending field, so a session can log them and close the connection. Every
 * message names the request, the field and the value. Errors from encoders
 * (programming errors on the local side) are plain `RangeError`s.
 *
 * @module
 */

/** A message from the peer that is not well-formed. */
export class VhostUserSyntaxError extends SyntaxError {
  /** The request number of the message, when known. */
  readonly request: number | undefined;
  /** The header or payload field that is wrong (`"flags"`, `"size"`, `"nregions"`, ...). */
  readonly field: string;

  /** Builds the error; `message` already names the request, field and value. */
  constructor(request: number | undefined, field: string, message: string) {
    super(message);
    this.name = "VhostUserSyntaxError";
    this.request = request;
    this.field = field;
  }
}

/** A well-formed message from the peer with a value outside its allowed range. */
export class VhostUserRangeError extends RangeError {
  /** The request number of the message, when known. */
  readonly request: number | undefined;
  /** The header or payload field that is out of range. */
  readonly field: string;

  /** Builds the error; `message` already names the request, field and value. */
  constructor(request: number | undefined, field: string, message: string) {
    super(message);
    this.name = "VhostUserRangeError";
    this.request = request;
    this.field = field;
  }
}

/** `0x` followed by the hexadecimal digits of `value`: addresses and bit masks read best so. */
export function hex(value: number | bigint): string {
  return `0x${value.toString(16)}`;
}
