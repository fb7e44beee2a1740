/**
 * The host adapter: the emulated RoCEv2 NIC of one host. It owns the
 * transport (UDP port 4791 of this host's address, or a fabric endpoint in
 * tests), one requester and one responder state machine per RC/UC QP whose
 * peer is on another host, and the UD datagram path.
 *
 * Incoming packets are untrusted. Each is parsed (lengths checked before any
 * field is read), its ICRC verified, its P_Key, destination QP, transport and
 * source address checked, and only then handed to a state machine; every
 * rejection is counted, none throws.
 *
 * DESIGN NOTE, the receive side's ICRC. The ICRC covers the IPv4
 * Identification. vrdma senders put 0 there (DF socket), but Linux rxe builds
 * its own IP header with the kernel's ID generator (nonzero, about +1 per
 * packet), and a plain UDP socket never shows the receiver that field. So:
 * - when the transport copies the real headers off the wire (raw mode, which
 *   needs CAP_NET_RAW: `--transport raw|auto`), the ICRC is checked with the
 *   real ID, all 32 bits;
 * - otherwise (socket mode, the default) the ICRC is checked with ID 0 first
 *   (every vrdma peer: one pass, nothing more), and when that fails the one
 *   ID consistent with the stored ICRC is solved for by CRC linearity
 *   (`verifyIcrcAnyId` in roce/icrc.ts). That spends 16 of the 32 bits on
 *   finding the ID: a corrupted packet from a nonzero-ID peer slips through
 *   with probability 2^-16, against 2^-32 with raw mode. The link below
 *   (Ethernet FCS) has already caught almost all corruption by then; the
 *   ICRC is not an authenticator either way (anyone can compute one).
 * Packets vrdma sends always carry ID 0 and an ICRC computed with it.
 *
 * Everything runs on the data-plane Worker: `poll()` when the transport's fd
 * is readable, `runTimers()` when a timer is due.
 *
 * @module
 */

import { SendFlags, WcStatus, WrOpcode } from "../../protocol/verbs.ts";
import type { Counters } from "../data_plane/stats.ts";
import { buildGrh, GRH_BYTES } from "../engine/grh.ts";
import { canReceive, completeRecv, takeRecv } from "../engine/responder.ts";
import { resolveLocal, SgeViews } from "../engine/sge.ts";
import type { ParsedWqe } from "../engine/wqe_reader.ts";
import type { EngineGuest, EngineHost, EngineQp } from "../engine/types.ts";
import type { RocePacket } from "../roce/headers.ts";
import { checkIcrc, verifyIcrcAnyId } from "../roce/icrc.ts";
import { formatIpv4, parseIpv4 } from "../roce/ipv4.ts";
import { Opcode, OpFlag } from "../roce/opcodes.ts";
import { buildPacket, ParseFailure, parsePacket } from "../roce/packet.ts";
import { psnAdd } from "../roce/psn.ts";
import { rcSourcePort, udSourcePort } from "../roce/source_port.ts";
import { DatagramBatch, type RoceTransport } from "../roce/transport.ts";
import type { Link, QpWire } from "./link.ts";
import { Outbox, SLOT_BYTES } from "./outbox.ts";
import { isReadOrAtomic, PendingWr, scatterAt } from "./pending_wr.ts";
import { Requester } from "./requester.ts";
import { Responder } from "./responder.ts";
import { newQpCounters, type QpCounters } from "./qp_counters.ts";

/** What the adapter calls back into the verbs engine for. */
export interface AdapterCallbacks {
  /** Completes a send WR (see {@linkcode Link.retire}). */
  retire: Link["retire"];
  /** Gives a send WR's slot back without a completion. */
  release: Link["release"];
}

/** Options of {@linkcode HostAdapter}. */
export interface HostAdapterOptions {
  /** Where packets go and come from. */
  transport: RoceTransport;
  /** This host's tables. */
  host: EngineHost;
  /** The backend's counters. */
  counters: Counters;
  /** Clock in ms; default `performance.now`. */
  now?: () => number;
  /** Engine callbacks. */
  callbacks: AdapterCallbacks;
}

/** Receive batches per `poll()`: bounded, so one busy peer cannot starve the guests' queues. */
const MAX_BATCHES_PER_POLL = 8;
const RECEIVE_SLOTS = 64;
const MAX_MESSAGE = 0x8000_0000;

