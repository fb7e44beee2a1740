/**
 * The attributes a vrdma device reports: the limits the device model enforces
 * and what `ibv_query_device` / `ibv_query_port` show a guest.
 *
 * @module
 */

import type { DeviceAttr, DeviceConfig, PortAttr } from "../../protocol/device_config.ts";

/** Limits every guest device gets (the minimums, and rxe's where it has one). */
export const DEVICE_LIMITS = {
  maxQp: 16384,
  maxQpWr: 16384,
  maxSge: 16,
  maxSgeRd: 16,
  maxCq: 16384,
  // Above 32768 (the most slots a virtqueue holds) a CQ takes two rings.
  maxCqe: 65536,
  maxMr: 65536,
  maxPd: 65536,
  maxQpRdAtom: 128,
  maxResRdAtom: 258048,
  maxQpInitRdAtom: 128,
  maxAh: 65536,
  maxSrq: 4096,
  maxSrqWr: 16384,
  maxSrqSge: 16,
  maxInlineData: 256,
} as const;

/** Firmware version string the device reports. */
export const FW_VERSION = "0.1.0";

/** The node GUID for a host address: EUI-64 style, from the IPv4 bytes. */
export function nodeGuidFor(ip: string): bigint {
  const octets = ip.split(".").map(Number);
  let guid = 0x0200_00ff_fe00_0000n;
  guid |= BigInt(octets[0] ?? 0) << 40n;
  guid |= BigInt(((octets[1] ?? 0) << 16) | ((octets[2] ?? 0) << 8) | (octets[3] ?? 0));
  return guid;
}

/** Inputs that differ between hosts and guests. */
export interface AttributeOptions {
  /** This host's IPv4 address. */
  ip: string;
  /** Bytes of this guest's memory: the largest MR it can register. */
  memoryBytes: number;
  /** Largest path MTU the port offers. */
  maxMtu?: number;
  /** The MTU the port reports as active. */
  activeMtu?: number;
}

/** Builds the config space contents for one guest. */
export function deviceConfigFor(options: AttributeOptions): DeviceConfig {
  const guid = nodeGuidFor(options.ip);
  const { maxInlineData: _inline, ...limits } = DEVICE_LIMITS;
  const device: DeviceAttr = {
    fwVer: FW_VERSION,
    nodeGuid: guid,
    sysImageGuid: guid,
    maxMrSize: BigInt(options.memoryBytes),
    pageSizeCap: 0xffff_f000n,
    vendorId: 0x1af4, // Red Hat, Inc. (the VIRTIO vendor)
    vendorPartId: 0x107f,
    hwVer: 1,
    deviceCapFlags: 0,
    atomicCap: 1, // IBV_ATOMIC_HCA: atomic within this device, as rxe
    maxPkeys: 1,
    physPortCnt: 1,
    ...limits,
  };
  const port: PortAttr = {
    state: "ACTIVE",
    maxMtu: options.maxMtu ?? 4096,
    activeMtu: options.activeMtu ?? 4096,
    gidTblLen: 1,
    portCapFlags: 0x0001_0000, // IBV_PORT_CM_SUP
    maxMsgSz: 0x8000_0000,
    pkeyTblLen: 1,
    lid: 0,
    physState: 5, // LinkUp
    linkLayer: "Ethernet",
    activeWidth: 1,
    activeSpeed: 1,
  };
  return { device, port, gids: [`::ffff:${options.ip}`] };
}
