/**
 * Issue 7, faults: a network partition between two hosts under verified
 * traffic (fixtures/partition_traffic.ts), in a private network namespace
 * where an nftables rule drops every RoCE packet for a while.
 *
 * The QPs' retry window is timeout x (retryCnt + 1) = 268 ms x 8 = 2.15 s:
 *
 * - a 1 s partition heals inside it: traffic stops (nothing completes while
 *   the rule is in), the senders time out and retransmit, and after the
 *   rule goes traffic resumes with nothing lost or duplicated — every byte,
 *   every SEND's sequence number, every atomic checked, no WR in error;
 * - a partition that outlasts it ends every QP's oldest WR in RETRY_EXC_ERR,
 *   within the window of the partition's start, and flushes the rest;
 *   nothing hangs and no check on the data that did arrive fails.
 *
 * Needs root, `ip` and `nft`; skipped with the reason otherwise.
 *
 * ```sh
 * deno test -A --unstable-net tests/faults/partition_test.ts
 * ```
 *
 * @module
 */

import assert from "node:assert/strict";
import { Netns, netnsUnavailable } from "../helpers/netns.ts";
import { type FixtureRun, runFixture } from "../system/fixtures/run_fixture.ts";
import { retryWindowMs } from "./fixtures/endpoint.ts";

const FIXTURE = new URL("./fixtures/partition_traffic.ts", import.meta.url).pathname;
/** 268 ms per attempt, eight attempts. */
const POLICY = { timeout: 16, retryCnt: 7 };
const WINDOW_MS = retryWindowMs(POLICY);
const SHORT_MS = 1000;
const LONG_MS = 8000;
/** Scheduling on a loaded 2-core machine, on top of the window. */
const SLACK_MS = 1500;
const OP_KINDS = ["WRITE", "WRITE_IMM", "READ", "SEND", "SEND_IMM", "FETCH_ADD", "CMP_SWAP"];

const whyNot = await netnsUnavailable();
if (whyNot !== null) console.log(`skipping the partition tests: ${whyNot}`);

interface QpOutcome {
  statuses: Record<string, number>;
  first?: string;
  firstAtMs?: number;
  firstSend?: boolean;
}

async function runPartition(mode: "heal" | "break", partitionMs: number): Promise<FixtureRun> {
  await using ns = await Netns.create("vrdma-part");
  const args = [
    "run",
    "-A",
    "--unstable-net",
    FIXTURE,
    "--mode",
    mode,
    "--port",
    "4791",
    "--partition-ms",
    String(partitionMs),
    "--timeout",
    String(POLICY.timeout),
    "--retry-cnt",
    String(POLICY.retryCnt),
  ];
  const run = await runFixture({ cmd: "ip", args: ns.execArgs(Deno.execPath(), args) }, {
    label: `partition-${mode}`,
    timeoutMs: 90_000,
  });
  const s = run.summary ?? {};
  const { errorList: _, qps, ...brief } = s;
  console.log(`${mode}: ${JSON.stringify(brief)}`);
  console.log(`${mode}, per QP: ${JSON.stringify(qps)}`);
  return run;
}

function describe(run: FixtureRun): string {
  const s = run.summary;
  if (s === null) return `exit ${run.code}, no summary; stderr:\n${run.stderrTail}`;
  return `exit ${run.code}, ${s.errors} errors:\n  ${(s.errorList as string[]).join("\n  ")}`;
}

Deno.test({
  name: `a ${SHORT_MS} ms partition inside the ${
    WINDOW_MS.toFixed(0)
  } ms retry window heals: nothing lost or duplicated`,
  ignore: whyNot !== null,
  async fn() {
    const run = await runPartition("heal", SHORT_MS);
    assert.ok(run.summary !== null, describe(run));
    const s = run.summary;
    assert.equal(s.ok, true, describe(run));
    assert.equal(s.settled, true, describe(run));
    assert.equal(s.errors, 0, describe(run));
    assert.equal(run.code, 0, describe(run));
    assert.ok((s.partitionMs as number) < WINDOW_MS - 500, `partition ${s.partitionMs} ms`);
    assert.ok((s.droppedPackets as number) > 0, "the rule dropped packets");
    assert.ok((s.bytesBefore as number) > 0, "traffic flowed before the partition");
    assert.equal(s.bytesDuring, 0, "nothing completed while partitioned");
    assert.ok((s.bytesAfter as number) > 0, "traffic resumed after the partition");
    assert.ok((s.timeouts as number) > 0, "the senders' timers fired during the partition");
    assert.ok((s.retransmits as number) > 0, "and they retransmitted");
    assert.equal(s.retryExceeded, 0, "no sender gave up");
    const ops = s.ops as Record<string, number>;
    for (const kind of OP_KINDS) {
      assert.ok(ops[kind]! > 0, `${kind} verified: ${JSON.stringify(ops)}`);
    }
    assert.ok((s.recvs as number) > 0, "receives verified");
    const qps = Object.values(s.qps as Record<string, QpOutcome>);
    assert.equal(qps.length, 4, "two QP pairs");
    for (const q of qps) assert.deepEqual(Object.keys(q.statuses), ["SUCCESS"]);
  },
});

Deno.test({
  name: `a partition longer than the ${
    WINDOW_MS.toFixed(0)
  } ms retry window ends every QP's WRs in RETRY_EXC_ERR, then flushes`,
  ignore: whyNot !== null,
  async fn() {
    const run = await runPartition("break", LONG_MS);
    assert.ok(run.summary !== null, describe(run));
    const s = run.summary;
    assert.equal(run.code, 0, describe(run));
    assert.equal(s.settled, true, `every WR ended: ${describe(run)}`);
    assert.equal(s.dataErrors, 0, `only WR errors, no failed check: ${describe(run)}`);
    assert.equal(s.bytesDuring, 0, "nothing completed while partitioned");
    assert.ok((s.bytesBefore as number) > 0, "traffic flowed before the partition");
    assert.equal(s.retryExceeded, 4, "each of the 4 QPs' senders gave up once");
    const qps = s.qps as Record<string, QpOutcome>;
    assert.equal(Object.keys(qps).length, 4, "two QP pairs");
    const low = POLICY.retryCnt * WINDOW_MS / (POLICY.retryCnt + 1) * 0.9;
    for (const [name, q] of Object.entries(qps)) {
      assert.equal(q.first, "RETRY_EXC_ERR", `${name}: first error ${JSON.stringify(q)}`);
      assert.equal(q.firstSend, true, `${name}: the first error is a send's`);
      assert.ok(
        q.firstAtMs! >= low && q.firstAtMs! <= WINDOW_MS + SLACK_MS,
        `${name}: RETRY_EXC_ERR ${q.firstAtMs!.toFixed(0)} ms into the partition, expected ${
          low.toFixed(0)
        }..${(WINDOW_MS + SLACK_MS).toFixed(0)}`,
      );
      assert.equal(q.statuses.RETRY_EXC_ERR, 1, `${name}: ${JSON.stringify(q.statuses)}`);
      const other = Object.keys(q.statuses).filter((k) =>
        !["SUCCESS", "RETRY_EXC_ERR", "WR_FLUSH_ERR"].includes(k)
      );
      assert.deepEqual(other, [], `${name}: ${JSON.stringify(q.statuses)}`);
      assert.ok(q.statuses.WR_FLUSH_ERR! > 0, `${name}: the rest flushed`);
    }
  },
});
