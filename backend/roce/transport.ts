/**
 * The datagram transport under the RoCEv2 engine: what the engine calls to
 * put packets on UDP port 4791 and take them off, and its implementation
 * over real UDP. Tests put an endpoint of the in-memory `LossyFabric`
 * (lossy_fabric.ts) in its place.
 *
 * ## Sending from a per-QP source port
 *
 * RoCEv2 gives each QP its own UDP source port (flow entropy for ECMP; see
 * WIRE.md), while every datagram goes to destination port 4791. A UDP socket
 * bound to ip:4791, which receives, can only send from 4791. The ways out:
 *
 * | way | root | cost | wire |
 * |---|---|---|---|
 * | `IP_PKTINFO` on `sendmsg` | no | — | sets the source *address* only, never the port: ruled out |
 * | one UDP socket per source port (mode `"socket"`) | no | a bind per new port, an fd per port in use; a batch with mixed ports takes one `sendmmsg` per run of equal ports | DF, ID 0, TTL 64, UDP checksum 0 (`SO_NO_CHECK`) |
 * | one raw socket, headers written here (mode `"raw"`) | CAP_NET_RAW | one fd, one `sendmmsg` per batch whatever the ports | the same bytes, all chosen here |
 *
 * Mode `"socket"` works everywhere and is the default; it also measured
 * faster than raw mode (`deno task bench:udp-baseline`, 4112-byte
 * datagrams: 729 K against 576 K packets/s in one run). Its sockets bind
 * `ip:sourcePort` without `SO_REUSEADDR` (sharing a port would let one of
 * them take datagrams meant for another program), carry a BPF filter that
 * drops everything that arrives (they only send), and are kept in a
 * least-recently-used cache of `maxSourceSockets`. The price: while a port
 * is in use here, no other program can bind it on this address or on
 * 0.0.0.0, and the RoCE port range 0xC000-0xFFFF overlaps Linux's ephemeral
 * range. If a port cannot be bound (another program has it, or no fds are
 * left) the datagram leaves from the receive socket's port instead and
 * `stats.sourcePortFallbacks` counts it: a RoCE receiver ignores the source
 * port, so traffic still flows, only the entropy is lost.
 *
 * Mode `"raw"` sends through a `SOCK_RAW`/`IPPROTO_RAW` socket with the
 * IPv4 and UDP headers written by `writeIpv4UdpHeader` (Linux rxe builds its
 * own headers the same way) and also receives through a raw socket, which
 * is its second gain: a received datagram comes with its IPv4 header as it
 * arrived. A UDP socket cannot see the IPv4 ID, and the ICRC covers it: real
 * rxe peers send nonzero IDs (see the interop notes), so only a raw receiver
 * can check their ICRCs exactly, and only it can give a UD receive the real
 * header for the GRH. In raw mode the UDP socket on ip:4791 is still bound
 * (it holds the port, so a second backend on the same address fails
 * clearly, and the kernel sends no ICMP port unreachable) with a filter
 * that drops everything.
 *
 * Mode `"auto"` takes raw when this process may open raw sockets.
 *
 * Both modes put the same bytes on the wire: DF set and IPv4 ID 0 (an
 * unconnected socket with `IP_PMTUDISC_DO` gets ID 0 from the kernel; raw
 * mode writes 0 and DF), TOS 0, TTL 64, UDP checksum 0.
 *
 * ## Receiving
 *
 * {@linkcode RoceTransport.receive} fills a {@linkcode DatagramBatch} with one
 * `recvmmsg`: payloads in the slots, source address and port per slot, and the
 * IPv4+UDP headers in `batch.headers` — copied off the wire in raw mode,
 * rebuilt in socket mode from what the kernel reports plus the values every
 * vrdma sender uses (ID 0, DF, TTL 64, checksums 0; `headersExact` false).
 * Several hosts on one machine each bind their own 127.0.0.x:4791.
 *
 * @module
 */

import {
  type BatchRange,
  canOpenRawSockets,
  type DatagramAddress,
  DatagramBatch,
  formatIpv4,
  IPV4_UDP_HEADER_BYTES,
  newStats,
  parseIpv4,
  RawUdpReceiver,
  RawUdpSender,
  type SocketStats,
  UdpSocket,
  writeIpv4UdpHeader,
} from "./udp_socket.ts";
import { SysError } from "../../virtqueue/sys/libc.ts";
import { rangeOf } from "./datagram_batch.ts";

