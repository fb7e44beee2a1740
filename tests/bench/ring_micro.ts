/**
 * In-process throughput of the split virtqueue against a raw single-producer
 * single-consumer ring, both over one SharedArrayBuffer, both sides
 * alternating in one thread: the producer side fills a batch of 64-byte
 * messages and publishes once, the consumer side copies them out and
 * publishes once, and so on.
 *
 * Not a test: run by hand and compare the figures of one run. The two
 * benches alternate for several rounds; the best round of each is reported
 * (the machine is shared, so the best is the least disturbed).
 *
 * With `--threads` each bench also runs with its consumer side (the raw
 * ring's consumer, the virtqueue's device) in a Worker, both sides polling
 * the same SharedArrayBuffer on their own core: the shape of the real
 * driver and backend processes.
 *
 *     deno run -A tests/bench/ring_micro.ts [--batch 64] [--size 256] [--seconds 1] [--rounds 5] [--event-idx] [--threads]
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  DescriptorChain,
  DeviceQueue,
  DriverQueue,
  GuestMemory,
  layoutAt,
} from "../../virtqueue/mod.ts";

const MSG = 64;

interface BenchOptions {
  batch: number;
  size: number;
  seconds: number;
  eventIdx: boolean;
}

/** A bench: `run(seconds)` returns messages per second. */
type Bench = (seconds: number) => number;

/**
 * The baseline: a ring of 64-byte slots with a producer and a consumer
 * index, each stored once per batch; copies in and out with `Uint8Array.set`.
 */
function rawRing(o: BenchOptions): Bench {
  const sab = new SharedArrayBuffer(64 + o.size * MSG);
  const idx = new Uint32Array(sab, 0, 16);
  const slots = new Uint8Array(sab, 64, o.size * MSG);
  const mask = o.size - 1;
  const src = new Uint8Array(MSG).fill(7);
  const dst = new Uint8Array(MSG);
  let produced = 0, consumed = 0, check = 0;
  return function runRaw(seconds: number): number {
    const t0 = performance.now(), end = t0 + seconds * 1000;
    const start = consumed;
    let now = t0;
    while (now < end) {
      for (let r = 0; r < 256; r++) {
        // Producer: room check against the consumer index, copy in, publish once.
        const free = o.size - (produced - Atomics.load(idx, 8));
        const n = free < o.batch ? free : o.batch;
        for (let i = 0; i < n; i++) slots.set(src, ((produced + i) & mask) * MSG);
        produced += n;
        Atomics.store(idx, 0, produced);
        // Consumer: everything published, copy out, publish once.
        const p = Atomics.load(idx, 0);
        while (consumed !== p) {
          const off = (consumed & mask) * MSG;
          dst.set(slots.subarray(off, off + MSG));
          check += dst[0]!;
          consumed++;
        }
        Atomics.store(idx, 8, consumed);
      }
      now = performance.now();
    }
    if (check !== consumed * 7) throw new Error(`raw ring lost data: ${check} != ${consumed * 7}`);
    return (consumed - start) / ((now - t0) / 1000);
  };
}

/** Driver and device of one virtqueue: 64-byte single-descriptor readable chains. */
function virtqueue(o: BenchOptions): Bench {
  const base = 0x10000;
  const { layout, bytes } = layoutAt(base, o.size);
  const bufBase = base + Math.ceil(bytes / 4096) * 4096;
  const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(bufBase - base + o.size * MSG), base);
  const opts = { eventIdx: o.eventIdx };
  const driver = new DriverQueue(layout, opts);
  driver.init(mem);
  const device = new DeviceQueue(layout, opts);
  const chain = new DescriptorChain();
  // The driver's own buffers: views made once, as a real driver keeps them.
  const bufs: Uint8Array[] = [];
  for (let i = 0; i < o.size; i++) bufs.push(mem.bytes(bufBase + i * MSG, MSG));
  const src = new Uint8Array(MSG).fill(7);
  const dst = new Uint8Array(MSG);
  const mask = o.size - 1;
  let seq = 0, consumed = 0, check = 0, kicks = 0, calls = 0;
  return function runVirtqueue(seconds: number): number {
    const t0 = performance.now(), end = t0 + seconds * 1000;
    const start = consumed;
    let now = t0;
    while (now < end) {
      for (let r = 0; r < 256; r++) {
        // Driver: fill buffers, add, publish once.
        const n = driver.numFree < o.batch ? driver.numFree : o.batch;
        for (let i = 0; i < n; i++) {
          const slot = (seq + i) & mask;
          bufs[slot]!.set(src);
          driver.addOne(mem, bufBase + slot * MSG, MSG, false);
        }
        seq += n;
        if (driver.publish(mem)) kicks++;
        // Device: pop every chain, copy its bytes out, return it; publish once.
        while (device.popInto(mem, chain)) {
          chain.reader.read(dst);
          check += dst[0]!;
          device.addUsed(mem, chain.head, 0);
          consumed++;
        }
        device.publishUsed(mem);
        if (device.needsNotify(mem)) calls++;
        // Driver: take everything back.
        while (driver.popUsedId(mem) >= 0);
      }
      now = performance.now();
    }
    if (device.broken) throw device.error;
    if (check !== consumed * 7) throw new Error(`virtqueue lost data: ${check} != ${consumed * 7}`);
    if (kicks === 0 || calls === 0) throw new Error("no notification decision was ever true");
    return (consumed - start) / ((now - t0) / 1000);
  };
}

