/**
 * Executes one send WQE when the responder QP is on this host: data moves
 * guest memory to guest memory, no network. The outcome is what the
 * requester would learn from the responder's ACK or NAK on the wire, and the
 * responder side completes receives and changes state as it would there.
 *
 * @module
 */

import { EventType } from "../../protocol/device_interface.ts";
import { SendFlags, WcStatus, WrOpcode } from "../../protocol/verbs.ts";
import type { Counters } from "../data_plane/stats.ts";
import { buildGrh, GRH_BYTES } from "./grh.ts";
import { canReceive, checkRemote, completeRecv, REMOTE, takeRecv } from "./responder.ts";
import { copyViews, resolveLocal, SgeViews } from "./sge.ts";
import type { ParsedWqe } from "./wqe_reader.ts";
import type { EngineGuest, EngineHost, EngineQp } from "./types.ts";

/** What became of a WQE. */
export type Outcome =
  | { kind: "done"; status: number; byteLen: number }
  /** No receive WQE at the responder (RC): retry after its min RNR timer. */
  | { kind: "rnr"; minRnrTimer: number }
  /** Nobody answered (no such QP here, or it cannot receive): retry until retryCnt runs out. */
  | { kind: "noResponse" };

const local = new SgeViews();
const remote = new SgeViews();
const grh = new Uint8Array(GRH_BYTES);

function done(status: number, byteLen = 0): Outcome {
  return { kind: "done", status, byteLen };
}

/** Gathers the WQE's payload (SGEs, or inline bytes) into `local`. */
function gather(host: EngineHost, guest: EngineGuest, qp: EngineQp, wqe: ParsedWqe): boolean {
  if ((wqe.flags & SendFlags.INLINE) !== 0) {
    local.reset();
    if (wqe.inlineLen > 0) local.push(wqe.inline.subarray(0, wqe.inlineLen));
    return true;
  }
  return resolveLocal(host, guest, qp, wqe, false, local);
}

/** Puts the responder QP into ERR as the IBA's class C/D errors do. */
function fail(dest: { qp: EngineQp; guest: EngineGuest }): void {
  if (dest.qp.state !== "ERR") dest.guest.moveQp(dest.qp, "ERR");
}

/** Raises COMM_EST the first time a QP in RTR receives. */
function established(dest: { qp: EngineQp; guest: EngineGuest }): void {
  if (dest.qp.state === "RTR") {
    dest.guest.postEvent({ type: EventType.COMM_EST, element: dest.qp.handle, info: 0 });
  }
}

/**
 * Maps the target range of an RDMA or atomic WQE into `remote` after the
 * responder's checks. A refusal counts, puts the responder QP into ERR (IBA
 * class C error) and returns false: the requester completes REM_ACCESS_ERR.
 */
function mapRemote(
  host: EngineHost,
  dest: { qp: EngineQp; guest: EngineGuest },
  wqe: ParsedWqe,
  access: { length: number; need: number; counters: Counters },
): boolean {
  const allowed = checkRemote(host, dest, {
    rkey: wqe.rkey,
    addr: wqe.remoteAddr,
    length: access.length,
    need: access.need,
  });
  if (typeof allowed === "string") {
    access.counters.add("accessErrors");
    fail(dest);
    return false;
  }
  remote.push(dest.guest.memory.bytes(wqe.remoteAddr, access.length));
  return true;
}

/** Where UD datagrams for other hosts go (the host adapter). */
export interface RemoteUd {
  /** Sends `wqe`'s payload, gathered in `local`, to `dgid`'s host. */
  sendUd(qp: EngineQp, wqe: ParsedWqe, dgid: string, local: SgeViews): void;
}

