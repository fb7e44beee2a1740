/**
 * The driver's end of the control channel: a vhost-user front-end on a unix
 * socket. One request is outstanding at a time, as vhost-user requires; the
 * socket is watched by the process's reactor, so waiting costs no thread.
 *
 * @module
 */

import {
  encodeMessage,
  MessageFlag,
  MessageReader,
  requestName,
  type VhostUserMessage,
} from "../protocol/vhost_user.ts";
import { closeFd, SysError } from "../virtqueue/sys/libc.ts";
import { errnoName } from "../protocol/device_interface.ts";
import type { Reactor } from "../virtqueue/sys/reactor.ts";
import { UnixSocket } from "../virtqueue/sys/unix_socket.ts";
import { VerbsError } from "./errors.ts";
import { COMMAND_TIMEOUT_MS } from "./control_queue.ts";

/** What a request expects back. */
export type ReplyKind = "none" | "ack" | "payload";

/** Options of {@linkcode ControlChannel.open}. */
export interface ControlChannelOptions {
  /**
   * How long a request waits for its reply, in ms; default
   * `COMMAND_TIMEOUT_MS` (control_queue.ts). Past it the channel counts as
   * lost: vhost-user has one request outstanding, so a late reply could not
   * be told from the next one's.
   */
  timeoutMs?: number;
}

/** A connected control channel. */
export class ControlChannel {
  /** The socket path, for messages. */
  readonly path: string;
  readonly #socket: UnixSocket;
  readonly #reactor: Reactor;
  readonly #reader = new MessageReader();
  readonly #buf = new Uint8Array(8192);
  readonly #onClose: ((error: VerbsError) => void)[] = [];
  #waiter: PromiseWithResolvers<VhostUserMessage> | null = null;
  #waitingFor = 0;
  #queue: Promise<unknown> = Promise.resolve();
  #error: VerbsError | null = null;
  readonly #timeoutMs: number;

  private constructor(path: string, socket: UnixSocket, reactor: Reactor, timeoutMs: number) {
    this.path = path;
    this.#socket = socket;
    this.#reactor = reactor;
    this.#timeoutMs = timeoutMs;
  }

