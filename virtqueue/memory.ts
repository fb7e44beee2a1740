/**
 * Guest memory: the address space the driver and the device share.
 *
 * Everything the device touches lives here — rings, WQEs, CQE slots and every
 * registered buffer — addressed by guest addresses, never by JS references.
 * The device side treats every address as hostile, so every accessor checks
 * its range at the moment of access and throws {@linkcode GuestMemoryError}
 * (a `RangeError`) instead of wrapping, clamping or touching anything else.
 *
 * One class serves both backings (a `SharedArrayBuffer` in tests, an
 * FFI-mapped memfd between processes) so the same queue code runs over both
 * and every call site stays monomorphic.
 *
 * Multi-byte values are little-endian, as VIRTIO requires. The atomic 16-bit
 * accessors use `Atomics` on the platform's native order, which is
 * little-endian on every machine Deno runs vrdma on (x86_64, aarch64).
 *
 * @module
 */

/** A guest address or length that does not lie inside guest memory. */
export class GuestMemoryError extends RangeError {
  /** The guest address that was asked for. */
  readonly addr: number;
  /** The number of bytes asked for at {@linkcode GuestMemoryError.addr}. */
  readonly length: number;

  /** Builds the error for an access of `length` bytes at `addr`. */
  constructor(addr: number, length: number, why = "is outside guest memory") {
    super(`guest range 0x${addr.toString(16)}+${length} ${why}`);
    this.name = "GuestMemoryError";
    this.addr = addr;
    this.length = length;
  }
}

/** One contiguous piece of guest memory and where it sits in guest address space. */
export interface MemoryRegion {
  /** Guest address of the first byte. */
  guestAddr: number;
  /** The bytes; `byteLength` is the region's size. */
  buffer: ArrayBufferLike;
}

/**
 * One region of guest memory as views over all of it. A `GuestMemory` hands
 * out the same object for a region every time (regions never change after
 * construction), so a caller may keep it and copy at integer offsets.
 */
export interface GuestRegion {
  /** Guest address of the region's first byte. */
  readonly start: number;
  /** Guest address one past the region's last byte. */
  readonly end: number;
  /** A DataView over the whole region (offset 0 is guest address `start`). */
  readonly view: DataView;
  /** A Uint8Array over the whole region (index 0 is guest address `start`). */
  readonly bytes: Uint8Array;
}

interface MappedRegion {
  start: number;
  end: number;
  size: number;
  view: DataView;
  bytes: Uint8Array;
  halves: Uint16Array;
  words: Uint32Array;
}

/** Largest guest address we model: addresses stay exact JS numbers. */
export const MAX_GUEST_ADDR: number = Number.MAX_SAFE_INTEGER;

/**
 * Checked, little-endian access to guest memory made of one or more regions.
 *
 * @example
 * ```ts
 * import { GuestMemory } from "./memory.ts";
 * const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(4096), 0x10000);
 * mem.setU32(0x10010, 0xdeadbeef);
 * if (mem.u32(0x10010) !== 0xdeadbeef) throw new Error("round trip failed");
 * ```
 */
export class GuestMemory {
  readonly #regions: MappedRegion[];
  /** The region the last access hit: rings and buffers cluster, so this is nearly always it. */
  #last: MappedRegion;

  /**
   * Maps the given regions. Regions must be non-empty and must not overlap.
   *
   * @throws {RangeError} for an empty, overlapping or out-of-range region.
   */
  constructor(regions: readonly MemoryRegion[]) {
    if (regions.length === 0) throw new RangeError("guest memory needs at least one region");
    const mapped = regions.map((r, i): MappedRegion => {
      const size = r.buffer.byteLength;
      if (!Number.isSafeInteger(r.guestAddr) || r.guestAddr < 0) {
        throw new RangeError(`region ${i}: guest address ${r.guestAddr} is not a valid address`);
      }
      if (size === 0) throw new RangeError(`region ${i}: size 0 at 0x${r.guestAddr.toString(16)}`);
      if (r.guestAddr + size > MAX_GUEST_ADDR) {
        throw new RangeError(`region ${i}: 0x${r.guestAddr.toString(16)}+${size} is too high`);
      }
      return {
        start: r.guestAddr,
        end: r.guestAddr + size,
        size,
        view: new DataView(r.buffer, 0, size),
        bytes: new Uint8Array(r.buffer, 0, size),
        halves: new Uint16Array(r.buffer, 0, size >>> 1),
        words: new Uint32Array(r.buffer, 0, size >>> 2),
      };
    }).sort((a, b) => a.start - b.start);
    for (let i = 1; i < mapped.length; i++) {
      const prev = mapped[i - 1]!, cur = mapped[i]!;
      if (cur.start < prev.end) {
        throw new RangeError(
          `regions overlap: 0x${prev.start.toString(16)}+${prev.size} and ` +
            `0x${cur.start.toString(16)}+${cur.size}`,
        );
      }
    }
    this.#regions = mapped;
    this.#last = mapped[0]!;
  }

