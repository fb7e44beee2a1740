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

/** Sends control commands and collects their responses. */
export class ControlQueue {
  readonly #mem: GuestMemory;
  readonly #queue: DriverQueue;
  readonly #ring: () => void;
  readonly #free: Slot[] = [];
  readonly #slotWaiters: (() => void)[] = [];
  readonly #pending = new Map<number, Pending>();
  #error: VerbsError | null = null;

  /**
   * A queue at `layout` with one request/response slot per two descriptors,
   * each slot `2 * MAX_COMMAND_BYTES` starting at `slotsAddr`. `ring` tells the
   * device there is work.
   */
  constructor(
    mem: GuestMemory,
    layout: QueueLayout,
    options: { eventIdx: boolean; slotsAddr: number; ring: () => void },
  ) {
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
   * `VerbsError` carrying the device's errno and message.
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
    const response = await done.promise;
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

  /** Fails every outstanding and future command with `error`. */
  fail(error: VerbsError): void {
    if (this.#error) return;
    this.#error = error;
    for (const p of this.#pending.values()) p.done.reject(error);
    this.#pending.clear();
    for (const wake of this.#slotWaiters.splice(0)) wake();
  }
}
