import assert from "node:assert/strict";
import { join } from "node:path";
import { MAX_FDS_PER_MESSAGE, UnixSocket } from "../../../virtqueue/sys/unix_socket.ts";
import { SharedMemory } from "../../../virtqueue/sys/shm.ts";
import { EventFd } from "../../../virtqueue/sys/eventfd.ts";
import { isCloseOnExec, isNonBlocking, SysError } from "../../../virtqueue/sys/libc.ts";
import { fdTarget, isOpen, openFds } from "./fixtures/fds.ts";
import { acceptWithin, receiveWithin } from "./fixtures/wait.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function withTempDir(fn: (dir: string) => Promise<void> | void): () => Promise<void> {
  return async () => {
    const dir = Deno.makeTempDirSync({ prefix: "vrdma-sock-" });
    try {
      await fn(dir);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  };
}

/** Checks a memfd + eventfd pair that arrived on `receiver` shares state with the originals. */
function checkPassedFds(mem: SharedMemory, kick: EventFd, fds: number[]): void {
  assert.equal(fds.length, 2);
  const [memFd, kickFd] = fds as [number, number];
  assert.notEqual(memFd, mem.fd, "the receiver gets new fd numbers");
  assert.match(fdTarget(memFd), /^\/memfd:passed \(deleted\)$/);
  assert.equal(fdTarget(kickFd), "anon_inode:[eventfd]");
  assert.equal(isCloseOnExec(memFd), true, "MSG_CMSG_CLOEXEC");
  assert.equal(isCloseOnExec(kickFd), true, "MSG_CMSG_CLOEXEC");
  using peerMem = SharedMemory.map(memFd, mem.size);
  using peerKick = EventFd.fromFd(kickFd);
  new Uint8Array(peerMem.buffer).set([1, 2, 3, 4], 100);
  peerKick.signal(9n);
  assert.deepEqual([...new Uint8Array(mem.buffer, 100, 4)], [1, 2, 3, 4]);
  assert.equal(kick.read(), 9n);
}

Deno.test("pair: bytes arrive in order, across short reads", () => {
  const [a, b] = UnixSocket.pair();
  try {
    assert.equal(a.path, "socketpair");
    assert.equal(isCloseOnExec(a.fd), true);
    a.send(encoder.encode("hello, "));
    a.send(encoder.encode("device"));
    const buf = new Uint8Array(5);
    const first = b.receive(buf);
    assert.deepEqual(first, { bytes: 5, fds: [] });
    assert.equal(decoder.decode(buf), "hello");
    const rest = new Uint8Array(64);
    const second = b.receive(rest);
    assert.equal(decoder.decode(rest.subarray(0, second.bytes)), ", device");
  } finally {
    a.close();
    b.close();
  }
});

Deno.test("SCM_RIGHTS over a socketpair carries a memfd and an eventfd", () => {
  using mem = SharedMemory.create(4096, { name: "passed" });
  using kick = EventFd.create({ nonblocking: true });
  const [a, b] = UnixSocket.pair();
  try {
    // A subarray with an offset: the pointer must point at its first byte.
    const message = new Uint8Array([0xee, 0x11, 0x22, 0x33]).subarray(1);
    a.send(message, [mem.fd, kick.fd]);
    assert.equal(isOpen(mem.fd), true, "the sender keeps its fds");
    const buf = new Uint8Array(16);
    const got = b.receive(buf);
    assert.equal(got.bytes, 3);
    assert.deepEqual([...buf.subarray(0, 3)], [0x11, 0x22, 0x33]);
    checkPassedFds(mem, kick, got.fds);
  } finally {
    a.close();
    b.close();
  }
});

