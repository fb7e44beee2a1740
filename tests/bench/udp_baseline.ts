/**
 * The fastest UDP this machine does from Deno, between two processes on
 * loopback: the baseline that `bench:two-host` (64 KiB RDMA WRITEs at MTU
 * 4096, so 4112-byte datagrams: BTH 12 + 4096 + ICRC 4) and `bench:latency`
 * (8-byte messages) are to be read against.
 *
 * - blast: a sender process sends datagrams of each size in `sendmmsg`
 *   batches (`--batch`, default 32) as fast as it can; a receiver process
 *   takes them with `recvmmsg` batches of 64, waiting in `poll` when empty,
 *   and counts what arrives in a window of `--seconds` after `--warmup`.
 *   Reported: packets/s and MB/s *received* (MB = 10^6 bytes), and the
 *   share the sender sent that arrived. Raw `UdpSocket` for every size, then
 *   the RoCE transport (socket mode and, as root, raw mode) at 4112 bytes.
 * - ping-pong: one process sends `--ping-size` bytes (default 8), the other
 *   echoes them; round trip measured per exchange, reported as half round
 *   trip median and p99 in µs, waiting in `poll` and, separately, busy
 *   spinning on nonblocking receives (two spinners need both cores).
 *
 * PLATFORM.md's C floor on this machine kind: about 175 K packets/s at
 * 4 KiB (720 MB/s), 190 K at 1 KiB, 370 K at 124 B; ping-pong 28 µs round
 * trip (14 µs half). The summary line prints those next to the figures.
 *
 * Each measurement runs `--rounds` times (default 3) and keeps the best
 * round that other processes left alone: `foreignCores` is the CPU anything
 * else took meanwhile (see fixtures/cpu_load.ts; the kernel's `ksoftirqd`
 * threads count as ours: they deliver the datagrams), and a round with more than
 * a quarter of a core of it is marked `disturbed` and only kept if all were.
 *
 * Output: one JSON line per round, then a summary line of the kept rounds.
 *
 *     deno task bench:udp-baseline [--seconds 3] [--warmup 0.5] [--batch 32]
 *       [--sizes 124,1024,4112] [--ping-size 8] [--pings 20000]
 *
 * Traffic goes between 127.0.93.1 and 127.0.93.2, port 4791.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { canOpenRawSockets } from "../../backend/roce/udp_socket.ts";
import { ForeignLoad } from "./fixtures/cpu_load.ts";
import { lines, softirqThreads } from "./fixtures/child_lines.ts";

const o = parseArgs({
  // `deno task bench:... -- args` hands the script the "--" too.
  args: Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args,
  options: {
    seconds: { type: "string", default: "3" },
    warmup: { type: "string", default: "0.5" },
    batch: { type: "string", default: "32" },
    sizes: { type: "string", default: "124,1024,4112" },
    "ping-size": { type: "string", default: "8" },
    pings: { type: "string", default: "20000" },
    rounds: { type: "string", default: "3" },
  },
}).values;

const SENDER_IP = "127.0.93.1";
const RECEIVER_IP = "127.0.93.2";
const fixture = new URL("./fixtures/udp_peer.ts", import.meta.url).pathname;
const C_FLOOR = { pps124: 370_000, pps1024: 190_000, pps4096: 175_000, MBps4096: 720, rttUs: 28 };

/** A fixture process whose stdout lines are read as they come. */
class Peer {
  readonly #child: Deno.ChildProcess;
  /** Its process id. */
  readonly pid: number;
  readonly #lines: AsyncIterator<string>;
  readonly #stderr: Promise<string>;

  constructor(args: string[], timeoutMs: number) {
    this.#child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", fixture, ...args],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(timeoutMs),
    }).spawn();
    this.pid = this.#child.pid;
    this.#lines = lines(this.#child.stdout);
    this.#stderr = new Response(this.#child.stderr).text();
  }

  /** The next JSON line it prints. */
  async next(): Promise<Record<string, number>> {
    const line = await this.#lines.next();
    if (line.done) {
      const status = await this.#child.status;
      throw new Error(`udp_peer exited (${status.code}) early: ${await this.#stderr}`);
    }
    return JSON.parse(line.value);
  }

  /**
   * Lets it exit: a fixture stays alive after printing its result until its
   * stdin closes, so its CPU time can still be read.
   */
  release(): Promise<void> {
    return this.#child.stdin.close();
  }

  /** Lets it exit and waits for it to end. */
  async done(): Promise<void> {
    await this.release().catch(() => {});
    const status = await this.#child.status;
    if (!status.success) throw new Error(`udp_peer failed (${status.code}): ${await this.#stderr}`);
  }
}

const SOFTIRQ = softirqThreads();

/** Other processes' CPU during a window, counting the kernel's packet delivery threads as ours. */
function otherLoad(pids: number[]): ForeignLoad {
  return new ForeignLoad([Deno.pid, ...pids, ...SOFTIRQ]);
}

