/**
 * Shared resources for the verbs acceptance tests, shaped after rdma-core's
 * pyverbs suite (tests/base.py, tests/utils.py): per topology one set of
 * backends per suite with each case a step ({@linkcode verbsSuite}), players
 * (one guest each: device, PD, MR over a buffer, CQ, QP) built by one helper,
 * a connect step that swaps `{qpNum, psn, gid}`, and one `traffic()` that
 * posts, polls both CQs, checks every completion field and then the bytes
 * that arrived.
 *
 * A case gets `{ a, b }` hosts and builds its peer players on `b`: in the
 * same-host topology `b === a`, in the two-host one `b` is another backend
 * on another loopback IP, so the same case runs the memory-copy path and the
 * RoCEv2/UDP path. `VERBS_TOPOLOGY=same|two` runs one topology only.
 *
 * Every wait here has a deadline: a hang becomes a failure naming what was
 * missing.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  Access,
  type Ah,
  type Backend,
  type Cq,
  type Device,
  type GuestBuffer,
  type Mr,
  openDevice,
  type Pd,
  type Qp,
  type QpCap,
  type QpType,
  type RecvWr,
  SendFlags,
  type SendWr,
  type Sge,
  type Srq,
  startBackend,
  VerbsError,
  type WorkCompletion,
} from "../../mod.ts";
import { tempSocket } from "../helpers/backend.ts";
import { yieldMacrotask } from "../../tools/common/perf_pacer.ts";

export type { Ah, Cq, Mr, Pd, Qp, QpCap, QpType, RecvWr, SendWr, Sge, Srq, WorkCompletion };

/** Bytes of the GRH area at the start of every UD receive buffer. */
export const GRH_BYTES = 40;
/** The Q_Key UD players use unless told otherwise (pyverbs' UD_QKEY). */
export const UD_QKEY = 0x11111111;
/** Deadline for one wait on a completion, in ms. Generous: the suite shares 2 cores. */
export const WAIT_MS = 3000;
/** Every access bit a data-path MR needs. */
export const ALL_ACCESS = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ |
  Access.REMOTE_ATOMIC;
/** Bytes the receive/target regions are pre-filled with, so a stray write shows. */
export const SENTINEL = 0xee;

export { Access, SendFlags, VerbsError };

/** Waits `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * `promise`, or a rejection naming `what` after `ms`. The timer is always
 * cleared, and a late rejection of the loser is swallowed (it would otherwise
 * be reported as unhandled when the device closes).
 */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  promise.catch(() => {});
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Where a suite's two sides run. "same": every player on one backend (the
 * same-host memory-copy path). "two": the peer players on a second backend
 * with its own loopback IP, so their traffic crosses RoCEv2 over UDP.
 */
export type Topology = "same" | "two";

/** Every topology, in the order suites register them. */
const TOPOLOGIES: readonly Topology[] = ["same", "two"];

/** How a topology shows in test names. */
const TOPOLOGY_LABEL: Readonly<Record<Topology, string>> = {
  same: "same host",
  two: "two hosts",
};

/**
 * The IPs of the two-host topology. Other suites on this machine use
 * 127.0.0.1..3; these stay out of their way.
 */
export const TWO_HOST_IPS = ["127.0.0.12", "127.0.0.13"] as const;

/** The backends one case runs against. */
export interface Hosts {
  /** Which topology they form. */
  readonly topology: Topology;
  /** The first host: cases put their client (requester) side here. */
  readonly a: Backend;
  /** The second host: cases put the peer side here. `a` itself in the same-host topology. */
  readonly b: Backend;
}

/**
 * The topologies selected by `VERBS_TOPOLOGY` (`same` or `two`); both when
 * unset. Throws a `TypeError` naming any other value, so a typo does not
 * silently run nothing.
 */
export function topologies(): Topology[] {
  const wanted = Deno.env.get("VERBS_TOPOLOGY");
  if (wanted === undefined || wanted === "") return [...TOPOLOGIES];
  if (wanted !== "same" && wanted !== "two") {
    throw new TypeError(`VERBS_TOPOLOGY "${wanted}" is not "same" or "two"`);
  }
  return [wanted];
}

/** A random UDP port for a fabric: 4791 may be held by other suites on this machine. */
function randomPort(): number {
  return 20000 + Math.floor(Math.random() * 40000);
}

/**
 * Starts an in-process backend on a fresh socket, silent, at `ip` (default
 * 127.0.0.1). Without `port` the RoCEv2 UDP port is random and a start that
 * fails (the port is taken) is retried on another; with `port` it fails at once.
 */
export async function startHost(ip = "127.0.0.1", port?: number): Promise<Backend> {
  for (let attempt = 0;; attempt++) {
    try {
      return await startBackend({
        socket: tempSocket("verbs"),
        ip,
        port: port ?? randomPort(),
        logLevel: "silent",
      });
    } catch (e) {
      if (port !== undefined || attempt >= 4) throw e;
    }
  }
}

