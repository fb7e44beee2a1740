/**
 * The lines rdma-core's pingpong tools print, character for character:
 * the local and remote address lines, the two summary lines, and the
 * failed-completion line with `ibv_wc_status_str`'s wording.
 *
 * @module
 */

import { WcStatus, type WcStatusName } from "../../mod.ts";
import { inetNtop6, type PingpongDest } from "./pingpong_wire.ts";

function hex(value: number, digits: number): string {
  return value.toString(16).padStart(digits, "0");
}

/**
 * `  local address:  LID 0x0000, QPN 0x000011, PSN 0x1a2b3c, GID ::ffff:127.0.0.2`.
 * `ibv_ud_pingpong` prints a colon before `GID` on this one line; `ud` keeps that.
 *
 * @example
 * ```ts
 * import { formatAddress } from "./pingpong_format.ts";
 * import { parseGid } from "../../protocol/device_config.ts";
 * const line = formatAddress("local", { lid: 0, qpn: 0x11, psn: 0xabc, gid: parseGid("::ffff:127.0.0.2") });
 * if (line !== "  local address:  LID 0x0000, QPN 0x000011, PSN 0x000abc, GID ::ffff:127.0.0.2") {
 *   throw new Error(line);
 * }
 * ```
 */
export function formatAddress(
  side: "local" | "remote",
  dest: PingpongDest,
  options: { ud?: boolean } = {},
): string {
  const label = side === "local" ? "  local address: " : "  remote address:";
  const gidSep = side === "local" && options.ud ? ":" : ",";
  return `${label} LID 0x${hex(dest.lid, 4)}, QPN 0x${hex(dest.qpn, 6)}, PSN 0x${
    hex(dest.psn, 6)
  }${gidSep} GID ${inetNtop6(dest.gid)}`;
}

/**
 * The two summary lines of a run of `iters` exchanges of `size` bytes that
 * took `usec` microseconds (bytes counted both ways, as rdma-core does).
 *
 * @example
 * ```ts
 * import { formatSummary } from "./pingpong_format.ts";
 * const [a, b] = formatSummary({ size: 4096, iters: 1000, usec: 50000 });
 * if (a !== "8192000 bytes in 0.05 seconds = 1310.72 Mbit/sec") throw new Error(a);
 * if (b !== "1000 iters in 0.05 seconds = 50.00 usec/iter") throw new Error(b);
 * ```
 */
export function formatSummary(run: { size: number; iters: number; usec: number }): [
  string,
  string,
] {
  // rdma-core holds the elapsed time in a C float; rounding through
  // Math.fround keeps the printed digits the same.
  const usec = Math.fround(run.usec);
  const bytes = run.size * run.iters * 2;
  const seconds = (usec / 1_000_000).toFixed(2);
  return [
    `${bytes} bytes in ${seconds} seconds = ${((bytes * 8) / usec).toFixed(2)} Mbit/sec`,
    // `usec / iters` is float division in C (the others divide by a double).
    `${run.iters} iters in ${seconds} seconds = ${
      Math.fround(usec / Math.fround(run.iters)).toFixed(2)
    } usec/iter`,
  ];
}

const WC_STATUS_TEXT: Readonly<Record<WcStatusName, string>> = {
  SUCCESS: "success",
  LOC_LEN_ERR: "local length error",
  LOC_QP_OP_ERR: "local QP operation error",
  LOC_EEC_OP_ERR: "local EE context operation error",
  LOC_PROT_ERR: "local protection error",
  WR_FLUSH_ERR: "Work Request Flushed Error",
  MW_BIND_ERR: "memory management operation error",
  BAD_RESP_ERR: "bad response error",
  LOC_ACCESS_ERR: "local access error",
  REM_INV_REQ_ERR: "remote invalid request error",
  REM_ACCESS_ERR: "remote access error",
  REM_OP_ERR: "remote operation error",
  RETRY_EXC_ERR: "transport retry counter exceeded",
  RNR_RETRY_EXC_ERR: "RNR retry counter exceeded",
  LOC_RDD_VIOL_ERR: "local RDD violation error",
  REM_INV_RD_REQ_ERR: "remote invalid RD request",
  REM_ABORT_ERR: "aborted error",
  INV_EECN_ERR: "invalid EE context number",
  INV_EEC_STATE_ERR: "invalid EE context state",
  FATAL_ERR: "fatal error",
  RESP_TIMEOUT_ERR: "response timeout error",
  GENERAL_ERR: "general error",
};

/** `ibv_wc_status_str`: the words rdma-core prints for a completion status. */
export function wcStatusText(status: WcStatusName): string {
  return WC_STATUS_TEXT[status] ?? "unknown";
}

/**
 * `Failed status transport retry counter exceeded (12) for wr_id 2`.
 *
 * @example
 * ```ts
 * import { formatFailedStatus } from "./pingpong_format.ts";
 * const line = formatFailedStatus("RETRY_EXC_ERR", 2n);
 * if (line !== "Failed status transport retry counter exceeded (12) for wr_id 2") throw new Error(line);
 * ```
 */
export function formatFailedStatus(status: WcStatusName, wrId: bigint): string {
  // rdma-core prints (int)wr_id.
  return `Failed status ${wcStatusText(status)} (${WcStatus[status]}) for wr_id ${
    BigInt.asIntN(32, wrId)
  }`;
}
