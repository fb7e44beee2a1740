/**
 * The perf tool's command line: the tests it runs and their perftest
 * defaults, the flags, and their checks.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { DEFAULT_SOCKET } from "../../mod.ts";
import { PERFTEST_PORT } from "./perf_wire.ts";

/** What a test's WRs do. */
export type Verb = "write" | "read" | "send" | "atomic";
/** Bandwidth or latency. */
export type Kind = "bw" | "lat";
/** The tests, named as perftest's binaries without the `ib_` prefix. */
export type TestName =
  | "write_bw"
  | "write_lat"
  | "read_bw"
  | "read_lat"
  | "send_bw"
  | "send_lat"
  | "atomic_bw"
  | "atomic_lat";
/** The atomic operation of the atomic tests (perftest's `-A`). */
export type AtomicType = "FETCH_AND_ADD" | "CMP_AND_SWAP";

/** A test. */
export interface TestSpec {
  /** Its name. */
  name: TestName;
  /** What its WRs do. */
  verb: Verb;
  /** Bandwidth or latency. */
  kind: Kind;
}

/** Every test, by name. */
export const TESTS: Readonly<Record<TestName, TestSpec>> = {
  write_bw: { name: "write_bw", verb: "write", kind: "bw" },
  write_lat: { name: "write_lat", verb: "write", kind: "lat" },
  read_bw: { name: "read_bw", verb: "read", kind: "bw" },
  read_lat: { name: "read_lat", verb: "read", kind: "lat" },
  send_bw: { name: "send_bw", verb: "send", kind: "bw" },
  send_lat: { name: "send_lat", verb: "send", kind: "lat" },
  atomic_bw: { name: "atomic_bw", verb: "atomic", kind: "bw" },
  atomic_lat: { name: "atomic_lat", verb: "atomic", kind: "lat" },
};

/** The largest size `--all` sweeps to (perftest: 2^23). */
export const MAX_SWEEP_SIZE = 1 << 23;
/** The largest message this tool takes. */
export const MAX_SIZE = 1 << 26;
/** perftest's smallest iteration count. */
export const MIN_ITERS = 5;
/** The most iterations a run takes: two timestamps each are kept (80 MB at this count). */
export const MAX_ITERS = 5_000_000;
/** Atomics move 8 bytes. */
export const ATOMIC_SIZE = 8;

/** Everything a run needs, checked. */
export interface PerfOptions {
  /** The test. */
  test: TestSpec;
  /** Message size (the largest of the sweep with `all`). */
  size: number;
  /** Iterations per size. */
  iters: number;
  /** Sweep sizes 2, 4, ... up to `maxSize`. */
  all: boolean;
  /** The sweep's last size. */
  maxSize: number;
  /** Path MTU asked for (bytes), or null for the port's active MTU. */
  mtu: number | null;
  /** WRs in flight at most. */
  txDepth: number;
  /** Every cqMod-th WR is signaled. */
  cqMod: number;
  /** Receive WRs posted ahead (send tests). */
  rxDepth: number;
  /** Print JSON lines instead of the table. */
  json: boolean;
  /** TCP port of the perftest exchange. */
  port: number;
  /** The backend's unix socket. */
  socket: string;
  /** Write an SVG plot here. */
  plot: string | null;
  /** Run both sides here, on two backends this tool starts. */
  local: boolean;
  /** The two loopback addresses of `local`'s backends. */
  localIps: [string, string];
  /** Verify the data moved. */
  check: boolean;
  /** Draw the progress bar even when stderr is not a terminal. */
  progress: boolean;
  /** The server to connect to; null for the server role. */
  server: string | null;
  /** The atomic operation. */
  atomicType: AtomicType;
  /** GID index of the local port. */
  gidIndex: number;
  /** Give up when nothing moves for this long (ms). */
  stallMs: number;
  /** Inline data the QP takes (perftest's `-I`). */
  inline: number;
}

