/**
 * `--local`: both sides of a test on this machine. Two backends in this
 * process on two loopback addresses sharing one random RoCE UDP port (the
 * adapter sends to the port it listens on), a guest on each, and the two
 * sides of the test as async tasks of this one thread, talking perftest's
 * TCP exchange over loopback like two machines would.
 *
 * When one side fails, the other is stopped (its channel closed, its
 * loops aborted) and the first failure is what the caller gets.
 *
 * @module
 */

import { type Backend, startBackend } from "../../mod.ts";
import type { Printer } from "./perf_format.ts";
import { SilentPrinter } from "./perf_format.ts";
import { PerfGuest } from "./perf_guest.ts";
import type { RunContext } from "./perf_ops.ts";
import type { PerfOptions } from "./perf_options.ts";
import { Pacer } from "./perf_pacer.ts";
import { guestPlan, type ProgressMaker } from "./perf_remote.ts";
import { runSide, type SideReports } from "./perf_session.ts";
import { PerftestChannel } from "./perf_wire.ts";

/** How many random RoCE ports to try before giving up. */
const PORT_ATTEMPTS = 5;

/** Two running backends and their socket directory. */
interface LocalHosts {
  a: Backend;
  b: Backend;
  dir: string;
}

async function startHosts(ips: [string, string]): Promise<LocalHosts> {
  const dir = Deno.makeTempDirSync({ prefix: "vrdma-perf-" });
  for (let attempt = 1;; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 40000);
    let a: Backend | undefined;
    try {
      a = await startBackend({ socket: `${dir}/a.sock`, ip: ips[0], port, logLevel: "silent" });
      const b = await startBackend({
        socket: `${dir}/b.sock`,
        ip: ips[1],
        port,
        logLevel: "silent",
      });
      return { a, b, dir };
    } catch (e) {
      await a?.close();
      if (attempt >= PORT_ATTEMPTS) {
        Deno.removeSync(dir, { recursive: true });
        throw new Error(
          `could not start the two backends on ${ips.join(" and ")} (last UDP port ${port}): ` +
            (e as Error).message,
          { cause: e },
        );
      }
    }
  }
}

/**
 * Runs both sides of `o.test` here; the client's figures go to `printer`
 * (the server's are silent). Returns the client's reports.
 */
export async function runLocal(
  o: PerfOptions,
  printer: Printer,
  progress: ProgressMaker,
): Promise<SideReports> {
  const hosts = await startHosts(o.localIps);
  const guests: PerfGuest[] = [];
  const channels: PerftestChannel[] = [];
  try {
    const plan = guestPlan(o);
    const server = await PerfGuest.open(hosts.b.socket, plan);
    guests.push(server);
    const client = await PerfGuest.open(hosts.a.socket, plan);
    guests.push(client);
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0, transport: "tcp" });
    const [serverCh, clientCh] = await Promise.all([
      PerftestChannel.accept(listener),
      PerftestChannel.connect("127.0.0.1", listener.addr.port),
    ]);
    channels.push(serverCh, clientCh);
    // One pacer: an empty poll of either side counts toward the nap. Every
    // empty poll yields (the other side may be the one to answer), every
    // other one naps: on two cores the hosts' Workers need the time more
    // than this thread does (measured: napping every poll gave a quarter
    // of the latency of napping every 64th on a busy machine).
    const pacer = new Pacer({ yieldEvery: 1, napAfter: 2, napUs: 5, stallMs: o.stallMs });
    const ctx = (side: string, bar: boolean): RunContext => ({
      pacer,
      side,
      progress: bar ? progress : progress.silent,
      check: o.check,
      atomics: 0,
    });
    let first: unknown = null;
    const guard = (p: Promise<SideReports>) =>
      p.catch((e) => {
        first ??= e;
        pacer.abort(e instanceof Error ? e : new Error(String(e)));
        for (const ch of channels) ch.close();
        throw e;
      });
    const results = await Promise.allSettled([
      guard(runSide(o, serverCh, server, new SilentPrinter(), ctx("server", false))),
      guard(runSide(o, clientCh, client, printer, ctx("client", true))),
    ]);
    if (first !== null) throw first;
    return (results[1] as PromiseFulfilledResult<SideReports>).value;
  } finally {
    for (const ch of channels) ch.close();
    for (const g of guests) await g.close().catch(() => {});
    await hosts.a.close().catch(() => {});
    await hosts.b.close().catch(() => {});
    Deno.removeSync(hosts.dir, { recursive: true });
  }
}
