/**
 * The system layer: libc through Deno FFI for shared memory, eventfds, epoll,
 * unix sockets with fd passing, and a readiness reactor for the main thread.
 * x86_64 Linux only. Needs `--allow-ffi`.
 *
 * @example
 * ```ts
 * import { EventFd, SharedMemory, UnixSocket } from "./mod.ts";
 * using mem = SharedMemory.create(4096);
 * using kick = EventFd.create({ nonblocking: true });
 * const [driver, device] = UnixSocket.pair();
 * driver.send(new Uint8Array([1]), [mem.fd, kick.fd]);
 * const got = device.receive(new Uint8Array(1));
 * using peerMem = SharedMemory.map(got.fds[0]!, 4096);
 * using peerKick = EventFd.fromFd(got.fds[1]!);
 * new Uint8Array(peerMem.buffer)[0] = 5;
 * peerKick.signal();
 * if (new Uint8Array(mem.buffer)[0] !== 5 || kick.read() !== 1n) throw new Error("not shared");
 * driver.close();
 * device.close();
 * ```
 *
 * @module
 */

export {
  closeFd,
  cString,
  dupFd,
  ERRNO,
  errno,
  type ErrnoName,
  errnoName,
  isCloseOnExec,
  isNonBlocking,
  lastError,
  type Libc,
  libc,
  setNonBlocking,
  SysError,
  type SysErrorOptions,
} from "./libc.ts";
export {
  type CreateOptions,
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  fileSize,
  type MapOptions,
  MapPastEndError,
  sealsOf,
  SharedMemory,
} from "./shm.ts";
export { EventFd, type EventFdOptions, type FromFdOptions } from "./eventfd.ts";
export {
  Epoll,
  EPOLLERR,
  EPOLLET,
  EPOLLHUP,
  EPOLLIN,
  EPOLLONESHOT,
  type EpollOptions,
  EPOLLOUT,
  EPOLLRDHUP,
} from "./epoll.ts";
export {
  type ListenOptions,
  MAX_FDS_PER_MESSAGE,
  type Received,
  type SocketFromFdOptions,
  UnixSocket,
} from "./unix_socket.ts";
export { Reactor, type ReactorOptions } from "./reactor.ts";
