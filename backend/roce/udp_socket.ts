/**
 * IPv4 UDP through libc, for the RoCEv2 host adapter.
 *
 * Deno's own datagram socket is slow, hides its fd (so it cannot join the
 * data plane's epoll set) and cannot set `IP_MTU_DISCOVER`, which the ICRC
 * needs: with `IP_PMTUDISC_DO` on an unconnected socket the kernel sends DF
 * set and IPv4 ID 0, so both ends know every header field the ICRC covers.
 *
 * Three kinds of socket live here:
 * - {@linkcode UdpSocket}: `SOCK_DGRAM`, nonblocking and close-on-exec, with
 *   single and batched (`sendmmsg`/`recvmmsg`) send and receive.
 * - {@linkcode RawUdpSender}: `SOCK_RAW`/`IPPROTO_RAW` (needs CAP_NET_RAW):
 *   sends datagrams with an IPv4 and UDP header written here, so any source
 *   port comes from one fd.
 * - {@linkcode RawUdpReceiver}: `SOCK_RAW`/`IPPROTO_UDP` bound to one local
 *   address with a BPF filter on the destination port (needs CAP_NET_RAW):
 *   receives datagrams with the IPv4 header as it arrived, which a UDP
 *   socket cannot show (the IPv4 ID that a real rxe peer puts in the ICRC;
 *   the header a UD receive puts in the GRH). Tests use it as a capture.
 *
 * A batch of datagrams is a {@linkcode DatagramBatch}: one block of slots
 * plus the `mmsghdr`, `iovec` and `sockaddr_in` arrays pointing at them, all
 * made once, so a batch of 32 costs one FFI call and no allocation.
 *
 * Layouts are x86_64 Linux: `struct msghdr` 56 bytes (name 0, namelen 8,
 * iov 16, iovlen 24, control 32, controllen 40, flags 48), `struct mmsghdr`
 * 64 (msg_len at 56), `struct iovec` 16, `struct sockaddr_in` 16 (family,
 * port and address in network order), `struct sock_filter` 8,
 * `struct sock_fprog` 16.
 *
 * @module
 */

import {
  closeFd,
  ERRNO,
  errno,
  lastError,
  O_CLOEXEC,
  O_NONBLOCK,
  SysError,
} from "../../virtqueue/sys/libc.ts";

/**
 * The socket calls of this file. The `Deno.dlopen` in `virtqueue/sys/libc.ts`
 * does not list them; this one opens the same libc on first use.
 */
const SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  recvfrom: {
    parameters: ["i32", "buffer", "usize", "i32", "buffer", "buffer"],
    result: "isize",
  },
  sendmmsg: { parameters: ["i32", "buffer", "u32", "i32"], result: "i32" },
  recvmmsg: { parameters: ["i32", "buffer", "u32", "i32", "pointer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

type SocketCalls = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
let calls: SocketCalls | undefined;

function sys(): SocketCalls {
  if (calls === undefined) calls = Deno.dlopen("libc.so.6", SYMBOLS).symbols;
  return calls;
}

const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOCK_RAW = 3;
const SOCK_NONBLOCK = O_NONBLOCK;
const SOCK_CLOEXEC = O_CLOEXEC;
const IPPROTO_IP = 0;
const IPPROTO_UDP = 17;
const IPPROTO_RAW = 255;
const SOL_SOCKET = 1;
const SO_REUSEADDR = 2;
const SO_SNDBUF = 7;
const SO_RCVBUF = 8;
const SO_NO_CHECK = 11;
const SO_ATTACH_FILTER = 26;
const SO_SNDBUFFORCE = 32;
const SO_RCVBUFFORCE = 33;
const IP_MTU_DISCOVER = 10;
const IP_PMTUDISC_DO = 2;
const IP_PMTUDISC_DONT = 0;
const MSG_TRUNC = 0x20;

const SOCKADDR_IN_SIZE = 16;
const MMSGHDR_SIZE = 64;
const IOVEC_SIZE = 16;
const MSG_LEN = 56;
const MSG_FLAGS = 48;
const MSG_NAMELEN = 8;

/** Bytes of the IPv4 header (no options) plus the UDP header. */
export const IPV4_UDP_HEADER_BYTES = 28;
/** The largest UDP payload an IPv4 datagram can carry (65535 - 20 - 8). */
export const MAX_UDP_PAYLOAD = 65507;
/** The most datagrams one `sendmmsg`/`recvmmsg` takes (the kernel's UIO_MAXIOV). */
export const MAX_BATCH = 1024;
/** TTL of every datagram this file sends: Linux's default, and what rxe sends. */
export const IPV4_TTL = 64;

export { formatIpv4, IPV4_DF, parseIpv4 } from "./ipv4.ts";
import { checkIp, formatIpv4, IPV4_DF, parseIpv4 } from "./ipv4.ts";

/** A buffer off the V8 heap (an explicit `ArrayBuffer`), so its address is stable. */
function pinned(size: number): Uint8Array<ArrayBuffer> {
  return new Uint8Array(new ArrayBuffer(size));
}

function addressOf(bytes: Uint8Array): bigint {
  return Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes));
}

