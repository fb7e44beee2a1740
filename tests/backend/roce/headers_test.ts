import assert from "node:assert/strict";
import * as h from "../../../backend/roce/headers.ts";
import { RocePacket } from "../../../backend/roce/headers.ts";
import { Opcode, opcodeInfo } from "../../../backend/roce/opcodes.ts";

// A view that starts 5 bytes into a larger buffer: accessors must honour
// byteOffset, and the guard bytes around it must never change.
function framed(bytes: number[], at = 3): { view: DataView; buf: Uint8Array; at: number } {
  const buf = new Uint8Array(5 + at + bytes.length + 5).fill(0xee);
  buf.set(bytes, 5 + at);
  return { view: new DataView(buf.buffer, 5, at + bytes.length), buf, at };
}

Deno.test("BTH getters read the documented bits", () => {
  const { view, at } = framed([
    0x64, // opcode
    0xb5, // SE 1, MigReq 0, PadCnt 3, TVer 5
    0x12,
    0x34, // P_Key
    0xc0, // FECN, BECN
    0xab,
    0xcd,
    0xef, // dest QP
    0x80, // AckReq
    0x01,
    0x02,
    0x03, // PSN
  ]);
  assert.equal(h.bthOpcode(view, at), 0x64);
  assert.equal(h.bthSe(view, at), true);
  assert.equal(h.bthMig(view, at), false);
  assert.equal(h.bthPadCnt(view, at), 3);
  assert.equal(h.bthTver(view, at), 5);
  assert.equal(h.bthPkey(view, at), 0x1234);
  assert.equal(h.bthFecn(view, at), true);
  assert.equal(h.bthBecn(view, at), true);
  assert.equal(h.bthDestQp(view, at), 0xabcdef);
  assert.equal(h.bthAckReq(view, at), true);
  assert.equal(h.bthPsn(view, at), 0x010203);
});

Deno.test("BTH setters change only their own bits", () => {
  const { view, buf, at } = framed(new Array(12).fill(0xff));
  h.setBthSe(view, at, false);
  assert.equal(buf[9], 0x7f);
  h.setBthMig(view, at, false);
  assert.equal(buf[9], 0x3f);
  h.setBthPadCnt(view, at, 1);
  assert.equal(buf[9], 0x1f);
  h.setBthTver(view, at, 0);
  assert.equal(buf[9], 0x10);
  h.setBthFecn(view, at, false);
  assert.equal(buf[12], 0x7f);
  h.setBthBecn(view, at, false);
  assert.equal(buf[12], 0x3f, "reserved bits of byte 4 untouched");
  h.setBthDestQp(view, at, 0x000102);
  assert.deepEqual([...buf.subarray(12, 16)], [0x3f, 0x00, 0x01, 0x02]);
  h.setBthAckReq(view, at, false);
  h.setBthPsn(view, at, 0xfedcba);
  assert.deepEqual([...buf.subarray(16, 20)], [0x7f, 0xfe, 0xdc, 0xba]);
  h.setBthOpcode(view, at, 0x11);
  h.setBthPkey(view, at, 0x8001);
  assert.deepEqual([...buf.subarray(8, 12)], [0x11, 0x10, 0x80, 0x01]);
  assert.ok(buf.subarray(0, 8).every((b) => b === 0xee), "guard before");
  assert.ok(buf.subarray(20).every((b) => b === 0xee), "guard after");
});

