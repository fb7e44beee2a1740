/**
 * A driver process and a device process pass a million chains through one
 * split virtqueue in shared memory (a memfd handed over with the kick and
 * call eventfds by SCM_RIGHTS), with a CRC-32 in every payload and every
 * reply: nothing lost, duplicated or reordered, across many wrap-arounds of
 * the 16-bit indices, once with both sides busy-polling and once with both
 * sides sleeping on eventfds behind EVENT_IDX suppression.
 *
 * The processes are fixtures/xproc_driver.ts and fixtures/xproc_device.ts;
 * this file only spawns them (fixtures/xproc_harness.ts) and checks what
 * each reports. The last three tests check the harness itself: a side that
 * dies or stalls fails the run with its stderr instead of hanging it.
 *
 * @module
 */

import assert from "node:assert/strict";
import { type PairResult, runPair } from "./fixtures/xproc_harness.ts";

const CHAINS = 1_000_000;
/** Replays a run: VRDMA_XPROC_SEED=<seed printed by a failed run>. Random otherwise. */
const SEED = Deno.env.get("VRDMA_XPROC_SEED") === undefined
  ? undefined
  : Number(Deno.env.get("VRDMA_XPROC_SEED"));

/** What must hold after any complete run, whatever the mode. */
function assertClean(result: PairResult, chains: number): void {
  const { driver, device } = result;
  // Any failure below names the seed in the summary printed before it, to replay the run.
  // Everything sent arrived and came back, exactly once and in order.
  assert.equal(driver.chains, chains);
  assert.equal(driver.returned, chains);
  assert.equal(device.chains, chains);
  assert.equal(device.checksumErrors, 0, "payload CRC errors");
  assert.equal(device.lengthErrors, 0, "payload length-field errors");
  assert.equal(device.shapeErrors, 0, "chains of the wrong shape");
  assert.equal(device.orderErrors, 0, "payloads out of sequence");
  assert.equal(device.missing, 0, "sequence numbers never seen");
  assert.equal(device.duplicates, 0, "sequence numbers seen twice");
  assert.equal(driver.checksumErrors, 0, "reply CRC errors");
  assert.equal(driver.orderErrors, 0, "used entries out of sequence");
  assert.equal(driver.duplicateReturns, 0, "heads returned twice");
  assert.equal(driver.lenErrors, 0, "used len not the reply length");
  assert.equal(driver.canaryErrors, 0, "device wrote outside the writable buffers");
  // Both directions carried the same bytes, and the same payloads in the same order.
  assert.equal(device.bytes, driver.bytes);
  assert.equal(device.replyBytes, driver.replyBytes);
  assert.ok(driver.replyBytes > 0);
  assert.equal(device.digest, driver.digest, "stream digests differ");
  // The mix of shapes really was a mix (30% multi-descriptor, 20% with a reply by design).
  assert.ok(device.multiDescriptor > chains / 5, `multi-descriptor: ${device.multiDescriptor}`);
  assert.ok(device.withReply > chains / 7, `with reply: ${device.withReply}`);
}

/** Chains divided by 65536, rounded down: how often each 16-bit index must have wrapped. */
function assertWraps(result: PairResult, chains: number): void {
  const wraps = Math.floor(chains / 65536);
  assert.ok(wraps >= 10);
  assert.equal(result.driver.availWraps, wraps, "driver avail idx wraps");
  assert.equal(result.driver.usedWraps, wraps, "driver used idx wraps");
  assert.equal(result.device.availWraps, wraps, "device avail idx wraps");
  assert.equal(result.device.usedWraps, wraps, "device used idx wraps");
}

function summary(result: PairResult): string {
  const { driver, device } = result;
  const ms = Math.max(driver.elapsedMs, device.elapsedMs);
  return `${CHAINS} chains in ${ms.toFixed(0)} ms (${(CHAINS / ms / 1000).toFixed(2)} M/s, ` +
    `${((driver.bytes + driver.replyBytes) / ms / 1000).toFixed(0)} MB/s, wall ` +
    `${result.wallMs.toFixed(0)} ms); kicks ${driver.kicks}, calls ${device.calls}; sleeps ` +
    `driver ${driver.sleeps} device ${device.sleeps}; race re-checks driver ${driver.rechecks} ` +
    `device ${device.rechecks}; index wraps ${device.availWraps}; seed ${result.seed}`;
}

