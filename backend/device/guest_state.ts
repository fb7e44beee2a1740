/**
 * Everything the command handlers of one guest share: its limits, memory,
 * object tables, queue ids, the host-wide tables and counters, and the
 * listeners the data-path engine registered.
 *
 * @module
 */

import type { DeviceConfig } from "../../protocol/device_config.ts";
import type { QpStateName } from "../../protocol/verbs.ts";
import { Errno } from "../../protocol/device_interface.ts";
import { DeviceQueue } from "../../virtqueue/device_queue.ts";
import { type QueueLayout, validateLayout } from "../../virtqueue/layout.ts";
import type { GuestMemory } from "../../virtqueue/memory.ts";
import { VirtqueueError } from "../../virtqueue/errors.ts";
import type { CounterName, Counters } from "../data_plane/stats.ts";
import { DEVICE_LIMITS } from "./attributes.ts";
import {
  addrField,
  checkKeys,
  CommandError,
  type Fields,
  intField,
  invalid,
  mapField,
} from "./fields.ts";
import { HandleTable, QueueTable } from "./handle_table.ts";
import type { HostTables } from "./host_tables.ts";
import type { Ah, Cq, GuestRef, Mr, ObjectBase, Pd, Qp, Srq } from "./objects.ts";

/** The limits the model enforces for one guest. */
export interface ModelLimits {
  /** Live PDs. */
  maxPd: number;
  /** Live MRs. */
  maxMr: number;
  /** Live CQs. */
  maxCq: number;
  /** Live QPs. */
  maxQp: number;
  /** Live SRQs. */
  maxSrq: number;
  /** Live AHs. */
  maxAh: number;
  /** Entries per CQ. */
  maxCqe: number;
  /** WRs per send or receive queue. */
  maxQpWr: number;
  /** SGEs per QP WR. */
  maxSge: number;
  /** WRs per SRQ. */
  maxSrqWr: number;
  /** SGEs per SRQ WR. */
  maxSrqSge: number;
  /** maxDestRdAtomic bound. */
  maxQpRdAtom: number;
  /** maxRdAtomic bound. */
  maxQpInitRdAtom: number;
  /** Inline bytes per send WR. */
  maxInlineData: number;
  /** Bytes per MR. */
  maxMrSize: number;
  /** Doorbell queue ids, the two fixed queues included (at most 65536). */
  maxQueues: number;
}

/** The limits `config` advertises, with `overrides` (tests use small ones). */
export function limitsFor(config: DeviceConfig, overrides: Partial<ModelLimits> = {}): ModelLimits {
  const d = config.device;
  const maxMrSize = d.maxMrSize > BigInt(Number.MAX_SAFE_INTEGER)
    ? Number.MAX_SAFE_INTEGER
    : Number(d.maxMrSize);
  return {
    maxPd: d.maxPd,
    maxMr: d.maxMr,
    maxCq: d.maxCq,
    maxQp: d.maxQp,
    maxSrq: d.maxSrq,
    maxAh: d.maxAh,
    maxCqe: d.maxCqe,
    maxQpWr: d.maxQpWr,
    maxSge: d.maxSge,
    maxSrqWr: d.maxSrqWr,
    maxSrqSge: d.maxSrqSge,
    maxQpRdAtom: d.maxQpRdAtom,
    maxQpInitRdAtom: d.maxQpInitRdAtom,
    maxInlineData: DEVICE_LIMITS.maxInlineData,
    maxMrSize,
    maxQueues: 0x1_0000,
    ...overrides,
  };
}

/** Called after a successful MODIFY_QP. */
export type QpStateListener = (qp: Qp, from: QpStateName, to: QpStateName) => void;
/** Called just before a QP is destroyed (its queues and CQs still exist). */
export type QpDestroyListener = (qp: Qp) => void;

const RING_KEYS = ["size", "desc", "avail", "used"];

