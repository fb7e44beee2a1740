/**
 * UD on one host and across two, as rdma-core's UDResources tests use it:
 * every receive buffer starts with the 40-byte GRH area (first 20 bytes zero,
 * last 20 the IPv4 header the datagram came in, with the two hosts'
 * addresses), the completion's byteLen counts it, srcQp names the sender, and
 * a Q_Key mismatch silently drops the message.
 */

import assert from "node:assert/strict";
import {
  type Ah,
  bytesAt,
  connectPlayers,
  connectTo,
  createPlayer,
  expectBytes,
  expectFilled,
  expectNoWc,
  expectOneWc,
  expectThrows,
  expectTransport,
  GRH_BYTES,
  pattern,
  type Player,
  recvSrcQp,
  remoteOf,
  SendFlags,
  SENTINEL,
  sge,
  traffic,
  UD_QKEY,
  verbsSuite,
  WC_GRH,
  WC_WITH_IMM,
} from "./players.ts";

verbsSuite("verbs: ud", (test) => {
  test("UD SEND: 10 datagrams each way, GRH area first, byteLen counts it", async (hosts) => {
    await using client = await createPlayer(hosts.a, { qpType: "UD" });
    await using server = await createPlayer(hosts.b, { qpType: "UD" });
    await connectPlayers(client, server);
    await expectTransport(
      hosts,
      client,
      () => traffic(client, server, { opcode: "SEND", iters: 10, size: 1000 }),
    );
  });

  test("UD SEND_WITH_IMM and several SGEs", async (hosts) => {
    await using client = await createPlayer(hosts.a, { qpType: "UD" });
    await using server = await createPlayer(hosts.b, { qpType: "UD" });
    await connectPlayers(client, server);
    await traffic(client, server, { opcode: "SEND_WITH_IMM", iters: 5, size: 2048 });
    await traffic(client, server, {
      opcode: "SEND",
      iters: 3,
      size: 3000,
      sendSges: 3,
      recvSges: 4,
    });
  });

  test("UD zero-length SEND: byteLen is the GRH alone", async (hosts) => {
    await using client = await createPlayer(hosts.a, { qpType: "UD" });
    await using server = await createPlayer(hosts.b, { qpType: "UD" });
    await connectPlayers(client, server);
    await traffic(client, server, { opcode: "SEND", iters: 2, size: 0 });
  });

  /**
   * Reads the 20-byte IPv4 header at the end of a GRH area and checks it:
   * the datagram of `payload` bytes (with or without immediate data) came
   * from `from`'s host to `to`'s.
   */
  function checkGrh(
    grh: Uint8Array,
    expected: { from: Player; to: Player; payload: number; imm: boolean; what: string },
  ): void {
    const { payload, imm, what } = expected;
    expectFilled(grh.subarray(0, 20), 0, `${what}: first 20 GRH bytes`);
    const ip = new DataView(grh.buffer, grh.byteOffset + 20, 20);
    assert.equal(ip.getUint8(0), 0x45, `${what}: IPv4, 20-byte header`);
    const pad = (4 - (payload & 3)) & 3;
    // IPv4 + UDP + BTH + DETH (+ ImmDt) + payload + pad + ICRC, as on the wire.
    const total = 20 + 8 + 12 + 8 + (imm ? 4 : 0) + payload + pad + 4;
    assert.equal(ip.getUint16(2), total, `${what}: IPv4 total length`);
    assert.equal(ip.getUint8(9), 17, `${what}: protocol UDP`);
    const octets = (p: Player) => p.host.ip.split(".").map(Number);
    assert.deepEqual([...grh.subarray(32, 36)], octets(expected.from), `${what}: source address`);
    assert.deepEqual(
      [...grh.subarray(36, 40)],
      octets(expected.to),
      `${what}: destination address`,
    );
    let sum = 0;
    for (let i = 0; i < 20; i += 2) sum += ip.getUint16(i);
    while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
    assert.equal(sum, 0xffff, `${what}: the IPv4 header checksum verifies`);
  }

  async function udSend(
    sender: Player,
    receiver: Player,
    payload: number,
    options: { imm?: number; remoteQkey?: number; ah?: Ah; wrId: bigint },
  ): Promise<void> {
    sender.qp.postSend({
      wrId: options.wrId,
      opcode: options.imm === undefined ? "SEND" : "SEND_WITH_IMM",
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(sender, 0, payload)],
      ...(options.imm === undefined ? {} : { immData: options.imm }),
      ud: {
        ah: options.ah ?? sender.ah!,
        remoteQpn: receiver.qp.qpNum,
        remoteQkey: options.remoteQkey ?? receiver.qkey,
      },
    });
    // UD is unreliable: the sender completes successfully whatever happens at the receiver.
    await expectOneWc(sender.cq, {
      wrId: options.wrId,
      status: "SUCCESS",
      opcode: "SEND",
      byteLen: payload,
      immData: undefined,
      qpNum: sender.qp.qpNum,
      srcQp: 0,
    }, `UD send ${options.wrId}`);
  }

  test("UD GRH: zero first half, a valid IPv4 header with the datagram's lengths", async (hosts) => {
    await using client = await createPlayer(hosts.a, { qpType: "UD" });
    await using server = await createPlayer(hosts.b, { qpType: "UD" });
    await connectPlayers(client, server);
    for (
      const [i, [payload, imm]] of ([[1001, false], [64, true], [0, false]] as const).entries()
    ) {
      bytesAt(client, 0, payload).set(pattern(i, payload));
      bytesAt(server, server.dstOff, 2048).fill(SENTINEL);
      server.qp.postRecv({ wrId: BigInt(i), sgList: [sge(server, server.dstOff, 2048)] });
      await udSend(client, server, payload, { wrId: BigInt(10 + i), ...(imm ? { imm: 7 } : {}) });
      await expectOneWc(server.cq, {
        wrId: BigInt(i),
        status: "SUCCESS",
        opcode: "RECV",
        byteLen: GRH_BYTES + payload,
        immData: imm ? 7 : undefined,
        qpNum: server.qp.qpNum,
        srcQp: recvSrcQp(client),
        wcFlags: WC_GRH | (imm ? WC_WITH_IMM : 0),
      }, `datagram ${i}`);
      checkGrh(bytesAt(server, server.dstOff, GRH_BYTES), {
        from: client,
        to: server,
        payload,
        imm,
        what: `datagram ${i}`,
      });
      expectBytes(
        bytesAt(server, server.dstOff + GRH_BYTES, payload),
        pattern(i, payload),
        `datagram ${i} payload`,
      );
      expectFilled(
        bytesAt(server, server.dstOff + GRH_BYTES + payload, 64),
        SENTINEL,
        `datagram ${i}: after the payload`,
      );
    }
  });

  test("UD Q_Key mismatch: the datagram is dropped, the receive stays posted", async (hosts) => {
    await using client = await createPlayer(hosts.a, { qpType: "UD" });
    await using server = await createPlayer(hosts.b, { qpType: "UD" });
    await connectPlayers(client, server);
    bytesAt(server, server.dstOff, 1024).fill(SENTINEL);
    server.qp.postRecv({ wrId: 1n, sgList: [sge(server, server.dstOff, 1024)] });
    await udSend(client, server, 100, { wrId: 20n, remoteQkey: UD_QKEY ^ 1 });
    await expectNoWc(server.cq, 40, "a datagram with the wrong Q_Key must be dropped");
    expectFilled(bytesAt(server, server.dstOff, 1024), SENTINEL, "nothing was written");

    // The receive WR was not consumed: the next good datagram lands in it.
    bytesAt(client, 0, 100).set(pattern(3, 100));
    await udSend(client, server, 100, { wrId: 21n });
    await expectOneWc(server.cq, {
      wrId: 1n,
      status: "SUCCESS",
      opcode: "RECV",
      byteLen: GRH_BYTES + 100,
      immData: undefined,
      qpNum: server.qp.qpNum,
      srcQp: recvSrcQp(client),
      wcFlags: WC_GRH,
    });
    expectBytes(bytesAt(server, server.dstOff + GRH_BYTES, 100), pattern(3, 100), "payload");
  });

  test("UD remote Q_Key with the top bit set means the sender's own Q_Key", async (hosts) => {
    await using client = await createPlayer(hosts.a, { qpType: "UD" });
    await using server = await createPlayer(hosts.b, { qpType: "UD" });
    await using other = await createPlayer(hosts.a, { qpType: "UD" });
    other.qkey = 0x22222222;
    await connectPlayers(client, server);
    await connectTo(other, remoteOf(server));
    server.qp.postRecv({ wrId: 1n, sgList: [sge(server, server.dstOff, 512)] });
    // client's own Q_Key equals the server's: delivered.
    await udSend(client, server, 64, { wrId: 30n, remoteQkey: 0x80000000 });
    await expectOneWc(server.cq, {
      wrId: 1n,
      status: "SUCCESS",
      opcode: "RECV",
      byteLen: GRH_BYTES + 64,
      immData: undefined,
      qpNum: server.qp.qpNum,
      srcQp: recvSrcQp(client),
      wcFlags: WC_GRH,
    });
    // other's own Q_Key differs: dropped.
    server.qp.postRecv({ wrId: 2n, sgList: [sge(server, server.dstOff, 512)] });
    await udSend(other, server, 64, { wrId: 31n, remoteQkey: 0xffffffff });
    await expectNoWc(server.cq, 40, "the sender's own Q_Key does not match");
  });

  test("UD: one QP reaches two receivers, a far and a near one; each completion names the sender", async (hosts) => {
    // Across hosts one datagram goes over UDP, the next to the sender's own host.
    await using client = await createPlayer(hosts.a, { qpType: "UD" });
    await using far = await createPlayer(hosts.b, { qpType: "UD" });
    await using near = await createPlayer(hosts.a, { qpType: "UD" });
    await connectPlayers(client, far);
    await connectTo(near, remoteOf(client));
    const nearAh = await client.pd.createAh({ dgid: near.host.gid, portNum: 1 });
    for (const [i, r] of [far, near, far, near].entries()) {
      r.qp.postRecv({ wrId: BigInt(i), sgList: [sge(r, r.dstOff, 1024)] });
      bytesAt(client, 0, 200).set(pattern(i, 200));
      await udSend(client, r, 200, { wrId: BigInt(50 + i), ah: r === far ? client.ah! : nearAh });
      await expectOneWc(r.cq, {
        wrId: BigInt(i),
        status: "SUCCESS",
        opcode: "RECV",
        byteLen: GRH_BYTES + 200,
        immData: undefined,
        qpNum: r.qp.qpNum,
        srcQp: client.qp.qpNum,
        wcFlags: WC_GRH,
      }, `datagram ${i}`);
      expectBytes(bytesAt(r, r.dstOff + GRH_BYTES, 200), pattern(i, 200), `datagram ${i}`);
    }
  });

  test("UD receive buffer without room for GRH + payload: LOC_LEN_ERR at the receiver only", async (hosts) => {
    await using client = await createPlayer(hosts.a, { qpType: "UD" });
    await using server = await createPlayer(hosts.b, { qpType: "UD" });
    await connectPlayers(client, server);
    // 100 bytes of payload need 140: give 139.
    server.qp.postRecv({ wrId: 9n, sgList: [sge(server, server.dstOff, GRH_BYTES + 99)] });
    await udSend(client, server, 100, { wrId: 60n });
    await expectOneWc(server.cq, {
      wrId: 9n,
      status: "LOC_LEN_ERR",
      immData: undefined,
      qpNum: server.qp.qpNum,
      srcQp: recvSrcQp(client),
    });
  });

  test("UD refuses RDMA and atomic opcodes and a WR without ud at post time", async (hosts) => {
    await using client = await createPlayer(hosts.a, { qpType: "UD" });
    await using server = await createPlayer(hosts.b, { qpType: "UD" });
    await connectPlayers(client, server);
    const ud = { ah: client.ah!, remoteQpn: server.qp.qpNum, remoteQkey: UD_QKEY };
    expectThrows(
      () =>
        client.qp.postSend({
          wrId: 1n,
          opcode: "RDMA_WRITE",
          sendFlags: SendFlags.SIGNALED,
          sgList: [sge(client, 0, 8)],
          rdma: { remoteAddr: server.buf.addr, rkey: server.mr.rkey },
          ud,
        }),
      "EINVAL",
      /RDMA_WRITE/,
    );
    expectThrows(
      () =>
        client.qp.postSend({
          wrId: 2n,
          opcode: "ATOMIC_FETCH_AND_ADD",
          sendFlags: SendFlags.SIGNALED,
          sgList: [sge(client, 0, 8)],
          atomic: { remoteAddr: server.buf.addr, rkey: server.mr.rkey, compareAdd: 1n, swap: 0n },
          ud,
        }),
      "EINVAL",
      /ATOMIC_FETCH_AND_ADD/,
    );
    expectThrows(
      () =>
        client.qp.postSend({
          wrId: 3n,
          opcode: "SEND",
          sendFlags: SendFlags.SIGNALED,
          sgList: [sge(client, 0, 8)],
        }),
      "EINVAL",
      /\bud\b/,
    );
    await expectNoWc(client.cq, 20, "refused WRs post nothing");
  });
});
