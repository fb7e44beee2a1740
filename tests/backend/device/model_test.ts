import assert from "node:assert/strict";
import { Errno, Op } from "../../../protocol/device_interface.ts";
import type { QpStateName, RingDesc } from "../../../protocol/verbs.ts";
import { DriverQueue } from "../../../virtqueue/driver_queue.ts";
import { HostTables } from "../../../backend/device/host_tables.ts";
import { DeviceModel } from "../../../backend/device/device_model.ts";
import { deviceConfigFor } from "../../../backend/device/attributes.ts";
import type { Qp } from "../../../backend/device/objects.ts";
import { Counters } from "../../../backend/data_plane/stats.ts";
import type {
  EngineAh,
  EngineCq,
  EngineMr,
  EngineQp,
  EngineSrq,
} from "../../../backend/engine/types.ts";
import {
  makeCq,
  makeGuest,
  makePd,
  makeQp,
  qpArgs,
  queryQp,
  RC_PATH,
  snapshot,
  type TestGuest,
} from "./model_fixture.ts";

Deno.test("QUERY_DEVICE, QUERY_PORT and QUERY_GID answer from the config", () => {
  const g = makeGuest();
  const dev = g.ok(Op.QUERY_DEVICE).attr as Record<string, unknown>;
  assert.equal(dev.maxQp, 16384);
  assert.equal(dev.maxMrSize, BigInt(4 << 20));
  const port = g.ok(Op.QUERY_PORT, { port: 1 }).attr as Record<string, unknown>;
  assert.equal(port.maxMtu, 4096);
  assert.equal(port.maxMtuEnum, 5);
  assert.equal(port.state, "ACTIVE");
  assert.deepEqual(g.ok(Op.QUERY_GID, { port: 1, index: 0 }), {
    status: 0,
    gid: "::ffff:127.0.0.2",
  });
  g.fail(Op.QUERY_PORT, { port: 2 }, "EINVAL", /port 2 does not exist \(ports: 1\)/);
  g.fail(Op.QUERY_PORT, { port: "one" }, "EINVAL", /port = "one"/);
  g.fail(
    Op.QUERY_GID,
    { port: 1, index: 1 },
    "EINVAL",
    /GID index 1 is past the table \(1 entries\)/,
  );
  g.fail(Op.QUERY_DEVICE, { verbose: true }, "EINVAL", /verbose is not a field here/);
  g.fail(99, {}, "EOPNOTSUPP", /op 99 is not supported by this device/);
});

Deno.test("two guests on one host: QPNs and keys are unique, handles are private", () => {
  const host = new HostTables();
  const counters = new Counters();
  const a = makeGuest({ host, counters, guest: 1 });
  const b = makeGuest({ host, counters, guest: 2 });
  const qa = makeQp(a);
  const qb = makeQp(b);
  assert.equal(qa.qp, 1);
  assert.equal(qb.qp, 1, "handles are per guest");
  assert.equal(qa.qpNum, 0x11);
  assert.equal(qb.qpNum, 0x12, "QPNs are per host");
  assert.equal(host.qpByNum(0x11)?.guest.id, 1);
  assert.equal(host.qpByNum(0x12)?.guest.id, 2);
  assert.equal(host.qpByNum(0x12)?.guest.memory, b.memory);
  const ka = a.ok(Op.REG_MR, { pd: qa.pd, addr: a.alloc(64), length: 64, access: 0 }).lkey;
  const kb = b.ok(Op.REG_MR, { pd: qb.pd, addr: b.alloc(64), length: 64, access: 0 }).lkey;
  assert.notEqual(ka, kb);
  assert.equal(host.mrByKey(kb as number)?.guest.id, 2);
  // Guest b has handles 1 of its own; a handle 2 exists only in a.
  makePd(a);
  b.fail(Op.DEALLOC_PD, { pd: 2 }, "EINVAL", /pd 2 does not exist/);
  const qa2 = a.ok(Op.CREATE_QP, qpArgs(a, qa.pd, qa.cq)).qp;
  b.fail(Op.QUERY_QP, { qp: qa2 }, "EINVAL", /qp 2 does not exist/);
  b.fail(Op.MODIFY_QP, { qp: qa2, attr: { qpState: "ERR" } }, "EINVAL", /qp 2 does not exist/);
  b.fail(Op.DESTROY_QP, { qp: qa2 }, "EINVAL", /qp 2 does not exist/);
  assert.equal(a.model.qp(qa2 as number)?.state, "RESET");
  assert.equal(counters.get("qps"), 3);
  // One guest going away releases only its own objects.
  a.model.destroyAll();
  assert.equal(counters.get("qps"), 1);
  assert.equal(host.qpByNum(0x11), undefined);
  assert.equal(host.qpByNum(0x12)?.guest.id, 2);
  assert.equal(host.mrByKey(ka as number), undefined);
  assert.equal(host.mrByKey(kb as number)?.guest.id, 2);
  assert.equal(makeQp(b).qpNum, 0x14, "QPNs go on upward, no reuse before wrap");
});

