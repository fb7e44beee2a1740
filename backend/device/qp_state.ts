/**
 * The QP state machine of MODIFY_QP as data: for each legal transition and
 * transport, the attributes it requires and the ones it allows, as the
 * kernel's `ib_modify_qp_is_ok` table has them (IBA 1.x, 11.2.4.2).
 *
 * UC is RC without the reliability attributes (timeout, retryCnt, rnrRetry,
 * maxRdAtomic, maxDestRdAtomic, minRnrTimer). Every state may go to RESET or
 * ERR with no attributes.
 *
 * @module
 */

import { QpState, type QpStateName, type QpType } from "../../protocol/verbs.ts";
import type { QpAttrName } from "./objects.ts";

/** An attribute a transition can name: the settable ones plus `curQpState`. */
export type TransitionAttr = QpAttrName | "curQpState";

/** What one transition needs and allows for one transport. */
export interface TransitionRule {
  /** Must be present. */
  readonly required: readonly TransitionAttr[];
  /** May be present. */
  readonly optional: readonly TransitionAttr[];
}

/** Rules per transport; a transport without an entry may not take the transition. */
export type TransitionRules = Readonly<Partial<Record<QpType, TransitionRule>>>;

/** Every state name, in `enum ibv_qp_state` order. */
export const QP_STATES: readonly QpStateName[] = Object.keys(QpState) as QpStateName[];

/** The attributes only a reliable transport has. */
const RC_ONLY: readonly TransitionAttr[] = [
  "timeout",
  "retryCnt",
  "rnrRetry",
  "maxRdAtomic",
  "maxDestRdAtomic",
  "minRnrTimer",
];

function rule(required: TransitionAttr[], optional: TransitionAttr[] = []): TransitionRule {
  return { required, optional };
}

/** RC and UD rules; UC is derived from RC. */
function rules(rc: TransitionRule | null, ud: TransitionRule): TransitionRules {
  if (rc === null) return { UD: ud };
  const strip = (list: readonly TransitionAttr[]) => list.filter((a) => !RC_ONLY.includes(a));
  return { RC: rc, UC: rule(strip(rc.required), strip(rc.optional)), UD: ud };
}

const ALWAYS: TransitionRules = { RC: rule([]), UC: rule([]), UD: rule([]) };

const RTS_SELF = rules(
  rule([], ["curQpState", "qpAccessFlags", "minRnrTimer"]),
  rule([], ["curQpState", "qkey"]),
);

/**
 * The legal transitions other than to RESET and ERR, keyed `"FROM>TO"`.
 *
 * One deliberate addition to the contract's table: UC may go SQE -> RTS
 * (optional curQpState, qpAccessFlags), as the kernel allows, because a UC
 * send error leaves the QP in SQE and this is its only way back.
 */
const TABLE: Readonly<Record<string, TransitionRules>> = {
  "RESET>INIT": rules(
    rule(["pkeyIndex", "portNum", "qpAccessFlags"]),
    rule(["pkeyIndex", "portNum", "qkey"]),
  ),
  "INIT>INIT": rules(
    rule([], ["pkeyIndex", "portNum", "qpAccessFlags"]),
    rule([], ["pkeyIndex", "portNum", "qkey"]),
  ),
  "INIT>RTR": rules(
    rule(
      ["ahAttr", "pathMtu", "destQpNum", "rqPsn", "maxDestRdAtomic", "minRnrTimer"],
      ["qpAccessFlags", "pkeyIndex"],
    ),
    rule([], ["pkeyIndex", "qkey"]),
  ),
  "RTR>RTS": rules(
    rule(
      ["sqPsn", "timeout", "retryCnt", "rnrRetry", "maxRdAtomic"],
      ["curQpState", "qpAccessFlags", "minRnrTimer"],
    ),
    rule(["sqPsn"], ["curQpState", "qkey"]),
  ),
  "RTS>RTS": RTS_SELF,
  "RTS>SQD": rules(rule([], ["enSqdAsyncNotify"]), rule([], ["enSqdAsyncNotify"])),
  "SQD>RTS": RTS_SELF,
  "SQD>SQD": rules(
    rule([], [
      "ahAttr",
      "qpAccessFlags",
      "pkeyIndex",
      "minRnrTimer",
      "timeout",
      "retryCnt",
      "rnrRetry",
      "maxRdAtomic",
      "maxDestRdAtomic",
    ]),
    rule([], ["pkeyIndex", "qkey"]),
  ),
  "SQE>RTS": {
    UC: rule([], ["curQpState", "qpAccessFlags"]),
    UD: rule([], ["curQpState", "qkey"]),
  },
};

/**
 * The rule for `from -> to` on a `qpType` QP, or undefined when the
 * transition is not legal for it.
 *
 * @example
 * ```ts
 * import { transitionRule } from "./qp_state.ts";
 * if (!transitionRule("UD", "RESET", "INIT")?.required.includes("qkey")) throw new Error();
 * if (transitionRule("RC", "RESET", "RTS") !== undefined) throw new Error("illegal");
 * ```
 */
export function transitionRule(
  qpType: QpType,
  from: QpStateName,
  to: QpStateName,
): TransitionRule | undefined {
  if (to === "RESET" || to === "ERR") return ALWAYS[qpType];
  return TABLE[`${from}>${to}`]?.[qpType];
}

/**
 * Checks a MODIFY_QP against the table. `given` lists the attributes present
 * besides `qpState` (which is always allowed). Returns null when the
 * transition is legal with exactly these attributes, else the message of
 * the EINVAL: the illegal transition, the first missing required attribute,
 * or the first attribute the transition does not allow.
 *
 * @example
 * ```ts
 * import { checkTransition } from "./qp_state.ts";
 * if (checkTransition("RC", "RESET", "INIT", ["pkeyIndex", "portNum", "qpAccessFlags"]) !== null) {
 *   throw new Error("legal");
 * }
 * const msg = checkTransition("RC", "RESET", "INIT", ["pkeyIndex", "portNum", "qpAccessFlags", "timeout"]);
 * if (!msg?.includes("timeout")) throw new Error(String(msg));
 * ```
 */
export function checkTransition(
  qpType: QpType,
  from: QpStateName,
  to: QpStateName,
  given: readonly string[],
): string | null {
  const r = transitionRule(qpType, from, to);
  if (r === undefined) return `${from} -> ${to} is not a legal transition for a ${qpType} QP`;
  for (const attr of r.required) {
    if (!given.includes(attr)) return `${qpType} ${from} -> ${to} requires ${attr}`;
  }
  for (const attr of given) {
    if (
      !r.required.includes(attr as TransitionAttr) && !r.optional.includes(attr as TransitionAttr)
    ) {
      return `${attr} is not allowed on ${qpType} ${from} -> ${to}`;
    }
  }
  return null;
}
