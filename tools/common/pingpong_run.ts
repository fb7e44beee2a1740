/**
 * One pingpong run, as rdma-core's `ibv_rc_pingpong` / `ibv_ud_pingpong`
 * `main`: set up, post `rx_depth` receives, exchange addresses over TCP,
 * then bounce one message back and forth `iters` times (the client sends
 * first; each side sends again once its last send completed and a message
 * came in), and print the throughput and latency lines.
 *
 * Completions are busy-polled by default (the CPU is handed to other
 * threads with `sched_yield` while nothing comes, since this machine often
 * has fewer cores than busy threads) or, with `-e`, waited for as CQ events.
 *
 * @module
 */

import { setImmediate } from "node:timers";
import { VerbsError, type WorkCompletion } from "../../mod.ts";
import { yieldCpu } from "../../virtqueue/sys/libc.ts";
import { DeviceLookupError } from "./devinfo_device.ts";
import type { PingpongOptions } from "./pingpong_args.ts";
import { invalidPages, markPages } from "./pingpong_check.ts";
import { PingpongContext, PingpongError, RECV_WRID, SEND_WRID } from "./pingpong_context.ts";
import { exchangeAsClient, ExchangeError, ExchangeServer } from "./pingpong_exchange.ts";
import { formatAddress, formatFailedStatus, formatSummary } from "./pingpong_format.ts";
import type { PingpongDest } from "./pingpong_wire.ts";

/** Where a run writes: stdout and stderr lines. */
export interface PingpongOutput {
  /** A line for stdout. */
  out(line: string): void;
  /** A line for stderr. */
  err(line: string): void;
}

/** The process's own stdout and stderr. */
export const CONSOLE_OUTPUT: PingpongOutput = {
  out: (line) => console.log(line),
  err: (line) => console.error(line),
};

/** Empty polls between two `sched_yield`s. */
const POLLS_PER_YIELD = 64;
/** Empty polls between two turns of the event loop (lets a failed device be noticed). */
const POLLS_PER_TURN = 4096;

function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** The loop's counters, as rdma-core's locals. */
interface LoopState {
  scnt: number;
  rcnt: number;
  routs: number;
  pending: number;
}

/** A run failed in the loop; lines were already printed. */
class LoopFailed extends Error {
  override name = "LoopFailed";
}

/**
 * Runs one side. Returns the process exit code: 0 on success, 1 on any
 * failure (each reported on stderr as rdma-core words it), including a
 * completion in error and, with `check`, data that came back wrong.
 */
export async function runPingpong(
  o: PingpongOptions,
  output: PingpongOutput = CONSOLE_OUTPUT,
): Promise<number> {
  let ctx: PingpongContext | undefined;
  let server: ExchangeServer | undefined;
  try {
    ctx = await PingpongContext.open(o);
    const routs = ctx.postRecv(o.rxDepth);
    if (routs < o.rxDepth) throw new PingpongError(`Couldn't post receive (${routs})`);
    if (o.events) ctx.cq.reqNotify();
    const mine = ctx.localDest();
    // Listening before the local address is printed: whoever waits for that
    // line (a script, a test) may connect at once.
    if (o.server === undefined) server = ExchangeServer.listen(o.port);
    output.out(formatAddress("local", mine, { ud: o.ud }));
    const side = ctx;
    const remote = o.server !== undefined
      ? await exchangeAsClient(o.server, o.port, mine)
      : await server!.exchange(mine, async (peer) => {
        try {
          await side.connect(peer);
        } catch (e) {
          throw new ExchangeError(`${(e as Error).message}\nCouldn't connect to remote QP`);
        }
      });
    output.out(formatAddress("remote", remote));
    if (o.server !== undefined) await ctx.connect(remote);
    const usec = await bounce(ctx, o, remote, routs, output);
    for (const line of formatSummary({ size: o.size, iters: o.iters, usec })) output.out(line);
    if (o.check) {
      const bad = invalidPages(ctx.message);
      for (const page of bad) output.out(`invalid data in page ${page}`);
      if (bad.length > 0) return 1;
    }
    return 0;
  } catch (e) {
    if (e instanceof LoopFailed) return 1;
    if (
      e instanceof PingpongError || e instanceof ExchangeError || e instanceof DeviceLookupError
    ) {
      for (const line of e.message.split("\n")) output.err(line);
    } else {
      output.err(`pingpong: ${e instanceof Error ? e.message : String(e)}`);
    }
    return 1;
  } finally {
    server?.close();
    await ctx?.close();
  }
}

