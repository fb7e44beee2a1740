import assert from "node:assert/strict";
import {
  canOpenRawSockets,
  DatagramBatch,
  formatIpv4,
  IPV4_UDP_HEADER_BYTES,
  MAX_UDP_PAYLOAD,
  parseIpv4,
  RawUdpReceiver,
  RawUdpSender,
  UdpSocket,
  writeIpv4UdpHeader,
} from "../../../backend/roce/udp_socket.ts";
import { isCloseOnExec, isNonBlocking, SysError } from "../../../virtqueue/sys/libc.ts";

const A = parseIpv4("127.0.0.2");
const B = parseIpv4("127.0.0.3");
/** Sizes from 1 byte to past a 4096-MTU RoCE packet (4096 + BTH + RETH + ICRC = 4128). */
const SIZES = [1, 2, 3, 4, 7, 64, 255, 1023, 1024, 1025, 1500, 2048, 4095, 4096, 4112, 4128, 4200];
const RAW = canOpenRawSockets();
const NO_RAW = "raw sockets need CAP_NET_RAW (run as root)";

/** Bytes that differ per datagram and per position, so a mix-up shows. */
function pattern(size: number, seed: number): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (seed * 31 + i * 7 + (i >> 8)) & 255;
  return bytes;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Receives one datagram within `ms` (loopback delivers at once; the wait is a safety net). */
async function receiveOne(
  socket: UdpSocket,
  into: Uint8Array,
  ms = 1000,
): Promise<{ length: number; from: { ip: number; port: number } }> {
  const from = { ip: 0, port: 0 };
  const deadline = performance.now() + ms;
  for (;;) {
    const length = socket.receiveFrom(into, from);
    if (length >= 0) return { length, from };
    if (performance.now() > deadline) throw new Error(`nothing arrived at ${socket.local.port}`);
    await sleep(1);
  }
}

/** Receives batches until `want` datagrams arrived or `ms` passed; returns them in order. */
async function receiveAll(
  receive: (batch: DatagramBatch) => number,
  want: number,
  options: { slotBytes?: number; ms?: number } = {},
): Promise<{ bytes: Uint8Array; ip: number; port: number; header: Uint8Array }[]> {
  const batch = new DatagramBatch(64, options.slotBytes ?? 4200);
  const got: { bytes: Uint8Array; ip: number; port: number; header: Uint8Array }[] = [];
  const deadline = performance.now() + (options.ms ?? 2000);
  while (got.length < want) {
    const n = receive(batch);
    for (let i = 0; i < n; i++) {
      got.push({
        bytes: batch.datagram(i).slice(),
        ip: batch.peerIps[i]!,
        port: batch.peerPorts[i]!,
        header: batch.headers.slice(i * IPV4_UDP_HEADER_BYTES, (i + 1) * IPV4_UDP_HEADER_BYTES),
      });
    }
    if (n > 0) continue;
    if (performance.now() > deadline) {
      throw new Error(`only ${got.length} of ${want} datagrams arrived in time`);
    }
    await sleep(1);
  }
  return got;
}

Deno.test("parseIpv4 and formatIpv4 convert both ways and reject malformed text", () => {
  assert.equal(parseIpv4("127.0.0.2"), 0x7f00_0002);
  assert.equal(parseIpv4("255.255.255.255"), 0xffff_ffff);
  assert.equal(parseIpv4("0.0.0.0"), 0);
  assert.equal(formatIpv4(0x7f00_0003), "127.0.0.3");
  assert.equal(formatIpv4(parseIpv4("10.99.0.1")), "10.99.0.1");
  for (
    const bad of ["127.0.0", "127.0.0.256", "127.0.0.01", "a.b.c.d", "1.2.3.4.5", "", " 1.2.3.4"]
  ) {
    assert.throws(() => parseIpv4(bad), SyntaxError, bad);
  }
  assert.throws(() => parseIpv4("127.0.0.300"), /part must be a decimal 0\.\.255, got "300"/);
  assert.throws(() => formatIpv4(-1), /must be an integer 0\.\.2\^32-1, got -1/);
  assert.throws(() => formatIpv4(2 ** 32), RangeError);
});

