/**
 * Per-QP counters of the host adapter: what one QP sent and received over
 * the wire and how its reliability machinery worked. Names follow Linux
 * soft-RoCE's hardware counters where one exists (`rxe_hw_counters.c`:
 * sent_pkts, rcvd_pkts, duplicate_request, out_of_seq_request,
 * rcvd_rnr_err, send_rnr_err, rcvd_seq_err, retry_exceeded_err,
 * retry_rnr_exceeded_err, completer_retry_err), camel-cased.
 *
 * @module
 */

/** The names of {@linkcode QpCounters}' fields, in report order. */
export const QP_COUNTER_NAMES = [
  "sentPkts",
  "rcvdPkts",
  "sentBytes",
  "rcvdBytes",
  "completerRetryErr",
  "retransmittedPkts",
  "timeouts",
  "retryExceededErr",
  "retryRnrExceededErr",
  "rcvdRnrErr",
  "sendRnrErr",
  "rcvdSeqErr",
  "sendSeqErr",
  "rcvdFatalNak",
  "sendFatalNak",
  "duplicateRequest",
  "outOfSeqRequest",
] as const;

/** A per-QP counter name. */
export type QpCounterName = typeof QP_COUNTER_NAMES[number];

/** One QP's counters; they only grow. */
export type QpCounters = Record<QpCounterName, number>;

/** Zeroed counters. */
export function newQpCounters(): QpCounters {
  return Object.fromEntries(QP_COUNTER_NAMES.map((n) => [n, 0])) as QpCounters;
}
