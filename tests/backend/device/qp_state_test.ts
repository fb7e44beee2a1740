import assert from "node:assert/strict";
import { Op } from "../../../protocol/device_interface.ts";
import { Access, type QpStateName, type QpType } from "../../../protocol/verbs.ts";
import { QP_STATES, transitionRule } from "../../../backend/device/qp_state.ts";
import {
  makeCq,
  makeGuest,
  makePd,
  qpArgs,
  queryQp,
  RC_PATH,
  type TestGuest,
} from "./model_fixture.ts";

// The contract's table, transcribed independently of backend/device/qp_state.ts:
// [required, optional] per transport; a missing transport = illegal for it.
type Sets = [string[], string[]];
type Row = Partial<Record<QpType, Sets>>;
const RC_SELF = ["curQpState", "qpAccessFlags", "minRnrTimer"];
const UC_SELF = ["curQpState", "qpAccessFlags"];
const UD_SELF = ["curQpState", "qkey"];
const EXPECTED: Record<string, Row> = {
  "RESET>INIT": {
    RC: [["pkeyIndex", "portNum", "qpAccessFlags"], []],
    UC: [["pkeyIndex", "portNum", "qpAccessFlags"], []],
    UD: [["pkeyIndex", "portNum", "qkey"], []],
  },
  "INIT>INIT": {
    RC: [[], ["pkeyIndex", "portNum", "qpAccessFlags"]],
    UC: [[], ["pkeyIndex", "portNum", "qpAccessFlags"]],
    UD: [[], ["pkeyIndex", "portNum", "qkey"]],
  },
  "INIT>RTR": {
    RC: [
      ["ahAttr", "pathMtu", "destQpNum", "rqPsn", "maxDestRdAtomic", "minRnrTimer"],
      ["qpAccessFlags", "pkeyIndex"],
    ],
    UC: [["ahAttr", "pathMtu", "destQpNum", "rqPsn"], ["qpAccessFlags", "pkeyIndex"]],
    UD: [[], ["pkeyIndex", "qkey"]],
  },
  "RTR>RTS": {
    RC: [["sqPsn", "timeout", "retryCnt", "rnrRetry", "maxRdAtomic"], RC_SELF],
    UC: [["sqPsn"], UC_SELF],
    UD: [["sqPsn"], UD_SELF],
  },
  "RTS>RTS": { RC: [[], RC_SELF], UC: [[], UC_SELF], UD: [[], UD_SELF] },
  "RTS>SQD": {
    RC: [[], ["enSqdAsyncNotify"]],
    UC: [[], ["enSqdAsyncNotify"]],
    UD: [[], ["enSqdAsyncNotify"]],
  },
  "SQD>RTS": { RC: [[], RC_SELF], UC: [[], UC_SELF], UD: [[], UD_SELF] },
  "SQD>SQD": {
    RC: [[], [
      "ahAttr",
      "qpAccessFlags",
      "pkeyIndex",
      "minRnrTimer",
      "timeout",
      "retryCnt",
      "rnrRetry",
      "maxRdAtomic",
      "maxDestRdAtomic",
    ]],
    UC: [[], ["ahAttr", "qpAccessFlags", "pkeyIndex"]],
    UD: [[], ["pkeyIndex", "qkey"]],
  },
  // Not RC. UC as the kernel allows (the contract derives UC from RC; see the report).
  "SQE>RTS": { UC: [[], UC_SELF], UD: [[], UD_SELF] },
};
for (const from of QP_STATES) {
  EXPECTED[`${from}>RESET`] = { RC: [[], []], UC: [[], []], UD: [[], []] };
  EXPECTED[`${from}>ERR`] = { RC: [[], []], UC: [[], []], UD: [[], []] };
}

/** Every attribute name MODIFY_QP knows besides qpState. */
const ALL_ATTRS = [
  "curQpState",
  "pathMtu",
  "qkey",
  "rqPsn",
  "sqPsn",
  "destQpNum",
  "qpAccessFlags",
  "ahAttr",
  "pkeyIndex",
  "enSqdAsyncNotify",
  "maxRdAtomic",
  "maxDestRdAtomic",
  "minRnrTimer",
  "portNum",
  "timeout",
  "retryCnt",
  "rnrRetry",
];