export {
  type BatchRange,
  type DatagramAddress,
  DatagramBatch,
  formatIpv4,
  IPV4_UDP_HEADER_BYTES,
  parseIpv4,
};

export { ROCE_PORT } from "./ipv4.ts";
import { ROCE_PORT } from "./ipv4.ts";

/** Counters of a transport; they only grow, except `sourceSockets`. */
export interface TransportStats extends SocketStats {
  /** Datagrams sent from the receive port because their source port could not be bound. */
  sourcePortFallbacks: number;
  /** Per-port send sockets open now (socket mode). */
  sourceSockets: number;
  /** Per-port send sockets closed to make room for another (socket mode). */
  sourceSocketsEvicted: number;
}

/** Port 0 is no UDP port: Linux refuses it as a destination, and a raw header would carry it. */
function checkPort(port: number, what: string): void {
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new RangeError(`${what} must be an integer 1..65535, got ${port}`);
  }
}

/** Zeroed {@linkcode TransportStats}. */
export function newTransportStats(): TransportStats {
  return { ...newStats(), sourcePortFallbacks: 0, sourceSockets: 0, sourceSocketsEvicted: 0 };
}

/**
 * What the RoCE engine sends and receives datagrams through: one local
 * address and port (4791), any destination, any source port per datagram.
 *
 * Sends never block: a datagram that finds no room is left to the caller
 * (`send` false, `sendBatch` short), who may retry when the fd is writable
 * or let RoCE retransmission deal with it.
 */
export interface RoceTransport extends Disposable {
  /** The local IPv4 address, host-order u32. */
  readonly localIp: number;
  /** The local UDP port datagrams arrive at (4791 unless chosen otherwise). */
  readonly localPort: number;
  /**
   * The fd to watch for readability (EPOLLIN) in the data plane's epoll
   * set, or undefined for an in-memory transport, which its owner pumps.
   */
  readonly fd: number | undefined;
  /** Counters of what it did. */
  readonly stats: Readonly<TransportStats>;
  /**
   * Sends `bytes` as one datagram to `to.ip:to.port` from UDP port `to.sourcePort`.
   * The bytes are copied (or sent) before it returns.
   *
   * @returns true when consumed (sent, or refused by the network and counted),
   *   false when there is no room now.
   */
  send(bytes: Uint8Array, to: DatagramAddress): boolean;
  /**
   * Sends slots `range` of `batch` (default: all in use), slot i to
   * `peerIps[i]:peerPorts[i]` from `sourcePorts[i]`.
   *
   * @returns how many slots from the range start were consumed.
   */
  sendBatch(batch: DatagramBatch, range?: BatchRange): number;
  /**
   * The UDP source port a datagram asked to leave from `port` will really
   * carry: `port`, or the receive port when `port` cannot be had (socket
   * mode, see the module notes). The ICRC covers the source port, so a
   * sender computes it with this one.
   */
  sourcePortFor(port: number): number;
  /**
   * Says no QP sends from `port` any more: a socket held for it may go
   * (socket mode), so ports and fds of QPs that are gone are not kept.
   */
  releaseSourcePort(port: number): void;
  /**
   * Fills `into` from slot 0 with the datagrams waiting, up to its capacity,
   * and sets `into.count`: payloads, `lengths`, `peerIps`/`peerPorts` (the
   * source), `truncated`, and the IPv4+UDP `headers` (`headersExact` says
   * whether they came off the wire).
   *
   * @returns how many arrived (0 when none was waiting).
   */
  receive(into: DatagramBatch): number;
  /** Closes it; sending or receiving afterwards throws. Closing twice is harmless. */
  close(): void;
}

/** How a {@linkcode UdpTransport} sends from per-QP source ports (see the module notes). */
export type TransportMode = "socket" | "raw";

/** Options of {@linkcode UdpTransport.open}. */
export interface UdpTransportOptions {
  /** Local IPv4 address (one per host: 127.0.0.x on one machine). */
  ip: string | number;
  /** Local UDP port; default {@linkcode ROCE_PORT}. 0 lets the kernel pick one (tests). */
  port?: number;
  /** Default `"socket"`; `"auto"` takes `"raw"` when raw sockets are allowed. */
  mode?: TransportMode | "auto";
  /** Socket mode: most per-port send sockets kept open (least recently used go first). Default 256. */
  maxSourceSockets?: number;
  /** Send buffer bytes per socket to ask for. Default 4 MiB. */
  sendBufferBytes?: number;
  /** Receive buffer bytes to ask for. Default 8 MiB. */
  receiveBufferBytes?: number;
}

