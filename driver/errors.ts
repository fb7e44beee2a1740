/**
 * The one error class guest applications are meant to catch.
 *
 * @module
 */

/**
 * A verb failed. `errno` names the reason the way libibverbs would
 * (`"EINVAL"`, `"ENOMEM"`, `"ENODEV"`, ...); the message says what was wrong
 * and with what value. A failed verb changes nothing.
 *
 * @example
 * ```ts
 * import { VerbsError } from "./errors.ts";
 * const e = new VerbsError("EINVAL", "cqe 0 is below 1");
 * if (e.errno !== "EINVAL" || !(e instanceof Error)) throw new Error("bad error");
 * ```
 */
export class VerbsError extends Error {
  /** The errno name, e.g. `"EINVAL"`. */
  readonly errno: string;

  /** Builds the error; `cause` keeps a lower-level error for debugging. */
  constructor(errno: string, message: string, options?: { cause?: unknown }) {
    super(`${errno}: ${message}`, options);
    this.name = "VerbsError";
    this.errno = errno;
  }
}