/** What `--help` prints. */
export const HELP =
  `vrdma perf: the perftest family (ib_write_bw, ib_read_lat, ...) on a vrdma device.

Usage: deno task perf -- <test> [options] [server-host]

Tests: write_bw write_lat read_bw read_lat send_bw send_lat atomic_bw atomic_lat

Without server-host this side is the server and waits for a client on --port;
with it, this side connects as the client. The TCP exchange is perftest's, so
either side may be the real perftest (ib_write_bw, ...). --local runs both
sides here: two backends on two loopback addresses (one RoCE UDP port) and a
guest on each.

Options:
  -s, --size N         message size in bytes (bw: 65536, lat: 2, atomic: 8)
  -n, --iters N        iterations (bw: 5000, lat: 1000; ${MIN_ITERS}..${MAX_ITERS})
  -a, --all            sweep sizes 2 B .. 8 MiB in powers of two
      --max-size N     the sweep's last size (default 8388608)
  -m, --mtu N          path MTU 256..4096 (default: the port's active MTU, the
                       smaller of the two sides')
  -t, --tx-depth N     WRs in flight (bw: 128, lat: 1)
  -Q, --cq-mod N       signal every Nth WR (bw: 100, lat: 1)
  -r, --rx-depth N     receives posted ahead in send tests (512)
  -I, --inline-size N  inline data (write_lat: 220, send_lat: 236, else 0)
  -A, --atomic-type T  FETCH_AND_ADD (default) or CMP_AND_SWAP
  -x, --gid-index N    local GID index (0)
  -p, --port N         TCP port of the exchange (default ${PERFTEST_PORT}; --local
                       takes a free one); a client retries a refused
                       connection for 10 s
      --socket PATH    the backend's unix socket (default ./${DEFAULT_SOCKET})
      --json           one JSON object per size on stdout instead of the table
      --plot FILE.svg  draw bandwidth (or latency) against message size
      --local          run server and client here, on two backends of their own
      --local-ips A,B  the addresses of --local's backends (127.0.0.2,127.0.0.3)
      --check          verify the data (both sides vrdma): read back what was
                       written, compare what was read or received, count atomics
      --progress       draw the progress bar on stderr even when it is no terminal
      --timeout S      give up when nothing completes for S seconds (30)
  -h, --help           this text

Exit status: 0 on success, 1 when a work completion fails, a check fails or the
peer goes away, 2 on bad usage.`;

/** A usage error: the message says which flag and value. */
export class UsageError extends RangeError {
  /** Names the class in messages. */
  override name = "UsageError";
}

function integer(name: string, text: string | undefined, min: number, max: number): number | null {
  if (text === undefined) return null;
  const n = Number(text);
  if (!/^\s*(0x[0-9a-f]+|\d+)\s*$/i.test(text) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new UsageError(`${name} ${JSON.stringify(text)} is not an integer in ${min}..${max}`);
  }
  return n;
}

function isTest(name: string): name is TestName {
  return Object.hasOwn(TESTS, name);
}

/**
 * Parses the command line. Returns null for `--help`; throws
 * {@linkcode UsageError} for anything wrong, naming it.
 *
 * @example
 * ```ts
 * import { parsePerfArgs } from "./perf_options.ts";
 * const o = parsePerfArgs(["write_bw", "-s", "4096", "--local"])!;
 * if (o.size !== 4096 || o.iters !== 5000 || o.server !== null || !o.local) throw new Error("bad");
 * ```
 */
