/**
 * An in-memory network for testing the RoCE engine: endpoints that implement
 * {@linkcode RoceTransport}, joined by a fabric that drops, delays,
 * duplicates and corrupts datagrams with a seeded random generator, so a
 * test of a state machine under loss runs the same way every time.
 *
 * Nothing moves by itself. A send puts the datagram on the fabric's wire
 * (after the impairments are drawn); {@linkcode LossyFabric.deliver} moves
 * what is on the wire into the receivers' inboxes and calls their
 * `onReadable`; {@linkcode FabricEndpoint.receive} takes from an inbox. A
 * test decides when packets arrive, and there are no timers or microtasks
 * to wait for: that is what makes runs repeatable and failures replayable
 * from the seed.
 *
 * Impairments, each drawn per datagram in a fixed order (so turning one on
 * does not change the draws of the others):
 * - drop: the datagram is lost.
 * - corrupt: one byte at a random position is XORed with a random nonzero value.
 * - duplicate: a second copy follows the first.
 * - reorder: the datagram is held back until `reorderDepth` later datagrams
 *   have gone on the wire, then follows the one that released it.
 *   `deliver({ flush: true })` releases held datagrams as well.
 *
 * A `decide` hook may choose the action for chosen datagrams (drop the third
 * ACK, corrupt every READ response, …) instead of the dice.
 *
 * @module
 */

import { ERRNO, SysError } from "../../virtqueue/sys/libc.ts";
import {
  type BatchRange,
  checkBatchRange,
  type DatagramAddress,
  DatagramBatch,
  formatIpv4,
  IPV4_UDP_HEADER_BYTES,
  newTransportStats,
  parseIpv4,
  ROCE_PORT,
  type RoceTransport,
  type TransportStats,
} from "./transport.ts";
import { writeIpv4UdpHeader } from "./ipv4_udp_header.ts";

/** Probabilities (0..1) of each impairment per datagram, and the reorder depth. */
export interface Impairments {
  /** Probability a datagram is lost. */
  drop?: number;
  /** Probability one byte of a datagram is changed. */
  corrupt?: number;
  /** Probability a datagram arrives twice. */
  duplicate?: number;
  /** Probability a datagram is held back by `reorderDepth` datagrams. */
  reorder?: number;
  /** How many later datagrams overtake a reordered one; default 3. */
  reorderDepth?: number;
}

/** What the fabric does with one datagram. */
export type FabricAction = "pass" | "drop" | "corrupt" | "duplicate" | "reorder";

const ACTIONS: ReadonlySet<string> = new Set(["pass", "drop", "corrupt", "duplicate", "reorder"]);

/** A datagram as the fabric carries it. */
export interface FabricPacket {
  /** The fabric's own copy of the bytes (a `decide` hook may read, not keep, them). */
  readonly bytes: Uint8Array;
  /** Source IPv4 address, host-order u32. */
  readonly sourceIp: number;
  /** UDP source port. */
  readonly sourcePort: number;
  /** Destination IPv4 address, host-order u32. */
  readonly destinationIp: number;
  /** UDP destination port. */
  readonly destinationPort: number;
  /** Sequence number of the send on this fabric, from 0 (a duplicate shares its original's). */
  readonly index: number;
}

/** Options of {@linkcode LossyFabric}. */
export interface LossyFabricOptions extends Impairments {
  /** Seed of the random generator (any u32); default 1. */
  seed?: number;
  /** Datagrams an endpoint's inbox holds before new ones are lost; default 4096. */
  inboxLimit?: number;
  /**
   * Chooses the action for a datagram; returning undefined leaves it to the
   * dice. The dice are drawn either way, so a hook does not shift the
   * random choices of other datagrams.
   */
  decide?: (packet: FabricPacket) => FabricAction | undefined;
}

/** What the fabric did; the counters only grow. */
export interface FabricCounters {
  /** Datagrams handed to the fabric by endpoints. */
  sent: number;
  /** Datagrams put in an inbox (duplicates count once per copy). */
  delivered: number;
  /** Datagrams the drop impairment lost. */
  dropped: number;
  /** Datagrams with a byte changed. */
  corrupted: number;
  /** Extra copies made. */
  duplicated: number;
  /** Datagrams held back. */
  reordered: number;
  /** Datagrams to an address no endpoint is bound to. */
  unroutable: number;
  /** Datagrams lost because the receiver's inbox was full. */
  overflowed: number;
}

