/**
 * The bandwidth loops, as perftest's `run_iter_bw` and `run_iter_bw_server`
 * run them.
 *
 * - {@linkcode runBwClient}: keeps `txDepth` WRs (WRITE, READ, SEND or an
 *   atomic) in flight; WR k is signaled when k % cqMod == cqMod - 1 and for
 *   the last one; each completion stands for the WRs up to its own. Posts
 *   and completions are timed for {@linkcode bwReport}. WRITE, READ and
 *   atomic runs start with an untimed warm-up window (perftest's
 *   `perform_warm_up`). With nothing to post and nothing completed it
 *   sleeps in `cq.next()` rather than spinning as perftest does (see
 *   perf_pacer.ts).
 * - {@linkcode runSendServer}: the receiving side of send_bw: `rxDepth`
 *   receives posted ahead ({@linkcode postReceives}, before the barrier that
 *   lets the client start), one posted again per completion until `iters`
 *   were posted; timed from the first completion to the last.
 *
 * With `--check`: a WRITE run reads the peer's area back and compares it
 * with the pattern it wrote; a READ run compares what it read with the
 * pattern every side serves; an atomic run reads the peer's counter back
 * (it counts every operation of this side); a SEND receiver checks each
 * completion's length and the bytes received.
 *
 * @module
 */

import type { SendWr } from "../../mod.ts";
import { CheckError, expectSuccess } from "./perf_errors.ts";
import { fillPattern, findMismatch, type PerfGuest, READ_PATTERN_SIZE } from "./perf_guest.ts";
import { readBack, type RunContext, wrMaker, type WrShape } from "./perf_ops.ts";
import { type BwReport, bwReport, rxBwReport } from "./perf_stats.ts";
import type { KeyMessage } from "./perf_wire.ts";

/** How a bandwidth run goes. */
export interface BwRun extends WrShape {
  /** Messages measured. */
  iters: number;
  /** WRs in flight at most. */
  txDepth: number;
  /** Every cqMod-th WR signaled. */
  cqMod: number;
}

/** Posts `count` WRs starting at `first` and reaps what completes, until all are done. */
async function window(
  g: PerfGuest,
  make: (index: number, signaled: boolean) => SendWr,
  count: number,
  o: BwRun,
  ctx: RunContext,
  posted: Float64Array | null,
  completed: Float64Array | null,
  onProgress: (done: number) => void,
): Promise<void> {
  let scnt = 0;
  let ccnt = 0;
  const counters = () => `scnt=${scnt}, ccnt=${ccnt}`;
  const what = () =>
    `${ctx.side}: ${
      scnt - ccnt
    } ${o.verb} WRs of ${o.size} B in flight, ${ccnt} of ${count} completed`;
  const batch: SendWr[] = [];
  while (ccnt < count) {
    const room = Math.min(o.txDepth - (scnt - ccnt), count - scnt);
    if (room > 0) {
      batch.length = 0;
      for (let k = scnt; k < scnt + room; k++) {
        batch.push(make(k, k % o.cqMod === o.cqMod - 1 || k === count - 1));
      }
      const t = performance.now();
      if (posted !== null) posted.fill(t, scnt, scnt + room);
      g.qp.postSend(batch);
      scnt += room;
    }
    let wcs = g.sendCq.poll(16);
    if (wcs.length === 0) wcs = [await ctx.pacer.sleep(g.sendCq.next(), what)];
    const t = performance.now();
    ctx.pacer.progress();
    for (const wc of wcs) {
      expectSuccess(wc, ctx.side, counters);
      ccnt = Number(wc.wrId) + 1;
      if (completed !== null) completed[ccnt - 1] = t;
    }
    onProgress(ccnt);
  }
}

/**
 * The sending side of a bandwidth test: `o.iters` WRs of `o.verb` against
 * `remote`, timed. Throws `WcError` on a failed completion, `CheckError`
 * when `--check` finds the data wrong.
 */
