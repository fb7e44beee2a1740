/**
 * The two IBA timer encodings a requester waits by.
 *
 * @module
 */

/** min_rnr_timer code (0..31) to milliseconds, as IBA table 45 gives it (0 = 655.36 ms). */
const RNR_MS = [
  655.36,
  0.01,
  0.02,
  0.03,
  0.04,
  0.06,
  0.08,
  0.12,
  0.16,
  0.24,
  0.32,
  0.48,
  0.64,
  0.96,
  1.28,
  1.92,
  2.56,
  3.84,
  5.12,
  7.68,
  10.24,
  15.36,
  20.48,
  30.72,
  40.96,
  61.44,
  81.92,
  122.88,
  163.84,
  245.76,
  327.68,
  491.52,
];

/**
 * Milliseconds an RNR NAK with `code` asks the requester to wait.
 *
 * @example
 * ```ts
 * import { rnrDelayMs } from "./timers.ts";
 * if (rnrDelayMs(12) !== 0.64 || rnrDelayMs(0) !== 655.36) throw new Error("wrong table");
 * ```
 */
export function rnrDelayMs(code: number): number {
  return RNR_MS[code & 31]!;
}

/** The local ACK timeout for `code`: 4.096 us * 2^code in ms; 0 means no timer (Infinity). */
export function transportTimeoutMs(code: number): number {
  if (code === 0) return Infinity;
  return 4.096e-3 * 2 ** (code & 31);
}
