/**
 * Two real backends on two loopback addresses: when one of them goes away,
 * the other's outstanding WRs end in RETRY_EXC_ERR within the bound its
 * QP's timeout and retry count give (retryCnt + 1 timeouts of
 * 4.096 us * 2^timeout), and the rest of its send queue is flushed.
 */
import assert from "node:assert/strict";
import { Access, type Backend, openDevice, SendFlags, startBackend } from "../../../mod.ts";
import { tempSocket } from "../../helpers/backend.ts";

const IP_A = "127.0.0.52";
const IP_B = "127.0.0.53";

async function startPair(): Promise<[Backend, Backend]> {
  for (let attempt = 0;; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 40000);
    try {
      const a = await startBackend({
        socket: tempSocket("gone-a"),
        ip: IP_A,
        port,
        logLevel: "silent",
      });
      try {
        const b = await startBackend({
          socket: tempSocket("gone-b"),
          ip: IP_B,
          port,
          logLevel: "silent",
        });
        return [a, b];
      } catch (e) {
        await a.close();
        throw e;
      }
    } catch (e) {
      if (attempt >= 4) throw e;
    }
  }
}

async function side(host: Backend) {
  const dev = await openDevice({ socket: host.socket, memoryBytes: 4 << 20 });
  const buf = dev.allocBuffer(1 << 20);
  const pd = await dev.allocPd();
  const mr = await pd.regMr(buf, Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ);
  const cq = await dev.createCq({ cqe: 64 });
  const qp = await pd.createQp({
    qpType: "RC",
    sendCq: cq,
    recvCq: cq,
    cap: { maxSendWr: 16, maxRecvWr: 16, maxSendSge: 1, maxRecvSge: 1, maxInlineData: 0 },
  });
  return { dev, buf, mr, cq, qp, pd };
}

Deno.test("a peer host that disappears: outstanding WRs end in RETRY_EXC_ERR within timeout x (retryCnt + 1)", async () => {
  const [hostA, hostB] = await startPair();
  try {
    const a = await side(hostA);
    const b = await side(hostB);
    // timeout 14 = 67 ms per attempt (long enough for a loaded machine to answer the
    // first WRITE); retryCnt 2: three sends, three timeouts.
    const rts = { timeout: 14, retryCnt: 2, rnrRetry: 7, maxRdAtomic: 4 };
    for (const [me, peer, gid] of [[a, b, hostB.gid], [b, a, hostA.gid]] as const) {
      await me.qp.modify({
        qpState: "INIT",
        pkeyIndex: 0,
        portNum: 1,
        qpAccessFlags: Access.REMOTE_WRITE | Access.REMOTE_READ,
      });
      await me.qp.modify({
        qpState: "RTR",
        pathMtu: 1024,
        destQpNum: peer.qp.qpNum,
        rqPsn: peer.qp.psn,
        maxDestRdAtomic: 4,
        minRnrTimer: 12,
        ahAttr: { dgid: gid, portNum: 1 },
      });
      await me.qp.modify({ qpState: "RTS", sqPsn: me.qp.psn, ...rts });
    }
    const write = (wrId: bigint) => ({
      wrId,
      opcode: "RDMA_WRITE" as const,
      sendFlags: SendFlags.SIGNALED,
      sgList: [{ addr: a.mr.addr, length: 8192, lkey: a.mr.lkey }],
      rdma: { remoteAddr: b.mr.addr, rkey: b.mr.rkey },
    });
    // The path works first: the WRITE lands.
    a.buf.bytes.fill(0x5a, 0, 8192);
    a.qp.postSend(write(1n));
    const first = await a.cq.next();
    assert.equal(first.status, "SUCCESS");
    assert.ok(b.buf.bytes.subarray(0, 8192).every((v) => v === 0x5a), "bytes arrived before");

    const before = hostA.stats();
    await b.dev.close();
    await hostB.close();
    const t0 = performance.now();
    a.qp.postSend([write(2n), write(3n), write(4n)]);
    const wcs = [await a.cq.next(), await a.cq.next(), await a.cq.next()];
    const elapsed = performance.now() - t0;
    assert.deepEqual(
      wcs.map((w) => [w.wrId, w.status]),
      [[2n, "RETRY_EXC_ERR"], [3n, "WR_FLUSH_ERR"], [4n, "WR_FLUSH_ERR"]],
    );
    const bound = 4.096e-3 * 2 ** rts.timeout * (rts.retryCnt + 1);
    assert.ok(elapsed >= bound * 0.9, `gave up after ${elapsed.toFixed(1)} ms, before ${bound} ms`);
    assert.ok(elapsed < bound + 1000, `gave up after ${elapsed.toFixed(1)} ms, bound ${bound} ms`);
    const stats = hostA.stats();
    assert.equal(stats.retryExceeded - before.retryExceeded, 1);
    assert.equal(stats.timeouts - before.timeouts, rts.retryCnt + 1);
    assert.equal((await a.qp.query()).state, "ERR");
    await a.dev.close();
  } finally {
    await hostA.close();
    await hostB.close();
  }
});
