/**
 * Memory regions, as rdma-core's test_mr.py covers them: registration with
 * every legal access combination, refused flags, addresses outside guest
 * memory, keys, PD membership, range and access checks on the data path, and
 * deregistration. Registration cases (one player) run on one host only; the
 * data-path ones also across two, where the far host checks every rkey.
 */

import assert from "node:assert/strict";
import {
  Access,
  addrOf,
  bytesAt,
  connectPlayers,
  counts,
  createPlayer,
  expectBytes,
  expectFilled,
  expectOneWc,
  expectRejects,
  type Hosts,
  pattern,
  recvSrcQp,
  SendFlags,
  sendSrcQp,
  SENTINEL,
  sge,
  verbsSuite,
} from "./players.ts";
import { GUEST_BASE, type GuestBuffer } from "../../mod.ts";

verbsSuite("verbs: mr", (test) => {
  const LW = Access.LOCAL_WRITE;
  const RW = Access.REMOTE_WRITE;
  const RR = Access.REMOTE_READ;
  const RA = Access.REMOTE_ATOMIC;

  test("reg_mr with every legal access combination: keys unique, fields as given", {
    only: "same",
  }, async ({ a: host }) => {
    await using p = await createPlayer(host);
    const buf = p.dev.allocBuffer(64 << 10, 4096);
    const combos = [0, LW, RR, LW | RW, LW | RR, LW | RA, LW | RW | RR, LW | RW | RR | RA, RR | LW];
    const keys = new Set<number>();
    const mrs = [];
    for (const access of combos) {
      const mr = await p.pd.regMr(buf, access);
      assert.equal(mr.addr, buf.addr);
      assert.equal(mr.length, buf.length);
      assert.ok(Number.isInteger(mr.lkey) && mr.lkey >= 0 && mr.lkey < 2 ** 32, `lkey ${mr.lkey}`);
      assert.ok(Number.isInteger(mr.rkey) && mr.rkey >= 0 && mr.rkey < 2 ** 32, `rkey ${mr.rkey}`);
      assert.ok(!keys.has(mr.lkey), `lkey 0x${mr.lkey.toString(16)} is unique`);
      keys.add(mr.lkey);
      mrs.push(mr);
    }
    assert.equal(counts(host).mrs, 1 + combos.length);
    for (const mr of mrs) await mr.dereg();
    assert.equal(counts(host).mrs, 1);
  });

  test(
    "reg_mr refusals: unknown bits EINVAL, MW_BIND/ZERO_BASED/ON_DEMAND EOPNOTSUPP, outside memory EFAULT",
    {
      only: "same",
    },
    async ({ a: host }) => {
      await using p = await createPlayer(host);
      const buf = p.dev.allocBuffer(4096);
      const before = counts(host).mrs;
      await expectRejects(p.pd.regMr(buf, 0x80 | LW), "EINVAL", /access|0x8/i);
      await expectRejects(p.pd.regMr(buf, RW), "EINVAL", /LOCAL_WRITE/);
      await expectRejects(p.pd.regMr(buf, LW | Access.MW_BIND), "EOPNOTSUPP");
      await expectRejects(p.pd.regMr(buf, LW | Access.ZERO_BASED), "EOPNOTSUPP");
      await expectRejects(p.pd.regMr(buf, LW | Access.ON_DEMAND), "EOPNOTSUPP");
      const outside: GuestBuffer = {
        bytes: new Uint8Array(4096),
        addr: buf.addr + (64n << 30n),
        length: 4096,
        free() {},
      };
      await expectRejects(p.pd.regMr(outside, LW), "EFAULT");
      // Within maxMrSize but running past the end of guest memory.
      const end = BigInt(GUEST_BASE) + p.dev.attr.maxMrSize;
      const straddling: GuestBuffer = { ...outside, addr: end - 4096n, length: 8192 };
      await expectRejects(p.pd.regMr(straddling, LW), "EFAULT");
      assert.equal(counts(host).mrs, before, "no MR was created");
    },
  );

  test("MR range: an SGE past the MR is LOC_PROT_ERR; a WRITE past the remote MR is REM_ACCESS_ERR", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    // A small MR in the middle of the client's buffer.
    const small = await client.pd.regMr(
      { ...client.buf, addr: client.buf.addr + 4096n, length: 4096 },
      LW | RW,
    );
    client.qp.postSend({
      wrId: 1n,
      opcode: "RDMA_WRITE",
      sendFlags: SendFlags.SIGNALED,
      sgList: [{ addr: client.buf.addr + 4096n + 4000n, length: 97, lkey: small.lkey }],
      rdma: { remoteAddr: addrOf(server, 0), rkey: server.mr.rkey },
    });
    await expectOneWc(client.cq, {
      wrId: 1n,
      status: "LOC_PROT_ERR",
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    }, "1 byte past the local MR");
    await small.dereg();

    await using c2 = await createPlayer(hosts.a);
    await using s2 = await createPlayer(hosts.b);
    await connectPlayers(c2, s2);
    bytesAt(s2, s2.buf.length - 64, 64).fill(SENTINEL);
    c2.qp.postSend({
      wrId: 2n,
      opcode: "RDMA_WRITE",
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(c2, 0, 65)],
      rdma: { remoteAddr: addrOf(s2, s2.buf.length - 64), rkey: s2.mr.rkey },
    });
    await expectOneWc(c2.cq, {
      wrId: 2n,
      status: "REM_ACCESS_ERR",
      immData: undefined,
      qpNum: c2.qp.qpNum,
      srcQp: sendSrcQp(c2),
    }, "1 byte past the remote MR");
    expectFilled(bytesAt(s2, s2.buf.length - 64, 64), SENTINEL, "nothing was written");
  });

  test("an MR over part of a buffer: writes land exactly where addressed", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    server.buf.bytes.fill(SENTINEL);
    const window = await server.pd.regMr(
      { ...server.buf, addr: server.buf.addr + 8192n, length: 1000 },
      LW | RW,
    );
    const data = pattern(4, 1000);
    bytesAt(client, 0, 1000).set(data);
    client.qp.postSend({
      wrId: 1n,
      opcode: "RDMA_WRITE",
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(client, 0, 1000)],
      rdma: { remoteAddr: window.addr, rkey: window.rkey },
    });
    await expectOneWc(client.cq, {
      wrId: 1n,
      status: "SUCCESS",
      opcode: "RDMA_WRITE",
      byteLen: 1000,
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    });
    expectBytes(bytesAt(server, 8192, 1000), data, "the window");
    expectFilled(bytesAt(server, 0, 8192), SENTINEL, "before the window");
    expectFilled(bytesAt(server, 9192, 4096), SENTINEL, "after the window");
  });

  async function pdPair(hosts: Hosts) {
    const client = await createPlayer(hosts.a);
    const server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    return { client, server };
  }

  test("keys of another PD: a local lkey is LOC_PROT_ERR, a remote rkey is REM_ACCESS_ERR", async (hosts) => {
    const { client, server } = await pdPair(hosts);
    await using _c = client;
    await using _s = server;
    const otherPd = await client.dev.allocPd();
    const foreign = await otherPd.regMr(client.buf, LW | RW | RR);
    client.qp.postSend({
      wrId: 1n,
      opcode: "SEND",
      sendFlags: SendFlags.SIGNALED,
      sgList: [{ addr: client.buf.addr, length: 16, lkey: foreign.lkey }],
    });
    await expectOneWc(client.cq, {
      wrId: 1n,
      status: "LOC_PROT_ERR",
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    }, "lkey of another PD");

    const { client: c2, server: s2 } = await pdPair(hosts);
    await using _c2 = c2;
    await using _s2 = s2;
    const serverPd2 = await s2.dev.allocPd();
    const foreignRemote = await serverPd2.regMr(s2.buf, LW | RW | RR);
    c2.qp.postSend({
      wrId: 2n,
      opcode: "RDMA_READ",
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(c2, 0, 16)],
      rdma: { remoteAddr: s2.buf.addr, rkey: foreignRemote.rkey },
    });
    await expectOneWc(c2.cq, {
      wrId: 2n,
      status: "REM_ACCESS_ERR",
      immData: undefined,
      qpNum: c2.qp.qpNum,
      srcQp: sendSrcQp(c2),
    }, "rkey of another PD at the target");
  });

  test("access on the data path: READ-only MR refuses WRITE; receives need LOCAL_WRITE", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b, { access: LW | RR });
    await connectPlayers(client, server);
    // READ from a REMOTE_READ MR works.
    const data = pattern(8, 512);
    bytesAt(server, 0, 512).set(data);
    client.qp.postSend({
      wrId: 1n,
      opcode: "RDMA_READ",
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(client, client.dstOff, 512)],
      rdma: { remoteAddr: addrOf(server, 0), rkey: server.mr.rkey },
    });
    await expectOneWc(client.cq, {
      wrId: 1n,
      status: "SUCCESS",
      opcode: "RDMA_READ",
      byteLen: 512,
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    });
    expectBytes(bytesAt(client, client.dstOff, 512), data, "read");
    client.qp.postSend({
      wrId: 2n,
      opcode: "RDMA_WRITE",
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(client, 0, 16)],
      rdma: { remoteAddr: addrOf(server, 0), rkey: server.mr.rkey },
    });
    await expectOneWc(client.cq, {
      wrId: 2n,
      status: "REM_ACCESS_ERR",
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    });
    expectBytes(bytesAt(server, 0, 512), data, "the READ-only MR is unchanged");
  });

  test("a receive SGE on an MR without LOCAL_WRITE: LOC_PROT_ERR there, REM_OP_ERR at the sender", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    const ro = await server.pd.regMr(server.buf, RR);
    server.qp.postRecv({
      wrId: 3n,
      sgList: [{ addr: server.buf.addr, length: 64, lkey: ro.lkey }],
    });
    client.qp.postSend({
      wrId: 4n,
      opcode: "SEND",
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(client, 0, 64)],
    });
    await expectOneWc(server.cq, {
      wrId: 3n,
      status: "LOC_PROT_ERR",
      immData: undefined,
      qpNum: server.qp.qpNum,
      srcQp: recvSrcQp(client),
    }, "a receive into an MR without LOCAL_WRITE");
    // The sender learns of it as a remote operational error.
    await expectOneWc(client.cq, {
      wrId: 4n,
      status: "REM_OP_ERR",
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    }, "sender of the refused SEND");
  });

  test("dealloc PD with an MR is EBUSY; dereg then dealloc works; stale lkey fails locally", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    const pd = await client.dev.allocPd();
    const buf = client.dev.allocBuffer(4096);
    const mr = await pd.regMr(buf, LW);
    await expectRejects(pd.dealloc(), "EBUSY");
    await mr.dereg();
    await pd.dealloc();

    // The player's own MR: deregister it, then use its lkey.
    const lkey = client.mr.lkey;
    await client.mr.dereg();
    client.qp.postSend({
      wrId: 5n,
      opcode: "SEND",
      sendFlags: SendFlags.SIGNALED,
      sgList: [{ addr: client.buf.addr, length: 16, lkey }],
    });
    await expectOneWc(client.cq, {
      wrId: 5n,
      status: "LOC_PROT_ERR",
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    }, "a deregistered lkey");
  });
});