/** Options of {@linkcode LossyFabric.endpoint}. */
export interface EndpointOptions {
  /** UDP port; default {@linkcode ROCE_PORT}. */
  port?: number;
  /** Called by {@linkcode LossyFabric.deliver} after datagrams were put in this endpoint's inbox. */
  onReadable?: () => void;
}

/** Options of {@linkcode LossyFabric.deliver}. */
export interface DeliverOptions {
  /** Release datagrams held back by reordering too. Default false. */
  flush?: boolean;
}

/** Options of {@linkcode LossyFabric.settle}. */
export interface SettleOptions {
  /** Most delivery rounds before giving up; default 1000. */
  maxRounds?: number;
}

/** Datagrams delivered to one endpoint and not yet received, oldest first. */
class Inbox {
  #packets: FabricPacket[] = [];
  #head = 0;

  get size(): number {
    return this.#packets.length - this.#head;
  }

  push(packet: FabricPacket): void {
    this.#packets.push(packet);
  }

  /** The oldest datagram; only call when `size > 0`. */
  shift(): FabricPacket {
    const packet = this.#packets[this.#head++]!;
    // Reading from a head index keeps shift O(1); start over once drained.
    if (this.#head === this.#packets.length) this.clear();
    return packet;
  }

  clear(): void {
    this.#packets = [];
    this.#head = 0;
  }
}

/** The fabric's record of a bound endpoint. */
interface Binding {
  endpoint: FabricEndpoint;
  inbox: Inbox;
  onReadable: (() => void) | undefined;
}

/** A datagram held back by reordering. */
interface Held {
  packet: FabricPacket;
  /** Datagrams still to go on the wire before this one follows. */
  remaining: number;
}

/**
 * A small seeded generator of numbers in [0, 1) (a 32-bit counter through
 * an integer mixing function): fast, and the same sequence for the same seed
 * on every machine.
 */
class Dice {
  #state: number;

  constructor(seed: number) {
    this.#state = seed >>> 0;
  }

  next(): number {
    this.#state = (this.#state + 0x9e37_79b9) >>> 0;
    let x = this.#state;
    x = Math.imul(x ^ (x >>> 16), 0x21f0_aaad);
    x = Math.imul(x ^ (x >>> 15), 0x735a_2d97);
    x ^= x >>> 15;
    return (x >>> 0) / 0x1_0000_0000;
  }

  /** An integer in 0..n-1. */
  below(n: number): number {
    return Math.floor(this.next() * n);
  }
}

function checkProbability(name: string, value: number): void {
  if (typeof value !== "number" || !(value >= 0 && value <= 1)) {
    throw new RangeError(`${name} probability must be a number 0..1, got ${value}`);
  }
}

function keyOf(ip: number, port: number): number {
  // ip * 65536 + port stays an exact integer (below 2^48).
  return ip * 65536 + port;
}

/**
 * Several {@linkcode FabricEndpoint}s joined by a lossy in-memory network.
 *
 * @example
 * ```ts
 * import { LossyFabric } from "./lossy_fabric.ts";
 * import { DatagramBatch } from "./transport.ts";
 * const fabric = new LossyFabric({ seed: 7, drop: 0.5 });
 * const a = fabric.endpoint("127.0.0.2");
 * const b = fabric.endpoint("127.0.0.3");
 * for (let i = 0; i < 100; i++) {
 *   a.send(new Uint8Array([i]), { ip: b.localIp, port: 4791, sourcePort: 49441 });
 * }
 * fabric.deliver();
 * const got = b.receive(new DatagramBatch(128, 16));
 * if (got + fabric.counters.dropped !== 100 || got === 100 || got === 0) throw new Error("odd");
 * ```
 */
export class LossyFabric {
  readonly #bindings = new Map<number, Binding>();
  readonly #dice: Dice;
  readonly #inboxLimit: number;
  readonly #decide: ((packet: FabricPacket) => FabricAction | undefined) | undefined;
  readonly #counters: FabricCounters = {
    sent: 0,
    delivered: 0,
    dropped: 0,
    corrupted: 0,
    duplicated: 0,
    reordered: 0,
    unroutable: 0,
    overflowed: 0,
  };
  #impairments: Required<Impairments>;
  #wire: FabricPacket[] = [];
  #held: Held[] = [];
  #index = 0;

