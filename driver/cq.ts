/**
 * Completion queues (`ibv_create_cq`, `ibv_poll_cq`, `ibv_req_notify_cq`).
 *
 * A CQ is a virtqueue the driver keeps stocked with device-writable CQE
 * slots; the device writes one CQE per slot and marks it used, so polling is
 * reading the used ring and handing the slot back. Waiting uses the CQ's arm
 * word: the driver stores NEXT (or SOLICITED) there, and the device posts a
 * COMPLETION event on the event queue when it writes the next (solicited)
 * CQE, which wakes the waiter through the device's interrupt. Nothing spins.
 *
 * @module
 */

import { Op } from "../protocol/device_interface.ts";
import { CQ_ARM_BYTES, CqArm, CQE_BYTES } from "../protocol/verbs.ts";
import { VerbsError } from "./errors.ts";
import type { CqInit, VerbsDevice, WorkCompletion } from "./types.ts";
import { ringEntries, WorkQueue } from "./work_queue.ts";

/** Slots one virtqueue can hold (VIRTIO 1.2, 2.7). */
const MAX_RING = 0x8000;
import { decodeCqe } from "./wqe.ts";

/**
 * A completion queue. Make one with `dev.createCq`.
 *
 * @example
 * ```ts ignore
 * const cq = await dev.createCq({ cqe: 256 });
 * const now = cq.poll(16);      // never blocks
 * const wc = await cq.next();   // waits for the next completion
 * await cq.destroy();
 * ```
 */
export class Cq {
  /** Handle (per guest). */
  readonly handle: number;
  /** Completions it holds: its slots, a power of two >= the requested `cqe`. */
  readonly cqe: number;
  /** Doorbell queue id of its (first) ring. */
  readonly queueId: number;
  readonly #dev: VerbsDevice;
  /**
   * Its rings: one, or two for a CQ above 32768 entries (the most a
   * virtqueue holds). With two, completion k is in ring k mod 2.
   */
  readonly #wqs: WorkQueue[];
  readonly #queueIds: number[];
  /** Completions taken so far: picks the ring the next one is in. */
  #taken = 0;
  readonly #armAddr: number;
  readonly #what: string;
  /** SQs, RQs and SRQs whose completions land here, reaped when polling (with use counts). */
  readonly #reaped = new Map<WorkQueue, { what: string; uses: number }>();
  readonly #waiters: PromiseWithResolvers<WorkCompletion>[] = [];
  readonly #eventWaiters: PromiseWithResolvers<void>[] = [];
  #events = 0;
  readonly #unsubscribe: (() => void)[];
  #destroyed = false;
  #destroying: Promise<void> | null = null;

