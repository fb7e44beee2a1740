/**
 * `deno task soak`: mixed verified RC traffic between two hosts for a
 * given time, watching the backends for growth.
 *
 *     deno run -A --unstable-net tests/soak/soak.ts [--seconds 300] [--round-seconds 5]
 *       [--pairs 2] [--depth 8] [--max-size 262144] [--reopen-every 3] [--seed 1]
 *       [--ips 127.0.0.66,127.0.0.67] [--max-growth 0.10] [--qp-timeout 16]
 *       [--backend-v8-flags --min-semi-space-size=16,--max-semi-space-size=16]
 *
 * Two backend processes (`backend/main.ts`, one per IP, one random UDP
 * port) and two guests in this process, one on each host. The run is a
 * sequence of rounds: each registers fresh MRs, creates fresh CQs and
 * `--pairs` QP pairs, runs the system tests' verified streams on them
 * (tests/system/fixtures/stream.ts: WRITE, READ, SEND, WITH_IMM, FETCH_ADD,
 * CMP_SWAP, 1 B to `--max-size`; every byte, sequence number and atomic
 * result checked, exactly once and in order) for `--round-seconds`, then
 * drains, checks and destroys it all. Every `--reopen-every` rounds both
 * guests close their devices and open new ones. So the backends see
 * resource and guest churn as well as traffic.
 *
 * After each round it prints a JSON line with the round's figures and each
 * backend's VmRSS, RssAnon, RssShmem and open fds (from /proc/<pid>/status
 * and /proc/<pid>/fd); a round with errors adds them and every QP's wire
 * counters. "start" is the sample after the first round (the backends have
 * warmed up: JIT, heaps, guest memory touched), "end" the last; both are
 * taken at the same point of a round, after its QPs are gone and before
 * any reopen. The last line is the summary; the run passes (exit 0) when
 * there were zero data errors and, per backend, VmRSS grew at most
 * `--max-growth` from start to end, no fd was left open (idle fds after
 * the guests closed are what they were before any guest came), and fds at
 * the same point of a round did not grow — except UDP sockets: the host
 * adapter keeps a send socket per QP source port in a cache of at most 256
 * (backend/roce/transport.ts), which outlives the QPs; those are reported
 * (`udpSockets`) and must stay within the cache.
 *
 * The backends run with a young generation of fixed size
 * (`--backend-v8-flags`, see PINNED_YOUNG_GENERATION below); pass
 * `--backend-v8-flags ""` to measure them with V8's defaults, where VmRSS
 * steps up twice in the first ~5 minutes as V8 grows the young generation.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { readReport } from "../../backend/management.ts";
import { OP_KINDS, type OpKind } from "../system/fixtures/workload.ts";
import { type BackendProcess, spawnFabric } from "../faults/fixtures/backend_process.ts";
import { fdChanges, type ProcFigures, procFigures } from "../faults/fixtures/proc.ts";
import { TrafficGuest, TrafficRound, type TrafficShape } from "../faults/fixtures/traffic.ts";

/** The transport's cap on cached per-source-port send sockets (backend/roce/transport.ts). */
const SOURCE_SOCKET_CAP = 256;
/**
 * V8 flags for the backends: a young generation of fixed size. Left to
 * itself V8 grows the data-plane Worker's young generation in steps as
 * traffic goes on (measured with --trace-gc: about +11 MiB a minute in,
 * +16 MiB four minutes in, then flat) and may shrink it again, while the
 * live heap after each mark-compact stays at 9 MiB: heap sizing, not a
 * leak, but it alone moves VmRSS by 10-25%. With the size fixed, what
 * VmRSS does is what the backend's own allocations do.
 */
const PINNED_YOUNG_GENERATION = "--min-semi-space-size=16,--max-semi-space-size=16";

const { values } = parseArgs({
  options: {
    seconds: { type: "string", default: "300" },
    "round-seconds": { type: "string", default: "5" },
    pairs: { type: "string", default: "2" },
    depth: { type: "string", default: "8" },
    "max-size": { type: "string", default: String(256 << 10) },
    "reopen-every": { type: "string", default: "3" },
    seed: { type: "string", default: "1" },
    ips: { type: "string", default: "127.0.0.66,127.0.0.67" },
    "max-growth": { type: "string", default: "0.10" },
    "qp-timeout": { type: "string", default: "16" },
    "backend-v8-flags": { type: "string", default: PINNED_YOUNG_GENERATION },
    help: { type: "boolean", short: "h" },
  },
});
if (values.help) {
  console.log(
    "usage: soak.ts [--seconds 300] [--round-seconds 5] [--pairs 2] [--depth 8] " +
      "[--max-size 262144] [--reopen-every 3] [--seed 1] [--ips A,B] [--max-growth 0.10] " +
      `[--qp-timeout 16] [--backend-v8-flags "${PINNED_YOUNG_GENERATION}"]`,
  );
  Deno.exit(0);
}

function num(name: keyof typeof values, min: number, max: number): number {
  const v = Number(values[name]);
  if (!Number.isFinite(v) || v < min || v > max) {
    throw new RangeError(`--${name} must be a number in ${min}..${max}, got ${values[name]}`);
  }
  return v;
}

