/**
 * The management endpoint: a unix socket next to the guest socket
 * (`<socket>.mgmt`). Tools and tests read a running backend's counters
 * through it.
 *
 * The protocol is one request line, one answer line (JSON), then the backend
 * closes the connection:
 *
 * - `{"want":"stats"}` → the device counters (`BackendStats`), as ever.
 * - `{"want":"all"}` → a {@linkcode CountersReport}: device, port and per-QP
 *   counters (`backend/metrics.ts`).
 * - anything else → `{"error":"..."}`.
 *
 * A client that sends nothing gets the stats line, as before requests
 * existed: the backend answers when the client shuts its side down, or after
 * {@linkcode SILENT_CLIENT_MS} of silence (so `nc -U <socket>.mgmt` still
 * works). A request without its newline counts once the client shuts down.
 *
 * @module
 */

import type { CountersReport } from "./metrics.ts";

/** The management socket path for a guest socket path. */
export function managementPath(socket: string): string {
  return `${socket}.mgmt`;
}

/** What a client may ask for. */
export type ManagementRequest = { want: "stats" } | { want: "all" };

/** How long a silent client waits for the stats line. */
export const SILENT_CLIENT_MS = 100;
/** How long a started request line may take to finish. */
const REQUEST_MS = 2000;
/** The longest request line taken. */
const MAX_REQUEST = 4096;

/** What the server answers with. */
export interface ManagementHandlers {
  /** The device counters (the answer to `stats` and to silent clients). */
  stats(): Record<string, unknown>;
  /** Everything (the answer to `all`). */
  report(): Promise<unknown>;
}

/**
 * Parses one request line; an empty line is a `stats` request. Throws a
 * `SyntaxError` for anything that is not a request.
 *
 * @example
 * ```ts
 * import { parseRequest } from "./management.ts";
 * if (parseRequest('{"want":"all"}\n').want !== "all") throw new Error("all");
 * if (parseRequest("").want !== "stats") throw new Error("empty line");
 * ```
 */
export function parseRequest(line: string): ManagementRequest {
  const text = line.trim();
  if (text === "") return { want: "stats" };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new SyntaxError(`request ${JSON.stringify(text.slice(0, 80))} is not JSON`);
  }
  const want = (value as { want?: unknown } | null)?.want;
  if (want === "stats" || want === "all") return { want };
  throw new SyntaxError(
    `request ${JSON.stringify(text.slice(0, 80))} wants ${
      JSON.stringify(want)
    }; "stats" or "all" expected`,
  );
}

const TIMEOUT = Symbol("timeout");

function within<T>(promise: Promise<T>, ms: number): Promise<T | typeof TIMEOUT> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise,
    new Promise<typeof TIMEOUT>((resolve) => (timer = setTimeout(() => resolve(TIMEOUT), ms))),
  ]).finally(() => clearTimeout(timer));
}

/**
 * The client's request line, or null when it sent nothing (it shut down its
 * side, or stayed silent for {@linkcode SILENT_CLIENT_MS}).
 */
async function readRequest(conn: Deno.Conn): Promise<string | null> {
  const buf = new Uint8Array(MAX_REQUEST + 1);
  const tooLong = () => new SyntaxError(`request line longer than ${MAX_REQUEST} bytes`);
  let have = 0;
  // Past the limit the rest of the line is read and dropped, so that no
  // unread input makes closing the connection reset it before the answer.
  let overflow = false;
  const start = performance.now();
  let pending: Promise<number | null> | undefined;
  try {
    for (;;) {
      const silent = have === 0 && !overflow;
      const left = (silent ? SILENT_CLIENT_MS : REQUEST_MS) - (performance.now() - start);
      pending ??= conn.read(buf.subarray(have));
      const n = left <= 0 ? TIMEOUT : await within(pending, left);
      if (n === TIMEOUT) {
        if (silent) return null;
        throw overflow
          ? tooLong()
          : new SyntaxError(`request line unfinished after ${REQUEST_MS} ms`);
      }
      pending = undefined;
      if (n === null) break;
      const newline = buf.subarray(have, have + n).indexOf(0x0a);
      if (overflow) {
        if (newline >= 0) throw tooLong();
        continue;
      }
      if (newline >= 0) return new TextDecoder().decode(buf.subarray(0, have + newline));
      have += n;
      if (have > MAX_REQUEST) {
        overflow = true;
        have = 0;
      }
    }
  } finally {
    // A read still waiting fails when the connection closes; nobody needs its result.
    pending?.catch(() => {});
  }
  if (overflow) throw tooLong();
  // The client shut its side down: what it sent (if anything) is the request.
  return have === 0 ? null : new TextDecoder().decode(buf.subarray(0, have));
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}