  /** @internal use `dev.createCq`. */
  constructor(
    dev: VerbsDevice,
    parts: { handle: number; queueIds: number[]; wqs: WorkQueue[]; armAddr: number },
  ) {
    this.#dev = dev;
    this.handle = parts.handle;
    this.queueId = parts.queueIds[0]!;
    this.#queueIds = parts.queueIds;
    this.#wqs = parts.wqs;
    this.cqe = parts.wqs.reduce((n, wq) => n + wq.size, 0);
    this.#armAddr = parts.armAddr;
    this.#what = `CQ ${parts.handle}`;
    this.#unsubscribe = [
      dev.onCompletion(this.handle, () => {
        if (!this.#destroyed) this.#onEvent();
      }),
      dev.onFail((error) => this.#rejectAll(error)),
    ];
  }

  /**
   * @internal CREATE_CQ: places the ring, its CQE slots and the arm word in
   * guest memory, stocks every slot, then asks the device.
   */
  static async create(dev: VerbsDevice, init: CqInit): Promise<Cq> {
    dev.checkUsable();
    const cqe = init?.cqe;
    const maxCqe = dev.attr.maxCqe;
    if (typeof cqe !== "number" || !Number.isInteger(cqe) || cqe < 1 || cqe > maxCqe) {
      throw new VerbsError("EINVAL", `cqe ${cqe} is not an integer in 1..${maxCqe}`);
    }
    // A virtqueue holds at most 32768 slots: a larger CQ gets two equal rings.
    const split = cqe > MAX_RING;
    const wqs: WorkQueue[] = [];
    let armAddr: number;
    try {
      for (let i = 0; i < (split ? 2 : 1); i++) {
        wqs.push(WorkQueue.create(
          dev,
          {
            entries: ringEntries(split ? Math.ceil(cqe / 2) : cqe),
            slotBytes: CQE_BYTES,
            writable: true,
          },
          `CQ of ${cqe} entries`,
        ));
      }
      armAddr = dev.allocator.alloc(CQ_ARM_BYTES, 8);
    } catch (e) {
      for (const wq of wqs) wq.release();
      if (e instanceof VerbsError) throw e;
      throw new VerbsError("ENOMEM", `no guest memory for a CQ arm word`, { cause: e });
    }
    dev.memory.fill(armAddr, CQ_ARM_BYTES);
    // Stocked before the device knows the rings: it finds every slot ready.
    for (const wq of wqs) {
      for (let i = 0; i < wq.size; i++) wq.post(CQE_BYTES);
      wq.publish();
    }
    let result: Record<string, unknown>;
    try {
      const args: Record<string, unknown> = { cqe, ring: wqs[0]!.ring, armAddr };
      if (split) args.ring2 = wqs[1]!.ring;
      result = await dev.command(Op.CREATE_CQ, args);
    } catch (e) {
      for (const wq of wqs) wq.release();
      dev.allocator.free(armAddr);
      throw e;
    }
    const queueIds = [result.queue as number];
    if (split) queueIds.push(result.queue2 as number);
    return new Cq(dev, { handle: result.cq as number, queueIds, wqs, armAddr });
  }

  /** @internal the device it belongs to. */
  get device(): VerbsDevice {
    return this.#dev;
  }

  /** True once {@linkcode Cq.destroy} succeeded. */
  get destroyed(): boolean {
    return this.#destroyed;
  }

  /** Completions the device could not write because every slot was full (CQ overrun). */
  get overruns(): number {
    this.#usable();
    return this.#dev.memory.loadU32(this.#armAddr + 4);
  }

  #usable(): void {
    this.#dev.checkUsable();
    if (this.#destroyed) throw new VerbsError("EINVAL", `${this.#what} was destroyed`);
  }

  /**
   * Returns up to `max` completions, oldest first, without blocking
   * (`ibv_poll_cq`); an empty array when there are none. Each slot read goes
   * back to the device, and the send and receive queues completing here are
   * reaped so their slots free up.
   */
  poll(max = 1): WorkCompletion[] {
    this.#usable();
    if (!Number.isInteger(max) || max < 1) {
      throw new VerbsError("EINVAL", `poll(${max}): the number of completions must be >= 1`);
    }
    const wqs = this.#wqs;
    const mask = wqs.length - 1;
    const out: WorkCompletion[] = [];
    let taken = 0;
    let error: unknown = null;
    while (out.length < max) {
      const wq = wqs[this.#taken & mask]!;
      let id: number;
      try {
        id = wq.popUsed(this.#what);
      } catch (e) {
        error = e;
        break;
      }
      if (id < 0) break;
      taken++;
      this.#taken++;
      // A slot the device could not write comes back with fewer bytes: it
      // holds an older CQE or nothing, and no WR id to report.
      if (wq.usedLen >= CQE_BYTES) out.push(decodeCqe(wq.slots, id * CQE_BYTES));
      // The slot just freed is the head of the free list: post it again.
      wq.post(CQE_BYTES);
    }
    if (taken > 0) {
      wqs.forEach((wq, i) => {
        if (wq.publish()) this.#dev.ring(this.#queueIds[i]!);
      });
      this.#reap();
    }
    // A broken ring is reported once the completions read before it are out.
    if (error !== null && out.length === 0) throw error;
    return out;
  }

  #reap(): void {
    for (const [queue, { what }] of this.#reaped) {
      try {
        queue.reap(what);
      } catch {
        // A queue the device broke reports it to its own poster (postSend or
        // postRecv reap it again and throw); throwing here would lose the
        // completions this poll already took.
      }
    }
  }

  /**
   * Waits for the next completion without spinning: polls, and when there is
   * none arms the CQ, polls again (a completion written before the arm was
   * seen raises no event), then sleeps until the device's COMPLETION event.
   * Concurrent callers get completions in call order. Rejects with the
   * device's error when it fails or closes, and with EINVAL when the CQ is
   * destroyed meanwhile.
   */
  next(): Promise<WorkCompletion> {
    try {
      this.#usable();
    } catch (e) {
      return Promise.reject(e);
    }
    const waiter = Promise.withResolvers<WorkCompletion>();
    this.#waiters.push(waiter);
    this.#serve();
    return waiter.promise;
  }

  /** Hands completions to waiters in order; arms the CQ when it runs dry. */
  #serve(): void {
    while (this.#waiters.length > 0) {
      let wc: WorkCompletion | undefined;
      try {
        wc = this.poll(1)[0];
        if (wc === undefined) {
          this.#arm(CqArm.NEXT);
          wc = this.poll(1)[0];
        }
      } catch (e) {
        this.#rejectAll(e);
        return;
      }
      if (wc === undefined) return; // armed: the COMPLETION event serves again
      this.#waiters.shift()!.resolve(wc);
    }
  }

  #onEvent(): void {
    if (this.#waiters.length > 0) {
      this.#serve();
      return;
    }
    const waiter = this.#eventWaiters.shift();
    if (waiter !== undefined) waiter.resolve();
    else this.#events++;
  }

