/**
 * The device side of a split virtqueue: pops chains the driver made
 * available and returns them through the used ring.
 *
 * The driver is untrusted. No method throws because of what the driver
 * wrote: a broken rule marks the queue broken, keeps the specific
 * {@linkcode VirtqueueError} in {@linkcode DeviceQueue.error}, and from then
 * on the queue reads and writes nothing (the device reports NEEDS_RESET).
 *
 * The queue state is plain data ({@linkcode DeviceQueueState}), separate
 * from memory: every method takes the guest memory it works on, and saving
 * or restoring a queue is copying that state.
 *
 * @module
 */

import { type GuestMemory, GuestMemoryError } from "./memory.ts";
import { VirtqueueError } from "./errors.ts";
import { DescriptorChain } from "./descriptor_chain.ts";
import {
  mapRings,
  type QueueLayout,
  type QueueOptions,
  type RingArrays,
  ringArrays,
  ringFields,
  type RingViews,
  validateQueueSize,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_USED_F_NO_NOTIFY,
} from "./layout.ts";

/** Everything a device queue remembers between calls. */
export interface DeviceQueueState {
  /** Free-running index of the next available-ring entry to pop. */
  lastAvail: number;
  /** Free-running index of the next used-ring entry to write. */
  usedIdx: number;
  /** Used idx at the last notification decision; -1 when unknown (notify next time). */
  signalledUsed: number;
  /** The rule the driver broke, or null while the queue works. */
  broken: VirtqueueError | null;
}

/**
 * One queue, device side.
 *
 * Hot loop without allocation: keep one {@linkcode DescriptorChain} and call
 * {@linkcode DeviceQueue.popInto}, then `addUsed` per chain and one
 * `publishUsed` per batch; or keep an array of chains and call
 * {@linkcode DeviceQueue.popBatch} and {@linkcode DeviceQueue.addUsedBatch}
 * once per batch.
 *
 * @example
 * ```ts
 * import { GuestMemory } from "./memory.ts";
 * import { layoutAt } from "./layout.ts";
 * import { DriverQueue } from "./driver_queue.ts";
 * import { DeviceQueue } from "./device_queue.ts";
 * const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(1 << 16), 0x10000);
 * const { layout } = layoutAt(0x10000, 8);
 * const driver = new DriverQueue(layout);
 * driver.init(mem);
 * mem.write(0x18000, new TextEncoder().encode("ping"));
 * driver.addOne(mem, 0x18000, 4, false);
 * driver.publish(mem);
 * const device = new DeviceQueue(layout);
 * const chain = device.pop(mem)!;
 * const got = new Uint8Array(4);
 * chain.reader.read(got);
 * device.pushUsed(mem, chain.head, 0);
 * if (new TextDecoder().decode(got) !== "ping" || driver.popUsed(mem)?.id !== chain.head) {
 *   throw new Error("round trip failed");
 * }
 * ```
 */
export class DeviceQueue {
  readonly #layout: QueueLayout;
  readonly #size: number;
  readonly #mask: number;
  readonly #eventIdx: boolean;
  readonly #indirect: boolean;
  // Guest addresses of the fields touched with atomics.
  readonly #availIdxAddr: number;
  readonly #availFlagsAddr: number;
  readonly #usedEventAddr: number;
  readonly #usedIdxAddr: number;
  readonly #usedFlagsAddr: number;
  readonly #availEventAddr: number;

  // State (see DeviceQueueState).
  #lastAvail = 0;
  #usedIdx = 0;
  #signalledUsed = 0;
  #broken: VirtqueueError | null = null;

  // Caches derived from state and memory, never saved.
  /** Last available idx read and checked; entries up to it need no new load. */
  #availSeen = 0;
  /** Used idx as last stored to memory. */
  #usedPublished = 0;
  #mem: GuestMemory | null = null;
  #rings: RingViews | null = null;
  /** Typed views of the same rings, or null where they cannot alias them (see ringArrays). */
  #arrays: RingArrays | null = null;

