/**
 * The verbs objects over a fake device: the synchronous refusals of
 * postSend/postRecv (ibv_post_send's bad_wr semantics), what reaches the
 * rings, doorbell decisions, CQ polling and waiting, and object lifetimes.
 * The fake answers control commands like the model and plays the device
 * side of every ring with a real DeviceQueue over the same guest memory.
 */

import assert from "node:assert/strict";
import { deviceConfigFor } from "../../backend/device/attributes.ts";
import type { DeviceConfig, PortAttr } from "../../protocol/device_config.ts";
import { Op, opName } from "../../protocol/device_interface.ts";
import {
  Access,
  CqArm,
  Cqe,
  CQE_BYTES,
  type QpCap,
  type QpType,
  type RingDesc,
  SendFlags,
  WcFlags,
  WcOpcode,
  WcStatus,
  Wqe,
  WQE_HEADER_BYTES,
  WrOpcode,
} from "../../protocol/verbs.ts";
import { DeviceQueue } from "../../virtqueue/device_queue.ts";
import { GuestMemory } from "../../virtqueue/memory.ts";
import { RangeAllocator } from "../../driver/allocator.ts";
import { VerbsError } from "../../driver/errors.ts";
import { Pd } from "../../driver/pd.ts";
import { Cq } from "../../driver/cq.ts";
import type { Qp } from "../../driver/qp.ts";
import type { RecvWr, SendWr, Sge, VerbsDevice } from "../../driver/types.ts";

const BASE = 0x1_0000_0000;
const MEMORY = 8 << 20;

interface Command {
  op: number;
  args: Record<string, unknown>;
}

/** A device that answers commands as the model would and lets the test act as the device. */
class FakeDevice implements VerbsDevice {
  readonly config: DeviceConfig = deviceConfigFor({ ip: "127.0.0.1", memoryBytes: MEMORY });
  readonly attr = this.config.device;
  readonly eventIdx = true;
  readonly memory = GuestMemory.fromBuffer(new SharedArrayBuffer(MEMORY), BASE);
  readonly allocator = new RangeAllocator(BASE, MEMORY);
  error: VerbsError | null = null;
  /** Queue ids rung, in order. */
  readonly rings: number[] = [];
  readonly commands: Command[] = [];
  /** Device side of every ring, by queue id. */
  readonly queues = new Map<number, DeviceQueue>();
  /** Queue ids of each QP handle, CQ handle and SRQ handle. */
  readonly qpQueues = new Map<number, { sq: number; rq?: number }>();
  readonly cqQueues = new Map<number, number>();
  readonly srqQueues = new Map<number, number>();
  /** The next command with this op fails with this errno. */
  readonly refuse = new Map<number, string>();
  readonly #completion = new Set<(cq: number) => void>();
  readonly #fail = new Set<(e: VerbsError) => void>();
  #handle = 1;
  #queue = 2;
  #qpn = 0x11;

  checkUsable(): void {
    if (this.error) throw this.error;
  }

  command(op: number, args: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    this.commands.push({ op, args });
    const errno = this.refuse.get(op);
    if (errno !== undefined) {
      this.refuse.delete(op);
      return Promise.reject(new VerbsError(errno, `${opName(op)}: refused by the fake`));
    }
    return Promise.resolve(this.#answer(op, args));
  }

  #answer(op: number, args: Record<string, unknown>): Record<string, unknown> {
    const handle = this.#handle++;
    switch (op) {
      case Op.ALLOC_PD:
        return { pd: handle };
      case Op.REG_MR:
        return { mr: handle, lkey: (handle << 8) | 1, rkey: (handle << 8) | 2 };
      case Op.CREATE_CQ: {
        const queue = this.#addQueue(args.ring);
        this.cqQueues.set(handle, queue);
        return { cq: handle, queue, cqe: (args.ring as RingDesc).size };
      }
      case Op.CREATE_QP: {
        const sq = this.#addQueue(args.sq);
        const rq = args.rq === undefined ? undefined : this.#addQueue(args.rq);
        this.qpQueues.set(handle, { sq, rq });
        const result: Record<string, unknown> = {
          qp: handle,
          qpNum: this.#qpn++,
          sqQueue: sq,
          cap: { ...(args.cap as QpCap) },
        };
        if (rq !== undefined) result.rqQueue = rq;
        return result;
      }
      case Op.CREATE_SRQ: {
        const queue = this.#addQueue(args.ring);
        this.srqQueues.set(handle, queue);
        return { srq: handle, queue, maxWr: args.maxWr, maxSge: args.maxSge };
      }
      case Op.CREATE_AH:
        return { ah: handle };
      case Op.QUERY_QP:
        return {
          state: "SQE",
          qpType: "RC",
          qpNum: 0x11,
          attr: { qpState: "SQE" },
          cap: {},
          sqSigAll: false,
        };
      default:
        return {};
    }
  }

