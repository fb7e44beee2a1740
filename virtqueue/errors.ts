/**
 * The one error class of the virtqueue code, with a `kind` for every way a
 * peer (or a misconfigured queue) can be wrong.
 *
 * The device side never trusts the driver and the driver side never trusts
 * the device: each hostile case gets its own kind and its own factory, so a
 * session can log it, mark the queue broken and tests can assert exactly
 * which rule was broken. Every message names the values involved.
 *
 * @module
 */

/**
 * Which rule was broken.
 *
 * Device side (hostile driver): `chain-too-long`, `next-out-of-range`,
 * `head-out-of-range`, `avail-idx-jump`, `address`, `length-overflow`,
 * `nested-indirect`, `indirect-length`, `indirect-with-next`,
 * `indirect-not-negotiated`, `readable-after-writable`.
 * Driver side (hostile device): `used-id`, `used-len`, `used-idx-jump`.
 * Queue placement: `misaligned`, `area-outside-memory`, `areas-overlap`.
 * Copying across a chain: `overrun`. Anything unforeseen: `internal`.
 */
export type VirtqueueErrorKind =
  | "chain-too-long"
  | "next-out-of-range"
  | "head-out-of-range"
  | "avail-idx-jump"
  | "address"
  | "length-overflow"
  | "nested-indirect"
  | "indirect-length"
  | "indirect-with-next"
  | "indirect-not-negotiated"
  | "readable-after-writable"
  | "used-id"
  | "used-len"
  | "used-idx-jump"
  | "misaligned"
  | "area-outside-memory"
  | "areas-overlap"
  | "overrun"
  | "internal";

function hex(value: number): string {
  return value < 0 ? String(value) : `0x${value.toString(16)}`;
}

/**
 * A virtqueue rule broken by the peer or by the queue's placement.
 *
 * It is a `RangeError`: every case is a guest-controlled value (an index, an
 * address, a length) outside the range the specification allows.
 *
 * @example
 * ```ts
 * import { VirtqueueError } from "./errors.ts";
 * const e = VirtqueueError.headOutOfRange(300, 256);
 * if (e.kind !== "head-out-of-range" || !(e instanceof RangeError)) throw new Error("wrong kind");
 * ```
 */
export class VirtqueueError extends RangeError {
  /** Which rule was broken. */
  readonly kind: VirtqueueErrorKind;

  /** Builds the error; prefer the static factories, which word the message. */
  constructor(kind: VirtqueueErrorKind, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "VirtqueueError";
    this.kind = kind;
  }

  /** A chain that did not end within `limit` descriptors: a loop, or longer than the table. */
  static chainTooLong(head: number, limit: number): VirtqueueError {
    return new VirtqueueError(
      "chain-too-long",
      `descriptor chain at head ${head} does not end within ${limit} descriptors (a loop or an over-long chain)`,
    );
  }

  /** A `next` field that points past the table it indexes (`where` names that table). */
  static nextOutOfRange(
    head: number,
    next: number,
    entries: number,
    where: string,
  ): VirtqueueError {
    return new VirtqueueError(
      "next-out-of-range",
      `descriptor chain at head ${head}: next ${next} is past the ${where} of ${entries} entries`,
    );
  }

  /** An available-ring entry naming a head past the descriptor table. */
  static headOutOfRange(head: number, size: number): VirtqueueError {
    return new VirtqueueError(
      "head-out-of-range",
      `available ring names head ${head}, past the descriptor table of ${size} entries`,
    );
  }

  /** An available index more than a queue size ahead of what the device has consumed. */
  static availIdxJump(availIdx: number, lastAvail: number, size: number): VirtqueueError {
    const ahead = (availIdx - lastAvail) & 0xffff;
    return new VirtqueueError(
      "avail-idx-jump",
      `available idx ${availIdx} is ${ahead} entries ahead of ${lastAvail}, more than the queue size ${size}`,
    );
  }

  /** A buffer (or indirect table) that is not inside guest memory. */
  static address(head: number, addr: number, len: number, options?: ErrorOptions): VirtqueueError {
    return new VirtqueueError(
      "address",
      `descriptor chain at head ${head}: buffer ${hex(addr)}+${len} is outside guest memory`,
      options,
    );
  }

  /** A chain whose lengths add up to 2^32 bytes or more. */
  static lengthOverflow(head: number, total: number): VirtqueueError {
    return new VirtqueueError(
      "length-overflow",
      `descriptor chain at head ${head}: total length ${total} reaches 2^32`,
    );
  }

