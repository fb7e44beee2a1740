/**
 * A send WQE with the INLINE flag on an opcode that carries no payload (an
 * RDMA READ, an atomic). The driver refuses to post one; a guest writing its
 * SQ directly can. The backend must complete it with LOC_QP_OP_ERR like any
 * other malformed WQE, and do nothing at the target: not run it as a
 * zero-length READ, nor as an atomic without a result buffer. Checked on the
 * same-host path and on the host adapter's path (the peer on another host).
 */

import assert from "node:assert/strict";
import { Access, openDevice } from "../../mod.ts";
import { Op } from "../../protocol/device_interface.ts";
import { SendFlags, WcOpcode, WcStatus, WrOpcode } from "../../protocol/verbs.ts";
import { BackendProcess } from "./fixtures/guest_backend.ts";
import { RawGuest } from "./fixtures/guest_raw.ts";
import {
  AttackerVerbs,
  encodeWqe,
  type RawCqe,
  type RawQp,
  type WqeFields,
} from "./fixtures/guest_verbs.ts";

const SIGNALED_INLINE = SendFlags.SIGNALED | SendFlags.INLINE;

/** Posts `wqe` on `qp`'s SQ, rings, and waits (up to `ms`) for its completion. */
async function run(v: AttackerVerbs, qp: RawQp, wqe: WqeFields, ms = 5000): Promise<RawCqe> {
  v.post(qp.sq, encodeWqe(wqe));
  qp.sq.ring.publish();
  v.g.ring(qp.sq.queue);
  assert.ok(v.g.barrier(), "the backend did not answer the barrier");
  const deadline = performance.now() + ms;
  for (;;) {
    const mine = v.takeCqes().filter((c) => c.qpNum === qp.qpNum);
    if (mine.length > 0) {
      assert.equal(mine.length, 1, `completions: ${JSON.stringify(mine, bigints)}`);
      return mine[0]!;
    }
    assert.ok(performance.now() < deadline, `no completion for wr_id ${wqe.wrId} in ${ms} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function bigints(_: string, v: unknown): unknown {
  return typeof v === "bigint" ? `${v}n` : v;
}

/** Asserts `cqe` is the LOC_QP_OP_ERR completion of WR `wrId`, an `opcode` WR. */
function expectQpOpErr(cqe: RawCqe, wrId: bigint, opcode: number, what: string): void {
  assert.deepEqual(
    { wrId: cqe.wrId, status: cqe.status, opcode: cqe.opcode, byteLen: cqe.byteLen },
    { wrId, status: WcStatus.LOC_QP_OP_ERR, opcode, byteLen: 0 },
    what,
  );
}

Deno.test({
  name: "INLINE on a READ or an atomic completes LOC_QP_OP_ERR (same host)",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const backend = await BackendProcess.start("127.0.0.63");
  const g = RawGuest.open(backend.socket);
  try {
    const v = AttackerVerbs.setup(g, backend.gid);
    const { A } = v.qps!;
    const mr = v.mrs!.A;
    const local = mr.addr; // A's side
    const remote = mr.addr + mr.length / 2; // what B's side exposes, by rkey
    const pattern = Uint8Array.from({ length: 64 }, (_, i) => 0xa0 ^ i);
    g.mem.write(remote, pattern);
    g.mem.fill(local, 64);

    // The same READ without INLINE works: the setup is sound.
    const read = {
      opcode: WrOpcode.RDMA_READ,
      remoteAddr: BigInt(remote),
      rkey: mr.rkey,
    };
    const ok = await run(v, A, {
      ...read,
      wrId: 11n,
      flags: SendFlags.SIGNALED,
      sges: [{ addr: BigInt(local), length: 64, lkey: mr.lkey }],
    });
    assert.deepEqual([ok.status, ok.byteLen], [WcStatus.SUCCESS, 64]);
    assert.deepEqual(g.mem.bytes(local, 64), pattern);

    const bad = await run(v, A, { ...read, wrId: 12n, flags: SIGNALED_INLINE, inlineLen: 0 });
    expectQpOpErr(bad, 12n, WcOpcode.RDMA_READ, "INLINE READ");
    assert.ok(v.reset(), "the QPs did not come back to RTS");

    // Atomics: the target word must not change (a compare that matches, an add).
    const word = remote + 128;
    for (
      const [wrId, opcode, wcOpcode] of [
        [13n, WrOpcode.ATOMIC_CMP_AND_SWP, WcOpcode.COMP_SWAP],
        [14n, WrOpcode.ATOMIC_FETCH_AND_ADD, WcOpcode.FETCH_ADD],
      ] as const
    ) {
      g.mem.setU64(word, 5n);
      const cqe = await run(v, A, {
        wrId,
        opcode,
        flags: SIGNALED_INLINE,
        remoteAddr: BigInt(word),
        rkey: mr.rkey,
        compareAdd: 5n,
        swap: 9n,
        inline: new Uint8Array(8), // room for the original value, inline: still malformed
      });
      expectQpOpErr(
        cqe,
        wrId,
        wcOpcode,
        `INLINE ${opcode === 5 ? "CMP_AND_SWP" : "FETCH_AND_ADD"}`,
      );
      assert.equal(g.mem.u64(word), 5n, "the target word changed");
      assert.ok(v.reset(), "the QPs did not come back to RTS");
    }
  } finally {
    g.close();
    await backend.stop();
  }
});

/** Two backend processes at `ips` on one UDP port (the adapter sends to the port it listens on). */
async function startPair(ips: [string, string]): Promise<[BackendProcess, BackendProcess]> {
  for (let attempt = 0;; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 40000);
    const started = await Promise.allSettled(ips.map((ip) => BackendProcess.start(ip, port)));
    const [x, y] = started.map((r) => r.status === "fulfilled" ? r.value : undefined);
    if (x !== undefined && y !== undefined) return [x, y];
    await Promise.all([x?.stop(), y?.stop()]);
    if (attempt >= 4) {
      throw (started.find((r) => r.status === "rejected") as PromiseRejectedResult).reason;
    }
  }
}

Deno.test({
  name: "INLINE on a READ completes LOC_QP_OP_ERR when the peer is on another host",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const [x, y] = await startPair(["127.0.0.63", "127.0.0.64"]);
  const g = RawGuest.open(x.socket);
  const peer = await openDevice({ socket: y.socket, memoryBytes: 1 << 20 });
  try {
    // The peer: an ordinary guest on host y with one RC QP and an MR to read.
    const pd = await peer.allocPd();
    const buf = peer.allocBuffer(4096);
    const pattern = Uint8Array.from({ length: 64 }, (_, i) => 0x5c ^ (i * 3));
    buf.bytes.set(pattern);
    const peerMr = await pd.regMr(buf, Access.LOCAL_WRITE | Access.REMOTE_READ);
    const cq = await peer.createCq({ cqe: 16 });
    const cap = { maxSendWr: 4, maxRecvWr: 4, maxSendSge: 1, maxRecvSge: 1, maxInlineData: 0 };
    const peerQp = await pd.createQp({ qpType: "RC", sendCq: cq, recvCq: cq, cap });

    // The attacker's QP A on host x, taken from its same-host peer to the remote one.
    const v = AttackerVerbs.setup(g, x.gid);
    const { A } = v.qps!;
    const modify = (attr: Record<string, unknown>) => g.must({ op: Op.MODIFY_QP, qp: A.qp, attr });
    modify({ qpState: "RESET" });
    A.sq.ring.takeUsed();
    modify({ qpState: "INIT", pkeyIndex: 0, portNum: 1, qpAccessFlags: 14 });
    modify({
      qpState: "RTR",
      pathMtu: 1024,
      destQpNum: peerQp.qpNum,
      rqPsn: peerQp.psn,
      ahAttr: { dgid: y.gid, portNum: 1 },
      maxDestRdAtomic: 16,
      minRnrTimer: 1,
    });
    modify({
      qpState: "RTS",
      sqPsn: 0,
      timeout: 14,
      retryCnt: 7,
      rnrRetry: 7,
      maxRdAtomic: 16,
    });
    await peerQp.connect({ qpNum: A.qpNum, psn: 0, gid: x.gid });

    const mr = v.mrs!.A;
    g.mem.fill(mr.addr, 64);
    const read = { opcode: WrOpcode.RDMA_READ, remoteAddr: peerMr.addr, rkey: peerMr.rkey };
    const ok = await run(v, A, {
      ...read,
      wrId: 21n,
      flags: SendFlags.SIGNALED,
      sges: [{ addr: BigInt(mr.addr), length: 64, lkey: mr.lkey }],
    });
    assert.deepEqual([ok.status, ok.byteLen], [WcStatus.SUCCESS, 64], "a READ across hosts");
    assert.deepEqual(g.mem.bytes(mr.addr, 64), pattern);
    assert.ok((await x.stats()).udpPacketsSent! > 0, "the READ did not cross UDP");

    const bad = await run(v, A, { ...read, wrId: 22n, flags: SIGNALED_INLINE, inlineLen: 0 });
    expectQpOpErr(bad, 22n, WcOpcode.RDMA_READ, "INLINE READ across hosts");
  } finally {
    await peer.close();
    g.close();
    await Promise.all([x.stop(), y.stop()]);
  }
});
