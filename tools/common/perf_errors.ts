/**
 * The failures a perf run reports: a work completion in error (the run
 * stops, as perftest's `NOTIFY_COMP_ERROR_SEND` does) and a failed
 * `--check`.
 *
 * @module
 */

import { WcStatus, type WorkCompletion } from "../../mod.ts";

/** A work completion that was not SUCCESS. */
export class WcError extends Error {
  /** Names the class in messages. */
  override name = "WcError";
  /** The completion. */
  readonly wc: WorkCompletion;

  /**
   * Describes `wc` as perftest does (" Completion with error at client",
   * " Failed status 12: wr_id 0", then the counters), with the status name.
   */
  constructor(wc: WorkCompletion, side: string, counters: string) {
    super(
      ` Completion with error at ${side}:\n Failed status ${WcStatus[wc.status]} (${wc.status}): ` +
        `wr_id ${wc.wrId} opcode ${wc.opcode} qp ${wc.qpNum}\n ${counters}`,
    );
    this.wc = wc;
  }
}

/** Data that `--check` found wrong. */
export class CheckError extends Error {
  /** Names the class in messages. */
  override name = "CheckError";
}

/** Throws {@linkcode WcError} unless `wc` succeeded. */
export function expectSuccess(wc: WorkCompletion, side: string, counters: () => string): void {
  if (wc.status !== "SUCCESS") throw new WcError(wc, side, counters());
}
