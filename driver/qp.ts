/**
 * Queue pairs (`ibv_create_qp`, `ibv_modify_qp`, `ibv_post_send`,
 * `ibv_post_recv`).
 *
 * A QP owns two virtqueues with WQE slots: the SQ, and the RQ unless it
 * takes receives from an SRQ. Posting writes WQEs into slots, publishes the
 * ring once per call and rings the doorbell only when the device asks for
 * it. The device marks a WQE used when it retires the WR; the driver reaps
 * those when it polls the QP's CQs, or when a queue looks full.
 *
 * @module
 */

import { Op } from "../protocol/device_interface.ts";
import {
  Access,
  type QpAttr,
  type QpCap,
  type QpStateName,
  type QpType,
  wqeSlotBytes,
} from "../protocol/verbs.ts";
import { Cq } from "./cq.ts";
import { VerbsError } from "./errors.ts";
import type { Pd } from "./pd.ts";
import { Srq } from "./srq.ts";
import type {
  ConnectionInfo,
  ConnectOptions,
  QpInit,
  QpQueryResult,
  RecvWr,
  SendWr,
  VerbsDevice,
} from "./types.ts";
import { postedNote, postReceives, ringEntries, WorkQueue, wrIdNote } from "./work_queue.ts";
import { encodeSendWqe, type SendLimits, sendWrProblem } from "./wqe.ts";

/** Inline bytes per send WR the device accepts (the contract's limit; DeviceAttr has no field). */
export const MAX_INLINE_DATA = 256;

/** States in which `ibv_post_send` accepts WRs (ERR and SQE flush them). */
const SEND_STATES: ReadonlySet<QpStateName> = new Set(["RTS", "SQD", "SQE", "ERR"]);
const QP_TYPES: readonly QpType[] = ["RC", "UC", "UD"];
const PSN_MASK = 0xff_ffff;

/** The attributes `connect` uses, as `ibv_rc_pingpong` and rdma-core's tests do. */
const CONNECT = {
  accessFlags: Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC,
  maxDestRdAtomic: 16,
  minRnrTimer: 12,
  timeout: 14,
  retryCnt: 7,
  rnrRetry: 7,
  maxRdAtomic: 16,
} as const;

function checkInt(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    throw new VerbsError("EINVAL", `${name} ${String(value)} is not an integer in ${min}..${max}`);
  }
  return value;
}

/** Checks the requested capabilities against the device limits; they size the rings. */
function checkCap(dev: VerbsDevice, cap: unknown, withSrq: boolean): QpCap {
  if (cap === null || typeof cap !== "object") {
    throw new VerbsError("EINVAL", `cap must be an object, got ${String(cap)}`);
  }
  const c = cap as Record<string, unknown>;
  const { maxQpWr, maxSge } = dev.attr;
  return {
    maxSendWr: checkInt("cap.maxSendWr", c.maxSendWr, 1, maxQpWr),
    maxRecvWr: checkInt("cap.maxRecvWr", c.maxRecvWr ?? 0, withSrq ? 0 : 1, maxQpWr),
    maxSendSge: checkInt("cap.maxSendSge", c.maxSendSge ?? 0, 0, maxSge),
    maxRecvSge: checkInt("cap.maxRecvSge", c.maxRecvSge ?? 0, 0, maxSge),
    maxInlineData: checkInt("cap.maxInlineData", c.maxInlineData ?? 0, 0, MAX_INLINE_DATA),
  };
}

function checkCq(dev: VerbsDevice, name: string, cq: unknown): Cq {
  if (!(cq instanceof Cq) || cq.device !== dev) {
    throw new VerbsError("EINVAL", `${name} must be a CQ of this device, got ${String(cq)}`);
  }
  if (cq.destroyed) throw new VerbsError("EINVAL", `${name} (CQ ${cq.handle}) was destroyed`);
  return cq;
}

function checkSrq(dev: VerbsDevice, srq: unknown): Srq {
  if (!(srq instanceof Srq) || srq.device !== dev) {
    throw new VerbsError("EINVAL", `srq must be an SRQ of this device, got ${String(srq)}`);
  }
  if (srq.destroyed) throw new VerbsError("EINVAL", `srq (SRQ ${srq.handle}) was destroyed`);
  return srq;
}

