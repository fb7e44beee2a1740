/**
 * epoll: one wait for many fds.
 *
 * A data-plane Worker blocks in {@linkcode Epoll.wait} on every kick eventfd
 * it serves plus a "stop" eventfd (a Worker blocked in FFI cannot receive
 * messages and `terminate()` cannot stop it). The main thread uses
 * {@linkcode Epoll.waitAsync}, the same call on Deno's blocking thread pool,
 * through the {@linkcode Reactor}.
 *
 * Each registered fd carries a caller-chosen 32-bit token, so results are
 * read with {@linkcode Epoll.tokenAt} without allocating and without a map
 * from fd numbers, which the kernel reuses.
 *
 * @module
 */

import { closeFd, ERRNO, errno, lastError, libc, O_CLOEXEC, SysError } from "./libc.ts";

/** Readable (or, for a listener, a connection is waiting). */
export const EPOLLIN = 0x001;
/** Writable. */
export const EPOLLOUT = 0x004;
/** Error condition; always reported. */
export const EPOLLERR = 0x008;
/** Hang-up; always reported. */
export const EPOLLHUP = 0x010;
/** The peer shut down its writing side. */
export const EPOLLRDHUP = 0x2000;
/** Report the fd once after it becomes ready, then disable it until {@linkcode Epoll.modify}. */
export const EPOLLONESHOT = 0x4000_0000;
/** Edge-triggered: report a change once instead of while the condition holds. */
export const EPOLLET = 0x8000_0000;

const EPOLL_CLOEXEC = O_CLOEXEC;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLL_CTL_MOD = 3;
/** `struct epoll_event` is packed on x86_64: u32 events, then u64 data at offset 4. */
const EVENT_SIZE = 12;
const MAX_TIMEOUT = 0x7fff_ffff;

/** Options of {@linkcode Epoll.create}. */
export interface EpollOptions {
  /** How many ready fds one wait can report; default 64. */
  maxEvents?: number;
}

function checkTimeout(timeoutMs: number): void {
  if (!Number.isInteger(timeoutMs) || timeoutMs < -1 || timeoutMs > MAX_TIMEOUT) {
    throw new RangeError(`epoll timeout must be an integer in -1..2^31-1 ms, got ${timeoutMs}`);
  }
}

function checkToken(token: number): void {
  if (!Number.isInteger(token) || token < 0 || token > 0xffff_ffff) {
    throw new RangeError(`epoll token must be an integer in 0..2^32-1, got ${token}`);
  }
}

/** One results buffer: the raw events and a view to read them. */
interface EventBuffer {
  bytes: Uint8Array<ArrayBuffer>;
  view: DataView;
}

function eventBuffer(count: number): EventBuffer {
  // An explicit ArrayBuffer is always off the V8 heap, so the pointer the
  // kernel writes through cannot move under a pending call.
  const bytes = new Uint8Array(new ArrayBuffer(count * EVENT_SIZE));
  return { bytes, view: new DataView(bytes.buffer) };
}

/**
 * An epoll instance (`EPOLL_CLOEXEC`).
 *
 * @example
 * ```ts
 * import { Epoll, EPOLLIN } from "./epoll.ts";
 * import { EventFd } from "./eventfd.ts";
 * using ep = Epoll.create();
 * using efd = EventFd.create({ nonblocking: true });
 * ep.add(efd.fd, 7, EPOLLIN);
 * efd.signal();
 * const n = ep.wait(1000);
 * if (n !== 1 || ep.tokenAt(0) !== 7) throw new Error("eventfd not reported");
 * ```
 */
export class Epoll {
  #fd: number;
  readonly #maxEvents: number;
  readonly #ctl = eventBuffer(1);
  readonly #sync: EventBuffer;
  readonly #async: EventBuffer;
  /** The buffer the most recent completed wait filled, and how many events it holds. */
  #results: EventBuffer;
  #count = 0;
  #pending = false;
  /** close() was called while a waitAsync was in flight: close the fd when it returns. */
  #closeWhenIdle = false;

  private constructor(fd: number, maxEvents: number) {
    this.#fd = fd;
    this.#maxEvents = maxEvents;
    this.#sync = eventBuffer(maxEvents);
    this.#async = eventBuffer(maxEvents);
    this.#results = this.#sync;
  }

  /**
   * Creates an epoll instance.
   *
   * @throws {RangeError} for a `maxEvents` outside 1..65536.
   * @throws {SysError} from `epoll_create1`.
   */
  static create(options: EpollOptions = {}): Epoll {
    const maxEvents = options.maxEvents ?? 64;
    if (!Number.isInteger(maxEvents) || maxEvents < 1 || maxEvents > 65536) {
      throw new RangeError(`epoll maxEvents must be an integer in 1..65536, got ${maxEvents}`);
    }
    const fd = libc().epoll_create1(EPOLL_CLOEXEC);
    if (fd < 0) throw lastError("epoll_create1");
    return new Epoll(fd, maxEvents);
  }

  /** The epoll file descriptor, or -1 once closed. */
  get fd(): number {
    return this.#fd;
  }

  /** How many events one wait can report. */
  get maxEvents(): number {
    return this.#maxEvents;
  }

  /**
   * Watches `fd` for `events`, reporting it with `token`.
   *
   * @throws {RangeError} for a token outside 0..2^32-1.
   * @throws {SysError} from `epoll_ctl` (EEXIST if `fd` is already watched).
   */
  add(fd: number, token: number, events: number = EPOLLIN): void {
    this.#control(EPOLL_CTL_ADD, fd, token, events);
  }

  /**
   * Changes the events and token of a watched `fd`.
   *
   * @throws {SysError} from `epoll_ctl` (ENOENT if `fd` is not watched).
   */
  modify(fd: number, token: number, events: number = EPOLLIN): void {
    this.#control(EPOLL_CTL_MOD, fd, token, events);
  }

