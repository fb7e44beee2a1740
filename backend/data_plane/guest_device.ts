/**
 * One guest's device as the data plane sees it: its memory, its queues, its
 * notifiers, and the device model its control commands act on.
 *
 * Everything here runs on the data-plane Worker. Guest memory is hostile:
 * queues mark themselves broken on bad input and this device then stops
 * serving that queue (NEEDS_RESET), without throwing out of the loop.
 *
 * @module
 */

import { decode, encode } from "cbor-x";
import { GuestMemory } from "../../virtqueue/memory.ts";
import { DeviceQueue } from "../../virtqueue/device_queue.ts";
import { DescriptorChain } from "../../virtqueue/descriptor_chain.ts";
import { validateLayout } from "../../virtqueue/layout.ts";
import { EventFd } from "../../virtqueue/sys/eventfd.ts";
import { SharedMemory } from "../../virtqueue/sys/shm.ts";
import { closeFd, setNonBlocking } from "../../virtqueue/sys/libc.ts";
import {
  CONTROL_QUEUE,
  DeviceEvent,
  DOORBELL_AWAKE,
  DOORBELL_SUMMARY,
  doorbellLayout,
  encodeEvent,
  Errno,
  EVENT_QUEUE,
  EVENT_SLOT_BYTES,
  EventType,
  FIXED_QUEUES,
  MAX_COMMAND_BYTES,
} from "../../protocol/device_interface.ts";
import { DeviceModel } from "../device/device_model.ts";
import type { HostTables } from "../device/host_tables.ts";
import type { Qp, Srq } from "../device/objects.ts";
import type { VerbsEngine } from "../engine/engine.ts";
import type { EngineAh, EngineGuest, EngineQp } from "../engine/types.ts";
import type { QpStateName } from "../../protocol/verbs.ts";
import { deviceConfigFor } from "../device/attributes.ts";
import type { Counters } from "./stats.ts";
import type { RegionMapping, VringSetup } from "./messages.ts";

/** Events kept for a guest whose event queue has no free slot; older ones are dropped. */
const MAX_PENDING_EVENTS = 4096;

/** Throws unless `fd` is an eventfd: a guest may send any fd it likes. */
function adoptEventFd(fd: number, what: string): EventFd {
  let target = "";
  try {
    target = Deno.readLinkSync(`/proc/self/fd/${fd}`);
  } catch {
    // Without /proc we cannot tell; fall through to the check below.
  }
  if (target !== "anon_inode:[eventfd]") {
    closeFd(fd);
    throw new TypeError(`${what}: fd ${fd} is not an eventfd (${target || "unknown"})`);
  }
  // Nonblocking on our side: a guest that drains its own kick fd or fills its
  // call fd's counter must not be able to block the data plane.
  setNonBlocking(fd, true);
  return EventFd.fromFd(fd);
}

/** What a guest device is made of. */
export interface GuestDeviceOptions {
  /** Guest number. */
  id: number;
  /** This host's IPv4 address. */
  ip: string;
  /** The backend's counters. */
  counters: Counters;
  /** The backend's host-wide tables (QPNs, keys). */
  host: HostTables;
  /** The backend's verbs data path. */
  engine: VerbsEngine;
  /** Called when one of the guest's queues breaks (NEEDS_RESET). */
  onBroken: (queue: number, error: string) => void;
}

/** A guest device on the data plane; it is also the engine's view of the guest. */
export class GuestDevice implements EngineGuest {
  /** Guest number. */
  readonly id: number;
  readonly #ip: string;
  readonly #counters: Counters;
  readonly #host: HostTables;
  readonly #engine: VerbsEngine;
  #eventIdx = false;
  #mem: GuestMemory | null = null;
  #model: DeviceModel | null = null;
  readonly #queues: (DeviceQueue | null)[] = [];
  readonly #enabled: boolean[] = [];
  readonly #kicks = new Map<number, EventFd>();
  readonly #calls = new Map<number, EventFd>();
  #doorbell: { addr: number; queues: number; bitmap: number; words: number } | null = null;
  readonly #pendingEvents: DeviceEvent[] = [];
  readonly #chain = new DescriptorChain(8);
  readonly #request = new Uint8Array(MAX_COMMAND_BYTES);
  readonly #eventSlot = new DataView(new ArrayBuffer(EVENT_SLOT_BYTES));
  readonly #onBroken: (queue: number, error: string) => void;
  /** Broken queues already counted and reported. */
  readonly #reported = new WeakSet<DeviceQueue>();
  /** QPs and SRQs already given their fatal event: one each, however many queues break. */
  readonly #fatal = new WeakSet<Qp | Srq>();