/**
 * Starts the backends of `topology`: one at 127.0.0.1, or two at
 * {@linkcode TWO_HOST_IPS} on one random UDP port (the adapter sends to the
 * port it listens on, so a fabric shares one). They start concurrently: each
 * costs ~2 s of Worker start-up under `deno test`. If either fails (the port
 * is taken on one IP), both are closed and another port is tried.
 * Disposing the result closes every backend.
 */
export async function startHosts(topology: Topology): Promise<Hosts & AsyncDisposable> {
  if (topology === "same") {
    const a = await startHost();
    return { topology, a, b: a, [Symbol.asyncDispose]: () => a.close() };
  }
  for (let attempt = 0;; attempt++) {
    const port = randomPort();
    const started = await Promise.allSettled(TWO_HOST_IPS.map((ip) => startHost(ip, port)));
    const [a, b] = started.map((r) => r.status === "fulfilled" ? r.value : undefined);
    if (a !== undefined && b !== undefined) {
      const close = async () => void await Promise.all([a.close(), b.close()]);
      try {
        await skewQpNumbers(b, QPN_SKEW);
      } catch (e) {
        await close();
        throw e;
      }
      return { topology, a, b, [Symbol.asyncDispose]: close };
    }
    await Promise.all([a?.close(), b?.close()]);
    const failed = started.find((r) => r.status === "rejected") as PromiseRejectedResult;
    if (attempt >= 4) throw failed.reason;
  }
}

/** How far the second host's QP numbers are moved ahead of the first's. */
const QPN_SKEW = 100;

/**
 * Uses up `n` QP numbers of `host` (create and destroy; numbers are not
 * reused until they wrap). Two fresh hosts hand out the same numbers from
 * 0x11 in lockstep, and a completion carrying its own QP number where the
 * peer's belongs (srcQp) would then pass unnoticed. A suite creates far
 * fewer than `n` more QPs on one host than on the other, so the numbers
 * never meet again; {@linkcode connectPlayers} asserts it.
 */
async function skewQpNumbers(host: Backend, n: number): Promise<void> {
  await using dev = await openDevice({ socket: host.socket, memoryBytes: 1 << 20 });
  const pd = await dev.allocPd();
  const cq = await dev.createCq({ cqe: 1 });
  const cap = { maxSendWr: 1, maxRecvWr: 1, maxSendSge: 1, maxRecvSge: 1, maxInlineData: 0 };
  for (let i = 0; i < n; i++) {
    await (await pd.createQp({ qpType: "UD", sendCq: cq, recvCq: cq, cap })).destroy();
  }
}

/** The distinct backends of `hosts` (one in the same-host topology). */
export function hostList(hosts: Hosts): Backend[] {
  return hosts.a === hosts.b ? [hosts.a] : [hosts.a, hosts.b];
}

/** One case of a suite: runs against the suite's hosts. */
export type Case = (hosts: Hosts) => Promise<void>;

/** How a case is registered. */
export interface CaseOptions {
  /**
   * Run the case in this topology only. `"same"` is for cases that are
   * inherently one-host (one player, or asserting same-host counters);
   * `"two"` for ones that assert the wire.
   */
  only?: Topology;
}

/** Adds a case to a suite: `test(name, fn)` or `test(name, options, fn)`, as `Deno.test`. */
export interface AddCase {
  /** A case for every topology. */
  (name: string, fn: Case): void;
  /** A case with options (e.g. one topology only). */
  (name: string, options: CaseOptions, fn: Case): void;
}

/** The longest one case may take before it counts as hung. */
export const CASE_MS = 30_000;

/**
 * Registers, per selected topology (see {@linkcode topologies}), one
 * `Deno.test` named `<name> (same host)` / `<name> (two hosts)` whose steps
 * are the cases `define` adds, all against that topology's backends.
 * Starting a backend starts its data-plane Worker, and under `deno test` each
 * Worker's module graph is type-checked again (about 2 s here), so backends
 * per case would cost minutes.
 *
 * Before each case every host must be back to no guests and no objects:
 * a case that leaks fails the next one's precondition, naming the counts.
 * Each case has a {@linkcode CASE_MS} watchdog so a hang becomes a failure.
 * `VERBS_CASE=<substring>` in the environment runs only matching cases.
 */
export function verbsSuite(name: string, define: (test: AddCase) => void): void {
  const cases: { name: string; fn: Case; options: CaseOptions }[] = [];
  define((caseName: string, second: CaseOptions | Case, third?: Case) => {
    const fn = typeof second === "function" ? second : third;
    if (fn === undefined) throw new TypeError(`case "${caseName}" has no function`);
    cases.push({ name: caseName, fn, options: typeof second === "function" ? {} : second });
  });
  const only = Deno.env.get("VERBS_CASE");
  for (const topology of topologies()) {
    const mine = cases.filter((c) =>
      (c.options.only === undefined || c.options.only === topology) &&
      (!only || c.name.includes(only))
    );
    if (mine.length === 0) continue;
    Deno.test(`${name} (${TOPOLOGY_LABEL[topology]})`, async (t) => {
      await using hosts = await startHosts(topology);
      for (const c of mine) {
        await t.step(c.name, async () => {
          await settled(hosts, `before "${c.name}"`);
          await withTimeout(c.fn(hosts), CASE_MS, `case "${c.name}"`);
        });
      }
    });
  }
}

