/**
 * IPv4 UDP through libc, for the RoCEv2 host adapter.
 *
 * Deno's own datagram socket is slow, hides its fd (so it cannot join the
 * data plane's epoll set) and cannot set `IP_MTU_DISCOVER`, which the ICRC
 * needs: with `IP_PMTUDISC_DO` on an unconnected socket the kernel sends DF
 * set and IPv4 ID 0, so both ends know every header field the ICRC covers.
 *
 * Three kinds of socket make up the layer:
 * - {@linkcode UdpSocket} (this file): `SOCK_DGRAM`, nonblocking and
 *   close-on-exec, with single and batched (`sendmmsg`/`recvmmsg`) send and
 *   receive.
 * - {@linkcode RawUdpSender} (`raw_udp_sender.ts`): `SOCK_RAW`/`IPPROTO_RAW`
 *   (needs CAP_NET_RAW): sends datagrams with an IPv4 and UDP header written
 *   by {@linkcode writeIpv4UdpHeader}, so any source port comes from one fd.
 * - {@linkcode RawUdpReceiver} (`raw_udp_receiver.ts`): `SOCK_RAW`/`IPPROTO_UDP`
 *   bound to one local address with a BPF filter on the destination port
 *   (needs CAP_NET_RAW): receives datagrams with the IPv4 header as it
 *   arrived.
 *
 * A batch of datagrams is a {@linkcode DatagramBatch} (`datagram_batch.ts`):
 * one block of slots plus the native arrays pointing at them, all made once,
 * so a batch of 32 costs one FFI call and no allocation.
 *
 * The rest of the layer: `socket_calls.ts` (the libc socket calls, their
 * constants and options), `socket_address.ts`, `socket_stats.ts`,
 * `socket_handle.ts` (the fd and closing every socket kind shares),
 * `ipv4_udp_header.ts`, `bpf_filter.ts`, and `batch_io.ts` (the
 * `sendmmsg`/`recvmmsg` every socket kind shares). This module re-exports
 * the public part of all of them, so importers need only this one.
 *
 * @module
 */

import { closeFd, ERRNO, errno, lastError, SysError } from "../../virtqueue/sys/libc.ts";
import { prepareSend, receiveInto, sendPrepared } from "./batch_io.ts";
import { attachFilter, DROP_ALL } from "./bpf_filter.ts";
import { type BatchRange, type DatagramBatch, nativeOf, rangeOf } from "./datagram_batch.ts";
import { checkIp, formatIpv4 } from "./ipv4.ts";
import {
  type BindAddress,
  checkPort,
  endpointName,
  ipValue,
  type SocketAddress,
} from "./socket_address.ts";
import {
  AF_INET,
  getIntOption,
  IP_MTU_DISCOVER,
  IP_PMTUDISC_DO,
  IP_PMTUDISC_DONT,
  IPPROTO_IP,
  isNoRoom,
  isRefusal,
  MSG_TRUNC,
  pinned,
  setBufferSize,
  setIntOption,
  SO_NO_CHECK,
  SO_RCVBUF,
  SO_REUSEADDR,
  SO_SNDBUF,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOCK_NONBLOCK,
  SOCKADDR_IN_SIZE,
  SOL_SOCKET,
  sys,
} from "./socket_calls.ts";
import { SocketHandle } from "./socket_handle.ts";
import { newStats, type SocketStats } from "./socket_stats.ts";

export { formatIpv4, IPV4_DF, parseIpv4 } from "./ipv4.ts";
export {
  type HeaderFields,
  IPV4_TTL,
  IPV4_UDP_HEADER_BYTES,
  MAX_UDP_PAYLOAD,
  writeIpv4UdpHeader,
} from "./ipv4_udp_header.ts";
export type { BindAddress, DatagramAddress, SocketAddress } from "./socket_address.ts";
export { newStats, type SocketStats } from "./socket_stats.ts";
export { type BatchRange, DatagramBatch, MAX_BATCH } from "./datagram_batch.ts";
export { canOpenRawSockets, type RawSenderOptions, RawUdpSender } from "./raw_udp_sender.ts";
export { type RawReceiverOptions, RawUdpReceiver } from "./raw_udp_receiver.ts";

/** Options of {@linkcode UdpSocket.bind}. */
export interface UdpSocketOptions {
  /** `SO_REUSEADDR`: share the address with other sockets that set it too. Default false. */
  reuseAddress?: boolean;
  /**
   * `IP_MTU_DISCOVER = IP_PMTUDISC_DO`: DF on every datagram, and IPv4 ID 0
   * while the socket is unconnected. Default true; false sets
   * `IP_PMTUDISC_DONT` (no DF, kernel-chosen IDs).
   */
  dontFragment?: boolean;
  /** `SO_NO_CHECK`: send UDP checksum 0, as rxe does. Default false. */
  noChecksum?: boolean;
  /** Send buffer bytes to ask for (the kernel doubles it). Default: the system default. */
  sendBufferBytes?: number;
  /** Receive buffer bytes to ask for (the kernel doubles it). Default: the system default. */
  receiveBufferBytes?: number;
  /**
   * Drop every datagram that arrives (a BPF filter), for a socket that only
   * sends: nothing piles up in its receive queue. Default false.
   */
  sendOnly?: boolean;
  /** Count into this object (shared by several sockets) instead of a fresh one. */
  stats?: SocketStats;
}