Deno.test("destroyAll returns every counter to 0 and releases QPNs and keys", () => {
  const g = makeGuest();
  const { pd, cq } = makeQp(g, "RC");
  makeQp(g, "UD");
  const srq = g.ok(Op.CREATE_SRQ, { pd, maxWr: 4, maxSge: 1, ring: g.ring(4) }).srq;
  g.ok(Op.CREATE_QP, qpArgs(g, pd, cq, "UC", { srq, rq: undefined }));
  g.ok(Op.CREATE_AH, { pd, ahAttr: { dgid: "::1" } });
  for (let i = 0; i < 3; i++) g.ok(Op.REG_MR, { pd, addr: g.alloc(64), length: 64, access: 1 });
  const objects = [g.model.qp(1)!, g.model.mr(1)!, g.model.cq(1)!, g.model.srq(1)!, g.model.pd(1)!];
  const destroyed: number[] = [];
  g.model.onQpDestroy((qp) => {
    assert.equal(qp.live, true, "listeners hear of a QP before it goes");
    assert.equal(qp.sendCq.live, true);
    destroyed.push(qp.handle);
  });
  assert.deepEqual(snapshot(g), {
    pds: 2,
    mrs: 3,
    cqs: 2,
    qps: 3,
    srqs: 1,
    ahs: 1,
    queues: 2 + 2 + 2 + 1 + 1,
    liveQps: 3,
    liveKeys: 3,
  });
  g.model.destroyAll();
  assert.deepEqual(destroyed.sort(), [1, 2, 3]);
  assert.deepEqual(snapshot(g), {
    pds: 0,
    mrs: 0,
    cqs: 0,
    qps: 0,
    srqs: 0,
    ahs: 0,
    queues: 0,
    liveQps: 0,
    liveKeys: 0,
  });
  for (const o of objects) assert.equal(o.live, false);
  for (let id = 2; id < 12; id++) assert.equal(g.model.queueOwner(id), undefined);
  g.model.destroyAll(); // idempotent
  assert.equal(g.counters.get("pds"), 0);
  // The model keeps working, and handles keep counting up.
  assert.equal(makePd(g), 3);
});

