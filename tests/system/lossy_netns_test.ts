/**
 * Issue 5's system test: two hosts in a private network namespace whose
 * kernel drops 10% of the UDP packets to port 4791 at random (nftables
 * `numgen random`), and at least 64 MiB of mixed RC traffic between them —
 * RDMA WRITE (and WITH_IMM), READ, SEND (and WITH_IMM), FETCH_ADD and
 * CMP_SWAP, 1 byte to 1 MiB, several WRs in flight — arriving exactly once,
 * in order, every byte and atomic result checked
 * (fixtures/mixed_traffic.ts does the traffic and the checks).
 *
 * Inside the namespace nobody else can hold port 4791, so the hosts use
 * the real RoCEv2 port, on 127.0.0.2 and 127.0.0.3 of the namespace's own
 * loopback. The namespace tests need root, `ip` and `nft`; without them
 * they are skipped, saying why. The same fixture also runs without a
 * namespace with both guests on one host, which needs nothing special, and
 * once with deliberate damage, to show its checks can fail.
 *
 * ```sh
 * deno test -A --unstable-net tests/system/lossy_netns_test.ts
 * ```
 */

import assert from "node:assert/strict";
import { Netns, netnsUnavailable } from "../helpers/netns.ts";
import { denoRunArgs, type FixtureRun, runFixture } from "./fixtures/run_fixture.ts";

const ROCE_PORT = 4791;
const LOSS_PERCENT = 10;
const MIB = 1 << 20;
/** The issue asks for at least this much traffic under loss. */
const LOSSY_MIB = 64;
/** The fixture's own watchdog; the test kills it a little later, all inside 3 minutes. */
const LOSSY_SECONDS = 150;
const LOSSY_KILL_MS = 165_000;
/** Same-host runs use an address no other suite uses. */
const SAME_HOST_IP = "127.0.0.45";
const OP_KINDS = ["WRITE", "WRITE_IMM", "READ", "SEND", "SEND_IMM", "FETCH_ADD", "CMP_SWAP"];

const whyNot = await netnsUnavailable();
if (whyNot !== null) console.log(`skipping the network-namespace tests: ${whyNot}`);

function describe(run: FixtureRun): string {
  const s = run.summary;
  if (s === null) {
    return `exit ${run.code}${
      run.killed ? " (killed)" : ""
    }, no JSON summary; stderr:\n${run.stderrTail}`;
  }
  const errors = (s.errorList as string[] | undefined) ?? [];
  return `exit ${run.code}, ${s.errors} errors:\n  ${errors.join("\n  ")}`;
}

/** Asserts a fixture run passed every check and moved at least `mib` MiB of every kind. */
function assertVerified(run: FixtureRun, mib: number): Record<string, unknown> {
  assert.ok(run.summary !== null, describe(run));
  const s = run.summary;
  assert.equal(s.ok, true, describe(run));
  assert.equal(s.errors, 0, describe(run));
  assert.equal(run.code, 0, describe(run));
  assert.ok((s.bytes as number) >= mib * MIB, `${s.bytes} bytes verified, expected >= ${mib} MiB`);
  const ops = s.ops as Record<string, number>;
  for (const kind of OP_KINDS) {
    assert.ok(ops[kind]! > 0, `no ${kind} completed: ${JSON.stringify(ops)}`);
  }
  assert.ok((s.recvsVerified as number) > 0, "no receive verified");
  return s;
}

function sameHostArgs(extra: string[]): { cmd: string; args: string[] } {
  return {
    cmd: Deno.execPath(),
    args: denoRunArgs("mixed_traffic.ts", [
      "--ip-a",
      SAME_HOST_IP,
      "--ip-b",
      SAME_HOST_IP,
      "--port",
      "0",
      "--seconds",
      "60",
      ...extra,
    ]),
  };
}

Deno.test("mixed traffic on one host: every byte, message and atomic result checks out", async () => {
  const run = await runFixture(sameHostArgs(["--mib", "16", "--pairs", "1"]), {
    label: "same-host",
    timeoutMs: 75_000,
  });
  const s = assertVerified(run, 16);
  assert.equal(s.sameHost, true);
  const fetchAdds = s.fetchAdds as Record<string, number>;
  assert.ok(
    fetchAdds.A! > 0 && fetchAdds.B! > 0,
    `FETCH_ADDs on both counters: ${JSON.stringify(fetchAdds)}`,
  );
});

Deno.test("mixed traffic: its checks catch damaged bytes, sequence numbers and atomics", async () => {
  // Each kind of damage is done once per stream, after the real operation:
  // a flipped byte at a WRITE target and in a READ buffer, a SEND's sequence
  // number changed, one extra add on the counter, the CMP_SWAP word changed.
  const run = await runFixture(
    sameHostArgs(["--mib", "16", "--pairs", "1", "--tamper", "write,read,send,fetch-add,cas"]),
    { label: "tampered", timeoutMs: 75_000 },
  );
  assert.ok(run.summary !== null, describe(run));
  assert.equal(run.code, 1, describe(run));
  assert.equal(run.summary.ok, false);
  const errors = (run.summary.errorList as string[]).join("\n");
  for (
    const expected of [
      /A->B #0: WRITE #\d+ \(\d+ B\): bytes at the responder: byte 0 of \d+ is/,
      /B->A #0: READ #\d+ \(\d+ B\): bytes read: byte 0 of/,
      /A->B #0: RECV #\d+ \(SEND \d+ B\): sequence number \(payload\) (\d+), expected \d+/,
      /FETCH_ADD counter on A is \d+, expected \d+ \+ \d+ = \d+/,
      /FETCH_ADD counter on B is \d+, expected/,
      /B->A #0: CMP_SWAP #\d+ \(8 B\): original 0x[0-9a-f]+, expected 0x[0-9a-f]+/,
    ]
  ) {
    assert.match(errors, expected);
  }
});

