/**
 * Address vectors (`struct ibv_ah_attr`, RoCE form): parsed and checked
 * from a command, completed with defaults, and turned back into the wire
 * form for QUERY_QP.
 *
 * @module
 */

import { parseGid } from "../../protocol/device_config.ts";
import type { AhAttr } from "../../protocol/verbs.ts";
import { checkKeys, type Fields, intField, invalid, stringField } from "./fields.ts";
import type { AddressVector } from "./objects.ts";

/** Hop limit of an address vector that does not give one: a usual IP TTL. */
export const DEFAULT_HOP_LIMIT = 64;

const AH_KEYS = ["dgid", "portNum", "sgidIndex", "hopLimit", "trafficClass", "flowLabel", "sl"];

/**
 * The address vector of a QP that was never given one: all zero, as
 * `ibv_query_qp` shows it.
 */
export function emptyAddressVector(): AddressVector {
  return {
    dgid: "::",
    gid: new Uint8Array(16),
    portNum: 1,
    sgidIndex: 0,
    hopLimit: 0,
    trafficClass: 0,
    flowLabel: 0,
    sl: 0,
  };
}

/**
 * Reads an address vector map. `dgid` must parse as a GID, `portNum` is 1,
 * `sgidIndex` indexes the GID table of `gidCount` entries; the rest are
 * range-checked and default to 0 (`hopLimit` to {@linkcode DEFAULT_HOP_LIMIT}).
 * Throws EINVAL naming the field (prefixed with `where`).
 *
 * @example
 * ```ts
 * import { parseAddressVector } from "./ah_attr.ts";
 * const av = parseAddressVector({ dgid: "::ffff:127.0.0.3", portNum: 1 }, 1);
 * if (av.gid[15] !== 3 || av.hopLimit !== 64) throw new Error("wrong vector");
 * ```
 */
export function parseAddressVector(
  req: Fields,
  gidCount: number,
  where = "ahAttr.",
): AddressVector {
  checkKeys(req, AH_KEYS, where);
  const dgid = stringField(req, "dgid", 64, where);
  let gid: Uint8Array;
  try {
    gid = parseGid(dgid);
  } catch (e) {
    throw invalid(`${where}dgid: ${(e as Error).message}`);
  }
  return {
    dgid,
    gid,
    portNum: intField(req, "portNum", { min: 1, max: 1, optional: true, where }),
    sgidIndex: intField(req, "sgidIndex", { max: gidCount - 1, optional: true, where }),
    hopLimit: intField(req, "hopLimit", {
      max: 0xff,
      optional: true,
      fallback: DEFAULT_HOP_LIMIT,
      where,
    }),
    trafficClass: intField(req, "trafficClass", { max: 0xff, optional: true, where }),
    flowLabel: intField(req, "flowLabel", { max: 0xf_ffff, optional: true, where }),
    sl: intField(req, "sl", { max: 15, optional: true, where }),
  };
}

/** The wire form of an address vector (no parsed bytes). */
export function addressVectorToWire(av: AddressVector): Required<AhAttr> {
  return {
    dgid: av.dgid,
    portNum: av.portNum,
    sgidIndex: av.sgidIndex,
    hopLimit: av.hopLimit,
    trafficClass: av.trafficClass,
    flowLabel: av.flowLabel,
    sl: av.sl,
  };
}
