/**
 * `tools/stat.ts` end to end: two hosts (127.0.0.36 and .37, one random RoCE
 * port) carry RDMA WRITEs and a SEND that meets RNR NAKs; the tool, run as a
 * user runs it, reads host A over its management socket. Also the
 * management protocol itself: requests, and the old behaviour for a client
 * that sends nothing.
 */

import assert from "node:assert/strict";
import {
  Access,
  type Backend,
  type Cq,
  type Device,
  type Mr,
  openDevice,
  type Qp,
  SendFlags,
  startBackend,
  type WorkCompletion,
} from "../../mod.ts";
import { managementPath, readReport, readStats } from "../../backend/management.ts";
import { portCounters } from "../../backend/metrics.ts";
import { eventually, tempSocket } from "../helpers/backend.ts";

const STAT = new URL("../../tools/stat.ts", import.meta.url).pathname;
const IP_A = "127.0.0.36";
const IP_B = "127.0.0.37";

/** Runs the tool like a user; returns exit code and output. */
async function stat(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--unstable-net", STAT, ...args],
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
}

/** The tool running in the background: its first output, then the rest. */
function spawnStat(args: string[]): {
  first(): Promise<string>;
  done(): Promise<{ code: number; out: string; err: string }>;
} {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--unstable-net", STAT, ...args],
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const err = new Response(child.stderr).text();
  let out = "";
  return {
    async first() {
      const { value, done } = await reader.read();
      if (done) throw new Error(`stat ended without output: ${await err}`);
      out += value;
      return value;
    },
    async done() {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        out += value;
      }
      return { code: (await child.status).code, out, err: await err };
    },
  };
}

/** Two hosts on one random shared UDP port (drawn again when taken). */
async function twoHosts(): Promise<[Backend, Backend]> {
  for (let attempt = 1;; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 40000);
    let a: Backend | undefined;
    try {
      a = await startBackend({ socket: tempSocket("stat-a"), ip: IP_A, port, logLevel: "silent" });
      const b = await startBackend({
        socket: tempSocket("stat-b"),
        ip: IP_B,
        port,
        logLevel: "silent",
      });
      return [a, b];
    } catch (e) {
      await a?.close();
      if (attempt >= 5) throw e;
    }
  }
}

interface Side {
  host: Backend;
  dev: Device;
  qp: Qp;
  cq: Cq;
  mr: Mr;
  bytes: Uint8Array;
}

async function side(host: Backend): Promise<Side> {
  const dev = await openDevice({ socket: host.socket, memoryBytes: 4 << 20 });
  const pd = await dev.allocPd();
  const buf = dev.allocBuffer(1 << 20, 4096);
  buf.bytes.fill(0);
  const mr = await pd.regMr(buf, Access.LOCAL_WRITE | Access.REMOTE_WRITE);
  const cq = await dev.createCq({ cqe: 64 });
  const qp = await pd.createQp({
    qpType: "RC",
    sendCq: cq,
    recvCq: cq,
    cap: { maxSendWr: 32, maxRecvWr: 8, maxSendSge: 1, maxRecvSge: 1, maxInlineData: 0 },
  });
  return { host, dev, qp, cq, mr, bytes: buf.bytes };
}

async function connect(s: Side, peer: Side): Promise<void> {
  await s.qp.modify({
    qpState: "INIT",
    pkeyIndex: 0,
    portNum: 1,
    qpAccessFlags: Access.REMOTE_WRITE,
  });
  await s.qp.modify({
    qpState: "RTR",
    pathMtu: 1024,
    destQpNum: peer.qp.qpNum,
    rqPsn: peer.qp.psn,
    maxDestRdAtomic: 1,
    minRnrTimer: 14, // 1.28 ms between tries while the receive is late
    ahAttr: { dgid: peer.dev.queryGid(1, 0), portNum: 1 },
  });
  await s.qp.modify({
    qpState: "RTS",
    sqPsn: s.qp.psn,
    timeout: 14,
    retryCnt: 7,
    rnrRetry: 7,
    maxRdAtomic: 1,
  });
}

