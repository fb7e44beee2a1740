/**
 * The device configuration space: what `GET_CONFIG` returns.
 *
 * It carries the device attributes, the port attributes and the GID table, as
 * `ibv_query_device`, `ibv_query_port` and `ibv_query_gid` report them. The
 * layout is fixed binary, little-endian, like every VIRTIO config space; one
 * table of fields drives both encoding and decoding so the two sides cannot
 * drift apart.
 *
 * @module
 */

/** Device attributes, named as `struct ibv_device_attr` in camelCase. */
export interface DeviceAttr {
  /** Firmware version string (at most 31 bytes of UTF-8). */
  fwVer: string;
  /** Node GUID, derived from the host address. */
  nodeGuid: bigint;
  /** System image GUID. */
  sysImageGuid: bigint;
  /** Largest memory region, in bytes: the guest memory size. */
  maxMrSize: bigint;
  /** Supported page sizes (bit n = 2^n bytes). */
  pageSizeCap: bigint;
  /** IEEE vendor id. */
  vendorId: number;
  /** Vendor part id. */
  vendorPartId: number;
  /** Hardware version. */
  hwVer: number;
  /** Maximum number of QPs. */
  maxQp: number;
  /** Maximum outstanding work requests on any send or receive queue. */
  maxQpWr: number;
  /** Capability flags (IBV_DEVICE_* bits). */
  deviceCapFlags: number;
  /** Maximum scatter/gather entries per WR on non-RD QPs. */
  maxSge: number;
  /** Maximum scatter/gather entries per RDMA READ. */
  maxSgeRd: number;
  /** Maximum number of CQs. */
  maxCq: number;
  /** Maximum entries per CQ. */
  maxCqe: number;
  /** Maximum number of MRs. */
  maxMr: number;
  /** Maximum number of PDs. */
  maxPd: number;
  /** Maximum outstanding RDMA READ/atomic requests a QP can be the target of. */
  maxQpRdAtom: number;
  /** Maximum RDMA READ/atomic resources the device holds as a target. */
  maxResRdAtom: number;
  /** Maximum outstanding RDMA READ/atomic requests a QP can initiate. */
  maxQpInitRdAtom: number;
  /** Atomic support: 0 none, 1 within this device (HCA), 2 global. */
  atomicCap: number;
  /** Maximum number of address handles. */
  maxAh: number;
  /** Maximum number of SRQs. */
  maxSrq: number;
  /** Maximum outstanding WRs on an SRQ. */
  maxSrqWr: number;
  /** Maximum scatter/gather entries per SRQ WR. */
  maxSrqSge: number;
  /** Number of P_Keys per port. */
  maxPkeys: number;
  /** Number of physical ports. */
  physPortCnt: number;
}

/** Port attributes, named as `struct ibv_port_attr` in camelCase. */
export interface PortAttr {
  /** Logical port state: "DOWN", "INIT", "ARMED", "ACTIVE". */
  state: PortState;
  /** Largest path MTU the port supports, in bytes (256..4096). */
  maxMtu: number;
  /** Path MTU currently in use, in bytes. */
  activeMtu: number;
  /** Entries in the GID table. */
  gidTblLen: number;
  /** Port capability flags. */
  portCapFlags: number;
  /** Largest message, in bytes. */
  maxMsgSz: number;
  /** Entries in the P_Key table. */
  pkeyTblLen: number;
  /** Local identifier (0 on RoCE). */
  lid: number;
  /** Physical state: 5 = LinkUp. */
  physState: number;
  /** Link layer: "Ethernet" for RoCE. */
  linkLayer: "Ethernet" | "InfiniBand";
  /** Active link width code. */
  activeWidth: number;
  /** Active link speed code. */
  activeSpeed: number;
}

/** Logical port states of `enum ibv_port_state`. */
export type PortState = "NOP" | "DOWN" | "INIT" | "ARMED" | "ACTIVE" | "ACTIVE_DEFER";

const PORT_STATES: readonly PortState[] = [
  "NOP",
  "DOWN",
  "INIT",
  "ARMED",
  "ACTIVE",
  "ACTIVE_DEFER",
];

/** Everything the config space holds. */
export interface DeviceConfig {
  /** Device attributes. */
  device: DeviceAttr;
  /** Attributes of port 1 (vrdma has one port). */
  port: PortAttr;
  /** GID table of port 1, as IPv6 text (`::ffff:127.0.0.2`). */
  gids: string[];
}

type FieldType = "u8" | "u32" | "u64" | "fw";
type Field = readonly [group: "device" | "port", name: string, type: FieldType];

