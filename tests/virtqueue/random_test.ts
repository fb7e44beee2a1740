/**
 * Seeded randomized test of both queue sides against a model, in the spirit
 * of rust-vmm virtio-queue's fuzzing: random chain shapes (1..4 buffers,
 * readable/writable mixes, zero-length and large buffers, indirect tables),
 * random interleavings of add / publish / pop / addUsed / publishUsed /
 * popUsed / notification toggles / device state migration, over hundreds
 * of thousands of chains on small queues, so the 16-bit indices wrap many
 * times.
 *
 * The model checks that every chain comes back exactly once, in the order
 * the device used it, with the right length and payload bytes, and that
 * every notification decision equals the specification's rule computed here
 * independently. The seed is fixed; a failure message starts with it.
 */

import assert from "node:assert/strict";
import { GuestMemory } from "../../virtqueue/memory.ts";
import { DescriptorChain } from "../../virtqueue/descriptor_chain.ts";
import { DeviceQueue } from "../../virtqueue/device_queue.ts";
import { DriverQueue } from "../../virtqueue/driver_queue.ts";
import { type GuestRange, layoutAt, type QueueLayout } from "../../virtqueue/layout.ts";

const SEED = 0x5eed_c0de;

/** mulberry32: a small, well-mixed 32-bit PRNG. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Config {
  name: string;
  size: number;
  eventIdx: boolean;
  indirect: boolean;
  /** How many times the 16-bit available idx must wrap before the run stops. */
  wraps: number;
  /**
   * Guest memory starts 2 bytes below the rings, so they are not 4-byte
   * aligned in their buffer: both queues take their DataView paths.
   */
  misaligned?: boolean;
  /** The device also pops with popBatch and completes with addUsedBatch. */
  batch?: boolean;
}

const MAX_BUFFERS = 4;
const SLOT_BYTES = 1024; // data of one outstanding chain
const TABLE_BYTES = 16 * MAX_BUFFERS; // its indirect table
const BASE = 0x10000;

/** One chain as the model knows it, from add to popUsed. */
interface ChainRecord {
  seq: number;
  head: number;
  slot: number;
  descriptors: number;
  readable: { addr: number; bytes: Uint8Array }[];
  writable: GuestRange[];
  /** What the device wrote, set when it completes the chain. */
  written: Uint8Array | null;
}