async function nextWc(cq: Cq, what: string): Promise<WorkCompletion> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      cq.next(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no completion for ${what} in 5 s`)), 5000);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

const WRITES = 8;
const WRITE_BYTES = 16384;

/**
 * Host A's guest writes 8 x 16 KiB into B's guest (16 packets each at MTU
 * 1024), then SENDs 100 bytes that B receives only after it sent an RNR
 * NAK for it. Checks the bytes that arrived.
 */
async function traffic(a: Side, b: Side): Promise<void> {
  a.bytes.subarray(0, WRITE_BYTES).fill(0x5a);
  for (let i = 0; i < WRITES; i++) {
    a.qp.postSend({
      wrId: BigInt(i),
      opcode: "RDMA_WRITE",
      sendFlags: SendFlags.SIGNALED,
      sgList: [{ addr: a.mr.addr, length: WRITE_BYTES, lkey: a.mr.lkey }],
      rdma: { remoteAddr: b.mr.addr + BigInt(i * WRITE_BYTES), rkey: b.mr.rkey },
    });
  }
  for (let i = 0; i < WRITES; i++) {
    const wc = await nextWc(a.cq, `WRITE ${i}`);
    assert.equal(wc.status, "SUCCESS", `WRITE ${wc.wrId}`);
  }
  assert.ok(b.bytes.subarray(0, WRITES * WRITE_BYTES).every((x) => x === 0x5a), "WRITE data");
  a.bytes.subarray(0, 100).fill(0x33);
  a.qp.postSend({
    wrId: 100n,
    opcode: "SEND",
    sendFlags: SendFlags.SIGNALED,
    sgList: [{ addr: a.mr.addr, length: 100, lkey: a.mr.lkey }],
  });
  // B posts its receive only once it has refused the SEND at least once.
  const refused = b.host.stats().rnrNaksSent;
  assert.ok(
    await eventually(() => b.host.stats().rnrNaksSent > refused, 5000),
    "an RNR NAK for the SEND",
  );
  const at = 512 * 1024;
  b.qp.postRecv({
    wrId: 7n,
    sgList: [{ addr: b.mr.addr + BigInt(at), length: 4096, lkey: b.mr.lkey }],
  });
  const sent = await nextWc(a.cq, "SEND");
  assert.equal(sent.status, "SUCCESS");
  const got = await nextWc(b.cq, "RECV");
  assert.equal(got.status, "SUCCESS");
  assert.equal(got.byteLen, 100);
  assert.ok(b.bytes.subarray(at, at + 100).every((x) => x === 0x33), "SEND data");
}

/**
 * Waits until neither host's packet counters moved for 150 ms: a late ACK
 * (for a retransmitted SEND, say) may still be on its way when the WRs have
 * completed.
 */
async function settle(...hosts: Backend[]): Promise<void> {
  const look = () =>
    JSON.stringify(hosts.map((h) => [h.stats().udpPacketsSent, h.stats().udpPacketsReceived]));
  let last = look();
  for (let quiet = 0; quiet < 3;) {
    await new Promise((r) => setTimeout(r, 50));
    const now = look();
    quiet = now === last ? quiet + 1 : 0;
    last = now;
  }
}

/** `name value` pairs of one section of stat's table output (the lines after `title`). */
function section(text: string, title: RegExp): Map<string, number> {
  const blocks = text.split("\n\n");
  const block = blocks.find((b) => title.test(b.split("\n")[0]!));
  assert.ok(block !== undefined, `a section ${title} in:\n${text}`);
  const values = new Map<string, number>();
  for (const line of block.split("\n").slice(1)) {
    for (const m of line.matchAll(/([a-z_]+) +(\d+)/g)) values.set(m[1]!, Number(m[2]));
  }
  return values;
}

Deno.test("stat shows port, device and per-QP counters of a backend with two-host traffic", async (t) => {
  const [hostA, hostB] = await twoHosts();
  const a = await side(hostA);
  const b = await side(hostB);
  try {
    await connect(a, b);
    await connect(b, a);
    await traffic(a, b);
    await settle(hostA, hostB);
    const stats = hostA.stats();
    assert.ok(stats.udpPacketsSent >= WRITES * 16 + 1, `packets sent ${stats.udpPacketsSent}`);

    await t.step("the table: link, device and QP sections", async () => {
      const r = await stat(["--socket", hostA.socket]);
      assert.equal(r.code, 0, r.err);
      assert.match(r.out, new RegExp(`^backend ${IP_A} +gid ::ffff:${IP_A} +RoCEv2 udp/\\d+`));
      const port = section(r.out, /^link vrdma0\/1$/);
      assert.equal(port.get("sent_pkts"), stats.udpPacketsSent);
      assert.equal(port.get("rcvd_pkts"), stats.udpPacketsReceived);
      assert.equal(port.get("sent_bytes"), stats.udpBytesSent);
      assert.ok(port.get("sent_bytes")! > WRITES * WRITE_BYTES, `bytes ${port.get("sent_bytes")}`);
      assert.ok(port.get("rcvd_pkts")! > 0);
      assert.ok(port.get("rcvd_rnr_err")! >= 1, "the late receive cost RNR NAKs");
      assert.equal(port.get("rcvd_naks"), port.get("rcvd_rnr_err"));
      assert.equal(port.get("rcvd_icrc_err"), 0);
      assert.equal(port.get("retry_exceeded_err"), 0);
      assert.equal(port.get("ack_deferred"), undefined, "no made-up rxe counters");
      const device = section(r.out, /^device$/);
      assert.equal(device.get("qps"), 1);
      assert.equal(device.get("udp_packets_sent"), stats.udpPacketsSent);
      assert.equal(device.size, Object.keys(stats).length, "every device counter shown");
      const qp = section(r.out, new RegExp(`^qp ${a.qp.qpNum} guest \\d+ handle \\d+ RC RTS`));
      assert.match(r.out, new RegExp(`-> qp ${b.qp.qpNum} at ::ffff:${IP_B}`));
      assert.equal(qp.get("sent_pkts"), stats.udpPacketsSent, "one QP sent everything");
      assert.ok(qp.get("sent_bytes")! > WRITES * WRITE_BYTES);
      assert.ok(qp.get("rcvd_rnr_err")! >= 1);
      assert.equal(qp.get("duplicate_request"), 0);
    });

    await t.step("--json parses and says the same as the backend", async () => {
      const r = await stat(["--socket", hostA.socket, "--json"]);
      assert.equal(r.code, 0, r.err);
      assert.equal(r.out.trim().split("\n").length, 1, "one JSON object");
      const report = JSON.parse(r.out);
      assert.deepEqual(report.host, { ip: IP_A, gid: `::ffff:${IP_A}`, udpPort: hostA.port });
      assert.equal(report.device.udpPacketsSent, stats.udpPacketsSent);
      assert.equal(report.device.udpBytesReceived, stats.udpBytesReceived);
      assert.deepEqual(report.ports, [{ port: 1, counters: portCounters(hostA.stats()) }]);
      assert.equal(report.qps.length, 1);
      const row = report.qps[0];
      assert.equal(row.qpNum, a.qp.qpNum);
      assert.equal(row.destQpNum, b.qp.qpNum);
      assert.equal(row.dgid, `::ffff:${IP_B}`);
      assert.equal(row.qpType, "RC");
      const [mine] = await hostA.qpCounters();
      assert.equal(row.guest, mine!.guest);
      assert.equal(row.counters.sent_pkts, mine!.counters.sentPkts);
      assert.equal(row.counters.rcvd_rnr_err, mine!.counters.rcvdRnrErr);
      // Host B's side of the same traffic: it received the data and sent the RNR NAKs.
      const bReport = await readReport(hostB.socket);
      assert.equal(bReport.ports[0]!.counters.rcvd_pkts, stats.udpPacketsSent);
      assert.equal(bReport.ports[0]!.counters.rcvd_bytes, stats.udpBytesSent);
      assert.ok(bReport.ports[0]!.counters.send_rnr_err >= 1);
      assert.equal(bReport.qps[0]!.qpNum, b.qp.qpNum);
    });

    await t.step("--qp N shows that QP only; an unknown QP exits 1", async () => {
      const r = await stat(["--socket", hostA.socket, "--qp", String(a.qp.qpNum)]);
      assert.equal(r.code, 0, r.err);
      assert.doesNotMatch(r.out, /^link /m);
      assert.doesNotMatch(r.out, /^device$/m);
      assert.equal(
        section(r.out, new RegExp(`^qp ${a.qp.qpNum} `)).get("sent_pkts"),
        stats.udpPacketsSent,
      );
      const none = await stat(["--socket", hostA.socket, "--qp", "4242"]);
      assert.equal(none.code, 1);
      assert.match(none.err, /qp 4242 has no counters/);
      const json = await stat(["--socket", hostA.socket, "--qp", "4242", "--json"]);
      assert.deepEqual(JSON.parse(json.out).qps, []);
    });

    await t.step("--watch refreshes with rates: traffic between two readings shows", async () => {
      const watching = spawnStat(["--socket", hostA.socket, "--watch", "1", "--count", "2"]);
      const first = await watching.first();
      assert.match(first, /^backend /);
      const sentBefore = hostA.stats().udpPacketsSent;
      await traffic(a, b); // well inside the second
      await settle(hostA, hostB);
      const sentDuring = hostA.stats().udpPacketsSent - sentBefore;
      const r = await watching.done();
      assert.equal(r.code, 0, r.err);
      const headers = r.out.split("\n").filter((l) => l.startsWith("backend "));
      assert.equal(headers.length, 2, r.out);
      assert.doesNotMatch(headers[0]!, /rates/);
      const over = /\(rates over (\d+\.\d) s\)/.exec(headers[1]!);
      assert.ok(over !== null, headers[1]);
      const second = r.out.slice(r.out.lastIndexOf("backend "));
      const rate = /^ {2}sent_pkts +(\d+) +(\d+(?:\.\d)?)\/s/m.exec(second);
      assert.ok(rate !== null, second);
      // The tool rounds the interval to 0.1 s for display: allow for that.
      const expected = sentDuring / Number(over[1]);
      assert.ok(
        Math.abs(Number(rate[2]) - expected) <= expected * 0.1 + 1,
        `sent_pkts rate ${rate[2]}/s, expected about ${expected.toFixed(0)}/s`,
      );
      assert.match(second, /^ {2}guests +1 {2,}/m, "gauges have no rate");
    });

    await t.step(
      "--watch --json prints one object per reading, rates from the second",
      async () => {
        const r = await stat([
          "--socket",
          hostA.socket,
          "--watch",
          "0.2",
          "--count",
          "2",
          "--json",
        ]);
        assert.equal(r.code, 0, r.err);
        const lines = r.out.trim().split("\n").map((l) => JSON.parse(l));
        assert.equal(lines.length, 2);
        assert.equal(lines[0].rates, undefined);
        assert.ok(
          lines[1].rates.seconds > 0.1 && lines[1].rates.seconds < 2,
          lines[1].rates.seconds,
        );
        assert.equal(lines[1].rates.ports[0].counters.sent_pkts, 0, "no traffic: no rate");
        assert.equal(lines[1].rates.device.guests, undefined, "gauges have no rate");
        assert.equal(lines[1].rates.qps[0].qpNum, a.qp.qpNum);
      },
    );
  } finally {
    await a.dev.close();
    await b.dev.close();
    await hostA.close();
    await hostB.close();
  }
});

Deno.test("stat: bad arguments exit 2 with the reason; no backend exits 1", async () => {
  for (
    const [args, why] of [
      [["--watch", "0"], /--watch 0 is not a positive number/],
      [["--watch", "x"], /--watch x is not a positive number/],
      [["--count", "2"], /--count needs --watch/],
      [["--qp", "1x"], /--qp 1x is not a QP number/],
      [["--qp", "16777216"], /--qp 16777216 is not a QP number/],
      [["--bogus"], /bogus/],
    ] as const
  ) {
    const r = await stat([...args]);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.err}`);
    assert.match(r.err, why);
    assert.match(r.err, /Usage:/);
  }
  const help = await stat(["--help"]);
  assert.equal(help.code, 0);
  for (const flag of ["--socket", "--json", "--watch", "--count", "--qp"]) {
    assert.ok(help.out.includes(flag), `help mentions ${flag}`);
  }
  const socket = tempSocket("nobody");
  const r = await stat(["--socket", socket]);
  assert.equal(r.code, 1);
  assert.ok(r.err.includes(`cannot read ${managementPath(socket)}`), r.err);
});