const DEFAULT_SEND_BUFFER = 4 << 20;
const DEFAULT_RECEIVE_BUFFER = 8 << 20;
/** Per-port send sockets queue little: a datagram leaves (or is dropped) within the send call. */
const SOURCE_SOCKET_SEND_BUFFER = 1 << 20;

/**
 * {@linkcode RoceTransport} over real UDP through libc (see the module notes
 * for the two modes).
 *
 * @example
 * ```ts
 * import { DatagramBatch, UdpTransport } from "./transport.ts";
 * using a = UdpTransport.open({ ip: "127.0.0.1", port: 0 });
 * using b = UdpTransport.open({ ip: "127.0.0.1", port: 0 });
 * a.send(new Uint8Array([1, 2, 3]), { ip: b.localIp, port: b.localPort, sourcePort: a.localPort });
 * const batch = new DatagramBatch(8, 64);
 * let n = 0;
 * for (let i = 0; i < 1000 && n === 0; i++) n = b.receive(batch);
 * if (n !== 1 || batch.lengths[0] !== 3 || batch.peerPorts[0] !== a.localPort) {
 *   throw new Error("lost");
 * }
 * ```
 */
export class UdpTransport implements RoceTransport {
  readonly #mode: TransportMode;
  readonly #local: UdpSocket;
  readonly #rawSend: RawUdpSender | undefined;
  readonly #rawReceive: RawUdpReceiver | undefined;
  readonly #stats: TransportStats;
  readonly #maxSourceSockets: number;
  readonly #sendBufferBytes: number;
  /** Socket mode: send socket per source port, least recently used first; null: could not bind. */
  readonly #bySourcePort = new Map<number, UdpSocket | null>();
  #lastPort = -1;
  #lastSocket: UdpSocket | undefined;
  #closed = false;

  private constructor(
    parts: {
      mode: TransportMode;
      local: UdpSocket;
      rawSend?: RawUdpSender;
      rawReceive?: RawUdpReceiver;
    },
    settings: { stats: TransportStats; maxSourceSockets: number; sendBufferBytes: number },
  ) {
    this.#mode = parts.mode;
    this.#local = parts.local;
    this.#rawSend = parts.rawSend;
    this.#rawReceive = parts.rawReceive;
    this.#stats = settings.stats;
    this.#maxSourceSockets = settings.maxSourceSockets;
    this.#sendBufferBytes = settings.sendBufferBytes;
  }

  /**
   * Binds `options.ip:options.port` (default 4791) and opens what the mode needs.
   *
   * @throws {SysError} from `bind` naming `ip:port`: EADDRINUSE when another
   *   socket has it (another backend on the same address), EADDRNOTAVAIL
   *   when the address is not on this host; EPERM from `socket` for mode
   *   `"raw"` without CAP_NET_RAW.
   * @throws {SyntaxError} for an unparseable IP; {@linkcode RangeError} for
   *   a port, cache size or buffer size out of range; {@linkcode TypeError}
   *   for an unknown mode.
   */
  static open(options: UdpTransportOptions): UdpTransport {
    const ip = typeof options.ip === "string" ? parseIpv4(options.ip) : options.ip;
    const port = options.port ?? ROCE_PORT;
    const requested = options.mode ?? "socket";
    if (requested !== "socket" && requested !== "raw" && requested !== "auto") {
      throw new TypeError(
        `transport mode must be "socket", "raw" or "auto", got ${JSON.stringify(requested)}`,
      );
    }
    const maxSourceSockets = options.maxSourceSockets ?? 256;
    if (!Number.isInteger(maxSourceSockets) || maxSourceSockets < 1 || maxSourceSockets > 16384) {
      throw new RangeError(
        `maxSourceSockets must be an integer 1..16384, got ${maxSourceSockets}`,
      );
    }
    const mode: TransportMode = requested === "auto"
      ? (canOpenRawSockets() ? "raw" : "socket")
      : requested;
    const stats = newTransportStats();
    const sendBufferBytes = options.sendBufferBytes ?? DEFAULT_SEND_BUFFER;
    const receiveBufferBytes = options.receiveBufferBytes ?? DEFAULT_RECEIVE_BUFFER;
    const local = UdpSocket.bind({ ip, port }, {
      noChecksum: true,
      sendBufferBytes,
      receiveBufferBytes,
      sendOnly: mode === "raw",
      stats,
    });
    if (mode === "socket") {
      return new UdpTransport({ mode, local }, { stats, maxSourceSockets, sendBufferBytes });
    }
    let rawSend: RawUdpSender | undefined;
    try {
      rawSend = RawUdpSender.open(ip, { sendBufferBytes, stats });
      const rawReceive = RawUdpReceiver.open(ip, {
        port: local.local.port,
        receiveBufferBytes,
        stats,
      });
      return new UdpTransport({ mode, local, rawSend, rawReceive }, {
        stats,
        maxSourceSockets,
        sendBufferBytes,
      });
    } catch (e) {
      rawSend?.close();
      local.close();
      throw e;
    }
  }

