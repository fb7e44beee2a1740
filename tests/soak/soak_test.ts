/**
 * The soak at CI size: `tests/soak/soak.ts` for 20 s (4 s rounds, guests
 * reopened every 2 rounds), and its summary checked: zero data errors,
 * traffic of every kind, each backend's VmRSS within 10% from the first
 * round to the last, no fd left behind. `deno task soak` runs the full
 * 5 minutes.
 *
 * ```sh
 * deno test -A --unstable-net tests/soak/soak_test.ts
 * ```
 *
 * @module
 */

import assert from "node:assert/strict";
import { runFixture } from "../system/fixtures/run_fixture.ts";

const SOAK = new URL("./soak.ts", import.meta.url).pathname;
const SECONDS = 20;
const OP_KINDS = ["WRITE", "WRITE_IMM", "READ", "SEND", "SEND_IMM", "FETCH_ADD", "CMP_SWAP"];

interface BackendReport {
  ip: string;
  rssGrowth: number;
  fdsStart: number;
  fdsEnd: number;
  udpSockets: [number, number];
  start: { rssKiB: number; fdKinds: Record<string, number> };
  end: { rssKiB: number; fdKinds: Record<string, number> };
  idleStart: { fdKinds: Record<string, number> };
  idleEnd: { fdKinds: Record<string, number> };
}

/** `kinds` without the UDP sockets (the adapter's source-port cache may grow). */
function withoutUdp(kinds: Record<string, number>): Record<string, number> {
  const { udp: _, ...rest } = kinds;
  return rest;
}

Deno.test(`soak for ${SECONDS} s: zero data errors, RSS growth <= 10%, no fd leak`, async () => {
  const run = await runFixture({
    cmd: Deno.execPath(),
    args: [
      "run",
      "-A",
      "--unstable-net",
      SOAK,
      "--seconds",
      String(SECONDS),
      "--round-seconds",
      "4",
      "--reopen-every",
      "2",
    ],
  }, { label: "soak", timeoutMs: (SECONDS + 90) * 1000 });
  assert.ok(run.summary !== null, `no summary (exit ${run.code}): ${run.stderrTail}`);
  const s = run.summary;
  const { backends: _, ...brief } = s;
  console.log(`soak: ${JSON.stringify(brief)}`);
  const failures = s.failures as string[];
  assert.deepEqual(failures, [], `failures: ${failures.join("; ")}`);
  assert.equal(s.ok, true);
  assert.equal(run.code, 0);
  assert.equal(s.errors, 0, `data errors: ${(s.errorList as string[]).join("\n")}`);
  assert.ok((s.rounds as number) >= 3, `${s.rounds} rounds`);
  assert.ok((s.reopens as number) >= 1, "the guests were reopened at least once");
  assert.ok((s.bytes as number) > 16 << 20, `${s.bytes} bytes verified`);
  const ops = s.ops as Record<string, number>;
  for (const kind of OP_KINDS) {
    assert.ok(ops[kind]! > 0, `${kind} verified: ${JSON.stringify(ops)}`);
  }
  // One JSON line per round before the summary.
  const lines = run.stdout.split("\n").filter((l) => l.startsWith("{"));
  assert.equal(lines.length, (s.rounds as number) + 1);
  const backends = s.backends as BackendReport[];
  assert.equal(backends.length, 2);
  for (const b of backends) {
    console.log(
      `${b.ip}: VmRSS ${b.start.rssKiB} -> ${b.end.rssKiB} KiB (${
        (100 * b.rssGrowth).toFixed(1)
      }%), fds ${b.fdsStart} -> ${b.fdsEnd}, UDP sockets ${b.udpSockets.join(" -> ")}`,
    );
    assert.ok(b.rssGrowth <= 0.1, `${b.ip}: VmRSS grew ${(100 * b.rssGrowth).toFixed(1)}%`);
    assert.deepEqual(withoutUdp(b.end.fdKinds), withoutUdp(b.start.fdKinds), `${b.ip} busy fds`);
    assert.deepEqual(
      withoutUdp(b.idleEnd.fdKinds),
      withoutUdp(b.idleStart.fdKinds),
      `${b.ip}: idle fds after the guests left`,
    );
    assert.ok(b.udpSockets[1] <= 257, `${b.ip}: UDP sockets ${b.udpSockets}`);
  }
});
