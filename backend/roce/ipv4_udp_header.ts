/**
 * The IPv4 and UDP headers every datagram of the UDP layer carries on the
 * wire, and the sizes that follow from them.
 *
 * @module
 */

import { IPV4_DF } from "./ipv4.ts";
import { IPPROTO_UDP } from "./socket_calls.ts";

/** Bytes of the IPv4 header (no options) plus the UDP header. */
export const IPV4_UDP_HEADER_BYTES = 28;
/** The largest UDP payload an IPv4 datagram can carry (65535 - 20 - 8). */
export const MAX_UDP_PAYLOAD = 65507;
/** TTL of every datagram this layer sends: Linux's default, and what rxe sends. */
export const IPV4_TTL = 64;

/** The fields of {@linkcode writeIpv4UdpHeader}. */
export interface HeaderFields {
  /** Source IPv4 address, host-order u32. */
  sourceIp: number;
  /** UDP source port. */
  sourcePort: number;
  /** Destination IPv4 address, host-order u32. */
  destinationIp: number;
  /** UDP destination port. */
  destinationPort: number;
  /** UDP payload bytes (0..{@linkcode MAX_UDP_PAYLOAD}). */
  payloadBytes: number;
}

/**
 * Writes an IPv4 header (20 bytes, no options) and a UDP header (8 bytes) at
 * `offset` of `view`, as every datagram of this layer goes on the wire:
 * version 4, IHL 5, TOS 0, total length, ID 0, DF, TTL 64, protocol UDP,
 * header checksum 0 (the kernel fills it in; the ICRC masks it), UDP length
 * and UDP checksum 0 (as rxe sends; the ICRC protects the payload).
 *
 * The RoCE engine can build the ICRC pseudo-header with it, so what it
 * hashes is exactly what leaves.
 *
 * @example
 * ```ts
 * import { writeIpv4UdpHeader } from "./ipv4_udp_header.ts";
 * const h = new DataView(new ArrayBuffer(28));
 * writeIpv4UdpHeader(h, 0, {
 *   sourceIp: 0x7f000002, sourcePort: 49441, destinationIp: 0x7f000003, destinationPort: 4791,
 *   payloadBytes: 100,
 * });
 * if (h.getUint16(2) !== 128 || h.getUint16(6) !== 0x4000 || h.getUint16(24) !== 108) {
 *   throw new Error("wrong header");
 * }
 * ```
 */
export function writeIpv4UdpHeader(view: DataView, offset: number, fields: HeaderFields): void {
  view.setUint32(offset, 0x4500_0000 | (IPV4_UDP_HEADER_BYTES + fields.payloadBytes));
  view.setUint32(offset + 4, IPV4_DF);
  view.setUint32(offset + 8, (IPV4_TTL << 24) | (IPPROTO_UDP << 16));
  view.setUint32(offset + 12, fields.sourceIp);
  view.setUint32(offset + 16, fields.destinationIp);
  view.setUint16(offset + 20, fields.sourcePort);
  view.setUint16(offset + 22, fields.destinationPort);
  view.setUint32(offset + 24, (8 + fields.payloadBytes) << 16);
}