function checkPort(port: number, what: string): void {
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(`${what} must be an integer 0..65535, got ${port}`);
  }
}

/** `ip` as a host-order u32, from either form. */
function ipValue(ip: string | number): number {
  if (typeof ip === "string") return parseIpv4(ip);
  checkIp(ip);
  return ip;
}

/** `"ip:port"` for messages. */
function endpointName(ip: number, port: number): string {
  return `${formatIpv4(ip)}:${port}`;
}

/** An IPv4 address and UDP port; `ip` is a host-order u32 (see {@linkcode parseIpv4}). */
export interface SocketAddress {
  /** IPv4 address, host-order u32. */
  ip: number;
  /** UDP port. */
  port: number;
}

/** A destination and the UDP source port to send from. */
export interface DatagramAddress extends SocketAddress {
  /** UDP source port. */
  sourcePort: number;
}

/** Where a socket binds: the address as a dotted quad or a u32, and the port (0: any free one). */
export interface BindAddress {
  /** Local IPv4 address. */
  ip: string | number;
  /** Local UDP port; 0 lets the kernel pick one. */
  port: number;
}

/** Which slots of a {@linkcode DatagramBatch} a send covers. */
export interface BatchRange {
  /** First slot; default 0. */
  start?: number;
  /** Number of slots; default from `start` to the batch's `count`. */
  count?: number;
}

/** The native arrays behind one {@linkcode DatagramBatch}. */
interface NativeBatch {
  /** `sockaddr_in` per slot. */
  names: DataView;
  /** `mmsghdr` per slot, one `iovec` each: the slot's bytes. */
  plain: DataView;
  /** `plain` from slot i on, for calls starting mid-batch. */
  plainFrom: Uint8Array<ArrayBuffer>[];
  /** `mmsghdr` per slot, two `iovec`s each: the slot's 28 header bytes, then its bytes. */
  split: DataView;
  /** `split` from slot i on. */
  splitFrom: Uint8Array<ArrayBuffer>[];
  /** The `iovec` array (three per slot: plain, header, body). */
  iovs: DataView;
}

const natives = new WeakMap<DatagramBatch, NativeBatch>();

function nativeOf(batch: DatagramBatch): NativeBatch {
  // Every batch registers itself in its constructor, so this always hits.
  return natives.get(batch)!;
}

/**
 * A fixed set of datagram slots and the per-slot metadata that goes with
 * them, made once and reused for every batched send and receive.
 *
 * Sending: write each datagram into `slots[i]`, set `lengths[i]`,
 * `peerIps[i]`, `peerPorts[i]` (destination) and `sourcePorts[i]`, set
 * `count`, then pass the batch to a `sendBatch`. {@linkcode DatagramBatch.push}
 * does all of that from a byte array.
 *
 * Receiving: a `receiveBatch` fills slots from 0 and sets `count`; for each,
 * `lengths[i]` (bytes stored), `peerIps[i]`/`peerPorts[i]` (source),
 * `truncated[i]` (1 if the datagram was longer than the slot and was cut)
 * and, from receivers that see it, the IPv4 and UDP headers in
 * `headers` at `i * 28` (`headersExact` says whether they came off the wire).
 *
 * @example
 * ```ts
 * import { DatagramBatch, parseIpv4 } from "./udp_socket.ts";
 * const batch = new DatagramBatch(4, 2048);
 * batch.push(new Uint8Array([1, 2, 3]), { ip: parseIpv4("127.0.0.3"), port: 4791, sourcePort: 49441 });
 * if (batch.count !== 1 || batch.lengths[0] !== 3 || batch.sourcePorts[0] !== 49441) {
 *   throw new Error("not stored");
 * }
 * ```
 */
