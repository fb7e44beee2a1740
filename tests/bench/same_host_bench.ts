/**
 * Same-host RDMA WRITE bandwidth between two guests of one backend, beside
 * `Uint8Array.set` memcpy of the same sizes between two buffers in guest
 * memory (a memfd mapping, the memory the backend copies between), measured
 * in the same run so the ratio means something on a shared machine.
 *
 * The WRITE side works like perftest's ib_write_bw: `--tx-depth` WRs in
 * flight, every `--cq-mod`-th signaled, the same source and target buffers
 * reused. Each figure is the best of `--rounds` rounds of `--seconds`.
 *
 * Not a test: run by hand or with `deno task bench:same-host`. Output is JSON
 * lines; the last is the summary
 * `{"bench":"same-host","writeMBps64k",...,"ratio": writeMBps1m / memcpyMBps1m}`.
 * MB is 10^6 bytes.
 *
 *     deno run -A --unstable-net tests/bench/same_host_bench.ts [--seconds 1] [--rounds 3]
 *       [--tx-depth 16] [--cq-mod 8] [--spin 64]
 *
 * `--spin n` (default 64) busy-polls the CQ like perftest, yielding to the
 * event loop every n empty polls; `--spin 0` waits with `cq.next()` as an
 * event-driven application does. The machine has 2 cores shared by the
 * application, the backend's data-plane Worker and the notification threads,
 * so figures swing between runs: compare ratios within one run.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  Access,
  type Backend,
  type Cq,
  type Device,
  openDevice,
  type Qp,
  SendFlags,
  type SendWr,
  startBackend,
  VerbsError,
  type WorkCompletion,
} from "../../mod.ts";
import { tempSocket } from "../helpers/backend.ts";
import { yieldMacrotask } from "../../tools/common/perf_pacer.ts";

const SIZES = [64 << 10, 1 << 20] as const;

interface Options {
  seconds: number;
  rounds: number;
  txDepth: number;
  cqMod: number;
  /** 0: wait for completions with `cq.next()`; n: spin, yielding every n empty polls. */
  spin: number;
}

function options(): Options {
  const { values } = parseArgs({
    options: {
      seconds: { type: "string", default: "1" },
      rounds: { type: "string", default: "3" },
      "tx-depth": { type: "string", default: "16" },
      "cq-mod": { type: "string", default: "8" },
      spin: { type: "string", default: "64" },
    },
  });
  const o = {
    seconds: Number(values.seconds),
    rounds: Number(values.rounds),
    txDepth: Number(values["tx-depth"]),
    cqMod: Number(values["cq-mod"]),
    spin: Number(values.spin),
  };
  if (
    !(o.seconds > 0) || !(o.rounds >= 1) || !(o.txDepth >= 1) || !(o.cqMod >= 1) || !(o.spin >= 0)
  ) {
    throw new RangeError(`bad options ${JSON.stringify(o)}`);
  }
  if (o.txDepth % o.cqMod !== 0) {
    throw new RangeError(`tx-depth ${o.txDepth} must be a multiple of cq-mod ${o.cqMod}`);
  }
  return o;
}

interface Guest {
  dev: Device;
  qp: Qp;
  cq: Cq;
  addr: bigint;
  lkey: number;
  rkey: number;
}

async function guest(host: Backend, bytes: number, depth: number): Promise<Guest> {
  const dev = await openDevice({ socket: host.socket, memoryBytes: bytes + (8 << 20) });
  const pd = await dev.allocPd();
  const buf = dev.allocBuffer(bytes, 4096);
  buf.bytes.fill(0x5a);
  const mr = await pd.regMr(buf, Access.LOCAL_WRITE | Access.REMOTE_WRITE);
  const cq = await dev.createCq({ cqe: depth * 2 });
  const qp = await pd.createQp({
    qpType: "RC",
    sendCq: cq,
    recvCq: cq,
    cap: { maxSendWr: depth, maxRecvWr: 1, maxSendSge: 1, maxRecvSge: 1, maxInlineData: 0 },
  });
  return { dev, qp, cq, addr: buf.addr, lkey: mr.lkey, rkey: mr.rkey };
}

/** One WRITE run: bytes per second, and how often a post found the SQ full. */
interface WriteRun {
  bytesPerSecond: number;
  messages: number;
  sqFullRetries: number;
}

/**
 * Posts `wrs`; when the SQ is reported full part-way (ENOMEM naming
 * `wr[k]`, the ones before it posted), yields and posts the rest. After a
 * polled completion the SQ should always have room (ibv_poll_cq semantics);
 * each retry is counted so a device that frees slots late shows in the output.
 */
async function postAll(qp: Qp, wrs: SendWr[]): Promise<number> {
  let from = 0;
  let retries = 0;
  const deadline = performance.now() + 2000;
  for (;;) {
    try {
      qp.postSend(from === 0 ? wrs : wrs.slice(from));
      return retries;
    } catch (e) {
      if (!(e instanceof VerbsError) || e.errno !== "ENOMEM" || performance.now() > deadline) {
        throw e;
      }
      const k = /wr\[(\d+)\]/.exec(e.message);
      from += Number(k?.[1] ?? 0);
      retries++;
      await yieldMacrotask();
    }
  }
}

