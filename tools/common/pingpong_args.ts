/**
 * Command line of `tools/pingpong.ts`: the options of rdma-core's
 * `ibv_rc_pingpong` (and, with `--ud`, `ibv_ud_pingpong`) with their
 * defaults, plus `--socket` for the backend vrdma's device lives on.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { DEFAULT_SOCKET } from "../../backend/service.ts";

/** Everything a pingpong run needs to know. */
export interface PingpongOptions {
  /** The server to connect to; undefined: be the server. */
  server: string | undefined;
  /** TCP port of the address exchange (18515). */
  port: number;
  /** `-d`: the device name asked for, if any. */
  ibDev: string | undefined;
  /** `-i`: port of the device (1). */
  ibPort: number;
  /** Bytes per message (4096 RC, 1024 UD). */
  size: number;
  /** Path MTU in bytes (1024); RC only, as in rdma-core. */
  mtu: number;
  /** Receives kept posted (500). */
  rxDepth: number;
  /** Exchanges (1000). */
  iters: number;
  /** Service level (0). */
  sl: number;
  /** Sleep on CQ events instead of polling. */
  events: boolean;
  /** Local GID index. */
  gidIdx: number;
  /** `-c`: validate the data that came back. */
  check: boolean;
  /** `--ud`: ibv_ud_pingpong (UD QPs, GRH in every receive). */
  ud: boolean;
  /** The backend's unix socket. */
  socket: string;
}

/** What parsing found: options to run with, or a reason to print the usage. */
export type PingpongArgs =
  | { kind: "run"; options: PingpongOptions }
  | { kind: "usage"; error: string | undefined };

/** Default exchange port of the pingpong tools. */
export const PINGPONG_PORT = 18515;

/**
 * Reads an unsigned number as `strtoul(s, NULL, 0)` would for the inputs
 * people type: decimal or `0x` hex. Anything else (including trailing
 * garbage, which strtoul would ignore) is refused with a `SyntaxError`.
 */
export function parseNumber(flag: string, text: string): number {
  const value = /^0[xX][0-9a-fA-F]+$/.test(text)
    ? parseInt(text, 16)
    : /^\d+$/.test(text)
    ? parseInt(text, 10)
    : NaN;
  if (!Number.isSafeInteger(value)) {
    throw new SyntaxError(`${flag} ${JSON.stringify(text)} is not a number`);
  }
  return value;
}

const PATH_MTUS = [256, 512, 1024, 2048, 4096];

/**
 * Parses the command line (without the script name).
 *
 * @example
 * ```ts
 * import { parsePingpongArgs } from "./pingpong_args.ts";
 * const r = parsePingpongArgs(["-s", "64", "-n", "10", "-g", "0", "10.0.0.2"]);
 * if (r.kind !== "run" || r.options.server !== "10.0.0.2" || r.options.size !== 64) {
 *   throw new Error("bad parse");
 * }
 * ```
 */
export function parsePingpongArgs(args: readonly string[]): PingpongArgs {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...args],
      allowPositionals: true,
      strict: true,
      options: {
        port: { type: "string", short: "p" },
        "ib-dev": { type: "string", short: "d" },
        "ib-port": { type: "string", short: "i" },
        size: { type: "string", short: "s" },
        mtu: { type: "string", short: "m" },
        "rx-depth": { type: "string", short: "r" },
        iters: { type: "string", short: "n" },
        sl: { type: "string", short: "l" },
        events: { type: "boolean", short: "e" },
        "gid-idx": { type: "string", short: "g" },
        chk: { type: "boolean", short: "c" },
        ud: { type: "boolean" },
        socket: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (e) {
    return { kind: "usage", error: (e as Error).message };
  }
  const v = parsed.values;
  if (v.help) return { kind: "usage", error: undefined };
  if (parsed.positionals.length > 1) {
    return { kind: "usage", error: `one server host at most, got ${parsed.positionals.join(" ")}` };
  }
  const ud = v.ud === true;
  try {
    const num = (flag: string, text: string | undefined, fallback: number) =>
      text === undefined ? fallback : parseNumber(flag, text);
    const options: PingpongOptions = {
      server: parsed.positionals[0],
      port: num("--port", v.port, PINGPONG_PORT),
      ibDev: v["ib-dev"],
      ibPort: num("--ib-port", v["ib-port"], 1),
      size: num("--size", v.size, ud ? 1024 : 4096),
      mtu: num("--mtu", v.mtu, 1024),
      rxDepth: num("--rx-depth", v["rx-depth"], 500),
      iters: num("--iters", v.iters, 1000),
      sl: num("--sl", v.sl, 0),
      events: v.events === true,
      // rdma-core sends a zero GID without -g; on RoCE (vrdma's only link
      // layer) a zero GID cannot be routed, so index 0 is the default here.
      gidIdx: num("--gid-idx", v["gid-idx"], 0),
      check: v.chk === true,
      ud,
      socket: v.socket ?? DEFAULT_SOCKET,
    };
    const bad = checkRanges(options);
    if (bad !== undefined) return { kind: "usage", error: bad };
    return { kind: "run", options };
  } catch (e) {
    return { kind: "usage", error: (e as Error).message };
  }
}

function checkRanges(o: PingpongOptions): string | undefined {
  if (o.port > 65535) return `--port ${o.port} is above 65535`;
  if (o.ibPort < 1) return `--ib-port ${o.ibPort} is below 1`;
  if (!PATH_MTUS.includes(o.mtu)) return `--mtu ${o.mtu} is not one of ${PATH_MTUS.join(", ")}`;
  if (o.size < 1 || o.size > 0x7fff_ffff) return `--size ${o.size} is not in 1..2^31-1`;
  if (o.rxDepth < 1) return `--rx-depth ${o.rxDepth} is below 1`;
  if (o.iters < 1) return `--iters ${o.iters} is below 1`;
  if (o.sl > 15) return `--sl ${o.sl} is above 15`;
  return undefined;
}

/** The usage text, laid out as rdma-core's. */
export function pingpongUsage(argv0: string): string {
  const lines = [
    "Usage:",
    `  ${argv0}            start a server and wait for connection`,
    `  ${argv0} <host>     connect to server at <host>`,
    "",
    "Options:",
    "  -p, --port=<port>      listen on/connect to port <port> (default 18515)",
    "  -d, --ib-dev=<dev>     use IB device <dev> (default first device found)",
    "  -i, --ib-port=<port>   use port <port> of IB device (default 1)",
    "  -s, --size=<size>      size of message to exchange (default 4096, UD 1024)",
    "  -m, --mtu=<size>       path MTU (default 1024)",
    "  -r, --rx-depth=<dep>   number of receives to post at a time (default 500)",
    "  -n, --iters=<iters>    number of exchanges (default 1000)",
    "  -l, --sl=<sl>          service level value",
    "  -e, --events           sleep on CQ events (default poll)",
    "  -g, --gid-idx=<gid index> local port gid index (default 0: RoCE needs a GID)",
    "  -c, --chk              validate received buffer (every byte; exit 1 if wrong)",
    "      --ud               UD QPs, as ibv_ud_pingpong (size at most the port MTU)",
    `      --socket=<path>    the vrdma backend's socket (default ./${DEFAULT_SOCKET})`,
  ];
  return lines.join("\n");
}
