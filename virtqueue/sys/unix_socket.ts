/**
 * Unix stream sockets with fd passing, for the vhost-user-style control
 * channel.
 *
 * Deno's own `UnixConn` hides its fd, so it cannot carry `SCM_RIGHTS`; this
 * one is built from libc `socket`/`sendmsg`/`recvmsg`. Every fd made or
 * received here is close-on-exec, so a child process never inherits a guest's
 * memory or doorbells by accident.
 *
 * Struct layouts are x86_64 Linux: `struct msghdr` 56 bytes, `struct iovec`
 * 16, `struct cmsghdr` 16 bytes of header, `struct sockaddr_un` 110.
 *
 * @module
 */

import {
  closeFd,
  cString,
  ERRNO,
  errno,
  lastError,
  libc,
  O_CLOEXEC,
  O_NONBLOCK,
  S_IFMT,
  S_IFSOCK,
  setNonBlocking,
  STAT_DEV,
  STAT_INO,
  STAT_MODE,
  STAT_SIZE,
  SysError,
} from "./libc.ts";

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = O_NONBLOCK;
const SOCK_CLOEXEC = O_CLOEXEC;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const SHUT_RDWR = 2;
const MSG_CTRUNC = 0x8;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x4000_0000;
const POLLOUT = 0x4;
/** Most fds Linux accepts in one SCM_RIGHTS message (SCM_MAX_FD). */
export const MAX_FDS_PER_MESSAGE = 253;
/** `sun_path` is 108 bytes including the terminating NUL. */
const SUN_PATH_MAX = 108;
const SOCKADDR_UN_SIZE = 2 + SUN_PATH_MAX;
const MSGHDR_SIZE = 56;
const CMSG_HEADER = 16;

/** `CMSG_SPACE`: a control message holding `dataBytes`, padded to 8 bytes. */
function cmsgSpace(dataBytes: number): number {
  return CMSG_HEADER + ((dataBytes + 7) & ~7);
}

/** A buffer off the V8 heap (an explicit `ArrayBuffer`), so its address is stable. */
function pinned(size: number): Uint8Array<ArrayBuffer> {
  return new Uint8Array(new ArrayBuffer(size));
}

function addressOf(bytes: Uint8Array): bigint {
  return Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes));
}

/** `struct sockaddr_un` for `path`, and its length. */
function sockaddr(path: string): { bytes: Uint8Array<ArrayBuffer>; length: number } {
  const name = cString(path);
  if (name.length > SUN_PATH_MAX) {
    throw new RangeError(
      `unix socket path must be at most ${SUN_PATH_MAX - 1} bytes, got ${name.length - 1}: ${path}`,
    );
  }
  if (name.length === 1) throw new RangeError("unix socket path must not be empty");
  const bytes = pinned(SOCKADDR_UN_SIZE);
  new DataView(bytes.buffer).setUint16(0, AF_UNIX, true);
  bytes.set(name, 2);
  return { bytes, length: 2 + name.length };
}

const statBuffer = pinned(STAT_SIZE);
const statView = new DataView(statBuffer.buffer);

/** dev/ino of the socket file at `path`, or undefined if it is missing or no socket. */
function socketIdentity(path: string): { dev: bigint; ino: bigint } | undefined {
  if (libc().lstat(cString(path), statBuffer) < 0) return undefined;
  if ((statView.getUint32(STAT_MODE, true) & S_IFMT) !== S_IFSOCK) return undefined;
  return {
    dev: statView.getBigUint64(STAT_DEV, true),
    ino: statView.getBigUint64(STAT_INO, true),
  };
}

function newSocket(flags: number, path: string): number {
  const fd = libc().socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | flags, 0);
  if (fd < 0) throw lastError("socket", { target: path });
  return fd;
}

/**
 * Whether something accepts connections at `path` right now. A refused
 * connection means a stale socket file left by a process that died.
 */