  #rejectAll(error: unknown): void {
    for (const w of this.#waiters.splice(0)) w.reject(error);
    for (const w of this.#eventWaiters.splice(0)) w.reject(error);
  }

  #arm(value: number): void {
    this.#dev.memory.storeU32(this.#armAddr, value);
  }

  /**
   * Arms the CQ (`ibv_req_notify_cq`): the device raises one COMPLETION
   * event for the next completion, or with `solicitedOnly` for the next
   * solicited or error completion. Poll after arming: completions that came
   * before raise no event. Collect the event with {@linkcode Cq.getEvent}.
   */
  reqNotify(solicitedOnly = false): void {
    this.#usable();
    this.#arm(solicitedOnly ? CqArm.SOLICITED : CqArm.NEXT);
  }

  /**
   * Waits for the next COMPLETION event of this CQ (`ibv_get_cq_event`);
   * resolves at once for an event that already arrived. Events go to
   * {@linkcode Cq.next} callers first. As with ibverbs, poll afterwards: an
   * event says completions may be there, not how many.
   */
  getEvent(): Promise<void> {
    try {
      this.#usable();
    } catch (e) {
      return Promise.reject(e);
    }
    if (this.#events > 0) {
      this.#events--;
      return Promise.resolve();
    }
    const waiter = Promise.withResolvers<void>();
    this.#eventWaiters.push(waiter);
    return waiter.promise;
  }

  /** @internal the CQ reaps `queue` (an SQ, RQ or SRQ completing here) when it polls. */
  attach(queue: WorkQueue, what: string): void {
    const entry = this.#reaped.get(queue);
    if (entry !== undefined) entry.uses++;
    else this.#reaped.set(queue, { what, uses: 1 });
  }

  /** @internal undoes one {@linkcode Cq.attach}. */
  detach(queue: WorkQueue): void {
    const entry = this.#reaped.get(queue);
    if (entry === undefined) return;
    if (--entry.uses === 0) this.#reaped.delete(queue);
  }

  /**
   * Destroys the CQ (`ibv_destroy_cq`). Fails with EBUSY while a QP uses it;
   * nothing changes then. Pending {@linkcode Cq.next} calls reject. A second
   * call does nothing.
   */
  destroy(): Promise<void> {
    if (this.#destroyed) return Promise.resolve();
    this.#destroying ??= this.#destroy().finally(() => this.#destroying = null);
    return this.#destroying;
  }

  async #destroy(): Promise<void> {
    this.#dev.checkUsable();
    await this.#dev.command(Op.DESTROY_CQ, { cq: this.handle });
    this.#destroyed = true;
    for (const off of this.#unsubscribe) off();
    this.#rejectAll(new VerbsError("EINVAL", `${this.#what} was destroyed`));
    for (const wq of this.#wqs) wq.release();
    this.#dev.allocator.free(this.#armAddr);
  }

  /** `await using`: destroys it, unless the device is already gone (which freed it). */
  [Symbol.asyncDispose](): Promise<void> {
    if (this.#destroyed || this.#dev.error !== null) return Promise.resolve();
    return this.destroy();
  }
}
