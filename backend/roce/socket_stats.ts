/**
 * The counters every socket of the UDP layer keeps.
 *
 * @module
 */

/** Counters of one socket; they only grow. */
export interface SocketStats {
  /** Datagrams handed to the kernel. */
  sent: number;
  /**
   * Datagrams the kernel refused for a network reason (EPERM from a
   * firewall rule, EHOSTUNREACH, ENETUNREACH, ECONNREFUSED, EACCES): they
   * count as sent and lost, as the network would have lost them.
   */
  refused: number;
  /** Sends that found no room (EAGAIN, ENOBUFS) and left the datagram to the caller. */
  wouldBlock: number;
  /** Datagrams received. */
  received: number;
  /** Received datagrams longer than the buffer, cut to fit. */
  truncated: number;
}

/**
 * Zeroed {@linkcode SocketStats}.
 *
 * @example
 * ```ts
 * import { newStats } from "./socket_stats.ts";
 * const stats = newStats();
 * if (stats.sent !== 0 || stats.truncated !== 0) throw new Error("not zeroed");
 * ```
 */
export function newStats(): SocketStats {
  return { sent: 0, refused: 0, wouldBlock: 0, received: 0, truncated: 0 };
}
