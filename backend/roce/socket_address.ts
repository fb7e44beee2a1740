/**
 * IPv4 socket addresses of the UDP layer: their shapes, and the checks and
 * names every socket kind applies to them.
 *
 * @module
 */

import { checkIp, formatIpv4, parseIpv4 } from "./ipv4.ts";

/** An IPv4 address and UDP port; `ip` is a host-order u32 (see {@linkcode parseIpv4}). */
export interface SocketAddress {
  /** IPv4 address, host-order u32. */
  ip: number;
  /** UDP port. */
  port: number;
}

/** A destination and the UDP source port to send from. */
export interface DatagramAddress extends SocketAddress {
  /** UDP source port. */
  sourcePort: number;
}

/** Where a socket binds: the address as a dotted quad or a u32, and the port (0: any free one). */
export interface BindAddress {
  /** Local IPv4 address. */
  ip: string | number;
  /** Local UDP port; 0 lets the kernel pick one. */
  port: number;
}

/**
 * Throws a `RangeError` unless `port` is a UDP port; `what` names it in the message.
 *
 * @example
 * ```ts
 * import { checkPort } from "./socket_address.ts";
 * checkPort(4791, "UDP port");
 * try {
 *   checkPort(65536, "UDP port");
 *   throw new Error("accepted");
 * } catch (e) {
 *   if (!(e instanceof RangeError)) throw e;
 * }
 * ```
 */
export function checkPort(port: number, what: string): void {
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(`${what} must be an integer 0..65535, got ${port}`);
  }
}

/**
 * `ip` as a host-order u32, from either form.
 *
 * @throws {SyntaxError} for an unparseable dotted quad; {@linkcode RangeError}
 *   for a number that is not a u32.
 */
export function ipValue(ip: string | number): number {
  if (typeof ip === "string") return parseIpv4(ip);
  checkIp(ip);
  return ip;
}

/** `"ip:port"` for messages. */
export function endpointName(ip: number, port: number): string {
  return `${formatIpv4(ip)}:${port}`;
}
