/**
 * The sending half of an RC or UC QP whose peer is on another host: the
 * requester (turns posted WRs into packets, within a window, in PSN order)
 * and the completer (reads ACKs, NAKs, READ responses and atomic ACKs, and
 * completes WRs in order), one explicit state machine per QP.
 *
 * State: the outstanding WRs in post order, each with its PSN range; where
 * transmission continues (`#sendIndex`, `#sendPacket`); the oldest PSN not
 * yet acknowledged (`#unacked`); the retransmission timer and the retry and
 * RNR budgets. Recovery is go-back-N: on a PSN sequence NAK, an RNR NAK
 * (after its delay), a gap in READ responses, or the timer, transmission
 * restarts at the first unacknowledged PSN (a READ from the middle asks for
 * just the missing part, with its address and length moved on as IBA
 * 9.4.4 describes). Any progress refills both budgets, as rxe does.
 *
 * @module
 */

import {
  type QpType,
  SendFlags,
  WcStatus,
  WrOpcode,
  type WrOpcodeName,
} from "../../protocol/verbs.ts";
import type { RocePacket } from "../roce/headers.ts";
import { Opcode, opcodeInfo, OpFlag, type WrPackets, wrPackets } from "../roce/opcodes.ts";
import { buildPacket, type PacketFields } from "../roce/packet.ts";
import { psnAdd, psnDiff } from "../roce/psn.ts";
import { rnrDelayMs, transportTimeoutMs } from "../engine/timers.ts";
import type { EngineGuest, EngineQp } from "../engine/types.ts";
import type { Link, QpWire } from "./link.ts";
import { gatherAt, PendingWr, scatterAt } from "./pending_wr.ts";
import { AethType, aethType, NakCode } from "./aeth.ts";
import type { QpCounters } from "./qp_counters.ts";

/** Most PSNs sent and not yet acknowledged; bounds what a lost ACK costs and the peer's queue. */
export const SEND_WINDOW = 512;
/**
 * The least the congestion window shrinks to. The window (at most
 * {@linkcode SEND_WINDOW}) halves on every loss (a PSN sequence NAK, a gap in
 * READ or atomic responses) and drops to this on a timeout, then grows
 * again with each acknowledged PSN: one PSN per PSN below the threshold
 * (doubling per round trip), about 8 per window above it. A peer that drops
 * because it is overrun (Linux rxe in a slow VM, a full socket buffer) then
 * gets fewer packets at once instead of the same go-back-N burst again and
 * again; a clean path runs at the full window after a few round trips.
 */
export const MIN_WINDOW = 16;
/** A long message asks for an ACK at least this often, so the window keeps moving. */
const ACK_EVERY = 64;

/**
 * The wire opcodes of each WR opcode (by number) on a `qpType` QP, from the
 * one table in opcodes.ts.
 */
function opsByWrOpcode(qpType: QpType): WrPackets[] {
  const ops: WrPackets[] = [];
  for (const [name, number] of Object.entries(WrOpcode)) {
    const p = wrPackets(qpType, name as WrOpcodeName);
    if (p !== undefined) ops[number] = p;
  }
  return ops;
}
const RC_OPS = opsByWrOpcode("RC");
const UC_OPS = opsByWrOpcode("UC");

/** Status a NAK code completes the WR with. */
function nakStatus(code: number): number {
  switch (code) {
    case NakCode.INVALID_REQUEST:
      return WcStatus.REM_INV_REQ_ERR;
    case NakCode.REMOTE_ACCESS:
      return WcStatus.REM_ACCESS_ERR;
    case NakCode.INVALID_RD_REQUEST:
      return WcStatus.REM_INV_RD_REQ_ERR;
    default:
      return WcStatus.REM_OP_ERR;
  }
}