Deno.test("two sockets on 127.0.0.2:4791 and 127.0.0.3:4791 exchange datagrams of 1..4200 bytes", async () => {
  using a = UdpSocket.bind({ ip: "127.0.0.2", port: 4791 });
  using b = UdpSocket.bind({ ip: B, port: 4791 });
  assert.deepEqual({ ...a.local }, { ip: A, port: 4791 });
  assert.equal(isNonBlocking(a.fd), true);
  assert.equal(isCloseOnExec(a.fd), true);
  const into = new Uint8Array(8192);
  for (const size of SIZES) {
    const out = pattern(size, size);
    assert.equal(a.sendTo(out, { ip: B, port: 4791 }), true);
    const got = await receiveOne(b, into);
    assert.equal(got.length, size);
    assert.deepEqual(into.subarray(0, size), out, `${size} bytes a -> b`);
    assert.deepEqual(got.from, { ip: A, port: 4791 });
    // And back the other way.
    const back = pattern(size, size + 1);
    assert.equal(b.sendTo(back, { ip: A, port: 4791 }), true);
    const echoed = await receiveOne(a, into);
    assert.equal(echoed.length, size);
    assert.deepEqual(into.subarray(0, size), back, `${size} bytes b -> a`);
    assert.deepEqual(echoed.from, { ip: B, port: 4791 });
  }
  assert.equal(a.stats.sent, SIZES.length);
  assert.equal(a.stats.received, SIZES.length);
  assert.equal(b.stats.received, SIZES.length);
});

Deno.test("sendBatch/receiveBatch move 32 datagrams of mixed sizes per call, in order", async () => {
  using a = UdpSocket.bind({ ip: "127.0.0.2", port: 4791 });
  using b = UdpSocket.bind({ ip: "127.0.0.3", port: 4791 });
  const batch = new DatagramBatch(32, 4200);
  const sent: Uint8Array[] = [];
  for (let i = 0; i < 32; i++) {
    const bytes = pattern(SIZES[i % SIZES.length]!, i);
    sent.push(bytes);
    batch.push(bytes, { ip: B, port: 4791, sourcePort: 0 });
  }
  assert.equal(a.sendBatch(batch), 32);
  assert.equal(a.stats.sent, 32);
  // One recvmmsg takes everything that is waiting, up to the batch size.
  const into = new DatagramBatch(64, 4200);
  assert.equal(b.receiveBatch(into), 32);
  assert.equal(into.count, 32);
  for (let i = 0; i < 32; i++) {
    assert.deepEqual(into.datagram(i), sent[i], `datagram ${i}`);
    assert.equal(into.peerIps[i], A);
    assert.equal(into.peerPorts[i], 4791);
    assert.equal(into.truncated[i], 0);
  }
  assert.equal(into.headersExact, false);
  // A range: slots 5..9 only.
  assert.equal(a.sendBatch(batch, { start: 5, count: 5 }), 5);
  const got = await receiveAll((x) => b.receiveBatch(x), 5);
  assert.deepEqual(got.map((g) => g.bytes), sent.slice(5, 10));
  assert.equal(b.receiveBatch(into), 0, "nothing more");
});

Deno.test("receiving on an empty socket is EAGAIN: -1 or 0, no error, no count", () => {
  using a = UdpSocket.bind({ ip: "127.0.91.1", port: 0 });
  assert.equal(a.receiveFrom(new Uint8Array(64)), -1);
  const batch = new DatagramBatch(8, 64);
  batch.count = 5;
  assert.equal(a.receiveBatch(batch), 0);
  assert.equal(batch.count, 0);
  assert.equal(a.stats.received, 0);
});

