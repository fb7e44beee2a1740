/**
 * The driver side of the control queue: CBOR commands as [request | response]
 * chains, answered in any order, matched by head descriptor.
 *
 * @module
 */

import { decode, encode } from "cbor-x";
import { DriverQueue } from "../virtqueue/driver_queue.ts";
import type { QueueLayout } from "../virtqueue/layout.ts";
import type { GuestMemory } from "../virtqueue/memory.ts";
import { Errno, errnoName, MAX_COMMAND_BYTES, opName } from "../protocol/device_interface.ts";
import { VerbsError } from "./errors.ts";

interface Slot {
  request: number;
  response: number;
}

interface Pending {
  slot: Slot;
  op: number;
  done: PromiseWithResolvers<Record<string, unknown>>;
}

/**
 * How long a command waits for the device's answer, in ms. A backend that
 * stops answering but keeps its socket open would otherwise hang every verb
 * for good; past this the device counts as lost. Generous: a loaded host
 * answers in well under a second.
 */
export const COMMAND_TIMEOUT_MS = 30_000;

/** Options of {@linkcode ControlQueue}. */
export interface ControlQueueOptions {
  /** VIRTIO_RING_F_EVENT_IDX was negotiated. */
  eventIdx: boolean;
  /** Guest address of the first request/response slot. */
  slotsAddr: number;
  /** Tells the device there is work. */
  ring: () => void;
  /** Per-command timeout in ms; default {@linkcode COMMAND_TIMEOUT_MS}. */
  timeoutMs?: number;
  /**
   * Runs once when a command times out, after every outstanding command was
   * failed with `error`: the device is lost (the driver posts DEVICE_FATAL).
   */
  onTimeout?: (error: VerbsError) => void;
}

/** Sends control commands and collects their responses. */
export class ControlQueue {
  readonly #mem: GuestMemory;
  readonly #queue: DriverQueue;
  readonly #ring: () => void;
  readonly #free: Slot[] = [];
  readonly #slotWaiters: (() => void)[] = [];
  readonly #pending = new Map<number, Pending>();
  readonly #timeoutMs: number;
  readonly #onTimeout: ((error: VerbsError) => void) | undefined;
  #error: VerbsError | null = null;

  /**
   * A queue at `layout` with one request/response slot per two descriptors,
   * each slot `2 * MAX_COMMAND_BYTES` starting at `options.slotsAddr`.
   * Throws a `RangeError` for a timeout that is not a positive number of ms.
   */
  constructor(mem: GuestMemory, layout: QueueLayout, options: ControlQueueOptions) {
    const timeoutMs = options.timeoutMs ?? COMMAND_TIMEOUT_MS;
    if (!(timeoutMs > 0 && timeoutMs <= 2 ** 31 - 1)) {
      throw new RangeError(`command timeout ${timeoutMs} ms is not in 1..${2 ** 31 - 1}`);
    }
    this.#timeoutMs = timeoutMs;
    this.#onTimeout = options.onTimeout;
    this.#mem = mem;
    this.#queue = new DriverQueue(layout, { eventIdx: options.eventIdx });
    this.#queue.init(mem);
    this.#ring = options.ring;
    for (let i = 0; i < ControlQueue.slotCount(layout.size); i++) {
      const base = options.slotsAddr + i * 2 * MAX_COMMAND_BYTES;
      this.#free.push({ request: base, response: base + MAX_COMMAND_BYTES });
    }
  }

  /** Commands that can be outstanding at once on a queue of `size`. */
  static slotCount(size: number): number {
    return Math.max(1, size >> 1);
  }

  /** Guest memory the slots of a queue of `size` need. */
  static slotBytes(size: number): number {
    return ControlQueue.slotCount(size) * 2 * MAX_COMMAND_BYTES;
  }

  /**
   * Runs one command: resolves with the response fields, or rejects with a
   * `VerbsError` carrying the device's errno and message. A command the
   * device leaves unanswered for the timeout rejects with `ETIMEDOUT`
   * naming it and the time waited, and fails the queue for good.
   */
  async execute(op: number, args: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    if (this.#error) throw this.#error;
    const bytes = encode({ op, ...args }) as Uint8Array;
    if (bytes.length > MAX_COMMAND_BYTES) {
      throw new VerbsError("EINVAL", `${opName(op)}: command of ${bytes.length} bytes is too long`);
    }
    while (this.#free.length === 0) {
      await new Promise<void>((resolve) => this.#slotWaiters.push(resolve));
      if (this.#error) throw this.#error;
    }
    const slot = this.#free.pop()!;
    this.#mem.write(slot.request, bytes);
    const head = this.#queue.add(
      this.#mem,
      [{ addr: slot.request, len: bytes.length }],
      [{ addr: slot.response, len: MAX_COMMAND_BYTES }],
    );
    const done = Promise.withResolvers<Record<string, unknown>>();
    this.#pending.set(head, { slot, op, done });
    this.#queue.enableInterrupts(this.#mem);
    if (this.#queue.publish(this.#mem)) this.#ring();
    // Unref'd: a command in flight must not keep the process alive by itself.
    const timer = setTimeout(() => this.#timedOut(op), this.#timeoutMs);
    Deno.unrefTimer(timer);
    let response: Record<string, unknown>;
    try {
      response = await done.promise;
    } finally {
      clearTimeout(timer);
    }
    const status = response.status;
    if (status !== Errno.OK) {
      const name = typeof status === "number" ? errnoName(status) : "EPROTO";
      throw new VerbsError(name, `${opName(op)}: ${String(response.error ?? "failed")}`);
    }
    return response;
  }

  /** Collects every answered command. Call on each device interrupt. */
  drain(): void {
    for (;;) {
      let id: number;
      try {
        id = this.#queue.popUsedId(this.#mem);
      } catch (e) {
        this.fail(new VerbsError("EIO", `control queue: ${(e as Error).message}`));
        return;
      }
      if (id < 0) {
        // Re-arm; if more arrived meanwhile, keep going instead of sleeping.
        if (this.#pending.size === 0 || !this.#queue.enableInterrupts(this.#mem)) return;
        continue;
      }
      const pending = this.#pending.get(id);
      if (pending === undefined) continue;
      this.#pending.delete(id);
      const len = this.#queue.usedLen;
      let response: Record<string, unknown>;
      try {
        if (len === 0 || len > MAX_COMMAND_BYTES) throw new Error(`response of ${len} bytes`);
        response = decode(this.#mem.bytes(pending.slot.response, len)) as Record<string, unknown>;
        if (response === null || typeof response !== "object") throw new Error("not a map");
      } catch (e) {
        response = { status: Errno.EIO, error: `bad response: ${(e as Error).message}` };
      }
      this.#free.push(pending.slot);
      this.#slotWaiters.shift()?.();
      pending.done.resolve(response);
    }
  }

  /**
   * A command went unanswered. The queue cannot go on: its slot may still be
   * written by a device that wakes up later, and the device's state is
   * unknown, so every command fails, as when the connection drops.
   */
  #timedOut(op: number): void {
    if (this.#error) return;
    const error = new VerbsError(
      "ETIMEDOUT",
      `${opName(op)}: no answer from the device after ${this.#timeoutMs} ms`,
    );
    this.fail(error);
    this.#onTimeout?.(error);
  }

  /** Fails every outstanding and future command with `error`. */
  fail(error: VerbsError): void {
    if (this.#error) return;
    this.#error = error;
    for (const p of this.#pending.values()) p.done.reject(error);
    this.#pending.clear();
    for (const wake of this.#slotWaiters.splice(0)) wake();
  }
}
