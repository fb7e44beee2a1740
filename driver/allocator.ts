/**
 * A first-fit range allocator over guest address space.
 *
 * The driver carves everything the device may touch — rings, the doorbell
 * area, command buffers and the buffers an application registers — out of the
 * one guest memory region. Free ranges are kept sorted and merged with their
 * neighbours, so freeing in any order returns the space to one piece.
 *
 * @module
 */

interface FreeRange {
  start: number;
  end: number;
}

/**
 * Hands out aligned ranges of `[base, base + size)`.
 *
 * @example
 * ```ts
 * import { RangeAllocator } from "./allocator.ts";
 * const a = new RangeAllocator(0x1000, 4096);
 * const x = a.alloc(100, 64);
 * a.free(x);
 * if (a.freeBytes !== 4096) throw new Error("leak");
 * ```
 */
export class RangeAllocator {
  readonly #free: FreeRange[];
  readonly #used = new Map<number, number>();
  readonly #base: number;
  readonly #size: number;

  /** Manages `size` bytes starting at guest address `base`. */
  constructor(base: number, size: number) {
    if (!Number.isSafeInteger(base) || base < 0) {
      throw new RangeError(`base ${base} is not an address`);
    }
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new RangeError(`size ${size} is not positive`);
    }
    this.#base = base;
    this.#size = size;
    this.#free = [{ start: base, end: base + size }];
  }

  /** Bytes not handed out. */
  get freeBytes(): number {
    let n = 0;
    for (const r of this.#free) n += r.end - r.start;
    return n;
  }

  /** Ranges handed out and not yet freed. */
  get allocations(): number {
    return this.#used.size;
  }

  /**
   * Returns the guest address of `length` bytes aligned to `align` (a power of
   * two). Throws a `RangeError` naming the size when nothing fits.
   */
  alloc(length: number, align = 64): number {
    if (!Number.isSafeInteger(length) || length <= 0) {
      throw new RangeError(`cannot allocate ${length} bytes: length must be a positive integer`);
    }
    if (!Number.isSafeInteger(align) || align <= 0 || (align & (align - 1)) !== 0) {
      throw new RangeError(`alignment ${align} is not a power of two`);
    }
    for (let i = 0; i < this.#free.length; i++) {
      const r = this.#free[i]!;
      const start = Math.ceil(r.start / align) * align;
      if (start + length > r.end) continue;
      const pieces: FreeRange[] = [];
      if (start > r.start) pieces.push({ start: r.start, end: start });
      if (start + length < r.end) pieces.push({ start: start + length, end: r.end });
      this.#free.splice(i, 1, ...pieces);
      this.#used.set(start, length);
      return start;
    }
    throw new RangeError(
      `cannot allocate ${length} bytes (align ${align}): ${this.freeBytes} of ${this.#size} free, ` +
        `largest piece ${this.#largest()}`,
    );
  }

  /** Returns a range from {@linkcode RangeAllocator.alloc}. Freeing twice throws a `RangeError`. */
  free(addr: number): void {
    const length = this.#used.get(addr);
    if (length === undefined) {
      throw new RangeError(`0x${addr.toString(16)} was not allocated here (or is already free)`);
    }
    this.#used.delete(addr);
    const range = { start: addr, end: addr + length };
    let i = 0;
    while (i < this.#free.length && this.#free[i]!.start < range.start) i++;
    this.#free.splice(i, 0, range);
    // Merge with the right neighbour, then the left one.
    const next = this.#free[i + 1];
    if (next !== undefined && next.start === range.end) {
      range.end = next.end;
      this.#free.splice(i + 1, 1);
    }
    const prev = this.#free[i - 1];
    if (prev !== undefined && prev.end === range.start) {
      prev.end = range.end;
      this.#free.splice(i, 1);
    }
  }

  /** True when `[addr, addr + length)` lies inside the managed space. */
  covers(addr: number, length: number): boolean {
    return addr >= this.#base && length >= 0 && addr + length <= this.#base + this.#size;
  }

  #largest(): number {
    let best = 0;
    for (const r of this.#free) best = Math.max(best, r.end - r.start);
    return best;
  }
}
