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
 *       [--tx-depth 16] [--cq-mod 8]
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  Access,
  type Backend,
  type Device,
  openDevice,
  SendFlags,
  startBackend,
} from "../../mod.ts";
import { tempSocket } from "../helpers/backend.ts";

type Pd = Awaited<ReturnType<Device["allocPd"]>>;
type Cq = Awaited<ReturnType<Device["createCq"]>>;
type Qp = Awaited<ReturnType<Pd["createQp"]>>;
type WorkCompletion = ReturnType<Cq["poll"]>[number];

const SIZES = [64 << 10, 1 << 20] as const;

interface Options {
  seconds: number;
  rounds: number;
  txDepth: number;
  cqMod: number;
}

function options(): Options {
  const { values } = parseArgs({
    options: {
      seconds: { type: "string", default: "1" },
      rounds: { type: "string", default: "3" },
      "tx-depth": { type: "string", default: "16" },
      "cq-mod": { type: "string", default: "8" },
    },
  });
  const o = {
    seconds: Number(values.seconds),
    rounds: Number(values.rounds),
    txDepth: Number(values["tx-depth"]),
    cqMod: Number(values["cq-mod"]),
  };
  if (!(o.seconds > 0) || !(o.rounds >= 1) || !(o.txDepth >= 1) || !(o.cqMod >= 1)) {
    throw new RangeError(`bad options ${JSON.stringify(o)}`);
  }
  if (o.txDepth % o.cqMod !== 0) {
    throw new RangeError(`tx-depth ${o.txDepth} must be a multiple of cq-mod ${o.cqMod}`);
  }
  return o;
}

/** Yields to the event loop cheaply (setTimeout(0) costs ~2 ms here). */
function yieldNow(): Promise<void> {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => {
      channel.port1.close();
      resolve();
    };
    channel.port2.postMessage(0);
    channel.port2.close();
  });
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

/** Bytes per second of RDMA WRITEs of `size` from `a` to `b` for `seconds`. */
async function writeBandwidth(a: Guest, b: Guest, size: number, o: Options): Promise<number> {
  const wrs = Array.from({ length: o.cqMod }, (_, i) => ({
    wrId: BigInt(i),
    opcode: "RDMA_WRITE" as const,
    sendFlags: i === o.cqMod - 1 ? SendFlags.SIGNALED : 0,
    sgList: [{ addr: a.addr, length: size, lkey: a.lkey }],
    rdma: { remoteAddr: b.addr, rkey: b.rkey },
  }));
  let inFlight = 0; // batches of cqMod WRs
  let done = 0; // messages completed
  const t0 = performance.now();
  const end = t0 + o.seconds * 1000;
  let idle = 0;
  for (;;) {
    const now = performance.now();
    if (now < end) {
      while ((inFlight + 1) * o.cqMod <= o.txDepth) {
        a.qp.postSend(wrs);
        inFlight++;
      }
    } else if (inFlight === 0) {
      return (done * size) / ((performance.now() - t0) / 1000);
    }
    const wcs: WorkCompletion[] = a.cq.poll(o.txDepth);
    for (const wc of wcs) {
      if (wc.status !== "SUCCESS") throw new Error(`WRITE failed: ${wc.status}`);
      inFlight--;
      done += o.cqMod;
    }
    if (wcs.length === 0) {
      // Let the event loop breathe now and then; the data plane is another thread.
      if (++idle % 64 === 0) await yieldNow();
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
    const copy: Record<string, number> = {};
    for (const size of SIZES) {
      let bestWrite = 0;
      let bestCopy = 0;
      for (let r = 0; r < o.rounds; r++) {
        bestWrite = Math.max(bestWrite, await writeBandwidth(a, b, size, o));
        bestCopy = Math.max(
          bestCopy,
          memcpyBandwidth(src.bytes.subarray(0, size), dst.bytes.subarray(0, size), o.seconds),
        );
      }
      const tag = size === 1 << 20 ? "1m" : `${size >> 10}k`;
      write[tag] = Math.round(bestWrite / 1e6);
      copy[tag] = Math.round(bestCopy / 1e6);
      console.log(JSON.stringify({
        bench: "same-host",
        op: "rdma_write",
        size,
        txDepth: o.txDepth,
        cqMod: o.cqMod,
        MBps: write[tag],
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
