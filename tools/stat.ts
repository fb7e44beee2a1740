/**
 * `rdma statistic` for vrdma: reads a running backend's counters over its
 * management socket (`<socket>.mgmt`) and prints them per port (`link
 * vrdma0/1`, Linux soft-RoCE's counter names where it has one), per device
 * and per QP (the wire counters of every QP that sent or received RoCE
 * packets), like `rdma statistic show` and `rdma statistic qp show`.
 *
 * ```sh
 * deno run -A --unstable-net tools/stat.ts --socket /tmp/host-a.sock
 * deno run -A --unstable-net tools/stat.ts --socket /tmp/host-a.sock --watch 1 --qp 17
 * deno run -A --unstable-net tools/stat.ts --socket /tmp/host-a.sock --json
 * ```
 *
 * `--help` lists the options. Exit status 0 on success, 1 when the backend
 * cannot be read or `--qp` names a QP without counters, 2 for bad arguments.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { COUNTER_NAMES } from "../backend/data_plane/stats.ts";
import { managementPath, readReport } from "../backend/management.ts";
import {
  type CountersReport,
  DEVICE_COUNTERS,
  PORT_COUNTER_NAMES,
  QP_STAT_NAMES,
  type QpReport,
  snakeCase,
} from "../backend/metrics.ts";

/** The default guest socket, as the backend's (`backend/service.ts` DEFAULT_SOCKET). */
const DEFAULT_SOCKET = "vrdma.sock";
/** The link name shown, as `ibv_devinfo` names the device. */
const LINK = "vrdma0";

const USAGE = `Usage: deno task stat -- [options]

Shows a running vrdma backend's counters: port (link ${LINK}/1, named as Linux
soft-RoCE's where it has one), device, and per QP (QPs that used the wire).

Options:
  --socket PATH   the backend's guest socket; its counters are read from
                  PATH.mgmt (default: ./${DEFAULT_SOCKET})
  --qp N          only the QP with number N (per-QP counters only)
  --watch N       refresh every N seconds (fractions allowed), with rates per second
  --count K       with --watch: stop after K refreshes (default: until interrupted)
  --json          one JSON object per reading (with --watch: one per line, rates included)
  -h, --help      this text
`;

/** What the command line asked for. */
export interface StatOptions {
  /** The backend's guest socket. */
  socket: string;
  /** Only this QP number. */
  qp: number | undefined;
  /** Seconds between readings, or undefined for one reading. */
  watch: number | undefined;
  /** Readings before stopping (with `watch`). */
  count: number;
  /** JSON instead of tables. */
  json: boolean;
}

/** The parse result: options, or usage (with the error that caused it, if any). */
export type StatArgs = { kind: "run"; options: StatOptions } | { kind: "usage"; error?: string };

/**
 * Parses the command line.
 *
 * @example
 * ```ts
 * import { parseStatArgs } from "./stat.ts";
 * const r = parseStatArgs(["--socket", "/tmp/a.sock", "--watch", "0.5", "--qp", "17"]);
 * if (r.kind !== "run" || r.options.watch !== 0.5 || r.options.qp !== 17) throw new Error("args");
 * ```
 */