Deno.test("a full send queue is EAGAIN: sendTo false, sendBatch short, counted (netns + tbf)", async () => {
  const why = await isolatedNetnsUnavailable();
  if (why !== undefined) {
    console.log(`skipped: ${why}`);
    return;
  }
  // A slow token bucket on the namespace's own loopback holds datagrams in
  // the qdisc, charged to the sender's small send buffer: sends run out of room.
  const code = `
    import { DatagramBatch, parseIpv4, UdpSocket } from "${moduleUrl}";
    const b = UdpSocket.bind({ ip: "127.0.0.3", port: 4791 });
    const a = UdpSocket.bind({ ip: "127.0.0.2", port: 4791 }, { sendBufferBytes: 4096 });
    const batch = new DatagramBatch(64, 1000);
    for (let i = 0; i < 64; i++) batch.push(new Uint8Array(1000), { ip: b.local.ip, port: 4791, sourcePort: 0 });
    const batched = a.sendBatch(batch);
    const single = a.sendTo(new Uint8Array(1000), b.local);
    console.log(JSON.stringify({ batched, single, stats: a.stats }));
  `;
  const out = await inNetns(
    "tc qdisc add dev lo root tbf rate 8kbit burst 1600 limit 1000000",
    code,
  );
  if (out === undefined) return;
  assert.ok(out.batched >= 1 && out.batched < 64, `sendBatch consumed ${out.batched} of 64`);
  assert.equal(out.single, false);
  assert.equal(out.stats.sent, out.batched);
  assert.equal(out.stats.wouldBlock, 2);
  assert.equal(out.stats.refused, 0);
});

Deno.test("datagrams a firewall refuses (EPERM) are consumed and counted, the rest go (netns + nft)", async () => {
  const why = await isolatedNetnsUnavailable("nft");
  if (why !== undefined) {
    console.log(`skipped: ${why}`);
    return;
  }
  const code = `
    import { DatagramBatch, UdpSocket } from "${moduleUrl}";
    const a = UdpSocket.bind({ ip: "127.0.0.2", port: 4791 });
    const b = UdpSocket.bind({ ip: "127.0.0.3", port: 5000 });
    const batch = new DatagramBatch(8, 16);
    for (let i = 0; i < 8; i++) batch.push(new Uint8Array([i]), { ip: b.local.ip, port: i % 2 ? 5000 : 5001, sourcePort: 0 });
    const batched = a.sendBatch(batch);
    const single = a.sendTo(new Uint8Array(1), { ip: b.local.ip, port: 5001 });
    const into = new DatagramBatch(16, 16);
    const n = b.receiveBatch(into);
    const arrived = [];
    for (let i = 0; i < n; i++) arrived.push(into.slots[i][0]);
    console.log(JSON.stringify({ batched, single, stats: a.stats, arrived }));
  `;
  const out = await inNetns(
    "nft add table ip vrdma && nft add chain ip vrdma out '{ type filter hook output priority 0; }' && nft add rule ip vrdma out udp dport 5001 drop",
    code,
  );
  if (out === undefined) return;
  assert.equal(out.batched, 8, "refused datagrams are consumed, not retried");
  assert.equal(out.single, true);
  assert.equal(out.stats.sent, 4);
  assert.equal(out.stats.refused, 5);
  assert.deepEqual(out.arrived, [1, 3, 5, 7]);
});

Deno.test("bind to an address in use fails with EADDRINUSE naming ip:port", () => {
  using first = UdpSocket.bind({ ip: "127.0.91.2", port: 4791 });
  assert.equal(first.local.port, 4791);
  try {
    UdpSocket.bind({ ip: "127.0.91.2", port: 4791 });
    assert.fail("second bind succeeded");
  } catch (e) {
    assert.ok(e instanceof SysError);
    assert.equal(e.code, "EADDRINUSE");
    assert.equal(
      e.message,
      "bind(127.0.91.2:4791): EADDRINUSE (Address already in use): another socket is bound to 127.0.91.2:4791",
    );
  }
  // An address this host does not have.
  assert.throws(
    () => UdpSocket.bind({ ip: "192.0.2.1", port: 4791 }),
    /^SysError: bind\(192\.0\.2\.1:4791\): EADDRNOTAVAIL .*192\.0\.2\.1 is not an address of this host/,
  );
});

