/**
 * `openDevice`: the guest's vrdma device.
 *
 * Opening creates the guest memory (a sealed memfd), connects to the backend,
 * negotiates features, hands over the memory table, sets up the control and
 * event queues with one kick and one call eventfd, and reads the config space
 * into {@linkcode Device.attr}.
 *
 * @module
 */

import {
  encodeConfig,
  encodeMemoryTable,
  encodeU64,
  encodeVringAddr,
  encodeVringFile,
  encodeVringState,
  featureMask,
  ProtocolFeature,
  Request,
  validateReply,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VirtioFeature,
} from "../protocol/vhost_user.ts";
import {
  CONFIG_SIZE,
  decodeDeviceConfig,
  type DeviceAttr,
  type DeviceConfig,
  type PortAttr,
} from "../protocol/device_config.ts";
import {
  CONTROL_QUEUE,
  type DeviceEvent,
  doorbellBytes,
  encodeDriverArea,
  EVENT_QUEUE,
  EventType,
  eventTypeName,
  FIXED_QUEUES,
} from "../protocol/device_interface.ts";
import { GuestMemory } from "../virtqueue/memory.ts";
import { layoutAt, type QueueLayout } from "../virtqueue/layout.ts";
import { EventFd } from "../virtqueue/sys/eventfd.ts";
import { SharedMemory } from "../virtqueue/sys/shm.ts";
import { RangeAllocator } from "./allocator.ts";
import { ControlChannel } from "./control_channel.ts";
import { ControlQueue } from "./control_queue.ts";
import { Doorbell } from "./doorbell.ts";
import { VerbsError } from "./errors.ts";
import { EventQueue } from "./event_queue.ts";
import { acquireReactor, releaseReactor } from "./reactor_pool.ts";
import type { Reactor } from "../virtqueue/sys/reactor.ts";
import { Cq } from "./cq.ts";
import { Pd } from "./pd.ts";
import type { CqInit } from "./types.ts";

/** Guest address where the driver places its memory: nonzero so an address is never an offset. */
export const GUEST_BASE = 0x1_0000_0000;
/** Entries in the control queue. */
const CONTROL_QUEUE_SIZE = 32;
/** Entries in the event queue. */
const EVENT_QUEUE_SIZE = 128;
/** Queues the doorbell covers (the fixed two plus room for QPs, CQs and SRQs). */
const DOORBELL_QUEUES = 1 << 16;
/** Memory the driver keeps for its own rings and slots, on top of what was asked for. */
const DRIVER_RESERVE = 2 << 20;

/** Options of {@linkcode openDevice}. */
export interface OpenDeviceOptions {
  /** The backend's unix socket. */
  socket: string;
  /** Bytes of guest memory for buffers the application allocates. Default 64 MiB. */
  memoryBytes?: number;
}

/** A buffer in guest memory, ready to register as an MR. */
export interface GuestBuffer {
  /** A live view of the bytes. */
  readonly bytes: Uint8Array;
  /** Its guest address. */
  readonly addr: bigint;
  /** Its length in bytes. */
  readonly length: number;
  /** Returns the memory to the device's allocator. */
  free(): void;
}

/** An async event the device reported (`ibv_get_async_event`). */
export interface AsyncEvent {
  /** Event type name, e.g. `"DEVICE_FATAL"`, `"CQ_ERR"`, `"QP_FATAL"`. */
  type: string;
  /** The CQ, QP or SRQ handle, or the port number, it is about. */
  element: number;
  /** Extra detail (an errno for fatal events). */
  info: number;
}

const WANTED_FEATURES = featureMask(VirtioFeature.VERSION_1) |
  featureMask(VirtioFeature.RING_EVENT_IDX) | featureMask(VHOST_USER_F_PROTOCOL_FEATURES);
const WANTED_PROTOCOL = featureMask(ProtocolFeature.REPLY_ACK) |
  featureMask(ProtocolFeature.CONFIG);