/** Waits until no host serves a guest, then asserts no object is left on any. */
export async function settled(hosts: Hosts, what: string): Promise<void> {
  for (const host of hostList(hosts)) {
    const deadline = performance.now() + WAIT_MS;
    while (host.stats().guests !== 0 && performance.now() < deadline) await sleep(5);
    const s = host.stats() as Record<string, number>;
    assert.equal(s.guests, 0, `${what}: guests still connected to ${host.ip}`);
    assert.deepEqual(
      counts(host),
      { pds: 0, mrs: 0, cqs: 0, qps: 0, srqs: 0, ahs: 0 },
      `${what}: objects left over on ${host.ip} from an earlier case`,
    );
  }
}

/**
 * Runs `run` (traffic `sender` starts) and then checks the path it took. On
 * two hosts: the sender's host sent UDP packets and the other host received
 * some. On one host: the local path carried it (`localOps` moved) and no UDP
 * counter moved. Opt-in per case, so the other cases test verbs, not counters.
 */
export async function expectTransport<T>(
  hosts: Hosts,
  sender: Player,
  run: () => Promise<T>,
): Promise<T> {
  const peer = sender.host === hosts.a ? hosts.b : hosts.a;
  const before = new Map(hostList(hosts).map((h) => [h, h.stats()]));
  const result = await run();
  const moved = (h: Backend, key: "udpPacketsSent" | "udpPacketsReceived" | "localOps") =>
    h.stats()[key] - before.get(h)![key];
  if (hosts.topology === "two") {
    assert.ok(moved(sender.host, "udpPacketsSent") > 0, `${sender.host.ip} sent no UDP packet`);
    assert.ok(moved(peer, "udpPacketsReceived") > 0, `${peer.ip} received no UDP packet`);
  } else {
    assert.ok(moved(sender.host, "localOps") > 0, "no operation went through the local path");
    for (const key of ["udpPacketsSent", "udpPacketsReceived"] as const) {
      assert.equal(moved(sender.host, key), 0, `${key} moved on the same-host path`);
    }
  }
  return result;
}

/** What a player is built with; everything has a default. */
export interface PlayerOptions {
  /** Transport. Default "RC". */
  qpType?: QpType;
  /** QP capabilities on top of the defaults (64 WRs, 4 SGEs, 64 inline bytes). */
  cap?: Partial<QpCap>;
  /** MR access. Default {@linkcode ALL_ACCESS}. */
  access?: number;
  /** Bytes of the player's buffer (the MR covers it all). Default 256 KiB. */
  bufBytes?: number;
  /** CQ entries. Default 256. */
  cqe?: number;
  /** Give the QP its own receive CQ instead of sharing one. */
  separateRecvCq?: boolean;
  /** Receive from this SRQ (the player does not own it). */
  srq?: Srq;
  /** Every send WR completes (`sq_sig_all`). */
  sqSigAll?: boolean;
  /** Use this open device (a second QP in the same guest) instead of opening one. */
  dev?: Device;
  /** Use this PD (with `dev`). */
  pd?: Pd;
  /** Guest memory of a newly opened device. Default 4 MiB. */
  memoryBytes?: number;
}

/** What a peer needs to reach a player: RC/UC `{qpNum, psn, gid}`, UD adds the Q_Key. */
export interface Remote {
  /** The peer QP's number. */
  qpNum: number;
  /** The peer's first PSN. */
  psn: number;
  /** The peer host's GID. */
  gid: string;
  /** The peer's Q_Key (UD). */
  qkey: number;
}

