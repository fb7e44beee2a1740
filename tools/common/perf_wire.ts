/**
 * perftest's out-of-band TCP exchange (ib_write_bw and friends, perftest
 * 6.06 as Debian's 4.5-0.17 package announces it), byte for byte, so the
 * vrdma perf tool interoperates with the real perftest in either role.
 *
 * Every message has the same length both ways; the client writes first and
 * then reads, the server reads first and then writes (perftest's
 * `ctx_xchg_data` and `ctx_hand_shake`). The messages, in the order a test
 * sends them:
 *
 * - version: 16 bytes, `"6.06"` and NULs;
 * - cycle buffer, then cache line size: 4-byte big-endian integers
 *   (each side keeps the larger);
 * - MTU: the IBV_MTU enum as decimal text plus NUL, 2 bytes (`"3\0"`);
 *   each side keeps the smaller valid value;
 * - key messages of 108 bytes, {@linkcode encodeKeyMessage}: the QP's
 *   address and its buffer's rkey/vaddr. The same message doubles as a
 *   barrier;
 * - bandwidth results (write/read/atomic bw): size, iterations, peak BW,
 *   average BW and message rate, five 8-byte big-endian fields (the first
 *   two integers, the rest IEEE doubles);
 * - `done\0` (5 bytes), written by each side before it closes; nobody
 *   reads it.
 *
 * @module
 */

/** perftest's default TCP port. */
export const PERFTEST_PORT = 18515;
/** The perftest version this tool announces (Debian perftest 4.5-0.17 sends this). */
export const PERFTEST_VERSION = "6.06";
/** Bytes of the version message (perftest's `MAX_VERSION`). */
export const VERSION_BYTES = 16;
/** Bytes of a key message with a GID (`KEY_MSG_SIZE_GID`). */
export const KEY_MESSAGE_BYTES = 108;
/** perftest's default cycle buffer (a page). */
export const DEFAULT_CYCLE_BUFFER = 4096;
/** perftest's default cache line size. */
export const DEFAULT_CACHE_LINE = 64;
/** The oldest peer version whose exchange this module speaks (8-byte iteration counts). */
export const OLDEST_PEER_VERSION = 5.33;

/** What a key message carries (perftest's `struct pingpong_dest`). */
export interface KeyMessage {
  /** LID (0 on RoCE). */
  lid: number;
  /** Outstanding RDMA READs/atomics this side accepts as target. */
  outReads: number;
  /** QP number. */
  qpn: number;
  /** Initial PSN. */
  psn: number;
  /** rkey of the buffer the peer may access. */
  rkey: number;
  /** Address of that buffer, as the peer puts it in its WRs. */
  vaddr: bigint;
  /** The 16 GID bytes in wire order. */
  gid: Uint8Array;
  /** SRQ number (XRC/DC only; 0 here). */
  srqn: number;
}

/** What the client of a write/read/atomic bandwidth test reports to the server. */
export interface BwResults {
  /** Message size in bytes. */
  size: number;
  /** Messages measured. */
  iters: number;
  /** Peak bandwidth, MB/s (2^20 bytes). */
  bwPeak: number;
  /** Average bandwidth, MB/s (2^20 bytes). */
  bwAvg: number;
  /** Message rate, millions per second. */
  msgRate: number;
}

function hex(value: number | bigint, digits: number): string {
  return value.toString(16).padStart(digits, "0");
}

function checkField(name: string, value: number, max: number): void {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new RangeError(`key message ${name} ${value} is not an integer in 0..${max}`);
  }
}