const common = ["--seconds", o.seconds!, "--warmup", o.warmup!, "--batch", o.batch!];
const budgetMs = (Number(o.seconds) + Number(o.warmup) + 30) * 1000;

/** One blast: receiver first, then sender; returns the receiver's figures and the sender's count. */
async function blast(size: number, via: string): Promise<Record<string, number | string>> {
  const sizeArgs = ["--size", String(size), "--via", via];
  const sink = new Peer(
    ["--role", "sink", "--ip", RECEIVER_IP, ...sizeArgs, ...common],
    budgetMs,
  );
  await sink.next();
  const sender = new Peer(
    ["--role", "blast", "--ip", SENDER_IP, "--peer", RECEIVER_IP, ...sizeArgs, ...common],
    budgetMs,
  );
  await sender.next();
  const load = otherLoad([sink.pid, sender.pid]);
  load.start();
  const sent = await sender.next();
  const foreignCores = load.stop();
  const got = await sink.next();
  await Promise.all([sender.done(), sink.done()]);
  return {
    bench: "udp-baseline",
    kind: "blast",
    via,
    size,
    pps: Math.round(got.pps!),
    MBps: Math.round(got.MBps!),
    arrivedShare: Number((got.total! / sent.sent!).toFixed(3)),
    sentTotal: sent.sent!,
    sendCalls: sent.calls!,
    shortSends: sent.short!,
    foreignCores: Number(foreignCores.toFixed(2)),
  };
}

/** One ping-pong; `wait` is "poll" or "spin". */
async function pingPong(wait: string): Promise<Record<string, number | string>> {
  const size = ["--size", o["ping-size"]!, "--wait", wait, "--via", "socket"];
  const echo = new Peer(["--role", "echo", "--ip", RECEIVER_IP, ...size, ...common], budgetMs);
  await echo.next();
  const ping = new Peer(
    ["--role", "ping", "--ip", SENDER_IP, "--peer", RECEIVER_IP, "--count", o.pings!, ...size],
    budgetMs,
  );
  await ping.next();
  const load = otherLoad([echo.pid, ping.pid]);
  load.start();
  const r = await ping.next();
  const foreignCores = load.stop();
  await Promise.all([ping.done(), echo.done()]);
  const round = (x: number) => Number(x.toFixed(1));
  return {
    bench: "udp-baseline",
    kind: "ping-pong",
    wait,
    size: Number(o["ping-size"]),
    samples: r.samples!,
    lost: r.lost!,
    halfMedianUs: round(r.halfMedianUs!),
    halfP99Us: round(r.halfP99Us!),
    rttMedianUs: round(r.rttMedianUs!),
    foreignCores: Number(foreignCores.toFixed(2)),
  };
}

type Result = Record<string, number | string>;
const results: Result[] = [];
/** Share of a core other processes may take before a measurement counts as disturbed. */
const DISTURBED = 0.25;
const rounds = Number(o.rounds);

/**
 * Runs `measure` `--rounds` times, prints every round, and keeps the best
 * undisturbed one (by `better`), or the best of all if every round was disturbed.
 */
async function best(
  measure: () => Promise<Result>,
  better: (a: Result, b: Result) => boolean,
): Promise<void> {
  const all: Result[] = [];
  for (let i = 0; i < rounds; i++) {
    const r = await measure();
    r.disturbed = Number(r.foreignCores) > DISTURBED ? 1 : 0;
    console.log(JSON.stringify({ ...r, round: i }));
    all.push(r);
  }
  const calm = all.filter((r) => r.disturbed === 0);
  const pool = calm.length > 0 ? calm : all;
  results.push(pool.reduce((a, b) => (better(b, a) ? b : a)));
}
const morePackets = (a: Result, b: Result) => Number(a.pps) > Number(b.pps);
const lessLatency = (a: Result, b: Result) => Number(a.halfMedianUs) < Number(b.halfMedianUs);

const sizes = o.sizes!.split(",").map(Number);
for (const size of sizes) await best(() => blast(size, "socket"), morePackets);
const transportVias = canOpenRawSockets()
  ? ["transport-socket", "transport-raw"]
  : ["transport-socket"];
for (const via of transportVias) await best(() => blast(4112, via), morePackets);
await best(() => pingPong("poll"), lessLatency);
await best(() => pingPong("spin"), lessLatency);

const find = (kind: string, key: string, value: number | string) =>
  results.find((r) => r.kind === kind && r[key] === value);
console.log(JSON.stringify({
  bench: "udp-baseline",
  summary: true,
  disturbed: results.filter((r) => r.disturbed === 1).length,
  pps: Object.fromEntries(sizes.map((s) => [s, find("blast", "size", s)?.pps])),
  MBps4112: results.find((r) => r.via === "socket" && r.size === 4112)?.MBps,
  transport4112: Object.fromEntries(transportVias.map((v) => [v, find("blast", "via", v)?.pps])),
  halfRttUs: {
    poll: find("ping-pong", "wait", "poll")?.halfMedianUs,
    spin: find("ping-pong", "wait", "spin")?.halfMedianUs,
  },
  cFloor: C_FLOOR,
}));
