import assert from "node:assert/strict";
import { join } from "node:path";
import { Reactor } from "../../../virtqueue/sys/reactor.ts";
import { EventFd } from "../../../virtqueue/sys/eventfd.ts";
import { SharedMemory } from "../../../virtqueue/sys/shm.ts";
import { UnixSocket } from "../../../virtqueue/sys/unix_socket.ts";
import { SysError } from "../../../virtqueue/sys/libc.ts";
import { monotonicNs, summarize } from "./fixtures/clock.ts";
import { acceptWithin } from "./fixtures/wait.ts";

const decoder = new TextDecoder();

function fixture(name: string): string {
  return new URL(`./fixtures/${name}`, import.meta.url).pathname;
}

Deno.test("watch calls back on every signal until unwatched", async () => {
  const reactor = Reactor.create();
  using efd = EventFd.create({ nonblocking: true });
  const seen: bigint[] = [];
  let wake: (() => void) | undefined;
  reactor.watch(efd.fd, () => {
    seen.push(efd.read());
    wake?.();
  });
  assert.equal(reactor.size, 1);
  for (const n of [1n, 5n, 2n]) {
    const called = new Promise<void>((r) => (wake = r));
    setTimeout(() => efd.signal(n), 1);
    await called;
  }
  assert.deepEqual(seen, [1n, 5n, 2n]);
  assert.equal(reactor.unwatch(efd.fd), true);
  assert.equal(reactor.unwatch(efd.fd), false);
  assert.equal(reactor.size, 0);
  efd.signal();
  await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(seen, [1n, 5n, 2n], "no callback after unwatch");
  assert.equal(efd.read(), 1n);
  await reactor.close();
  assert.equal(reactor.closed, true);
});

Deno.test("readable resolves once; it can share an fd with a watch", async () => {
  await using reactor = Reactor.create();
  using efd = EventFd.create({ nonblocking: true });
  const first = reactor.readable(efd.fd);
  efd.signal();
  await first;
  assert.equal(reactor.size, 0, "a one-shot registration is dropped after firing");
  assert.equal(efd.read(), 1n);

  let calls = 0;
  reactor.watch(efd.fd, () => {
    calls++;
    efd.read();
  });
  const second = reactor.readable(efd.fd);
  efd.signal();
  await second;
  assert.equal(calls, 1);
  assert.equal(reactor.size, 1, "the watch remains");
  reactor.unwatch(efd.fd);
});

Deno.test("unwatch from a callback takes effect for readiness already collected", async () => {
  await using reactor = Reactor.create();
  using a = EventFd.create({ nonblocking: true });
  using b = EventFd.create({ nonblocking: true });
  const calls: string[] = [];
  const done = Promise.withResolvers<void>();
  // Both are ready before the loop starts, so one wait collects both; whichever
  // callback runs first unwatches the other.
  a.signal();
  b.signal();
  reactor.watch(a.fd, () => {
    calls.push("a");
    reactor.unwatch(b.fd);
    reactor.unwatch(a.fd);
    done.resolve();
  });
  reactor.watch(b.fd, () => {
    calls.push("b");
    reactor.unwatch(a.fd);
    reactor.unwatch(b.fd);
    done.resolve();
  });
  await done.promise;
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(calls.length, 1, `both callbacks ran: ${calls}`);
});

Deno.test("watch refuses a second callback and a closed fd", async () => {
  await using reactor = Reactor.create();
  using efd = EventFd.create({ nonblocking: true });
  reactor.watch(efd.fd, () => {});
  assert.throws(() => reactor.watch(efd.fd, () => {}), {
    name: "AlreadyExists",
    message: `fd ${efd.fd} is already watched by this reactor`,
  });
  reactor.unwatch(efd.fd);
  assert.throws(() => reactor.watch(99_999, () => {}), (e: unknown) => {
    assert.ok(e instanceof SysError);
    assert.equal(e.message, "epoll_ctl(ADD fd 99999): EBADF (Bad file descriptor)");
    return true;
  });
  assert.equal(reactor.size, 0);
});