/** The requester and completer of one QP. */
export class Requester {
  readonly #link: Link;
  readonly #guest: EngineGuest;
  readonly #qp: EngineQp;
  readonly #dstIp: number;
  readonly #srcPort: number;
  readonly #mtu: number;
  readonly #reliable: boolean;
  readonly #ops: WrPackets[];
  readonly #timeoutMs: number;
  /** Outstanding WRs in post order. */
  readonly #wrs: PendingWr[] = [];
  /** PSN the next posted WR starts at. */
  #nextPsn: number;
  /** The WR (index in `#wrs`) and packet transmission continues with. */
  #sendIndex = 0;
  #sendPacket = 0;
  /** READs and atomics among `#wrs[0 .. #sendIndex)`: in flight against max_rd_atomic. */
  #readsInFlight = 0;
  /** Oldest PSN not acknowledged. */
  #unacked: number;
  /** One past the highest PSN ever sent: responses beyond it are forged or stale. */
  #sentEnd: number;
  #retryLeft: number;
  #rnrLeft: number;
  /** When the retransmission timer fires (ms), Infinity when idle. */
  #deadline = Infinity;
  /** Sending waits until then after an RNR NAK (ms), 0 when not waiting. */
  #rnrUntil = 0;
  /** The PSN of the last go-back, so a burst of out-of-order responses restarts once. */
  #lastGoBack = -1;
  #sinceAckReq = 0;
  #dead = false;
  /** Congestion window in PSNs (see {@linkcode MIN_WINDOW}); fractional while it grows. */
  #window = SEND_WINDOW;
  /** Below it the window grows fast (slow start), above it slowly. */
  #threshold = SEND_WINDOW;
  /** `#unacked` when the window last grew: what the next progress acknowledges on top. */
  #grownTo: number;
  readonly #stats: QpCounters;

  /** The requester of `wire.qp` (in RTS), over `link`. */
  constructor(link: Link, wire: QpWire) {
    const qp = wire.qp;
    this.#link = link;
    this.#guest = wire.guest;
    this.#qp = qp;
    this.#dstIp = wire.dstIp;
    this.#srcPort = wire.srcPort;
    this.#stats = wire.stats;
    this.#mtu = qp.pathMtu;
    this.#reliable = qp.qpType === "RC";
    this.#ops = this.#reliable ? RC_OPS : UC_OPS;
    this.#timeoutMs = transportTimeoutMs(qp.timeout);
    this.#nextPsn = qp.sqPsn;
    this.#unacked = qp.sqPsn;
    this.#sentEnd = qp.sqPsn;
    this.#grownTo = qp.sqPsn;
    this.#retryLeft = qp.retryCnt;
    this.#rnrLeft = qp.rnrRetry;
  }

  /** Outstanding WRs. */
  get outstanding(): number {
    return this.#wrs.length;
  }

  /** When this requester next needs {@linkcode Requester.onTimer} (ms; Infinity: never). */
  get deadline(): number {
    return this.#rnrUntil > 0 ? this.#rnrUntil : this.#deadline;
  }

