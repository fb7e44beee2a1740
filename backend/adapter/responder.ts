/**
 * The receiving half of an RC or UC QP whose peer is on another host: the
 * responder state machine. It checks each request's PSN against the one it
 * expects, executes requests in order (SEND into receive WQEs, WRITE into
 * the MR its rkey names, READ and atomics answered), acknowledges (ACKs are
 * coalesced: one per QP per batch of arrivals), and NAKs what it cannot do.
 *
 * - PSN ahead of the expected one: packets were lost; one PSN sequence
 *   error NAK per gap, the packet dropped.
 * - PSN behind: a duplicate (the requester retried). SEND and WRITE are
 *   ACKed again without executing; a READ is answered again from the saved
 *   request (from the PSN asked for); an atomic gets its saved original
 *   value, never executed twice. Saved READ/atomic requests form a ring of
 *   max_dest_rd_atomic entries, as rxe's responder resources.
 * - No receive WQE for a SEND (or WRITE with immediate): RNR NAK with the
 *   QP's min_rnr_timer; the PSN is not consumed.
 * - Bad rkey, range or access: remote access NAK; a malformed sequence or a
 *   length that does not fit: invalid request NAK; a receive WQE that cannot
 *   be used: remote operational NAK. These are fatal: the QP goes to ERR.
 *
 * UC has no ACKs: a gap or a missing receive WQE drops the message.
 *
 * @module
 */

import { Access, WcStatus } from "../../protocol/verbs.ts";
import { EventType } from "../../protocol/device_interface.ts";
import type { RocePacket } from "../roce/headers.ts";
import { Opcode, OpFlag } from "../roce/opcodes.ts";
import { buildPacket } from "../roce/packet.ts";
import { psnAdd, psnDiff } from "../roce/psn.ts";
import { checkRemote, completeRecv, takeRecv } from "../engine/responder.ts";
import { resolveLocal, SgeViews } from "../engine/sge.ts";
import type { EngineGuest, EngineQp } from "../engine/types.ts";
import { ACK_SYNDROME, NakCode, nakSyndrome, rnrNakSyndrome } from "./aeth.ts";
import type { Link, QpWire } from "./link.ts";
import { scatterAt } from "./pending_wr.ts";
import type { QpCounters } from "./qp_counters.ts";

/** A READ or atomic kept to answer its duplicates. */
interface Saved {
  atomic: boolean;
  firstPsn: number;
  psnCount: number;
  va: number;
  length: number;
  /** The R_Key it came with: checked again before it is answered again. */
  rkey: number;
  orig: bigint;
}

/** READ responses still to send. */
interface ReadJob {
  va: number;
  length: number;
  /** Checked before every response: the MR may be deregistered meanwhile. */
  rkey: number;
  firstPsn: number;
  count: number;
  next: number;
}

const recvViews = new SgeViews();

/** The responder of one QP. */
export class Responder {
  readonly #link: Link;
  readonly #guest: EngineGuest;
  readonly #qp: EngineQp;
  readonly #dstIp: number;
  readonly #srcPort: number;
  readonly #mtu: number;
  readonly #reliable: boolean;
  #ePsn: number;
  #msn = 0;
  #nakSent = false;
  /** The message in progress: none, a SEND, a WRITE, or (UC) one being dropped. */
  #message: "none" | "send" | "write" | "drop" = "none";
  #offset = 0;
  #recvWrId = 0n;
  #recvViews: Uint8Array[] = [];
  #recvTotal = 0;
  #writeView: Uint8Array | null = null;
  #writeLength = 0;
  /** PSN of an ACK owed (coalesced until the end of the batch), -1 when none. */
  #ackDue = -1;
  readonly #saved: Saved[] = [];
  #savedNext = 0;
  readonly #jobs: ReadJob[] = [];
  #dead = false;
  #established = false;
  readonly #stats: QpCounters;

