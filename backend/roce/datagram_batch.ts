/**
 * A batch of datagrams: one block of slots plus the `mmsghdr`, `iovec` and
 * `sockaddr_in` arrays pointing at them, all made once, so a batch of 32
 * costs one FFI call and no allocation.
 *
 * @module
 */

import { checkIp } from "./ipv4.ts";
import { IPV4_UDP_HEADER_BYTES, MAX_UDP_PAYLOAD } from "./ipv4_udp_header.ts";
import { checkPort, type DatagramAddress } from "./socket_address.ts";
import {
  addressOf,
  AF_INET,
  IOVEC_SIZE,
  MMSGHDR_SIZE,
  MSG_NAMELEN,
  pinned,
  SOCKADDR_IN_SIZE,
} from "./socket_calls.ts";

/** The most datagrams one `sendmmsg`/`recvmmsg` takes (the kernel's UIO_MAXIOV). */
export const MAX_BATCH = 1024;

/** Which slots of a {@linkcode DatagramBatch} a send covers. */
export interface BatchRange {
  /** First slot; default 0. */
  start?: number;
  /** Number of slots; default from `start` to the batch's `count`. */
  count?: number;
}

/**
 * The native arrays behind one {@linkcode DatagramBatch}, for the sockets
 * that hand them to the kernel (see {@linkcode nativeOf}).
 */
export interface NativeBatch {
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
  /** The batch's `headers`, as a view made once. */
  headers: DataView;
}

// Kept out of the class so its public surface stays the slots and their metadata.
const natives = new WeakMap<DatagramBatch, NativeBatch>();

/** The native arrays of `batch`. */
export function nativeOf(batch: DatagramBatch): NativeBatch {
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
 * import { DatagramBatch } from "./datagram_batch.ts";
 * import { parseIpv4 } from "./ipv4.ts";
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
    headers: new DataView(batch.headers.buffer),
  };
}

/**
 * The slots a send covers, checked against the batch: `[start, count]`.
 *
 * @throws {RangeError} for a range outside the slots in use.
 */
export function rangeOf(batch: DatagramBatch, range: BatchRange | undefined): [number, number] {
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