/** Executes `wqe` from `qp` of `guest`; UD datagrams for other hosts go to `remoteUd`. */
export function execute(
  host: EngineHost,
  guest: EngineGuest,
  qp: EngineQp,
  wqe: ParsedWqe,
  counters: Counters,
  remoteUd?: RemoteUd,
): Outcome {
  if (qp.qpType === "UD") return executeUd(host, guest, qp, wqe, counters, remoteUd);
  const dgid = qp.ahAttr.dgid;
  if (dgid !== host.gid) return { kind: "noResponse" }; // a remote peer, and no adapter to reach it
  const dest = host.qp(qp.destQpNum);
  // The responder takes requests only from the QP it is connected to (on the
  // wire: its peer's address and PSNs). Without this check a guest could
  // point its QP at any QPN of this host and read and write that memory.
  if (
    dest === undefined || dest.qp.qpType !== qp.qpType || !canReceive(dest.qp) ||
    dest.qp.destQpNum !== qp.qpNum || dest.qp.ahAttr.dgid !== host.gid
  ) {
    return { kind: "noResponse" };
  }
  const op = wqe.opcode;
  const unreliable = qp.qpType === "UC";
  counters.add("localOps");

  if (op === WrOpcode.SEND || op === WrOpcode.SEND_WITH_IMM) {
    if (!gather(host, guest, qp, wqe)) return done(WcStatus.LOC_PROT_ERR);
    const recv = takeRecv(dest.guest, dest.qp);
    if (recv === undefined) {
      counters.add("rnrNaks");
      return unreliable
        ? done(WcStatus.SUCCESS, local.total)
        : { kind: "rnr", minRnrTimer: dest.qp.minRnrTimer };
    }
    const imm = op === WrOpcode.SEND_WITH_IMM ? wqe.immData : undefined;
    const solicited = (wqe.flags & SendFlags.SOLICITED) !== 0;
    if (recv.error !== null || !resolveLocal(host, dest.guest, dest.qp, recv.wqe, true, remote)) {
      completeRecv(dest.guest, dest.qp, recv.wqe, {
        status: recv.error ? WcStatus.LOC_QP_OP_ERR : WcStatus.LOC_PROT_ERR,
        byteLen: 0,
        srcQp: qp.qpNum,
      }, counters);
      fail(dest);
      return done(unreliable ? WcStatus.SUCCESS : WcStatus.REM_OP_ERR);
    }
    if (local.total > remote.total) {
      completeRecv(dest.guest, dest.qp, recv.wqe, {
        status: WcStatus.LOC_LEN_ERR,
        byteLen: 0,
        srcQp: qp.qpNum,
      }, counters);
      fail(dest);
      return done(unreliable ? WcStatus.SUCCESS : WcStatus.REM_INV_REQ_ERR);
    }
    established(dest);
    const n = copyViews(local, remote);
    counters.add("localBytes", n);
    completeRecv(dest.guest, dest.qp, recv.wqe, {
      status: WcStatus.SUCCESS,
      byteLen: n,
      srcQp: qp.qpNum,
      imm,
      solicited,
    }, counters);
    return done(WcStatus.SUCCESS, n);
  }

  if (op === WrOpcode.RDMA_WRITE || op === WrOpcode.RDMA_WRITE_WITH_IMM) {
    if (!gather(host, guest, qp, wqe)) return done(WcStatus.LOC_PROT_ERR);
    const length = local.total;
    remote.reset();
    if (length > 0) {
      // A zero-length WRITE carries no address to check (IBA 9.4.1.1).
      if (!mapRemote(host, dest, wqe, { length, need: REMOTE.write, counters })) {
        return done(unreliable ? WcStatus.SUCCESS : WcStatus.REM_ACCESS_ERR);
      }
    }
    let recv;
    if (op === WrOpcode.RDMA_WRITE_WITH_IMM) {
      recv = takeRecv(dest.guest, dest.qp);
      if (recv === undefined) {
        counters.add("rnrNaks");
        return unreliable
          ? done(WcStatus.SUCCESS, length)
          : { kind: "rnr", minRnrTimer: dest.qp.minRnrTimer };
      }
    }
    established(dest);
    const n = copyViews(local, remote);
    counters.add("localBytes", n);
    if (recv !== undefined) {
      completeRecv(dest.guest, dest.qp, recv.wqe, {
        status: recv.error ? WcStatus.LOC_QP_OP_ERR : WcStatus.SUCCESS,
        byteLen: n,
        srcQp: qp.qpNum,
        imm: wqe.immData,
        withWrite: true,
        solicited: (wqe.flags & SendFlags.SOLICITED) !== 0,
      }, counters);
    }
    return done(WcStatus.SUCCESS, n);
  }

  if (unreliable) return done(WcStatus.LOC_QP_OP_ERR); // UC has no READ or atomics

  if (op === WrOpcode.RDMA_READ) {
    if (!resolveLocal(host, guest, qp, wqe, true, local)) return done(WcStatus.LOC_PROT_ERR);
    const length = local.total;
    remote.reset();
    if (length > 0) {
      if (!mapRemote(host, dest, wqe, { length, need: REMOTE.read, counters })) {
        return done(WcStatus.REM_ACCESS_ERR);
      }
    }
    established(dest);
    const n = copyViews(remote, local);
    counters.add("localBytes", n);
    return done(WcStatus.SUCCESS, n);
  }

  if (op === WrOpcode.ATOMIC_CMP_AND_SWP || op === WrOpcode.ATOMIC_FETCH_AND_ADD) {
    if (!resolveLocal(host, guest, qp, wqe, true, local)) return done(WcStatus.LOC_PROT_ERR);
    if (local.total !== 8 || local.count !== 1) return done(WcStatus.LOC_LEN_ERR);
    if (wqe.remoteAddr % 8 !== 0) {
      fail(dest);
      return done(WcStatus.REM_INV_REQ_ERR); // misaligned atomic: NAK invalid request
    }
    remote.reset();
    if (!mapRemote(host, dest, wqe, { length: 8, need: REMOTE.atomic, counters })) {
      return done(WcStatus.REM_ACCESS_ERR);
    }
    established(dest);
    // The target word is in host (little-endian) order in guest memory, as an
    // HCA's atomic unit sees it; the original value goes back the same way.
    const mem = dest.guest.memory;
    const original = mem.u64(wqe.remoteAddr);
    const next = op === WrOpcode.ATOMIC_CMP_AND_SWP
      ? (original === wqe.compareAdd ? wqe.swap : original)
      : (original + wqe.compareAdd) & 0xffff_ffff_ffff_ffffn;
    mem.setU64(wqe.remoteAddr, next);
    new DataView(local.views[0]!.buffer, local.views[0]!.byteOffset, 8).setBigUint64(
      0,
      original,
      true,
    );
    return done(WcStatus.SUCCESS, 8);
  }
  return done(WcStatus.LOC_QP_OP_ERR);
}

