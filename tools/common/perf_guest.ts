/**
 * One side's verbs resources for a perf test, through the public API only:
 * a device on a backend's socket, a PD, one buffer registered for local
 * and remote access, a send CQ, a receive CQ and an RC QP, brought to RTS
 * against the peer's key message as perftest's `ctx_connect` does.
 *
 * The buffer holds three areas of {@linkcode PerfGuest.areaBytes} each (the
 * last 4 KiB longer):
 *
 * - `out`: what this side's WRITEs and SENDs carry, and where its READs land;
 * - `in`: what the peer reaches (its WRITE target, its READ source, its
 *   atomic counter in the first 8 bytes) and where SENDs are received; its
 *   address and rkey go into the key message;
 * - `scratch`: atomic results and the read-back of `--check`.
 *
 * @module
 */

import {
  Access,
  type Cq,
  type Device,
  type GuestBuffer,
  type Mr,
  openDevice,
  type Qp,
} from "../../mod.ts";
import { formatGid, mtuToEnum, parseGid } from "../../protocol/device_config.ts";
import type { KeyMessage } from "./perf_wire.ts";

/** What a side needs. */
export interface GuestPlan {
  /** Bytes of each area (rounded up to 4 KiB, at least 4 KiB). */
  areaBytes: number;
  /** Send queue depth. */
  sqDepth: number;
  /** Receive queue depth. */
  rqDepth: number;
  /** Inline data the QP takes. */
  maxInline: number;
  /** GID index of this side's address. */
  gidIndex: number;
}

/** How perftest caps the outstanding reads it offers (`MAX_OUT_READ_HERMON`). */
const MAX_OUT_READS = 16;
/** Memory beyond the buffer for the QP's and CQs' rings and slots. */
const RING_MEMORY = 8 << 20;
/** What the scratch area has beyond a message: room for the atomic result before a read-back. */
const SCRATCH_EXTRA = 4096;

/** The access every perf buffer and QP grants: all of it (a `--check` read-back needs READ). */
const ACCESS = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ |
  Access.REMOTE_ATOMIC;

/** One side's resources. */
export class PerfGuest {
  /** The device. */
  readonly dev: Device;
  /** The buffer: out, in and scratch areas. */
  readonly buf: GuestBuffer;
  /** Its registration. */
  readonly mr: Mr;
  /** Send completions. */
  readonly sendCq: Cq;
  /** Receive completions. */
  readonly recvCq: Cq;
  /** The RC QP. */
  readonly qp: Qp;
  /** Bytes of each area. */
  readonly areaBytes: number;
  /** The plan it was built from. */
  readonly plan: GuestPlan;
  /** Outstanding reads this side accepts (and initiates at most). */
  readonly outReads: number;

  private constructor(
    parts: { dev: Device; buf: GuestBuffer; mr: Mr; sendCq: Cq; recvCq: Cq; qp: Qp },
    plan: GuestPlan,
  ) {
    this.dev = parts.dev;
    this.buf = parts.buf;
    this.mr = parts.mr;
    this.sendCq = parts.sendCq;
    this.recvCq = parts.recvCq;
    this.qp = parts.qp;
    this.areaBytes = plan.areaBytes;
    this.plan = plan;
    this.outReads = Math.min(
      parts.dev.attr.maxQpRdAtom,
      parts.dev.attr.maxQpInitRdAtom,
      MAX_OUT_READS,
    );
  }

  /** Opens a device on `socket` and builds the resources of `plan`. */
  static async open(socket: string, plan: GuestPlan): Promise<PerfGuest> {
    const areaBytes = Math.ceil(Math.max(plan.areaBytes, 4096) / 4096) * 4096;
    const p = { ...plan, areaBytes };
    const bufBytes = 3 * areaBytes + SCRATCH_EXTRA;
    const dev = await openDevice({ socket, memoryBytes: bufBytes + RING_MEMORY });
    try {
      dev.queryGid(1, p.gidIndex); // throws for an index past the table
      const pd = await dev.allocPd();
      const buf = dev.allocBuffer(bufBytes, 4096);
      const mr = await pd.regMr(buf, ACCESS);
      const sendCq = await dev.createCq({ cqe: p.sqDepth + 16 });
      const recvCq = await dev.createCq({ cqe: p.rqDepth + 16 });
      const qp = await pd.createQp({
        qpType: "RC",
        sendCq,
        recvCq,
        cap: {
          maxSendWr: p.sqDepth,
          maxRecvWr: p.rqDepth,
          maxSendSge: 1,
          maxRecvSge: 1,
          maxInlineData: p.maxInline,
        },
      });
      return new PerfGuest({ dev, buf, mr, sendCq, recvCq, qp }, p);
    } catch (e) {
      await dev.close();
      throw e;
    }
  }