/** What the main thread sends the consumer Worker. */
interface WorkerJob {
  kind: "raw" | "virtqueue";
  sab: SharedArrayBuffer;
  /** [0] = stop flag, [1] = ready flag. */
  control: SharedArrayBuffer;
  o: BenchOptions;
}

const WORKER_NAME = "ring-micro-consumer";

/** Guest memory layout of the virtqueue benches: the queue, then one 64-byte buffer per entry. */
function vqLayout(o: BenchOptions): { base: number; bufBase: number; bytes: number } {
  const base = 0x10000;
  const { bytes } = layoutAt(base, o.size);
  const bufBase = base + Math.ceil(bytes / 4096) * 4096;
  return { base, bufBase, bytes: bufBase - base + o.size * MSG };
}

/** Consumer side, in the Worker: runs until the stop flag, returns messages consumed. */
function consume(job: WorkerJob): number {
  const control = new Int32Array(job.control);
  const o = job.o;
  const dst = new Uint8Array(MSG);
  let consumed = 0, check = 0;
  Atomics.store(control, 1, 1);
  if (job.kind === "raw") {
    const idx = new Uint32Array(job.sab, 0, 16);
    const slots = new Uint8Array(job.sab, 64, o.size * MSG);
    const mask = o.size - 1;
    while (Atomics.load(control, 0) === 0) {
      const p = Atomics.load(idx, 0);
      if (p === consumed) continue;
      while (consumed !== p) {
        const off = (consumed & mask) * MSG;
        dst.set(slots.subarray(off, off + MSG));
        check += dst[0]!;
        consumed++;
      }
      Atomics.store(idx, 8, consumed);
    }
  } else {
    const { base } = vqLayout(o);
    const mem = GuestMemory.fromBuffer(job.sab, base);
    const device = new DeviceQueue(layoutAt(base, o.size).layout, { eventIdx: o.eventIdx });
    const chain = new DescriptorChain();
    while (Atomics.load(control, 0) === 0) {
      while (device.popInto(mem, chain)) {
        chain.reader.read(dst);
        check += dst[0]!;
        device.addUsed(mem, chain.head, 0);
        consumed++;
      }
      device.publishUsed(mem);
      device.needsNotify(mem);
    }
    if (device.broken) throw device.error;
  }
  if (check !== consumed * 7) throw new Error(`consumer lost data: ${check} != ${consumed * 7}`);
  return consumed;
}