Deno.test("bad arguments are RangeError/SyntaxError/TypeError with the value", () => {
  assert.throws(
    () => UdpSocket.bind({ ip: "127.0.0.1", port: 65536 }),
    /UDP port must be an integer 0\.\.65535, got 65536/,
  );
  assert.throws(() => UdpSocket.bind({ ip: "localhost", port: 1 }), SyntaxError);
  assert.throws(
    () => UdpSocket.bind({ ip: "127.0.0.1", port: 0 }, { receiveBufferBytes: 10 }),
    /socket buffer size must be an integer 1024\.\.2\^30-1, got 10/,
  );
  using s = UdpSocket.bind({ ip: "127.0.0.1", port: 0 });
  assert.throws(
    () => s.sendTo(new Uint8Array(1), { ip: A, port: -1 }),
    /destination port must be an integer 0\.\.65535, got -1/,
  );
  assert.throws(() => s.sendTo(new Uint8Array(1), { ip: 1.5, port: 1 }), RangeError);
  assert.throws(
    () => s.sendTo(new Uint8Array(MAX_UDP_PAYLOAD + 1), { ip: A, port: 9 }),
    (e: unknown) =>
      e instanceof SysError && e.code === "EMSGSIZE" &&
      e.message.includes("65508 bytes is too long for the path"),
  );
  const batch = new DatagramBatch(2, 8);
  assert.throws(() => s.sendBatch(batch, { start: 0, count: 1 }), /outside the 0 slots in use/);
  batch.push(new Uint8Array(8), { ip: A, port: 9, sourcePort: 0 });
  assert.equal(s.sendBatch(batch, { start: 1 }), 0, "an empty range sends nothing");
  assert.throws(() => s.sendBatch(batch, { start: 2 }), /start 2 count -1 is outside the 1 slots/);
  batch.lengths[0] = 9;
  assert.throws(() => s.sendBatch(batch), /slot 0 length 9 is more than the 8-byte slot/);
  s.close();
  s.close();
  assert.equal(s.fd, -1);
  assert.throws(
    () => s.sendTo(new Uint8Array(1), { ip: A, port: 9 }),
    /udp 127\.0\.0\.1:\d+ is closed/,
  );
  assert.throws(() => s.receiveBatch(batch), TypeError);
});

Deno.test("DatagramBatch: push, datagram, clear and their limits", () => {
  assert.throws(
    () => new DatagramBatch(0, 8),
    /batch capacity must be an integer 1\.\.1024, got 0/,
  );
  assert.throws(() => new DatagramBatch(1025, 8), RangeError);
  assert.throws(
    () => new DatagramBatch(1, 65508),
    /slot size must be an integer 1\.\.65507 bytes, got 65508/,
  );
  const batch = new DatagramBatch(2, 4);
  assert.equal(batch.bytes.byteLength, 8);
  assert.equal(batch.headers.byteLength, 2 * IPV4_UDP_HEADER_BYTES);
  batch.push(new Uint8Array([1, 2]), { ip: A, port: 4791, sourcePort: 49441 });
  assert.throws(
    () => batch.push(new Uint8Array(5), { ip: A, port: 4791, sourcePort: 1 }),
    /datagram of 5 bytes does not fit a 4-byte slot/,
  );
  assert.throws(
    () => batch.push(new Uint8Array(1), { ip: A, port: 4791, sourcePort: 70000 }),
    /source port/,
  );
  batch.push(new Uint8Array([3, 4, 5, 6]), { ip: B, port: 1, sourcePort: 2 });
  assert.throws(
    () => batch.push(new Uint8Array(1), { ip: A, port: 1, sourcePort: 1 }),
    /batch is full: all 2 slots/,
  );
  assert.deepEqual([...batch.datagram(0)], [1, 2]);
  assert.deepEqual([...batch.datagram(1)], [3, 4, 5, 6]);
  assert.deepEqual([...batch.peerIps], [A, B]);
  assert.deepEqual([...batch.sourcePorts], [49441, 2]);
  assert.deepEqual([...batch.bytes], [1, 2, 0, 0, 3, 4, 5, 6]);
  assert.throws(() => batch.datagram(2), /datagram index must be an integer 0\.\.1, got 2/);
  batch.clear();
  assert.equal(batch.count, 0);
});

