/**
 * The perftest family on a vrdma device: `write_bw`, `write_lat`,
 * `read_bw`, `read_lat`, `send_bw`, `send_lat`, `atomic_bw`, `atomic_lat`.
 *
 *     deno task perf -- write_bw --local --size 65536 --iters 2000 --json
 *     deno task perf -- read_lat --socket ./vrdma.sock            # server
 *     deno task perf -- read_lat --socket ./vrdma.sock 10.0.0.1   # client
 *
 * Without a host argument this side is the server, with one the client;
 * they speak perftest's TCP exchange (tools/common/perf_wire.ts), so either
 * may be the real `ib_write_bw` and friends. `--local` runs both sides
 * here on two backends it starts. Output is perftest's table, or with
 * `--json` one JSON object per size; `--plot FILE.svg` draws the figures
 * against message size. `deno task perf -- --help` lists every flag.
 *
 * Exit status: 0 on success; 1 when a work completion fails, `--check`
 * finds wrong data, nothing completes for `--timeout` seconds or the peer
 * goes away; 2 on bad usage.
 *
 * @module
 */

import { HELP, parsePerfArgs, type PerfOptions, UsageError } from "./common/perf_options.ts";
import { JsonPrinter, type Printer, TablePrinter } from "./common/perf_format.ts";
import { runLocal } from "./common/perf_local.ts";
import { plotSvg } from "./common/perf_plot.ts";
import { Progress } from "./common/perf_progress.ts";
import { type ProgressMaker, runRemote } from "./common/perf_remote.ts";
import type { SideReports } from "./common/perf_session.ts";

function progressMaker(o: PerfOptions): ProgressMaker {
  const enabled = o.progress || Deno.stderr.isTerminal();
  const make =
    ((label: string, total: number) =>
      new Progress(`${o.test.name} ${label}`, total, { enabled })) as ProgressMaker;
  make.silent = (label, total) => new Progress(label, total, { enabled: false });
  return make;
}

/** Writes the `--plot` chart of what this side measured. */
async function writePlot(path: string, o: PerfOptions, reports: SideReports): Promise<void> {
  const points = reports.kind === "bw"
    ? reports.reports.map((r) => ({ bytes: r.bytes, value: r.bwAvgMBps }))
    : reports.reports.map((r) => ({ bytes: r.bytes, value: r.medianUs }));
  if (points.length === 0) {
    throw new Error(
      `--plot ${path}: this side measured nothing to plot (the ${o.test.name} server)`,
    );
  }
  const svg = plotSvg({
    title: `${o.test.name}: ${reports.kind === "bw" ? "average bandwidth" : "typical latency"}`,
    yLabel: reports.kind === "bw" ? "BW average [MB/sec]" : "t_typical [usec]",
    points,
  });
  await Deno.writeTextFile(path, svg);
}

/** Runs the tool with `args`; resolves to the exit status. */
export async function main(args: string[]): Promise<number> {
  // `deno task perf -- write_bw ...` hands the script the "--" too.
  const rest = args[0] === "--" ? args.slice(1) : args;
  let o: PerfOptions | null;
  try {
    o = parsePerfArgs(rest);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`perf: ${e.message}\n(deno task perf -- --help lists the options)`);
    return 2;
  }
  if (o === null) {
    console.log(HELP);
    return 0;
  }
  const write = (line: string) => console.log(line);
  const printer: Printer = o.json ? new JsonPrinter(write, o.test.name) : new TablePrinter(write);
  const progress = progressMaker(o);
  try {
    const reports = o.local
      ? await runLocal(o, printer, progress)
      : await runRemote(o, printer, progress, o.json ? () => {} : write);
    if (o.plot !== null) await writePlot(o.plot, o, reports);
    return 0;
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    console.error(`perf ${o.test.name}: ${message}`);
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