function isLive(path: string, address: { bytes: Uint8Array; length: number }): boolean {
  const fd = newSocket(SOCK_NONBLOCK, path);
  try {
    if (libc().connect(fd, address.bytes, address.length) === 0) return true;
    const e = errno();
    // EAGAIN: the listener's backlog is full, so it is very much alive.
    if (e === ERRNO.EAGAIN || e === ERRNO.EINPROGRESS) return true;
    if (e === ERRNO.ECONNREFUSED) return false;
    throw new SysError("connect", e, { target: path, note: "probing for a stale socket" });
  } finally {
    closeFd(fd);
  }
}

/** Options of {@linkcode UnixSocket.listen}. */
export interface ListenOptions {
  /** Pending connections the kernel queues; default 128. */
  backlog?: number;
}

/** Options of {@linkcode UnixSocket.fromFd}. */
export interface SocketFromFdOptions {
  /** Name used in error messages; default `"fd <n>"`. */
  path?: string;
  /**
   * Whether {@linkcode UnixSocket.close} closes the fd. Default true; false
   * when another object in this process owns it (e.g. the thread that gave a
   * Worker the fd), so the number is closed exactly once.
   */
  owned?: boolean;
}

/** What {@linkcode UnixSocket.receive} got. */
export interface Received {
  /** Bytes read into the buffer; 0 when the peer closed, -1 when a nonblocking socket had none. */
  bytes: number;
  /** File descriptors that came with them (close-on-exec, now owned by the caller). */
  fds: number[];
}

/**
 * A unix stream socket (`SOCK_STREAM | SOCK_CLOEXEC`) that can pass fds.
 *
 * @example
 * ```ts
 * import { UnixSocket } from "./unix_socket.ts";
 * const [a, b] = UnixSocket.pair();
 * a.send(new TextEncoder().encode("hi"));
 * const buf = new Uint8Array(16);
 * const got = b.receive(buf);
 * if (new TextDecoder().decode(buf.subarray(0, got.bytes)) !== "hi") throw new Error("lost");
 * a.close();
 * b.close();
 * ```
 */
export class UnixSocket {
  #fd: number;
  readonly #path: string;
  /** For a listener this object bound: the file it created, so close() unlinks only that. */
  readonly #bound: { dev: bigint; ino: bigint } | undefined;
  readonly #msg = pinned(MSGHDR_SIZE);
  readonly #msgView = new DataView(this.#msg.buffer);
  readonly #iov = pinned(16);
  readonly #iovView = new DataView(this.#iov.buffer);
  #control = pinned(cmsgSpace(8 * 4));
  #controlView = new DataView(this.#control.buffer);
  readonly #pollfd = pinned(8);

  readonly #owned: boolean;

  private constructor(
    fd: number,
    path: string,
    bound?: { dev: bigint; ino: bigint },
    owned = true,
  ) {
    this.#fd = fd;
    this.#path = path;
    this.#bound = bound;
    this.#owned = owned;
    this.#msgView.setBigUint64(16, addressOf(this.#iov), true);
    this.#msgView.setBigUint64(24, 1n, true);
  }

  /**
   * Listens at `path`. The listening socket is nonblocking, for
   * {@linkcode UnixSocket.accept} from an event loop.
   *
   * A socket file left at `path` by a dead process (connecting to it is
   * refused) is unlinked and replaced; anything else there is left alone.
   *
   * @throws {SysError} EADDRINUSE naming `path` if a live socket listens
   *   there or `path` is not a socket; other errors of `socket`, `bind`,
   *   `listen`.
   * @throws {RangeError} for a path too long for `sun_path`.
   */
  static listen(path: string, options: ListenOptions = {}): UnixSocket {
    const backlog = options.backlog ?? 128;
    if (!Number.isInteger(backlog) || backlog < 1) {
      throw new RangeError(`listen backlog must be a positive integer, got ${backlog}`);
    }
    const address = sockaddr(path);
    const sys = libc();
    const fd = newSocket(SOCK_NONBLOCK, path);
    try {
      if (sys.bind(fd, address.bytes, address.length) < 0) {
        const e = errno();
        if (e !== ERRNO.EADDRINUSE) throw new SysError("bind", e, { target: path });
        if (socketIdentity(path) === undefined) {
          throw new SysError("bind", e, {
            target: path,
            note: "the path exists and is not a socket",
          });
        }
        if (isLive(path, address)) {
          throw new SysError("bind", e, {
            target: path,
            note: "another process is listening there",
          });
        }
        if (sys.unlink(cString(path)) < 0) {
          throw lastError("unlink", { target: path, note: "removing a stale socket" });
        }
        if (sys.bind(fd, address.bytes, address.length) < 0) {
          throw lastError("bind", { target: path });
        }
      }
    } catch (e) {
      closeFd(fd);
      throw e;
    }
    const bound = socketIdentity(path);
    if (sys.listen(fd, backlog) < 0) {
      const error = lastError("listen", { target: path });
      // Leave no file behind that the next listen() would have to judge stale.
      if (bound !== undefined) sys.unlink(cString(path));
      closeFd(fd);
      throw error;
    }
    return new UnixSocket(fd, path, bound);
  }