export class DatagramBatch {
  /** Number of slots. */
  readonly capacity: number;
  /** Bytes each slot holds. */
  readonly slotBytes: number;
  /** Every slot, back to back (slot i at `i * slotBytes`). */
  readonly bytes: Uint8Array<ArrayBuffer>;
  /** Slot i's bytes, the whole `slotBytes` of them. */
  readonly slots: readonly Uint8Array<ArrayBuffer>[];
  /** Datagram length per slot. */
  readonly lengths: Uint32Array<ArrayBuffer>;
  /** Peer IPv4 address per slot (host-order u32): the destination when sending, the source when receiving. */
  readonly peerIps: Uint32Array<ArrayBuffer>;
  /** Peer UDP port per slot: the destination when sending, the source when receiving. */
  readonly peerPorts: Uint16Array<ArrayBuffer>;
  /** UDP source port per slot, when sending. */
  readonly sourcePorts: Uint16Array<ArrayBuffer>;
  /** 1 where a received datagram was longer than its slot and was cut to `slotBytes`. */
  readonly truncated: Uint8Array<ArrayBuffer>;
  /** IPv4 header (20 bytes) then UDP header (8 bytes) per slot, at `i * 28`. */
  readonly headers: Uint8Array<ArrayBuffer>;
  /** Number of slots in use. */
  count = 0;
  /**
   * Whether the last receive copied `headers` off the wire (a raw receiver)
   * rather than rebuilding them from what a UDP socket reports.
   */
  headersExact = false;

  /**
   * Makes `capacity` slots of `slotBytes` each.
   *
   * @throws {RangeError} for a capacity outside 1..{@linkcode MAX_BATCH} or a
   *   slot size outside 1..{@linkcode MAX_UDP_PAYLOAD}.
   */
  constructor(capacity: number, slotBytes: number) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > MAX_BATCH) {
      throw new RangeError(`batch capacity must be an integer 1..${MAX_BATCH}, got ${capacity}`);
    }
    if (!Number.isInteger(slotBytes) || slotBytes < 1 || slotBytes > MAX_UDP_PAYLOAD) {
      throw new RangeError(
        `batch slot size must be an integer 1..${MAX_UDP_PAYLOAD} bytes, got ${slotBytes}`,
      );
    }
    this.capacity = capacity;
    this.slotBytes = slotBytes;
    this.bytes = pinned(capacity * slotBytes);
    const slots: Uint8Array<ArrayBuffer>[] = [];
    for (let i = 0; i < capacity; i++) {
      slots.push(this.bytes.subarray(i * slotBytes, (i + 1) * slotBytes));
    }
    this.slots = slots;
    this.lengths = new Uint32Array(capacity);
    this.peerIps = new Uint32Array(capacity);
    this.peerPorts = new Uint16Array(capacity);
    this.sourcePorts = new Uint16Array(capacity);
    this.truncated = new Uint8Array(capacity);
    this.headers = pinned(capacity * IPV4_UDP_HEADER_BYTES);
    natives.set(this, buildNative(this));
  }

  /** Slot i's datagram: `slots[i]` cut to `lengths[i]` (a new view each call). */
  datagram(i: number): Uint8Array<ArrayBuffer> {
    if (!Number.isInteger(i) || i < 0 || i >= this.count) {
      throw new RangeError(`datagram index must be an integer 0..${this.count - 1}, got ${i}`);
    }
    return this.slots[i]!.subarray(0, this.lengths[i]!);
  }

  /**
   * Copies `bytes` into the next free slot with its destination and source
   * port, and counts it.
   *
   * @throws {RangeError} when the batch is full, `bytes` is longer than a
   *   slot, or the address or port is out of range.
   */
  push(bytes: Uint8Array, to: DatagramAddress): void {
    if (this.count >= this.capacity) {
      throw new RangeError(`batch is full: all ${this.capacity} slots are in use`);
    }
    if (bytes.byteLength > this.slotBytes) {
      throw new RangeError(
        `datagram of ${bytes.byteLength} bytes does not fit a ${this.slotBytes}-byte slot`,
      );
    }
    checkIp(to.ip);
    checkPort(to.port, "destination port");
    checkPort(to.sourcePort, "source port");
    const i = this.count++;
    this.slots[i]!.set(bytes);
    this.lengths[i] = bytes.byteLength;
    this.peerIps[i] = to.ip;
    this.peerPorts[i] = to.port;
    this.sourcePorts[i] = to.sourcePort;
  }

  /** Marks every slot free (`count = 0`). */
  clear(): void {
    this.count = 0;
  }
}