/**
 * The 108-byte key message perftest writes: `"%04x:%04x:%06x:%06x:%08x:%016llx:"`
 * (lid, out_reads, qpn, psn, rkey, vaddr), 16 times `"%02x:"` (the GID),
 * `"%08x:"` (srqn) and a NUL.
 *
 * @example
 * ```ts
 * import { encodeKeyMessage } from "./perf_wire.ts";
 * const gid = new Uint8Array(16);
 * gid.set([0xff, 0xff, 10, 99, 0, 3], 10);
 * const m = encodeKeyMessage({
 *   lid: 0, outReads: 1, qpn: 0x12, psn: 0x7c50a8, rkey: 0x331,
 *   vaddr: 0x55d3fd27c000n, gid, srqn: 0,
 * });
 * const text = new TextDecoder().decode(m.subarray(0, 107));
 * if (m.length !== 108 || !text.startsWith("0000:0001:000012:7c50a8:00000331:000055d3fd27c000:")) {
 *   throw new Error(text);
 * }
 * ```
 */
export function encodeKeyMessage(k: KeyMessage): Uint8Array {
  checkField("lid", k.lid, 0xffff);
  checkField("outReads", k.outReads, 0xffff);
  checkField("qpn", k.qpn, 0xffffff);
  checkField("psn", k.psn, 0xffffff);
  checkField("rkey", k.rkey, 0xffffffff);
  checkField("srqn", k.srqn, 0xffffffff);
  if (k.vaddr < 0n || k.vaddr > 0xffff_ffff_ffff_ffffn) {
    throw new RangeError(`key message vaddr ${k.vaddr} is not a 64-bit address`);
  }
  if (k.gid.length !== 16) throw new RangeError(`a GID is 16 bytes, got ${k.gid.length}`);
  const gid = Array.from(k.gid, (b) => `${hex(b, 2)}:`).join("");
  const text = `${hex(k.lid, 4)}:${hex(k.outReads, 4)}:${hex(k.qpn, 6)}:${hex(k.psn, 6)}:` +
    `${hex(k.rkey, 8)}:${hex(k.vaddr, 16)}:${gid}${hex(k.srqn, 8)}:`;
  const out = new Uint8Array(KEY_MESSAGE_BYTES);
  out.set(new TextEncoder().encode(text));
  return out;
}

/**
 * Parses a 108-byte key message (the text up to its NUL). Throws a
 * `SyntaxError` naming what did not parse.
 *
 * @example
 * ```ts
 * import { decodeKeyMessage } from "./perf_wire.ts";
 * const text = "0000:0001:000012:7c50a8:00000331:000055d3fd27c000:" +
 *   "00:00:00:00:00:00:00:00:00:00:ff:ff:0a:63:00:03:00000000:";
 * const bytes = new Uint8Array(108);
 * bytes.set(new TextEncoder().encode(text));
 * const k = decodeKeyMessage(bytes);
 * if (k.qpn !== 0x12 || k.rkey !== 0x331 || k.gid[15] !== 3) throw new Error("bad parse");
 * ```
 */
export function decodeKeyMessage(bytes: Uint8Array): KeyMessage {
  const nul = bytes.indexOf(0);
  const text = new TextDecoder().decode(nul < 0 ? bytes : bytes.subarray(0, nul));
  const bad = (why: string) => new SyntaxError(`key message "${text}": ${why}`);
  const parts = text.split(":");
  // 6 address fields, 16 GID bytes, the SRQ number, and "" after the last colon.
  if (parts.length < 22) throw bad(`${parts.length} fields, expected 24`);
  const field = (i: number, digits: number, name: string): string => {
    const p = parts[i]!;
    if (!new RegExp(`^[0-9a-fA-F]{1,${digits}}$`).test(p)) {
      throw bad(`${name} "${p}" is not hex of at most ${digits} digits`);
    }
    return p;
  };
  const num = (i: number, digits: number, name: string) => parseInt(field(i, digits, name), 16);
  const gid = new Uint8Array(16);
  for (let i = 0; i < 16; i++) gid[i] = num(6 + i, 2, `GID byte ${i}`);
  return {
    lid: num(0, 4, "lid"),
    outReads: num(1, 4, "out_reads"),
    qpn: num(2, 6, "qpn"),
    psn: num(3, 6, "psn"),
    rkey: num(4, 8, "rkey"),
    vaddr: BigInt(`0x${field(5, 16, "vaddr")}`),
    gid,
    srqn: parts.length > 22 && parts[22] !== "" ? num(22, 8, "srqn") : 0,
  };
}