/** Serves the management protocol until closed. */
export class ManagementServer {
  readonly #listener: Deno.Listener;
  readonly #path: string;
  readonly #handlers: ManagementHandlers;
  readonly #answering = new Set<Promise<void>>();
  readonly #done: Promise<void>;

  /** Listens on `path` (a stale socket file there is replaced). */
  constructor(path: string, handlers: ManagementHandlers) {
    try {
      Deno.removeSync(path);
    } catch {
      // Not there: fine.
    }
    this.#path = path;
    this.#handlers = handlers;
    this.#listener = Deno.listen({ transport: "unix", path });
    this.#done = this.#serve();
  }

  async #serve(): Promise<void> {
    for await (const conn of this.#listener) {
      // Each connection on its own: a slow or silent client must not hold up the next.
      const answering = this.#answer(conn);
      this.#answering.add(answering);
      answering.finally(() => this.#answering.delete(answering));
    }
  }

  async #answer(conn: Deno.Conn): Promise<void> {
    let reply: unknown;
    try {
      const line = await readRequest(conn);
      const request: ManagementRequest = line === null ? { want: "stats" } : parseRequest(line);
      reply = request.want === "all" ? await this.#handlers.report() : this.#handlers.stats();
    } catch (e) {
      reply = { error: (e as Error).message };
    }
    try {
      await writeAll(conn, new TextEncoder().encode(JSON.stringify(reply) + "\n"));
    } catch {
      // The reader went away; nothing to do.
    } finally {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    }
  }

  /** Stops listening, finishes the answers under way and removes the socket file. */
  async close(): Promise<void> {
    this.#listener.close();
    await this.#done.catch(() => {});
    await Promise.all(this.#answering);
    try {
      Deno.removeSync(this.#path);
    } catch {
      // Already gone.
    }
  }
}

/** Options of the management clients. */
export interface AskOptions {
  /** Give up when no full answer came in this long. Default 5000. */
  timeoutMs?: number;
}

/**
 * Sends `request` to the backend whose guest socket is `socket` and returns
 * its answer. Throws when the socket is not there, when nothing complete
 * comes back in time, or with the backend's `error`.
 */
export async function ask(
  socket: string,
  request: ManagementRequest,
  options: AskOptions = {},
): Promise<unknown> {
  const path = managementPath(socket);
  const conn = await Deno.connect({ transport: "unix", path });
  const timeoutMs = options.timeoutMs ?? 5000;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    conn.close();
  }, timeoutMs);
  try {
    try {
      await writeAll(conn, new TextEncoder().encode(JSON.stringify(request) + "\n"));
    } catch {
      // A backend that answers without reading may have closed already: read what it sent.
    }
    const chunks: Uint8Array[] = [];
    let total = 0;
    const buf = new Uint8Array(65536);
    for (;;) {
      let n: number | null;
      try {
        n = await conn.read(buf);
      } catch (e) {
        if (timedOut) throw new Error(`${path}: no answer within ${timeoutMs} ms`);
        throw e;
      }
      if (n === null) break;
      chunks.push(buf.slice(0, n));
      total += n;
    }
    const bytes = new Uint8Array(total);
    let off = 0;
    for (const c of chunks) {
      bytes.set(c, off);
      off += c.length;
    }
    const text = new TextDecoder().decode(bytes);
    let answer: unknown;
    try {
      answer = JSON.parse(text);
    } catch {
      throw new SyntaxError(`${path} answered ${JSON.stringify(text.slice(0, 80))}, not JSON`);
    }
    const error = (answer as { error?: unknown } | null)?.error;
    if (typeof error === "string") throw new Error(`${path}: ${error}`);
    return answer;
  } finally {
    clearTimeout(timer);
    if (!timedOut) conn.close();
  }
}

/** Reads the device counters of the backend whose guest socket is `socket`. */
export async function readStats(socket: string): Promise<Record<string, number>> {
  return await ask(socket, { want: "stats" }) as Record<string, number>;
}

/** Reads device, port and per-QP counters of the backend whose guest socket is `socket`. */
export async function readReport(
  socket: string,
  options: AskOptions = {},
): Promise<CountersReport> {
  return await ask(socket, { want: "all" }, options) as CountersReport;
}
