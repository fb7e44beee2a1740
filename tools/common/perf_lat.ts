/**
 * The latency loops, as perftest's `run_iter_lat_write`, `run_iter_lat_send`
 * and `run_iter_lat` run them. Every loop records the time of each post;
 * consecutive posts are one round trip apart ({@linkcode latReport}).
 *
 * - {@linkcode runWriteLat}: ping-pong. The server writes first (perftest's
 *   `!(scnt < 1 && machine == SERVER)`, seen on the wire too); each side
 *   writes `size` bytes whose last byte is the iteration number (mod 256)
 *   into the peer's `in` area, then polls its own `in` area's last byte for
 *   the peer's answer. Small messages go inline.
 * - {@linkcode runSendLat}: ping-pong with SEND/RECV; the receives are
 *   posted ahead (`postReceives` of perf_bw.ts, before the barrier) and
 *   reposted as they complete.
 * - {@linkcode runReadLat}: READs (or atomics) one at a time, each waited
 *   for; only the client runs it (perftest's read_lat and atomic_lat).
 *
 * With `--check`: write checks the bytes that landed in its `in` area,
 * send each receive's length and the bytes, read the bytes read, atomics
 * every returned old value (the peer's counter counts this side's
 * operations) and the counter at the end.
 *
 * @module
 */

import { CheckError, expectSuccess } from "./perf_errors.ts";
import { fillPattern, findMismatch, type PerfGuest, READ_PATTERN_SIZE } from "./perf_guest.ts";
import {
  ATOMIC_RESULT_OFFSET,
  nextCompletion,
  readBack,
  type RunContext,
  wrMaker,
  type WrShape,
} from "./perf_ops.ts";
import { type LatReport, latReport } from "./perf_stats.ts";
import type { KeyMessage } from "./perf_wire.ts";

/** How a latency run goes. */
export interface LatRun extends WrShape {
  /** Iterations. */
  iters: number;
  /** Every cqMod-th send WR signaled. */
  cqMod: number;
  /** This side is the client (it sends first in ping-pongs). */
  client: boolean;
  /** Send queue depth (how many unsignaled WRs may pile up). */
  sqDepth: number;
}

/** Reaps send completions; returns the count completed so far. */
function reapSends(g: PerfGuest, ccnt: number, ctx: RunContext, counters: () => string): number {
  for (const wc of g.sendCq.poll(16)) {
    expectSuccess(wc, ctx.side, counters);
    ccnt = Number(wc.wrId) + 1;
  }
  return ccnt;
}

/**
 * Waits until the send queue has room for WR `at.scnt` (unsignaled WRs hold
 * their slots until a later signaled one is reaped); returns the send
 * completions counted so far.
 */
async function sqRoom(
  g: PerfGuest,
  at: { scnt: number; ccnt: number; sqDepth: number },
  ctx: RunContext,
  counters: () => string,
): Promise<number> {
  let ccnt = at.ccnt;
  while (at.scnt - ccnt >= at.sqDepth) {
    ccnt = reapSends(g, ccnt, ctx, counters);
    if (at.scnt - ccnt >= at.sqDepth) {
      await ctx.pacer.idle(() => `${ctx.side}: SQ full (${counters()})`);
    }
  }
  return ccnt;
}

/** Whether send WR k of `iters` is signaled (every cqMod-th and the last). */
function signaled(k: number, cqMod: number, iters: number): boolean {
  return k % cqMod === cqMod - 1 || k === iters - 1;
}

/** The write ping-pong. */
export async function runWriteLat(
  g: PerfGuest,
  remote: KeyMessage,
  o: LatRun,
  ctx: RunContext,
): Promise<LatReport> {
  const last = o.size - 1;
  const out = g.out;
  const inArea = g.in;
  fillPattern(out.subarray(0, last), o.size);
  const make = wrMaker(g, remote, o, ctx);
  const posted = new Float64Array(o.iters);
  let scnt = 0, rcnt = 0, ccnt = 0;
  const counters = () => `scnt=${scnt}, rcnt=${rcnt}, ccnt=${ccnt}`;
  const bar = ctx.progress(`write_lat ${o.size} B`, o.iters);
  try {
    while (scnt < o.iters || rcnt < o.iters || ccnt < o.iters) {
      if (rcnt < o.iters && !(scnt < 1 && !o.client)) {
        rcnt++;
        const tag = rcnt & 0xff;
        // Atomics.load: the host's Worker writes this byte; a plain load could be hoisted.
        while (Atomics.load(inArea, last) !== tag) {
          ccnt = reapSends(g, ccnt, ctx, counters);
          await ctx.pacer.idle(() =>
            `${ctx.side} waits for the peer's WRITE ${rcnt} (${counters()})`
          );
        }
        ctx.pacer.progress();
        // Checked now: once this side answers, the peer may go on to the
        // next size of --all and write over this area.
        if (ctx.check && rcnt === o.iters) checkWrite(inArea, o.size);
      }
      if (scnt < o.iters) {
        // Only a full SQ awaits: the ping-pong's fast path stays free of promise hops.
        if (scnt - ccnt >= o.sqDepth) {
          ccnt = await sqRoom(g, { scnt, ccnt, sqDepth: o.sqDepth }, ctx, counters);
        }
        posted[scnt] = performance.now();
        out[last] = (scnt + 1) & 0xff;
        g.qp.postSend(make(scnt, signaled(scnt, o.cqMod, o.iters)));
        scnt++;
      }
      ccnt = reapSends(g, ccnt, ctx, counters);
      if (rcnt >= o.iters && scnt >= o.iters && ccnt < o.iters) {
        await ctx.pacer.idle(() =>
          `${ctx.side} waits for its last WRITE to complete (${counters()})`
        );
      }
      bar.update(rcnt);
    }
  } finally {
    bar.done();
  }
  return latReport(o.size, posted, 2);
}