/** Encodes the five result fields (40 bytes, big-endian). */
export function encodeResults(r: BwResults): Uint8Array {
  const out = new Uint8Array(40);
  const v = new DataView(out.buffer);
  v.setBigUint64(0, BigInt(r.size));
  v.setBigUint64(8, BigInt(r.iters));
  v.setFloat64(16, r.bwPeak);
  v.setFloat64(24, r.bwAvg);
  v.setFloat64(32, r.msgRate);
  return out;
}

/** Decodes the five result fields. */
export function decodeResults(bytes: Uint8Array): BwResults {
  if (bytes.length !== 40) throw new RangeError(`results are 40 bytes, got ${bytes.length}`);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    size: Number(v.getBigUint64(0)),
    iters: Number(v.getBigUint64(8)),
    bwPeak: v.getFloat64(16),
    bwAvg: v.getFloat64(24),
    msgRate: v.getFloat64(32),
  };
}

/** The error a broken exchange raises: the peer closed, or sent something unparseable. */
export class ExchangeError extends Error {
  /** Names the class in stack traces and messages. */
  override name = "ExchangeError";
}

/** How {@linkcode PerftestChannel.connect} behaves. */
export interface ConnectOptions {
  /** Keep retrying a refused connection this long (ms); 0 tries once, as perftest does. */
  retryMs?: number;
}

/** One side of a perftest TCP exchange. */
export class PerftestChannel {
  /** True on the side that connected (it writes first). */
  readonly client: boolean;
  /** The peer's version text, once {@linkcode PerftestChannel.versions} ran. */
  peerVersion = "";
  readonly #conn: Deno.TcpConn;
  #closed = false;

  private constructor(conn: Deno.TcpConn, client: boolean) {
    this.#conn = conn;
    this.client = client;
    conn.setNoDelay(true);
  }

