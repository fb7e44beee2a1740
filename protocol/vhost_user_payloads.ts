/**
 * Typed payloads of vhost-user messages and their little-endian encodings.
 *
 * Decoders check the shape only: the exact byte count each layout needs, and
 * reserved bits and values. Whether a queue index, a memory table or a config
 * range makes sense for this device is `validateMessage`'s job, which calls
 * these decoders first. Decoders throw {@linkcode VhostUserSyntaxError} (or
 * {@linkcode VhostUserRangeError} for a region count above 8); pass the
 * request so messages name it. Encoders throw a plain `RangeError` for values
 * that do not fit their fields: those are local programming errors.
 *
 * u64 fields are `bigint` so every address, size and feature word is exact.
 *
 * @module
 */

import {
  CONFIG_FLAG_MIGRATION,
  CONFIG_HEADER_SIZE,
  MAX_MEM_REGIONS,
  MAX_PAYLOAD,
  MEM_REGION_SIZE,
  MEM_TABLE_HEADER_SIZE,
  requestName,
  VRING_ADDR_SIZE,
  VRING_F_LOG,
  VRING_INDEX_MASK,
  VRING_NOFD_MASK,
  VRING_STATE_SIZE,
} from "./vhost_user_constants.ts";
import { hex, VhostUserRangeError, VhostUserSyntaxError } from "./vhost_user_errors.ts";

/** A vring state description: SET_VRING_NUM, SET/GET_VRING_BASE, SET_VRING_ENABLE. */
export interface VringState {
  /** Queue index. */
  index: number;
  /** Queue size, ring base index or enable flag, depending on the request. */
  num: number;
}

/** A vring address description (SET_VRING_ADDR). */
export interface VringAddr {
  /** Queue index. */
  index: number;
  /** VRING_F_LOG (bit 0) or 0; other bits are reserved. */
  flags: number;
  /** Address of the descriptor table. */
  descUserAddr: bigint;
  /** Address of the used ring. */
  usedUserAddr: bigint;
  /** Address of the available ring. */
  availUserAddr: bigint;
  /** Guest address for dirty logging of the used ring. */
  logGuestAddr: bigint;
}

/** The u64 of SET_VRING_KICK / SET_VRING_CALL / SET_VRING_ERR. */
export interface VringFile {
  /** Queue index (bits 0-7). */
  index: number;
  /** Bit 8: no fd travels with the message; poll instead. */
  noFd: boolean;
}

/** One memory region of SET_MEM_TABLE. Its fd travels separately, in the same order. */
export interface MemoryRegionDesc {
  /** Guest address of the region's first byte. */
  guestPhysAddr: bigint;
  /** Region size in bytes. */
  memorySize: bigint;
  /** The front-end's own address of the region (vring addresses are in this space). */
  userspaceAddr: bigint;
  /** Offset of the region's first byte in its fd's mapping. */
  mmapOffset: bigint;
}

/** A virtio device config space access (GET_CONFIG / SET_CONFIG). */
export interface DeviceConfig {
  /** Offset into the device config space. */
  offset: number;
  /** CONFIG_FLAG_FRONTEND (0) or CONFIG_FLAG_MIGRATION (1). */
  flags: number;
  /** The config bytes; the wire `size` field is `data.length`. */
  data: Uint8Array;
}

function viewOf(payload: Uint8Array): DataView {
  return new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
}

function label(request: number | undefined, kind: string): string {
  return request === undefined ? kind : requestName(request);
}

function expectSize(
  payload: Uint8Array,
  expected: number,
  request: number | undefined,
  kind: string,
): void {
  if (payload.length !== expected) {
    throw new VhostUserSyntaxError(
      request,
      "size",
      `${label(request, kind)}: payload is ${payload.length} bytes, expected ${expected}`,
    );
  }
}

function checkU32(field: string, value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
    throw new RangeError(`${field} ${value} is not a u32`);
  }
  return value;
}

function checkU64(field: string, value: bigint): bigint {
  // DataView.setBigUint64 would silently wrap a negative or oversized value.
  if (typeof value !== "bigint" || value < 0n || value > 0xffff_ffff_ffff_ffffn) {
    throw new RangeError(`${field} ${value} is not a u64`);
  }
  return value;
}

/**
 * Encodes a u64 payload (features, protocol features, queue count, ack status).
 *
 * @example
 * ```ts
 * import { decodeU64, encodeU64 } from "./vhost_user_payloads.ts";
 * if (decodeU64(encodeU64(0x1_0000_0001n)) !== 0x1_0000_0001n) throw new Error("round trip");
 * ```
 */
export function encodeU64(value: bigint): Uint8Array {
  const out = new Uint8Array(8);
  viewOf(out).setBigUint64(0, checkU64("u64", value), true);
  return out;
}

