/**
 * The text `ibv_devinfo` (rdma-core's `libibverbs/examples/devinfo.c`)
 * prints for one device, tab for tab, from the attributes a vrdma device
 * reports. Attributes vrdma's config space does not carry (memory windows,
 * multicast, ODP, TSO, RSS, ...) print as a provider that leaves them zero
 * would make `ibv_devinfo -v` print them: zero, "NO SUPPORT", "not
 * supported".
 *
 * @module
 */

import type { DeviceAttr, PortAttr } from "../../mod.ts";
import { mtuToEnum, parseGid } from "../../protocol/device_config.ts";
import { inetNtop6 } from "./pingpong_wire.ts";

/** One port as the tool queried it. */
export interface DevinfoPort {
  /** Port number (from 1). */
  num: number;
  /** `ibv_query_port`. */
  attr: PortAttr;
  /** GID table, `attr.gidTblLen` entries as IPv6 text. */
  gids: readonly string[];
}

/** Everything `ibv_devinfo` shows of one device. */
export interface DevinfoDevice {
  /** The device name (`hca_id`). */
  name: string;
  /** `ibv_query_device`. */
  attr: DeviceAttr;
  /** The ports to show (all, or the one `-i` asked for). */
  ports: readonly DevinfoPort[];
  /** Completion vectors of the context. */
  numCompVectors: number;
}

/** `struct ibv_device_attr` capability bits, in the order devinfo prints them. */
const DEVICE_CAP_FLAGS: readonly [number, string][] = [
  [1 << 0, "RESIZE_MAX_WR"],
  [1 << 1, "BAD_PKEY_CNTR"],
  [1 << 2, "BAD_QKEY_CNTR"],
  [1 << 3, "RAW_MULTI"],
  [1 << 4, "AUTO_PATH_MIG"],
  [1 << 5, "CHANGE_PHY_PORT"],
  [1 << 6, "UD_AV_PORT_ENFORCE"],
  [1 << 7, "CURR_QP_STATE_MOD"],
  [1 << 8, "SHUTDOWN_PORT"],
  [1 << 9, "INIT_TYPE"],
  [1 << 10, "PORT_ACTIVE_EVENT"],
  [1 << 11, "SYS_IMAGE_GUID"],
  [1 << 12, "RC_RNR_NAK_GEN"],
  [1 << 13, "SRQ_RESIZE"],
  [1 << 14, "N_NOTIFY_CQ"],
  [1 << 17, "MEM_WINDOW"],
  [1 << 18, "UD_IP_CSUM"],
  [1 << 20, "XRC"],
  [1 << 21, "MEM_MGT_EXTENSIONS"],
  [1 << 23, "MEM_WINDOW_TYPE_2A"],
  [1 << 24, "MEM_WINDOW_TYPE_2B"],
  [1 << 25, "RC_IP_CSUM"],
  [1 << 26, "RAW_IP_CSUM"],
  [1 << 29, "MANAGED_FLOW_STEERING"],
];

const PORT_STATE_NUMBERS: Record<string, number> = {
  NOP: 0,
  DOWN: 1,
  INIT: 2,
  ARMED: 3,
  ACTIVE: 4,
  ACTIVE_DEFER: 5,
};

function pick(table: Record<number, string>, value: number, fallback: string): string {
  return table[value] ?? fallback;
}

const ATOMIC_CAP: Record<number, string> = { 0: "ATOMIC_NONE", 1: "ATOMIC_HCA", 2: "ATOMIC_GLOB" };
const WIDTH: Record<number, string> = { 1: "1", 2: "4", 4: "8", 8: "12", 16: "2" };
const SPEED: Record<number, string> = {
  1: "2.5 Gbps",
  2: "5.0 Gbps",
  4: "10.0 Gbps",
  8: "10.0 Gbps",
  16: "14.0 Gbps",
  32: "25.0 Gbps",
  64: "50.0 Gbps",
  128: "100.0 Gbps",
  256: "200.0 Gbps",
};
const VL: Record<number, string> = { 1: "1", 2: "2", 3: "4", 4: "8", 5: "15" };
const PHYS_STATE: Record<number, string> = {
  1: "SLEEP",
  2: "POLLING",
  3: "DISABLED",
  4: "PORT_CONFIGURATION TRAINNING",
  5: "LINK_UP",
  6: "LINK_ERROR_RECOVERY",
  7: "PHY TEST",
};
const PORT_STATE: Record<number, string> = {
  1: "PORT_DOWN",
  2: "PORT_INIT",
  3: "PORT_ARMED",
  4: "PORT_ACTIVE",
};