  /**
   * Makes an empty fabric.
   *
   * @throws {RangeError} for a probability outside 0..1, a reorder depth
   *   that is not a positive integer, a seed that is not an integer, or an
   *   inbox limit below 1.
   */
  constructor(options: LossyFabricOptions = {}) {
    const seed = options.seed ?? 1;
    if (!Number.isInteger(seed)) {
      throw new RangeError(`fabric seed must be an integer, got ${seed}`);
    }
    const inboxLimit = options.inboxLimit ?? 4096;
    if (!Number.isInteger(inboxLimit) || inboxLimit < 1) {
      throw new RangeError(`inboxLimit must be a positive integer, got ${inboxLimit}`);
    }
    this.#dice = new Dice(seed);
    this.#inboxLimit = inboxLimit;
    this.#decide = options.decide;
    this.#impairments = LossyFabric.#checked(options);
  }

  /** The impairments in force (every field filled in). */
  get impairments(): Readonly<Required<Impairments>> {
    return this.#impairments;
  }

  /**
   * Replaces the impairments; fields left out become 0 (reorder depth 3).
   *
   * @throws {RangeError} as the constructor does.
   */
  set impairments(next: Impairments) {
    this.#impairments = LossyFabric.#checked(next);
  }

  /** What the fabric did. */
  get counters(): Readonly<FabricCounters> {
    return this.#counters;
  }

  /** Datagrams on the wire or held back, not yet in an inbox. */
  get inFlight(): number {
    return this.#wire.length + this.#held.length;
  }

  /** Datagrams held back by reordering. */
  get held(): number {
    return this.#held.length;
  }

  /**
   * Binds an endpoint at `ip` (dotted quad or u32) and `options.port` (default 4791).
   *
   * @throws {SysError} EADDRINUSE naming `ip:port`, as a UDP bind would, when
   *   an open endpoint has that address.
   * @throws {SyntaxError} for an unparseable IP; {@linkcode RangeError} for a
   *   port outside 0..65535.
   */
  endpoint(ip: string | number, options: EndpointOptions = {}): FabricEndpoint {
    const address = typeof ip === "string" ? parseIpv4(ip) : ip;
    const port = options.port ?? ROCE_PORT;
    if (!Number.isInteger(address) || address < 0 || address > 0xffff_ffff) {
      throw new RangeError(`IPv4 address must be an integer 0..2^32-1, got ${address}`);
    }
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new RangeError(`UDP port must be an integer 0..65535, got ${port}`);
    }
    const key = keyOf(address, port);
    if (this.#bindings.has(key)) {
      const target = `${formatIpv4(address)}:${port}`;
      throw new SysError("bind", ERRNO.EADDRINUSE, {
        target,
        note: `another fabric endpoint is bound to ${target}`,
      });
    }
    const inbox = new Inbox();
    const endpoint = new FabricEndpoint(this, {
      ip: address,
      port,
      inbox,
      detach: () => this.#bindings.delete(key),
      carry: (packet) => this.#carry(packet),
    });
    this.#bindings.set(key, { endpoint, inbox, onReadable: options.onReadable });
    return endpoint;
  }

  /**
   * Moves every datagram on the wire (and, with `flush`, every held one
   * after them) into its receiver's inbox in order, then calls `onReadable`
   * of each endpoint that got some. Datagrams sent from those callbacks wait
   * for the next call.
   *
   * @returns how many datagrams went into inboxes.
   */
  deliver(options: DeliverOptions = {}): number {
    if (options.flush === true && this.#held.length > 0) {
      for (const h of this.#held) this.#wire.push(h.packet);
      this.#held = [];
    }
    const wire = this.#wire;
    this.#wire = [];
    const readable = new Set<Binding>();
    let delivered = 0;
    for (const packet of wire) {
      const to = this.#bindings.get(keyOf(packet.destinationIp, packet.destinationPort));
      if (to === undefined) {
        this.#counters.unroutable++;
        continue;
      }
      if (to.inbox.size >= this.#inboxLimit) {
        this.#counters.overflowed++;
        continue;
      }
      to.inbox.push(packet);
      delivered++;
      readable.add(to);
    }
    this.#counters.delivered += delivered;
    for (const binding of readable) binding.onReadable?.();
    return delivered;
  }

  /**
   * Delivers with `flush` until nothing is in flight: a round trip of
   * callbacks (request, response, ACK, …) plays out to the end.
   *
   * @returns the number of rounds it took.
   * @throws {RangeError} if datagrams are still in flight after `maxRounds`.
   */
  settle(options: SettleOptions = {}): number {
    const maxRounds = options.maxRounds ?? 1000;
    if (!Number.isInteger(maxRounds) || maxRounds < 1) {
      throw new RangeError(`maxRounds must be a positive integer, got ${maxRounds}`);
    }
    for (let round = 0; round < maxRounds; round++) {
      if (this.inFlight === 0) return round;
      this.deliver({ flush: true });
    }
    if (this.inFlight === 0) return maxRounds;
    throw new RangeError(
      `fabric did not settle in ${maxRounds} rounds: ${this.inFlight} datagrams still in flight`,
    );
  }

  /** Applies the impairments to one datagram sent by an endpoint. */
  #carry(sent: Omit<FabricPacket, "index">): void {
    this.#counters.sent++;
    const packet: FabricPacket = { ...sent, index: this.#index++ };
    const dice = this.#dice;
    const odds = this.#impairments;
    // Always the same four draws, in the same order, whatever happens next.
    const drop = dice.next() < odds.drop;
    const corrupt = dice.next() < odds.corrupt;
    const duplicate = dice.next() < odds.duplicate;
    const reorder = dice.next() < odds.reorder;
    const chosen = this.#decide?.(packet);
    if (chosen !== undefined && !ACTIONS.has(chosen)) {
      throw new TypeError(`decide returned an unknown action ${JSON.stringify(chosen)}`);
    }
    const is = (what: FabricAction, rolled: boolean): boolean =>
      chosen === undefined ? rolled : chosen === what;
    if (is("drop", drop)) {
      this.#counters.dropped++;
      return;
    }
    if (is("corrupt", corrupt) && packet.bytes.byteLength > 0) {
      const at = dice.below(packet.bytes.byteLength);
      packet.bytes[at]! ^= 1 + dice.below(255);
      this.#counters.corrupted++;
    }
    const copies = [packet];
    if (is("duplicate", duplicate)) {
      copies.push({ ...packet, bytes: packet.bytes.slice() });
      this.#counters.duplicated++;
    }
    if (is("reorder", reorder)) {
      for (const copy of copies) {
        this.#held.push({ packet: copy, remaining: this.#impairments.reorderDepth });
      }
      this.#counters.reordered++;
      return;
    }
    for (const copy of copies) this.#onWire(copy);
  }

  /** Puts `packet` on the wire; held datagrams whose wait is over follow it. */
  #onWire(packet: FabricPacket): void {
    this.#wire.push(packet);
    if (this.#held.length === 0) return;
    const still: Held[] = [];
    const released: FabricPacket[] = [];
    for (const h of this.#held) {
      if (--h.remaining <= 0) released.push(h.packet);
      else still.push(h);
    }
    this.#held = still;
    for (const p of released) this.#onWire(p);
  }

  static #checked(next: Impairments): Required<Impairments> {
    const full = {
      drop: next.drop ?? 0,
      corrupt: next.corrupt ?? 0,
      duplicate: next.duplicate ?? 0,
      reorder: next.reorder ?? 0,
      reorderDepth: next.reorderDepth ?? 3,
    };
    checkProbability("drop", full.drop);
    checkProbability("corrupt", full.corrupt);
    checkProbability("duplicate", full.duplicate);
    checkProbability("reorder", full.reorder);
    if (!Number.isInteger(full.reorderDepth) || full.reorderDepth < 1) {
      throw new RangeError(`reorderDepth must be a positive integer, got ${full.reorderDepth}`);
    }
    return full;
  }
}