/** One side of a test: a guest with its verbs objects. */
export interface Player {
  /** The backend serving it. */
  host: Backend;
  /** Its device. */
  dev: Device;
  /** Its PD. */
  pd: Pd;
  /** Its buffer in guest memory; the MR covers all of it. */
  buf: GuestBuffer;
  /** The MR over {@linkcode Player.buf}. */
  mr: Mr;
  /** The send CQ (and the receive CQ unless `separateRecvCq`). */
  cq: Cq;
  /** The receive CQ. */
  recvCq: Cq;
  /** The QP. */
  qp: Qp;
  /** Its transport. */
  qpType: QpType;
  /** The capabilities it asked for. */
  cap: QpCap;
  /** The SRQ it receives from, if any. */
  srq?: Srq;
  /** Its Q_Key (UD). */
  qkey: number;
  /** The peer, after {@linkcode connectPlayers}. */
  remote?: Remote;
  /** UD: an AH to the peer's host, after {@linkcode connectPlayers}. */
  ah?: Ah;
  /** Where the source region starts in {@linkcode Player.buf} (offset). */
  srcOff: number;
  /** Where the receive/target region starts in {@linkcode Player.buf} (offset). */
  dstOff: number;
  /** Closes the device if this player opened it. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** The default capabilities of a player's QP. */
export const DEFAULT_CAP: QpCap = {
  maxSendWr: 64,
  maxRecvWr: 64,
  maxSendSge: 4,
  maxRecvSge: 4,
  maxInlineData: 64,
};

/**
 * Builds a player on `host`: opens a guest (unless `options.dev`), allocates
 * a PD, a buffer and an MR over it, a CQ (or two) and a QP in RESET.
 */
export async function createPlayer(host: Backend, options: PlayerOptions = {}): Promise<Player> {
  const owned = options.dev === undefined;
  const dev = options.dev ??
    await openDevice({ socket: host.socket, memoryBytes: options.memoryBytes ?? 4 << 20 });
  try {
    const pd = options.pd ?? await dev.allocPd();
    const bufBytes = options.bufBytes ?? 256 << 10;
    const buf = dev.allocBuffer(bufBytes, 4096);
    const mr = await pd.regMr(buf, options.access ?? ALL_ACCESS);
    const cq = await dev.createCq({ cqe: options.cqe ?? 256 });
    const recvCq = options.separateRecvCq ? await dev.createCq({ cqe: options.cqe ?? 256 }) : cq;
    const qpType = options.qpType ?? "RC";
    const cap: QpCap = { ...DEFAULT_CAP, ...options.cap };
    if (options.srq) cap.maxRecvWr = 0;
    const qp = await pd.createQp({
      qpType,
      sendCq: cq,
      recvCq,
      cap,
      ...(options.srq ? { srq: options.srq } : {}),
      ...(options.sqSigAll ? { sqSigAll: true } : {}),
    });
    return {
      host,
      dev,
      pd,
      buf,
      mr,
      cq,
      recvCq,
      qp,
      qpType,
      cap,
      ...(options.srq ? { srq: options.srq } : {}),
      qkey: UD_QKEY,
      srcOff: 0,
      dstOff: bufBytes / 2,
      [Symbol.asyncDispose]: () => owned ? dev.close() : Promise.resolve(),
    };
  } catch (e) {
    if (owned) await dev.close();
    throw e;
  }
}

/** Connection attributes a test may override (applied to both players). */
export interface ConnectOptions {
  /** RTR: minimum RNR NAK timer code this side advertises. Default 12. */
  minRnrTimer?: number;
  /** RTS: RNR retries (7 = infinite). Default 7. */
  rnrRetry?: number;
  /** RTS: local ACK timeout code. Default 14. */
  timeout?: number;
  /** RTS: transport retries. Default 7. */
  retryCnt?: number;
  /** INIT: remote operations this QP accepts. Default REMOTE_WRITE|READ|ATOMIC. */
  qpAccessFlags?: number;
  /** RTR: path MTU. Default the port's active MTU. */
  pathMtu?: number;
}

/** What `a` tells `b` out of band (what ibv_rc_pingpong sends over TCP). */
export function remoteOf(p: Player): Remote {
  return { qpNum: p.qp.qpNum, psn: p.qp.psn, gid: p.host.gid, qkey: p.qkey };
}

/**
 * Moves one player's QP to RTS towards `remote`. RC with no options uses
 * `qp.connect` (the convenience the API documents); otherwise the three
 * explicit transitions with the required attributes of the contract's table.
 */
export async function connectTo(
  p: Player,
  remote: Remote,
  options: ConnectOptions = {},
): Promise<void> {
  p.remote = remote;
  const qp = p.qp;
  if (p.qpType === "UD") {
    await qp.modify({ qpState: "INIT", pkeyIndex: 0, portNum: 1, qkey: p.qkey });
    await qp.modify({ qpState: "RTR" });
    await qp.modify({ qpState: "RTS", sqPsn: qp.psn });
    p.ah = await p.pd.createAh({ dgid: remote.gid, portNum: 1 });
    return;
  }
  if (p.qpType === "RC" && Object.keys(options).length === 0) {
    await qp.connect({ qpNum: remote.qpNum, psn: remote.psn, gid: remote.gid });
    return;
  }
  const pathMtu = options.pathMtu ?? p.dev.queryPort(1).activeMtu;
  const ahAttr = { dgid: remote.gid, portNum: 1 };
  if (p.qpType === "UC") {
    await qp.modify({
      qpState: "INIT",
      pkeyIndex: 0,
      portNum: 1,
      qpAccessFlags: options.qpAccessFlags ?? Access.REMOTE_WRITE,
    });
    await qp.modify({
      qpState: "RTR",
      pathMtu,
      destQpNum: remote.qpNum,
      rqPsn: remote.psn,
      ahAttr,
    });
    await qp.modify({ qpState: "RTS", sqPsn: qp.psn });
    return;
  }
  await qp.modify({
    qpState: "INIT",
    pkeyIndex: 0,
    portNum: 1,
    qpAccessFlags: options.qpAccessFlags ??
      (Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC),
  });
  await qp.modify({
    qpState: "RTR",
    pathMtu,
    destQpNum: remote.qpNum,
    rqPsn: remote.psn,
    maxDestRdAtomic: 16,
    minRnrTimer: options.minRnrTimer ?? 12,
    ahAttr,
  });
  await qp.modify({
    qpState: "RTS",
    sqPsn: qp.psn,
    timeout: options.timeout ?? 14,
    retryCnt: options.retryCnt ?? 7,
    rnrRetry: options.rnrRetry ?? 7,
    maxRdAtomic: 16,
  });
}

/** Connects `a` and `b` both ways (pyverbs' `pre_run` on each side). */
export async function connectPlayers(
  a: Player,
  b: Player,
  options: ConnectOptions = {},
): Promise<void> {
  if (a.host !== b.host) {
    assert.notEqual(a.qp.qpNum, b.qp.qpNum, "peers on two hosts need distinct QP numbers");
  }
  await connectTo(a, remoteOf(b), options);
  await connectTo(b, remoteOf(a), options);
}

// ---------------------------------------------------------------------------
// Completions
// ---------------------------------------------------------------------------

/**
 * Polls `cq` until exactly `n` completions came, or fails after `timeoutMs`
 * naming what did come. Never asks for more than the missing count, so a
 * surplus stays in the CQ for {@linkcode expectNoWc} to find.
 */
export async function pollCq(cq: Cq, n: number, timeoutMs = WAIT_MS): Promise<WorkCompletion[]> {
  const got: WorkCompletion[] = [];
  const deadline = performance.now() + timeoutMs;
  while (got.length < n) {
    const wcs = cq.poll(n - got.length);
    assert.ok(wcs.length <= n - got.length, `poll(${n - got.length}) returned ${wcs.length}`);
    got.push(...wcs);
    if (got.length >= n) break;
    if (performance.now() > deadline) {
      assert.fail(
        `pollCq: ${got.length} of ${n} completions within ${timeoutMs} ms: ${describeWcs(got)}`,
      );
    }
    await yieldMacrotask();
  }
  return got;
}

/** Asserts `cq` yields no completion for `ms` milliseconds. */
export async function expectNoWc(cq: Cq, ms = 30, what = "no completion"): Promise<void> {
  const deadline = performance.now() + ms;
  do {
    const wcs = cq.poll(16);
    if (wcs.length > 0) assert.fail(`${what}: got ${describeWcs(wcs)}`);
    await yieldMacrotask();
  } while (performance.now() < deadline);
}

/** Short text for completions in failure messages. */
export function describeWcs(wcs: readonly WorkCompletion[]): string {
  return JSON.stringify(wcs, (_k, v) => typeof v === "bigint" ? `${v}n` : v);
}

/** The completion a check expects. */
export interface ExpectedWc {
  /** Work request id. */
  wrId: bigint;
  /** Status name. */
  status: WorkCompletion["status"];
  /** Opcode name; compared only for SUCCESS (ibv_poll_cq(3): undefined on error). */
  opcode?: WorkCompletion["opcode"];
  /** Bytes; compared only for SUCCESS (ibv_poll_cq(3): undefined on error). */
  byteLen?: number;
  /** Immediate data; `undefined` means the completion must carry none. */
  immData: number | undefined;
  /** The local QP number. */
  qpNum: number;
  /** The source QP: see {@linkcode sendSrcQp} and {@linkcode recvSrcQp}. */
  srcQp: number;
  /** When given, the exact wcFlags; otherwise WITH_IMM must match `immData`. */
  wcFlags?: number;
}

/**
 * `srcQp` of a send-side completion of `sender`: the connected peer's QPN on
 * RC/UC (the engine reports `destQpNum`), 0 on UD. The IBA defines the field
 * for UD receives only; vrdma fills it as mlx5 does, and these helpers are the
 * one place the tests pin that convention.
 */
export function sendSrcQp(sender: Player): number {
  return sender.qpType === "UD" ? 0 : sender.remote?.qpNum ?? 0;
}

/** `srcQp` of a receive completion: the sending QP's number, on every transport. */
export function recvSrcQp(sender: Player): number {
  return sender.qp.qpNum;
}

/** WcFlags bits (ibv_wc_flags). */
export const WC_GRH = 1;
/** WcFlags bits (ibv_wc_flags). */
export const WC_WITH_IMM = 2;

/**
 * Compares a completion with what is expected: wrId, status, qpNum, srcQp
 * and immData always; opcode and byteLen for successful ones (ibv_poll_cq(3)
 * says only wr_id, status, qp_num and vendor_err are valid on an error
 * completion); wcFlags exactly when given, else its WITH_IMM bit.
 */
export function expectWc(
  wc: WorkCompletion | undefined,
  expected: ExpectedWc,
  what = "completion",
): void {
  assert.ok(wc !== undefined, `${what}: missing`);
  const ok = expected.status === "SUCCESS";
  if (ok && (expected.opcode === undefined || expected.byteLen === undefined)) {
    throw new TypeError(`${what}: a SUCCESS expectation needs opcode and byteLen`);
  }
  const pick = (w: ExpectedWc | WorkCompletion) => ({
    wrId: w.wrId,
    status: w.status,
    ...(ok ? { opcode: w.opcode, byteLen: w.byteLen } : {}),
    immData: w.immData,
    qpNum: w.qpNum,
    srcQp: w.srcQp,
  });
  assert.deepEqual(pick(wc), pick(expected), `${what}: ${describeWcs([wc])}`);
  if (expected.wcFlags !== undefined) {
    assert.equal(wc.wcFlags, expected.wcFlags, `${what}: wcFlags`);
  } else if (ok) {
    assert.equal(
      (wc.wcFlags & WC_WITH_IMM) !== 0,
      expected.immData !== undefined,
      `${what}: WITH_IMM flag ${wc.wcFlags} vs immData ${expected.immData}`,
    );
  }
}

/** Polls one completion from `cq` and checks it. */
export async function expectOneWc(
  cq: Cq,
  expected: ExpectedWc,
  what = "completion",
): Promise<WorkCompletion> {
  const [wc] = await pollCq(cq, 1);
  expectWc(wc, expected, what);
  return wc!;
}

/** Resolves with the next async event of `dev`, or fails after `ms`. */
export function nextAsyncEvent(
  dev: Device,
  ms = WAIT_MS,
): Promise<Awaited<ReturnType<Device["getAsyncEvent"]>>> {
  return withTimeout(dev.getAsyncEvent(), ms, "an async event");
}

// ---------------------------------------------------------------------------
// Bytes
// ---------------------------------------------------------------------------

/** The test pattern of message `seed`: position-dependent, so a misplaced chunk shows. */
export function pattern(seed: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  const base = (seed * 151 + 17) & 0xff;
  for (let i = 0; i < length; i++) out[i] = (base + i * 7 + (i >> 8) * 3) & 0xff;
  // 0xee is the sentinel; keep it out of patterns so "untouched" stays unambiguous.
  for (let i = 0; i < length; i++) if (out[i] === SENTINEL) out[i] = 0x5a;
  return out;
}

/** Asserts two byte arrays are equal, naming the first differing offset. */
export function expectBytes(actual: Uint8Array, expected: Uint8Array, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    if (actual[i] !== expected[i]) {
      assert.fail(
        `${what}: byte ${i} is 0x${actual[i]!.toString(16)}, expected 0x${
          expected[i]!.toString(16)
        } (${expected.length} bytes)`,
      );
    }
  }
}

