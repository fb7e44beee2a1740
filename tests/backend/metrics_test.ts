/**
 * The Prometheus endpoint (backend/metrics.ts): the text format itself, a
 * scrape of two hosts (127.0.0.38 and .39) after RDMA WRITEs between them
 * compared with `stats()` and `qpCounters()`, the option's edges, and the
 * CLI flag.
 */

import assert from "node:assert/strict";
import { Access, type Backend, openDevice, SendFlags, startBackend } from "../../mod.ts";
import { COUNTER_NAMES } from "../../backend/data_plane/stats.ts";
import {
  type CountersReport,
  DEVICE_COUNTERS,
  PORT_COUNTER_NAMES,
  portCounters,
  PROMETHEUS_CONTENT_TYPE,
  QP_COUNTERS,
  QP_STAT_NAMES,
  qpReport,
  renderPrometheus,
  snakeCase,
} from "../../backend/metrics.ts";
import { QP_COUNTER_NAMES } from "../../backend/adapter/qp_counters.ts";
import { Counters } from "../../backend/data_plane/stats.ts";
import { tempSocket } from "../helpers/backend.ts";

const IP_A = "127.0.0.38";
const IP_B = "127.0.0.39";

interface Sample {
  labels: Record<string, string>;
  value: number;
}

interface Family {
  help: string;
  type: string;
  samples: Sample[];
}

/**
 * A strict reader of the text format as this endpoint writes it: every
 * family has `# HELP` then `# TYPE` then its samples, no family twice, every
 * sample named as its family, label values unescaped. Throws on anything else.
 */
function parseExposition(text: string): Map<string, Family> {
  assert.ok(text.endsWith("\n"), "ends with a newline");
  const families = new Map<string, Family>();
  let current: { name: string; family: Family } | undefined;
  let help: { name: string; text: string } | undefined;
  const lines = text.slice(0, -1).split("\n");
  for (const [i, line] of lines.entries()) {
    const where = `line ${i + 1}: ${line}`;
    let m = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (m !== null) {
      assert.ok(!families.has(m[1]!), `family ${m[1]} twice (${where})`);
      help = { name: m[1]!, text: m[2]!.replace(/\\n/g, "\n").replace(/\\\\/g, "\\") };
      current = undefined;
      continue;
    }
    m = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge)$/.exec(line);
    if (m !== null) {
      assert.equal(help?.name, m[1], `TYPE right after its HELP (${where})`);
      const family = { help: help!.text, type: m[2]!, samples: [] };
      families.set(m[1]!, family);
      current = { name: m[1]!, family };
      help = undefined;
      continue;
    }
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)$/.exec(line);
    assert.ok(m !== null, `a sample (${where})`);
    assert.equal(m[1], current?.name, `sample of the family just declared (${where})`);
    const labels: Record<string, string> = {};
    if (m[2] !== undefined) {
      const body = m[2].slice(1, -1);
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/gy;
      let at = 0;
      for (let l = re.exec(body); l !== null; l = re.exec(body)) {
        labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
        at = re.lastIndex;
        if (at === body.length) break;
      }
      assert.equal(at, body.length, `labels parse (${where})`);
    }
    current!.family.samples.push({ labels, value: Number(m[3]) });
  }
  for (const [name, f] of families) assert.ok(f.samples.length > 0, `${name} has samples`);
  return families;
}

function only(families: Map<string, Family>, name: string): number {
  const f = families.get(name);
  assert.ok(f !== undefined, `family ${name}`);
  assert.equal(f.samples.length, 1, `${name}: one sample`);
  return f.samples[0]!.value;
}

function sampleReport(): CountersReport {
  const c = new Counters();
  c.add("qps", 2);
  c.add("udpPacketsSent", 1234);
  c.add("udpBytesSent", 99_000);
  c.add("seqNaksSent", 2);
  c.add("accessNaksSent", 1);
  c.add("rnrNaksReceived", 5);
  c.add("icrcErrors", 3);
  const device = c.snapshot();
  const counters = Object.fromEntries(QP_COUNTER_NAMES.map((n, i) => [n, i + 1])) as never;
  return {
    time: 0,
    host: { ip: "127.0.0.1", gid: 'odd "gid"\\\n', udpPort: 4791 },
    device,
    ports: [{ port: 1, counters: portCounters(device) }],
    qps: [17, 18].map((qpNum) =>
      qpReport({
        guest: 3,
        qpNum,
        qpHandle: qpNum - 16,
        qpType: "RC",
        state: "RTS",
        destQpNum: 40,
        dgid: "::ffff:127.0.0.2",
        counters,
      })
    ),
  };
}

