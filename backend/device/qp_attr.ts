/**
 * The values of MODIFY_QP attributes: which keys exist and what range each
 * may take. Which keys a transition needs or allows is `qp_state.ts`'s job.
 *
 * @module
 */

import { Access, type QpStateName } from "../../protocol/verbs.ts";
import { parseAddressVector } from "./ah_attr.ts";
import {
  checkKeys,
  enumField,
  type Fields,
  fieldValue,
  intField,
  invalid,
  mapField,
} from "./fields.ts";
import type { GuestState } from "./guest_state.ts";
import type { QpAttrName, QpAttrValues } from "./objects.ts";
import { QP_STATES } from "./qp_state.ts";

/** Every settable attribute name, in `QpAttr` order. */
export const QP_ATTR_NAMES: readonly QpAttrName[] = [
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

/** IB path MTUs in bytes. */
export const PATH_MTUS: readonly number[] = [256, 512, 1024, 2048, 4096];

/** Access bits a QP may carry: the remote ones, plus LOCAL_WRITE and MW_BIND (tolerated, as rxe). */
const QP_ACCESS_MASK = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ |
  Access.REMOTE_ATOMIC | Access.MW_BIND;

const PSN_MAX = 0xff_ffff;

/** A MODIFY_QP `attr` map, read and range-checked. */
export interface ParsedQpAttr {
  /** `qpState`, if given. */
  target: QpStateName | undefined;
  /** `curQpState`, if given. */
  current: QpStateName | undefined;
  /** Names present other than `qpState` (`curQpState` included). */
  given: string[];
  /** The settable values present. */
  values: Partial<QpAttrValues>;
}

/** Reads the keys of a MODIFY_QP `attr` map without checking values. */
export function readAttrKeys(attr: Fields): ParsedQpAttr {
  checkKeys(attr, ["qpState", "curQpState", ...QP_ATTR_NAMES], "attr.");
  const given = Object.keys(attr).filter((k) => k !== "qpState" && attr[k] !== undefined);
  return {
    target: fieldValue(attr, "qpState") === undefined
      ? undefined
      : enumField(attr, "qpState", QP_STATES, "attr."),
    current: fieldValue(attr, "curQpState") === undefined
      ? undefined
      : enumField(attr, "curQpState", QP_STATES, "attr."),
    given,
    values: {},
  };
}

/** Reads and range-checks the value of one present attribute; throws EINVAL naming it. */
export function readAttrValue<K extends QpAttrName>(
  state: GuestState,
  attr: Fields,
  name: K,
): QpAttrValues[K] {
  const where = "attr.";
  const limits = state.limits;
  const int = (max: number, min = 0) => intField(attr, name, { min, max, where });
  let value: number | QpAttrValues["ahAttr"];
  switch (name) {
    case "pathMtu": {
      const mtu = intField(attr, name, { max: 0xffff_ffff, where });
      if (!PATH_MTUS.includes(mtu)) {
        throw invalid(`attr.pathMtu ${mtu} is not an IB MTU (${PATH_MTUS.join(", ")})`);
      }
      if (mtu > state.config.port.maxMtu) {
        throw invalid(`attr.pathMtu ${mtu} exceeds the port's maxMtu ${state.config.port.maxMtu}`);
      }
      value = mtu;
      break;
    }
    case "qkey":
      value = int(0xffff_ffff);
      break;
    case "rqPsn":
    case "sqPsn":
    case "destQpNum":
      value = int(PSN_MAX);
      break;
    case "qpAccessFlags": {
      const flags = int(0xffff_ffff);
      if ((flags & ~QP_ACCESS_MASK) !== 0) {
        throw invalid(
          `attr.qpAccessFlags 0x${flags.toString(16)} has bits outside 0x${
            QP_ACCESS_MASK.toString(16)
          }`,
        );
      }
      value = flags;
      break;
    }
    case "ahAttr":
      value = parseAddressVector(mapField(attr, "ahAttr", where), state.config.gids.length);
      break;
    case "pkeyIndex":
      value = int(state.config.port.pkeyTblLen - 1);
      break;
    case "enSqdAsyncNotify":
      value = int(1);
      break;
    case "maxRdAtomic":
      value = int(limits.maxQpInitRdAtom);
      break;
    case "maxDestRdAtomic":
      value = int(limits.maxQpRdAtom);
      break;
    case "minRnrTimer":
    case "timeout":
      value = int(31);
      break;
    case "portNum":
      value = int(1, 1);
      break;
    case "retryCnt":
    case "rnrRetry":
      value = int(7);
      break;
    default:
      throw invalid(`attr.${String(name)} is not a QP attribute`);
  }
  return value as QpAttrValues[K];
}

/** Reads every present settable attribute's value into `parsed.values`. */
export function readAttrValues(state: GuestState, attr: Fields, parsed: ParsedQpAttr): void {
  const values = parsed.values as Record<QpAttrName, unknown>;
  for (const name of QP_ATTR_NAMES) {
    if (fieldValue(attr, name) !== undefined) values[name] = readAttrValue(state, attr, name);
  }
}