const seconds = num("seconds", 1, 7 * 24 * 3600);
const roundSeconds = num("round-seconds", 0.5, 3600);
const reopenEvery = num("reopen-every", 0, 1e6);
const seed = num("seed", 0, 2 ** 31);
const maxGrowth = num("max-growth", 0, 10);
const ips = values.ips!.split(",");
if (ips.length !== 2) throw new RangeError(`--ips must name two addresses, got ${values.ips}`);
const shape: TrafficShape = {
  pairs: num("pairs", 1, 16),
  depth: num("depth", 1, 64),
  maxSize: num("max-size", 8, 1 << 24),
  mtu: 4096,
  // 16: 268 ms per attempt, eight attempts (2.1 s): loopback loses nothing, so
  // only a stuck QP, or a backend starved that long, ends a WR this way.
  policy: { timeout: num("qp-timeout", 1, 31), retryCnt: 7 },
};
const started = performance.now();

function elapsed(): number {
  return (performance.now() - started) / 1000;
}

function progress(message: string): void {
  console.error(`[soak ${elapsed().toFixed(1)} s] ${message}`);
}

/** The figures of one backend that go into the JSON lines. */
function figures(b: BackendProcess): ProcFigures & { ip: string; pid: number } {
  return { ip: b.ip, pid: b.pid, ...procFigures(b.pid) };
}

const v8Flags = values["backend-v8-flags"]!;
const backends = await spawnFabric(ips, {
  denoFlags: v8Flags === "" ? [] : [`--v8-flags=${v8Flags}`],
});
const idleStart = backends.map(figures);
progress(
  `seed ${seed}; backends ${backends.map((b) => `${b.ip} (pid ${b.pid})`).join(", ")} on UDP ${
    backends[0]!.port
  }; ${shape.pairs} QP pairs per round, depth ${shape.depth}, 1..${shape.maxSize} B; ` +
    `${roundSeconds} s rounds for ${seconds} s, guests reopened every ${reopenEvery} rounds; ` +
    `QP timeout ${shape.policy.timeout}; backend V8 flags "${v8Flags}"`,
);

let a = await TrafficGuest.open("A", backends[0]!.socket, shape);
let b = await TrafficGuest.open("B", backends[1]!.socket, shape);
const totals = {
  bytes: 0,
  wrs: 0,
  recvs: 0,
  errors: 0,
  ops: Object.fromEntries(OP_KINDS.map((k) => [k, 0])) as Record<OpKind, number>,
};
const errorList: string[] = [];
let rounds = 0;
let reopens = 0;
let start: ReturnType<typeof figures>[] | null = null;
let end: ReturnType<typeof figures>[] = [];
let trafficSeconds = 0;

while (rounds === 0 || elapsed() < seconds) {
  const roundStarted = performance.now();
  const round = await TrafficRound.start(a, b, shape, { index: rounds, seed });
  const stopAt = roundStarted + roundSeconds * 1000;
  while (performance.now() < stopAt && !round.failed) {
    await new Promise((r) => setTimeout(r, Math.min(50, Math.max(1, stopAt - performance.now()))));
  }
  // A WR error: the QPs' wire counters, before the round's end destroys them.
  const qpReports = round.failed
    ? await Promise.all(
      backends.map(async (b) => ({ ip: b.ip, qps: (await readReport(b.socket)).qps })),
    )
    : undefined;
  round.stop();
  const settled = await round.settle(30_000);
  const result = await round.end();
  const roundSecs = (performance.now() - roundStarted) / 1000;
  trafficSeconds += roundSecs;
  rounds++;
  totals.bytes += result.bytes;
  totals.wrs += result.wrs;
  totals.recvs += result.recvs;
  totals.errors += result.errors.count;
  for (const k of OP_KINDS) totals.ops[k] += result.ops[k];
  for (const m of result.errors.messages) if (errorList.length < 40) errorList.push(m);
  const sample = backends.map(figures);
  if (rounds === 1) start = sample;
  end = sample;
  console.log(JSON.stringify({
    round: rounds,
    t: Number(elapsed().toFixed(2)),
    settled,
    bytes: result.bytes,
    MBps: Number((result.bytes / 1e6 / roundSecs).toFixed(1)),
    wrs: result.wrs,
    errors: result.errors.count,
    ...(result.errors.count > 0 ? { errorList: result.errors.messages, qpReports } : {}),
    backends: sample.map((f) => ({
      ip: f.ip,
      rssKiB: f.rssKiB,
      anonKiB: f.anonKiB,
      shmemKiB: f.shmemKiB,
      fds: f.fds,
      udp: f.fdKinds.udp ?? 0,
    })),
  }));
  if (result.errors.count > 0 || !settled) {
    progress(`round ${rounds}: ${result.errors.count} errors; stopping`);
    break;
  }
  if (reopenEvery > 0 && rounds % reopenEvery === 0 && elapsed() < seconds) {
    await Promise.all([a.close(), b.close()]);
    a = await TrafficGuest.open("A", backends[0]!.socket, shape);
    b = await TrafficGuest.open("B", backends[1]!.socket, shape);
    reopens++;
  }
}

