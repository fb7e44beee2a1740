import assert from "node:assert/strict";
import {
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  fileSize,
  MapPastEndError,
  sealsOf,
  SharedMemory,
} from "../../../virtqueue/sys/shm.ts";
import { closeFd, dupFd, isCloseOnExec, libc, SysError } from "../../../virtqueue/sys/libc.ts";
import { EventFd } from "../../../virtqueue/sys/eventfd.ts";
import { fdTarget, isOpen } from "./fixtures/fds.ts";

/** A memfd of `size` bytes made without this module, as a hostile peer might. */
function rawMemfd(size: number): number {
  const fd = libc().memfd_create(new TextEncoder().encode("raw\0"), 1);
  assert.ok(fd >= 0);
  assert.equal(libc().ftruncate(fd, BigInt(size)), 0);
  return fd;
}

Deno.test("create makes a sealed, close-on-exec memfd of the asked size", () => {
  using mem = SharedMemory.create(3 * 4096, { name: "vrdma-test" });
  assert.equal(mem.size, 3 * 4096);
  assert.equal(mem.buffer.byteLength, 3 * 4096);
  assert.equal(fileSize(mem.fd), 3 * 4096);
  assert.equal(fdTarget(mem.fd), "/memfd:vrdma-test (deleted)");
  assert.equal(isCloseOnExec(mem.fd), true);
  assert.equal(sealsOf(mem.fd), F_SEAL_SHRINK | F_SEAL_SEAL);
  assert.equal(mem.address, Deno.UnsafePointer.value(mem.pointer));
  assert.ok(new Uint8Array(mem.buffer).every((b) => b === 0));
  // The seal is what makes the size check in map() stick: nobody can shrink it now.
  assert.equal(libc().ftruncate(mem.fd, 4096n), -1);
  assert.equal(fileSize(mem.fd), 3 * 4096);
});

Deno.test("create with seal: false leaves the memfd unsealed", () => {
  using mem = SharedMemory.create(4096, { seal: false });
  assert.equal(sealsOf(mem.fd), 0);
});

Deno.test("create refuses sizes that are not positive integers", () => {
  for (const size of [0, -1, 1.5, NaN, 2 ** 60]) {
    assert.throws(() => SharedMemory.create(size), {
      name: "RangeError",
      message: `shared memory size must be a positive integer, got ${size}`,
    });
  }
});

Deno.test("bytes written in one mapping are read in a second mapping of the same fd", () => {
  using a = SharedMemory.create(2 * 4096);
  using b = SharedMemory.map(dupFd(a.fd), 2 * 4096);
  assert.notEqual(a.address, b.address);
  const wa = new Uint8Array(a.buffer);
  const rb = new Uint8Array(b.buffer);
  for (let i = 0; i < wa.length; i++) wa[i] = (i * 31 + 5) & 0xff;
  for (let i = 0; i < rb.length; i++) assert.equal(rb[i], (i * 31 + 5) & 0xff, `byte ${i}`);
  // And atomically, the way ring indices are published.
  Atomics.store(new Uint16Array(b.buffer), 100, 0xbeef);
  assert.equal(Atomics.load(new Uint16Array(a.buffer), 100), 0xbeef);
});

Deno.test("map at a page offset sees the file from there", () => {
  using a = SharedMemory.create(3 * 4096);
  new DataView(a.buffer).setUint32(4096 + 8, 0xcafef00d, true);
  using b = SharedMemory.map(dupFd(a.fd), 4096, { offset: 4096 });
  assert.equal(new DataView(b.buffer).getUint32(8, true), 0xcafef00d);
  assert.equal(b.size, 4096);
});

Deno.test("map refuses a range past the end of the file with MapPastEndError, fd left open", () => {
  const fd = rawMemfd(4096);
  try {
    assert.throws(() => SharedMemory.map(fd, 8192), (e: unknown) => {
      assert.ok(e instanceof MapPastEndError);
      assert.ok(e instanceof RangeError);
      assert.equal(e.fd, fd);
      assert.equal(e.offset, 0);
      assert.equal(e.size, 8192);
      assert.equal(e.fileSize, 4096);
      assert.equal(
        e.message,
        `cannot map 8192 bytes at offset 0 of fd ${fd}: the file holds only 4096 bytes ` +
          "(touching a page past its end would raise SIGBUS)",
      );
      return true;
    });
    assert.throws(() => SharedMemory.map(fd, 4096, { offset: 4096 }), MapPastEndError);
    assert.throws(() => SharedMemory.map(fd, 1, { offset: 4096 }), MapPastEndError);
    // The caller still owns the fd after a refusal.
    assert.equal(isOpen(fd), true);
    // A zero-length memfd (the "short memfd" of a hostile guest) is refused too.
    assert.equal(libc().ftruncate(fd, 0n), 0);
    assert.throws(() => SharedMemory.map(fd, 4096), {
      name: "MapPastEndError",
      message: /the file holds only 0 bytes/,
    });
    // Exactly the file's size is fine.
    assert.equal(libc().ftruncate(fd, 4096n), 0);
    using ok = SharedMemory.map(dupFd(fd), 4096);
    assert.equal(new Uint8Array(ok.buffer)[4095], 0);
  } finally {
    closeFd(fd);
  }
});