Deno.test("an fd closed before unwatch is tolerated", async () => {
  await using reactor = Reactor.create();
  const efd = EventFd.create({ nonblocking: true });
  const fd = efd.fd;
  reactor.watch(fd, () => {});
  efd.close(); // the kernel drops it from the epoll set by itself
  assert.equal(reactor.unwatch(fd), true);
  assert.equal(reactor.size, 0);
});

Deno.test("a throwing callback is reported and the loop goes on", async () => {
  await using reactor = Reactor.create();
  using efd = EventFd.create({ nonblocking: true });
  const reported: unknown[] = [];
  const onError = (e: ErrorEvent) => {
    e.preventDefault();
    reported.push(e.error);
  };
  globalThis.addEventListener("error", onError);
  try {
    let calls = 0;
    const second = Promise.withResolvers<void>();
    reactor.watch(efd.fd, () => {
      efd.read();
      calls++;
      if (calls === 1) throw new RangeError("callback failed");
      second.resolve();
    });
    efd.signal();
    await new Promise((r) => setTimeout(r, 20));
    efd.signal();
    await second.promise;
    assert.equal(calls, 2);
    assert.equal(reported.length, 1);
    assert.ok(reported[0] instanceof RangeError);
    assert.equal((reported[0] as RangeError).message, "callback failed");
    reactor.unwatch(efd.fd);
  } finally {
    globalThis.removeEventListener("error", onError);
  }
});

Deno.test("close ends the loop, rejects pending readables, refuses new work", async () => {
  const reactor = Reactor.create();
  using efd = EventFd.create({ nonblocking: true });
  let calls = 0;
  reactor.watch(efd.fd, () => calls++);
  const pending = reactor.readable(efd.fd);
  const closing = reactor.close();
  assert.equal(reactor.close(), closing, "close is idempotent");
  await assert.rejects(pending, {
    name: "Interrupted",
    message: `reactor closed while waiting for fd ${efd.fd}`,
  });
  await closing;
  efd.signal();
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(calls, 0);
  assert.throws(() => reactor.watch(efd.fd, () => {}), {
    name: "BadResource",
    message: "reactor is closed",
  });
  assert.throws(() => reactor.readable(efd.fd), { name: "BadResource" });
  await reactor.close();
});

Deno.test("more ready fds than one wait reports are all served", async () => {
  await using reactor = Reactor.create({ maxEvents: 8 });
  const fds: EventFd[] = [];
  try {
    const served = new Set<number>();
    const all = Promise.withResolvers<void>();
    for (let i = 0; i < 50; i++) {
      const efd = EventFd.create({ nonblocking: true });
      fds.push(efd);
      reactor.watch(efd.fd, () => {
        efd.read();
        served.add(i);
        reactor.unwatch(efd.fd);
        if (served.size === 50) all.resolve();
      });
    }
    for (const efd of fds) efd.signal();
    await all.promise;
    assert.equal(served.size, 50);
    assert.equal(reactor.size, 0);
  } finally {
    for (const efd of fds) efd.close();
  }
});

for (const mode of ["callback", "idle"]) {
  Deno.test(`a process whose reactor has nothing left to watch exits (${mode})`, async () => {
    const result = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", fixture("reactor_exit_child.ts"), mode],
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(20_000),
    }).output();
    assert.equal(result.code, 0, decoder.decode(result.stderr));
    const expected = mode === "callback" ? "woken 3 size 0\n" : "unwatched size 0\n";
    assert.equal(decoder.decode(result.stdout), expected);
  });
}

const ROUNDS = 400;