/** A random 24-bit initial PSN, as `ibv_rc_pingpong` picks one. */
function randomPsn(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0]! & PSN_MASK;
}

/**
 * A queue pair. Make one with `pd.createQp`.
 *
 * @example
 * ```ts ignore
 * const qp = await pd.createQp({
 *   qpType: "RC", sendCq: cq, recvCq: cq,
 *   cap: { maxSendWr: 64, maxRecvWr: 64, maxSendSge: 1, maxRecvSge: 1, maxInlineData: 64 },
 * });
 * await qp.connect({ qpNum: remote.qpNum, psn: remote.psn, gid: remote.gid });
 * qp.postSend({ wrId: 1n, opcode: "SEND", sendFlags: SendFlags.SIGNALED, sgList });
 * ```
 */
export class Qp {
  /** Handle (per guest). */
  readonly handle: number;
  /** QP number (per host, 24 bits): what the peer sends to. */
  readonly qpNum: number;
  /** Transport. */
  readonly qpType: QpType;
  /** This side's initial PSN (random, 24 bits): `connect` sends from it; tell the peer. */
  readonly psn: number;
  /** The protection domain it belongs to. */
  readonly pd: Pd;
  /** CQ of its send completions. */
  readonly sendCq: Cq;
  /** CQ of its receive completions. */
  readonly recvCq: Cq;
  /** The SRQ it receives from, or null. */
  readonly srq: Srq | null;
  /** Capabilities in effect: what the device granted, within what the rings hold. */
  readonly cap: Readonly<QpCap>;
  /** Every send WR completes, SIGNALED or not. */
  readonly sqSigAll: boolean;
  readonly #dev: VerbsDevice;
  readonly #sq: WorkQueue;
  readonly #rq: WorkQueue | null;
  readonly #sqQueue: number;
  readonly #rqQueue: number;
  readonly #sendLimits: SendLimits;
  readonly #what: string;
  #state: QpStateName = "RESET";
  #destroyed = false;
  #destroying: Promise<void> | null = null;

