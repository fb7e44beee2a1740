/**
 * IPv4 and RoCEv2 constants and address conversions the RoCE layer shares.
 *
 * @module
 */

/** The RoCEv2 UDP destination port. */
export const ROCE_PORT = 4791;

/** The IPv4 flags/fragment-offset word with only Don't Fragment set, as rxe sends. */
export const IPV4_DF = 0x4000;

/**
 * An IPv4 address in dotted-quad form as a host-order u32
 * (`"127.0.0.2"` is `0x7f000002`).
 *
 * @throws {SyntaxError} for anything but four decimal numbers 0..255 joined by dots.
 *
 * @example
 * ```ts
 * import { parseIpv4 } from "./ipv4.ts";
 * if (parseIpv4("127.0.0.2") !== 0x7f000002) throw new Error("wrong");
 * ```
 */
export function parseIpv4(text: string): number {
  const parts = text.split(".");
  if (parts.length !== 4) {
    throw new SyntaxError(`IPv4 address must be four dotted numbers, got ${JSON.stringify(text)}`);
  }
  let value = 0;
  for (const part of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(part) || Number(part) > 255) {
      throw new SyntaxError(
        `IPv4 address part must be a decimal 0..255, got ${JSON.stringify(part)} in ${
          JSON.stringify(text)
        }`,
      );
    }
    value = value * 256 + Number(part);
  }
  return value;
}

/**
 * A host-order u32 IPv4 address in dotted-quad form.
 *
 * @throws {RangeError} for a value that is not an integer 0..2^32-1.
 *
 * @example
 * ```ts
 * import { formatIpv4 } from "./ipv4.ts";
 * if (formatIpv4(0x7f000003) !== "127.0.0.3") throw new Error("wrong");
 * ```
 */
export function formatIpv4(ip: number): string {
  checkIp(ip);
  return `${ip >>> 24}.${(ip >>> 16) & 255}.${(ip >>> 8) & 255}.${ip & 255}`;
}

/** Throws a `RangeError` unless `ip` is a u32 address. */
export function checkIp(ip: number): void {
  if (!Number.isInteger(ip) || ip < 0 || ip > 0xffff_ffff) {
    throw new RangeError(`IPv4 address must be an integer 0..2^32-1, got ${ip}`);
  }
}
