import assert from "node:assert/strict";
import { EventFd } from "../../../virtqueue/sys/eventfd.ts";
import { isCloseOnExec, isNonBlocking, libc, SysError } from "../../../virtqueue/sys/libc.ts";
import { fdTarget, isOpen } from "./fixtures/fds.ts";

Deno.test("counter semantics: writes add up, a read returns the sum and resets", () => {
  using efd = EventFd.create({ nonblocking: true });
  assert.equal(fdTarget(efd.fd), "anon_inode:[eventfd]");
  assert.equal(isCloseOnExec(efd.fd), true);
  assert.equal(isNonBlocking(efd.fd), true);
  efd.signal();
  efd.signal(41n);
  efd.signal(0n);
  assert.equal(efd.read(), 42n);
  assert.equal(efd.read(), 0n);
  efd.signal(0xffff_ffff_ffff_fffen);
  assert.equal(efd.read(), 0xffff_ffff_ffff_fffen);
});

Deno.test("a nonblocking eventfd with a zero counter reads 0n (EAGAIN)", () => {
  using efd = EventFd.create({ nonblocking: true });
  assert.equal(efd.read(), 0n);
  assert.equal(efd.read(), 0n);
});

Deno.test("a nonblocking eventfd refuses to overflow with EAGAIN", () => {
  using efd = EventFd.create({ nonblocking: true });
  efd.signal(0xffff_ffff_ffff_fffen);
  assert.throws(() => efd.signal(1n), (e: unknown) => {
    assert.ok(e instanceof SysError);
    assert.equal(e.code, "EAGAIN");
    assert.equal(e.message, `write(eventfd ${efd.fd}): EAGAIN (Resource temporarily unavailable)`);
    return true;
  });
});

Deno.test("semaphore mode: each read returns 1n and decrements", () => {
  using efd = EventFd.create({ nonblocking: true, semaphore: true });
  efd.signal(3n);
  assert.equal(efd.read(), 1n);
  assert.equal(efd.read(), 1n);
  assert.equal(efd.read(), 1n);
  assert.equal(efd.read(), 0n);
});

Deno.test("initial value and a blocking read of a nonzero counter", () => {
  using efd = EventFd.create({ initial: 5 });
  assert.equal(isNonBlocking(efd.fd), false);
  assert.equal(efd.read(), 5n); // does not block: the counter is nonzero
  assert.throws(() => EventFd.create({ initial: -1 }), {
    name: "RangeError",
    message: "eventfd initial value must be an integer in 0..2^32-1, got -1",
  });
});

Deno.test("signal refuses values a 64-bit counter cannot take", () => {
  using efd = EventFd.create({ nonblocking: true });
  for (const n of [-1n, 0xffff_ffff_ffff_ffffn, 1n << 64n]) {
    assert.throws(() => efd.signal(n), {
      name: "RangeError",
      message: `eventfd signal value must be in 0..2^64-2, got ${n}`,
    });
  }
  assert.equal(efd.read(), 0n, "nothing was written");
});

Deno.test("fromFd wraps a received fd; owned: false leaves it open on close", () => {
  using owner = EventFd.create({ nonblocking: true });
  const borrowed = EventFd.fromFd(owner.fd, { owned: false });
  borrowed.signal(7n);
  assert.equal(owner.read(), 7n);
  borrowed.close();
  assert.equal(borrowed.fd, -1);
  assert.equal(isOpen(owner.fd), true);

  const raw = libc().eventfd(2, 0x80000 | 0x800);
  const adopted = EventFd.fromFd(raw);
  assert.equal(adopted.read(), 2n);
  adopted.close();
  assert.equal(isOpen(raw), false);
  assert.throws(() => EventFd.fromFd(-3), {
    name: "RangeError",
    message: "eventfd must be a non-negative integer fd, got -3",
  });
});

Deno.test("close is idempotent and later use fails with EBADF", () => {
  const efd = EventFd.create();
  const fd = efd.fd;
  efd.close();
  efd.close();
  assert.equal(isOpen(fd), false);
  assert.throws(() => efd.signal(), {
    name: "SysError",
    message: "write(closed eventfd): EBADF (Bad file descriptor)",
  });
  assert.throws(() => efd.read(), {
    name: "SysError",
    message: "read(closed eventfd): EBADF (Bad file descriptor)",
  });
});

Deno.test("signal costs about one syscall", () => {
  using efd = EventFd.create({ nonblocking: true });
  const n = 20_000;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) efd.signal();
  const perCall = (performance.now() - t0) / n * 1000;
  assert.equal(efd.read(), BigInt(n));
  console.log(`eventfd signal: ${perCall.toFixed(2)} µs per call`);
  // A generous bound: this only catches a path that went badly wrong
  // (allocation storms, promise machinery), not machine noise.
  assert.ok(perCall < 50, `signal took ${perCall} µs`);
});
