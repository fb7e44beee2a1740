/**
 * The driver side of a split virtqueue: makes chains of guest buffers
 * available to the device and takes them back from the used ring.
 *
 * The guest driver uses it, and device tests use it as their tool to build
 * queues in in-memory guest memory. It checks what its caller passes only as
 * far as the fields can hold it (addresses are not checked against guest
 * memory: the device does that, and tests need to offer bad addresses).
 *
 * It does not trust the device either: a used entry whose id is not an
 * outstanding head, whose length exceeds the chain's writable bytes, or a
 * used idx further ahead than the chains published, is a
 * {@linkcode VirtqueueError} and changes nothing. The free list and chain
 * links live in private arrays, not in the shared descriptor table, so a
 * device scribbling on the table cannot corrupt them.
 *
 * @module
 */

import type { GuestMemory } from "./memory.ts";
import { VirtqueueError } from "./errors.ts";
import {
  type GuestRange,
  mapRings,
  type QueueLayout,
  type QueueOptions,
  type RingArrays,
  ringArrays,
  ringFields,
  type RingViews,
  validateQueueSize,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
} from "./layout.ts";

const TWO_POW_32 = 0x1_0000_0000;

/** One chain returned by the device. */
export interface UsedElement {
  /** Head descriptor index, as {@linkcode DriverQueue.add} returned it. */
  id: number;
  /** Bytes the device says it wrote into the chain's writable buffers. */
  len: number;
}

/** The scalar state of a driver queue (the per-descriptor arrays aside). */
export interface DriverQueueState {
  /** First descriptor of the free list. */
  freeHead: number;
  /** Descriptors on the free list. */
  numFree: number;
  /** Free-running index of the next available-ring entry to write. */
  nextAvail: number;
  /** Available idx as last stored to memory. */
  publishedAvail: number;
  /** Free-running index of the next used-ring entry to take. */
  lastUsed: number;
  /** Chains added and not yet returned. */
  outstanding: number;
  /** True between disableInterrupts and enableInterrupts. */
  interruptsDisabled: boolean;
}

function checkRange(r: GuestRange, what: string): void {
  if (!(Number.isSafeInteger(r.addr) && r.addr >= 0)) {
    throw new RangeError(`${what}: address ${r.addr} is not a guest address`);
  }
  if ((r.len >>> 0) !== r.len) throw new RangeError(`${what}: length ${r.len} is not a u32`);
}

/**
 * One queue, driver side.
 *
 * @example
 * ```ts
 * import { GuestMemory } from "./memory.ts";
 * import { layoutAt } from "./layout.ts";
 * import { DriverQueue } from "./driver_queue.ts";
 * const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(1 << 16), 0x10000);
 * const q = new DriverQueue(layoutAt(0x10000, 16).layout);
 * q.init(mem);
 * const head = q.add(mem, [{ addr: 0x18000, len: 64 }], [{ addr: 0x18040, len: 16 }]);
 * const kick = q.publish(mem);
 * if (q.numFree !== 14 || !kick || head !== 0) throw new Error("unexpected queue state");
 * ```
 */
export class DriverQueue {
  readonly #layout: QueueLayout;
  readonly #size: number;
  readonly #mask: number;
  readonly #eventIdx: boolean;
  readonly #indirect: boolean;
  readonly #availFlagsAddr: number;
  readonly #availIdxAddr: number;
  readonly #usedEventAddr: number;
  readonly #usedFlagsAddr: number;
  readonly #usedIdxAddr: number;
  readonly #availEventAddr: number;

  // Scalar state (see DriverQueueState).
  #freeHead = 0;
  /** Last descriptor of the free list (meaningless while it is empty). */
  #freeTail = 0;
  #numFree = 0;
  #nextAvail = 0;
  #publishedAvail = 0;
  #lastUsed = 0;
  #interruptsDisabled = false;
  // Per-descriptor state: free-list and chain links, chain length and
  // writable bytes per head, and whether a head is outstanding.
  readonly #next: Uint16Array;
  readonly #chainLen: Uint16Array;
  readonly #writable: Float64Array;
  readonly #inFlight: Uint8Array;

  // Caches, never state.
  /** Used idx as last loaded and checked. */
  #usedSeen = 0;
  /** Length of the chain {@linkcode DriverQueue.popUsedId} returned last. */
  #usedLen = 0;
  #mem: GuestMemory | null = null;
  #rings: RingViews | null = null;
  /** Typed views of the same rings, or null where they cannot alias them (see ringArrays). */
  #arrays: RingArrays | null = null;

