/**
 * What every socket kind of the UDP layer shares: owning one fd, naming
 * itself in messages, and closing.
 *
 * @module
 */

import { closeFd } from "../../virtqueue/sys/libc.ts";

/**
 * An open socket fd and its name, closed once. The socket classes extend it
 * so `fd`, `close` and `using` behave the same on all of them.
 *
 * @example
 * ```ts
 * import { libc } from "../../virtqueue/sys/libc.ts";
 * import { SocketHandle } from "./socket_handle.ts";
 * class Probe extends SocketHandle {
 *   check(): number {
 *     return this.live();
 *   }
 * }
 * const probe = new Probe(libc().socket(2, 2, 0), "probe"); // AF_INET, SOCK_DGRAM
 * probe.close();
 * probe.close(); // harmless
 * try {
 *   probe.check();
 *   throw new Error("still open");
 * } catch (e) {
 *   if (!(e instanceof TypeError) || e.message !== "probe is closed" || probe.fd !== -1) throw e;
 * }
 * ```
 */
export class SocketHandle {
  #fd: number;
  readonly #name: string;

  /** Takes ownership of `fd`; `name` says which socket it is in messages. */
  constructor(fd: number, name: string) {
    this.#fd = fd;
    this.#name = name;
  }

  /** The file descriptor (for an epoll set), or -1 once closed. */
  get fd(): number {
    return this.#fd;
  }

  /** Closes the socket; later calls throw. Closing twice is harmless. */
  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    closeFd(fd);
  }

  /** Same as `close`, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  /**
   * The fd, for a call that needs it open.
   *
   * @throws {TypeError} once closed, naming the socket.
   */
  protected live(): number {
    if (this.#fd < 0) throw new TypeError(`${this.#name} is closed`);
    return this.#fd;
  }
}
