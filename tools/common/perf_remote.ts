/**
 * One side of a test against a peer on another machine (or process): the
 * server waits for a client on the TCP port, the client connects to the
 * server's host; the guest opens on the backend socket of this host.
 *
 * @module
 */

import type { Printer } from "./perf_format.ts";
import type { GuestPlan } from "./perf_guest.ts";
import { PerfGuest } from "./perf_guest.ts";
import type { PerfOptions } from "./perf_options.ts";
import { Pacer } from "./perf_pacer.ts";
import type { Progress } from "./perf_progress.ts";
import { runSide, type SideReports } from "./perf_session.ts";
import { PerftestChannel } from "./perf_wire.ts";

/** Makes progress bars; `silent` makes ones that never draw. */
export interface ProgressMaker {
  /** A bar for a run of `total` steps. */
  (label: string, total: number): Progress;
  /** A bar that never draws. */
  silent: (label: string, total: number) => Progress;
}

/** How long a client keeps retrying a refused connection (the server may start a moment later). */
const CONNECT_RETRY_MS = 10_000;

/** The resources a side needs for `o`. */
export function guestPlan(o: PerfOptions): GuestPlan {
  const send = o.test.verb === "send";
  return {
    areaBytes: o.all ? o.maxSize : o.size,
    sqDepth: o.test.kind === "bw" ? o.txDepth : Math.max(o.txDepth, o.cqMod),
    rqDepth: send ? Math.min(o.rxDepth, o.iters) : 1,
    maxInline: o.inline,
    gidIndex: o.gidIndex,
  };
}

/**
 * Runs this side: the server when `o.server` is null (it prints the
 * "Waiting for client" box through `notice` once it listens), else the
 * client of `o.server`.
 */
export async function runRemote(
  o: PerfOptions,
  printer: Printer,
  progress: ProgressMaker,
  notice: (line: string) => void,
): Promise<SideReports> {
  const g = await PerfGuest.open(o.socket, guestPlan(o));
  let ch: PerftestChannel | null = null;
  try {
    if (o.server === null) {
      const listener = Deno.listen({ hostname: "0.0.0.0", port: o.port, transport: "tcp" });
      notice("");
      notice("************************************");
      notice("* Waiting for client to connect... *");
      notice("************************************");
      ch = await PerftestChannel.accept(listener);
    } else {
      ch = await PerftestChannel.connect(o.server, o.port, { retryMs: CONNECT_RETRY_MS });
    }
    const pacer = new Pacer({ yieldEvery: 64, napAfter: 64, napUs: 5, stallMs: o.stallMs });
    return await runSide(o, ch, g, printer, {
      pacer,
      side: ch.client ? "client" : "server",
      progress,
      check: o.check,
      atomics: 0,
    });
  } finally {
    ch?.close();
    await g.close();
  }
}
