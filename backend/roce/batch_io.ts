/**
 * Batched send and receive (`sendmmsg`/`recvmmsg`) over the native arrays of
 * a {@linkcode DatagramBatch}, shared by every socket kind of the UDP layer.
 *
 * A batch has two `mmsghdr` arrays: "plain" (one `iovec` per slot: the
 * datagram is the slot) for UDP sockets, and "split" (two: the slot's 28
 * IPv4+UDP header bytes in `headers`, then the slot) for raw sockets, whose
 * datagrams carry their headers.
 *
 * These helpers take their arguments positionally, unlike the public API:
 * they run once per batch on the data path, where an options object would be
 * an allocation per call.
 *
 * @module
 */

import { ERRNO, errno, SysError } from "../../virtqueue/sys/libc.ts";
import { type DatagramBatch, nativeOf } from "./datagram_batch.ts";
import { IPV4_UDP_HEADER_BYTES } from "./ipv4_udp_header.ts";
import {
  IOVEC_SIZE,
  isNoRoom,
  isRefusal,
  MMSGHDR_SIZE,
  MSG_FLAGS,
  MSG_LEN,
  MSG_NAMELEN,
  MSG_TRUNC,
  RECEIVE_FATAL,
  SOCKADDR_IN_SIZE,
  sys,
} from "./socket_calls.ts";
import type { SocketStats } from "./socket_stats.ts";

/**
 * Writes the destinations and lengths of slots `start..start+count` into the
 * native arrays; `bodyIov` is the iovec (0 plain, 2 split) that carries the bytes.
 *
 * @throws {RangeError} for a slot whose length is more than the slot.
 */
export function prepareSend(
  batch: DatagramBatch,
  start: number,
  count: number,
  bodyIov: number,
): void {
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

/**
 * `sendmmsg` over slots `start..start+count` of an already prepared batch;
 * `headers` is the batch's `plainFrom` or `splitFrom`.
 * Returns how many were consumed (sent or refused); stops early when there is
 * no room.
 *
 * @throws {SysError} from `sendmmsg` (EMSGSIZE names the slot).
 */
export function sendPrepared(
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
 * One `recvmmsg` into the slots of `batch` from 0, and all a `receiveBatch`
 * reports: `count`, `lengths`, `truncated`, the source in
 * `peerIps`/`peerPorts`, `headersExact`, and the `received` and `truncated`
 * counts in `stats`.
 *
 * With `split` (a raw receiver) the first 28 bytes of each datagram go to
 * `headers`, `lengths` counts the rest, the source is read from those
 * headers and `headersExact` is set true. Without it (a UDP socket) the
 * source is the `sockaddr_in` the kernel wrote, `headers` are left alone and
 * `headersExact` is set false.
 *
 * @returns how many arrived (0 when none was waiting).
 * @throws {SysError} from `recvmmsg`, only for a broken socket or call.
 */
export function receiveInto(
  fd: number,
  batch: DatagramBatch,
  split: boolean,
  stats: SocketStats,
  target: string,
): number {
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
  // The source of slot i: the IPv4 source address (byte 12) and UDP source
  // port (byte 20) of its header, or the address (4) and port (2) of its
  // sockaddr_in; both in network order.
  const peers = split ? native.headers : native.names;
  const stride = split ? IPV4_UDP_HEADER_BYTES : SOCKADDR_IN_SIZE;
  const ipAt = split ? 12 : 4;
  const portAt = split ? 20 : 2;
  for (let i = 0; i < n; i++) {
    const m = i * MMSGHDR_SIZE;
    const length = view.getUint32(m + MSG_LEN, true) - skip;
    batch.lengths[i] = length < 0 ? 0 : length;
    const cut = (view.getInt32(m + MSG_FLAGS, true) & MSG_TRUNC) !== 0;
    batch.truncated[i] = cut ? 1 : 0;
    if (cut) stats.truncated++;
    batch.peerIps[i] = peers.getUint32(i * stride + ipAt, false);
    batch.peerPorts[i] = peers.getUint16(i * stride + portAt, false);
  }
  batch.count = n;
  stats.received += n;
  batch.headersExact = split;
  return n;
}