/** Makes the native arrays of `batch` and points them at its slots once. */
function buildNative(batch: DatagramBatch): NativeBatch {
  const n = batch.capacity;
  const names = pinned(n * SOCKADDR_IN_SIZE);
  const plain = pinned(n * MMSGHDR_SIZE);
  const split = pinned(n * MMSGHDR_SIZE);
  const iovs = pinned(n * 3 * IOVEC_SIZE);
  const namesView = new DataView(names.buffer);
  const plainView = new DataView(plain.buffer);
  const splitView = new DataView(split.buffer);
  const iovView = new DataView(iovs.buffer);
  const namesAt = addressOf(names);
  const iovsAt = addressOf(iovs);
  const bytesAt = addressOf(batch.bytes);
  const headersAt = addressOf(batch.headers);
  const plainFrom: Uint8Array<ArrayBuffer>[] = [];
  const splitFrom: Uint8Array<ArrayBuffer>[] = [];
  for (let i = 0; i < n; i++) {
    namesView.setUint16(i * SOCKADDR_IN_SIZE, AF_INET, true);
    const iov = i * 3 * IOVEC_SIZE;
    const body = bytesAt + BigInt(i * batch.slotBytes);
    iovView.setBigUint64(iov, body, true);
    iovView.setBigUint64(iov + 8, BigInt(batch.slotBytes), true);
    iovView.setBigUint64(iov + 16, headersAt + BigInt(i * IPV4_UDP_HEADER_BYTES), true);
    iovView.setBigUint64(iov + 24, BigInt(IPV4_UDP_HEADER_BYTES), true);
    iovView.setBigUint64(iov + 32, body, true);
    iovView.setBigUint64(iov + 40, BigInt(batch.slotBytes), true);
    const name = namesAt + BigInt(i * SOCKADDR_IN_SIZE);
    const m = i * MMSGHDR_SIZE;
    for (
      const [view, iovAt, iovCount] of [[plainView, iov, 1n], [splitView, iov + 16, 2n]] as const
    ) {
      view.setBigUint64(m, name, true);
      view.setUint32(m + MSG_NAMELEN, SOCKADDR_IN_SIZE, true);
      view.setBigUint64(m + 16, iovsAt + BigInt(iovAt), true);
      view.setBigUint64(m + 24, iovCount, true);
    }
    plainFrom.push(plain.subarray(m));
    splitFrom.push(split.subarray(m));
  }
  return {
    names: namesView,
    plain: plainView,
    plainFrom,
    split: splitView,
    splitFrom,
    iovs: iovView,
  };
}

/** The slots a send covers, checked against the batch. */
function rangeOf(batch: DatagramBatch, range: BatchRange | undefined): [number, number] {
  const start = range?.start ?? 0;
  const count = range?.count ?? batch.count - start;
  if (
    !Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 0 ||
    start + count > batch.count
  ) {
    throw new RangeError(
      `batch range start ${start} count ${count} is outside the ${batch.count} slots in use`,
    );
  }
  return [start, count];
}

/**
 * Writes the destinations and lengths of slots `start..start+count` into the
 * native arrays; `bodyIov` is the iovec (0 plain, 2 split) that carries the bytes.
 */
function prepareSend(batch: DatagramBatch, start: number, count: number, bodyIov: number): void {
  const native = nativeOf(batch);
  const names = native.names;
  const iovs = native.iovs;
  for (let i = start; i < start + count; i++) {
    const length = batch.lengths[i]!;
    if (length > batch.slotBytes) {
      throw new RangeError(
        `slot ${i} length ${length} is more than the ${batch.slotBytes}-byte slot`,
      );
    }
    names.setUint16(i * SOCKADDR_IN_SIZE + 2, batch.peerPorts[i]!, false);
    names.setUint32(i * SOCKADDR_IN_SIZE + 4, batch.peerIps[i]!, false);
    iovs.setBigUint64((i * 3 + bodyIov) * IOVEC_SIZE + 8, BigInt(length), true);
  }
}

/** Resets the fields a receive writes in the first `count` native slots. */
function prepareReceive(batch: DatagramBatch, count: number, split: boolean): DataView {
  const native = nativeOf(batch);
  const view = split ? native.split : native.plain;
  const iovs = native.iovs;
  const slotLength = BigInt(batch.slotBytes);
  for (let i = 0; i < count; i++) {
    const m = i * MMSGHDR_SIZE;
    view.setUint32(m + MSG_NAMELEN, SOCKADDR_IN_SIZE, true);
    view.setInt32(m + MSG_FLAGS, 0, true);
    // A send may have shortened the body iovec; a receive offers the whole slot.
    iovs.setBigUint64((i * 3 + (split ? 2 : 0)) * IOVEC_SIZE + 8, slotLength, true);
  }
  return view;
}

