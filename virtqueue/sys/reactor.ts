/**
 * Readiness callbacks for fds on the main thread.
 *
 * Deno's event loop cannot watch an arbitrary fd (a control socket made with
 * libc, an eventfd received from a guest), so the reactor keeps one epoll set
 * and waits on it with {@linkcode Epoll.waitAsync} on Deno's blocking thread
 * pool, calling back on the main thread.
 *
 * An internal eventfd sits in the set. Adding an fd wakes a pending wait by
 * itself (the kernel checks a new fd's readiness at once), but ending the
 * loop does not: {@linkcode Reactor.close}, and an `unwatch` that leaves
 * nothing to watch, write the eventfd so the pending call returns and the
 * process can exit.
 *
 * Each round trip through the pool costs tens of microseconds, so the
 * reactor is for control events (a new connection, a control message, a
 * sleeping queue's doorbell); data-plane loops block in {@linkcode Epoll.wait}
 * inside a Worker instead.
 *
 * @module
 */

import { Epoll, EPOLLIN } from "./epoll.ts";
import { EventFd } from "./eventfd.ts";
import { SysError } from "./libc.ts";

/** Token of the internal wake eventfd; watched fds get tokens from 1. */
const WAKE_TOKEN = 0;
const MAX_TOKEN = 0xffff_ffff;

interface Waiter {
  resolve: () => void;
  reject: (reason: unknown) => void;
}

/** One fd in the set: a persistent callback, one-shot waiters, or both. */
interface Watched {
  fd: number;
  token: number;
  callback: (() => void) | undefined;
  waiters: Waiter[];
}

/** Options of {@linkcode Reactor.create}. */
export interface ReactorOptions {
  /** Ready fds handled per wake-up; default 64. */
  maxEvents?: number;
}

/**
 * An fd readiness dispatcher for the main thread.
 *
 * Callbacks are level-triggered: a callback runs on every turn of the loop
 * while its fd stays readable, so it must drain the fd (read the eventfd,
 * accept the connection, receive the message). While anything is watched
 * the reactor keeps the process alive; {@linkcode Reactor.close} or
 * unwatching everything lets it exit.
 *
 * @example
 * ```ts
 * import { Reactor } from "./reactor.ts";
 * import { EventFd } from "./eventfd.ts";
 * await using reactor = Reactor.create();
 * using efd = EventFd.create({ nonblocking: true });
 * const woken = reactor.readable(efd.fd);
 * efd.signal();
 * await woken;
 * if (efd.read() !== 1n) throw new Error("wrong count");
 * ```
 */
export class Reactor {
  readonly #epoll: Epoll;
  readonly #wake: EventFd;
  readonly #byFd = new Map<number, Watched>();
  readonly #byToken = new Map<number, Watched>();
  readonly #ready: Uint32Array;
  #nextToken = WAKE_TOKEN + 1;
  #loop: Promise<void> | undefined;
  /** The loop is parked in waitAsync: only then does ending it need a wake-up. */
  #waiting = false;
  #closing: Promise<void> | undefined;

  private constructor(epoll: Epoll, wake: EventFd) {
    this.#epoll = epoll;
    this.#wake = wake;
    this.#ready = new Uint32Array(epoll.maxEvents);
  }

  /**
   * Creates a reactor (an epoll fd and a wake eventfd). Nothing runs until
   * the first {@linkcode Reactor.watch} or {@linkcode Reactor.readable}.
   *
   * @throws {SysError} from `epoll_create1`, `eventfd` or `epoll_ctl`.
   */
  static create(options: ReactorOptions = {}): Reactor {
    const epoll = Epoll.create({ maxEvents: options.maxEvents ?? 64 });
    let wake: EventFd | undefined;
    try {
      wake = EventFd.create({ nonblocking: true });
      epoll.add(wake.fd, WAKE_TOKEN, EPOLLIN);
      return new Reactor(epoll, wake);
    } catch (e) {
      wake?.close();
      epoll.close();
      throw e;
    }
  }

  /** Whether {@linkcode Reactor.close} has been called. */
  get closed(): boolean {
    return this.#closing !== undefined;
  }

  /** How many fds are in the set (with a callback, waiters, or both). */
  get size(): number {
    return this.#byFd.size;
  }

  /**
   * Calls `onReadable` whenever `fd` is readable (or hung up, or in error:
   * the next read reports which). An exception from the callback is passed
   * to `reportError`, as an event listener's would be, and the loop goes on.
   *
   * @throws {Deno.errors.AlreadyExists} if `fd` already has a callback.
   * @throws {Deno.errors.BadResource} after {@linkcode Reactor.close}.
   * @throws {SysError} from `epoll_ctl` (EBADF for a closed fd, EPERM for a
   *   regular file, which epoll cannot watch).
   */
  watch(fd: number, onReadable: () => void): void {
    this.#checkOpen();
    const entry = this.#byFd.get(fd);
    if (entry?.callback !== undefined) {
      throw new Deno.errors.AlreadyExists(`fd ${fd} is already watched by this reactor`);
    }
    if (entry !== undefined) entry.callback = onReadable;
    else this.#register(fd, onReadable);
    this.#start();
  }

