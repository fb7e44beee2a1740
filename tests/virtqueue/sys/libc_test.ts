import assert from "node:assert/strict";
import {
  closeFd,
  cString,
  dupFd,
  ERRNO,
  errno,
  errnoName,
  isCloseOnExec,
  isNonBlocking,
  lastError,
  libc,
  setNonBlocking,
  SysError,
} from "../../../virtqueue/sys/libc.ts";
import { fdTarget, isOpen } from "./fixtures/fds.ts";

Deno.test("SysError message names the call, the target, the code and glibc's text", () => {
  const e = new SysError("connect", 111, { target: "/tmp/x.sock" });
  assert.equal(e.message, "connect(/tmp/x.sock): ECONNREFUSED (Connection refused)");
  assert.equal(e.syscall, "connect");
  assert.equal(e.errno, 111);
  assert.equal(e.code, "ECONNREFUSED");
  assert.equal(e.target, "/tmp/x.sock");
  assert.equal(e.name, "SysError");
  assert.ok(e instanceof Error);

  const bare = new SysError("eventfd", ERRNO.EMFILE);
  assert.equal(bare.message, "eventfd: EMFILE (Too many open files)");
  const noted = new SysError("recvmsg", ERRNO.EMSGSIZE, { target: "p", note: "too many fds" });
  assert.equal(noted.message, "recvmsg(p): EMSGSIZE (Message too long): too many fds");
  const unknown = new SysError("ioctl", 4000);
  assert.equal(unknown.code, "E4000");
  assert.equal(unknown.message, "ioctl: E4000 (Unknown error 4000)");
});

Deno.test("errno table agrees with glibc's strerrorname_np and strerrordesc_np", () => {
  // An independent oracle: glibc's own names and descriptions (glibc >= 2.32).
  const oracle = Deno.dlopen("libc.so.6", {
    strerrorname_np: { parameters: ["i32"], result: "pointer" },
    strerrordesc_np: { parameters: ["i32"], result: "pointer" },
  });
  try {
    const names = Object.entries(ERRNO);
    assert.ok(names.length >= 80, `only ${names.length} errno names`);
    for (const [name, value] of names) {
      const cName = oracle.symbols.strerrorname_np(value);
      const cDesc = oracle.symbols.strerrordesc_np(value);
      assert.ok(cName !== null && cDesc !== null, `glibc does not know errno ${value}`);
      assert.equal(Deno.UnsafePointerView.getCString(cName), name);
      const e = new SysError("x", value);
      assert.equal(e.message, `x: ${name} (${Deno.UnsafePointerView.getCString(cDesc)})`);
      assert.equal(errnoName(value), name);
    }
  } finally {
    oracle.close();
  }
});

Deno.test("errno is read from the failing call", () => {
  assert.equal(libc().close(-1), -1);
  assert.equal(errno(), ERRNO.EBADF);
  assert.equal(libc().unlink(cString("/nonexistent-vrdma-dir/x")), -1);
  const e = lastError("unlink", { target: "/nonexistent-vrdma-dir/x" });
  assert.equal(e.code, "ENOENT");
  assert.equal(e.message, "unlink(/nonexistent-vrdma-dir/x): ENOENT (No such file or directory)");
});

Deno.test("closeFd reports EBADF with the fd", () => {
  assert.throws(() => closeFd(-1), (e: unknown) => {
    assert.ok(e instanceof SysError);
    assert.equal(e.message, "close(fd -1): EBADF (Bad file descriptor)");
    return true;
  });
});

Deno.test("cString terminates with NUL and refuses embedded NULs", () => {
  assert.deepEqual([...cString("añ")], [0x61, 0xc3, 0xb1, 0]);
  assert.deepEqual([...cString("")], [0]);
  assert.throws(() => cString("a\0b"), {
    name: "TypeError",
    message: 'C string contains a NUL byte: "a\\u0000b"',
  });
});

Deno.test("dupFd gives a close-on-exec copy; nonblocking flag round-trips", () => {
  const fd = libc().eventfd(0, 0); // deliberately without EFD_CLOEXEC
  assert.ok(fd >= 0);
  try {
    assert.equal(isCloseOnExec(fd), false);
    const copy = dupFd(fd);
    assert.notEqual(copy, fd);
    assert.equal(isCloseOnExec(copy), true);
    assert.equal(fdTarget(copy), "anon_inode:[eventfd]");
    closeFd(copy);
    assert.equal(isOpen(copy), false);

    assert.equal(isNonBlocking(fd), false);
    setNonBlocking(fd, true);
    assert.equal(isNonBlocking(fd), true);
    setNonBlocking(fd, false);
    assert.equal(isNonBlocking(fd), false);
  } finally {
    closeFd(fd);
  }
  assert.throws(() => dupFd(fd), {
    name: "SysError",
    message: /^fcntl\(F_DUPFD_CLOEXEC fd \d+\): EBADF/,
  });
});