Deno.test("a datagram longer than the buffer is cut and flagged", async () => {
  using a = UdpSocket.bind({ ip: "127.0.91.3", port: 0 });
  using b = UdpSocket.bind({ ip: "127.0.91.4", port: 0 });
  const out = pattern(4200, 9);
  a.sendTo(out, b.local);
  const small = new Uint8Array(1024);
  const got = await receiveOne(b, small);
  assert.equal(got.length, 4200, "the full length is reported");
  assert.deepEqual(small, out.subarray(0, 1024));
  a.sendTo(out, b.local);
  a.sendTo(out.subarray(0, 100), b.local);
  const batch = new DatagramBatch(4, 1024);
  assert.equal(b.receiveBatch(batch), 2);
  assert.deepEqual([...batch.truncated.subarray(0, 2)], [1, 0]);
  assert.deepEqual([...batch.lengths.subarray(0, 2)], [1024, 100]);
  assert.deepEqual(batch.datagram(0), out.subarray(0, 1024));
  assert.equal(b.stats.truncated, 2);
});

Deno.test("socket buffers are set bigger than the default", () => {
  using plain = UdpSocket.bind({ ip: "127.0.0.1", port: 0 });
  using big = UdpSocket.bind({ ip: "127.0.0.1", port: 0 }, {
    sendBufferBytes: 4 << 20,
    receiveBufferBytes: 8 << 20,
  });
  // Linux doubles the request; without CAP_NET_ADMIN it caps it at [rw]mem_max.
  const rmemMax = Number(Deno.readTextFileSync("/proc/sys/net/core/rmem_max"));
  const expected = Deno.uid() === 0 ? 16 << 20 : Math.min(16 << 20, 2 * rmemMax);
  assert.equal(big.receiveBufferBytes, expected);
  assert.ok(big.sendBufferBytes > plain.sendBufferBytes, "send buffer grew");
  assert.ok(big.receiveBufferBytes > plain.receiveBufferBytes, "receive buffer grew");
});

Deno.test("a send-only socket drops what arrives", () => {
  using sender = UdpSocket.bind({ ip: "127.0.91.5", port: 0 }, { sendOnly: true });
  using other = UdpSocket.bind({ ip: "127.0.91.6", port: 0 });
  using control = UdpSocket.bind({ ip: "127.0.91.5", port: 0 });
  other.sendTo(new Uint8Array([1]), sender.local);
  other.sendTo(new Uint8Array([2]), control.local);
  assert.equal(control.receiveFrom(new Uint8Array(4)), 1, "a normal socket gets its datagram");
  assert.equal(sender.receiveFrom(new Uint8Array(4)), -1, "the send-only one got none");
  // It still sends.
  assert.equal(sender.sendTo(new Uint8Array([3]), other.local), true);
  assert.equal(other.receiveFrom(new Uint8Array(4)), 1);
});