/** A valid value for each attribute (curQpState is filled in per transition). */
const VALUES: Record<string, unknown> = {
  pathMtu: 2048,
  qkey: 0x8001_2345,
  rqPsn: 0xab_cdef,
  sqPsn: 0x12_3456,
  destQpNum: 0x77,
  qpAccessFlags: Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ,
  ahAttr: {
    dgid: "::ffff:127.0.0.3",
    portNum: 1,
    hopLimit: 9,
    trafficClass: 4,
    flowLabel: 7,
    sl: 2,
  },
  pkeyIndex: 0,
  enSqdAsyncNotify: 1,
  maxRdAtomic: 2,
  maxDestRdAtomic: 3,
  minRnrTimer: 5,
  portNum: 1,
  timeout: 9,
  retryCnt: 6,
  rnrRetry: 4,
};

const TYPES: QpType[] = ["RC", "UC", "UD"];

function attrsFor(names: string[], from: QpStateName): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const n of names) out[n] = n === "curQpState" ? from : VALUES[n];
  return out;
}

/** The shortest way to bring a `qpType` QP to `state`. */
function bringTo(g: TestGuest, qp: number, qpType: QpType, state: QpStateName): void {
  const modify = (attr: Record<string, unknown>) => g.ok(Op.MODIFY_QP, { qp, attr });
  if (state === "RESET") return;
  if (state === "ERR") return void modify({ qpState: "ERR" });
  if (qpType === "UD") modify({ qpState: "INIT", pkeyIndex: 0, portNum: 1, qkey: 1 });
  else modify(RC_PATH.init);
  if (state === "INIT") return;
  if (qpType === "UD") modify({ qpState: "RTR" });
  else if (qpType === "UC") {
    const { maxDestRdAtomic: _a, minRnrTimer: _b, ...rtr } = RC_PATH.rtr;
    modify(rtr);
  } else modify(RC_PATH.rtr);
  if (state === "RTR") return;
  if (qpType === "RC") modify(RC_PATH.rts);
  else modify({ qpState: "RTS", sqPsn: 1 });
  if (state === "RTS") return;
  if (state === "SQD") return void modify({ qpState: "SQD" });
  // SQE is entered only by the data path (a UD/UC send error).
  assert.equal(g.model.moveQp(g.model.qp(qp)!, "SQE"), true);
}

function newQpIn(
  g: TestGuest,
  ctx: { pd: number; cq: number },
  qpType: QpType,
  state: QpStateName,
) {
  const qp = g.ok(Op.CREATE_QP, qpArgs(g, ctx.pd, ctx.cq, qpType)).qp as number;
  bringTo(g, qp, qpType, state);
  assert.equal(g.model.qp(qp)!.state, state);
  return qp;
}

Deno.test("the model's table is the contract's table", () => {
  for (const qpType of TYPES) {
    for (const from of QP_STATES) {
      for (const to of QP_STATES) {
        const rule = transitionRule(qpType, from, to);
        const expected = EXPECTED[`${from}>${to}`]?.[qpType];
        const got = rule === undefined ? undefined : [
          [...rule.required].sort(),
          [...rule.optional].sort(),
        ];
        const want = expected === undefined
          ? undefined
          : [[...expected[0]].sort(), [...expected[1]].sort()];
        assert.deepEqual(got, want, `${qpType} ${from} -> ${to}`);
      }
    }
  }
});