  /**
   * Connects to the listener at `path`. The socket is blocking; call
   * {@linkcode UnixSocket.setNonBlocking} to use it from an event loop.
   *
   * @throws {SysError} naming `path`: ENOENT if nothing is there,
   *   ECONNREFUSED if nobody listens.
   */
  static connect(path: string): UnixSocket {
    const address = sockaddr(path);
    const fd = newSocket(0, path);
    for (;;) {
      if (libc().connect(fd, address.bytes, address.length) === 0) break;
      const e = errno();
      // An interrupted connect goes on in the kernel; asking again reports its outcome.
      if (e === ERRNO.EINTR || e === ERRNO.EALREADY) continue;
      if (e === ERRNO.EISCONN) break;
      closeFd(fd);
      throw new SysError("connect", e, { target: path });
    }
    return new UnixSocket(fd, path);
  }

  /**
   * Two connected blocking sockets (`socketpair`), e.g. for tests or for a
   * channel to a child process.
   *
   * @throws {SysError} from `socketpair`.
   */
  static pair(): [UnixSocket, UnixSocket] {
    const fds = new Int32Array(new ArrayBuffer(8));
    if (libc().socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, new Uint8Array(fds.buffer)) < 0) {
      throw lastError("socketpair");
    }
    return [new UnixSocket(fds[0]!, "socketpair"), new UnixSocket(fds[1]!, "socketpair")];
  }

  /**
   * Wraps a connected unix stream socket made elsewhere: received over
   * SCM_RIGHTS, inherited, or handed to a Worker by the thread that owns it.
   *
   * @throws {RangeError} for a negative or non-integer fd.
   */
  static fromFd(fd: number, options: SocketFromFdOptions = {}): UnixSocket {
    if (!Number.isInteger(fd) || fd < 0) {
      throw new RangeError(`socket must be a non-negative integer fd, got ${fd}`);
    }
    return new UnixSocket(fd, options.path ?? `fd ${fd}`, undefined, options.owned ?? true);
  }

  /** The file descriptor, or -1 once closed. */
  get fd(): number {
    return this.#fd;
  }

  /** The path this socket listens or connected at (`"socketpair"` for a pair). */
  get path(): string {
    return this.#path;
  }

  /**
   * Accepts one pending connection, or returns null if none is waiting. The
   * new socket is blocking and close-on-exec.
   *
   * @throws {SysError} from `accept4`, naming the path.
   */
  accept(): UnixSocket | null {
    const sys = libc();
    for (;;) {
      const fd = sys.accept4(this.#fd, null, null, SOCK_CLOEXEC);
      if (fd >= 0) return new UnixSocket(fd, this.#path);
      const e = errno();
      if (e === ERRNO.EAGAIN) return null;
      // A client that gave up before we got to it: try the next one.
      if (e === ERRNO.EINTR || e === ERRNO.ECONNABORTED) continue;
      throw new SysError("accept4", e, { target: this.#path });
    }
  }

  /** Sets or clears `O_NONBLOCK`. */
  setNonBlocking(on: boolean): void {
    setNonBlocking(this.#fd, on, this.#path);
  }

  /**
   * Sends all of `bytes`; `fds` go with the first byte as one SCM_RIGHTS
   * message (the receiver gets its own copies; these stay open here). Loops
   * over partial writes; on a nonblocking socket it waits for room with
   * `poll`, blocking the thread, so keep messages small on the main thread.
   *
   * @throws {RangeError} for fds without bytes to carry them, more than
   *   {@linkcode MAX_FDS_PER_MESSAGE} fds, or a negative fd.
   * @throws {SysError} from `sendmsg` naming the path (EPIPE once the peer is gone).
   */
  send(bytes: Uint8Array, fds: readonly number[] = []): void {
    const length = bytes.byteLength;
    if (fds.length > 0 && length === 0) {
      throw new RangeError("fds need at least one byte of data to travel with");
    }
    if (fds.length > MAX_FDS_PER_MESSAGE) {
      throw new RangeError(
        `at most ${MAX_FDS_PER_MESSAGE} fds fit in one message, got ${fds.length}`,
      );
    }
    if (length === 0) return;
    let controlLength = 0;
    if (fds.length > 0) {
      controlLength = cmsgSpace(fds.length * 4);
      this.#reserveControl(controlLength);
      const view = this.#controlView;
      view.setBigUint64(0, BigInt(CMSG_HEADER + fds.length * 4), true);
      view.setInt32(8, SOL_SOCKET, true);
      view.setInt32(12, SCM_RIGHTS, true);
      for (let i = 0; i < fds.length; i++) {
        const fd = fds[i]!;
        if (!Number.isInteger(fd) || fd < 0) throw new RangeError(`cannot send fd ${fd}`);
        view.setInt32(CMSG_HEADER + i * 4, fd, true);
      }
    }
    const sys = libc();
    const base = addressOf(bytes);
    let sent = 0;
    while (sent < length) {
      this.#iovView.setBigUint64(0, base + BigInt(sent), true);
      this.#iovView.setBigUint64(8, BigInt(length - sent), true);
      this.#setControl(controlLength);
      const n = sys.sendmsg(this.#fd, this.#msg, MSG_NOSIGNAL);
      if (n < 0n) {
        const e = errno();
        if (e === ERRNO.EINTR) continue;
        if (e === ERRNO.EAGAIN) {
          this.#waitWritable();
          continue;
        }
        throw new SysError("sendmsg", e, { target: this.#path });
      }
      sent += Number(n);
      // The fds went with the bytes just accepted; the rest carry none.
      controlLength = 0;
    }
  }

  /**
   * Receives up to `buf.byteLength` bytes and the fds sent with them
   * (`MSG_CMSG_CLOEXEC`). `bytes` is 0 when the peer closed, and -1 when the
   * socket is nonblocking and nothing is waiting.
   *
   * If the peer sent more than `maxFds` fds, the ones that arrived are
   * closed and an EMSGSIZE error is thrown; the data bytes of that message
   * are consumed by then, so the connection is best dropped.
   *
   * @throws {RangeError} for an empty buffer or a bad `maxFds`.
   * @throws {SysError} from `recvmsg` naming the path, or EMSGSIZE for a
   *   truncated control message.
   */
  receive(buf: Uint8Array, maxFds: number = 8): Received {
    if (buf.byteLength === 0) {
      throw new RangeError("receive needs a non-empty buffer (0 bytes means the peer closed)");
    }
    if (!Number.isInteger(maxFds) || maxFds < 0 || maxFds > MAX_FDS_PER_MESSAGE) {
      throw new RangeError(`maxFds must be an integer in 0..${MAX_FDS_PER_MESSAGE}, got ${maxFds}`);
    }
    const controlLength = maxFds === 0 ? 0 : cmsgSpace(maxFds * 4);
    this.#reserveControl(controlLength);
    const sys = libc();
    let n: bigint;
    for (;;) {
      this.#iovView.setBigUint64(0, addressOf(buf), true);
      this.#iovView.setBigUint64(8, BigInt(buf.byteLength), true);
      this.#setControl(controlLength);
      this.#msgView.setInt32(48, 0, true);
      n = sys.recvmsg(this.#fd, this.#msg, MSG_CMSG_CLOEXEC);
      if (n >= 0n) break;
      const e = errno();
      if (e === ERRNO.EINTR) continue;
      if (e === ERRNO.EAGAIN) return { bytes: -1, fds: [] };
      throw new SysError("recvmsg", e, { target: this.#path });
    }
    const fds = this.#collectFds();
    const truncated = (this.#msgView.getInt32(48, true) & MSG_CTRUNC) !== 0;
    if (truncated || fds.length > maxFds) {
      for (const fd of fds) closeFd(fd);
      throw new SysError("recvmsg", ERRNO.EMSGSIZE, {
        target: this.#path,
        note: `the peer sent more fds than the ${maxFds} expected; the ${fds.length} that ` +
          `arrived were closed and ${n} data bytes were consumed`,
      });
    }
    return { bytes: Number(n), fds };
  }

  /**
   * Shuts down both directions: the peer reads end-of-stream, even if other
   * processes still hold copies of this socket. A peer that is already gone
   * (ENOTCONN) is not an error.
   *
   * @throws {SysError} from `shutdown` naming the path.
   */
  shutdown(): void {
    if (libc().shutdown(this.#fd, SHUT_RDWR) < 0) {
      const e = errno();
      if (e !== ERRNO.ENOTCONN) throw new SysError("shutdown", e, { target: this.#path });
    }
  }

  /**
   * Closes the socket (if owned); for a listener this object created, also unlinks its
   * path (only if the file there is still the one it bound). Safe to call
   * more than once.
   */
  close(): void {
    const fd = this.#fd;
    if (fd < 0) return;
    this.#fd = -1;
    const bound = this.#bound;
    if (bound !== undefined) {
      const now = socketIdentity(this.#path);
      if (now !== undefined && now.dev === bound.dev && now.ino === bound.ino) {
        libc().unlink(cString(this.#path));
      }
    }
    if (this.#owned) closeFd(fd);
  }

  /** Same as {@linkcode UnixSocket.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** Makes the control buffer hold at least `length` bytes. */
  #reserveControl(length: number): void {
    if (this.#control.byteLength >= length) return;
    this.#control = pinned(length);
    this.#controlView = new DataView(this.#control.buffer);
  }

  #setControl(length: number): void {
    this.#msgView.setBigUint64(32, length === 0 ? 0n : addressOf(this.#control), true);
    this.#msgView.setBigUint64(40, BigInt(length), true);
  }

  /** The SCM_RIGHTS fds in the control data recvmsg just returned. */
  #collectFds(): number[] {
    const fds: number[] = [];
    const length = Number(this.#msgView.getBigUint64(40, true));
    const view = this.#controlView;
    let offset = 0;
    while (offset + CMSG_HEADER <= length) {
      const cmsgLength = Number(view.getBigUint64(offset, true));
      if (cmsgLength < CMSG_HEADER || offset + cmsgLength > length) break;
      if (
        view.getInt32(offset + 8, true) === SOL_SOCKET &&
        view.getInt32(offset + 12, true) === SCM_RIGHTS
      ) {
        for (let p = offset + CMSG_HEADER; p + 4 <= offset + cmsgLength; p += 4) {
          fds.push(view.getInt32(p, true));
        }
      }
      offset += (cmsgLength + 7) & ~7;
    }
    return fds;
  }

  /** Blocks until the socket has room to send (or has failed: sendmsg will say how). */
  #waitWritable(): void {
    const view = new DataView(this.#pollfd.buffer);
    view.setInt32(0, this.#fd, true);
    view.setInt16(4, POLLOUT, true);
    view.setInt16(6, 0, true);
    while (libc().poll(this.#pollfd, 1n, -1) < 0) {
      const e = errno();
      if (e !== ERRNO.EINTR) throw new SysError("poll", e, { target: this.#path });
    }
  }
}
