/**
 * A guest that scribbles on one of its own work queues (an SQ, an RQ, an
 * SRQ) breaks that queue on the device. The guest must hear of it as an
 * ibverbs application would: `getAsyncEvent()` yields QP_FATAL for the QP
 * (IBV_EVENT_QP_FATAL, the QP is in ERR), or SRQ_ERR for the SRQ; once,
 * and its other QPs go on working.
 *
 * The driver never writes a bad ring, so the tests learn where it placed
 * the rings from the CREATE_QP / CREATE_SRQ commands it sends, and write the
 * corruption into guest memory themselves.
 */

import assert from "node:assert/strict";
import type { Backend, Device, Srq } from "../../mod.ts";
import { openDevice } from "../../mod.ts";
import { Op } from "../../protocol/device_interface.ts";
import {
  connectPlayers,
  createPlayer,
  nextAsyncEvent,
  type Player,
  SendFlags,
  sge,
  sleep,
  startHost,
  traffic,
} from "../verbs/players.ts";

/** Where the driver put one work queue's ring, and the queue's doorbell number. */
interface RingSeen {
  size: number;
  avail: number;
  queue: number;
}

/** Rings the driver placed, by "qp <handle> sq|rq" or "srq <handle>". */
type Rings = Map<string, RingSeen>;

/** Records the rings of every QP and SRQ `dev` creates from here on. */
function spyRings(dev: Device): Rings {
  const seen: Rings = new Map();
  const control = dev.control;
  const execute = control.execute.bind(control);
  control.execute = async (op: number, args: Record<string, unknown> = {}) => {
    const r = await execute(op, args);
    const ring = (x: unknown) => x as { size: number; avail: number };
    if (op === Op.CREATE_QP) {
      const sq = ring(args.sq);
      seen.set(`qp ${r.qp} sq`, { size: sq.size, avail: sq.avail, queue: r.sqQueue as number });
      if (args.rq !== undefined) {
        const rq = ring(args.rq);
        seen.set(`qp ${r.qp} rq`, { size: rq.size, avail: rq.avail, queue: r.rqQueue as number });
      }
    } else if (op === Op.CREATE_SRQ) {
      const q = ring(args.ring);
      seen.set(`srq ${r.srq}`, { size: q.size, avail: q.avail, queue: r.queue as number });
    }
    return r;
  };
  return seen;
}

/**
 * Publishes an available index a whole ring plus one ahead of the last: more
 * entries than the ring holds, which no device may trust (VIRTIO 2.7.13.1).
 */
function scribble(dev: Device, ring: RingSeen | undefined, what: string): void {
  assert.ok(ring !== undefined, `the driver's CREATE command for ${what} was not seen`);
  const idx = ring.avail + 2;
  dev.memory.storeU16(idx, (dev.memory.loadU16(idx) + ring.size + 1) & 0xffff);
}

/** Asserts that `dev` has no async event waiting, nor gets one within `ms`. */
async function expectNoEvent(dev: Device, ms = 300): Promise<void> {
  const next = dev.getAsyncEvent();
  next.catch(() => {}); // rejected when the device closes: nobody waits for it then
  const got = await Promise.race([next, sleep(ms).then(() => "none" as const)]);
  assert.equal(got, "none", `a further async event: ${JSON.stringify(got)}`);
}

/** One guest with two connected RC pairs (a-b, c-d) on `host`, and its ring spy. */
/**
 * One guest with two connected pairs a-b and c-d on one PD; with
 * `srqForB`, b takes its receives from an SRQ (16 WRs, 1 SGE).
 */
async function guestWithTwoPairs(
  host: Backend,
  options: { srqForB?: boolean } = {},
): Promise<
  { dev: Device; rings: Rings; a: Player; b: Player; c: Player; d: Player; srq: Srq | null }
