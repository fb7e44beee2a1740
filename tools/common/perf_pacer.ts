/**
 * How the perf loops wait: busy polling as perftest does, but fair to what
 * shares the thread and the machine.
 *
 * - With `--local` both sides' loops run in this one thread as async tasks:
 *   a side that finds nothing to do must yield (a macrotask, about 2 µs)
 *   so the other side can answer.
 * - The hosts' data-plane Workers need cores too (2 here): after a number
 *   of consecutive empty polls the waiting thread naps a few microseconds
 *   (`Atomics.wait`, which the kernel's timer slack stretches to ~50 µs),
 *   which measured far faster than spinning on two hosts (see
 *   tests/bench/latency_bench.ts).
 * - Bandwidth loops, which wait for a CQ rather than a byte in memory,
 *   sleep in `cq.next()` instead ({@linkcode Pacer.sleep}).
 * - A run that makes no progress for `stallMs` fails with a message that
 *   says what it waited for, instead of hanging.
 *
 * @module
 */

/** Nothing ever notifies this cell: waiting on it is a sleep. */
const NAP_CELL = new Int32Array(new SharedArrayBuffer(4));

/** Resolves on the next macrotask; cheaper than `setTimeout(0)` (~2 ms here). */
export function yieldMacrotask(): Promise<void> {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => {
      channel.port1.close();
      resolve();
    };
    channel.port2.postMessage(0);
    channel.port2.close();
  });
}

/** How a {@linkcode Pacer} waits. */
export interface PacerOptions {
  /** Yield to the event loop after this many consecutive empty polls (1 with `--local`). */
  yieldEvery: number;
  /** Nap after this many consecutive empty polls (0: never). */
  napAfter: number;
  /** Nap length in microseconds. */
  napUs: number;
  /** Fail after this long without progress (ms). */
  stallMs: number;
}

/** The error a loop raises when nothing moved for too long. */
export class StallError extends Error {
  /** Names the class in messages. */
  override name = "StallError";
}

/** Shared by every loop of a process: counts empty polls since the last progress. */
export class Pacer {
  readonly #o: PacerOptions;
  #idle = 0;
  #lastProgress = performance.now();
  #aborted: Error | null = null;
  readonly #sleepers = new Set<(e: Error) => void>();

  /** A pacer waiting as `options` say. */
  constructor(options: PacerOptions) {
    this.#o = options;
  }

  /** Something completed: the next wait starts afresh. */
  progress(): void {
    this.#idle = 0;
    this.#lastProgress = performance.now();
  }

  /**
   * Makes every later {@linkcode Pacer.idle} throw `reason`, and every
   * pending {@linkcode Pacer.sleep} reject with it (the other side of
   * `--local` failed).
   */
  abort(reason: Error): void {
    this.#aborted ??= reason;
    for (const reject of this.#sleepers) reject(reason);
    this.#sleepers.clear();
  }

  /**
   * Waits for `event` (a `cq.next()`) without spinning; rejects with
   * {@linkcode StallError} when it takes `stallMs`, or with the abort reason.
   * Sleeping beats polling for bandwidth runs: a spinning guest is a third
   * busy thread beside the two hosts' Workers on two cores
   * (tests/bench/two_host_bench.ts measured half the bandwidth).
   */
  async sleep<T>(event: Promise<T>, what: () => string): Promise<T> {
    if (this.#aborted !== null) throw this.#aborted;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let reject: ((e: Error) => void) | undefined;
    const guard = new Promise<never>((_, rej) => {
      reject = rej;
      this.#sleepers.add(rej);
      timer = setTimeout(
        () => rej(new StallError(`nothing completed for ${this.#o.stallMs / 1000} s: ${what()}`)),
        this.#o.stallMs,
      );
    });
    event.catch(() => {}); // a stall or abort leaves it pending or rejected unseen
    try {
      const value = await Promise.race([event, guard]);
      this.progress();
      return value;
    } finally {
      clearTimeout(timer);
      this.#sleepers.delete(reject!);
    }
  }

  /**
   * One empty poll: yields or naps as configured; throws
   * {@linkcode StallError} with `what()` when nothing moved for `stallMs`,
   * and the abort reason once {@linkcode Pacer.abort} was called.
   */
  async idle(what: () => string): Promise<void> {
    if (this.#aborted !== null) throw this.#aborted;
    const n = ++this.#idle;
    if (this.#o.napAfter > 0 && n % this.#o.napAfter === 0) {
      Atomics.wait(NAP_CELL, 0, 0, this.#o.napUs / 1000);
    }
    if (n % this.#o.yieldEvery === 0) await yieldMacrotask();
    if ((n & 255) === 0 && performance.now() - this.#lastProgress > this.#o.stallMs) {
      throw new StallError(`nothing completed for ${this.#o.stallMs / 1000} s: ${what()}`);
    }
  }
}
