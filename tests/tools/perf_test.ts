/**
 * tools/perf.ts: the perftest exchange byte for byte, the figures and the
 * printed layout against perftest's, then whole runs as a user makes them:
 * every test with `--local` (two backends on 127.0.0.34 and 127.0.0.35),
 * `--json`, `--all` with a small `--max-size`, `--plot`, a server and a
 * client process against two backends, and runs against peers played by
 * this test with the literal byte sequence of ib_write_bw (as server and as
 * client, and a server whose rkey is wrong: a failed completion).
 */

import assert from "node:assert/strict";
import { type Backend, SendFlags, startBackend } from "../../mod.ts";
import { formatGid, parseGid } from "../../protocol/device_config.ts";
import { tempSocket } from "../helpers/backend.ts";
import {
  addressLines,
  BW_HEADER,
  bwLine,
  LAT_HEADER,
  latLine,
  RESULT_LINE,
  testTitle,
} from "../../tools/common/perf_format.ts";
import { patternByte, PerfGuest } from "../../tools/common/perf_guest.ts";
import { parsePerfArgs, runSizes, TESTS, UsageError } from "../../tools/common/perf_options.ts";
import { plotSvg } from "../../tools/common/perf_plot.ts";
import { bwReport, latReport, rxBwReport } from "../../tools/common/perf_stats.ts";
import {
  decodeKeyMessage,
  decodeResults,
  encodeKeyMessage,
  encodeResults,
  KEY_MESSAGE_BYTES,
} from "../../tools/common/perf_wire.ts";

const TOOL = new URL("../../tools/perf.ts", import.meta.url).pathname;
const IP_A = "127.0.0.34";
const IP_B = "127.0.0.35";
const LOCAL = ["--local", "--local-ips", `${IP_A},${IP_B}`];
const enc = new TextEncoder();
const dec = new TextDecoder();

// ---------------------------------------------------------------------------
// The exchange's messages
// ---------------------------------------------------------------------------

/** The key message of the interop README, as ib_write_bw 6.06 wrote it on the wire. */
const README_KEY = "0000:0001:000012:7c50a8:00000331:000055d3fd27c000:" +
  "00:00:00:00:00:00:00:00:00:00:ff:ff:0a:63:00:03:00000000:\0";

Deno.test("key message: the interop README's example, byte for byte, both ways", () => {
  assert.equal(README_KEY.length, KEY_MESSAGE_BYTES);
  const msg = encodeKeyMessage({
    lid: 0,
    outReads: 1,
    qpn: 0x12,
    psn: 0x7c50a8,
    rkey: 0x331,
    vaddr: 0x55d3fd27c000n,
    gid: parseGid("::ffff:10.99.0.3"),
    srqn: 0,
  });
  assert.deepEqual(msg, enc.encode(README_KEY));
  const k = decodeKeyMessage(enc.encode(README_KEY));
  assert.deepEqual(
    { ...k, gid: formatGid(k.gid) },
    {
      lid: 0,
      outReads: 1,
      qpn: 0x12,
      psn: 0x7c50a8,
      rkey: 0x331,
      vaddr: 0x55d3fd27c000n,
      gid: "::ffff:10.99.0.3",
      srqn: 0,
    },
  );
});

Deno.test("key message: widest values, uppercase input, and what is refused", () => {
  const gid = parseGid("fe80::5054:ff:fe99:2");
  const msg = encodeKeyMessage({
    lid: 0xffff,
    outReads: 16,
    qpn: 0xffffff,
    psn: 0xabcdef,
    rkey: 0xffffffff,
    vaddr: 0xffff_ffff_ffff_ffffn,
    gid,
    srqn: 0x1234,
  });
  assert.equal(
    dec.decode(msg),
    "ffff:0010:ffffff:abcdef:ffffffff:ffffffffffffffff:" +
      "fe:80:00:00:00:00:00:00:50:54:00:ff:fe:99:00:02:00001234:\0",
  );
  const upper = enc.encode(README_KEY.replace("7c50a8", "7C50A8").replace(":ff:ff:", ":FF:FF:"));
  const k = decodeKeyMessage(upper);
  assert.equal(k.psn, 0x7c50a8);
  assert.equal(formatGid(k.gid), "::ffff:10.99.0.3");
  assert.throws(
    () => encodeKeyMessage({ ...k, qpn: 0x1000000 }),
    (e) =>
      e instanceof RangeError && /qpn 16777216 is not an integer in 0..16777215/.test(e.message),
  );
  for (
    const bad of [
      "0000:0001:000012\0",
      README_KEY.replace("7c50a8", "7c50g8"),
      README_KEY.replace(":0a:63:", ":0a63:"),
    ]
  ) {
    assert.throws(
      () => decodeKeyMessage(enc.encode(bad)),
      (e) => e instanceof SyntaxError && e.message.includes("key message"),
      bad,
    );
  }
});

