/**
 * The 40-byte GRH area a UD receive buffer starts with. For RoCEv2 over IPv4
 * (as Linux soft-RoCE fills it) the first 20 bytes are zero and the last 20
 * hold the IPv4 header the datagram arrived with.
 *
 * @module
 */

/** Bytes of the GRH area. */
export const GRH_BYTES = 40;

const UDP_BYTES = 8;
const BTH_BYTES = 12;
const DETH_BYTES = 8;
const IMM_BYTES = 4;
const ICRC_BYTES = 4;

function ipv4Bytes(ip: string): number[] {
  const parts = ip.split(".").map(Number);
  if (parts.length !== 4 || parts.some((p) => !(p >= 0 && p <= 255))) {
    throw new RangeError(`"${ip}" is not an IPv4 address`);
  }
  return parts;
}

/**
 * Fills `out` (40 bytes) with the GRH of a UD SEND of `payloadBytes` from
 * `srcIp` to `dstIp`: the IPv4 header as it is on the wire (DF, TTL 64,
 * UDP, IP ID 0, header checksum), lengths counting UDP, BTH, DETH, ImmDt,
 * pad and ICRC.
 */
export function buildGrh(
  out: Uint8Array,
  packet: { srcIp: string; dstIp: string; payloadBytes: number; immediate: boolean },
): void {
  out.fill(0, 0, GRH_BYTES);
  const pad = (4 - (packet.payloadBytes & 3)) & 3;
  const total = 20 + UDP_BYTES + BTH_BYTES + DETH_BYTES + (packet.immediate ? IMM_BYTES : 0) +
    packet.payloadBytes + pad + ICRC_BYTES;
  const h = out.subarray(20, 40);
  const view = new DataView(h.buffer, h.byteOffset, 20);
  view.setUint8(0, 0x45);
  view.setUint16(2, total);
  view.setUint16(6, 0x4000); // DF
  view.setUint8(8, 64);
  view.setUint8(9, 17); // UDP
  h.set(ipv4Bytes(packet.srcIp), 12);
  h.set(ipv4Bytes(packet.dstIp), 16);
  let sum = 0;
  for (let i = 0; i < 20; i += 2) sum += view.getUint16(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  view.setUint16(10, ~sum & 0xffff);
}
