/**
 * The service thread's handle on the data-plane Worker.
 *
 * Commands go by `postMessage` and are announced through the Worker's control
 * eventfd (it sleeps in `epoll_wait`, where messages cannot reach it); replies
 * come back by `postMessage`, matched by sequence number.
 *
 * @module
 */

import { EventFd } from "../../virtqueue/sys/eventfd.ts";
import type { Counters } from "./stats.ts";
import type {
  DataPlaneCommand,
  DataPlaneNotice,
  DataPlaneReply,
  QpCounterRow,
  SequencedCommand,
} from "./messages.ts";

/** What the Worker needs to start. */
export interface WorkerInit {
  /** The control eventfd's number (same process, so the same fd). */
  controlFd: number;
  /** The counters' shared buffer. */
  counters: SharedArrayBuffer;
  /** Minimum level of the log lines the Worker posts. */
  logLevel: string;
  /** This host's IPv4 address. */
  ip: string;
  /** The UDP port RoCEv2 is bound to and sent to. */
  port: number;
  /** How RoCEv2 packets are sent and received (see `TransportOptions.mode`). */
  transport: "socket" | "raw" | "auto";
}

/** Runs and commands the data-plane Worker. */
export class DataPlane {
  readonly #worker: Worker;
  readonly #control: EventFd;
  readonly #pending = new Map<number, PromiseWithResolvers<DataPlaneReply>>();
  readonly #onNotice: (notice: DataPlaneNotice) => void;
  #seq = 0;
  #stopped = false;

  private constructor(
    worker: Worker,
    control: EventFd,
    onNotice: (notice: DataPlaneNotice) => void,
  ) {
    this.#worker = worker;
    this.#control = control;
    this.#onNotice = onNotice;
  }

  /** Starts the Worker and waits until it sleeps in its loop. */
  static async start(
    counters: Counters,
    options: {
      logLevel: string;
      ip: string;
      port: number;
      transport: "socket" | "raw" | "auto";
      onNotice: (notice: DataPlaneNotice) => void;
    },
  ): Promise<DataPlane> {
    const control = EventFd.create();
    const worker = new Worker(new URL("./worker.ts", import.meta.url), { type: "module" });
    const plane = new DataPlane(worker, control, options.onNotice);
    const ready = Promise.withResolvers<void>();
    worker.onmessage = (e: MessageEvent<DataPlaneReply | DataPlaneNotice>) => {
      const msg = e.data;
      if ("notice" in msg && msg.notice === "ready") ready.resolve();
      else if ("notice" in msg && msg.notice === "failed") ready.reject(new Error(msg.message));
      else plane.#receive(msg);
    };
    worker.onerror = (e: ErrorEvent) => {
      e.preventDefault();
      const error = new Error(`data-plane worker failed: ${e.message}`);
      ready.reject(error);
      plane.#failAll(error.message);
    };
    const init: WorkerInit = {
      controlFd: control.fd,
      counters: counters.buffer,
      logLevel: options.logLevel,
      ip: options.ip,
      port: options.port,
      transport: options.transport,
    };
    worker.postMessage(init);
    try {
      await ready.promise;
    } catch (e) {
      worker.terminate();
      control.close();
      throw e;
    }
    return plane;
  }

  #receive(msg: DataPlaneReply | DataPlaneNotice): void {
    if ("notice" in msg) {
      this.#onNotice(msg);
      return;
    }
    const waiter = this.#pending.get(msg.seq);
    if (waiter === undefined) return;
    this.#pending.delete(msg.seq);
    waiter.resolve(msg);
  }

  #failAll(error: string): void {
    for (const [seq, waiter] of this.#pending) waiter.resolve({ seq, error });
    this.#pending.clear();
  }

  /**
   * Sends a command and waits for its reply. A reply with `error` set means
   * the Worker refused it and changed nothing.
   */
  send(command: DataPlaneCommand): Promise<DataPlaneReply> {
    const seq = ++this.#seq;
    if (this.#stopped) return Promise.resolve({ seq, error: "the data plane has stopped" });
    const waiter = Promise.withResolvers<DataPlaneReply>();
    this.#pending.set(seq, waiter);
    const msg: SequencedCommand = { ...command, seq };
    this.#worker.postMessage(msg);
    // Post first, then wake: the eventfd counter tells the Worker how many
    // messages to wait for before it sleeps again.
    this.#control.signal();
    return waiter.promise;
  }

  /** Like {@linkcode DataPlane.send}, but throws the Worker's error. */
  async call(command: DataPlaneCommand): Promise<number | undefined> {
    const reply = await this.send(command);
    if (reply.error !== undefined) throw new Error(reply.error);
    return reply.value;
  }

  /**
   * Every QP's wire counters, read by the Worker (they live there, outside
   * the shared counter block). Throws when the Worker cannot answer.
   */
  async qpCounters(): Promise<QpCounterRow[]> {
    const reply = await this.send({ cmd: "qpCounters" });
    if (reply.error !== undefined) throw new Error(reply.error);
    return reply.qps ?? [];
  }

  /** Stops the Worker: it leaves its loop and closes itself. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    const closed = new Promise<void>((resolve) => {
      // A closing Worker sends nothing more; give it a moment to unwind its loop.
      const timer = setTimeout(resolve, 2000);
      this.#worker.addEventListener("message", (e: MessageEvent) => {
        if ((e.data as DataPlaneNotice).notice === "log") return;
        clearTimeout(timer);
        resolve();
      });
    });
    await this.send({ cmd: "stop" });
    this.#stopped = true;
    await closed.catch(() => {});
    this.#worker.terminate();
    this.#control.close();
    this.#failAll("the data plane has stopped");
  }
}
