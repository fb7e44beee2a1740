/**
 * Shared receive queues (`ibv_create_srq`, `ibv_post_srq_recv`): one pool
 * of receive WRs that several QPs take from.
 *
 * @module
 */

import { Op } from "../protocol/device_interface.ts";
import { wqeSlotBytes } from "../protocol/verbs.ts";
import { VerbsError } from "./errors.ts";
import type { Pd } from "./pd.ts";
import type { RecvWr, SrqInit, VerbsDevice } from "./types.ts";
import { postReceives, ringEntries, WorkQueue } from "./work_queue.ts";

function checkInt(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    throw new VerbsError("EINVAL", `${name} ${String(value)} is not an integer in ${min}..${max}`);
  }
  return value;
}

/**
 * A shared receive queue. Make one with `pd.createSrq` and give it to
 * `pd.createQp({ srq, ... })`.
 *
 * @example
 * ```ts ignore
 * const srq = await pd.createSrq({ maxWr: 256, maxSge: 1 });
 * srq.postRecv({ wrId: 1n, sgList: [{ addr: mr.addr, length: 4096, lkey: mr.lkey }] });
 * ```
 */
export class Srq {
  /** Handle (per guest). */
  readonly handle: number;
  /** The protection domain it belongs to. */
  readonly pd: Pd;
  /** Outstanding receive WRs it holds. */
  readonly maxWr: number;
  /** SGEs per receive WR. */
  readonly maxSge: number;
  /** Doorbell queue id of its ring. */
  readonly queueId: number;
  readonly #dev: VerbsDevice;
  readonly #wq: WorkQueue;
  readonly #what: string;
  #destroyed = false;
  #destroying: Promise<void> | null = null;

  /** @internal use `pd.createSrq`. */
  constructor(
    dev: VerbsDevice,
    parts: {
      handle: number;
      pd: Pd;
      maxWr: number;
      maxSge: number;
      queueId: number;
      wq: WorkQueue;
    },
  ) {
    this.#dev = dev;
    this.handle = parts.handle;
    this.pd = parts.pd;
    this.maxWr = parts.maxWr;
    this.maxSge = parts.maxSge;
    this.queueId = parts.queueId;
    this.#wq = parts.wq;
    this.#what = `SRQ ${parts.handle}`;
  }

  /** @internal CREATE_SRQ on `pd`: places the ring and its WQE slots, then asks the device. */
  static async create(dev: VerbsDevice, pd: Pd, init: SrqInit): Promise<Srq> {
    dev.checkUsable();
    const maxWr = checkInt("maxWr", init?.maxWr, 1, dev.attr.maxSrqWr);
    const maxSge = checkInt("maxSge", init?.maxSge, 1, dev.attr.maxSrqSge);
    const wq = WorkQueue.create(
      dev,
      { entries: ringEntries(maxWr), slotBytes: wqeSlotBytes(maxSge), writable: false },
      "SRQ",
    );
    let result: Record<string, unknown>;
    try {
      result = await dev.command(Op.CREATE_SRQ, {
        pd: pd.handle,
        maxWr,
        maxSge,
        srqLimit: init.srqLimit,
        ring: wq.ring,
      });
    } catch (e) {
      wq.release();
      throw e;
    }
    // The device may grant more than asked; what the ring and slots hold is the limit.
    return new Srq(dev, {
      handle: result.srq as number,
      pd,
      maxWr: Math.min(result.maxWr as number, wq.size),
      maxSge: Math.min(result.maxSge as number, maxSge),
      queueId: result.queue as number,
      wq,
    });
  }

  /** @internal the device it belongs to. */
  get device(): VerbsDevice {
    return this.#dev;
  }

  /** @internal its ring, for the CQs of the QPs that take from it. */
  get workQueue(): WorkQueue {
    return this.#wq;
  }

  /** True once {@linkcode Srq.destroy} succeeded. */
  get destroyed(): boolean {
    return this.#destroyed;
  }

  #usable(): void {
    this.#dev.checkUsable();
    if (this.#destroyed) throw new VerbsError("EINVAL", `${this.#what} was destroyed`);
  }

  /**
   * Posts receive WRs (`ibv_post_srq_recv`). Throws a `VerbsError` naming the
   * first bad WR (EINVAL: too many SGEs, a bad field; ENOMEM: the SRQ is
   * full); the WRs before it are posted, none from it on.
   */
  postRecv(wr: RecvWr | readonly RecvWr[]): void {
    this.#usable();
    const list = (Array.isArray(wr) ? wr : [wr]) as readonly RecvWr[];
    if (list.length === 0) return;
    postReceives(this.#wq, list, {
      maxSge: this.maxSge,
      maxWr: this.maxWr,
      what: this.#what,
      capName: "maxSge",
      ring: () => this.#dev.ring(this.queueId),
    });
  }

  /**
   * Changes the SRQ (`ibv_modify_srq`): `srqLimit` arms SRQ_LIMIT_REACHED
   * (an async event when fewer WRs remain); resizing with `maxWr` is
   * EOPNOTSUPP.
   */
  async modify(attr: { srqLimit?: number; maxWr?: number }): Promise<void> {
    this.#usable();
    await this.#dev.command(Op.MODIFY_SRQ, {
      srq: this.handle,
      srqLimit: attr?.srqLimit,
      maxWr: attr?.maxWr,
    });
  }

  /** Destroys the SRQ (`ibv_destroy_srq`); EBUSY while a QP uses it. A second call does nothing. */
  destroy(): Promise<void> {
    if (this.#destroyed) return Promise.resolve();
    this.#destroying ??= this.#destroy().finally(() => this.#destroying = null);
    return this.#destroying;
  }

  async #destroy(): Promise<void> {
    this.#dev.checkUsable();
    await this.#dev.command(Op.DESTROY_SRQ, { srq: this.handle });
    this.#destroyed = true;
    this.#wq.release();
  }

  /** `await using`: destroys it, unless the device is already gone (which freed it). */
  [Symbol.asyncDispose](): Promise<void> {
    if (this.#destroyed || this.#dev.error !== null) return Promise.resolve();
    return this.destroy();
  }
}