Deno.test("wakes on an eventfd written by a Worker (latency measured)", async () => {
  await using reactor = Reactor.create();
  using go = EventFd.create({ nonblocking: true });
  using done = EventFd.create({ nonblocking: true });
  using stop = EventFd.create({ nonblocking: true });
  const stamps = new SharedArrayBuffer(8);
  const stamp = new BigInt64Array(stamps);
  const worker = new Worker(new URL("./fixtures/ping_worker.ts", import.meta.url), {
    type: "module",
  });
  const messages: unknown[] = [];
  let onMessage: (() => void) | undefined;
  worker.onmessage = (e) => {
    messages.push(e.data);
    onMessage?.();
  };
  const nextMessage = async (): Promise<unknown> => {
    while (messages.length === 0) await new Promise<void>((r) => (onMessage = r));
    return messages.shift();
  };
  worker.postMessage({ go: go.fd, done: done.fd, stop: stop.fd, stamps });
  assert.equal(await nextMessage(), "ready");

  const oneWay: number[] = [];
  const roundTrip: number[] = [];
  const finished = Promise.withResolvers<void>();
  let sentAt = 0n;
  reactor.watch(done.fd, () => {
    const now = monotonicNs();
    assert.equal(done.read(), 1n);
    oneWay.push(Number(now - Atomics.load(stamp, 0)) / 1000);
    roundTrip.push(Number(now - sentAt) / 1000);
    if (oneWay.length === ROUNDS) return finished.resolve();
    sentAt = monotonicNs();
    go.signal();
  });
  sentAt = monotonicNs();
  go.signal();
  await finished.promise;
  reactor.unwatch(done.fd);
  stop.signal();
  assert.equal(await nextMessage(), ROUNDS);

  const one = summarize(oneWay);
  const rt = summarize(roundTrip);
  console.log(
    `Worker eventfd -> reactor callback: median ${one.median.toFixed(1)} µs, ` +
      `p99 ${one.p99.toFixed(1)} µs; round trip median ${rt.median.toFixed(1)} µs ` +
      `(${ROUNDS} rounds)`,
  );
  assert.ok(one.median > 0 && one.median < 10_000, `median ${one.median} µs`);
});

Deno.test("wakes on an eventfd written by a child process (latency measured)", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "vrdma-reactor-" });
  try {
    await using reactor = Reactor.create();
    using listener = UnixSocket.listen(join(dir, "ping.sock"));
    using go = EventFd.create({ nonblocking: true });
    using done = EventFd.create({ nonblocking: true });
    using mem = SharedMemory.create(4096, { name: "stamps" });
    const stamp = new BigInt64Array(mem.buffer, 0, 1);
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", fixture("ping_child.ts"), listener.path],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const output = child.output();
    try {
      // Accept through the reactor itself: the listener is nonblocking.
      await reactor.readable(listener.fd);
      using conn = await acceptWithin(listener, 20_000);
      conn.send(new Uint8Array([1]), [go.fd, done.fd, mem.fd]);

      const oneWay: number[] = [];
      const roundTrip: number[] = [];
      const finished = Promise.withResolvers<void>();
      let sentAt = 0n;
      reactor.watch(done.fd, () => {
        const now = monotonicNs();
        assert.equal(done.read(), 1n);
        oneWay.push(Number(now - Atomics.load(stamp, 0)) / 1000);
        roundTrip.push(Number(now - sentAt) / 1000);
        if (oneWay.length === ROUNDS) return finished.resolve();
        sentAt = monotonicNs();
        go.signal();
      });
      sentAt = monotonicNs();
      go.signal();
      await finished.promise;
      reactor.unwatch(done.fd);
      conn.close(); // the child leaves its loop on hang-up

      const one = summarize(oneWay);
      const rt = summarize(roundTrip);
      console.log(
        `child process eventfd -> reactor callback: median ${one.median.toFixed(1)} µs, ` +
          `p99 ${one.p99.toFixed(1)} µs; round trip median ${rt.median.toFixed(1)} µs ` +
          `(${ROUNDS} rounds)`,
      );
      assert.ok(one.median > 0 && one.median < 10_000, `median ${one.median} µs`);
    } finally {
      const result = await output;
      assert.equal(result.code, 0, decoder.decode(result.stderr));
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
