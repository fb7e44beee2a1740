/**
 * vrdma: a paravirtual RDMA device.
 *
 * - {@linkcode startBackend} runs the host-side service (one per host).
 * - {@linkcode openDevice} opens a guest's device on a backend's socket.
 *
 * @example
 * ```ts ignore
 * import { openDevice, startBackend } from "./mod.ts";
 * const host = await startBackend({ socket: "/tmp/vrdma-a.sock", ip: "127.0.0.2" });
 * const dev = await openDevice({ socket: "/tmp/vrdma-a.sock", memoryBytes: 16 << 20 });
 * console.log(dev.queryGid(1, 0)); // ::ffff:127.0.0.2
 * await dev.close();
 * await host.close();
 * ```
 *
 * @module
 */

export { Backend, DEFAULT_SOCKET, ROCE_PORT, startBackend } from "./backend/service.ts";
export type { BackendOptions, BackendStats } from "./backend/service.ts";
export {
  Access,
  Ah,
  Cq,
  Device,
  GUEST_BASE,
  MAX_INLINE_DATA,
  Mr,
  openDevice,
  Pd,
  Qp,
  QpState,
  SendFlags,
  Srq,
  VerbsError,
  WcFlags,
  WcOpcode,
  WcStatus,
  WrOpcode,
} from "./driver/mod.ts";
export type {
  AhAttr,
  AsyncEvent,
  AtomicInfo,
  ConnectionInfo,
  ConnectOptions,
  CqInit,
  GuestBuffer,
  MrRange,
  OpenDeviceOptions,
  QpAttr,
  QpCap,
  QpInit,
  QpQueryResult,
  QpStateName,
  QpType,
  RdmaInfo,
  RecvWr,
  SendWr,
  Sge,
  SrqInit,
  UdInfo,
  WcOpcodeName,
  WcStatusName,
  WorkCompletion,
  WrOpcodeName,
} from "./driver/mod.ts";
export type { DeviceAttr, PortAttr } from "./protocol/device_config.ts";
