/**
 * The UDP source port of a QP's packets, chosen as Linux soft-RoCE (6.1)
 * chooses it, so captures of vrdma and rxe look alike (WIRE.md). The port is
 * flow entropy for ECMP; receivers ignore it.
 *
 * @module
 */

/**
 * RC/UC: a hash of the local and remote QPNs, in 0xC000..0xFFFF. Symmetric,
 * so both directions of a connection use the same port.
 *
 * @example
 * ```ts
 * import { rcSourcePort } from "./source_port.ts";
 * if (rcSourcePort(0x11, 0x11) !== 49441) throw new Error("rxe picks 49441");
 * ```
 */
export function rcSourcePort(localQpn: number, remoteQpn: number): number {
  // rxe computes this in 64 bits: the product of two 24-bit QPNs needs 48.
  let v = BigInt(localQpn) * BigInt(remoteQpn);
  v ^= v >> 20n;
  v ^= v >> 40n;
  const flow = Number(v & 0xfffffn);
  return 0xc000 | ((flow & 0x3fff) ^ ((flow & 0xfc000) >> 14));
}

/**
 * UD: a multiplicative hash of the local QPN, in 0xC000..0xFFFF.
 *
 * @example
 * ```ts
 * import { udSourcePort } from "./source_port.ts";
 * if (udSourcePort(0x13) !== 53368) throw new Error("rxe picks 53368");
 * ```
 */
export function udSourcePort(qpn: number): number {
  return 0xc000 + (Math.imul(qpn, 0x61c88647) >>> 18);
}