  #addQueue(ring: unknown): number {
    const id = this.#queue++;
    this.queues.set(id, new DeviceQueue(ring as RingDesc, { eventIdx: true }));
    return id;
  }

  ring(queue: number): void {
    this.rings.push(queue);
  }

  onCompletion(cq: number, listener: () => void): () => void {
    const wrapped = (handle: number) => {
      if (handle === cq) listener();
    };
    this.#completion.add(wrapped);
    return () => this.#completion.delete(wrapped);
  }

  onFail(listener: (error: VerbsError) => void): () => void {
    this.#fail.add(listener);
    return () => this.#fail.delete(listener);
  }

  queryPort(_portNum: number): PortAttr {
    return { ...this.config.port };
  }

  /** Posts the COMPLETION event of CQ `cq`. */
  completionEvent(cq: number): void {
    for (const listener of this.#completion) listener(cq);
  }

  /** The device dies: later verbs throw `error`. */
  die(error: VerbsError): void {
    this.error = error;
    for (const listener of this.#fail) listener(error);
  }

  /** Commands sent with `op`. */
  sent(op: number): Record<string, unknown>[] {
    return this.commands.filter((c) => c.op === op).map((c) => c.args);
  }

  /** Pops every available WQE of queue `id`, returning their bytes; retires them when asked. */
  takeWqes(id: number, retire = false): Uint8Array[] {
    const queue = this.queues.get(id)!;
    const out: Uint8Array[] = [];
    for (;;) {
      const chain = queue.pop(this.memory);
      if (chain === null) break;
      const bytes = new Uint8Array(chain.readableBytes);
      chain.reader.read(bytes);
      out.push(bytes);
      if (retire) queue.addUsed(this.memory, chain.head, 0);
    }
    if (retire) queue.publishUsed(this.memory);
    return out;
  }

  /** Writes one CQE into the next slot of CQ `cq` (by handle), as the engine does. */
  writeCqe(
    cq: number,
    fields: { wrId: bigint; status?: number; opcode?: number; byteLen?: number; qpNum?: number },
    usedLen = CQE_BYTES,
  ): void {
    const queue = this.queues.get(this.cqQueues.get(cq)!)!;
    const chain = queue.pop(this.memory);
    assert.ok(chain !== null, "the driver keeps CQ slots available");
    const view = new DataView(new ArrayBuffer(CQE_BYTES));
    view.setBigUint64(Cqe.WR_ID, fields.wrId, true);
    view.setUint8(Cqe.STATUS, fields.status ?? WcStatus.SUCCESS);
    view.setUint8(Cqe.OPCODE, fields.opcode ?? WcOpcode.SEND);
    view.setUint32(Cqe.BYTE_LEN, fields.byteLen ?? 0, true);
    view.setUint32(Cqe.QP_NUM, fields.qpNum ?? 0x11, true);
    if (usedLen === CQE_BYTES) chain.writer.write(new Uint8Array(view.buffer));
    queue.pushUsed(this.memory, chain.head, usedLen);
  }
}

interface Rig {
  dev: FakeDevice;
  pd: Pd;
  cq: Cq;
  qp: Qp;
  sqId: number;
  rqId: number;
  sge: Sge;
}

const CAP: QpCap = { maxSendWr: 8, maxRecvWr: 8, maxSendSge: 2, maxRecvSge: 2, maxInlineData: 32 };

async function rig(
  options: { qpType?: QpType; cap?: Partial<QpCap>; state?: "RESET" | "INIT" | "RTS" } = {},
): Promise<Rig> {
  const dev = new FakeDevice();
  const pd = await Pd.alloc(dev);
  const cq = await Cq.create(dev, { cqe: 16 });
  const qp = await pd.createQp({
    qpType: options.qpType ?? "RC",
    sendCq: cq,
    recvCq: cq,
    cap: { ...CAP, ...options.cap },
  });
  const ids = dev.qpQueues.get(qp.handle)!;
  const state = options.state ?? "RTS";
  if (state !== "RESET") await qp.modify({ qpState: state });
  const buf = dev.allocator.alloc(4096, 64);
  dev.memory.write(buf, new Uint8Array(64).map((_, i) => i + 1));
  dev.rings.length = 0;
  return {
    dev,
    pd,
    cq,
    qp,
    sqId: ids.sq,
    rqId: ids.rq!,
    sge: { addr: BigInt(buf), length: 64, lkey: 0x101 },
  };
}

function send(wrId: bigint, sge: Sge, extra: Partial<SendWr> = {}): SendWr {
  return { wrId, opcode: "SEND", sgList: [sge], ...extra };
}

function wrIds(wqes: Uint8Array[]): bigint[] {
  return wqes.map((b) => new DataView(b.buffer).getBigUint64(Wqe.WR_ID, true));
}

/** Asserts `fn` throws a VerbsError with `errno` whose message matches every pattern. */
function throwsVerbs(fn: () => unknown, errno: string, ...patterns: RegExp[]): void {
  let caught: unknown = null;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof VerbsError, `expected a VerbsError, got ${caught}`);
  assert.equal(caught.errno, errno, caught.message);
  for (const p of patterns) assert.match(caught.message, p);
}

Deno.test("postSend refuses RESET, INIT and RTR, posts nothing and rings nothing", async () => {
  for (const state of ["RESET", "INIT", "RTR"] as const) {
    const r = await rig({ state: state === "RTR" ? "INIT" : state });
    if (state === "RTR") await r.qp.modify({ qpState: "RTR" });
    throwsVerbs(
      () => r.qp.postSend([send(1n, r.sge), send(2n, r.sge)]),
      "EINVAL",
      /^EINVAL: postSend wr\[0\] \(wrId 1n\): QP 0x11 is in state (RESET|INIT|RTR)/,
      /sends need RTS, SQD, SQE or ERR; nothing posted/,
    );
    assert.equal(r.dev.takeWqes(r.sqId).length, 0, state);
    assert.deepEqual(r.dev.rings, [], state);
  }
});

Deno.test("postSend is accepted in RTS, SQD, SQE and ERR; the state follows modify and query", async () => {
  const r = await rig({ state: "RTS" });
  for (const state of ["SQD", "ERR"] as const) {
    await r.qp.modify({ qpState: state });
    assert.equal(r.qp.state, state);
    r.qp.postSend(send(1n, r.sge));
  }
  await r.qp.modify({ qpState: "RESET" });
  assert.throws(() => r.qp.postSend(send(2n, r.sge)), /state RESET/);
  const q = await r.qp.query(); // the fake reports SQE
  assert.equal(q.state, "SQE");
  assert.equal(r.qp.state, "SQE");
  r.qp.postSend(send(3n, r.sge));
  assert.deepEqual(wrIds(r.dev.takeWqes(r.sqId)), [1n, 1n, 3n]);
});