Deno.test("results: five 8-byte big-endian fields, integers then doubles", () => {
  const bytes = encodeResults({ size: 65536, iters: 5000, bwPeak: 1.5, bwAvg: -2, msgRate: 0.25 });
  assert.equal(bytes.length, 40);
  assert.deepEqual([...bytes.subarray(0, 16)], [
    0,
    0,
    0,
    0,
    0,
    1,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0x13,
    0x88,
  ]);
  // 1.5, -2, 0.25 as IEEE doubles, most significant byte first.
  assert.deepEqual([...bytes.subarray(16, 24)], [0x3f, 0xf8, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual([...bytes.subarray(24, 32)], [0xc0, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual([...bytes.subarray(32, 40)], [0x3f, 0xd0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual(decodeResults(bytes), {
    size: 65536,
    iters: 5000,
    bwPeak: 1.5,
    bwAvg: -2,
    msgRate: 0.25,
  });
});

// ---------------------------------------------------------------------------
// Figures and layout
// ---------------------------------------------------------------------------

Deno.test("bandwidth figures: perftest's average, peak window and message rate", () => {
  // 10 messages of 1 MiB, every 4th signaled (and the last): posts 1 ms apart,
  // completions at 4.5 (msgs 0-3), 8.5 (4-7) and 12 ms (8-9).
  const posted = Float64Array.from({ length: 10 }, (_, i) => i);
  const completed = new Float64Array(10);
  completed[3] = 4.5;
  completed[7] = 8.5;
  completed[9] = 12;
  const r = bwReport({ size: 1 << 20, iters: 10, cqMod: 4, posted, completed });
  assert.equal(r.bytes, 1 << 20);
  assert.equal(r.iterations, 10);
  // 10 MiB in 12 ms.
  assert.ok(Math.abs(r.bwAvgMBps - 10 / 0.012) < 1e-6, String(r.bwAvgMBps));
  assert.ok(Math.abs(r.msgRateMpps - 10 / 0.012 / 1e6) < 1e-12);
  // The best window of all post/signaled-completion pairs: msg 0 posted at 0 ms to
  // msg 7 completed at 8.5 ms, 1.0625 ms per MiB.
  assert.ok(Math.abs(r.bwPeakMBps - 1 / 0.0010625) < 1e-6, String(r.bwPeakMBps));
  // A receiver has no per-message posts: peak 0, as ib_send_bw's server prints.
  const rx = rxBwReport(1 << 20, 10, 2, 12);
  assert.deepEqual(rx, {
    bytes: 1 << 20,
    iterations: 10,
    bwPeakMBps: 0,
    bwAvgMBps: 1000,
    msgRateMpps: 0.001,
  });
});

Deno.test("latency figures: perftest's trimmed sort, median, percentiles, half round trips", () => {
  // 12 posts: 11 round trips of 0.010..0.020 ms (shuffled), 2 of them outliers.
  const rtts = [0.014, 0.011, 0.5, 0.013, 0.012, 0.016, 0.015, 0.018, 0.017, 0.9, 0.010];
  const posted = new Float64Array(rtts.length + 1);
  rtts.forEach((d, i) => posted[i + 1] = posted[i]! + d);
  const r = latReport(64, posted, 2);
  // Sorted: 10..18 us then 500, 900; perftest keeps n = 9, t_max is delta[9] = 500 us.
  const half = (us: number) => us / 2;
  assert.equal(r.iterations, 12);
  assert.ok(Math.abs(r.minUs - half(10)) < 1e-9);
  assert.ok(Math.abs(r.medianUs - half(14)) < 1e-9, String(r.medianUs)); // n odd: delta[4]
  assert.ok(Math.abs(r.avgUs - half(14)) < 1e-9);
  assert.ok(Math.abs(r.maxUs - half(500)) < 1e-9);
  assert.ok(Math.abs(r.p99Us - half(500)) < 1e-9); // ceil(9 * 0.99) = 9
  const sd = Math.sqrt(
    [10, 11, 12, 13, 14, 15, 16, 17, 18].reduce((s, x) => s + (x - 14) ** 2, 0) / 9,
  );
  assert.ok(Math.abs(r.stdevUs - half(sd)) < 1e-9);
  // READ and atomics report whole round trips; n even takes the mean of the middle two.
  // Round trips 1..6 us, 979 and 1000 us: n = 6, the median is (3 + 4) / 2.
  const whole = latReport(8, Float64Array.of(0, 0.001, 0.003, 0.006, 0.010, 0.015, 0.021, 1, 2), 1);
  assert.ok(Math.abs(whole.medianUs - 3.5) < 1e-9, String(whole.medianUs));
  assert.ok(Math.abs(whole.maxUs - 979) < 1e-9, String(whole.maxUs));
  assert.throws(() => latReport(8, Float64Array.of(0, 1, 2), 1), RangeError);
});

Deno.test("layout: perftest's header lines and report lines, tabs included", () => {
  assert.equal(RESULT_LINE, "-".repeat(87));
  assert.equal(
    BW_HEADER,
    " #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]",
  );
  assert.equal(
    LAT_HEADER,
    " #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    " +
      "t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] ",
  );
  // REPORT_FMT " %-7lu    %-10lu       %-7.2lf            %-7.2lf\t\t   %-7.6lf"
  assert.equal(
    bwLine({ bytes: 2, iterations: 100000, bwPeakMBps: 12345.678, bwAvgMBps: 0.5, msgRateMpps: 1 }),
    " 2          100000           12345.68            0.50   \t\t   1.000000",
  );
  // REPORT_FMT_LAT " %-7lu %d          %-7.2f        %-7.2f      %-7.2f  \t       %-7.2f     \t%-7.2f\t\t%-7.2f \t\t%-7.2f"
  assert.equal(
    latLine({
      bytes: 2,
      iterations: 1000,
      minUs: 1,
      maxUs: 22.5,
      medianUs: 3.456,
      avgUs: 4,
      stdevUs: 0.25,
      p99Us: 10,
      p999Us: 20,
    }),
    " 2       1000          1.00           22.50        3.46     \t       4.00        \t0.25   \t\t10.00   \t\t20.00  ",
  );
  assert.equal(testTitle(TESTS.write_bw, "FETCH_AND_ADD"), "RDMA_Write BW Test");
  assert.equal(testTitle(TESTS.atomic_lat, "CMP_AND_SWAP"), "Atomic CMP_and_SWAP Latency Test");
  const k = decodeKeyMessage(enc.encode(README_KEY));
  assert.deepEqual(addressLines("local", k, TESTS.write_bw), [
    " local address: LID 0000 QPN 0x0012 PSN 0x7c50a8 RKey 0x000331 VAddr 0x0055d3fd27c000",
    " GID: 00:00:00:00:00:00:00:00:00:00:255:255:10:99:00:03",
  ]);
  assert.equal(
    addressLines("remote", k, TESTS.read_lat)[0],
    " remote address: LID 0000 QPN 0x0012 PSN 0x7c50a8 OUT 0x01 RKey 0x000331 VAddr 0x0055d3fd27c000",
  );
  assert.equal(
    addressLines("remote", k, TESTS.send_bw)[0],
    " remote address: LID 0000 QPN 0x0012 PSN 0x7c50a8",
  );
});

Deno.test("options: perftest's defaults per test, and usage errors that name the flag", () => {
  const bw = parsePerfArgs(["write_bw"])!;
  assert.deepEqual(
    [bw.size, bw.iters, bw.txDepth, bw.cqMod, bw.server, bw.port, bw.inline],
    [65536, 5000, 128, 100, null, 18515, 0],
  );
  const lat = parsePerfArgs(["write_lat", "10.0.0.2"])!;
  assert.deepEqual([lat.size, lat.iters, lat.txDepth, lat.cqMod, lat.server, lat.inline], [
    2,
    1000,
    1,
    1,
    "10.0.0.2",
    220,
  ]);
  assert.equal(parsePerfArgs(["atomic_bw"])!.size, 8);
  assert.equal(parsePerfArgs(["send_bw", "-t", "16"])!.cqMod, 16);
  assert.deepEqual(runSizes(parsePerfArgs(["read_bw", "-a", "--max-size", "64"])!), [
    2,
    4,
    8,
    16,
    32,
    64,
  ]);
  assert.equal(runSizes(parsePerfArgs(["read_bw", "--all"])!).at(-1), 1 << 23);
  assert.equal(parsePerfArgs(["write_bw", "--help"]), null);
  const bad: [string[], RegExp][] = [
    [[], /no test given/],
    [["write_lot"], /unknown test "write_lot"/],
    [["write_bw", "-s", "0"], /--size "0" is not an integer in 1\.\./],
    [["write_bw", "-m", "1000"], /--mtu 1000 is not 256, 512, 1024, 2048 or 4096/],
    [["write_bw", "-n", "4"], /--iters "4" is not an integer in 5\.\./],
    [["atomic_lat", "-s", "16"], /--size 16: atomics move 8 bytes/],
    [["atomic_bw", "-a"], /--all: atomic_bw moves 8 bytes only/],
    [["write_bw", "--local", "host"], /--local runs both sides here/],
    [["write_bw", "--plot", "x.png"], /must end in \.svg/],
    [["write_bw", "--bogus"], /bogus/],
  ];
  for (const [args, re] of bad) {
    assert.throws(
      () => parsePerfArgs(args),
      (e) => e instanceof UsageError && re.test(e.message),
      args.join(" "),
    );
  }
});

/** Checks that `svg` is one well-formed element tree (tags balance) and returns its polyline points. */
function svgPoints(svg: string): { points: [number, number][]; circles: number } {
  assert.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  const stack: string[] = [];
  for (const m of svg.matchAll(/<(\/?)([a-zA-Z]+)([^>]*?)(\/?)>/g)) {
    const [, close, name, , self] = m;
    if (self === "/") continue;
    if (close === "/") assert.equal(stack.pop(), name, `</${name}> closes the wrong element`);
    else stack.push(name!);
  }
  assert.deepEqual(stack, [], "every element is closed");
  const polyline = /<polyline[^>]* points="([^"]+)"/.exec(svg);
  assert.ok(polyline, "a polyline");
  const points = polyline[1]!.trim().split(/\s+/).map((p) =>
    p.split(",").map(Number) as [number, number]
  );
  return { points, circles: [...svg.matchAll(/<circle /g)].length };
}

Deno.test("plot: log2 x ticks labelled per power of two, one point per size, y from 0", () => {
  const svg = plotSvg({
    title: "write_bw <all>",
    yLabel: "BW average [MB/sec]",
    points: [1024, 2, 64, 8, 2048].map((bytes) => ({ bytes, value: bytes / 10 })),
  });
  const { points, circles } = svgPoints(svg);
  assert.equal(points.length, 5);
  assert.equal(circles, 5);
  // Sorted by size, equally spaced per doubling along x; larger values higher (smaller y).
  const xs = points.map((p) => p[0]);
  const perDoubling = (xs[1]! - xs[0]!) / 2; // 2 -> 8
  assert.ok(Math.abs((xs[2]! - xs[1]!) - 3 * perDoubling) < 0.2, String(xs)); // 8 -> 64
  assert.ok(points.every((p, i) => i === 0 || p[1] < points[i - 1]![1]));
  for (const label of ["2", "4", "8", "16", "32", "64", "128", "256", "512", "1K", "2K"]) {
    assert.ok(svg.includes(`>${label}</text>`), `tick ${label}`);
  }
  assert.ok(svg.includes(">0</text>"), "the y axis starts at 0");
  assert.ok(svg.includes("write_bw &lt;all&gt;"), "the title is escaped");
  assert.throws(() => plotSvg({ title: "", yLabel: "", points: [] }), RangeError);
});

// ---------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------

interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** The tool as a child process; `waitFor` resolves on a stdout line matching a pattern. */
class Tool {
  readonly #child: Deno.ChildProcess;
  readonly #lines: string[] = [];
  readonly #waiters: { re: RegExp; resolve: () => void }[] = [];
  readonly #out: Promise<void>;
  readonly #err: Promise<string>;
  readonly #timer: ReturnType<typeof setTimeout>;
  #killed = false;

  constructor(args: string[], timeoutMs = 90_000) {
    this.#child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--unstable-net", TOOL, ...args],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const child = this.#child;
    this.#out = (async () => {
      let rest = "";
      for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
        const parts = (rest + chunk).split("\n");
        rest = parts.pop()!;
        for (const line of parts) this.#line(line);
      }
      if (rest !== "") this.#line(rest);
    })();
    this.#err = new Response(child.stderr).text();
    this.#timer = setTimeout(() => {
      this.#killed = true;
      child.kill("SIGKILL");
    }, timeoutMs);
  }

  #line(line: string): void {
    this.#lines.push(line);
    for (const w of this.#waiters.splice(0)) {
      if (w.re.test(line)) w.resolve();
      else this.#waiters.push(w);
    }
  }

  /** Resolves once stdout has a line matching `re`; rejects if the process ends first. */
  async waitFor(re: RegExp): Promise<void> {
    if (this.#lines.some((l) => re.test(l))) return;
    const seen = new Promise<void>((resolve) => this.#waiters.push({ re, resolve }));
    const ended = this.#out.then(async () => {
      const r = await this.result();
      throw new Error(
        `the tool ended (${r.code}) before printing ${re}:\n${r.stdout}\n${r.stderr}`,
      );
    });
    ended.catch(() => {});
    await Promise.race([seen, ended]);
  }

  /** Exit code and all output. */
  async result(): Promise<ToolResult> {
    const status = await this.#child.status;
    clearTimeout(this.#timer);
    await this.#out;
    const stderr = await this.#err;
    if (this.#killed) {
      throw new Error(`killed after the timeout:\n${this.#lines.join("\n")}\n${stderr}`);
    }
    return { code: status.code, stdout: this.#lines.join("\n"), stderr };
  }
}

async function perf(args: string[]): Promise<ToolResult> {
  return await new Tool(args).result();
}

/** A TCP port nobody listens on right now. */
function freeTcpPort(): number {
  const l = Deno.listen({ hostname: "0.0.0.0", port: 0 });
  const port = l.addr.port;
  l.close();
  return port;
}

/** Two backends on IP_A and IP_B sharing a random RoCE port. */
async function startHosts(): Promise<[Backend, Backend]> {
  for (let attempt = 1;; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 40000);
    const started = await Promise.allSettled(
      [IP_A, IP_B].map((ip) =>
        startBackend({ socket: tempSocket(`perf-${ip}`), ip, port, logLevel: "silent" })
      ),
    );
    const [a, b] = started.map((r) => r.status === "fulfilled" ? r.value : undefined);
    if (a && b) return [a, b];
    await Promise.all([a?.close(), b?.close()]);
    if (attempt >= 5) {
      throw (started.find((r) => r.status === "rejected") as PromiseRejectedResult).reason;
    }
  }
}