/** Whether two byte arrays are equal. */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Asserts every byte of `bytes` is `value`. */
export function expectFilled(bytes: Uint8Array, value: number, what: string): void {
  const i = bytes.findIndex((b) => b !== value);
  if (i >= 0) assert.fail(`${what}: byte ${i} is 0x${bytes[i]!.toString(16)}, expected untouched`);
}

/** The view of `p`'s buffer at `offset`. */
export function bytesAt(p: Player, offset: number, length: number): Uint8Array {
  return p.buf.bytes.subarray(offset, offset + length);
}

/** One SGE of `p`'s MR at buffer `offset`. */
export function sge(p: Player, offset: number, length: number, lkey = p.mr.lkey): Sge {
  return { addr: p.buf.addr + BigInt(offset), length, lkey };
}

/** The guest address of `p`'s buffer at `offset`. */
export function addrOf(p: Player, offset: number): bigint {
  return p.buf.addr + BigInt(offset);
}

/**
 * `count` SGEs that together cover `length` bytes, from `offset` on, with a
 * 64-byte hole between consecutive ones so gather/scatter is really tested.
 */
export function scatteredSges(p: Player, offset: number, length: number, count: number): Sge[] {
  if (count <= 1) return [sge(p, offset, length)];
  const out: Sge[] = [];
  const chunk = Math.ceil(length / count);
  let at = offset;
  for (let i = 0, left = length; i < count; i++) {
    const n = Math.min(chunk, left);
    out.push(sge(p, at, n));
    at += n + 64;
    left -= n;
  }
  return out;
}