/** The measured loop; returns the elapsed microseconds. */
async function bounce(
  ctx: PingpongContext,
  o: PingpongOptions,
  remote: PingpongDest,
  routs: number,
  output: PingpongOutput,
): Promise<number> {
  const st: LoopState = { scnt: 0, rcnt: 0, routs, pending: RECV_WRID };
  if (o.server !== undefined) {
    if (o.check) markPages(ctx.message);
    send(ctx, remote);
    st.pending |= SEND_WRID;
  }
  const start = performance.now();
  while (st.rcnt < o.iters || st.scnt < o.iters) {
    let wcs: WorkCompletion[];
    try {
      if (o.events) {
        await ctx.cq.getEvent();
        ctx.cq.reqNotify();
        wcs = ctx.cq.poll(2);
      } else {
        wcs = await pollSome(ctx);
      }
    } catch (e) {
      output.err(`poll CQ failed: ${(e as Error).message}`);
      throw new LoopFailed();
    }
    for (const wc of wcs) {
      if (!handle(ctx, o, remote, st, wc, output)) {
        // ibv_rc_pingpong adds this line; ibv_ud_pingpong stops at the first.
        if (!o.ud) output.err(`parse WC failed ${wcs.length}`);
        throw new LoopFailed();
      }
    }
  }
  return (performance.now() - start) * 1000;
}

/** Busy-polls until the CQ yields completions (up to two, as rdma-core asks for). */
async function pollSome(ctx: PingpongContext): Promise<WorkCompletion[]> {
  for (let idle = 1;; idle++) {
    const wcs = ctx.cq.poll(2);
    if (wcs.length > 0) return wcs;
    if (idle % POLLS_PER_YIELD === 0) yieldCpu();
    if (idle % POLLS_PER_TURN === 0) await nextTurn();
  }
}

function send(ctx: PingpongContext, remote: PingpongDest): void {
  try {
    ctx.postSend(remote.qpn);
  } catch (e) {
    if (e instanceof VerbsError || e instanceof PingpongError) {
      throw new PingpongError(`Couldn't post send: ${e.message}`, { cause: e });
    }
    throw e;
  }
}

/** `parse_single_wc`: false (after printing why) when the run must stop. */
function handle(
  ctx: PingpongContext,
  o: PingpongOptions,
  remote: PingpongDest,
  st: LoopState,
  wc: WorkCompletion,
  output: PingpongOutput,
): boolean {
  if (wc.status !== "SUCCESS") {
    output.err(formatFailedStatus(wc.status, wc.wrId));
    return false;
  }
  const wrId = Number(wc.wrId);
  if (wrId === SEND_WRID) {
    st.scnt++;
  } else if (wrId === RECV_WRID) {
    if (--st.routs <= 1) {
      st.routs += ctx.postRecv(o.rxDepth - st.routs);
      if (st.routs < o.rxDepth) {
        output.err(`Couldn't post receive (${st.routs})`);
        return false;
      }
    }
    st.rcnt++;
  } else {
    output.err(`Completion for unknown wr_id ${BigInt.asIntN(32, wc.wrId)}`);
    return false;
  }
  st.pending &= ~wrId;
  if (st.scnt < o.iters && st.pending === 0) {
    try {
      send(ctx, remote);
    } catch (e) {
      output.err((e as Error).message);
      return false;
    }
    st.pending = RECV_WRID | SEND_WRID;
  }
  return true;
}
