/**
 * 24-bit packet sequence number arithmetic, the one place it lives.
 *
 * PSNs count modulo 2^24. Two PSNs compare by their difference read as a
 * signed 24-bit number: shifting the 32-bit difference left by 8 puts the
 * PSN's top bit in the sign bit, and an arithmetic shift right by 8 brings
 * it back with the sign. So "after" means "less than 2^23 ahead", which is
 * how IBA and Linux soft-RoCE (`psn_compare`) decide it.
 *
 * @module
 */

/** Every PSN bit. */
export const PSN_MASK = 0xffffff;
/** Number of distinct PSNs. */
export const PSN_MODULUS = 0x1000000;

/**
 * `psn + n` modulo 2^24 (`n` may be negative).
 *
 * @example
 * ```ts
 * import { psnAdd } from "./psn.ts";
 * if (psnAdd(0xffffff, 1) !== 0 || psnAdd(0, -1) !== 0xffffff) throw new Error("wrap");
 * ```
 */
export function psnAdd(psn: number, n: number): number {
  return (psn + n) & PSN_MASK;
}

/**
 * The signed distance from `b` to `a`: positive when `a` is after `b`, in
 * -2^23 .. 2^23-1.
 *
 * @example
 * ```ts
 * import { psnDiff } from "./psn.ts";
 * if (psnDiff(2, 0xfffffe) !== 4 || psnDiff(0xfffffe, 2) !== -4) throw new Error("diff");
 * ```
 */
export function psnDiff(a: number, b: number): number {
  return ((a - b) << 8) >> 8;
}

/**
 * -1, 0 or 1 as `a` is before, equal to or after `b`.
 *
 * @example
 * ```ts
 * import { psnCompare } from "./psn.ts";
 * if (psnCompare(0, 0xffffff) !== 1) throw new Error("0 follows 0xffffff");
 * ```
 */
export function psnCompare(a: number, b: number): -1 | 0 | 1 {
  const d = psnDiff(a, b);
  return d < 0 ? -1 : d > 0 ? 1 : 0;
}

/**
 * Whether `psn` is one of the `size` PSNs starting at `start`
 * (`start`, `start + 1`, ..., `start + size - 1`, modulo 2^24). `size` above
 * 2^23 would make "after" ambiguous and is a `RangeError`.
 *
 * @example
 * ```ts
 * import { psnInWindow } from "./psn.ts";
 * if (!psnInWindow(1, 0xfffffe, 4) || psnInWindow(2, 0xfffffe, 4)) throw new Error("window");
 * ```
 */
export function psnInWindow(psn: number, start: number, size: number): boolean {
  if (!(size >= 0 && size <= 0x800000)) {
    throw new RangeError(`PSN window size ${size} is not in 0..2^23`);
  }
  const d = psnDiff(psn, start);
  return d >= 0 && d < size;
}
