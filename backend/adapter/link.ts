/**
 * What the requester and responder of a QP share from their host adapter.
 *
 * @module
 */

import type { Counters } from "../data_plane/stats.ts";
import type { EngineGuest, EngineHost, EngineQp } from "../engine/types.ts";
import type { Outbox } from "./outbox.ts";
import type { PendingWr } from "./pending_wr.ts";
import type { QpCounters } from "./qp_counters.ts";

/** One RC/UC QP as its state machines see it: whose it is, where its packets go, its counters. */
export interface QpWire {
  /** The QP's guest. */
  readonly guest: EngineGuest;
  /** The QP. */
  readonly qp: EngineQp;
  /** The peer host's IPv4 address. */
  readonly dstIp: number;
  /** The UDP source port of the QP's packets (rxe's choice, see source_port.ts). */
  readonly srcPort: number;
  /** The QP's counters. */
  readonly stats: QpCounters;
}

/** The adapter's services to one QP's state machines. */
export interface Link {
  /** This host's tables. */
  readonly host: EngineHost;
  /** Outgoing packets. */
  readonly outbox: Outbox;
  /** The backend's counters. */
  readonly counters: Counters;
  /** The clock timers run on, in milliseconds. */
  now(): number;
  /**
   * Completes a send WR: gives its SQ slot back and writes its CQE when it
   * is signaled or failed. A failure moves the QP to ERR, which flushes the
   * rest (re-entering the requester through the engine).
   */
  retire(guest: EngineGuest, qp: EngineQp, wr: PendingWr, status: number, byteLen: number): void;
  /** Gives a send WR's SQ slot back without a completion (the QP went to RESET). */
  release(guest: EngineGuest, qp: EngineQp, wr: PendingWr): void;
  /** Asks to be pumped again once the outbox has room. */
  blocked(pump: { pump(): void }): void;
}
