/**
 * Host-wide tables: one per backend, shared by the device models of all its
 * guests. QP numbers and memory keys are per host because the wire names
 * them (a packet carries a destination QPN and an rkey, never a guest), so
 * two guests of one host must never hold the same value.
 *
 * @module
 */

import { Errno } from "../../protocol/device_interface.ts";
import { CommandError } from "./fields.ts";
import type { Mr, Qp } from "./objects.ts";

/** The lowest QPN handed out: 0 and 1 are the special QPs, the rest of 2..0x10 stays reserved. */
export const FIRST_QPN = 0x11;
/** QPNs are 24 bits. */
export const QPN_LIMIT = 1 << 24;
/** Key slots: the index part of a key is 24 bits. */
export const KEY_SLOTS = 1 << 24;

/** Sizes a test may shrink to reach wrap-around and exhaustion quickly. */
export interface HostTablesOptions {
  /** One past the largest QPN (default {@linkcode QPN_LIMIT}). */
  qpnLimit?: number;
  /** Number of key slots, slot 0 unused (default {@linkcode KEY_SLOTS}). */
  keySlots?: number;
}

interface KeySlot {
  mr: Mr | null;
  tag: number;
}

/**
 * QPN allocator, QP lookup by number, memory-key table and MR lookup by key.
 *
 * QPNs go up from {@linkcode FIRST_QPN}, skipping live ones, and wrap at
 * 2^24, so a destroyed QPN comes back only after every other number had its
 * turn: a late packet for an old QP finds no QP rather than its successor.
 * A key is `(slot << 8) | tag`; the 8-bit tag moves on every time its slot is
 * reused, and freed slots are reused oldest first, so a stale key matches a
 * new MR only after its slot was reused 256 times. (Reusing freed slots
 * before growing keeps the table as small as the most MRs ever live at once.)
 *
 * @example
 * ```ts
 * import { HostTables } from "./host_tables.ts";
 * const tables = new HostTables();
 * const qpn = tables.allocQpn((qpNum) => ({ qpNum } as never));
 * if (qpn !== 0x11 || tables.qpByNum(0x11) === undefined) throw new Error("wrong QPN");
 * ```
 */
export class HostTables {
  readonly #qpnLimit: number;
  readonly #keySlots: number;
  readonly #qps = new Map<number, Qp>();
  #nextQpn = FIRST_QPN;
  readonly #slots: KeySlot[] = [{ mr: null, tag: 0 }]; // slot 0 unused: no key is < 0x100
  /** Freed slots, oldest first; `#freeHead` is the next to reuse. */
  #free: number[] = [];
  #freeHead = 0;
  #liveKeys = 0;

  /** Empty tables. */
  constructor(options: HostTablesOptions = {}) {
    this.#qpnLimit = options.qpnLimit ?? QPN_LIMIT;
    this.#keySlots = options.keySlots ?? KEY_SLOTS;
    if (
      !Number.isInteger(this.#qpnLimit) || this.#qpnLimit <= FIRST_QPN ||
      this.#qpnLimit > QPN_LIMIT
    ) {
      throw new RangeError(`qpnLimit ${this.#qpnLimit} is not in ${FIRST_QPN + 1}..${QPN_LIMIT}`);
    }
    if (!Number.isInteger(this.#keySlots) || this.#keySlots < 2 || this.#keySlots > KEY_SLOTS) {
      throw new RangeError(`keySlots ${this.#keySlots} is not in 2..${KEY_SLOTS}`);
    }
  }

  /** Live QPs on the host. */
  get liveQps(): number {
    return this.#qps.size;
  }

  /** Live MRs (keys) on the host. */
  get liveKeys(): number {
    return this.#liveKeys;
  }

  /**
   * Picks the next free QPN, builds the QP with it and registers it. Throws
   * ENOMEM when every QPN is live. `build` must not throw.
   */
  allocQpn(build: (qpNum: number) => Qp): number {
    const span = this.#qpnLimit - FIRST_QPN;
    for (let tries = 0; tries < span; tries++) {
      const qpn = this.#nextQpn;
      this.#nextQpn = qpn + 1 >= this.#qpnLimit ? FIRST_QPN : qpn + 1;
      if (!this.#qps.has(qpn)) {
        this.#qps.set(qpn, build(qpn));
        return qpn;
      }
    }
    throw new CommandError(Errno.ENOMEM, `every QP number of this host is in use (${span})`);
  }

  /** Forgets a QPN; it comes back only after the allocator wrapped. */
  releaseQpn(qpNum: number): void {
    this.#qps.delete(qpNum);
  }

  /** The live QP with this number, on any guest of the host. */
  qpByNum(qpNum: number): Qp | undefined {
    return this.#qps.get(qpNum);
  }

  /**
   * Picks a key slot (the one freed longest ago, else a new one), builds the MR with its key and registers it. Throws ENOMEM when every
   * slot is live. `build` must not throw.
   */
  allocKey(build: (key: number) => Mr): number {
    let index: number;
    if (this.#freeHead < this.#free.length) {
      index = this.#free[this.#freeHead++]!;
      const slot = this.#slots[index]!;
      slot.tag = (slot.tag + 1) & 0xff;
      if (this.#freeHead > 1024 && this.#freeHead * 2 > this.#free.length) {
        this.#free = this.#free.slice(this.#freeHead);
        this.#freeHead = 0;
      }
    } else if (this.#slots.length < this.#keySlots) {
      index = this.#slots.length;
      this.#slots.push({ mr: null, tag: 0 });
    } else {
      throw new CommandError(
        Errno.ENOMEM,
        `every memory key slot of this host is in use (${this.#keySlots - 1})`,
      );
    }
    const slot = this.#slots[index]!;
    const key = ((index << 8) | slot.tag) >>> 0;
    slot.mr = build(key);
    this.#liveKeys++;
    return key;
  }

  /** Frees the key's slot (a stale or unknown key is ignored). */
  releaseKey(key: number): void {
    const index = key >>> 8;
    const slot = this.#slots[index];
    if (slot === undefined || slot.mr === null || slot.tag !== (key & 0xff)) return;
    slot.mr = null;
    this.#liveKeys--;
    this.#free.push(index);
  }

  /** The live MR holding this lkey/rkey, on any guest; undefined for a stale or unknown key. */
  mrByKey(key: number): Mr | undefined {
    const slot = this.#slots[key >>> 8];
    if (slot === undefined || slot.mr === null || slot.tag !== (key & 0xff)) return undefined;
    return slot.mr;
  }
}
