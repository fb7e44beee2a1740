/**
 * The backend service: one per host. It accepts guests on a unix socket,
 * runs one vhost-user session per connection on this thread, and serves all
 * their virtqueues from one data-plane Worker.
 *
 * @module
 */

import { resolve } from "node:path";
import { Reactor } from "../virtqueue/sys/reactor.ts";
import { UnixSocket } from "../virtqueue/sys/unix_socket.ts";
import { DataPlane } from "./data_plane/client.ts";
import type { DataPlaneNotice, QpCounterRow } from "./data_plane/messages.ts";
import { type CounterName, Counters } from "./data_plane/stats.ts";
import { Logger, type LogLevel } from "./log.ts";
import { GuestSession } from "./session.ts";
import { managementPath, ManagementServer } from "./management.ts";
import { collectReport, MetricsServer } from "./metrics.ts";

/** Socket file name used when no `--socket` is given (in the current directory). */
export const DEFAULT_SOCKET = "vrdma.sock";
export { ROCE_PORT } from "./roce/ipv4.ts";
import { ROCE_PORT } from "./roce/ipv4.ts";

/** How to start a backend. Everything is optional. */
export interface BackendOptions {
  /** Unix socket guests connect to. Default `./vrdma.sock`. */
  socket?: string;
  /** This host's IPv4 address; the GID is `::ffff:<ip>`. Default 127.0.0.1. */
  ip?: string;
  /** UDP port for RoCEv2. Default 4791. */
  port?: number;
  /** Guests served at once; more are refused. Default 64. */
  maxGuests?: number;
  /**
   * How RoCEv2 packets travel: `"socket"` (default: UDP sockets, the fastest),
   * `"raw"` (raw sockets, needs CAP_NET_RAW; sees each packet's real IPv4 ID,
   * so the ICRC of peers that send nonzero IDs, like Linux rxe, is checked
   * in full), or `"auto"` (raw when allowed).
   */
  transport?: "socket" | "raw" | "auto";
  /** Log level. Default "info" for the CLI; "warn" in-process. */
  logLevel?: LogLevel;
  /**
   * Serve the counters in the Prometheus text format at
   * `http://<ip>:<metricsPort>/metrics` (0: any free port, see
   * {@linkcode Backend.metricsUrl}). Off when not given.
   */
  metricsPort?: number;
}

/** What `host.stats()` returns: live resource counts and counters. */
export type BackendStats = Record<CounterName, number>;

/**
 * A running backend.
 *
 * @example
 * ```ts ignore
 * import { startBackend } from "../mod.ts";
 * const host = await startBackend({ socket: "/tmp/vrdma-doc.sock", ip: "127.0.0.9" });
 * console.log(host.gid, host.stats().guests);
 * await host.close();
 * ```
 */
export class Backend {
  /** The unix socket path guests connect to (absolute). */
  readonly socket: string;
  /** This host's IPv4 address. */
  readonly ip: string;
  /** The UDP port RoCEv2 uses. */
  readonly port: number;
  /** The port's GID: the IPv4-mapped IPv6 form of {@linkcode Backend.ip}. */
  readonly gid: string;
  /** Where the Prometheus endpoint answers, when `metricsPort` was given. */
  readonly metricsUrl: string | undefined;
  readonly #listener: UnixSocket;
  readonly #reactor: Reactor;
  readonly #plane: DataPlane;
  readonly #counters: Counters;
  readonly #log: Logger;
  readonly #maxGuests: number;
  readonly #management: ManagementServer;
  readonly #metrics: MetricsServer | undefined;
  readonly #sessions = new Map<number, GuestSession>();
  #nextGuest = 1;
  #closing: Promise<void> | undefined;