/**
 * Writes an IPv4 header (20 bytes, no options) and a UDP header (8 bytes) at
 * `offset` of `view`, as every datagram of this layer goes on the wire:
 * version 4, IHL 5, TOS 0, total length, ID 0, DF, TTL 64, protocol UDP,
 * header checksum 0 (the kernel fills it in; the ICRC masks it), UDP length
 * and UDP checksum 0 (as rxe sends; the ICRC protects the payload).
 *
 * The RoCE engine can build the ICRC pseudo-header with it, so what it
 * hashes is exactly what leaves.
 *
 * @example
 * ```ts
 * import { writeIpv4UdpHeader } from "./udp_socket.ts";
 * const h = new DataView(new ArrayBuffer(28));
 * writeIpv4UdpHeader(h, 0, {
 *   sourceIp: 0x7f000002, sourcePort: 49441, destinationIp: 0x7f000003, destinationPort: 4791,
 *   payloadBytes: 100,
 * });
 * if (h.getUint16(2) !== 128 || h.getUint16(6) !== 0x4000 || h.getUint16(24) !== 108) {
 *   throw new Error("wrong header");
 * }
 * ```
 */
export function writeIpv4UdpHeader(view: DataView, offset: number, fields: HeaderFields): void {
  view.setUint32(offset, 0x4500_0000 | (IPV4_UDP_HEADER_BYTES + fields.payloadBytes));
  view.setUint32(offset + 4, IPV4_DF);
  view.setUint32(offset + 8, (IPV4_TTL << 24) | (IPPROTO_UDP << 16));
  view.setUint32(offset + 12, fields.sourceIp);
  view.setUint32(offset + 16, fields.destinationIp);
  view.setUint16(offset + 20, fields.sourcePort);
  view.setUint16(offset + 22, fields.destinationPort);
  view.setUint32(offset + 24, (8 + fields.payloadBytes) << 16);
}

/** The fields of {@linkcode writeIpv4UdpHeader}. */
export interface HeaderFields {
  /** Source IPv4 address, host-order u32. */
  sourceIp: number;
  /** UDP source port. */
  sourcePort: number;
  /** Destination IPv4 address, host-order u32. */
  destinationIp: number;
  /** UDP destination port. */
  destinationPort: number;
  /** UDP payload bytes (0..{@linkcode MAX_UDP_PAYLOAD}). */
  payloadBytes: number;
}

/** Counters of one socket; they only grow. */
export interface SocketStats {
  /** Datagrams handed to the kernel. */
  sent: number;
  /**
   * Datagrams the kernel refused for a network reason (EPERM from a
   * firewall rule, EHOSTUNREACH, ENETUNREACH, ECONNREFUSED, EACCES): they
   * count as sent and lost, as the network would have lost them.
   */
  refused: number;
  /** Sends that found no room (EAGAIN, ENOBUFS) and left the datagram to the caller. */
  wouldBlock: number;
  /** Datagrams received. */
  received: number;
  /** Received datagrams longer than the buffer, cut to fit. */
  truncated: number;
}

/** Zeroed {@linkcode SocketStats}. */
export function newStats(): SocketStats {
  return { sent: 0, refused: 0, wouldBlock: 0, received: 0, truncated: 0 };
}

/** Errors after which a datagram is gone for good, as if the network dropped it. */
function isRefusal(e: number): boolean {
  return e === ERRNO.EPERM || e === ERRNO.EACCES || e === ERRNO.EHOSTUNREACH ||
    e === ERRNO.ENETUNREACH || e === ERRNO.ECONNREFUSED;
}

/** Errors after which the same datagram may be sent again later. */
function isNoRoom(e: number): boolean {
  return e === ERRNO.EAGAIN || e === ERRNO.ENOBUFS || e === ERRNO.EINTR;
}

/**
 * `sendmmsg` over slots `start..start+count` of an already prepared batch.
 * Returns how many were consumed (sent or refused); stops early when there is
 * no room.
 */
function sendPrepared(
  fd: number,
  headers: readonly Uint8Array<ArrayBuffer>[],
  start: number,
  count: number,
  stats: SocketStats,
  target: string,
): number {
  const calls = sys();
  let done = 0;
  while (done < count) {
    const n = calls.sendmmsg(fd, headers[start + done]!, count - done, 0);
    if (n > 0) {
      done += n;
      stats.sent += n;
      continue;
    }
    const e = errno();
    if (n === 0 || isNoRoom(e)) {
      stats.wouldBlock++;
      break;
    }
    if (isRefusal(e)) {
      // The first datagram of the call was refused: skip it and go on.
      stats.refused++;
      done++;
      continue;
    }
    throw new SysError("sendmmsg", e, {
      target,
      note: e === ERRNO.EMSGSIZE ? `slot ${start + done} is too long for the path` : undefined,
    });
  }
  return done;
}

