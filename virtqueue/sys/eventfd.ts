/**
 * Eventfds: the kick and call doorbells between driver and backend.
 *
 * An eventfd is a 64-bit kernel counter: a write adds to it, a read returns
 * it and resets it (or, in semaphore mode, returns 1 and decrements). It is
 * the cheapest cross-process wake-up that also works with epoll.
 *
 * {@linkcode EventFd.signal} sits on the notification path of every queue,
 * so it is one synchronous FFI call over a buffer allocated once per eventfd.
 *
 * @module
 */

import { closeFd, ERRNO, errno, lastError, libc, O_CLOEXEC, O_NONBLOCK } from "./libc.ts";

const EFD_SEMAPHORE = 1;
const EFD_CLOEXEC = O_CLOEXEC;
const EFD_NONBLOCK = O_NONBLOCK;
/** Largest value the counter can hold: a write that would reach 2^64-1 blocks or fails. */
const COUNTER_MAX = 0xffff_ffff_ffff_fffen;
const EIGHT = 8n;

/** Options of {@linkcode EventFd.create}. */
export interface EventFdOptions {
  /** `EFD_NONBLOCK`: {@linkcode EventFd.read} returns 0n instead of blocking. Default false. */
  nonblocking?: boolean;
  /** `EFD_SEMAPHORE`: each read returns 1n and decrements the counter. Default false. */
  semaphore?: boolean;
  /** Initial counter value (0 to 2^32-1, as `eventfd(2)` takes it). Default 0. */
  initial?: number;
}

/** Options of {@linkcode EventFd.fromFd}. */
export interface FromFdOptions {
  /**
   * Whether the new object owns the fd and closes it on
   * {@linkcode EventFd.close}. Default true. Set it to false when another
   * object in the same process (for example the one in the thread that
   * created the eventfd) owns it, so the fd is closed exactly once.
   */
  owned?: boolean;
}

/**
 * A Linux eventfd, always created `EFD_CLOEXEC`.
 *
 * @example
 * ```ts
 * import { EventFd } from "./eventfd.ts";
 * using efd = EventFd.create({ nonblocking: true });
 * efd.signal();
 * efd.signal(2n);
 * if (efd.read() !== 3n) throw new Error("counter lost writes");
 * if (efd.read() !== 0n) throw new Error("read did not reset the counter");
 * ```
 */
export class EventFd {
  #fd: number;
  readonly #owned: boolean;
  // Separate buffers for the two directions: a signal from a callback in the
  // middle of a read must not clobber the value being read.
  readonly #out = new BigUint64Array(new ArrayBuffer(8));
  readonly #outBytes = new Uint8Array(this.#out.buffer);
  readonly #in = new BigUint64Array(new ArrayBuffer(8));
  readonly #inBytes = new Uint8Array(this.#in.buffer);

  private constructor(fd: number, owned: boolean) {
    this.#fd = fd;
    this.#owned = owned;
  }

  /**
   * Creates an eventfd.
   *
   * @throws {RangeError} for an initial value outside 0..2^32-1.
   * @throws {SysError} from `eventfd`.
   */
  static create(options: EventFdOptions = {}): EventFd {
    const initial = options.initial ?? 0;
    if (!Number.isInteger(initial) || initial < 0 || initial > 0xffff_ffff) {
      throw new RangeError(`eventfd initial value must be an integer in 0..2^32-1, got ${initial}`);
    }
    let flags = EFD_CLOEXEC;
    if (options.nonblocking) flags |= EFD_NONBLOCK;
    if (options.semaphore) flags |= EFD_SEMAPHORE;
    const fd = libc().eventfd(initial, flags);
    if (fd < 0) throw lastError("eventfd");
    return new EventFd(fd, true);
  }

  /**
   * Wraps an eventfd received from elsewhere (another process over
   * SCM_RIGHTS, or a Worker's parent). Whether reads block follows the fd's
   * own `O_NONBLOCK` flag.
   *
   * @throws {RangeError} for a negative or non-integer fd.
   */
  static fromFd(fd: number, options: FromFdOptions = {}): EventFd {
    if (!Number.isInteger(fd) || fd < 0) {
      throw new RangeError(`eventfd must be a non-negative integer fd, got ${fd}`);
    }
    return new EventFd(fd, options.owned ?? true);
  }

  /** The file descriptor, or -1 once closed. */
  get fd(): number {
    return this.#fd;
  }

  /**
   * Adds `n` to the counter, waking whoever waits on the fd. One FFI call, no
   * allocation. On a blocking eventfd whose counter would overflow this
   * blocks until a reader drains it; on a nonblocking one it throws EAGAIN.
   *
   * @throws {RangeError} for `n` outside 0..2^64-2 (a typed array would wrap it silently).
   * @throws {SysError} from `write` (EBADF once closed, EAGAIN on overflow).
   */
  signal(n: bigint = 1n): void {
    if (n < 0n || n > COUNTER_MAX) {
      throw new RangeError(`eventfd signal value must be in 0..2^64-2, got ${n}`);
    }
    this.#out[0] = n;
    if (libc().write(this.#fd, this.#outBytes, EIGHT) !== EIGHT) {
      throw lastError("write", { target: this.#describe() });
    }
  }

  /**
   * Reads and resets the counter (in semaphore mode: returns 1n and
   * decrements). A blocking eventfd waits for a nonzero counter; a
   * nonblocking one returns 0n when the counter is zero.
   *
   * @throws {SysError} from `read` (EBADF once closed).
   */
  read(): bigint {
    const sys = libc();
    for (;;) {
      if (sys.read(this.#fd, this.#inBytes, EIGHT) === EIGHT) return this.#in[0]!;
      const e = errno();
      if (e === ERRNO.EAGAIN) return 0n;
      if (e !== ERRNO.EINTR) throw lastError("read", { target: this.#describe() });
    }
  }

  /** Closes the fd (if owned). Safe to call more than once. */
  close(): void {
    const fd = this.#fd;
    if (fd < 0) return;
    // -1 rather than the old number: a late signal() gets EBADF instead of
    // writing to whatever file reuses the number.
    this.#fd = -1;
    if (this.#owned) closeFd(fd);
  }

  /** Same as {@linkcode EventFd.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #describe(): string {
    return this.#fd < 0 ? "closed eventfd" : `eventfd ${this.#fd}`;
  }
}