  /**
   * A queue at `layout` with the negotiated `options`, every descriptor
   * free. Call {@linkcode DriverQueue.init} to zero the areas in memory
   * before the device is told about them.
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
    this.#next = new Uint16Array(layout.size);
    this.#chainLen = new Uint16Array(layout.size);
    this.#writable = new Float64Array(layout.size);
    this.#inFlight = new Uint8Array(layout.size);
    this.#resetState();
  }

  /** The queue's placement. */
  get layout(): QueueLayout {
    return this.#layout;
  }

  /** Number of entries. */
  get size(): number {
    return this.#size;
  }

  /** Descriptors free for new chains. */
  get numFree(): number {
    return this.#numFree;
  }

  /** Chains added and not yet returned by the device. */
  get outstanding(): number {
    // Chains added minus chains taken back; never more than the queue size,
    // so the 16-bit difference is exact.
    return (this.#nextAvail - this.#lastUsed) & 0xffff;
  }

  /** A copy of the scalar queue state. */
  get state(): DriverQueueState {
    return {
      freeHead: this.#freeHead,
      numFree: this.#numFree,
      nextAvail: this.#nextAvail,
      publishedAvail: this.#publishedAvail,
      lastUsed: this.#lastUsed,
      outstanding: this.outstanding,
      interruptsDisabled: this.#interruptsDisabled,
    };
  }

  /**
   * Zeroes the three areas in `mem` and resets the queue: every descriptor
   * free, indices 0, notifications enabled. Throws a {@linkcode VirtqueueError}
   * when the layout does not fit `mem`.
   */
  init(mem: GuestMemory): void {
    const rings = this.#bind(mem); // checks the layout first
    mem.fill(this.#layout.desc, rings.desc.byteLength, 0);
    mem.fill(this.#layout.avail, rings.avail.byteLength, 0);
    mem.fill(this.#layout.used, rings.used.byteLength, 0);
    this.#resetState();
  }

  /**
   * Adds a chain of `readable` then `writable` buffers and returns its head
   * descriptor index; it becomes visible to the device at the next
   * {@linkcode DriverQueue.publish}.
   *
   * With `indirectAt` (needs the `indirect` option) the buffers go into an
   * indirect table written at that guest address (`16 *` buffers bytes) and
   * the chain takes one descriptor.
   *
   * Throws a `RangeError` naming the counts when the chain does not fit the
   * free descriptors or is empty, and a `RangeError` for an address or length
   * the descriptor fields cannot hold. Nothing changes on a throw.
   */
  add(
    mem: GuestMemory,
    readable: readonly GuestRange[],
    writable: readonly GuestRange[],
    options: { indirectAt?: number } = {},
  ): number {
    const nr = readable.length, nw = writable.length, total = nr + nw;
    const shape = (): string => `chain of ${nr} readable + ${nw} writable buffers`;
    if (total === 0) throw new RangeError(`${shape()} is empty: a chain needs at least one buffer`);
    const at = options.indirectAt;
    if (at !== undefined) {
      if (!this.#indirect) {
        const where = `0x${at.toString(16)}`;
        throw new TypeError(
          `indirectAt ${where} needs VIRTIO_RING_F_INDIRECT_DESC: create the queue with { indirect: true }`,
        );
      }
      if (!(Number.isSafeInteger(at) && at >= 0)) {
        throw new RangeError(`indirectAt ${at} is not a guest address`);
      }
      if (total > this.#size) {
        throw new RangeError(`${shape()} does not fit an indirect table of at most ${this.#size}`);
      }
    }
    const need = at === undefined ? total : 1;
    if (need > this.#numFree) {
      throw new RangeError(
        `${shape()} needs ${need} descriptors but only ${this.#numFree} are free`,
      );
    }
    let writableBytes = 0;
    for (let k = 0; k < total; k++) {
      const r = k < nr ? readable[k]! : writable[k - nr]!;
      checkRange(r, k < nr ? `readable buffer ${k}` : `writable buffer ${k - nr}`);
      if (k >= nr) writableBytes += r.len;
    }
    const rings = this.#bind(mem);
    let head: number;
    if (at !== undefined) {
      // The table is ordinary guest memory: written through the checked accessors.
      for (let k = 0; k < total; k++) {
        const r = k < nr ? readable[k]! : writable[k - nr]!;
        const a = at + 16 * k;
        const last = k === total - 1;
        mem.setAddr64(a, r.addr);
        mem.setU32(a + 8, r.len);
        mem.setU16(a + 12, (k >= nr ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT));
        mem.setU16(a + 14, last ? 0 : k + 1);
      }
      head = this.#take(1);
      this.#writeDesc(rings.desc, head, { addr: at, len: 16 * total }, VIRTQ_DESC_F_INDIRECT, 0);
    } else {
      head = this.#take(total);
      let d = head;
      for (let k = 0; k < total; k++) {
        const r = k < nr ? readable[k]! : writable[k - nr]!;
        const last = k === total - 1;
        const flags = (k >= nr ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT);
        const next = this.#next[d]!;
        this.#writeDesc(rings.desc, d, r, flags, last ? 0 : next);
        d = next;
      }
    }
    this.#offer(rings, head, writableBytes);
    return head;
  }

  /**
   * Adds a chain of one buffer (device-writable when `writable`) and returns
   * its head: the allocation-free fast path of {@linkcode DriverQueue.add}.
   */
  addOne(mem: GuestMemory, addr: number, len: number, writable: boolean): number {
    // The common case in few bytecodes, so that V8 inlines it into the
    // caller's loop (with the general path inside, --trace-turbo-inlining
    // said it exceeded the limit): a free descriptor, an address and a
    // length below 4 GiB, typed views of the rings. The rest, and every
    // error, takes #addOneGeneral.
    const arrays = mem === this.#mem ? this.#arrays : null;
    if (arrays === null || this.#numFree === 0 || (addr >>> 0) !== addr || (len >>> 0) !== len) {
      return this.#addOneGeneral(mem, addr, len, writable);
    }
    const head = this.#freeHead;
    this.#freeHead = this.#next[head]!;
    this.#numFree--;
    // Each word is stored only when it changes (see #addOneGeneral).
    const desc = arrays.desc, o = head << 2;
    let flags = 0, writableBytes = 0;
    if (writable) {
      flags = VIRTQ_DESC_F_WRITE;
      writableBytes = len;
    }
    if (desc[o] !== addr) desc[o] = addr;
    if (desc[o + 1] !== 0) desc[o + 1] = 0;
    if (desc[o + 2] !== len) desc[o + 2] = len;
    if (desc[o + 3] !== flags) desc[o + 3] = flags; // flags and next (0)
    // Compared before stored, like the table words: with in-order recycling
    // a descriptor comes back to the same chain shape. Across processes the
    // driver mostly waits for the cache lines of its payload writes, which
    // the device holds; stores queued behind those wait too, so the fewer
    // per chain the better.
    const chainLen = this.#chainLen, writableBytesOf = this.#writable;
    if (chainLen[head] !== 1) chainLen[head] = 1;
    if (writableBytesOf[head] !== writableBytes) writableBytesOf[head] = writableBytes;
    this.#inFlight[head] = 1;
    const next = this.#nextAvail, slot = 2 + (next & this.#mask);
    if (arrays.avail[slot] !== head) arrays.avail[slot] = head;
    this.#nextAvail = (next + 1) & 0xffff;
    return head;
  }

  /** {@linkcode DriverQueue.addOne} for every case, with its errors. */
  #addOneGeneral(mem: GuestMemory, addr: number, len: number, writable: boolean): number {
    if (this.#numFree === 0) {
      throw new RangeError(`chain of 1 buffer needs 1 descriptor but 0 are free`);
    }
    // One integer test covers every address below 4 GiB (the common case);
    // only the others pay for the safe-integer check and the division.
    let hi = 0;
    if ((addr >>> 0) !== addr) {
      if (!(Number.isSafeInteger(addr) && addr >= 0)) {
        throw new RangeError(`buffer address ${addr} is not a guest address`);
      }
      hi = Math.floor(addr / TWO_POW_32);
    }
    if ((len >>> 0) !== len) throw new RangeError(`buffer length ${len} is not a u32`);
    const rings = this.#bind(mem);
    const head = this.#freeHead;
    this.#freeHead = this.#next[head]!;
    this.#numFree--;
    const desc = rings.desc, o = head * 16;
    // Each word is stored only when it changes. A driver that reuses a
    // descriptor for the same buffer (the usual case with in-order
    // recycling) then leaves the table's cache lines shared with the device
    // instead of taking them back; the stored value is the same either way.
    if (desc.getUint32(o, true) !== (addr >>> 0)) desc.setUint32(o, addr >>> 0, true);
    if (desc.getUint32(o + 4, true) !== hi) desc.setUint32(o + 4, hi, true);
    if (desc.getUint32(o + 8, true) !== len) desc.setUint32(o + 8, len, true);
    // An `if` rather than `writable ? WRITE : 0` as the stored value: with
    // the conditional expression V8 left this store as a call to the
    // DataView builtin (about 5% of the data path, measured with perf).
    let flags = 0, writableBytes = 0;
    if (writable) {
      flags = VIRTQ_DESC_F_WRITE;
      writableBytes = len;
    }
    // Flags and next (0) in one word.
    if (desc.getUint32(o + 12, true) !== flags) desc.setUint32(o + 12, flags, true);
    this.#chainLen[head] = 1;
    this.#offer(rings, head, writableBytes);
    return head;
  }

  /**
   * Makes every chain added since the last publish visible with one atomic
   * store of the available idx, then says whether the device wants a
   * notification: with EVENT_IDX `vring_need_event(avail_event, new, old)`,
   * otherwise unless the device set NO_NOTIFY. False when nothing was added.
   */
  publish(mem: GuestMemory): boolean {
    const old = this.#publishedAvail, now = this.#nextAvail;
    if (old === now) return false;
    this.#bind(mem);
    const arrays = this.#arrays;
    if (arrays !== null) Atomics.store(arrays.avail, 1, now);
    else mem.storeU16(this.#availIdxAddr, now);
    this.#publishedAvail = now;
    // Atomics are sequentially consistent: the idx store is visible before
    // the load below reads the device's suppression field.
    if (this.#eventIdx) {
      const event = mem.loadU16(this.#availEventAddr);
      return ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);
    }
    const flags = arrays !== null
      ? Atomics.load(arrays.usedHalves, 0)
      : mem.loadU16(this.#usedFlagsAddr);
    return (flags & VIRTQ_USED_F_NO_NOTIFY) === 0;
  }

  /**
   * Takes the next used chain back, recycling its descriptors, or returns
   * null when there is none. Throws a {@linkcode VirtqueueError} (`used-id`,
   * `used-len`, `used-idx-jump`) when the device broke a rule; nothing
   * changes then.
   */
  popUsed(mem: GuestMemory): UsedElement | null {
    const id = this.popUsedId(mem);
    return id < 0 ? null : { id, len: this.#usedLen };
  }

  /**
   * {@linkcode DriverQueue.popUsed} without allocating: returns the head id
   * or -1, and {@linkcode DriverQueue.usedLen} holds the length.
   */
  popUsedId(mem: GuestMemory): number {
    const rings = this.#bind(mem);
    const lastUsed = this.#lastUsed;
    if (lastUsed === this.#usedSeen && this.#loadUsedIdx(mem) === 0) return -1;
    const o = 4 + 8 * (lastUsed & this.#mask);
    const id = rings.used.getUint32(o, true);
    const len = rings.used.getUint32(o + 4, true);
    const bad = this.#checkUsed(id, len);
    if (bad !== null) throw bad;
    this.#recycle(id);
    this.#lastUsed = (lastUsed + 1) & 0xffff;
    this.#usedLen = len;
    this.#askNextInterrupt(rings);
    return id;
  }

  /**
   * Takes back up to `ids.length` used chains with one load of the used idx:
   * writes their head ids into `ids` (and their lengths into `lens`, when
   * given, which must be at least as long) and returns how many were taken;
   * 0 when there is none. {@linkcode DriverQueue.usedLen} holds the last
   * one's length.
   *
   * Throws a {@linkcode VirtqueueError} (`used-id`, `used-len`,
   * `used-idx-jump`) only when the first entry it looks at is bad, with
   * nothing changed; a bad entry after good ones ends the batch before it,
   * so the next call throws for it.
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
   * const a = driver.addOne(mem, 0x18000, 4, false);
   * const b = driver.addOne(mem, 0x18010, 4, true);
   * driver.publish(mem);
   * const device = new DeviceQueue(layout);
   * device.addUsed(mem, a, 0);
   * device.addUsed(mem, b, 3);
   * device.publishUsed(mem);
   * const ids = new Uint32Array(8), lens = new Uint32Array(8);
   * const n = driver.popUsedBatch(mem, ids, lens);
   * if (n !== 2 || ids[1] !== b || lens[1] !== 3 || driver.numFree !== 8) throw new Error("not taken");
   * ```
   */
  popUsedBatch(mem: GuestMemory, ids: Uint32Array, lens: Uint32Array | null = null): number {
    if (lens !== null && lens.length < ids.length) {
      throw new RangeError(`lens has ${lens.length} entries, fewer than the ${ids.length} of ids`);
    }
    const rings = this.#bind(mem);
    let lastUsed = this.#lastUsed;
    let ready = (this.#usedSeen - lastUsed) & 0xffff;
    if (ready === 0) ready = this.#loadUsedIdx(mem);
    const max = ids.length < ready ? ids.length : ready;
    // The loop works on locals and writes the queue's fields back once: it
    // is the driver's per-chain hot path. The rules are #checkUsed's and the
    // free-list steps #recycle's, inline.
    const used = rings.used, words = this.#arrays?.used, mask = this.#mask, size = this.#size;
    const inFlight = this.#inFlight, writable = this.#writable;
    const chainLen = this.#chainLen, next = this.#next;
    let freeHead = this.#freeHead, freeTail = this.#freeTail, numFree = this.#numFree;
    let n = 0, lastLen = 0;
    let bad: VirtqueueError | null = null;
    for (; n < max; n++) {
      let id: number, len: number;
      if (words !== undefined) {
        const w = 1 + 2 * (lastUsed & mask);
        id = words[w]!;
        len = words[w + 1]!;
      } else {
        const o = 4 + 8 * (lastUsed & mask);
        id = used.getUint32(o, true);
        len = used.getUint32(o + 4, true);
      }
      if (!(id < size) || inFlight[id] === 0) {
        bad = VirtqueueError.usedId(id, size);
        break;
      }
      const maxLen = writable[id]!;
      if (len > maxLen) {
        bad = VirtqueueError.usedLen(id, len, maxLen);
        break;
      }
      inFlight[id] = 0;
      const c = chainLen[id]!;
      let last = id;
      if (c !== 1) {
        for (let k = 1; k < c; k++) last = next[last]!;
      }
      if (numFree === 0) freeHead = id;
      else next[freeTail] = id;
      freeTail = last;
      numFree += c;
      ids[n] = id;
      if (lens !== null) lens[n] = len;
      lastLen = len;
      lastUsed = (lastUsed + 1) & 0xffff;
    }
    if (n === 0) {
      // Nothing taken: a bad first entry throws with the queue unchanged.
      if (bad !== null) throw bad;
      return 0;
    }
    // A bad entry after good ones stays in the ring: the next call throws for it.
    this.#freeHead = freeHead;
    this.#freeTail = freeTail;
    this.#numFree = numFree;
    this.#lastUsed = lastUsed;
    this.#usedLen = lastLen;
    this.#askNextInterrupt(rings);
    return n;
  }

  /** Length of the chain the last successful {@linkcode DriverQueue.popUsedId} returned. */
  get usedLen(): number {
    return this.#usedLen;
  }

  /**
   * Asks the device not to notify: sets NO_INTERRUPT, or with EVENT_IDX
   * moves used_event half the index space away. Advisory only.
   */
  disableInterrupts(mem: GuestMemory): void {
    this.#bind(mem);
    this.#interruptsDisabled = true;
    if (this.#eventIdx) {
      // The device cannot get half the 16-bit space ahead of lastUsed: it
      // never has more than a queue size of our chains.
      mem.storeU16(this.#usedEventAddr, (this.#lastUsed + 0x8000) & 0xffff);
    } else {
      mem.storeU16(this.#availFlagsAddr, VIRTQ_AVAIL_F_NO_INTERRUPT);
    }
  }

  /**
   * Asks the device to notify at its next used entry, then re-reads the used
   * idx: returns true when used entries are already waiting, so the caller
   * polls again instead of sleeping through entries that arrived meanwhile.
   */
  enableInterrupts(mem: GuestMemory): boolean {
    this.#bind(mem);
    this.#interruptsDisabled = false;
    if (this.#eventIdx) {
      mem.storeU16(this.#usedEventAddr, this.#lastUsed);
    } else {
      mem.storeU16(this.#availFlagsAddr, 0);
    }
    return mem.loadU16(this.#usedIdxAddr) !== this.#lastUsed;
  }

  /**
   * Loads the used idx and checks it against what the device could have
   * seen; returns how many entries are ready (0 when none). Throws
   * `used-idx-jump` with nothing changed.
   */
  #loadUsedIdx(mem: GuestMemory): number {
    const lastUsed = this.#lastUsed;
    const arrays = this.#arrays;
    const idx = arrays !== null && mem === this.#mem
      ? Atomics.load(arrays.usedHalves, 1)
      : mem.loadU16(this.#usedIdxAddr);
    const ready = (idx - lastUsed) & 0xffff;
    if (ready === 0) return 0;
    // Only chains the device could have seen can come back.
    const published = (this.#publishedAvail - this.#lastUsed) & 0xffff;
    if (ready > published) throw VirtqueueError.usedIdxJump(idx, lastUsed, published);
    this.#usedSeen = idx;
    return ready;
  }

  /** The error for a used entry `(id, len)` that is not ours to take back, or null. */
  #checkUsed(id: number, len: number): VirtqueueError | null {
    if (!(id < this.#size) || this.#inFlight[id] === 0) {
      return VirtqueueError.usedId(id, this.#size);
    }
    const max = this.#writable[id]!;
    return len > max ? VirtqueueError.usedLen(id, len, max) : null;
  }

  /**
   * Puts the chain at `id` back at the tail of the free list. First in,
   * first out: a driver that recycles in order then gets its descriptors
   * back in the same order every lap, so each one keeps describing the same
   * buffer and `addOne` finds the table words already right.
   */
  #recycle(id: number): void {
    this.#inFlight[id] = 0;
    const n = this.#chainLen[id]!;
    let last = id;
    // One-descriptor chains (the common case) skip the walk to the tail.
    if (n !== 1) {
      for (let k = 1; k < n; k++) last = this.#next[last]!;
    }
    if (this.#numFree === 0) this.#freeHead = id;
    else this.#next[this.#freeTail] = id;
    this.#freeTail = last;
    this.#numFree += n;
  }

  /**
   * With EVENT_IDX and interrupts enabled, keeps asking for a notification
   * at the next used entry, as Linux does in virtqueue_get_buf, or the device
   * would stop notifying after one. A plain store: this only moves the
   * request forward while the driver is taking entries anyway; the atomic
   * store and re-check in {@linkcode DriverQueue.enableInterrupts} is what
   * closes the race with a driver about to sleep.
   */
  #askNextInterrupt(rings: RingViews): void {
    if (this.#eventIdx && !this.#interruptsDisabled) {
      rings.avail.setUint16(4 + 2 * this.#size, this.#lastUsed, true);
    }
  }

  #resetState(): void {
    const size = this.#size;
    for (let i = 0; i < size; i++) this.#next[i] = i + 1 < size ? i + 1 : 0;
    this.#chainLen.fill(0);
    this.#writable.fill(0);
    this.#inFlight.fill(0);
    this.#freeHead = 0;
    this.#freeTail = size - 1;
    this.#numFree = size;
    this.#nextAvail = 0;
    this.#publishedAvail = 0;
    this.#lastUsed = 0;
    this.#usedSeen = 0;
    this.#interruptsDisabled = false;
  }

  /** Unlinks `count` descriptors from the free list; returns the first (they stay linked). */
  #take(count: number): number {
    const head = this.#freeHead;
    let d = head;
    for (let k = 0; k < count; k++) d = this.#next[d]!;
    this.#freeHead = d;
    this.#numFree -= count;
    this.#chainLen[head] = count;
    return head;
  }

  #writeDesc(desc: DataView, i: number, r: GuestRange, flags: number, next: number): void {
    const o = i * 16;
    desc.setUint32(o, r.addr >>> 0, true);
    desc.setUint32(o + 4, Math.floor(r.addr / TWO_POW_32), true);
    desc.setUint32(o + 8, r.len, true);
    desc.setUint16(o + 12, flags, true);
    desc.setUint16(o + 14, next, true);
  }

  /** Records `head` as outstanding and writes it into the next available-ring entry. */
  #offer(rings: RingViews, head: number, writableBytes: number): void {
    this.#writable[head] = writableBytes;
    this.#inFlight[head] = 1;
    const ao = 4 + 2 * (this.#nextAvail & this.#mask);
    // Stored only when it changes, as in addOne: with in-order recycling the
    // entry usually already holds this head from the previous lap.
    if (rings.avail.getUint16(ao, true) !== head) rings.avail.setUint16(ao, head, true);
    this.#nextAvail = (this.#nextAvail + 1) & 0xffff;
  }

  #bind(mem: GuestMemory): RingViews {
    if (mem !== this.#mem || this.#rings === null) {
      const rings = mapRings(mem, this.#layout);
      this.#rings = rings;
      this.#arrays = ringArrays(rings);
      this.#mem = mem;
    }
    return this.#rings;
  }
}