Deno.test("a batch with a bad WR posts those before it, none from it on, and rings once", async () => {
  const r = await rig();
  const wrs = [
    send(10n, r.sge),
    send(11n, r.sge, { sendFlags: SendFlags.SIGNALED }),
    send(12n, r.sge, { sgList: [r.sge, r.sge, r.sge] }),
    send(13n, r.sge),
  ];
  throwsVerbs(
    () => r.qp.postSend(wrs),
    "EINVAL",
    /^EINVAL: postSend wr\[2\] \(wrId 12n\): 3 SGEs exceed maxSendSge 2/,
    /wr\[0\.\.1\] posted, none from wr\[2\] on/,
  );
  const wqes = r.dev.takeWqes(r.sqId);
  assert.deepEqual(wrIds(wqes), [10n, 11n]);
  assert.equal(wqes[1]![Wqe.FLAGS], SendFlags.SIGNALED);
  assert.equal(wqes[0]!.length, WQE_HEADER_BYTES + 16, "the descriptor covers exactly the WQE");
  assert.deepEqual(r.dev.rings, [r.sqId], "one doorbell for the call");
});

Deno.test("the doorbell rings only when publish says the device wants it", async () => {
  const r = await rig();
  const sq = r.dev.queues.get(r.sqId)!;
  const mem = r.dev.memory;
  r.qp.postSend(send(1n, r.sge));
  assert.deepEqual(r.dev.rings, [r.sqId], "avail_event 0 asks for the first publish");
  // The device has not re-armed (avail_event still 0): no ring, as EVENT_IDX says.
  r.qp.postSend(send(2n, r.sge));
  assert.deepEqual(r.dev.rings, [r.sqId]);
  // It takes what is there and re-arms at its next index: the next post rings.
  assert.deepEqual(wrIds(r.dev.takeWqes(r.sqId)), [1n, 2n]);
  assert.equal(sq.enableNotifications(mem), false);
  r.qp.postSend([send(3n, r.sge), send(4n, r.sge)]);
  assert.deepEqual(r.dev.rings, [r.sqId, r.sqId], "one ring for a batch");
  // A polling device suppresses notifications: no ring, the WQEs are there all the same.
  r.dev.takeWqes(r.sqId);
  sq.disableNotifications(mem);
  r.qp.postSend(send(5n, r.sge));
  assert.deepEqual(r.dev.rings, [r.sqId, r.sqId]);
  assert.equal(sq.enableNotifications(mem), true);
  assert.deepEqual(wrIds(r.dev.takeWqes(r.sqId)), [5n]);
});

Deno.test("opcodes are checked against the QP type", async () => {
  const rdma = { remoteAddr: 0x1000n, rkey: 5 };
  const atomic = { remoteAddr: 0x1000n, rkey: 5, compareAdd: 1n, swap: 2n };
  const ud = await rig({ qpType: "UD" });
  throwsVerbs(
    () => ud.qp.postSend(send(1n, ud.sge, { opcode: "RDMA_WRITE", rdma })),
    "EINVAL",
    /wr\[0\] \(wrId 1n\): opcode RDMA_WRITE is not allowed on a UD QP/,
  );
  throwsVerbs(
    () => ud.qp.postSend(send(2n, ud.sge)),
    "EINVAL",
    /a UD send needs ud \{ ah, remoteQpn, remoteQkey \}/,
  );
  const ah = await ud.pd.createAh({ dgid: "::ffff:127.0.0.1", portNum: 1 });
  throwsVerbs(
    () => ud.qp.postSend(send(3n, ud.sge, { ud: { ah, remoteQpn: 1 << 24, remoteQkey: 1 } })),
    "EINVAL",
    /ud.remoteQpn 16777216 is not a 24-bit QP number/,
  );
  ud.qp.postSend(send(4n, ud.sge, { ud: { ah, remoteQpn: 0x12, remoteQkey: 0x1111_1111 } }));
  const [wqe] = ud.dev.takeWqes(ud.sqId);
  const view = new DataView(wqe!.buffer);
  assert.deepEqual(
    [view.getUint32(Wqe.AH, true), view.getUint32(Wqe.REMOTE_QPN, true)],
    [ah.handle, 0x12],
  );
  assert.equal(view.getUint32(Wqe.REMOTE_QKEY, true), 0x1111_1111);
  await ah.destroy();
  throwsVerbs(
    () => ud.qp.postSend(send(5n, ud.sge, { ud: { ah, remoteQpn: 0x12, remoteQkey: 1 } })),
    "EINVAL",
    /ud.ah \(AH \d+\) was destroyed/,
  );

  const uc = await rig({ qpType: "UC" });
  uc.qp.postSend(send(1n, uc.sge, { opcode: "RDMA_WRITE", rdma }));
  throwsVerbs(
    () => uc.qp.postSend(send(2n, uc.sge, { opcode: "RDMA_READ", rdma })),
    "EINVAL",
    /opcode RDMA_READ is not allowed on a UC QP/,
  );
  throwsVerbs(
    () =>
      uc.qp.postSend(
        send(3n, { ...uc.sge, length: 8 }, { opcode: "ATOMIC_FETCH_AND_ADD", atomic }),
      ),
    "EINVAL",
    /opcode ATOMIC_FETCH_AND_ADD is not allowed on a UC QP/,
  );
  throwsVerbs(
    () => uc.qp.postSend(send(4n, uc.sge, { opcode: "BOGUS" as "SEND" })),
    "EINVAL",
    /opcode "BOGUS" is not a send opcode/,
  );
});

