/**
 * Shared memory between processes (and between threads of one process).
 *
 * The driver creates guest memory as a memfd and maps it; the backend maps
 * the same fd after it arrives over the control socket. Both sides then see
 * one `ArrayBuffer` over the same pages.
 *
 * The backend must survive a hostile guest. Touching a page of a `MAP_SHARED`
 * mapping that lies past the end of the file raises SIGBUS, which kills the
 * whole process (every guest it serves), so {@linkcode SharedMemory.map}
 * checks the file's size before mapping, and memfds made here are sealed
 * against shrinking so a peer cannot cut the file down after that check.
 *
 * @module
 */

import {
  closeFd,
  cString,
  lastError,
  libc,
  S_IFMT,
  S_IFREG,
  STAT_MODE,
  STAT_SIZE,
  STAT_SIZE_FIELD,
} from "./libc.ts";

const MFD_CLOEXEC = 0x0001;
const MFD_ALLOW_SEALING = 0x0002;
const PROT_READ = 0x1;
const PROT_WRITE = 0x2;
const MAP_SHARED = 0x01;
const MAP_FAILED = 0xffff_ffff_ffff_ffffn;
const F_ADD_SEALS = 1033;
const F_GET_SEALS = 1034;

/** Seal: no more seals may be added. */
export const F_SEAL_SEAL = 0x0001;
/** Seal: the file may not shrink. */
export const F_SEAL_SHRINK = 0x0002;
/** Seal: the file may not grow. */
export const F_SEAL_GROW = 0x0004;

/**
 * {@linkcode SharedMemory.map} was asked for bytes past the end of the file.
 * Mapping them would be a SIGBUS for the whole process on first touch.
 */
export class MapPastEndError extends RangeError {
  /** The fd that was to be mapped. */
  readonly fd: number;
  /** Offset into the file that was asked for. */
  readonly offset: number;
  /** Length that was asked for. */
  readonly size: number;
  /** The file's actual size. */
  readonly fileSize: number;

  /** Builds the error for mapping `size` bytes at `offset` of a `fileSize`-byte file. */
  constructor(fd: number, offset: number, size: number, fileSize: number) {
    super(
      `cannot map ${size} bytes at offset ${offset} of fd ${fd}: the file holds only ` +
        `${fileSize} bytes (touching a page past its end would raise SIGBUS)`,
    );
    this.name = "MapPastEndError";
    this.fd = fd;
    this.offset = offset;
    this.size = size;
    this.fileSize = fileSize;
  }
}

/** Options of {@linkcode SharedMemory.create}. */
export interface CreateOptions {
  /** Name shown in `/proc/<pid>/fd` (as `memfd:<name>`); default `"vrdma"`. */
  name?: string;
  /**
   * Seal the memfd against shrinking (and against further seals), so a
   * process it is shared with cannot truncate it under a mapping. Default true.
   */
  seal?: boolean;
}

/** Options of {@linkcode SharedMemory.map}. */
export interface MapOptions {
  /** Offset into the file, a multiple of the page size; default 0. */
  offset?: number;
  /**
   * Refuse a file that is not sealed against shrinking (`F_SEAL_SHRINK`):
   * without the seal, whoever else holds the fd can truncate the file later
   * and turn the next access into a SIGBUS. Default false, because plain
   * files (e.g. in /dev/shm) cannot be sealed.
   */
  requireSealed?: boolean;
}

function checkSize(size: number, what: string): void {
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new RangeError(`${what} must be a positive integer, got ${size}`);
  }
}

const statBuffer = new Uint8Array(new ArrayBuffer(STAT_SIZE));
const statView = new DataView(statBuffer.buffer);

/** `fstat(fd)` into the shared stat buffer. */
function statFd(fd: number): void {
  if (libc().fstat(fd, statBuffer) < 0) throw lastError("fstat", { target: `fd ${fd}` });
}

/**
 * The size in bytes of the file behind `fd` (`st_size` from `fstat`).
 *
 * @throws {SysError} if `fd` is not open.
 *
 * @example
 * ```ts
 * import { fileSize, SharedMemory } from "./shm.ts";
 * using mem = SharedMemory.create(8192);
 * if (fileSize(mem.fd) !== 8192) throw new Error("wrong size");
 * ```
 */
