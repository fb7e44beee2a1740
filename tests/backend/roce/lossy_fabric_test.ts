import assert from "node:assert/strict";
import {
  type FabricAction,
  type FabricEndpoint,
  type FabricPacket,
  LossyFabric,
  type LossyFabricOptions,
} from "../../../backend/roce/lossy_fabric.ts";
import {
  DatagramBatch,
  IPV4_UDP_HEADER_BYTES,
  parseIpv4,
} from "../../../backend/roce/transport.ts";
import { SysError } from "../../../virtqueue/sys/libc.ts";

const A = parseIpv4("127.0.0.2");
const B = parseIpv4("127.0.0.3");

/** A datagram that says which one it is: 4-byte sequence number, then filler. */
function numbered(seq: number, size = 16): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(size);
  new DataView(bytes.buffer).setUint32(0, seq);
  for (let i = 4; i < size; i++) bytes[i] = (seq + i) & 255;
  return bytes;
}

function seqOf(bytes: Uint8Array): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0);
}

/** Everything waiting at `endpoint`, as copies. */
function drain(endpoint: FabricEndpoint): Uint8Array[] {
  const batch = new DatagramBatch(64, 2048);
  const out: Uint8Array[] = [];
  for (let round = 0; round < 10_000; round++) {
    const n = endpoint.receive(batch);
    if (n === 0) return out;
    for (let i = 0; i < n; i++) out.push(batch.datagram(i).slice());
  }
  throw new Error("inbox never drained");
}

/** Sends `count` numbered datagrams a -> b one at a time, then delivers with flush. */
function run(
  options: LossyFabricOptions,
  count: number,
): { got: Uint8Array[]; fabric: LossyFabric } {
  const fabric = new LossyFabric(options);
  const a = fabric.endpoint(A);
  const b = fabric.endpoint(B);
  for (let i = 0; i < count; i++) a.send(numbered(i), { ip: B, port: 4791, sourcePort: 49441 });
  fabric.deliver({ flush: true });
  return { got: drain(b), fabric };
}

Deno.test("without impairments datagrams arrive whole, in order, with source and headers", () => {
  const fabric = new LossyFabric();
  const a = fabric.endpoint("127.0.0.2");
  const b = fabric.endpoint(B);
  assert.equal(b.fd, undefined, "no fd: the fabric is pumped");
  assert.equal(b.localPort, 4791);
  const batch = new DatagramBatch(4, 100);
  for (let i = 0; i < 3; i++) {
    batch.push(numbered(i, 10 + i), { ip: B, port: 4791, sourcePort: 50000 + i });
  }
  assert.equal(a.sendBatch(batch), 3);
  assert.equal(a.send(numbered(3, 4), { ip: B, port: 4791, sourcePort: 53368 }), true);
  batch.slots[0]!.fill(0xee); // the fabric copied at send time
  assert.equal(b.pending, 0, "nothing arrives before deliver()");
  assert.equal(fabric.inFlight, 4);
  assert.equal(fabric.deliver(), 4);
  assert.equal(b.pending, 4);
  const into = new DatagramBatch(8, 100);
  assert.equal(b.receive(into), 4);
  for (let i = 0; i < 4; i++) {
    assert.deepEqual(into.datagram(i), numbered(i, i < 3 ? 10 + i : 4));
    assert.equal(into.peerIps[i], A);
    assert.equal(into.peerPorts[i], i < 3 ? 50000 + i : 53368);
  }
  const h = new DataView(into.headers.buffer, IPV4_UDP_HEADER_BYTES, IPV4_UDP_HEADER_BYTES);
  assert.equal(h.getUint16(2), 28 + 11, "IPv4 length of datagram 1");
  assert.equal(h.getUint16(6), 0x4000);
  assert.equal(h.getUint32(12), A);
  assert.equal(h.getUint32(16), B);
  assert.equal(h.getUint16(20), 50001);
  assert.equal(into.headersExact, false);
  assert.deepEqual({ ...fabric.counters }, {
    sent: 4,
    delivered: 4,
    dropped: 0,
    corrupted: 0,
    duplicated: 0,
    reordered: 0,
    unroutable: 0,
    overflowed: 0,
  });
  assert.equal(a.stats.sent, 4);
  assert.equal(b.stats.received, 4);
});