const NUMBER = String.raw`(\d+\.\d+)`;
const BW_LINE = new RegExp(String.raw`^ (\d+)\s+(\d+)\s+${NUMBER}\s+${NUMBER}\s+${NUMBER}\s*$`);
const LAT_LINE = new RegExp(
  String.raw`^ (\d+)\s+(\d+)` + String.raw`\s+${NUMBER}`.repeat(7) + String.raw`\s*$`,
);

/** The report lines of a table, parsed: [bytes, iterations, ...figures]. */
function tableRows(stdout: string, kind: "bw" | "lat"): number[][] {
  const lines = stdout.split("\n");
  const header = lines.indexOf(kind === "bw" ? BW_HEADER : LAT_HEADER);
  assert.ok(header > 0, `no ${kind} header in:\n${stdout}`);
  assert.equal(lines[header - 1], RESULT_LINE);
  assert.equal(lines.at(-1), RESULT_LINE, "the table ends with perftest's line");
  const rows = lines.slice(header + 1, -1);
  return rows.map((row) => {
    const m = (kind === "bw" ? BW_LINE : LAT_LINE).exec(row);
    assert.ok(m, `not a ${kind} line: ${JSON.stringify(row)}`);
    return m.slice(1).map(Number);
  });
}

const LOCAL_RUNS: [string, string[], RegExp][] = [
  ["write_bw", ["-s", "4096", "-n", "300"], /^ {20}RDMA_Write BW Test$/m],
  ["read_bw", ["-s", "4096", "-n", "300"], /^ {20}RDMA_Read BW Test$/m],
  ["send_bw", ["-s", "4096", "-n", "300"], /^ {20}Send BW Test$/m],
  ["atomic_bw", ["-n", "300"], /^ {20}Atomic FETCH_and_ADD BW Test$/m],
  ["write_lat", ["-s", "64", "-n", "200"], /^ {20}RDMA_Write Latency Test$/m],
  ["read_lat", ["-s", "64", "-n", "200"], /^ {20}RDMA_Read Latency Test$/m],
  ["send_lat", ["-s", "64", "-n", "200"], /^ {20}Send Latency Test$/m],
  ["atomic_lat", ["-n", "200", "-A", "CMP_AND_SWAP"], /^ {20}Atomic CMP_and_SWAP Latency Test$/m],
];

