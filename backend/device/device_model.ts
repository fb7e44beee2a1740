/**
 * The device model of one guest: what its control-queue commands act on.
 *
 * Commands arrive as decoded CBOR maps — untrusted, any shape. Each handler
 * checks the fields it reads and answers `{status, ...}` with an errno-style
 * status; nothing here throws out to the data plane.
 *
 * @module
 */

import { type DeviceConfig, mtuToEnum } from "../../protocol/device_config.ts";
import { Errno, Op, opName } from "../../protocol/device_interface.ts";

/** A decoded control-queue response. */
export type CommandResponse = { status: number; error?: string } & Record<string, unknown>;

/** A command that failed its checks: becomes `{status, error}`. */
export class CommandError extends Error {
  /** Errno value for the response. */
  readonly status: number;

  /** `status` is an {@linkcode Errno} value. */
  constructor(status: number, message: string) {
    super(message);
    this.name = "CommandError";
    this.status = status;
  }
}

/** Reads an integer field of a command, or throws EINVAL naming it. */
export function intField(
  req: Record<string, unknown>,
  name: string,
  { min = 0, max = 0xffff_ffff, optional = false }: {
    min?: number;
    max?: number;
    optional?: boolean;
  } = {},
): number {
  const value = req[name];
  if (value === undefined && optional) return min;
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    throw new CommandError(
      Errno.EINVAL,
      `${name} = ${describe(value)} is not an integer in ${min}..${max}`,
    );
  }
  return value;
}

function describe(value: unknown): string {
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "string") return JSON.stringify(value.slice(0, 40));
  if (value instanceof Uint8Array) return `${value.length} bytes`;
  if (value === null || typeof value !== "object") return String(value);
  return Array.isArray(value) ? "an array" : "an object";
}

/** One guest's device state and its control-command dispatcher. */
export class DeviceModel {
  readonly #config: DeviceConfig;

  /** `config` is what the guest's config space says about the device. */
  constructor(config: DeviceConfig) {
    this.#config = config;
  }

  /** Runs one decoded command. Never throws. */
  execute(req: unknown): CommandResponse {
    try {
      if (req === null || typeof req !== "object" || Array.isArray(req)) {
        throw new CommandError(Errno.EINVAL, `a command must be a map, got ${describe(req)}`);
      }
      const cmd = req as Record<string, unknown>;
      const op = intField(cmd, "op", { max: 0xffff });
      return { status: Errno.OK, ...this.#dispatch(op, cmd) };
    } catch (e) {
      if (e instanceof CommandError) return { status: e.status, error: e.message };
      // A handler bug must not take the data plane down; report it to the guest.
      return { status: Errno.EIO, error: `internal error: ${(e as Error).message}` };
    }
  }

  #dispatch(op: number, cmd: Record<string, unknown>): Record<string, unknown> {
    switch (op) {
      case Op.QUERY_DEVICE:
        return { attr: this.#config.device };
      case Op.QUERY_PORT: {
        this.#port(cmd);
        const port = this.#config.port;
        return { attr: { ...port, maxMtuEnum: mtuToEnum(port.maxMtu) } };
      }
      case Op.QUERY_GID: {
        this.#port(cmd);
        const index = intField(cmd, "index", { max: 0xffff });
        const gid = this.#config.gids[index];
        if (gid === undefined) {
          throw new CommandError(
            Errno.EINVAL,
            `GID index ${index} is past the table (${this.#config.gids.length} entries)`,
          );
        }
        return { gid };
      }
      default:
        throw new CommandError(Errno.EOPNOTSUPP, `${opName(op)} is not supported by this device`);
    }
  }

  #port(cmd: Record<string, unknown>): void {
    const port = intField(cmd, "port", { max: 0xff });
    if (port !== 1) throw new CommandError(Errno.EINVAL, `port ${port} does not exist (ports: 1)`);
  }

  /** Frees everything the guest created (disconnect, reset). */
  destroyAll(): void {
    // Resource tables arrive with the verbs device model.
  }
}