  /** The responder of `wire.qp` (RTR or later), over `link`. */
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
    this.#ePsn = qp.rqPsn;
  }

  /** Takes one request packet addressed to this QP. */
  onRequest(pkt: RocePacket): void {
    if (this.#dead) return;
    const counters = this.#link.counters;
    const psn = pkt.psn;
    const d = psnDiff(psn, this.#ePsn);
    if (this.#reliable) {
      if (d > 0) {
        counters.add("outOfSequence");
        this.#stats.outOfSeqRequest++;
        if (!this.#nakSent) {
          this.#nakSent = true;
          this.#nak(nakSyndrome(NakCode.PSN_SEQUENCE_ERROR), this.#ePsn);
          counters.add("seqNaksSent");
          this.#stats.sendSeqErr++;
        }
        return;
      }
      if (d < 0) {
        counters.add("duplicateRequests");
        this.#stats.duplicateRequest++;
        this.#duplicate(pkt);
        return;
      }
    } else if (d !== 0) {
      // UC: packets were lost; the message in progress is gone.
      counters.add("outOfSequence");
      this.#stats.outOfSeqRequest++;
      if (this.#message !== "none") this.#message = "drop";
      this.#ePsn = psn;
    }
    this.#nakSent = false;
    const flags = pkt.info.flags;
    if (this.#message === "drop") {
      if ((flags & OpFlag.FIRST) === 0) {
        this.#ePsn = psnAdd(psn, 1);
        return;
      }
      this.#message = "none";
    }
    const starts = (flags & OpFlag.FIRST) !== 0;
    const kind = (flags & OpFlag.SEND) !== 0
      ? "send"
      : (flags & OpFlag.WRITE) !== 0
      ? "write"
      : (flags & OpFlag.READ) !== 0
      ? "read"
      : "atomic";
    if (starts !== (this.#message === "none") || (!starts && kind !== this.#message)) {
      // A packet out of its message's order: FIRST in the middle, MIDDLE without FIRST.
      this.#fatal(NakCode.INVALID_REQUEST, psn, "opcode sequence");
      return;
    }
    if (this.#qp.state === "RTR" && !this.#established) {
      // The first request in RTR: the connection is up (IBA 11.6.3, COMM_EST).
      this.#established = true;
      this.#guest.postEvent({ type: EventType.COMM_EST, element: this.#qp.handle, info: 0 });
    }
    switch (kind) {
      case "send":
        this.#send(pkt, starts);
        break;
      case "write":
        this.#write(pkt, starts);
        break;
      case "read":
        this.#read(pkt);
        break;
      default:
        this.#atomic(pkt);
    }
  }

  /** Checks the payload size of a packet that is not its message's last: exactly one MTU. */
  #sizeOk(pkt: RocePacket): boolean {
    return (pkt.info.flags & OpFlag.LAST) !== 0 || pkt.payloadLength === this.#mtu;
  }

  #send(pkt: RocePacket, starts: boolean): void {
    const psn = pkt.psn;
    if (starts) {
      const recv = takeRecv(this.#guest, this.#qp);
      if (recv === undefined) {
        this.#noReceive(psn);
        return;
      }
      this.#recvWrId = recv.wqe.wrId;
      if (recv.error !== null) {
        this.#failRecv(WcStatus.LOC_QP_OP_ERR);
        this.#fatal(NakCode.REMOTE_OPERATIONAL, psn, recv.error);
        return;
      }
      if (!resolveLocal(this.#link.host, this.#guest, this.#qp, recv.wqe, true, recvViews)) {
        this.#failRecv(WcStatus.LOC_PROT_ERR);
        this.#fatal(NakCode.REMOTE_OPERATIONAL, psn, "receive SGE refused");
        return;
      }
      this.#recvViews = recvViews.views.slice(0, recvViews.count);
      this.#recvTotal = recvViews.total;
      this.#offset = 0;
      this.#message = "send";
    }
    const payload = pkt.payload;
    if (!this.#sizeOk(pkt) || this.#offset + payload.length > this.#recvTotal) {
      this.#failRecv(WcStatus.LOC_LEN_ERR);
      this.#fatal(NakCode.INVALID_REQUEST, psn, "SEND longer than the receive buffer");
      return;
    }
    scatterAt(this.#recvViews, this.#offset, payload);
    this.#offset += payload.length;
    if ((pkt.info.flags & OpFlag.LAST) !== 0) {
      const imm = (pkt.info.flags & OpFlag.IMMEDIATE) !== 0 ? pkt.immDt : undefined;
      completeRecv(this.#guest, this.#qp, { wrId: this.#recvWrId }, {
        status: WcStatus.SUCCESS,
        byteLen: this.#offset,
        srcQp: this.#qp.destQpNum,
        imm,
        solicited: pkt.se,
      }, this.#link.counters);
      this.#message = "none";
      this.#msn = (this.#msn + 1) & 0xffffff;
    }
    this.#accepted(pkt);
  }

  #write(pkt: RocePacket, starts: boolean): void {
    const psn = pkt.psn;
    if (starts) {
      const va = pkt.rethVa;
      const length = pkt.rethDmaLen;
      this.#writeView = null;
      if (length > 0) {
        const view = this.#mapRemote(va, pkt.rethRkey, length, Access.REMOTE_WRITE);
        if (view === null) {
          this.#fatal(NakCode.REMOTE_ACCESS, psn, "WRITE refused");
          return;
        }
        this.#writeView = view;
      }
      this.#writeLength = length;
      this.#offset = 0;
      this.#message = "write";
    }
    const payload = pkt.payload;
    const last = (pkt.info.flags & OpFlag.LAST) !== 0;
    if (
      !this.#sizeOk(pkt) || this.#offset + payload.length > this.#writeLength ||
      (last && this.#offset + payload.length !== this.#writeLength)
    ) {
      this.#fatal(NakCode.INVALID_REQUEST, psn, "WRITE length disagrees with its RETH");
      return;
    }
    if (payload.length > 0) this.#writeView!.set(payload, this.#offset);
    if (last && (pkt.info.flags & OpFlag.IMMEDIATE) !== 0) {
      const recv = takeRecv(this.#guest, this.#qp);
      if (recv === undefined) {
        // The data is in place; the retried LAST writes it again, then completes.
        this.#noReceive(psn);
        return;
      }
      completeRecv(this.#guest, this.#qp, recv.wqe, {
        status: recv.error === null ? WcStatus.SUCCESS : WcStatus.LOC_QP_OP_ERR,
        byteLen: this.#writeLength,
        srcQp: this.#qp.destQpNum,
        imm: pkt.immDt,
        withWrite: true,
        solicited: pkt.se,
      }, this.#link.counters);
    }
    this.#offset += payload.length;
    if (last) {
      this.#message = "none";
      this.#msn = (this.#msn + 1) & 0xffffff;
    }
    this.#accepted(pkt);
  }

  #read(pkt: RocePacket): void {
    const psn = pkt.psn;
    const va = pkt.rethVa;
    const length = pkt.rethDmaLen;
    let at = 0;
    if (length > 0) {
      const view = this.#mapRemote(va, pkt.rethRkey, length, Access.REMOTE_READ);
      if (view === null) {
        this.#fatal(NakCode.REMOTE_ACCESS, psn, "READ refused");
        return;
      }
      at = Number(va);
    }
    const count = Math.max(1, Math.ceil(length / this.#mtu));
    const rkey = pkt.rethRkey;
    this.#save({ atomic: false, firstPsn: psn, psnCount: count, va: at, length, rkey, orig: 0n });
    this.#ePsn = psnAdd(psn, count);
    this.#msn = (this.#msn + 1) & 0xffffff;
    this.sendAck();
    this.#jobs.push({ va: at, length, rkey, firstPsn: psn, count, next: 0 });
    this.pump();
  }

  #atomic(pkt: RocePacket): void {
    const psn = pkt.psn;
    const va = pkt.atomicVa;
    if ((va & 7n) !== 0n) {
      this.#fatal(NakCode.INVALID_REQUEST, psn, "misaligned atomic");
      return;
    }
    const view = this.#mapRemote(va, pkt.atomicRkey, 8, Access.REMOTE_ATOMIC);
    if (view === null) {
      this.#fatal(NakCode.REMOTE_ACCESS, psn, "atomic refused");
      return;
    }
    // The target word is in host (little-endian) order, as the same-host path keeps it.
    const word = new DataView(view.buffer, view.byteOffset, 8);
    const orig = word.getBigUint64(0, true);
    const next = pkt.opcode === Opcode.RC_COMPARE_SWAP
      ? (orig === pkt.compare ? pkt.swapAdd : orig)
      : (orig + pkt.swapAdd) & 0xffff_ffff_ffff_ffffn;
    word.setBigUint64(0, next, true);
    this.#save({
      atomic: true,
      firstPsn: psn,
      psnCount: 1,
      va: Number(va),
      length: 8,
      rkey: pkt.atomicRkey,
      orig,
    });
    this.#ePsn = psnAdd(psn, 1);
    this.#msn = (this.#msn + 1) & 0xffffff;
    this.sendAck();
    this.#atomicAck(psn, orig);
  }

  /** A request executed: the PSN is consumed and an ACK is owed if asked for. */
  #accepted(pkt: RocePacket): void {
    this.#ePsn = psnAdd(pkt.psn, 1);
    if (this.#reliable && pkt.ackReq) this.#ackDue = pkt.psn;
  }

  #duplicate(pkt: RocePacket): void {
    const psn = pkt.psn;
    const flags = pkt.info.flags;
    if ((flags & (OpFlag.READ | OpFlag.ATOMIC)) === 0) {
      // Executed already; say so again (its ACK may have been lost).
      this.#ackDue = psnAdd(this.#ePsn, -1);
      return;
    }
    const atomic = (flags & OpFlag.ATOMIC) !== 0;
    for (const s of this.#saved) {
      if (s.atomic !== atomic) continue;
      const k = psnDiff(psn, s.firstPsn);
      if (k < 0 || k >= s.psnCount) continue;
      this.sendAck();
      if (atomic) {
        this.#atomicAck(psn, s.orig);
      } else {
        this.#jobs.push({
          va: s.va,
          length: s.length,
          rkey: s.rkey,
          firstPsn: s.firstPsn,
          count: s.psnCount,
          next: k,
        });
        this.pump();
      }
      this.#link.counters.add("duplicatesReplayed");
      return;
    }
    // Too old to be kept: nothing to answer with (rxe drops it too).
    this.#link.counters.add("duplicatesDropped");
  }

  #save(entry: Saved): void {
    const max = Math.max(1, this.#qp.maxDestRdAtomic);
    if (this.#saved.length < max) {
      this.#saved.push(entry);
    } else {
      this.#saved[this.#savedNext] = entry;
      this.#savedNext = (this.#savedNext + 1) % max;
    }
  }

  /** Whether `rkey` still opens `addr`..`addr+length` to READs on this QP. */
  #readable(rkey: number, addr: number, length: number): boolean {
    const allowed = checkRemote(this.#link.host, { guest: this.#guest, qp: this.#qp }, {
      rkey,
      addr,
      length,
      need: Access.REMOTE_READ,
    });
    if (typeof allowed !== "string") return true;
    this.#link.counters.add("accessErrors");
    return false;
  }

  /** The bytes `va`..`va+length` of an MR `rkey` opens to `need` on this QP, or null. */
  #mapRemote(va: bigint, rkey: number, length: number, need: number): Uint8Array | null {
    if (va > BigInt(Number.MAX_SAFE_INTEGER)) {
      this.#link.counters.add("accessErrors");
      return null;
    }
    const addr = Number(va);
    const allowed = checkRemote(this.#link.host, { guest: this.#guest, qp: this.#qp }, {
      rkey,
      addr,
      length,
      need,
    });
    if (typeof allowed === "string") {
      this.#link.counters.add("accessErrors");
      return null;
    }
    return this.#guest.memory.bytes(addr, length);
  }

  /** No receive WQE: RNR NAK (RC) or drop the message (UC). */
  #noReceive(psn: number): void {
    if (this.#reliable) {
      this.#link.counters.add("rnrNaksSent");
      this.#stats.sendRnrErr++;
      this.#nakSent = true;
      this.#nak(rnrNakSyndrome(this.#qp.minRnrTimer), psn);
    } else {
      this.#link.counters.add("ucDropped");
      this.#message = "drop";
      this.#ePsn = psnAdd(psn, 1);
    }
  }

  #failRecv(status: number): void {
    completeRecv(this.#guest, this.#qp, { wrId: this.#recvWrId }, {
      status,
      byteLen: 0,
      srcQp: this.#qp.destQpNum,
    }, this.#link.counters);
  }

  /** A class C/D error: NAK (RC) and the QP goes to ERR. */
  #fatal(code: number, psn: number, _why: string): void {
    if (!this.#reliable) {
      // UC (IBA class E, as rxe): the message is dropped, the QP carries on.
      this.#link.counters.add("ucDropped");
      this.#message = "drop";
      this.#ePsn = psnAdd(psn, 1);
      return;
    }
    const counters = this.#link.counters;
    counters.add(code === NakCode.REMOTE_ACCESS ? "accessNaksSent" : "fatalNaksSent");
    this.#stats.sendFatalNak++;
    this.#nak(nakSyndrome(code), psn);
    this.#dead = true;
    if (this.#qp.state !== "ERR") this.#guest.moveQp(this.#qp, "ERR");
  }

  /** Sends the coalesced ACK, if one is owed. */
  sendAck(): void {
    if (this.#ackDue < 0) return;
    const psn = this.#ackDue;
    this.#ackDue = -1;
    this.#control(Opcode.RC_ACKNOWLEDGE, psn, ACK_SYNDROME);
    this.#link.counters.add("acksSent");
  }

  #nak(syndrome: number, psn: number): void {
    this.sendAck();
    this.#control(Opcode.RC_ACKNOWLEDGE, psn, syndrome);
  }

  #atomicAck(psn: number, orig: bigint): void {
    this.#control(Opcode.RC_ATOMIC_ACKNOWLEDGE, psn, ACK_SYNDROME, orig);
  }

  /** An ACK, NAK or atomic ACK; lost (as on a wire) when the outbox cannot take it. */
  #control(opcode: number, psn: number, syndrome: number, orig?: bigint): void {
    const outbox = this.#link.outbox;
    const slot = outbox.slot();
    if (slot === null) {
      this.#link.counters.add("controlDropped");
      return;
    }
    const length = buildPacket(slot, {
      opcode,
      destQp: this.#qp.destQpNum,
      psn,
      aeth: { syndrome, msn: this.#msn },
      origData: orig,
      icrc: null,
    });
    outbox.commit(length, this.#dstIp, this.#srcPort);
    this.#stats.sentPkts++;
    this.#stats.sentBytes += length;
  }

  /** Sends READ responses while the outbox has room. */
  pump(): void {
    const jobs = this.#jobs;
    const outbox = this.#link.outbox;
    const mtu = this.#mtu;
    const memory = this.#guest.memory;
    while (jobs.length > 0 && !this.#dead) {
      const job = jobs[0]!;
      const slot = outbox.slot();
      if (slot === null) {
        this.#link.blocked(this);
        return;
      }
      const k = job.next;
      const n = job.count;
      const opcode = n === 1
        ? Opcode.RC_RDMA_READ_RESPONSE_ONLY
        : k === 0
        ? Opcode.RC_RDMA_READ_RESPONSE_FIRST
        : k === n - 1
        ? Opcode.RC_RDMA_READ_RESPONSE_LAST
        : Opcode.RC_RDMA_READ_RESPONSE_MIDDLE;
      const offset = k * mtu;
      const length = k === n - 1 ? job.length - offset : mtu;
      if (length > 0 && !this.#readable(job.rkey, job.va + offset, length)) {
        // The MR went away (or changed) since the request: not one more byte of it.
        jobs.shift();
        continue;
      }
      const length_ = buildPacket(slot, {
        opcode,
        destQp: this.#qp.destQpNum,
        psn: psnAdd(job.firstPsn, k),
        aeth: opcode === Opcode.RC_RDMA_READ_RESPONSE_MIDDLE
          ? undefined
          : { syndrome: ACK_SYNDROME, msn: this.#msn },
        payload: length > 0 ? memory.bytes(job.va + offset, length) : new Uint8Array(0),
        icrc: null,
      });
      outbox.commit(length_, this.#dstIp, this.#srcPort);
      this.#stats.sentPkts++;
      this.#stats.sentBytes += length_;
      if (++job.next === n) jobs.shift();
    }
  }

  /** The QP left the states that receive (ERR, RESET): nothing more is answered. */
  stop(): void {
    this.#dead = true;
    this.#jobs.length = 0;
  }
}