/** The fields in config-space order. Appending keeps old drivers working. */
const FIELDS: readonly Field[] = [
  ["device", "fwVer", "fw"],
  ["device", "nodeGuid", "u64"],
  ["device", "sysImageGuid", "u64"],
  ["device", "maxMrSize", "u64"],
  ["device", "pageSizeCap", "u64"],
  ["device", "vendorId", "u32"],
  ["device", "vendorPartId", "u32"],
  ["device", "hwVer", "u32"],
  ["device", "maxQp", "u32"],
  ["device", "maxQpWr", "u32"],
  ["device", "deviceCapFlags", "u32"],
  ["device", "maxSge", "u32"],
  ["device", "maxSgeRd", "u32"],
  ["device", "maxCq", "u32"],
  ["device", "maxCqe", "u32"],
  ["device", "maxMr", "u32"],
  ["device", "maxPd", "u32"],
  ["device", "maxQpRdAtom", "u32"],
  ["device", "maxResRdAtom", "u32"],
  ["device", "maxQpInitRdAtom", "u32"],
  ["device", "atomicCap", "u32"],
  ["device", "maxAh", "u32"],
  ["device", "maxSrq", "u32"],
  ["device", "maxSrqWr", "u32"],
  ["device", "maxSrqSge", "u32"],
  ["device", "maxPkeys", "u32"],
  ["device", "physPortCnt", "u32"],
  ["port", "state", "u32"],
  ["port", "maxMtu", "u32"],
  ["port", "activeMtu", "u32"],
  ["port", "gidTblLen", "u32"],
  ["port", "portCapFlags", "u32"],
  ["port", "maxMsgSz", "u32"],
  ["port", "pkeyTblLen", "u32"],
  ["port", "lid", "u32"],
  ["port", "physState", "u32"],
  ["port", "linkLayer", "u32"],
  ["port", "activeWidth", "u32"],
  ["port", "activeSpeed", "u32"],
];

const SIZES: Record<FieldType, number> = { u8: 1, u32: 4, u64: 8, fw: 32 };

/** Magic at offset 0: "VRDM" little-endian. */
export const CONFIG_MAGIC = 0x4d445256;
/** Layout version at offset 4. */
export const CONFIG_VERSION = 1;
/** Most GID entries the config space carries. */
export const MAX_GIDS = 16;

const HEADER_BYTES = 12; // magic u32, version u32, gid count u32
const FIELDS_BYTES = FIELDS.reduce((n, [, , t]) => n + SIZES[t], 0);

/** Size of the config space in bytes. */
export const CONFIG_SIZE: number = HEADER_BYTES + FIELDS_BYTES + MAX_GIDS * 16;

const MTUS = [256, 512, 1024, 2048, 4096];

/** Encodes the config space. Throws a `RangeError` naming a value that does not fit. */
export function encodeDeviceConfig(config: DeviceConfig): Uint8Array {
  if (config.gids.length > MAX_GIDS) {
    throw new RangeError(
      `${config.gids.length} GIDs do not fit the config space (max ${MAX_GIDS})`,
    );
  }
  const out = new Uint8Array(CONFIG_SIZE);
  const view = new DataView(out.buffer);
  view.setUint32(0, CONFIG_MAGIC, true);
  view.setUint32(4, CONFIG_VERSION, true);
  view.setUint32(8, config.gids.length, true);
  let off = HEADER_BYTES;
  for (const [group, name, type] of FIELDS) {
    let value = (config[group] as unknown as Record<string, unknown>)[name];
    if (group === "port" && name === "state") value = PORT_STATES.indexOf(value as PortState);
    if (group === "port" && name === "linkLayer") value = value === "Ethernet" ? 2 : 1;
    if (type === "fw") {
      const text = new TextEncoder().encode(String(value));
      if (text.length > 31) throw new RangeError(`fwVer "${value}" is longer than 31 bytes`);
      out.set(text, off);
    } else if (type === "u64") {
      view.setBigUint64(off, BigInt(value as bigint), true);
    } else {
      if (!Number.isInteger(value) || (value as number) < 0 || (value as number) > 0xffff_ffff) {
        throw new RangeError(`${group}.${name} = ${value} is not a u32`);
      }
      view.setUint32(off, value as number, true);
    }
    off += SIZES[type];
  }
  for (const gid of config.gids) {
    out.set(parseGid(gid), off);
    off += 16;
  }
  return out;
}