Deno.test("RDMA, immediate data, flags, ids and SGE fields are checked", async () => {
  const r = await rig();
  const cases: [Partial<SendWr>, RegExp][] = [
    [{ opcode: "RDMA_WRITE" }, /opcode RDMA_WRITE needs rdma \{ remoteAddr, rkey \}/],
    [
      { opcode: "RDMA_READ", rdma: { remoteAddr: 16 as unknown as bigint, rkey: 1 } },
      /rdma.remoteAddr 16 is not a u64 bigint/,
    ],
    [{ opcode: "RDMA_WRITE", rdma: { remoteAddr: 0n, rkey: -1 } }, /rdma.rkey -1 is not a u32/],
    [{ opcode: "SEND_WITH_IMM" }, /opcode SEND_WITH_IMM needs immData as a u32, got undefined/],
    [
      { opcode: "RDMA_WRITE_WITH_IMM", immData: 2 ** 32, rdma: { remoteAddr: 0n, rkey: 1 } },
      /needs immData as a u32, got 4294967296/,
    ],
    [{ sendFlags: 0x10 }, /sendFlags 16 has bits outside SendFlags \(0xf\)/],
    [{ wrId: 5 as unknown as bigint }, /wrId 5 is not a u64 bigint/],
    [{ wrId: 1n << 64n }, /wrId 18446744073709551616n is not a u64 bigint/],
    [{ sgList: [{ addr: 1n, length: 1.5, lkey: 1 }] }, /sgList\[0\].length 1.5 is not a u32/],
    [{ sgList: [{ addr: -1n, length: 1, lkey: 1 }] }, /sgList\[0\].addr -1n is not a u64 bigint/],
  ];
  for (const [extra, pattern] of cases) {
    throwsVerbs(() => r.qp.postSend(send(7n, r.sge, extra)), "EINVAL", /wr\[0\]/, pattern);
  }
  assert.equal(r.dev.takeWqes(r.sqId).length, 0);
  // The good forms pass: immData 0 is a value, not a missing one.
  r.qp.postSend([
    send(1n, r.sge, { opcode: "SEND_WITH_IMM", immData: 0 }),
    send(2n, r.sge, { opcode: "RDMA_READ", rdma: { remoteAddr: 0x2_0000_0000n, rkey: 9 } }),
    { wrId: 3n, opcode: "SEND" }, // zero-length send, no sgList
  ]);
  assert.deepEqual(wrIds(r.dev.takeWqes(r.sqId)), [1n, 2n, 3n]);
});

Deno.test("atomics need one 8-byte SGE and an 8-aligned remote address", async () => {
  const r = await rig();
  const sge8 = { ...r.sge, length: 8 };
  const atomic = { remoteAddr: 0x2_0000_0008n, rkey: 3, compareAdd: 10n, swap: 20n };
  const cases: [Partial<SendWr>, RegExp][] = [
    [
      { atomic: { ...atomic, remoteAddr: 0x2_0000_0004n } },
      /atomic.remoteAddr 0x200000004 is not 8-byte aligned/,
    ],
    [
      { sgList: [{ ...r.sge, length: 4 }] },
      /needs exactly one SGE of 8 bytes for the result, got an SGE of 4 bytes/,
    ],
    [{ sgList: [sge8, sge8] }, /got 2 SGEs/],
    [{ sgList: [] }, /got 0 SGEs/],
    [{ atomic: undefined }, /needs atomic \{ remoteAddr, rkey, \.\.\. \}/],
    [{ atomic: { ...atomic, swap: undefined } }, /atomic.swap undefined is not a u64 bigint/],
    [
      { atomic: { ...atomic, compareAdd: 1 as unknown as bigint } },
      /atomic.compareAdd 1 is not a u64 bigint/,
    ],
  ];
  for (const [extra, pattern] of cases) {
    const wr = send(1n, sge8, { opcode: "ATOMIC_CMP_AND_SWP", atomic, ...extra });
    throwsVerbs(() => r.qp.postSend(wr), "EINVAL", /ATOMIC_CMP_AND_SWP/, pattern);
  }
  // FETCH_AND_ADD needs no swap.
  r.qp.postSend([
    send(2n, sge8, { opcode: "ATOMIC_CMP_AND_SWP", atomic }),
    send(3n, sge8, { opcode: "ATOMIC_FETCH_AND_ADD", atomic: { ...atomic, swap: undefined } }),
  ]);
  const wqes = r.dev.takeWqes(r.sqId);
  assert.deepEqual(wrIds(wqes), [2n, 3n]);
  assert.equal(wqes[0]![Wqe.OPCODE], WrOpcode.ATOMIC_CMP_AND_SWP);
  assert.equal(new DataView(wqes[0]!.buffer).getBigUint64(Wqe.SWAP, true), 20n);
});

Deno.test("INLINE: length within maxInlineData, opcode that can carry it, bytes copied", async () => {
  const r = await rig({ cap: { maxInlineData: 32 } });
  const at = r.sge.addr;
  throwsVerbs(
    () =>
      r.qp.postSend(send(1n, { addr: at, length: 33, lkey: 0 }, { sendFlags: SendFlags.INLINE })),
    "EINVAL",
    /inline data of 33 bytes exceeds maxInlineData 32/,
  );
  throwsVerbs(
    () =>
      r.qp.postSend(
        send(2n, { addr: at, length: 8, lkey: 0 }, {
          opcode: "RDMA_READ",
          sendFlags: SendFlags.INLINE,
          rdma: { remoteAddr: 0n, rkey: 1 },
        }),
      ),
    "EINVAL",
    /opcode RDMA_READ cannot carry INLINE data/,
  );
  throwsVerbs(
    () =>
      r.qp.postSend(
        send(3n, { addr: 0x10n, length: 8, lkey: 0 }, { sendFlags: SendFlags.INLINE }),
      ),
    "EINVAL",
    /inline sgList\[0\] 0x10\+8 is not inside guest memory/,
  );
  // Two SGEs of 16 bytes: exactly the limit; lkeys are not looked at.
  r.qp.postSend(
    send(4n, { addr: at, length: 16, lkey: 0xdead }, {
      sendFlags: SendFlags.INLINE,
      sgList: [{ addr: at, length: 16, lkey: 0xdead }, { addr: at + 32n, length: 16, lkey: 0 }],
    }),
  );
  r.dev.memory.fill(Number(at), 64, 0xff); // the application reuses its buffer at once
  const [wqe] = r.dev.takeWqes(r.sqId);
  const view = new DataView(wqe!.buffer);
  assert.equal(wqe!.length, WQE_HEADER_BYTES + 32);
  assert.equal(view.getUint16(Wqe.NUM_SGE, true), 0);
  assert.equal(view.getUint32(Wqe.INLINE_LEN, true), 32);
  const expected = [...Array(16).keys()].map((i) => i + 1).concat(
    [...Array(16).keys()].map((i) => i + 33),
  );
  assert.deepEqual([...wqe!.subarray(WQE_HEADER_BYTES)], expected);
});

