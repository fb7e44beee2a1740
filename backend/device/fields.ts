/**
 * Readers for the fields of a decoded control command.
 *
 * Commands are CBOR maps from the guest: untrusted, any shape. Every reader
 * checks type and range and throws a {@linkcode CommandError} (EINVAL unless
 * said otherwise) naming the field and the value it got, so a handler reads
 * its arguments in a few lines and the guest learns exactly what was wrong.
 * A key whose value is `undefined` counts as absent (cbor-x encodes an
 * absent optional property that way).
 *
 * @module
 */

import { Errno } from "../../protocol/device_interface.ts";

/** A decoded command or one of its nested maps. */
export type Fields = Record<string, unknown>;

/** A command that failed its checks: becomes `{status, error}` in the response. */
export class CommandError extends Error {
  /** Errno value for the response. */
  readonly status: number;

  /** `status` is an {@linkcode Errno} value. */
  constructor(status: number, message: string) {
    super(message);
    this.name = "CommandError";
    this.status = status;
  }
}

/**
 * An EINVAL {@linkcode CommandError} with `message`.
 *
 * @example
 * ```ts
 * import { invalid } from "./fields.ts";
 * if (invalid("x 3 is odd").status !== 22) throw new Error("not EINVAL");
 * ```
 */
export function invalid(message: string): CommandError {
  return new CommandError(Errno.EINVAL, message);
}

/** A short, bounded description of a guest value for an error message. */
export function describe(value: unknown): string {
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "string") return JSON.stringify(value.slice(0, 40));
  if (value instanceof Uint8Array) return `${value.length} bytes`;
  if (value instanceof Map) return "a Map";
  if (value === null || typeof value !== "object") return String(value);
  return Array.isArray(value) ? "an array" : "an object";
}

/** The own value of `name` in `req` (never an inherited property), or undefined. */
export function fieldValue(req: Fields, name: string): unknown {
  return Object.hasOwn(req, name) ? req[name] : undefined;
}

/** True when `value` is a plain map as cbor-x decodes one (not an array, Map or byte string). */
export function isFields(value: unknown): value is Fields {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/**
 * Throws EINVAL naming the first key of `req` that is not in `allowed`
 * (keys holding `undefined` are ignored). `where` prefixes the name in the
 * message, e.g. `"cap."`.
 *
 * @example
 * ```ts
 * import { checkKeys } from "./fields.ts";
 * checkKeys({ op: 4 }, ["op"]);
 * let msg = "";
 * try { checkKeys({ op: 4, bogus: 1 }, ["op"]); } catch (e) { msg = (e as Error).message; }
 * if (!msg.includes("bogus")) throw new Error(msg);
 * ```
 */
export function checkKeys(req: Fields, allowed: readonly string[], where = ""): void {
  for (const key of Object.keys(req)) {
    if (req[key] !== undefined && !allowed.includes(key)) {
      throw invalid(
        `${where}${key.slice(0, 40)} is not a field here (expected: ${allowed.join(", ")})`,
      );
    }
  }
}

/** Options of {@linkcode intField}. */
export interface IntFieldOptions {
  /** Smallest accepted value (default 0). */
  min?: number;
  /** Largest accepted value (default 2^32 - 1). */
  max?: number;
  /** The field may be absent; it then reads as `fallback`. */
  optional?: boolean;
  /** Value of an absent optional field (default `min`). */
  fallback?: number;
  /** Prefix for the name in messages, e.g. `"cap."`. */
  where?: string;
}

/**
 * Reads an integer field in `min..max`, or throws EINVAL naming it. A
 * `bigint`, a fraction, a string or anything else is refused.
 *
 * @example
 * ```ts
 * import { intField } from "./fields.ts";
 * if (intField({ cqe: 16 }, "cqe", { min: 1 }) !== 16) throw new Error("wrong value");
 * if (intField({}, "srqLimit", { optional: true }) !== 0) throw new Error("wrong default");
 * ```
 */
export function intField(req: Fields, name: string, options: IntFieldOptions = {}): number {
  const { min = 0, max = 0xffff_ffff, optional = false, where = "" } = options;
  const value = fieldValue(req, name);
  if (value === undefined && optional) return options.fallback ?? min;
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    throw invalid(`${where}${name} = ${describe(value)} is not an integer in ${min}..${max}`);
  }
  return value;
}

/**
 * Reads a guest address (or an address-sized length) field: a non-negative
 * safe integer, as a `number` or a `bigint` (addresses are u64 on the device
 * interface, so a `bigint` is a natural encoding here and only here).
 *
 * @example
 * ```ts
 * import { addrField } from "./fields.ts";
 * if (addrField({ addr: 0x1_0000_0000n }, "addr") !== 0x1_0000_0000) throw new Error("wrong");
 * ```
 */
export function addrField(req: Fields, name: string, where = ""): number {
  let value = fieldValue(req, name);
  if (typeof value === "bigint" && value >= 0n && value <= BigInt(Number.MAX_SAFE_INTEGER)) {
    value = Number(value);
  }
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw invalid(`${where}${name} = ${describe(value)} is not a guest address`);
  }
  return value;
}

/**
 * Reads a boolean field; an absent optional one reads as `false`.
 *
 * @example
 * ```ts
 * import { boolField } from "./fields.ts";
 * if (boolField({}, "sqSigAll", true) !== false) throw new Error("wrong default");
 * ```
 */
export function boolField(req: Fields, name: string, optional = false): boolean {
  const value = fieldValue(req, name);
  if (value === undefined && optional) return false;
  if (typeof value !== "boolean") throw invalid(`${name} = ${describe(value)} is not a boolean`);
  return value;
}

/** Reads a string field of at most `maxLength` characters. */
export function stringField(req: Fields, name: string, maxLength = 64, where = ""): string {
  const value = fieldValue(req, name);
  if (typeof value !== "string" || value.length > maxLength) {
    throw invalid(`${where}${name} = ${describe(value)} is not a string of at most ${maxLength}`);
  }
  return value;
}

/** Reads a nested map field. */
export function mapField(req: Fields, name: string, where = ""): Fields {
  const value = fieldValue(req, name);
  if (!isFields(value)) throw invalid(`${where}${name} = ${describe(value)} is not a map`);
  return value;
}

/** Reads a string field that must be one of `choices`. */
export function enumField<T extends string>(
  req: Fields,
  name: string,
  choices: readonly T[],
  where = "",
): T {
  const value = fieldValue(req, name);
  if (typeof value !== "string" || !(choices as readonly string[]).includes(value)) {
    throw invalid(`${where}${name} = ${describe(value)} is not one of ${choices.join(", ")}`);
  }
  return value as T;
}
