import assert from "node:assert/strict";
import {
  Cqe,
  CQE_BYTES,
  RECV_OPCODE,
  SendFlags,
  SGE_BYTES,
  WcFlags,
  WcOpcode,
  type WcOpcodeName,
  WcStatus,
  type WcStatusName,
  Wqe,
  WQE_HEADER_BYTES,
  WrOpcode,
} from "../../protocol/verbs.ts";
import { GuestMemory } from "../../virtqueue/memory.ts";
import { decodeCqe, encodeRecvWqe, encodeSendWqe } from "../../driver/wqe.ts";
import type { Ah } from "../../driver/ah.ts";
import type { SendWr } from "../../driver/types.ts";

/**
 * The expected bytes, built without DataView: each value is split into
 * little-endian bytes by hand, so a wrong offset or byte order in the
 * encoder cannot be mirrored here.
 */
class Expect {
  readonly bytes: Uint8Array;
  constructor(length: number) {
    this.bytes = new Uint8Array(length);
  }
  put(offset: number, width: 1 | 2 | 4 | 8, value: number | bigint): this {
    let v = BigInt(value);
    for (let i = 0; i < width; i++) {
      this.bytes[offset + i] = Number(v & 0xffn);
      v >>= 8n;
    }
    return this;
  }
  sge(index: number, addr: bigint, length: number, lkey: number): this {
    const at = WQE_HEADER_BYTES + index * SGE_BYTES;
    return this.put(at, 8, addr).put(at + 8, 4, length).put(at + 12, 4, lkey);
  }
}

/** A slot-sized buffer filled with 0xEE so every byte the encoder leaves alone shows. */
function dirtySlot(length = 256): DataView {
  const bytes = new Uint8Array(length).fill(0xee);
  return new DataView(bytes.buffer);
}

function bytesOf(view: DataView, length: number): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, length);
}

const fakeAh = { handle: 0x2a, destroyed: false } as unknown as Ah;

Deno.test("the WQE layout constants are the contract's offsets (pinned literally)", () => {
  assert.deepEqual(
    { ...Wqe },
    {
      WR_ID: 0,
      OPCODE: 8,
      FLAGS: 9,
      NUM_SGE: 10,
      IMM_DATA: 12,
      REMOTE_ADDR: 16,
      RKEY: 24,
      INLINE_LEN: 28,
      COMPARE_ADD: 32,
      SWAP: 40,
      AH: 48,
      REMOTE_QPN: 52,
      REMOTE_QKEY: 56,
    },
  );
  assert.equal(WQE_HEADER_BYTES, 64);
  assert.equal(SGE_BYTES, 16);
  assert.equal(CQE_BYTES, 40);
});

Deno.test("a SEND WQE with two SGEs is exactly the expected bytes", () => {
  const view = dirtySlot();
  const wr: SendWr = {
    wrId: 0x0102_0304_0506_0708n,
    opcode: "SEND",
    sendFlags: SendFlags.SIGNALED | SendFlags.SOLICITED,
    sgList: [
      { addr: 0x1_0000_2000n, length: 100, lkey: 0x0000_0105 },
      { addr: 0xffff_ffff_ffff_fff0n, length: 0xffff_ffff, lkey: 0xdead_beef },
    ],
  };
  const length = encodeSendWqe(view, wr);
  assert.equal(length, 64 + 2 * 16);
  const expected = new Expect(length)
    .put(Wqe.WR_ID, 8, wr.wrId)
    .put(Wqe.OPCODE, 1, WrOpcode.SEND)
    .put(Wqe.FLAGS, 1, SendFlags.SIGNALED | SendFlags.SOLICITED)
    .put(Wqe.NUM_SGE, 2, 2)
    .sge(0, 0x1_0000_2000n, 100, 0x105)
    .sge(1, 0xffff_ffff_ffff_fff0n, 0xffff_ffff, 0xdead_beef);
  assert.deepEqual(bytesOf(view, length), expected.bytes);
  // Spot check the byte order literally: wrId little-endian at offset 0.
  assert.deepEqual([...bytesOf(view, 8)], [8, 7, 6, 5, 4, 3, 2, 1]);
  assert.equal(view.getUint8(length), 0xee, "nothing written past the WQE");
});