function setIntOption(fd: number, level: number, name: number, value: number): number {
  const v = pinned(4);
  new DataView(v.buffer).setInt32(0, value, true);
  return sys().setsockopt(fd, level, name, v, 4);
}

function getIntOption(fd: number, level: number, name: number, target: string): number {
  const v = pinned(4);
  const len = pinned(4);
  new DataView(len.buffer).setUint32(0, 4, true);
  if (sys().getsockopt(fd, level, name, v, len) < 0) throw lastError("getsockopt", { target });
  return new DataView(v.buffer).getInt32(0, true);
}

/**
 * Asks for a socket buffer of `bytes`: the FORCE option first (CAP_NET_ADMIN
 * passes `net.core.[rw]mem_max`), then the plain one, which the kernel caps.
 */
function setBufferSize(fd: number, send: boolean, bytes: number, target: string): void {
  if (!Number.isInteger(bytes) || bytes < 1024 || bytes > 0x3fff_ffff) {
    throw new RangeError(`socket buffer size must be an integer 1024..2^30-1, got ${bytes}`);
  }
  const force = send ? SO_SNDBUFFORCE : SO_RCVBUFFORCE;
  if (setIntOption(fd, SOL_SOCKET, force, bytes) === 0) return;
  if (setIntOption(fd, SOL_SOCKET, send ? SO_SNDBUF : SO_RCVBUF, bytes) < 0) {
    throw lastError("setsockopt", { target, note: `${send ? "SO_SNDBUF" : "SO_RCVBUF"} ${bytes}` });
  }
}

/** One classic BPF instruction: code, jump-if-true, jump-if-false, constant. */
type BpfInstruction = readonly [code: number, jt: number, jf: number, k: number];

/** Attaches a classic BPF program (`SO_ATTACH_FILTER`): it decides which datagrams the socket keeps. */
function attachFilter(fd: number, program: readonly BpfInstruction[], target: string): void {
  const code = pinned(program.length * 8);
  const view = new DataView(code.buffer);
  program.forEach(([op, jt, jf, k], i) => {
    view.setUint16(i * 8, op, true);
    view.setUint8(i * 8 + 2, jt);
    view.setUint8(i * 8 + 3, jf);
    view.setUint32(i * 8 + 4, k, true);
  });
  const fprog = pinned(16);
  const fview = new DataView(fprog.buffer);
  fview.setUint16(0, program.length, true);
  fview.setBigUint64(8, addressOf(code), true);
  if (sys().setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, fprog, 16) < 0) {
    throw lastError("setsockopt", { target, note: "SO_ATTACH_FILTER" });
  }
}

// Classic BPF opcodes (linux/filter.h).
const BPF_LD_B_ABS = 0x30;
const BPF_LD_H_ABS = 0x28;
const BPF_JEQ_K = 0x15;
const BPF_JEQ_X = 0x1d;
const BPF_JSET_K = 0x45;
const BPF_ADD_K = 0x04;
const BPF_TAX = 0x07;
const BPF_RET_K = 0x06;

/** A filter that keeps nothing: for sockets that only send. */
const DROP_ALL: readonly BpfInstruction[] = [[BPF_RET_K, 0, 0, 0]];

/**
 * A filter for a raw `IPPROTO_UDP` socket, whose programs see the packet from
 * the IPv4 header on: keep datagrams with a plain 20-byte header, not
 * fragments, whose UDP length agrees with the IPv4 length, and (if given)
 * to `port`. What is kept then always has its payload at byte 28.
 */