  /** Guest memory of one region: `buffer` placed at guest address `guestAddr`. */
  static fromBuffer(buffer: ArrayBufferLike, guestAddr = 0): GuestMemory {
    return new GuestMemory([{ guestAddr, buffer }]);
  }

  /** The regions, lowest address first (guest address and size). */
  get regions(): { guestAddr: number; size: number }[] {
    return this.#regions.map((r) => ({ guestAddr: r.start, size: r.size }));
  }

  /** Total bytes over all regions. */
  get size(): number {
    let n = 0;
    for (const r of this.#regions) n += r.size;
    return n;
  }

  /** True when `[addr, addr + length)` lies inside one region. Never throws. */
  contains(addr: number, length: number): boolean {
    return this.#find(addr, length) !== undefined;
  }

  /**
   * The region holding all of `[addr, addr + length)`, or null when the range
   * is not guest memory. Never throws and allocates nothing. A caller that
   * keeps the region (a parsed descriptor chain) may copy within the checked
   * range later without asking again: the regions of a `GuestMemory` never
   * change.
   *
   * @example
   * ```ts
   * import { GuestMemory } from "./memory.ts";
   * const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(4096), 0x10000);
   * const r = mem.regionOf(0x10010, 4)!;
   * r.view.setUint32(0x10010 - r.start, 5, true);
   * if (mem.u32(0x10010) !== 5 || mem.regionOf(0x10ffe, 4) !== null) throw new Error("wrong region");
   * ```
   */
  regionOf(addr: number, length: number): GuestRegion | null {
    return this.#find(addr, length) ?? null;
  }

  /**
   * Returns the region holding `[addr, addr + length)` and the offset in it.
   * Zero-length ranges are valid anywhere inside or at the end of a region.
   */
  #find(addr: number, length: number): MappedRegion | undefined {
    // Guest values are hostile: reject NaN, fractions, negatives and overflow
    // before any arithmetic can wrap.
    // Integers below 2^32 (nearly every access) pass with two integer tests;
    // anything else takes the full safe-integer check.
    if (
      ((addr >>> 0) !== addr || (length >>> 0) !== length) &&
      !(addr >= 0 && length >= 0 && Number.isSafeInteger(addr + length))
    ) return undefined;
    const last = this.#last;
    if (addr >= last.start && addr + length <= last.end) return last;
    return this.#search(addr, length);
  }

