import assert from "node:assert/strict";
import {
  DatagramBatch,
  IPV4_UDP_HEADER_BYTES,
  parseIpv4,
  ROCE_PORT,
  type TransportMode,
  UdpTransport,
} from "../../../backend/roce/transport.ts";
import { canOpenRawSockets, RawUdpReceiver, UdpSocket } from "../../../backend/roce/udp_socket.ts";
import { Epoll, EPOLLIN } from "../../../virtqueue/sys/epoll.ts";
import { isCloseOnExec, SysError } from "../../../virtqueue/sys/libc.ts";

const RAW = canOpenRawSockets();
const MODES: TransportMode[] = RAW ? ["socket", "raw"] : ["socket"];
if (!RAW) console.log("raw mode tests skipped: raw sockets need CAP_NET_RAW (run as root)");

/** Source ports as rxe picks them (WIRE.md): RC QPN 0x11<->0x11, 0x12<->0x12; UD QPN 0x13, 0x14. */
const RXE_PORTS = [49441, 49476, 53368, 59626];

function pattern(size: number, seed: number): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (seed * 13 + i * 5 + (i >> 8)) & 255;
  return bytes;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

interface Got {
  bytes: Uint8Array;
  ip: number;
  port: number;
  header: Uint8Array;
  exact: boolean;
}