function udpFilter(port: number | undefined): BpfInstruction[] {
  const accept: BpfInstruction = [BPF_RET_K, 0, 0, 0x4_0000];
  const drop: BpfInstruction = [BPF_RET_K, 0, 0, 0];
  const head: BpfInstruction[] = [
    [BPF_LD_B_ABS, 0, 0, 0],
    [BPF_JEQ_K, 0, 0, 0x45], // jf patched below
    [BPF_LD_H_ABS, 0, 0, 6],
    [BPF_JSET_K, 0, 0, 0x3fff], // jt patched
    [BPF_LD_H_ABS, 0, 0, 2],
    [BPF_TAX, 0, 0, 0],
    [BPF_LD_H_ABS, 0, 0, 24],
    [BPF_ADD_K, 0, 0, 20],
    [BPF_JEQ_X, 0, 0, 0], // jf patched
  ];
  if (port !== undefined) {
    head.push([BPF_LD_H_ABS, 0, 0, 22], [BPF_JEQ_K, 0, 0, port]);
  }
  const program = [...head, accept, drop];
  const dropAt = program.length - 1;
  // Jump offsets count from the next instruction.
  const to = (from: number): number => dropAt - from - 1;
  program[1] = [BPF_JEQ_K, 0, to(1), 0x45];
  program[3] = [BPF_JSET_K, to(3), 0, 0x3fff];
  program[8] = [BPF_JEQ_X, 0, to(8), 0];
  if (port !== undefined) program[10] = [BPF_JEQ_K, 0, to(10), port];
  return program;
}

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
export class UdpSocket {
  #fd: number;
  readonly #local: Readonly<SocketAddress>;
  readonly #name: string;
  readonly #address = pinned(SOCKADDR_IN_SIZE);
  readonly #addressView = new DataView(this.#address.buffer);
  readonly #addressLength = pinned(4);
  readonly #stats: SocketStats;