  /**
   * Removes the callback of `fd`; pending {@linkcode Reactor.readable}
   * promises for it stay. Takes effect at once: the callback does not run
   * again, even for readiness already collected. Returns whether `fd` had a
   * callback.
   */
  unwatch(fd: number): boolean {
    const entry = this.#byFd.get(fd);
    if (entry?.callback === undefined) return false;
    entry.callback = undefined;
    if (entry.waiters.length === 0) this.#drop(entry);
    return true;
  }

  /**
   * Resolves once `fd` is readable (or hung up, or in error).
   *
   * @throws {Deno.errors.BadResource} after {@linkcode Reactor.close}.
   * @throws {SysError} from `epoll_ctl`.
   */
  readable(fd: number): Promise<void> {
    this.#checkOpen();
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    const entry = this.#byFd.get(fd) ?? this.#register(fd, undefined);
    entry.waiters.push({ resolve, reject });
    this.#start();
    return promise;
  }

  /**
   * Stops the loop and closes the reactor's own fds (not the watched ones).
   * Pending {@linkcode Reactor.readable} promises reject with
   * `Deno.errors.Interrupted`. Resolves once the pending wait has returned,
   * so nothing is left running. Safe to call more than once.
   */
  close(): Promise<void> {
    if (this.#closing === undefined) this.#closing = this.#shutDown();
    return this.#closing;
  }

  /** Same as {@linkcode Reactor.close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #shutDown(): Promise<void> {
    const entries = [...this.#byFd.values()];
    this.#byFd.clear();
    this.#byToken.clear();
    for (const entry of entries) {
      for (const waiter of entry.waiters) {
        waiter.reject(
          new Deno.errors.Interrupted(`reactor closed while waiting for fd ${entry.fd}`),
        );
      }
    }
    if (this.#loop !== undefined) {
      if (this.#waiting) this.#wake.signal();
      await this.#loop;
    }
    this.#epoll.close();
    this.#wake.close();
  }

  #checkOpen(): void {
    if (this.#closing !== undefined) throw new Deno.errors.BadResource("reactor is closed");
  }

  #register(fd: number, callback: (() => void) | undefined): Watched {
    const token = this.#allocateToken();
    this.#epoll.add(fd, token, EPOLLIN);
    const entry: Watched = { fd, token, callback, waiters: [] };
    this.#byFd.set(fd, entry);
    this.#byToken.set(token, entry);
    return entry;
  }

  #drop(entry: Watched): void {
    this.#byFd.delete(entry.fd);
    this.#byToken.delete(entry.token);
    try {
      this.#epoll.remove(entry.fd);
    } catch (e) {
      // The fd was closed before being unwatched; closing already took it out of the set.
      if (!(e instanceof SysError && (e.code === "EBADF" || e.code === "ENOENT"))) throw e;
    }
    // The set is empty now: wake the pending wait so the loop ends and the
    // process is free to exit.
    if (this.#byFd.size === 0 && this.#waiting) this.#wake.signal();
  }

  #allocateToken(): number {
    // Fresh tokens, not fd numbers: readiness collected for an fd that was
    // unwatched and whose number was reused must not reach the new callback.
    let token = this.#nextToken;
    while (this.#byToken.has(token)) token = token === MAX_TOKEN ? WAKE_TOKEN + 1 : token + 1;
    this.#nextToken = token === MAX_TOKEN ? WAKE_TOKEN + 1 : token + 1;
    return token;
  }

  #start(): void {
    if (this.#loop === undefined) this.#loop = this.#run();
  }

  async #run(): Promise<void> {
    try {
      while (this.#closing === undefined && this.#byFd.size > 0) {
        this.#waiting = true;
        let n: number;
        try {
          n = await this.#epoll.waitAsync(-1);
        } finally {
          this.#waiting = false;
        }
        if (this.#closing !== undefined) break;
        // Copy first: callbacks may watch and unwatch, and tokenAt reads the
        // results of whichever wait completed last.
        for (let i = 0; i < n; i++) this.#ready[i] = this.#epoll.tokenAt(i);
        for (let i = 0; i < n; i++) this.#dispatch(this.#ready[i]!);
      }
    } catch (e) {
      // The epoll fd itself failed: nothing more can be delivered.
      for (const entry of this.#byFd.values()) {
        for (const waiter of entry.waiters) waiter.reject(e);
        entry.waiters = [];
      }
      reportError(e);
    } finally {
      this.#loop = undefined;
    }
  }

  #dispatch(token: number): void {
    if (token === WAKE_TOKEN) {
      this.#wake.read();
      return;
    }
    const entry = this.#byToken.get(token);
    if (entry === undefined) return;
    if (entry.callback !== undefined) {
      try {
        entry.callback();
      } catch (e) {
        reportError(e);
      }
    }
    if (entry.waiters.length > 0) {
      const waiters = entry.waiters;
      entry.waiters = [];
      for (const waiter of waiters) waiter.resolve();
    }
    // The callback may have unwatched this fd and even watched it again
    // under a new entry; only drop the entry that is still current.
    if (
      entry.callback === undefined && entry.waiters.length === 0 &&
      this.#byToken.get(token) === entry
    ) {
      this.#drop(entry);
    }
  }
}