  /** An INDIRECT descriptor inside an indirect table. */
  static nestedIndirect(head: number, index: number): VirtqueueError {
    return new VirtqueueError(
      "nested-indirect",
      `descriptor chain at head ${head}: indirect table entry ${index} is itself INDIRECT`,
    );
  }

  /** An indirect table length that is zero, not a multiple of 16, or more than `size` entries. */
  static indirectLength(head: number, len: number, size: number): VirtqueueError {
    return new VirtqueueError(
      "indirect-length",
      `descriptor chain at head ${head}: indirect table length ${len} is not a non-zero ` +
        `multiple of 16 of at most ${size * 16} bytes`,
    );
  }

  /** A descriptor with both INDIRECT and NEXT set. */
  static indirectWithNext(head: number, index: number): VirtqueueError {
    return new VirtqueueError(
      "indirect-with-next",
      `descriptor chain at head ${head}: descriptor ${index} sets both INDIRECT and NEXT`,
    );
  }

  /** An INDIRECT descriptor on a queue without VIRTIO_RING_F_INDIRECT_DESC. */
  static indirectNotNegotiated(head: number, index: number): VirtqueueError {
    return new VirtqueueError(
      "indirect-not-negotiated",
      `descriptor chain at head ${head}: descriptor ${index} is INDIRECT but ` +
        `VIRTIO_RING_F_INDIRECT_DESC was not negotiated`,
    );
  }

  /** A device-readable descriptor after a device-writable one. */
  static readableAfterWritable(head: number, position: number): VirtqueueError {
    return new VirtqueueError(
      "readable-after-writable",
      `descriptor chain at head ${head}: buffer ${position} is device-readable after a writable one`,
    );
  }

  /** A used entry whose id is not a head the driver has outstanding. */
  static usedId(id: number, size: number): VirtqueueError {
    return new VirtqueueError(
      "used-id",
      `used ring returns id ${id}, which is not an outstanding head of the ${size}-entry queue`,
    );
  }

  /** A used entry claiming more bytes written than the chain has writable. */
  static usedLen(id: number, len: number, writable: number): VirtqueueError {
    return new VirtqueueError(
      "used-len",
      `used ring says ${len} bytes written to chain ${id}, which has only ${writable} writable bytes`,
    );
  }

  /** A used index further ahead than the number of chains outstanding. */
  static usedIdxJump(usedIdx: number, lastUsed: number, outstanding: number): VirtqueueError {
    const ahead = (usedIdx - lastUsed) & 0xffff;
    return new VirtqueueError(
      "used-idx-jump",
      `used idx ${usedIdx} is ${ahead} entries ahead of ${lastUsed}, but only ${outstanding} ` +
        `chains are outstanding`,
    );
  }

  /** A queue area whose guest address breaks the alignment the specification requires. */
  static misaligned(area: string, addr: number, align: number): VirtqueueError {
    return new VirtqueueError(
      "misaligned",
      `${area} at ${hex(addr)} is not ${align}-byte aligned`,
    );
  }

  /** A queue area that is not inside one region of guest memory. */
  static areaOutsideMemory(area: string, addr: number, bytes: number): VirtqueueError {
    return new VirtqueueError(
      "area-outside-memory",
      `${area} ${hex(addr)}+${bytes} is not inside guest memory`,
    );
  }

  /** Two queue areas that overlap. */
  static areasOverlap(a: string, aAddr: number, b: string, bAddr: number): VirtqueueError {
    return new VirtqueueError(
      "areas-overlap",
      `${a} at ${hex(aAddr)} overlaps ${b} at ${hex(bAddr)}`,
    );
  }

  /** A copy of `wanted` bytes when only `remaining` are left in the chain's `which` part. */
  static overrun(
    which: "readable" | "writable",
    wanted: number,
    remaining: number,
  ): VirtqueueError {
    return new VirtqueueError(
      "overrun",
      `${wanted} bytes wanted but only ${remaining} ${which} bytes remain in the chain`,
    );
  }

  /** Something that should not happen did, while handling untrusted input; `cause` keeps it. */
  static internal(cause: unknown): VirtqueueError {
    return new VirtqueueError("internal", `unexpected error in the virtqueue: ${cause}`, { cause });
  }
}
