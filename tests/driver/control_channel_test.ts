/**
 * The vhost-user control channel's request timeout, against a fake backend
 * on a unix socket that accepts the connection and then answers, or not.
 */

import assert from "node:assert/strict";
import { ControlChannel } from "../../driver/control_channel.ts";
import { VerbsError } from "../../driver/errors.ts";
import { acquireReactor, releaseReactor } from "../../driver/reactor_pool.ts";
import { encodeReply, encodeU64, HEADER_SIZE, Request } from "../../protocol/vhost_user.ts";
import { tempSocket } from "../helpers/backend.ts";

/**
 * A backend that accepts one connection and reads requests; with `answer`
 * it replies to each GET_FEATURES with `features`. `hungUp` resolves once
 * the driver closed its end.
 */
function fakeBackend(answer: boolean, features = 0x1234n) {
  const path = tempSocket("fake");
  const listener = Deno.listen({ transport: "unix", path });
  const requests: number[] = [];
  const hungUp = (async () => {
    const conn = await listener.accept();
    const buf = new Uint8Array(4096);
    try {
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) return;
        // One request per read is enough here: the driver sends one at a time.
        const request = new DataView(buf.buffer, 0, HEADER_SIZE).getUint32(0, true);
        requests.push(request);
        if (answer && request === Request.GET_FEATURES) {
          await conn.write(encodeReply(Request.GET_FEATURES, encodeU64(features)));
        }
      }
    } catch {
      return; // reset by the driver: hung up as well
    } finally {
      conn.close();
    }
  })();
  return {
    path,
    requests,
    hungUp,
    close: () => listener.close(),
  };
}

Deno.test("a request left unanswered fails the channel with ETIMEDOUT naming it", async () => {
  const backend = fakeBackend(false);
  const reactor = acquireReactor();
  try {
    const channel = ControlChannel.open(backend.path, reactor, { timeoutMs: 80 });
    const lost: VerbsError[] = [];
    channel.onClose((e) => lost.push(e));
    const started = performance.now();
    const request = channel.request(Request.GET_FEATURES, undefined, { reply: "payload" });
    const error = await request.then(
      () => assert.fail("GET_FEATURES resolved without a reply"),
      (e: unknown) => e,
    );
    const waited = performance.now() - started;
    assert.ok(error instanceof VerbsError);
    assert.equal(error.errno, "ETIMEDOUT");
    assert.equal(
      error.message,
      `ETIMEDOUT: backend at ${backend.path}: no reply to GET_FEATURES after 80 ms`,
    );
    assert.ok(waited >= 75, `failed after ${waited.toFixed(0)} ms, before the timeout`);
    // Lost as if the backend had hung up: listeners hear it, the socket is closed.
    assert.deepEqual(lost, [error]);
    assert.equal(channel.error, error);
    await backend.hungUp;
    assert.deepEqual(backend.requests, [Request.GET_FEATURES]);
    await assert.rejects(channel.request(Request.SET_OWNER), (e: unknown) => e === error);
  } finally {
    releaseReactor();
    backend.close();
  }
});

Deno.test("a request answered in time resolves and leaves no timer behind", async () => {
  const backend = fakeBackend(true, 0xabcdefn);
  const reactor = acquireReactor();
  try {
    const channel = ControlChannel.open(backend.path, reactor, { timeoutMs: 80 });
    const lost: VerbsError[] = [];
    channel.onClose((e) => lost.push(e));
    const payload = await channel.request(Request.GET_FEATURES, undefined, { reply: "payload" });
    assert.equal(
      new DataView(payload.buffer, payload.byteOffset, 8).getBigUint64(0, true),
      0xabcdefn,
    );
    await new Promise((r) => setTimeout(r, 200)); // well past the timeout
    assert.deepEqual(lost, []);
    assert.equal(channel.error, null);
    channel.close();
    await backend.hungUp;
  } finally {
    releaseReactor();
    backend.close();
  }
});

Deno.test("a request timeout that is not a positive number of ms is refused", () => {
  const reactor = acquireReactor();
  try {
    for (const timeoutMs of [0, -5, Number.NaN, 2 ** 31]) {
      assert.throws(
        () => ControlChannel.open("/nonexistent/vrdma.sock", reactor, { timeoutMs }),
        (e: unknown) => {
          assert.ok(e instanceof RangeError);
          assert.match(e.message, new RegExp(`^request timeout ${timeoutMs} ms is not in 1\\.\\.`));
          return true;
        },
      );
    }
  } finally {
    releaseReactor();
  }
});
