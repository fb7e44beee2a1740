/**
 * The vrdma device as the ibverbs tools see it: one device per backend
 * socket, named {@linkcode DEVICE_NAME} (what `ibv_devinfo` prints as
 * `hca_id` and what `-d` selects).
 *
 * @module
 */

import { type Device, openDevice } from "../../mod.ts";

/** The name tools give the device on a backend's socket (rxe's devices are `rxe0`, ...). */
export const DEVICE_NAME = "vrdma0";

/** Why a tool could not get a device; the message is what to print. */
export class DeviceLookupError extends Error {
  /** Names the class in stack traces. */
  override name = "DeviceLookupError";
}

/**
 * Opens the device on `socket` when `wanted` (the `-d` argument) is absent
 * or names it. Throws a {@linkcode DeviceLookupError} whose message is the
 * line to print: rdma-core's `IB device <name> not found` for another name,
 * or `Couldn't get context for vrdma0: <why>` when the backend does not
 * answer.
 */
export async function openNamedDevice(
  socket: string,
  options: { wanted?: string; memoryBytes?: number; notFound?: (name: string) => string } = {},
): Promise<Device> {
  if (options.wanted !== undefined && options.wanted !== DEVICE_NAME) {
    throw new DeviceLookupError(
      options.notFound?.(options.wanted) ?? `IB device ${options.wanted} not found`,
    );
  }
  try {
    return await openDevice({ socket, memoryBytes: options.memoryBytes });
  } catch (e) {
    throw new DeviceLookupError(
      `Couldn't get context for ${DEVICE_NAME}: ${(e as Error).message}`,
      { cause: e },
    );
  }
}