/** Receives until `want` datagrams arrived or `ms` passed. */
async function receiveAll(
  receive: (batch: DatagramBatch) => number,
  want: number,
  ms = 2000,
): Promise<Got[]> {
  const batch = new DatagramBatch(64, 4200);
  const got: Got[] = [];
  const deadline = performance.now() + ms;
  while (got.length < want) {
    const n = receive(batch);
    for (let i = 0; i < n; i++) {
      got.push({
        bytes: batch.datagram(i).slice(),
        ip: batch.peerIps[i]!,
        port: batch.peerPorts[i]!,
        header: batch.headers.slice(i * IPV4_UDP_HEADER_BYTES, (i + 1) * IPV4_UDP_HEADER_BYTES),
        exact: batch.headersExact,
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

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

for (const mode of MODES) {
  Deno.test(`${mode} mode: 127.0.0.2:4791 and 127.0.0.3:4791 exchange datagrams, each from its own source port`, async () => {
    using a = UdpTransport.open({ ip: "127.0.0.2", mode });
    using b = UdpTransport.open({ ip: "127.0.0.3", mode });
    assert.equal(a.mode, mode);
    assert.equal(a.localPort, ROCE_PORT);
    assert.equal(a.localIp, parseIpv4("127.0.0.2"));
    assert.equal(isCloseOnExec(a.fd), true);
    const sizes = [1, 3, 64, 1024, 4096, 4112, 4200];
    for (const [i, size] of sizes.entries()) {
      const sourcePort = RXE_PORTS[i % RXE_PORTS.length]!;
      assert.equal(a.send(pattern(size, i), { ip: b.localIp, port: 4791, sourcePort }), true);
    }
    const got = await receiveAll((x) => b.receive(x), sizes.length);
    for (const [i, g] of got.entries()) {
      assert.deepEqual(g.bytes, pattern(sizes[i]!, i), `datagram ${i}`);
      assert.equal(g.ip, a.localIp);
      assert.equal(g.port, RXE_PORTS[i % RXE_PORTS.length], `datagram ${i} source port`);
    }
    // Replies go back to port 4791 whatever the source port was.
    b.send(pattern(10, 99), { ip: got[0]!.ip, port: 4791, sourcePort: 49441 });
    const back = await receiveAll((x) => a.receive(x), 1);
    assert.deepEqual(back[0]!.bytes, pattern(10, 99));
    assert.equal(a.stats.sent, sizes.length);
    assert.equal(b.stats.received, sizes.length);
    if (mode === "socket") assert.equal(a.stats.sourceSockets, RXE_PORTS.length);
    else assert.equal(a.stats.sourceSockets, 0, "raw mode needs no per-port socket");
  });

  Deno.test(`${mode} mode: a batch with mixed source ports arrives in order with each port`, async () => {
    using a = UdpTransport.open({ ip: "127.0.92.1", mode });
    using b = UdpTransport.open({ ip: "127.0.92.2", mode });
    const ports = [49441, 49441, 49441, 53368, 53368, 4791, 49441, 0xc000, 0xffff, 0xffff];
    const batch = new DatagramBatch(32, 4200);
    for (const [i, sourcePort] of ports.entries()) {
      batch.push(pattern(100 * i + 1, i), { ip: b.localIp, port: 4791, sourcePort });
    }
    assert.equal(a.sendBatch(batch), ports.length);
    const got = await receiveAll((x) => b.receive(x), ports.length);
    assert.deepEqual(got.map((g) => g.port), ports);
    for (const [i, g] of got.entries()) assert.deepEqual(g.bytes, pattern(100 * i + 1, i));
    // A range in the middle.
    assert.equal(a.sendBatch(batch, { start: 2, count: 4 }), 4);
    const part = await receiveAll((x) => b.receive(x), 4);
    assert.deepEqual(part.map((g) => g.port), ports.slice(2, 6));
    assert.equal(a.stats.sent, ports.length + 4);
    assert.equal(a.stats.sourcePortFallbacks, 0);
  });

  Deno.test(`${mode} mode: the fd reports readability in an epoll set`, async () => {
    using a = UdpTransport.open({ ip: "127.0.92.3", mode });
    using b = UdpTransport.open({ ip: "127.0.92.4", mode });
    using ep = Epoll.create();
    ep.add(b.fd, 42, EPOLLIN);
    assert.equal(ep.wait(0), 0, "nothing yet");
    a.send(new Uint8Array([1, 2]), { ip: b.localIp, port: 4791, sourcePort: 50000 });
    assert.equal(ep.wait(1000), 1);
    assert.equal(ep.tokenAt(0), 42);
    const got = await receiveAll((x) => b.receive(x), 1);
    assert.deepEqual([...got[0]!.bytes], [1, 2]);
    assert.equal(ep.wait(0), 0, "drained");
  });

  Deno.test(`${mode} mode: a second transport on the same ip:4791 fails naming it`, () => {
    using first = UdpTransport.open({ ip: "127.0.92.5", mode });
    assert.equal(first.localPort, 4791);
    assert.throws(
      () => UdpTransport.open({ ip: "127.0.92.5", mode }),
      (e: unknown) =>
        e instanceof SysError && e.code === "EADDRINUSE" &&
        e.message ===
          "bind(127.0.92.5:4791): EADDRINUSE (Address already in use): another socket is bound to 127.0.92.5:4791",
    );
    // The same port on another address is fine: one host per 127.0.0.x.
    using other = UdpTransport.open({ ip: "127.0.92.6", mode });
    assert.equal(other.localPort, 4791);
  });
}

Deno.test("both modes put the same IPv4 and UDP headers on the wire: DF, ID 0, TTL 64, checksum 0", async () => {
  if (!RAW) {
    console.log("skipped: the capture needs a raw socket (root)");
    return;
  }
  const to = parseIpv4("127.0.92.8");
  using capture = RawUdpReceiver.open(to, { port: 4791 });
  using socketMode = UdpTransport.open({ ip: "127.0.92.7", mode: "socket" });
  using receiver = UdpTransport.open({ ip: to, mode: "socket" });
  const sent: { mode: string; size: number; sourcePort: number }[] = [];
  for (const [i, size] of [1, 4112, 4200].entries()) {
    const sourcePort = RXE_PORTS[i]!;
    socketMode.send(pattern(size, i), { ip: to, port: 4791, sourcePort });
    sent.push({ mode: "socket", size, sourcePort });
  }
  socketMode.close();
  // The raw transport takes over the same address for the same datagrams.
  using rawMode = UdpTransport.open({ ip: "127.0.92.7", mode: "raw" });
  for (const [i, size] of [1, 4112, 4200].entries()) {
    const sourcePort = RXE_PORTS[i]!;
    rawMode.send(pattern(size, i), { ip: to, port: 4791, sourcePort });
    sent.push({ mode: "raw", size, sourcePort });
  }
  const wire = await receiveAll((x) => capture.receiveBatch(x), 6);
  for (const [i, w] of wire.entries()) {
    const h = view(w.header);
    const what = `${sent[i]!.mode} datagram of ${sent[i]!.size}`;
    assert.equal(h.getUint16(6), 0x4000, `${what}: DF set, offset 0`);
    assert.equal(h.getUint16(4), 0, `${what}: IPv4 ID 0`);
    assert.equal(h.getUint8(8), 64, `${what}: TTL 64`);
    assert.equal(h.getUint8(1), 0, `${what}: TOS 0`);
    assert.equal(h.getUint16(20), sent[i]!.sourcePort, `${what}: source port`);
    assert.equal(h.getUint16(26), 0, `${what}: UDP checksum 0`);
    assert.equal(h.getUint16(24), 8 + sent[i]!.size, `${what}: UDP length`);
  }
  for (let i = 0; i < 3; i++) {
    assert.deepEqual(
      wire[i]!.header,
      wire[i + 3]!.header,
      `datagram ${i}: same header bytes in both modes`,
    );
    assert.deepEqual(wire[i]!.bytes, wire[i + 3]!.bytes);
  }
  // Socket mode rebuilds the headers it cannot see; they match the wire but for the IPv4 checksum.
  const rebuilt = await receiveAll((x) => receiver.receive(x), 6);
  for (const [i, r] of rebuilt.entries()) {
    assert.equal(r.exact, false);
    const real = wire[i]!.header.slice();
    real[10] = real[11] = 0;
    assert.deepEqual(r.header, real, `datagram ${i}: rebuilt header`);
  }
});

Deno.test("raw mode receives the real IPv4 header, including an ID a UDP socket cannot see", async () => {
  if (!RAW) {
    console.log("skipped: raw mode needs root");
    return;
  }
  using b = UdpTransport.open({ ip: "127.0.92.10", mode: "raw" });
  // A sender without DF gets kernel-chosen (nonzero) IDs, as real rxe peers send.
  using foreign = UdpSocket.bind({ ip: "127.0.92.9", port: 0 }, { dontFragment: false });
  for (let i = 0; i < 4; i++) foreign.sendTo(pattern(20, i), { ip: b.localIp, port: 4791 });
  const got = await receiveAll((x) => b.receive(x), 4);
  assert.ok(got.every((g) => g.exact));
  assert.ok(got.some((g) => view(g.header).getUint16(4) !== 0), "some IPv4 ID is not 0");
  assert.ok(got.every((g) => view(g.header).getUint16(6) === 0), "no DF");
  assert.deepEqual(got.map((g) => g.port), Array(4).fill(foreign.local.port));
  assert.deepEqual(got[3]!.bytes, pattern(20, 3));
});

Deno.test("socket mode keeps at most maxSourceSockets send sockets, least recently used go first", async () => {
  using a = UdpTransport.open({ ip: "127.0.92.11", maxSourceSockets: 2 });
  using b = UdpTransport.open({ ip: "127.0.92.12" });
  const to = { ip: b.localIp, port: 4791 };
  const order = [50001, 50002, 50001, 50003, 50001, 50002, 50002];
  for (const sourcePort of order) a.send(new Uint8Array([sourcePort & 255]), { ...to, sourcePort });
  const got = await receiveAll((x) => b.receive(x), order.length);
  assert.deepEqual(got.map((g) => g.port), order);
  // 50003 evicts 50002 (50001 was used more recently); 50002 then evicts 50003.
  assert.equal(a.stats.sourceSockets, 2);
  assert.equal(a.stats.sourceSocketsEvicted, 2);
  // An evicted port is free again for anyone; the kept ones are still bound.
  using reuse = UdpSocket.bind({ ip: "127.0.92.11", port: 50003 });
  assert.equal(reuse.local.port, 50003);
  for (const kept of [50001, 50002]) {
    assert.throws(() => UdpSocket.bind({ ip: "127.0.92.11", port: kept }), /EADDRINUSE/);
  }
});

Deno.test("socket mode: a source port another program holds falls back to 4791 and is counted", async () => {
  using holder = UdpSocket.bind({ ip: "127.0.92.13", port: 50010 });
  using a = UdpTransport.open({ ip: "127.0.92.13" });
  using b = UdpTransport.open({ ip: "127.0.92.14" });
  const to = { ip: b.localIp, port: 4791 };
  a.send(new Uint8Array([1]), { ...to, sourcePort: 50010 });
  a.send(new Uint8Array([2]), { ...to, sourcePort: 50011 });
  const batch = new DatagramBatch(4, 16);
  batch.push(new Uint8Array([3]), { ...to, sourcePort: 50010 });
  batch.push(new Uint8Array([4]), { ...to, sourcePort: 50010 });
  assert.equal(a.sendBatch(batch), 2);
  const got = await receiveAll((x) => b.receive(x), 4);
  assert.deepEqual(got.map((g) => [g.bytes[0], g.port]), [[1, 4791], [2, 50011], [3, 4791], [
    4,
    4791,
  ]]);
  assert.equal(a.stats.sourcePortFallbacks, 3);
  assert.equal(holder.receiveFrom(new Uint8Array(4)), -1, "nothing was taken from the holder");
});

Deno.test("open checks its options; close is final and idempotent", () => {
  assert.throws(
    // deno-lint-ignore no-explicit-any
    () => UdpTransport.open({ ip: "127.0.0.1", port: 0, mode: "udp" as any }),
    /transport mode must be "socket", "raw" or "auto", got "udp"/,
  );
  assert.throws(
    () => UdpTransport.open({ ip: "127.0.0.1", port: 0, maxSourceSockets: 0 }),
    /maxSourceSockets must be an integer 1\.\.16384, got 0/,
  );
  assert.throws(() => UdpTransport.open({ ip: "127.0.0.256" }), SyntaxError);
  using auto = UdpTransport.open({ ip: "127.0.0.1", port: 0, mode: "auto" });
  assert.throws(
    () => auto.send(new Uint8Array(1), { ip: auto.localIp, port: auto.localPort, sourcePort: 0 }),
    /source port must be an integer 1\.\.65535, got 0/,
  );
  const zero = new DatagramBatch(2, 4);
  zero.push(new Uint8Array(1), { ip: auto.localIp, port: auto.localPort, sourcePort: 50030 });
  zero.push(new Uint8Array(1), { ip: auto.localIp, port: 0, sourcePort: 50030 });
  assert.throws(
    () => auto.sendBatch(zero),
    /slot 1: UDP ports must be 1\.\.65535, got destination 0 source 50030/,
  );
  assert.equal(auto.stats.sent, 0, "a bad batch sends nothing");
  assert.equal(auto.mode, RAW ? "raw" : "socket");
  const t = UdpTransport.open({ ip: "127.0.0.1", port: 0 });
  t.send(new Uint8Array(1), { ip: t.localIp, port: t.localPort, sourcePort: 50020 });
  assert.equal(t.stats.sourceSockets, 1);
  t.close();
  t.close();
  assert.equal(t.stats.sourceSockets, 0);
  assert.throws(
    () => t.send(new Uint8Array(1), { ip: 1, port: 1, sourcePort: 1 }),
    /^TypeError: transport 127\.0\.0\.1:\d+ is closed$/,
  );
  assert.throws(() => t.receive(new DatagramBatch(1, 1)), TypeError);
  // Its sockets are gone: the source port can be bound again.
  using again = UdpSocket.bind({ ip: "127.0.0.1", port: 50020 });
  assert.equal(again.local.port, 50020);
});

Deno.test("tshark sees DF, IPv4 ID 0 and the chosen source ports in both modes", async () => {
  if (Deno.uid() !== 0) {
    console.log("skipped: live capture needs root");
    return;
  }
  const which = await new Deno.Command("sh", { args: ["-c", "command -v tshark"] }).output();
  if (!which.success) {
    console.log("skipped: tshark is not installed");
    return;
  }
  const filter = "udp dst port 4791 and src host 127.0.92.15 and dst host 127.0.92.16";
  const child = new Deno.Command("tshark", {
    args: [
      "-i",
      "lo",
      "-f",
      filter,
      "-c",
      String(2 * MODES.length),
      "-a",
      "duration:20",
      "-l",
      "-n",
    ]
      .concat(["-T", "fields", "-E", "separator=,"])
      .concat(["-e", "ip.flags.df", "-e", "ip.id", "-e", "ip.ttl", "-e", "udp.srcport"])
      .concat(["-e", "udp.checksum", "-e", "udp.length"]),
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(30_000),
  }).spawn();
  const stdout = new Response(child.stdout).text();
  const stderr = child.stderr.getReader();
  const decoder = new TextDecoder();
  let err = "";
  const started = performance.now();
  while (!err.includes("Capturing on")) {
    if (performance.now() - started > 15_000) throw new Error(`tshark did not start: ${err}`);
    const chunk = await stderr.read();
    if (chunk.done) throw new Error(`tshark exited: ${err}`);
    err += decoder.decode(chunk.value);
  }
  // Keep draining stderr so tshark never blocks on it.
  const drained = (async () => {
    for (;;) if ((await stderr.read()).done) return;
  })();
  // tshark reports "Capturing on" a little before packets are really captured.
  await sleep(2000);
  const to = parseIpv4("127.0.92.16");
  using receiver = UdpTransport.open({ ip: to });
  for (const mode of MODES) {
    using t = UdpTransport.open({ ip: "127.0.92.15", mode });
    t.send(pattern(100, 1), { ip: to, port: 4791, sourcePort: 49441 });
    t.send(pattern(4112, 2), { ip: to, port: 4791, sourcePort: 53368 });
  }
  const status = await child.status;
  await drained;
  assert.equal(status.success, true, `tshark exit code ${status.code}`);
  const lines = (await stdout).trim().split("\n");
  assert.equal(lines.length, 2 * MODES.length, `tshark lines: ${lines.join(" | ")}`);
  for (const [i, line] of lines.entries()) {
    const [df, id, ttl, sport, checksum, length] = line.split(",");
    assert.ok(df === "1" || df === "True", `line ${i}: DF is ${df}`);
    assert.equal(Number(id), 0, `line ${i}: IPv4 ID ${id}`);
    assert.equal(Number(ttl), 64);
    assert.equal(Number(sport), i % 2 === 0 ? 49441 : 53368);
    assert.equal(Number(checksum), 0, `line ${i}: UDP checksum ${checksum}`);
    assert.equal(Number(length), 8 + (i % 2 === 0 ? 100 : 4112));
  }
  assert.equal(receiver.stats.received, 0, "not read yet; the datagrams wait in its socket");
});