/** What a fabric hands a new endpoint. */
interface EndpointWiring {
  ip: number;
  port: number;
  inbox: Inbox;
  detach: () => void;
  carry: (packet: Omit<FabricPacket, "index">) => void;
}

/**
 * One host's port on a {@linkcode LossyFabric}: a {@linkcode RoceTransport}
 * without an fd. Made by {@linkcode LossyFabric.endpoint}.
 */
export class FabricEndpoint implements RoceTransport {
  readonly #fabric: LossyFabric;
  readonly #wiring: EndpointWiring;
  readonly #stats: TransportStats = newTransportStats();
  #closed = false;

  /** Use {@linkcode LossyFabric.endpoint}. */
  constructor(fabric: LossyFabric, wiring: EndpointWiring) {
    this.#fabric = fabric;
    this.#wiring = wiring;
  }

  /** The fabric it is on. */
  get fabric(): LossyFabric {
    return this.#fabric;
  }

  /** The local IPv4 address, host-order u32. */
  get localIp(): number {
    return this.#wiring.ip;
  }

  /** The local UDP port. */
  get localPort(): number {
    return this.#wiring.port;
  }

  /** Every source port can be had on the fabric. */
  sourcePortFor(port: number): number {
    return port;
  }

  /** Nothing is held per source port on the fabric. */
  releaseSourcePort(_port: number): void {}

