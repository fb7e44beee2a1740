/**
 * One reactor per process for every open device: a device costs one watched
 * fd, not a thread. The reactor is closed when the last device closes.
 *
 * @module
 */

import { Reactor } from "../virtqueue/sys/reactor.ts";

let shared: Reactor | null = null;
let users = 0;

/** The process's reactor; pair every call with {@linkcode releaseReactor}. */
export function acquireReactor(): Reactor {
  if (shared === null || shared.closed) shared = Reactor.create();
  users++;
  return shared;
}

/** Drops one use; the last one closes the reactor. */
export function releaseReactor(): void {
  if (users === 0) return;
  users--;
  if (users === 0 && shared !== null) {
    void shared.close();
    shared = null;
  }
}