> {
  const dev = await openDevice({ socket: host.socket, memoryBytes: 8 << 20 });
  const rings = spyRings(dev);
  const pd = await dev.allocPd();
  const srq = options.srqForB ? await pd.createSrq({ maxWr: 16, maxSge: 1 }) : null;
  const [a, b, c, d] = [
    await createPlayer(host, { dev, pd }),
    await createPlayer(host, srq === null ? { dev, pd } : { dev, pd, srq }),
    await createPlayer(host, { dev, pd }),
    await createPlayer(host, { dev, pd }),
  ];
  await connectPlayers(a, b);
  await connectPlayers(c, d);
  return { dev, rings, a, b, c, d, srq };
}

/** Posts one signaled 16-byte SEND from `p` to its peer. */
function sendOne(p: Player): void {
  p.qp.postSend({
    wrId: 1n,
    opcode: "SEND",
    sendFlags: SendFlags.SIGNALED,
    sgList: [sge(p, p.srcOff, 16)],
  });
}

function fatalTest(name: string, fn: (host: Backend) => Promise<void>): void {
  Deno.test({ name, sanitizeOps: false, sanitizeResources: false }, async () => {
    const host = await startHost("127.0.0.74");
    try {
      await fn(host);
    } finally {
      await host.close();
    }
  });
}

fatalTest("a scribbled SQ gives QP_FATAL for its QP, once; another QP goes on", async (host) => {
  const { dev, rings, a, b, c, d } = await guestWithTwoPairs(host);
  try {
    await traffic(a, b, { opcode: "SEND", iters: 1 }); // the SQ works before
    const before = host.stats().brokenQueues;
    scribble(dev, rings.get(`qp ${a.qp.handle} sq`), "QP a's SQ");
    dev.ring(rings.get(`qp ${a.qp.handle} sq`)!.queue);
    const event = await nextAsyncEvent(dev);
    assert.deepEqual(event, { type: "QP_FATAL", element: a.qp.handle, info: 0 });
    assert.equal((await a.qp.query()).state, "ERR");
    assert.equal(host.stats().brokenQueues, before + 1);
    // Ringing the broken SQ again changes nothing and tells nothing new.
    dev.ring(rings.get(`qp ${a.qp.handle} sq`)!.queue);
    await expectNoEvent(dev);
    assert.equal(host.stats().brokenQueues, before + 1);
    // The guest's other QPs are untouched.
    assert.equal((await c.qp.query()).state, "RTS");
    await traffic(c, d, { opcode: "SEND", iters: 3 });
    await traffic(c, d, { opcode: "RDMA_WRITE", iters: 2 });
  } finally {
    await dev.close();
  }
});

fatalTest("a scribbled RQ gives QP_FATAL when a SEND arrives; another QP goes on", async (host) => {
  const { dev, rings, a, b, c, d } = await guestWithTwoPairs(host);
  try {
    // Published but never rung: the device finds it broken on the SEND's arrival.
    scribble(dev, rings.get(`qp ${b.qp.handle} rq`), "QP b's RQ");
    sendOne(a);
    const event = await nextAsyncEvent(dev);
    assert.deepEqual(event, { type: "QP_FATAL", element: b.qp.handle, info: 0 });
    assert.equal((await b.qp.query()).state, "ERR");
    await traffic(c, d, { opcode: "SEND", iters: 3 });
  } finally {
    await dev.close();
  }
});

fatalTest("a scribbled SRQ gives SRQ_ERR for it when a SEND arrives", async (host) => {
  const { dev, rings, a, b, c, d, srq } = await guestWithTwoPairs(host, { srqForB: true });
  try {
    await traffic(a, b, { opcode: "SEND", iters: 1, bothWays: false });
    scribble(dev, rings.get(`srq ${srq!.handle}`), "the SRQ");
    sendOne(a);
    const event = await nextAsyncEvent(dev);
    assert.deepEqual(event, { type: "SRQ_ERR", element: srq!.handle, info: 0 });
    await traffic(c, d, { opcode: "SEND", iters: 2 });
  } finally {
    await dev.close();
  }
});
