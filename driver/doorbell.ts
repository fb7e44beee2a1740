/**
 * The driver's doorbell: which queue has new work, and a kick only when the
 * device is asleep.
 *
 * Setting the queue's bit and then reading `deviceAwake` pairs with the
 * device clearing `deviceAwake` and then scanning the bits (all sequentially
 * consistent atomics): either the device sees the bit, or the driver sees it
 * asleep and kicks. A busy device therefore costs the driver no syscall.
 *
 * @module
 */

import type { GuestMemory } from "../virtqueue/memory.ts";
import type { EventFd } from "../virtqueue/sys/eventfd.ts";
import { DOORBELL_AWAKE, DOORBELL_SUMMARY, doorbellLayout } from "../protocol/device_interface.ts";

/** Rings the device for one queue at a time. */
export class Doorbell {
  /** Guest address of the doorbell area. */
  readonly addr: number;
  /** Queues the bitmap covers. */
  readonly queues: number;
  readonly #mem: GuestMemory;
  readonly #kick: EventFd;
  readonly #bitmap: number;
  #kicks = 0;

  /** A doorbell at `addr` (zeroed here) covering `queues` queues, kicking `kick`. */
  constructor(mem: GuestMemory, addr: number, queues: number, kick: EventFd) {
    const layout = doorbellLayout(queues);
    mem.fill(addr, layout.bytes);
    this.#bitmap = addr + layout.bitmap;
    this.#mem = mem;
    this.addr = addr;
    this.queues = queues;
    this.#kick = kick;
  }

  /** Eventfd writes so far (the rest were absorbed by a polling device). */
  get kicks(): number {
    return this.#kicks;
  }

  /** Tells the device that queue `queue` has new available buffers. */
  ring(queue: number): void {
    if (!(queue >= 0 && queue < this.queues)) {
      throw new RangeError(`queue ${queue} is outside the doorbell (0..${this.queues - 1})`);
    }
    const word = queue >>> 5;
    this.#mem.orU32(this.#bitmap + word * 4, 1 << (queue & 31));
    this.#mem.orU32(this.addr + DOORBELL_SUMMARY + (word >>> 5) * 4, 1 << (word & 31));
    if (this.#mem.loadU32(this.addr + DOORBELL_AWAKE) === 0) {
      this.#kicks++;
      this.#kick.signal();
    }
  }
}