Deno.test("every send opcode puts its operands at the layout offsets and zeroes the rest", () => {
  const sge = { addr: 0x1_0000_4000n, length: 8, lkey: 0x77 };
  const cases: { wr: SendWr; fill: (e: Expect) => Expect }[] = [
    {
      wr: { wrId: 1n, opcode: "SEND_WITH_IMM", immData: 0x1234_5678, sgList: [sge] },
      fill: (e) => e.put(Wqe.IMM_DATA, 4, 0x1234_5678),
    },
    {
      wr: {
        wrId: 2n,
        opcode: "RDMA_WRITE",
        sgList: [sge],
        rdma: { remoteAddr: 0x2_0000_0010n, rkey: 0xabcd_0001 },
      },
      fill: (e) => e.put(Wqe.REMOTE_ADDR, 8, 0x2_0000_0010n).put(Wqe.RKEY, 4, 0xabcd_0001),
    },
    {
      wr: {
        wrId: 3n,
        opcode: "RDMA_WRITE_WITH_IMM",
        immData: 0xffff_ffff,
        sgList: [sge],
        rdma: { remoteAddr: 0x20n, rkey: 5 },
      },
      fill: (e) =>
        e.put(Wqe.IMM_DATA, 4, 0xffff_ffff).put(Wqe.REMOTE_ADDR, 8, 0x20n).put(Wqe.RKEY, 4, 5),
    },
    {
      wr: { wrId: 4n, opcode: "RDMA_READ", sgList: [sge], rdma: { remoteAddr: 0x40n, rkey: 6 } },
      fill: (e) => e.put(Wqe.REMOTE_ADDR, 8, 0x40n).put(Wqe.RKEY, 4, 6),
    },
    {
      wr: {
        wrId: 5n,
        opcode: "ATOMIC_CMP_AND_SWP",
        sgList: [sge],
        atomic: { remoteAddr: 0x88n, rkey: 7, compareAdd: 0x1111n, swap: 0xffff_0000_0000_0001n },
      },
      fill: (e) =>
        e.put(Wqe.REMOTE_ADDR, 8, 0x88n).put(Wqe.RKEY, 4, 7).put(Wqe.COMPARE_ADD, 8, 0x1111n)
          .put(Wqe.SWAP, 8, 0xffff_0000_0000_0001n),
    },
    {
      wr: {
        wrId: 6n,
        opcode: "ATOMIC_FETCH_AND_ADD",
        sgList: [sge],
        atomic: { remoteAddr: 0x90n, rkey: 8, compareAdd: 3n },
      },
      fill: (e) => e.put(Wqe.REMOTE_ADDR, 8, 0x90n).put(Wqe.RKEY, 4, 8).put(Wqe.COMPARE_ADD, 8, 3n),
    },
  ];
  for (const { wr, fill } of cases) {
    const view = dirtySlot();
    const length = encodeSendWqe(view, wr);
    assert.equal(length, 80, wr.opcode);
    const expected = fill(
      new Expect(length).put(Wqe.WR_ID, 8, wr.wrId).put(Wqe.OPCODE, 1, WrOpcode[wr.opcode])
        .put(Wqe.NUM_SGE, 2, 1).sge(0, sge.addr, sge.length, sge.lkey),
    );
    assert.deepEqual(bytesOf(view, length), expected.bytes, wr.opcode);
  }
});

Deno.test("a reused slot shows nothing of the WR that used it before", () => {
  const view = dirtySlot();
  encodeSendWqe(view, {
    wrId: 9n,
    opcode: "ATOMIC_CMP_AND_SWP",
    immData: 77,
    sgList: [{ addr: 0x10n, length: 8, lkey: 1 }],
    atomic: { remoteAddr: 0x80n, rkey: 2, compareAdd: 3n, swap: 4n },
  }, { ud: true });
  // immData on an opcode without immediate data is not written either.
  assert.equal(view.getUint32(Wqe.IMM_DATA, true), 0);
  const length = encodeSendWqe(view, { wrId: 10n, opcode: "SEND", immData: 5 });
  assert.equal(length, WQE_HEADER_BYTES);
  const expected = new Expect(length).put(Wqe.WR_ID, 8, 10n).put(Wqe.OPCODE, 1, WrOpcode.SEND);
  assert.deepEqual(bytesOf(view, length), expected.bytes);
});

Deno.test("UD destination fields are written only for a UD QP", () => {
  const wr: SendWr = {
    wrId: 11n,
    opcode: "SEND",
    sgList: [],
    ud: { ah: fakeAh, remoteQpn: 0xab_cdef, remoteQkey: 0x1111_1111 },
  };
  const view = dirtySlot();
  encodeSendWqe(view, wr, { ud: true });
  const expected = new Expect(64).put(Wqe.WR_ID, 8, 11n).put(Wqe.OPCODE, 1, WrOpcode.SEND)
    .put(Wqe.AH, 4, 0x2a).put(Wqe.REMOTE_QPN, 4, 0xab_cdef).put(Wqe.REMOTE_QKEY, 4, 0x1111_1111);
  assert.deepEqual(bytesOf(view, 64), expected.bytes);
  encodeSendWqe(view, wr);
  assert.equal(view.getUint32(Wqe.AH, true), 0, "an RC QP ignores a stray ud");
});

