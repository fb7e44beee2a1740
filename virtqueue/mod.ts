/**
 * Split virtqueues (VIRTIO 1.2 section 2.7) over guest memory: the layout,
 * the driver side, the device side with its hostile-input-safe descriptor
 * chains, and the errors both sides raise.
 *
 * @example
 * ```ts
 * import { DeviceQueue, DriverQueue, GuestMemory, layoutAt } from "./mod.ts";
 * const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(1 << 16), 0x10000);
 * const { layout } = layoutAt(0x10000, 8);
 * const driver = new DriverQueue(layout);
 * driver.init(mem);
 * driver.addOne(mem, 0x18000, 16, true);
 * driver.publish(mem);
 * const device = new DeviceQueue(layout);
 * const chain = device.pop(mem)!;
 * chain.writer.write(new Uint8Array([1, 2, 3]));
 * device.pushUsed(mem, chain.head, chain.writer.position);
 * if (driver.popUsed(mem)?.len !== 3) throw new Error("round trip failed");
 * ```
 *
 * @module
 */

export * from "./memory.ts";
export * from "./errors.ts";
export * from "./layout.ts";
export * from "./descriptor_chain.ts";
export * from "./driver_queue.ts";
export * from "./device_queue.ts";
// sys/ (shared memory and eventfds through FFI): the lead adds its exports here.
