/**
 * Packets on their way out: built in place in the slots of one datagram
 * batch, their ICRC written, and handed to the transport a batch at a time
 * (one `sendmmsg` per run of equal source ports).
 *
 * When the kernel has no room (a full socket buffer), the unsent packets
 * move to the front of the batch and wait for the next flush; producers see
 * {@linkcode Outbox.slot} return null and stop until then. That is the
 * adapter's back-pressure: nothing is dropped here.
 *
 * @module
 */

import { writeIcrc } from "../roce/icrc.ts";
import { DatagramBatch, type RoceTransport } from "../roce/transport.ts";
import type { Counters } from "../data_plane/stats.ts";

/** Room for the largest packet vrdma builds: headers, 4096 bytes of payload, ICRC. */
export const SLOT_BYTES = 4160;
const SLOTS = 64;

/** A batch of outgoing packets over one transport. */
export class Outbox {
  readonly #transport: RoceTransport;
  readonly #counters: Counters;
  readonly #batch = new DatagramBatch(SLOTS, SLOT_BYTES);
  readonly #port: number;
  // The ICRC's view of the IPv4 and UDP headers the kernel will write.
  readonly #flow = { srcIp: 0, dstIp: 0, srcPort: 0, dstPort: 0 };

  /** An outbox sending through `transport`, counting into `counters`. */
  constructor(transport: RoceTransport, counters: Counters) {
    this.#transport = transport;
    this.#counters = counters;
    this.#port = transport.localPort;
    this.#flow.srcIp = transport.localIp;
    this.#flow.dstPort = transport.localPort;
  }

  /** Packets waiting to be sent. */
  get pending(): number {
    return this.#batch.count;
  }

  /**
   * The slot the next packet is built in (from byte 0), or null when every
   * slot is taken and the transport cannot take any now.
   */
  slot(): Uint8Array | null {
    const batch = this.#batch;
    if (batch.count === SLOTS && !this.flush()) return null;
    return batch.slots[batch.count]!;
  }

  /**
   * Queues the `length`-byte packet just built in {@linkcode Outbox.slot}'s
   * slot to `dstIp` from UDP port `srcPort`, after writing its ICRC.
   */
  commit(length: number, dstIp: number, srcPort: number): void {
    const batch = this.#batch;
    const i = batch.count;
    const flow = this.#flow;
    // The port it will really leave from: the ICRC covers it.
    const port = this.#transport.sourcePortFor(srcPort);
    flow.dstIp = dstIp;
    flow.srcPort = port;
    writeIcrc(flow, batch.slots[i]!.subarray(0, length));
    batch.lengths[i] = length;
    batch.peerIps[i] = dstIp;
    batch.peerPorts[i] = this.#port;
    batch.sourcePorts[i] = port;
    batch.count = i + 1;
    if (batch.count === SLOTS) this.flush();
  }

  /** Sends what is queued; returns true when nothing is left waiting. */
  flush(): boolean {
    const batch = this.#batch;
    const count = batch.count;
    if (count === 0) return true;
    const sent = this.#transport.sendBatch(batch, { start: 0, count });
    this.#counters.add("udpPacketsSent", sent);
    let sentBytes = 0;
    for (let i = 0; i < sent; i++) sentBytes += batch.lengths[i]!;
    this.#counters.add("udpBytesSent", sentBytes);
    if (sent === count) {
      batch.count = 0;
      return true;
    }
    // Keep the unsent ones, in order, at the front.
    const rest = count - sent;
    batch.bytes.copyWithin(0, sent * SLOT_BYTES, count * SLOT_BYTES);
    batch.lengths.copyWithin(0, sent, count);
    batch.peerIps.copyWithin(0, sent, count);
    batch.peerPorts.copyWithin(0, sent, count);
    batch.sourcePorts.copyWithin(0, sent, count);
    batch.count = rest;
    return false;
  }
}