  /** The mode in use (`"auto"` resolved). */
  get mode(): TransportMode {
    return this.#mode;
  }

  /** The local IPv4 address, host-order u32. */
  get localIp(): number {
    return this.#local.local.ip;
  }

  /** The local UDP port datagrams arrive at. */
  get localPort(): number {
    return this.#local.local.port;
  }

  /** The fd to watch for EPOLLIN: the receive socket (raw in raw mode). */
  get fd(): number {
    return this.#rawReceive?.fd ?? this.#local.fd;
  }

  /** Counters of what it did. */
  get stats(): Readonly<TransportStats> {
    return this.#stats;
  }

  /**
   * Sends `bytes` to `to.ip:to.port` from `to.sourcePort`.
   *
   * @returns true when consumed (sent, or refused by the network), false
   *   when there is no room now.
   * @throws {TypeError} once closed; {@linkcode RangeError} for an address
   *   out of range or a port 0; {@linkcode SysError} from the send call
   *   (EMSGSIZE for a datagram too long).
   */
  send(bytes: Uint8Array, to: DatagramAddress): boolean {
    this.#open();
    checkPort(to.port, "destination port");
    checkPort(to.sourcePort, "source port");
    if (this.#rawSend !== undefined) return this.#rawSend.sendTo(bytes, to);
    const socket = this.#socketFor(to.sourcePort);
    if (socket !== null) return socket.sendTo(bytes, to);
    const sent = this.#local.sendTo(bytes, to);
    if (sent) this.#stats.sourcePortFallbacks++;
    return sent;
  }

  /**
   * Sends slots `range` of `batch`: in raw mode with as few `sendmmsg`
   * calls as the kernel allows, in socket mode one per run of slots with
   * the same source port.
   *
   * @returns how many slots from the range start were consumed.
   * @throws {TypeError} once closed; {@linkcode RangeError} for a range
   *   outside the slots in use or a slot with port 0.
   */
  sendBatch(batch: DatagramBatch, range?: BatchRange): number {
    this.#open();
    const { start, count } = checkBatchRange(batch, range);
    if (this.#rawSend !== undefined) return this.#rawSend.sendBatch(batch, range);
    const ports = batch.sourcePorts;
    const end = start + count;
    const run: BatchRange = { start, count: 0 };
    let at = start;
    while (at < end) {
      const port = ports[at]!;
      let runEnd = at + 1;
      while (runEnd < end && ports[runEnd] === port) runEnd++;
      run.start = at;
      run.count = runEnd - at;
      const socket = this.#socketFor(port);
      const sent = (socket ?? this.#local).sendBatch(batch, run);
      if (socket === null) this.#stats.sourcePortFallbacks += sent;
      at += sent;
      if (sent < run.count) break;
    }
    return at - start;
  }

  /** See {@linkcode RoceTransport.sourcePortFor}; binds the port's socket now if needed. */
  sourcePortFor(port: number): number {
    this.#open();
    if (this.#rawSend !== undefined) return port;
    return this.#socketFor(port) === null ? this.localPort : port;
  }

  /**
   * Receives the datagrams waiting, up to `into.capacity`, with one
   * `recvmmsg`; see {@linkcode RoceTransport.receive}.
   *
   * @throws {TypeError} once closed; {@linkcode SysError} from `recvmmsg`.
   */
  receive(into: DatagramBatch): number {
    this.#open();
    if (this.#rawReceive !== undefined) return this.#rawReceive.receiveBatch(into);
    const n = this.#local.receiveBatch(into);
    if (n === 0) return 0;
    // What a UDP socket does not report is what every vrdma sender puts there.
    const headers = new DataView(into.headers.buffer);
    const fields = {
      sourceIp: 0,
      sourcePort: 0,
      destinationIp: this.localIp,
      destinationPort: this.localPort,
      payloadBytes: 0,
    };
    for (let i = 0; i < n; i++) {
      fields.sourceIp = into.peerIps[i]!;
      fields.sourcePort = into.peerPorts[i]!;
      fields.payloadBytes = into.lengths[i]!;
      writeIpv4UdpHeader(headers, i * IPV4_UDP_HEADER_BYTES, fields);
    }
    return n;
  }

  /** See {@linkcode RoceTransport.releaseSourcePort}. */
  releaseSourcePort(port: number): void {
    const socket = this.#bySourcePort.get(port);
    if (socket === undefined) return;
    this.#bySourcePort.delete(port);
    if (this.#lastPort === port) {
      this.#lastPort = -1;
      this.#lastSocket = undefined;
    }
    if (socket !== null) {
      socket.close();
      this.#stats.sourceSockets--;
    }
  }

  /** Closes every socket. Closing twice is harmless. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const socket of this.#bySourcePort.values()) socket?.close();
    this.#bySourcePort.clear();
    this.#stats.sourceSockets = 0;
    this.#lastSocket = undefined;
    this.#rawSend?.close();
    this.#rawReceive?.close();
    this.#local.close();
  }

  /** Same as {@linkcode UdpTransport.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #open(): void {
    if (this.#closed) {
      throw new TypeError(
        `transport ${formatIpv4(this.localIp)}:${this.localPort} is closed`,
      );
    }
  }

  /**
   * Socket mode: the socket that sends from `port`, made (and cached) on
   * first use, or null when that port cannot be bound.
   */
  #socketFor(port: number): UdpSocket | null {
    if (port === this.#lastPort && this.#lastSocket !== undefined) return this.#lastSocket;
    let socket: UdpSocket | null | undefined;
    if (port === this.#local.local.port) {
      socket = this.#local;
    } else {
      socket = this.#bySourcePort.get(port);
      if (socket === undefined) {
        socket = this.#bindSource(port);
        this.#bySourcePort.set(port, socket);
        this.#evict();
      } else {
        // Move to the end: the map's order is least recently used first.
        this.#bySourcePort.delete(port);
        this.#bySourcePort.set(port, socket);
      }
    }
    if (socket === null) {
      this.#lastPort = -1;
      return null;
    }
    this.#lastPort = port;
    this.#lastSocket = socket;
    return socket;
  }

  /** A send-only socket on `localIp:port`, or null when the port cannot be had. */
  #bindSource(port: number): UdpSocket | null {
    try {
      const socket = UdpSocket.bind({ ip: this.localIp, port }, {
        noChecksum: true,
        sendOnly: true,
        sendBufferBytes: Math.min(this.#sendBufferBytes, SOURCE_SOCKET_SEND_BUFFER),
        stats: this.#stats,
      });
      this.#stats.sourceSockets++;
      return socket;
    } catch (e) {
      if (e instanceof SysError && (e.code === "EADDRINUSE" || e.code === "EMFILE")) return null;
      throw e;
    }
  }

  /** Closes the least recently used send sockets beyond the cap. */
  #evict(): void {
    while (this.#bySourcePort.size > this.#maxSourceSockets) {
      const [port, socket] = this.#bySourcePort.entries().next().value!;
      this.#bySourcePort.delete(port);
      if (socket !== null) {
        socket.close();
        this.#stats.sourceSockets--;
        this.#stats.sourceSocketsEvicted++;
      }
      if (port === this.#lastPort) {
        this.#lastPort = -1;
        this.#lastSocket = undefined;
      }
    }
  }
}

/**
 * Checks `range` of `batch` (default: every slot in use) and the ports of its
 * slots, as every transport's `sendBatch` must. Returns the range.
 *
 * @throws {RangeError} for a range outside the slots in use or a port of 0.
 */
export function checkBatchRange(
  batch: DatagramBatch,
  range?: BatchRange,
): { start: number; count: number } {
  const [start, count] = rangeOf(batch, range);
  for (let i = start; i < start + count; i++) {
    if (batch.peerPorts[i] === 0 || batch.sourcePorts[i] === 0) {
      throw new RangeError(
        `slot ${i}: UDP ports must be 1..65535, got destination ${batch.peerPorts[i]} source ${
          batch.sourcePorts[i]
        }`,
      );
    }
  }
  return { start, count };
}
