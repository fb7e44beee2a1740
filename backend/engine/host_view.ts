/**
 * The engine's view of a host: the device model's host-wide tables, with each
 * object's guest resolved to the guest device that serves it.
 *
 * @module
 */

import type { HostTables } from "../device/host_tables.ts";
import type { EngineGuest, EngineHost, EngineMr, EngineQp } from "./types.ts";

/** Builds the engine's host view. `guest(id)` finds a live guest device. */
export function hostView(
  tables: HostTables,
  ip: string,
  guest: (id: number) => EngineGuest | undefined,
): EngineHost {
  return {
    ip,
    gid: `::ffff:${ip}`,
    qp(qpNum: number) {
      const qp = tables.qpByNum(qpNum);
      if (qp === undefined || !qp.live) return undefined;
      const g = guest(qp.guest.id);
      return g === undefined ? undefined : { qp: qp as EngineQp, guest: g };
    },
    mr(key: number) {
      const mr = tables.mrByKey(key);
      if (mr === undefined || !mr.live) return undefined;
      const g = guest(mr.guest.id);
      return g === undefined ? undefined : { mr: mr as EngineMr, guest: g };
    },
  };
}
