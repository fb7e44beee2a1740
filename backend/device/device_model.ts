/**
 * The device model of one guest: its verbs objects and the control commands
 * that act on them, plus the hooks the data-path engine uses.
 *
 * Commands arrive as decoded CBOR maps — untrusted, any shape. Each handler
 * (one file per object kind) checks everything it reads before it changes
 * anything, so a failed command changes nothing and answers `{status,
 * error}` with an errno and a message naming the field and value. Nothing
 * here throws out to the data plane.
 *
 * @module
 */

import type { DeviceConfig } from "../../protocol/device_config.ts";
import { Errno, Op, opName } from "../../protocol/device_interface.ts";
import type { QpStateName } from "../../protocol/verbs.ts";
import type { GuestMemory } from "../../virtqueue/memory.ts";
import type { Counters } from "../data_plane/stats.ts";
import { createCq, destroyCq, destroyCqCommand, reqNotifyCq } from "./cq.ts";
import { CommandError, describe, type Fields, intField, invalid, isFields } from "./fields.ts";
import {
  GuestState,
  limitsFor,
  type ModelLimits,
  type QpDestroyListener,
  type QpStateListener,
} from "./guest_state.ts";
import type { HostTables } from "./host_tables.ts";
import type { Ah, Cq, Mr, Pd, Qp, QueueOwner, Srq } from "./objects.ts";
import { allocPd, deallocPd, deregMr, destroyMr, destroyPd, regMr } from "./pd_mr.ts";
import { createQp, destroyQp, destroyQpCommand, queryQp } from "./qp.ts";
import { modifyQp, moveQp } from "./qp_modify.ts";
import { queryDevice, queryGid, queryPort } from "./queries.ts";
import {
  createAh,
  createSrq,
  destroyAh,
  destroyAhCommand,
  destroySrq,
  destroySrqCommand,
  modifySrq,
} from "./srq_ah.ts";

/** A decoded control-queue response. */
export type CommandResponse = { status: number; error?: string } & Record<string, unknown>;

type Handler = (state: GuestState, cmd: Fields) => Fields;

const HANDLERS: ReadonlyMap<number, Handler> = new Map<number, Handler>([
  [Op.QUERY_DEVICE, queryDevice],
  [Op.QUERY_PORT, queryPort],
  [Op.QUERY_GID, queryGid],
  [Op.ALLOC_PD, allocPd],
  [Op.DEALLOC_PD, deallocPd],
  [Op.REG_MR, regMr],
  [Op.DEREG_MR, deregMr],
  [Op.CREATE_CQ, createCq],
  [Op.DESTROY_CQ, destroyCqCommand],
  [Op.REQ_NOTIFY_CQ, reqNotifyCq],
  [Op.CREATE_QP, createQp],
  [Op.MODIFY_QP, modifyQp],
  [Op.QUERY_QP, queryQp],
  [Op.DESTROY_QP, destroyQpCommand],
  [Op.CREATE_AH, createAh],
  [Op.DESTROY_AH, destroyAhCommand],
  [Op.CREATE_SRQ, createSrq],
  [Op.MODIFY_SRQ, modifySrq],
  [Op.DESTROY_SRQ, destroySrqCommand],
]);

/** What a {@linkcode DeviceModel} works with. */
export interface DeviceModelOptions {
  /** The guest's config space (limits, port, GIDs). */
  config: DeviceConfig;
  /** The guest's memory: rings, arm words and MRs must lie in it. */
  memory: GuestMemory;
  /** The backend's host-wide tables, shared by every guest. */
  host: HostTables;
  /** The backend's counters (pds, mrs, cqs, qps, srqs, ahs, queues). */
  counters: Counters;
  /** VIRTIO_RING_F_EVENT_IDX was negotiated (can also be set later). */
  eventIdx?: boolean;
  /** The guest number objects record (default 0). */
  guest?: number;
  /** Limits tighter than the config's, for tests. */
  limits?: Partial<ModelLimits>;
  /** Where an error thrown by an engine listener goes (default: `console.error`). */
  onListenerError?: (error: unknown) => void;
}

/**
 * One guest's device state and its control-command dispatcher.
 *
 * @example
 * ```ts
 * import { DeviceModel } from "./device_model.ts";
 * import { HostTables } from "./host_tables.ts";
 * import { deviceConfigFor } from "./attributes.ts";
 * import { Counters } from "../data_plane/stats.ts";
 * import { GuestMemory } from "../../virtqueue/memory.ts";
 * import { Op } from "../../protocol/device_interface.ts";
 * const memory = GuestMemory.fromBuffer(new SharedArrayBuffer(1 << 16), 0x10000);
 * const model = new DeviceModel({
 *   config: deviceConfigFor({ ip: "127.0.0.1", memoryBytes: memory.size }),
 *   memory,
 *   host: new HostTables(),
 *   counters: new Counters(),
 * });
 * const { status, pd } = model.execute({ op: Op.ALLOC_PD });
 * if (status !== 0 || pd !== 1) throw new Error("ALLOC_PD failed");
 * ```
 */