for (const [test, args, title] of LOCAL_RUNS) {
  Deno.test(`--local ${test}: perftest's table, one line of figures, data checked`, async () => {
    const r = await perf([test, ...LOCAL, "--check", ...args]);
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, title);
    assert.match(r.stdout, /^ Mtu {13}: 4096\[B\]$/m);
    // C's %#06x: "0x" and at least 4 digits, or all zeros for 0.
    assert.match(
      r.stdout,
      / local address: LID 0000 QPN 0x[0-9a-f]{4,6} PSN (0x[0-9a-f]{4,6}|0{6})( |$)/m,
    );
    assert.match(r.stdout, / GID: 00:00:00:00:00:00:00:00:00:00:255:255:127:00:00:3[45]$/m);
    const kind = TESTS[test as keyof typeof TESTS].kind;
    const rows = tableRows(r.stdout, kind);
    assert.equal(rows.length, 1, r.stdout);
    const [bytes, iters, ...figures] = rows[0]!;
    const size = Number(args[args.indexOf("-s") + 1] ?? 8);
    assert.equal(bytes, args.includes("-s") ? size : 8);
    assert.equal(iters, Number(args[args.indexOf("-n") + 1]));
    if (kind === "bw") {
      const [peak, avg, rate] = figures as [number, number, number];
      assert.ok(avg > 0 && peak >= avg, r.stdout);
      // Average MB/s and message rate describe the same run: rate = avg * 2^20 / size,
      // within what printing avg with 2 decimals and the rate with 6 loses.
      const tolerance = (0.005 * 1048576) / bytes! / 1e6 + 1e-6;
      assert.ok(Math.abs(rate - (avg * 1048576) / bytes! / 1e6) <= tolerance, r.stdout);
    } else {
      const [min, max, median, avg, , p99, p999] = figures as number[];
      assert.ok(min! > 0 && min! <= median! && median! <= max!, r.stdout);
      assert.ok(min! <= avg! && p99! <= p999! && p99! >= median!, r.stdout);
    }
    assert.equal(r.stderr, "");
  });
}

