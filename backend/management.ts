/**
 * The management endpoint: a unix socket next to the guest socket
 * (`<socket>.mgmt`) that answers every connection with one line of JSON —
 * the backend's stats — and closes. Tools and tests read a running backend's
 * resource counts and counters through it.
 *
 * @module
 */

/** The management socket path for a guest socket path. */
export function managementPath(socket: string): string {
  return `${socket}.mgmt`;
}

/** Serves `snapshot()` to each connection until closed. */
export class ManagementServer {
  readonly #listener: Deno.Listener;
  readonly #path: string;
  readonly #done: Promise<void>;

  /** Listens on `path` (a stale socket file there is replaced). */
  constructor(path: string, snapshot: () => Record<string, unknown>) {
    try {
      Deno.removeSync(path);
    } catch {
      // Not there: fine.
    }
    this.#path = path;
    this.#listener = Deno.listen({ transport: "unix", path });
    this.#done = this.#serve(snapshot);
  }

  async #serve(snapshot: () => Record<string, unknown>): Promise<void> {
    for await (const conn of this.#listener) {
      const line = new TextEncoder().encode(JSON.stringify(snapshot()) + "\n");
      try {
        let off = 0;
        while (off < line.length) off += await conn.write(line.subarray(off));
      } catch {
        // The reader went away; nothing to do.
      } finally {
        conn.close();
      }
    }
  }

  /** Stops listening and removes the socket file. */
  async close(): Promise<void> {
    this.#listener.close();
    await this.#done.catch(() => {});
    try {
      Deno.removeSync(this.#path);
    } catch {
      // Already gone.
    }
  }
}

/** Reads the stats of the backend whose guest socket is `socket`. */
export async function readStats(socket: string): Promise<Record<string, number>> {
  const conn = await Deno.connect({ transport: "unix", path: managementPath(socket) });
  try {
    const chunks: Uint8Array[] = [];
    const buf = new Uint8Array(4096);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
    }
    const text = new TextDecoder().decode(new Uint8Array(chunks.flatMap((c) => [...c])));
    return JSON.parse(text) as Record<string, number>;
  } finally {
    conn.close();
  }
}