export function parseStatArgs(args: readonly string[]): StatArgs {
  let values;
  try {
    values = parseArgs({
      args: [...args],
      options: {
        socket: { type: "string" },
        qp: { type: "string" },
        watch: { type: "string" },
        count: { type: "string" },
        json: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (e) {
    return { kind: "usage", error: `stat: ${(e as Error).message}` };
  }
  if (values.help) return { kind: "usage" };
  const bad = (error: string): StatArgs => ({ kind: "usage", error: `stat: ${error}` });
  let qp: number | undefined;
  if (values.qp !== undefined) {
    qp = Number(values.qp);
    if (!/^\d+$/.test(values.qp) || qp >= 1 << 24) {
      return bad(`--qp ${values.qp} is not a QP number (0..16777215)`);
    }
  }
  let watch: number | undefined;
  if (values.watch !== undefined) {
    watch = Number(values.watch);
    if (values.watch.trim() === "" || !Number.isFinite(watch) || watch <= 0) {
      return bad(`--watch ${values.watch} is not a positive number of seconds`);
    }
  }
  let count = Infinity;
  if (values.count !== undefined) {
    if (watch === undefined) return bad("--count needs --watch");
    count = Number(values.count);
    if (!/^\d+$/.test(values.count) || count < 1) {
      return bad(`--count ${values.count} is not a positive integer`);
    }
  }
  return {
    kind: "run",
    options: {
      socket: values.socket ?? DEFAULT_SOCKET,
      qp,
      watch,
      count,
      json: values.json ?? false,
    },
  };
}

/** Per-second rates between two readings, in the report's shape (gauges left out). */
export interface ReportRates {
  /** Seconds between the readings. */
  seconds: number;
  /** Device counters (not the gauges). */
  device: Record<string, number>;
  /** Port counters by port number. */
  ports: { port: number; counters: Record<string, number> }[];
  /** Per-QP counters, for the QPs in both readings. */
  qps: { guest: number; qpNum: number; counters: Record<string, number> }[];
}

function perSecond(
  now: Record<string, number>,
  before: Record<string, number> | undefined,
  seconds: number,
): Record<string, number> {
  const out: Record<string, number> = {};
  if (before === undefined) return out;
  for (const [name, value] of Object.entries(now)) {
    const was = before[name];
    if (was !== undefined) out[name] = (value - was) / seconds;
  }
  return out;
}

/**
 * Rates per second from `before` to `now`. A QP is matched by guest and
 * number, so a QPN reused by a new QP starts without rates.
 */
export function reportRates(before: CountersReport, now: CountersReport): ReportRates {
  const seconds = Math.max(1e-3, (now.time - before.time) / 1000);
  const device: Record<string, number> = {};
  const deviceRates = perSecond(now.device, before.device, seconds);
  for (const name of COUNTER_NAMES) {
    if (!DEVICE_COUNTERS[name].gauge) device[name] = deviceRates[name] ?? 0;
  }
  return {
    seconds,
    device,
    ports: now.ports.map((p) => ({
      port: p.port,
      counters: perSecond(
        p.counters,
        before.ports.find((b) => b.port === p.port)?.counters,
        seconds,
      ),
    })),
    qps: now.qps.flatMap((q) => {
      const was = before.qps.find((b) => b.qpNum === q.qpNum && b.guest === q.guest);
      return was === undefined ? [] : [{
        guest: q.guest,
        qpNum: q.qpNum,
        counters: perSecond(q.counters, was.counters, seconds),
      }];
    }),
  };
}

/** One counter in a table. */
interface Cell {
  name: string;
  value: number;
  rate: number | undefined;
}

function rateText(rate: number): string {
  const r = Math.abs(rate) >= 100 || rate === 0 ? rate.toFixed(0) : rate.toFixed(1);
  return `${r}/s`;
}

/**
 * Lays cells out in aligned columns, as many per line as fit `width`: each
 * cell is `name value` (and `rate/s` when rates are shown).
 */
function grid(cells: Cell[], width: number, withRates: boolean): string[] {
  if (cells.length === 0) return [];
  const nameW = Math.max(...cells.map((c) => c.name.length));
  const valueW = Math.max(...cells.map((c) => String(c.value).length));
  const rates = cells.map((c) => (c.rate === undefined ? "" : rateText(c.rate)));
  const rateW = withRates ? Math.max(3, ...rates.map((r) => r.length)) : 0;
  const cellW = nameW + 1 + valueW + (withRates ? 1 + rateW : 0);
  const indent = "  ";
  const gap = "   ";
  const perLine = Math.max(
    1,
    Math.floor((width - indent.length + gap.length) / (cellW + gap.length)),
  );
  const lines: string[] = [];
  for (let i = 0; i < cells.length; i += perLine) {
    const row = cells.slice(i, i + perLine).map((c, j) => {
      let text = `${c.name.padEnd(nameW)} ${String(c.value).padStart(valueW)}`;
      if (withRates) text += ` ${rates[i + j]!.padStart(rateW)}`;
      return text;
    });
    lines.push(indent + row.join(gap).trimEnd());
  }
  return lines;
}

/** How {@linkcode formatReport} lays the report out. */
export interface FormatOptions {
  /** Rates since the previous reading (watch mode, from the second reading on). */
  rates?: ReportRates;
  /** Show only this QP (and no port or device section). */
  qp?: number;
  /** Line width to fill. Default 100. */
  width?: number;
}

function qpTitle(q: QpReport): string {
  const peer = q.qpType === "UD" ? "" : ` -> qp ${q.destQpNum} at ${q.dgid}`;
  return `qp ${q.qpNum} guest ${q.guest} handle ${q.qpHandle} ${q.qpType} ${q.state}${peer}`;
}

/**
 * A report as text tables: a header line, then `link vrdma0/1` (port
 * counters), `device`, and one block per QP, each counter as `name value`
 * (plus `rate/s` when `rates` are given).
 *
 * @example
 * ```ts
 * import { formatReport } from "./stat.ts";
 * import { Counters } from "../backend/data_plane/stats.ts";
 * import { portCounters } from "../backend/metrics.ts";
 * const device = new Counters().snapshot();
 * device.udpPacketsSent = 42;
 * const text = formatReport({
 *   time: 0,
 *   host: { ip: "127.0.0.1", gid: "::ffff:127.0.0.1", udpPort: 4791 },
 *   device,
 *   ports: [{ port: 1, counters: portCounters(device) }],
 *   qps: [],
 * });
 * if (!/sent_pkts +42/.test(text)) throw new Error(text);
 * ```
 */
export function formatReport(report: CountersReport, options: FormatOptions = {}): string {
  const width = options.width ?? 100;
  const rates = options.rates;
  const withRates = rates !== undefined;
  const h = report.host;
  const when = new Date(report.time).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  const lines = [
    `backend ${h.ip}  gid ${h.gid}  RoCEv2 udp/${h.udpPort}  ${when}` +
    (withRates ? `  (rates over ${rates.seconds.toFixed(1)} s)` : ""),
  ];
  if (options.qp === undefined) {
    for (const p of report.ports) {
      const r = rates?.ports.find((x) => x.port === p.port)?.counters;
      lines.push("", `link ${LINK}/${p.port}`);
      lines.push(...grid(
        PORT_COUNTER_NAMES.map((name) => ({ name, value: p.counters[name], rate: r?.[name] })),
        width,
        withRates,
      ));
    }
    lines.push("", "device");
    lines.push(...grid(
      COUNTER_NAMES.map((name) => ({
        name: snakeCase(name),
        value: report.device[name],
        rate: rates?.device[name],
      })),
      width,
      withRates,
    ));
  }
  const qps = report.qps.filter((q) => options.qp === undefined || q.qpNum === options.qp);
  if (qps.length === 0 && options.qp === undefined) {
    lines.push("", "qp: none has sent or received RoCE packets");
  }
  for (const q of qps) {
    const r = rates?.qps.find((x) => x.qpNum === q.qpNum && x.guest === q.guest)?.counters;
    lines.push("", qpTitle(q));
    lines.push(...grid(
      QP_STAT_NAMES.map((name) => ({ name, value: q.counters[name], rate: r?.[name] })),
      width,
      withRates,
    ));
  }
  if (qps.length === 0 && options.qp !== undefined) {
    lines.push("", `qp ${options.qp}: no counters (only QPs that used the wire have them)`);
  }
  return lines.join("\n") + "\n";
}

/** The report with only QP `qp`'s row when one is asked for. */
function filtered(report: CountersReport, qp: number | undefined): CountersReport {
  return qp === undefined ? report : { ...report, qps: report.qps.filter((q) => q.qpNum === qp) };
}

function terminalWidth(): number {
  try {
    return Deno.stdout.isTerminal() ? Deno.consoleSize().columns : 100;
  } catch {
    return 100;
  }
}

/** Runs the tool on `args`; returns the exit code. */
export async function main(args: readonly string[]): Promise<number> {
  // `deno task ... -- args` hands the script the "--" too.
  const parsed = parseStatArgs(args[0] === "--" ? args.slice(1) : args);
  if (parsed.kind === "usage") {
    if (parsed.error !== undefined) {
      console.error(`${parsed.error}\n\n${USAGE}`);
      return 2;
    }
    console.log(USAGE);
    return 0;
  }
  const o = parsed.options;
  const read = async (): Promise<CountersReport | null> => {
    try {
      return await readReport(o.socket);
    } catch (e) {
      console.error(`stat: cannot read ${managementPath(o.socket)}: ${(e as Error).message}`);
      return null;
    }
  };
  const out = (text: string) => Deno.stdout.writeSync(new TextEncoder().encode(text));

  if (o.watch === undefined) {
    const report = await read();
    if (report === null) return 1;
    const shown = filtered(report, o.qp);
    if (o.json) out(JSON.stringify(shown) + "\n");
    else out(formatReport(shown, { qp: o.qp, width: terminalWidth() }));
    if (o.qp !== undefined && shown.qps.length === 0) {
      console.error(`stat: qp ${o.qp} has no counters (only QPs that used the wire have them)`);
      return 1;
    }
    return 0;
  }

  const clear = !o.json && Deno.stdout.isTerminal();
  let before: CountersReport | undefined;
  for (let n = 0; n < o.count; n++) {
    if (n > 0) await new Promise((r) => setTimeout(r, o.watch! * 1000));
    const report = await read();
    if (report === null) return 1;
    const shown = filtered(report, o.qp);
    const rates = before === undefined ? undefined : reportRates(before, shown);
    before = shown;
    if (o.json) {
      out(JSON.stringify(rates === undefined ? shown : { ...shown, rates }) + "\n");
      continue;
    }
    const text = formatReport(shown, { qp: o.qp, rates, width: terminalWidth() });
    // Like watch(1) on a terminal; into a file or pipe, one reading after another.
    out(clear ? `\x1b[H\x1b[2J${text}` : `${n > 0 ? "\n" : ""}${text}`);
  }
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
