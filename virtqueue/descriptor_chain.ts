/**
 * A descriptor chain as the device sees it, parsed from untrusted memory.
 *
 * {@linkcode DescriptorChain.fill} walks the chain once, with a time-to-live
 * equal to the table size (a loop or an over-long chain is an error, never a
 * hang), a running byte total that must stay below 2^32, at most one level of
 * indirection, device-readable buffers strictly before device-writable ones,
 * and every buffer inside guest memory. It copies each descriptor it reads,
 * so a driver rewriting the table afterwards changes nothing.
 *
 * {@linkcode ChainReader} and {@linkcode ChainWriter} copy across the
 * scattered buffers. They copy straight from the region each buffer was
 * found in at parse time, with no second check: the parse checked each whole
 * buffer against the memory table, a `GuestMemory`'s regions never change,
 * and a reader or writer never leaves the buffers' bounds (the descriptor
 * values were copied, so the guest cannot move them afterwards).
 *
 * A chain object is reusable: the device fills the same one for every chain
 * it pops in a hot loop, so nothing is allocated per chain.
 *
 * @module
 */

import { type GuestMemory, GuestMemoryError, type GuestRegion } from "./memory.ts";
import { VirtqueueError } from "./errors.ts";
import {
  DESC_SIZE,
  type GuestRange,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from "./layout.ts";

const TWO_POW_32 = 0x1_0000_0000;
/**
 * Generations of a chain run 1 .. this - 1, then start a new lap (see
 * {@linkcode DescriptorChain.generation}). Any length is correct; this one
 * makes the explicit rewind at each lap's start negligible.
 */
const GENERATION_LAP = 0x10_0000;
/** True when typed arrays use little-endian order, the order of descriptor fields. */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
/** `hi` words at or above this make an address beyond 2^53: outside any guest memory. */
const HI_LIMIT = 0x200000;

/**
 * The guest address in a descriptor's two 32-bit halves, or -1 when it is
 * beyond 2^53 (outside any guest memory). Addresses below 4 GiB skip the
 * floating-point arithmetic: the common case stays in integer registers.
 */
function toAddr(hi: number, lo: number): number {
  if (hi === 0) return lo;
  return hi >= HI_LIMIT ? -1 : hi * TWO_POW_32 + lo;
}

/**
 * One chain popped from the available ring: its head index and its buffers,
 * device-readable ones first (indices `0 .. readableCount - 1`), then
 * device-writable ones.
 *
 * @example
 * ```ts
 * import { GuestMemory } from "./memory.ts";
 * import { DescriptorChain } from "./descriptor_chain.ts";
 * const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(4096), 0x10000);
 * // A two-entry descriptor table at 0x10000: a readable buffer chained to a writable one.
 * mem.setAddr64(0x10000, 0x10100); mem.setU32(0x10008, 8); mem.setU16(0x1000c, 1); mem.setU16(0x1000e, 1);
 * mem.setAddr64(0x10010, 0x10200); mem.setU32(0x10018, 4); mem.setU16(0x1001c, 2);
 * const b = mem.bytes(0x10000, 32);
 * const chain = new DescriptorChain();
 * chain.fill(mem, new DataView(b.buffer, b.byteOffset, 32), 2, 0, false);
 * if (chain.readableBytes !== 8 || chain.writableBytes !== 4) throw new Error("wrong chain");
 * ```
 */
export class DescriptorChain {
  #mem: GuestMemory | null = null;
  #head = -1;
  #count = 0;
  #readable = 0;
  #readableBytes = 0;
  #writableBytes = 0;
  // Buffer 0 lives in plain fields, buffers 1 and up in the arrays below
  // (buffer i at index i). Most chains have one buffer, and filling fields
  // instead of typed-array elements took a third off the one-descriptor
  // pop (measured: about 7 ns of 22 per chain).
  #addr0 = 0;
  #len0 = 0;
  #offset0 = -1;
  #region0: GuestRegion | null = null;
  #addrs: Float64Array;
  #lens: Uint32Array;
  /**
   * Each buffer's offset inside its region, or -1 when that is 2^31 or
   * more: the copies then do their arithmetic in integer registers instead
   * of converting guest addresses (doubles) on every access.
   */
  #offsets: Int32Array;
  /** The region each buffer was found in at fill time. */
  #regions: (GuestRegion | null)[];
  readonly #reader: ChainReader;
  readonly #writer: ChainWriter;
  /** The table {@linkcode DescriptorChain.fill} was given last, and its u32 words (see #wordsOf). */
  #table: DataView | null = null;
  #words: Uint32Array | null = null;
  #generation = 0;

  /**
   * Counts fills in laps: 1 up to 2^20 - 1, then round again. The chain's
   * reader and writer compare it with the value they last saw and rewind
   * themselves when it moved. Each lap starts by rewinding both outright, so
   * a reader or writer left unused for a whole lap (a guest can time that by
   * posting chains) cannot see its old value come round and keep a stale
   * position.
   */
  get generation(): number {
    return this.#generation;
  }

  /** An empty chain with room for `capacity` buffers; it grows when a longer chain arrives. */
  constructor(capacity = 4) {
    const cap = Math.max(1, Math.floor(capacity));
    this.#addrs = new Float64Array(cap);
    this.#lens = new Uint32Array(cap);
    this.#offsets = new Int32Array(cap);
    this.#regions = new Array<GuestRegion | null>(cap).fill(null);
    this.#reader = new ChainReader(this);
    this.#writer = new ChainWriter(this);
  }

  /** The head descriptor index (what goes into the used ring), or -1 before the first fill. */
  get head(): number {
    return this.#head;
  }

  /** The guest memory the chain was read from. Throws a `TypeError` before the first fill. */
  get memory(): GuestMemory {
    if (this.#mem === null) throw new TypeError("descriptor chain is empty: fill or pop it first");
    return this.#mem;
  }

  /** Number of buffers (readable and writable). */
  get count(): number {
    return this.#count;
  }

  /** Number of device-readable buffers; they are indices `0 .. readableCount - 1`. */
  get readableCount(): number {
    return this.#readable;
  }

  /** Number of device-writable buffers; they follow the readable ones. */
  get writableCount(): number {
    return this.#count - this.#readable;
  }

  /** Total bytes of the device-readable buffers. */
  get readableBytes(): number {
    return this.#readableBytes;
  }

  /** Total bytes of the device-writable buffers. */
  get writableBytes(): number {
    return this.#writableBytes;
  }

  /** Guest address of buffer `i` (undefined past {@linkcode DescriptorChain.count}). */
  addr(i: number): number {
    return i === 0 ? this.#addr0 : this.#addrs[i]!;
  }

  /** Length of buffer `i` (undefined past {@linkcode DescriptorChain.count}). */
  len(i: number): number {
    return i === 0 ? this.#len0 : this.#lens[i]!;
  }

  /**
   * The guest memory region buffer `i` lies in, as found when the chain was
   * filled (undefined past {@linkcode DescriptorChain.count}). The whole
   * buffer was checked against the memory table then, and a
   * `GuestMemory`'s regions never change, so copies within the buffer go
   * straight to the region.
   */
  region(i: number): GuestRegion {
    return i === 0 ? this.#region0! : this.#regions[i]!;
  }

  /**
   * Offset of buffer `i` inside {@linkcode DescriptorChain.region}`(i)`, or
   * -1 when it is 2^31 or more (then use `addr(i) - region(i).start`).
   */
  offset(i: number): number {
    return i === 0 ? this.#offset0 : this.#offsets[i]!;
  }

  /** True when buffer `i` is device-writable. */
  isWritable(i: number): boolean {
    return i >= this.#readable && i < this.#count;
  }

  /** The device-readable buffers, as new objects (not for the hot path). */
  readable(): GuestRange[] {
    const out: GuestRange[] = [];
    for (let i = 0; i < this.#readable; i++) {
      out.push({ addr: this.addr(i), len: this.len(i) });
    }
    return out;
  }

  /** The device-writable buffers, as new objects (not for the hot path). */
  writable(): GuestRange[] {
    const out: GuestRange[] = [];
    for (let i = this.#readable; i < this.#count; i++) {
      out.push({ addr: this.addr(i), len: this.len(i) });
    }
    return out;
  }

  /**
   * The chain's reader over its readable buffers. There is one per chain and
   * it rewinds whenever the chain is filled again.
   */
  get reader(): ChainReader {
    return this.#reader;
  }

  /**
   * The chain's writer over its writable buffers. There is one per chain and
   * it rewinds whenever the chain is filled again.
   */
  get writer(): ChainWriter {
    return this.#writer;
  }

  /**
   * Parses the chain starting at `head` in the descriptor table `table` of
   * `size` entries, replacing whatever this object held. `indirect` says
   * whether VIRTIO_RING_F_INDIRECT_DESC was negotiated.
   *
   * Throws a {@linkcode VirtqueueError} for every rule the driver broke; on
   * a throw the chain is left empty (no buffers, so its reader and writer
   * refuse every byte: nothing unchecked can be copied). Structural rules (length,
   * loops, order, overflow) are checked while walking; buffer addresses after
   * the walk, so a chain that is both too long in bytes and outside memory
   * reports the length overflow.
   */
  fill(mem: GuestMemory, table: DataView, size: number, head: number, indirect: boolean): void {
    // Fast path, the common case: one plain descriptor, read as typed-array
    // elements. Everything else goes to #fillChain. Kept apart so that this
    // stays under V8's inlining limit (460 bytecode bytes): with the general
    // walk inside, V8 called fill from the pop loops instead of inlining it
    // (--trace-turbo-inlining: "exceeds bytecode limit").
    const words = table === this.#table ? this.#words : this.#wordsOf(table);
    const w = head << 2;
    // Each field is read once: a driver rewriting the table meanwhile
    // cannot make two reads of one field disagree. -1: not this path.
    const flags = words !== null && (head >>> 0) === head && head < size ? words[w + 3]! : -1;
    if (flags < 0 || (flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT)) !== 0) {
      return this.#fillChain(mem, table, size, head, indirect);
    }
    const lo = words![w]!, hi = words![w + 1]!, len = words![w + 2]!;
    const addr = hi === 0 ? lo : toAddr(hi, lo);
    const r = mem.regionOf(addr, len);
    // References are stored only when they change: a pointer store pays
    // for V8's write barrier, and a device pops from the same memory and
    // region nearly every time.
    if (this.#mem !== mem) this.#mem = mem;
    this.#head = head;
    // The reader and writer rewind when they next see a new generation:
    // one store here instead of six (3-4 ns of a 20 ns pop, measured).
    if (++this.#generation === GENERATION_LAP) this.#newLap();
    if (r === null) return this.#outside(head, addr, len);
    if (this.#region0 !== r) this.#region0 = r;
    const offset = addr - r.start;
    this.#offset0 = offset <= 0x7fffffff ? offset : -1;
    this.#addr0 = addr;
    this.#len0 = len;
    this.#count = 1;
    if ((flags & VIRTQ_DESC_F_WRITE) !== 0) {
      this.#readable = 0;
      this.#readableBytes = 0;
      this.#writableBytes = len;
    } else {
      this.#readable = 1;
      this.#readableBytes = len;
      this.#writableBytes = 0;
    }
  }

  /**
   * The general walk of {@linkcode DescriptorChain.fill} (several
   * descriptors, or an indirect table), apart so that the one-descriptor
   * path stays small enough for V8 to inline into the pop.
   */
  #fillChain(
    mem: GuestMemory,
    table: DataView,
    size: number,
    head: number,
    indirect: boolean,
  ): void {
    try {
      this.#walkChain(mem, table, size, head, indirect);
    } catch (e) {
      // Buffers pushed before the error have not been checked against memory.
      throw this.#emptied(e);
    }
  }

  /**
   * Throws the `address` error for a one-descriptor chain outside memory,
   * emptying the chain. Apart from fill so that fill stays under V8's
   * inlining limit (one bytecode too many made it a call: 2 ns a chain).
   */
  #outside(head: number, addr: number, len: number): never {
    throw this.#emptied(VirtqueueError.address(head, addr, len));
  }

  /** Starts a new lap of generations (see {@linkcode DescriptorChain.generation}). */
  #newLap(): void {
    this.#generation = 0;
    this.#reader.rewind();
    this.#writer.rewind();
    this.#generation = 1;
  }

  /** Empties the chain and returns `e`, for the caller to throw. */
  #emptied(e: unknown): unknown {
    this.#clear();
    return e;
  }

  /** No buffers: the reader and writer refuse every byte. */
  #clear(): void {
    this.#count = 0;
    this.#readable = 0;
    this.#readableBytes = 0;
    this.#writableBytes = 0;
  }

  /** The walk of {@linkcode DescriptorChain.#fillChain}; throws on the first broken rule. */
  #walkChain(
    mem: GuestMemory,
    table: DataView,
    size: number,
    head: number,
    indirect: boolean,
  ): void {
    this.#mem = mem;
    this.#head = head;
    this.#clear();
    if (++this.#generation === GENERATION_LAP) this.#newLap();
    if (!(head >= 0 && head < size)) throw VirtqueueError.headOutOfRange(head, size);
    let i = head;
    let ttl = size;
    for (;;) {
      if (ttl === 0) throw VirtqueueError.chainTooLong(head, size);
      ttl--;
      const o = i * DESC_SIZE;
      const lo = table.getUint32(o, true);
      const hi = table.getUint32(o + 4, true);
      const len = table.getUint32(o + 8, true);
      const flags = table.getUint16(o + 12, true);
      const addr = toAddr(hi, lo);
      if ((flags & VIRTQ_DESC_F_INDIRECT) !== 0) {
        if (!indirect) throw VirtqueueError.indirectNotNegotiated(head, i);
        if ((flags & VIRTQ_DESC_F_NEXT) !== 0) throw VirtqueueError.indirectWithNext(head, i);
        // The WRITE flag of the descriptor naming the table is ignored, as the
        // specification requires; the table's own entries say what is writable.
        this.#fillIndirect(mem, addr, len, size);
        break;
      }
      this.#push(addr, len, (flags & VIRTQ_DESC_F_WRITE) !== 0);
      if ((flags & VIRTQ_DESC_F_NEXT) === 0) break;
      const next = table.getUint16(o + 14, true);
      if (next >= size) throw VirtqueueError.nextOutOfRange(head, next, size, "descriptor table");
      i = next;
    }
    for (let k = 0; k < this.#count; k++) {
      const a = this.addr(k), l = this.len(k);
      const r = mem.regionOf(a, l);
      if (r === null) throw VirtqueueError.address(head, a, l);
      const offset = a - r.start <= 0x7fffffff ? a - r.start : -1;
      if (k === 0) {
        this.#region0 = r;
        this.#offset0 = offset;
      } else {
        this.#regions[k] = r;
        this.#offsets[k] = offset;
      }
    }
  }

  /**
   * Remembers `table` and returns a u32 view of it, or null when one cannot
   * alias it exactly (big-endian machine, or a table not 4-byte aligned in
   * its buffer); the DataView is used then.
   */
  #wordsOf(table: DataView): Uint32Array | null {
    this.#table = table;
    this.#words = LITTLE_ENDIAN && table.byteOffset % 4 === 0
      ? new Uint32Array(table.buffer, table.byteOffset, table.byteLength >>> 2)
      : null;
    return this.#words;
  }

  #fillIndirect(mem: GuestMemory, addr: number, len: number, size: number): void {
    const head = this.#head;
    if (len === 0 || len % DESC_SIZE !== 0 || len > size * DESC_SIZE) {
      throw VirtqueueError.indirectLength(head, len, size);
    }
    let table: DataView;
    try {
      // The table is read through GuestMemory, which checks it right here.
      const b = mem.bytes(addr, len);
      table = new DataView(b.buffer, b.byteOffset, len);
    } catch (e) {
      if (e instanceof GuestMemoryError) {
        throw VirtqueueError.address(head, addr, len, { cause: e });
      }
      throw e;
    }
    const entries = len / DESC_SIZE;
    let i = 0;
    let ttl = entries;
    for (;;) {
      if (ttl === 0) throw VirtqueueError.chainTooLong(head, entries);
      ttl--;
      const o = i * DESC_SIZE;
      const lo = table.getUint32(o, true);
      const hi = table.getUint32(o + 4, true);
      const dlen = table.getUint32(o + 8, true);
      const flags = table.getUint16(o + 12, true);
      if ((flags & VIRTQ_DESC_F_INDIRECT) !== 0) throw VirtqueueError.nestedIndirect(head, i);
      this.#push(
        toAddr(hi, lo),
        dlen,
        (flags & VIRTQ_DESC_F_WRITE) !== 0,
      );
      if ((flags & VIRTQ_DESC_F_NEXT) === 0) return;
      const next = table.getUint16(o + 14, true);
      if (next >= entries) {
        throw VirtqueueError.nextOutOfRange(head, next, entries, "indirect table");
      }
      i = next;
    }
  }

  #push(addr: number, len: number, writable: boolean): void {
    if (writable) {
      this.#writableBytes += len;
    } else {
      if (this.#count !== this.#readable) {
        throw VirtqueueError.readableAfterWritable(this.#head, this.#count);
      }
      this.#readable++;
      this.#readableBytes += len;
    }
    const total = this.#readableBytes + this.#writableBytes;
    if (total >= TWO_POW_32) throw VirtqueueError.lengthOverflow(this.#head, total);
    const i = this.#count;
    if (i === 0) {
      this.#addr0 = addr;
      this.#len0 = len;
    } else {
      if (i === this.#addrs.length) this.#grow();
      this.#addrs[i] = addr;
      this.#lens[i] = len;
    }
    this.#count = i + 1;
  }

  #grow(): void {
    // Rare: only a chain longer than any seen before on this object pays for it.
    const addrs = new Float64Array(this.#addrs.length * 2);
    const lens = new Uint32Array(this.#lens.length * 2);
    const offsets = new Int32Array(this.#lens.length * 2);
    addrs.set(this.#addrs);
    lens.set(this.#lens);
    offsets.set(this.#offsets);
    this.#addrs = addrs;
    this.#lens = lens;
    this.#offsets = offsets;
    this.#regions = this.#regions.concat(new Array<GuestRegion | null>(lens.length / 2).fill(null));
  }
}

/**
 * Copies up to this many bytes go word by word through DataViews; larger
 * ones through `Uint8Array.set`. Why: `GuestMemory.bytes` allocates a
 * subarray per call, which makes a 64-byte copy cost about 28 ns against
 * 7.5 ns for {@linkcode copyWords} (measured), and small messages are the
 * hot path.
 */
const SMALL_COPY = 256;

/**
 * Offset inside `chain.region(seg)` of byte `off` of buffer `seg`. An
 * integer add in the common case; regions of 2 GiB or more take the
 * floating-point way.
 */
function regionOffset(chain: DescriptorChain, seg: number, off: number): number {
  const base = chain.offset(seg);
  return base >= 0 ? base + off : chain.addr(seg) - chain.region(seg).start + off;
}

/**
 * Copies `n` bytes between DataViews, 16 at a time. 64-bit BigInt accesses
 * are exact (no NaN canonicalization as with floats) and the optimizing
 * compiler keeps them in registers: 7.5 ns for 64 bytes here, against 17 ns
 * for a 32-bit loop and 28 ns for a subarray and `set`.
 */
function copyWords(from: DataView, fromOff: number, to: DataView, toOff: number, n: number): void {
  // Offsets below 2^31 (every region under 2 GiB) take the int32 loops here;
  // a loop over doubles costs more. One function, not a wrapper around the
  // int32 copy: the reader's and writer's fast paths then fit V8's inlining
  // budget with the copy in them (with the wrapper, the copy stayed a call;
  // --trace-turbo-inlining).
  if (fromOff + n > 0x7fffffff || toOff + n > 0x7fffffff) {
    copyBytesFar(from, fromOff, to, toOff, n);
    return;
  }
  let s = fromOff | 0, d = toOff | 0, left = n | 0;
  // Little-endian on both sides: the bytes move unchanged and, on the
  // little-endian machines vrdma runs on, without byte swaps.
  while (left >= 16) {
    to.setBigUint64(d, from.getBigUint64(s, true), true);
    to.setBigUint64(d + 8, from.getBigUint64(s + 8, true), true);
    s = (s + 16) | 0, d = (d + 16) | 0, left = (left - 16) | 0;
  }
  // The tail in at most four steps (8, 4, then bytes), not byte by byte:
  // 40-byte copies took 8.9 ns with a byte loop for their last 8, 5.6 ns so.
  if (left >= 8) {
    to.setBigUint64(d, from.getBigUint64(s, true), true);
    s = (s + 8) | 0, d = (d + 8) | 0, left = (left - 8) | 0;
  }
  if (left >= 4) {
    to.setUint32(d, from.getUint32(s, true), true);
    s = (s + 4) | 0, d = (d + 4) | 0, left = (left - 4) | 0;
  }
  for (; left > 0; s = (s + 1) | 0, d = (d + 1) | 0, left = (left - 1) | 0) {
    to.setUint8(d, from.getUint8(s));
  }
}

/** {@linkcode copyWords} for offsets at or above 2^31, byte by byte. */
function copyBytesFar(
  from: DataView,
  fromOff: number,
  to: DataView,
  toOff: number,
  n: number,
): void {
  let s = fromOff, d = toOff;
  const end = fromOff + n;
  for (; s < end; s++, d++) to.setUint8(d, from.getUint8(s));
}

/** Caches a DataView of the caller's last array. */
class CopyCache {
  #bytes: Uint8Array | null = null;
  #view: DataView | null = null;

  viewOf(bytes: Uint8Array): DataView {
    if (bytes !== this.#bytes || this.#view === null) {
      this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      this.#bytes = bytes;
    }
    return this.#view;
  }
}

/**
 * Reads the device-readable part of a chain as one byte stream.
 *
 * @example
 * ```ts
 * import { GuestMemory } from "./memory.ts";
 * import { DescriptorChain } from "./descriptor_chain.ts";
 * const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(4096), 0);
 * mem.setAddr64(0, 0x100); mem.setU32(8, 3); // one readable buffer of 3 bytes
 * mem.write(0x100, new Uint8Array([1, 2, 3]));
 * const chain = new DescriptorChain();
 * chain.fill(mem, new DataView(mem.bytes(0, 16).buffer, 0, 16), 1, 0, false);
 * const out = new Uint8Array(3);
 * chain.reader.read(out);
 * if (out.join() !== "1,2,3") throw new Error("wrong bytes");
 * ```
 */
export class ChainReader {
  readonly #chain: DescriptorChain;
  readonly #cache = new CopyCache();
  #seg = 0;
  #off = 0;
  #pos = 0;
  #gen = -1;

  /** A reader at the start of `chain`'s readable buffers. */
  constructor(chain: DescriptorChain) {
    this.#chain = chain;
  }

  /** Bytes read (or skipped) so far. */
  get position(): number {
    this.#sync();
    return this.#pos;
  }

  /** Readable bytes left. */
  get remaining(): number {
    this.#sync();
    return this.#chain.readableBytes - this.#pos;
  }

  /** Goes back to the first readable byte. */
  rewind(): void {
    this.#gen = this.#chain.generation;
    this.#seg = 0;
    this.#off = 0;
    this.#pos = 0;
  }

  /** Rewinds when the chain was filled again since this reader last looked. */
  #sync(): void {
    if (this.#gen !== this.#chain.generation) this.rewind();
  }

  /**
   * Fills all of `dst` with the next readable bytes. Throws a
   * {@linkcode VirtqueueError} of kind `overrun` (reading nothing) when fewer
   * than `dst.length` bytes remain.
   */
  read(dst: Uint8Array): void {
    const want = dst.length;
    const chain = this.#chain;
    this.#sync();
    const seg = this.#seg;
    // Fast path: a small read that the current buffer satisfies alone.
    // No address check here: fill checked the whole buffer against the
    // memory table, and a copy stays inside the buffer.
    const off = this.#off;
    if (want <= SMALL_COPY && seg < chain.readableCount && chain.len(seg) - off >= want) {
      const from = chain.region(seg).view;
      copyWords(from, regionOffset(chain, seg, off), this.#cache.viewOf(dst), 0, want);
      this.#off = off + want;
      this.#pos += want;
      return;
    }
    this.#walk(dst, want);
  }

  /** Skips `n` readable bytes (same errors as {@linkcode ChainReader.read}). */
  skip(n: number): void {
    this.#sync();
    this.#walk(null, n);
  }

  #walk(dst: Uint8Array | null, want: number): void {
    const chain = this.#chain;
    const remaining = chain.readableBytes - this.#pos;
    if (!(want >= 0 && want <= remaining)) {
      throw VirtqueueError.overrun("readable", want, remaining);
    }
    let done = 0;
    while (done < want) {
      const left = chain.len(this.#seg) - this.#off;
      if (left === 0) {
        this.#seg++;
        this.#off = 0;
        continue;
      }
      const n = left < want - done ? left : want - done;
      if (dst !== null) {
        const r = chain.region(this.#seg), at = regionOffset(chain, this.#seg, this.#off);
        if (n <= SMALL_COPY) {
          copyWords(r.view, at, this.#cache.viewOf(dst), done, n);
        } else {
          dst.set(r.bytes.subarray(at, at + n), done);
        }
      }
      done += n;
      this.#off += n;
    }
    this.#pos += want;
  }
}

/**
 * Writes the device-writable part of a chain as one byte stream.
 * {@linkcode ChainWriter.position} is what the device reports as the used
 * length.
 *
 * @example
 * ```ts
 * import { GuestMemory } from "./memory.ts";
 * import { DescriptorChain } from "./descriptor_chain.ts";
 * const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(4096), 0);
 * mem.setAddr64(0, 0x100); mem.setU32(8, 4); mem.setU16(12, 2); // one writable buffer
 * const chain = new DescriptorChain();
 * chain.fill(mem, new DataView(mem.bytes(0, 16).buffer, 0, 16), 1, 0, false);
 * chain.writer.write(new Uint8Array([7, 7]));
 * if (mem.u16(0x100) !== 0x0707 || chain.writer.position !== 2) throw new Error("not written");
 * ```
 */
export class ChainWriter {
  readonly #chain: DescriptorChain;
  readonly #cache = new CopyCache();
  #seg = 0;
  #off = 0;
  #pos = 0;
  #gen = -1;

  /** A writer at the start of `chain`'s writable buffers. */
  constructor(chain: DescriptorChain) {
    this.#chain = chain;
  }

  /** Bytes written (or skipped) so far. */
  get position(): number {
    this.#sync();
    return this.#pos;
  }

  /** Writable bytes left. */
  get remaining(): number {
    this.#sync();
    return this.#chain.writableBytes - this.#pos;
  }

  /** Goes back to the first writable byte. */
  rewind(): void {
    this.#gen = this.#chain.generation;
    this.#seg = this.#chain.readableCount;
    this.#off = 0;
    this.#pos = 0;
  }

  /** Rewinds when the chain was filled again since this writer last looked. */
  #sync(): void {
    if (this.#gen !== this.#chain.generation) this.rewind();
  }

  /**
   * Writes all of `src` into the next writable bytes. Throws a
   * {@linkcode VirtqueueError} of kind `overrun` (writing nothing) when fewer
   * than `src.length` bytes remain.
   */
  write(src: Uint8Array): void {
    const want = src.length;
    const chain = this.#chain;
    this.#sync();
    const seg = this.#seg;
    // Fast path: a small write that the current buffer takes alone.
    // No address check here, as in ChainReader.read.
    const off = this.#off;
    if (want <= SMALL_COPY && seg < chain.count && chain.len(seg) - off >= want) {
      const to = chain.region(seg).view;
      copyWords(this.#cache.viewOf(src), 0, to, regionOffset(chain, seg, off), want);
      this.#off = off + want;
      this.#pos += want;
      return;
    }
    this.#walk(src, want);
  }

  /** Skips `n` writable bytes, leaving them as they are (same errors as `write`). */
  skip(n: number): void {
    this.#sync();
    this.#walk(null, n);
  }

  #walk(src: Uint8Array | null, want: number): void {
    const chain = this.#chain;
    const remaining = chain.writableBytes - this.#pos;
    if (!(want >= 0 && want <= remaining)) {
      throw VirtqueueError.overrun("writable", want, remaining);
    }
    let done = 0;
    while (done < want) {
      const left = chain.len(this.#seg) - this.#off;
      if (left === 0) {
        this.#seg++;
        this.#off = 0;
        continue;
      }
      const n = left < want - done ? left : want - done;
      if (src !== null) {
        const r = chain.region(this.#seg), at = regionOffset(chain, this.#seg, this.#off);
        if (n <= SMALL_COPY) {
          copyWords(this.#cache.viewOf(src), done, r.view, at, n);
        } else {
          r.bytes.set(n === src.length ? src : src.subarray(done, done + n), at);
        }
      }
      done += n;
      this.#off += n;
    }
    this.#pos += want;
  }
}