Deno.test({
  name:
    `the namespace's nftables rule drops about ${LOSS_PERCENT}% of UDP ${ROCE_PORT}, and counts it`,
  ignore: whyNot !== null,
  async fn() {
    await using ns = await Netns.create("vrdma-loss");
    const drop = await ns.dropRandom({ port: ROCE_PORT, percent: LOSS_PERCENT });
    const count = 3000;
    const run = await runFixture({
      cmd: "ip",
      args: ns.execArgs(Deno.execPath(), denoRunArgs("udp_loss_probe.ts", ["--count", `${count}`])),
    }, { label: "udp-probe", timeoutMs: 30_000 });
    assert.equal(run.code, 0, describe(run));
    const s = run.summary as {
      sent: number;
      refused: number;
      received: number;
      duplicates: number;
    };
    const c = await drop.counters();
    console.log(`udp probe: ${JSON.stringify(s)}, nft ${JSON.stringify(c)}`);
    assert.equal(s.sent, count);
    assert.equal(s.duplicates, 0);
    assert.equal(c.matched, count, "every datagram passed the rule");
    // Everything that did not arrive was dropped by the rule, nothing else.
    assert.equal(c.dropped, count - s.received, "nft drops are exactly the datagrams lost");
    // The sender sees each drop as EPERM: the RoCE transport must take that as a loss.
    assert.equal(s.refused, c.dropped, "every drop failed its send with EPERM");
    // Binomial(3000, 0.1): mean 300, sd 16; 5..15% is about 9 sd either side.
    assert.ok(
      c.dropped > count * 0.05 && c.dropped < count * 0.15,
      `dropped ${c.dropped} of ${count}`,
    );
  },
});

Deno.test({
  name:
    `${LOSSY_MIB} MiB of mixed RC traffic between two hosts while the kernel drops ${LOSS_PERCENT}% of RoCE packets`,
  ignore: whyNot !== null,
  async fn() {
    await using ns = await Netns.create("vrdma-loss");
    const drop = await ns.dropRandom({ port: ROCE_PORT, percent: LOSS_PERCENT });
    const args = denoRunArgs("mixed_traffic.ts", [
      "--ip-a",
      "127.0.0.2",
      "--ip-b",
      "127.0.0.3",
      "--port",
      `${ROCE_PORT}`,
      "--mib",
      `${LOSSY_MIB}`,
      "--seconds",
      `${LOSSY_SECONDS}`,
    ]);
    const run = await runFixture({ cmd: "ip", args: ns.execArgs(Deno.execPath(), args) }, {
      label: "lossy",
      timeoutMs: LOSSY_KILL_MS,
    });
    const nft = await drop.counters();
    const s = run.summary ?? {};
    const retransmits = s.retransmits as Record<string, number | null> | undefined;
    console.log(
      `lossy run: ${
        JSON.stringify({
          ok: s.ok,
          seconds: s.seconds,
          trafficSeconds: s.trafficSeconds,
          bytes: s.bytes,
          MBps: s.MBps,
          ops: s.ops,
          recvsVerified: s.recvsVerified,
          errors: s.errors,
          nft,
          lossPercent: nft.matched > 0
            ? Number((100 * nft.dropped / nft.matched).toFixed(2))
            : null,
          udpPacketsSent: s.udpPacketsSent,
          udpPacketsReceived: s.udpPacketsReceived,
          retransmits,
        })
      }`,
    );
    console.log(`lossy run, host counters: ${JSON.stringify(s.stats)}`);
    assertVerified(run, LOSSY_MIB);
    assert.equal(s.sameHost, false);
    const sent = s.udpPacketsSent as Record<string, number>;
    assert.ok(sent.A! > 0 && sent.B! > 0, `both hosts sent RoCE packets: ${JSON.stringify(sent)}`);
    assert.ok(nft.dropped > 0, `nftables dropped nothing: ${JSON.stringify(nft)}`);
    const share = nft.dropped / nft.matched;
    assert.ok(share > 0.05 && share < 0.15, `nftables dropped ${nft.dropped} of ${nft.matched}`);
    // Losing packets and still delivering everything means retransmitting;
    // a host that does not count it yet is reported, not failed.
    const counted = Object.values(retransmits ?? {}).filter((v): v is number =>
      typeof v === "number"
    );
    if (counted.length === 0) console.log("the backend exposes no retransmits counter");
    else {assert.ok(
        counted.reduce((a, b) => a + b, 0) > 0,
        `no retransmits: ${JSON.stringify(retransmits)}`,
      );}
  },
});
