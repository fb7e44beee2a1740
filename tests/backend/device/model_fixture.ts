/**
 * Drives a `DeviceModel` directly, with no processes: guest memory over a
 * `SharedArrayBuffer`, a bump allocator for rings and buffers, and helpers
 * that run a command and assert its outcome.
 *
 * @module
 */

import assert from "node:assert/strict";
import { Errno, type ErrnoName, Op } from "../../../protocol/device_interface.ts";
import type { QpType, RingDesc } from "../../../protocol/verbs.ts";
import { CQ_ARM_BYTES } from "../../../protocol/verbs.ts";
import { GuestMemory } from "../../../virtqueue/memory.ts";
import { layoutAt } from "../../../virtqueue/layout.ts";
import { deviceConfigFor } from "../../../backend/device/attributes.ts";
import { type CommandResponse, DeviceModel } from "../../../backend/device/device_model.ts";
import type { ModelLimits } from "../../../backend/device/guest_state.ts";
import { HostTables } from "../../../backend/device/host_tables.ts";
import { type CounterName, Counters } from "../../../backend/data_plane/stats.ts";

/** Where test guest memory starts: above 4 GiB, as the driver places it. */
export const BASE = 0x1_0000_0000;

/** One guest's model and what it runs over. */
export interface TestGuest {
  model: DeviceModel;
  memory: GuestMemory;
  counters: Counters;
  host: HostTables;
  /** Bump-allocates guest memory. */
  alloc(bytes: number, align?: number): number;
  /** A fresh ring of `size` entries in guest memory. */
  ring(size: number): RingDesc;
  /** Runs a command. */
  run(op: number, args?: Record<string, unknown>): CommandResponse;
  /** Runs a command that must succeed; returns the response. */
  ok(op: number, args?: Record<string, unknown>): CommandResponse;
  /** Runs a command that must fail with `errno` and a message matching `message`. */
  fail(
    op: number,
    args: Record<string, unknown>,
    errno: ErrnoName,
    message: RegExp,
  ): CommandResponse;
}

/** Options of {@linkcode makeGuest}. */
export interface GuestOptions {
  host?: HostTables;
  counters?: Counters;
  limits?: Partial<ModelLimits>;
  memoryBytes?: number;
  eventIdx?: boolean;
  guest?: number;
  /** The port's largest path MTU (default 4096). */
  maxMtu?: number;
}

/** A guest with a fresh model. */
export function makeGuest(options: GuestOptions = {}): TestGuest {
  const bytes = options.memoryBytes ?? 4 << 20;
  const memory = GuestMemory.fromBuffer(new SharedArrayBuffer(bytes), BASE);
  const counters = options.counters ?? new Counters();
  const host = options.host ?? new HostTables();
  const model = new DeviceModel({
    config: deviceConfigFor({
      ip: "127.0.0.2",
      memoryBytes: bytes,
      maxMtu: options.maxMtu,
      activeMtu: options.maxMtu,
    }),
    memory,
    host,
    counters,
    eventIdx: options.eventIdx ?? true,
    guest: options.guest ?? 1,
    limits: options.limits,
    onListenerError: (e) => {
      throw e;
    },
  });
  let next = BASE;
  const alloc = (n: number, align = 64) => {
    const addr = Math.ceil(next / align) * align;
    next = addr + n;
    if (next > BASE + bytes) throw new RangeError("test guest memory exhausted");
    return addr;
  };
  const run = (op: number, args: Record<string, unknown> = {}) => model.execute({ op, ...args });
  return {
    model,
    memory,
    counters,
    host,
    alloc,
    ring(size: number): RingDesc {
      const probe = layoutAt(0, size);
      const { layout } = layoutAt(alloc(probe.bytes, 16), size);
      return { size, desc: layout.desc, avail: layout.avail, used: layout.used };
    },
    run,
    ok(op, args = {}) {
      const r = run(op, args);
      assert.equal(r.status, 0, `op ${op} failed: ${r.error}`);
      assert.equal(r.error, undefined);
      return r;
    },
    fail(op, args, errno, message) {
      const r = run(op, args);
      assert.equal(r.status, Errno[errno], `expected ${errno}, got ${r.status}: ${r.error}`);
      assert.match(String(r.error), message);
      return r;
    },
  };
}

/** ALLOC_PD; returns the handle. */
export function makePd(g: TestGuest): number {
  return g.ok(Op.ALLOC_PD).pd as number;
}

/** CREATE_CQ with `cqe` entries; returns the response. */
export function makeCq(g: TestGuest, cqe = 16): CommandResponse {
  const size = 1 << Math.ceil(Math.log2(cqe));
  return g.ok(Op.CREATE_CQ, { cqe, ring: g.ring(size), armAddr: g.alloc(CQ_ARM_BYTES, 8) });
}

/** Default capabilities of test QPs. */
export const CAP = {
  maxSendWr: 8,
  maxRecvWr: 8,
  maxSendSge: 2,
  maxRecvSge: 2,
  maxInlineData: 64,
};

/** CREATE_QP arguments for a QP on `pd` with both CQs `cq`. */
export function qpArgs(
  g: TestGuest,
  pd: number,
  cq: number,
  qpType: QpType = "RC",
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    pd,
    qpType,
    sendCq: cq,
    recvCq: cq,
    cap: { ...CAP },
    sq: g.ring(8),
    rq: g.ring(8),
    ...extra,
  };
}

/** A PD, a CQ and a QP of `qpType`; returns their handles and the CREATE_QP response. */
export function makeQp(
  g: TestGuest,
  qpType: QpType = "RC",
): { pd: number; cq: number; qp: number; qpNum: number; res: CommandResponse } {
  const pd = makePd(g);
  const cq = makeCq(g).cq as number;
  const res = g.ok(Op.CREATE_QP, qpArgs(g, pd, cq, qpType));
  return { pd, cq, qp: res.qp as number, qpNum: res.qpNum as number, res };
}

/** Live objects by the host counters and the host tables. */
export interface Snapshot {
  pds: number;
  mrs: number;
  cqs: number;
  qps: number;
  srqs: number;
  ahs: number;
  queues: number;
  liveQps: number;
  liveKeys: number;
}

/** The live-object counters and host tables, to compare before and after a failure. */
export function snapshot(g: TestGuest): Snapshot {
  const c = (name: CounterName) => g.counters.get(name);
  return {
    pds: c("pds"),
    mrs: c("mrs"),
    cqs: c("cqs"),
    qps: c("qps"),
    srqs: c("srqs"),
    ahs: c("ahs"),
    queues: c("queues"),
    liveQps: g.host.liveQps,
    liveKeys: g.host.liveKeys,
  };
}

/** QUERY_QP. */
export function queryQp(g: TestGuest, qp: number): CommandResponse {
  return g.ok(Op.QUERY_QP, { qp });
}

/** Attributes that move an RC QP RESET -> INIT -> RTR -> RTS. */
export const RC_PATH = {
  init: { qpState: "INIT", pkeyIndex: 0, portNum: 1, qpAccessFlags: 0 },
  rtr: {
    qpState: "RTR",
    ahAttr: { dgid: "::ffff:127.0.0.3", portNum: 1 },
    pathMtu: 1024,
    destQpNum: 0x123,
    rqPsn: 0x55,
    maxDestRdAtomic: 4,
    minRnrTimer: 12,
  },
  rts: { qpState: "RTS", sqPsn: 0x66, timeout: 14, retryCnt: 7, rnrRetry: 7, maxRdAtomic: 4 },
} as const;