  /**
   * A queue at `layout` with the negotiated `options`. Nothing is read from
   * memory until a method is given it; the layout is checked then.
   */
  constructor(layout: QueueLayout, options: QueueOptions = {}) {
    validateQueueSize(layout.size);
    this.#layout = { size: layout.size, desc: layout.desc, avail: layout.avail, used: layout.used };
    this.#size = layout.size;
    this.#mask = layout.size - 1;
    this.#eventIdx = options.eventIdx ?? false;
    this.#indirect = options.indirect ?? false;
    const fields = ringFields(layout);
    this.#availFlagsAddr = fields.availFlags;
    this.#availIdxAddr = fields.availIdx;
    this.#usedEventAddr = fields.usedEvent;
    this.#usedFlagsAddr = fields.usedFlags;
    this.#usedIdxAddr = fields.usedIdx;
    this.#availEventAddr = fields.availEvent;
  }

  /** The queue's placement. */
  get layout(): QueueLayout {
    return this.#layout;
  }

  /** Number of entries. */
  get size(): number {
    return this.#size;
  }

  /** The rule the driver broke, or null while the queue works. */
  get error(): VirtqueueError | null {
    return this.#broken;
  }

  /** True once the driver broke a rule; only a reset or restore clears it. */
  get broken(): boolean {
    return this.#broken !== null;
  }

  /** A copy of the queue state. */
  saveState(): DeviceQueueState {
    return {
      lastAvail: this.#lastAvail,
      usedIdx: this.#usedIdx,
      signalledUsed: this.#signalledUsed,
      broken: this.#broken,
    };
  }

  /**
   * Replaces the queue state (for example from vhost-user SET_VRING_BASE).
   * Throws a `RangeError` naming a field that is not a 16-bit index.
   */
  restoreState(state: DeviceQueueState): void {
    for (const field of ["lastAvail", "usedIdx"] as const) {
      const v = state[field];
      if (!Number.isInteger(v) || v < 0 || v > 0xffff) {
        throw new RangeError(`${field} ${v} is not a 16-bit ring index`);
      }
    }
    const s = state.signalledUsed;
    if (!Number.isInteger(s) || s < -1 || s > 0xffff) {
      throw new RangeError(`signalledUsed ${s} is not a 16-bit ring index or -1`);
    }
    this.#lastAvail = state.lastAvail;
    this.#availSeen = state.lastAvail;
    this.#usedIdx = state.usedIdx;
    // How much of usedIdx was published is not part of the state: the next
    // notification decision reads it back from the used ring.
    this.#usedPublished = -1;
    this.#signalledUsed = s;
    this.#broken = state.broken;
  }

  /** Back to the state of a fresh queue (device reset). */
  reset(): void {
    this.restoreState({ lastAvail: 0, usedIdx: 0, signalledUsed: 0, broken: null });
  }