/** An open vrdma device. Close it with {@linkcode Device.close} (or `await using`). */
export class Device {
  /** Device attributes (`ibv_query_device`). */
  readonly attr: DeviceAttr;
  /** The backend's socket path. */
  readonly socket: string;
  /** VIRTIO_RING_F_EVENT_IDX was negotiated: every queue of this device uses it. */
  readonly eventIdx: boolean;
  /** @internal the guest memory, for the verbs objects. */
  readonly memory: GuestMemory;
  /** @internal allocator over guest memory. */
  readonly allocator: RangeAllocator;
  /** @internal control-queue commands. */
  readonly control: ControlQueue;
  readonly #config: DeviceConfig;
  readonly #shm: SharedMemory;
  readonly #channel: ControlChannel;
  readonly #kick: EventFd;
  readonly #call: EventFd;
  readonly #events: EventQueue;
  readonly #doorbell: Doorbell;
  readonly #reactor: Reactor;
  readonly #asyncEvents: AsyncEvent[] = [];
  readonly #asyncWaiters: PromiseWithResolvers<AsyncEvent>[] = [];
  /** Completion-event listeners by CQ handle: one event wakes one CQ. */
  readonly #completionListeners = new Map<number, Set<() => void>>();
  readonly #failListeners = new Set<(error: VerbsError) => void>();
  #error: VerbsError | null = null;
  #closed = false;

  /** Use {@linkcode openDevice}. */
  constructor(parts: {
    socket: string;
    eventIdx: boolean;
    config: DeviceConfig;
    shm: SharedMemory;
    memory: GuestMemory;
    allocator: RangeAllocator;
    channel: ControlChannel;
    kick: EventFd;
    call: EventFd;
    control: ControlQueue;
    events: (device: Device) => EventQueue;
    doorbell: Doorbell;
    reactor: Reactor;
  }) {
    this.socket = parts.socket;
    this.eventIdx = parts.eventIdx;
    this.#config = parts.config;
    this.attr = parts.config.device;
    this.#shm = parts.shm;
    this.memory = parts.memory;
    this.allocator = parts.allocator;
    this.#channel = parts.channel;
    this.#kick = parts.kick;
    this.#call = parts.call;
    this.control = parts.control;
    this.#doorbell = parts.doorbell;
    this.#reactor = parts.reactor;
    this.#events = parts.events(this);
  }

  /** Port attributes (`ibv_query_port`). vrdma has one port, number 1. */
  queryPort(portNum: number): PortAttr {
    this.#checkPort(portNum);
    return { ...this.#config.port };
  }

  /** GID `index` of port `portNum` (`ibv_query_gid`), as IPv6 text. */
  queryGid(portNum: number, index: number): string {
    this.#checkPort(portNum);
    const gid = this.#config.gids[index];
    if (gid === undefined) {
      throw new VerbsError(
        "EINVAL",
        `GID index ${index} is past the table (${this.#config.gids.length} entries)`,
      );
    }
    return gid;
  }

  #checkPort(portNum: number): void {
    this.checkUsable();
    if (portNum !== 1) throw new VerbsError("EINVAL", `port ${portNum} does not exist (ports: 1)`);
  }