  /**
   * Stops watching `fd`.
   *
   * @throws {SysError} from `epoll_ctl` (ENOENT if `fd` is not watched).
   */
  remove(fd: number): void {
    if (libc().epoll_ctl(this.#fd, EPOLL_CTL_DEL, fd, this.#ctl.bytes) < 0) {
      throw lastError("epoll_ctl", { target: `DEL fd ${fd}` });
    }
  }

  /**
   * Blocks the calling thread until a watched fd is ready or `timeoutMs`
   * passes (-1: no limit). Returns how many events
   * {@linkcode Epoll.tokenAt}/{@linkcode Epoll.eventsAt} can read; 0 on
   * timeout, and also when a signal interrupted the wait (callers loop anyway).
   *
   * Meant for Workers and data-plane loops: on the main thread it stalls the
   * event loop.
   *
   * @throws {RangeError} for a bad timeout.
   * @throws {SysError} from `epoll_wait`.
   */
  wait(timeoutMs: number): number {
    checkTimeout(timeoutMs);
    const n = libc().epoll_wait(this.#fd, this.#sync.bytes, this.#maxEvents, timeoutMs);
    if (n < 0) {
      if (errno() !== ERRNO.EINTR) throw lastError("epoll_wait", { target: `epoll ${this.#fd}` });
      this.#finish(this.#sync, 0);
      return 0;
    }
    this.#finish(this.#sync, n);
    return n;
  }

  /**
   * {@linkcode Epoll.wait} on Deno's blocking thread pool, leaving this
   * thread free. Its results go to a buffer of their own and become the ones
   * {@linkcode Epoll.tokenAt} reads when the promise resolves: read them
   * before the next `await`. Each call costs about 30 µs of promise
   * machinery, so it belongs on control paths, not data paths.
   *
   * Only one may be pending per Epoll. Nothing cancels it: to end it early,
   * make a watched fd ready (the {@linkcode Reactor} keeps an eventfd for that).
   *
   * @throws {Deno.errors.Busy} if a waitAsync is already pending.
   * @throws {RangeError} for a bad timeout.
   * @throws {SysError} from `epoll_wait`.
   */
  async waitAsync(timeoutMs: number): Promise<number> {
    checkTimeout(timeoutMs);
    if (this.#pending) {
      throw new Deno.errors.Busy(`epoll ${this.#fd} already has a waitAsync pending`);
    }
    if (this.#fd < 0) throw new SysError("epoll_wait", ERRNO.EBADF, { target: "closed epoll" });
    this.#pending = true;
    let n: number;
    try {
      n = await libc().epoll_wait_nonblocking(
        this.#fd,
        this.#async.bytes,
        this.#maxEvents,
        timeoutMs,
      );
    } finally {
      this.#pending = false;
    }
    if (this.#closeWhenIdle) {
      this.#closeNow();
      return 0;
    }
    if (n < 0) {
      // errno was set on a pool thread and is out of reach. Ask again without
      // blocking on this thread: an EINTR there just yields the ready events
      // now, anything lasting (EBADF, EINVAL) fails again with its errno.
      n = libc().epoll_wait(this.#fd, this.#async.bytes, this.#maxEvents, 0);
      if (n < 0) {
        if (errno() !== ERRNO.EINTR) {
          throw lastError("epoll_wait", { target: `epoll ${this.#fd}` });
        }
        n = 0;
      }
    }
    this.#finish(this.#async, n);
    return n;
  }

  /** How many events the most recent completed wait reported. */
  get count(): number {
    return this.#count;
  }

  /**
   * The token of the `i`-th event of the most recent completed wait.
   *
   * @throws {RangeError} for `i` outside 0..count-1.
   */
  tokenAt(i: number): number {
    return this.#results.view.getUint32(this.#offset(i) + 4, true);
  }

  /**
   * The event bits (`EPOLLIN`, `EPOLLHUP`, …) of the `i`-th event of the
   * most recent completed wait.
   *
   * @throws {RangeError} for `i` outside 0..count-1.
   */
  eventsAt(i: number): number {
    return this.#results.view.getUint32(this.#offset(i), true);
  }

  /**
   * Closes the epoll fd. Safe to call more than once. With a
   * {@linkcode Epoll.waitAsync} in flight the fd is closed when that call
   * returns (closing it earlier would let the number be reused while the pool
   * thread may still be about to pass it to the kernel).
   */
  close(): void {
    if (this.#fd < 0) return;
    if (this.#pending) {
      this.#closeWhenIdle = true;
      return;
    }
    this.#closeNow();
  }

  /** Same as {@linkcode Epoll.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #closeNow(): void {
    const fd = this.#fd;
    this.#fd = -1;
    this.#closeWhenIdle = false;
    this.#count = 0;
    closeFd(fd);
  }

  #finish(buffer: EventBuffer, n: number): void {
    this.#results = buffer;
    this.#count = n;
  }

  #offset(i: number): number {
    if (!(i >= 0 && i < this.#count)) {
      throw new RangeError(`epoll event index must be in 0..${this.#count - 1}, got ${i}`);
    }
    return i * EVENT_SIZE;
  }

  #control(op: number, fd: number, token: number, events: number): void {
    checkToken(token);
    const view = this.#ctl.view;
    view.setUint32(0, events >>> 0, true);
    view.setUint32(4, token, true);
    view.setUint32(8, 0, true);
    if (libc().epoll_ctl(this.#fd, op, fd, this.#ctl.bytes) < 0) {
      const name = op === EPOLL_CTL_ADD ? "ADD" : "MOD";
      throw lastError("epoll_ctl", { target: `${name} fd ${fd}` });
    }
  }
}