/** Bytes the SGEs span in the buffer, holes included. */
export function span(sges: readonly Sge[]): number {
  const first = sges[0];
  const last = sges[sges.length - 1];
  if (!first || !last) return 0;
  return Number(last.addr - first.addr) + last.length;
}

/** Writes `data` across the SGEs in order (the player's view of a gather list). */
export function scatterInto(p: Player, sges: readonly Sge[], data: Uint8Array): void {
  let at = 0;
  for (const s of sges) {
    const off = Number(s.addr - p.buf.addr);
    p.buf.bytes.set(data.subarray(at, at + s.length), off);
    at += s.length;
  }
}

/** Reads the bytes across the SGEs in order. */
export function gatherFrom(p: Player, sges: readonly Sge[], length: number): Uint8Array {
  const out = new Uint8Array(length);
  let at = 0;
  for (const s of sges) {
    if (at >= length) break;
    const n = Math.min(s.length, length - at);
    const off = Number(s.addr - p.buf.addr);
    out.set(p.buf.bytes.subarray(off, off + n), at);
    at += n;
  }
  return out;
}

/** Asserts the holes between SGEs and `tail` bytes after the last one still hold the sentinel. */
export function expectHolesUntouched(
  p: Player,
  sges: readonly Sge[],
  tail: number,
  what: string,
): void {
  for (let i = 0; i < sges.length; i++) {
    const s = sges[i]!;
    const end = Number(s.addr - p.buf.addr) + s.length;
    const next = sges[i + 1];
    const holeEnd = next ? Number(next.addr - p.buf.addr) : end + tail;
    expectFilled(p.buf.bytes.subarray(end, holeEnd), SENTINEL, `${what}: after SGE ${i}`);
  }
}

