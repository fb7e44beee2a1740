/**
 * The progress bar on stderr: shown for runs longer than a second, only
 * when stderr is a terminal (or when asked), redrawn at most ten times a
 * second, erased when the run ends so the table stays clean.
 *
 * @module
 */

/** Where the bar is drawn (stderr, or a test's collector). */
export interface ProgressSink {
  /** Writes text synchronously. */
  writeSync(bytes: Uint8Array): number;
}

/** How a {@linkcode Progress} behaves. */
export interface ProgressOptions {
  /** Draw at all. */
  enabled: boolean;
  /** Milliseconds before the first drawing. */
  delayMs?: number;
  /** Milliseconds between drawings. */
  everyMs?: number;
  /** Characters of the bar itself. */
  width?: number;
  /** Where to draw; stderr by default. */
  sink?: ProgressSink;
}

/**
 * One run's progress bar.
 *
 * @example
 * ```ts
 * import { Progress } from "./perf_progress.ts";
 * const out: string[] = [];
 * const sink = { writeSync: (b: Uint8Array) => (out.push(new TextDecoder().decode(b)), b.length) };
 * const p = new Progress("write_bw 65536 B", 100, { enabled: true, delayMs: 0, everyMs: 0, sink });
 * p.update(50);
 * p.done();
 * if (!out[0]!.includes("50%")) throw new Error(out.join("|"));
 * ```
 */
export class Progress {
  readonly #label: string;
  readonly #total: number;
  readonly #enabled: boolean;
  readonly #delayMs: number;
  readonly #everyMs: number;
  readonly #width: number;
  readonly #sink: ProgressSink;
  readonly #start = performance.now();
  #next: number;
  #drawn = false;

  /** A bar named `label` for `total` steps; draws nothing unless `options.enabled`. */
  constructor(label: string, total: number, options: ProgressOptions) {
    this.#label = label;
    this.#total = Math.max(total, 1);
    this.#enabled = options.enabled;
    this.#delayMs = options.delayMs ?? 1000;
    this.#everyMs = options.everyMs ?? 100;
    this.#width = options.width ?? 30;
    this.#sink = options.sink ?? Deno.stderr;
    this.#next = this.#start + this.#delayMs;
  }

  /** Reports `done` of the total; draws when due. Cheap when not due. */
  update(done: number): void {
    if (!this.#enabled) return;
    const now = performance.now();
    if (now < this.#next) return;
    this.#next = now + this.#everyMs;
    const share = Math.min(1, done / this.#total);
    const full = Math.round(share * this.#width);
    const bar = "#".repeat(full) + ".".repeat(this.#width - full);
    const seconds = ((now - this.#start) / 1000).toFixed(1);
    const line = `\r${this.#label} [${bar}] ${(share * 100).toFixed(0).padStart(3)}% ` +
      `${done}/${this.#total} ${seconds}s`;
    this.#sink.writeSync(new TextEncoder().encode(line));
    this.#drawn = true;
  }

  /** Erases the bar if it was drawn. */
  done(): void {
    if (!this.#drawn) return;
    this.#drawn = false;
    this.#sink.writeSync(new TextEncoder().encode("\r\x1b[2K"));
  }
}
