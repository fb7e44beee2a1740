/**
 * Protection domains (`ibv_alloc_pd`): the scope MRs, QPs, SRQs and AHs are
 * created in. An lkey or rkey only works for QPs of the same PD.
 *
 * @module
 */

import { Op } from "../protocol/device_interface.ts";
import type { AhAttr } from "../protocol/verbs.ts";
import { Ah } from "./ah.ts";
import { VerbsError } from "./errors.ts";
import { Mr, type MrRange } from "./mr.ts";
import { Qp } from "./qp.ts";
import { Srq } from "./srq.ts";
import type { QpInit, SrqInit, VerbsDevice } from "./types.ts";

/**
 * A protection domain. Make one with `dev.allocPd`.
 *
 * @example
 * ```ts ignore
 * const pd = await dev.allocPd();
 * const mr = await pd.regMr(dev.allocBuffer(4096), Access.LOCAL_WRITE);
 * await mr.dereg();
 * await pd.dealloc();
 * ```
 */
export class Pd {
  /** Handle (per guest). */
  readonly handle: number;
  readonly #dev: VerbsDevice;
  #deallocated = false;
  #deallocating: Promise<void> | null = null;

  /** @internal use `dev.allocPd`. */
  constructor(dev: VerbsDevice, handle: number) {
    this.#dev = dev;
    this.handle = handle;
  }

  /** @internal ALLOC_PD. */
  static async alloc(dev: VerbsDevice): Promise<Pd> {
    dev.checkUsable();
    const result = await dev.command(Op.ALLOC_PD);
    return new Pd(dev, result.pd as number);
  }

  /** True once {@linkcode Pd.dealloc} succeeded. */
  get deallocated(): boolean {
    return this.#deallocated;
  }

  #usable(): void {
    this.#dev.checkUsable();
    if (this.#deallocated) throw new VerbsError("EINVAL", `PD ${this.handle} was deallocated`);
  }

  /**
   * Registers `range` (a `GuestBuffer`, or any `{addr, length}` in guest
   * memory) with `access` bits (`ibv_reg_mr`). The device refuses unknown
   * bits, REMOTE_WRITE or REMOTE_ATOMIC without LOCAL_WRITE (EINVAL) and
   * ranges outside guest memory (EFAULT).
   */
  async regMr(range: MrRange, access: number): Promise<Mr> {
    this.#usable();
    return await Mr.register(this.#dev, this, range, access);
  }

  /** Creates a queue pair in this PD (`ibv_create_qp`); it starts in RESET. */
  async createQp(init: QpInit): Promise<Qp> {
    this.#usable();
    return await Qp.create(this.#dev, this, init);
  }

  /** Creates a shared receive queue in this PD (`ibv_create_srq`). */
  async createSrq(init: SrqInit): Promise<Srq> {
    this.#usable();
    return await Srq.create(this.#dev, this, init);
  }

  /** Creates an address handle for UD sends (`ibv_create_ah`). */
  async createAh(attr: AhAttr): Promise<Ah> {
    this.#usable();
    return await Ah.create(this.#dev, this, attr);
  }

  /**
   * Deallocates the PD (`ibv_dealloc_pd`). Fails with EBUSY while MRs, QPs,
   * SRQs or AHs use it; nothing changes then. A second call does nothing.
   */
  dealloc(): Promise<void> {
    if (this.#deallocated) return Promise.resolve();
    this.#deallocating ??= this.#dealloc().finally(() => this.#deallocating = null);
    return this.#deallocating;
  }

  async #dealloc(): Promise<void> {
    this.#dev.checkUsable();
    await this.#dev.command(Op.DEALLOC_PD, { pd: this.handle });
    this.#deallocated = true;
  }

  /** `await using`: deallocates it, unless the device is already gone (which freed it). */
  [Symbol.asyncDispose](): Promise<void> {
    if (this.#deallocated || this.#dev.error !== null) return Promise.resolve();
    return this.dealloc();
  }
}