// The management protocol (backend/management.ts), which stat speaks.

async function rawExchange(
  socket: string,
  send: string | null,
  options: { closeWrite: boolean },
): Promise<{ text: string; ms: number }> {
  const t0 = performance.now();
  const conn = await Deno.connect({ transport: "unix", path: managementPath(socket) });
  if (send !== null) await conn.write(new TextEncoder().encode(send));
  if (options.closeWrite) await conn.closeWrite();
  const text = await new Response(conn.readable).text();
  return { text, ms: performance.now() - t0 };
}

Deno.test("management socket: requests, and the stats line for a client that sends nothing", async () => {
  const host = await startBackend({
    socket: tempSocket("mgmt"),
    ip: IP_A,
    port: 20000 + Math.floor(Math.random() * 40000),
    logLevel: "silent",
  });
  try {
    const silent = await rawExchange(host.socket, null, { closeWrite: false });
    assert.deepEqual(JSON.parse(silent.text), host.stats(), "silent client: the stats line");
    assert.ok(silent.text.endsWith("}\n") && silent.text.split("\n").length === 2);
    assert.ok(silent.ms >= 90, `answered after the silence (${silent.ms} ms)`);

    const shut = await rawExchange(host.socket, null, { closeWrite: true });
    assert.deepEqual(JSON.parse(shut.text), host.stats(), "a client that shuts down its side");

    const all = await rawExchange(host.socket, '{"want":"all"}', { closeWrite: true });
    const report = JSON.parse(all.text);
    assert.deepEqual(report.device, host.stats(), "a request without its newline, then EOF");
    assert.deepEqual(report.qps, []);
    assert.equal(report.ports[0].counters.sent_pkts, 0);

    const stats = await rawExchange(host.socket, '{"want":"stats"}\n', { closeWrite: false });
    assert.deepEqual(JSON.parse(stats.text), host.stats());

    for (
      const [bad, why] of [
        ['{"want":"everything"}\n', /wants "everything"; "stats" or "all" expected/],
        ["hello\n", /request "hello" is not JSON/],
        ["[1]\n", /wants undefined/],
      ] as const
    ) {
      const r = await rawExchange(host.socket, bad, { closeWrite: false });
      assert.match(JSON.parse(r.text).error, why);
    }
    const long = await rawExchange(host.socket, "x".repeat(5000) + "\n", { closeWrite: false });
    assert.match(JSON.parse(long.text).error, /longer than 4096 bytes/);

    assert.deepEqual(await readStats(host.socket), host.stats());
    assert.deepEqual((await readReport(host.socket)).device, host.stats());
  } finally {
    await host.close();
  }
  await assert.rejects(Deno.stat(managementPath(host.socket)), Deno.errors.NotFound);
});
