/**
 * `-c` (validate the received buffer) of rdma-core's pingpong tools.
 *
 * Both sides start with the buffer filled with 0x7b; with `-c` the client
 * zeroes the first byte of every page before its first send. Every message
 * is an echo of the previous one, so at the end both buffers must still be
 * exactly that: 0 at each page start, 0x7b everywhere else. rdma-core's
 * server checks only the page-start bytes and prints `invalid data in page
 * N` (and still exits 0); vrdma checks every byte, on both sides, reports a
 * page with any wrong byte the same way, and exits 1. The pattern is
 * rdma-core's, so the checks hold against the real tools in either role.
 *
 * @module
 */

/** rdma-core steps by `sysconf(_SC_PAGESIZE)`: 4096 on x86_64 Linux. */
export const CHECK_PAGE_BYTES = 4096;

/** What rdma-core fills a fresh buffer with (`memset(ctx->buf, 0x7b, size)`). */
export const FILL_BYTE = 0x7b;

/** The client's marks: byte 0 of every page of the message set to 0. */
export function markPages(message: Uint8Array): void {
  for (let i = 0; i < message.length; i += CHECK_PAGE_BYTES) message[i] = 0;
}

/**
 * Pages of `message` that differ from the expected pattern anywhere.
 *
 * @example
 * ```ts
 * import { FILL_BYTE, invalidPages, markPages } from "./pingpong_check.ts";
 * const m = new Uint8Array(10000).fill(FILL_BYTE);
 * markPages(m);
 * if (invalidPages(m).length !== 0) throw new Error("clean buffer flagged");
 * m[5000] = 1;
 * if (invalidPages(m).join() !== "1") throw new Error("page 1 not flagged");
 * ```
 */
export function invalidPages(message: Uint8Array): number[] {
  const bad: number[] = [];
  for (let page = 0; page * CHECK_PAGE_BYTES < message.length; page++) {
    const start = page * CHECK_PAGE_BYTES;
    const end = Math.min(start + CHECK_PAGE_BYTES, message.length);
    let ok = message[start] === 0;
    for (let i = start + 1; ok && i < end; i++) ok = message[i] === FILL_BYTE;
    if (!ok) bad.push(page);
  }
  return bad;
}