  /**
   * Connects to the backend at `path`. A missing or dead socket becomes a
   * `VerbsError` naming the path and the cause (`ENOENT`, `ECONNREFUSED`...);
   * a timeout that is not a positive number of ms, a `RangeError`.
   */
  static open(
    path: string,
    reactor: Reactor,
    options: ControlChannelOptions = {},
  ): ControlChannel {
    const timeoutMs = options.timeoutMs ?? COMMAND_TIMEOUT_MS;
    if (!(timeoutMs > 0 && timeoutMs <= 2 ** 31 - 1)) {
      throw new RangeError(`request timeout ${timeoutMs} ms is not in 1..${2 ** 31 - 1}`);
    }
    let socket: UnixSocket;
    try {
      socket = UnixSocket.connect(path);
      socket.setNonBlocking(true);
    } catch (e) {
      const code = e instanceof SysError ? e.code : "ENODEV";
      throw new VerbsError(code, `no vrdma backend at ${path}: ${(e as Error).message}`, {
        cause: e,
      });
    }
    const channel = new ControlChannel(path, socket, reactor, timeoutMs);
    reactor.watch(socket.fd, () => channel.#onReadable());
    return channel;
  }

  /** Set once the channel is gone; every later request fails with it. */
  get error(): VerbsError | null {
    return this.#error;
  }

  /** Runs `listener` once when the connection is lost (not on {@linkcode ControlChannel.close}). */
  onClose(listener: (error: VerbsError) => void): void {
    this.#onClose.push(listener);
  }

  /**
   * Sends a request and waits for what it expects back: nothing, a REPLY_ACK
   * status (a nonzero status becomes a `VerbsError`), or a reply payload.
   * No reply within the timeout: the channel fails (`ETIMEDOUT`, naming the
   * request and the time waited) and the close listeners run.
   */
  request(
    request: number,
    payload: Uint8Array = new Uint8Array(0),
    options: { fds?: number[]; reply?: ReplyKind } = {},
  ): Promise<Uint8Array> {
    const run = () => this.#request(request, payload, options.fds ?? [], options.reply ?? "ack");
    const result = this.#queue.then(run, run);
    this.#queue = result.catch(() => {});
    return result;
  }

  async #request(
    request: number,
    payload: Uint8Array,
    fds: number[],
    reply: ReplyKind,
  ): Promise<Uint8Array> {
    if (this.#error) throw this.#error;
    const bytes = encodeMessage(request, payload, { needReply: reply === "ack" });
    // Held here too: a failed send clears `#waiter` (after rejecting it).
    const waiter = reply === "none" ? null : Promise.withResolvers<VhostUserMessage>();
    if (waiter !== null) {
      this.#waiter = waiter;
      this.#waitingFor = request;
    }
    try {
      this.#socket.send(bytes, fds);
    } catch (e) {
      this.#fail(`sending ${requestName(request)} failed: ${(e as Error).message}`);
    }
    if (waiter === null) {
      if (this.#error) throw this.#error;
      return new Uint8Array(0);
    }
    // Unref'd: a request in flight must not keep the process alive by itself.
    const timer = setTimeout(
      () =>
        this.#fail(
          `no reply to ${requestName(request)} after ${this.#timeoutMs} ms`,
          "ETIMEDOUT",
        ),
      this.#timeoutMs,
    );
    Deno.unrefTimer(timer);
    let msg: VhostUserMessage;
    try {
      msg = await waiter.promise;
    } finally {
      clearTimeout(timer);
    }
    if (reply === "payload") return msg.payload;
    const status = msg.payload.length === 8
      ? new DataView(msg.payload.buffer, msg.payload.byteOffset, 8).getBigUint64(0, true)
      : -1n;
    if (status !== 0n) {
      throw new VerbsError(
        status > 0n && status < 4096n ? errnoName(Number(status)) : "EPROTO",
        `backend at ${this.path} refused ${requestName(request)} (status ${status})`,
      );
    }
    return msg.payload;
  }

  #onReadable(): void {
    for (;;) {
      let got;
      try {
        got = this.#socket.receive(this.#buf, 4);
      } catch (e) {
        const reset = e instanceof SysError && e.code === "ECONNRESET";
        this.#fail(
          reset
            ? "the backend closed the connection (reset)"
            : `receive failed: ${(e as Error).message}`,
        );
        return;
      }
      if (got.bytes === -1) return;
      for (const fd of got.fds) closeFd(fd); // the backend sends no fds
      if (got.bytes === 0) {
        this.#fail("the backend closed the connection");
        return;
      }
      try {
        this.#reader.push(this.#buf.subarray(0, got.bytes));
        for (let m = this.#reader.next(); m !== undefined; m = this.#reader.next()) {
          this.#deliver(m);
        }
      } catch (e) {
        this.#fail(`malformed reply: ${(e as Error).message}`);
        return;
      }
    }
  }

  #deliver(msg: VhostUserMessage): void {
    const waiter = this.#waiter;
    if (
      waiter === null || msg.request !== this.#waitingFor || (msg.flags & MessageFlag.REPLY) === 0
    ) {
      this.#fail(`unexpected ${requestName(msg.request)} message from the backend`);
      return;
    }
    this.#waiter = null;
    waiter.resolve(msg);
  }

  #fail(why: string, errno = "ENODEV"): void {
    if (this.#error) return;
    this.#error = new VerbsError(errno, `backend at ${this.path}: ${why}`);
    this.#shutdown();
    this.#waiter?.reject(this.#error);
    this.#waiter = null;
    for (const listener of this.#onClose) listener(this.#error);
  }

  #shutdown(): void {
    this.#reactor.unwatch(this.#socket.fd);
    this.#socket.close();
  }

  /** Closes the connection; the backend frees everything of this device. */
  close(): void {
    if (this.#error) return;
    this.#error = new VerbsError("ENODEV", `device on ${this.path} is closed`);
    this.#shutdown();
    this.#waiter?.reject(this.#error);
    this.#waiter = null;
  }
}