Deno.test("renderPrometheus: HELP and TYPE per family, rxe names, labels escaped", () => {
  const report = sampleReport();
  const text = renderPrometheus(report);
  const f = parseExposition(text);
  // Every device counter, every port counter, every QP counter, and the info line.
  assert.equal(
    f.size,
    1 + COUNTER_NAMES.length + PORT_COUNTER_NAMES.length + QP_COUNTER_NAMES.length,
  );
  assert.deepEqual(f.get("vrdma_info")!.samples, [{
    labels: { ip: "127.0.0.1", gid: 'odd "gid"\\\n', udp_port: "4791" },
    value: 1,
  }]);
  assert.ok(text.includes('gid="odd \\"gid\\"\\\\\\n"'), "escaped as the format says");
  assert.equal(f.get("vrdma_device_qps")!.type, "gauge");
  assert.equal(only(f, "vrdma_device_qps"), 2);
  assert.equal(f.get("vrdma_device_udp_packets_sent_total")!.type, "counter");
  assert.equal(only(f, "vrdma_device_udp_packets_sent_total"), 1234);
  assert.equal(f.get("vrdma_device_icrc_errors_total")!.help, "Packets received with a bad ICRC");
  const port = (name: string) => {
    const fam = f.get(`vrdma_port_${name}_total`);
    assert.ok(fam !== undefined, name);
    assert.equal(fam.type, "counter");
    assert.deepEqual(fam.samples.map((s) => s.labels), [{ port: "1" }]);
    return fam;
  };
  assert.equal(port("sent_pkts").samples[0]!.value, 1234);
  assert.match(port("sent_pkts").help, /\(rxe: sent_pkts\)$/);
  assert.equal(port("sent_bytes").samples[0]!.value, 99_000);
  assert.doesNotMatch(port("sent_bytes").help, /rxe/, "no rxe counter of that name");
  assert.equal(port("send_seq_err").samples[0]!.value, 2);
  assert.equal(port("send_fatal_nak").samples[0]!.value, 1, "access NAKs are fatal NAKs");
  assert.equal(port("sent_naks").samples[0]!.value, 3);
  assert.equal(port("rcvd_rnr_err").samples[0]!.value, 5);
  assert.equal(port("rcvd_naks").samples[0]!.value, 5);
  assert.equal(port("rcvd_icrc_err").samples[0]!.value, 3);
  const sent = f.get("vrdma_qp_sent_pkts_total")!;
  assert.deepEqual(sent.samples, [
    { labels: { qpn: "17", guest: "3", type: "RC" }, value: 1 },
    { labels: { qpn: "18", guest: "3", type: "RC" }, value: 1 },
  ]);
  assert.equal(only(f, "vrdma_device_cq_overruns_total"), 0);
  for (const [i, key] of QP_COUNTER_NAMES.entries()) {
    const fam = f.get(`vrdma_qp_${QP_COUNTERS[key].name}_total`)!;
    assert.deepEqual(fam.samples.map((s) => s.value), [i + 1, i + 1], key);
  }
  assert.ok(f.has("vrdma_qp_local_ack_timeout_err_total"), "timeouts under mlx5's name");
  // No QPs: no per-QP families (a family without samples would be noise).
  const quiet = parseExposition(renderPrometheus({ ...report, qps: [] }));
  assert.equal([...quiet.keys()].filter((k) => k.startsWith("vrdma_qp_")).length, 0);
});

Deno.test("every counter has a name and help; port counters add up device counters", () => {
  for (const name of COUNTER_NAMES) {
    assert.ok(DEVICE_COUNTERS[name].help.length > 5, name);
    assert.match(snakeCase(name), /^[a-z][a-z_]*$/);
  }
  assert.equal(new Set(QP_STAT_NAMES).size, QP_STAT_NAMES.length, "QP names distinct");
  // Port and QP counters of the same meaning share a name.
  for (const n of QP_STAT_NAMES) {
    assert.ok((PORT_COUNTER_NAMES as readonly string[]).includes(n), `port has ${n}`);
  }
  const c = new Counters();
  for (const [i, n] of COUNTER_NAMES.entries()) c.add(n, i + 1);
  const d = c.snapshot();
  const p = portCounters(d);
  assert.equal(p.sent_pkts, d.udpPacketsSent);
  assert.equal(p.rcvd_bytes, d.udpBytesReceived);
  assert.equal(p.completer_retry_err, d.retransmits);
  assert.equal(p.duplicate_request, d.duplicateRequests);
  assert.equal(p.out_of_seq_request, d.outOfSequence);
  assert.equal(p.cq_overrun, d.cqOverruns);
  assert.equal(p.rcvd_naks, d.rnrNaksReceived + d.seqNaksReceived + d.fatalNaksReceived);
  assert.equal(p.sent_naks, d.rnrNaksSent + d.seqNaksSent + d.accessNaksSent + d.fatalNaksSent);
});