/** The shared state of one guest's model. Fields are for the handlers in this folder. */
export class GuestState {
  /** What the guest's config space says. */
  readonly config: DeviceConfig;
  /** Limits enforced. */
  readonly limits: ModelLimits;
  /** The owner every object records. */
  readonly guest: GuestRef;
  /** Host-wide QPNs and keys. */
  readonly host: HostTables;
  /** Host counters of live objects. */
  readonly counters: Counters;
  /** Negotiated VIRTIO_RING_F_EVENT_IDX: queues created from now on use it. */
  eventIdx: boolean;
  /** Protection domains. */
  readonly pds: HandleTable<Pd> = new HandleTable("pd");
  /** Memory regions. */
  readonly mrs: HandleTable<Mr> = new HandleTable("mr");
  /** Completion queues. */
  readonly cqs: HandleTable<Cq> = new HandleTable("cq");
  /** Queue pairs. */
  readonly qps: HandleTable<Qp> = new HandleTable("qp");
  /** Shared receive queues. */
  readonly srqs: HandleTable<Srq> = new HandleTable("srq");
  /** Address handles. */
  readonly ahs: HandleTable<Ah> = new HandleTable("ah");
  /** Doorbell queue ids. */
  readonly queues: QueueTable;
  /** Listeners of MODIFY_QP. */
  readonly stateListeners: Set<QpStateListener> = new Set();
  /** Listeners of QP destruction. */
  readonly destroyListeners: Set<QpDestroyListener> = new Set();
  /** Where a throwing listener's error goes. */
  readonly onListenerError: (error: unknown) => void;
  readonly #uses = new Map<ObjectBase, number>();

  /** State for one guest. */
  constructor(parts: {
    config: DeviceConfig;
    limits: ModelLimits;
    guest: GuestRef;
    host: HostTables;
    counters: Counters;
    eventIdx: boolean;
    onListenerError: (error: unknown) => void;
  }) {
    this.config = parts.config;
    this.limits = parts.limits;
    this.guest = parts.guest;
    this.host = parts.host;
    this.counters = parts.counters;
    this.eventIdx = parts.eventIdx;
    this.onListenerError = parts.onListenerError;
    this.queues = new QueueTable(parts.limits.maxQueues);
  }

  /** Guest memory. */
  get memory(): GuestMemory {
    return this.guest.memory;
  }

  /** Adds `n` to a host counter. */
  count(name: CounterName, n: number): void {
    this.counters.add(name, n);
  }

  /** Records that something now depends on `object`. */
  use(object: ObjectBase): void {
    this.#uses.set(object, (this.#uses.get(object) ?? 0) + 1);
  }

  /** Drops one dependency on `object`. */
  unuse(object: ObjectBase): void {
    const n = (this.#uses.get(object) ?? 0) - 1;
    if (n > 0) this.#uses.set(object, n);
    else this.#uses.delete(object);
  }

  /** Throws EBUSY when something depends on `object`; `name` says what it is. */
  checkUnused(object: ObjectBase, name: string, users: string): void {
    const n = this.#uses.get(object) ?? 0;
    if (n > 0) {
      throw new CommandError(
        Errno.EBUSY,
        `${name} ${object.handle} is still used by ${n} ${users}`,
      );
    }
  }

  /**
   * Reads the ring map `name` and checks it against guest memory: a size
   * that is a power of two of at least `atLeast.size` (which is `atLeast.what`,
   * for the message), areas aligned (EINVAL) and inside guest memory
   * (EFAULT), not overlapping (EINVAL).
   */
  ring(req: Fields, name: string, atLeast: { size: number; what: string }): QueueLayout {
    const map = mapField(req, name);
    const where = `${name}.`;
    checkKeys(map, RING_KEYS, where);
    const layout: QueueLayout = {
      size: intField(map, "size", { min: 1, max: 0x8000, where }),
      desc: addrField(map, "desc", where),
      avail: addrField(map, "avail", where),
      used: addrField(map, "used", where),
    };
    if (layout.size < atLeast.size) {
      throw invalid(`${name}.size ${layout.size} is smaller than ${atLeast.what} ${atLeast.size}`);
    }
    try {
      validateLayout(this.memory, layout);
    } catch (e) {
      const status = e instanceof VirtqueueError && e.kind === "area-outside-memory"
        ? Errno.EFAULT
        : Errno.EINVAL;
      throw new CommandError(status, `${name}: ${(e as Error).message}`);
    }
    return layout;
  }

  /** A device queue over a checked layout, with the guest's ring features. */
  queueFor(layout: QueueLayout): DeviceQueue {
    return new DeviceQueue(layout, { eventIdx: this.eventIdx, indirect: false });
  }

  /** Tells the state listeners; a throwing listener goes to `onListenerError`. */
  emitStateChange(qp: Qp, from: QpStateName, to: QpStateName): void {
    for (const listener of this.stateListeners) {
      try {
        listener(qp, from, to);
      } catch (e) {
        this.onListenerError(e);
      }
    }
  }

  /** Tells the destroy listeners. */
  emitDestroy(qp: Qp): void {
    for (const listener of this.destroyListeners) {
      try {
        listener(qp);
      } catch (e) {
        this.onListenerError(e);
      }
    }
  }
}