  /**
   * The search through all regions, apart from {@linkcode GuestMemory.#find}
   * so that its common case stays small enough for V8 to inline into the
   * per-chain paths (perf showed it as a function of its own before).
   */
  #search(addr: number, length: number): MappedRegion | undefined {
    for (const r of this.#regions) {
      if (addr >= r.start && addr + length <= r.end) {
        this.#last = r;
        return r;
      }
    }
    return undefined;
  }

  #region(addr: number, length: number): MappedRegion {
    const r = this.#find(addr, length);
    if (r === undefined) throw new GuestMemoryError(addr, length);
    return r;
  }

  /** Throws {@linkcode GuestMemoryError} unless the whole range is guest memory. */
  check(addr: number, length: number): void {
    this.#region(addr, length);
  }

  /** Reads a byte. */
  u8(addr: number): number {
    const r = this.#region(addr, 1);
    return r.bytes[addr - r.start]!;
  }

  /** Reads a little-endian u16. */
  u16(addr: number): number {
    const r = this.#region(addr, 2);
    return r.view.getUint16(addr - r.start, true);
  }

  /** Reads a little-endian u32. */
  u32(addr: number): number {
    const r = this.#region(addr, 4);
    return r.view.getUint32(addr - r.start, true);
  }

  /** Reads a little-endian u64 as a bigint. */
  u64(addr: number): bigint {
    const r = this.#region(addr, 8);
    return r.view.getBigUint64(addr - r.start, true);
  }

  /**
   * Reads a little-endian u64 as a number, or returns -1 when it is above
   * {@linkcode MAX_GUEST_ADDR}: guest addresses travel as u64 but anything
   * that large is outside guest memory anyway, and a number is much cheaper.
   */
  addr64(addr: number): number {
    const r = this.#region(addr, 8);
    const off = addr - r.start;
    const lo = r.view.getUint32(off, true);
    const hi = r.view.getUint32(off + 4, true);
    return hi >= 0x200000 ? -1 : hi * 0x1_0000_0000 + lo;
  }

  /** Writes a byte. */
  setU8(addr: number, value: number): void {
    const r = this.#region(addr, 1);
    r.bytes[addr - r.start] = value;
  }

  /** Writes a little-endian u16. */
  setU16(addr: number, value: number): void {
    const r = this.#region(addr, 2);
    r.view.setUint16(addr - r.start, value, true);
  }

  /** Writes a little-endian u32. */
  setU32(addr: number, value: number): void {
    const r = this.#region(addr, 4);
    r.view.setUint32(addr - r.start, value, true);
  }

  /** Writes a little-endian u64 from a bigint. */
  setU64(addr: number, value: bigint): void {
    const r = this.#region(addr, 8);
    r.view.setBigUint64(addr - r.start, value, true);
  }

  /** Writes a u64 from a non-negative safe-integer number (see {@linkcode GuestMemory.addr64}). */
  setAddr64(addr: number, value: number): void {
    const r = this.#region(addr, 8);
    const off = addr - r.start;
    r.view.setUint32(off, value >>> 0, true);
    r.view.setUint32(off + 4, Math.floor(value / 0x1_0000_0000), true);
  }

  #halfIndex(addr: number): { r: MappedRegion; i: number } {
    const r = this.#region(addr, 2);
    const off = addr - r.start;
    if ((off & 1) !== 0) throw new GuestMemoryError(addr, 2, "is not 2-byte aligned for an atomic");
    return { r, i: off >>> 1 };
  }

  /** Atomically reads a u16 (ring indices): sequentially consistent, 2-byte aligned. */
  loadU16(addr: number): number {
    const { r, i } = this.#halfIndex(addr);
    return Atomics.load(r.halves, i);
  }

  /** Atomically writes a u16 (ring indices): everything written before is visible first. */
  storeU16(addr: number, value: number): void {
    const { r, i } = this.#halfIndex(addr);
    Atomics.store(r.halves, i, value);
  }

  #wordIndex(addr: number): { r: MappedRegion; i: number } {
    const r = this.#region(addr, 4);
    const off = addr - r.start;
    if ((off & 3) !== 0) throw new GuestMemoryError(addr, 4, "is not 4-byte aligned for an atomic");
    return { r, i: off >>> 2 };
  }

  /** Atomically reads a u32 (doorbell words, flags), 4-byte aligned. */
  loadU32(addr: number): number {
    const { r, i } = this.#wordIndex(addr);
    return Atomics.load(r.words, i);
  }

  /** Atomically writes a u32, 4-byte aligned. */
  storeU32(addr: number, value: number): void {
    const { r, i } = this.#wordIndex(addr);
    Atomics.store(r.words, i, value);
  }

  /** Atomically ORs `bits` into a u32 and returns the old value (doorbell: set a queue's bit). */
  orU32(addr: number, bits: number): number {
    const { r, i } = this.#wordIndex(addr);
    return Atomics.or(r.words, i, bits);
  }

  /** Atomically replaces a u32 and returns the old value (doorbell: take all set bits). */
  exchangeU32(addr: number, value: number): number {
    const { r, i } = this.#wordIndex(addr);
    return Atomics.exchange(r.words, i, value);
  }

  /**
   * A live view of `[addr, addr + length)`. Writes through it reach guest
   * memory. The range must lie inside one region.
   */
  bytes(addr: number, length: number): Uint8Array {
    const r = this.#region(addr, length);
    return r.bytes.subarray(addr - r.start, addr - r.start + length);
  }

  /** Copies guest bytes at `addr` into `dst` (all of it). */
  read(addr: number, dst: Uint8Array): void {
    dst.set(this.bytes(addr, dst.length));
  }

  /** Copies `src` into guest memory at `addr`. */
  write(addr: number, src: Uint8Array): void {
    this.bytes(addr, src.length).set(src);
  }

  /** Fills `[addr, addr + length)` with `value`. */
  fill(addr: number, length: number, value = 0): void {
    this.bytes(addr, length).fill(value);
  }
}
