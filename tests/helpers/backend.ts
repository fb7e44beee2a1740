/**
 * Shared helpers for tests that run backends and guests.
 *
 * @module
 */

import { type Backend, type BackendOptions, startBackend } from "../../mod.ts";

let counter = 0;

/** A fresh socket path under the system temp dir. */
export function tempSocket(name = "vrdma"): string {
  return `${Deno.makeTempDirSync({ prefix: "vrdma-test-" })}/${name}-${++counter}.sock`;
}

/** Starts an in-process backend on a fresh socket. */
export function testBackend(options: BackendOptions = {}): Promise<Backend> {
  return startBackend({ socket: tempSocket(), ip: "127.0.0.1", logLevel: "silent", ...options });
}

/** Polls `check` every 10 ms until it returns true or `ms` pass; returns the last result. */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  ms = 2000,
): Promise<boolean> {
  const deadline = performance.now() + ms;
  for (;;) {
    if (await check()) return true;
    if (performance.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Path of a test fixture script. */
export function fixture(path: string): string {
  return new URL(`../${path}`, import.meta.url).pathname;
}

/** A child Deno process running `script` with `args`; resolves once it prints a line starting with `ready`. */
export async function spawnReady(
  script: string,
  args: string[],
): Promise<{ child: Deno.ChildProcess; line: string; output: () => Promise<string> }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--unstable-net", script, ...args],
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
    const line = text.split("\n").find((l) => l.startsWith("ready"));
    if (line !== undefined) {
      // Keep draining so the child never blocks on a full pipe.
      const rest = (async () => {
        for (;;) {
          const r = await reader.read();
          if (r.done) break;
        }
      })();
      const stderr = new Response(child.stderr).text();
      return { child, line, output: async () => (await rest, await stderr) };
    }
  }
  const err = await new Response(child.stderr).text();
  throw new Error(`${script} exited before it was ready: ${text}\n${err}`);
}