Deno.test("--local write_bw --json: the issue's command prints one JSON object with the bandwidth", async () => {
  // As `deno task perf -- ...` runs it: the script gets the "--" too.
  const r = await perf([
    "--",
    "write_bw",
    ...LOCAL,
    "--size",
    "65536",
    "--iters",
    "2000",
    "--json",
  ]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split("\n");
  assert.equal(lines.length, 1, r.stdout);
  const o = JSON.parse(lines[0]!);
  assert.deepEqual(Object.keys(o), [
    "test",
    "bytes",
    "iterations",
    "bwPeakMBps",
    "bwAvgMBps",
    "msgRateMpps",
    "mtu",
  ]);
  assert.equal(o.test, "write_bw");
  assert.equal(o.bytes, 65536);
  assert.equal(o.iterations, 2000);
  assert.ok(o.bwAvgMBps > 0 && o.bwPeakMBps >= o.bwAvgMBps, r.stdout);
  assert.equal(o.mtu, 4096);
});

Deno.test("--local --all --max-size: one JSON object per size, and the SVG plot of them", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "perf-plot-" });
  try {
    const svgPath = `${dir}/lat.svg`;
    const r = await perf([
      "read_lat",
      ...LOCAL,
      "--all",
      "--max-size",
      "64",
      "-n",
      "50",
      "--json",
      "--check",
      "--plot",
      svgPath,
    ]);
    assert.equal(r.code, 0, r.stderr);
    const objects = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(objects.map((o) => o.bytes), [2, 4, 8, 16, 32, 64]);
    for (const o of objects) {
      assert.equal(o.test, "read_lat");
      assert.equal(o.iterations, 50);
      assert.ok(o.minUs > 0 && o.medianUs >= o.minUs && o.maxUs >= o.medianUs, JSON.stringify(o));
    }
    const svg = Deno.readTextFileSync(svgPath);
    const { points, circles } = svgPoints(svg);
    assert.equal(points.length, 6);
    assert.equal(circles, 6);
    assert.ok(svg.includes("t_typical [usec]"));
    for (const label of ["2", "4", "8", "16", "32", "64"]) {
      assert.ok(svg.includes(`>${label}</text>`));
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("--local send_bw --all: every size measured and checked (table)", async () => {
  const r = await perf(["send_bw", ...LOCAL, "-a", "--max-size", "256", "-n", "100", "--check"]);
  assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
  assert.deepEqual(tableRows(r.stdout, "bw").map((row) => row[0]), [2, 4, 8, 16, 32, 64, 128, 256]);
});

Deno.test("--progress draws a bar on stderr for a run over a second and erases it", async () => {
  // 3 GiB of WRITEs between two local hosts: about 2.5 s here, and at least
  // 1.5 s when the machine runs fast (1.5 GiB once finished in under the
  // bar's one-second delay, and nothing was drawn).
  const r = await perf(["write_bw", ...LOCAL, "-s", "1048576", "-n", "3000", "--progress"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /^\rwrite_bw write 1048576 B \[[#.]{30}\] +\d+% \d+\/3000 \d+\.\ds/);
  assert.ok(r.stderr.endsWith("\r\x1b[2K"), JSON.stringify(r.stderr.slice(-40)));
  assert.equal(tableRows(r.stdout, "bw").length, 1, "stdout keeps only the table");
});

Deno.test("usage errors exit 2 and say what was wrong", async () => {
  const r = await perf(["write_bw", "--mtu", "1000"]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /perf: --mtu 1000 is not 256, 512, 1024, 2048 or 4096/);
  const help = await perf(["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^Usage: deno task perf -- <test> \[options\] \[server-host\]$/m);
});

Deno.test("server and client processes on two backends: write_bw, send_bw, write_lat", async () => {
  const [a, b] = await startHosts();
  try {
    for (
      const [test, args] of [
        ["write_bw", ["-n", "500"]],
        ["send_bw", ["-n", "500", "-s", "8192"]],
        [
          "write_lat",
          ["-n", "200"],
        ],
      ] as const
    ) {
      const port = String(freeTcpPort());
      const server = new Tool([test, "--socket", a.socket, "-p", port, ...args]);
      await server.waitFor(/^\* Waiting for client to connect\.\.\. \*$/);
      const client = await perf([test, "--socket", b.socket, "-p", port, ...args, "127.0.0.1"]);
      const srv = await server.result();
      assert.equal(client.code, 0, `${client.stdout}\n${client.stderr}`);
      assert.equal(srv.code, 0, `${srv.stdout}\n${srv.stderr}`);
      // Each side shows its own QP as local and the other's as remote.
      const qpn = (out: string, side: string) =>
        new RegExp(` ${side} address: LID 0000 QPN (0x[0-9a-f]+)`).exec(out)![1];
      assert.equal(qpn(srv.stdout, "local"), qpn(client.stdout, "remote"));
      assert.equal(qpn(srv.stdout, "remote"), qpn(client.stdout, "local"));
      assert.match(srv.stdout, /GID: 00:00:00:00:00:00:00:00:00:00:255:255:127:00:00:34\n remote/);
      assert.match(client.stdout, / TX depth {8}: /);
      const kind = test === "write_lat" ? "lat" : "bw";
      const [c] = tableRows(client.stdout, kind);
      const [s] = tableRows(srv.stdout, kind);
      assert.equal(c![1], Number(args[1]));
      if (test === "write_bw") {
        // The server prints the figures the client sent it.
        assert.deepEqual(s, c);
      } else if (test === "send_bw") {
        // The server measured its receives: no peak, its own average.
        assert.equal(s![2], 0);
        assert.ok(s![3]! > 0);
        assert.match(srv.stdout, / RX depth {8}: 500/);
      } else {
        assert.ok(s![4]! > 0 && c![4]! > 0);
      }
    }
  } finally {
    await a.close();
    await b.close();
  }
});

// ---------------------------------------------------------------------------
// Against peers that speak the README's byte sequence
// ---------------------------------------------------------------------------

/** Reads exactly `n` bytes. */
async function readN(conn: Deno.Conn, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  for (let got = 0; got < n;) {
    const r = await conn.read(out.subarray(got));
    if (r === null) throw new Error(`peer closed after ${got} of ${n} bytes`);
    got += r;
  }
  return out;
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let sent = 0; sent < bytes.length;) sent += await conn.write(bytes.subarray(sent));
}

const VERSION = (() => {
  const v = new Uint8Array(16);
  v.set(enc.encode("6.06"));
  return v;
})();
const KEY_RE = (gidTail: string) =>
  new RegExp(
    `^0000:00(0f|10):([0-9a-f]{6}):([0-9a-f]{6}):([0-9a-f]{8}):([0-9a-f]{16}):(00:){10}ff:ff:${gidTail}:00000000:\0$`,
  );

/** The key text of the peer `g` plays, built by hand as perftest's sprintf would. */
function keyText(g: PerfGuest, rkey = g.mr.rkey): Uint8Array {
  const hex = (v: number | bigint, w: number) => v.toString(16).padStart(w, "0");
  const gid = Array.from(parseGid(g.gid), (x) => `${hex(x, 2)}:`).join("");
  return enc.encode(
    `0000:0010:${hex(g.qp.qpNum, 6)}:${hex(g.qp.psn, 6)}:${hex(rkey, 8)}:${
      hex(g.inAddr, 16)
    }:${gid}00000000:\0`,
  );
}

/**
 * The opening exchange, the server's way (read each message, then answer):
 * version, cycle buffer, cache line and MTU code. Checks what our client
 * sends (its version, 4096, 64, and "5" for IBV_MTU_4096) and answers the
 * MTU code `mtuReply`.
 */
async function serverHello(conn: Deno.Conn, mtuReply: string): Promise<void> {
  assert.deepEqual(await readN(conn, 16), VERSION);
  await writeAll(conn, VERSION);
  assert.deepEqual([...await readN(conn, 4)], [0, 0, 0x10, 0]); // cycle buffer 4096
  await writeAll(conn, Uint8Array.of(0, 0, 0x10, 0));
  assert.deepEqual([...await readN(conn, 4)], [0, 0, 0, 0x40]); // cache line 64
  await writeAll(conn, Uint8Array.of(0, 0, 0, 0x40));
  assert.equal(dec.decode(await readN(conn, 2)), "5\0");
  await writeAll(conn, enc.encode(`${mtuReply}\0`));
}

/** One key message each way, the server's way: read, then write. */
async function serverKeys(conn: Deno.Conn, mine: Uint8Array): Promise<string> {
  const theirs = dec.decode(await readN(conn, 108));
  await writeAll(conn, mine);
  return theirs;
}

/** One key message each way, the client's way: write, then read. */
async function clientKeys(conn: Deno.Conn, mine: Uint8Array): Promise<string> {
  await writeAll(conn, mine);
  return dec.decode(await readN(conn, 108));
}

async function peerGuest(host: Backend, size: number, rqDepth = 1): Promise<PerfGuest> {
  return await PerfGuest.open(host.socket, {
    areaBytes: size,
    sqDepth: 128,
    rqDepth,
    maxInline: 0,
    gidIndex: 0,
  });
}

Deno.test("ib_write_bw server, played byte for byte: our client's messages, data and results", async () => {
  const [a, b] = await startHosts();
  const peer = await peerGuest(a, 4096);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const client = new Tool([
      "write_bw",
      "--socket",
      b.socket,
      "-p",
      String(listener.addr.port),
      "-s",
      "4096",
      "-n",
      "200",
      "--check",
      "127.0.0.1",
    ]);
    const conn = await listener.accept();
    await serverHello(conn, "3"); // as rxe on a 1500-byte link: 1024
    const mine = keyText(peer);
    const first = await serverKeys(conn, mine);
    const m = KEY_RE("7f:00:00:23").exec(first); // the client's GID ::ffff:127.0.0.35
    assert.ok(m, JSON.stringify(first));
    const theirs = decodeKeyMessage(enc.encode(first));
    await peer.connect(theirs, 1024);
    assert.equal(await serverKeys(conn, mine), first);
    assert.equal(await serverKeys(conn, mine), first);
    // The client runs, then meets the barrier after the test.
    assert.equal(await serverKeys(conn, mine), first);
    const fields: Uint8Array[] = [];
    for (let i = 0; i < 5; i++) {
      fields.push(await readN(conn, 8));
      await writeAll(conn, new Uint8Array(8));
    }
    const results = decodeResults(Uint8Array.from(fields.flatMap((f) => [...f])));
    assert.equal(results.size, 4096);
    assert.equal(results.iters, 200);
    assert.ok(results.bwAvg > 0 && results.bwPeak >= results.bwAvg && results.msgRate > 0);
    assert.equal(await serverKeys(conn, mine), first);
    assert.equal(dec.decode(await readN(conn, 5)), "done\0");
    await writeAll(conn, enc.encode("done\0"));
    conn.close();
    const r = await client.result();
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /^ Mtu {13}: 1024\[B\]$/m);
    // What the client printed is what it sent.
    const [row] = tableRows(r.stdout, "bw");
    assert.deepEqual(row!.slice(0, 2), [4096, 200]);
    assert.equal(row![3], Number(results.bwAvg.toFixed(2)));
    // Its WRITEs landed in this peer's buffer: the client's pattern for 4096-byte messages.
    const landed = peer.in.subarray(0, 4096);
    assert.ok(landed.every((x, i) => x === patternByte(4096, i)));
  } finally {
    await peer.close();
    await a.close();
    await b.close();
  }
});

Deno.test("ib_send_bw server, played byte for byte: receives posted, a barrier, SENDs, close", async () => {
  const [a, b] = await startHosts();
  const peer = await peerGuest(a, 4096, 200);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const client = new Tool([
      "send_bw",
      "--socket",
      b.socket,
      "-p",
      String(listener.addr.port),
      "-s",
      "4096",
      "-n",
      "200",
      "127.0.0.1",
    ]);
    const conn = await listener.accept();
    await serverHello(conn, "5");
    const mine = keyText(peer);
    const first = await serverKeys(conn, mine);
    await peer.connect(decodeKeyMessage(enc.encode(first)), 4096);
    assert.equal(await serverKeys(conn, mine), first);
    assert.equal(await serverKeys(conn, mine), first);
    // ib_send_bw's server posts its receives, then lets the client go.
    const sgList = [{ addr: peer.inAddr, length: 4096, lkey: peer.mr.lkey }];
    peer.qp.postRecv(Array.from({ length: 200 }, (_, i) => ({ wrId: BigInt(i), sgList })));
    assert.equal(await serverKeys(conn, mine), first);
    for (let i = 0; i < 200; i++) {
      const wc = await peer.recvCq.next();
      assert.equal(wc.status, "SUCCESS");
      assert.equal(wc.byteLen, 4096);
    }
    assert.ok(peer.in.subarray(0, 4096).every((x, i) => x === patternByte(4096, i)));
    // Without --all nothing more until the closing barrier and "done".
    assert.equal(await serverKeys(conn, mine), first);
    assert.equal(dec.decode(await readN(conn, 5)), "done\0");
    await writeAll(conn, enc.encode("done\0"));
    conn.close();
    const r = await client.result();
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.deepEqual(tableRows(r.stdout, "bw")[0]!.slice(0, 2), [4096, 200]);
  } finally {
    await peer.close();
    await a.close();
    await b.close();
  }
});

Deno.test("ib_write_bw client, played byte for byte: our server prints the figures it is sent", async () => {
  const [a, b] = await startHosts();
  const peer = await peerGuest(b, 65536);
  const port = freeTcpPort();
  try {
    const server = new Tool(["write_bw", "--socket", a.socket, "-p", String(port)]);
    await server.waitFor(/Waiting for client to connect/);
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    // The client writes each message first.
    await writeAll(conn, VERSION);
    assert.deepEqual(await readN(conn, 16), VERSION);
    await writeAll(conn, Uint8Array.of(0, 0, 0x20, 0)); // a larger cycle buffer is fine
    assert.deepEqual([...await readN(conn, 4)], [0, 0, 0x10, 0]);
    await writeAll(conn, Uint8Array.of(0, 0, 0, 0x40));
    assert.deepEqual([...await readN(conn, 4)], [0, 0, 0, 0x40]);
    await writeAll(conn, enc.encode("3\0"));
    assert.equal(dec.decode(await readN(conn, 2)), "5\0");
    const mine = keyText(peer);
    const first = await clientKeys(conn, mine);
    assert.ok(KEY_RE("7f:00:00:22").test(first), JSON.stringify(first));
    const srv = decodeKeyMessage(enc.encode(first));
    await peer.connect(srv, 1024);
    assert.equal(await clientKeys(conn, mine), first);
    assert.equal(await clientKeys(conn, mine), first);
    // 100 WRITEs of 64 KiB into the server's buffer, as ib_write_bw would.
    peer.out.fill(0x5a);
    for (let i = 0; i < 100; i++) {
      peer.qp.postSend({
        wrId: BigInt(i),
        opcode: "RDMA_WRITE",
        sendFlags: SendFlags.SIGNALED,
        sgList: [{ addr: peer.outAddr, length: 65536, lkey: peer.mr.lkey }],
        rdma: { remoteAddr: srv.vaddr, rkey: srv.rkey },
      });
      const wc = await peer.sendCq.next();
      assert.equal(wc.status, "SUCCESS");
    }
    assert.equal(await clientKeys(conn, mine), first);
    const results = encodeResults({
      size: 65536,
      iters: 100,
      bwPeak: 2345.678,
      bwAvg: 1234.5,
      msgRate: 0.019753,
    });
    for (let i = 0; i < 5; i++) {
      await writeAll(conn, results.subarray(i * 8, i * 8 + 8));
      await readN(conn, 8);
    }
    assert.equal(await clientKeys(conn, mine), first);
    await writeAll(conn, enc.encode("done\0"));
    assert.equal(dec.decode(await readN(conn, 5)), "done\0");
    conn.close();
    const r = await server.result();
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.ok(
      r.stdout.includes(" 65536      100              2345.68            1234.50\t\t   0.019753"),
      r.stdout,
    );
    assert.match(r.stdout, /^ Mtu {13}: 1024\[B\]$/m);
  } finally {
    await peer.close();
    await a.close();
    await b.close();
  }
});

Deno.test("a failed work completion ends the run with status 1 and perftest's message", async () => {
  const [a, b] = await startHosts();
  const peer = await peerGuest(a, 4096);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const client = new Tool([
      "write_bw",
      "--socket",
      b.socket,
      "-p",
      String(listener.addr.port),
      "-s",
      "4096",
      "-n",
      "100",
      "127.0.0.1",
    ]);
    const conn = await listener.accept();
    await serverHello(conn, "5");
    // A key message whose rkey is not the buffer's: every WRITE is refused.
    const wrong = keyText(peer, peer.mr.rkey ^ 0x5500);
    const first = await serverKeys(conn, wrong);
    await peer.connect(decodeKeyMessage(enc.encode(first)), 4096);
    await serverKeys(conn, wrong);
    await serverKeys(conn, wrong);
    const r = await client.result();
    conn.close();
    assert.equal(r.code, 1, r.stdout);
    assert.match(
      r.stderr,
      /Completion with error at client:\n Failed status 10 \(REM_ACCESS_ERR\): wr_id \d+/,
    );
    assert.ok(!BW_LINE.test(r.stdout.split("\n").at(-1) ?? ""), "no figures for a failed run");
  } finally {
    await peer.close();
    await a.close();
    await b.close();
  }
});
