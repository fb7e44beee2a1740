/**
 * `ibv_devinfo` for vrdma: opens the device a backend serves on `--socket`
 * and prints its attributes, its port's and (with `-v`) its GID table in
 * rdma-core's layout.
 *
 * ```sh
 * deno run -A tools/devinfo.ts --socket /tmp/host-a.sock -v
 * ```
 *
 * Options as rdma-core's: `-d, --ib-dev` (the device's name, `vrdma0`),
 * `-i, --ib-port`, `-l, --list`, `-v, --verbose`, plus `--socket` (default
 * `./vrdma.sock`). Exit status as rdma-core's: 0, 1 (device not opened or bad
 * `-i`), 4 (port past the device's), 255 (bad option, unknown device).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { DEFAULT_SOCKET } from "../backend/service.ts";
import type { Device } from "../mod.ts";
import { DEVICE_NAME, DeviceLookupError, openNamedDevice } from "./common/devinfo_device.ts";
import { type DevinfoDevice, type DevinfoPort, formatDevinfo } from "./common/devinfo_format.ts";
import { parseNumber } from "./common/pingpong_args.ts";

function usage(): string {
  return [
    "Usage: tools/devinfo.ts             print the ca attributes",
    "",
    "Options:",
    "  -d, --ib-dev=<dev>     use IB device <dev> (default all devices)",
    "  -i, --ib-port=<port>   use port <port> of IB device (default all ports)",
    "  -l, --list             print only the IB devices names",
    "  -v, --verbose          print all the attributes of the IB device(s)",
    `      --socket=<path>    the vrdma backend's socket (default ./${DEFAULT_SOCKET})`,
  ].join("\n");
}

/** What `ibv_devinfo` shows of `dev`: ports from 1 (or only `onlyPort`), GIDs included. */
export function describeDevice(dev: Device, onlyPort: number): DevinfoDevice {
  const ports: DevinfoPort[] = [];
  for (let num = 1; num <= dev.attr.physPortCnt; num++) {
    if (onlyPort !== 0 && num !== onlyPort) continue;
    const attr = dev.queryPort(num);
    const gids = Array.from({ length: attr.gidTblLen }, (_, i) => dev.queryGid(num, i));
    ports.push({ num, attr, gids });
  }
  return { name: DEVICE_NAME, attr: dev.attr, ports, numCompVectors: 1 };
}

/** Runs the tool on `args`, writing to stdout/stderr; returns the exit code. */
export async function main(args: readonly string[]): Promise<number> {
  let values;
  try {
    values = parseArgs({
      // `deno task devinfo -- args` hands the script the "--" too.
      args: args[0] === "--" ? args.slice(1) : [...args],
      strict: true,
      options: {
        "ib-dev": { type: "string", short: "d" },
        "ib-port": { type: "string", short: "i" },
        list: { type: "boolean", short: "l" },
        verbose: { type: "boolean", short: "v" },
        socket: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }).values;
  } catch (e) {
    console.error((e as Error).message);
    console.log(usage());
    return 255;
  }
  if (values.help) {
    console.log(usage());
    return 0;
  }
  let port = 0;
  if (values["ib-port"] !== undefined) {
    try {
      port = parseNumber("--ib-port", values["ib-port"]);
    } catch {
      port = 0;
    }
    if (port <= 0) {
      console.log(usage());
      return 1;
    }
  }
  const socket = values.socket ?? DEFAULT_SOCKET;
  if (values.list) {
    // -l lists the devices found: the one on the socket, if a backend answers there.
    const found = await openNamedDevice(socket).catch(() => null);
    await found?.close();
    console.log(found ? `1 HCA found:\n\t${DEVICE_NAME}\n` : "0 HCAs found:\n");
    return 0;
  }
  let dev: Device;
  try {
    dev = await openNamedDevice(socket, {
      wanted: values["ib-dev"],
      notFound: (name) => `IB device '${name}' wasn't found`,
    });
  } catch (e) {
    console.error(e instanceof DeviceLookupError ? e.message : String(e));
    return values["ib-dev"] !== undefined && values["ib-dev"] !== DEVICE_NAME ? 255 : 1;
  }
  try {
    if (port > dev.attr.physPortCnt) {
      console.error("Invalid port requested for device");
      return 4;
    }
    const text = formatDevinfo(describeDevice(dev, port), { verbose: values.verbose === true });
    await Deno.stdout.write(new TextEncoder().encode(text));
    return 0;
  } finally {
    await dev.close();
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