Deno.test("every transition, through MODIFY_QP: legal ones apply, all else is EINVAL and changes nothing", () => {
  const g = makeGuest({ memoryBytes: 16 << 20 });
  const ctx = { pd: makePd(g), cq: makeCq(g).cq as number };
  let legal = 0, refused = 0;
  for (const qpType of TYPES) {
    for (const from of QP_STATES) {
      if (from === "SQE" && qpType === "RC") continue; // an RC QP never enters SQE
      // One QP in `from` takes every refused modify; none may change it.
      const probe = newQpIn(g, ctx, qpType, from);
      const pristine = queryQp(g, probe);
      const refuse = (attr: Record<string, unknown>, message: RegExp, what: string) => {
        const r = g.run(Op.MODIFY_QP, { qp: probe, attr });
        assert.equal(r.status, 22, `${what}: expected EINVAL, got ${r.status} ${r.error}`);
        assert.match(String(r.error), message, what);
        assert.deepEqual(queryQp(g, probe), pristine, `${what} changed the QP`);
        refused++;
      };
      for (const to of QP_STATES) {
        const where = `${qpType} ${from} -> ${to}`;
        const row = EXPECTED[`${from}>${to}`]?.[qpType];
        if (row === undefined) {
          refuse(
            { qpState: to },
            new RegExp(`${from} -> ${to} is not a legal transition for a ${qpType} QP`),
            where,
          );
          continue;
        }
        const [required, optional] = row;
        // Required only, then required + every optional: both succeed and apply the values.
        for (const names of [required, [...required, ...optional]]) {
          const qp = newQpIn(g, ctx, qpType, from);
          const before = queryQp(g, qp);
          const attr = { qpState: to, ...attrsFor(names, from) };
          const r = g.run(Op.MODIFY_QP, { qp, attr });
          assert.equal(r.status, 0, `${where} with ${names.join(",")}: ${r.error}`);
          // Exactly the given attributes change (and the PSNs on RESET); nothing else does.
          const want = structuredClone(before);
          want.state = to;
          const wantAttr = want.attr as Record<string, unknown>;
          wantAttr.qpState = to;
          wantAttr.curQpState = to;
          for (const n of names) {
            if (n === "curQpState") continue;
            wantAttr[n] = n === "ahAttr"
              ? { sgidIndex: 0, ...(VALUES.ahAttr as object) }
              : VALUES[n];
          }
          if (to === "RESET") wantAttr.sqPsn = wantAttr.rqPsn = 0;
          assert.deepEqual(queryQp(g, qp), want, `${where} with ${names.join(",")}`);
          g.ok(Op.DESTROY_QP, { qp });
          legal++;
        }
        for (const missing of required) {
          const names = required.filter((n) => n !== missing);
          refuse(
            { qpState: to, ...attrsFor(names, from) },
            new RegExp(`${qpType} ${from} -> ${to} requires ${missing}$`),
            `${where} without ${missing}`,
          );
        }
        for (
          const extra of ALL_ATTRS.filter((n) => !required.includes(n) && !optional.includes(n))
        ) {
          refuse(
            { qpState: to, ...attrsFor([...required, extra], from) },
            new RegExp(`^${extra} is not allowed on ${qpType} ${from} -> ${to}$`),
            `${where} with ${extra}`,
          );
        }
        if (optional.includes("curQpState")) {
          const wrong = from === "RTS" ? "RTR" : "RTS";
          refuse(
            { qpState: to, ...attrsFor(required, from), curQpState: wrong },
            new RegExp(`attr.curQpState ${wrong} is not the QP's state ${from}`),
            `${where} with curQpState ${wrong}`,
          );
        }
      }
      g.ok(Op.DESTROY_QP, { qp: probe });
    }
  }
  // 66 legal rows (RC 20, UC 23, UD 23), each tried two ways; the refusals add up likewise.
  assert.deepEqual({ legal, refused }, { legal: 132, refused: 1150 });
  assert.equal(g.counters.get("qps"), 0);
});

Deno.test("without qpState a QP stays put: only its self-transition attributes", () => {
  const g = makeGuest();
  const ctx = { pd: makePd(g), cq: makeCq(g).cq as number };
  const rts = newQpIn(g, ctx, "RC", "RTS");
  g.ok(Op.MODIFY_QP, { qp: rts, attr: { minRnrTimer: 20, qpAccessFlags: 0 } });
  let q = queryQp(g, rts);
  assert.equal(q.state, "RTS");
  assert.equal((q.attr as Record<string, unknown>).minRnrTimer, 20);
  g.fail(
    Op.MODIFY_QP,
    { qp: rts, attr: { timeout: 3 } },
    "EINVAL",
    /timeout is not allowed on RC RTS -> RTS/,
  );
  const rtr = newQpIn(g, ctx, "RC", "RTR");
  g.fail(Op.MODIFY_QP, { qp: rtr, attr: {} }, "EINVAL", /RTR -> RTR is not a legal transition/);
  const init = newQpIn(g, ctx, "UD", "INIT");
  g.ok(Op.MODIFY_QP, { qp: init, attr: { qkey: 77 } });
  q = queryQp(g, init);
  assert.equal(q.state, "INIT");
  assert.equal((q.attr as Record<string, unknown>).qkey, 77);
  const fresh = newQpIn(g, ctx, "RC", "RESET");
  g.ok(Op.MODIFY_QP, { qp: fresh, attr: {} }); // RESET -> RESET is always legal
  g.fail(
    Op.MODIFY_QP,
    { qp: fresh, attr: { portNum: 1 } },
    "EINVAL",
    /portNum is not allowed on RC RESET -> RESET/,
  );
});