Deno.test("a full SQ is ENOMEM at maxSendWr (not the ring size) until the device retires WQEs", async () => {
  const r = await rig({ cap: { maxSendWr: 5 } }); // ring of 8, limit 5
  assert.equal(r.qp.cap.maxSendWr, 5);
  r.qp.postSend([1n, 2n, 3n, 4n].map((id) => send(id, r.sge)));
  throwsVerbs(
    () => r.qp.postSend([send(5n, r.sge), send(6n, r.sge)]),
    "ENOMEM",
    /^ENOMEM: postSend wr\[1\] \(wrId 6n\): QP 0x11 send queue is full: 5 WRs outstanding \(maxSendWr 5\)/,
    /wr\[0\.\.0\] posted/,
  );
  // The device retires all five: their slots come back when the SQ looks full.
  assert.deepEqual(wrIds(r.dev.takeWqes(r.sqId, true)), [1n, 2n, 3n, 4n, 5n]);
  r.qp.postSend([10n, 11n, 12n, 13n, 14n].map((id) => send(id, r.sge)));
  throwsVerbs(() => r.qp.postSend(send(15n, r.sge)), "ENOMEM", /nothing posted/);
  assert.deepEqual(wrIds(r.dev.takeWqes(r.sqId)), [10n, 11n, 12n, 13n, 14n]);
});

Deno.test("postRecv: RESET refused, INIT accepted, SGE count, full RQ", async () => {
  const r = await rig({ state: "RESET", cap: { maxRecvWr: 3, maxRecvSge: 1 } });
  const recv = (wrId: bigint, sgList: Sge[] = [r.sge]): RecvWr => ({ wrId, sgList });
  throwsVerbs(
    () => r.qp.postRecv(recv(1n)),
    "EINVAL",
    /^EINVAL: postRecv wr\[0\] \(wrId 1n\): QP 0x11 is in state RESET; receives need INIT or later; nothing posted$/,
  );
  await r.qp.modify({ qpState: "INIT" });
  r.dev.rings.length = 0;
  throwsVerbs(
    () => r.qp.postRecv([recv(2n), recv(3n, [r.sge, r.sge])]),
    "EINVAL",
    /postRecv wr\[1\] \(wrId 3n\): 2 SGEs exceed maxRecvSge 1; wr\[0\.\.0\] posted/,
  );
  r.qp.postRecv([recv(4n), recv(5n, [])]);
  throwsVerbs(
    () => r.qp.postRecv(recv(6n)),
    "ENOMEM",
    /postRecv wr\[0\] \(wrId 6n\): QP 0x11 RQ is full: 3 WRs outstanding \(max 3\)/,
  );
  const wqes = r.dev.takeWqes(r.rqId, true);
  assert.deepEqual(wrIds(wqes), [2n, 4n, 5n]);
  assert.equal(wqes[0]![Wqe.OPCODE], 0x80);
  assert.equal(wqes[2]!.length, WQE_HEADER_BYTES, "a receive without SGEs is a bare header");
  // Only the first publish crossed avail_event (0); this device never re-armed.
  assert.deepEqual(r.dev.rings, [r.rqId]);
  r.qp.postRecv([recv(7n), recv(8n), recv(9n)]); // retired slots are reused
  assert.deepEqual(wrIds(r.dev.takeWqes(r.rqId)), [7n, 8n, 9n]);
});

Deno.test("a QP on an SRQ refuses postRecv; the SRQ checks its own limits", async () => {
  const dev = new FakeDevice();
  const pd = await Pd.alloc(dev);
  const cq = await Cq.create(dev, { cqe: 4 });
  const srq = await pd.createSrq({ maxWr: 2, maxSge: 1 });
  const qp = await pd.createQp({
    qpType: "RC",
    sendCq: cq,
    recvCq: cq,
    srq,
    cap: { ...CAP, maxRecvWr: 0 },
  });
  const createArgs = dev.sent(Op.CREATE_QP)[0]!;
  assert.equal(createArgs.srq, srq.handle);
  assert.equal(createArgs.rq, undefined, "no RQ ring with an SRQ");
  await qp.modify({ qpState: "INIT" });
  const sge = { addr: BigInt(BASE), length: 16, lkey: 1 };
  throwsVerbs(
    () => qp.postRecv({ wrId: 1n, sgList: [sge] }),
    "EINVAL",
    /QP 0x11 receives from SRQ \d+; post to the SRQ; nothing posted/,
  );
  throwsVerbs(
    () => srq.postRecv({ wrId: 2n, sgList: [sge, sge] }),
    "EINVAL",
    /2 SGEs exceed maxSge 1/,
  );
  srq.postRecv([{ wrId: 3n, sgList: [sge] }, { wrId: 4n }]);
  throwsVerbs(() => srq.postRecv({ wrId: 5n }), "ENOMEM", /SRQ \d+ is full: 2 WRs outstanding/);
  const srqId = dev.srqQueues.get(srq.handle)!;
  assert.deepEqual(wrIds(dev.takeWqes(srqId, true)), [3n, 4n]);
  // Polling the QP's receive CQ reaps the SRQ ring.
  dev.writeCqe(cq.handle, { wrId: 3n, opcode: WcOpcode.RECV });
  assert.equal(cq.poll(4).length, 1);
  srq.postRecv([{ wrId: 6n }, { wrId: 7n }]);
  assert.deepEqual(wrIds(dev.takeWqes(srqId)), [6n, 7n]);
});