/**
 * A nonblocking, close-on-exec IPv4 UDP socket (`SOCK_DGRAM`), unconnected.
 *
 * @example
 * ```ts
 * import { UdpSocket } from "./udp_socket.ts";
 * using a = UdpSocket.bind({ ip: "127.0.0.1", port: 0 });
 * using b = UdpSocket.bind({ ip: "127.0.0.1", port: 0 });
 * a.sendTo(new Uint8Array([7, 8]), b.local);
 * const into = new Uint8Array(16);
 * const from = { ip: 0, port: 0 };
 * let n = -1;
 * for (let i = 0; i < 1000 && n < 0; i++) n = b.receiveFrom(into, from);
 * if (n !== 2 || into[1] !== 8 || from.port !== a.local.port) throw new Error("lost");
 * ```
 */
export class UdpSocket extends SocketHandle {
  readonly #local: Readonly<SocketAddress>;
  readonly #name: string;
  readonly #address = pinned(SOCKADDR_IN_SIZE);
  readonly #addressView = new DataView(this.#address.buffer);
  readonly #addressLength = pinned(4);
  readonly #stats: SocketStats;

  private constructor(fd: number, local: SocketAddress, stats: SocketStats) {
    const name = `udp ${endpointName(local.ip, local.port)}`;
    super(fd, name);
    this.#stats = stats;
    this.#local = Object.freeze({ ...local });
    this.#name = name;
    this.#addressView.setUint16(0, AF_INET, true);
  }

