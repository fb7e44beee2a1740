import assert from "node:assert/strict";
import { GuestMemory } from "../../../virtqueue/memory.ts";
import { layoutAt } from "../../../virtqueue/layout.ts";
import { DriverQueue } from "../../../virtqueue/driver_queue.ts";
import { DeviceQueue } from "../../../virtqueue/device_queue.ts";
import { DescriptorChain } from "../../../virtqueue/descriptor_chain.ts";
import { ParsedWqe, readWqe } from "../../../backend/engine/wqe_reader.ts";
import {
  RECV_OPCODE,
  SendFlags,
  Wqe,
  WQE_HEADER_BYTES,
  WrOpcode,
} from "../../../protocol/verbs.ts";

const BASE = 0x10000;

/** Posts `bytes` as a one-descriptor WQE and pops it on the device side. */
function pop(bytes: Uint8Array): DescriptorChain {
  const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(1 << 16), BASE);
  const { layout } = layoutAt(BASE, 8);
  const driver = new DriverQueue(layout);
  driver.init(mem);
  mem.write(BASE + 0x8000, bytes);
  driver.addOne(mem, BASE + 0x8000, bytes.length, false);
  driver.publish(mem);
  const chain = new DescriptorChain();
  assert.ok(new DeviceQueue(layout).popInto(mem, chain));
  return chain;
}

function wqe(
  fields: { opcode: number; flags?: number; numSge?: number; inlineLen?: number },
  body = 0,
) {
  const b = new Uint8Array(WQE_HEADER_BYTES + body);
  const v = new DataView(b.buffer);
  v.setBigUint64(Wqe.WR_ID, 0x1122334455667788n, true);
  v.setUint8(Wqe.OPCODE, fields.opcode);
  v.setUint8(Wqe.FLAGS, fields.flags ?? 0);
  v.setUint16(Wqe.NUM_SGE, fields.numSge ?? 0, true);
  v.setUint32(Wqe.IMM_DATA, 0xdeadbeef, true);
  v.setUint32(Wqe.REMOTE_ADDR, 0x1000, true);
  v.setUint32(Wqe.REMOTE_ADDR + 4, 0x1, true);
  v.setUint32(Wqe.RKEY, 0xabcd, true);
  v.setUint32(Wqe.INLINE_LEN, fields.inlineLen ?? 0, true);
  return { bytes: b, view: v };
}

const LIMITS = { maxSge: 4, maxInline: 64, recv: false };

Deno.test("a well-formed send WQE with SGEs parses field by field", () => {
  const { bytes, view } = wqe(
    { opcode: WrOpcode.RDMA_WRITE, flags: SendFlags.SIGNALED, numSge: 2 },
    32,
  );
  view.setUint32(64, 0x2000, true);
  view.setUint32(72, 100, true);
  view.setUint32(76, 0x77, true);
  view.setUint32(80 + 4, 0x3, true);
  view.setUint32(88, 5, true);
  const out = new ParsedWqe();
  assert.equal(readWqe(pop(bytes), out, LIMITS), null);
  assert.equal(out.wrId, 0x1122334455667788n);
  assert.equal(out.opcode, WrOpcode.RDMA_WRITE);
  assert.equal(out.immData, 0xdeadbeef);
  assert.equal(out.remoteAddr, 0x1_0000_1000);
  assert.equal(out.rkey, 0xabcd);
  assert.equal(out.numSge, 2);
  assert.deepEqual([out.sgeAddr[0], out.sgeLen[0], out.sgeKey[0]], [0x2000, 100, 0x77]);
  assert.equal(out.sgeAddr[1], 0x3_0000_0000);
  assert.equal(out.totalLength, 105);
});

Deno.test("inline data is copied out of the WQE", () => {
  const { bytes } = wqe({ opcode: WrOpcode.SEND, flags: SendFlags.INLINE, inlineLen: 5 }, 8);
  bytes.set([1, 2, 3, 4, 5], 64);
  const out = new ParsedWqe();
  assert.equal(readWqe(pop(bytes), out, LIMITS), null);
  assert.deepEqual([...out.inline.subarray(0, out.inlineLen)], [1, 2, 3, 4, 5]);
  assert.equal(out.totalLength, 5);
});

Deno.test("malformed WQEs are refused with what was wrong", () => {
  const out = new ParsedWqe();
  const cases: [string, Uint8Array, RegExp, boolean?][] = [
    ["short", new Uint8Array(10), /shorter than its header/],
    ["too many SGEs", wqe({ opcode: WrOpcode.SEND, numSge: 9 }, 144).bytes, /9 SGEs exceed/],
    ["SGEs past the end", wqe({ opcode: WrOpcode.SEND, numSge: 3 }, 16).bytes, /3 SGEs run past/],
    [
      "inline too long",
      wqe({ opcode: WrOpcode.SEND, flags: SendFlags.INLINE, inlineLen: 65 }, 80).bytes,
      /inline data of 65 bytes exceeds/,
    ],
    [
      "inline past the end",
      wqe({ opcode: WrOpcode.SEND, flags: SendFlags.INLINE, inlineLen: 40 }, 8).bytes,
      /runs past/,
    ],
    [
      "receive WQE on a send queue",
      wqe({ opcode: RECV_OPCODE }).bytes,
      /opcode 128 on a send queue/,
    ],
    [
      "send WQE on a receive queue",
      wqe({ opcode: WrOpcode.SEND }).bytes,
      /opcode 2 on a receive queue/,
      true,
    ],
  ];
  for (const [what, bytes, message, recv] of cases) {
    const error = readWqe(pop(bytes), out, { ...LIMITS, recv: recv ?? false });
    assert.match(error ?? "", message, what);
  }
});

Deno.test("an address above 2^53 parses as -1 so every range check fails", () => {
  const { bytes, view } = wqe({ opcode: WrOpcode.RDMA_READ, numSge: 1 }, 16);
  view.setUint32(Wqe.REMOTE_ADDR + 4, 0xffff_ffff, true);
  view.setUint32(64 + 4, 0xffff_0000, true);
  const out = new ParsedWqe();
  assert.equal(readWqe(pop(bytes), out, LIMITS), null);
  assert.equal(out.remoteAddr, -1);
  assert.equal(out.sgeAddr[0], -1);
});

Deno.test("INLINE on a READ or an atomic is malformed; on SEND and WRITE it is not", () => {
  for (
    const opcode of [
      WrOpcode.RDMA_READ,
      WrOpcode.ATOMIC_CMP_AND_SWP,
      WrOpcode.ATOMIC_FETCH_AND_ADD,
      7, // past the table: nothing to carry inline either
    ]
  ) {
    const { bytes } = wqe({ opcode, flags: SendFlags.INLINE | SendFlags.SIGNALED, inlineLen: 0 });
    const out = new ParsedWqe();
    assert.equal(
      readWqe(pop(bytes), out, LIMITS),
      `opcode ${opcode} cannot carry INLINE data`,
    );
    // The error completion still carries the WR's own id and opcode.
    assert.equal(out.wrId, 0x1122334455667788n);
    assert.equal(out.opcode, opcode);
  }
  for (
    const opcode of [
      WrOpcode.SEND,
      WrOpcode.SEND_WITH_IMM,
      WrOpcode.RDMA_WRITE,
      WrOpcode.RDMA_WRITE_WITH_IMM,
    ]
  ) {
    const { bytes } = wqe({ opcode, flags: SendFlags.INLINE, inlineLen: 4 }, 4);
    assert.equal(readWqe(pop(bytes), new ParsedWqe(), LIMITS), null, `opcode ${opcode}`);
  }
});
