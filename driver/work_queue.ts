/**
 * A verbs queue on the driver side: a split virtqueue plus one fixed-size
 * slot per descriptor for its WQEs (SQ, RQ, SRQ) or CQEs (CQ).
 *
 * Every WR is a chain of one descriptor, so the head `addOne` returns names
 * the slot too: the WQE is written into the slot of
 * `queue.state.freeHead` before `addOne` takes that descriptor. A slot is
 * thus busy exactly while its descriptor is, with no table of its own.
 *
 * @module
 */

import { DriverQueue } from "../virtqueue/driver_queue.ts";
import { layoutAt, MAX_QUEUE_SIZE, type QueueLayout } from "../virtqueue/layout.ts";
import type { GuestMemory } from "../virtqueue/memory.ts";
import type { RingDesc } from "../protocol/verbs.ts";
import type { RangeAllocator } from "./allocator.ts";
import { VerbsError } from "./errors.ts";
import type { RecvWr } from "./types.ts";
import { encodeRecvWqe, recvWrProblem } from "./wqe.ts";

/**
 * Ring entries for `n` outstanding entries: the next power of two, at least 1.
 *
 * @example
 * ```ts
 * import { ringEntries } from "./work_queue.ts";
 * if (ringEntries(100) !== 128 || ringEntries(128) !== 128 || ringEntries(1) !== 1) {
 *   throw new Error("wrong ring size");
 * }
 * ```
 */
export function ringEntries(n: number): number {
  let size = 1;
  while (size < n) size *= 2;
  return size;
}

/** Where a {@linkcode WorkQueue} takes its memory from. */
export interface WorkQueueHost {
  /** Guest memory. */
  readonly memory: GuestMemory;
  /** Allocator over it. */
  readonly allocator: RangeAllocator;
  /** Rings use VIRTIO_RING_F_EVENT_IDX. */
  readonly eventIdx: boolean;
}

/** Shape of a {@linkcode WorkQueue}. */
export interface WorkQueueOptions {
  /** Ring entries: a power of two up to 32768 (see {@linkcode ringEntries}). */
  entries: number;
  /** Bytes per slot. */
  slotBytes: number;
  /** Slots are device-writable (CQE slots) rather than device-readable (WQEs). */
  writable: boolean;
}

function allocOrThrow(
  allocator: RangeAllocator,
  bytes: number,
  align: number,
  what: string,
): number {
  try {
    return allocator.alloc(bytes, align);
  } catch (e) {
    throw new VerbsError("ENOMEM", `no guest memory for ${what} (${bytes} bytes)`, { cause: e });
  }
}

/**
 * A ring and its slots in guest memory.
 *
 * @example
 * ```ts
 * import { GuestMemory } from "../virtqueue/memory.ts";
 * import { RangeAllocator } from "./allocator.ts";
 * import { WorkQueue } from "./work_queue.ts";
 * const memory = GuestMemory.fromBuffer(new SharedArrayBuffer(1 << 16), 0x10000);
 * const host = { memory, allocator: new RangeAllocator(0x10000, 1 << 16), eventIdx: true };
 * const wq = WorkQueue.create(host, { entries: 8, slotBytes: 64, writable: false }, "SQ");
 * const offset = wq.nextSlot();
 * wq.slots.setUint32(offset, 42, true);
 * const head = wq.post(64);
 * if (head !== offset / 64 || wq.outstanding !== 1) throw new Error("slot is not the head");
 * wq.release();
 * ```
 */
export class WorkQueue {
  /** The split ring. */
  readonly queue: DriverQueue;
  /** Guest address of slot 0. */
  readonly slotsAddr: number;
  /** Bytes per slot. */
  readonly slotBytes: number;
  /** A view of every slot: slot `i` starts at `i * slotBytes`. */
  readonly slots: DataView;
  readonly #mem: GuestMemory;
  readonly #allocator: RangeAllocator;
  readonly #ringAddr: number;
  readonly #writable: boolean;
  #released = false;

  private constructor(
    host: WorkQueueHost,
    parts: { layout: QueueLayout; ringAddr: number; slotsAddr: number; options: WorkQueueOptions },
  ) {
    this.#mem = host.memory;
    this.#allocator = host.allocator;
    this.#ringAddr = parts.ringAddr;
    this.#writable = parts.options.writable;
    this.slotsAddr = parts.slotsAddr;
    this.slotBytes = parts.options.slotBytes;
    const bytes = host.memory.bytes(parts.slotsAddr, parts.options.entries * this.slotBytes);
    // One view checked once: slot offsets are masked by the ring size, like
    // the ring views in virtqueue/layout.ts.
    this.slots = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.queue = new DriverQueue(parts.layout, { eventIdx: host.eventIdx });
    this.queue.init(host.memory);
    // Verbs queues never want a used-buffer interrupt: completions are
    // announced through the CQ arm word and the event queue instead.
    this.queue.disableInterrupts(host.memory);
  }

