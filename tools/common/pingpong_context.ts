/**
 * The verbs resources of one pingpong side, set up as rdma-core's
 * `pp_init_ctx` does: one buffer filled with 0x7b and registered for local
 * write, one CQ of `rx_depth + 1` entries for both queues, one QP (RC, or UD
 * with Q_Key 0x11111111) with one send WR and `rx_depth` receive WRs, moved
 * to INIT. Sends and receives use the same buffer; UD receives land 40 bytes
 * (the GRH) before the data, and UD sends start there.
 *
 * @module
 */

import {
  Access,
  type Ah,
  type Cq,
  type Device,
  type GuestBuffer,
  MAX_INLINE_DATA,
  type Mr,
  type Pd,
  type Qp,
  type RecvWr,
  SendFlags,
  type SendWr,
} from "../../mod.ts";
import { formatGid, parseGid } from "../../protocol/device_config.ts";
import { openNamedDevice } from "./devinfo_device.ts";
import type { PingpongOptions } from "./pingpong_args.ts";
import { FILL_BYTE } from "./pingpong_check.ts";
import { isNullGid, type PingpongDest } from "./pingpong_wire.ts";

/** wr_id of every receive (`PINGPONG_RECV_WRID`). */
export const RECV_WRID = 1;
/** wr_id of every send (`PINGPONG_SEND_WRID`). */
export const SEND_WRID = 2;
/** The Q_Key both UD sides use, as ibv_ud_pingpong. */
export const UD_QKEY = 0x11111111;
/** Bytes of the GRH at the start of every UD receive buffer. */
export const GRH_BYTES = 40;

/** A setup step failed; the message is the line rdma-core prints for it (plus why). */
export class PingpongError extends Error {
  /** Names the class in stack traces. */
  override name = "PingpongError";
}

function because(line: string, e: unknown): PingpongError {
  return new PingpongError(`${line}: ${(e as Error).message}`, { cause: e });
}

/** One side's device, PD, buffer, MR, CQ and QP. */
export class PingpongContext {
  /** The device. */
  readonly dev: Device;
  /** The QP. */
  readonly qp: Qp;
  /** The one CQ of both queues. */
  readonly cq: Cq;
  /** Message bytes (the part after the GRH on UD). */
  readonly message: Uint8Array;
  readonly #pd: Pd;
  readonly #mr: Mr;
  readonly #buf: GuestBuffer;
  readonly #o: PingpongOptions;
  readonly #recvWrs: RecvWr[];
  readonly #sendWr: SendWr;
  #ah: Ah | null = null;