export async function runBwClient(
  g: PerfGuest,
  remote: KeyMessage,
  o: BwRun,
  ctx: RunContext,
): Promise<BwReport> {
  if (o.size > g.areaBytes) throw new RangeError(`size ${o.size} exceeds the area ${g.areaBytes}`);
  const area = g.out.subarray(0, o.size);
  if (o.verb === "write" || o.verb === "send") fillPattern(area, o.size);
  if (o.verb === "read") area.fill(0);
  const make = wrMaker(g, remote, o, ctx);
  if (o.verb !== "send") {
    await window(g, make, Math.min(o.txDepth, o.iters), o, ctx, null, null, () => {});
    if (o.verb === "read") area.fill(0);
  }
  const posted = new Float64Array(o.iters);
  const completed = new Float64Array(o.iters);
  const bar = ctx.progress(`${o.verb} ${o.size} B`, o.iters);
  try {
    await window(g, make, o.iters, o, ctx, posted, completed, (done) => bar.update(done));
  } finally {
    bar.done();
  }
  const report = bwReport({ size: o.size, iters: o.iters, cqMod: o.cqMod, posted, completed });
  if (ctx.check) await checkClient(g, remote, o, ctx);
  return report;
}

async function checkClient(
  g: PerfGuest,
  remote: KeyMessage,
  o: BwRun,
  ctx: RunContext,
): Promise<void> {
  if (o.verb === "write") {
    const back = await readBack(g, remote, 0, o.size, ctx);
    const at = findMismatch(back, o.size);
    if (at >= 0) {
      throw new CheckError(
        `--check: the peer's buffer differs from what was written at byte ${at} of ${o.size} ` +
          `(0x${back[at]!.toString(16)})`,
      );
    }
  } else if (o.verb === "read") {
    const got = g.out.subarray(0, o.size);
    const at = findMismatch(got, READ_PATTERN_SIZE);
    if (at >= 0) {
      throw new CheckError(
        `--check: the data read differs from the peer's pattern at byte ${at} of ${o.size} ` +
          `(0x${got[at]!.toString(16)})`,
      );
    }
  } else if (o.verb === "atomic") {
    const back = await readBack(g, remote, 0, 8, ctx);
    const value = new DataView(back.buffer, back.byteOffset, 8).getBigUint64(0, true);
    if (value !== BigInt(ctx.atomics)) {
      throw new CheckError(
        `--check: the peer's counter holds ${value} after ${ctx.atomics} ${o.atomicType} operations`,
      );
    }
  }
}

/**
 * Posts the receives of a send test: `count` receives of `size` bytes
 * into the `in` area (zeroed first, so `--check` sees what arrives).
 * Returns how many were posted.
 */
export function postReceives(g: PerfGuest, size: number, count: number): number {
  g.in.subarray(0, size).fill(0);
  const sgList = [{ addr: g.inAddr, length: size, lkey: g.mr.lkey }];
  const wrs = Array.from({ length: count }, (_, i) => ({ wrId: BigInt(i), sgList }));
  g.qp.postRecv(wrs);
  return count;
}

/** How the receiving side of send_bw runs. */
export interface RxRun {
  /** Message size. */
  size: number;
  /** Messages to receive. */
  iters: number;
  /** Receives posted ahead (already posted by {@linkcode postReceives}). */
  posted: number;
}

/** The receiving side of send_bw: counts `o.iters` receives, reposting as they complete. */
export async function runSendServer(g: PerfGuest, o: RxRun, ctx: RunContext): Promise<BwReport> {
  const sgList = [{ addr: g.inAddr, length: o.size, lkey: g.mr.lkey }];
  let rcnt = 0;
  let posted = o.posted;
  let first = 0;
  const bar = ctx.progress(`recv ${o.size} B`, o.iters);
  const what = () => `${ctx.side}: ${rcnt} of ${o.iters} SENDs of ${o.size} B received`;
  try {
    while (rcnt < o.iters) {
      let wcs = g.recvCq.poll(16);
      if (wcs.length === 0) wcs = [await ctx.pacer.sleep(g.recvCq.next(), what)];
      ctx.pacer.progress();
      if (rcnt === 0) first = performance.now();
      for (const wc of wcs) {
        expectSuccess(wc, ctx.side, () => `rcnt=${rcnt}`);
        if (ctx.check && wc.byteLen !== o.size) {
          throw new CheckError(
            `--check: receive ${rcnt} got ${wc.byteLen} bytes, expected ${o.size}`,
          );
        }
        rcnt++;
        if (posted < o.iters) {
          g.qp.postRecv({ wrId: BigInt(posted), sgList });
          posted++;
        }
      }
      bar.update(rcnt);
    }
  } finally {
    bar.done();
  }
  const last = performance.now();
  if (ctx.check) {
    const at = findMismatch(g.in.subarray(0, o.size), o.size);
    if (at >= 0) {
      throw new CheckError(`--check: the data received differs from the pattern at byte ${at}`);
    }
  }
  return rxBwReport(o.size, o.iters, first, last);
}
