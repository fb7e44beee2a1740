/**
 * The figures perftest reports, computed as perftest computes them
 * (`print_report_bw` and `print_report_lat` in perftest_parameters.c), from
 * timestamps in milliseconds (`performance.now()`) instead of CPU cycles.
 *
 * - Bandwidth: average = bytes moved / (last completion - first post);
 *   peak = message size / the smallest per-message time over any window
 *   from a post to a later signaled completion; MB is 2^20 bytes, as
 *   perftest's "MB/sec" is. A side that only receives (the ib_send_bw
 *   server) has no per-message posts: its peak is 0, as perftest prints.
 * - Latency: the differences between consecutive posts (one round trip
 *   each), sorted, the two largest set aside (`LAT_MEASURE_TAIL`), then min,
 *   the second-largest, median ("typical"), average, standard deviation and
 *   the 99% / 99.9% percentiles; halved for ping-pong tests (write, send),
 *   whole for read and atomic.
 *
 * @module
 */

/** One line of a bandwidth table. */
export interface BwReport {
  /** Message size in bytes. */
  bytes: number;
  /** Messages measured. */
  iterations: number;
  /** Peak bandwidth, MB/s (2^20 bytes per MB). */
  bwPeakMBps: number;
  /** Average bandwidth, MB/s (2^20 bytes per MB). */
  bwAvgMBps: number;
  /** Millions of messages per second. */
  msgRateMpps: number;
}

/** One line of a latency table, in microseconds. */
export interface LatReport {
  /** Message size in bytes. */
  bytes: number;
  /** Iterations run. */
  iterations: number;
  /** Smallest sample (perftest's t_min). */
  minUs: number;
  /** The second-largest sample (perftest's t_max: it drops two, then reads the first dropped). */
  maxUs: number;
  /** Median (perftest's t_typical). */
  medianUs: number;
  /** Mean (t_avg). */
  avgUs: number;
  /** Standard deviation (t_stdev). */
  stdevUs: number;
  /** 99th percentile. */
  p99Us: number;
  /** 99.9th percentile. */
  p999Us: number;
}

const MB = 0x100000;
/** Samples perftest drops from the top before its statistics. */
const LAT_MEASURE_TAIL = 2;
/** Window pairs the peak search looks at, at most (perftest's search is quadratic). */
const PEAK_BUDGET = 40_000_000;

/** What {@linkcode bwReport} needs. */
export interface BwSamples {
  /** Message size in bytes. */
  size: number;
  /** Messages. */
  iters: number;
  /** Every `cqMod`-th message (and the last) was signaled. */
  cqMod: number;
  /** Post time of message i (ms). */
  posted: Float64Array;
  /**
   * Completion time of message i (ms), set where a completion reported it
   * (index `k * cqMod - 1` and the last).
   */
  completed: Float64Array;
}

/**
 * The bandwidth line of a sending side.
 *
 * @example
 * ```ts
 * import { bwReport } from "./perf_stats.ts";
 * // 4 messages of 1 MiB, one every ms, each signaled: 1000 MB/s.
 * const posted = Float64Array.of(0, 1, 2, 3);
 * const completed = Float64Array.of(1, 2, 3, 4);
 * const r = bwReport({ size: 1 << 20, iters: 4, cqMod: 1, posted, completed });
 * if (Math.round(r.bwAvgMBps) !== 1000 || Math.round(r.bwPeakMBps) !== 1000) throw new Error("bad");
 * ```
 */
export function bwReport(s: BwSamples): BwReport {
  const n = s.iters;
  if (n < 1) throw new RangeError(`a bandwidth report needs at least 1 message, got ${n}`);
  // perftest walks every post i against every signaled j >= i; when that is
  // too many pairs for a script, it looks at every stride-th post instead.
  const pairs = (n * n) / (2 * s.cqMod);
  const stride = Math.max(1, Math.ceil(pairs / PEAK_BUDGET));
  let best = Infinity;
  const tail = n % s.cqMod !== 0;
  for (let i = 0; i < n; i += stride) {
    const t0 = s.posted[i]!;
    for (let j = Math.ceil((i + 1) / s.cqMod) * s.cqMod - 1; j < n; j += s.cqMod) {
      const t = (s.completed[j]! - t0) / (j - i + 1);
      if (t < best) best = t;
    }
    if (tail) {
      const t = (s.completed[n - 1]! - t0) / (n - i);
      if (t < best) best = t;
    }
  }
  const seconds = (s.completed[n - 1]! - s.posted[0]!) / 1000;
  // The average as the whole run's per-message time, computed exactly as the
  // peak search's (i = 0, j = n - 1) window: the peak then never rounds
  // below the average.
  const perMessage = (s.completed[n - 1]! - s.posted[0]!) / n;
  const mbps = (ms: number) => s.size / (ms / 1000) / MB;
  return {
    bytes: s.size,
    iterations: n,
    bwPeakMBps: best > 0 && Number.isFinite(best) ? mbps(best) : 0,
    bwAvgMBps: mbps(perMessage),
    msgRateMpps: n / seconds / 1e6,
  };
}

/**
 * The bandwidth line of a receiving side (ib_send_bw's server): from the
 * first receive completion to the last; no peak.
 */
export function rxBwReport(size: number, iters: number, firstMs: number, lastMs: number): BwReport {
  const seconds = (lastMs - firstMs) / 1000;
  return {
    bytes: size,
    iterations: iters,
    bwPeakMBps: 0,
    bwAvgMBps: seconds > 0 ? (size * iters) / seconds / MB : 0,
    msgRateMpps: seconds > 0 ? iters / seconds / 1e6 : 0,
  };
}

/**
 * The latency line from the post times of `iters` iterations (ms), each
 * difference one round trip; `rttFactor` 2 halves them (ping-pong tests).
 *
 * @example
 * ```ts
 * import { latReport } from "./perf_stats.ts";
 * // Round trips of 500 us, except two slow ones perftest drops.
 * const posted = Float64Array.from([0, 0.5, 1, 1.5, 2, 2.5, 10, 20]);
 * const r = latReport(8, posted, 2);
 * if (r.medianUs !== 250 || r.maxUs !== 3750) throw new Error(JSON.stringify(r));
 * ```
 */
export function latReport(size: number, posted: Float64Array, rttFactor: 1 | 2): LatReport {
  const iters = posted.length;
  if (iters < 4) throw new RangeError(`a latency report needs at least 4 iterations, got ${iters}`);
  const delta = new Float64Array(iters - 1);
  for (let i = 0; i < delta.length; i++) delta[i] = posted[i + 1]! - posted[i]!;
  delta.sort();
  const n = delta.length - LAT_MEASURE_TAIL;
  const us = (ms: number) => (ms * 1000) / rttFactor;
  const median = (n - 1) % 2 !== 0
    ? (delta[Math.floor(n / 2)]! + delta[Math.floor(n / 2) - 1]!) / 2
    : delta[Math.floor(n / 2)]!;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += us(delta[i]!);
  const avg = sum / n;
  let sq = 0;
  for (let i = 0; i < n; i++) sq += (avg - us(delta[i]!)) ** 2;
  return {
    bytes: size,
    iterations: iters,
    minUs: us(delta[0]!),
    maxUs: us(delta[n]!),
    medianUs: us(median),
    avgUs: avg,
    stdevUs: Math.sqrt(sq / n),
    p99Us: us(delta[Math.ceil(n * 0.99)]!),
    p999Us: us(delta[Math.ceil(n * 0.999)]!),
  };
}