  /** A guest with nothing set up yet, served by `options.engine` over the backend's tables. */
  constructor(options: GuestDeviceOptions) {
    this.id = options.id;
    this.#ip = options.ip;
    this.#counters = options.counters;
    this.#host = options.host;
    this.#engine = options.engine;
    this.#onBroken = options.onBroken;
    this.#counters.add("guests");
  }

  /** The backend's counters (see {@linkcode EngineGuest.counters}). */
  get counters(): Counters {
    return this.#counters;
  }

  /** The device model (null before the memory table): the data-path engine's entry to the objects. */
  get model(): DeviceModel | null {
    return this.#model;
  }

  /** The kick fds, for the epoll set. */
  get kickFds(): number[] {
    return [...this.#kicks.values()].map((k) => k.fd);
  }

  /** Maps the guest's memory regions (the service thread mapped them; we rebuild views). */
  setMemory(regions: RegionMapping[]): void {
    if (this.#queues.some((q) => q !== null)) {
      throw new Error("memory table change while queues are running");
    }
    const mem = new GuestMemory(regions.map((r) => ({
      guestAddr: r.guestAddr,
      buffer: SharedMemory.attach(r.hostAddr, r.size).buffer,
    })));
    this.#mem = mem;
    // The doorbell lived at an address of the old table: the guest registers
    // it again (SET_CONFIG) for the new one.
    this.#doorbell = null;
    this.#model?.destroyAll();
    const model = new DeviceModel({
      config: deviceConfigFor({ ip: this.#ip, memoryBytes: mem.size }),
      memory: mem,
      host: this.#host,
      counters: this.#counters,
      eventIdx: this.#eventIdx,
      guest: this.id,
    });
    model.onQpStateChange((qp, from, to) => this.#engine.onStateChange(this, qp, from, to));
    model.onQpDestroy((qp) => this.#engine.forget(qp));
    this.#model = model;
  }

  /** Starts serving a queue from `setup.base`. */
  setVring(setup: VringSetup): void {
    const mem = this.#requireMemory();
    if (setup.index >= FIXED_QUEUES) {
      throw new RangeError(`queue ${setup.index} is not a fixed queue (0..${FIXED_QUEUES - 1})`);
    }
    validateLayout(mem, setup.layout);
    // Every queue of a guest shares the negotiated features; queues the model
    // creates later (SQ, RQ, SRQ, CQ) take EVENT_IDX from here.
    this.#eventIdx = setup.eventIdx;
    if (this.#model !== null) this.#model.eventIdx = setup.eventIdx;
    const queue = new DeviceQueue(setup.layout, {
      eventIdx: setup.eventIdx,
      indirect: setup.indirect,
    });
    queue.restoreState({
      lastAvail: setup.base,
      usedIdx: setup.base,
      signalledUsed: -1,
      broken: null,
    });
    if (this.#queues[setup.index] == null) this.#counters.add("queues");
    this.#queues[setup.index] = queue;
    this.#enabled[setup.index] = false;
  }

  /** Enables or disables a queue; kicks for disabled queues are ignored. */
  enableVring(index: number, enabled: boolean): void {
    if (this.#queues[index] == null) throw new RangeError(`queue ${index} was never set up`);
    this.#enabled[index] = enabled;
    if (enabled) this.serviceQueue(index);
  }

  /** Stops a queue and returns the available index to resume from (GET_VRING_BASE). */
  stopVring(index: number): number {
    const queue = this.#queues[index];
    if (queue == null) return 0;
    this.#queues[index] = null;
    this.#enabled[index] = false;
    this.#counters.add("queues", -1);
    return queue.saveState().lastAvail & 0xffff;
  }

  /**
   * Adopts a kick fd. Returns it for the epoll set, and the fd it replaces
   * (closed here), which the caller must have taken out of the epoll set
   * first: a closed fd the guest still holds open would stay in the set and
   * be reported for ever.
   */
  setKick(index: number, fd: number, unwatch: (fd: number) => void): EventFd {
    const kick = adoptEventFd(fd, `SET_VRING_KICK ${index}`);
    const old = this.#kicks.get(index);
    if (old !== undefined) {
      unwatch(old.fd);
      old.close();
    }
    this.#kicks.set(index, kick);
    return kick;
  }

  /** Adopts a call fd. */
  setCall(index: number, fd: number): void {
    const call = adoptEventFd(fd, `SET_VRING_CALL ${index}`);
    this.#calls.get(index)?.close();
    this.#calls.set(index, call);
  }

  /** Registers the doorbell area. */
  setDoorbell(addr: number, queues: number): void {
    const mem = this.#requireMemory();
    if (addr % 8 !== 0) {
      throw new RangeError(`doorbell 0x${addr.toString(16)} is not 8-byte aligned`);
    }
    if (!Number.isInteger(queues) || queues < FIXED_QUEUES || queues > 1 << 20) {
      throw new RangeError(
        `doorbell covers ${queues} queues; expected ${FIXED_QUEUES}..${1 << 20}`,
      );
    }
    const layout = doorbellLayout(queues);
    mem.check(addr, layout.bytes);
    this.#doorbell = { addr, queues, bitmap: addr + layout.bitmap, words: layout.words };
  }

  #requireMemory(): GuestMemory {
    if (this.#mem === null) throw new Error("no memory table yet");
    return this.#mem;
  }

  /** Drains the kick fds' counters (they only say "look at the doorbell"). */
  drainKicks(): void {
    for (const kick of this.#kicks.values()) {
      if (kick.read() > 0n) this.#counters.add("kicks");
    }
  }

  /**
   * Serves every queue the doorbell names (or every enabled queue when the
   * guest has no doorbell). Returns true when any work was done.
   */
  service(): boolean {
    const mem = this.#mem;
    if (mem === null) return false;
    const bell = this.#doorbell;
    if (bell === null) {
      let worked = false;
      for (let q = 0; q < this.#queues.length; q++) worked = this.serviceQueue(q) || worked;
      return worked;
    }
    let worked = false;
    const summaryWords = Math.ceil(bell.words / 32);
    for (let sw = 0; sw < summaryWords; sw++) {
      const summaryAddr = bell.addr + DOORBELL_SUMMARY + sw * 4;
      // A plain load first: most words are zero, and an exchange costs more.
      if (mem.loadU32(summaryAddr) === 0) continue;
      let rung = mem.exchangeU32(summaryAddr, 0);
      while (rung !== 0) {
        const wbit = 31 - Math.clz32(rung);
        rung &= ~(1 << wbit);
        const w = sw * 32 + wbit;
        if (w >= bell.words) continue; // a guest's stray bit past its bitmap
        let bits = mem.exchangeU32(bell.bitmap + w * 4, 0);
        while (bits !== 0) {
          const bit = 31 - Math.clz32(bits);
          bits &= ~(1 << bit);
          worked = this.serviceQueue(w * 32 + bit) || worked;
        }
      }
    }
    return worked;
  }

  /** Tells the driver whether the device is polling (it then skips kicks). */
  setAwake(awake: boolean): void {
    const bell = this.#doorbell;
    if (bell === null || this.#mem === null) return;
    this.#mem.storeU32(bell.addr + DOORBELL_AWAKE, awake ? 1 : 0);
  }

  /** Serves one queue if it is enabled and not broken. Returns true when it did work. */
  serviceQueue(index: number): boolean {
    if (index >= FIXED_QUEUES) return this.#serviceDataQueue(index);
    const queue = this.#queues[index];
    if (queue == null || !this.#enabled[index] || queue.broken) return false;
    const mem = this.#mem!;
    let worked = false;
    for (;;) {
      const did = index === CONTROL_QUEUE
        ? this.#serviceControl(queue)
        : index === EVENT_QUEUE
        ? this.#flushEvents(queue)
        : false;
      worked ||= did;
      // Re-arm (avail_event = next entry, or clear NO_NOTIFY) so the driver's
      // next publish rings the doorbell; if entries slipped in meanwhile,
      // serve them now rather than wait for a ring that will not come.
      if (queue.broken || !queue.enableNotifications(mem) || (!did && index === EVENT_QUEUE)) break;
    }
    this.#reportIfBroken(index, queue);
    return worked;
  }

  /** Counts and reports a queue that hostile input broke, once. */
  #reportIfBroken(index: number, queue: DeviceQueue): void {
    if (!queue.broken || this.#reported.has(queue)) return;
    this.#reported.add(queue);
    this.#counters.add("brokenQueues");
    this.#onBroken(index, queue.error?.message ?? "broken");
  }

  /** A doorbell for a queue the model created (SQ, RQ, SRQ, CQ): the engine serves it. */
  #serviceDataQueue(index: number): boolean {
    const owner = this.#model?.queueOwner(index);
    if (owner === undefined) return false;
    switch (owner.kind) {
      case "sq":
        this.#engine.serviceSq(this, owner.object);
        this.#dataQueueBroken(index, owner.object, owner.object.sq);
        return true;
      case "rq":
        this.#engine.serviceRq(this, owner.object);
        if (owner.object.rq) this.#dataQueueBroken(index, owner.object, owner.object.rq);
        return true;
      case "srq":
        this.#engine.serviceSrq(this, owner.object);
        this.#srqBroken(owner.object);
        return true;
      case "cq":
        // New CQE slots: nothing waits on them (an overrun CQ stays in error).
        return false;
    }
  }

  /**
   * A QP's SQ or RQ that hostile input broke: counted and reported once, and
   * the QP goes to ERR with a QP_FATAL event (IBV_EVENT_QP_FATAL: "error
   * occurred on a QP and it transitioned to error state"), so the guest
   * learns it instead of waiting for WRs that will never run. A completion
   * cannot tell it: the WRs in a broken ring are never read again.
   */
  #dataQueueBroken(index: number, qp: Qp, queue: DeviceQueue): void {
    if (!queue.broken || this.#reported.has(queue)) return;
    this.#reportIfBroken(index, queue);
    if (qp.state !== "ERR") this.moveQp(qp, "ERR");
    // Moving to ERR re-enters through queueBroken when its other queue broke
    // too: one event per QP all the same. A destroyed QP has no one to tell.
    if (this.#fatal.has(qp) || !qp.live) return;
    this.#fatal.add(qp);
    this.postEvent({ type: EventType.QP_FATAL, element: qp.handle, info: 0 });
  }

  /**
   * An SRQ that hostile input broke: counted and reported once, with an
   * SRQ_ERR event (IBV_EVENT_SRQ_ERR). Its QPs stay as they are: each fails
   * on its own when a message finds no receive (RNR), as with an empty SRQ.
   */
  #srqBroken(srq: Srq): void {
    if (!srq.queue.broken || this.#reported.has(srq.queue)) return;
    this.#reportIfBroken(srq.queueId, srq.queue);
    if (this.#fatal.has(srq)) return;
    this.#fatal.add(srq);
    this.postEvent({ type: EventType.SRQ_ERR, element: srq.handle, info: 0 });
  }

  /**
   * See {@linkcode EngineGuest.queueBroken}: each broken queue of `qp` is
   * counted and reported once; a broken SQ or RQ puts the QP in ERR with
   * QP_FATAL, a broken SRQ gets SRQ_ERR.
   */
  queueBroken(qp: EngineQp): void {
    const q = qp as Qp;
    this.#dataQueueBroken(q.sqQueue, q, q.sq);
    if (q.srq !== null) this.#srqBroken(q.srq);
    else if (q.rq !== null && q.rqQueue !== null) this.#dataQueueBroken(q.rqQueue, q, q.rq);
  }

  /** The guest's memory (the engine only runs for guests that have one). */
  get memory(): GuestMemory {
    if (this.#mem === null) throw new Error(`guest ${this.id} has no memory table`);
    return this.#mem;
  }

  /** An address handle of this guest. */
  ah(handle: number): EngineAh | undefined {
    return this.#model?.ah(handle);
  }

  /** The device's own QP transition (errors): the model records it, the engine reacts. */
  moveQp(qp: EngineQp, to: QpStateName): void {
    const from = qp.state;
    if (this.#model?.moveQp(qp as Qp, to)) this.#engine.onStateChange(this, qp, from, to);
  }

  #serviceControl(queue: DeviceQueue): boolean {
    const mem = this.#mem!;
    const chain = this.#chain;
    let worked = false;
    while (queue.popInto(mem, chain)) {
      worked = true;
      const response = this.#runCommand(chain);
      let bytes = encode(response) as Uint8Array;
      if (bytes.length > chain.writableBytes) {
        bytes = encode({
          status: Errno.EMSGSIZE,
          error: `response of ${bytes.length} bytes does not fit ${chain.writableBytes}`,
        }) as Uint8Array;
      }
      let written = 0;
      if (bytes.length <= chain.writableBytes) {
        try {
          chain.writer.write(bytes);
          written = bytes.length;
        } catch {
          written = 0; // a writable range outside guest memory: answer nothing
        }
      }
      queue.addUsed(mem, chain.head, written);
      queue.publishUsed(mem);
      if (queue.broken) break;
    }
    if (worked) this.#notify(queue, CONTROL_QUEUE);
    return worked;
  }

  #runCommand(chain: DescriptorChain): Record<string, unknown> {
    this.#counters.add("controlCommands");
    const length = chain.readableBytes;
    if (length === 0 || length > MAX_COMMAND_BYTES) {
      this.#counters.add("controlErrors");
      return {
        status: Errno.EINVAL,
        error: `command of ${length} bytes (1..${MAX_COMMAND_BYTES})`,
      };
    }
    let request: unknown;
    try {
      const bytes = this.#request.subarray(0, length);
      chain.reader.read(bytes);
      request = decode(bytes);
    } catch (e) {
      this.#counters.add("controlErrors");
      return { status: Errno.EINVAL, error: `command is not CBOR: ${(e as Error).message}` };
    }
    const response = this.#model!.execute(request);
    if (response.status !== Errno.OK) this.#counters.add("controlErrors");
    return response;
  }

  /** Queues an event for the driver and delivers what fits. */
  postEvent(event: DeviceEvent): void {
    if (this.#pendingEvents.length >= MAX_PENDING_EVENTS) {
      this.#pendingEvents.shift();
      this.#counters.add("eventsDropped");
    }
    this.#pendingEvents.push(event);
    const queue = this.#queues[EVENT_QUEUE];
    if (queue != null && this.#enabled[EVENT_QUEUE] && !queue.broken) {
      this.#flushEvents(queue);
      this.#reportIfBroken(EVENT_QUEUE, queue);
    }
  }

  #flushEvents(queue: DeviceQueue): boolean {
    const mem = this.#mem!;
    const chain = this.#chain;
    let delivered = false;
    while (this.#pendingEvents.length > 0 && queue.popInto(mem, chain)) {
      const event = this.#pendingEvents.shift()!;
      encodeEvent(event, this.#eventSlot);
      let written = 0;
      if (chain.writableBytes >= EVENT_SLOT_BYTES) {
        try {
          chain.writer.write(new Uint8Array(this.#eventSlot.buffer));
          written = EVENT_SLOT_BYTES;
        } catch {
          written = 0;
        }
      }
      queue.addUsed(mem, chain.head, written);
      this.#counters.add("events");
      delivered = true;
    }
    if (delivered) {
      queue.publishUsed(mem);
      this.#notify(queue, EVENT_QUEUE);
    }
    return delivered;
  }

  #notify(queue: DeviceQueue, index: number): void {
    if (!queue.needsNotify(this.#mem!)) return;
    const call = this.#calls.get(index) ?? this.#calls.get(EVENT_QUEUE);
    if (call === undefined) return;
    try {
      call.signal();
      this.#counters.add("calls");
    } catch {
      // EAGAIN: the counter is saturated, so the driver has a wake-up pending anyway.
    }
  }

  /** Frees everything; the service thread unmaps the memory after this. */
  destroy(): void {
    this.#model?.destroyAll();
    this.#model = null;
    for (let q = 0; q < this.#queues.length; q++) {
      if (this.#queues[q] != null) this.#counters.add("queues", -1);
    }
    this.#queues.length = 0;
    this.#mem = null;
    for (const fd of [...this.#kicks.values(), ...this.#calls.values()]) fd.close();
    this.#kicks.clear();
    this.#calls.clear();
    this.#counters.add("guests", -1);
  }
}