Deno.test("onQpStateChange hears every successful MODIFY_QP with from and to", () => {
  const g = makeGuest();
  const { qp } = makeQp(g);
  const heard: [number, QpStateName, QpStateName, QpStateName][] = [];
  const off = g.model.onQpStateChange((q, from, to) => heard.push([q.handle, from, to, q.state]));
  g.ok(Op.MODIFY_QP, { qp, attr: RC_PATH.init });
  g.fail(Op.MODIFY_QP, { qp, attr: { qpState: "RTS" } }, "EINVAL", /INIT -> RTS is not a legal/);
  g.ok(Op.MODIFY_QP, { qp, attr: RC_PATH.rtr });
  g.ok(Op.MODIFY_QP, { qp, attr: RC_PATH.rts });
  g.ok(Op.MODIFY_QP, { qp, attr: { minRnrTimer: 1 } });
  g.ok(Op.MODIFY_QP, { qp, attr: { qpState: "ERR" } });
  assert.deepEqual(heard, [
    [qp, "RESET", "INIT", "INIT"],
    [qp, "INIT", "RTR", "RTR"],
    [qp, "RTR", "RTS", "RTS"],
    [qp, "RTS", "RTS", "RTS"],
    [qp, "RTS", "ERR", "ERR"],
  ]);
  off();
  g.ok(Op.MODIFY_QP, { qp, attr: { qpState: "RESET" } });
  assert.equal(heard.length, 5, "removed listeners hear nothing");
});

Deno.test("a throwing listener does not fail the command; its error is reported", () => {
  const g = makeGuest();
  const errors: unknown[] = [];
  const model = new DeviceModel({
    config: deviceConfigFor({ ip: "127.0.0.2", memoryBytes: g.memory.size }),
    memory: g.memory,
    host: new HostTables(),
    counters: new Counters(),
    onListenerError: (e) => errors.push(e),
  });
  model.onQpStateChange(() => {
    throw new Error("engine bug");
  });
  const alloc = (op: number, args: Record<string, unknown>) => model.execute({ op, ...args });
  const pd = alloc(Op.ALLOC_PD, {}).pd;
  const cq = alloc(Op.CREATE_CQ, { cqe: 1, ring: g.ring(1), armAddr: g.alloc(8, 8) }).cq;
  const qp = alloc(Op.CREATE_QP, qpArgs(g, pd as number, cq as number)).qp;
  const r = alloc(Op.MODIFY_QP, { qp, attr: { qpState: "ERR" } });
  assert.deepEqual(r, { status: 0 });
  assert.equal(model.qp(qp as number)?.state, "ERR");
  assert.equal(errors.length, 1);
  assert.match((errors[0] as Error).message, /engine bug/);
});

function postTo(g: TestGuest, driver: DriverQueue, n: number): void {
  for (let i = 0; i < n; i++) driver.addOne(g.memory, g.alloc(64), 64, false);
  driver.publish(g.memory);
}

Deno.test("RESET resets PSNs and returns what is left on SQ and RQ, without completions", () => {
  const g = makeGuest();
  const { qp } = makeQp(g);
  const object = g.model.qp(qp)!;
  const sq = new DriverQueue(object.sq.layout, { eventIdx: true });
  const rq = new DriverQueue(object.rq!.layout, { eventIdx: true });
  sq.init(g.memory);
  rq.init(g.memory);
  g.ok(Op.MODIFY_QP, { qp, attr: RC_PATH.init });
  g.ok(Op.MODIFY_QP, { qp, attr: RC_PATH.rtr });
  g.ok(Op.MODIFY_QP, { qp, attr: RC_PATH.rts });
  postTo(g, sq, 3);
  postTo(g, rq, 2);
  // The engine holds one send WR when the QP is reset: it gives it back from its listener.
  const held = object.sq.pop(g.memory)!;
  const cqRing = g.model.cq(1)!.queue.layout;
  const cqUsedBefore = g.memory.u16(cqRing.used + 2);
  let pendingSeen = -1;
  g.model.onQpStateChange((q, _from, to) => {
    if (to !== "RESET") return;
    pendingSeen = q.sq.pending(g.memory);
    q.sq.pushUsed(g.memory, held.head, 0);
  });
  g.ok(Op.MODIFY_QP, { qp, attr: { qpState: "RESET" } });
  assert.equal(pendingSeen, 2, "the listener ran before the model emptied the queues");
  const q = queryQp(g, qp).attr as Record<string, unknown>;
  assert.equal(q.sqPsn, 0);
  assert.equal(q.rqPsn, 0);
  assert.equal(q.destQpNum, 0x123, "other attributes stay");
  const sqUsed = [sq.popUsed(g.memory), sq.popUsed(g.memory), sq.popUsed(g.memory)];
  assert.deepEqual(sqUsed.map((u) => u?.len), [0, 0, 0]);
  assert.deepEqual(sqUsed.map((u) => u?.id).sort(), [0, 1, 2]);
  assert.equal(sq.popUsed(g.memory), null);
  assert.deepEqual([rq.popUsed(g.memory)?.len, rq.popUsed(g.memory)?.len], [0, 0]);
  assert.equal(object.sq.pending(g.memory), 0);
  assert.equal(g.memory.u16(cqRing.used + 2), cqUsedBefore, "no completion was written");
  // The rings keep working after the reset.
  postTo(g, sq, 1);
  assert.equal(object.sq.pending(g.memory), 1);
});

