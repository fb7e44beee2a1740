/**
 * A raw IPv4 socket that receives UDP datagrams with their IPv4 and UDP
 * headers as they arrived, which a UDP socket cannot show (the IPv4 ID that
 * a real rxe peer puts in the ICRC; the header a UD receive puts in the
 * GRH). Tests use it as a capture.
 *
 * @module
 */

import { closeFd, lastError } from "../../virtqueue/sys/libc.ts";
import { receiveInto } from "./batch_io.ts";
import { attachFilter, udpFilter } from "./bpf_filter.ts";
import type { DatagramBatch } from "./datagram_batch.ts";
import { checkIp } from "./ipv4.ts";
import { checkPort, endpointName } from "./socket_address.ts";
import {
  AF_INET,
  IPPROTO_UDP,
  pinned,
  setBufferSize,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_RAW,
  SOCKADDR_IN_SIZE,
  sys,
} from "./socket_calls.ts";
import { SocketHandle } from "./socket_handle.ts";
import { newStats, type SocketStats } from "./socket_stats.ts";

/** Options of {@linkcode RawUdpReceiver.open}. */
export interface RawReceiverOptions {
  /** Keep only datagrams to this UDP port; default: every port. */
  port?: number;
  /** Receive buffer bytes to ask for. Default: the system default. */
  receiveBufferBytes?: number;
  /** Count into this object (shared by several sockets) instead of a fresh one. */
  stats?: SocketStats;
}

/**
 * Receives UDP datagrams addressed to one local IPv4 address together with
 * their IPv4 and UDP headers as they arrived, through a raw socket
 * (`SOCK_RAW`, `IPPROTO_UDP`, bound to the address so other hosts' traffic
 * is not even copied to it) with a BPF filter. Needs CAP_NET_RAW.
 *
 * The socket gets a copy of each datagram: a UDP socket bound to the same
 * address and port still receives its own, so this also serves as a
 * capture. Datagrams with IPv4 options, fragments, and ones whose UDP length
 * disagrees with the IPv4 length are filtered out in the kernel.
 *
 * @example
 * ```ts ignore
 * import { DatagramBatch } from "./datagram_batch.ts";
 * import { parseIpv4 } from "./ipv4.ts";
 * import { RawUdpReceiver } from "./raw_udp_receiver.ts";
 * using capture = RawUdpReceiver.open(parseIpv4("127.0.0.3"), { port: 4791 });
 * const batch = new DatagramBatch(32, 4200);
 * const n = capture.receiveBatch(batch); // headers in batch.headers
 * ```
 */
export class RawUdpReceiver extends SocketHandle {
  readonly #local: number;
  readonly #name: string;
  readonly #stats: SocketStats;

  private constructor(fd: number, local: number, name: string, stats: SocketStats) {
    super(fd, name);
    this.#stats = stats;
    this.#local = local;
    this.#name = name;
  }

  /**
   * Opens the raw socket for datagrams to `localIp` (and `options.port`).
   *
   * @throws {SysError} from `socket` (EPERM without CAP_NET_RAW), `bind`
   *   (EADDRNOTAVAIL for an address not on this host) or `setsockopt`.
   */
  static open(localIp: number, options: RawReceiverOptions = {}): RawUdpReceiver {
    checkIp(localIp);
    if (options.port !== undefined) checkPort(options.port, "UDP port");
    const target = `raw udp to ${endpointName(localIp, options.port ?? 0)}`;
    const fd = sys().socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_UDP);
    if (fd < 0) {
      throw lastError("socket", { target, note: "a raw socket needs CAP_NET_RAW (root)" });
    }
    try {
      // The filter goes on before bind, so nothing unfiltered is queued.
      attachFilter(fd, udpFilter(options.port), target);
      if (options.receiveBufferBytes !== undefined) {
        setBufferSize(fd, false, options.receiveBufferBytes, target);
      }
      const name = pinned(SOCKADDR_IN_SIZE);
      const view = new DataView(name.buffer);
      view.setUint16(0, AF_INET, true);
      view.setUint32(4, localIp, false);
      if (sys().bind(fd, name, SOCKADDR_IN_SIZE) < 0) throw lastError("bind", { target });
    } catch (e) {
      closeFd(fd);
      throw e;
    }
    return new RawUdpReceiver(fd, localIp, target, options.stats ?? newStats());
  }

  /** The local address it receives for. */
  get localIp(): number {
    return this.#local;
  }

  /** Counters of what this socket did. */
  get stats(): Readonly<SocketStats> {
    return this.#stats;
  }

  /**
   * Receives up to `batch.capacity` datagrams with one `recvmmsg`: the IPv4
   * and UDP headers of slot i go to `batch.headers` at `i * 28`, the UDP
   * payload to `slots[i]`; `peerIps`/`peerPorts` are the source, and
   * `headersExact` is set true.
   *
   * @returns how many arrived (0 when none was waiting).
   * @throws {SysError} from `recvmmsg`.
   */
  receiveBatch(batch: DatagramBatch): number {
    return receiveInto(this.live(), batch, true, this.#stats, this.#name);
  }
}