/** A UD SEND: one datagram, unreliable; the receiver's buffer gets the GRH first. */
function executeUd(
  host: EngineHost,
  guest: EngineGuest,
  qp: EngineQp,
  wqe: ParsedWqe,
  counters: Counters,
  remoteUd: RemoteUd | undefined,
): Outcome {
  if (wqe.opcode !== WrOpcode.SEND && wqe.opcode !== WrOpcode.SEND_WITH_IMM) {
    return done(WcStatus.LOC_QP_OP_ERR);
  }
  const ah = guest.ah(wqe.ah);
  if (ah === undefined || ah.pd !== qp.pd) return done(WcStatus.LOC_QP_OP_ERR);
  if (!gather(host, guest, qp, wqe)) return done(WcStatus.LOC_PROT_ERR);
  const length = local.total;
  if (length > qp.pathMtu) return done(WcStatus.LOC_LEN_ERR);
  if (ah.ahAttr.dgid !== host.gid) {
    if (remoteUd === undefined) counters.add("udDropped");
    else remoteUd.sendUd(qp, wqe, ah.ahAttr.dgid, local);
    return done(WcStatus.SUCCESS, length);
  }
  const dest = host.qp(wqe.remoteQpn);
  // A Q_Key with its top bit set means "use the sender's own Q_Key".
  const qkey = (wqe.remoteQkey & 0x8000_0000) !== 0 ? qp.qkey : wqe.remoteQkey;
  if (
    dest === undefined || dest.qp.qpType !== "UD" || !canReceive(dest.qp) ||
    dest.qp.qkey !== qkey
  ) {
    counters.add("udDropped");
    return done(WcStatus.SUCCESS, length);
  }
  counters.add("localOps");
  const recv = takeRecv(dest.guest, dest.qp);
  if (recv === undefined) {
    counters.add("udDropped");
    return done(WcStatus.SUCCESS, length);
  }
  if (recv.error !== null || !resolveLocal(host, dest.guest, dest.qp, recv.wqe, true, remote)) {
    completeRecv(dest.guest, dest.qp, recv.wqe, {
      status: WcStatus.LOC_PROT_ERR,
      byteLen: 0,
      srcQp: qp.qpNum,
    }, counters);
    return done(WcStatus.SUCCESS, length);
  }
  if (remote.total < GRH_BYTES + length) {
    completeRecv(dest.guest, dest.qp, recv.wqe, {
      status: WcStatus.LOC_LEN_ERR,
      byteLen: 0,
      srcQp: qp.qpNum,
    }, counters);
    return done(WcStatus.SUCCESS, length);
  }
  buildGrh(grh, {
    srcIp: host.ip,
    dstIp: host.ip,
    payloadBytes: length,
    immediate: wqe.opcode === WrOpcode.SEND_WITH_IMM,
  });
  // The GRH goes in front of the payload: copy it through the same views.
  const withGrh = new SgeViews();
  withGrh.push(grh);
  for (let i = 0; i < local.count; i++) withGrh.push(local.views[i]!);
  const n = copyViews(withGrh, remote);
  counters.add("localBytes", length);
  completeRecv(dest.guest, dest.qp, recv.wqe, {
    status: WcStatus.SUCCESS,
    byteLen: n,
    srcQp: qp.qpNum,
    imm: wqe.opcode === WrOpcode.SEND_WITH_IMM ? wqe.immData : undefined,
    grh: true,
    solicited: (wqe.flags & SendFlags.SOLICITED) !== 0,
  }, counters);
  return done(WcStatus.SUCCESS, length);
}