Deno.test("cq.poll decodes CQEs in order, hands every slot back, and reaps the SQ", async () => {
  const r = await rig({ cap: { maxSendWr: 2 } });
  assert.equal(r.cq.cqe, 16);
  const cqQueue = r.dev.queues.get(r.dev.cqQueues.get(r.cq.handle)!)!;
  assert.equal(cqQueue.pending(r.dev.memory), 16, "every slot stocked at create");
  assert.deepEqual(r.cq.poll(4), []);
  r.qp.postSend([send(1n, r.sge), send(2n, r.sge)]);
  r.dev.takeWqes(r.sqId, true);
  r.dev.writeCqe(r.cq.handle, { wrId: 1n, byteLen: 64 });
  r.dev.writeCqe(r.cq.handle, { wrId: 2n, status: WcStatus.REM_ACCESS_ERR, qpNum: 0x11 });
  r.dev.writeCqe(r.cq.handle, { wrId: 3n, opcode: WcOpcode.RECV, byteLen: 7 });
  assert.equal(cqQueue.pending(r.dev.memory), 13);
  const first = r.cq.poll(2);
  assert.deepEqual(first, [
    { wrId: 1n, status: "SUCCESS", opcode: "SEND", byteLen: 64, qpNum: 0x11, srcQp: 0, wcFlags: 0 },
    {
      wrId: 2n,
      status: "REM_ACCESS_ERR",
      opcode: "SEND",
      byteLen: 0,
      qpNum: 0x11,
      srcQp: 0,
      wcFlags: 0,
    },
  ]);
  assert.deepEqual(r.cq.poll(8).map((wc) => [wc.wrId, wc.opcode, wc.byteLen]), [[3n, "RECV", 7]]);
  assert.equal(cqQueue.pending(r.dev.memory), 16, "all slots back");
  // A slot the device could not write (used length 0) yields no completion,
  // not the stale CQE still in it, and goes back to the device all the same.
  r.dev.writeCqe(r.cq.handle, { wrId: 8n }, 0);
  r.dev.writeCqe(r.cq.handle, { wrId: 9n });
  assert.deepEqual(r.cq.poll(8).map((wc) => wc.wrId), [9n]);
  assert.equal(cqQueue.pending(r.dev.memory), 16);
  // The SQ was reaped by the poll: two more WRs fit without the full-queue path.
  r.qp.postSend([send(4n, r.sge), send(5n, r.sge)]);
  throwsVerbs(() => r.cq.poll(0), "EINVAL", /poll\(0\)/);
});

Deno.test("cq.next waits without polling in a loop: it arms, then an event wakes it", async () => {
  const r = await rig();
  const armWord = () => {
    const arm = r.dev.sent(Op.CREATE_CQ)[0]!.armAddr as number;
    return r.dev.memory.loadU32(arm);
  };
  assert.equal(armWord(), CqArm.NONE);
  // Already there: no arming needed.
  r.dev.writeCqe(r.cq.handle, { wrId: 1n });
  assert.equal((await r.cq.next()).wrId, 1n);
  assert.equal(armWord(), CqArm.NONE);
  // Three waiters, none ready: the CQ gets armed.
  const waits = [r.cq.next(), r.cq.next(), r.cq.next()];
  assert.equal(armWord(), CqArm.NEXT);
  let settled = 0;
  for (const w of waits) void w.then(() => settled++);
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(settled, 0, "nothing resolves without a completion");
  // The device takes the arm word when it writes, then posts the event.
  const arm = r.dev.sent(Op.CREATE_CQ)[0]!.armAddr as number;
  r.dev.memory.storeU32(arm, CqArm.NONE);
  r.dev.writeCqe(r.cq.handle, { wrId: 2n });
  r.dev.writeCqe(r.cq.handle, { wrId: 3n });
  r.dev.completionEvent(r.cq.handle + 100); // another CQ's event changes nothing
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(settled, 0);
  r.dev.completionEvent(r.cq.handle);
  assert.equal(armWord(), CqArm.NEXT, "re-armed for the waiter still waiting");
  r.dev.memory.storeU32(arm, CqArm.NONE);
  r.dev.writeCqe(r.cq.handle, { wrId: 4n });
  r.dev.completionEvent(r.cq.handle);
  assert.deepEqual((await Promise.all(waits)).map((wc) => wc.wrId), [2n, 3n, 4n], "call order");
});

Deno.test("cq.next polls again after arming, so a completion that raced the arm is not missed", async () => {
  const r = await rig();
  const arm = r.dev.sent(Op.CREATE_CQ)[0]!.armAddr as number;
  // Model the race: the CQE lands while the driver stores the arm word.
  // (The fake writes it before the driver looks again, and posts no event.)
  const memory = r.dev.memory;
  const storeU32 = memory.storeU32.bind(memory);
  memory.storeU32 = (addr: number, value: number) => {
    storeU32(addr, value);
    if (addr === arm && value === CqArm.NEXT) r.dev.writeCqe(r.cq.handle, { wrId: 9n });
  };
  try {
    const wc = await r.cq.next();
    assert.equal(wc.wrId, 9n);
  } finally {
    memory.storeU32 = storeU32;
  }
});