async function twoHosts(): Promise<[Backend, Backend]> {
  for (let attempt = 1;; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 40000);
    let a: Backend | undefined;
    try {
      const common = { port, logLevel: "silent" as const, metricsPort: 0 };
      a = await startBackend({ socket: tempSocket("metrics-a"), ip: IP_A, ...common });
      const b = await startBackend({ socket: tempSocket("metrics-b"), ip: IP_B, ...common });
      return [a, b];
    } catch (e) {
      await a?.close();
      if (attempt >= 5) throw e;
    }
  }
}

/** A guest with one RC QP, connected to `peer`'s by the caller. */
async function guest(host: Backend) {
  const dev = await openDevice({ socket: host.socket, memoryBytes: 2 << 20 });
  const pd = await dev.allocPd();
  const buf = dev.allocBuffer(256 * 1024, 4096);
  buf.bytes.fill(0);
  const mr = await pd.regMr(buf, Access.LOCAL_WRITE | Access.REMOTE_WRITE);
  const cq = await dev.createCq({ cqe: 32 });
  const qp = await pd.createQp({
    qpType: "RC",
    sendCq: cq,
    recvCq: cq,
    cap: { maxSendWr: 16, maxRecvWr: 1, maxSendSge: 1, maxRecvSge: 1, maxInlineData: 0 },
  });
  return { dev, mr, cq, qp, bytes: buf.bytes, gid: dev.queryGid(1, 0) };
}

/** Waits until neither host's packet counters moved for 150 ms (late ACKs). */
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

async function scrape(url: string): Promise<Map<string, Family>> {
  const res = await fetch(url);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), PROMETHEUS_CONTENT_TYPE);
  return parseExposition(await res.text());
}

Deno.test("a scrape after two-host RDMA WRITEs matches stats() and qpCounters()", async () => {
  const [hostA, hostB] = await twoHosts();
  const a = await guest(hostA);
  const b = await guest(hostB);
  try {
    await a.qp.connect({ qpNum: b.qp.qpNum, psn: b.qp.psn, gid: b.gid });
    await b.qp.connect({ qpNum: a.qp.qpNum, psn: a.qp.psn, gid: a.gid });
    a.bytes.subarray(0, 8192).fill(0x77);
    for (let i = 0; i < 4; i++) {
      a.qp.postSend({
        wrId: BigInt(i),
        opcode: "RDMA_WRITE",
        sendFlags: SendFlags.SIGNALED,
        sgList: [{ addr: a.mr.addr, length: 8192, lkey: a.mr.lkey }],
        rdma: { remoteAddr: b.mr.addr + BigInt(i * 8192), rkey: b.mr.rkey },
      });
    }
    for (let i = 0; i < 4; i++) assert.equal((await a.cq.next()).status, "SUCCESS");
    assert.ok(b.bytes.subarray(0, 4 * 8192).every((x) => x === 0x77), "the WRITEs arrived");
    await settle(hostA, hostB);

    for (const host of [hostA, hostB]) {
      assert.match(host.metricsUrl!, new RegExp(`^http://${host.ip}:\\d+/metrics$`));
      const f = await scrape(host.metricsUrl!);
      const stats = host.stats();
      for (const name of COUNTER_NAMES) {
        const metric = `vrdma_device_${snakeCase(name)}${
          DEVICE_COUNTERS[name].gauge ? "" : "_total"
        }`;
        assert.equal(only(f, metric), stats[name], metric);
      }
      const port = portCounters(stats);
      for (const name of PORT_COUNTER_NAMES) {
        const fam = f.get(`vrdma_port_${name}_total`)!;
        assert.deepEqual(fam.samples, [{ labels: { port: "1" }, value: port[name] }], name);
      }
      const rows = await host.qpCounters();
      assert.equal(rows.length, 1, "one QP used the wire");
      const row = rows[0]!;
      for (const key of QP_COUNTER_NAMES) {
        const fam = f.get(`vrdma_qp_${QP_COUNTERS[key].name}_total`)!;
        assert.deepEqual(fam.samples, [{
          labels: { qpn: String(row.qpNum), guest: String(row.guest), type: "RC" },
          value: row.counters[key],
        }], key);
      }
      assert.deepEqual(f.get("vrdma_info")!.samples[0]!.labels, {
        ip: host.ip,
        gid: host.gid,
        udp_port: String(host.port),
      });
    }
    const fa = await scrape(hostA.metricsUrl!);
    const fb = await scrape(hostB.metricsUrl!);
    // What flowed: A sent 8 data packets (8 KiB at qp.connect's MTU 4096, x4), B took them
    // all and answered.
    const sentA = fa.get("vrdma_port_sent_pkts_total")!.samples[0]!.value;
    assert.ok(sentA >= 8, `A sent ${sentA}`);
    assert.equal(fb.get("vrdma_port_rcvd_pkts_total")!.samples[0]!.value, sentA);
    assert.equal(
      fb.get("vrdma_port_rcvd_bytes_total")!.samples[0]!.value,
      fa.get("vrdma_port_sent_bytes_total")!.samples[0]!.value,
    );
    assert.ok(fa.get("vrdma_port_sent_bytes_total")!.samples[0]!.value > 4 * 8192);
    assert.ok(fb.get("vrdma_port_sent_acks_total")!.samples[0]!.value >= 1);
    assert.equal(
      fa.get("vrdma_qp_sent_pkts_total")!.samples[0]!.labels.qpn,
      String(a.qp.qpNum),
    );

    // Only /metrics, only GET and HEAD.
    const url = new URL(hostA.metricsUrl!);
    const root = await fetch(new URL("/", url));
    assert.equal(root.status, 404);
    assert.match(await root.text(), /try \/metrics/);
    const post = await fetch(url, { method: "POST", body: "x" });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get("allow"), "GET, HEAD");
    await post.body?.cancel();
    const head = await fetch(url, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(await head.text(), "");
  } finally {
    await a.dev.close();
    await b.dev.close();
    await hostA.close();
    await hostB.close();
  }
  await assert.rejects(fetch(hostA.metricsUrl!), TypeError, "closed with the backend");
});

