/**
 * UD on the same-host path, as rdma-core's UDResources tests use it: every
 * receive buffer starts with the 40-byte GRH area (first 20 bytes zero, last
 * 20 the IPv4 header the datagram came in), the completion's byteLen counts
 * it, srcQp names the sender, and a Q_Key mismatch silently drops the
 * message.
 */

import assert from "node:assert/strict";
import {
  bytesAt,
  connectPlayers,
  connectTo,
  createPlayer,
  expectBytes,
  expectFilled,
  expectNoWc,
  expectOneWc,
  expectThrows,
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
  test("UD SEND: 10 datagrams each way, GRH area first, byteLen counts it", async (host) => {
    await using client = await createPlayer(host, { qpType: "UD" });
    await using server = await createPlayer(host, { qpType: "UD" });
    await connectPlayers(client, server);
    await traffic(client, server, { opcode: "SEND", iters: 10, size: 1000 });
  });

  test("UD SEND_WITH_IMM and several SGEs", async (host) => {
    await using client = await createPlayer(host, { qpType: "UD" });
    await using server = await createPlayer(host, { qpType: "UD" });
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

  test("UD zero-length SEND: byteLen is the GRH alone", async (host) => {
    await using client = await createPlayer(host, { qpType: "UD" });
    await using server = await createPlayer(host, { qpType: "UD" });
    await connectPlayers(client, server);
    await traffic(client, server, { opcode: "SEND", iters: 2, size: 0 });
  });

  /** Reads the 20-byte IPv4 header at the end of a GRH area and checks it. */
  function checkGrh(grh: Uint8Array, payload: number, imm: boolean, what: string): void {
    expectFilled(grh.subarray(0, 20), 0, `${what}: first 20 GRH bytes`);
    const ip = new DataView(grh.buffer, grh.byteOffset + 20, 20);
    assert.equal(ip.getUint8(0), 0x45, `${what}: IPv4, 20-byte header`);
    const pad = (4 - (payload & 3)) & 3;
    // IPv4 + UDP + BTH + DETH (+ ImmDt) + payload + pad + ICRC, as on the wire.
    const total = 20 + 8 + 12 + 8 + (imm ? 4 : 0) + payload + pad + 4;
    assert.equal(ip.getUint16(2), total, `${what}: IPv4 total length`);
    assert.equal(ip.getUint8(9), 17, `${what}: protocol UDP`);
    assert.deepEqual([...grh.subarray(32, 36)], [127, 0, 0, 1], `${what}: source address`);
    assert.deepEqual([...grh.subarray(36, 40)], [127, 0, 0, 1], `${what}: destination address`);
    let sum = 0;
    for (let i = 0; i < 20; i += 2) sum += ip.getUint16(i);
    while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
    assert.equal(sum, 0xffff, `${what}: the IPv4 header checksum verifies`);
  }

  async function udSend(
    sender: Player,
    receiver: Player,
    payload: number,
    options: { imm?: number; remoteQkey?: number; recvBytes?: number; wrId: bigint },
  ): Promise<void> {
    sender.qp.postSend({
      wrId: options.wrId,
      opcode: options.imm === undefined ? "SEND" : "SEND_WITH_IMM",
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(sender, 0, payload)],
      ...(options.imm === undefined ? {} : { immData: options.imm }),
      ud: {
        ah: sender.ah!,
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

  test("UD GRH: zero first half, a valid IPv4 header with the datagram's lengths", async (host) => {
    await using client = await createPlayer(host, { qpType: "UD" });
    await using server = await createPlayer(host, { qpType: "UD" });
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
      checkGrh(bytesAt(server, server.dstOff, GRH_BYTES), payload, imm, `datagram ${i}`);
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

  test("UD Q_Key mismatch: the datagram is dropped, the receive stays posted", async (host) => {
    await using client = await createPlayer(host, { qpType: "UD" });
    await using server = await createPlayer(host, { qpType: "UD" });
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

  test("UD remote Q_Key with the top bit set means the sender's own Q_Key", async (host) => {
    await using client = await createPlayer(host, { qpType: "UD" });
    await using server = await createPlayer(host, { qpType: "UD" });
    await using other = await createPlayer(host, { qpType: "UD" });
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

  test("UD: one QP reaches two receivers; each completion names the sender", async (host) => {
    await using client = await createPlayer(host, { qpType: "UD" });
    await using a = await createPlayer(host, { qpType: "UD" });
    await using b = await createPlayer(host, { qpType: "UD" });
    await connectPlayers(client, a);
    await connectTo(b, remoteOf(client));
    for (const [i, r] of [a, b, a, b].entries()) {
      r.qp.postRecv({ wrId: BigInt(i), sgList: [sge(r, r.dstOff, 1024)] });
      bytesAt(client, 0, 200).set(pattern(i, 200));
      await udSend(client, r, 200, { wrId: BigInt(50 + i) });
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

  test("UD receive buffer without room for GRH + payload: LOC_LEN_ERR at the receiver only", async (host) => {
    await using client = await createPlayer(host, { qpType: "UD" });
    await using server = await createPlayer(host, { qpType: "UD" });
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

  test("UD refuses RDMA and atomic opcodes and a WR without ud at post time", async (host) => {
    await using client = await createPlayer(host, { qpType: "UD" });
    await using server = await createPlayer(host, { qpType: "UD" });
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