Deno.test("on the wire: DF set and IPv4 ID 0 by default, kernel IDs without DF (raw capture)", async () => {
  if (!RAW) {
    console.log(`skipped: ${NO_RAW}`);
    return;
  }
  using capture = RawUdpReceiver.open(parseIpv4("127.0.91.8"), { port: 4791 });
  using receiver = UdpSocket.bind({ ip: "127.0.91.8", port: 4791 });
  using df = UdpSocket.bind({ ip: "127.0.91.7", port: 0 });
  using noDf = UdpSocket.bind({ ip: "127.0.91.7", port: 0 }, { dontFragment: false });
  using noChecksum = UdpSocket.bind({ ip: "127.0.91.7", port: 0 }, { noChecksum: true });
  for (let i = 0; i < 3; i++) df.sendTo(pattern(100 + i, i), receiver.local);
  for (let i = 0; i < 3; i++) noDf.sendTo(pattern(100 + i, i), receiver.local);
  noChecksum.sendTo(pattern(10, 1), receiver.local);
  const got = await receiveAll((x) => capture.receiveBatch(x), 7);
  const view = (h: Uint8Array) => new DataView(h.buffer, h.byteOffset, h.byteLength);
  for (const [i, g] of got.entries()) {
    const h = view(g.header);
    assert.equal(h.getUint8(0), 0x45, "IPv4, 20-byte header");
    assert.equal(h.getUint8(1), 0, "TOS 0");
    assert.equal(h.getUint16(2), 28 + g.bytes.byteLength, "IPv4 total length");
    assert.equal(h.getUint8(8), 64, "TTL 64");
    assert.equal(h.getUint8(9), 17, "UDP");
    assert.equal(h.getUint32(12), parseIpv4("127.0.91.7"));
    assert.equal(h.getUint32(16), parseIpv4("127.0.91.8"));
    assert.equal(h.getUint16(22), 4791);
    assert.equal(h.getUint16(24), 8 + g.bytes.byteLength, "UDP length");
    if (i < 3) {
      assert.equal(h.getUint16(6), 0x4000, `datagram ${i}: DF, no fragment offset`);
      assert.equal(h.getUint16(4), 0, `datagram ${i}: IPv4 ID 0`);
      assert.equal(h.getUint16(20), df.local.port);
      assert.notEqual(h.getUint16(26), 0, "the kernel computed a UDP checksum");
    } else if (i < 6) {
      assert.equal(h.getUint16(6), 0, `datagram ${i}: no DF`);
      assert.equal(h.getUint16(20), noDf.local.port);
    } else {
      assert.equal(h.getUint16(6), 0x4000);
      assert.equal(h.getUint16(4), 0);
      assert.equal(h.getUint16(26), 0, "SO_NO_CHECK: UDP checksum 0");
    }
  }
  // Without DF the kernel picks IDs: not all zero (the generator may repeat one, not three).
  assert.ok(got.slice(3, 6).some((g) => view(g.header).getUint16(4) !== 0), "kernel-chosen IDs");
  assert.deepEqual(
    got[1]!.bytes,
    pattern(101, 1),
    "the capture holds the payload after the headers",
  );
  assert.equal(
    receiver.receiveBatch(new DatagramBatch(16, 256)),
    7,
    "the UDP socket got its own copies",
  );
});

Deno.test("RawUdpSender sends from any source port; RawUdpReceiver keeps only its port", async () => {
  if (!RAW) {
    console.log(`skipped: ${NO_RAW}`);
    return;
  }
  const from = parseIpv4("127.0.91.9");
  const to = parseIpv4("127.0.91.10");
  using receiver = UdpSocket.bind({ ip: to, port: 4791 });
  using other = UdpSocket.bind({ ip: to, port: 4792 });
  using capture = RawUdpReceiver.open(to, { port: 4791 });
  using raw = RawUdpSender.open(from);
  assert.equal(isCloseOnExec(raw.fd), true);
  assert.equal(raw.sendTo(pattern(4112, 1), { ip: to, port: 4791, sourcePort: 49441 }), true);
  assert.equal(raw.sendTo(pattern(5, 2), { ip: to, port: 4792, sourcePort: 49442 }), true);
  const batch = new DatagramBatch(8, 4200);
  const ports = [53368, 53368, 49441, 0xffff, 0xc000];
  for (const [i, port] of ports.entries()) {
    batch.push(pattern(SIZES[i * 3]!, i), { ip: to, port: 4791, sourcePort: port });
  }
  assert.equal(raw.sendBatch(batch), ports.length);
  assert.equal(raw.stats.sent, 2 + ports.length);
  const udp = await receiveAll((x) => receiver.receiveBatch(x), 6);
  assert.deepEqual(udp.map((g) => g.port), [49441, ...ports]);
  assert.deepEqual(udp[0]!.bytes, pattern(4112, 1));
  for (const [i, g] of udp.slice(1).entries()) assert.deepEqual(g.bytes, pattern(SIZES[i * 3]!, i));
  assert.equal(udp[0]!.ip, from);
  assert.equal(other.receiveFrom(new Uint8Array(16)), 5, "the datagram to 4792 went to its socket");
  const captured = await receiveAll((x) => capture.receiveBatch(x), 6);
  assert.deepEqual(captured.map((g) => g.port), [49441, ...ports], "4792 was filtered out");
  const expected = new DataView(new ArrayBuffer(IPV4_UDP_HEADER_BYTES));
  writeIpv4UdpHeader(expected, 0, {
    sourceIp: from,
    sourcePort: 49441,
    destinationIp: to,
    destinationPort: 4791,
    payloadBytes: 4112,
  });
  const header = captured[0]!.header.slice();
  assert.notEqual(header[10]! | header[11]!, 0, "the kernel filled in the IPv4 checksum");
  header[10] = header[11] = 0;
  assert.deepEqual(
    header,
    new Uint8Array(expected.buffer),
    "what writeIpv4UdpHeader wrote went out",
  );
  assert.equal(capture.receiveBatch(new DatagramBatch(4, 64)), 0);
});