  private constructor(
    parts: { dev: Device; pd: Pd; mr: Mr; buf: GuestBuffer; cq: Cq; qp: Qp },
    o: PingpongOptions,
  ) {
    this.dev = parts.dev;
    this.#pd = parts.pd;
    this.#mr = parts.mr;
    this.#buf = parts.buf;
    this.cq = parts.cq;
    this.qp = parts.qp;
    this.#o = o;
    const offset = o.ud ? GRH_BYTES : 0;
    this.message = parts.buf.bytes.subarray(offset, offset + o.size);
    const recv: RecvWr = {
      wrId: BigInt(RECV_WRID),
      sgList: [{ addr: parts.buf.addr, length: parts.buf.length, lkey: parts.mr.lkey }],
    };
    this.#recvWrs = Array.from({ length: o.rxDepth }, () => recv);
    this.#sendWr = {
      wrId: BigInt(SEND_WRID),
      opcode: "SEND",
      // rdma-core sends inline whenever the QP's max_inline_data covers the message.
      sendFlags: SendFlags.SIGNALED | (o.size <= MAX_INLINE_DATA ? SendFlags.INLINE : 0),
      sgList: [{ addr: parts.buf.addr + BigInt(offset), length: o.size, lkey: parts.mr.lkey }],
    };
  }

  /**
   * Opens the device on `o.socket` and builds everything up to INIT. Throws
   * a {@linkcode PingpongError} (or the device lookup's error) naming the
   * step that failed, closing what it opened.
   */
  static async open(o: PingpongOptions): Promise<PingpongContext> {
    const bytes = o.size + (o.ud ? GRH_BYTES : 0);
    const dev = await openNamedDevice(o.socket, {
      wanted: o.ibDev,
      memoryBytes: Math.ceil(bytes / 4096) * 4096 + (8 << 20),
    });
    try {
      return await PingpongContext.#build(dev, o, bytes);
    } catch (e) {
      await dev.close();
      throw e;
    }
  }

  static async #build(dev: Device, o: PingpongOptions, bytes: number): Promise<PingpongContext> {
    let port;
    try {
      port = dev.queryPort(o.ibPort);
    } catch (e) {
      throw because(`Unable to query port info for port ${o.ibPort}`, e);
    }
    if (o.ud && o.size > port.activeMtu) {
      throw new PingpongError(`Requested size larger than port MTU (${port.activeMtu})`);
    }
    let buf: GuestBuffer;
    try {
      buf = dev.allocBuffer(bytes, 4096);
    } catch (e) {
      throw because("Couldn't allocate work buf.", e);
    }
    buf.bytes.fill(FILL_BYTE);
    const step = async <T>(line: string, f: () => Promise<T>): Promise<T> => {
      try {
        return await f();
      } catch (e) {
        throw because(line, e);
      }
    };
    const pd = await step("Couldn't allocate PD", () => dev.allocPd());
    const mr = await step("Couldn't register MR", () => pd.regMr(buf, Access.LOCAL_WRITE));
    const cq = await step("Couldn't create CQ", () => dev.createCq({ cqe: o.rxDepth + 1 }));
    const qp = await step("Couldn't create QP", () =>
      pd.createQp({
        qpType: o.ud ? "UD" : "RC",
        sendCq: cq,
        recvCq: cq,
        cap: {
          maxSendWr: 1,
          maxRecvWr: o.rxDepth,
          maxSendSge: 1,
          maxRecvSge: 1,
          maxInlineData: MAX_INLINE_DATA,
        },
      }));
    await step("Failed to modify QP to INIT", () =>
      qp.modify(
        o.ud
          ? { qpState: "INIT", pkeyIndex: 0, portNum: o.ibPort, qkey: UD_QKEY }
          : { qpState: "INIT", pkeyIndex: 0, portNum: o.ibPort, qpAccessFlags: 0 },
      ));
    return new PingpongContext({ dev, pd, mr, buf, cq, qp }, o);
  }

  /**
   * This side's address: LID from the port, the QPN, the QP's initial PSN
   * and GID `gidIdx` of the port. Throws a {@linkcode PingpongError} for a
   * GID index past the table, worded as the tool rdma-core runs.
   */
  localDest(): PingpongDest {
    const o = this.#o;
    let gid: string;
    try {
      gid = this.dev.queryGid(o.ibPort, o.gidIdx);
    } catch (e) {
      throw because(
        o.ud
          ? `Could not get local gid for gid index ${o.gidIdx}`
          : `can't read sgid of index ${o.gidIdx}`,
        e,
      );
    }
    return {
      lid: this.dev.queryPort(o.ibPort).lid,
      qpn: this.qp.qpNum,
      psn: this.qp.psn,
      gid: parseGid(gid),
    };
  }

  /** Posts `n` receives of the whole buffer; returns how many went in (as `pp_post_recv`). */
  postRecv(n: number): number {
    if (n <= 0) return 0;
    try {
      this.qp.postRecv(n === this.#recvWrs.length ? this.#recvWrs : this.#recvWrs.slice(0, n));
      return n;
    } catch (e) {
      // The API posts nothing from the first bad WR on and names it: wr[k].
      const k = /wr\[(\d+)\]/.exec((e as Error).message)?.[1];
      return k === undefined ? 0 : Number(k);
    }
  }

  /** Posts the one SEND of the message (to the peer's QPN on UD). */
  postSend(remoteQpn: number): void {
    if (this.#o.ud) {
      if (this.#ah === null) throw new PingpongError("Couldn't post send: no address handle");
      this.#sendWr.ud = { ah: this.#ah, remoteQpn, remoteQkey: UD_QKEY };
    }
    this.qp.postSend(this.#sendWr);
  }

  /**
   * Brings the QP up against `remote` as `pp_connect_ctx`: RC to RTR (path
   * MTU, remote QPN and PSN, one outstanding read, RNR timer 12, the remote
   * GID) then RTS (timeout 14, retry 7, RNR retry 7, this side's PSN); UD to
   * RTR and RTS, then an address handle for the remote GID. Throws a
   * {@linkcode PingpongError} with rdma-core's line for the step that failed.
   */
  async connect(remote: PingpongDest): Promise<void> {
    const o = this.#o;
    // rdma-core leaves out the GRH when the peer's GID is zero; RoCE cannot route without one.
    const noGid = isNullGid(remote.gid)
      ? new Error(
        `the peer's GID ${formatGid(remote.gid)} is null, so rdma-core would send no GRH, ` +
          `which RoCE needs: run the peer with -g <gid index>`,
      )
      : null;
    const ahAttr = {
      dgid: formatGid(remote.gid),
      portNum: o.ibPort,
      sl: o.sl,
      sgidIndex: o.gidIdx,
    };
    if (o.ud) {
      await this.#modify("RTR", { qpState: "RTR" });
      await this.#modify("RTS", { qpState: "RTS", sqPsn: this.qp.psn });
      if (noGid) throw because("Failed to create AH", noGid);
      try {
        this.#ah = await this.#pd.createAh(ahAttr);
      } catch (e) {
        throw because("Failed to create AH", e);
      }
      return;
    }
    if (noGid) throw because("Failed to modify QP to RTR", noGid);
    await this.#modify("RTR", {
      qpState: "RTR",
      pathMtu: o.mtu,
      destQpNum: remote.qpn,
      rqPsn: remote.psn,
      maxDestRdAtomic: 1,
      minRnrTimer: 12,
      ahAttr,
    });
    await this.#modify("RTS", {
      qpState: "RTS",
      timeout: 14,
      retryCnt: 7,
      rnrRetry: 7,
      sqPsn: this.qp.psn,
      maxRdAtomic: 1,
    });
  }

  async #modify(state: string, attr: Parameters<Qp["modify"]>[0]): Promise<void> {
    try {
      await this.qp.modify(attr);
    } catch (e) {
      throw because(`Failed to modify QP to ${state}`, e);
    }
  }

  /** Closes the device, which frees every resource in it. */
  async close(): Promise<void> {
    await this.dev.close();
  }
}
