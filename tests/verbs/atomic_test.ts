/**
 * Atomics, as rdma-core's test_atomic.py checks them: compare-and-swap and
 * fetch-and-add return the original 64-bit value into the local SGE and
 * update the target (little-endian in guest memory, as an HCA's atomic unit
 * on x86 sees it); bad access, bad keys and misalignment fail as the IBA
 * says. Every case runs on one host and across two.
 */

import assert from "node:assert/strict";
import {
  Access,
  addrOf,
  connectPlayers,
  createPlayer,
  expectNoWc,
  expectOneWc,
  expectPostRefused,
  expectTransport,
  expectWc,
  type Player,
  pollCq,
  SendFlags,
  sendSrcQp,
  sge,
  verbsSuite,
} from "./players.ts";

verbsSuite("verbs: atomic", (test) => {
  const TARGET = 4096; // offset of the target word in the server's buffer
  const RESULT = 256; // offset of the result word in the client's buffer

  function u64(p: Player, offset: number): DataView {
    return new DataView(p.buf.bytes.buffer, p.buf.bytes.byteOffset + offset, 8);
  }

  async function atomic(
    client: Player,
    server: Player,
    op: "ATOMIC_CMP_AND_SWP" | "ATOMIC_FETCH_AND_ADD",
    wrId: bigint,
    compareAdd: bigint,
    swap = 0n,
    result = RESULT,
  ): Promise<bigint> {
    client.qp.postSend({
      wrId,
      opcode: op,
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(client, result, 8)],
      atomic: { remoteAddr: addrOf(server, TARGET), rkey: server.mr.rkey, compareAdd, swap },
    });
    await expectOneWc(client.cq, {
      wrId,
      status: "SUCCESS",
      opcode: op === "ATOMIC_CMP_AND_SWP" ? "COMP_SWAP" : "FETCH_ADD",
      byteLen: 8,
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    }, `${op} ${wrId}`);
    return u64(client, result).getBigUint64(0, true);
  }

  test("CMP_AND_SWP: swaps on a match, leaves the target on a mismatch, returns the original", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    const target = u64(server, TARGET);
    let value = 0x7373737373737373n; // pyverbs writes 's' * 8
    target.setBigUint64(0, value, true);
    await expectTransport(hosts, client, async () => {
      for (let i = 0n; i < 10n; i++) {
        const next = (value * 31n + i) & 0xffff_ffff_ffff_ffffn;
        // A wrong compare first: no swap.
        assert.equal(
          await atomic(client, server, "ATOMIC_CMP_AND_SWP", 2n * i, value ^ 1n, next),
          value,
        );
        assert.equal(target.getBigUint64(0, true), value, `round ${i}: no swap on mismatch`);
        assert.equal(
          await atomic(client, server, "ATOMIC_CMP_AND_SWP", 2n * i + 1n, value, next),
          value,
        );
        assert.equal(target.getBigUint64(0, true), next, `round ${i}: swapped`);
        value = next;
      }
    });
  });

  test("FETCH_AND_ADD: returns the value before, adds modulo 2^64", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    const target = u64(server, TARGET);
    target.setBigUint64(0, 0xffff_ffff_ffff_fff0n, true);
    let expected = 0xffff_ffff_ffff_fff0n;
    for (const [i, add] of [1n, 2n, 0x0en, 5n, 0x8000_0000_0000_0000n, 0n].entries()) {
      assert.equal(await atomic(client, server, "ATOMIC_FETCH_AND_ADD", BigInt(i), add), expected);
      expected = (expected + add) & 0xffff_ffff_ffff_ffffn;
      assert.equal(target.getBigUint64(0, true), expected, `after adding ${add}`);
    }
    assert.equal(expected, 0x8000_0000_0000_0006n, "the sum wrapped through zero");
  });

  test("atomic byte order: the target and the result are little-endian u64s in guest memory", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    server.buf.bytes.set([1, 2, 3, 4, 5, 6, 7, 8], TARGET);
    const original = await atomic(client, server, "ATOMIC_FETCH_AND_ADD", 1n, 0x0100n);
    assert.equal(original, 0x0807060504030201n);
    assert.deepEqual(
      [...client.buf.bytes.subarray(RESULT, RESULT + 8)],
      [1, 2, 3, 4, 5, 6, 7, 8],
      "result bytes",
    );
    assert.deepEqual(
      [...server.buf.bytes.subarray(TARGET, TARGET + 8)],
      [1, 3, 3, 4, 5, 6, 7, 8],
      "0x100 added to the second byte",
    );
  });

  test("two guests fetch-and-add one counter: every original is unique, the sum is exact", async (hosts) => {
    await using a = await createPlayer(hosts.a);
    await using b = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await using server2 = await createPlayer(hosts.b, { dev: server.dev, pd: server.pd });
    await connectPlayers(a, server);
    await connectPlayers(b, server2);
    // server2 is a second QP in server's guest and PD, so server's rkey is valid through it:
    // both clients hit the same word.
    const n = 50;
    const post = (p: Player, peer: Player) =>
      p.qp.postSend(Array.from({ length: n }, (_, i) => ({
        wrId: BigInt(i),
        opcode: "ATOMIC_FETCH_AND_ADD" as const,
        sendFlags: SendFlags.SIGNALED,
        sgList: [sge(p, 1024 + i * 8, 8)],
        atomic: { remoteAddr: addrOf(peer, TARGET), rkey: peer.mr.rkey, compareAdd: 1n, swap: 0n },
      })));
    post(a, server);
    post(b, server);
    const wa = await pollCq(a.cq, n);
    const wb = await pollCq(b.cq, n);
    const seen = new Set<bigint>();
    for (const [p, wcs] of [[a, wa], [b, wb]] as const) {
      wcs.forEach((wc, i) => {
        expectWc(wc, {
          wrId: BigInt(i),
          status: "SUCCESS",
          opcode: "FETCH_ADD",
          byteLen: 8,
          immData: undefined,
          qpNum: p.qp.qpNum,
          srcQp: sendSrcQp(p),
        }, `fetch-add ${i}`);
        seen.add(u64(p, 1024 + i * 8).getBigUint64(0, true));
      });
    }
    assert.equal(u64(server, TARGET).getBigUint64(0, true), BigInt(2 * n));
    assert.deepEqual(
      [...seen].sort((x, y) => Number(x - y)),
      Array.from({ length: 2 * n }, (_, i) => BigInt(i)),
      "each add saw a distinct value 0..99",
    );
  });

  test("atomic on an MR without REMOTE_ATOMIC: REM_ACCESS_ERR, target untouched", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b, {
      access: Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ,
    });
    await connectPlayers(client, server);
    u64(server, TARGET).setBigUint64(0, 5n, true);
    client.qp.postSend({
      wrId: 3n,
      opcode: "ATOMIC_FETCH_AND_ADD",
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(client, RESULT, 8)],
      atomic: {
        remoteAddr: addrOf(server, TARGET),
        rkey: server.mr.rkey,
        compareAdd: 1n,
        swap: 0n,
      },
    });
    await expectOneWc(client.cq, {
      wrId: 3n,
      status: "REM_ACCESS_ERR",
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    });
    assert.equal(u64(server, TARGET).getBigUint64(0, true), 5n);
    assert.equal((await client.qp.query()).state, "ERR");
  });

  test("atomic with a bad rkey or outside the MR: REM_ACCESS_ERR", async (hosts) => {
    for (const [what, remote] of [["bad rkey", "rkey"], ["past the MR", "range"]] as const) {
      await using client = await createPlayer(hosts.a);
      await using server = await createPlayer(hosts.b);
      await connectPlayers(client, server);
      client.qp.postSend({
        wrId: 4n,
        opcode: "ATOMIC_CMP_AND_SWP",
        sendFlags: SendFlags.SIGNALED,
        sgList: [sge(client, RESULT, 8)],
        atomic: {
          remoteAddr: remote === "range"
            ? addrOf(server, server.buf.length)
            : addrOf(server, TARGET),
          rkey: remote === "rkey" ? (server.mr.rkey ^ 0x100) >>> 0 : server.mr.rkey,
          compareAdd: 0n,
          swap: 1n,
        },
      });
      await expectOneWc(client.cq, {
        wrId: 4n,
        status: "REM_ACCESS_ERR",
        immData: undefined,
        qpNum: client.qp.qpNum,
        srcQp: sendSrcQp(client),
      }, what);
    }
  });

  test("atomic with a bad local lkey: LOC_PROT_ERR, target untouched", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    client.qp.postSend({
      wrId: 5n,
      opcode: "ATOMIC_FETCH_AND_ADD",
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(client, RESULT, 8, (client.mr.lkey + 0x100) >>> 0)],
      atomic: {
        remoteAddr: addrOf(server, TARGET),
        rkey: server.mr.rkey,
        compareAdd: 9n,
        swap: 0n,
      },
    });
    await expectOneWc(client.cq, {
      wrId: 5n,
      status: "LOC_PROT_ERR",
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    });
    assert.equal(u64(server, TARGET).getBigUint64(0, true), 0n);
  });

  test("atomic post checks: misaligned remote address, wrong SGE size or count are EINVAL", async (hosts) => {
    await using client = await createPlayer(hosts.a);
    await using server = await createPlayer(hosts.b);
    await connectPlayers(client, server);
    const good = {
      wrId: 1n,
      opcode: "ATOMIC_FETCH_AND_ADD" as const,
      sendFlags: SendFlags.SIGNALED,
      sgList: [sge(client, RESULT, 8)],
      atomic: {
        remoteAddr: addrOf(server, TARGET),
        rkey: server.mr.rkey,
        compareAdd: 1n,
        swap: 0n,
      },
    };
    expectPostRefused(
      () =>
        client.qp.postSend([good, {
          ...good,
          wrId: 2n,
          atomic: { ...good.atomic, remoteAddr: addrOf(server, TARGET + 4) },
        }]),
      "EINVAL",
      1,
      /align/i,
    );
    expectPostRefused(
      () => client.qp.postSend({ ...good, wrId: 3n, sgList: [sge(client, RESULT, 4)] }),
      "EINVAL",
      0,
      /8/,
    );
    expectPostRefused(
      () =>
        client.qp.postSend({
          ...good,
          wrId: 4n,
          sgList: [sge(client, RESULT, 8), sge(client, RESULT + 8, 8)],
        }),
      "EINVAL",
      0,
      /SGE|sg/i,
    );
    // Only the WR before the bad one went out.
    await expectOneWc(client.cq, {
      wrId: 1n,
      status: "SUCCESS",
      opcode: "FETCH_ADD",
      byteLen: 8,
      immData: undefined,
      qpNum: client.qp.qpNum,
      srcQp: sendSrcQp(client),
    });
    await expectNoWc(client.cq, 20, "the refused WRs were not posted");
    assert.equal(u64(server, TARGET).getBigUint64(0, true), 1n, "exactly one add happened");
  });
});