Deno.test("cross-process: 1M chains, both sides polling, no notification asked for", async () => {
  const result = await runPair({ mode: "polling", chains: CHAINS, seed: SEED, timeoutMs: 20_000 });
  console.log(`polling: ${summary(result)}`);
  assertClean(result, CHAINS);
  assertWraps(result, CHAINS);
  // NO_NOTIFY / NO_INTERRUPT were set from the start: neither side was ever asked to signal.
  assert.equal(result.driver.kicksRequested, 0);
  assert.equal(result.device.callsRequested, 0);
  assert.equal(result.driver.kicks + result.device.calls, 0);
  assert.equal(result.driver.callsReceived + result.device.kicksReceived, 0);
  assert.equal(result.driver.sleeps + result.device.sleeps, 0);
});

Deno.test("cross-process: 1M chains, both sides sleeping on eventfds with EVENT_IDX", async () => {
  const result = await runPair({ mode: "sleeping", chains: CHAINS, seed: SEED, timeoutMs: 20_000 });
  console.log(`sleeping: ${summary(result)}`);
  assertClean(result, CHAINS);
  assertWraps(result, CHAINS);
  const { driver, device } = result;
  // Both consumers really slept, and were woken by signals that were asked for.
  assert.ok(driver.sleeps > 0 && device.sleeps > 0, "a side never slept");
  assert.ok(driver.kicks > 0 && device.calls > 0, "a side never signalled");
  assert.equal(driver.kicks, driver.kicksRequested, "kicks made without being asked for");
  assert.equal(device.calls, device.callsRequested, "calls made without being asked for");
  // Every signal made was received, none invented (eventfd counters summed over all reads).
  assert.equal(device.kicksReceived, driver.kicks);
  assert.equal(driver.callsReceived, device.calls);
  // Suppression works: far fewer signals than chains.
  assert.ok(driver.kicks < CHAINS / 20, `${driver.kicks} kicks for ${CHAINS} chains`);
  assert.ok(device.calls < CHAINS / 20, `${device.calls} calls for ${CHAINS} chains`);
});

Deno.test("cross-process harness: a side that dies fails the run with its stderr", async () => {
  const t0 = performance.now();
  await assert.rejects(
    runPair({
      mode: "polling",
      chains: 100_000,
      timeoutMs: 8_000,
      deviceArgs: ["--die-after", "5000"],
    }),
    (e: unknown) => {
      assert.ok(e instanceof Error);
      assert.match(
        e.message,
        /device \(exit status 3\) stderr:\ndevice: injected failure after 5000/,
      );
      // The driver either noticed the hang-up itself or was killed by the harness first.
      assert.match(
        e.message,
        /driver \((exit status 1\) stderr:\n.*hung up mid-run|killed by SIGKILL)/,
      );
      return true;
    },
  );
  assert.ok(performance.now() - t0 < 8_000, "the failure was noticed only by the timeout");
});

Deno.test("cross-process harness: a stalled peer trips the sleeping driver's watchdog", async () => {
  const t0 = performance.now();
  await assert.rejects(
    runPair({
      mode: "sleeping",
      chains: 100_000,
      timeoutMs: 8_000,
      deviceArgs: ["--stall-after", "5000"],
      driverArgs: ["--stall-ms", "1000"],
    }),
    (e: unknown) => {
      assert.ok(e instanceof Error);
      assert.match(e.message, /driver failed first/);
      assert.match(e.message, /no progress for 1000 ms: driver sent \d+ of 100000, got \d+ back/);
      assert.match(e.message, /device \(killed by SIGKILL\) stderr:\ndevice: injected stall/);
      return true;
    },
  );
  assert.ok(performance.now() - t0 < 8_000, "the stall was noticed only by the timeout");
});

Deno.test("cross-process harness: the overall timeout kills both sides", async () => {
  const t0 = performance.now();
  await assert.rejects(
    runPair({
      mode: "polling",
      chains: 100_000,
      timeoutMs: 2_000,
      deviceArgs: ["--stall-after", "5000"],
      driverArgs: ["--stall-ms", "60000"],
    }),
    (e: unknown) => {
      assert.ok(e instanceof Error);
      assert.match(e.message, /timed out after 2000 ms; both sides killed/);
      assert.match(e.message, /device \(killed by SIGKILL\)/);
      assert.match(e.message, /driver \(killed by SIGKILL\)/);
      return true;
    },
  );
  const elapsed = performance.now() - t0;
  assert.ok(elapsed >= 2_000 && elapsed < 6_000, `took ${elapsed} ms`);
});
