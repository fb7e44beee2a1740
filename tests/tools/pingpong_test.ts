/**
 * tools/pingpong.ts: the wire format and printed lines against rdma-core's,
 * then whole runs as a user makes them: a server and a client process on two
 * hosts (backends on 127.0.0.32 and 127.0.0.33 sharing a random RoCE port),
 * RC at 4 KiB, 1 B and 64 KiB with data validation, CQ events, UD, and
 * runs against peers played by this test (a fake server whose QP does not
 * exist, an echo server that corrupts the data).
 */

import assert from "node:assert/strict";
import { type Backend, startBackend } from "../../mod.ts";
import { parseGid } from "../../protocol/device_config.ts";
import { tempSocket } from "../helpers/backend.ts";
import { parsePingpongArgs, type PingpongOptions } from "../../tools/common/pingpong_args.ts";
import {
  CHECK_PAGE_BYTES,
  FILL_BYTE,
  invalidPages,
  markPages,
} from "../../tools/common/pingpong_check.ts";
import { PingpongContext, RECV_WRID, SEND_WRID } from "../../tools/common/pingpong_context.ts";
import { ExchangeServer } from "../../tools/common/pingpong_exchange.ts";
import {
  formatAddress,
  formatFailedStatus,
  formatSummary,
  wcStatusText,
} from "../../tools/common/pingpong_format.ts";
import {
  decodeDest,
  DEST_MESSAGE_BYTES,
  encodeDest,
  gidToWire,
  inetNtop6,
  isNullGid,
  wireToGid,
} from "../../tools/common/pingpong_wire.ts";

const TOOL = new URL("../../tools/pingpong.ts", import.meta.url).pathname;
const IP_A = "127.0.0.32";
const IP_B = "127.0.0.33";

// ---------------------------------------------------------------------------
// Formats
// ---------------------------------------------------------------------------

Deno.test("address message: the interop README's example, byte for byte, both ways", () => {
  const text = "0000:000011:214fec:00000000000000000000ffff0a630003\0";
  assert.equal(text.length, DEST_MESSAGE_BYTES);
  const msg = encodeDest({ lid: 0, qpn: 0x11, psn: 0x214fec, gid: parseGid("::ffff:10.99.0.3") });
  assert.deepEqual(msg, new TextEncoder().encode(text));
  const back = decodeDest(msg);
  assert.deepEqual(
    { lid: back.lid, qpn: back.qpn, psn: back.psn, gid: inetNtop6(back.gid) },
    { lid: 0, qpn: 0x11, psn: 0x214fec, gid: "::ffff:10.99.0.3" },
  );
});

Deno.test("address message: field widths, the largest values and uppercase input", () => {
  const gid = parseGid("fe80::5054:ff:fe99:2");
  const msg = encodeDest({ lid: 0xffff, qpn: 0xffffff, psn: 0xabcdef, gid });
  assert.equal(
    new TextDecoder().decode(msg),
    "ffff:ffffff:abcdef:fe80000000000000505400fffe990002\0",
  );
  const upper = new TextEncoder().encode("0001:00ABCD:000000:FE80000000000000505400FFFE990002\0");
  const d = decodeDest(upper);
  assert.equal(d.lid, 1);
  assert.equal(d.qpn, 0xabcd);
  assert.deepEqual(d.gid, gid);
  assert.throws(
    () => encodeDest({ lid: 0, qpn: 0x1000000, psn: 0, gid }),
    (e) => e instanceof RangeError && /qpn 16777216 is not in 0..0xffffff/.test(e.message),
  );
});

Deno.test("address message: malformed input is a SyntaxError quoting it", () => {
  const bad = [
    "0000:000011:214fec\0",
    "0000:000011:214fec:00000000000000000000ffff0a63000\0",
    "0000:00001g:214fec:00000000000000000000ffff0a630003\0",
    "done\0",
  ];
  for (const text of bad) {
    assert.throws(
      () => decodeDest(new TextEncoder().encode(text)),
      (e) => e instanceof SyntaxError && e.message.includes(JSON.stringify(text.replace("\0", ""))),
      text,
    );
  }
  assert.throws(() => wireToGid("xyz"), SyntaxError);
});

