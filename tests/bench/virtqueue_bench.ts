/**
 * Cross-process throughput of the split virtqueue against a raw
 * single-producer single-consumer ring over the same kind of shared memory,
 * in the same run.
 *
 * Each measurement is a fresh pair of processes sharing one memfd (sent over
 * a unix socket with SCM_RIGHTS): a producer and a consumer, both
 * busy-polling, 64-byte messages. Virtqueue: the driver takes back used
 * chains (`popUsedBatch`), writes a batch of messages into its buffers, adds
 * one chain per message (`addOne`) and publishes once; the device pops a
 * batch (`popBatch`, one avail-index load), copies each message out with the
 * chain's reader, and returns the batch (`addUsedBatch`, `publishUsed`). Raw
 * ring: the producer writes a batch of messages into the next slots and
 * stores its tail once, the consumer copies them out and stores its head
 * once. Both consumers copy every message into a private buffer and check
 * its sequence word; both sides publish once per batch of the same size, and
 * all four processes run one function call per batch.
 *
 * The kinds alternate over `--rounds` rounds (order flipped every round).
 * Each measurement also records how much CPU other processes took meanwhile
 * (`foreignCores`): on a two-core machine two busy pollers need both cores,
 * and a measurement that shared them is marked `disturbed` and left out of
 * the summary as long as undisturbed ones of its kind exist. The summary
 * takes the median of each kind's remaining measurements, and as the ratio
 * the median of the per-round ratios of undisturbed rounds.
 *
 * Output: one JSON line per measurement, then a summary line.
 *
 *     deno task bench:virtqueue [--batch 32] [--size 256] [--seconds 3] [--warmup 1] [--rounds 4]
 *
 * `--floor` adds a third kind to every round: the same split ring written by
 * hand for exactly this traffic (fixtures/floor_*.ts), the floor under the
 * library's cost; the summary then also has its rate and ratio.
 *
 * For looking into it: `--only virtqueue|raw|floor` runs one kind (no summary),
 * `--profile producer|consumer` adds a line with that side's top functions
 * by self time, sampled over the measured window through the V8 inspector.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { SharedMemory } from "../../virtqueue/sys/shm.ts";
import { UnixSocket } from "../../virtqueue/sys/unix_socket.ts";
import { type Measurement, memBytes, PAYLOAD } from "./fixtures/bench_child.ts";
import { CpuProfiler, freePort, selfTimes } from "./fixtures/cpu_profile.ts";
import { ForeignLoad } from "./fixtures/cpu_load.ts";

/** The things measured: the library, the raw ring, and the hand-written floor (`--floor`). */
type Kind = "virtqueue" | "raw" | "floor";

/** Each kind's fixtures: `<prefix>_producer.ts` and `<prefix>_consumer.ts`. */
const PREFIX: Record<Kind, string> = { virtqueue: "vq", raw: "raw", floor: "floor" };

/** A process of a pair. */
type Role = "producer" | "consumer";

interface Options {
  size: number;
  batch: number;
  seconds: number;
  warmup: number;
  /** Take a CPU profile of this side during the measured window. */
  profile?: Role;
}

const decoder = new TextDecoder();