Deno.test("the same seed gives the same outcome; another seed a different one", () => {
  const options = { drop: 0.1, corrupt: 0.05, duplicate: 0.05, reorder: 0.1, reorderDepth: 4 };
  const first = run({ ...options, seed: 1234 }, 500);
  const second = run({ ...options, seed: 1234 }, 500);
  assert.deepEqual(second.got, first.got);
  assert.deepEqual(second.fabric.counters, first.fabric.counters);
  const other = run({ ...options, seed: 1235 }, 500);
  assert.notDeepEqual(other.got, first.got);
  // Every impairment happened in the mixed run.
  const c = first.fabric.counters;
  for (const key of ["dropped", "corrupted", "duplicated", "reordered"] as const) {
    assert.ok(c[key] > 0, `${key} is ${c[key]}`);
  }
  assert.equal(c.delivered, c.sent - c.dropped + c.duplicated);
  assert.equal(first.got.length, c.delivered);
});

Deno.test("drop loses about the asked share, and exactly what it counts", () => {
  const { got, fabric } = run({ seed: 5, drop: 0.2 }, 5000);
  const c = fabric.counters;
  assert.equal(got.length, 5000 - c.dropped);
  assert.ok(c.dropped > 850 && c.dropped < 1150, `dropped ${c.dropped} of 5000 at p=0.2`);
  // What is left is in order, without gaps other than the drops.
  const seqs = got.map(seqOf);
  assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y));
  assert.equal(new Set(seqs).size, seqs.length);
});

Deno.test("reorder holds a datagram back until reorderDepth later ones passed it", () => {
  const fabric = new LossyFabric({
    reorderDepth: 3,
    decide: (p) => (p.index === 2 ? "reorder" : undefined),
  });
  const a = fabric.endpoint(A);
  const b = fabric.endpoint(B);
  for (let i = 0; i < 4; i++) a.send(numbered(i), { ip: B, port: 4791, sourcePort: 1 });
  assert.equal(fabric.held, 1);
  fabric.deliver();
  assert.deepEqual(drain(b).map(seqOf), [0, 1, 3], "2 is still held: only one passed it");
  for (let i = 4; i < 8; i++) a.send(numbered(i), { ip: B, port: 4791, sourcePort: 1 });
  assert.equal(fabric.held, 0);
  fabric.deliver();
  assert.deepEqual(drain(b).map(seqOf), [4, 5, 2, 6, 7], "2 follows the third datagram after it");
  assert.equal(fabric.counters.reordered, 1);
});

Deno.test("random reordering: everything arrives after a flush, not in send order", () => {
  const { got, fabric } = run({ seed: 9, reorder: 0.2, reorderDepth: 5 }, 1000);
  const seqs = got.map(seqOf);
  assert.equal(seqs.length, 1000);
  assert.deepEqual([...seqs].sort((x, y) => x - y), [...Array(1000).keys()]);
  assert.notDeepEqual(seqs, [...Array(1000).keys()]);
  assert.ok(fabric.counters.reordered > 150 && fabric.counters.reordered < 250);
  // A held datagram arrives reorderDepth places late (or at the flush at the end).
  const late = seqs.filter((s, i) => s < i).length;
  assert.ok(late > 0);
  assert.equal(fabric.held, 0);
});

Deno.test("held datagrams wait for more traffic, or for deliver({ flush: true })", () => {
  const fabric = new LossyFabric({ reorder: 1 });
  const a = fabric.endpoint(A);
  const b = fabric.endpoint(B);
  a.send(numbered(0), { ip: B, port: 4791, sourcePort: 1 });
  assert.equal(fabric.deliver(), 0);
  assert.equal(fabric.inFlight, 1);
  assert.equal(fabric.deliver({ flush: true }), 1);
  assert.deepEqual(drain(b).map(seqOf), [0]);
});

