/**
 * The vrdma backend as a command-line service: one per host.
 *
 *     deno run -A --unstable-net backend/main.ts --socket ./vrdma.sock --ip 127.0.0.1
 *
 * SIGINT/SIGTERM tell every guest (a DEVICE_FATAL event), free everything,
 * remove the socket file and exit 0.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { DEFAULT_SOCKET, startBackend } from "./service.ts";
import { LOG_LEVELS, type LogLevel } from "./log.ts";

const HELP = `vrdma backend: serves paravirtual RDMA devices to guests on a unix socket and
carries their RDMA traffic as RoCEv2 over UDP.

Usage: deno run -A --unstable-net backend/main.ts [options]

Options:
  --socket PATH       unix socket guests connect to (default: ./${DEFAULT_SOCKET})
  --ip ADDR           this host's IPv4 address; the port's GID is ::ffff:ADDR
                      (default: 127.0.0.1)
  --port N            UDP port for RoCEv2 (default: 4791)
  --transport MODE    socket | raw | auto: UDP sockets (default), or raw
                      sockets (root), which see the IPv4 ID of each packet and
                      so check the whole ICRC of peers such as Linux rxe
  --max-guests N      guests served at once; more are refused (default: 64)
  --metrics-port N    serve the counters for Prometheus at http://ADDR:N/metrics
                      (0: any free port, logged; default: off)
  --log-level LEVEL   ${LOG_LEVELS.join(" | ")} (default: info)
  -h, --help          this text

Stop with SIGINT or SIGTERM: guests are told, resources freed, the socket removed.
`;

/** Parses the command line and runs the backend until a signal stops it. */
export async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      // `npm start -- args` / `deno task start -- args` hand the script the "--" too.
      args: args[0] === "--" ? args.slice(1) : args,
      options: {
        socket: { type: "string" },
        ip: { type: "string" },
        port: { type: "string" },
        "max-guests": { type: "string" },
        transport: { type: "string" },
        "metrics-port": { type: "string" },
        "log-level": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (e) {
    console.error(`vrdma: ${(e as Error).message}\n\n${HELP}`);
    return 2;
  }
  const v = parsed.values;
  if (v.help) {
    console.log(HELP);
    return 0;
  }
  const number = (name: string, text: string | undefined, min: number, max: number) => {
    if (text === undefined) return undefined;
    const n = Number(text);
    if (!Number.isInteger(n) || n < min || n > max) {
      throw new RangeError(`--${name} ${text} is not an integer in ${min}..${max}`);
    }
    return n;
  };
  let host;
  try {
    const level = v["log-level"] ?? "info";
    if (!(LOG_LEVELS as readonly string[]).includes(level)) {
      throw new RangeError(`--log-level ${level} is not one of ${LOG_LEVELS.join(", ")}`);
    }
    const transport = v.transport ?? "socket";
    if (transport !== "socket" && transport !== "raw" && transport !== "auto") {
      throw new RangeError(`--transport ${transport} is not one of socket, raw, auto`);
    }
    host = await startBackend({
      transport,
      socket: v.socket,
      ip: v.ip,
      port: number("port", v.port, 1, 65535),
      maxGuests: number("max-guests", v["max-guests"], 1, 4096),
      metricsPort: number("metrics-port", v["metrics-port"], 0, 65535),
      logLevel: level as LogLevel,
    });
  } catch (e) {
    console.error(`vrdma: ${(e as Error).message}`);
    return 1;
  }
  const stopped = Promise.withResolvers<string>();
  const onSignal = (name: string) => () => stopped.resolve(name);
  const handlers = [["SIGINT", onSignal("SIGINT")], ["SIGTERM", onSignal("SIGTERM")]] as const;
  for (const [sig, fn] of handlers) Deno.addSignalListener(sig, fn);
  const signal = await stopped.promise;
  for (const [sig, fn] of handlers) Deno.removeSignalListener(sig, fn);
  await host.close(`${signal} received`);
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
