import assert from "node:assert/strict";
import * as sys from "../../../virtqueue/sys/mod.ts";
import * as libcModule from "../../../virtqueue/sys/libc.ts";
import * as shm from "../../../virtqueue/sys/shm.ts";
import * as eventfd from "../../../virtqueue/sys/eventfd.ts";
import * as epoll from "../../../virtqueue/sys/epoll.ts";
import * as unixSocket from "../../../virtqueue/sys/unix_socket.ts";
import * as reactor from "../../../virtqueue/sys/reactor.ts";

Deno.test("mod.ts re-exports the public surface of every module unchanged", () => {
  const expected: Record<string, unknown> = {
    SysError: libcModule.SysError,
    ERRNO: libcModule.ERRNO,
    libc: libcModule.libc,
    closeFd: libcModule.closeFd,
    dupFd: libcModule.dupFd,
    SharedMemory: shm.SharedMemory,
    MapPastEndError: shm.MapPastEndError,
    fileSize: shm.fileSize,
    sealsOf: shm.sealsOf,
    EventFd: eventfd.EventFd,
    Epoll: epoll.Epoll,
    EPOLLIN: epoll.EPOLLIN,
    EPOLLOUT: epoll.EPOLLOUT,
    EPOLLERR: epoll.EPOLLERR,
    EPOLLHUP: epoll.EPOLLHUP,
    EPOLLRDHUP: epoll.EPOLLRDHUP,
    EPOLLET: epoll.EPOLLET,
    UnixSocket: unixSocket.UnixSocket,
    MAX_FDS_PER_MESSAGE: unixSocket.MAX_FDS_PER_MESSAGE,
    Reactor: reactor.Reactor,
  };
  for (const [name, value] of Object.entries(expected)) {
    assert.equal((sys as Record<string, unknown>)[name], value, name);
  }
});

Deno.test("the pieces work together through mod.ts: memfd and doorbell over a socket", () => {
  using mem = sys.SharedMemory.create(4096);
  using kick = sys.EventFd.create({ nonblocking: true });
  using ep = sys.Epoll.create();
  const [driver, device] = sys.UnixSocket.pair();
  try {
    driver.send(new Uint8Array([1]), [mem.fd, kick.fd]);
    const got = device.receive(new Uint8Array(1));
    using peerMem = sys.SharedMemory.map(got.fds[0]!, 4096, { requireSealed: true });
    using peerKick = sys.EventFd.fromFd(got.fds[1]!);
    ep.add(kick.fd, 42, sys.EPOLLIN);
    new DataView(peerMem.buffer).setUint32(64, 0x12345678, true);
    peerKick.signal();
    assert.equal(ep.wait(1000), 1);
    assert.equal(ep.tokenAt(0), 42);
    assert.equal(kick.read(), 1n);
    assert.equal(new DataView(mem.buffer).getUint32(64, true), 0x12345678);
  } finally {
    driver.close();
    device.close();
  }
});