Deno.test("reqNotify stores the arm word; getEvent collects COMPLETION events", async () => {
  const r = await rig();
  const arm = r.dev.sent(Op.CREATE_CQ)[0]!.armAddr as number;
  r.cq.reqNotify(true);
  assert.equal(r.dev.memory.loadU32(arm), CqArm.SOLICITED);
  r.cq.reqNotify();
  assert.equal(r.dev.memory.loadU32(arm), CqArm.NEXT);
  r.dev.completionEvent(r.cq.handle); // before anyone waits: kept
  await r.cq.getEvent();
  const waiting = r.cq.getEvent();
  r.dev.completionEvent(r.cq.handle);
  await waiting;
  r.dev.memory.storeU32(arm + 4, 3);
  assert.equal(r.cq.overruns, 3);
});

Deno.test("device failure rejects waiters; every later verb throws its error", async () => {
  const r = await rig();
  const next = r.cq.next();
  const event = r.cq.getEvent();
  const gone = new VerbsError("ENODEV", "device on /x.sock is closed");
  r.dev.die(gone);
  await assert.rejects(next, gone);
  await assert.rejects(event, gone);
  throwsVerbs(() => r.qp.postSend(send(1n, r.sge)), "ENODEV", /closed/);
  throwsVerbs(() => r.qp.postRecv({ wrId: 1n }), "ENODEV", /closed/);
  throwsVerbs(() => r.cq.poll(), "ENODEV", /closed/);
  throwsVerbs(() => r.cq.reqNotify(), "ENODEV", /closed/);
  await assert.rejects(r.cq.next(), gone);
  await assert.rejects(r.qp.modify({ qpState: "ERR" }), gone);
  await assert.rejects(r.qp.destroy(), gone);
  await assert.rejects(r.pd.regMr({ addr: BigInt(BASE), length: 8 }, Access.LOCAL_WRITE), gone);
  await assert.rejects(r.pd.createAh({ dgid: "::1" }), gone);
  // Disposal after the device is gone is quiet: the device freed everything.
  await r.qp[Symbol.asyncDispose]();
  await r.cq[Symbol.asyncDispose]();
  await r.pd[Symbol.asyncDispose]();
});

Deno.test("modify sends exactly the given keys; connect sends the three pingpong steps", async () => {
  const r = await rig({ state: "RESET" });
  await r.qp.modify({ qpState: "INIT", pkeyIndex: 0, portNum: 1, timeout: undefined });
  assert.deepEqual(r.dev.sent(Op.MODIFY_QP).at(-1), {
    qp: r.qp.handle,
    attr: { qpState: "INIT", pkeyIndex: 0, portNum: 1 },
  });
  await r.qp.modify({ qpState: "RESET" });
  const before = r.dev.sent(Op.MODIFY_QP).length;
  assert.ok(r.qp.psn >= 0 && r.qp.psn < 2 ** 24 && Number.isInteger(r.qp.psn));
  await r.qp.connect({ qpNum: 0x123, psn: 0xabcdef, gid: "::ffff:127.0.0.2" });
  assert.equal(r.qp.state, "RTS");
  const steps = r.dev.sent(Op.MODIFY_QP).slice(before).map((a) => a.attr);
  assert.deepEqual(steps, [
    {
      qpState: "INIT",
      pkeyIndex: 0,
      portNum: 1,
      qpAccessFlags: Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC,
    },
    {
      qpState: "RTR",
      pathMtu: r.dev.config.port.activeMtu,
      destQpNum: 0x123,
      rqPsn: 0xabcdef,
      ahAttr: { dgid: "::ffff:127.0.0.2", portNum: 1 },
      maxDestRdAtomic: 16,
      minRnrTimer: 12,
    },
    { qpState: "RTS", sqPsn: r.qp.psn, timeout: 14, retryCnt: 7, rnrRetry: 7, maxRdAtomic: 16 },
  ]);
  await assert.rejects(
    r.qp.connect({ qpNum: 1, psn: 1, gid: "::1" }),
    /QP 0x11 is in state RTS; connect starts from RESET, INIT or RTR/,
  );
  // A refused step leaves the state where it was.
  const uc = await rig({ qpType: "UC", state: "INIT" });
  uc.dev.refuse.set(Op.MODIFY_QP, "EINVAL");
  await assert.rejects(uc.qp.connect({ qpNum: 1, psn: 2, gid: "::1" }), /EINVAL/);
  assert.equal(uc.qp.state, "INIT");
  await uc.qp.connect({ qpNum: 1, psn: 2, gid: "::1" });
  const ucSteps = uc.dev.sent(Op.MODIFY_QP).slice(-2).map((a) => Object.keys(a.attr as object));
  assert.deepEqual(ucSteps, [
    ["qpState", "pathMtu", "destQpNum", "rqPsn", "ahAttr"],
    ["qpState", "sqPsn"],
  ]);
  const ud = await rig({ qpType: "UD" });
  await assert.rejects(ud.qp.connect({ qpNum: 1, psn: 1, gid: "::1" }), /is UD: connect is for RC/);
  await assert.rejects(
    r.qp.connect({ qpNum: 1 << 24, psn: 1, gid: "::1" }),
    /remote qpNum 16777216 is not an integer in 0..16777215/,
  );
});

