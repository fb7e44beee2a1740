/**
 * The driver side of the event queue: keeps it stocked with writable slots
 * and hands each event the device writes to a listener.
 *
 * @module
 */

import { DriverQueue } from "../virtqueue/driver_queue.ts";
import type { QueueLayout } from "../virtqueue/layout.ts";
import type { GuestMemory } from "../virtqueue/memory.ts";
import { decodeEvent, type DeviceEvent, EVENT_SLOT_BYTES } from "../protocol/device_interface.ts";

/** Receives device events. */
export class EventQueue {
  readonly #mem: GuestMemory;
  readonly #queue: DriverQueue;
  readonly #slots: number;
  readonly #ring: () => void;
  readonly #onEvent: (event: DeviceEvent) => void;
  /** Slot address by head descriptor. */
  readonly #slotOf = new Map<number, number>();

  /**
   * A queue at `layout` whose slots (one per entry, {@linkcode EVENT_SLOT_BYTES}
   * each) start at `slotsAddr`.
   */
  constructor(
    mem: GuestMemory,
    layout: QueueLayout,
    options: {
      eventIdx: boolean;
      slotsAddr: number;
      ring: () => void;
      onEvent: (event: DeviceEvent) => void;
    },
  ) {
    this.#mem = mem;
    this.#queue = new DriverQueue(layout, { eventIdx: options.eventIdx });
    this.#queue.init(mem);
    this.#slots = options.slotsAddr;
    this.#ring = options.ring;
    this.#onEvent = options.onEvent;
    for (let i = 0; i < layout.size; i++) this.#offer(this.#slots + i * EVENT_SLOT_BYTES);
    this.#queue.enableInterrupts(mem);
    this.#queue.publish(mem);
  }

  /** Guest memory the slots of a queue of `size` need. */
  static slotBytes(size: number): number {
    return size * EVENT_SLOT_BYTES;
  }

  #offer(addr: number): void {
    const head = this.#queue.addOne(this.#mem, addr, EVENT_SLOT_BYTES, true);
    this.#slotOf.set(head, addr);
  }

  /** Delivers every event the device wrote and gives the slots back. */
  drain(): void {
    let returned = false;
    for (;;) {
      const id = this.#queue.popUsedId(this.#mem);
      if (id < 0) {
        if (!this.#queue.enableInterrupts(this.#mem)) break;
        continue;
      }
      const addr = this.#slotOf.get(id);
      if (addr === undefined) continue;
      this.#slotOf.delete(id);
      if (this.#queue.usedLen >= EVENT_SLOT_BYTES) {
        const bytes = this.#mem.bytes(addr, EVENT_SLOT_BYTES);
        this.#onEvent(decodeEvent(new DataView(bytes.buffer, bytes.byteOffset, EVENT_SLOT_BYTES)));
      }
      this.#offer(addr);
      returned = true;
    }
    if (returned && this.#queue.publish(this.#mem)) this.#ring();
  }
}