const gidCache = new Map<string, number | undefined>();

/**
 * The IPv4 address of an IPv4-mapped GID (`::ffff:a.b.c.d`), or undefined.
 * Asked for every packet, so answers are remembered (GIDs are few).
 *
 * @example
 * ```ts
 * import { gidIpv4 } from "./host_adapter.ts";
 * if (gidIpv4("::ffff:127.0.0.2") !== 0x7f000002 || gidIpv4("fe80::1") !== undefined) {
 *   throw new Error("gid");
 * }
 * ```
 */
export function gidIpv4(gid: string): number | undefined {
  if (gidCache.has(gid)) return gidCache.get(gid);
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(gid);
  let ip: number | undefined;
  try {
    ip = m === null ? undefined : parseIpv4(m[1]!);
  } catch {
    ip = undefined;
  }
  if (gidCache.size > 4096) gidCache.clear();
  gidCache.set(gid, ip);
  return ip;
}

/** The emulated RoCEv2 NIC of one host. */
export class HostAdapter implements Link {
  /** This host's tables. */
  readonly host: EngineHost;
  /** Outgoing packets. */
  readonly outbox: Outbox;
  /** The backend's counters. */
  readonly counters: Counters;
  readonly #transport: RoceTransport;
  readonly #now: () => number;
  readonly #callbacks: AdapterCallbacks;
  readonly #rx = new DatagramBatch(RECEIVE_SLOTS, SLOT_BYTES + 64);
  readonly #requesters = new Map<EngineQp, Requester>();
  readonly #responders = new Map<EngineQp, Responder>();
  readonly #touched = new Set<Responder>();
  readonly #blocked = new Set<{ pump(): void }>();
  readonly #views = new SgeViews();
  readonly #grh = new Uint8Array(GRH_BYTES);
  readonly #udPsn = new Map<EngineQp, number>();
  readonly #qpCounters = new Map<EngineQp, QpCounters>();
  /** The source port each RC/UC QP sends from, and how many QPs use each port. */
  readonly #portOf = new Map<EngineQp, number>();
  readonly #portUsers = new Map<number, number>();
  readonly #flow = { srcIp: 0, dstIp: 0, srcPort: 0, dstPort: 0, ipId: 0 };
  readonly #localIp: string;

  /** An adapter over `options.transport` serving `options.host`'s QPs. */
  constructor(options: HostAdapterOptions) {
    this.host = options.host;
    this.counters = options.counters;
    this.#transport = options.transport;
    this.#now = options.now ?? (() => performance.now());
    this.#callbacks = options.callbacks;
    this.outbox = new Outbox(options.transport, options.counters);
    this.#flow.dstIp = options.transport.localIp;
    this.#flow.dstPort = options.transport.localPort;
    this.#localIp = formatIpv4(options.transport.localIp);
  }

  /** The fd to watch for arrivals, if the transport has one. */
  get fd(): number | undefined {
    return this.#transport.fd;
  }

  /** Current time on the adapter's clock (ms). */
  now(): number {
    return this.#now();
  }

  /** See {@linkcode Link.retire}. */
  retire(guest: EngineGuest, qp: EngineQp, wr: PendingWr, status: number, byteLen: number): void {
    this.#callbacks.retire(guest, qp, wr, status, byteLen);
  }

  /** See {@linkcode Link.release}. */
  release(guest: EngineGuest, qp: EngineQp, wr: PendingWr): void {
    this.#callbacks.release(guest, qp, wr);
  }

  /** The counters of `qp` (kept until the QP is destroyed). */
  qpCounters(qp: EngineQp): QpCounters {
    let c = this.#qpCounters.get(qp);
    if (c === undefined) {
      c = newQpCounters();
      this.#qpCounters.set(qp, c);
    }
    return c;
  }