Deno.test("INLINE copies the SGE bytes from guest memory after the header", () => {
  const base = 0x1_0000_0000;
  const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(4096), base);
  mem.write(base + 0x100, new Uint8Array([1, 2, 3, 4, 5]));
  mem.write(base + 0x800, new Uint8Array([0xa0, 0xa1, 0xa2]));
  const view = dirtySlot();
  const wr: SendWr = {
    wrId: 12n,
    opcode: "RDMA_WRITE_WITH_IMM",
    sendFlags: SendFlags.INLINE | SendFlags.SIGNALED,
    immData: 0x0a0b_0c0d,
    rdma: { remoteAddr: 0x3_0000_0000n, rkey: 0x101 },
    sgList: [
      { addr: BigInt(base + 0x100), length: 5, lkey: 0 },
      { addr: 0xdead_0000_0000n, length: 0, lkey: 0 }, // empty: skipped, never read
      { addr: BigInt(base + 0x800), length: 3, lkey: 0xffff_ffff },
    ],
  };
  const length = encodeSendWqe(view, wr, { mem });
  assert.equal(length, 64 + 8);
  const expected = new Expect(length).put(Wqe.WR_ID, 8, 12n)
    .put(Wqe.OPCODE, 1, WrOpcode.RDMA_WRITE_WITH_IMM)
    .put(Wqe.FLAGS, 1, SendFlags.INLINE | SendFlags.SIGNALED)
    .put(Wqe.NUM_SGE, 2, 0)
    .put(Wqe.IMM_DATA, 4, 0x0a0b_0c0d)
    .put(Wqe.REMOTE_ADDR, 8, 0x3_0000_0000n)
    .put(Wqe.RKEY, 4, 0x101)
    .put(Wqe.INLINE_LEN, 4, 8);
  expected.bytes.set([1, 2, 3, 4, 5, 0xa0, 0xa1, 0xa2], 64);
  assert.deepEqual(bytesOf(view, length), expected.bytes);
  // The copy is made at post time: changing the source later changes nothing.
  mem.write(base + 0x100, new Uint8Array([9, 9, 9, 9, 9]));
  assert.equal(view.getUint8(64), 1);
});

Deno.test("encoding honours the slot offset inside a shared view", () => {
  const view = new DataView(new ArrayBuffer(512), 64, 448);
  const length = encodeSendWqe(view, {
    wrId: 13n,
    opcode: "SEND",
    sgList: [{ addr: 0x10n, length: 1, lkey: 2 }],
  }, { offset: 128 });
  assert.equal(length, 80);
  assert.equal(view.getBigUint64(128 + Wqe.WR_ID, true), 13n);
  assert.equal(view.getBigUint64(128 + WQE_HEADER_BYTES, true), 0x10n);
  assert.equal(new Uint8Array(view.buffer, 0, 64 + 128).every((b) => b === 0), true);
});

Deno.test("a receive WQE is the header with RECV_OPCODE, its SGE count and SGEs", () => {
  const view = dirtySlot();
  const length = encodeRecvWqe(view, {
    wrId: 0xffff_ffff_ffff_ffffn,
    sgList: [
      { addr: 0x1_0000_1000n, length: 4096, lkey: 0x201 },
      { addr: 0x1_0000_3000n, length: 40, lkey: 0x301 },
      { addr: 0x1_0000_5000n, length: 0, lkey: 0x401 },
    ],
  });
  assert.equal(length, 64 + 3 * 16);
  const expected = new Expect(length).put(Wqe.WR_ID, 8, 0xffff_ffff_ffff_ffffn)
    .put(Wqe.OPCODE, 1, RECV_OPCODE).put(Wqe.NUM_SGE, 2, 3)
    .sge(0, 0x1_0000_1000n, 4096, 0x201).sge(1, 0x1_0000_3000n, 40, 0x301)
    .sge(2, 0x1_0000_5000n, 0, 0x401);
  assert.deepEqual(bytesOf(view, length), expected.bytes);
  assert.equal(encodeRecvWqe(view, { wrId: 1n }, 64), 64, "a receive without SGEs is a header");
  assert.equal(view.getUint16(64 + Wqe.NUM_SGE, true), 0);
  assert.equal(view.getUint8(64 + Wqe.OPCODE), RECV_OPCODE);
});