/** Decodes a u64 payload; it must be exactly 8 bytes. */
export function decodeU64(payload: Uint8Array, request?: number): bigint {
  expectSize(payload, 8, request, "u64");
  return viewOf(payload).getBigUint64(0, true);
}

/** Encodes a vring state description (8 bytes). */
export function encodeVringState(state: VringState): Uint8Array {
  const out = new Uint8Array(VRING_STATE_SIZE);
  const v = viewOf(out);
  v.setUint32(0, checkU32("index", state.index), true);
  v.setUint32(4, checkU32("num", state.num), true);
  return out;
}

/** Decodes a vring state description; it must be exactly 8 bytes. */
export function decodeVringState(payload: Uint8Array, request?: number): VringState {
  expectSize(payload, VRING_STATE_SIZE, request, "vring state");
  const v = viewOf(payload);
  return { index: v.getUint32(0, true), num: v.getUint32(4, true) };
}

/** Encodes a vring address description (40 bytes). */
export function encodeVringAddr(addr: VringAddr): Uint8Array {
  const out = new Uint8Array(VRING_ADDR_SIZE);
  const v = viewOf(out);
  v.setUint32(0, checkU32("index", addr.index), true);
  v.setUint32(4, checkU32("flags", addr.flags), true);
  v.setBigUint64(8, checkU64("descUserAddr", addr.descUserAddr), true);
  v.setBigUint64(16, checkU64("usedUserAddr", addr.usedUserAddr), true);
  v.setBigUint64(24, checkU64("availUserAddr", addr.availUserAddr), true);
  v.setBigUint64(32, checkU64("logGuestAddr", addr.logGuestAddr), true);
  return out;
}

/** Decodes a vring address description: exactly 40 bytes, no flag but VRING_F_LOG. */
export function decodeVringAddr(payload: Uint8Array, request?: number): VringAddr {
  expectSize(payload, VRING_ADDR_SIZE, request, "vring address");
  const v = viewOf(payload);
  const flags = v.getUint32(4, true);
  if ((flags & ~VRING_F_LOG) !== 0) {
    throw new VhostUserSyntaxError(
      request,
      "flags",
      `${label(request, "vring address")}: flags ${hex(flags)} has reserved bits set`,
    );
  }
  return {
    index: v.getUint32(0, true),
    flags,
    descUserAddr: v.getBigUint64(8, true),
    usedUserAddr: v.getBigUint64(16, true),
    availUserAddr: v.getBigUint64(24, true),
    logGuestAddr: v.getBigUint64(32, true),
  };
}

/**
 * Encodes the u64 of SET_VRING_KICK / CALL / ERR.
 *
 * @example
 * ```ts
 * import { decodeVringFile, encodeVringFile } from "./vhost_user_payloads.ts";
 * const bytes = encodeVringFile({ index: 3, noFd: true });
 * if (bytes[0] !== 3 || bytes[1] !== 1) throw new Error("index in bits 0-7, NOFD in bit 8");
 * if (!decodeVringFile(bytes).noFd) throw new Error("round trip");
 * ```
 */
export function encodeVringFile(file: VringFile): Uint8Array {
  if (!Number.isInteger(file.index) || file.index < 0 || file.index > VRING_INDEX_MASK) {
    throw new RangeError(`index ${file.index} does not fit the 8-bit queue index field`);
  }
  return encodeU64(BigInt(file.index | (file.noFd ? VRING_NOFD_MASK : 0)));
}

/** Decodes the u64 of SET_VRING_KICK / CALL / ERR; bits 9-63 are reserved and must be 0. */
export function decodeVringFile(payload: Uint8Array, request?: number): VringFile {
  const value = decodeU64(payload, request);
  if ((value & ~BigInt(VRING_INDEX_MASK | VRING_NOFD_MASK)) !== 0n) {
    throw new VhostUserSyntaxError(
      request,
      "u64",
      `${label(request, "vring file")}: u64 ${hex(value)} has reserved bits set ` +
        `(only bits 0-8 are defined)`,
    );
  }
  const bits = Number(value);
  return { index: bits & VRING_INDEX_MASK, noFd: (bits & VRING_NOFD_MASK) !== 0 };
}

/**
 * Encodes a memory regions description with exactly `regions.length`
 * regions, as QEMU, DPDK and rust-vmm send it (8 + 32 × n bytes).
 */
export function encodeMemoryTable(regions: readonly MemoryRegionDesc[]): Uint8Array {
  if (regions.length > MAX_MEM_REGIONS) {
    throw new RangeError(`${regions.length} memory regions, at most ${MAX_MEM_REGIONS} fit`);
  }
  const out = new Uint8Array(MEM_TABLE_HEADER_SIZE + MEM_REGION_SIZE * regions.length);
  const v = viewOf(out);
  v.setUint32(0, regions.length, true);
  regions.forEach((r, i) => {
    const at = MEM_TABLE_HEADER_SIZE + MEM_REGION_SIZE * i;
    v.setBigUint64(at, checkU64(`regions[${i}].guestPhysAddr`, r.guestPhysAddr), true);
    v.setBigUint64(at + 8, checkU64(`regions[${i}].memorySize`, r.memorySize), true);
    v.setBigUint64(at + 16, checkU64(`regions[${i}].userspaceAddr`, r.userspaceAddr), true);
    v.setBigUint64(at + 24, checkU64(`regions[${i}].mmapOffset`, r.mmapOffset), true);
  });
  return out;
}