  /**
   * Opens a socket bound to `address`.
   *
   * @throws {SysError} from `bind` naming `ip:port` (EADDRINUSE when
   *   another socket has it, EADDRNOTAVAIL for an address not on this
   *   host), or from `socket`/`setsockopt`.
   * @throws {SyntaxError} for an unparseable IP; {@linkcode RangeError} for
   *   a port or buffer size out of range.
   */
  // `override`: as a static of a derived class, TypeScript sees it shadow
  // `Function.prototype.bind` (every class's static `bind` does).
  static override bind(address: BindAddress, options: UdpSocketOptions = {}): UdpSocket {
    const ip = ipValue(address.ip);
    checkPort(address.port, "UDP port");
    const target = endpointName(ip, address.port);
    const fd = sys().socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) throw lastError("socket", { target });
    try {
      if (options.reuseAddress === true && setIntOption(fd, SOL_SOCKET, SO_REUSEADDR, 1) < 0) {
        throw lastError("setsockopt", { target, note: "SO_REUSEADDR" });
      }
      const pmtu = options.dontFragment === false ? IP_PMTUDISC_DONT : IP_PMTUDISC_DO;
      if (setIntOption(fd, IPPROTO_IP, IP_MTU_DISCOVER, pmtu) < 0) {
        throw lastError("setsockopt", { target, note: "IP_MTU_DISCOVER" });
      }
      if (options.noChecksum === true && setIntOption(fd, SOL_SOCKET, SO_NO_CHECK, 1) < 0) {
        throw lastError("setsockopt", { target, note: "SO_NO_CHECK" });
      }
      if (options.sendBufferBytes !== undefined) {
        setBufferSize(fd, true, options.sendBufferBytes, target);
      }
      if (options.receiveBufferBytes !== undefined) {
        setBufferSize(fd, false, options.receiveBufferBytes, target);
      }
      if (options.sendOnly === true) attachFilter(fd, DROP_ALL, target);
      const name = pinned(SOCKADDR_IN_SIZE);
      const view = new DataView(name.buffer);
      view.setUint16(0, AF_INET, true);
      view.setUint16(2, address.port, false);
      view.setUint32(4, ip, false);
      if (sys().bind(fd, name, SOCKADDR_IN_SIZE) < 0) {
        const e = errno();
        throw new SysError("bind", e, {
          target,
          note: e === ERRNO.EADDRINUSE
            ? `another socket is bound to ${target}`
            : e === ERRNO.EADDRNOTAVAIL
            ? `${formatIpv4(ip)} is not an address of this host`
            : undefined,
        });
      }
      const length = pinned(4);
      new DataView(length.buffer).setUint32(0, SOCKADDR_IN_SIZE, true);
      if (sys().getsockname(fd, name, length) < 0) throw lastError("getsockname", { target });
      return new UdpSocket(fd, { ip, port: view.getUint16(2, false) }, options.stats ?? newStats());
    } catch (e) {
      closeFd(fd);
      throw e;
    }
  }

  /** The bound address (the port the kernel picked, if bound to 0). */
  get local(): Readonly<SocketAddress> {
    return this.#local;
  }

  /** Counters of what this socket did. */
  get stats(): Readonly<SocketStats> {
    return this.#stats;
  }

  /** The send buffer size the kernel granted (`SO_SNDBUF`, already doubled). */
  get sendBufferBytes(): number {
    return getIntOption(this.live(), SOL_SOCKET, SO_SNDBUF, this.#name);
  }

  /** The receive buffer size the kernel granted (`SO_RCVBUF`, already doubled). */
  get receiveBufferBytes(): number {
    return getIntOption(this.live(), SOL_SOCKET, SO_RCVBUF, this.#name);
  }

  /**
   * Sends `bytes` as one datagram to `to`.
   *
   * @returns true when consumed: sent, or refused by the network (counted
   *   in `stats.refused`); false when there is no room now (EAGAIN/ENOBUFS).
   * @throws {RangeError} for an address or port out of range.
   * @throws {SysError} from `sendto` (EMSGSIZE for a datagram longer than the path allows).
   */
  sendTo(bytes: Uint8Array, to: SocketAddress): boolean {
    const fd = this.live();
    checkIp(to.ip);
    checkPort(to.port, "destination port");
    this.#addressView.setUint16(2, to.port, false);
    this.#addressView.setUint32(4, to.ip, false);
    const n = sys().sendto(fd, bytes, BigInt(bytes.byteLength), 0, this.#address, SOCKADDR_IN_SIZE);
    if (n >= 0n) {
      this.#stats.sent++;
      return true;
    }
    const e = errno();
    if (isNoRoom(e)) {
      this.#stats.wouldBlock++;
      return false;
    }
    if (isRefusal(e)) {
      this.#stats.refused++;
      return true;
    }
    throw new SysError("sendto", e, {
      target: `${this.#name} -> ${endpointName(to.ip, to.port)}`,
      note: e === ERRNO.EMSGSIZE ? `${bytes.byteLength} bytes is too long for the path` : undefined,
    });
  }

  /**
   * Receives one datagram into `into`, and its source into `from` if given.
   *
   * @returns the datagram's full length (more than `into.byteLength` means
   *   it was cut to fit), or -1 when none is waiting.
   * @throws {SysError} from `recvfrom`.
   */
  receiveFrom(into: Uint8Array, from?: SocketAddress): number {
    const fd = this.live();
    const lengthView = new DataView(this.#addressLength.buffer);
    for (let attempt = 0; attempt < 8; attempt++) {
      lengthView.setUint32(0, SOCKADDR_IN_SIZE, true);
      const n = sys().recvfrom(
        fd,
        into,
        BigInt(into.byteLength),
        MSG_TRUNC,
        this.#address,
        this.#addressLength,
      );
      if (n >= 0n) {
        const length = Number(n);
        this.#stats.received++;
        if (length > into.byteLength) this.#stats.truncated++;
        if (from !== undefined) {
          from.ip = this.#addressView.getUint32(4, false);
          from.port = this.#addressView.getUint16(2, false);
        }
        return length;
      }
      const e = errno();
      if (e === ERRNO.EAGAIN) return -1;
      if (e !== ERRNO.EINTR) throw new SysError("recvfrom", e, { target: this.#name });
    }
    return -1;
  }

  /**
   * Sends slots `range` of `batch` (default: all in use) with `sendmmsg`,
   * as many per call as the kernel takes. `sourcePorts` is ignored: every
   * datagram leaves from this socket's port.
   *
   * @returns how many slots from the range start were consumed (sent, or
   *   refused by the network); fewer than asked when there was no room.
   * @throws {RangeError} for a range outside the slots in use.
   * @throws {SysError} from `sendmmsg` (EMSGSIZE names the slot).
   */
  sendBatch(batch: DatagramBatch, range?: BatchRange): number {
    const fd = this.live();
    const [start, count] = rangeOf(batch, range);
    if (count === 0) return 0;
    prepareSend(batch, start, count, 0);
    return sendPrepared(fd, nativeOf(batch).plainFrom, start, count, this.#stats, this.#name);
  }

  /**
   * Receives up to `batch.capacity` datagrams with one `recvmmsg` into the
   * slots from 0, and sets `batch.count`. `headers` are left alone and
   * `headersExact` is set false: a UDP socket does not see them.
   *
   * @returns how many arrived (0 when none was waiting).
   * @throws {SysError} from `recvmmsg`.
   */
  receiveBatch(batch: DatagramBatch): number {
    return receiveInto(this.live(), batch, false, this.#stats, this.#name);
  }
}