Deno.test("moveQp: the engine's own transitions, without the table or listeners", () => {
  const g = makeGuest();
  const { qp } = makeQp(g, "UD");
  const object = g.model.qp(qp)!;
  const heard: string[] = [];
  g.model.onQpStateChange((_q, from, to) => heard.push(`${from}>${to}`));
  assert.equal(g.model.moveQp(object, "ERR"), true);
  assert.equal(object.state, "ERR");
  assert.equal(queryQp(g, qp).state, "ERR");
  assert.equal(g.model.moveQp(object, "ERR"), false, "no change");
  assert.throws(() => g.model.moveQp(object, "RESET"), RangeError);
  assert.deepEqual(heard, []);
  g.ok(Op.DESTROY_QP, { qp });
  assert.equal(g.model.moveQp(object, "SQE"), false, "a destroyed QP does not move");
  assert.equal(object.state, "ERR");
});

Deno.test("queues take EVENT_IDX as negotiated when they are created", () => {
  const g = makeGuest({ eventIdx: false });
  assert.equal(g.model.eventIdx, false);
  const a = makeCq(g);
  g.model.eventIdx = true;
  const b = makeCq(g);
  const qa = g.model.cq(a.cq as number)!.queue;
  const qb = g.model.cq(b.cq as number)!.queue;
  qa.enableNotifications(g.memory);
  qb.enableNotifications(g.memory);
  // Without EVENT_IDX the device clears NO_NOTIFY in the used flags; with it, it writes avail_event.
  g.memory.setU16(qa.layout.used, 1);
  g.memory.setU16(qb.layout.used, 1);
  qa.enableNotifications(g.memory);
  qb.enableNotifications(g.memory);
  assert.equal(g.memory.u16(qa.layout.used), 0);
  assert.equal(g.memory.u16(qb.layout.used), 1);
});

Deno.test("a QP found through the host tables leads to everything the engine needs", () => {
  const g = makeGuest();
  const { qpNum } = makeQp(g);
  const qp = g.host.qpByNum(qpNum) as Qp;
  assert.equal(qp.guest.memory, g.memory);
  assert.equal(qp.sendCq.queue.size, 16);
  assert.equal(typeof qp.sendCq.armAddr, "number");
  assert.equal(qp.rq?.size, 8);
  assert.equal(g.model.queueOwner(qp.sqQueue)?.object, qp);
});

// ---------------------------------------------------------------------------
// Hostile commands: execute() never throws and nothing leaks.
// ---------------------------------------------------------------------------

const FIELD_NAMES = [
  "op",
  "pd",
  "mr",
  "cq",
  "qp",
  "srq",
  "ah",
  "addr",
  "length",
  "access",
  "cqe",
  "ring",
  "armAddr",
  "solicitedOnly",
  "qpType",
  "sendCq",
  "recvCq",
  "cap",
  "sqSigAll",
  "sq",
  "rq",
  "attr",
  "ahAttr",
  "maxWr",
  "maxSge",
  "srqLimit",
  "port",
  "index",
  "__proto__",
  "constructor",
  "toString",
];