Deno.test("GIDs: wire hex, null test, and inet_ntop's text for every shape", () => {
  assert.equal(gidToWire(parseGid("::ffff:127.0.0.2")), "00000000000000000000ffff7f000002");
  assert.equal(isNullGid(new Uint8Array(16)), true);
  assert.equal(isNullGid(parseGid("fe80::")), true, "interface id zero: rdma-core sends no GRH");
  assert.equal(isNullGid(parseGid("::ffff:10.0.0.1")), false);
  const cases: [string, string][] = [
    ["::", "::"],
    ["::1", "::1"],
    ["::ffff:10.99.0.2", "::ffff:10.99.0.2"],
    ["::10.1.2.3", "::10.1.2.3"],
    ["fe80::5054:ff:fe99:2", "fe80::5054:ff:fe99:2"],
    ["1:0:0:2:0:0:0:3", "1:0:0:2::3"],
    ["1:0:0:2:0:0:3:4", "1::2:0:0:3:4"],
    ["1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"],
    ["1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"],
    ["1::", "1::"],
  ];
  for (const [input, text] of cases) assert.equal(inetNtop6(parseGid(input)), text, input);
});

Deno.test("printed lines: address lines (UD's colon), summary, failed status", () => {
  const dest = { lid: 0, qpn: 0x11, psn: 0x1a2b3c, gid: parseGid("::ffff:127.0.0.2") };
  assert.equal(
    formatAddress("local", dest),
    "  local address:  LID 0x0000, QPN 0x000011, PSN 0x1a2b3c, GID ::ffff:127.0.0.2",
  );
  assert.equal(
    formatAddress("local", dest, { ud: true }),
    "  local address:  LID 0x0000, QPN 0x000011, PSN 0x1a2b3c: GID ::ffff:127.0.0.2",
  );
  assert.equal(
    formatAddress("remote", dest, { ud: true }),
    "  remote address: LID 0x0000, QPN 0x000011, PSN 0x1a2b3c, GID ::ffff:127.0.0.2",
  );
  assert.deepEqual(formatSummary({ size: 4096, iters: 1000, usec: 50_000 }), [
    "8192000 bytes in 0.05 seconds = 1310.72 Mbit/sec",
    "1000 iters in 0.05 seconds = 50.00 usec/iter",
  ]);
  assert.deepEqual(formatSummary({ size: 1, iters: 3, usec: 1_234_567.8 }), [
    "6 bytes in 1.23 seconds = 0.00 Mbit/sec",
    "3 iters in 1.23 seconds = 411522.59 usec/iter",
  ]);
  assert.equal(
    formatFailedStatus("RETRY_EXC_ERR", 2n),
    "Failed status transport retry counter exceeded (12) for wr_id 2",
  );
  assert.equal(
    formatFailedStatus("WR_FLUSH_ERR", 1n),
    "Failed status Work Request Flushed Error (5) for wr_id 1",
  );
  assert.equal(wcStatusText("RNR_RETRY_EXC_ERR"), "RNR retry counter exceeded");
});

Deno.test("arguments: rdma-core's defaults, UD's size, flags and refusals", () => {
  const rc = parsePingpongArgs([]);
  assert.equal(rc.kind, "run");
  if (rc.kind !== "run") return;
  assert.deepEqual(
    rc.options,
    {
      server: undefined,
      port: 18515,
      ibDev: undefined,
      ibPort: 1,
      size: 4096,
      mtu: 1024,
      rxDepth: 500,
      iters: 1000,
      sl: 0,
      events: false,
      gidIdx: 0,
      check: false,
      ud: false,
      socket: "vrdma.sock",
    } satisfies PingpongOptions,
  );
  const ud = parsePingpongArgs(["--ud", "-e", "-c", "-p", "0x4000", "-g1", "host"]);
  assert.equal(ud.kind, "run");
  if (ud.kind !== "run") return;
  assert.equal(ud.options.size, 1024);
  assert.equal(ud.options.port, 0x4000);
  assert.equal(ud.options.gidIdx, 1);
  assert.equal(ud.options.server, "host");
  assert.ok(ud.options.events && ud.options.check && ud.options.ud);
  for (
    const [args, why] of [
      [["-m", "1000"], /--mtu 1000 is not one of 256, 512, 1024, 2048, 4096/],
      [["-p", "70000"], /--port 70000 is above 65535/],
      [["-s", "12k"], /--size "12k" is not a number/],
      [["-s", "0"], /--size 0 is not in/],
      [["a", "b"], /one server host at most/],
      [["-o"], /Unknown option '-o'/],
    ] as const
  ) {
    const r = parsePingpongArgs(args);
    assert.equal(r.kind, "usage", args.join(" "));
    if (r.kind === "usage") assert.match(r.error ?? "", why);
  }
  assert.deepEqual(parsePingpongArgs(["--help"]), { kind: "usage", error: undefined });
});

