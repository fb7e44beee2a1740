import assert from "node:assert/strict";
import { planMessage } from "../../../backend/roce/segment.ts";

// Opcode numbers straight from WIRE.md, not from the table under test.
const SEND_FIRST = 0x00, SEND_MIDDLE = 0x01, SEND_LAST_IMM = 0x03, SEND_ONLY = 0x04;
const WRITE_FIRST = 0x06, WRITE_MIDDLE = 0x07, WRITE_LAST = 0x08;
const READ_REQUEST = 0x0c, FETCH_ADD = 0x14, UC_SEND_ONLY = 0x24, UD_SEND_ONLY = 0x64;

Deno.test("an RC WRITE spanning MTUs is FIRST, MIDDLE..., LAST with AckReq on the last only", () => {
  const plan = planMessage({
    qpType: "RC",
    wr: "RDMA_WRITE",
    length: 3 * 1024 + 5,
    mtu: 1024,
    psn: 100,
  });
  assert.deepEqual(plan.segments.map((s) => s.opcode), [
    WRITE_FIRST,
    WRITE_MIDDLE,
    WRITE_MIDDLE,
    WRITE_LAST,
  ]);
  assert.deepEqual(plan.segments.map((s) => [s.psn, s.offset, s.length, s.ackReq]), [
    [100, 0, 1024, false],
    [101, 1024, 1024, false],
    [102, 2048, 1024, false],
    [103, 3072, 5, true],
  ]);
  assert.equal(plan.psnCount, 4);
  assert.equal(plan.nextPsn, 104);
});

Deno.test("exactly one MTU, and zero bytes, are ONLY packets", () => {
  for (const length of [0, 1, 4096]) {
    const plan = planMessage({ qpType: "RC", wr: "SEND", length, mtu: 4096, psn: 7 });
    assert.equal(plan.segments.length, 1, `length ${length}`);
    assert.equal(plan.segments[0]!.opcode, SEND_ONLY);
    assert.equal(plan.segments[0]!.length, length);
    assert.equal(plan.nextPsn, 8);
  }
  const two = planMessage({ qpType: "RC", wr: "SEND_WITH_IMM", length: 4097, mtu: 4096, psn: 7 });
  assert.deepEqual(two.segments.map((s) => s.opcode), [SEND_FIRST, SEND_LAST_IMM]);
  const three = planMessage({ qpType: "RC", wr: "SEND", length: 600, mtu: 256, psn: 0 });
  assert.deepEqual(three.segments.map((s) => s.opcode), [SEND_FIRST, SEND_MIDDLE, 0x02]);
});

Deno.test("a READ is one request that consumes a PSN per response packet; atomics take one", () => {
  const read = planMessage({
    qpType: "RC",
    wr: "RDMA_READ",
    length: 10_000,
    mtu: 4096,
    psn: 0xffffff,
  });
  assert.equal(read.segments.length, 1);
  assert.equal(read.segments[0]!.opcode, READ_REQUEST);
  assert.equal(read.psnCount, 3);
  assert.equal(read.nextPsn, 2, "wraps at 2^24");
  const empty = planMessage({ qpType: "RC", wr: "RDMA_READ", length: 0, mtu: 4096, psn: 5 });
  assert.equal(empty.psnCount, 1);
  const faa = planMessage({
    qpType: "RC",
    wr: "ATOMIC_FETCH_AND_ADD",
    length: 8,
    mtu: 256,
    psn: 5,
  });
  assert.deepEqual([faa.segments[0]!.opcode, faa.psnCount, faa.nextPsn], [FETCH_ADD, 1, 6]);
});

Deno.test("UC never asks for ACKs; UD is one packet and refuses more than an MTU", () => {
  const uc = planMessage({ qpType: "UC", wr: "SEND", length: 10, mtu: 1024, psn: 0 });
  assert.deepEqual([uc.segments[0]!.opcode, uc.segments[0]!.ackReq], [UC_SEND_ONLY, false]);
  const ucWrite = planMessage({ qpType: "UC", wr: "RDMA_WRITE", length: 3000, mtu: 1024, psn: 0 });
  assert.ok(ucWrite.segments.every((s) => !s.ackReq));
  const ud = planMessage({ qpType: "UD", wr: "SEND", length: 1024, mtu: 1024, psn: 9 });
  assert.deepEqual([ud.segments[0]!.opcode, ud.nextPsn], [UD_SEND_ONLY, 10]);
  assert.throws(
    () => planMessage({ qpType: "UD", wr: "SEND", length: 1025, mtu: 1024, psn: 0 }),
    { name: "RangeError", message: /UD SEND of 1025 bytes exceeds the path MTU 1024/ },
  );
});

Deno.test("refusals name what was wrong", () => {
  const base = { qpType: "RC" as const, wr: "SEND" as const, length: 8, mtu: 1024, psn: 0 };
  assert.throws(() => planMessage({ ...base, qpType: "UD", wr: "RDMA_READ" }), {
    name: "TypeError",
    message: "RDMA_READ is not allowed on a UD QP",
  });
  assert.throws(() => planMessage({ ...base, mtu: 1500 }), /path MTU 1500 is not one of/);
  assert.throws(() => planMessage({ ...base, length: -1 }), /message length -1/);
  assert.throws(() => planMessage({ ...base, psn: 1 << 24 }), /PSN 16777216 is not a 24-bit/);
});