/** Producer side in this thread, consumer in a Worker; returns messages per second. */
async function threaded(kind: WorkerJob["kind"], o: BenchOptions): Promise<number> {
  const sab = new SharedArrayBuffer(kind === "raw" ? 64 + o.size * MSG : vqLayout(o).bytes);
  const control = new SharedArrayBuffer(64);
  const flags = new Int32Array(control);
  const worker = new Worker(import.meta.url, { type: "module", name: WORKER_NAME });
  const done = new Promise<number>((resolve, reject) => {
    worker.onmessage = (e: MessageEvent<number>) => resolve(e.data);
    worker.onerror = (e) => {
      e.preventDefault();
      reject(new Error(`consumer worker failed: ${e.message}`));
    };
  });
  worker.postMessage({ kind, sab, control, o } satisfies WorkerJob);
  while (Atomics.load(flags, 1) === 0) await new Promise((r) => setTimeout(r, 1));
  const src = new Uint8Array(MSG).fill(7);
  const mask = o.size - 1;
  const t0 = performance.now(), end = t0 + o.seconds * 1000;
  let now = t0;
  if (kind === "raw") {
    const idx = new Uint32Array(sab, 0, 16);
    const slots = new Uint8Array(sab, 64, o.size * MSG);
    let produced = 0;
    while (now < end) {
      for (let r = 0; r < 256; r++) {
        const free = o.size - (produced - Atomics.load(idx, 8));
        const n = free < o.batch ? free : o.batch;
        for (let i = 0; i < n; i++) slots.set(src, ((produced + i) & mask) * MSG);
        produced += n;
        Atomics.store(idx, 0, produced);
      }
      now = performance.now();
    }
  } else {
    const { base, bufBase } = vqLayout(o);
    const mem = GuestMemory.fromBuffer(sab, base);
    const driver = new DriverQueue(layoutAt(base, o.size).layout, { eventIdx: o.eventIdx });
    driver.init(mem);
    const bufs: Uint8Array[] = [];
    for (let i = 0; i < o.size; i++) bufs.push(mem.bytes(bufBase + i * MSG, MSG));
    let seq = 0;
    while (now < end) {
      for (let r = 0; r < 256; r++) {
        while (driver.popUsedId(mem) >= 0);
        const n = driver.numFree < o.batch ? driver.numFree : o.batch;
        for (let i = 0; i < n; i++) {
          const slot = (seq + i) & mask;
          bufs[slot]!.set(src);
          driver.addOne(mem, bufBase + slot * MSG, MSG, false);
        }
        seq += n;
        driver.publish(mem);
      }
      now = performance.now();
    }
  }
  Atomics.store(flags, 0, 1);
  const consumed = await done;
  worker.terminate();
  return consumed / ((now - t0) / 1000);
}

function parseOptions(): { o: BenchOptions; rounds: number; threads: boolean } {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      batch: { type: "string", default: "64" },
      size: { type: "string", default: "256" },
      seconds: { type: "string", default: "1" },
      rounds: { type: "string", default: "5" },
      "event-idx": { type: "boolean", default: false },
      threads: { type: "boolean", default: false },
    },
  });
  return {
    o: {
      batch: Number(values.batch),
      size: Number(values.size),
      seconds: Number(values.seconds),
      eventIdx: values["event-idx"],
    },
    rounds: Number(values.rounds),
    threads: values.threads,
  };
}

async function main(): Promise<void> {
  const { o, rounds, threads } = parseOptions();
  const m = (r: number): string => `${(r / 1e6).toFixed(2)} M/s`;
  console.log(`64-byte messages, batch ${o.batch}, queue size ${o.size}, event idx ${o.eventIdx}`);
  const raw = rawRing(o), vq = virtqueue(o);
  raw(0.3); // warm-up: let the optimizing compiler see both
  vq(0.3);
  let bestRaw = 0, bestVq = 0;
  for (let i = 0; i < rounds; i++) {
    bestRaw = Math.max(bestRaw, raw(o.seconds));
    bestVq = Math.max(bestVq, vq(o.seconds));
  }
  console.log(`one thread, alternating:`);
  console.log(`  raw SPSC ring        ${m(bestRaw)}`);
  console.log(`  virtqueue (drv+dev)  ${m(bestVq)}   ratio ${(bestVq / bestRaw).toFixed(2)}`);
  if (!threads) return;
  let tRaw = 0, tVq = 0;
  for (let i = 0; i < rounds; i++) {
    tRaw = Math.max(tRaw, await threaded("raw", o));
    tVq = Math.max(tVq, await threaded("virtqueue", o));
  }
  console.log(`two threads, producer here, consumer in a Worker:`);
  console.log(`  raw SPSC ring        ${m(tRaw)}`);
  console.log(`  virtqueue (drv+dev)  ${m(tVq)}   ratio ${(tVq / tRaw).toFixed(2)}`);
}

if ((globalThis as { name?: string }).name === WORKER_NAME) {
  self.onmessage = (e: MessageEvent<WorkerJob>) => {
    self.postMessage(consume(e.data));
  };
} else if (import.meta.main) {
  await main();
}