/** Writes a CQE the way the device does, by hand at the Cqe offsets. */
function cqeBytes(fields: {
  wrId: bigint;
  status: number;
  opcode: number;
  wcFlags?: number;
  byteLen?: number;
  immData?: number;
  qpNum?: number;
  srcQp?: number;
}): DataView {
  const e = new Expect(CQE_BYTES + 8)
    .put(Cqe.WR_ID, 8, fields.wrId)
    .put(Cqe.STATUS, 1, fields.status)
    .put(Cqe.OPCODE, 1, fields.opcode)
    .put(Cqe.WC_FLAGS, 2, fields.wcFlags ?? 0)
    .put(Cqe.BYTE_LEN, 4, fields.byteLen ?? 0)
    .put(Cqe.IMM_DATA, 4, fields.immData ?? 0)
    .put(Cqe.QP_NUM, 4, fields.qpNum ?? 0)
    .put(Cqe.SRC_QP, 4, fields.srcQp ?? 0)
    .put(Cqe.VENDOR_ERR, 4, 0x55)
    .put(Cqe.PKEY_INDEX, 2, 0)
    .put(Cqe.SL, 1, 3)
    .put(Cqe.SLID, 4, 0);
  // Shifted by 8 bytes so decoding at an offset is exercised too.
  const bytes = new Uint8Array(CQE_BYTES + 8);
  bytes.set(e.bytes.subarray(0, CQE_BYTES), 8);
  return new DataView(bytes.buffer);
}

Deno.test("a CQE decodes field by field; immData only with WITH_IMM", () => {
  const recv = decodeCqe(
    cqeBytes({
      wrId: 0x8000_0000_0000_0001n,
      status: WcStatus.SUCCESS,
      opcode: WcOpcode.RECV_RDMA_WITH_IMM,
      wcFlags: WcFlags.WITH_IMM | WcFlags.GRH,
      byteLen: 0xffff_fffe,
      immData: 0xcafe_f00d,
      qpNum: 0xff_ffff,
      srcQp: 0x12,
    }),
    8,
  );
  assert.deepEqual(recv, {
    wrId: 0x8000_0000_0000_0001n,
    status: "SUCCESS",
    opcode: "RECV_RDMA_WITH_IMM",
    byteLen: 0xffff_fffe,
    immData: 0xcafe_f00d,
    qpNum: 0xff_ffff,
    srcQp: 0x12,
    wcFlags: WcFlags.WITH_IMM | WcFlags.GRH,
  });
  const send = decodeCqe(
    cqeBytes({ wrId: 2n, status: WcStatus.SUCCESS, opcode: WcOpcode.SEND, immData: 99, qpNum: 7 }),
    8,
  );
  assert.deepEqual(send, {
    wrId: 2n,
    status: "SUCCESS",
    opcode: "SEND",
    byteLen: 0,
    qpNum: 7,
    srcQp: 0,
    wcFlags: 0,
  });
  assert.equal("immData" in send, false, "no immData key without WITH_IMM");
});

Deno.test("every status and opcode code decodes to its ibverbs name", () => {
  for (const [name, code] of Object.entries(WcStatus)) {
    const wc = decodeCqe(cqeBytes({ wrId: 1n, status: code, opcode: WcOpcode.RDMA_READ }), 8);
    assert.equal(wc.status, name as WcStatusName);
    assert.equal(wc.opcode, "RDMA_READ");
  }
  for (const [name, code] of Object.entries(WcOpcode)) {
    const wc = decodeCqe(cqeBytes({ wrId: 1n, status: WcStatus.WR_FLUSH_ERR, opcode: code }), 8);
    assert.equal(wc.opcode, name as WcOpcodeName);
    assert.equal(wc.status, "WR_FLUSH_ERR");
  }
});

Deno.test("unknown status or opcode codes become GENERAL_ERR and keep the WR id", () => {
  const badStatus = decodeCqe(cqeBytes({ wrId: 5n, status: 200, opcode: WcOpcode.RDMA_WRITE }), 8);
  assert.equal(badStatus.status, "GENERAL_ERR");
  assert.equal(badStatus.opcode, "RDMA_WRITE");
  assert.equal(badStatus.wrId, 5n);
  const badRecv = decodeCqe(cqeBytes({ wrId: 6n, status: WcStatus.SUCCESS, opcode: 0x85 }), 8);
  assert.deepEqual([badRecv.status, badRecv.opcode, badRecv.wrId], ["GENERAL_ERR", "RECV", 6n]);
  const badSend = decodeCqe(cqeBytes({ wrId: 7n, status: WcStatus.SUCCESS, opcode: 0x40 }), 8);
  assert.deepEqual([badSend.status, badSend.opcode], ["GENERAL_ERR", "SEND"]);
});
