/**
 * The one place vrdma talks to the C library.
 *
 * Deno hides the file descriptors of its own sockets and has no memfd,
 * eventfd or epoll, so the system layer calls libc directly through FFI.
 * Everything goes through a single `Deno.dlopen` that is opened on first use:
 * importing this module costs nothing and needs no permission, and a process
 * that never touches shared memory never asks for `--allow-ffi`.
 *
 * Struct layouts elsewhere in this folder are those of x86_64 Linux (glibc).
 *
 * @module
 */

/**
 * Symbol table for `Deno.dlopen`. 64-bit parameters are `i64`/`usize`
 * (callers pass `bigint`: a `number` there costs four times as much), byte
 * buffers are `buffer` so a typed array goes straight through.
 */
const SYMBOLS = {
  __errno_location: { parameters: [], result: "pointer" },
  close: { parameters: ["i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  // fcntl is variadic; every command used here takes one int, which the
  // x86_64 calling convention passes exactly like a fixed third parameter.
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  getpagesize: { parameters: [], result: "i32" },
  memfd_create: { parameters: ["buffer", "u32"], result: "i32" },
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  fstat: { parameters: ["i32", "buffer"], result: "i32" },
  lstat: { parameters: ["buffer", "buffer"], result: "i32" },
  unlink: { parameters: ["buffer"], result: "i32" },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  epoll_create1: { parameters: ["i32"], result: "i32" },
  epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  epoll_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32" },
  // The same call on Deno's blocking thread pool, for the async event loop.
  // errno of that thread is out of reach, see Epoll.waitAsync.
  epoll_wait_nonblocking: {
    name: "epoll_wait",
    parameters: ["i32", "buffer", "i32", "i32"],
    result: "i32",
    nonblocking: true,
  },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  socketpair: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  accept4: { parameters: ["i32", "pointer", "pointer", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  sendmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  recvmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  sched_yield: { parameters: [], result: "i32" },
  // The UDP layer of the RoCE transport (backend/roce/socket_calls.ts).
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  recvfrom: {
    parameters: ["i32", "buffer", "usize", "i32", "buffer", "buffer"],
    result: "isize",
  },
  sendmmsg: { parameters: ["i32", "buffer", "u32", "i32"], result: "i32" },
  recvmmsg: { parameters: ["i32", "buffer", "u32", "i32", "pointer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/**
 * Gives the CPU to another runnable thread, if there is one (`sched_yield`).
 * A poller that found nothing calls it so that, on a machine with fewer
 * cores than busy threads, the thread that has work runs now instead of
 * after the poller's time slice.
 */
export function yieldCpu(): void {
  libc().sched_yield();
}

/** The libc functions vrdma uses, as returned by {@linkcode libc}. */
export type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

let symbols: Libc | undefined;
let errnoView: Deno.UnsafePointerView | undefined;

/**
 * The libc symbols, opening the library on the first call.
 *
 * The library stays open for the life of the thread: mappings and fds handed
 * out by this layer outlive any one caller.
 *
 * @example
 * ```ts
 * import { libc } from "./libc.ts";
 * const pageSize = libc().getpagesize();
 * if (pageSize < 4096) throw new Error(`odd page size ${pageSize}`);
 * ```
 */
export function libc(): Libc {
  if (symbols === undefined) symbols = Deno.dlopen("libc.so.6", SYMBOLS).symbols;
  return symbols;
}

/**
 * The calling thread's `errno`.
 *
 * Read it right after the failing call: any later libc call may overwrite it.
 * `__errno_location` is per thread, and each Worker loads its own copy of this
 * module on its own thread, so caching the pointer per module is correct.
 */
export function errno(): number {
  if (errnoView === undefined) {
    const p = libc().__errno_location();
    if (p === null) throw new TypeError("__errno_location returned a null pointer");
    errnoView = new Deno.UnsafePointerView(p);
  }
  return errnoView.getInt32();
}

/** Linux errno values (x86_64, asm-generic), with glibc's descriptions. */
const ERRNO_TABLE = [
  [1, "EPERM", "Operation not permitted"],
  [2, "ENOENT", "No such file or directory"],
  [3, "ESRCH", "No such process"],
  [4, "EINTR", "Interrupted system call"],
  [5, "EIO", "Input/output error"],
  [6, "ENXIO", "No such device or address"],
  [7, "E2BIG", "Argument list too long"],
  [8, "ENOEXEC", "Exec format error"],
  [9, "EBADF", "Bad file descriptor"],
  [10, "ECHILD", "No child processes"],
  [11, "EAGAIN", "Resource temporarily unavailable"],
  [12, "ENOMEM", "Cannot allocate memory"],
  [13, "EACCES", "Permission denied"],
  [14, "EFAULT", "Bad address"],
  [15, "ENOTBLK", "Block device required"],
  [16, "EBUSY", "Device or resource busy"],
  [17, "EEXIST", "File exists"],
  [18, "EXDEV", "Invalid cross-device link"],
  [19, "ENODEV", "No such device"],
  [20, "ENOTDIR", "Not a directory"],
  [21, "EISDIR", "Is a directory"],
  [22, "EINVAL", "Invalid argument"],
  [23, "ENFILE", "Too many open files in system"],
  [24, "EMFILE", "Too many open files"],
  [25, "ENOTTY", "Inappropriate ioctl for device"],
  [26, "ETXTBSY", "Text file busy"],
  [27, "EFBIG", "File too large"],
  [28, "ENOSPC", "No space left on device"],
  [29, "ESPIPE", "Illegal seek"],
  [30, "EROFS", "Read-only file system"],
  [31, "EMLINK", "Too many links"],
  [32, "EPIPE", "Broken pipe"],
  [33, "EDOM", "Numerical argument out of domain"],
  [34, "ERANGE", "Numerical result out of range"],
  [35, "EDEADLK", "Resource deadlock avoided"],
  [36, "ENAMETOOLONG", "File name too long"],
  [37, "ENOLCK", "No locks available"],
  [38, "ENOSYS", "Function not implemented"],
  [39, "ENOTEMPTY", "Directory not empty"],
  [40, "ELOOP", "Too many levels of symbolic links"],
  [42, "ENOMSG", "No message of desired type"],
  [61, "ENODATA", "No data available"],
  [62, "ETIME", "Timer expired"],
  [71, "EPROTO", "Protocol error"],
  [74, "EBADMSG", "Bad message"],
  [75, "EOVERFLOW", "Value too large for defined data type"],
  [77, "EBADFD", "File descriptor in bad state"],
  [84, "EILSEQ", "Invalid or incomplete multibyte or wide character"],
  [88, "ENOTSOCK", "Socket operation on non-socket"],
  [89, "EDESTADDRREQ", "Destination address required"],
  [90, "EMSGSIZE", "Message too long"],
  [91, "EPROTOTYPE", "Protocol wrong type for socket"],
  [92, "ENOPROTOOPT", "Protocol not available"],
  [93, "EPROTONOSUPPORT", "Protocol not supported"],
  [94, "ESOCKTNOSUPPORT", "Socket type not supported"],
  [95, "EOPNOTSUPP", "Operation not supported"],
  [96, "EPFNOSUPPORT", "Protocol family not supported"],
  [97, "EAFNOSUPPORT", "Address family not supported by protocol"],
  [98, "EADDRINUSE", "Address already in use"],
  [99, "EADDRNOTAVAIL", "Cannot assign requested address"],
  [100, "ENETDOWN", "Network is down"],
  [101, "ENETUNREACH", "Network is unreachable"],
  [102, "ENETRESET", "Network dropped connection on reset"],
  [103, "ECONNABORTED", "Software caused connection abort"],
  [104, "ECONNRESET", "Connection reset by peer"],
  [105, "ENOBUFS", "No buffer space available"],
  [106, "EISCONN", "Transport endpoint is already connected"],
  [107, "ENOTCONN", "Transport endpoint is not connected"],
  [108, "ESHUTDOWN", "Cannot send after transport endpoint shutdown"],
  [109, "ETOOMANYREFS", "Too many references: cannot splice"],
  [110, "ETIMEDOUT", "Connection timed out"],
  [111, "ECONNREFUSED", "Connection refused"],
  [112, "EHOSTDOWN", "Host is down"],
  [113, "EHOSTUNREACH", "No route to host"],
  [114, "EALREADY", "Operation already in progress"],
  [115, "EINPROGRESS", "Operation now in progress"],
  [116, "ESTALE", "Stale file handle"],
  [122, "EDQUOT", "Disk quota exceeded"],
  [125, "ECANCELED", "Operation canceled"],
  [130, "EOWNERDEAD", "Owner died"],
  [131, "ENOTRECOVERABLE", "State not recoverable"],
] as const;

/** The name of an errno value this layer knows, e.g. `"EAGAIN"`. */
export type ErrnoName = (typeof ERRNO_TABLE)[number][1];

const ERRNO_NAMES: ReadonlyMap<number, readonly [string, string]> = new Map(
  ERRNO_TABLE.map(([n, name, text]): [number, readonly [string, string]] => [n, [name, text]]),
);

/**
 * Linux errno numbers by name, for comparing against {@linkcode SysError.errno}.
 *
 * @example
 * ```ts
 * import { ERRNO } from "./libc.ts";
 * if (ERRNO.EAGAIN !== 11) throw new Error("not x86_64 Linux numbering");
 * ```
 */
export const ERRNO: Readonly<Record<ErrnoName, number>> = Object.freeze(
  Object.fromEntries(ERRNO_TABLE.map(([n, name]) => [name, n])) as Record<ErrnoName, number>,
);

/**
 * The symbolic name of an errno value (`"ENOENT"` for 2), or `"E<n>"` for a
 * value outside the table.
 */
export function errnoName(value: number): string {
  return ERRNO_NAMES.get(value)?.[0] ?? `E${value}`;
}

/** Options of a {@linkcode SysError}. */
export interface SysErrorOptions {
  /** What the call acted on (a path, a fd): shown in parentheses after the call name. */
  target?: string;
  /** A sentence appended to the message when the errno alone does not explain it. */
  note?: string;
}

/**
 * A failed system call.
 *
 * @example
 * ```ts
 * import { SysError } from "./libc.ts";
 * const e = new SysError("connect", 111, { target: "/tmp/x.sock" });
 * if (e.message !== "connect(/tmp/x.sock): ECONNREFUSED (Connection refused)") {
 *   throw new Error(e.message);
 * }
 * if (e.code !== "ECONNREFUSED") throw new Error(e.code);
 * ```
 */
export class SysError extends Error {
  /** The libc function that failed, e.g. `"connect"`. */
  readonly syscall: string;
  /** The errno value. */
  readonly errno: number;
  /** The errno name, e.g. `"ECONNREFUSED"`. */
  readonly code: string;
  /** What the call acted on, if known (a path, a fd). */
  readonly target: string | undefined;

  /** Builds the error for `syscall` failing with `errno`. */
  constructor(syscall: string, errno: number, options: SysErrorOptions = {}) {
    const [code, text] = ERRNO_NAMES.get(errno) ?? [`E${errno}`, `Unknown error ${errno}`];
    const where = options.target === undefined ? syscall : `${syscall}(${options.target})`;
    const note = options.note === undefined ? "" : `: ${options.note}`;
    super(`${where}: ${code} (${text})${note}`);
    this.name = "SysError";
    this.syscall = syscall;
    this.errno = errno;
    this.code = code;
    this.target = options.target;
  }
}

/**
 * A {@linkcode SysError} for `syscall` with the current `errno`. Call it
 * immediately after the failing call, before any other libc call.
 */
export function lastError(syscall: string, options: SysErrorOptions = {}): SysError {
  return new SysError(syscall, errno(), options);
}

const encoder = new TextEncoder();

/**
 * `text` as a NUL-terminated C string.
 *
 * @throws {TypeError} if `text` itself contains a NUL, which C would silently cut at.
 */
export function cString(text: string): Uint8Array<ArrayBuffer> {
  if (text.includes("\0")) {
    throw new TypeError(`C string contains a NUL byte: ${JSON.stringify(text)}`);
  }
  const bytes = new Uint8Array(new ArrayBuffer(encoder.encode(text).length + 1));
  encoder.encodeInto(text, bytes);
  return bytes;
}

/** x86_64 `struct stat` is 144 bytes; vrdma reads only these fields. */
export const STAT_SIZE = 144;
/** Offset of `st_dev` (u64) in `struct stat`. */
export const STAT_DEV = 0;
/** Offset of `st_ino` (u64) in `struct stat`. */
export const STAT_INO = 8;
/** Offset of `st_mode` (u32) in `struct stat`. */
export const STAT_MODE = 24;
/** Offset of `st_size` (i64) in `struct stat`. */
export const STAT_SIZE_FIELD = 48;
/** `S_IFMT`: the file-type bits of `st_mode`. */
export const S_IFMT = 0o170000;
/** `S_IFREG`: a regular file (memfd, tmpfs, /dev/shm). */
export const S_IFREG = 0o100000;
/** `S_IFSOCK`: a unix socket in the file system. */
export const S_IFSOCK = 0o140000;

/** `O_NONBLOCK` for `fcntl(F_SETFL)`. */
export const O_NONBLOCK = 0o4000;
/** `O_CLOEXEC`, the value of `EFD_CLOEXEC`, `SOCK_CLOEXEC` and `EPOLL_CLOEXEC` too. */
export const O_CLOEXEC = 0o2000000;
/** `fcntl` command: get file status flags. */
export const F_GETFL = 3;
/** `fcntl` command: set file status flags. */
export const F_SETFL = 4;
/** `fcntl` command: get descriptor flags. */
export const F_GETFD = 1;
/** `FD_CLOEXEC`, the descriptor flag `F_GETFD` reports. */
export const FD_CLOEXEC = 1;

/**
 * Sets or clears `O_NONBLOCK` on `fd`.
 *
 * @throws {SysError} from `fcntl`, naming `what` (a path or a description).
 */
export function setNonBlocking(fd: number, on: boolean, what: string = `fd ${fd}`): void {
  const sys = libc();
  const flags = sys.fcntl(fd, F_GETFL, 0);
  if (flags < 0) throw lastError("fcntl", { target: what });
  const next = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK;
  if (next !== flags && sys.fcntl(fd, F_SETFL, next) < 0) {
    throw lastError("fcntl", { target: what });
  }
}

/** Whether `fd` has `O_NONBLOCK` set. */
export function isNonBlocking(fd: number): boolean {
  const flags = libc().fcntl(fd, F_GETFL, 0);
  if (flags < 0) throw lastError("fcntl", { target: `fd ${fd}` });
  return (flags & O_NONBLOCK) !== 0;
}

/** Whether `fd` is closed on exec (so child processes do not inherit it). */
export function isCloseOnExec(fd: number): boolean {
  const flags = libc().fcntl(fd, F_GETFD, 0);
  if (flags < 0) throw lastError("fcntl", { target: `fd ${fd}` });
  return (flags & FD_CLOEXEC) !== 0;
}

const F_DUPFD_CLOEXEC = 1030;

/**
 * A new close-on-exec fd for the same open file as `fd` (`F_DUPFD_CLOEXEC`),
 * for handing one file to two owners that each close their own copy.
 *
 * @throws {SysError} from `fcntl` (EBADF if `fd` is not open).
 */
export function dupFd(fd: number): number {
  const copy = libc().fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) throw lastError("fcntl", { target: `F_DUPFD_CLOEXEC fd ${fd}` });
  return copy;
}

/**
 * Closes `fd`, reporting failure. EINTR is not retried: on Linux the fd is
 * released even then, and a retry could close a number another thread just
 * received.
 */
export function closeFd(fd: number): void {
  if (libc().close(fd) < 0) {
    const e = errno();
    if (e !== ERRNO.EINTR) throw new SysError("close", e, { target: `fd ${fd}` });
  }
}