Deno.test("connect options override each attribute they name and keep the rest", async () => {
  const r = await rig({ state: "RESET" });
  const before = r.dev.sent(Op.MODIFY_QP).length;
  await r.qp.connect({ qpNum: 0x321, psn: 5, gid: "::ffff:127.0.0.3" }, {
    accessFlags: Access.REMOTE_WRITE,
    pathMtu: 256,
    minRnrTimer: 1,
    sqPsn: 77,
    timeout: 3,
    retryCnt: 2,
    rnrRetry: undefined, // as if not given
  });
  const steps = r.dev.sent(Op.MODIFY_QP).slice(before).map((a) => a.attr);
  assert.deepEqual(steps, [
    { qpState: "INIT", pkeyIndex: 0, portNum: 1, qpAccessFlags: Access.REMOTE_WRITE },
    {
      qpState: "RTR",
      pathMtu: 256,
      destQpNum: 0x321,
      rqPsn: 5,
      ahAttr: { dgid: "::ffff:127.0.0.3", portNum: 1 },
      maxDestRdAtomic: 16,
      minRnrTimer: 1,
    },
    { qpState: "RTS", sqPsn: 77, timeout: 3, retryCnt: 2, rnrRetry: 7, maxRdAtomic: 16 },
  ]);
});

Deno.test("create and destroy: memory comes back; a refused destroy frees nothing", async () => {
  const dev = new FakeDevice();
  const baseline = dev.allocator.allocations;
  const pd = await Pd.alloc(dev);
  const cq = await Cq.create(dev, { cqe: 100 });
  assert.equal(cq.cqe, 128);
  const createCq = dev.sent(Op.CREATE_CQ)[0]!;
  assert.deepEqual(Object.keys(createCq), ["cqe", "ring", "armAddr"]);
  assert.equal(createCq.cqe, 100);
  assert.equal((createCq.ring as RingDesc).size, 128);
  const qp = await pd.createQp({ qpType: "RC", sendCq: cq, recvCq: cq, cap: CAP });
  const createQp = dev.sent(Op.CREATE_QP)[0]!;
  assert.deepEqual(createQp.cap, CAP);
  assert.equal((createQp.sq as RingDesc).size, 8);
  assert.equal(createQp.pd, pd.handle);
  const inUse = dev.allocator.allocations;
  assert.equal(inUse, baseline + 3 + 4, "CQ ring, slots, arm word; SQ and RQ rings and slots");

  dev.refuse.set(Op.DESTROY_CQ, "EBUSY");
  await assert.rejects(cq.destroy(), (e) => e instanceof VerbsError && e.errno === "EBUSY");
  assert.equal(dev.allocator.allocations, inUse, "nothing freed");
  assert.deepEqual(cq.poll(), [], "still usable");
  await qp.destroy();
  await qp.destroy(); // a second destroy does nothing
  assert.equal(dev.sent(Op.DESTROY_QP).length, 1);
  throwsVerbs(
    () => qp.postSend(send(1n, { addr: 0n, length: 0, lkey: 0 })),
    "EINVAL",
    /QP 0x11 was destroyed/,
  );
  const waiting = cq.next();
  await cq.destroy();
  await assert.rejects(waiting, /CQ \d+ was destroyed/);
  throwsVerbs(() => cq.poll(), "EINVAL", /CQ \d+ was destroyed/);
  await pd.dealloc();
  assert.equal(dev.allocator.allocations, baseline);

  // A refused create gives its memory back too.
  dev.refuse.set(Op.CREATE_CQ, "ENOMEM");
  await assert.rejects(Cq.create(dev, { cqe: 8 }), /ENOMEM/);
  assert.equal(dev.allocator.allocations, baseline);
});

Deno.test("create checks what sizes the rings before asking the device", async () => {
  const dev = new FakeDevice();
  const pd = await Pd.alloc(dev);
  await assert.rejects(Cq.create(dev, { cqe: 0 }), /cqe 0 is not an integer in 1..65536/);
  await assert.rejects(Cq.create(dev, { cqe: 70000 }), /cqe 70000 is not an integer in 1..65536/);
  const cq = await Cq.create(dev, { cqe: 4 });
  const base = { qpType: "RC" as const, sendCq: cq, recvCq: cq };
  await assert.rejects(
    pd.createQp({ ...base, cap: { ...CAP, maxSendWr: 0 } }),
    /cap.maxSendWr 0 is not an integer in 1..16384/,
  );
  await assert.rejects(
    pd.createQp({ ...base, cap: { ...CAP, maxInlineData: 257 } }),
    /cap.maxInlineData 257 is not an integer in 0..256/,
  );
  await assert.rejects(
    pd.createQp({ ...base, qpType: "RD" as QpType, cap: CAP }),
    /qpType RD is not one of RC, UC, UD/,
  );
  const other = await Cq.create(new FakeDevice(), { cqe: 4 });
  await assert.rejects(
    pd.createQp({ ...base, recvCq: other, cap: CAP }),
    /recvCq must be a CQ of this device/,
  );
  assert.equal(dev.sent(Op.CREATE_QP).length, 0, "no command for a refused create");
});

Deno.test("CQEs carry WITH_IMM immediate data through a poll", async () => {
  const r = await rig();
  const queue = r.dev.queues.get(r.dev.cqQueues.get(r.cq.handle)!)!;
  const chain = queue.pop(r.dev.memory)!;
  const view = new DataView(new ArrayBuffer(CQE_BYTES));
  view.setBigUint64(Cqe.WR_ID, 77n, true);
  view.setUint8(Cqe.OPCODE, WcOpcode.RECV_RDMA_WITH_IMM);
  view.setUint16(Cqe.WC_FLAGS, WcFlags.WITH_IMM, true);
  view.setUint32(Cqe.IMM_DATA, 0x1234_abcd, true);
  view.setUint32(Cqe.SRC_QP, 0x22, true);
  chain.writer.write(new Uint8Array(view.buffer));
  queue.pushUsed(r.dev.memory, chain.head, CQE_BYTES);
  assert.deepEqual(r.cq.poll(), [{
    wrId: 77n,
    status: "SUCCESS",
    opcode: "RECV_RDMA_WITH_IMM",
    byteLen: 0,
    immData: 0x1234_abcd,
    qpNum: 0,
    srcQp: 0x22,
    wcFlags: WcFlags.WITH_IMM,
  }]);
});