  /** Connects to a server (perftest client role). */
  static async connect(
    host: string,
    port: number,
    options: ConnectOptions = {},
  ): Promise<PerftestChannel> {
    const deadline = performance.now() + (options.retryMs ?? 0);
    for (;;) {
      try {
        const conn = await Deno.connect({ hostname: host, port, transport: "tcp" });
        return new PerftestChannel(conn, true);
      } catch (e) {
        if (!(e instanceof Deno.errors.ConnectionRefused) || performance.now() > deadline) {
          throw new ExchangeError(`couldn't connect to ${host}:${port}: ${(e as Error).message}`, {
            cause: e,
          });
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  /** Takes the first connection of `listener` (perftest server role) and closes the listener. */
  static async accept(listener: Deno.TcpListener): Promise<PerftestChannel> {
    try {
      const conn = await listener.accept();
      return new PerftestChannel(conn, false);
    } finally {
      listener.close();
    }
  }

  async #readExact(n: number, what: string): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      let r: number | null;
      try {
        r = await this.#conn.read(out.subarray(got));
      } catch (e) {
        throw new ExchangeError(`reading ${what}: ${(e as Error).message}`, { cause: e });
      }
      if (r === null) {
        throw new ExchangeError(
          `the peer closed the connection while this side read ${what} (${got} of ${n} bytes)`,
        );
      }
      got += r;
    }
    return out;
  }

  async #writeAll(bytes: Uint8Array, what: string): Promise<void> {
    let sent = 0;
    try {
      while (sent < bytes.length) sent += await this.#conn.write(bytes.subarray(sent));
    } catch (e) {
      throw new ExchangeError(`writing ${what}: ${(e as Error).message}`, { cause: e });
    }
  }

  /**
   * Sends `mine` and returns the peer's message of the same length: the
   * client writes then reads, the server reads then writes.
   */
  async exchange(mine: Uint8Array, what: string): Promise<Uint8Array> {
    if (this.client) {
      await this.#writeAll(mine, what);
      return await this.#readExact(mine.length, what);
    }
    const theirs = await this.#readExact(mine.length, what);
    await this.#writeAll(mine, what);
    return theirs;
  }

  /**
   * Exchanges version strings; throws when the peer is older than
   * {@linkcode OLDEST_PEER_VERSION} (its exchange has other field sizes).
   */
  async versions(version = PERFTEST_VERSION): Promise<string> {
    const mine = new Uint8Array(VERSION_BYTES);
    mine.set(new TextEncoder().encode(version).subarray(0, VERSION_BYTES - 1));
    const theirs = await this.exchange(mine, "the version");
    const nul = theirs.indexOf(0);
    this.peerVersion = new TextDecoder().decode(nul < 0 ? theirs : theirs.subarray(0, nul));
    const number = parseFloat(this.peerVersion);
    if (!(number >= OLDEST_PEER_VERSION)) {
      throw new ExchangeError(
        `the peer announced perftest version "${this.peerVersion}"; versions before ${OLDEST_PEER_VERSION} are not supported`,
      );
    }
    return this.peerVersion;
  }

  /** Exchanges the cycle buffer and cache line size; returns the larger of each. */
  async sysData(
    cycleBuffer = DEFAULT_CYCLE_BUFFER,
    cacheLine = DEFAULT_CACHE_LINE,
  ): Promise<{ cycleBuffer: number; cacheLine: number }> {
    const int = async (value: number, what: string) => {
      const mine = new Uint8Array(4);
      new DataView(mine.buffer).setInt32(0, value);
      const theirs = await this.exchange(mine, what);
      return new DataView(theirs.buffer).getInt32(0);
    };
    const peerCycle = await int(cycleBuffer, "the cycle buffer size");
    const peerLine = await int(cacheLine, "the cache line size");
    return {
      cycleBuffer: Math.max(cycleBuffer, peerCycle),
      cacheLine: Math.max(cacheLine, peerLine),
    };
  }

  /**
   * Exchanges the IBV_MTU enum (1..5) as 2 bytes of text; returns the
   * smaller of the two when the peer's is valid, else this side's.
   */
  async mtu(mtuEnum: number): Promise<number> {
    if (!Number.isInteger(mtuEnum) || mtuEnum < 1 || mtuEnum > 5) {
      throw new RangeError(`MTU enum ${mtuEnum} is not 1..5`);
    }
    const mine = new Uint8Array(2);
    mine[0] = 0x30 + mtuEnum;
    const theirs = await this.exchange(mine, "the MTU");
    const nul = theirs.indexOf(0);
    const peer = parseInt(new TextDecoder().decode(nul < 0 ? theirs : theirs.subarray(0, nul)), 10);
    return peer >= 1 && peer <= 5 && peer < mtuEnum ? peer : mtuEnum;
  }

  /** Exchanges key messages (also perftest's barrier). */
  async keys(mine: KeyMessage, what = "the key message"): Promise<KeyMessage> {
    const theirs = await this.exchange(encodeKeyMessage(mine), what);
    try {
      return decodeKeyMessage(theirs);
    } catch (e) {
      throw new ExchangeError((e as Error).message, { cause: e });
    }
  }

  /** Exchanges bandwidth results (five fields, one message each, as perftest does). */
  async results(mine: BwResults): Promise<BwResults> {
    const bytes = encodeResults(mine);
    const theirs = new Uint8Array(40);
    const names = ["size", "iterations", "peak BW", "average BW", "message rate"];
    for (let i = 0; i < 5; i++) {
      const field = await this.exchange(bytes.subarray(i * 8, i * 8 + 8), `the ${names[i]} result`);
      theirs.set(field, i * 8);
    }
    return decodeResults(theirs);
  }

  /** Writes `done\0` and closes, as perftest's `ctx_close_connection` does. */
  async finish(): Promise<void> {
    try {
      await this.#writeAll(new TextEncoder().encode("done\0"), '"done"');
    } finally {
      this.close();
    }
  }

  /** Closes the connection (idempotent). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch {
      // Already closed by a failed read or write.
    }
  }
}
