/**
 * Memory regions (`ibv_reg_mr`): guest memory the device may access with
 * the region's keys.
 *
 * @module
 */

import { Op } from "../protocol/device_interface.ts";
import { VerbsError } from "./errors.ts";
import type { Pd } from "./pd.ts";
import type { VerbsDevice } from "./types.ts";

/** A guest memory range to register, such as a `GuestBuffer`. */
export interface MrRange {
  /** Guest address of the first byte. */
  readonly addr: bigint;
  /** Bytes. */
  readonly length: number;
}

/**
 * A registered memory region. Make one with `pd.regMr`.
 *
 * @example
 * ```ts ignore
 * const buf = dev.allocBuffer(4096);
 * const mr = await pd.regMr(buf, Access.LOCAL_WRITE | Access.REMOTE_WRITE);
 * qp.postRecv({ wrId: 1n, sgList: [{ addr: mr.addr, length: mr.length, lkey: mr.lkey }] });
 * await mr.dereg();
 * ```
 */
export class Mr {
  /** Handle (per guest). */
  readonly handle: number;
  /** The protection domain it belongs to. */
  readonly pd: Pd;
  /** Guest address of the first byte. */
  readonly addr: bigint;
  /** Bytes. */
  readonly length: number;
  /** `Access` bits it was registered with. */
  readonly access: number;
  /** Local key: goes into SGEs. */
  readonly lkey: number;
  /** Remote key: the peer puts it into RDMA and atomic WRs. */
  readonly rkey: number;
  readonly #dev: VerbsDevice;
  #deregistered = false;
  #deregistering: Promise<void> | null = null;

  /** @internal use `pd.regMr`. */
  constructor(
    dev: VerbsDevice,
    parts: {
      handle: number;
      pd: Pd;
      addr: bigint;
      length: number;
      access: number;
      lkey: number;
      rkey: number;
    },
  ) {
    this.#dev = dev;
    this.handle = parts.handle;
    this.pd = parts.pd;
    this.addr = parts.addr;
    this.length = parts.length;
    this.access = parts.access;
    this.lkey = parts.lkey;
    this.rkey = parts.rkey;
  }

  /** @internal REG_MR on `pd`. */
  static async register(dev: VerbsDevice, pd: Pd, range: MrRange, access: number): Promise<Mr> {
    dev.checkUsable();
    if (range === null || typeof range !== "object" || typeof range.addr !== "bigint") {
      throw new VerbsError(
        "EINVAL",
        `regMr needs a buffer { addr: bigint, length }, got addr ${String(range?.addr)}`,
      );
    }
    const { addr, length } = range;
    // Guest addresses travel as numbers; one too large for that is not guest
    // memory, and is passed on as it is so the device's message names it.
    const wireAddr = addr >= 0n && addr <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(addr) : addr;
    const result = await dev.command(Op.REG_MR, { pd: pd.handle, addr: wireAddr, length, access });
    return new Mr(dev, {
      handle: result.mr as number,
      pd,
      addr,
      length,
      access,
      lkey: result.lkey as number,
      rkey: result.rkey as number,
    });
  }

  /** True once {@linkcode Mr.dereg} succeeded. */
  get deregistered(): boolean {
    return this.#deregistered;
  }

  /** Deregisters the region (`ibv_dereg_mr`); its keys stop working. A second call does nothing. */
  dereg(): Promise<void> {
    if (this.#deregistered) return Promise.resolve();
    this.#deregistering ??= this.#dereg().finally(() => this.#deregistering = null);
    return this.#deregistering;
  }

  async #dereg(): Promise<void> {
    this.#dev.checkUsable();
    await this.#dev.command(Op.DEREG_MR, { mr: this.handle });
    this.#deregistered = true;
  }

  /** `await using`: deregisters it, unless the device is already gone (which freed it). */
  [Symbol.asyncDispose](): Promise<void> {
    if (this.#deregistered || this.#dev.error !== null) return Promise.resolve();
    return this.dereg();
  }
}
