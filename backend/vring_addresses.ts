/**
 * Turns a `SET_VRING_ADDR` request into a queue layout in guest addresses.
 *
 * vhost-user gives ring addresses in the front-end's own address space
 * ("user addresses"); the memory table says where each region sits there and
 * in guest address space. Each ring area must lie wholly inside one region and
 * be aligned as VIRTIO requires (descriptors 16, available ring 2, used 4).
 *
 * @module
 */

import type { MemoryRegionDesc, VringAddr } from "../protocol/vhost_user.ts";
import { queueAreaSizes, type QueueLayout } from "../virtqueue/layout.ts";

/**
 * The guest address of `[userAddr, userAddr + length)`, or a `RangeError`
 * naming the address when no single region holds it.
 */
export function userToGuest(
  userAddr: bigint,
  length: number,
  regions: readonly MemoryRegionDesc[],
  what = "range",
): number {
  const end = userAddr + BigInt(length);
  for (const r of regions) {
    if (userAddr >= r.userspaceAddr && end <= r.userspaceAddr + r.memorySize) {
      const guest = r.guestPhysAddr + (userAddr - r.userspaceAddr);
      if (guest + BigInt(length) > BigInt(Number.MAX_SAFE_INTEGER)) break;
      return Number(guest);
    }
  }
  throw new RangeError(
    `${what} at user address 0x${userAddr.toString(16)}+${length} is outside the memory table`,
  );
}

/** The layout `addr` describes for a queue of `size` entries, checked against `regions`. */
export function layoutFromAddresses(
  addr: VringAddr,
  size: number,
  regions: readonly MemoryRegionDesc[],
): QueueLayout {
  const sizes = queueAreaSizes(size);
  const areas = [
    ["descriptor table", addr.descUserAddr, sizes.desc, 16],
    ["available ring", addr.availUserAddr, sizes.avail, 2],
    ["used ring", addr.usedUserAddr, sizes.used, 4],
  ] as const;
  const guest = areas.map(([what, user, length, align]) => {
    const g = userToGuest(user, length, regions, `queue ${addr.index} ${what}`);
    if (g % align !== 0) {
      throw new RangeError(
        `queue ${addr.index} ${what} at 0x${g.toString(16)} is not ${align}-byte aligned`,
      );
    }
    return g;
  });
  return { size, desc: guest[0]!, avail: guest[1]!, used: guest[2]! };
}