/**
 * Decodes a memory regions description. `nregions` must be at most 8 and the
 * payload either 8 + 32 × nregions bytes (what QEMU, DPDK and rust-vmm send)
 * or the full 8-region array of 264 bytes (what the specification's older
 * wording "contains 8 regions" describes); slots past `nregions` are ignored.
 * The padding word is ignored too: the specification never requires it to be
 * zero, so a C front-end may send whatever its stack held.
 */
export function decodeMemoryTable(payload: Uint8Array, request?: number): MemoryRegionDesc[] {
  const name = label(request, "memory table");
  if (payload.length < MEM_TABLE_HEADER_SIZE) {
    throw new VhostUserSyntaxError(
      request,
      "size",
      `${name}: payload is ${payload.length} bytes, expected at least ${MEM_TABLE_HEADER_SIZE}`,
    );
  }
  const v = viewOf(payload);
  const nregions = v.getUint32(0, true);
  if (nregions > MAX_MEM_REGIONS) {
    throw new VhostUserRangeError(
      request,
      "nregions",
      `${name}: nregions ${nregions} is above the maximum ${MAX_MEM_REGIONS}`,
    );
  }
  const exact = MEM_TABLE_HEADER_SIZE + MEM_REGION_SIZE * nregions;
  const full = MEM_TABLE_HEADER_SIZE + MEM_REGION_SIZE * MAX_MEM_REGIONS;
  if (payload.length !== exact && payload.length !== full) {
    throw new VhostUserSyntaxError(
      request,
      "size",
      `${name}: payload is ${payload.length} bytes, expected ${exact} for nregions ` +
        `${nregions} (or ${full})`,
    );
  }
  const regions: MemoryRegionDesc[] = [];
  for (let i = 0; i < nregions; i++) {
    const at = MEM_TABLE_HEADER_SIZE + MEM_REGION_SIZE * i;
    regions.push({
      guestPhysAddr: v.getBigUint64(at, true),
      memorySize: v.getBigUint64(at + 8, true),
      userspaceAddr: v.getBigUint64(at + 16, true),
      mmapOffset: v.getBigUint64(at + 24, true),
    });
  }
  return regions;
}

/** Encodes a device config access: 12-byte header, then `data`. */
export function encodeConfig(config: DeviceConfig): Uint8Array {
  if (CONFIG_HEADER_SIZE + config.data.length > MAX_PAYLOAD) {
    throw new RangeError(
      `config data of ${config.data.length} bytes does not fit MAX_PAYLOAD ${MAX_PAYLOAD}`,
    );
  }
  const out = new Uint8Array(CONFIG_HEADER_SIZE + config.data.length);
  const v = viewOf(out);
  v.setUint32(0, checkU32("offset", config.offset), true);
  v.setUint32(4, config.data.length, true);
  v.setUint32(8, checkU32("flags", config.flags), true);
  out.set(config.data, CONFIG_HEADER_SIZE);
  return out;
}

/**
 * Decodes a device config access: the payload must be exactly 12 + `size`
 * bytes and `flags` 0 (front-end) or 1 (migration). `data` is a copy.
 */
export function decodeConfig(payload: Uint8Array, request?: number): DeviceConfig {
  const name = label(request, "config");
  if (payload.length < CONFIG_HEADER_SIZE) {
    throw new VhostUserSyntaxError(
      request,
      "size",
      `${name}: payload is ${payload.length} bytes, expected at least ${CONFIG_HEADER_SIZE}`,
    );
  }
  const v = viewOf(payload);
  const size = v.getUint32(4, true);
  if (payload.length !== CONFIG_HEADER_SIZE + size) {
    throw new VhostUserSyntaxError(
      request,
      "size",
      `${name}: payload is ${payload.length} bytes, expected ${CONFIG_HEADER_SIZE} + size ` +
        `${size} = ${CONFIG_HEADER_SIZE + size}`,
    );
  }
  const flags = v.getUint32(8, true);
  if (flags > CONFIG_FLAG_MIGRATION) {
    throw new VhostUserSyntaxError(
      request,
      "flags",
      `${name}: flags ${flags} is neither 0 (front-end) nor 1 (migration)`,
    );
  }
  return { offset: v.getUint32(0, true), flags, data: payload.slice(CONFIG_HEADER_SIZE) };
}