function fixture(name: string): string {
  return new URL(`./fixtures/${name}`, import.meta.url).pathname;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The consumer's measurement, and the CPU other processes took meanwhile. */
interface Result extends Measurement {
  /** Cores' worth of CPU used by other processes during (about) the measured window. */
  foreignCores: number;
}

/** Runs one producer/consumer pair of `kind` and returns the consumer's measurement. */
async function measure(kind: Kind, o: Options): Promise<Result> {
  const dir = await Deno.makeTempDir({ prefix: "vrdma-bench-" });
  const path = `${dir}/bench.sock`;
  using shm = SharedMemory.create(memBytes(o.size), { name: "vrdma-bench" });
  using listener = UnixSocket.listen(path);
  const args = [
    "--socket",
    path,
    "--size",
    String(o.size),
    "--batch",
    String(o.batch),
    "--warmup",
    String(o.warmup),
    "--seconds",
    String(o.seconds),
  ];
  const prefix = PREFIX[kind];
  const port = o.profile === undefined ? 0 : freePort();
  const spawn = (role: Role): Deno.ChildProcess =>
    new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        ...(role === o.profile ? [`--inspect-wait=127.0.0.1:${port}`] : []),
        fixture(`${prefix}_${role}.ts`),
        ...args,
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
  const children = [spawn("consumer"), spawn("producer")];
  const outputs = children.map((c) => c.output());
  // The profiled child waits for the inspector before it runs: attach now.
  const profiler = o.profile === undefined ? undefined : CpuProfiler.connect(port);
  const killAll = (): void => {
    for (const c of children) {
      try {
        c.kill("SIGKILL");
      } catch {
        // Already exited.
      }
    }
  };
  try {
    // Both connect; each gets the memfd.
    const deadline = performance.now() + 20_000;
    for (let sent = 0; sent < 2;) {
      const conn = listener.accept();
      if (conn === null) {
        if (performance.now() > deadline) throw new Error(`${kind}: the children never connected`);
        await sleep(2);
        continue;
      }
      conn.send(new Uint8Array([1]), [shm.fd]);
      conn.close();
      sent++;
    }
    const foreignCores = await measuredWindow(
      new ForeignLoad(children.map((c) => c.pid)),
      profiler === undefined ? undefined : await profiler,
      kind,
      o,
    );
    const limit = (o.warmup + o.seconds) * 1000 + 20_000;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = new Promise<null>((resolve) => {
      timer = setTimeout(() => resolve(null), limit);
    });
    const results = await Promise.race([Promise.all(outputs), timedOut]);
    clearTimeout(timer);
    if (results === null) throw new Error(`${kind}: no result in ${limit} ms`);
    for (const [i, r] of results.entries()) {
      if (!r.success) {
        throw new Error(
          `${kind} ${i === 0 ? "consumer" : "producer"} failed (exit ${r.code}):\n` +
            decoder.decode(r.stderr),
        );
      }
    }
    const lines = decoder.decode(results[0]!.stdout).trim().split("\n");
    const m = JSON.parse(lines[lines.length - 1]!) as Measurement;
    if (m.errors !== 0) {
      throw new Error(`${kind}: ${m.errors} messages had the wrong sequence word`);
    }
    return { ...m, foreignCores };
  } finally {
    killAll();
    await Promise.allSettled(outputs);
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * Waits through (about) the consumer's measured window, a little inside
 * it, sampling the load other processes put on the machine and, if asked,
 * profiling one side (its top functions by self time are printed).
 * Returns the foreign load in cores.
 */
async function measuredWindow(
  load: ForeignLoad,
  profiler: CpuProfiler | undefined,
  kind: Kind,
  o: Options,
): Promise<number> {
  try {
    await sleep(o.warmup * 1000 + 300);
    load.start();
    await profiler?.start();
    await sleep(Math.max(500, o.seconds * 1000 - 600));
    const foreign = load.stop();
    if (profiler !== undefined) {
      const top = selfTimes(await profiler.stop(), 15);
      console.log(JSON.stringify({ bench: "virtqueue", kind, profile: o.profile, selfTime: top }));
    }
    return foreign;
  } finally {
    profiler?.close();
  }
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Foreign load (cores) above which a measurement counts as disturbed. */
const DISTURBED_CORES = 0.15;

const mb = (msgsPerSec: number): number => (msgsPerSec * PAYLOAD) / 1e6;
const round2 = (x: number): number => Math.round(x * 100) / 100;

if (import.meta.main) {
  const { values } = parseArgs({
    // `deno task bench:... -- args` hands the script the "--" too.
    args: Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args,
    options: {
      size: { type: "string", default: "256" },
      batch: { type: "string", default: "32" },
      seconds: { type: "string", default: "3" },
      warmup: { type: "string", default: "1" },
      rounds: { type: "string", default: "4" },
      only: { type: "string" },
      floor: { type: "boolean", default: false },
      profile: { type: "string" },
    },
  });
  const only = values.only;
  if (only !== undefined && only !== "virtqueue" && only !== "raw" && only !== "floor") {
    throw new TypeError(`--only must be virtqueue, raw or floor, got ${only}`);
  }
  const profile = values.profile;
  if (profile !== undefined && profile !== "producer" && profile !== "consumer") {
    throw new TypeError(`--profile must be producer or consumer, got ${profile}`);
  }
  const o: Options = {
    size: Number(values.size),
    batch: Number(values.batch),
    seconds: Number(values.seconds),
    warmup: Number(values.warmup),
    profile,
  };
  const rounds = Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 1) {
    throw new RangeError(`--rounds must be a positive integer, got ${values.rounds}`);
  }
  const results: Record<Kind, Result[]> = { virtqueue: [], raw: [], floor: [] };
  const kinds: Kind[] = values.floor ? ["raw", "virtqueue", "floor"] : ["raw", "virtqueue"];
  for (let round = 1; round <= rounds; round++) {
    const order = round % 2 === 1 ? kinds : [...kinds].reverse();
    for (const kind of order.filter((k) => only === undefined || k === only)) {
      const m = await measure(kind, o);
      results[kind].push(m);
      console.log(JSON.stringify({
        bench: "virtqueue",
        kind,
        round,
        msgsPerSec: Math.round(m.msgsPerSec),
        mbPerSec: round2(mb(m.msgsPerSec)),
        messages: m.messages,
        seconds: round2(m.seconds),
        avgBatch: round2(m.avgBatch),
        foreignCores: round2(m.foreignCores),
        disturbed: m.foreignCores > DISTURBED_CORES,
        batch: o.batch,
        queueSize: o.size,
        payloadBytes: PAYLOAD,
      }));
    }
  }
  if (only !== undefined) Deno.exit(0); // no ratio without both kinds
  // Measurements during which other processes took a core's worth of time
  // measure the scheduler, not the code: leave them out while any clean ones remain.
  const quiet = (r: Result): boolean => r.foreignCores <= DISTURBED_CORES;
  const clean = (rs: Result[]): Result[] => rs.some(quiet) ? rs.filter(quiet) : rs;
  const vq = clean(results.virtqueue), raw = clean(results.raw);
  const ours = median(vq.map((r) => r.msgsPerSec)), base = median(raw.map((r) => r.msgsPerSec));
  // The ratio pairs the two measurements of each round: they ran seconds
  // apart, so drifts of the machine (the VM's cores moving between host
  // cores changes both figures two- to three-fold, measured) mostly cancel.
  const roundRatios = (kind: Kind): number[] => {
    const out: number[] = [];
    for (let i = 0; i < rounds; i++) {
      const v = results[kind][i]!, r = results.raw[i]!;
      if (quiet(v) && quiet(r)) out.push(v.msgsPerSec / r.msgsPerSec);
    }
    return out;
  };
  const ratios = roundRatios("virtqueue");
  const ratio = ratios.length > 0 ? median(ratios) : ours / base;
  // The floor's figures, the same way, when it ran.
  const floor = values.floor ? clean(results.floor) : [];
  const floorRate = floor.length > 0 ? median(floor.map((r) => r.msgsPerSec)) : 0;
  const floorRatios = values.floor ? roundRatios("floor") : [];
  const floorFigures = values.floor
    ? {
      floorChainsPerSec: Math.round(floorRate),
      floorRatio: round2(floorRatios.length > 0 ? median(floorRatios) : floorRate / base),
    }
    : {};
  // True when a figure below rests on disturbed measurements: then it is suspect.
  const disturbed = ratios.length === 0;
  console.log(JSON.stringify({
    bench: "virtqueue",
    chainsPerSec: Math.round(ours),
    mbPerSec: round2(mb(ours)),
    baselineMsgsPerSec: Math.round(base),
    baselineMbPerSec: round2(mb(base)),
    ratio: round2(ratio),
    ...floorFigures,
    batch: o.batch,
    queueSize: o.size,
    payloadBytes: PAYLOAD,
    stat: `medians of ${vq.length} virtqueue and ${raw.length} raw measurements; ratio: ` +
      (ratios.length > 0
        ? `median of the ${ratios.length} rounds where neither was disturbed`
        : "of the medians (every round disturbed)"),
    disturbed,
  }));
}
