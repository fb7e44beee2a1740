/**
 * The verbs data path of one host: serves SQs and RQs when their doorbells
 * ring, completes WRs, holds a WR while the responder has no receive posted
 * (RNR) or does not answer, and flushes queues of QPs in the error state.
 *
 * Everything runs on the data-plane Worker. A QP whose peer is on this host
 * executes one WR at a time, so its WRs execute and complete in order and
 * FENCE holds trivially. A QP whose peer is on another host hands its WRs to
 * the host adapter (`backend/adapter/`), which keeps many in flight on the
 * wire and completes them in order through {@linkcode VerbsEngine}'s retire.
 *
 * @module
 */

import { DescriptorChain } from "../../virtqueue/descriptor_chain.ts";
import type { DeviceQueue } from "../../virtqueue/device_queue.ts";
import { SendFlags, WcOpcode, WcStatus, WrOpcode } from "../../protocol/verbs.ts";
import type { Counters } from "../data_plane/stats.ts";
import { complete } from "./completion.ts";
import { execute } from "./requester.ts";
import { rnrDelayMs, transportTimeoutMs } from "./timers.ts";
import { ParsedWqe, readWqe } from "./wqe_reader.ts";
import type { EngineGuest, EngineHost, EngineQp, EngineSrq } from "./types.ts";
import { HostAdapter } from "../adapter/host_adapter.ts";
import type { RoceTransport } from "../roce/transport.ts";
import type { QpCounters } from "../adapter/qp_counters.ts";

/** Options of {@linkcode VerbsEngine}. */
export interface VerbsEngineOptions {
  /** Where RoCEv2 packets to and from other hosts go; without one, remote peers never answer. */
  transport?: RoceTransport;
  /** Clock in ms for every timer; default `performance.now`. */
  now?: () => number;
}

/** The fields of a send WR its completion needs. */
interface Retiring {
  readonly wrId: bigint;
  readonly opcode: number;
  readonly flags: number;
}

/** The WC opcode a send WR completes with. */
function wcOpcodeOf(wrOpcode: number): number {
  switch (wrOpcode) {
    case WrOpcode.RDMA_WRITE:
    case WrOpcode.RDMA_WRITE_WITH_IMM:
      return WcOpcode.RDMA_WRITE;
    case WrOpcode.RDMA_READ:
      return WcOpcode.RDMA_READ;
    case WrOpcode.ATOMIC_CMP_AND_SWP:
      return WcOpcode.COMP_SWAP;
    case WrOpcode.ATOMIC_FETCH_AND_ADD:
      return WcOpcode.FETCH_ADD;
    default:
      return WcOpcode.SEND;
  }
}

/** A WR waiting at the head of its SQ. */
interface Held {
  guest: EngineGuest;
  qp: EngineQp;
  head: number;
  wqe: ParsedWqe;
  /** When to try again (performance.now() ms). */
  deadline: number;
  why: "rnr" | "noResponse";
  /** RNR retries left (7 = infinite, never decremented). */
  rnrLeft: number;
  /** Transport retries left. */
  retryLeft: number;
}

/** Runs the verbs data path of one host. */
export class VerbsEngine {
  readonly #host: EngineHost;
  readonly #counters: Counters;
  readonly #chain = new DescriptorChain(2);
  readonly #wqes = new WeakMap<EngineQp, ParsedWqe>();
  readonly #held = new Map<EngineQp, Held>();
  readonly #adapter: HostAdapter | undefined;
  readonly #now: () => number;