Deno.test("fds travel with the first byte only", () => {
  using kick = EventFd.create();
  const [a, b] = UnixSocket.pair();
  try {
    a.send(new Uint8Array([1, 2]), [kick.fd]);
    a.send(new Uint8Array([3]));
    const one = new Uint8Array(1);
    const first = b.receive(one);
    assert.equal(first.fds.length, 1);
    const passed = first.fds[0]!;
    const second = b.receive(one);
    assert.deepEqual(second, { bytes: 1, fds: [] });
    assert.equal(one[0], 2);
    const third = b.receive(one);
    assert.deepEqual(third, { bytes: 1, fds: [] });
    assert.equal(one[0], 3);
    EventFd.fromFd(passed).close();
  } finally {
    a.close();
    b.close();
  }
});

Deno.test(
  "SCM_RIGHTS over a real listening path",
  withTempDir((dir) => {
    const path = join(dir, "control.sock");
    using listener = UnixSocket.listen(path);
    assert.equal(Deno.lstatSync(path).isSocket, true);
    assert.equal(isNonBlocking(listener.fd), true);
    assert.equal(listener.accept(), null, "nothing pending yet");
    using client = UnixSocket.connect(path);
    using server = listener.accept()!;
    assert.ok(server !== null);
    assert.equal(server.path, path);
    assert.equal(client.path, path);
    assert.equal(isNonBlocking(server.fd), false, "accepted sockets are blocking");
    assert.equal(isCloseOnExec(server.fd), true);

    using mem = SharedMemory.create(8192, { name: "passed" });
    using kick = EventFd.create({ nonblocking: true });
    client.send(encoder.encode("SET_MEM_TABLE"), [mem.fd, kick.fd]);
    const buf = new Uint8Array(64);
    const got = server.receive(buf);
    assert.equal(decoder.decode(buf.subarray(0, got.bytes)), "SET_MEM_TABLE");
    checkPassedFds(mem, kick, got.fds);
  }),
);

Deno.test(
  "cross-process: a child maps the passed memfd, writes a pattern and signals the eventfd",
  withTempDir(async (dir) => {
    const path = join(dir, "child.sock");
    using listener = UnixSocket.listen(path);
    const size = 3 * 4096;
    using mem = SharedMemory.create(size, { name: "guest" });
    using kick = EventFd.create({ nonblocking: true });
    new DataView(mem.buffer).setUint32(0, 0x5d, true);

    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("./fixtures/shm_child.ts", import.meta.url).pathname, path],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const output = child.output();
    try {
      using conn = await acceptWithin(listener, 20_000);
      conn.send(new Uint8Array([5]), [mem.fd, kick.fd]);
      conn.setNonBlocking(true);
      const reply = new Uint8Array(64);
      const got = await receiveWithin(conn, reply, 20_000);
      assert.equal(decoder.decode(reply.subarray(0, got.bytes)), `ok ${size} ${0x5d}`);
      assert.equal(kick.read(), 1n, "the child's signal reached our eventfd");
      const bytes = new Uint8Array(mem.buffer);
      for (let i = 4; i < size; i++) assert.equal(bytes[i], (i * 13 + 0x5d) & 0xff, `byte ${i}`);
      // The child closed its end after answering.
      const eof = await receiveWithin(conn, reply, 20_000);
      assert.deepEqual(eof, { bytes: 0, fds: [] });
    } finally {
      const result = await output;
      assert.equal(result.code, 0, decoder.decode(result.stderr));
    }
  }),
);

Deno.test(
  "connect to a missing path fails with ENOENT naming the path",
  withTempDir((dir) => {
    const path = join(dir, "nobody.sock");
    assert.throws(() => UnixSocket.connect(path), (e: unknown) => {
      assert.ok(e instanceof SysError);
      assert.equal(e.code, "ENOENT");
      assert.equal(e.syscall, "connect");
      assert.equal(e.message, `connect(${path}): ENOENT (No such file or directory)`);
      return true;
    });
  }),
);

