/**
 * The TCP address exchange of rdma-core's pingpong tools, in both roles.
 *
 * Client: connect, send its 52-byte address, read the server's, send
 * `done\0`, close. Server: accept one connection (then stop listening), read
 * the client's address, bring its own QP up against it (so the client's
 * first message finds it ready), send its address, read `done\0`, close.
 *
 * One difference in timing, none on the wire: the server listens before the
 * tool prints its local address, so anyone who waits for that line can
 * connect at once.
 *
 * @module
 */

import {
  decodeDest,
  DEST_MESSAGE_BYTES,
  DONE_MESSAGE,
  encodeDest,
  type PingpongDest,
} from "./pingpong_wire.ts";

/** A failed exchange; the message is rdma-core's line for it (plus the cause). */
export class ExchangeError extends Error {
  /** Names the class in stack traces. */
  override name = "ExchangeError";
}

/** Reads until `n` bytes came or the peer closed; returns what came. */
async function readUpTo(conn: Deno.Conn, n: number): Promise<Uint8Array> {
  const buf = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const r = await conn.read(buf.subarray(got));
    if (r === null) break;
    got += r;
  }
  return buf.subarray(0, got);
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
}

/**
 * Plays the client: returns the server's address. Throws an
 * {@linkcode ExchangeError} (`Couldn't connect to host:port`, `Couldn't
 * read/write remote address`) when the exchange fails.
 */
export async function exchangeAsClient(
  host: string,
  port: number,
  mine: PingpongDest,
): Promise<PingpongDest> {
  let conn: Deno.Conn;
  try {
    conn = await Deno.connect({ hostname: host, port, transport: "tcp" });
  } catch (e) {
    throw new ExchangeError(`Couldn't connect to ${host}:${port} (${(e as Error).message})`, {
      cause: e,
    });
  }
  try {
    try {
      await writeAll(conn, encodeDest(mine));
    } catch (e) {
      throw new ExchangeError(`Couldn't send local address (${(e as Error).message})`, {
        cause: e,
      });
    }
    let msg: Uint8Array;
    try {
      msg = await readUpTo(conn, DEST_MESSAGE_BYTES);
      if (msg.length !== DEST_MESSAGE_BYTES) {
        throw new RangeError(`got ${msg.length} of ${DEST_MESSAGE_BYTES} bytes`);
      }
      await writeAll(conn, DONE_MESSAGE);
    } catch (e) {
      throw new ExchangeError(`Couldn't read/write remote address (${(e as Error).message})`, {
        cause: e,
      });
    }
    return parse(msg);
  } finally {
    conn.close();
  }
}

function parse(msg: Uint8Array): PingpongDest {
  try {
    return decodeDest(msg);
  } catch (e) {
    throw new ExchangeError((e as Error).message, { cause: e });
  }
}

/** A server waiting for its one client. */
export class ExchangeServer {
  readonly #listener: Deno.Listener;
  /** The TCP port it listens on. */
  readonly port: number;

  private constructor(listener: Deno.Listener) {
    this.#listener = listener;
    this.port = (listener.addr as Deno.NetAddr).port;
  }

  /**
   * Listens on every IPv4 address at `port` (0: a free one). Throws an
   * {@linkcode ExchangeError} `Couldn't listen to port N` when it cannot.
   */
  static listen(port: number): ExchangeServer {
    try {
      return new ExchangeServer(Deno.listen({ hostname: "0.0.0.0", port, transport: "tcp" }));
    } catch (e) {
      throw new ExchangeError(`Couldn't listen to port ${port} (${(e as Error).message})`, {
        cause: e,
      });
    }
  }

  /**
   * Accepts one client, stops listening, reads its address, runs
   * `connect(remote)` (bring the QP up; a rejection aborts the exchange
   * before this side's address goes out), then sends `mine` and waits for
   * `done`. Returns the client's address.
   */
  async exchange(
    mine: PingpongDest,
    connect: (remote: PingpongDest) => Promise<void>,
  ): Promise<PingpongDest> {
    let conn: Deno.Conn;
    try {
      conn = await this.#listener.accept();
    } catch (e) {
      throw new ExchangeError(`accept() failed (${(e as Error).message})`, { cause: e });
    } finally {
      this.close();
    }
    try {
      const msg = await readUpTo(conn, DEST_MESSAGE_BYTES).catch(() => new Uint8Array(0));
      if (msg.length !== DEST_MESSAGE_BYTES) {
        throw new ExchangeError(
          `${msg.length}/${DEST_MESSAGE_BYTES}: Couldn't read remote address`,
        );
      }
      const remote = parse(msg);
      await connect(remote);
      try {
        await writeAll(conn, encodeDest(mine));
        const done = await readUpTo(conn, DONE_MESSAGE.length);
        if (done.length !== DONE_MESSAGE.length) {
          throw new RangeError(`got ${done.length} of ${DONE_MESSAGE.length} bytes of "done"`);
        }
      } catch (e) {
        throw new ExchangeError(`Couldn't send/recv local address (${(e as Error).message})`, {
          cause: e,
        });
      }
      return remote;
    } finally {
      conn.close();
    }
  }

  /** Stops listening (idempotent). */
  close(): void {
    try {
      this.#listener.close();
    } catch {
      // Already closed: exchange closes it after its one accept.
    }
  }
}