  /** The counters of every QP that has used the wire, with its QP. */
  allQpCounters(): [EngineQp, QpCounters][] {
    return [...this.#qpCounters];
  }

  /** See {@linkcode Link.blocked}. */
  blocked(pump: { pump(): void }): void {
    this.#blocked.add(pump);
  }

  /** Whether `qp`'s peer is on another host (an RC or UC QP whose path leaves this one). */
  isRemote(qp: EngineQp): boolean {
    return qp.qpType !== "UD" && qp.ahAttr.dgid !== this.host.gid &&
      gidIpv4(qp.ahAttr.dgid) !== undefined;
  }

  /** Takes a send WR of a remote RC/UC QP in RTS: it is sent and completed in order. */
  post(guest: EngineGuest, qp: EngineQp, head: number, wqe: ParsedWqe): void {
    this.#requester(guest, qp).post(new PendingWr(head, wqe, this.#local(guest, qp, wqe)));
  }

  /** The local bytes of a WR, or the error it completes with. */
  #local(
    guest: EngineGuest,
    qp: EngineQp,
    wqe: ParsedWqe,
  ): { views: Uint8Array[]; length: number; error: number | null } {
    const none = (error: number) => ({ views: [], length: 0, error });
    const op = wqe.opcode;
    if (qp.qpType === "UC" && isReadOrAtomic(op)) return none(WcStatus.LOC_QP_OP_ERR);
    // readWqe already refused INLINE on a READ or an atomic (LOC_QP_OP_ERR).
    if ((wqe.flags & SendFlags.INLINE) !== 0) {
      const copy = wqe.inline.slice(0, wqe.inlineLen);
      return { views: [copy], length: copy.length, error: null };
    }
    const views = this.#views;
    if (!resolveLocal(this.host, guest, qp, wqe, isReadOrAtomic(op), views)) {
      return none(WcStatus.LOC_PROT_ERR);
    }
    if (
      (op === WrOpcode.ATOMIC_CMP_AND_SWP || op === WrOpcode.ATOMIC_FETCH_AND_ADD) &&
      (views.total !== 8 || views.count !== 1)
    ) {
      return none(WcStatus.LOC_LEN_ERR);
    }
    if (views.total > MAX_MESSAGE) return none(WcStatus.LOC_LEN_ERR);
    return { views: views.views.slice(0, views.count), length: views.total, error: null };
  }

  #requester(guest: EngineGuest, qp: EngineQp): Requester {
    let r = this.#requesters.get(qp);
    if (r === undefined) {
      r = new Requester(this, this.#wire(guest, qp));
      this.#requesters.set(qp, r);
    }
    return r;
  }