export function parsePerfArgs(args: string[]): PerfOptions | null {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        size: { type: "string", short: "s" },
        iters: { type: "string", short: "n" },
        all: { type: "boolean", short: "a" },
        "max-size": { type: "string" },
        mtu: { type: "string", short: "m" },
        "tx-depth": { type: "string", short: "t" },
        "cq-mod": { type: "string", short: "Q" },
        "rx-depth": { type: "string", short: "r" },
        "inline-size": { type: "string", short: "I" },
        "atomic-type": { type: "string", short: "A" },
        "gid-index": { type: "string", short: "x" },
        port: { type: "string", short: "p" },
        socket: { type: "string" },
        json: { type: "boolean" },
        plot: { type: "string" },
        local: { type: "boolean" },
        "local-ips": { type: "string" },
        check: { type: "boolean" },
        progress: { type: "boolean" },
        timeout: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const v = parsed.values;
  if (v.help) return null;
  const [testName, server, ...extra] = parsed.positionals;
  if (testName === undefined) throw new UsageError("no test given (write_bw, read_lat, ...)");
  if (!isTest(testName)) {
    throw new UsageError(`unknown test "${testName}"; tests: ${Object.keys(TESTS).join(", ")}`);
  }
  if (extra.length > 0) throw new UsageError(`unexpected arguments: ${extra.join(" ")}`);
  const test = TESTS[testName];
  const bw = test.kind === "bw";
  const atomic = test.verb === "atomic";
  const local = v.local ?? false;
  if (local && server !== undefined) {
    throw new UsageError(`--local runs both sides here: drop the server host "${server}"`);
  }
  const all = v.all ?? false;
  if (all && atomic) throw new UsageError(`--all: ${test.name} moves ${ATOMIC_SIZE} bytes only`);
  let size = integer("--size", v.size, 1, MAX_SIZE);
  if (atomic && size !== null && size !== ATOMIC_SIZE) {
    throw new UsageError(`--size ${size}: atomics move ${ATOMIC_SIZE} bytes`);
  }
  const maxSize = integer("--max-size", v["max-size"], 2, MAX_SWEEP_SIZE) ?? MAX_SWEEP_SIZE;
  if (v["max-size"] !== undefined && !all) throw new UsageError("--max-size goes with --all");
  size = all ? maxSize : size ?? (atomic ? ATOMIC_SIZE : bw ? 65536 : 2);
  const mtu = integer("--mtu", v.mtu, 256, 4096);
  if (mtu !== null && ![256, 512, 1024, 2048, 4096].includes(mtu)) {
    throw new UsageError(`--mtu ${mtu} is not 256, 512, 1024, 2048 or 4096`);
  }
  const iters = integer("--iters", v.iters, MIN_ITERS, MAX_ITERS) ?? (bw ? 5000 : 1000);
  const txDepth = integer("--tx-depth", v["tx-depth"], 1, 15000) ?? (bw ? 128 : 1);
  // perftest lowers the moderation to the depth: a window of WRs must end signaled.
  const cqMod = Math.min(integer("--cq-mod", v["cq-mod"], 1, 1024) ?? (bw ? 100 : 1), txDepth);
  const rxDepth = Math.min(integer("--rx-depth", v["rx-depth"], 1, 16384) ?? 512, iters);
  const defaultInline = test.name === "write_lat" ? 220 : test.name === "send_lat" ? 236 : 0;
  const inline = integer("--inline-size", v["inline-size"], 0, 256) ?? defaultInline;
  const atomicType = (v["atomic-type"] ?? "FETCH_AND_ADD").toUpperCase();
  if (atomicType !== "FETCH_AND_ADD" && atomicType !== "CMP_AND_SWAP") {
    throw new UsageError(`--atomic-type ${v["atomic-type"]} is not FETCH_AND_ADD or CMP_AND_SWAP`);
  }
  const ips = (v["local-ips"] ?? "127.0.0.2,127.0.0.3").split(",");
  if (ips.length !== 2 || ips.some((ip) => !/^\d{1,3}(\.\d{1,3}){3}$/.test(ip))) {
    throw new UsageError(`--local-ips "${v["local-ips"]}" is not two IPv4 addresses A,B`);
  }
  if (ips[0] === ips[1]) throw new UsageError(`--local-ips: the two addresses are the same`);
  if (v.plot !== undefined && !v.plot.endsWith(".svg")) {
    throw new UsageError(`--plot ${v.plot}: the file name must end in .svg`);
  }
  return {
    test,
    size,
    iters,
    all,
    maxSize,
    mtu,
    txDepth,
    cqMod,
    rxDepth,
    json: v.json ?? false,
    port: integer("--port", v.port, 1, 65535) ?? PERFTEST_PORT,
    socket: v.socket ?? DEFAULT_SOCKET,
    plot: v.plot ?? null,
    local,
    localIps: [ips[0]!, ips[1]!],
    check: v.check ?? false,
    progress: v.progress ?? false,
    server: server ?? null,
    atomicType,
    gidIndex: integer("--gid-index", v["gid-index"], 0, 255) ?? 0,
    stallMs: (integer("--timeout", v.timeout, 1, 3600) ?? 30) * 1000,
    inline,
  };
}

/** The sizes a run measures: the sweep 2, 4, ... maxSize with `all`, else the one size. */
export function runSizes(o: Pick<PerfOptions, "all" | "size" | "maxSize">): number[] {
  if (!o.all) return [o.size];
  const out: number[] = [];
  for (let s = 2; s <= o.maxSize; s *= 2) out.push(s);
  return out;
}