Deno.test("map refuses fds that are not regular files", () => {
  using efd = EventFd.create();
  assert.throws(() => SharedMemory.map(efd.fd, 4096), {
    name: "TypeError",
    message: `fd ${efd.fd} is not a regular file (st_mode 0o600): refusing to map it`,
  });
  assert.throws(() => SharedMemory.map(9999, 4096), (e: unknown) => {
    assert.ok(e instanceof SysError);
    assert.equal(e.message, "fstat(fd 9999): EBADF (Bad file descriptor)");
    return true;
  });
});

Deno.test("map refuses a bad offset or size", () => {
  using a = SharedMemory.create(8192);
  assert.throws(() => SharedMemory.map(a.fd, 4096, { offset: 100 }), {
    name: "RangeError",
    message: "mapping offset must be a non-negative multiple of the page size 4096, got 100",
  });
  assert.throws(() => SharedMemory.map(a.fd, 0), {
    name: "RangeError",
    message: "mapping size must be a positive integer, got 0",
  });
});

Deno.test("map with requireSealed refuses an unsealed memfd", () => {
  const fd = rawMemfd(4096);
  try {
    assert.throws(() => SharedMemory.map(fd, 4096, { requireSealed: true }), {
      name: "TypeError",
      message: `fd ${fd} is not sealed against shrinking (F_SEAL_SHRINK): its owner could ` +
        "truncate it under the mapping",
    });
  } finally {
    closeFd(fd);
  }
  using sealed = SharedMemory.create(4096);
  using mapped = SharedMemory.map(dupFd(sealed.fd), 4096, { requireSealed: true });
  assert.equal(mapped.size, 4096);
});

Deno.test("close unmaps, closes the fd, detaches views, and is idempotent", () => {
  const mem = SharedMemory.create(4096);
  const fd = mem.fd;
  const view = new Uint8Array(mem.buffer);
  view[0] = 1;
  assert.equal(mem.closed, false);
  mem.close();
  assert.equal(mem.closed, true);
  assert.equal(mem.fd, -1);
  assert.equal(isOpen(fd), false);
  // A stale view reads nothing instead of faulting on the unmapped page.
  assert.equal(view.length, 0);
  assert.equal(view[0], undefined);
  assert.equal(mem.buffer.byteLength, 0);
  mem.close();
  mem.close();
  assert.equal(mem.fd, -1);
});

Deno.test("attach rebuilds a view from the address; its close leaves the mapping", () => {
  using mem = SharedMemory.create(4096);
  const view = SharedMemory.attach(mem.address, 4096);
  assert.equal(view.fd, -1);
  new Uint8Array(view.buffer)[17] = 0x5a;
  assert.equal(new Uint8Array(mem.buffer)[17], 0x5a);
  view.close();
  view.close();
  assert.equal(view.buffer.byteLength, 0);
  assert.equal(new Uint8Array(mem.buffer)[17], 0x5a);
  assert.throws(() => SharedMemory.attach(0n, 4096), {
    name: "RangeError",
    message: "cannot attach shared memory at address 0",
  });
});

Deno.test("attach inside a Worker shares the memory the main thread mapped", async () => {
  using mem = SharedMemory.create(4096);
  new Uint8Array(mem.buffer)[0] = 0xa5;
  const worker = new Worker(new URL("./fixtures/shm_worker.ts", import.meta.url), {
    type: "module",
  });
  const reply = await new Promise<{ seen: number; after: number }>((resolve, reject) => {
    worker.onmessage = (e) => resolve(e.data);
    worker.onerror = (e) => {
      e.preventDefault();
      reject(new Error(e.message));
    };
    worker.postMessage({ address: mem.address, size: mem.size });
  });
  worker.terminate();
  assert.deepEqual(reply, { seen: 0xa5, after: 0 });
  const bytes = new Uint8Array(mem.buffer);
  for (let i = 1; i < bytes.length; i++) assert.equal(bytes[i], (i * 7) & 0xff, `byte ${i}`);
});

Deno.test("fileSize reports st_size and fails for a closed fd", () => {
  const fd = rawMemfd(12345);
  assert.equal(fileSize(fd), 12345);
  closeFd(fd);
  assert.throws(() => fileSize(fd), {
    name: "SysError",
    message: `fstat(fd ${fd}): EBADF (Bad file descriptor)`,
  });
});
