/**
 * The guest-side driver: open a vrdma device and use it with ibverbs-style
 * verbs.
 *
 * @module
 */

export { Device, GUEST_BASE, openDevice } from "./device.ts";
export type { AsyncEvent, GuestBuffer, OpenDeviceOptions } from "./device.ts";
export { VerbsError } from "./errors.ts";