/** The specification's rule, on its own: notify iff `event` is in `[old, now)` modulo 2^16. */
function needEvent(event: number, now: number, old: number): boolean {
  return ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

class Model {
  readonly rand: () => number;
  readonly cfg: Config;
  readonly mem: GuestMemory;
  readonly layout: QueueLayout;
  readonly driver: DriverQueue;
  device: DeviceQueue;
  readonly slotsBase: number;
  readonly freeSlots: number[] = [];
  seq = 0;
  descriptorsInUse = 0;
  // Driver-side bookkeeping.
  outstanding = new Map<number, ChainRecord>(); // by head
  added: ChainRecord[] = []; // added, not published
  availQueue: ChainRecord[] = []; // published, not popped
  // Device-side bookkeeping.
  held: { rec: ChainRecord; chain: DescriptorChain }[] = [];
  usedAdded: ChainRecord[] = [];
  usedQueue: ChainRecord[] = []; // published used entries, not yet taken
  chainPool: DescriptorChain[] = [];
  // Counters, unbounded (the queues hold them modulo 2^16).
  published = 0;
  popped = 0;
  usedPublished = 0;
  taken = 0;
  returned = 0;
  // Notification state, as the model computes it.
  deviceNotifyOn = true; // flag mode: NO_NOTIFY clear
  availEvent = 0; // event mode: what the device last wrote (init zeroes it)
  driverIntrOn = true;
  usedEvent = 0;
  signalled = 0;
  kicks = 0;
  interrupts = 0;
  migrations = 0;

  constructor(cfg: Config, seed: number) {
    this.cfg = cfg;
    this.rand = mulberry32(seed);
    const { layout, bytes } = layoutAt(BASE, cfg.size);
    this.layout = layout;
    this.slotsBase = BASE + Math.ceil(bytes / 64) * 64;
    const total = this.slotsBase - BASE + cfg.size * (SLOT_BYTES + TABLE_BYTES);
    this.mem = cfg.misaligned
      ? GuestMemory.fromBuffer(new SharedArrayBuffer(total + 2), BASE - 2)
      : GuestMemory.fromBuffer(new SharedArrayBuffer(total), BASE);
    const opts = { eventIdx: cfg.eventIdx, indirect: cfg.indirect };
    this.driver = new DriverQueue(layout, opts);
    this.driver.init(this.mem);
    this.device = new DeviceQueue(layout, opts);
    for (let i = cfg.size - 1; i >= 0; i--) this.freeSlots.push(i);
  }

  int(n: number): number {
    return Math.floor(this.rand() * n);
  }

  /** Payload bytes: a random salt and step per buffer, so no two buffers look alike. */
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    const salt = this.int(256), step = 1 + 2 * this.int(128);
    for (let i = 0; i < n; i++) out[i] = (salt + i * step) & 0xff;
    return out;
  }

  /** Adds one chain of random shape, or checks that a chain too big for the free descriptors is refused. */
  add(): void {
    const nBuf = 1 + this.int(MAX_BUFFERS);
    const nReadable = this.int(nBuf + 1);
    const indirect = this.cfg.indirect && this.rand() < 0.3;
    const need = indirect ? 1 : nBuf;
    const numFree = this.driver.numFree;
    assert.equal(numFree, this.cfg.size - this.descriptorsInUse, "numFree");
    if (need > numFree) {
      // Checking a refusal builds an error with a stack trace, which is
      // slow: check one refusal in twenty.
      if (this.rand() < 0.05) this.checkRefusal(nReadable, nBuf - nReadable, indirect, numFree);
      return;
    }
    const slot = this.freeSlots.pop();
    assert.ok(slot !== undefined, "a free descriptor implies a free slot");
    const data = this.slotsBase + slot * (SLOT_BYTES + TABLE_BYTES);
    const readable: { addr: number; bytes: Uint8Array }[] = [];
    const writable: GuestRange[] = [];
    let at = data;
    for (let k = 0; k < nBuf; k++) {
      const r = this.rand();
      const len = r < 0.1 ? 0 : r < 0.85 ? 1 + this.int(64) : 65 + this.int(160);
      at += this.int(8);
      if (k < nReadable) readable.push({ addr: at, bytes: this.bytes(len) });
      else writable.push({ addr: at, len });
      at += len;
    }
    for (const b of readable) this.mem.write(b.addr, b.bytes);
    const ranges = readable.map((b) => ({ addr: b.addr, len: b.bytes.length }));
    const head = nBuf === 1 && !indirect && this.rand() < 0.5
      ? this.driver.addOne(
        this.mem,
        ranges[0]?.addr ?? writable[0]!.addr,
        ranges[0]?.len ?? writable[0]!.len,
        nReadable === 0,
      )
      : this.driver.add(
        this.mem,
        ranges,
        writable,
        indirect ? { indirectAt: data + SLOT_BYTES } : {},
      );
    assert.ok(!this.outstanding.has(head), "a head handed out twice");
    const rec: ChainRecord = {
      seq: this.seq++,
      head,
      slot,
      descriptors: need,
      readable,
      writable,
      written: null,
    };
    this.outstanding.set(head, rec);
    this.descriptorsInUse += need;
    this.added.push(rec);
  }

  /** A chain too big for the free descriptors is refused with the counts, and nothing changes. */
  checkRefusal(nReadable: number, nWritable: number, indirect: boolean, numFree: number): void {
    const one = { addr: this.slotsBase, len: 1 };
    const need = indirect ? 1 : nReadable + nWritable;
    const state = this.driver.state;
    assert.throws(
      () =>
        this.driver.add(
          this.mem,
          Array.from({ length: nReadable }, () => one),
          Array.from({ length: nWritable }, () => one),
          indirect ? { indirectAt: this.slotsBase } : {},
        ),
      (e: unknown) =>
        e instanceof RangeError &&
        e.message === `chain of ${nReadable} readable + ${nWritable} writable buffers needs ` +
            `${need} descriptors but only ${numFree} are free`,
    );
    assert.deepEqual(this.driver.state, state, "a refused add changes nothing");
  }

  publish(): void {
    const old = this.published, now = old + this.added.length;
    let expected: boolean;
    if (now === old) expected = false;
    else if (this.cfg.eventIdx) expected = needEvent(this.availEvent, now & 0xffff, old & 0xffff);
    else expected = this.deviceNotifyOn;
    assert.equal(this.driver.publish(this.mem), expected, "publish: notify decision");
    if (expected) this.kicks++;
    this.availQueue.push(...this.added);
    this.added = [];
    this.published = now;
  }

  pop(): void {
    assert.equal(this.device.pending(this.mem), this.published - this.popped, "pending");
    if (this.cfg.batch && this.rand() < 0.3) {
      this.popBatch();
      return;
    }
    const n = this.int(this.published - this.popped + 2);
    for (let i = 0; i < n; i++) {
      let chain: DescriptorChain | null;
      if (this.rand() < 0.2) {
        chain = this.device.pop(this.mem); // the allocating form
      } else {
        const reused = this.chainPool.pop() ?? new DescriptorChain(1);
        chain = this.device.popInto(this.mem, reused) ? reused : null;
        if (chain === null) this.chainPool.push(reused);
      }
      const rec = this.availQueue.shift();
      if (rec === undefined) {
        assert.equal(chain, null, "pop with nothing published");
        break;
      }
      if (chain === null) {
        assert.fail(`pop returned nothing; device error: ${this.device.error?.message}`);
      }
      this.popped++;
      this.checkChain(chain, rec);
      this.held.push({ rec, chain });
    }
    assert.equal(this.device.broken, false);
  }

  /** Pops with popBatch into 0..5 reused chains, at most a random `max` of them. */
  popBatch(): void {
    const want = this.int(6);
    const chains: DescriptorChain[] = [];
    for (let k = 0; k < want; k++) chains.push(this.chainPool.pop() ?? new DescriptorChain(1));
    const max = want === 0 ? 0 : 1 + this.int(want);
    const n = this.device.popBatch(this.mem, chains, max);
    assert.equal(n, Math.min(max, this.published - this.popped), "popBatch count");
    for (let k = 0; k < n; k++) {
      const rec = this.availQueue.shift()!;
      this.popped++;
      this.checkChain(chains[k]!, rec);
      this.held.push({ rec, chain: chains[k]! });
    }
    for (let k = n; k < want; k++) this.chainPool.push(chains[k]!);
    assert.equal(this.device.broken, false);
  }

  /** The chain the device sees is the one the driver made, and its bytes read back in random pieces. */
  checkChain(chain: DescriptorChain, rec: ChainRecord): void {
    assert.equal(chain.head, rec.head, "head order");
    assert.equal(chain.readableCount, rec.readable.length, "readable buffers");
    assert.equal(chain.writableCount, rec.writable.length, "writable buffers");
    let total = 0;
    rec.readable.forEach((b, k) => {
      if (chain.addr(k) !== b.addr || chain.len(k) !== b.bytes.length) {
        assert.fail(`readable buffer ${k}`);
      }
      total += b.bytes.length;
    });
    rec.writable.forEach((w, k) => {
      const i = rec.readable.length + k;
      if (chain.addr(i) !== w.addr || chain.len(i) !== w.len) assert.fail(`writable buffer ${k}`);
    });
    const want = new Uint8Array(total);
    let at = 0;
    for (const b of rec.readable) {
      want.set(b.bytes, at);
      at += b.bytes.length;
    }
    const got = new Uint8Array(total);
    const reader = chain.reader;
    while (reader.remaining > 0) {
      const off = reader.position;
      reader.read(got.subarray(off, off + 1 + this.int(Math.min(reader.remaining, 300))));
    }
    assert.ok(equalBytes(got, want), "payload bytes");
  }

  /** The device completes some held chains in random order, writing random bytes. */
  complete(): void {
    const n = this.int(this.held.length + 1);
    // In batch mode the used entries of this call go in with one addUsedBatch.
    const batch = this.cfg.batch === true && this.rand() < 0.3;
    const heads: number[] = [], lens: number[] = [];
    for (let i = 0; i < n; i++) {
      const [{ rec, chain }] = this.held.splice(this.int(this.held.length), 1) as [
        { rec: ChainRecord; chain: DescriptorChain },
      ];
      const len = this.int(chain.writableBytes + 1);
      const data = this.bytes(len);
      let off = 0;
      while (off < len) {
        const k = 1 + this.int(len - off);
        if (this.rand() < 0.1) chain.writer.skip(k); // a device may leave bytes as they are
        else chain.writer.write(data.subarray(off, off + k));
        off += k;
      }
      // Skipped bytes keep whatever the buffer held: read them back as expected.
      rec.written = this.readWritten(rec, len, data, chain);
      if (batch) {
        heads.push(chain.head);
        lens.push(chain.writer.position);
        this.usedAdded.push(rec);
      } else if (this.rand() < 0.3) {
        this.device.pushUsed(this.mem, chain.head, chain.writer.position);
        this.usedAdded.push(rec);
        this.publishedUsed();
      } else {
        this.device.addUsed(this.mem, chain.head, chain.writer.position);
        this.usedAdded.push(rec);
      }
      this.chainPool.push(chain);
    }
    if (heads.length > 0) {
      // Without lengths every entry says 0 bytes: only when that is true.
      const noLens = lens.every((l) => l === 0) && this.rand() < 0.5;
      this.device.addUsedBatch(
        this.mem,
        Uint32Array.from(heads),
        noLens ? null : lens,
        heads.length,
      );
    }
  }

  /** The bytes the driver must find: what the writer wrote, or what was there where it skipped. */
  readWritten(
    rec: ChainRecord,
    len: number,
    _data: Uint8Array,
    chain: DescriptorChain,
  ): Uint8Array {
    assert.equal(chain.writer.position, len);
    const out = new Uint8Array(len);
    let off = 0;
    for (const w of rec.writable) {
      const k = Math.min(w.len, len - off);
      if (k <= 0) break;
      out.set(this.mem.bytes(w.addr, k), off);
      off += k;
    }
    return out;
  }

  publishedUsed(): void {
    this.usedQueue.push(...this.usedAdded);
    this.usedPublished += this.usedAdded.length;
    this.usedAdded = [];
  }

  publishUsed(): void {
    this.device.publishUsed(this.mem);
    this.publishedUsed();
    if (this.rand() < 0.8) this.needsNotify();
  }

  needsNotify(): void {
    const now = this.usedPublished & 0xffff, old = this.signalled;
    let expected: boolean;
    if (this.cfg.eventIdx) expected = needEvent(this.usedEvent, now, old);
    else expected = now !== old && this.driverIntrOn;
    this.signalled = now;
    assert.equal(this.device.needsNotify(this.mem), expected, "needsNotify: interrupt decision");
    if (expected) this.interrupts++;
  }

  popUsed(): void {
    const n = this.int(this.usedPublished - this.taken + 2);
    for (let i = 0; i < n; i++) {
      const fast = this.rand() < 0.5;
      const got = fast
        ? ((id: number) => id < 0 ? null : { id, len: this.driver.usedLen })(
          this.driver.popUsedId(this.mem),
        )
        : this.driver.popUsed(this.mem);
      const rec = this.usedQueue.shift();
      if (rec === undefined) {
        assert.equal(got, null, "popUsed with nothing used");
        break;
      }
      assert.ok(got !== null, "a published used entry was not returned");
      if (got.id !== rec.head) {
        assert.fail(`used order: chain ${rec.seq} is ${rec.head}, got ${got.id}`);
      }
      assert.equal(got.len, rec.written!.length, "used length");
      // The first len bytes of the writable buffers hold what the device wrote.
      const seen = new Uint8Array(got.len);
      let off = 0;
      for (const w of rec.writable) {
        const k = Math.min(w.len, got.len - off);
        if (k <= 0) break;
        seen.set(this.mem.bytes(w.addr, k), off);
        off += k;
      }
      assert.ok(equalBytes(seen, rec.written!), "bytes the device wrote");
      this.outstanding.delete(rec.head);
      this.descriptorsInUse -= rec.descriptors;
      this.freeSlots.push(rec.slot);
      this.taken++;
      this.returned++;
      if (this.cfg.eventIdx && this.driverIntrOn) this.usedEvent = this.taken & 0xffff;
    }
  }

  toggleInterrupts(): void {
    if (this.rand() < 0.5) {
      this.driver.disableInterrupts(this.mem);
      this.driverIntrOn = false;
      if (this.cfg.eventIdx) this.usedEvent = (this.taken + 0x8000) & 0xffff;
    } else {
      const more = this.driver.enableInterrupts(this.mem);
      this.driverIntrOn = true;
      if (this.cfg.eventIdx) this.usedEvent = this.taken & 0xffff;
      assert.equal(more, this.usedPublished !== this.taken, "enableInterrupts: entries waiting");
    }
  }

  toggleNotifications(): void {
    if (this.rand() < 0.5) {
      this.device.disableNotifications(this.mem);
      this.deviceNotifyOn = false;
      if (this.cfg.eventIdx) this.availEvent = (this.popped + 0x8000) & 0xffff;
    } else {
      const more = this.device.enableNotifications(this.mem);
      this.deviceNotifyOn = true;
      if (this.cfg.eventIdx) this.availEvent = this.popped & 0xffff;
      assert.equal(more, this.published !== this.popped, "enableNotifications: chains waiting");
    }
  }

  /** Moves the device state to a new DeviceQueue, as a backend restart would. */
  migrate(): void {
    const state = this.device.saveState();
    assert.deepEqual(state, {
      lastAvail: this.popped & 0xffff,
      usedIdx: (this.usedPublished + this.usedAdded.length) & 0xffff,
      signalledUsed: this.signalled,
      broken: null,
    });
    this.device = new DeviceQueue(this.layout, {
      eventIdx: this.cfg.eventIdx,
      indirect: this.cfg.indirect,
    });
    this.device.restoreState(state);
    this.migrations++;
  }

  step(): void {
    const r = this.rand();
    if (r < 0.3) {
      for (let n = 1 + this.int(3); n > 0; n--) this.add();
    } else if (r < 0.42) this.publish();
    else if (r < 0.57) this.pop();
    else if (r < 0.72) this.complete();
    else if (r < 0.8) this.publishUsed();
    else if (r < 0.95) this.popUsed();
    else if (r < 0.97) this.toggleInterrupts();
    else if (r < 0.99) this.toggleNotifications();
    else if (r < 0.995) this.needsNotify();
    else this.migrate();
  }

  /** Returns everything still in flight, then checks every chain came back once. */
  drain(): void {
    for (let round = 0; this.outstanding.size > 0; round++) {
      assert.ok(round < 10, "drain did not converge");
      this.publish();
      while (this.published !== this.popped) this.pop();
      while (this.held.length > 0) this.complete();
      this.publishUsed();
      while (this.taken !== this.usedPublished) this.popUsed();
    }
    assert.equal(this.returned, this.seq, "every chain came back exactly once");
    assert.equal(this.driver.numFree, this.cfg.size);
    assert.equal(this.freeSlots.length, this.cfg.size);
  }
}