/** Decodes the config space. Throws a `SyntaxError` naming what is malformed. */
export function decodeDeviceConfig(bytes: Uint8Array): DeviceConfig {
  if (bytes.length < CONFIG_SIZE) {
    throw new SyntaxError(`config space is ${bytes.length} bytes, expected ${CONFIG_SIZE}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = view.getUint32(0, true);
  if (magic !== CONFIG_MAGIC) throw new SyntaxError(`config magic 0x${magic.toString(16)}`);
  const version = view.getUint32(4, true);
  if (version !== CONFIG_VERSION) throw new SyntaxError(`config version ${version} is unknown`);
  const gidCount = view.getUint32(8, true);
  if (gidCount > MAX_GIDS) throw new SyntaxError(`config claims ${gidCount} GIDs`);
  const device: Record<string, unknown> = {};
  const port: Record<string, unknown> = {};
  let off = HEADER_BYTES;
  for (const [group, name, type] of FIELDS) {
    let value: unknown;
    if (type === "fw") {
      const raw = bytes.subarray(off, off + 32);
      const end = raw.indexOf(0);
      value = new TextDecoder().decode(raw.subarray(0, end < 0 ? 31 : end));
    } else if (type === "u64") value = view.getBigUint64(off, true);
    else value = view.getUint32(off, true);
    if (group === "port" && name === "state") {
      value = PORT_STATES[value as number] ?? "DOWN";
    }
    if (group === "port" && name === "linkLayer") value = value === 2 ? "Ethernet" : "InfiniBand";
    (group === "device" ? device : port)[name] = value;
    off += SIZES[type];
  }
  for (const key of ["maxMtu", "activeMtu"]) {
    if (!MTUS.includes(port[key] as number)) {
      throw new SyntaxError(`port ${key} ${port[key]} is not an IB MTU`);
    }
  }
  const gids: string[] = [];
  for (let i = 0; i < gidCount; i++) {
    gids.push(formatGid(bytes.subarray(off + i * 16, off + i * 16 + 16)));
  }
  return { device: device as unknown as DeviceAttr, port: port as unknown as PortAttr, gids };
}

/**
 * Parses a GID in IPv6 text form (`::ffff:127.0.0.2`, `fe80::1`) into its 16
 * bytes in wire order.
 *
 * @example
 * ```ts
 * import { parseGid } from "./device_config.ts";
 * const b = parseGid("::ffff:10.0.0.1");
 * if (b[10] !== 0xff || b[15] !== 1) throw new Error("bad parse");
 * ```
 */
export function parseGid(text: string): Uint8Array {
  const bad = () => new SyntaxError(`"${text}" is not a GID (IPv6 address)`);
  // A dotted IPv4 tail stands for the last two 16-bit words.
  let hex = text;
  const v4 = /^(.*:)(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (v4) {
    const o = v4.slice(2, 6).map(Number);
    if (o.some((x) => x > 255)) throw bad();
    hex = `${v4[1]}${((o[0]! << 8) | o[1]!).toString(16)}:${((o[2]! << 8) | o[3]!).toString(16)}`;
  }
  const halves = hex.split("::");
  if (halves.length > 2) throw bad();
  const words = (s: string) =>
    s === "" ? [] : s.split(":").map((w) => {
      if (!/^[0-9a-fA-F]{1,4}$/.test(w)) throw bad();
      return parseInt(w, 16);
    });
  const left = words(halves[0]!);
  const right = halves.length === 2 ? words(halves[1]!) : [];
  const zeros = 8 - left.length - right.length;
  if (halves.length === 2 ? zeros < 1 : zeros !== 0) throw bad();
  const all = [...left, ...new Array<number>(halves.length === 2 ? zeros : 0).fill(0), ...right];
  const out = new Uint8Array(16);
  all.forEach((w, i) => {
    out[i * 2] = w >> 8;
    out[i * 2 + 1] = w & 0xff;
  });
  return out;
}

/** Formats 16 GID bytes as IPv6 text, IPv4-mapped addresses as `::ffff:a.b.c.d`. */
export function formatGid(bytes: Uint8Array): string {
  if (bytes.length !== 16) throw new RangeError(`a GID is 16 bytes, got ${bytes.length}`);
  const mapped = bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff &&
    bytes[11] === 0xff;
  if (mapped) return `::ffff:${bytes[12]}.${bytes[13]}.${bytes[14]}.${bytes[15]}`;
  const words: number[] = [];
  for (let i = 0; i < 16; i += 2) words.push((bytes[i]! << 8) | bytes[i + 1]!);
  // Compress the longest run of zero words (RFC 5952).
  let best = -1, bestLen = 0;
  for (let i = 0; i < 8;) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen && j - i > 1) [best, bestLen] = [i, j - i];
    i = j;
  }
  const hex = words.map((w) => w.toString(16));
  if (best < 0) return hex.join(":");
  return hex.slice(0, best).join(":") + "::" + hex.slice(best + bestLen).join(":");
}

/** Path MTU in bytes to the IBV_MTU enum (256 -> 1 ... 4096 -> 5). */
export function mtuToEnum(bytes: number): number {
  const i = MTUS.indexOf(bytes);
  if (i < 0) throw new RangeError(`${bytes} is not an IB path MTU (256, 512, 1024, 2048, 4096)`);
  return i + 1;
}

/** IBV_MTU enum to bytes. */
export function mtuFromEnum(value: number): number {
  const bytes = MTUS[value - 1];
  if (bytes === undefined) throw new RangeError(`${value} is not an IBV_MTU value (1..5)`);
  return bytes;
}
