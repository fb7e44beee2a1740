/**
 * A CQ above 32768 entries (the most slots one virtqueue holds) is two rings
 * taking completions in strict alternation. It must hold more than 32768
 * unpolled completions and give them back in order.
 *
 * Same host only: the case is about the CQ, and 40000 WRs between two hosts
 * would test the wire at length, which other suites do.
 */

import assert from "node:assert/strict";
import { connectPlayers, createPlayer, SendFlags, startHost, topologies } from "./players.ts";

Deno.test({
  name: "a 40000-entry CQ holds 40000 unpolled completions and returns them in order (same host)",
  ignore: !topologies().includes("same"),
}, async () => {
  await using host = await startHost();
  await using client = await createPlayer(host, {
    cqe: 40000,
    cap: { maxSendWr: 4096 },
    memoryBytes: 8 << 20,
  });
  await using server = await createPlayer(host);
  await connectPlayers(client, server);
  assert.equal(client.cq.cqe, 65536, "two rings of 32768");
  const total = 40000;
  let posted = 0;
  const deadline = performance.now() + 20_000;
  while (posted < total) {
    // Zero-length signaled WRITEs: each completes at once and frees its SQ
    // slot before its CQE is written, so the SQ refills without polling the CQ.
    try {
      client.qp.postSend({
        wrId: BigInt(posted),
        opcode: "RDMA_WRITE",
        sendFlags: SendFlags.SIGNALED,
        sgList: [],
        rdma: { remoteAddr: server.mr.addr, rkey: server.mr.rkey },
      });
      posted++;
    } catch {
      assert.ok(performance.now() < deadline, `stuck after ${posted} WRs`);
      await new Promise((r) => setTimeout(r, 1));
    }
  }
  // Wait until the device wrote them all (host counter), then poll in order.
  while (host.stats().completions < total) {
    assert.ok(performance.now() < deadline, `device wrote ${host.stats().completions} CQEs`);
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.equal(host.stats().cqOverruns, 0, "no overrun below the CQ's size");
  let next = 0;
  while (next < total) {
    const wcs = client.cq.poll(1024);
    assert.ok(wcs.length > 0, `only ${next} completions came back`);
    for (const wc of wcs) {
      assert.equal(wc.status, "SUCCESS");
      assert.equal(wc.wrId, BigInt(next), "completions in posting order across both rings");
      next++;
    }
  }
  assert.deepEqual(client.cq.poll(16), []);
});