  private constructor(fd: number, local: SocketAddress, stats: SocketStats) {
    this.#fd = fd;
    this.#stats = stats;
    this.#local = Object.freeze({ ...local });
    this.#name = `udp ${endpointName(local.ip, local.port)}`;
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
  static bind(address: BindAddress, options: UdpSocketOptions = {}): UdpSocket {
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

  /** The file descriptor (for an epoll set), or -1 once closed. */
  get fd(): number {
    return this.#fd;
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
    return getIntOption(this.#live(), SOL_SOCKET, SO_SNDBUF, this.#name);
  }

  /** The receive buffer size the kernel granted (`SO_RCVBUF`, already doubled). */
  get receiveBufferBytes(): number {
    return getIntOption(this.#live(), SOL_SOCKET, SO_RCVBUF, this.#name);
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
    const fd = this.#live();
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
    const fd = this.#live();
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
    const fd = this.#live();
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
    const fd = this.#live();
    const n = receiveInto(fd, batch, false, this.#name);
    const names = nativeOf(batch).names;
    for (let i = 0; i < n; i++) {
      batch.peerIps[i] = names.getUint32(i * SOCKADDR_IN_SIZE + 4, false);
      batch.peerPorts[i] = names.getUint16(i * SOCKADDR_IN_SIZE + 2, false);
      if (batch.truncated[i] === 1) this.#stats.truncated++;
    }
    this.#stats.received += n;
    batch.headersExact = false;
    return n;
  }

  /** Closes the socket; later calls throw. Closing twice is harmless. */
  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    closeFd(fd);
  }

  /** Same as {@linkcode UdpSocket.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #live(): number {
    if (this.#fd < 0) throw new TypeError(`${this.#name} is closed`);
    return this.#fd;
  }
}

/** The errno values that make a receive an error rather than "nothing yet". */
const RECEIVE_FATAL: ReadonlySet<number> = new Set([
  ERRNO.EBADF,
  ERRNO.EFAULT,
  ERRNO.EINVAL,
  ERRNO.ENOTSOCK,
]);

/**
 * One `recvmmsg` into `batch`: sets `count`, `lengths` and `truncated`.
 * With `split`, the first 28 bytes of each datagram go to `headers` and
 * `lengths` counts the rest.
 */
function receiveInto(fd: number, batch: DatagramBatch, split: boolean, target: string): number {
  const view = prepareReceive(batch, batch.capacity, split);
  const native = nativeOf(batch);
  const from = split ? native.splitFrom[0]! : native.plainFrom[0]!;
  let n = 0;
  // EINTR is retried a few times; a signal storm then reads as "nothing yet".
  for (let attempt = 0; attempt < 8; attempt++) {
    const got = sys().recvmmsg(fd, from, batch.capacity, 0, null);
    if (got >= 0) {
      n = got;
      break;
    }
    const e = errno();
    if (e === ERRNO.EINTR) continue;
    // Only a broken socket or call is an error. Anything else reads as
    // "nothing now": EAGAIN, and errno values recvmmsg never sets (seen
    // here: ENOENT), which mean errno was overwritten before it was read.
    if (RECEIVE_FATAL.has(e)) throw new SysError("recvmmsg", e, { target });
    break;
  }
  const skip = split ? IPV4_UDP_HEADER_BYTES : 0;
  for (let i = 0; i < n; i++) {
    const m = i * MMSGHDR_SIZE;
    const length = view.getUint32(m + MSG_LEN, true) - skip;
    batch.lengths[i] = length < 0 ? 0 : length;
    batch.truncated[i] = (view.getInt32(m + MSG_FLAGS, true) & MSG_TRUNC) !== 0 ? 1 : 0;
  }
  batch.count = n;
  return n;
}

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
 * import { parseIpv4, RawUdpSender } from "./udp_socket.ts";
 * using raw = RawUdpSender.open(parseIpv4("127.0.0.2"));
 * raw.sendTo(new Uint8Array(8), { ip: parseIpv4("127.0.0.3"), port: 4791, sourcePort: 49441 });
 * ```
 */
export class RawUdpSender {
  #fd: number;
  readonly #sourceIp: number;
  readonly #name: string;
  readonly #stats: SocketStats;
  /** A one-slot batch whose body iovec points at the caller's bytes during `sendTo`. */
  readonly #one = new DatagramBatch(1, 1);

  private constructor(fd: number, sourceIp: number, stats: SocketStats) {
    this.#fd = fd;
    this.#sourceIp = sourceIp;
    this.#stats = stats;
    this.#name = `raw udp from ${formatIpv4(sourceIp)}`;
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

  /** The file descriptor, or -1 once closed. */
  get fd(): number {
    return this.#fd;
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
    const fd = this.#live();
    checkIp(to.ip);
    checkPort(to.port, "destination port");
    checkPort(to.sourcePort, "source port");
    if (bytes.byteLength > MAX_UDP_PAYLOAD) {
      throw new RangeError(
        `UDP payload must be at most ${MAX_UDP_PAYLOAD} bytes, got ${bytes.byteLength}`,
      );
    }
    const one = this.#one;
    writeIpv4UdpHeader(new DataView(one.headers.buffer), 0, {
      sourceIp: this.#sourceIp,
      sourcePort: to.sourcePort,
      destinationIp: to.ip,
      destinationPort: to.port,
      payloadBytes: bytes.byteLength,
    });
    const native = nativeOf(one);
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
    const fd = this.#live();
    const [start, count] = rangeOf(batch, range);
    if (count === 0) return 0;
    prepareSend(batch, start, count, 2);
    const headers = new DataView(batch.headers.buffer);
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
      writeIpv4UdpHeader(headers, i * IPV4_UDP_HEADER_BYTES, fields);
    }
    return sendPrepared(fd, nativeOf(batch).splitFrom, start, count, this.#stats, this.#name);
  }

  /** Closes the socket. Closing twice is harmless. */
  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    closeFd(fd);
  }

  /** Same as {@linkcode RawUdpSender.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #live(): number {
    if (this.#fd < 0) throw new TypeError(`${this.#name} is closed`);
    return this.#fd;
  }
}

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
 * import { DatagramBatch, parseIpv4, RawUdpReceiver } from "./udp_socket.ts";
 * using capture = RawUdpReceiver.open(parseIpv4("127.0.0.3"), { port: 4791 });
 * const batch = new DatagramBatch(32, 4200);
 * const n = capture.receiveBatch(batch); // headers in batch.headers
 * ```
 */
export class RawUdpReceiver {
  #fd: number;
  readonly #local: number;
  readonly #name: string;
  readonly #stats: SocketStats;

  private constructor(fd: number, local: number, name: string, stats: SocketStats) {
    this.#fd = fd;
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

  /** The file descriptor (for an epoll set), or -1 once closed. */
  get fd(): number {
    return this.#fd;
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
    const fd = this.#live();
    const n = receiveInto(fd, batch, true, this.#name);
    const headers = new DataView(batch.headers.buffer);
    for (let i = 0; i < n; i++) {
      const h = i * IPV4_UDP_HEADER_BYTES;
      batch.peerIps[i] = headers.getUint32(h + 12);
      batch.peerPorts[i] = headers.getUint16(h + 20);
      if (batch.truncated[i] === 1) this.#stats.truncated++;
    }
    this.#stats.received += n;
    batch.headersExact = true;
    return n;
  }

  /** Closes the socket. Closing twice is harmless. */
  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    closeFd(fd);
  }

  /** Same as {@linkcode RawUdpReceiver.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #live(): number {
    if (this.#fd < 0) throw new TypeError(`${this.#name} is closed`);
    return this.#fd;
  }
}

/**
 * Whether this process may open raw sockets (CAP_NET_RAW), found by trying.
 *
 * @example
 * ```ts
 * import { canOpenRawSockets } from "./udp_socket.ts";
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