Deno.test("metricsPort: off by default, checked, and a taken port fails startBackend cleanly", async () => {
  const port = 20000 + Math.floor(Math.random() * 40000);
  const plain = await startBackend({ socket: tempSocket("m"), ip: IP_A, port, logLevel: "silent" });
  assert.equal(plain.metricsUrl, undefined);
  await plain.close();
  await assert.rejects(
    startBackend({ socket: tempSocket("m"), ip: IP_A, port, metricsPort: 70000 }),
    (e) => e instanceof RangeError && /metricsPort 70000 is not in 0\.\.65535/.test(e.message),
  );
  const squatter = Deno.listen({ hostname: IP_A, port: 0 });
  const taken = (squatter.addr as Deno.NetAddr).port;
  const socket = tempSocket("m");
  try {
    await assert.rejects(
      startBackend({ socket, ip: IP_A, port, metricsPort: taken, logLevel: "silent" }),
      Deno.errors.AddrInUse,
    );
    await assert.rejects(Deno.stat(socket), Deno.errors.NotFound, "guest socket removed");
  } finally {
    squatter.close();
  }
  // Nothing was left bound: the same socket, UDP port and metrics port work now.
  const host = await startBackend({
    socket,
    ip: IP_A,
    port,
    metricsPort: taken,
    logLevel: "silent",
  });
  try {
    assert.equal(host.metricsUrl, `http://${IP_A}:${taken}/metrics`);
    const f = await scrape(host.metricsUrl!);
    assert.equal(only(f, "vrdma_device_guests"), 0);
  } finally {
    await host.close();
  }
});

Deno.test("backend/main.ts --metrics-port serves the counters and logs where", async () => {
  const socket = tempSocket("metrics-cli");
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--unstable-net",
      new URL("../../backend/main.ts", import.meta.url).pathname,
      "--socket",
      socket,
      "--ip",
      IP_B,
      "--port",
      String(20000 + Math.floor(Math.random() * 40000)),
      "--metrics-port",
      "0",
      "--log-level",
      "info",
    ],
    stdout: "null",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let log = "";
  let url: string | undefined;
  try {
    const deadline = Date.now() + 15_000;
    while (url === undefined && Date.now() < deadline) {
      const { value, done } = await reader.read();
      if (done) break;
      log += value;
      url = /counters for Prometheus at (http:\/\/\S+)/.exec(log)?.[1];
    }
    assert.ok(url !== undefined, `the URL is logged: ${log}`);
    assert.match(url, new RegExp(`^http://${IP_B.replaceAll(".", "\\.")}:\\d+/metrics$`));
    const f = await scrape(url);
    assert.equal(only(f, "vrdma_device_guests"), 0);
    assert.equal(f.get("vrdma_port_sent_pkts_total")!.samples[0]!.value, 0);
  } finally {
    child.kill("SIGTERM");
    const rest = (async () => {
      for (;;) if ((await reader.read()).done) break;
    })();
    assert.equal((await child.status).code, 0);
    await rest;
  }
  const help = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../../backend/main.ts", import.meta.url).pathname, "--help"],
  }).output();
  assert.match(new TextDecoder().decode(help.stdout), /--metrics-port N/);
});
