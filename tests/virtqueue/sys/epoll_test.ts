import assert from "node:assert/strict";
import {
  Epoll,
  EPOLLERR,
  EPOLLET,
  EPOLLHUP,
  EPOLLIN,
  EPOLLOUT,
  EPOLLRDHUP,
} from "../../../virtqueue/sys/epoll.ts";
import { EventFd } from "../../../virtqueue/sys/eventfd.ts";
import { isCloseOnExec, SysError } from "../../../virtqueue/sys/libc.ts";
import { UnixSocket } from "../../../virtqueue/sys/unix_socket.ts";
import { fdTarget, isOpen } from "./fixtures/fds.ts";

function tokens(ep: Epoll, n: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(ep.tokenAt(i));
  return out.sort((a, b) => a - b);
}

Deno.test("event constants have the Linux values", () => {
  assert.deepEqual(
    [EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLLRDHUP, EPOLLET],
    [0x1, 0x4, 0x8, 0x10, 0x2000, 0x80000000],
  );
});

Deno.test("wait reports each ready fd once with its token and events", () => {
  using ep = Epoll.create();
  assert.equal(fdTarget(ep.fd), "anon_inode:[eventpoll]");
  assert.equal(isCloseOnExec(ep.fd), true);
  using a = EventFd.create({ nonblocking: true });
  using b = EventFd.create({ nonblocking: true });
  using c = EventFd.create({ nonblocking: true });
  ep.add(a.fd, 10);
  ep.add(b.fd, 0xffff_ffff);
  ep.add(c.fd, 0);
  assert.equal(ep.wait(0), 0);
  assert.equal(ep.count, 0);
  a.signal();
  b.signal();
  const n = ep.wait(1000);
  assert.equal(n, 2);
  assert.deepEqual(tokens(ep, n), [10, 0xffff_ffff]);
  assert.equal(ep.eventsAt(0), EPOLLIN);
  assert.equal(ep.eventsAt(1), EPOLLIN);
  assert.throws(() => ep.tokenAt(2), {
    name: "RangeError",
    message: "epoll event index must be in 0..1, got 2",
  });
  // Level-triggered: still ready until drained.
  assert.equal(ep.wait(0), 2);
  a.read();
  b.read();
  assert.equal(ep.wait(0), 0);
});

Deno.test("the packed 12-byte epoll_event layout survives many events", () => {
  using ep = Epoll.create({ maxEvents: 16 });
  const fds: EventFd[] = [];
  try {
    for (let i = 0; i < 9; i++) {
      const e = EventFd.create({ nonblocking: true });
      fds.push(e);
      ep.add(e.fd, 1000 + i);
      e.signal();
    }
    const n = ep.wait(1000);
    assert.equal(n, 9);
    assert.deepEqual(tokens(ep, n), [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008]);
    for (let i = 0; i < n; i++) assert.equal(ep.eventsAt(i), EPOLLIN);
  } finally {
    for (const e of fds) e.close();
  }
});

Deno.test("maxEvents bounds one wait; the rest come in the next", () => {
  using ep = Epoll.create({ maxEvents: 2 });
  assert.equal(ep.maxEvents, 2);
  using a = EventFd.create({ nonblocking: true, initial: 1 });
  using b = EventFd.create({ nonblocking: true, initial: 1 });
  using c = EventFd.create({ nonblocking: true, initial: 1 });
  ep.add(a.fd, 1);
  ep.add(b.fd, 2);
  ep.add(c.fd, 3);
  assert.equal(ep.wait(0), 2);
  assert.throws(() => Epoll.create({ maxEvents: 0 }), {
    name: "RangeError",
    message: "epoll maxEvents must be an integer in 1..65536, got 0",
  });
});

Deno.test("modify changes token and events; remove stops reports", () => {
  using ep = Epoll.create();
  using efd = EventFd.create({ nonblocking: true, initial: 1 });
  ep.add(efd.fd, 1);
  ep.modify(efd.fd, 2, EPOLLIN);
  assert.equal(ep.wait(0), 1);
  assert.equal(ep.tokenAt(0), 2);
  ep.modify(efd.fd, 3, EPOLLOUT); // an eventfd below its maximum is writable
  assert.equal(ep.wait(0), 1);
  assert.equal(ep.tokenAt(0), 3);
  assert.equal(ep.eventsAt(0), EPOLLOUT);
  ep.remove(efd.fd);
  assert.equal(ep.wait(0), 0);
});

Deno.test("edge-triggered fds are reported once per change", () => {
  using ep = Epoll.create();
  using efd = EventFd.create({ nonblocking: true });
  ep.add(efd.fd, 1, EPOLLIN | EPOLLET);
  efd.signal();
  assert.equal(ep.wait(0), 1);
  assert.equal(ep.wait(0), 0, "no new edge");
  efd.signal();
  assert.equal(ep.wait(0), 1);
});

Deno.test("hang-up of a socket peer is reported with EPOLLHUP/EPOLLRDHUP", () => {
  using ep = Epoll.create();
  const [a, b] = UnixSocket.pair();
  try {
    ep.add(a.fd, 5, EPOLLIN | EPOLLRDHUP);
    assert.equal(ep.wait(0), 0);
    b.close();
    assert.equal(ep.wait(1000), 1);
    const events = ep.eventsAt(0);
    assert.equal(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP), EPOLLIN | EPOLLRDHUP | EPOLLHUP);
  } finally {
    a.close();
    b.close();
  }
});