  /** @internal throws the device's fatal error, if any. */
  checkUsable(): void {
    if (this.#error) throw this.#error;
  }

  /** Set once the device is unusable (backend gone, closed). */
  get error(): VerbsError | null {
    return this.#error;
  }

  /**
   * Hands out `length` bytes of guest memory, 64-byte aligned (or `align`),
   * zeroed. Throws a `VerbsError` ENOMEM when guest memory is exhausted.
   */
  allocBuffer(length: number, align = 64): GuestBuffer {
    this.checkUsable();
    let addr: number;
    try {
      addr = this.allocator.alloc(length, align);
    } catch (e) {
      throw new VerbsError(
        e instanceof RangeError && /cannot allocate/.test(e.message) ? "ENOMEM" : "EINVAL",
        (e as Error).message,
      );
    }
    const bytes = this.memory.bytes(addr, length);
    bytes.fill(0);
    let freed = false;
    const allocator = this.allocator;
    return {
      bytes,
      addr: BigInt(addr),
      length,
      free() {
        if (freed) return;
        freed = true;
        allocator.free(addr);
      },
    };
  }

  /** Allocates a protection domain (`ibv_alloc_pd`). */
  allocPd(): Promise<Pd> {
    return Pd.alloc(this);
  }

  /** Creates a completion queue of at least `init.cqe` entries (`ibv_create_cq`). */
  createCq(init: CqInit): Promise<Cq> {
    return Cq.create(this, init);
  }

  /** Runs a control command (for the verbs objects). */
  command(op: number, args: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    if (this.#error) return Promise.reject(this.#error);
    return this.control.execute(op, args);
  }

  /** Rings the doorbell for a queue. */
  ring(queue: number): void {
    this.#doorbell.ring(queue);
  }

  /** Eventfd writes the driver made (kicks a polling backend absorbed are not counted). */
  get kicks(): number {
    return this.#doorbell.kicks;
  }

  /** Waits for the next async event (`ibv_get_async_event`). */
  getAsyncEvent(): Promise<AsyncEvent> {
    const ready = this.#asyncEvents.shift();
    if (ready) return Promise.resolve(ready);
    if (this.#error) return Promise.reject(this.#error);
    const waiter = Promise.withResolvers<AsyncEvent>();
    this.#asyncWaiters.push(waiter);
    return waiter.promise;
  }

  /** @internal subscribes to "CQ n has completions" events. */
  onCompletion(cq: number, listener: () => void): () => void {
    let set = this.#completionListeners.get(cq);
    if (set === undefined) this.#completionListeners.set(cq, set = new Set());
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0 && this.#completionListeners.get(cq) === set) {
        this.#completionListeners.delete(cq);
      }
    };
  }

  /** @internal called on every interrupt (call eventfd). */
  interrupt(): void {
    this.#call.read();
    this.control.drain();
    this.#events.drain();
  }

  /** @internal an event the device wrote. */
  deliver(event: DeviceEvent): void {
    if (event.type === EventType.COMPLETION) {
      for (const listener of this.#completionListeners.get(event.element) ?? []) listener();
      return;
    }
    const async: AsyncEvent = {
      type: eventTypeName(event.type),
      element: event.element,
      info: event.info,
    };
    const waiter = this.#asyncWaiters.shift();
    if (waiter) waiter.resolve(async);
    else this.#asyncEvents.push(async);
    if (event.type === EventType.DEVICE_FATAL) {
      this.fail(new VerbsError("ENODEV", `backend at ${this.socket} reported DEVICE_FATAL`));
    }
  }

  /**
   * @internal the backend is gone: it died, closed the connection, or left a
   * command unanswered past its timeout. A dead backend cannot post
   * DEVICE_FATAL itself, so the driver posts it: the application learns it
   * the same way whatever ended the device.
   */
  lose(error: VerbsError): void {
    if (this.#error) return; // closed by the application, or already failed
    const fatal: AsyncEvent = { type: eventTypeName(EventType.DEVICE_FATAL), element: 0, info: 0 };
    const waiter = this.#asyncWaiters.shift();
    if (waiter) waiter.resolve(fatal);
    else this.#asyncEvents.push(fatal);
    this.fail(error);
  }

  /** @internal makes the device unusable: every pending and later verb fails with `error`. */
  fail(error: VerbsError): void {
    if (this.#error) return;
    this.#error = error;
    this.control.fail(error);
    for (const waiter of this.#asyncWaiters.splice(0)) waiter.reject(error);
    for (const listener of this.#failListeners) listener(error);
  }

  /** @internal runs `listener` when the device fails. */
  onFail(listener: (error: VerbsError) => void): () => void {
    this.#failListeners.add(listener);
    return () => this.#failListeners.delete(listener);
  }

  /**
   * Closes the device: the backend frees everything it holds for this guest,
   * and the guest memory is unmapped. Idempotent.
   */
  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    this.fail(new VerbsError("ENODEV", `device on ${this.socket} is closed`));
    this.#channel.close();
    this.#reactor.unwatch(this.#call.fd);
    releaseReactor();
    this.#kick.close();
    this.#call.close();
    this.#shm.close();
    return Promise.resolve();
  }

  /** `await using dev = await openDevice(...)` closes it at scope end. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * Opens a vrdma device served by the backend at `options.socket`.
 *
 * Throws a `VerbsError` naming the socket when no backend listens there
 * (`ENOENT`, `ECONNREFUSED`), when it refuses the guest, or when it dies
 * during setup.
 */
export async function openDevice(options: OpenDeviceOptions): Promise<Device> {
  const memoryBytes = options.memoryBytes ?? 64 << 20;
  if (!Number.isSafeInteger(memoryBytes) || memoryBytes < 4096 || memoryBytes > 2 ** 40) {
    throw new VerbsError("EINVAL", `memoryBytes ${memoryBytes} is not in 4096..2^40`);
  }
  const total = Math.ceil((memoryBytes + DRIVER_RESERVE) / 4096) * 4096;
  const reactor = acquireReactor();
  let shm: SharedMemory | undefined;
  let channel: ControlChannel | undefined;
  let kick: EventFd | undefined;
  let call: EventFd | undefined;
  let device: Device | undefined;
  try {
    shm = SharedMemory.create(total, { name: "vrdma-guest", seal: true });
    const memory = GuestMemory.fromBuffer(shm.buffer, GUEST_BASE);
    const allocator = new RangeAllocator(GUEST_BASE, total);
    channel = ControlChannel.open(options.socket, reactor);
    const ch = channel;
    const u64 = (payload: Uint8Array, request: number) =>
      validateReply({ request, flags: 0x5, payload }, request) as bigint;

    const offered = u64(
      await ch.request(Request.GET_FEATURES, undefined, { reply: "payload" }),
      Request.GET_FEATURES,
    );
    if ((offered & featureMask(VirtioFeature.VERSION_1)) === 0n) {
      throw new VerbsError("EPROTO", `backend at ${options.socket} does not offer VERSION_1`);
    }
    const features = offered & WANTED_FEATURES;
    const eventIdx = (features & featureMask(VirtioFeature.RING_EVENT_IDX)) !== 0n;
    // Protocol features first: REPLY_ACK must be on before we ask for acks.
    const protocol = u64(
      await ch.request(Request.GET_PROTOCOL_FEATURES, undefined, { reply: "payload" }),
      Request.GET_PROTOCOL_FEATURES,
    ) & WANTED_PROTOCOL;
    if (protocol !== WANTED_PROTOCOL) {
      throw new VerbsError("EPROTO", `backend at ${options.socket} lacks REPLY_ACK or CONFIG`);
    }
    await ch.request(Request.SET_PROTOCOL_FEATURES, encodeU64(protocol), { reply: "none" });
    await ch.request(Request.SET_FEATURES, encodeU64(features));
    await ch.request(Request.SET_OWNER);
    await ch.request(
      Request.SET_MEM_TABLE,
      encodeMemoryTable([{
        guestPhysAddr: BigInt(GUEST_BASE),
        memorySize: BigInt(total),
        userspaceAddr: BigInt(GUEST_BASE),
        mmapOffset: 0n,
      }]),
      { fds: [shm.fd] },
    );

    const configBytes = await ch.request(
      Request.GET_CONFIG,
      encodeConfig({ offset: 0, flags: 0, data: new Uint8Array(CONFIG_SIZE) }),
      { reply: "payload" },
    );
    const config = decodeDeviceConfig(configBytes.subarray(12));

    kick = EventFd.create({ nonblocking: true });
    call = EventFd.create({ nonblocking: true });
    const doorbellAddr = allocator.alloc(doorbellBytes(DOORBELL_QUEUES), 64);
    const doorbell = new Doorbell(memory, doorbellAddr, DOORBELL_QUEUES, kick);
    await ch.request(
      Request.SET_CONFIG,
      encodeConfig({
        offset: CONFIG_SIZE,
        flags: 0,
        data: encodeDriverArea({ doorbellAddr, doorbellQueues: DOORBELL_QUEUES }),
      }),
    );

    const place = (size: number): QueueLayout => {
      const { bytes } = layoutAt(0, size);
      return layoutAt(allocator.alloc(bytes, 4096), size).layout;
    };
    const controlLayout = place(CONTROL_QUEUE_SIZE);
    const eventLayout = place(EVENT_QUEUE_SIZE);
    const control = new ControlQueue(memory, controlLayout, {
      eventIdx,
      slotsAddr: allocator.alloc(ControlQueue.slotBytes(CONTROL_QUEUE_SIZE), 64),
      ring: () => doorbell.ring(CONTROL_QUEUE),
      // A backend that stops answering is as lost as one that hung up.
      onTimeout: (error) => device?.lose(error),
    });
    const eventSlots = allocator.alloc(EventQueue.slotBytes(EVENT_QUEUE_SIZE), 64);
    device = new Device({
      socket: options.socket,
      eventIdx,
      config,
      shm,
      memory,
      allocator,
      channel: ch,
      kick,
      call,
      control,
      doorbell,
      reactor,
      events: (dev) =>
        new EventQueue(memory, eventLayout, {
          eventIdx,
          slotsAddr: eventSlots,
          ring: () => doorbell.ring(EVENT_QUEUE),
          onEvent: (e) => dev.deliver(e),
        }),
    });
    const dev = device;
    ch.onClose((error) => dev.lose(error));

    for (
      const [index, layout] of [[CONTROL_QUEUE, controlLayout], [EVENT_QUEUE, eventLayout]] as const
    ) {
      await ch.request(Request.SET_VRING_NUM, encodeVringState({ index, num: layout.size }));
      await ch.request(Request.SET_VRING_BASE, encodeVringState({ index, num: 0 }));
      await ch.request(
        Request.SET_VRING_ADDR,
        encodeVringAddr({
          index,
          flags: 0,
          descUserAddr: BigInt(layout.desc),
          usedUserAddr: BigInt(layout.used),
          availUserAddr: BigInt(layout.avail),
          logGuestAddr: 0n,
        }),
      );
    }
    // One kick fd for the whole device (on queue 0), one call fd (on the event queue).
    await ch.request(
      Request.SET_VRING_KICK,
      encodeVringFile({ index: CONTROL_QUEUE, noFd: false }),
      {
        fds: [kick.fd],
      },
    );
    await ch.request(Request.SET_VRING_CALL, encodeVringFile({ index: EVENT_QUEUE, noFd: false }), {
      fds: [call.fd],
    });
    reactor.watch(call.fd, () => dev.interrupt());
    for (let index = 0; index < FIXED_QUEUES; index++) {
      await ch.request(Request.SET_VRING_ENABLE, encodeVringState({ index, num: 1 }));
    }
    return dev;
  } catch (e) {
    if (device) {
      await device.close();
    } else {
      channel?.close();
      kick?.close();
      call?.close();
      shm?.close();
      releaseReactor();
    }
    if (e instanceof VerbsError) {
      // A connection lost during setup is most likely a refusal (guest limit).
      if (e.errno === "ENODEV" && /closed the connection/.test(e.message)) {
        throw new VerbsError(
          "ECONNREFUSED",
          `backend at ${options.socket} closed the connection during setup (refused: guest limit?)`,
          { cause: e },
        );
      }
      throw e;
    }
    throw new VerbsError("EIO", `opening device on ${options.socket}: ${(e as Error).message}`, {
      cause: e,
    });
  }
}
