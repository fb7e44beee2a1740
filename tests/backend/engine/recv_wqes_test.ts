/**
 * `stats().recvWqes` counts every receive WQE the device takes from an RQ
 * or an SRQ: on the same-host path (engine/requester.ts) and on the host
 * adapter's path (a message from another host), and only on the host whose
 * queue it came from.
 */

import assert from "node:assert/strict";
import {
  connectPlayers,
  createPlayer,
  startHosts,
  type Topology,
  traffic,
} from "../../verbs/players.ts";

for (const topology of ["same", "two"] as const satisfies readonly Topology[]) {
  Deno.test({
    name: `recvWqes counts the receives taken from RQs and SRQs (${topology} host${
      topology === "two" ? "s" : ""
    })`,
    sanitizeOps: false,
    sanitizeResources: false,
  }, async () => {
    await using hosts = await startHosts(topology);
    const { a: hostA, b: hostB } = hosts;
    await using client = await createPlayer(hostA);
    await using server = await createPlayer(hostB);
    await connectPlayers(client, server);
    const srq = await server.pd.createSrq({ maxWr: 16, maxSge: 1 });
    await using srqServer = await createPlayer(hostB, { dev: server.dev, pd: server.pd, srq });
    await using srqClient = await createPlayer(hostA, { dev: client.dev, pd: client.pd });
    await connectPlayers(srqClient, srqServer);

    const at = () => ({ a: hostA.stats().recvWqes, b: hostB.stats().recvWqes });
    const start = at();
    const expect = (served: number, what: string) => {
      const now = at();
      assert.equal(now.b - start.b, served, `${what}: receives taken on the server's host`);
      if (hostA !== hostB) assert.equal(now.a, start.a, `${what}: the client's host took none`);
    };

    await traffic(client, server, { opcode: "SEND", iters: 5, bothWays: false, size: 256 });
    expect(5, "5 SENDs");
    // A WRITE takes no receive; a WRITE with immediate takes one.
    await traffic(client, server, { opcode: "RDMA_WRITE", iters: 2, bothWays: false });
    expect(5, "then 2 RDMA WRITEs");
    await traffic(client, server, { opcode: "RDMA_WRITE_WITH_IMM", iters: 2, bothWays: false });
    expect(7, "then 2 RDMA WRITEs with immediate");
    await traffic(srqClient, srqServer, { opcode: "SEND", iters: 3, bothWays: false });
    expect(10, "then 3 SENDs into an SRQ");
  });
}