Deno.test(
  "listen replaces a stale socket, refuses a live one and a non-socket",
  withTempDir((dir) => {
    const path = join(dir, "stale.sock");
    // A listener that "dies" without cleaning up: close its fd, keep the file.
    // (The dead object is abandoned, never closed: its fd number may be reused.)
    const dead = UnixSocket.listen(path);
    UnixSocket.fromFd(dead.fd).close(); // closes the fd only: fromFd sockets never unlink
    assert.equal(Deno.lstatSync(path).isSocket, true);
    assert.throws(() => UnixSocket.connect(path), { name: "SysError", message: /ECONNREFUSED/ });

    using live = UnixSocket.listen(path);
    using probe = UnixSocket.connect(path); // it really listens
    assert.ok(probe.fd >= 0);
    assert.throws(() => UnixSocket.listen(path), (e: unknown) => {
      assert.ok(e instanceof SysError);
      assert.equal(e.code, "EADDRINUSE");
      assert.equal(
        e.message,
        `bind(${path}): EADDRINUSE (Address already in use): another process is listening there`,
      );
      return true;
    });
    assert.ok(live.accept() !== null);

    const file = join(dir, "not-a-socket");
    Deno.writeTextFileSync(file, "keep me");
    assert.throws(() => UnixSocket.listen(file), {
      name: "SysError",
      message:
        `bind(${file}): EADDRINUSE (Address already in use): the path exists and is not a socket`,
    });
    assert.equal(Deno.readTextFileSync(file), "keep me");
  }),
);

Deno.test(
  "closing a listener unlinks its path, but not a file that replaced it",
  withTempDir((dir) => {
    const path = join(dir, "l.sock");
    const listener = UnixSocket.listen(path);
    listener.close();
    listener.close();
    assert.equal(listener.fd, -1);
    assert.throws(() => Deno.lstatSync(path), Deno.errors.NotFound);

    const other = UnixSocket.listen(path);
    Deno.removeSync(path);
    Deno.writeTextFileSync(path, "someone else's");
    other.close();
    assert.equal(Deno.readTextFileSync(path), "someone else's");
  }),
);

Deno.test("peer close: receive returns 0 bytes; shutdown does the same for all holders", () => {
  const [a, b] = UnixSocket.pair();
  a.close();
  assert.deepEqual(b.receive(new Uint8Array(8)), { bytes: 0, fds: [] });
  assert.throws(() => b.send(new Uint8Array([1])), {
    name: "SysError",
    message: "sendmsg(socketpair): EPIPE (Broken pipe)",
  });
  b.close();

  const [c, d] = UnixSocket.pair();
  c.shutdown();
  assert.deepEqual(d.receive(new Uint8Array(8)), { bytes: 0, fds: [] });
  c.close();
  d.close();
});

Deno.test("nonblocking receive with nothing waiting returns bytes -1", () => {
  const [a, b] = UnixSocket.pair();
  try {
    b.setNonBlocking(true);
    assert.deepEqual(b.receive(new Uint8Array(8)), { bytes: -1, fds: [] });
    a.send(new Uint8Array([7]));
    assert.deepEqual(b.receive(new Uint8Array(8)), { bytes: 1, fds: [] });
    b.setNonBlocking(false);
    assert.equal(isNonBlocking(b.fd), false);
  } finally {
    a.close();
    b.close();
  }
});