  /** An engine over `host`'s tables, counting into `counters`. */
  constructor(host: EngineHost, counters: Counters, options: VerbsEngineOptions = {}) {
    this.#host = host;
    this.#counters = counters;
    this.#now = options.now ?? (() => performance.now());
    this.#adapter = options.transport === undefined ? undefined : new HostAdapter({
      transport: options.transport,
      host,
      counters,
      now: this.#now,
      callbacks: {
        retire: (guest, qp, wr, status, byteLen) =>
          this.#retire(guest, qp, wr.head, wr, status, byteLen),
        release: (guest, qp, wr) => {
          qp.sq.addUsed(guest.memory, wr.head, 0);
          qp.sq.publishUsed(guest.memory);
        },
      },
    });
  }

  /** The fd of the RoCE transport to watch for arrivals, if there is one. */
  get transportFd(): number | undefined {
    return this.#adapter?.fd;
  }

  /** Receives and handles the RoCE packets waiting; returns how many. */
  poll(): number {
    return this.#adapter?.poll() ?? 0;
  }

  /**
   * Per-QP wire counters of every QP that has sent or received RoCE
   * packets: its number, its guest and handle, and the counters
   * (`backend/adapter/qp_counters.ts`).
   */
  qpCounters(): { qpNum: number; qpHandle: number; counters: Readonly<QpCounters> }[] {
    return (this.#adapter?.allQpCounters() ?? []).map(([qp, counters]) => ({
      qpNum: qp.qpNum,
      qpHandle: qp.handle,
      counters,
    }));
  }

  /** Closes the RoCE transport. */
  close(): void {
    this.#adapter?.close();
  }

  #wqeOf(qp: EngineQp): ParsedWqe {
    let w = this.#wqes.get(qp);
    if (w === undefined) {
      w = new ParsedWqe();
      this.#wqes.set(qp, w);
    }
    return w;
  }

  /** Serves `qp`'s send queue: executes WRs in order while the QP is in RTS. */
  serviceSq(guest: EngineGuest, qp: EngineQp): void {
    this.#serviceSq(guest, qp);
    // Packets of the WRs just taken leave now, not at the next loop round.
    this.#adapter?.flush();
    // The SQ may break here on a timer's retry or a move to RTS, not only on
    // its doorbell: the guest hears of it now, not when it next rings.
    this.#reportBroken(guest, qp);
  }

  /** Hands a QP's queues that hostile ring contents broke to the guest (once each, there). */
  #reportBroken(guest: EngineGuest, qp: EngineQp): void {
    if (qp.sq.broken || qp.rq?.broken || qp.srq?.queue.broken) guest.queueBroken?.(qp);
  }

  #serviceSq(guest: EngineGuest, qp: EngineQp): void {
    const mem = guest.memory;
    for (;;) {
      if (qp.state === "ERR") {
        this.#flushSq(guest, qp);
      } else if (qp.state === "RTS" && !this.#held.has(qp)) {
        this.#runSq(guest, qp);
      }
      // Re-arm so the driver's next publish rings; go again if WRs slipped in.
      if (qp.sq.broken || this.#held.has(qp) || !qp.sq.enableNotifications(mem)) return;
      if (qp.state !== "RTS" && qp.state !== "ERR") return;
    }
  }

  #runSq(guest: EngineGuest, qp: EngineQp): void {
    const mem = guest.memory;
    const chain = this.#chain;
    while (qp.state === "RTS" && !this.#held.has(qp) && qp.sq.popInto(mem, chain)) {
      const head = chain.head;
      const wqe = this.#wqeOf(qp);
      this.#counters.add("sendWqes");
      const bad = readWqe(chain, wqe, {
        maxSge: qp.cap.maxSendSge,
        maxInline: qp.cap.maxInlineData,
        recv: false,
      });
      if (bad !== null) {
        this.#retire(guest, qp, head, wqe, WcStatus.LOC_QP_OP_ERR, 0);
        continue;
      }
      if (this.#adapter?.isRemote(qp)) {
        this.#adapter.post(guest, qp, head, wqe);
        continue;
      }
      this.#attempt(guest, qp, head, wqe, {
        rnrLeft: qp.rnrRetry,
        retryLeft: qp.retryCnt,
      });
    }
  }

  /** Executes a WR; completes it, or holds it for a retry. */
  #attempt(
    guest: EngineGuest,
    qp: EngineQp,
    head: number,
    wqe: ParsedWqe,
    budget: { rnrLeft: number; retryLeft: number },
  ): void {
    const outcome = execute(this.#host, guest, qp, wqe, this.#counters, this.#adapter);
    if (outcome.kind === "done") {
      this.#retire(guest, qp, head, wqe, outcome.status, outcome.byteLen);
      return;
    }
    const now = this.#now();
    if (outcome.kind === "rnr") {
      if (budget.rnrLeft === 0) {
        this.#counters.add("rnrRetryExceeded");
        this.#retire(guest, qp, head, wqe, WcStatus.RNR_RETRY_EXC_ERR, 0);
        return;
      }
      this.#held.set(qp, {
        guest,
        qp,
        head,
        wqe,
        deadline: now + rnrDelayMs(outcome.minRnrTimer),
        why: "rnr",
        rnrLeft: budget.rnrLeft === 7 ? 7 : budget.rnrLeft - 1,
        retryLeft: budget.retryLeft,
      });
      return;
    }
    // No response: the requester's transport timer runs out and it resends,
    // up to retryCnt times; the last attempt's timeout ends the WR, as on the
    // wire (retryCnt + 1 sends). Timeout 0 means wait forever.
    this.#held.set(qp, {
      guest,
      qp,
      head,
      wqe,
      deadline: now + transportTimeoutMs(qp.timeout),
      why: "noResponse",
      rnrLeft: budget.rnrLeft,
      retryLeft: budget.retryLeft,
    });
  }

  /** Completes a send WR (when signaled, or always on error) and frees its SQ slot. */
  #retire(
    guest: EngineGuest,
    qp: EngineQp,
    head: number,
    wqe: Retiring,
    status: number,
    byteLen: number,
  ): void {
    // The slot goes back first: once a completion is visible, its WR's slot
    // must be free (a driver that polls and reposts at once relies on it).
    qp.sq.addUsed(guest.memory, head, 0);
    qp.sq.publishUsed(guest.memory);
    const signaled = qp.sqSigAll || (wqe.flags & SendFlags.SIGNALED) !== 0;
    if (signaled || status !== WcStatus.SUCCESS) {
      complete(guest, qp.sendCq, {
        wrId: wqe.wrId,
        status,
        opcode: wcOpcodeOf(wqe.opcode),
        wcFlags: 0,
        byteLen,
        immData: 0,
        qpNum: qp.qpNum,
        srcQp: qp.destQpNum,
        solicited: false,
      }, this.#counters);
    }
    if (status !== WcStatus.SUCCESS && status !== WcStatus.WR_FLUSH_ERR && qp.state !== "ERR") {
      guest.moveQp(qp, "ERR");
    }
  }

  /** Serves `qp`'s receive queue: only a QP in ERR has anything to do (flush). */
  serviceRq(guest: EngineGuest, qp: EngineQp): void {
    if (qp.rq === null) return;
    for (;;) {
      if (qp.state === "ERR") this.#flushRecv(guest, qp, qp.rq);
      if (qp.rq.broken || !qp.rq.enableNotifications(guest.memory)) return;
      if (qp.state !== "ERR") return;
    }
  }

  /** Serves an SRQ's doorbell: receives wait for senders, so only re-arm. */
  serviceSrq(guest: EngineGuest, srq: EngineSrq): void {
    srq.queue.enableNotifications(guest.memory);
  }

  /** Reacts to a QP state change made by MODIFY_QP or by the device. */
  onStateChange(guest: EngineGuest, qp: EngineQp, from: string, to: string): void {
    if (to === "ERR") {
      // WRs on the wire are older than those still in the ring: they flush first.
      this.#adapter?.onError(qp);
      this.#flushSq(guest, qp);
      if (qp.rq) this.#flushRecv(guest, qp, qp.rq);
    } else if (to === "RESET") {
      // Queues are emptied without completions; PSNs restart. A WR held for
      // a retry goes back to the driver too, or its SQ slot would be lost.
      const held = this.#held.get(qp);
      if (held !== undefined) {
        this.#held.delete(qp);
        qp.sq.addUsed(guest.memory, held.head, 0);
        qp.sq.publishUsed(guest.memory);
      }
      this.#adapter?.onReset(qp);
      this.#drop(guest, qp.sq);
      if (qp.rq) this.#drop(guest, qp.rq);
    } else if (to === "RTS" && from !== "RTS") {
      this.serviceSq(guest, qp);
      return; // serviceSq reported what broke
    }
    // Flushing or dropping reads the rings, so it too can find them broken.
    this.#reportBroken(guest, qp);
  }

  /** Forgets a destroyed QP. */
  forget(qp: EngineQp): void {
    this.#held.delete(qp);
    this.#adapter?.forget(qp);
  }

  #flushSq(guest: EngineGuest, qp: EngineQp): void {
    const held = this.#held.get(qp);
    if (held !== undefined) {
      this.#held.delete(qp);
      this.#counters.add("flushedWrs");
      this.#retire(guest, qp, held.head, held.wqe, WcStatus.WR_FLUSH_ERR, 0);
    }
    const mem = guest.memory;
    const chain = this.#chain;
    const wqe = this.#wqeOf(qp);
    while (qp.sq.popInto(mem, chain)) {
      const bad = readWqe(chain, wqe, {
        maxSge: qp.cap.maxSendSge,
        maxInline: qp.cap.maxInlineData,
        recv: false,
      });
      if (bad !== null) wqe.opcode = WrOpcode.SEND;
      this.#counters.add("flushedWrs");
      this.#retire(guest, qp, chain.head, wqe, WcStatus.WR_FLUSH_ERR, 0);
    }
  }

  #flushRecv(guest: EngineGuest, qp: EngineQp, queue: DeviceQueue): void {
    const mem = guest.memory;
    const chain = this.#chain;
    const wqe = this.#wqeOf(qp);
    while (queue.popInto(mem, chain)) {
      readWqe(chain, wqe, { maxSge: qp.cap.maxRecvSge, maxInline: 0, recv: true });
      queue.addUsed(mem, chain.head, 0);
      queue.publishUsed(mem);
      this.#counters.add("flushedWrs");
      complete(guest, qp.recvCq, {
        wrId: wqe.wrId,
        status: WcStatus.WR_FLUSH_ERR,
        opcode: WcOpcode.RECV,
        wcFlags: 0,
        byteLen: 0,
        immData: 0,
        qpNum: qp.qpNum,
        srcQp: 0,
        solicited: false,
      }, this.#counters);
    }
  }

  #drop(guest: EngineGuest, queue: DeviceQueue): void {
    const mem = guest.memory;
    while (queue.popInto(mem, this.#chain)) {
      queue.addUsed(mem, this.#chain.head, 0);
    }
    queue.publishUsed(mem);
  }

  /** Milliseconds until the next held WR is due (Infinity when none). */
  nextTimeout(now = this.#now()): number {
    let next = Infinity;
    for (const h of this.#held.values()) next = Math.min(next, h.deadline);
    const local = next === Infinity ? Infinity : Math.max(0, next - now);
    return Math.min(local, this.#adapter?.nextTimeout(now) ?? Infinity);
  }

  /** Retries every held WR whose time has come. */
  runTimers(now = this.#now()): void {
    this.#adapter?.runTimers(now);
    for (const held of [...this.#held.values()]) {
      if (held.deadline > now) continue;
      this.#held.delete(held.qp);
      const { guest, qp } = held;
      if (qp.state !== "RTS" && qp.state !== "SQD") continue;
      if (held.why === "noResponse") {
        if (held.retryLeft === 0) {
          this.#retire(guest, qp, held.head, held.wqe, WcStatus.RETRY_EXC_ERR, 0);
          continue;
        }
        held.retryLeft--;
      }
      this.#attempt(guest, qp, held.head, held.wqe, held);
      if (!this.#held.has(qp)) this.serviceSq(guest, qp);
    }
  }
}
