/**
 * A backend that stops answering but keeps its socket open (here: stopped
 * with SIGSTOP) must not hang a verb for good. After the control command
 * timeout (30 s, `COMMAND_TIMEOUT_MS`) the verb rejects naming the command
 * and the wait, and the device is lost as when the connection drops:
 * DEVICE_FATAL, then every verb fails. This test waits the full 30 s.
 */

import assert from "node:assert/strict";
import { openDevice, VerbsError } from "../../mod.ts";
import { COMMAND_TIMEOUT_MS } from "../../driver/control_queue.ts";
import { BackendProcess } from "../hostile/fixtures/guest_backend.ts";

Deno.test({
  name: "a backend that stops answering fails the verb after the timeout, with DEVICE_FATAL",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const backend = await BackendProcess.start("127.0.0.65");
  let stopped = false;
  try {
    const dev = await openDevice({ socket: backend.socket, memoryBytes: 1 << 20 });
    try {
      const pd = await dev.allocPd();
      const buf = dev.allocBuffer(4096);
      Deno.kill(backend.pid, "SIGSTOP");
      stopped = true;
      const fatal = dev.getAsyncEvent();
      const started = performance.now();
      const error = await pd.regMr(buf, 1).then(
        () => assert.fail("regMr resolved on a stopped backend"),
        (e: unknown) => e,
      );
      const waited = performance.now() - started;
      assert.ok(error instanceof VerbsError);
      assert.equal(error.errno, "ETIMEDOUT");
      assert.equal(
        error.message,
        `ETIMEDOUT: REG_MR: no answer from the device after ${COMMAND_TIMEOUT_MS} ms`,
      );
      assert.ok(
        waited >= COMMAND_TIMEOUT_MS - 50 && waited < COMMAND_TIMEOUT_MS + 5000,
        `rejected after ${waited.toFixed(0)} ms`,
      );
      assert.deepEqual(await fatal, { type: "DEVICE_FATAL", element: 0, info: 0 });
      assert.equal(dev.error, error);
      await assert.rejects(dev.allocPd(), (e: unknown) => e === error);
      assert.throws(() => dev.allocBuffer(64), (e: unknown) => e === error);
    } finally {
      await dev.close();
    }
  } finally {
    if (stopped) Deno.kill(backend.pid, "SIGCONT");
    await backend.stop();
  }
});