  /**
   * Number of available chains not yet popped. Reads the available idx;
   * an idx more than a queue size ahead breaks the queue (and returns 0).
   */
  pending(mem: GuestMemory): number {
    if (this.#broken !== null) return 0;
    const idx = this.#loadAvailIdx(mem);
    return idx < 0 ? 0 : (idx - this.#lastAvail) & 0xffff;
  }

  /** Pops the next chain into a new {@linkcode DescriptorChain}, or returns null (none, or broken). */
  pop(mem: GuestMemory): DescriptorChain | null {
    const chain = new DescriptorChain();
    return this.popInto(mem, chain) ? chain : null;
  }

  /**
   * Pops the next chain into `chain` (reused: nothing is allocated for a
   * chain no longer than any before it). Returns false when no chain is
   * available or the queue is broken; never throws.
   */
  popInto(mem: GuestMemory, chain: DescriptorChain): boolean {
    if (this.#broken !== null) return false;
    const rings = mem === this.#mem ? this.#rings : this.#bind(mem);
    if (rings === null) return false;
    const last = this.#lastAvail;
    // One atomic load of the available idx per run of chains: the entries
    // up to the idx seen last are already published and checked.
    if (last === this.#availSeen) {
      const idx = this.#loadAvailIdx(mem);
      if (idx < 0 || idx === last) return false;
    }
    const slot = last & this.#mask;
    const arrays = this.#arrays;
    const head = arrays !== null
      ? arrays.avail[2 + slot]!
      : rings.avail.getUint16(4 + 2 * slot, true);
    try {
      chain.fill(mem, rings.desc, this.#size, head, this.#indirect);
    } catch (e) {
      this.#break(e);
      return false;
    }
    this.#lastAvail = (last + 1) & 0xffff;
    return true;
  }

  /**
   * Pops up to `max` chains (default and at most `chains.length`) into
   * `chains[0]`, `chains[1]`, ... (reused, as with
   * {@linkcode DeviceQueue.popInto}) with at most one load of the available
   * idx, and returns how many it filled: 0 when none is available or the
   * queue is broken. A chain that breaks a rule breaks the queue and ends
   * the batch before it: nothing the driver wrote makes it throw. A `max`
   * that is not a non-negative integer is a device bug: a `RangeError`.
   *
   * @example
   * ```ts
   * import { GuestMemory } from "./memory.ts";
   * import { layoutAt } from "./layout.ts";
   * import { DriverQueue } from "./driver_queue.ts";
   * import { DeviceQueue } from "./device_queue.ts";
   * import { DescriptorChain } from "./descriptor_chain.ts";
   * const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(1 << 16), 0x10000);
   * const { layout } = layoutAt(0x10000, 8);
   * const driver = new DriverQueue(layout);
   * driver.init(mem);
   * driver.addOne(mem, 0x18000, 4, false);
   * driver.addOne(mem, 0x18010, 8, true);
   * driver.publish(mem);
   * const device = new DeviceQueue(layout);
   * const chains = [new DescriptorChain(), new DescriptorChain(), new DescriptorChain()];
   * const n = device.popBatch(mem, chains);
   * if (n !== 2 || chains[0]!.readableBytes !== 4 || chains[1]!.writableBytes !== 8) {
   *   throw new Error("wrong batch");
   * }
   * ```
   */
  popBatch(
    mem: GuestMemory,
    chains: readonly DescriptorChain[],
    max: number = chains.length,
  ): number {
    if (!(max >= 0 && Number.isInteger(max))) {
      throw new RangeError(`max ${max} is not a non-negative integer`);
    }
    if (this.#broken !== null) return 0;
    const rings = mem === this.#mem ? this.#rings : this.#bind(mem);
    if (rings === null) return 0;
    let last = this.#lastAvail;
    let ready = (this.#availSeen - last) & 0xffff;
    if (ready === 0) {
      const idx = this.#loadAvailIdx(mem);
      if (idx < 0) return 0;
      ready = (idx - last) & 0xffff;
    }
    const limit = chains.length < max ? chains.length : max;
    const n = ready < limit ? ready : limit;
    const arrays = this.#arrays, avail = rings.avail, desc = rings.desc;
    const mask = this.#mask, size = this.#size, indirect = this.#indirect;
    let k = 0;
    try {
      for (; k < n; k++) {
        const slot = last & mask;
        const head = arrays !== null
          ? arrays.avail[2 + slot]!
          : avail.getUint16(4 + 2 * slot, true);
        chains[k]!.fill(mem, desc, size, head, indirect);
        last = (last + 1) & 0xffff;
      }
    } catch (e) {
      this.#break(e);
    }
    this.#lastAvail = last;
    return k;
  }

  /**
   * Writes a used entry (chain `head`, `len` bytes written) without making
   * it visible; {@linkcode DeviceQueue.publishUsed} does that for a batch.
   * Does nothing on a broken queue. Throws a `RangeError` for a head past
   * the table or a length that is not a u32: those are device bugs.
   */
  addUsed(mem: GuestMemory, head: number, len: number): void {
    if (this.#broken !== null) return;
    if (!(head >= 0 && head < this.#size && (head | 0) === head)) badUsedHead(head, this.#size);
    if ((len >>> 0) !== len) badUsedLen(len);
    const rings = mem === this.#mem ? this.#rings : this.#bind(mem);
    if (rings === null) return;
    const slot = this.#usedIdx & this.#mask;
    // Stored only when changed: a driver recycling descriptors in order gets
    // the same entry every lap, and an unchanged line stays shared with the
    // driver that reads it instead of moving back to this core.
    const arrays = this.#arrays;
    if (arrays !== null) {
      const words = arrays.used, i = 1 + 2 * slot;
      if (words[i] !== head) words[i] = head;
      if (words[i + 1] !== len) words[i + 1] = len;
    } else {
      const used = rings.used, o = 4 + 8 * slot;
      if (used.getUint32(o, true) !== head) used.setUint32(o, head, true);
      if (used.getUint32(o + 4, true) !== len) used.setUint32(o + 4, len, true);
    }
    this.#usedIdx = (this.#usedIdx + 1) & 0xffff;
  }

  /**
   * Makes every entry added since the last publish visible with one atomic
   * store of used idx; stores nothing when nothing was added (a polling
   * device must not keep writing the cache line the driver polls).
   */
  publishUsed(mem: GuestMemory): void {
    // After a restore #usedPublished is -1: entries added before the save
    // may be unpublished, so the first publish always stores.
    if (this.#broken !== null || this.#usedPublished === this.#usedIdx) return;
    if (this.#bind(mem) === null) return;
    const arrays = this.#arrays;
    if (arrays !== null) Atomics.store(arrays.usedHalves, 1, this.#usedIdx);
    else mem.storeU16(this.#usedIdxAddr, this.#usedIdx);
    this.#usedPublished = this.#usedIdx;
  }

  /**
   * {@linkcode DeviceQueue.addUsed} for `count` chains: `heads[i]` with
   * `lens[i]` bytes written, or 0 bytes for each when `lens` is null. Checks
   * every entry before writing any: a bad head or length throws the same
   * `RangeError` as `addUsed` with nothing added, and so do a `count` outside
   * `0 .. heads.length` and fewer `lens` than `count`. Does nothing on a
   * broken queue.
   *
   * @example
   * ```ts
   * import { GuestMemory } from "./memory.ts";
   * import { layoutAt } from "./layout.ts";
   * import { DriverQueue } from "./driver_queue.ts";
   * import { DeviceQueue } from "./device_queue.ts";
   * const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(1 << 16), 0x10000);
   * const { layout } = layoutAt(0x10000, 8);
   * const driver = new DriverQueue(layout);
   * driver.init(mem);
   * const a = driver.addOne(mem, 0x18000, 4, true);
   * const b = driver.addOne(mem, 0x18010, 4, true);
   * driver.publish(mem);
   * const device = new DeviceQueue(layout);
   * device.addUsedBatch(mem, [a, b], [1, 2], 2);
   * device.publishUsed(mem);
   * if (driver.popUsed(mem)?.len !== 1 || driver.popUsed(mem)?.len !== 2) throw new Error("lost");
   * ```
   */
  addUsedBatch(
    mem: GuestMemory,
    heads: ArrayLike<number>,
    lens: ArrayLike<number> | null,
    count: number,
  ): void {
    if (!(count >= 0 && count <= heads.length && (count | 0) === count)) {
      throw new RangeError(`count ${count} is not in 0..${heads.length} (the heads given)`);
    }
    if (lens !== null && lens.length < count) {
      throw new RangeError(`lens has ${lens.length} entries, fewer than the count ${count}`);
    }
    if (this.#broken !== null) return;
    const size = this.#size;
    for (let i = 0; i < count; i++) {
      const head = heads[i]!;
      if (!(head >= 0 && head < size && (head | 0) === head)) badUsedHead(head, size);
      if (lens !== null && (lens[i]! >>> 0) !== lens[i]) badUsedLen(lens[i]!);
    }
    const rings = mem === this.#mem ? this.#rings : this.#bind(mem);
    if (rings === null) return;
    const arrays = this.#arrays, mask = this.#mask;
    let idx = this.#usedIdx;
    // Stored only when changed, as in addUsed.
    if (arrays !== null) {
      const words = arrays.used;
      for (let k = 0; k < count; k++) {
        const head = heads[k]!, len = lens === null ? 0 : lens[k]!;
        const i = 1 + 2 * (idx & mask);
        if (words[i] !== head) words[i] = head;
        if (words[i + 1] !== len) words[i + 1] = len;
        idx = (idx + 1) & 0xffff;
      }
    } else {
      const used = rings.used;
      for (let k = 0; k < count; k++) {
        const head = heads[k]!, len = lens === null ? 0 : lens[k]!;
        const o = 4 + 8 * (idx & mask);
        if (used.getUint32(o, true) !== head) used.setUint32(o, head, true);
        if (used.getUint32(o + 4, true) !== len) used.setUint32(o + 4, len, true);
        idx = (idx + 1) & 0xffff;
      }
    }
    this.#usedIdx = idx;
  }

  /** {@linkcode DeviceQueue.addUsed} then {@linkcode DeviceQueue.publishUsed}. */
  pushUsed(mem: GuestMemory, head: number, len: number): void {
    this.addUsed(mem, head, len);
    this.publishUsed(mem);
  }

  /**
   * Whether the driver wants a used-buffer notification for what was
   * published since the last call: no when nothing was; otherwise with
   * EVENT_IDX `vring_need_event(used_event, new, old)` where `old` is the
   * used idx at the previous decision, and without it the NO_INTERRUPT
   * flag decides. False on a broken queue.
   */
  needsNotify(mem: GuestMemory): boolean {
    if (this.#broken !== null || this.#bind(mem) === null) return false;
    try {
      // After a restore the published used idx is unknown until read back;
      // the guest could have changed it, which can only skew this decision.
      if (this.#usedPublished < 0) this.#usedPublished = mem.loadU16(this.#usedIdxAddr);
      const now = this.#usedPublished;
      const old = this.#signalledUsed;
      // Nothing used since the last decision: no, and no read of a field
      // the driver writes (a polling device calls this in its loop).
      if (old === now) return false;
      this.#signalledUsed = now;
      if (this.#eventIdx) {
        const event = mem.loadU16(this.#usedEventAddr);
        return old < 0 || ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);
      }
      return (mem.loadU16(this.#availFlagsAddr) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    } catch (e) {
      this.#break(e);
      return false;
    }
  }

  /**
   * Asks the driver not to notify: sets NO_NOTIFY, or with EVENT_IDX moves
   * avail_event half the index space away. Advisory only: the driver may
   * still notify.
   */
  disableNotifications(mem: GuestMemory): void {
    if (this.#broken !== null || this.#bind(mem) === null) return;
    if (this.#eventIdx) {
      // Half the 16-bit space ahead: the driver cannot get there before we
      // move it back, since it never has more than a queue size outstanding.
      mem.storeU16(this.#availEventAddr, (this.#lastAvail + 0x8000) & 0xffff);
    } else {
      mem.storeU16(this.#usedFlagsAddr, VIRTQ_USED_F_NO_NOTIFY);
    }
  }

  /**
   * Asks the driver to notify on its next publish, then re-reads the
   * available idx: returns true when chains are already waiting, so the
   * caller keeps polling instead of sleeping (a publish between its last
   * poll and this call would otherwise go unnoticed).
   */
  enableNotifications(mem: GuestMemory): boolean {
    if (this.#broken !== null || this.#bind(mem) === null) return false;
    if (this.#eventIdx) {
      mem.storeU16(this.#availEventAddr, this.#lastAvail);
    } else {
      mem.storeU16(this.#usedFlagsAddr, 0);
    }
    // The atomic store above orders before this atomic load.
    return this.pending(mem) > 0;
  }

  /** Loads and checks the available idx; returns it, or -1 after breaking the queue. */
  #loadAvailIdx(mem: GuestMemory): number {
    if (this.#bind(mem) === null) return -1;
    try {
      const arrays = this.#arrays;
      const idx = arrays !== null ? Atomics.load(arrays.avail, 1) : mem.loadU16(this.#availIdxAddr);
      if (((idx - this.#lastAvail) & 0xffff) > this.#size) {
        this.#broken = VirtqueueError.availIdxJump(idx, this.#lastAvail, this.#size);
        return -1;
      }
      this.#availSeen = idx;
      return idx;
    } catch (e) {
      this.#break(e);
      return -1;
    }
  }

  /** Views of the rings in `mem`; null (queue broken) when the layout does not fit it. */
  #bind(mem: GuestMemory): RingViews | null {
    if (mem === this.#mem) return this.#rings;
    try {
      const rings = mapRings(mem, this.#layout);
      this.#rings = rings;
      this.#arrays = ringArrays(rings);
      this.#mem = mem;
      return rings;
    } catch (e) {
      this.#break(e);
      return null;
    }
  }

  #break(e: unknown): void {
    if (e instanceof VirtqueueError) {
      this.#broken = e;
    } else if (e instanceof GuestMemoryError) {
      this.#broken = VirtqueueError.address(-1, e.addr, e.length, { cause: e });
    } else {
      this.#broken = VirtqueueError.internal(e);
    }
  }
}

/** Throws the `RangeError` for a used head that is not a descriptor index (a device bug). */
function badUsedHead(head: number, size: number): never {
  throw new RangeError(`used head ${head} is not a descriptor index of a ${size}-entry queue`);
}

/** Throws the `RangeError` for a used length that is not a u32 (a device bug). */
function badUsedLen(len: number): never {
  throw new RangeError(`used length ${len} is not a u32`);
}