/** RDMA WRITEs of `size` from `a` to `b` for `o.seconds`. */
async function writeBandwidth(a: Guest, b: Guest, size: number, o: Options): Promise<WriteRun> {
  const wrs: SendWr[] = Array.from({ length: o.cqMod }, (_, i) => ({
    wrId: BigInt(i),
    opcode: "RDMA_WRITE" as const,
    sendFlags: i === o.cqMod - 1 ? SendFlags.SIGNALED : 0,
    sgList: [{ addr: a.addr, length: size, lkey: a.lkey }],
    rdma: { remoteAddr: b.addr, rkey: b.rkey },
  }));
  let inFlight = 0; // batches of cqMod WRs
  let done = 0; // messages completed
  let sqFullRetries = 0;
  const t0 = performance.now();
  const end = t0 + o.seconds * 1000;
  let idle = 0;
  for (;;) {
    const now = performance.now();
    if (now < end) {
      while ((inFlight + 1) * o.cqMod <= o.txDepth) {
        sqFullRetries += await postAll(a.qp, wrs);
        inFlight++;
      }
    } else if (inFlight === 0) {
      const seconds = (performance.now() - t0) / 1000;
      return { bytesPerSecond: (done * size) / seconds, messages: done, sqFullRetries };
    }
    let wcs: WorkCompletion[] = a.cq.poll(o.txDepth);
    if (wcs.length === 0 && o.spin === 0) {
      // Event-driven: sleep until the device signals a completion.
      wcs = [await a.cq.next()];
    }
    for (const wc of wcs) {
      if (wc.status !== "SUCCESS") throw new Error(`WRITE failed: ${wc.status}`);
      inFlight--;
      done += o.cqMod;
    }
    if (wcs.length === 0) {
      // Spinning: let the event loop breathe now and then.
      if (++idle % o.spin === 0) await yieldMacrotask();
    } else {
      idle = 0;
    }
  }
}

/** Bytes per second of `dst.set(src)` for `size` bytes for `seconds`. */
function memcpyBandwidth(src: Uint8Array, dst: Uint8Array, seconds: number): number {
  let n = 0;
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  while (performance.now() < end) {
    for (let i = 0; i < 16; i++) dst.set(src);
    n += 16;
  }
  return (n * src.length) / ((performance.now() - t0) / 1000);
}

async function main(): Promise<void> {
  const o = options();
  const host = await startBackend({
    socket: tempSocket("bench"),
    ip: "127.0.0.1",
    port: 20000 + Math.floor(Math.random() * 40000),
    logLevel: "silent",
  });
  const big = SIZES[SIZES.length - 1]!;
  const a = await guest(host, big, o.txDepth);
  const b = await guest(host, big, o.txDepth);
  try {
    await a.qp.connect({ qpNum: b.qp.qpNum, psn: b.qp.psn, gid: host.gid });
    await b.qp.connect({ qpNum: a.qp.qpNum, psn: a.qp.psn, gid: host.gid });
    // memcpy between two separate buffers of one guest's memory (memfd-backed, as the backend sees).
    const src = a.dev.allocBuffer(big, 4096);
    const dst = a.dev.allocBuffer(big, 4096);
    src.bytes.fill(0x33);
    const write: Record<string, number> = {};
    let sqFull = 0;
    const copy: Record<string, number> = {};
    for (const size of SIZES) {
      let bestWrite = 0;
      let bestCopy = 0;
      let retries = 0;
      let messages = 0;
      const before = host.stats();
      for (let r = 0; r < o.rounds; r++) {
        const run = await writeBandwidth(a, b, size, o);
        bestWrite = Math.max(bestWrite, run.bytesPerSecond);
        retries += run.sqFullRetries;
        messages += run.messages;
        bestCopy = Math.max(
          bestCopy,
          memcpyBandwidth(src.bytes.subarray(0, size), dst.bytes.subarray(0, size), o.seconds),
        );
      }
      const after = host.stats();
      const tag = size === 1 << 20 ? "1m" : `${size >> 10}k`;
      write[tag] = Math.round(bestWrite / 1e6);
      copy[tag] = Math.round(bestCopy / 1e6);
      sqFull += retries;
      const perWr = (k: "kicks" | "calls") =>
        Number(((after[k] - before[k]) / messages).toFixed(3));
      console.log(JSON.stringify({
        bench: "same-host",
        op: "rdma_write",
        size,
        txDepth: o.txDepth,
        cqMod: o.cqMod,
        MBps: write[tag],
        messages,
        kicksPerWr: perWr("kicks"),
        callsPerWr: perWr("calls"),
        sqFullRetries: retries,
      }));
      console.log(JSON.stringify({ bench: "same-host", op: "memcpy", size, MBps: copy[tag] }));
    }
    const summary = {
      bench: "same-host",
      writeMBps64k: write["64k"]!,
      writeMBps1m: write["1m"]!,
      memcpyMBps64k: copy["64k"]!,
      memcpyMBps1m: copy["1m"]!,
      ratio: Number((write["1m"]! / copy["1m"]!).toFixed(3)),
      ratio64k: Number((write["64k"]! / copy["64k"]!).toFixed(3)),
      sqFullRetries: sqFull,
      txDepth: o.txDepth,
      cqMod: o.cqMod,
      seconds: o.seconds,
      rounds: o.rounds,
    };
    console.log(JSON.stringify(summary));
  } finally {
    await a.dev.close();
    await b.dev.close();
    await host.close();
  }
}

if (import.meta.main) await main();