Deno.test("attribute values are range-checked; a bad one fails the whole modify", () => {
  const g = makeGuest({ maxMtu: 1024 });
  const ctx = { pd: makePd(g), cq: makeCq(g).cq as number };
  const init = newQpIn(g, ctx, "RC", "INIT");
  const before = queryQp(g, init);
  const rtr = (attr: Record<string, unknown>) => ({ qp: init, attr: { ...RC_PATH.rtr, ...attr } });
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ pathMtu: 300 }, /attr.pathMtu 300 is not an IB MTU/],
    [{ pathMtu: 2048 }, /attr.pathMtu 2048 exceeds the port's maxMtu 1024/],
    [{ pathMtu: "1024" }, /attr.pathMtu = "1024"/],
    [{ rqPsn: 1 << 24 }, /attr.rqPsn = 16777216 is not an integer in 0..16777215/],
    [{ destQpNum: -1 }, /attr.destQpNum = -1/],
    [{ destQpNum: 2 ** 24 }, /attr.destQpNum = 16777216/],
    [{ maxDestRdAtomic: 129 }, /attr.maxDestRdAtomic = 129 is not an integer in 0..128/],
    [{ minRnrTimer: 32 }, /attr.minRnrTimer = 32 is not an integer in 0..31/],
    [{ qpAccessFlags: Access.ZERO_BASED }, /attr.qpAccessFlags 0x20 has bits outside 0x1f/],
    [{ pkeyIndex: 1 }, /attr.pkeyIndex = 1 is not an integer in 0..0/],
    [{ ahAttr: "::1" }, /attr.ahAttr = "::1" is not a map/],
    [{ ahAttr: { dgid: "not a gid" } }, /ahAttr.dgid: "not a gid" is not a GID/],
    [{ ahAttr: { dgid: "::1", portNum: 2 } }, /ahAttr.portNum = 2 is not an integer in 1..1/],
    [{ ahAttr: { dgid: "::1", sgidIndex: 1 } }, /ahAttr.sgidIndex = 1 is not an integer in 0..0/],
    [{ ahAttr: { dgid: "::1", hopLimit: 256 } }, /ahAttr.hopLimit = 256/],
    [{ ahAttr: { dgid: "::1", flowLabel: 1 << 20 } }, /ahAttr.flowLabel = 1048576/],
    [{ ahAttr: { dgid: "::1", sl: 16 } }, /ahAttr.sl = 16/],
    [{ ahAttr: { dgid: "::1", mac: 1 } }, /ahAttr.mac is not a field here/],
    [{ ahAttr: { dgid: 5 } }, /ahAttr.dgid = 5 is not a string/],
    [{ qpState: "BOGUS" }, /attr.qpState = "BOGUS" is not one of RESET, INIT/],
    [{ qpState: 2 }, /attr.qpState = 2 is not one of/],
    [{ flavour: 1 }, /attr.flavour is not a field here/],
  ];
  for (const [attr, message] of bad) {
    g.fail(Op.MODIFY_QP, rtr(attr), "EINVAL", message);
    assert.deepEqual(queryQp(g, init), before, JSON.stringify(attr));
  }
  g.ok(Op.MODIFY_QP, rtr({}));
  const rts = (attr: Record<string, unknown>) => ({ qp: init, attr: { ...RC_PATH.rts, ...attr } });
  const beforeRts = queryQp(g, init);
  for (
    const [attr, message] of [
      [{ sqPsn: 2 ** 24 }, /attr.sqPsn = 16777216/],
      [{ timeout: 32 }, /attr.timeout = 32 is not an integer in 0..31/],
      [{ retryCnt: 8 }, /attr.retryCnt = 8 is not an integer in 0..7/],
      [{ rnrRetry: -1 }, /attr.rnrRetry = -1/],
      [{ maxRdAtomic: 129 }, /attr.maxRdAtomic = 129 is not an integer in 0..128/],
      [{ maxRdAtomic: 1n }, /attr.maxRdAtomic = 1n/],
      [{ curQpState: "LATE" }, /attr.curQpState = "LATE" is not one of/],
    ] as [Record<string, unknown>, RegExp][]
  ) {
    g.fail(Op.MODIFY_QP, rts(attr), "EINVAL", message);
    assert.deepEqual(queryQp(g, init), beforeRts, JSON.stringify(attr, (_, v) => String(v)));
  }
  g.ok(Op.MODIFY_QP, rts({ qpAccessFlags: Access.LOCAL_WRITE | Access.MW_BIND }));
  const ud = newQpIn(g, ctx, "UD", "RESET");
  const udInit = { qpState: "INIT", pkeyIndex: 0, portNum: 1 };
  g.fail(
    Op.MODIFY_QP,
    { qp: ud, attr: { ...udInit, qkey: 2 ** 32 } },
    "EINVAL",
    /attr.qkey = 4294967296/,
  );
  g.fail(
    Op.MODIFY_QP,
    { qp: ud, attr: { ...udInit, qkey: 1, portNum: 2 } },
    "EINVAL",
    /attr.portNum = 2 is not an integer in 1..1/,
  );
  g.ok(Op.MODIFY_QP, { qp: ud, attr: { ...udInit, qkey: 0xffff_ffff } });
  g.ok(Op.MODIFY_QP, { qp: ud, attr: { qpState: "RTR" } });
  g.ok(Op.MODIFY_QP, { qp: ud, attr: { qpState: "RTS", sqPsn: 0 } });
  g.ok(Op.MODIFY_QP, { qp: ud, attr: { qpState: "SQD", enSqdAsyncNotify: 1 } });
  g.fail(
    Op.MODIFY_QP,
    { qp: ud, attr: { qpState: "SQD", enSqdAsyncNotify: 2 } },
    "EINVAL",
    /is not allowed on UD SQD -> SQD/,
  );
  g.fail(Op.MODIFY_QP, { qp: 77, attr: {} }, "EINVAL", /qp 77 does not exist/);
  g.fail(Op.MODIFY_QP, { qp: ud, attr: null }, "EINVAL", /attr = null is not a map/);
  g.fail(Op.MODIFY_QP, { qp: ud }, "EINVAL", /attr = undefined is not a map/);
  g.fail(Op.MODIFY_QP, { qp: ud, attr: {}, extra: 1 }, "EINVAL", /extra is not a field here/);
});