export function fileSize(fd: number): number {
  statFd(fd);
  return Number(statView.getBigInt64(STAT_SIZE_FIELD, true));
}

/**
 * The seals on `fd` (`F_SEAL_*` bits), or 0 for a file that cannot be sealed.
 *
 * @throws {SysError} if `fd` is not open.
 */
export function sealsOf(fd: number): number {
  const seals = libc().fcntl(fd, F_GET_SEALS, 0);
  if (seals >= 0) return seals;
  const e = lastError("fcntl", { target: `fd ${fd}` });
  // EINVAL: not a memfd, so there are no seals to report.
  if (e.code === "EINVAL") return 0;
  throw e;
}

function pageSize(): number {
  return libc().getpagesize();
}

/**
 * A `MAP_SHARED` mapping of a memfd (or any regular file) as an `ArrayBuffer`.
 *
 * @example
 * ```ts
 * import { SharedMemory } from "./shm.ts";
 * import { dupFd } from "./libc.ts";
 * using a = SharedMemory.create(4096, { name: "example" });
 * // map() takes ownership of the fd it maps, so give it a copy of a's.
 * using b = SharedMemory.map(dupFd(a.fd), 4096);
 * new Uint8Array(a.buffer)[10] = 42;
 * if (new Uint8Array(b.buffer)[10] !== 42) throw new Error("not shared");
 * ```
 */
export class SharedMemory {
  #fd: number;
  readonly #size: number;
  readonly #pointer: Deno.PointerObject;
  #buffer: ArrayBuffer;
  /** Whether close() unmaps and closes (false for an {@linkcode SharedMemory.attach} view). */
  readonly #owned: boolean;
  #closed = false;

  private constructor(fd: number, size: number, pointer: Deno.PointerObject, owned: boolean) {
    this.#fd = fd;
    this.#size = size;
    this.#pointer = pointer;
    this.#owned = owned;
    this.#buffer = Deno.UnsafePointerView.getArrayBuffer(pointer, size);
  }