Deno.test("extension header accessors: big-endian at their offsets", () => {
  const { view, buf, at } = framed(new Array(28).fill(0));
  h.setRethVa(view, at, 0x0102030405060708n);
  h.setRethRkey(view, at, 0x090a0b0c);
  h.setRethDmaLen(view, at, 0x0d0e0f10);
  assert.deepEqual([...buf.subarray(8, 24)], Array.from({ length: 16 }, (_, i) => i + 1));
  assert.equal(h.rethVa(view, at), 0x0102030405060708n);
  assert.equal(h.rethRkey(view, at), 0x090a0b0c);
  assert.equal(h.rethDmaLen(view, at), 0x0d0e0f10);

  h.setAtomicEthVa(view, at, 0x1111111111111111n);
  h.setAtomicEthRkey(view, at, 0x22222222);
  h.setAtomicEthSwapAdd(view, at, 0x3333333333333333n);
  h.setAtomicEthCompare(view, at, 0xffffffff00000001n);
  assert.deepEqual([...buf.subarray(8 + 12, 8 + 20)], new Array(8).fill(0x33));
  assert.deepEqual([...buf.subarray(8 + 20, 8 + 28)], [255, 255, 255, 255, 0, 0, 0, 1]);
  assert.equal(h.atomicEthVa(view, at), 0x1111111111111111n);
  assert.equal(h.atomicEthRkey(view, at), 0x22222222);
  assert.equal(h.atomicEthSwapAdd(view, at), 0x3333333333333333n);
  assert.equal(h.atomicEthCompare(view, at), 0xffffffff00000001n);

  buf.fill(0, 8, 36);
  h.setAethSyndrome(view, at, 0x61);
  h.setAethMsn(view, at, 0xabcdef);
  assert.deepEqual([...buf.subarray(8, 12)], [0x61, 0xab, 0xcd, 0xef]);
  h.setAethMsn(view, at, 1);
  assert.equal(h.aethSyndrome(view, at), 0x61, "MSN leaves the syndrome alone");
  assert.equal(h.aethMsn(view, at), 1);

  h.setAtomicAckEthOrigData(view, at, 0xdeadbeefcafef00dn);
  assert.equal(h.atomicAckEthOrigData(view, at), 0xdeadbeefcafef00dn);
  assert.equal(buf[8], 0xde);
  h.setImmDt(view, at, 0x80000001);
  assert.deepEqual([...buf.subarray(8, 12)], [0x80, 0, 0, 1]);
  assert.equal(h.immDt(view, at), 0x80000001);
  h.setIethRkey(view, at, 0x00c0ffee);
  assert.equal(h.iethRkey(view, at), 0x00c0ffee);

  buf.fill(0xff, 8, 16);
  h.setDethQkey(view, at, 0x80010000);
  h.setDethSrcQp(view, at, 0x000001);
  assert.deepEqual(
    [...buf.subarray(8, 16)],
    [0x80, 0x01, 0, 0, 0, 0, 0, 1],
    "reserved byte cleared",
  );
  buf[12] = 0xff;
  assert.equal(h.dethSrcQp(view, at), 1, "reserved byte not part of the QPN");
  assert.equal(h.dethQkey(view, at), 0x80010000);
  assert.ok(buf.subarray(0, 8).every((b) => b === 0xee));
  assert.ok(buf.subarray(39).every((b) => b === 0xee));
});

Deno.test("raw accessors cannot reach past the view", () => {
  const { view } = framed(new Array(12).fill(0), 0);
  assert.throws(() => h.rethVa(view, 8), RangeError);
  assert.throws(() => h.setBthPsn(view, 4, 1), RangeError);
});

Deno.test("RocePacket finds headers through the table", () => {
  const info = opcodeInfo(Opcode.RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE)!;
  const bytes = new Uint8Array(info.length + 4 + 4);
  const view = new DataView(bytes.buffer);
  h.setBthOpcode(view, 0, info.opcode);
  h.setRethRkey(view, info.offsets.reth, 77);
  h.setImmDt(view, info.offsets.immDt, 0x12345678);
  bytes.set([9, 8, 7, 6], info.length);
  view.setUint32(bytes.length - 4, 0xa1b2c3d4, true);
  const p = new RocePacket(bytes, info);
  assert.equal(p.rethRkey, 77);
  assert.equal(p.immDt, 0x12345678);
  assert.deepEqual([...p.payload], [9, 8, 7, 6]);
  assert.equal(p.icrc, 0xa1b2c3d4);
  assert.throws(() => p.syndrome, {
    name: "TypeError",
    message: /RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE carries no AETH/,
  });
  assert.throws(() => p.qkey, TypeError);
  assert.throws(() => p.origData, TypeError);
  assert.throws(() => p.swapAdd, TypeError);
  assert.throws(() => p.iethRkey, TypeError);
});

Deno.test("RocePacket built on too few bytes gives an empty payload, not the buffer's tail", () => {
  const info = opcodeInfo(Opcode.RC_SEND_ONLY)!;
  // 12 bytes only: payload length would be -4 (or less with pad).
  const bytes = new Uint8Array([4, 0x30, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0, 1]);
  const p = new RocePacket(bytes, info);
  assert.ok(p.payloadLength < 0);
  assert.equal(p.payload.length, 0);
});
