/**
 * A small leveled logger for the backend: one line per event on stderr,
 * prefixed with the time and level, below the chosen level dropped.
 *
 * @module
 */

/** Log levels, quietest last. */
export const LOG_LEVELS = ["debug", "info", "warn", "error", "silent"] as const;

/** A log level name. */
export type LogLevel = typeof LOG_LEVELS[number];

/** Writes leveled lines to stderr. */
export class Logger {
  readonly #min: number;
  readonly #prefix: string;

  /** Logs at `level` and above; `prefix` names the component. */
  constructor(level: LogLevel = "info", prefix = "vrdma") {
    const min = LOG_LEVELS.indexOf(level);
    if (min < 0) {
      throw new RangeError(`log level "${level}" is not one of ${LOG_LEVELS.join(", ")}`);
    }
    this.#min = min;
    this.#prefix = prefix;
  }

  /** True when messages at `level` are printed. */
  enabled(level: Exclude<LogLevel, "silent">): boolean {
    return LOG_LEVELS.indexOf(level) >= this.#min;
  }

  /** Prints `message` at `level`. */
  log(level: Exclude<LogLevel, "silent">, message: string): void {
    if (!this.enabled(level)) return;
    const time = new Date().toISOString().slice(11, 23);
    console.error(`${time} ${level.toUpperCase().padEnd(5)} ${this.#prefix}: ${message}`);
  }

  /** Debug detail. */
  debug(message: string): void {
    this.log("debug", message);
  }

  /** Normal operation. */
  info(message: string): void {
    this.log("info", message);
  }

  /** Something a guest did wrong, or a recoverable problem. */
  warn(message: string): void {
    this.log("warn", message);
  }

  /** The service itself is in trouble. */
  error(message: string): void {
    this.log("error", message);
  }
}