Deno.test("validation: rdma-core's page marks; a page with any wrong byte is reported", () => {
  const m = new Uint8Array(3 * CHECK_PAGE_BYTES + 10).fill(FILL_BYTE);
  assert.deepEqual(invalidPages(m), [0, 1, 2, 3], "unmarked: rdma-core's check fails too");
  markPages(m);
  assert.equal(m[0], 0);
  assert.equal(m[CHECK_PAGE_BYTES], 0);
  assert.equal(m[CHECK_PAGE_BYTES + 1], FILL_BYTE);
  assert.deepEqual(invalidPages(m), []);
  m[2 * CHECK_PAGE_BYTES + 7] = FILL_BYTE ^ 1;
  m[3 * CHECK_PAGE_BYTES + 9] = 0;
  assert.deepEqual(invalidPages(m), [2, 3]);
  assert.deepEqual(invalidPages(new Uint8Array([0])), []);
});

// ---------------------------------------------------------------------------
// Whole runs
// ---------------------------------------------------------------------------

/** A tool process with its stdout kept line by line. */
class ToolProcess {
  readonly #child: Deno.ChildProcess;
  readonly #lines: string[] = [];
  readonly #waiters: { re: RegExp; resolve: (line: string) => void }[] = [];
  readonly #stdout: Promise<void>;
  readonly #stderr: Promise<string>;
  readonly #timer: ReturnType<typeof setTimeout>;
  #killed = false;