Deno.test("epoll_ctl errors are SysErrors naming the operation", () => {
  using ep = Epoll.create();
  using efd = EventFd.create();
  ep.add(efd.fd, 1);
  assert.throws(() => ep.add(efd.fd, 1), (e: unknown) => {
    assert.ok(e instanceof SysError);
    assert.equal(e.message, `epoll_ctl(ADD fd ${efd.fd}): EEXIST (File exists)`);
    return true;
  });
  ep.remove(efd.fd);
  assert.throws(() => ep.remove(efd.fd), {
    name: "SysError",
    message: `epoll_ctl(DEL fd ${efd.fd}): ENOENT (No such file or directory)`,
  });
  assert.throws(() => ep.modify(efd.fd, 1), {
    name: "SysError",
    message: /^epoll_ctl\(MOD fd \d+\): ENOENT/,
  });
  assert.throws(() => ep.add(efd.fd, -1), {
    name: "RangeError",
    message: "epoll token must be an integer in 0..2^32-1, got -1",
  });
  assert.throws(() => ep.add(efd.fd, 2 ** 32), { name: "RangeError" });
  assert.throws(() => ep.wait(-2), {
    name: "RangeError",
    message: "epoll timeout must be an integer in -1..2^31-1 ms, got -2",
  });
  assert.throws(() => ep.wait(1.5), { name: "RangeError" });
});

Deno.test("wait honours its timeout", () => {
  using ep = Epoll.create();
  using efd = EventFd.create();
  ep.add(efd.fd, 1);
  const t0 = performance.now();
  assert.equal(ep.wait(30), 0);
  const elapsed = performance.now() - t0;
  assert.ok(elapsed >= 25 && elapsed < 1000, `waited ${elapsed} ms`);
});

Deno.test("close is idempotent and closes the fd", () => {
  const ep = Epoll.create();
  const fd = ep.fd;
  ep.close();
  ep.close();
  assert.equal(ep.fd, -1);
  assert.equal(isOpen(fd), false);
  assert.throws(() => ep.wait(0), {
    name: "SysError",
    message: "epoll_wait(epoll -1): EBADF (Bad file descriptor)",
  });
});

Deno.test("waitAsync resolves when a watched fd becomes ready, leaving the thread free", async () => {
  using ep = Epoll.create();
  using efd = EventFd.create({ nonblocking: true });
  ep.add(efd.fd, 77);
  let timerRan = false;
  const pending = ep.waitAsync(5000);
  await assert.rejects(() => ep.waitAsync(0), {
    name: "Busy",
    message: `epoll ${ep.fd} already has a waitAsync pending`,
  });
  setTimeout(() => {
    timerRan = true;
    efd.signal();
  }, 10);
  const n = await pending;
  assert.equal(timerRan, true, "the main thread ran the timer while waiting");
  assert.equal(n, 1);
  assert.equal(ep.tokenAt(0), 77);
  assert.equal(ep.eventsAt(0), EPOLLIN);
  assert.equal(efd.read(), 1n);
  // The async buffer and the sync one are separate; tokenAt follows the latest wait.
  assert.equal(await ep.waitAsync(0), 0);
  assert.equal(ep.count, 0);
});

Deno.test("close during waitAsync waits for the call to return before closing the fd", async () => {
  const ep = Epoll.create();
  using efd = EventFd.create({ nonblocking: true });
  ep.add(efd.fd, 1);
  const fd = ep.fd;
  const pending = ep.waitAsync(-1);
  ep.close();
  assert.equal(isOpen(fd), true, "fd must stay open while the pool thread may use it");
  efd.signal();
  assert.equal(await pending, 0);
  assert.equal(isOpen(fd), false);
  assert.equal(ep.fd, -1);
  await assert.rejects(() => ep.waitAsync(0), {
    name: "SysError",
    message: "epoll_wait(closed epoll): EBADF (Bad file descriptor)",
  });
});

type WorkerReply =
  | { kind: "ready" }
  | { kind: "data"; value: bigint }
  | { kind: "stopped"; wakeups: number };

Deno.test("a Worker blocked in Epoll.wait wakes on eventfd signals and stops on its stop fd", async () => {
  using data = EventFd.create({ nonblocking: true });
  using stop = EventFd.create({ nonblocking: true });
  const worker = new Worker(new URL("./fixtures/epoll_worker.ts", import.meta.url), {
    type: "module",
  });
  const inbox: WorkerReply[] = [];
  const waiting: Array<(m: WorkerReply) => void> = [];
  worker.onmessage = (e: MessageEvent<WorkerReply>) => {
    const next = waiting.shift();
    if (next) next(e.data);
    else inbox.push(e.data);
  };
  let failure: string | undefined;
  worker.onerror = (e) => {
    e.preventDefault();
    failure = e.message;
    for (const w of waiting.splice(0)) w({ kind: "stopped", wakeups: -1 });
  };
  const next = (): Promise<WorkerReply> =>
    inbox.length > 0 ? Promise.resolve(inbox.shift()!) : new Promise((r) => waiting.push(r));

  worker.postMessage({ dataFd: data.fd, stopFd: stop.fd });
  assert.deepEqual(await next(), { kind: "ready" });
  // The Worker is now (or soon) blocked in epoll_wait and cannot take messages;
  // only the eventfds reach it.
  data.signal(5n);
  assert.deepEqual(await next(), { kind: "data", value: 5n });
  data.signal(1n);
  assert.deepEqual(await next(), { kind: "data", value: 1n });
  stop.signal();
  const last = await next();
  assert.equal(failure, undefined);
  assert.equal(last.kind, "stopped");
  // Three wake-ups with work (two data, one stop); a signal could add an empty one.
  assert.ok(last.kind === "stopped" && last.wakeups >= 3, JSON.stringify(last));
  assert.equal(stop.read(), 0n, "the Worker drained the stop fd");
});