/** Throws unless the peer's last WRITE of `size` bytes (bar its tag byte) holds the pattern. */
function checkWrite(inArea: Uint8Array, size: number): void {
  const at = findMismatch(inArea.subarray(0, size - 1), size);
  if (at >= 0) {
    throw new CheckError(`--check: the peer's WRITE differs from the pattern at byte ${at}`);
  }
}

/** The send ping-pong; `preposted` receives are already posted. */
export async function runSendLat(
  g: PerfGuest,
  remote: KeyMessage,
  o: LatRun & { preposted: number },
  ctx: RunContext,
): Promise<LatReport> {
  fillPattern(g.out.subarray(0, o.size), o.size);
  const make = wrMaker(g, remote, o, ctx);
  const sgList = [{ addr: g.inAddr, length: o.size, lkey: g.mr.lkey }];
  const posted = new Float64Array(o.iters);
  let scnt = 0, rcnt = 0, ccnt = 0;
  let recvPosted = o.preposted;
  const counters = () => `scnt=${scnt}, rcnt=${rcnt}, ccnt=${ccnt}`;
  const bar = ctx.progress(`send_lat ${o.size} B`, o.iters);
  try {
    while (scnt < o.iters || rcnt < o.iters || ccnt < o.iters) {
      if (rcnt < o.iters && !(scnt < 1 && o.client)) {
        for (;;) {
          const wc = g.recvCq.poll(1)[0];
          if (wc !== undefined) {
            expectSuccess(wc, ctx.side, counters);
            if (ctx.check && wc.byteLen !== o.size) {
              throw new CheckError(
                `--check: receive ${rcnt} got ${wc.byteLen} bytes, expected ${o.size}`,
              );
            }
            break;
          }
          ccnt = reapSends(g, ccnt, ctx, counters);
          await ctx.pacer.idle(() =>
            `${ctx.side} waits for the peer's SEND ${rcnt + 1} (${counters()})`
          );
        }
        ctx.pacer.progress();
        rcnt++;
        if (recvPosted < o.iters) {
          g.qp.postRecv({ wrId: BigInt(recvPosted), sgList });
          recvPosted++;
        }
      }
      if (scnt < o.iters) {
        if (scnt - ccnt >= o.sqDepth) {
          ccnt = await sqRoom(g, { scnt, ccnt, sqDepth: o.sqDepth }, ctx, counters);
        }
        posted[scnt] = performance.now();
        g.qp.postSend(make(scnt, signaled(scnt, o.cqMod, o.iters)));
        scnt++;
      }
      ccnt = reapSends(g, ccnt, ctx, counters);
      if (rcnt >= o.iters && scnt >= o.iters && ccnt < o.iters) {
        await ctx.pacer.idle(() =>
          `${ctx.side} waits for its last SEND to complete (${counters()})`
        );
      }
      bar.update(rcnt);
    }
  } finally {
    bar.done();
  }
  if (ctx.check) {
    const at = findMismatch(g.in.subarray(0, o.size), o.size);
    if (at >= 0) {
      throw new CheckError(`--check: the SEND received differs from the pattern at byte ${at}`);
    }
  }
  return latReport(o.size, posted, 2);
}

/** READs (or atomics) one at a time. */
export async function runReadLat(
  g: PerfGuest,
  remote: KeyMessage,
  o: LatRun,
  ctx: RunContext,
): Promise<LatReport> {
  const atomic = o.verb === "atomic";
  const make = wrMaker(g, remote, o, ctx);
  const result = new DataView(g.scratch.buffer, g.scratch.byteOffset + ATOMIC_RESULT_OFFSET, 8);
  const posted = new Float64Array(o.iters);
  g.out.subarray(0, o.size).fill(0);
  const bar = ctx.progress(`${o.verb}_lat ${o.size} B`, o.iters);
  try {
    for (let i = 0; i < o.iters; i++) {
      const before = ctx.atomics;
      posted[i] = performance.now();
      g.qp.postSend(make(i, true));
      await nextCompletion(
        g,
        "send",
        ctx,
        () => `${ctx.side} waits for ${o.verb} ${i + 1} of ${o.iters}`,
      );
      if (atomic && ctx.check) {
        const old = result.getBigUint64(0, true);
        if (old !== BigInt(before)) {
          throw new CheckError(
            `--check: ${o.atomicType} ${
              i + 1
            } returned ${old}, expected the count so far ${before}`,
          );
        }
      }
      bar.update(i + 1);
    }
  } finally {
    bar.done();
  }
  if (ctx.check) {
    if (atomic) {
      const back = await readBack(g, remote, 0, 8, ctx);
      const value = new DataView(back.buffer, back.byteOffset, 8).getBigUint64(0, true);
      if (value !== BigInt(ctx.atomics)) {
        throw new CheckError(
          `--check: the peer's counter holds ${value} after ${ctx.atomics} operations`,
        );
      }
    } else {
      const at = findMismatch(g.out.subarray(0, o.size), READ_PATTERN_SIZE);
      if (at >= 0) {
        throw new CheckError(`--check: the data read differs from the pattern at byte ${at}`);
      }
    }
  }
  return latReport(o.size, posted, 1);
}