/**
 * A GUID as devinfo's `guid_str`: four groups of four hex digits.
 *
 * @example
 * ```ts
 * import { guidText } from "./devinfo_format.ts";
 * if (guidText(0x027f00fffe00001fn) !== "027f:00ff:fe00:001f") throw new Error("guid");
 * ```
 */
export function guidText(guid: bigint): string {
  const groups: string[] = [];
  for (let shift = 48n; shift >= 0n; shift -= 16n) {
    groups.push(Number((guid >> shift) & 0xffffn).toString(16).padStart(4, "0"));
  }
  return groups.join(":");
}

function hex(value: number | bigint, digits = 0): string {
  return value.toString(16).padStart(digits, "0");
}

function deviceLines(d: DeviceAttr): string[] {
  const flags = d.deviceCapFlags >>> 0;
  const known = DEVICE_CAP_FLAGS.reduce((m, [bit]) => m | bit, 0) >>> 0;
  const lines = [
    `\tmax_mr_size:\t\t\t0x${hex(d.maxMrSize)}`,
    `\tpage_size_cap:\t\t\t0x${hex(d.pageSizeCap)}`,
    `\tmax_qp:\t\t\t\t${d.maxQp}`,
    `\tmax_qp_wr:\t\t\t${d.maxQpWr}`,
    `\tdevice_cap_flags:\t\t0x${hex(flags, 8)}`,
    ...DEVICE_CAP_FLAGS.filter(([bit]) => (flags & bit) !== 0).map(([, name]) =>
      `\t\t\t\t\t${name}`
    ),
  ];
  if ((flags & ~known) !== 0) {
    lines.push(`\t\t\t\t\tUnknown flags: 0x${hex((flags & ~known) >>> 0).toUpperCase()}`);
  }
  lines.push(
    `\tmax_sge:\t\t\t${d.maxSge}`,
    `\tmax_sge_rd:\t\t\t${d.maxSgeRd}`,
    `\tmax_cq:\t\t\t\t${d.maxCq}`,
    `\tmax_cqe:\t\t\t${d.maxCqe}`,
    `\tmax_mr:\t\t\t\t${d.maxMr}`,
    `\tmax_pd:\t\t\t\t${d.maxPd}`,
    `\tmax_qp_rd_atom:\t\t\t${d.maxQpRdAtom}`,
    `\tmax_ee_rd_atom:\t\t\t0`,
    `\tmax_res_rd_atom:\t\t${d.maxResRdAtom}`,
    `\tmax_qp_init_rd_atom:\t\t${d.maxQpInitRdAtom}`,
    `\tmax_ee_init_rd_atom:\t\t0`,
    `\tatomic_cap:\t\t\t${
      pick(ATOMIC_CAP, d.atomicCap, "invalid atomic capability")
    } (${d.atomicCap})`,
    `\tmax_ee:\t\t\t\t0`,
    `\tmax_rdd:\t\t\t0`,
    `\tmax_mw:\t\t\t\t0`,
    `\tmax_raw_ipv6_qp:\t\t0`,
    `\tmax_raw_ethy_qp:\t\t0`,
    `\tmax_mcast_grp:\t\t\t0`,
    `\tmax_mcast_qp_attach:\t\t0`,
    `\tmax_total_mcast_qp_attach:\t0`,
    `\tmax_ah:\t\t\t\t${d.maxAh}`,
    `\tmax_fmr:\t\t\t0`,
    `\tmax_srq:\t\t\t${d.maxSrq}`,
  );
  if (d.maxSrq > 0) {
    lines.push(`\tmax_srq_wr:\t\t\t${d.maxSrqWr}`, `\tmax_srq_sge:\t\t\t${d.maxSrqSge}`);
  }
  lines.push(
    `\tmax_pkeys:\t\t\t${d.maxPkeys}`,
    `\tlocal_ca_ack_delay:\t\t0`,
    `\tgeneral_odp_caps:`,
    ...["rc", "uc", "ud", "xrc"].flatMap((t) => [`\t${t}_odp_caps:`, `\t\t\t\t\tNO SUPPORT`]),
    `\tcompletion_timestamp_mask not supported`,
    `\tcore clock not supported`,
    `\tdevice_cap_flags_ex:\t\t0x0`,
    `\ttso_caps:`,
    `\t\tmax_tso:\t\t\t0`,
    `\trss_caps:`,
    `\t\tmax_rwq_indirection_tables:\t\t\t0`,
    `\t\tmax_rwq_indirection_table_size:\t\t\t0`,
    `\t\trx_hash_function:\t\t\t\t0x0`,
    `\t\trx_hash_fields_mask:\t\t\t\t0x0`,
    `\tmax_wq_type_rq:\t\t\t0`,
    `\tpacket_pacing_caps:`,
    `\t\tqp_rate_limit_min:\t0kbps`,
    `\t\tqp_rate_limit_max:\t0kbps`,
    `\ttag matching not supported`,
  );
  return lines;
}

