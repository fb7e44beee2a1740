/**
 * A raw IPv4 socket that sends UDP datagrams with headers written here, so
 * any source port comes from one fd; and the probe that says whether this
 * process may open raw sockets at all.
 *
 * @module
 */

import { closeFd, ERRNO, errno, lastError, SysError } from "../../virtqueue/sys/libc.ts";
import { prepareSend, sendPrepared } from "./batch_io.ts";
import { type BatchRange, DatagramBatch, nativeOf, rangeOf } from "./datagram_batch.ts";
import { checkIp, formatIpv4 } from "./ipv4.ts";
import {
  type HeaderFields,
  IPV4_UDP_HEADER_BYTES,
  MAX_UDP_PAYLOAD,
  writeIpv4UdpHeader,
} from "./ipv4_udp_header.ts";
import { checkPort, type DatagramAddress } from "./socket_address.ts";
import {
  addressOf,
  AF_INET,
  IOVEC_SIZE,
  IPPROTO_RAW,
  setBufferSize,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_RAW,
  sys,
} from "./socket_calls.ts";
import { SocketHandle } from "./socket_handle.ts";
import { newStats, type SocketStats } from "./socket_stats.ts";

/** Options of {@linkcode RawUdpSender.open}. */
export interface RawSenderOptions {
  /** Send buffer bytes to ask for. Default: the system default. */
  sendBufferBytes?: number;
  /** Count into this object (shared by several sockets) instead of a fresh one. */
  stats?: SocketStats;
}

/**
 * Sends UDP datagrams from any source port through one raw socket
 * (`SOCK_RAW`, `IPPROTO_RAW`, which implies `IP_HDRINCL`): the IPv4 and UDP
 * headers are written here ({@linkcode writeIpv4UdpHeader}: DF, ID 0, TTL 64,
 * UDP checksum 0; the kernel fills in the IPv4 checksum and keeps ID 0
 * because DF is set). Needs CAP_NET_RAW.
 *
 * @example
 * ```ts ignore
 * import { parseIpv4 } from "./ipv4.ts";
 * import { RawUdpSender } from "./raw_udp_sender.ts";
 * using raw = RawUdpSender.open(parseIpv4("127.0.0.2"));
 * raw.sendTo(new Uint8Array(8), { ip: parseIpv4("127.0.0.3"), port: 4791, sourcePort: 49441 });
 * ```
 */
export class RawUdpSender extends SocketHandle {
  readonly #sourceIp: number;
  readonly #name: string;
  readonly #stats: SocketStats;
  /** A one-slot batch whose body iovec points at the caller's bytes during `sendTo`. */
  readonly #one = new DatagramBatch(1, 1);

  private constructor(fd: number, sourceIp: number, stats: SocketStats) {
    const name = `raw udp from ${formatIpv4(sourceIp)}`;
    super(fd, name);
    this.#sourceIp = sourceIp;
    this.#stats = stats;
    this.#name = name;
    this.#one.count = 1;
  }

  /**
   * Opens the raw socket; every datagram it sends has source address `sourceIp`.
   *
   * @throws {SysError} from `socket`: EPERM without CAP_NET_RAW.
   */
  static open(sourceIp: number, options: RawSenderOptions = {}): RawUdpSender {
    checkIp(sourceIp);
    const target = `raw udp from ${formatIpv4(sourceIp)}`;
    const fd = sys().socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_RAW);
    if (fd < 0) {
      throw lastError("socket", { target, note: "a raw socket needs CAP_NET_RAW (root)" });
    }
    try {
      if (options.sendBufferBytes !== undefined) {
        setBufferSize(fd, true, options.sendBufferBytes, target);
      }
    } catch (e) {
      closeFd(fd);
      throw e;
    }
    return new RawUdpSender(fd, sourceIp, options.stats ?? newStats());
  }

  /** Counters of what this socket did. */
  get stats(): Readonly<SocketStats> {
    return this.#stats;
  }

  /**
   * Sends `bytes` to `to` from UDP port `to.sourcePort`. The bytes are not
   * copied: they go out through a second iovec after the headers.
   *
   * @returns true when consumed (sent or refused), false when there is no room.
   * @throws {RangeError} for a datagram over {@linkcode MAX_UDP_PAYLOAD} or an address out of range.
   */
  sendTo(bytes: Uint8Array, to: DatagramAddress): boolean {
    const fd = this.live();
    checkIp(to.ip);
    checkPort(to.port, "destination port");
    checkPort(to.sourcePort, "source port");
    if (bytes.byteLength > MAX_UDP_PAYLOAD) {
      throw new RangeError(
        `UDP payload must be at most ${MAX_UDP_PAYLOAD} bytes, got ${bytes.byteLength}`,
      );
    }
    const native = nativeOf(this.#one);
    writeIpv4UdpHeader(native.headers, 0, {
      sourceIp: this.#sourceIp,
      sourcePort: to.sourcePort,
      destinationIp: to.ip,
      destinationPort: to.port,
      payloadBytes: bytes.byteLength,
    });
    native.names.setUint32(4, to.ip, false);
    // Point the body iovec at the caller's bytes for this one call.
    native.iovs.setBigUint64(2 * IOVEC_SIZE, addressOf(bytes), true);
    native.iovs.setBigUint64(2 * IOVEC_SIZE + 8, BigInt(bytes.byteLength), true);
    return sendPrepared(fd, native.splitFrom, 0, 1, this.#stats, this.#name) === 1;
  }

  /**
   * Sends slots `range` of `batch` (default: all in use), each from its
   * `sourcePorts[i]`, as few `sendmmsg` calls as the kernel allows. The
   * headers are written into `batch.headers`.
   *
   * @returns how many slots from the range start were consumed.
   * @throws {RangeError} for a range outside the slots in use.
   */
  sendBatch(batch: DatagramBatch, range?: BatchRange): number {
    const fd = this.live();
    const [start, count] = rangeOf(batch, range);
    if (count === 0) return 0;
    prepareSend(batch, start, count, 2);
    const native = nativeOf(batch);
    const fields: HeaderFields = {
      sourceIp: this.#sourceIp,
      sourcePort: 0,
      destinationIp: 0,
      destinationPort: 0,
      payloadBytes: 0,
    };
    for (let i = start; i < start + count; i++) {
      fields.sourcePort = batch.sourcePorts[i]!;
      fields.destinationIp = batch.peerIps[i]!;
      fields.destinationPort = batch.peerPorts[i]!;
      fields.payloadBytes = batch.lengths[i]!;
      writeIpv4UdpHeader(native.headers, i * IPV4_UDP_HEADER_BYTES, fields);
    }
    return sendPrepared(fd, native.splitFrom, start, count, this.#stats, this.#name);
  }
}

/**
 * Whether this process may open raw sockets (CAP_NET_RAW), found by trying
 * the socket {@linkcode RawUdpSender} opens.
 *
 * @example
 * ```ts
 * import { canOpenRawSockets } from "./raw_udp_sender.ts";
 * const mode = canOpenRawSockets() ? "raw" : "socket";
 * console.log(`transport mode "auto" would pick ${mode}`);
 * ```
 */
export function canOpenRawSockets(): boolean {
  const fd = sys().socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
  if (fd < 0) {
    const e = errno();
    if (e === ERRNO.EPERM || e === ERRNO.EACCES) return false;
    throw new SysError("socket", e, { target: "raw probe" });
  }
  closeFd(fd);
  return true;
}