Deno.test("duplicate delivers a second, identical copy right after the first", () => {
  const fabric = new LossyFabric({ decide: (p) => (p.index % 3 === 1 ? "duplicate" : "pass") });
  const a = fabric.endpoint(A);
  const b = fabric.endpoint(B);
  for (let i = 0; i < 6; i++) a.send(numbered(i), { ip: B, port: 4791, sourcePort: 1 });
  fabric.deliver();
  const got = drain(b);
  assert.deepEqual(got.map(seqOf), [0, 1, 1, 2, 3, 4, 4, 5]);
  assert.deepEqual(got[1], got[2]);
  assert.equal(fabric.counters.duplicated, 2);
  assert.equal(fabric.counters.delivered, 8);
});

Deno.test("corrupt changes exactly one byte, somewhere in the datagram", () => {
  const { got, fabric } = run({ seed: 3, corrupt: 1 }, 200);
  assert.equal(fabric.counters.corrupted, 200);
  const positions = new Set<number>();
  for (const [i, bytes] of got.entries()) {
    const clean = numbered(i);
    const diff = [...bytes.keys()].filter((k) => bytes[k] !== clean[k]);
    assert.equal(diff.length, 1, `datagram ${i} differs at ${diff}`);
    positions.add(diff[0]!);
  }
  assert.ok(positions.size > 10, "the position varies");
  // An empty datagram has nothing to corrupt.
  const fabric2 = new LossyFabric({ corrupt: 1 });
  const a = fabric2.endpoint(A);
  const b = fabric2.endpoint(B);
  a.send(new Uint8Array(0), { ip: B, port: 4791, sourcePort: 1 });
  fabric2.deliver();
  assert.equal(drain(b)[0]!.byteLength, 0);
  assert.equal(fabric2.counters.corrupted, 0);
});

Deno.test("a decide hook sees each datagram once and overrides the dice without shifting them", () => {
  const seen: FabricPacket[] = [];
  const hooked = new LossyFabric({
    seed: 77,
    drop: 0.3,
    decide: (p) => {
      seen.push(p);
      return p.index === 4 ? "drop" : undefined;
    },
  });
  const a = hooked.endpoint(A);
  const b = hooked.endpoint(B);
  for (let i = 0; i < 50; i++) a.send(numbered(i), { ip: B, port: 4791, sourcePort: 7 });
  hooked.deliver();
  const withHook = drain(b).map(seqOf);
  const plain = run({ seed: 77, drop: 0.3 }, 50).got.map(seqOf);
  assert.deepEqual(withHook, plain.filter((s) => s !== 4), "only datagram 4 changed fate");
  assert.deepEqual(seen.map((p) => p.index), [...Array(50).keys()]);
  assert.equal(seen[0]!.sourceIp, A);
  assert.equal(seen[0]!.destinationIp, B);
  assert.equal(seen[0]!.sourcePort, 7);
  assert.equal(seen[0]!.destinationPort, 4791);
  const bad = new LossyFabric({ decide: () => "lose" as FabricAction });
  const x = bad.endpoint(A);
  assert.throws(
    () => x.send(new Uint8Array(1), { ip: B, port: 4791, sourcePort: 1 }),
    /decide returned an unknown action "lose"/,
  );
});