  /**
   * Allocates a ring of `options.entries` and its slots from `host` and
   * initialises the ring. `what` names the queue in errors. Throws a
   * `VerbsError` ENOMEM when guest memory is short, EINVAL for a ring larger
   * than a virtqueue can be.
   */
  static create(host: WorkQueueHost, options: WorkQueueOptions, what: string): WorkQueue {
    const { entries, slotBytes } = options;
    if (!Number.isInteger(entries) || entries < 1 || entries > MAX_QUEUE_SIZE) {
      throw new VerbsError(
        "EINVAL",
        `${what} needs a ring of ${entries} entries; a queue holds 1..${MAX_QUEUE_SIZE}`,
      );
    }
    const ringBytes = layoutAt(0, entries).bytes;
    const ringAddr = allocOrThrow(host.allocator, ringBytes, 64, `the ${what} ring`);
    let slotsAddr: number;
    try {
      slotsAddr = allocOrThrow(host.allocator, entries * slotBytes, 64, `the ${what} slots`);
    } catch (e) {
      host.allocator.free(ringAddr);
      throw e;
    }
    const layout = layoutAt(ringAddr, entries).layout;
    return new WorkQueue(host, { layout, ringAddr, slotsAddr, options });
  }

  /** The ring as control commands carry it. */
  get ring(): RingDesc {
    const { size, desc, avail, used } = this.queue.layout;
    return { size, desc, avail, used };
  }

  /** Ring entries. */
  get size(): number {
    return this.queue.size;
  }

  /** Entries posted and not yet returned by the device. */
  get outstanding(): number {
    return this.queue.outstanding;
  }

  /** Byte offset in {@linkcode WorkQueue.slots} of the slot the next {@linkcode WorkQueue.post} uses. */
  nextSlot(): number {
    return this.queue.state.freeHead * this.slotBytes;
  }

  /**
   * Makes the slot {@linkcode WorkQueue.nextSlot} named available with
   * `length` bytes (the WQE's length, or the CQE slot size) and returns its
   * index. Visible to the device at the next {@linkcode WorkQueue.publish}.
   */
  post(length: number): number {
    const head = this.queue.state.freeHead;
    return this.queue.addOne(
      this.#mem,
      this.slotsAddr + head * this.slotBytes,
      length,
      this.#writable,
    );
  }

  /** Publishes what was posted; true when the device wants its doorbell rung. */
  publish(): boolean {
    return this.queue.publish(this.#mem);
  }

  /**
   * Takes the next entry the device returned: its slot index, or -1 when
   * there is none. Throws a `VerbsError` EIO naming the queue when the device
   * broke a ring rule (nothing changes then).
   */
  popUsed(what: string): number {
    try {
      return this.queue.popUsedId(this.#mem);
    } catch (e) {
      throw new VerbsError("EIO", `${what}: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Bytes the device wrote into the entry {@linkcode WorkQueue.popUsed} returned last. */
  get usedLen(): number {
    return this.queue.usedLen;
  }

  /**
   * Takes back every entry the device retired, so their slots can be
   * reused, and returns how many. Send and receive WQEs need nothing else:
   * their outcome arrives as a CQE.
   */
  reap(what: string): number {
    let n = 0;
    while (this.popUsed(what) >= 0) n++;
    return n;
  }

  /** Returns the ring and slots to the allocator. Idempotent. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#allocator.free(this.#ringAddr);
    this.#allocator.free(this.slotsAddr);
  }
}

/** How {@linkcode postReceives} checks and announces receive WRs. */
export interface PostReceivesOptions {
  /** SGEs per WR. */
  maxSge: number;
  /** WRs that may be outstanding. */
  maxWr: number;
  /** Names the queue in messages, e.g. `"QP 0x11 RQ"`. */
  what: string;
  /** Names the SGE limit in messages: `"maxRecvSge"` or `"maxSge"`. */
  capName: string;
  /** Rings the queue's doorbell. */
  ring: () => void;
}

/** ` (wrId 7n)` for a message, when the WR has a usable id. */
export function wrIdNote(wr: unknown): string {
  const id = (wr as { wrId?: unknown } | null)?.wrId;
  return typeof id === "bigint" ? ` (wrId ${id}n)` : "";
}

/**
 * @internal Posts receive WRs onto `wq` as `ibv_post_recv` does: each WR is
 * checked, and the first bad one throws a `VerbsError` (EINVAL, or ENOMEM
 * when the queue is full) naming its index; the WRs before it stay posted.
 * Publishes once and rings only when the device asks for it.
 */
export function postReceives(
  wq: WorkQueue,
  list: readonly RecvWr[],
  options: PostReceivesOptions,
): void {
  let error: unknown = null;
  let posted = 0;
  const limits = { maxSge: options.maxSge, capName: options.capName };
  for (let i = 0; i < list.length; i++) {
    const wr = list[i]!;
    const where = () => `postRecv wr[${i}]${wrIdNote(wr)}`;
    const problem = recvWrProblem(wr, limits);
    if (problem !== null) {
      error = new VerbsError("EINVAL", `${where()}: ${problem}${postedNote(i)}`);
      break;
    }
    try {
      if (wq.outstanding >= options.maxWr) wq.reap(options.what);
    } catch (e) {
      error = e;
      break;
    }
    if (wq.outstanding >= options.maxWr) {
      error = new VerbsError(
        "ENOMEM",
        `${where()}: ${options.what} is full: ${wq.outstanding} WRs outstanding ` +
          `(max ${options.maxWr})${postedNote(i)}`,
      );
      break;
    }
    wq.post(encodeRecvWqe(wq.slots, wr, wq.nextSlot()));
    posted++;
  }
  if (posted > 0 && wq.publish()) options.ring();
  if (error !== null) throw error;
}

/** Says how many WRs before the bad one were posted. */
export function postedNote(index: number): string {
  return index === 0
    ? "; nothing posted"
    : `; wr[0..${index - 1}] posted, none from wr[${index}] on`;
}