// ---------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------

/** The operations {@linkcode traffic} runs. */
export type TrafficOp =
  | "SEND"
  | "SEND_WITH_IMM"
  | "RDMA_WRITE"
  | "RDMA_WRITE_WITH_IMM"
  | "RDMA_READ";

/** How {@linkcode traffic} runs. */
export interface TrafficOptions {
  /** The operation. */
  opcode: TrafficOp;
  /** Messages each way. Default 10. */
  iters?: number;
  /** Bytes per message. Default 1024. */
  size?: number;
  /** Extra send flags (SIGNALED is always set). */
  sendFlags?: number;
  /** Gather the message from this many SGEs (with holes). Default 1. */
  sendSges?: number;
  /** Scatter a SEND into this many receive SGEs (with holes). Default 1. */
  recvSges?: number;
  /** Also run server to client after each client to server message. Default true. */
  bothWays?: boolean;
}

/** The immediate data of message `i` (a u32 with the high bit set, to catch sign bugs). */
export function immFor(i: number): number {
  return (0x80000000 + i * 0x01010101 + 0x1234) >>> 0;
}

/**
 * pyverbs' `traffic()`/`rdma_traffic()`: `iters` messages client to server
 * (and back, unless `bothWays` is false). Each message has its own pattern;
 * every completion on both sides is checked field by field, the arrived bytes
 * are compared, and the bytes around them must still hold the sentinel.
 */
export async function traffic(
  client: Player,
  server: Player,
  options: TrafficOptions,
): Promise<void> {
  const iters = options.iters ?? 10;
  for (let i = 0; i < iters; i++) {
    await oneMessage(client, server, options, 2 * i);
    if (options.bothWays ?? true) await oneMessage(server, client, options, 2 * i + 1);
  }
}