  /**
   * Creates a zero-filled memfd of `size` bytes (`MFD_CLOEXEC`) and maps it.
   *
   * @throws {RangeError} for a size that is not a positive integer.
   * @throws {SysError} from `memfd_create`, `ftruncate`, `fcntl` or `mmap`.
   */
  static create(size: number, options: CreateOptions = {}): SharedMemory {
    checkSize(size, "shared memory size");
    const name = options.name ?? "vrdma";
    const sys = libc();
    const fd = sys.memfd_create(cString(name), MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) throw lastError("memfd_create", { target: name });
    try {
      if (sys.ftruncate(fd, BigInt(size)) < 0) throw lastError("ftruncate", { target: name });
      if (
        (options.seal ?? true) && sys.fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_SEAL) < 0
      ) {
        throw lastError("fcntl", { target: name, note: "could not seal against shrinking" });
      }
      return new SharedMemory(fd, size, mapFd(fd, size, 0, name), true);
    } catch (e) {
      closeFd(fd);
      throw e;
    }
  }

  /**
   * Maps `size` bytes at `offset` of `fd`, typically received from another
   * process. Before mapping it checks with `fstat` that `fd` is a regular
   * file holding at least `offset + size` bytes.
   *
   * On success the returned object owns `fd` ({@linkcode SharedMemory.close}
   * closes it); on failure `fd` stays open and is still the caller's.
   *
   * @throws {MapPastEndError} if the range reaches past the end of the file.
   * @throws {RangeError} for a bad size or an offset that is not page aligned.
   * @throws {TypeError} if `fd` is not a regular file, or is unsealed while
   *   `requireSealed` is set.
   * @throws {SysError} from `fstat` or `mmap`.
   */
  static map(fd: number, size: number, options: MapOptions = {}): SharedMemory {
    checkSize(size, "mapping size");
    const offset = options.offset ?? 0;
    if (!Number.isSafeInteger(offset) || offset < 0 || offset % pageSize() !== 0) {
      throw new RangeError(
        `mapping offset must be a non-negative multiple of the page size ${pageSize()}, got ${offset}`,
      );
    }
    statFd(fd);
    const mode = statView.getUint32(STAT_MODE, true);
    if ((mode & S_IFMT) !== S_IFREG) {
      throw new TypeError(
        `fd ${fd} is not a regular file (st_mode 0o${mode.toString(8)}): refusing to map it`,
      );
    }
    const actual = Number(statView.getBigInt64(STAT_SIZE_FIELD, true));
    if (offset + size > actual) throw new MapPastEndError(fd, offset, size, actual);
    if (options.requireSealed && (sealsOf(fd) & F_SEAL_SHRINK) === 0) {
      throw new TypeError(
        `fd ${fd} is not sealed against shrinking (F_SEAL_SHRINK): its owner could truncate it ` +
          `under the mapping`,
      );
    }
    return new SharedMemory(fd, size, mapFd(fd, size, offset, `fd ${fd}`), true);
  }

  /**
   * A view of memory another thread of this process mapped, rebuilt from its
   * {@linkcode SharedMemory.address} (an `ArrayBuffer` cannot cross to a
   * Worker without being copied, a pointer value can). The view owns nothing:
   * its {@linkcode SharedMemory.close} only detaches the buffer, and the
   * mapping must outlive it.
   *
   * @throws {RangeError} for a zero address or a bad size.
   *
   * @example
   * ```ts
   * import { SharedMemory } from "./shm.ts";
   * using mem = SharedMemory.create(4096);
   * using view = SharedMemory.attach(mem.address, mem.size); // e.g. inside a Worker
   * new Uint8Array(view.buffer)[0] = 9;
   * if (new Uint8Array(mem.buffer)[0] !== 9) throw new Error("not the same memory");
   * ```
   */
  static attach(pointerAddress: bigint, size: number): SharedMemory {
    checkSize(size, "attached size");
    const pointer = Deno.UnsafePointer.create(pointerAddress);
    if (pointer === null) throw new RangeError("cannot attach shared memory at address 0");
    return new SharedMemory(-1, size, pointer, false);
  }

  /** The file descriptor, or -1 once closed or for an attached view. */
  get fd(): number {
    return this.#fd;
  }

  /** Length of the mapping in bytes. */
  get size(): number {
    return this.#size;
  }

  /** Start of the mapping. */
  get pointer(): Deno.PointerValue {
    return this.#pointer;
  }

  /** Start of the mapping as a number, e.g. to hand to a Worker for {@linkcode SharedMemory.attach}. */
  get address(): bigint {
    return Deno.UnsafePointer.value(this.#pointer);
  }

  /**
   * The mapped bytes. Detached (length 0) after {@linkcode SharedMemory.close},
   * so a stale view reads nothing instead of faulting on unmapped memory.
   */
  get buffer(): ArrayBuffer {
    return this.#buffer;
  }

  /** Whether {@linkcode SharedMemory.close} has run. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Unmaps the memory and closes the fd. Safe to call more than once.
   *
   * Views made from {@linkcode SharedMemory.buffer} are detached first, so
   * they become empty rather than pointing at unmapped pages. Views made in
   * another thread (see {@linkcode SharedMemory.attach}) are not reachable
   * from here: stop those threads before closing.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    // Detach before unmapping: a transfer to length 0 allocates nothing and
    // leaves every typed array over the old buffer with length 0.
    this.#buffer = this.#buffer.transfer(0);
    if (!this.#owned) return;
    const fd = this.#fd;
    this.#fd = -1;
    const unmapped = libc().munmap(this.#pointer, BigInt(this.#size)) === 0;
    const error = unmapped ? undefined : lastError("munmap", { target: `fd ${fd}` });
    closeFd(fd);
    if (error !== undefined) throw error;
  }

  /** Same as {@linkcode SharedMemory.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

function mapFd(fd: number, size: number, offset: number, what: string): Deno.PointerObject {
  const pointer = libc().mmap(
    null,
    BigInt(size),
    PROT_READ | PROT_WRITE,
    MAP_SHARED,
    fd,
    BigInt(offset),
  );
  if (pointer === null || Deno.UnsafePointer.value(pointer) === MAP_FAILED) {
    throw lastError("mmap", { target: what });
  }
  return pointer;
}