Deno.test("raw sockets without CAP_NET_RAW fail with EPERM and say why", async () => {
  if (Deno.uid() !== 0) {
    assert.throws(() => RawUdpSender.open(A), /EPERM .*CAP_NET_RAW/);
    return;
  }
  // As root, drop the capability in a child (setpriv) and try there.
  const setpriv = await hasCommand("setpriv");
  if (!setpriv) {
    console.log("skipped: setpriv is not installed, and this runs as root");
    return;
  }
  const code = `
    import { canOpenRawSockets, RawUdpSender } from "${moduleUrl}";
    let message = "";
    try { RawUdpSender.open(0x7f000001); } catch (e) { message = e.message; }
    console.log(JSON.stringify({ can: canOpenRawSockets(), message }));
  `;
  const out = await run([
    "setpriv",
    "--inh-caps=-all",
    "--bounding-set=-net_raw",
    Deno.execPath(),
    "eval",
    code,
  ]);
  assert.equal(out.can, false);
  assert.equal(
    out.message,
    "socket(raw udp from 127.0.0.1): EPERM (Operation not permitted): a raw socket needs CAP_NET_RAW (root)",
  );
});

const moduleUrl = new URL("../../../backend/roce/udp_socket.ts", import.meta.url).href;

async function hasCommand(name: string): Promise<boolean> {
  try {
    const out = await new Deno.Command("sh", { args: ["-c", `command -v ${name}`] }).output();
    return out.success;
  } catch {
    return false;
  }
}

/** Why a private network namespace with `tc`/`nft` cannot be had, or undefined if it can. */
async function isolatedNetnsUnavailable(tool = "tc"): Promise<string | undefined> {
  if (Deno.uid() !== 0) return "a network namespace needs root";
  for (const name of ["unshare", "ip", tool]) {
    if (!(await hasCommand(name))) return `${name} is not installed`;
  }
  return undefined;
}

/** Exit code of the namespace script when its setup could not be done: the test skips. */
const SETUP_FAILED = 77;

/**
 * Runs `command` as argv with a 20 s limit and parses its last stdout line
 * as JSON; undefined (after printing why) when it exits with {@linkcode SETUP_FAILED}.
 */
// deno-lint-ignore no-explicit-any
async function run(command: string[]): Promise<any> {
  const child = new Deno.Command(command[0]!, {
    args: command.slice(1),
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(20_000),
  }).spawn();
  const out = await child.output();
  const stdout = new TextDecoder().decode(out.stdout).trim();
  const stderr = new TextDecoder().decode(out.stderr).trim();
  if (out.code === SETUP_FAILED || stderr.includes("unshare failed")) {
    console.log(`skipped: the network namespace could not be set up: ${stderr}`);
    return undefined;
  }
  if (!out.success) throw new Error(`${command[0]} failed (${out.code}): ${stderr}`);
  return JSON.parse(stdout.split("\n").at(-1)!);
}

/**
 * Runs TypeScript `code` in a fresh network namespace (only its own
 * loopback, brought up, after `setup`), so traffic shaping and firewall
 * rules touch nothing outside it.
 */
// deno-lint-ignore no-explicit-any
function inNetns(setup: string, code: string): Promise<any> {
  const script = `{ ip link set lo up && ${setup}; } || exit ${SETUP_FAILED}; exec "$0" eval "$1"`;
  return run(["unshare", "-n", "sh", "-c", script, Deno.execPath(), code]);
}