Deno.test("RC vs UD: UD takes qkey and no path, RC takes no qkey", () => {
  const g = makeGuest();
  const ctx = { pd: makePd(g), cq: makeCq(g).cq as number };
  const rc = newQpIn(g, ctx, "RC", "RESET");
  g.fail(
    Op.MODIFY_QP,
    { qp: rc, attr: { ...RC_PATH.init, qkey: 1 } },
    "EINVAL",
    /^qkey is not allowed on RC RESET -> INIT$/,
  );
  const ud = newQpIn(g, ctx, "UD", "INIT");
  g.fail(
    Op.MODIFY_QP,
    { qp: ud, attr: { qpState: "RTR", pathMtu: 1024 } },
    "EINVAL",
    /^pathMtu is not allowed on UD INIT -> RTR$/,
  );
  g.fail(
    Op.MODIFY_QP,
    { qp: ud, attr: { qpState: "RTR", qpAccessFlags: 0 } },
    "EINVAL",
    /^qpAccessFlags is not allowed on UD INIT -> RTR$/,
  );
  const uc = newQpIn(g, ctx, "UC", "RTR");
  g.fail(
    Op.MODIFY_QP,
    { qp: uc, attr: { qpState: "RTS", sqPsn: 1, timeout: 3 } },
    "EINVAL",
    /^timeout is not allowed on UC RTR -> RTS$/,
  );
});