  #wire(guest: EngineGuest, qp: EngineQp): QpWire {
    const srcPort = rcSourcePort(qp.qpNum, qp.destQpNum);
    this.#usePort(qp, srcPort);
    return {
      guest,
      qp,
      dstIp: gidIpv4(qp.ahAttr.dgid) ?? 0,
      srcPort,
      stats: this.qpCounters(qp),
    };
  }

  /** Notes that `qp` sends from `port` (several QPs may share one). */
  #usePort(qp: EngineQp, port: number): void {
    if (this.#portOf.get(qp) === port) return;
    this.#releasePort(qp);
    this.#portOf.set(qp, port);
    this.#portUsers.set(port, (this.#portUsers.get(port) ?? 0) + 1);
  }

  /** `qp` sends no more: its source port's socket goes with its last user. */
  #releasePort(qp: EngineQp): void {
    const port = this.#portOf.get(qp);
    if (port === undefined) return;
    this.#portOf.delete(qp);
    const users = (this.#portUsers.get(port) ?? 1) - 1;
    if (users > 0) {
      this.#portUsers.set(port, users);
      return;
    }
    this.#portUsers.delete(port);
    this.#transport.releaseSourcePort(port);
  }

  /**
   * Sends a UD datagram (`local` holds its gathered payload) to QP
   * `wqe.remoteQpn` at `dgid`'s host. Unreliable: lost when the outbox is full.
   */
  sendUd(qp: EngineQp, wqe: ParsedWqe, dgid: string, local: SgeViews): void {
    const dstIp = gidIpv4(dgid);
    const slot = this.outbox.slot();
    if (dstIp === undefined || slot === null) {
      this.counters.add("udDropped");
      return;
    }
    const withImm = wqe.opcode === WrOpcode.SEND_WITH_IMM;
    const opcode = withImm ? Opcode.UD_SEND_ONLY_WITH_IMMEDIATE : Opcode.UD_SEND_ONLY;
    const at = withImm ? 24 : 20; // BTH 12 + DETH 8 (+ ImmDt 4)
    let n = at;
    for (let i = 0; i < local.count; i++) {
      slot.set(local.views[i]!, n);
      n += local.views[i]!.length;
    }
    const psn = this.#udPsn.get(qp) ?? qp.sqPsn;
    this.#udPsn.set(qp, psnAdd(psn, 1));
    // A Q_Key with its top bit set means "use the sender's own Q_Key".
    const qkey = (wqe.remoteQkey & 0x8000_0000) !== 0 ? qp.qkey : wqe.remoteQkey;
    const length = buildPacket(slot, {
      opcode,
      destQp: wqe.remoteQpn & 0xffffff,
      psn,
      se: (wqe.flags & SendFlags.SOLICITED) !== 0,
      deth: { qkey: qkey >>> 0, srcQp: qp.qpNum },
      immDt: withImm ? wqe.immData : undefined,
      payload: slot.subarray(at, n),
      icrc: null,
    });
    const srcPort = udSourcePort(qp.qpNum);
    this.#usePort(qp, srcPort);
    this.outbox.commit(length, dstIp, srcPort);
    const stats = this.qpCounters(qp);
    stats.sentPkts++;
    stats.sentBytes += length;
  }

  /** Receives and handles what has arrived, then sends what that produced. Returns packets taken. */
  poll(): number {
    const rx = this.#rx;
    let total = 0;
    let totalBytes = 0;
    for (let round = 0; round < MAX_BATCHES_PER_POLL; round++) {
      const n = this.#transport.receive(rx);
      total += n;
      for (let i = 0; i < n; i++) totalBytes += rx.lengths[i]!;
      for (let i = 0; i < n; i++) {
        try {
          this.#handle(i);
        } catch (e) {
          // A bug, not hostile input (that is counted and dropped below):
          // count it and go on serving everyone else.
          this.counters.add("adapterErrors");
          if (this.counters.get("adapterErrors") <= 3) console.error(e);
        }
      }
      if (n < rx.capacity) break;
    }
    if (total > 0) this.counters.add("udpPacketsReceived", total);
    if (total > 0) this.counters.add("udpBytesReceived", totalBytes);
    for (const r of this.#touched) r.sendAck();
    this.#touched.clear();
    this.flush();
    return total;
  }

  /**
   * Sends queued packets and lets the blocked state machines go on while
   * there is room (`poll` and `runTimers` end with it too).
   */
  flush(): void {
    if (!this.outbox.flush()) return;
    if (this.#blocked.size === 0) return;
    const blocked = [...this.#blocked];
    this.#blocked.clear();
    for (const b of blocked) b.pump();
    this.outbox.flush();
  }

  #handle(i: number): void {
    const rx = this.#rx;
    const counters = this.counters;
    if (rx.truncated[i] === 1) {
      counters.add("badPackets");
      return;
    }
    const bytes = rx.slots[i]!.subarray(0, rx.lengths[i]!);
    const pkt = parsePacket(bytes);
    if (pkt instanceof ParseFailure) {
      counters.add("badPackets");
      return;
    }
    const flow = this.#flow;
    flow.srcIp = rx.peerIps[i]!;
    flow.srcPort = rx.peerPorts[i]!;
    // The ICRC covers the IPv4 ID (see the design note above).
    let icrcOk: boolean;
    if (rx.headersExact) {
      flow.ipId = (rx.headers[i * 28 + 4]! << 8) | rx.headers[i * 28 + 5]!;
      icrcOk = checkIcrc(flow, bytes);
    } else {
      flow.ipId = verifyIcrcAnyId(flow, bytes);
      icrcOk = flow.ipId >= 0;
    }
    if (!icrcOk) {
      counters.add("icrcErrors");
      return;
    }
    if ((pkt.pkey & 0x7fff) !== 0x7fff) {
      counters.add("badPackets");
      return;
    }
    const found = this.host.qp(pkt.destQp);
    if (found === undefined) {
      counters.add("unknownQp");
      return;
    }
    const { qp, guest } = found;
    const stats = this.qpCounters(qp);
    stats.rcvdPkts++;
    stats.rcvdBytes += bytes.length;
    if (pkt.info.transport !== qp.qpType) {
      counters.add("badPackets");
      return;
    }
    if (qp.qpType === "UD") {
      this.#receiveUd(guest, qp, pkt, flow.srcIp);
      return;
    }
    // RC/UC: only the QP's peer may talk to it.
    if (gidIpv4(qp.ahAttr.dgid) !== flow.srcIp || !this.isRemote(qp)) {
      counters.add("badPackets");
      return;
    }
    if ((pkt.info.flags & OpFlag.RESPONSE) !== 0) {
      if (qp.qpType !== "RC") {
        counters.add("badPackets");
        return;
      }
      const r = this.#requesters.get(qp);
      if (r === undefined) {
        counters.add("staleResponses");
        return;
      }
      r.onResponse(pkt);
      return;
    }
    if (!canReceive(qp)) {
      counters.add("droppedNotReady");
      return;
    }
    let responder = this.#responders.get(qp);
    if (responder === undefined) {
      responder = new Responder(this, this.#wire(guest, qp));
      this.#responders.set(qp, responder);
    }
    responder.onRequest(pkt);
    if (this.#responders.get(qp) === responder) this.#touched.add(responder);
  }

  #receiveUd(guest: EngineGuest, qp: EngineQp, pkt: RocePacket, srcIp: number): void {
    const counters = this.counters;
    if (!canReceive(qp) || pkt.qkey !== qp.qkey) {
      counters.add("udDropped");
      return;
    }
    const recv = takeRecv(guest, qp);
    if (recv === undefined) {
      counters.add("udDropped");
      return;
    }
    const payload = pkt.payload;
    const srcQp = pkt.srcQp;
    const views = this.#views;
    if (recv.error !== null || !resolveLocal(this.host, guest, qp, recv.wqe, true, views)) {
      completeRecv(
        guest,
        qp,
        recv.wqe,
        { status: WcStatus.LOC_PROT_ERR, byteLen: 0, srcQp },
        counters,
      );
      return;
    }
    if (views.total < GRH_BYTES + payload.length) {
      completeRecv(
        guest,
        qp,
        recv.wqe,
        { status: WcStatus.LOC_LEN_ERR, byteLen: 0, srcQp },
        counters,
      );
      return;
    }
    const immediate = (pkt.info.flags & OpFlag.IMMEDIATE) !== 0;
    buildGrh(this.#grh, {
      srcIp: formatIpv4(srcIp),
      dstIp: this.#localIp,
      payloadBytes: payload.length,
      immediate,
    });
    const targets = views.views.slice(0, views.count);
    scatterAt(targets, 0, this.#grh);
    scatterAt(targets, GRH_BYTES, payload);
    completeRecv(guest, qp, recv.wqe, {
      status: WcStatus.SUCCESS,
      byteLen: GRH_BYTES + payload.length,
      srcQp,
      imm: immediate ? pkt.immDt : undefined,
      grh: true,
      solicited: pkt.se,
    }, counters);
  }

  /** `qp` went to ERR: its outstanding send WRs flush (before the ring's), nothing more is answered. */
  onError(qp: EngineQp): void {
    const r = this.#requesters.get(qp);
    this.#requesters.delete(qp);
    r?.flush();
    this.#stopResponder(qp);
  }

  /** `qp` went to RESET: outstanding send WRs go back without completions; PSNs restart. */
  onReset(qp: EngineQp): void {
    const r = this.#requesters.get(qp);
    this.#requesters.delete(qp);
    r?.release();
    this.#stopResponder(qp);
    this.#udPsn.delete(qp);
  }

  /** Forgets a destroyed QP. */
  forget(qp: EngineQp): void {
    this.onReset(qp);
    this.#qpCounters.delete(qp);
    this.#releasePort(qp);
  }

  #stopResponder(qp: EngineQp): void {
    const s = this.#responders.get(qp);
    if (s === undefined) return;
    this.#responders.delete(qp);
    this.#touched.delete(s);
    this.#blocked.delete(s);
    s.stop();
  }

  /** Milliseconds until the adapter next needs `runTimers` (0: now; Infinity: nothing pending). */
  nextTimeout(now = this.#now()): number {
    if (this.outbox.pending > 0 || this.#blocked.size > 0) return 0;
    let next = Infinity;
    for (const r of this.#requesters.values()) next = Math.min(next, r.deadline);
    return next === Infinity ? Infinity : Math.max(0, next - now);
  }

  /** Fires due retransmission and RNR timers and sends what waits. */
  runTimers(now = this.#now()): void {
    for (const r of [...this.#requesters.values()]) {
      if (r.deadline <= now) r.onTimer(now);
    }
    this.flush();
  }

  /** Closes the transport. */
  close(): void {
    this.#transport.close();
  }
}