  /** Always undefined: pump the fabric with {@linkcode LossyFabric.deliver} instead. */
  get fd(): undefined {
    return undefined;
  }

  /** Counters of what it did (`wouldBlock`, `refused` and the source-socket ones stay 0). */
  get stats(): Readonly<TransportStats> {
    return this.#stats;
  }

  /** Datagrams waiting in the inbox. */
  get pending(): number {
    return this.#wiring.inbox.size;
  }

  /**
   * Hands a copy of `bytes` to the fabric. Always consumed: the fabric
   * never pushes back.
   *
   * @throws {TypeError} once closed; {@linkcode RangeError} for an address,
   *   port or length out of range.
   */
  send(bytes: Uint8Array, to: DatagramAddress): boolean {
    this.#open();
    if (bytes.byteLength > 65507) {
      throw new RangeError(`UDP payload must be at most 65507 bytes, got ${bytes.byteLength}`);
    }
    if (!Number.isInteger(to.ip) || to.ip < 0 || to.ip > 0xffff_ffff) {
      throw new RangeError(`IPv4 address must be an integer 0..2^32-1, got ${to.ip}`);
    }
    for (const [name, port] of [["destination", to.port], ["source", to.sourcePort]] as const) {
      // As on UDP, port 0 is no port.
      if (!Number.isInteger(port) || port < 1 || port > 65535) {
        throw new RangeError(`${name} port must be an integer 1..65535, got ${port}`);
      }
    }
    this.#carry(bytes.slice(), to.ip, to.port, to.sourcePort);
    return true;
  }

  /**
   * Hands slots `range` of `batch` to the fabric (each copied).
   *
   * @returns the number of slots in the range: all are consumed.
   * @throws {TypeError} once closed; {@linkcode RangeError} for a range
   *   outside the slots in use.
   */
  sendBatch(batch: DatagramBatch, range?: BatchRange): number {
    this.#open();
    const { start, count } = checkBatchRange(batch, range);
    for (let i = start; i < start + count; i++) {
      const length = batch.lengths[i]!;
      if (length > batch.slotBytes) {
        throw new RangeError(
          `slot ${i} length ${length} is more than the ${batch.slotBytes}-byte slot`,
        );
      }
      this.#carry(
        batch.slots[i]!.slice(0, length),
        batch.peerIps[i]!,
        batch.peerPorts[i]!,
        batch.sourcePorts[i]!,
      );
    }
    return count;
  }

  /**
   * Moves datagrams from the inbox into `into` from slot 0, up to its
   * capacity; see {@linkcode RoceTransport.receive}. The headers are those
   * a vrdma sender puts on the wire (`headersExact` false).
   *
   * @throws {TypeError} once closed.
   */
  receive(into: DatagramBatch): number {
    this.#open();
    const inbox = this.#wiring.inbox;
    const n = Math.min(into.capacity, inbox.size);
    const headers = new DataView(into.headers.buffer);
    for (let i = 0; i < n; i++) {
      const packet = inbox.shift();
      const length = Math.min(packet.bytes.byteLength, into.slotBytes);
      into.slots[i]!.set(packet.bytes.subarray(0, length));
      into.lengths[i] = length;
      into.truncated[i] = length < packet.bytes.byteLength ? 1 : 0;
      into.peerIps[i] = packet.sourceIp;
      into.peerPorts[i] = packet.sourcePort;
      writeIpv4UdpHeader(headers, i * IPV4_UDP_HEADER_BYTES, {
        sourceIp: packet.sourceIp,
        sourcePort: packet.sourcePort,
        destinationIp: packet.destinationIp,
        destinationPort: packet.destinationPort,
        payloadBytes: length,
      });
      if (into.truncated[i] === 1) this.#stats.truncated++;
    }
    into.count = n;
    into.headersExact = false;
    this.#stats.received += n;
    return n;
  }

  /** Leaves the fabric: later datagrams to this address are unroutable. Closing twice is harmless. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#wiring.inbox.clear();
    this.#wiring.detach();
  }

  /** Same as {@linkcode FabricEndpoint.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #carry(bytes: Uint8Array, ip: number, port: number, sourcePort: number): void {
    this.#stats.sent++;
    this.#wiring.carry({
      bytes,
      sourceIp: this.#wiring.ip,
      sourcePort,
      destinationIp: ip,
      destinationPort: port,
    });
  }

  #open(): void {
    if (this.#closed) {
      throw new TypeError(
        `fabric endpoint ${formatIpv4(this.#wiring.ip)}:${this.#wiring.port} is closed`,
      );
    }
  }
}