export class DeviceModel {
  readonly #state: GuestState;

  /** A model with no objects yet. */
  constructor(options: DeviceModelOptions) {
    this.#state = new GuestState({
      config: options.config,
      limits: limitsFor(options.config, options.limits),
      guest: { id: options.guest ?? 0, memory: options.memory },
      host: options.host,
      counters: options.counters,
      eventIdx: options.eventIdx ?? false,
      onListenerError: options.onListenerError ?? ((e) => console.error("vrdma listener:", e)),
    });
  }

  /** Whether queues created from now on use VIRTIO_RING_F_EVENT_IDX. */
  get eventIdx(): boolean {
    return this.#state.eventIdx;
  }

  /** Set once the guest's features are known. */
  set eventIdx(value: boolean) {
    this.#state.eventIdx = value;
  }

  /** The guest's memory. */
  get memory(): GuestMemory {
    return this.#state.memory;
  }

  /** The host-wide tables this model allocates QPNs and keys from. */
  get host(): HostTables {
    return this.#state.host;
  }

  /** The limits enforced. */
  get limits(): Readonly<ModelLimits> {
    return this.#state.limits;
  }

  /** Runs one decoded command. Never throws. */
  execute(req: unknown): CommandResponse {
    try {
      if (!isFields(req)) throw invalid(`a command must be a map, got ${describe(req)}`);
      const op = intField(req, "op", { max: 0xffff });
      const handler = HANDLERS.get(op);
      if (handler === undefined) {
        throw new CommandError(Errno.EOPNOTSUPP, `${opName(op)} is not supported by this device`);
      }
      return { status: Errno.OK, ...handler(this.#state, req) };
    } catch (e) {
      if (e instanceof CommandError) return { status: e.status, error: e.message };
      // A handler bug must not take the data plane down; report it to the guest.
      return { status: Errno.EIO, error: `internal error: ${(e as Error)?.message ?? e}` };
    }
  }

  /** What a doorbell queue id (>= 2) belongs to, or undefined. */
  queueOwner(queueId: number): QueueOwner | undefined {
    return this.#state.queues.owner(queueId);
  }

  /** The live PD with this handle. */
  pd(handle: number): Pd | undefined {
    return this.#state.pds.get(handle);
  }

  /** The live MR with this handle. */
  mr(handle: number): Mr | undefined {
    return this.#state.mrs.get(handle);
  }

  /** The live CQ with this handle. */
  cq(handle: number): Cq | undefined {
    return this.#state.cqs.get(handle);
  }

  /** The live QP with this handle. */
  qp(handle: number): Qp | undefined {
    return this.#state.qps.get(handle);
  }

  /** The live SRQ with this handle. */
  srq(handle: number): Srq | undefined {
    return this.#state.srqs.get(handle);
  }

  /** The live AH with this handle (a UD WQE names its AH by handle). */
  ah(handle: number): Ah | undefined {
    return this.#state.ahs.get(handle);
  }

  /**
   * Registers a listener called after every successful MODIFY_QP with the
   * states before and after (ERR: the engine flushes; RESET: it drops what
   * it holds). Returns a function that removes it.
   */
  onQpStateChange(listener: QpStateListener): () => void {
    this.#state.stateListeners.add(listener);
    return () => this.#state.stateListeners.delete(listener);
  }

  /**
   * Registers a listener called just before a QP is destroyed (by
   * DESTROY_QP or {@linkcode DeviceModel.destroyAll}). Returns a remover.
   */
  onQpDestroy(listener: QpDestroyListener): () => void {
    this.#state.destroyListeners.add(listener);
    return () => this.#state.destroyListeners.delete(listener);
  }

  /**
   * The engine's own transition of `qp` (to ERR on an error, SQE on a UD/UC
   * send error, ...): no table, no listeners. Throws a `RangeError` for
   * RESET. Returns false when the QP is destroyed or already there.
   */
  moveQp(qp: Qp, to: QpStateName): boolean {
    return moveQp(qp, to);
  }

  /**
   * Frees everything the guest created (disconnect, reset): QPs first (the
   * destroy listeners hear of each), then AHs, SRQs, CQs, MRs and PDs. QPNs
   * and keys go back to the host tables and the counters come down.
   */
  destroyAll(): void {
    const s = this.#state;
    for (const qp of s.qps.values()) destroyQp(s, qp);
    for (const ah of s.ahs.values()) destroyAh(s, ah);
    for (const srq of s.srqs.values()) destroySrq(s, srq);
    for (const cq of s.cqs.values()) destroyCq(s, cq);
    for (const mr of s.mrs.values()) destroyMr(s, mr);
    for (const pd of s.pds.values()) destroyPd(s, pd);
  }
}