  /** The area this side sends from and reads into. */
  get out(): Uint8Array {
    return this.buf.bytes.subarray(0, this.areaBytes);
  }

  /** The area the peer reaches. */
  get in(): Uint8Array {
    return this.buf.bytes.subarray(this.areaBytes, 2 * this.areaBytes);
  }

  /** The scratch area (atomic results, read-backs). */
  get scratch(): Uint8Array {
    return this.buf.bytes.subarray(2 * this.areaBytes);
  }

  /** Guest address of {@linkcode PerfGuest.out}. */
  get outAddr(): bigint {
    return this.buf.addr;
  }

  /** Guest address of {@linkcode PerfGuest.in}. */
  get inAddr(): bigint {
    return this.buf.addr + BigInt(this.areaBytes);
  }

  /** Guest address of {@linkcode PerfGuest.scratch}. */
  get scratchAddr(): bigint {
    return this.buf.addr + BigInt(2 * this.areaBytes);
  }

  /** The GID text of this side's address. */
  get gid(): string {
    return this.dev.queryGid(1, this.plan.gidIndex);
  }

  /** The port's active MTU in bytes. */
  get activeMtu(): number {
    return this.dev.queryPort(1).activeMtu;
  }

  /** This side's key message: QP, PSN, the `in` area's address and rkey, the GID. */
  keyMessage(): KeyMessage {
    return {
      lid: this.dev.queryPort(1).lid,
      outReads: this.outReads,
      qpn: this.qp.qpNum,
      psn: this.qp.psn,
      rkey: this.mr.rkey,
      vaddr: this.inAddr,
      gid: parseGid(this.gid),
      srqn: 0,
    };
  }

  /**
   * Brings the QP to RTS against `remote`: INIT (every remote access),
   * RTR (path MTU `mtu` bytes, the remote QPN and PSN, this side's outstanding
   * reads as target, RNR timer 12), RTS (this QP's PSN, timeout 14, 7
   * retries, infinite RNR retries, outstanding reads the peer accepts).
   */
  async connect(remote: KeyMessage, mtu: number): Promise<void> {
    mtuToEnum(mtu); // a RangeError for anything but an IB MTU
    await this.qp.modify({ qpState: "INIT", pkeyIndex: 0, portNum: 1, qpAccessFlags: ACCESS });
    await this.qp.modify({
      qpState: "RTR",
      pathMtu: mtu,
      destQpNum: remote.qpn,
      rqPsn: remote.psn,
      maxDestRdAtomic: this.outReads,
      minRnrTimer: 12,
      ahAttr: { dgid: formatGid(remote.gid), portNum: 1, sgidIndex: this.plan.gidIndex },
    });
    await this.qp.modify({
      qpState: "RTS",
      sqPsn: this.qp.psn,
      timeout: 14,
      retryCnt: 7,
      rnrRetry: 7,
      maxRdAtomic: Math.max(1, Math.min(remote.outReads, this.outReads)),
    });
  }

  /** Closes the device, which frees everything in it. */
  async close(): Promise<void> {
    await this.dev.close();
  }
}

/**
 * The pattern every side keeps in its `in` area for READs: one for all sizes
 * (a read_bw server is not told when the client moves to the next size).
 */
export const READ_PATTERN_SIZE = 0;

/** The byte pattern of `size`-byte messages: differs from one size to the next. */
export function patternByte(size: number, i: number): number {
  return (i * 13 + Math.clz32(size) * 37 + 11) & 0xff;
}

/** Fills `bytes` with the pattern of `size`. */
export function fillPattern(bytes: Uint8Array, size: number): void {
  for (let i = 0; i < bytes.length; i++) bytes[i] = patternByte(size, i);
}

/** The first index where `bytes` differs from the pattern of `size`, or -1. */
export function findMismatch(bytes: Uint8Array, size: number): number {
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== patternByte(size, i)) return i;
  return -1;
}