Deno.test("more fds than maxFds: received ones are closed and EMSGSIZE is thrown", () => {
  using e1 = EventFd.create();
  using e2 = EventFd.create();
  using e3 = EventFd.create();
  const [a, b] = UnixSocket.pair();
  try {
    const before = openFds();
    // Three fds into room for one: the kernel truncates (MSG_CTRUNC).
    a.send(new Uint8Array([1, 2, 3]), [e1.fd, e2.fd, e3.fd]);
    assert.throws(() => b.receive(new Uint8Array(1), 1), (e: unknown) => {
      assert.ok(e instanceof SysError);
      assert.equal(e.code, "EMSGSIZE");
      assert.match(
        e.message,
        /^recvmsg\(socketpair\): EMSGSIZE \(Message too long\): the peer sent more fds than the 1 expected; the 2 that arrived were closed and 1 data bytes were consumed$/,
      );
      return true;
    });
    assert.deepEqual(openFds(), before, "no received fd leaked");
    // Two fds into room for one: CMSG_SPACE padding lets both in, still too many.
    a.send(new Uint8Array([4]), [e1.fd, e2.fd]);
    const drain = new Uint8Array(2);
    assert.deepEqual(b.receive(drain, 0), { bytes: 2, fds: [] }, "the rest of the first message");
    assert.throws(() => b.receive(new Uint8Array(1), 1), {
      name: "SysError",
      message: /the 2 that arrived were closed/,
    });
    assert.deepEqual(openFds(), before, "no received fd leaked");
    // And exactly as many as allowed is fine.
    a.send(new Uint8Array([5]), [e1.fd]);
    const ok = b.receive(new Uint8Array(1), 1);
    assert.equal(ok.fds.length, 1);
    EventFd.fromFd(ok.fds[0]!).close();
  } finally {
    a.close();
    b.close();
  }
});

Deno.test("argument checks", () => {
  const [a, b] = UnixSocket.pair();
  try {
    assert.throws(() => a.send(new Uint8Array(0), [a.fd]), {
      name: "RangeError",
      message: "fds need at least one byte of data to travel with",
    });
    assert.throws(() => a.send(new Uint8Array(1), new Array(254).fill(a.fd)), {
      name: "RangeError",
      message: `at most ${MAX_FDS_PER_MESSAGE} fds fit in one message, got 254`,
    });
    assert.throws(() => a.send(new Uint8Array(1), [-1]), {
      name: "RangeError",
      message: "cannot send fd -1",
    });
    assert.throws(() => b.receive(new Uint8Array(0)), {
      name: "RangeError",
      message: "receive needs a non-empty buffer (0 bytes means the peer closed)",
    });
    assert.throws(() => b.receive(new Uint8Array(1), 254), { name: "RangeError" });
    a.send(new Uint8Array(0)); // nothing to do
    const long = "/tmp/" + "x".repeat(103);
    assert.throws(() => UnixSocket.connect(long), {
      name: "RangeError",
      message: `unix socket path must be at most 107 bytes, got 108: ${long}`,
    });
    assert.throws(() => UnixSocket.connect(""), {
      name: "RangeError",
      message: "unix socket path must not be empty",
    });
  } finally {
    a.close();
    b.close();
  }
});

Deno.test("close is idempotent; use after close fails with EBADF", () => {
  const [a, b] = UnixSocket.pair();
  const fd = a.fd;
  a.close();
  a.close();
  assert.equal(a.fd, -1);
  assert.equal(isOpen(fd), false);
  assert.throws(() => a.send(new Uint8Array([1])), {
    name: "SysError",
    message: "sendmsg(socketpair): EBADF (Bad file descriptor)",
  });
  b.close();
});

Deno.test("a nonblocking send larger than the socket buffer completes across partial writes", async () => {
  const [a, b] = UnixSocket.pair();
  const worker = new Worker(new URL("./fixtures/socket_reader_worker.ts", import.meta.url), {
    type: "module",
  });
  try {
    const done = new Promise<{ total: number; sum: number }>((resolve, reject) => {
      worker.onmessage = (e) => resolve(e.data);
      worker.onerror = (e) => {
        e.preventDefault();
        reject(new Error(e.message));
      };
    });
    worker.postMessage({ fd: b.fd });
    a.setNonBlocking(true);
    const data = new Uint8Array(4 << 20);
    for (let i = 0; i < data.length; i++) data[i] = (i ^ (i >>> 11)) & 0xff;
    a.send(data);
    a.shutdown(); // the reader sees end of stream
    let sum = 0;
    for (const byte of data) sum = (sum * 31 + byte) >>> 0;
    assert.deepEqual(await done, { total: data.length, sum });
  } finally {
    worker.terminate();
    a.close();
    b.close();
  }
});