  /** Queues a WR for sending (in order after every earlier one) and sends what the window allows. */
  post(wr: PendingWr): void {
    const packets = Math.max(1, Math.ceil(wr.length / this.#mtu));
    wr.firstPsn = this.#nextPsn;
    wr.psnCount = wr.opcode === WrOpcode.RDMA_READ ? packets : wr.readOrAtomic ? 1 : packets;
    this.#nextPsn = psnAdd(this.#nextPsn, wr.psnCount);
    this.#wrs.push(wr);
    this.pump();
  }

  /** Sends packets while the window, max_rd_atomic, FENCE and the outbox allow. */
  pump(): void {
    if (this.#dead || this.#rnrUntil > 0) return;
    const wrs = this.#wrs;
    while (this.#sendIndex < wrs.length) {
      const wr = wrs[this.#sendIndex]!;
      if (wr.localError !== null) {
        // It fails in its turn: once everything before it completed.
        if (this.#sendIndex === 0) this.#completeHead(wr.localError, 0);
        return;
      }
      if (wr.readOrAtomic && this.#readsInFlight >= Math.max(1, this.#qp.maxRdAtomic)) return;
      if (this.#sendPacket === 0 && wr.fenced && this.#readsInFlight > 0) return;
      const psn = psnAdd(wr.firstPsn, this.#sendPacket);
      if (psnDiff(psn, this.#unacked) >= this.#window) return;
      const slot = this.#link.outbox.slot();
      if (slot === null) {
        this.#link.blocked(this);
        return;
      }
      this.#emit(slot, wr, psn);
      if (this.#deadline === Infinity && this.#reliable) {
        this.#deadline = this.#link.now() + this.#timeoutMs;
      }
      if (wr.readOrAtomic || ++this.#sendPacket === wr.psnCount) {
        this.#sendIndex++;
        this.#sendPacket = 0;
        if (wr.readOrAtomic) this.#readsInFlight++;
        if (!this.#reliable) {
          // UC: nothing comes back; the WR is done once it is on its way.
          this.#completeHead(WcStatus.SUCCESS, wr.length);
          if (this.#dead) return;
        }
      }
    }
  }

  /** Builds packet `psn` of `wr` in `slot` and queues it. */
  #emit(slot: Uint8Array, wr: PendingWr, psn: number): void {
    const link = this.#link;
    const k = psnDiff(psn, wr.firstPsn);
    let end = psnAdd(psn, 1);
    let fields: PacketFields;
    if (wr.opcode === WrOpcode.RDMA_READ) {
      // From the middle (a retry), the request asks for the rest only.
      const skip = k * this.#mtu;
      fields = {
        opcode: Opcode.RC_RDMA_READ_REQUEST,
        destQp: this.#qp.destQpNum,
        psn,
        ackReq: true,
        reth: { va: BigInt(wr.remoteAddr + skip), rkey: wr.rkey, dmaLen: wr.length - skip },
        icrc: null,
      };
      end = psnAdd(wr.firstPsn, wr.psnCount);
    } else if (wr.readOrAtomic) {
      const swap = wr.opcode === WrOpcode.ATOMIC_CMP_AND_SWP;
      fields = {
        opcode: swap ? Opcode.RC_COMPARE_SWAP : Opcode.RC_FETCH_ADD,
        destQp: this.#qp.destQpNum,
        psn,
        ackReq: true,
        atomicEth: {
          va: BigInt(wr.remoteAddr),
          rkey: wr.rkey,
          swapAdd: swap ? wr.swap : wr.compareAdd,
          compare: swap ? wr.compareAdd : 0n,
        },
        icrc: null,
      };
    } else {
      const ops = this.#ops[wr.opcode]!;
      const n = wr.psnCount;
      const last = k === n - 1;
      const opcode = n === 1 ? ops.only : k === 0 ? ops.first : last ? ops.last : ops.middle;
      const offset = k * this.#mtu;
      const length = last ? wr.length - offset : this.#mtu;
      const write = wr.opcode === WrOpcode.RDMA_WRITE || wr.opcode === WrOpcode.RDMA_WRITE_WITH_IMM;
      const withImm = last &&
        (wr.opcode === WrOpcode.SEND_WITH_IMM || wr.opcode === WrOpcode.RDMA_WRITE_WITH_IMM);
      const headerBytes = headerLength(opcode);
      gatherAt(wr.views, offset, slot, headerBytes, length);
      const ackReq = this.#reliable && (last || ++this.#sinceAckReq >= ACK_EVERY);
      if (ackReq) this.#sinceAckReq = 0;
      fields = {
        opcode,
        destQp: this.#qp.destQpNum,
        psn,
        ackReq,
        se: last && (wr.flags & SendFlags.SOLICITED) !== 0 &&
          (!write || wr.opcode === WrOpcode.RDMA_WRITE_WITH_IMM),
        reth: write && k === 0
          ? { va: BigInt(wr.remoteAddr), rkey: wr.rkey, dmaLen: wr.length }
          : undefined,
        immDt: withImm ? wr.immData : undefined,
        payload: slot.subarray(headerBytes, headerBytes + length),
        icrc: null,
      };
    }
    const bytes = buildPacket(slot, fields);
    link.outbox.commit(bytes, this.#dstIp, this.#srcPort);
    const stats = this.#stats;
    stats.sentPkts++;
    stats.sentBytes += bytes;
    if (psnDiff(end, this.#sentEnd) > 0) {
      this.#sentEnd = end;
    } else {
      stats.retransmittedPkts++;
      link.counters.add("retransmittedPackets");
    }
  }

  /** Takes a response (ACK, NAK, READ response, atomic ACK) addressed to this QP. */
  onResponse(pkt: RocePacket): void {
    if (this.#dead || this.#wrs.length === 0) {
      this.#link.counters.add("staleResponses");
      return;
    }
    const psn = pkt.psn;
    // Only PSNs we sent can be answered; anything else is stale or forged.
    if (psnDiff(psn, this.#sentEnd) >= 0 || psnDiff(psn, this.#unacked) < -SEND_WINDOW) {
      this.#link.counters.add("staleResponses");
      return;
    }
    const info = pkt.info;
    if ((info.flags & OpFlag.PAYLOAD) !== 0) {
      this.#onReadResponse(pkt);
    } else if (info.opcode === Opcode.RC_ATOMIC_ACKNOWLEDGE) {
      this.#onAtomicAck(pkt);
    } else {
      this.#onAck(psn, pkt.syndrome);
    }
  }

  #onAck(psn: number, syndrome: number): void {
    const counters = this.#link.counters;
    switch (aethType(syndrome)) {
      case AethType.ACK:
        this.#ackThrough(psn);
        return;
      case AethType.RNR_NAK: {
        counters.add("rnrNaksReceived");
        this.#stats.rcvdRnrErr++;
        if (!this.#ackThrough(psnAdd(psn, -1))) return;
        if (psn !== this.#unacked) return;
        if (this.#rnrLeft === 0) {
          counters.add("rnrRetryExceeded");
          this.#stats.retryRnrExceededErr++;
          this.#completeHead(WcStatus.RNR_RETRY_EXC_ERR, 0);
          return;
        }
        if (this.#rnrLeft !== 7) this.#rnrLeft--;
        // Wait out the timer the responder asked for, then send again from there.
        this.#rnrUntil = this.#link.now() + rnrDelayMs(syndrome & 0x1f);
        this.#goBack(psn, true, "rnr");
        this.#deadline = Infinity;
        return;
      }
      case AethType.NAK: {
        const code = syndrome & 0x1f;
        if (!this.#ackThrough(psnAdd(psn, -1))) return;
        if (psn !== this.#unacked) return;
        if (code === NakCode.PSN_SEQUENCE_ERROR) {
          counters.add("seqNaksReceived");
          this.#stats.rcvdSeqErr++;
          this.#goBack(psn, false);
          return;
        }
        counters.add("fatalNaksReceived");
        this.#stats.rcvdFatalNak++;
        this.#completeHead(nakStatus(code), 0);
        return;
      }
      default:
        counters.add("badResponses");
    }
  }

  /**
   * Completes every WR whose last PSN is at or before `psn`. A READ or atomic
   * that is covered but unanswered lost its response: go back for it.
   * Returns false when the QP left the requester's hands (an error).
   */
  #ackThrough(psn: number): boolean {
    const wrs = this.#wrs;
    while (wrs.length > 0) {
      const wr = wrs[0]!;
      const last = psnAdd(wr.firstPsn, wr.psnCount - 1);
      if (psnDiff(psn, last) < 0) {
        // Part of a multi-packet message: progress within it.
        if (!wr.readOrAtomic && psnDiff(psn, this.#unacked) >= 0) {
          this.#unacked = psnAdd(psn, 1);
          this.#progress();
        }
        break;
      }
      if (wr.readOrAtomic) {
        this.#goBack(this.#unacked, false);
        break;
      }
      this.#unacked = psnAdd(last, 1);
      this.#progress();
      this.#completeHead(WcStatus.SUCCESS, wr.length);
      if (this.#dead) return false;
    }
    this.pump();
    return !this.#dead;
  }

  #onReadResponse(pkt: RocePacket): void {
    const psn = pkt.psn;
    const ahead = psnDiff(psn, this.#unacked);
    if (ahead < 0) {
      this.#link.counters.add("duplicateResponses");
      return;
    }
    // Responses come in PSN order; anything earlier is implicitly acknowledged.
    if (!this.#ackThrough(psnAdd(psn, -1))) return;
    const wr = this.#wrs[0];
    if (psn !== this.#unacked || wr === undefined || wr.opcode !== WrOpcode.RDMA_READ) {
      if (wr !== undefined && psn !== this.#unacked) {
        // A gap: responses were lost. Ask again from the first missing one.
        this.#goBack(this.#unacked, false);
      } else {
        // Data for a request that is not a READ: nobody asked for it.
        this.#link.counters.add("badResponses");
      }
      return;
    }
    const k = psnDiff(psn, wr.firstPsn);
    const n = wr.psnCount;
    const flags = pkt.info.flags;
    const first = (flags & OpFlag.FIRST) !== 0, last = (flags & OpFlag.LAST) !== 0;
    const expectedLength = k === n - 1 ? wr.length - k * this.#mtu : this.#mtu;
    const payload = pkt.payload;
    if (
      first !== (k === 0) || last !== (k === n - 1) || payload.length !== expectedLength ||
      (first && aethType(pkt.syndrome) !== AethType.ACK)
    ) {
      this.#link.counters.add("badResponses");
      return;
    }
    scatterAt(wr.views, k * this.#mtu, payload);
    this.#unacked = psnAdd(psn, 1);
    this.#progress();
    if (last) {
      this.#readsInFlight--;
      this.#completeHead(WcStatus.SUCCESS, wr.length);
      if (!this.#dead) this.pump();
    }
  }

  #onAtomicAck(pkt: RocePacket): void {
    const psn = pkt.psn;
    if (psnDiff(psn, this.#unacked) < 0) {
      this.#link.counters.add("duplicateResponses");
      return;
    }
    if (!this.#ackThrough(psnAdd(psn, -1))) return;
    const wr = this.#wrs[0];
    if (
      psn !== this.#unacked || wr === undefined || !wr.readOrAtomic ||
      wr.opcode === WrOpcode.RDMA_READ
    ) {
      if (wr !== undefined && psn !== this.#unacked) {
        // A gap: what came before was lost. Ask again from the first missing PSN.
        this.#goBack(this.#unacked, false);
      } else {
        // An original value for a request that is not an atomic: nobody asked for it.
        this.#link.counters.add("badResponses");
      }
      return;
    }
    const out = wr.views[0];
    if (out !== undefined && out.length >= 8) {
      new DataView(out.buffer, out.byteOffset, 8).setBigUint64(0, pkt.origData, true);
    }
    this.#unacked = psnAdd(psn, 1);
    this.#progress();
    this.#readsInFlight--;
    this.#completeHead(WcStatus.SUCCESS, 8);
    if (!this.#dead) this.pump();
  }

  /** Forward progress: the budgets refill, the window grows, the timer restarts. */
  #progress(): void {
    const acked = psnDiff(this.#unacked, this.#grownTo);
    if (acked > 0) {
      this.#grownTo = this.#unacked;
      const w = this.#window;
      this.#window = Math.min(
        SEND_WINDOW,
        w < this.#threshold ? w + acked : w + (8 * acked) / w,
      );
    }
    this.#retryLeft = this.#qp.retryCnt;
    this.#rnrLeft = this.#qp.rnrRetry;
    this.#lastGoBack = -1;
    const waiting = psnDiff(this.#sentEnd, this.#unacked) > 0;
    this.#deadline = waiting ? this.#link.now() + this.#timeoutMs : Infinity;
  }

  /**
   * Restarts transmission at `psn` (go-back-N). Without `force`, once per PSN
   * until progress. `cause` says what it means for the window: a loss halves
   * it, a timeout shrinks it to {@linkcode MIN_WINDOW}, an RNR NAK (the peer
   * had no receive posted, nothing was lost to congestion) leaves it.
   */
  #goBack(psn: number, force: boolean, cause: "loss" | "timeout" | "rnr" = "loss"): void {
    if (!force && psn === this.#lastGoBack) return;
    this.#lastGoBack = psn;
    if (cause !== "rnr") {
      this.#threshold = Math.max(MIN_WINDOW, Math.floor(this.#window / 2));
      this.#window = cause === "timeout" ? MIN_WINDOW : this.#threshold;
    }
    const wrs = this.#wrs;
    let i = 0;
    while (i < wrs.length && psnDiff(psn, psnAdd(wrs[i]!.firstPsn, wrs[i]!.psnCount)) >= 0) i++;
    if (i === wrs.length) return;
    const wr = wrs[i]!;
    this.#sendIndex = i;
    // A READ resumes with a request for the responses from `psn` on; an
    // atomic is one packet.
    this.#sendPacket = wr.readOrAtomic && wr.opcode !== WrOpcode.RDMA_READ
      ? 0
      : Math.max(0, psnDiff(psn, wr.firstPsn));
    let reads = 0;
    for (let j = 0; j < i; j++) if (wrs[j]!.readOrAtomic) reads++;
    this.#readsInFlight = reads;
    this.#link.counters.add("retransmits");
    this.#stats.completerRetryErr++;
    this.#deadline = this.#link.now() + this.#timeoutMs;
    this.pump();
  }

  /** Runs the RNR wait and the retransmission timer. */
  onTimer(now: number): void {
    if (this.#dead) return;
    if (this.#rnrUntil > 0) {
      if (now < this.#rnrUntil) return;
      this.#rnrUntil = 0;
      this.#deadline = now + this.#timeoutMs;
      this.pump();
      return;
    }
    if (now < this.#deadline) return;
    if (psnDiff(this.#sentEnd, this.#unacked) <= 0) {
      this.#deadline = Infinity;
      return;
    }
    this.#link.counters.add("timeouts");
    this.#stats.timeouts++;
    if (this.#retryLeft === 0) {
      this.#link.counters.add("retryExceeded");
      this.#stats.retryExceededErr++;
      this.#completeHead(WcStatus.RETRY_EXC_ERR, 0);
      return;
    }
    this.#retryLeft--;
    this.#goBack(this.#unacked, true, "timeout");
  }

  /** Completes the oldest WR with `status`. */
  #completeHead(status: number, byteLen: number): void {
    const wr = this.#wrs.shift()!;
    if (this.#sendIndex > 0) this.#sendIndex--;
    else this.#sendPacket = 0;
    if (status !== WcStatus.SUCCESS) this.#dead = true;
    this.#link.retire(this.#guest, this.#qp, wr, status, byteLen);
  }

  /** The QP went to ERR: every outstanding WR completes with WR_FLUSH_ERR, in order. */
  flush(): void {
    this.#dead = true;
    while (this.#wrs.length > 0) {
      const wr = this.#wrs.shift()!;
      this.#link.counters.add("flushedWrs");
      this.#link.retire(this.#guest, this.#qp, wr, WcStatus.WR_FLUSH_ERR, 0);
    }
  }

  /** The QP went to RESET: outstanding WRs go back to the driver without completions. */
  release(): void {
    this.#dead = true;
    for (const wr of this.#wrs.splice(0)) this.#link.release(this.#guest, this.#qp, wr);
  }
}

/** BTH plus extension headers of `opcode`: where its payload starts. */
function headerLength(opcode: number): number {
  return opcodeInfo(opcode)!.length;
}
