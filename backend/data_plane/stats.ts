/**
 * Counters the data plane keeps and the service thread reads at any moment.
 *
 * They live in a `SharedArrayBuffer` so `host.stats()` is a plain synchronous
 * read: the Worker is usually blocked in FFI and could not answer a message.
 * Each counter has one writer (the Worker), so plain stores would do; the
 * `Atomics` calls keep readers from seeing torn values.
 *
 * @module
 */

/** The counters, in the order they sit in the buffer. */
export const COUNTER_NAMES = [
  "guests",
  "pds",
  "mrs",
  "cqs",
  "qps",
  "srqs",
  "ahs",
  "queues",
  "kicks",
  "calls",
  "controlCommands",
  "controlErrors",
  "brokenQueues",
  "events",
  "eventsDropped",
  "sendWqes",
  "recvWqes",
  "completions",
  "cqOverruns",
  "localOps",
  "localBytes",
  "rnrNaks",
  "rnrRetryExceeded",
  "flushedWrs",
  "accessErrors",
  "udDropped",
  "udpPacketsSent",
  "udpPacketsReceived",
  // Bytes of those datagrams (UDP payload: BTH to ICRC), each way.
  "udpBytesSent",
  "udpBytesReceived",
  // The host adapter (RoCEv2 to other hosts). Requester side:
  "retransmits",
  "retransmittedPackets",
  "timeouts",
  "retryExceeded",
  "rnrNaksReceived",
  "seqNaksReceived",
  "fatalNaksReceived",
  "duplicateResponses",
  "staleResponses",
  "badResponses",
  // Responder side:
  "acksSent",
  "seqNaksSent",
  "rnrNaksSent",
  "accessNaksSent",
  "fatalNaksSent",
  "outOfSequence",
  "duplicateRequests",
  "duplicatesReplayed",
  "duplicatesDropped",
  "ucDropped",
  "controlDropped",
  // Packets refused on arrival:
  "icrcErrors",
  "badPackets",
  "unknownQp",
  "droppedNotReady",
  "adapterErrors",
] as const;

/** A counter name. */
export type CounterName = typeof COUNTER_NAMES[number];

const INDEX = Object.fromEntries(COUNTER_NAMES.map((n, i) => [n, i])) as Record<
  CounterName,
  number
>;

/**
 * A block of named 53-bit counters over shared memory.
 *
 * @example
 * ```ts
 * import { Counters } from "./stats.ts";
 * const c = new Counters();
 * c.add("kicks", 2);
 * if (new Counters(c.buffer).get("kicks") !== 2) throw new Error("not shared");
 * ```
 */
export class Counters {
  /** The shared buffer; pass it to the Worker and build `new Counters(buffer)` there. */
  readonly buffer: SharedArrayBuffer;
  readonly #cells: BigInt64Array;

  /** A new block, or a view of an existing one. */
  constructor(buffer?: SharedArrayBuffer) {
    this.buffer = buffer ?? new SharedArrayBuffer(COUNTER_NAMES.length * 8);
    this.#cells = new BigInt64Array(this.buffer);
  }

  /** Adds `n` (may be negative) to a counter. */
  add(name: CounterName, n = 1): void {
    Atomics.add(this.#cells, INDEX[name], BigInt(n));
  }

  /** Reads one counter. */
  get(name: CounterName): number {
    return Number(Atomics.load(this.#cells, INDEX[name]));
  }

  /** Reads every counter into a plain object. */
  snapshot(): Record<CounterName, number> {
    const out = {} as Record<CounterName, number>;
    for (const name of COUNTER_NAMES) out[name] = this.get(name);
    return out;
  }
}