async function oneMessage(
  sender: Player,
  receiver: Player,
  options: TrafficOptions,
  seed: number,
): Promise<void> {
  const op = options.opcode;
  const size = options.size ?? 1024;
  const ud = sender.qpType === "UD";
  const grh = ud ? GRH_BYTES : 0;
  const wrId = BigInt(seed + 1) * 0x1_0000_0001n; // above 2^32: a u64 must survive
  const what = `${op} #${seed} ${size} B ${sender.qp.qpNum}->${receiver.qp.qpNum}`;
  const message = pattern(seed, size);
  const flags = SendFlags.SIGNALED | (options.sendFlags ?? 0);
  const withImm = op === "SEND_WITH_IMM" || op === "RDMA_WRITE_WITH_IMM";
  const imm = withImm ? immFor(seed) : undefined;

  if (op === "RDMA_READ") {
    // The receiver is the responder: it holds the data, the sender reads it.
    const sges = scatteredSges(sender, sender.dstOff, size, options.sendSges ?? 1);
    bytesAt(sender, sender.dstOff, span(sges) + 64).fill(SENTINEL);
    bytesAt(receiver, receiver.srcOff, size).set(message);
    sender.qp.postSend({
      wrId,
      opcode: "RDMA_READ",
      sendFlags: flags,
      sgList: sges,
      rdma: { remoteAddr: addrOf(receiver, receiver.srcOff), rkey: receiver.mr.rkey },
    });
    await expectOneWc(sender.cq, {
      wrId,
      status: "SUCCESS",
      opcode: "RDMA_READ",
      byteLen: size,
      immData: undefined,
      qpNum: sender.qp.qpNum,
      srcQp: sendSrcQp(sender),
    }, `${what}: requester`);
    expectBytes(gatherFrom(sender, sges, size), message, `${what}: data read`);
    expectHolesUntouched(sender, sges, 64, what);
    return;
  }

  const sendSges = scatteredSges(sender, sender.srcOff, size, options.sendSges ?? 1);
  bytesAt(sender, sender.srcOff, span(sendSges) + 64).fill(0);
  scatterInto(sender, sendSges, message);

  const isSend = op === "SEND" || op === "SEND_WITH_IMM";
  const recvSges = isSend
    ? scatteredSges(receiver, receiver.dstOff, size + grh, options.recvSges ?? 1)
    : [sge(receiver, receiver.dstOff, size)];
  bytesAt(receiver, receiver.dstOff, span(recvSges) + 64).fill(SENTINEL);
  const recvWrId = wrId + 7n;
  if (isSend || op === "RDMA_WRITE_WITH_IMM") {
    const wr = { wrId: recvWrId, sgList: isSend ? recvSges : [] };
    if (receiver.srq) receiver.srq.postRecv(wr);
    else receiver.qp.postRecv(wr);
  }

  const wr: SendWr = {
    wrId,
    opcode: op,
    sendFlags: flags,
    sgList: sendSges,
    ...(imm !== undefined ? { immData: imm } : {}),
    ...(isSend ? {} : {
      rdma: { remoteAddr: addrOf(receiver, receiver.dstOff), rkey: receiver.mr.rkey },
    }),
    ...(ud
      ? {
        ud: {
          ah: sender.ah!,
          remoteQpn: sender.remote!.qpNum,
          remoteQkey: sender.remote!.qkey,
        },
      }
      : {}),
  };
  sender.qp.postSend(wr);
  await expectOneWc(sender.cq, {
    wrId,
    status: "SUCCESS",
    opcode: isSend ? "SEND" : "RDMA_WRITE",
    byteLen: size,
    immData: undefined,
    qpNum: sender.qp.qpNum,
    srcQp: sendSrcQp(sender),
  }, `${what}: sender`);

  if (isSend || op === "RDMA_WRITE_WITH_IMM") {
    await expectOneWc(receiver.recvCq, {
      wrId: recvWrId,
      status: "SUCCESS",
      opcode: isSend ? "RECV" : "RECV_RDMA_WITH_IMM",
      byteLen: size + grh,
      immData: imm,
      qpNum: receiver.qp.qpNum,
      srcQp: recvSrcQp(sender),
      ...(ud ? { wcFlags: WC_GRH | (imm !== undefined ? WC_WITH_IMM : 0) } : {}),
    }, `${what}: receiver`);
  }
  const arrived = isSend
    ? gatherFrom(receiver, recvSges, size + grh).subarray(grh)
    : bytesAt(receiver, receiver.dstOff, size);
  if (op === "RDMA_WRITE" && sender.qpType === "UC") {
    // UC has no ACK: the sender's completion says the WRITE left, not that it
    // landed (across hosts it may still be on the wire), and nothing else
    // completes. Wait for the bytes; expectBytes then names any difference.
    const deadline = performance.now() + WAIT_MS;
    while (!sameBytes(arrived, message) && performance.now() < deadline) await sleep(1);
  }
  expectBytes(arrived, message, `${what}: data`);
  expectHolesUntouched(receiver, recvSges, 64, what);
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/** Asserts `fn` throws a VerbsError with `errno` and a message matching `message`. */
export function expectThrows(fn: () => unknown, errno: string, message?: RegExp): VerbsError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  return checkVerbsError(caught, errno, message);
}

/** Asserts `promise` rejects with a VerbsError with `errno` and a message matching `message`. */
export async function expectRejects(
  promise: Promise<unknown>,
  errno: string,
  message?: RegExp,
): Promise<VerbsError> {
  let caught: unknown;
  try {
    await withTimeout(promise, WAIT_MS, `a verb expected to fail with ${errno}`);
  } catch (e) {
    caught = e;
  }
  return checkVerbsError(caught, errno, message);
}

function checkVerbsError(caught: unknown, errno: string, message?: RegExp): VerbsError {
  assert.ok(caught !== undefined, `expected a VerbsError ${errno}, nothing was thrown`);
  assert.ok(
    caught instanceof VerbsError,
    `expected a VerbsError ${errno}, got ${(caught as Error)?.stack ?? caught}`,
  );
  assert.equal(caught.errno, errno, `errno of "${caught.message}"`);
  if (message) assert.match(caught.message, message);
  return caught;
}

/**
 * Asserts a post call is refused for WR `index` of its list: a VerbsError
 * with `errno` whose message names that index and matches `detail`.
 */
export function expectPostRefused(
  fn: () => unknown,
  errno: string,
  index: number,
  detail: RegExp,
): VerbsError {
  const e = expectThrows(fn, errno, detail);
  assert.match(e.message, new RegExp(`wr\\[${index}\\]`), `the message names wr[${index}]`);
  return e;
}

/** The live-object counts of a host. */
export function counts(host: Backend): Record<string, number> {
  const s = host.stats() as Record<string, number>;
  return { pds: s.pds!, mrs: s.mrs!, cqs: s.cqs!, qps: s.qps!, srqs: s.srqs!, ahs: s.ahs! };
}