Deno.test("unroutable, full inboxes, closed endpoints and address conflicts", () => {
  const fabric = new LossyFabric({ inboxLimit: 3 });
  const a = fabric.endpoint(A);
  const b = fabric.endpoint(B);
  for (let i = 0; i < 5; i++) a.send(numbered(i), { ip: B, port: 4791, sourcePort: 1 });
  a.send(numbered(9), { ip: parseIpv4("127.0.0.9"), port: 4791, sourcePort: 1 });
  a.send(numbered(9), { ip: B, port: 4792, sourcePort: 1 });
  assert.equal(fabric.deliver(), 3);
  assert.equal(fabric.counters.overflowed, 2);
  assert.equal(fabric.counters.unroutable, 2);
  assert.deepEqual(drain(b).map(seqOf), [0, 1, 2]);
  try {
    fabric.endpoint("127.0.0.3");
    assert.fail("bound twice");
  } catch (e) {
    assert.ok(e instanceof SysError);
    assert.equal(e.code, "EADDRINUSE");
    assert.equal(
      e.message,
      "bind(127.0.0.3:4791): EADDRINUSE (Address already in use): another fabric endpoint is bound to 127.0.0.3:4791",
    );
  }
  // Another port on the same address is fine.
  using c = fabric.endpoint(B, { port: 4792 });
  assert.equal(c.localPort, 4792);
  a.send(numbered(1), { ip: B, port: 4791, sourcePort: 1 });
  b.close();
  b.close();
  fabric.deliver();
  assert.equal(fabric.counters.unroutable, 3, "closed endpoints receive nothing");
  assert.throws(
    () => b.receive(new DatagramBatch(1, 1)),
    /fabric endpoint 127\.0\.0\.3:4791 is closed/,
  );
  assert.throws(() => b.send(new Uint8Array(1), { ip: A, port: 4791, sourcePort: 1 }), TypeError);
  // The address is free again.
  const again = fabric.endpoint(B);
  assert.equal(again.pending, 0);
});

Deno.test("receive cuts datagrams longer than the slot and flags them", () => {
  const fabric = new LossyFabric();
  const a = fabric.endpoint(A);
  const b = fabric.endpoint(B);
  a.send(numbered(1, 100), { ip: B, port: 4791, sourcePort: 1 });
  a.send(numbered(2, 10), { ip: B, port: 4791, sourcePort: 1 });
  a.send(numbered(3, 10), { ip: B, port: 4791, sourcePort: 1 });
  fabric.deliver();
  const into = new DatagramBatch(2, 16);
  assert.equal(b.receive(into), 2, "up to the batch capacity");
  assert.deepEqual([...into.truncated], [1, 0]);
  assert.deepEqual([...into.lengths], [16, 10]);
  assert.deepEqual(into.datagram(0), numbered(1, 100).subarray(0, 16));
  assert.equal(b.stats.truncated, 1);
  assert.equal(b.pending, 1);
  assert.equal(b.receive(into), 1);
  assert.equal(b.receive(into), 0);
});

Deno.test("bad options and arguments name the value", () => {
  assert.throws(
    () => new LossyFabric({ drop: 1.5 }),
    /drop probability must be a number 0\.\.1, got 1\.5/,
  );
  assert.throws(() => new LossyFabric({ corrupt: -0.1 }), RangeError);
  assert.throws(() => new LossyFabric({ reorder: NaN }), /reorder probability/);
  assert.throws(
    () => new LossyFabric({ reorderDepth: 0 }),
    /reorderDepth must be a positive integer, got 0/,
  );
  assert.throws(() => new LossyFabric({ seed: 1.5 }), /fabric seed must be an integer, got 1\.5/);
  assert.throws(() => new LossyFabric({ inboxLimit: 0 }), /inboxLimit must be a positive integer/);
  const fabric = new LossyFabric();
  assert.throws(() => fabric.endpoint("127.0.0"), SyntaxError);
  assert.throws(
    () => fabric.endpoint(A, { port: 70000 }),
    /UDP port must be an integer 0\.\.65535, got 70000/,
  );
  const a = fabric.endpoint(A);
  assert.throws(
    () => a.send(new Uint8Array(65508), { ip: B, port: 1, sourcePort: 1 }),
    /at most 65507 bytes, got 65508/,
  );
  assert.throws(
    () => a.send(new Uint8Array(1), { ip: B, port: 1, sourcePort: -1 }),
    /source port must be an integer/,
  );
  assert.throws(
    () => a.send(new Uint8Array(1), { ip: B, port: 0, sourcePort: 1 }),
    /destination port must be an integer 1\.\.65535, got 0/,
  );
  const batch = new DatagramBatch(1, 4);
  assert.throws(() => a.sendBatch(batch, { start: 0, count: 1 }), /outside the 0 slots in use/);
  batch.push(new Uint8Array(1), { ip: B, port: 4791, sourcePort: 0 });
  assert.throws(
    () => a.sendBatch(batch),
    /slot 0: UDP ports must be 1\.\.65535, got destination 4791 source 0/,
  );
  assert.equal(fabric.counters.sent, 0, "nothing of a rejected batch was sent");
  fabric.impairments = { drop: 0.5 };
  assert.deepEqual({ ...fabric.impairments }, {
    drop: 0.5,
    corrupt: 0,
    duplicate: 0,
    reorder: 0,
    reorderDepth: 3,
  });
  assert.throws(() => (fabric.impairments = { duplicate: 2 }), /duplicate probability/);
  assert.throws(
    () => fabric.settle({ maxRounds: 0 }),
    /maxRounds must be a positive integer, got 0/,
  );
});