  /** Use {@linkcode startBackend}. */
  constructor(parts: {
    socket: string;
    ip: string;
    port: number;
    listener: UnixSocket;
    reactor: Reactor;
    plane: DataPlane;
    counters: Counters;
    log: Logger;
    maxGuests: number;
    metricsPort?: number;
  }) {
    this.socket = parts.socket;
    this.ip = parts.ip;
    this.port = parts.port;
    this.gid = `::ffff:${parts.ip}`;
    this.#listener = parts.listener;
    this.#reactor = parts.reactor;
    this.#plane = parts.plane;
    this.#counters = parts.counters;
    this.#log = parts.log;
    this.#maxGuests = parts.maxGuests;
    // First: when its port is taken, nothing here is open yet (startBackend closes the rest).
    this.#metrics = parts.metricsPort === undefined ? undefined : MetricsServer.start(
      { hostname: this.ip, port: parts.metricsPort },
      () => collectReport(this),
    );
    this.metricsUrl = this.#metrics?.url;
    this.#management = new ManagementServer(managementPath(this.socket), {
      stats: () => this.stats(),
      report: () => collectReport(this),
    });
    this.#reactor.watch(this.#listener.fd, () => this.#accept());
  }

  #accept(): void {
    for (;;) {
      let conn: UnixSocket | null;
      try {
        conn = this.#listener.accept();
      } catch (e) {
        this.#log.warn(`accept failed: ${(e as Error).message}`);
        return;
      }
      if (conn === null) return;
      // Sessions drain the socket until EAGAIN; a blocking socket would stall the service.
      conn.setNonBlocking(true);
      if (this.#closing !== undefined || this.#sessions.size >= this.#maxGuests) {
        this.#log.warn(`refusing a guest: ${this.#sessions.size} of ${this.#maxGuests} served`);
        conn.close();
        continue;
      }
      const id = this.#nextGuest++;
      const session = new GuestSession(
        id,
        conn,
        { dataPlane: this.#plane, ip: this.ip, log: this.#log },
        (s) => {
          this.#reactor.unwatch(s.fd);
          this.#sessions.delete(s.id);
        },
      );
      this.#sessions.set(id, session);
      this.#log.info(`guest ${id}: connected`);
      // The data plane must know the guest before its first message is handled.
      session.start().then(
        () => {
          if (session.closed) return;
          this.#reactor.watch(session.fd, () => session.onReadable());
          session.onReadable();
        },
        (e) => void session.close(`data plane refused the guest: ${(e as Error).message}`),
      );
    }
  }

  /** Live resource counts and counters, as a plain object. */
  stats(): BackendStats {
    return this.#counters.snapshot();
  }

  /**
   * The wire counters of every QP that has sent or received RoCE packets,
   * with the guest that owns it, read from the data-plane Worker.
   */
  qpCounters(): Promise<QpCounterRow[]> {
    return this.#plane.qpCounters();
  }

  /**
   * Stops serving: tells every guest (DEVICE_FATAL), frees every resource,
   * stops the data plane and removes the socket file. Idempotent.
   */
  close(reason = "backend closing"): Promise<void> {
    this.#closing ??= this.#shutdown(reason);
    return this.#closing;
  }

  async #shutdown(reason: string): Promise<void> {
    this.#log.info(`shutting down: ${reason}`);
    this.#reactor.unwatch(this.#listener.fd);
    this.#listener.close();
    const sessions = [...this.#sessions.values()];
    await Promise.all(sessions.map((s) => s.notifyFatal()));
    await Promise.all(sessions.map((s) => s.close(reason)));
    await this.#plane.stop();
    await this.#reactor.close();
    await this.#management.close();
    await this.#metrics?.close();
  }

  /** `await using host = await startBackend(...)` closes it at scope end. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/**
 * Starts a backend in this process: listens on the socket, starts the data
 * plane. Throws a `RangeError` for a bad option, a `SysError` when the socket
 * cannot be bound (for example another backend is live there).
 */
export async function startBackend(options: BackendOptions = {}): Promise<Backend> {
  const ip = options.ip ?? "127.0.0.1";
  if (!IPV4.test(ip)) throw new RangeError(`ip "${ip}" is not an IPv4 address`);
  const port = options.port ?? ROCE_PORT;
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new RangeError(`port ${port} is not in 1..65535`);
  }
  const metricsPort = options.metricsPort;
  if (
    metricsPort !== undefined &&
    (!Number.isInteger(metricsPort) || metricsPort < 0 || metricsPort > 65535)
  ) {
    throw new RangeError(`metricsPort ${metricsPort} is not in 0..65535`);
  }
  const maxGuests = options.maxGuests ?? 64;
  if (!Number.isInteger(maxGuests) || maxGuests < 1) {
    throw new RangeError(`maxGuests ${maxGuests} is not a positive integer`);
  }
  const transport = options.transport ?? "socket";
  if (transport !== "socket" && transport !== "raw" && transport !== "auto") {
    throw new RangeError(`transport "${transport}" is not one of socket, raw, auto`);
  }
  const socket = resolve(options.socket ?? DEFAULT_SOCKET);
  const level = options.logLevel ?? "warn";
  const log = new Logger(level, `vrdma[${ip}]`);
  const counters = new Counters();
  const plane = await DataPlane.start(counters, {
    logLevel: level,
    ip,
    port,
    transport,
    onNotice: (n: DataPlaneNotice) => {
      if (n.notice === "log") log.log(n.level, `data plane: ${n.message}`);
      if (n.notice === "broken") {
        log.warn(`guest ${n.guest}: queue ${n.queue} broken: ${n.error} (device needs reset)`);
      }
    },
  });
  let listener: UnixSocket;
  try {
    listener = UnixSocket.listen(socket);
  } catch (e) {
    await plane.stop();
    throw e;
  }
  const reactor = Reactor.create();
  log.info(`serving guests on ${socket}, RoCEv2 on ${ip}:${port}`);
  let host: Backend;
  try {
    host = new Backend({
      socket,
      ip,
      port,
      listener,
      reactor,
      plane,
      counters,
      log,
      maxGuests,
      metricsPort,
    });
  } catch (e) {
    // The metrics port could not be bound: nothing may stay open.
    listener.close();
    await reactor.close();
    await plane.stop();
    throw e;
  }
  if (host.metricsUrl !== undefined) log.info(`counters for Prometheus at ${host.metricsUrl}`);
  return host;
}