const configs: Config[] = [
  { name: "size 8, flags, indirect", size: 8, eventIdx: false, indirect: true, wraps: 2 },
  { name: "size 4, EVENT_IDX, indirect", size: 4, eventIdx: true, indirect: true, wraps: 1 },
  { name: "size 16, EVENT_IDX, direct only", size: 16, eventIdx: true, indirect: false, wraps: 1 },
  {
    name: "size 8, flags, indirect, batch calls",
    size: 8,
    eventIdx: false,
    indirect: true,
    wraps: 1,
    batch: true,
  },
  {
    name: "size 16, EVENT_IDX, rings not word-aligned in memory, batch calls",
    size: 16,
    eventIdx: true,
    indirect: true,
    wraps: 1,
    misaligned: true,
    batch: true,
  },
];

for (const [i, cfg] of configs.entries()) {
  Deno.test(`random operations against the model: ${cfg.name}`, () => {
    const seed = (SEED + i) >>> 0;
    const m = new Model(cfg, seed);
    let ops = 0;
    try {
      while (m.published < cfg.wraps * 65536 + 1000) {
        m.step();
        ops++;
      }
      m.drain();
    } catch (e) {
      throw new Error(
        `seed 0x${seed.toString(16)} (${cfg.name}), after ${ops} operations and ${m.seq} chains: ` +
          `${e instanceof Error ? e.message : e}`,
        { cause: e },
      );
    }
    assert.ok(ops > 70_000, `only ${ops} operations`);
    console.log(
      `${cfg.name}: ${ops} operations, ${m.seq} chains, ${m.kicks} kicks, ${m.interrupts} interrupts, ` +
        `${m.migrations} migrations`,
    );
    assert.ok(m.usedPublished >= cfg.wraps * 65536, "the used idx wrapped too");
    assert.ok(m.kicks > 0 && m.kicks < m.published, `kicks ${m.kicks} of ${m.published} publishes`);
    assert.ok(m.interrupts > 0 && m.interrupts < m.usedPublished, `interrupts ${m.interrupts}`);
  });
}
