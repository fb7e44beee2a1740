/**
 * The libc socket calls of the UDP layer, their constants, the socket
 * options it sets, and which errno values mean what for a datagram.
 *
 * Layouts are x86_64 Linux: `struct msghdr` 56 bytes (name 0, namelen 8,
 * iov 16, iovlen 24, control 32, controllen 40, flags 48), `struct mmsghdr`
 * 64 (msg_len at 56), `struct iovec` 16, `struct sockaddr_in` 16 (family,
 * port and address in network order).
 *
 * @module
 */

import {
  ERRNO,
  lastError,
  type Libc,
  libc,
  O_CLOEXEC,
  O_NONBLOCK,
} from "../../virtqueue/sys/libc.ts";

/** The socket calls of the UDP layer: the one libc table (virtqueue/sys/libc.ts). */
export type SocketCalls = Libc;

/**
 * The socket calls. libc is opened on the first call (in libc.ts), so
 * importing the UDP layer costs nothing and needs no `--allow-ffi` until a
 * socket is made.
 */
export function sys(): SocketCalls {
  return libc();
}

/** `AF_INET`: IPv4. */
export const AF_INET = 2;
/** `SOCK_DGRAM`: a UDP socket. */
export const SOCK_DGRAM = 2;
/** `SOCK_RAW`: a raw IP socket. */
export const SOCK_RAW = 3;
/** `SOCK_NONBLOCK`, the same value as `O_NONBLOCK`. */
export const SOCK_NONBLOCK = O_NONBLOCK;
/** `SOCK_CLOEXEC`, the same value as `O_CLOEXEC`. */
export const SOCK_CLOEXEC = O_CLOEXEC;
/** `IPPROTO_IP`: the option level of IPv4 options. */
export const IPPROTO_IP = 0;
/** `IPPROTO_UDP`, also UDP's protocol number in the IPv4 header. */
export const IPPROTO_UDP = 17;
/** `IPPROTO_RAW`: a raw socket whose sends carry their own IPv4 header (`IP_HDRINCL`). */
export const IPPROTO_RAW = 255;
/** `SOL_SOCKET`: the option level of socket options. */
export const SOL_SOCKET = 1;
/** `SO_REUSEADDR`. */
export const SO_REUSEADDR = 2;
/** `SO_SNDBUF`. */
export const SO_SNDBUF = 7;
/** `SO_RCVBUF`. */
export const SO_RCVBUF = 8;
/** `SO_NO_CHECK`: send UDP checksum 0. */
export const SO_NO_CHECK = 11;
/** `SO_ATTACH_FILTER`: attach a classic BPF program. */
export const SO_ATTACH_FILTER = 26;
/** `SO_SNDBUFFORCE`: `SO_SNDBUF` past `net.core.wmem_max` (CAP_NET_ADMIN). */
export const SO_SNDBUFFORCE = 32;
/** `SO_RCVBUFFORCE`: `SO_RCVBUF` past `net.core.rmem_max` (CAP_NET_ADMIN). */
export const SO_RCVBUFFORCE = 33;
/** `IP_MTU_DISCOVER`. */
export const IP_MTU_DISCOVER = 10;
/** `IP_PMTUDISC_DO`: DF on every datagram, IPv4 ID 0 while unconnected. */
export const IP_PMTUDISC_DO = 2;
/** `IP_PMTUDISC_DONT`: no DF, kernel-chosen IDs. */
export const IP_PMTUDISC_DONT = 0;
/** `MSG_TRUNC`: as a receive flag, report the full length; in `msg_flags`, the datagram was cut. */
export const MSG_TRUNC = 0x20;

/** Bytes of a `struct sockaddr_in`. */
export const SOCKADDR_IN_SIZE = 16;
/** Bytes of a `struct mmsghdr`. */
export const MMSGHDR_SIZE = 64;
/** Bytes of a `struct iovec`. */
export const IOVEC_SIZE = 16;
/** Offset of `msg_len` in a `struct mmsghdr`. */
export const MSG_LEN = 56;
/** Offset of `msg_flags` in a `struct msghdr`. */
export const MSG_FLAGS = 48;
/** Offset of `msg_namelen` in a `struct msghdr`. */
export const MSG_NAMELEN = 8;

/** A buffer off the V8 heap (an explicit `ArrayBuffer`), so its address is stable. */
export function pinned(size: number): Uint8Array<ArrayBuffer> {
  return new Uint8Array(new ArrayBuffer(size));
}

/** The address of `bytes`, for a pointer inside a native struct. */
export function addressOf(bytes: Uint8Array): bigint {
  return Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes));
}

/** Sets an `int` socket option; returns what `setsockopt` returned (negative on error). */
export function setIntOption(fd: number, level: number, name: number, value: number): number {
  const v = pinned(4);
  new DataView(v.buffer).setInt32(0, value, true);
  return sys().setsockopt(fd, level, name, v, 4);
}

/**
 * Reads an `int` socket option.
 *
 * @throws {SysError} from `getsockopt`, naming `target`.
 */
export function getIntOption(fd: number, level: number, name: number, target: string): number {
  const v = pinned(4);
  const len = pinned(4);
  new DataView(len.buffer).setUint32(0, 4, true);
  if (sys().getsockopt(fd, level, name, v, len) < 0) throw lastError("getsockopt", { target });
  return new DataView(v.buffer).getInt32(0, true);
}

/**
 * Asks for a socket buffer of `bytes`: the FORCE option first (CAP_NET_ADMIN
 * passes `net.core.[rw]mem_max`), then the plain one, which the kernel caps.
 *
 * @throws {RangeError} for a size outside 1024..2^30-1.
 * @throws {SysError} from `setsockopt`.
 */
export function setBufferSize(fd: number, send: boolean, bytes: number, target: string): void {
  if (!Number.isInteger(bytes) || bytes < 1024 || bytes > 0x3fff_ffff) {
    throw new RangeError(`socket buffer size must be an integer 1024..2^30-1, got ${bytes}`);
  }
  const force = send ? SO_SNDBUFFORCE : SO_RCVBUFFORCE;
  if (setIntOption(fd, SOL_SOCKET, force, bytes) === 0) return;
  if (setIntOption(fd, SOL_SOCKET, send ? SO_SNDBUF : SO_RCVBUF, bytes) < 0) {
    throw lastError("setsockopt", { target, note: `${send ? "SO_SNDBUF" : "SO_RCVBUF"} ${bytes}` });
  }
}

/** Errors after which a datagram is gone for good, as if the network dropped it. */
export function isRefusal(e: number): boolean {
  return e === ERRNO.EPERM || e === ERRNO.EACCES || e === ERRNO.EHOSTUNREACH ||
    e === ERRNO.ENETUNREACH || e === ERRNO.ECONNREFUSED;
}

/** Errors after which the same datagram may be sent again later. */
export function isNoRoom(e: number): boolean {
  return e === ERRNO.EAGAIN || e === ERRNO.ENOBUFS || e === ERRNO.EINTR;
}

/** The errno values that make a receive an error rather than "nothing yet". */
export const RECEIVE_FATAL: ReadonlySet<number> = new Set([
  ERRNO.EBADF,
  ERRNO.EFAULT,
  ERRNO.EINVAL,
  ERRNO.ENOTSOCK,
]);