  /** @internal use `pd.createQp`. */
  constructor(
    dev: VerbsDevice,
    parts: {
      handle: number;
      qpNum: number;
      qpType: QpType;
      pd: Pd;
      sendCq: Cq;
      recvCq: Cq;
      srq: Srq | null;
      cap: QpCap;
      sqSigAll: boolean;
      sq: WorkQueue;
      rq: WorkQueue | null;
      sqQueue: number;
      rqQueue: number;
    },
  ) {
    this.#dev = dev;
    this.handle = parts.handle;
    this.qpNum = parts.qpNum;
    this.qpType = parts.qpType;
    this.psn = randomPsn();
    this.pd = parts.pd;
    this.sendCq = parts.sendCq;
    this.recvCq = parts.recvCq;
    this.srq = parts.srq;
    this.cap = Object.freeze({ ...parts.cap });
    this.sqSigAll = parts.sqSigAll;
    this.#sq = parts.sq;
    this.#rq = parts.rq;
    this.#sqQueue = parts.sqQueue;
    this.#rqQueue = parts.rqQueue;
    this.#what = `QP 0x${parts.qpNum.toString(16)}`;
    this.#sendLimits = {
      qpType: parts.qpType,
      maxSge: this.cap.maxSendSge,
      maxInline: this.cap.maxInlineData,
      mem: dev.memory,
    };
    this.sendCq.attach(this.#sq, `${this.#what} SQ`);
    const receives = this.#rq ?? this.srq!.workQueue;
    this.recvCq.attach(receives, this.#rq ? `${this.#what} RQ` : `SRQ ${this.srq!.handle}`);
  }

  /**
   * @internal CREATE_QP on `pd`: places the SQ (and RQ) rings with WQE slots
   * sized for the requested capabilities, then asks the device.
   */
  static async create(dev: VerbsDevice, pd: Pd, init: QpInit): Promise<Qp> {
    dev.checkUsable();
    if (init === null || typeof init !== "object") {
      throw new VerbsError("EINVAL", `createQp needs { qpType, sendCq, recvCq, cap }, got ${init}`);
    }
    if (!QP_TYPES.includes(init.qpType)) {
      throw new VerbsError("EINVAL", `qpType ${String(init.qpType)} is not one of RC, UC, UD`);
    }
    const sendCq = checkCq(dev, "sendCq", init.sendCq);
    const recvCq = checkCq(dev, "recvCq", init.recvCq);
    const srq = init.srq === undefined ? null : checkSrq(dev, init.srq);
    const cap = checkCap(dev, init.cap, srq !== null);
    const sq = WorkQueue.create(dev, {
      entries: ringEntries(cap.maxSendWr),
      slotBytes: wqeSlotBytes(cap.maxSendSge, cap.maxInlineData),
      writable: false,
    }, "SQ");
    let rq: WorkQueue | null = null;
    let result: Record<string, unknown>;
    try {
      if (srq === null) {
        rq = WorkQueue.create(dev, {
          entries: ringEntries(cap.maxRecvWr),
          slotBytes: wqeSlotBytes(cap.maxRecvSge),
          writable: false,
        }, "RQ");
      }
      result = await dev.command(Op.CREATE_QP, {
        pd: pd.handle,
        qpType: init.qpType,
        sendCq: sendCq.handle,
        recvCq: recvCq.handle,
        srq: srq?.handle,
        cap,
        sqSigAll: init.sqSigAll,
        sq: sq.ring,
        rq: rq?.ring,
      });
    } catch (e) {
      sq.release();
      rq?.release();
      throw e;
    }
    // The device may grant more than asked: the limits are what it granted
    // within what the rings and slots were sized for.
    const granted = result.cap as QpCap;
    return new Qp(dev, {
      handle: result.qp as number,
      qpNum: result.qpNum as number,
      qpType: init.qpType,
      pd,
      sendCq,
      recvCq,
      srq,
      cap: {
        maxSendWr: Math.min(granted.maxSendWr, sq.size),
        maxRecvWr: rq === null ? 0 : Math.min(granted.maxRecvWr, rq.size),
        maxSendSge: Math.min(granted.maxSendSge, cap.maxSendSge),
        maxRecvSge: Math.min(granted.maxRecvSge, cap.maxRecvSge),
        maxInlineData: Math.min(granted.maxInlineData, cap.maxInlineData),
      },
      sqSigAll: init.sqSigAll === true,
      sq,
      rq,
      sqQueue: result.sqQueue as number,
      rqQueue: (result.rqQueue as number | undefined) ?? -1,
    });
  }

  /**
   * The state as this driver last knew it: set by successful
   * {@linkcode Qp.modify} and {@linkcode Qp.query} calls. The device may
   * since have moved the QP to ERR on its own (an async event says so).
   */
  get state(): QpStateName {
    return this.#state;
  }

  /** True once {@linkcode Qp.destroy} succeeded. */
  get destroyed(): boolean {
    return this.#destroyed;
  }

  #usable(): void {
    this.#dev.checkUsable();
    if (this.#destroyed) throw new VerbsError("EINVAL", `${this.#what} was destroyed`);
  }

  /**
   * Posts send WRs (`ibv_post_send`). Checks each WR as ibverbs does and
   * throws a `VerbsError` naming the first bad one: EINVAL for a state that
   * takes no sends (RESET, INIT, RTR), an opcode the QP type does not allow,
   * too many SGEs, inline data too long, a misaligned or malformed atomic, a
   * missing `rdma`/`atomic`/`ud`/`immData`; ENOMEM when the SQ is full. The
   * WRs before the bad one are posted, none from it on.
   */
  postSend(wr: SendWr | readonly SendWr[]): void {
    this.#usable();
    const list = (Array.isArray(wr) ? wr : [wr]) as readonly SendWr[];
    if (list.length === 0) return;
    if (!SEND_STATES.has(this.#state)) {
      throw new VerbsError(
        "EINVAL",
        `postSend wr[0]${wrIdNote(list[0])}: ${this.#what} is in state ${this.#state}; ` +
          `sends need RTS, SQD, SQE or ERR${postedNote(0)}`,
      );
    }
    const sq = this.#sq;
    const limits = this.#sendLimits;
    const max = this.cap.maxSendWr;
    const encode = { offset: 0, mem: this.#dev.memory, ud: this.qpType === "UD" };
    let error: unknown = null;
    let posted = 0;
    for (let i = 0; i < list.length; i++) {
      const w = list[i]!;
      const problem = sendWrProblem(w, limits);
      if (problem !== null) {
        error = new VerbsError(
          "EINVAL",
          `postSend wr[${i}]${wrIdNote(w)}: ${problem}${postedNote(i)}`,
        );
        break;
      }
      try {
        if (sq.outstanding >= max) sq.reap(`${this.#what} SQ`);
      } catch (e) {
        error = e;
        break;
      }
      if (sq.outstanding >= max) {
        error = new VerbsError(
          "ENOMEM",
          `postSend wr[${i}]${wrIdNote(w)}: ${this.#what} send queue is full: ` +
            `${sq.outstanding} WRs outstanding (maxSendWr ${max})${postedNote(i)}`,
        );
        break;
      }
      encode.offset = sq.nextSlot();
      sq.post(encodeSendWqe(sq.slots, w, encode));
      posted++;
    }
    if (posted > 0 && sq.publish()) this.#dev.ring(this.#sqQueue);
    if (error !== null) throw error;
  }

  /**
   * Posts receive WRs (`ibv_post_recv`). Throws a `VerbsError` naming the
   * first bad WR: EINVAL in RESET, on a QP that receives from an SRQ, for too
   * many SGEs or a bad field; ENOMEM when the RQ is full. The WRs before the
   * bad one are posted, none from it on.
   */
  postRecv(wr: RecvWr | readonly RecvWr[]): void {
    this.#usable();
    const list = (Array.isArray(wr) ? wr : [wr]) as readonly RecvWr[];
    if (list.length === 0) return;
    const rq = this.#rq;
    if (rq === null) {
      throw new VerbsError(
        "EINVAL",
        `postRecv wr[0]${wrIdNote(list[0])}: ${this.#what} receives from SRQ ${
          this.srq!.handle
        }; ` +
          `post to the SRQ${postedNote(0)}`,
      );
    }
    if (this.#state === "RESET") {
      throw new VerbsError(
        "EINVAL",
        `postRecv wr[0]${wrIdNote(list[0])}: ${this.#what} is in state RESET; ` +
          `receives need INIT or later${postedNote(0)}`,
      );
    }
    postReceives(rq, list, {
      maxSge: this.cap.maxRecvSge,
      maxWr: this.cap.maxRecvWr,
      what: `${this.#what} RQ`,
      capName: "maxRecvSge",
      ring: () => this.#dev.ring(this.#rqQueue),
    });
  }

  /**
   * Changes the QP (`ibv_modify_qp`): sends MODIFY_QP with exactly the keys
   * of `attr` that hold a value. The device checks the transition and its
   * attributes (EINVAL naming what was wrong; nothing changes then). On
   * success the local state follows `attr.qpState`.
   */
  async modify(attr: QpAttr): Promise<void> {
    this.#usable();
    if (attr === null || typeof attr !== "object") {
      throw new VerbsError("EINVAL", `modify needs an attribute object, got ${String(attr)}`);
    }
    const given: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(attr)) if (value !== undefined) given[key] = value;
    await this.#dev.command(Op.MODIFY_QP, { qp: this.handle, attr: given });
    if (attr.qpState === undefined) return;
    this.#state = attr.qpState;
    // RESET empties the queues without completions: take the WQEs the device
    // returned, so their slots are free again.
    if (attr.qpState === "RESET" && this.#dev.error === null) this.#reapOwn();
  }

  #reapOwn(): void {
    try {
      this.#sq.reap(`${this.#what} SQ`);
      this.#rq?.reap(`${this.#what} RQ`);
    } catch {
      // The transition happened; a ring the device broke is reported by the
      // next post, which reaps again, rather than as a failed modify.
    }
  }

  /**
   * Brings an RC or UC QP to RTS against `remote` with the usual attributes
   * (as `ibv_rc_pingpong`): INIT (port 1, pkey index 0, remote write, read
   * and atomic access), RTR (the port's active MTU, the remote QPN and PSN,
   * 16 outstanding reads as target, RNR timer 12, the remote GID), RTS (this
   * QP's {@linkcode Qp.psn}, timeout 14, retry 7, RNR retry 7, 16
   * outstanding reads). Steps the QP already took are skipped. UD QPs have no
   * remote: bring them up with {@linkcode Qp.modify}. `options` overrides any
   * of those attributes; each is checked by the transition that takes it,
   * with that transition's error.
   */
  async connect(remote: ConnectionInfo, options: ConnectOptions = {}): Promise<void> {
    this.#usable();
    if (this.qpType === "UD") {
      throw new VerbsError(
        "EINVAL",
        `${this.#what} is UD: connect is for RC and UC; use modify (INIT with qkey, RTR, RTS)`,
      );
    }
    checkInt("remote qpNum", remote?.qpNum, 0, PSN_MASK);
    checkInt("remote psn", remote?.psn, 0, PSN_MASK);
    if (typeof remote.gid !== "string") {
      throw new VerbsError("EINVAL", `remote gid ${String(remote.gid)} is not GID text`);
    }
    const rc = this.qpType === "RC";
    // Each attribute as given, or the usual one (undefined counts as not given).
    const o = (key: keyof typeof CONNECT): number => options[key] ?? CONNECT[key];
    if (this.#state === "RESET") {
      await this.modify({
        qpState: "INIT",
        pkeyIndex: 0,
        portNum: 1,
        qpAccessFlags: o("accessFlags"),
      });
    }
    if (this.#state === "INIT") {
      await this.modify({
        qpState: "RTR",
        pathMtu: options.pathMtu ?? this.#dev.queryPort(1).activeMtu,
        destQpNum: remote.qpNum,
        rqPsn: remote.psn,
        ahAttr: { dgid: remote.gid, portNum: 1 },
        ...(rc ? { maxDestRdAtomic: o("maxDestRdAtomic"), minRnrTimer: o("minRnrTimer") } : {}),
      });
    }
    if (this.#state === "RTR") {
      await this.modify({
        qpState: "RTS",
        sqPsn: options.sqPsn ?? this.psn,
        ...(rc
          ? {
            timeout: o("timeout"),
            retryCnt: o("retryCnt"),
            rnrRetry: o("rnrRetry"),
            maxRdAtomic: o("maxRdAtomic"),
          }
          : {}),
      });
      return;
    }
    throw new VerbsError(
      "EINVAL",
      `${this.#what} is in state ${this.#state}; connect starts from RESET, INIT or RTR`,
    );
  }

  /** Reads the QP's state and every attribute from the device (`ibv_query_qp`). */
  async query(): Promise<QpQueryResult> {
    this.#usable();
    const r = await this.#dev.command(Op.QUERY_QP, { qp: this.handle });
    const result: QpQueryResult = {
      state: r.state as QpStateName,
      qpType: r.qpType as QpType,
      qpNum: r.qpNum as number,
      attr: r.attr as QpAttr,
      cap: r.cap as QpCap,
      sqSigAll: r.sqSigAll as boolean,
    };
    this.#state = result.state;
    return result;
  }

  /** Destroys the QP (`ibv_destroy_qp`) and frees its rings. A second call does nothing. */
  destroy(): Promise<void> {
    if (this.#destroyed) return Promise.resolve();
    this.#destroying ??= this.#destroy().finally(() => this.#destroying = null);
    return this.#destroying;
  }

  async #destroy(): Promise<void> {
    this.#dev.checkUsable();
    await this.#dev.command(Op.DESTROY_QP, { qp: this.handle });
    this.#destroyed = true;
    this.sendCq.detach(this.#sq);
    this.recvCq.detach(this.#rq ?? this.srq!.workQueue);
    this.#sq.release();
    this.#rq?.release();
  }

  /** `await using`: destroys it, unless the device is already gone (which freed it). */
  [Symbol.asyncDispose](): Promise<void> {
    if (this.#destroyed || this.#dev.error !== null) return Promise.resolve();
    return this.destroy();
  }
}