  constructor(args: string[], timeoutMs = 60_000) {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--unstable-net", TOOL, ...args],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    this.#stdout = (async () => {
      let rest = "";
      for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
        rest += chunk;
        const parts = rest.split("\n");
        rest = parts.pop()!;
        for (const line of parts) this.#line(line);
      }
      if (rest !== "") this.#line(rest);
    })();
    this.#stderr = new Response(this.#child.stderr).text();
    this.#timer = setTimeout(() => {
      this.#killed = true;
      this.#child.kill("SIGKILL");
    }, timeoutMs);
  }

  #line(line: string): void {
    this.#lines.push(line);
    for (const w of this.#waiters.splice(0)) {
      if (w.re.test(line)) w.resolve(line);
      else this.#waiters.push(w);
    }
  }

  /** Resolves with the first stdout line matching `re` (or rejects when the process ends first). */
  async line(re: RegExp): Promise<string> {
    const seen = this.#lines.find((l) => re.test(l));
    if (seen !== undefined) return seen;
    const found = new Promise<string>((resolve) => this.#waiters.push({ re, resolve }));
    const ended = this.#stdout.then(async () => {
      const r = await this.result();
      throw new Error(
        `tool ended (code ${r.code}) without a line matching ${re}:\n${r.stdout}\n${r.stderr}`,
      );
    });
    // Only the race may see this rejection; once a line was found nobody waits for it.
    ended.catch(() => {});
    return await Promise.race([found, ended]);
  }

  /** Waits for the exit; stdout and stderr in full. */
  async result(): Promise<{ code: number; stdout: string; stderr: string }> {
    const status = await this.#child.status;
    clearTimeout(this.#timer);
    await this.#stdout;
    const stderr = await this.#stderr;
    if (this.#killed) {
      throw new Error(`tool killed after its timeout:\n${this.#lines.join("\n")}\n${stderr}`);
    }
    return { code: status.code, stdout: this.#lines.join("\n"), stderr };
  }
}

/** A TCP port nobody listens on right now. */
function freeTcpPort(): number {
  const l = Deno.listen({ hostname: "0.0.0.0", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

async function startHosts(): Promise<[Backend, Backend]> {
  for (let attempt = 1;; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 40000);
    const started = await Promise.allSettled(
      [IP_A, IP_B].map((ip) =>
        startBackend({ socket: tempSocket(`pingpong-${ip}`), ip, port, logLevel: "silent" })
      ),
    );
    const [a, b] = started.map((r) => r.status === "fulfilled" ? r.value : undefined);
    if (a && b) return [a, b];
    await Promise.all([a?.close(), b?.close()]);
    if (attempt >= 5) {
      throw (started.find((r) => r.status === "rejected") as PromiseRejectedResult).reason;
    }
  }
}

interface Parsed {
  local: { qpn: number; psn: number; gid: string };
  remote: { qpn: number; psn: number; gid: string };
  bytes: number;
  iters: number;
}

const ADDRESS = (side: string, sep: string) =>
  new RegExp(
    `^  ${side} address: ${
      side === "local" ? " " : ""
    }LID 0x0000, QPN 0x([0-9a-f]{6}), PSN 0x([0-9a-f]{6})${sep} GID (\\S+)$`,
  );

/** Checks the four lines of a successful run and returns their values. */
function parseRun(stdout: string, o: { ud?: boolean; size: number; iters: number }): Parsed {
  const lines = stdout.split("\n");
  assert.equal(lines.length, 4, stdout);
  const local = ADDRESS("local", o.ud ? ":" : ",").exec(lines[0]!);
  const remote = ADDRESS("remote", ",").exec(lines[1]!);
  assert.ok(local && remote, stdout);
  const bw = /^(\d+) bytes in (\d+\.\d\d) seconds = (\d+\.\d\d) Mbit\/sec$/.exec(lines[2]!);
  const lat = /^(\d+) iters in (\d+\.\d\d) seconds = (\d+\.\d\d) usec\/iter$/.exec(lines[3]!);
  assert.ok(bw && lat, stdout);
  assert.equal(Number(bw[1]), o.size * o.iters * 2);
  assert.equal(Number(lat[1]), o.iters);
  assert.equal(bw[2], lat[2], "both lines report the same elapsed time");
  // Mbit/sec and usec/iter come from the same elapsed time.
  const usec = Number(lat[3]) * o.iters;
  const mbit = (o.size * o.iters * 2 * 8) / usec;
  assert.ok(Math.abs(mbit - Number(bw[3])) <= Math.max(0.02, mbit * 0.01), stdout);
  const dest = (m: RegExpExecArray) => ({
    qpn: parseInt(m[1]!, 16),
    psn: parseInt(m[2]!, 16),
    gid: m[3]!,
  });
  return { local: dest(local), remote: dest(remote), bytes: Number(bw[1]), iters: Number(lat[1]) };
}

/** Runs a server on `serverHost` and a client on `clientHost`; checks both outputs. */
async function pingpong(
  serverHost: Backend,
  clientHost: Backend,
  o: { args: string[]; size: number; iters: number; ud?: boolean },
): Promise<{ server: Parsed; client: Parsed }> {
  const port = String(freeTcpPort());
  const server = new ToolProcess(["--socket", serverHost.socket, "-p", port, ...o.args]);
  await server.line(/local address/);
  const client = new ToolProcess([
    "--socket",
    clientHost.socket,
    "-p",
    port,
    ...o.args,
    "127.0.0.1",
  ]);
  const [s, c] = await Promise.all([server.result(), client.result()]);
  assert.equal(s.code, 0, `server:\n${s.stdout}\n${s.stderr}`);
  assert.equal(c.code, 0, `client:\n${c.stdout}\n${c.stderr}`);
  assert.equal(s.stderr, "");
  assert.equal(c.stderr, "");
  const sp = parseRun(s.stdout, o);
  const cp = parseRun(c.stdout, o);
  // What each printed as its own address is what the other printed as remote.
  assert.deepEqual(sp.local, cp.remote);
  assert.deepEqual(cp.local, sp.remote);
  assert.equal(sp.local.gid, serverHost.gid);
  assert.equal(cp.local.gid, clientHost.gid);
  return { server: sp, client: cp };
}

Deno.test("pingpong: server and client processes on two hosts", async (t) => {
  const [a, b] = await startHosts();
  try {
    const udp = () => ({ a: a.stats().udpPacketsSent, b: b.stats().udpPacketsSent });
    await t.step("RC, 4 KiB (the default size), validated", async () => {
      const before = udp();
      await pingpong(a, b, { args: ["-n", "200", "-c"], size: 4096, iters: 200 });
      const after = udp();
      // 4 KiB at the 1024-byte path MTU: 4 packets a message, 200 messages each way.
      assert.ok(after.a - before.a >= 800, `host A sent ${after.a - before.a} RoCE packets`);
      assert.ok(after.b - before.b >= 800, `host B sent ${after.b - before.b} RoCE packets`);
    });
    await t.step("RC, 1 byte, validated", async () => {
      await pingpong(a, b, { args: ["-s", "1", "-n", "100", "-c"], size: 1, iters: 100 });
    });
    await t.step("RC, 64 KiB at MTU 4096, validated", async () => {
      const r = await pingpong(a, b, {
        args: ["-s", "65536", "-m", "4096", "-n", "30", "-c"],
        size: 65536,
        iters: 30,
      });
      assert.equal(r.client.bytes, 65536 * 30 * 2);
    });
    await t.step("RC, CQ events (-e), client on the server's host", async () => {
      await pingpong(a, a, { args: ["-e", "-s", "256", "-n", "50"], size: 256, iters: 50 });
    });
    await t.step("UD (--ud): GRH receives, Q_Key 0x11111111, validated", async () => {
      const before = udp();
      await pingpong(b, a, { args: ["--ud", "-n", "100", "-c"], size: 1024, iters: 100, ud: true });
      assert.ok(udp().a - before.a >= 100 && udp().b - before.b >= 100);
    });
    await t.step("UD refuses a message larger than the port MTU, as rdma-core", async () => {
      const r = await new ToolProcess(["--socket", a.socket, "--ud", "-s", "8192", "127.0.0.1"])
        .result();
      assert.equal(r.code, 1);
      assert.equal(r.stdout, "");
      assert.equal(r.stderr.trim(), "Requested size larger than port MTU (4096)");
    });
    await t.step(
      "a peer whose QP does not exist: the client exits 1 on RETRY_EXC_ERR",
      async () => {
        const { lines, code, sent } = await againstFakeServer(b, { qpn: 0xabcdef, gid: a.gid });
        assert.equal(code, 1);
        assert.match(sent, /^0000:[0-9a-f]{6}:[0-9a-f]{6}:00000000000000000000ffff7f000021\0$/);
        assert.equal(
          lines.stdout[1],
          "  remote address: LID 0x0000, QPN 0xabcdef, PSN 0x000123, GID ::ffff:127.0.0.32",
        );
        assert.equal(lines.stdout.length, 2, "no summary after a failure");
        assert.equal(
          lines.stderr[0],
          "Failed status transport retry counter exceeded (12) for wr_id 2",
        );
        assert.match(lines.stderr[1] ?? "", /^parse WC failed [12]$/);
      },
    );
    await t.step("a peer that sent a null GID (no -g): the client refuses to connect", async () => {
      const { lines, code } = await againstFakeServer(b, { qpn: 0x11, gid: "::" });
      assert.equal(code, 1);
      assert.equal(lines.stdout.length, 2);
      assert.match(
        lines.stderr[0] ?? "",
        /^Failed to modify QP to RTR: the peer's GID :: is null, .* run the peer with -g <gid index>$/,
      );
    });
    await t.step("no server, a GID index past the table: rdma-core's lines, exit 1", async () => {
      const port = String(freeTcpPort());
      const r = await new ToolProcess(["--socket", a.socket, "-p", port, "-n", "1", "127.0.0.1"])
        .result();
      assert.equal(r.code, 1);
      assert.match(r.stdout, /^ {2}local address: /);
      assert.match(r.stderr, new RegExp(`^Couldn't connect to 127\\.0\\.0\\.1:${port} \\(`));
      const gid = await new ToolProcess(["--socket", a.socket, "-g", "3", "127.0.0.1"]).result();
      assert.equal(gid.code, 1);
      assert.equal(gid.stdout, "");
      assert.match(gid.stderr, /^can't read sgid of index 3: .*past the table/);
    });
    await t.step("a peer that corrupts the data: -c reports the page and exits 1", async () => {
      const r = await againstCorruptingEcho(a, b, 5);
      assert.equal(r.code, 1, `${r.stdout}\n${r.stderr}`);
      const lines = r.stdout.split("\n");
      assert.equal(lines.length, 5, r.stdout);
      assert.match(lines[3]!, /^5 iters in /);
      assert.equal(lines[4], "invalid data in page 0");
    });
    await t.step("usage errors print the usage and exit 1", async () => {
      const r = await new ToolProcess(["-m", "999"]).result();
      assert.equal(r.code, 1);
      assert.match(r.stderr, /--mtu 999 is not one of/);
      assert.match(r.stdout, /^Usage:\n {2}\S+ {12}start a server and wait for connection/);
    });
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
});

/**
 * Plays an `ibv_rc_pingpong` server that answers with a QPN nobody has: the
 * client's first SEND is never acknowledged. Returns what the client sent
 * and printed.
 */
async function againstFakeServer(
  clientHost: Backend,
  fake: { qpn: number; gid: string },
): Promise<{ code: number; sent: string; lines: { stdout: string[]; stderr: string[] } }> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const client = new ToolProcess(["--socket", clientHost.socket, "-p", String(port), "127.0.0.1"]);
  const conn = await listener.accept();
  listener.close();
  const got = new Uint8Array(DEST_MESSAGE_BYTES + 5);
  let n = 0;
  const readTo = async (end: number) => {
    while (n < end) {
      const r = await conn.read(got.subarray(n, end));
      if (r === null) throw new Error(`client closed after ${n} bytes`);
      n += r;
    }
  };
  await readTo(DEST_MESSAGE_BYTES);
  await conn.write(encodeDest({ lid: 0, qpn: fake.qpn, psn: 0x123, gid: parseGid(fake.gid) }));
  await readTo(DEST_MESSAGE_BYTES + 5);
  conn.close();
  const text = new TextDecoder().decode(got);
  assert.equal(text.slice(DEST_MESSAGE_BYTES), "done\0");
  const r = await client.result();
  return {
    code: r.code,
    sent: text.slice(0, DEST_MESSAGE_BYTES),
    lines: { stdout: r.stdout.split("\n"), stderr: r.stderr.trim().split("\n") },
  };
}

/**
 * Plays a pingpong server on `serverHost` with the tool's own building
 * blocks, but flips a byte of every message before echoing it; runs the
 * tool as a validating client on `clientHost` against it.
 */
async function againstCorruptingEcho(
  serverHost: Backend,
  clientHost: Backend,
  iters: number,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const parsed = parsePingpongArgs(["--socket", serverHost.socket, "-s", "4096", "-r", "16"]);
  assert.equal(parsed.kind, "run");
  if (parsed.kind !== "run") throw new Error("unreachable");
  const ctx = await PingpongContext.open(parsed.options);
  const server = ExchangeServer.listen(0);
  try {
    assert.equal(ctx.postRecv(16), 16);
    const client = new ToolProcess([
      "--socket",
      clientHost.socket,
      "-p",
      String(server.port),
      "-n",
      String(iters),
      "-c",
      "127.0.0.1",
    ]);
    const remote = await server.exchange(ctx.localDest(), (peer) => ctx.connect(peer));
    let received = 0, sent = 0, pending = RECV_WRID;
    while (received < iters || sent < iters) {
      const wc = await ctx.cq.next();
      assert.equal(wc.status, "SUCCESS");
      if (Number(wc.wrId) === RECV_WRID) {
        received++;
        ctx.message[1] = 0x42; // page 0 is now wrong
      } else {
        assert.equal(Number(wc.wrId), SEND_WRID);
        sent++;
      }
      pending &= ~Number(wc.wrId);
      if (sent < iters && received > sent && pending === 0) {
        ctx.postSend(remote.qpn);
        pending = RECV_WRID | SEND_WRID;
      }
    }
    return await client.result();
  } finally {
    server.close();
    await ctx.close();
  }
}