function portLines(port: DevinfoPort, verbose: boolean): string[] {
  const p = port.attr;
  const state = PORT_STATE_NUMBERS[p.state] ?? 0;
  const maxMtu = mtuToEnum(p.maxMtu);
  const activeMtu = mtuToEnum(p.activeMtu);
  const lines = [
    `\t\tport:\t${port.num}`,
    `\t\t\tstate:\t\t\t${pick(PORT_STATE, state, "invalid state")} (${state})`,
    `\t\t\tmax_mtu:\t\t${p.maxMtu} (${maxMtu})`,
    `\t\t\tactive_mtu:\t\t${p.activeMtu} (${activeMtu})`,
    `\t\t\tsm_lid:\t\t\t0`,
    `\t\t\tport_lid:\t\t${p.lid}`,
    `\t\t\tport_lmc:\t\t0x00`,
    `\t\t\tlink_layer:\t\t${p.linkLayer}`,
  ];
  if (verbose) {
    lines.push(
      `\t\t\tmax_msg_sz:\t\t0x${hex(p.maxMsgSz)}`,
      `\t\t\tport_cap_flags:\t\t0x${hex(p.portCapFlags >>> 0, 8)}`,
      `\t\t\tport_cap_flags2:\t0x0000`,
      `\t\t\tmax_vl_num:\t\t${pick(VL, 0, "invalid value")} (0)`,
      `\t\t\tbad_pkey_cntr:\t\t0x0`,
      `\t\t\tqkey_viol_cntr:\t\t0x0`,
      `\t\t\tsm_sl:\t\t\t0`,
      `\t\t\tpkey_tbl_len:\t\t${p.pkeyTblLen}`,
      `\t\t\tgid_tbl_len:\t\t${p.gidTblLen}`,
      `\t\t\tsubnet_timeout:\t\t0`,
      `\t\t\tinit_type_reply:\t0`,
      `\t\t\tactive_width:\t\t${pick(WIDTH, p.activeWidth, "invalid width")}X (${p.activeWidth})`,
      `\t\t\tactive_speed:\t\t${pick(SPEED, p.activeSpeed, "invalid speed")} (${p.activeSpeed})`,
      // Printed for transport InfiniBand, which RoCE devices report.
      `\t\t\tphys_state:\t\t${
        pick(PHYS_STATE, p.physState, "invalid physical state")
      } (${p.physState})`,
    );
    port.gids.forEach((gid, i) => {
      const raw = parseGid(gid);
      // devinfo skips entries whose interface id (last 8 bytes) is zero.
      if (raw.subarray(8).every((b) => b === 0)) return;
      const type = p.linkLayer === "Ethernet" ? ", RoCE v2" : "";
      lines.push(`\t\t\tGID[${String(i).padStart(3)}]:\t\t${inetNtop6(raw)}${type}`);
    });
  }
  lines.push("");
  return lines;
}

/**
 * The output of `ibv_devinfo` (or `ibv_devinfo -v` with `verbose`) for one
 * device, ending with a newline.
 */
export function formatDevinfo(dev: DevinfoDevice, options: { verbose: boolean }): string {
  const d = dev.attr;
  const lines = [
    `hca_id:\t${dev.name}`,
    `\ttransport:\t\t\tInfiniBand (0)`,
    ...(d.fwVer.length > 0 ? [`\tfw_ver:\t\t\t\t${d.fwVer}`] : []),
    `\tnode_guid:\t\t\t${guidText(d.nodeGuid)}`,
    `\tsys_image_guid:\t\t\t${guidText(d.sysImageGuid)}`,
    `\tvendor_id:\t\t\t0x${hex(d.vendorId, 4)}`,
    `\tvendor_part_id:\t\t\t${d.vendorPartId}`,
    `\thw_ver:\t\t\t\t0x${hex(d.hwVer).toUpperCase()}`,
    `\tphys_port_cnt:\t\t\t${d.physPortCnt}`,
  ];
  if (options.verbose) {
    lines.push(...deviceLines(d), `\tnum_comp_vectors:\t\t${dev.numCompVectors}`);
  }
  for (const port of dev.ports) lines.push(...portLines(port, options.verbose));
  return lines.join("\n") + "\n";
}
