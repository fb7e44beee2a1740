/**
 * `ibv_rc_pingpong` for vrdma (and, with `--ud`, `ibv_ud_pingpong`): a
 * server (no host argument) and a client (the server's host as argument)
 * exchange their QP addresses over TCP in rdma-core's exact format, then
 * bounce a message back and forth and print the same lines rdma-core does.
 * It interoperates with the real tools.
 *
 * ```sh
 * deno run -A --unstable-net tools/pingpong.ts --socket /tmp/host-a.sock            # server
 * deno run -A --unstable-net tools/pingpong.ts --socket /tmp/host-b.sock 127.0.0.1  # client
 * ```
 *
 * `--help` lists the options. Exit status 0 on success, 1 on any failure
 * (bad arguments, a completion in error, data that came back wrong with `-c`).
 *
 * @module
 */

import { parsePingpongArgs, pingpongUsage } from "./common/pingpong_args.ts";
import { runPingpong } from "./common/pingpong_run.ts";

/** Runs the tool on `args`; returns the exit code. */
export async function main(args: readonly string[]): Promise<number> {
  // `deno task ... -- args` hands the script the "--" too.
  const parsed = parsePingpongArgs(args[0] === "--" ? args.slice(1) : args);
  if (parsed.kind === "usage") {
    if (parsed.error !== undefined) console.error(parsed.error);
    console.log(pingpongUsage("tools/pingpong.ts"));
    return parsed.error === undefined ? 0 : 1;
  }
  return await runPingpong(parsed.options);
}

if (import.meta.main) Deno.exit(await main(Deno.args));
