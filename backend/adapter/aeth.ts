/**
 * The AETH syndrome byte (IBA 9.7.5.2.1): bits 6-5 say ACK, RNR NAK or NAK;
 * bits 4-0 carry the credit count, the RNR timer code or the NAK code.
 *
 * @module
 */

/** Bits 6-5 of the syndrome. */
export const AethType = {
  ACK: 0,
  RNR_NAK: 1,
  RESERVED: 2,
  NAK: 3,
} as const;

/** NAK codes (syndrome bits 4-0 when the type is NAK). */
export const NakCode = {
  PSN_SEQUENCE_ERROR: 0,
  INVALID_REQUEST: 1,
  REMOTE_ACCESS: 2,
  REMOTE_OPERATIONAL: 3,
  INVALID_RD_REQUEST: 4,
} as const;

/** An ACK's credit field when end-to-end credits are not used (what rxe sends). */
export const ACK_UNLIMITED = 0x1f;

/**
 * The type bits of `syndrome`.
 *
 * @example
 * ```ts
 * import { AethType, aethType, nakSyndrome, NakCode } from "./aeth.ts";
 * if (aethType(nakSyndrome(NakCode.REMOTE_ACCESS)) !== AethType.NAK) throw new Error("type");
 * ```
 */
export function aethType(syndrome: number): number {
  return (syndrome >>> 5) & 3;
}

/** The syndrome of a plain ACK. */
export const ACK_SYNDROME = ACK_UNLIMITED;

/** The syndrome of a NAK with `code`. */
export function nakSyndrome(code: number): number {
  return (AethType.NAK << 5) | (code & 0x1f);
}

/** The syndrome of an RNR NAK asking the requester to wait timer `code` (0..31). */
export function rnrNakSyndrome(code: number): number {
  return (AethType.RNR_NAK << 5) | (code & 0x1f);
}
