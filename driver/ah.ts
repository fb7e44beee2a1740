/**
 * Address handles (`ibv_create_ah`): where a UD send goes.
 *
 * @module
 */

import { Op } from "../protocol/device_interface.ts";
import type { AhAttr } from "../protocol/verbs.ts";
import { VerbsError } from "./errors.ts";
import type { Pd } from "./pd.ts";
import type { VerbsDevice } from "./types.ts";

/**
 * An address handle. Make one with `pd.createAh`.
 *
 * @example
 * ```ts ignore
 * const ah = await pd.createAh({ dgid: remote.gid, portNum: 1 });
 * udQp.postSend({ wrId: 1n, opcode: "SEND", sgList, ud: { ah, remoteQpn, remoteQkey } });
 * await ah.destroy();
 * ```
 */
export class Ah {
  /** Handle (per guest). */
  readonly handle: number;
  /** The protection domain it belongs to. */
  readonly pd: Pd;
  /** The address vector it was created with. */
  readonly attr: AhAttr;
  readonly #dev: VerbsDevice;
  #destroyed = false;
  #destroying: Promise<void> | null = null;

  /** @internal use `pd.createAh`. */
  constructor(dev: VerbsDevice, parts: { handle: number; pd: Pd; attr: AhAttr }) {
    this.#dev = dev;
    this.handle = parts.handle;
    this.pd = parts.pd;
    this.attr = parts.attr;
  }

  /** @internal CREATE_AH on `pd`. */
  static async create(dev: VerbsDevice, pd: Pd, attr: AhAttr): Promise<Ah> {
    dev.checkUsable();
    if (attr === null || typeof attr !== "object") {
      throw new VerbsError(
        "EINVAL",
        `createAh needs an address vector { dgid, portNum }, got ${attr}`,
      );
    }
    const ahAttr = { ...attr };
    const result = await dev.command(Op.CREATE_AH, { pd: pd.handle, ahAttr });
    return new Ah(dev, { handle: result.ah as number, pd, attr: Object.freeze(ahAttr) });
  }

  /** True once {@linkcode Ah.destroy} succeeded. */
  get destroyed(): boolean {
    return this.#destroyed;
  }

  /** Destroys the handle (`ibv_destroy_ah`). A second call does nothing. */
  destroy(): Promise<void> {
    if (this.#destroyed) return Promise.resolve();
    this.#destroying ??= this.#destroy().finally(() => this.#destroying = null);
    return this.#destroying;
  }

  async #destroy(): Promise<void> {
    this.#dev.checkUsable();
    await this.#dev.command(Op.DESTROY_AH, { ah: this.handle });
    this.#destroyed = true;
  }

  /** `await using`: destroys it, unless the device is already gone (which freed it). */
  [Symbol.asyncDispose](): Promise<void> {
    if (this.#destroyed || this.#dev.error !== null) return Promise.resolve();
    return this.destroy();
  }
}