Deno.test("a stop-and-wait protocol over a lossy fabric: onReadable and settle play it out, repeatably", () => {
  /** One run: 40 messages, each resent until acknowledged; returns what the app saw and the resend count. */
  function play(seed: number): { delivered: number[]; resends: number; rounds: number } {
    const fabric = new LossyFabric({
      seed,
      drop: 0.3,
      duplicate: 0.1,
      reorder: 0.1,
      reorderDepth: 2,
    });
    const batch = new DatagramBatch(16, 64);
    const delivered: number[] = [];
    let expected = 0;
    let acked = -1;
    let resends = 0;
    const receiver: FabricEndpoint = fabric.endpoint(B, {
      onReadable: () => {
        const n = receiver.receive(batch);
        for (let i = 0; i < n; i++) {
          const seq = seqOf(batch.datagram(i));
          if (seq === expected) {
            delivered.push(seq);
            expected++;
          }
          // Acknowledge the last in-order message, duplicates included.
          receiver.send(numbered(expected - 1), { ip: A, port: 4791, sourcePort: 2 });
        }
      },
    });
    const sender: FabricEndpoint = fabric.endpoint(A, {
      onReadable: () => {
        const n = sender.receive(batch);
        for (let i = 0; i < n; i++) acked = Math.max(acked, seqOf(batch.datagram(i)));
      },
    });
    let rounds = 0;
    let lastSent = -1;
    // Each round ends in a "retransmission timeout": what is not acknowledged by then goes again.
    while (acked < 39) {
      if (++rounds > 1000) throw new Error(`no progress: acked ${acked}`);
      const seq = acked + 1;
      if (seq === lastSent) resends++;
      lastSent = seq;
      sender.send(numbered(seq), { ip: B, port: 4791, sourcePort: 1 });
      fabric.settle();
    }
    return { delivered, resends, rounds };
  }
  const first = play(2024);
  assert.deepEqual(first.delivered, [...Array(40).keys()], "every message once, in order");
  assert.ok(first.resends > 5, `losses cost resends: ${first.resends}`);
  assert.equal(first.rounds, 40 + first.resends);
  assert.deepEqual(play(2024), first, "same seed, same run");
});

Deno.test("settle gives up on traffic that never ends", () => {
  const fabric = new LossyFabric();
  const echo: FabricEndpoint = fabric.endpoint(A, {
    onReadable: () => {
      const batch = new DatagramBatch(4, 16);
      const n = echo.receive(batch);
      for (let i = 0; i < n; i++) {
        echo.send(batch.datagram(i), { ip: A, port: 4791, sourcePort: 1 });
      }
    },
  });
  echo.send(new Uint8Array([1]), { ip: A, port: 4791, sourcePort: 1 });
  assert.throws(
    () => fabric.settle({ maxRounds: 50 }),
    /fabric did not settle in 50 rounds: 1 datagrams still in flight/,
  );
  assert.equal(fabric.counters.delivered, 50);
});