// The guests go; the backends must drop back to what they held before any guest came.
await Promise.all([a.close(), b.close()]);
const idleEnd: ReturnType<typeof figures>[] = [];
const failures: string[] = [];
for (const [i, backend] of backends.entries()) {
  const deadline = performance.now() + 5000;
  let stats = await backend.stats();
  let now = figures(backend);
  while (
    performance.now() < deadline &&
    (stats.guests !== 0 ||
      Object.keys(fdChanges(idleStart[i]!.fdKinds, now.fdKinds, ["udp"])).length > 0)
  ) {
    await new Promise((r) => setTimeout(r, 50));
    stats = await backend.stats();
    now = figures(backend);
  }
  idleEnd.push(now);
  const live = ["guests", "pds", "mrs", "cqs", "qps", "srqs", "ahs", "queues"] as const;
  const left = live.filter((k) => stats[k] !== 0).map((k) => `${k} ${stats[k]}`);
  if (left.length > 0) failures.push(`${backend.ip}: still holds ${left.join(", ")} with no guest`);
  if (stats.brokenQueues !== 0) failures.push(`${backend.ip}: ${stats.brokenQueues} broken queues`);
}

const report = backends.map((backend, i) => {
  const s = start![i]!, e = end[i]!, is = idleStart[i]!, ie = idleEnd[i]!;
  const rssGrowth = (e.rssKiB - s.rssKiB) / s.rssKiB;
  const anonGrowth = (e.anonKiB - s.anonKiB) / s.anonKiB;
  const busyFdChanges = fdChanges(s.fdKinds, e.fdKinds, ["udp"]);
  const idleFdChanges = fdChanges(is.fdKinds, ie.fdKinds, ["udp"]);
  const udpEnd = ie.fdKinds.udp ?? 0;
  if (rssGrowth > maxGrowth) {
    failures.push(
      `${backend.ip}: VmRSS grew ${(100 * rssGrowth).toFixed(1)}% (${s.rssKiB} -> ${e.rssKiB} KiB)`,
    );
  }
  if (Object.keys(busyFdChanges).length > 0) {
    failures.push(`${backend.ip}: fds changed between rounds: ${JSON.stringify(busyFdChanges)}`);
  }
  if (Object.keys(idleFdChanges).length > 0) {
    failures.push(`${backend.ip}: fds left open with no guest: ${JSON.stringify(idleFdChanges)}`);
  }
  // The receive socket plus the source-port cache.
  if (udpEnd > 1 + SOURCE_SOCKET_CAP) {
    failures.push(
      `${backend.ip}: ${udpEnd} UDP sockets, above the cache's ${SOURCE_SOCKET_CAP} + 1`,
    );
  }
  const brief = (f: ProcFigures) => ({
    rssKiB: f.rssKiB,
    anonKiB: f.anonKiB,
    shmemKiB: f.shmemKiB,
    peakKiB: f.peakKiB,
    threads: f.threads,
    fds: f.fds,
    fdKinds: f.fdKinds,
  });
  return {
    ip: backend.ip,
    pid: backend.pid,
    idleStart: brief(is),
    start: brief(s),
    end: brief(e),
    idleEnd: brief(ie),
    rssGrowth: Number(rssGrowth.toFixed(4)),
    anonGrowth: Number(anonGrowth.toFixed(4)),
    fdsStart: s.fds,
    fdsEnd: e.fds,
    udpSockets: [is.fdKinds.udp ?? 0, udpEnd],
  };
});
if (totals.errors > 0) failures.push(`${totals.errors} data errors`);
if (rounds < 2) failures.push(`only ${rounds} round: start and end are the same sample`);

const summary = {
  ok: failures.length === 0,
  seed,
  seconds: Number(elapsed().toFixed(1)),
  rounds,
  reopens,
  pairs: shape.pairs,
  depth: shape.depth,
  maxSize: shape.maxSize,
  bytes: totals.bytes,
  MBps: Number((totals.bytes / 1e6 / trafficSeconds).toFixed(1)),
  wrs: totals.wrs,
  recvs: totals.recvs,
  ops: totals.ops,
  errors: totals.errors,
  errorList,
  maxGrowth,
  qpTimeout: shape.policy.timeout,
  backendV8Flags: v8Flags,
  backends: report,
  failures,
};
progress(
  `done: ${rounds} rounds, ${
    (totals.bytes / 2 ** 20).toFixed(0)
  } MiB verified, ${totals.errors} errors; ` +
    report.map((r) =>
      `${r.ip} VmRSS ${r.start.rssKiB} -> ${r.end.rssKiB} KiB (${
        (100 * r.rssGrowth).toFixed(1)
      }%), ` +
      `fds ${r.fdsStart} -> ${r.fdsEnd}, UDP sockets ${r.udpSockets.join(" -> ")}`
    ).join("; ") + (failures.length > 0 ? `; FAILED: ${failures.join("; ")}` : "; ok"),
);
console.log(JSON.stringify(summary));
await Promise.all(backends.map((backend) => backend.close()));
Deno.exit(summary.ok ? 0 : 1);