function mulberry32(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function hostileValue(rnd: () => number, g: TestGuest, depth: number): unknown {
  const pick = Math.floor(rnd() * 22);
  switch (pick) {
    case 0:
      return undefined;
    case 1:
      return null;
    case 2:
      return -1;
    case 3:
      return 2 ** 53;
    case 4:
      return NaN;
    case 5:
      return Infinity;
    case 6:
      return 1.5;
    case 7:
      return 1n;
    case 8:
      return 2n ** 64n - 1n;
    case 9:
      return "1";
    case 10:
      return true;
    case 11:
      return [1, 2];
    case 12:
      return new Uint8Array(4);
    case 13:
      return new Map([["a", 1]]);
    case 14:
      return 0xffff_ffff;
    case 15:
      return g.ring(1 << Math.floor(rnd() * 5));
    case 16:
      return ["RC", "UC", "UD", "RESET", "INIT", "RTR", "RTS", "ERR", "::1"][Math.floor(rnd() * 9)];
    case 17:
      return { ...g.ring(8), size: Math.floor(rnd() * 20) };
    default: {
      if (depth > 2) return Math.floor(rnd() * 4);
      if (pick === 18) return Math.floor(rnd() * 4); // plausible handles
      const map: Record<string, unknown> = {};
      const names = [
        ...FIELD_NAMES,
        "qpState",
        "pathMtu",
        "dgid",
        "maxSendWr",
        "maxRecvWr",
        "sqPsn",
      ];
      for (let i = Math.floor(rnd() * 5); i > 0; i--) {
        map[names[Math.floor(rnd() * names.length)]!] = hostileValue(rnd, g, depth + 1);
      }
      return map;
    }
  }
}

/** A plausible command for `op`, from handles seen so far: the fuzzer mutates it. */
function template(
  op: number,
  rnd: () => number,
  pool: { rings: RingDesc[]; arms: number[]; buf: number; seen: Record<string, number[]> },
  model: DeviceModel,
): Record<string, unknown> {
  const any = <T>(list: readonly T[]): T => list[Math.floor(rnd() * list.length)]!;
  const h = (kind: string) => (pool.seen[kind]!.length === 0 ? 1 : any(pool.seen[kind]!));
  const ring = () => ({ ...any(pool.rings) });
  switch (op) {
    case Op.QUERY_DEVICE:
    case Op.ALLOC_PD:
      return {};
    case Op.QUERY_PORT:
      return { port: 1 };
    case Op.DEALLOC_PD:
      return { pd: h("pd") };
    case Op.REG_MR:
      return {
        pd: h("pd"),
        addr: pool.buf,
        length: 1 + Math.floor(rnd() * 4096),
        access: any([0, 1, 3, 5, 7, 15]),
      };
    case Op.DEREG_MR:
      return { mr: h("mr") };
    case Op.CREATE_CQ:
      return { cqe: 1 + Math.floor(rnd() * 8), ring: ring(), armAddr: any(pool.arms) };
    case Op.DESTROY_CQ:
      return { cq: h("cq") };
    case Op.REQ_NOTIFY_CQ:
      return { cq: h("cq"), solicitedOnly: rnd() < 0.5 };
    case Op.CREATE_QP: {
      const withSrq = rnd() < 0.3;
      return {
        pd: h("pd"),
        qpType: any(["RC", "UC", "UD"]),
        sendCq: h("cq"),
        recvCq: h("cq"),
        cap: {
          maxSendWr: 4,
          maxRecvWr: withSrq ? 0 : 4,
          maxSendSge: 1,
          maxRecvSge: 1,
          maxInlineData: 0,
        },
        sq: ring(),
        ...(withSrq ? { srq: h("srq") } : { rq: ring() }),
      };
    }
    case Op.MODIFY_QP: {
      const qp = h("qp");
      const object = model.qp(qp);
      if (object !== undefined && rnd() < 0.6) {
        // The next step on the usual path, or a reset/error: legal unless mutated.
        const ud = object.qpType === "UD";
        const uc = object.qpType === "UC";
        const next: Record<string, Record<string, unknown>> = {
          RESET: ud ? { qpState: "INIT", pkeyIndex: 0, portNum: 1, qkey: 7 } : RC_PATH.init,
          INIT: ud
            ? { qpState: "RTR" }
            : uc
            ? { qpState: "RTR", ahAttr: { dgid: "::1" }, pathMtu: 512, destQpNum: 9, rqPsn: 1 }
            : RC_PATH.rtr,
          RTR: ud || uc ? { qpState: "RTS", sqPsn: 3 } : RC_PATH.rts,
        };
        return { qp, attr: { ...(next[object.state] ?? { qpState: any(["RESET", "ERR"]) }) } };
      }
      const attr: Record<string, unknown> = {};
      if (rnd() < 0.9) attr.qpState = any(["RESET", "INIT", "RTR", "RTS", "SQD", "ERR"]);
      const values = {
        ...RC_PATH.init,
        ...RC_PATH.rtr,
        ...RC_PATH.rts,
        qkey: 1,
        curQpState: "RTS",
      };
      for (const [k, v] of Object.entries(values)) if (k !== "qpState" && rnd() < 0.4) attr[k] = v;
      return { qp, attr };
    }
    case Op.QUERY_QP:
    case Op.DESTROY_QP:
      return { qp: h("qp") };
    case Op.CREATE_AH:
      return { pd: h("pd"), ahAttr: { dgid: "::ffff:127.0.0.9", portNum: 1 } };
    case Op.DESTROY_AH:
      return { ah: h("ah") };
    case Op.CREATE_SRQ:
      return { pd: h("pd"), maxWr: 1 + Math.floor(rnd() * 8), maxSge: 1, ring: ring() };
    case Op.MODIFY_SRQ:
      return { srq: h("srq"), srqLimit: Math.floor(rnd() * 9) };
    case Op.DESTROY_SRQ:
      return { srq: h("srq") };
    default:
      return { port: 1, index: 0 };
  }
}

/** Replaces, deletes or adds one field of `map` or of a map nested in it. */
function mutate(map: Record<string, unknown>, rnd: () => number, g: TestGuest): void {
  const keys = Object.keys(map);
  const nested = keys.filter((k) =>
    map[k] !== null && typeof map[k] === "object" && !ArrayBuffer.isView(map[k])
  );
  if (nested.length > 0 && rnd() < 0.3) {
    return mutate(
      map[nested[Math.floor(rnd() * nested.length)]!] as Record<string, unknown>,
      rnd,
      g,
    );
  }
  const roll = rnd();
  if (roll < 0.2 && keys.length > 0) delete map[keys[Math.floor(rnd() * keys.length)]!];
  else if (roll < 0.3) {
    map[FIELD_NAMES[Math.floor(rnd() * FIELD_NAMES.length)]!] = hostileValue(rnd, g, 1);
  } else if (keys.length > 0) map[keys[Math.floor(rnd() * keys.length)]!] = hostileValue(rnd, g, 1);
}

const CREATED: Record<number, [string, string]> = {
  [Op.ALLOC_PD]: ["pd", "pd"],
  [Op.REG_MR]: ["mr", "mr"],
  [Op.CREATE_CQ]: ["cq", "cq"],
  [Op.CREATE_QP]: ["qp", "qp"],
  [Op.CREATE_AH]: ["ah", "ah"],
  [Op.CREATE_SRQ]: ["srq", "srq"],
};

Deno.test("hostile commands never throw, never hit an internal error, and leak nothing", () => {
  const g = makeGuest({ memoryBytes: 8 << 20 });
  const rnd = mulberry32(20240611);
  const statuses = new Map<string, number>();
  for (
    const req of [undefined, null, 5, "op", [1], new Uint8Array(3), new Map([["op", 4]]), {
      op: 4n,
    }, {
      op: -1,
    }, { op: 1.5 }]
  ) {
    const r = g.model.execute(req);
    assert.equal(r.status, Errno.EINVAL, String(r.error));
    assert.equal(typeof r.error, "string");
  }
  const pool = {
    rings: Array.from({ length: 16 }, () => g.ring(8)),
    arms: Array.from({ length: 8 }, () => g.alloc(8, 8)),
    buf: g.alloc(4096),
    seen: { pd: [], mr: [], cq: [], qp: [], ah: [], srq: [] } as Record<string, number[]>,
  };
  for (let i = 0; i < 30000; i++) {
    const op = 1 + Math.floor(rnd() * 19);
    const cmd: Record<string, unknown> = template(op, rnd, pool, g.model);
    for (let m = Math.floor(rnd() * 3) - 1; m > 0; m--) mutate(cmd, rnd, g);
    let r;
    try {
      r = g.model.execute({ op, ...cmd });
    } catch (e) {
      assert.fail(`execute threw for ${Deno.inspect(cmd)}: ${e}`);
    }
    assert.notEqual(r.status, Errno.EIO, `internal error for ${Deno.inspect(cmd)}: ${r.error}`);
    if (r.status !== 0) assert.equal(typeof r.error, "string");
    const key = `${op}:${r.status}`;
    statuses.set(key, (statuses.get(key) ?? 0) + 1);
    const made = CREATED[op];
    if (r.status === 0 && made) pool.seen[made[0]]!.push(r[made[1]] as number);
  }
  // Every command succeeded sometimes and failed sometimes.
  for (let op = 1; op <= 19; op++) {
    assert.ok((statuses.get(`${op}:0`) ?? 0) > 0, `op ${op} never succeeded`);
    const failed = [...statuses.keys()].some((k) => k.startsWith(`${op}:`) && !k.endsWith(":0"));
    assert.ok(failed, `op ${op} never failed`);
  }
  // The counters agree with the tables, and destroyAll brings everything back to zero.
  const live = snapshot(g);
  const count = (get: (h: number) => unknown, kind: string) =>
    pool.seen[kind]!.filter((h) => get(h) !== undefined).length;
  assert.equal(count((h) => g.model.qp(h), "qp"), live.qps);
  assert.equal(count((h) => g.model.pd(h), "pd"), live.pds);
  assert.equal(count((h) => g.model.mr(h), "mr"), live.mrs);
  assert.equal(count((h) => g.model.cq(h), "cq"), live.cqs);
  assert.equal(g.host.liveQps, live.qps);
  assert.equal(g.host.liveKeys, live.mrs);
  g.model.destroyAll();
  assert.deepEqual(Object.values(snapshot(g)), [0, 0, 0, 0, 0, 0, 0, 0, 0]);
});

Deno.test("model objects satisfy the data-path engine's types", () => {
  const g = makeGuest();
  const { pd, qp } = makeQp(g);
  const mrHandle = g.ok(Op.REG_MR, { pd, addr: g.alloc(64), length: 64, access: 1 }).mr as number;
  const ahHandle = g.ok(Op.CREATE_AH, { pd, ahAttr: { dgid: "::1" } }).ah as number;
  const srqHandle = g.ok(Op.CREATE_SRQ, { pd, maxWr: 1, maxSge: 1, ring: g.ring(1) }).srq as number;
  // These assignments are the check: they fail type checking if the shapes drift apart.
  const engineQp: EngineQp = g.model.qp(qp)!;
  const engineMr: EngineMr = g.model.mr(mrHandle)!;
  const engineAh: EngineAh = g.model.ah(ahHandle)!;
  const engineSrq: EngineSrq = g.model.srq(srqHandle)!;
  const engineCq: EngineCq = engineQp.sendCq;
  assert.equal(engineQp.pd, engineMr.pd);
  assert.equal(engineAh.ahAttr.dgid, "::1");
  assert.equal(engineSrq.srqLimit, 0);
  assert.equal(engineCq.queue, g.model.cq(1)!.queue);
});
