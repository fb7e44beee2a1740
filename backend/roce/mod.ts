/**
 * The RoCEv2 host adapter's building blocks: the packet layer (one opcode
 * table for building and parsing, headers, PSN arithmetic, ICRC) and the UDP
 * transport (libc sockets through FFI, or an in-memory lossy fabric in tests).
 *
 * @module
 */

export * from "./ipv4.ts";
export * from "./opcodes.ts";
export * from "./headers.ts";
export * from "./psn.ts";
export * from "./icrc.ts";
export * from "./packet.ts";
export * from "./segment.ts";
export * from "./transport.ts";
export { DatagramBatch, UdpSocket } from "./udp_socket.ts";
export { LossyFabric } from "./lossy_fabric.ts";
