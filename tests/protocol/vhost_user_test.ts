import assert from "node:assert/strict";
import {
  CONFIG_FLAG_MIGRATION,
  decodeConfig,
  decodeMemoryTable,
  decodeU64,
  decodeVringAddr,
  decodeVringFile,
  decodeVringState,
  encodeConfig,
  encodeMemoryTable,
  encodeMessage,
  encodeReply,
  encodeU64,
  encodeU64Reply,
  encodeVringAddr,
  encodeVringFile,
  encodeVringState,
  featureMask,
  HEADER_SIZE,
  isRequestCode,
  MAX_PAYLOAD,
  type MemoryRegionDesc,
  MessageReader,
  ProtocolFeature,
  Request,
  requestName,
  validateMessage,
  type ValidateOptions,
  validateReply,
  VHOST_USER_F_PROTOCOL_FEATURES,
  type VhostUserMessage,
  VhostUserRangeError,
  VhostUserSyntaxError,
  VirtioFeature,
  type VringAddr,
} from "../../protocol/vhost_user.ts";

// ---------------------------------------------------------------- helpers

type ErrorClass = typeof VhostUserSyntaxError | typeof VhostUserRangeError;

/** Asserts `fn` throws exactly `cls` and that the message contains every piece. */
function assertFails(fn: () => unknown, cls: ErrorClass, ...pieces: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${String(e)}`);
    assert.equal((e as Error).constructor, cls);
    for (const p of pieces) {
      assert.ok((e as Error).message.includes(p), `"${(e as Error).message}" lacks "${p}"`);
    }
    return true;
  });
}

/** A header with arbitrary field values, then `payload`. */
function raw(request: number, flags: number, size: number, payload = new Uint8Array(0)) {
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, request >>> 0, true);
  v.setUint32(4, flags >>> 0, true);
  v.setUint32(8, size >>> 0, true);
  out.set(payload, HEADER_SIZE);
  return out;
}

function msg(request: number, payload: Uint8Array, flags = 0x1): VhostUserMessage {
  return { request, flags, payload };
}

const OPTS: ValidateOptions = { fdCount: 0, maxQueues: 4, configSize: 64 };

function opts(fdCount: number): ValidateOptions {
  return { ...OPTS, fdCount };
}

function region(gpa: bigint, size: bigint, uaddr = gpa + 0x7f00_0000_0000n, off = 0n) {
  return { guestPhysAddr: gpa, memorySize: size, userspaceAddr: uaddr, mmapOffset: off };
}

const ADDR: VringAddr = {
  index: 1,
  flags: 0,
  descUserAddr: 0x7f00_0000_1000n,
  usedUserAddr: 0x7f00_0000_3000n,
  availUserAddr: 0x7f00_0000_2000n,
  logGuestAddr: 0xdead_beefn,
};

function u32At(bytes: Uint8Array, at: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset).getUint32(at, true);
}

function u64At(bytes: Uint8Array, at: number): bigint {
  return new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(at, true);
}

/** mulberry32: a small seeded PRNG so the random test is reproducible. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---------------------------------------------------------------- constants

Deno.test("request codes and names follow the vhost-user specification", () => {
  const expected: [string, number][] = [
    ["GET_FEATURES", 1],
    ["SET_FEATURES", 2],
    ["SET_OWNER", 3],
    ["RESET_OWNER", 4],
    ["SET_MEM_TABLE", 5],
    ["SET_VRING_NUM", 8],
    ["SET_VRING_ADDR", 9],
    ["SET_VRING_BASE", 10],
    ["GET_VRING_BASE", 11],
    ["SET_VRING_KICK", 12],
    ["SET_VRING_CALL", 13],
    ["SET_VRING_ERR", 14],
    ["GET_PROTOCOL_FEATURES", 15],
    ["SET_PROTOCOL_FEATURES", 16],
    ["GET_QUEUE_NUM", 17],
    ["SET_VRING_ENABLE", 18],
    ["GET_CONFIG", 24],
    ["SET_CONFIG", 25],
  ];
  assert.deepEqual(Object.entries(Request), expected);
  for (const [name, code] of expected) {
    assert.equal(requestName(code), name);
    assert.ok(isRequestCode(code));
  }
  assert.equal(requestName(6), "request 6");
  assert.equal(isRequestCode(6), false);
  assert.equal(isRequestCode(9999), false);
});

Deno.test("feature bits and masks", () => {
  assert.equal(ProtocolFeature.MQ, 0);
  assert.equal(ProtocolFeature.REPLY_ACK, 3);
  assert.equal(ProtocolFeature.CONFIG, 9);
  assert.equal(ProtocolFeature.STATUS, 16);
  assert.equal(VirtioFeature.RING_INDIRECT_DESC, 28);
  assert.equal(VirtioFeature.RING_EVENT_IDX, 29);
  assert.equal(VirtioFeature.VERSION_1, 32);
  assert.equal(VHOST_USER_F_PROTOCOL_FEATURES, 30);
  assert.equal(featureMask(VHOST_USER_F_PROTOCOL_FEATURES), 0x4000_0000n);
  assert.equal(featureMask(63), 0x8000_0000_0000_0000n);
  assert.throws(() => featureMask(64), RangeError);
  assert.throws(() => featureMask(-1), RangeError);
});

// ---------------------------------------------------------------- payload round trips

Deno.test("u64 payload: little-endian round trip", () => {
  for (const v of [0n, 1n, 0x1_0000_0000n, 0xffff_ffff_ffff_ffffn, featureMask(32) | 0x3n]) {
    const bytes = encodeU64(v);
    assert.equal(bytes.length, 8);
    assert.equal(u64At(bytes, 0), v);
    assert.equal(decodeU64(bytes), v);
  }
  assert.deepEqual([...encodeU64(0x0102n)], [2, 1, 0, 0, 0, 0, 0, 0]);
  assert.throws(() => encodeU64(-1n), /u64 -1 is not a u64/);
  assert.throws(() => encodeU64(1n << 64n), RangeError);
});

Deno.test("vring state payload: round trip and layout", () => {
  const bytes = encodeVringState({ index: 7, num: 0xffff_ffff });
  assert.deepEqual([...bytes], [7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
  assert.deepEqual(decodeVringState(bytes), { index: 7, num: 0xffff_ffff });
  assert.throws(() => encodeVringState({ index: -1, num: 0 }), /index -1 is not a u32/);
  assert.throws(() => encodeVringState({ index: 0, num: 2 ** 32 }), RangeError);
});

Deno.test("vring address payload: round trip and field offsets", () => {
  const withLog = { ...ADDR, flags: 1, logGuestAddr: 0xffff_ffff_ffff_ffffn };
  const bytes = encodeVringAddr(withLog);
  assert.equal(bytes.length, 40);
  assert.equal(u32At(bytes, 0), 1);
  assert.equal(u32At(bytes, 4), 1);
  assert.equal(u64At(bytes, 8), ADDR.descUserAddr);
  assert.equal(u64At(bytes, 16), ADDR.usedUserAddr);
  assert.equal(u64At(bytes, 24), ADDR.availUserAddr);
  assert.equal(u64At(bytes, 32), 0xffff_ffff_ffff_ffffn);
  assert.deepEqual(decodeVringAddr(bytes), withLog);
  assert.throws(() => encodeVringAddr({ ...ADDR, usedUserAddr: -4n }), /usedUserAddr -4/);
});

Deno.test("vring file payload (KICK/CALL/ERR): index bits 0-7, NOFD bit 8", () => {
  for (
    const file of [{ index: 0, noFd: false }, { index: 255, noFd: true }, { index: 3, noFd: true }]
  ) {
    const bytes = encodeVringFile(file);
    assert.equal(u64At(bytes, 0), BigInt(file.index | (file.noFd ? 0x100 : 0)));
    assert.deepEqual(decodeVringFile(bytes), file);
  }
  assert.throws(() => encodeVringFile({ index: 256, noFd: false }), /index 256/);
});

Deno.test("memory table payload: round trip with 1 and 8 regions, 8 + 32n bytes", () => {
  const one = [region(0n, 0x10_0000n, 0x7f12_3400_0000n, 0x1000n)];
  const b1 = encodeMemoryTable(one);
  assert.equal(b1.length, 40);
  assert.equal(u32At(b1, 0), 1);
  assert.equal(u32At(b1, 4), 0);
  assert.equal(u64At(b1, 8), 0n);
  assert.equal(u64At(b1, 16), 0x10_0000n);
  assert.equal(u64At(b1, 24), 0x7f12_3400_0000n);
  assert.equal(u64At(b1, 32), 0x1000n);
  assert.deepEqual(decodeMemoryTable(b1), one);

  const eight = Array.from({ length: 8 }, (_, i) => region(BigInt(i) << 32n, 0x1000n));
  const b8 = encodeMemoryTable(eight);
  assert.equal(b8.length, 264);
  assert.deepEqual(decodeMemoryTable(b8), eight);
  assert.throws(() => encodeMemoryTable([...eight, region(1n << 40n, 1n)]), /9 memory regions/);
});

Deno.test("memory table payload: the full 8-slot form is accepted, spare slots ignored", () => {
  const two = [region(0n, 0x1000n), region(0x10000n, 0x2000n)];
  const full = new Uint8Array(264);
  full.set(encodeMemoryTable(two));
  full.fill(0xee, 8 + 32 * 2); // garbage in the unused slots
  new DataView(full.buffer).setUint32(4, 0xdeadbeef, true); // padding is not checked
  assert.deepEqual(decodeMemoryTable(full), two);
  const valid = validateMessage(msg(Request.SET_MEM_TABLE, full), opts(2));
  assert.deepEqual(valid.body, two);
});

Deno.test("config payload: round trip, size field is data length", () => {
  const data = Uint8Array.from({ length: 20 }, (_, i) => i * 3);
  const bytes = encodeConfig({ offset: 8, flags: CONFIG_FLAG_MIGRATION, data });
  assert.equal(bytes.length, 32);
  assert.equal(u32At(bytes, 0), 8);
  assert.equal(u32At(bytes, 4), 20);
  assert.equal(u32At(bytes, 8), 1);
  assert.deepEqual(decodeConfig(bytes), { offset: 8, flags: 1, data });
  const decoded = decodeConfig(bytes);
  bytes[12] = 99; // the decoded data is a copy
  assert.equal(decoded.data[0], 0);
  assert.throws(
    () => encodeConfig({ offset: 0, flags: 0, data: new Uint8Array(MAX_PAYLOAD - 11) }),
    /4085 bytes does not fit MAX_PAYLOAD 4096/,
  );
});

// ---------------------------------------------------------------- framing

Deno.test("encodeMessage writes the 12-byte little-endian header", () => {
  const payload = encodeVringState({ index: 2, num: 128 });
  const plain = encodeMessage(Request.SET_VRING_NUM, payload);
  assert.deepEqual([...plain.subarray(0, 12)], [8, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0]);
  assert.deepEqual(plain.subarray(12), payload);
  assert.equal(u32At(encodeMessage(3, new Uint8Array(0), { needReply: true }), 4), 0x9);
  assert.equal(u32At(encodeReply(Request.GET_VRING_BASE, payload), 4), 0x5);
  const r = encodeU64Reply(Request.GET_FEATURES, featureMask(32));
  assert.equal(r.length, 20);
  assert.equal(u32At(r, 0), 1);
  assert.equal(u32At(r, 4), 0x5);
  assert.equal(u32At(r, 8), 8);
  assert.equal(u64At(r, 12), 1n << 32n);
  assert.throws(() => encodeMessage(9999, new Uint8Array(0)), /unknown request 9999/);
  assert.throws(
    () => encodeMessage(Request.SET_CONFIG, new Uint8Array(MAX_PAYLOAD + 1)),
    /SET_CONFIG: payload of 4097 bytes exceeds MAX_PAYLOAD 4096/,
  );
  assert.equal(encodeMessage(Request.SET_CONFIG, new Uint8Array(MAX_PAYLOAD)).length, 4108);
});

/** One message of every payload type, as a stream. */
function sampleStream(): { bytes: Uint8Array; messages: VhostUserMessage[] } {
  const messages: VhostUserMessage[] = [
    msg(Request.GET_FEATURES, new Uint8Array(0)),
    msg(Request.SET_FEATURES, encodeU64(featureMask(32) | featureMask(30))),
    msg(Request.SET_MEM_TABLE, encodeMemoryTable([region(0n, 0x1000n), region(0x2000n, 1n)])),
    msg(Request.SET_VRING_NUM, encodeVringState({ index: 1, num: 256 }), 0x9),
    msg(Request.SET_VRING_ADDR, encodeVringAddr(ADDR)),
    msg(Request.SET_VRING_KICK, encodeVringFile({ index: 1, noFd: false })),
    msg(Request.GET_CONFIG, encodeConfig({ offset: 0, flags: 0, data: new Uint8Array(16) })),
    msg(Request.GET_VRING_BASE, encodeVringState({ index: 3, num: 0x1234 }), 0x5),
  ];
  const parts = messages.map((m) =>
    encodeMessage(m.request, m.payload, {
      reply: (m.flags & 4) !== 0,
      needReply: (m.flags & 8) !== 0,
    })
  );
  const bytes = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    bytes.set(p, at);
    at += p.length;
  }
  return { bytes, messages };
}

Deno.test("reader: the whole stream in one chunk yields every message in order", () => {
  const { bytes, messages } = sampleStream();
  const reader = new MessageReader();
  reader.push(bytes);
  assert.deepEqual([...reader.drain()], messages);
  assert.equal(reader.buffered, 0);
  assert.equal(reader.next(), undefined);
});

Deno.test("reader: a split at every byte boundary gives the same messages", () => {
  const { bytes, messages } = sampleStream();
  for (let cut = 0; cut <= bytes.length; cut++) {
    const reader = new MessageReader();
    const got: VhostUserMessage[] = [];
    reader.push(bytes.subarray(0, cut));
    got.push(...reader.drain());
    reader.push(bytes.subarray(cut));
    got.push(...reader.drain());
    assert.deepEqual(got, messages, `split at ${cut}`);
  }
});

Deno.test("reader: byte-at-a-time feeding yields each message exactly when complete", () => {
  const { bytes, messages } = sampleStream();
  const reader = new MessageReader();
  const got: VhostUserMessage[] = [];
  const ends: number[] = [];
  for (let i = 0; i < bytes.length; i++) {
    reader.push(bytes.subarray(i, i + 1));
    for (const m of reader.drain()) {
      got.push(m);
      ends.push(i + 1);
    }
  }
  assert.deepEqual(got, messages);
  let end = 0;
  assert.deepEqual(ends, messages.map((m) => (end += HEADER_SIZE + m.payload.length)));
});

Deno.test("reader: payloads are copies that survive later pushes", () => {
  const reader = new MessageReader();
  const wire = encodeU64Reply(Request.GET_FEATURES, 0x1122n);
  reader.push(wire);
  const first = reader.next()!;
  wire.fill(0);
  reader.push(encodeU64Reply(Request.GET_FEATURES, 0x3344n));
  reader.next();
  assert.equal(decodeU64(first.payload), 0x1122n);
});

Deno.test("reader: truncated header and truncated payload wait for more bytes", () => {
  const wire = encodeMessage(Request.SET_VRING_ADDR, encodeVringAddr(ADDR));
  const reader = new MessageReader();
  reader.push(wire.subarray(0, 11));
  assert.equal(reader.next(), undefined);
  assert.equal(reader.buffered, 11);
  reader.push(wire.subarray(11, 51));
  assert.equal(reader.next(), undefined);
  assert.equal(reader.buffered, 51);
  reader.push(wire.subarray(51));
  assert.deepEqual(reader.next(), msg(Request.SET_VRING_ADDR, encodeVringAddr(ADDR)));
  assert.equal(reader.buffered, 0);
});

Deno.test("reader: a 4 GiB size field is refused from the header alone", () => {
  const reader = new MessageReader();
  reader.push(raw(Request.SET_CONFIG, 1, 0xffff_ffff));
  assertFails(
    () => reader.next(),
    VhostUserRangeError,
    "SET_CONFIG",
    "payload size 4294967295",
    "MAX_PAYLOAD 4096",
  );
  // The reader is broken for good: the stream cannot be resynchronised.
  assertFails(() => reader.next(), VhostUserRangeError, "4294967295");
  assertFails(() => reader.push(new Uint8Array(1)), VhostUserRangeError, "4294967295");
});

Deno.test("reader: messages before a bad header are all delivered first", () => {
  const good = encodeMessage(Request.SET_OWNER, new Uint8Array(0));
  const reader = new MessageReader();
  const chunk = new Uint8Array(24);
  chunk.set(good);
  chunk.set(raw(9999, 1, 0), 12);
  reader.push(chunk);
  assert.equal(reader.next()?.request, Request.SET_OWNER);
  assertFails(() => reader.next(), VhostUserSyntaxError, "unknown request 9999");
});

Deno.test("reader: header errors, table-driven", () => {
  const cases: [string, Uint8Array, ErrorClass, string[]][] = [
    ["size MAX_PAYLOAD + 1", raw(5, 1, 4097), VhostUserRangeError, ["SET_MEM_TABLE", "4097"]],
    ["size 4 GiB - 1", raw(1, 1, 0xffff_ffff), VhostUserRangeError, ["4294967295"]],
    ["version 0", raw(1, 0x0, 0), VhostUserSyntaxError, ["GET_FEATURES", "version 0", "0x0"]],
    ["version 2", raw(1, 0x2, 0), VhostUserSyntaxError, ["version 2", "flags 0x2"]],
    ["version 3", raw(1, 0x7, 0), VhostUserSyntaxError, ["version 3", "flags 0x7"]],
    ["reserved bit 4", raw(3, 0x11, 0), VhostUserSyntaxError, ["SET_OWNER", "0x11", "0x10"]],
    ["reserved bit 31", raw(3, 0x8000_0001, 0), VhostUserSyntaxError, ["0x80000001"]],
    ["unknown request 9999", raw(9999, 1, 0), VhostUserSyntaxError, ["unknown request 9999"]],
    ["request 0", raw(0, 1, 0), VhostUserSyntaxError, ["unknown request 0"]],
    ["request 6 (SET_LOG_BASE)", raw(6, 1, 8), VhostUserSyntaxError, ["unknown request 6"]],
  ];
  for (const [, bytes, cls, pieces] of cases) {
    const reader = new MessageReader();
    reader.push(bytes);
    assertFails(() => reader.next(), cls, ...pieces);
    // The same header checks run in validateMessage.
    const payload = new Uint8Array(Math.min(u32At(bytes, 8), MAX_PAYLOAD + 1));
    assertFails(
      () => validateMessage(msg(u32At(bytes, 0), payload, u32At(bytes, 4)), OPTS),
      cls,
      ...pieces.filter((p) => !/^\d{10}$/.test(p)),
    );
  }
});

// ---------------------------------------------------------------- validateMessage: accepted

Deno.test("validateMessage accepts a well-formed message of every request", () => {
  const g = (m: VhostUserMessage, fds = 0) => validateMessage(m, opts(fds));
  for (const r of [1, 3, 4, 15, 17]) {
    const v = g(msg(r, new Uint8Array(0), 0x9));
    assert.equal(v.request, r);
    assert.equal(v.body, undefined);
    assert.equal(v.needReply, true);
  }
  const f = g(msg(Request.SET_FEATURES, encodeU64(0xffff_ffff_ffff_ffffn)));
  assert.equal(f.body, 0xffff_ffff_ffff_ffffn);
  assert.equal(f.needReply, false);
  assert.equal(g(msg(Request.SET_PROTOCOL_FEATURES, encodeU64(9n))).body, 9n);

  const table = [region(0x1000_0000n, 0x1000n), region(0n, 0x1000_0000n)];
  assert.deepEqual(g(msg(Request.SET_MEM_TABLE, encodeMemoryTable(table)), 2).body, table);
  const top = [region(0xffff_ffff_ffff_f000n, 0x1000n, 0x1000n, 0xffff_ffff_ffff_f000n)];
  assert.deepEqual(g(msg(Request.SET_MEM_TABLE, encodeMemoryTable(top)), 1).body, top);

  assert.deepEqual(g(msg(Request.SET_VRING_NUM, encodeVringState({ index: 3, num: 32768 }))).body, {
    index: 3,
    num: 32768,
  });
  assert.equal(g(msg(Request.SET_VRING_NUM, encodeVringState({ index: 0, num: 1 }))).request, 8);
  assert.equal(g(msg(10, encodeVringState({ index: 0, num: 0xffff }))).request, 10);
  assert.equal(g(msg(11, encodeVringState({ index: 0, num: 0xffff_ffff }))).request, 11);
  assert.equal(g(msg(18, encodeVringState({ index: 2, num: 1 }))).request, 18);
  assert.deepEqual(g(msg(Request.SET_VRING_ADDR, encodeVringAddr(ADDR))).body, ADDR);

  for (const r of [12, 13, 14]) {
    assert.deepEqual(g(msg(r, encodeVringFile({ index: 3, noFd: false })), 1).body, {
      index: 3,
      noFd: false,
    });
    assert.deepEqual(g(msg(r, encodeVringFile({ index: 0, noFd: true })), 0).body, {
      index: 0,
      noFd: true,
    });
  }
  const cfg = { offset: 48, flags: 0, data: new Uint8Array(16).fill(7) };
  assert.deepEqual(g(msg(Request.GET_CONFIG, encodeConfig(cfg))).body, cfg);
  assert.deepEqual(g(msg(Request.SET_CONFIG, encodeConfig({ ...cfg, flags: 1 }))).body, {
    ...cfg,
    flags: 1,
  });
});

Deno.test("validateMessage result narrows on request", () => {
  const v = validateMessage(msg(Request.SET_VRING_ADDR, encodeVringAddr(ADDR)), OPTS);
  if (v.request !== Request.SET_VRING_ADDR) throw new Error("wrong request");
  // Compiles only because the union narrowed to VringAddr.
  assert.equal(v.body.availUserAddr, ADDR.availUserAddr);
});

// ---------------------------------------------------------------- validateMessage: rejected

Deno.test("validateMessage: each request with a wrong payload size", () => {
  const cases: [number, number, string][] = [
    [Request.GET_FEATURES, 8, "GET_FEATURES: payload is 8 bytes, expected 0"],
    [Request.SET_FEATURES, 4, "SET_FEATURES: payload is 4 bytes, expected 8"],
    [Request.SET_FEATURES, 16, "SET_FEATURES: payload is 16 bytes, expected 8"],
    [Request.SET_OWNER, 1, "SET_OWNER: payload is 1 bytes, expected 0"],
    [Request.RESET_OWNER, 8, "RESET_OWNER: payload is 8 bytes, expected 0"],
    [Request.SET_MEM_TABLE, 4, "SET_MEM_TABLE: payload is 4 bytes, expected at least 8"],
    [Request.SET_VRING_NUM, 4, "SET_VRING_NUM: payload is 4 bytes, expected 8"],
    [Request.SET_VRING_ADDR, 24, "SET_VRING_ADDR: payload is 24 bytes, expected 40"],
    [Request.SET_VRING_ADDR, 48, "SET_VRING_ADDR: payload is 48 bytes, expected 40"],
    [Request.SET_VRING_BASE, 12, "SET_VRING_BASE: payload is 12 bytes, expected 8"],
    [Request.GET_VRING_BASE, 0, "GET_VRING_BASE: payload is 0 bytes, expected 8"],
    [Request.SET_VRING_KICK, 4, "SET_VRING_KICK: payload is 4 bytes, expected 8"],
    [Request.SET_VRING_CALL, 0, "SET_VRING_CALL: payload is 0 bytes, expected 8"],
    [Request.SET_VRING_ERR, 9, "SET_VRING_ERR: payload is 9 bytes, expected 8"],
    [Request.GET_PROTOCOL_FEATURES, 8, "GET_PROTOCOL_FEATURES: payload is 8 bytes, expected 0"],
    [Request.SET_PROTOCOL_FEATURES, 0, "SET_PROTOCOL_FEATURES: payload is 0 bytes, expected 8"],
    [Request.GET_QUEUE_NUM, 8, "GET_QUEUE_NUM: payload is 8 bytes, expected 0"],
    [Request.SET_VRING_ENABLE, 7, "SET_VRING_ENABLE: payload is 7 bytes, expected 8"],
    [Request.GET_CONFIG, 11, "GET_CONFIG: payload is 11 bytes, expected at least 12"],
    [Request.SET_CONFIG, 0, "SET_CONFIG: payload is 0 bytes, expected at least 12"],
  ];
  for (const [request, size, text] of cases) {
    assertFails(
      () => validateMessage(msg(request, new Uint8Array(size)), OPTS),
      VhostUserSyntaxError,
      text,
    );
  }
  // Layouts with a size field inside the payload.
  const twoRegions = encodeMemoryTable([region(0n, 1n), region(2n, 1n)]);
  assertFails(
    () => validateMessage(msg(5, twoRegions.subarray(0, 40)), opts(2)),
    VhostUserSyntaxError,
    "SET_MEM_TABLE: payload is 40 bytes, expected 72 for nregions 2 (or 264)",
  );
  const cfg = encodeConfig({ offset: 0, flags: 0, data: new Uint8Array(8) });
  assertFails(
    () => validateMessage(msg(24, cfg.subarray(0, 19)), OPTS),
    VhostUserSyntaxError,
    "GET_CONFIG: payload is 19 bytes, expected 12 + size 8 = 20",
  );
  assertFails(
    () => validateMessage(msg(25, Uint8Array.of(...cfg, 0)), OPTS),
    VhostUserSyntaxError,
    "SET_CONFIG: payload is 21 bytes, expected 12 + size 8 = 20",
  );
});

Deno.test("validateMessage: SET_MEM_TABLE geometry and fds", () => {
  const table = (regions: MemoryRegionDesc[]) =>
    msg(Request.SET_MEM_TABLE, encodeMemoryTable(regions));
  assertFails(
    () => validateMessage(table([]), opts(0)),
    VhostUserRangeError,
    "SET_MEM_TABLE: nregions 0, expected 1..8",
  );
  // nregions 9, with a payload sized for 9 regions.
  const nine = new Uint8Array(8 + 32 * 9);
  new DataView(nine.buffer).setUint32(0, 9, true);
  assertFails(
    () => validateMessage(msg(5, nine), opts(9)),
    VhostUserRangeError,
    "SET_MEM_TABLE: nregions 9 is above the maximum 8",
  );
  const huge = new Uint8Array(8);
  new DataView(huge.buffer).setUint32(0, 0xffff_ffff, true);
  assertFails(
    () => validateMessage(msg(5, huge), opts(0)),
    VhostUserRangeError,
    "nregions 4294967295",
  );
  assertFails(
    () => validateMessage(table([region(0n, 0x1000n), region(0x800n, 0x1000n)]), opts(2)),
    VhostUserRangeError,
    "regions[0] 0x0+0x1000 and regions[1] 0x800+0x1000 overlap in guest address space",
  );
  assertFails(
    () => validateMessage(table([region(0x5000n, 0x1000n), region(0n, 0x5001n)]), opts(2)),
    VhostUserRangeError,
    "regions[1] 0x0+0x5001 and regions[0] 0x5000+0x1000 overlap in guest",
  );
  assertFails(
    () =>
      validateMessage(
        table([region(0n, 0x1000n, 0x9000n), region(0x1000n, 0x1000n, 0x9800n)]),
        opts(2),
      ),
    VhostUserRangeError,
    "0x9000+0x1000 and regions[1] 0x9800+0x1000 overlap in user address space",
  );
  assertFails(
    () => validateMessage(table([region(0n, 0x1000n), region(0x4000n, 0n)]), opts(2)),
    VhostUserRangeError,
    "SET_MEM_TABLE: regions[1] memorySize 0",
  );
  assertFails(
    () => validateMessage(table([region(0xffff_ffff_ffff_f000n, 0x1001n, 0n)]), opts(1)),
    VhostUserRangeError,
    "regions[0] guestPhysAddr 0xfffffffffffff000 + memorySize 0x1001 overflows u64",
  );
  assertFails(
    () => validateMessage(table([region(0n, 0x2000n, 0n, 0xffff_ffff_ffff_f000n)]), opts(1)),
    VhostUserRangeError,
    "regions[0] mmapOffset 0xfffffffffffff000 + memorySize 0x2000 overflows u64",
  );
  assertFails(
    () => validateMessage(table([region(0n, 0x2000n, 0xffff_ffff_ffff_ffffn)]), opts(1)),
    VhostUserRangeError,
    "userspaceAddr 0xffffffffffffffff",
  );
  const two = table([region(0n, 0x1000n), region(0x1000n, 0x1000n)]);
  assertFails(
    () => validateMessage(two, opts(1)),
    VhostUserSyntaxError,
    "SET_MEM_TABLE: 1 fds received, expected 2 for nregions 2",
  );
  assertFails(() => validateMessage(two, opts(3)), VhostUserSyntaxError, "3 fds received");
});

Deno.test("validateMessage: KICK/CALL/ERR reserved bits, NOFD and fds", () => {
  const u64 = (v: bigint, r: number = Request.SET_VRING_KICK) => msg(r, encodeU64(v));
  assertFails(
    () => validateMessage(u64(0x200n), opts(1)),
    VhostUserSyntaxError,
    "SET_VRING_KICK: u64 0x200 has reserved bits set",
  );
  assertFails(
    () => validateMessage(u64(0x8000_0000_0000_0001n, Request.SET_VRING_CALL), opts(1)),
    VhostUserSyntaxError,
    "SET_VRING_CALL: u64 0x8000000000000001",
  );
  assertFails(
    () => validateMessage(u64(0x101n, Request.SET_VRING_ERR), opts(1)),
    VhostUserSyntaxError,
    "SET_VRING_ERR: 1 fds received, expected 0 (NOFD bit set)",
  );
  assertFails(
    () => validateMessage(u64(0x1n), opts(0)),
    VhostUserSyntaxError,
    "SET_VRING_KICK: 0 fds received, expected 1",
  );
  assertFails(() => validateMessage(u64(0x1n), opts(2)), VhostUserSyntaxError, "2 fds received");
  assertFails(
    () => validateMessage(u64(0x4n), opts(1)),
    VhostUserRangeError,
    "SET_VRING_KICK: queue index 4 is not below maxQueues 4",
  );
});

Deno.test("validateMessage: vring state, address and queue index ranges", () => {
  const state = (r: number, index: number, num: number) => msg(r, encodeVringState({ index, num }));
  const cases: [VhostUserMessage, string][] = [
    [state(8, 4, 256), "SET_VRING_NUM: queue index 4 is not below maxQueues 4"],
    [state(8, 0xffff_ffff, 256), "queue index 4294967295"],
    [state(10, 9, 0), "SET_VRING_BASE: queue index 9"],
    [state(11, 5, 0), "GET_VRING_BASE: queue index 5"],
    [state(18, 4, 1), "SET_VRING_ENABLE: queue index 4"],
    [state(8, 0, 0), "SET_VRING_NUM: queue size num 0 is not a power of two in 1..32768"],
    [state(8, 0, 384), "queue size num 384"],
    [state(8, 0, 65536), "queue size num 65536"],
    [state(10, 0, 0x10000), "SET_VRING_BASE: ring base num 65536 is above 0xffff"],
    [state(18, 0, 2), "SET_VRING_ENABLE: num 2 is neither 0 (disable) nor 1 (enable)"],
    [msg(9, encodeVringAddr({ ...ADDR, index: 7 })), "SET_VRING_ADDR: queue index 7"],
    [
      msg(9, encodeVringAddr({ ...ADDR, descUserAddr: 0x1008n })),
      "descUserAddr 0x1008 is not 16-byte",
    ],
    [
      msg(9, encodeVringAddr({ ...ADDR, availUserAddr: 0x2001n })),
      "availUserAddr 0x2001 is not 2-byte",
    ],
    [
      msg(9, encodeVringAddr({ ...ADDR, usedUserAddr: 0x3002n })),
      "usedUserAddr 0x3002 is not 4-byte",
    ],
  ];
  for (const [m, text] of cases) {
    assertFails(() => validateMessage(m, OPTS), VhostUserRangeError, text);
  }
  assertFails(
    () => validateMessage(msg(9, encodeVringAddr({ ...ADDR, flags: 0x3 })), OPTS),
    VhostUserSyntaxError,
    "SET_VRING_ADDR: flags 0x3 has reserved bits set",
  );
});

Deno.test("validateMessage: config range and flags", () => {
  const cfg = (offset: number, size: number, flags = 0, r: number = Request.GET_CONFIG) =>
    msg(r, encodeConfig({ offset, flags, data: new Uint8Array(size) }));
  assertFails(
    () => validateMessage(cfg(60, 8), OPTS),
    VhostUserRangeError,
    "GET_CONFIG: offset 60 + size 8 = 68 is past the config space of 64 bytes",
  );
  assertFails(
    () => validateMessage(cfg(0xffff_ffff, 4, 0, Request.SET_CONFIG), OPTS),
    VhostUserRangeError,
    "SET_CONFIG: offset 4294967295 + size 4 = 4294967299",
  );
  assertFails(
    () => validateMessage(cfg(0, 4, 2, Request.SET_CONFIG), OPTS),
    VhostUserSyntaxError,
    "SET_CONFIG: flags 2 is neither 0 (front-end) nor 1 (migration)",
  );
  assert.equal(validateMessage(cfg(0, 64), OPTS).request, Request.GET_CONFIG);
});

Deno.test("validateMessage: flags and fds that do not belong on a request", () => {
  assertFails(
    () => validateMessage(msg(Request.GET_FEATURES, new Uint8Array(0), 0x5), OPTS),
    VhostUserSyntaxError,
    "GET_FEATURES: flags 0x5 has the reply bit set on a request",
  );
  const withFd: [number, Uint8Array][] = [
    [Request.SET_OWNER, new Uint8Array(0)],
    [Request.SET_FEATURES, encodeU64(0n)],
    [Request.SET_VRING_NUM, encodeVringState({ index: 0, num: 8 })],
    [Request.SET_VRING_ADDR, encodeVringAddr(ADDR)],
    [Request.SET_CONFIG, encodeConfig({ offset: 0, flags: 0, data: new Uint8Array(4) })],
  ];
  for (const [r, payload] of withFd) {
    assertFails(
      () => validateMessage(msg(r, payload), opts(1)),
      VhostUserSyntaxError,
      `${requestName(r)}: 1 fds received, expected 0`,
    );
  }
  assert.throws(
    () => validateMessage(msg(3, new Uint8Array(0)), { ...OPTS, fdCount: -1 }),
    /option fdCount -1/,
  );
  assert.throws(
    () => validateMessage(msg(3, new Uint8Array(0)), { ...OPTS, maxQueues: 1.5 }),
    /option maxQueues 1.5/,
  );
});

// ---------------------------------------------------------------- validateReply

Deno.test("validateReply decodes each reply type and rejects mismatches", () => {
  const reply = (r: number, payload: Uint8Array) => msg(r, payload, 0x5);
  assert.equal(validateReply(reply(1, encodeU64(7n)), Request.GET_FEATURES), 7n);
  assert.equal(validateReply(reply(3, encodeU64(0n)), Request.SET_OWNER), 0n);
  assert.deepEqual(
    validateReply(reply(11, encodeVringState({ index: 1, num: 42 })), Request.GET_VRING_BASE),
    { index: 1, num: 42 },
  );
  const cfg = { offset: 0, flags: 0, data: Uint8Array.of(1, 2, 3) };
  assert.deepEqual(validateReply(reply(24, encodeConfig(cfg)), Request.GET_CONFIG), cfg);

  assertFails(
    () => validateReply(msg(1, encodeU64(7n), 0x1), Request.GET_FEATURES),
    VhostUserSyntaxError,
    "GET_FEATURES: flags 0x1 on a reply",
  );
  assertFails(
    () => validateReply(msg(1, encodeU64(7n), 0xd), Request.GET_FEATURES),
    VhostUserSyntaxError,
    "flags 0xd on a reply",
  );
  assertFails(
    () => validateReply(reply(3, encodeU64(0n)), Request.GET_FEATURES),
    VhostUserSyntaxError,
    "SET_OWNER: got a reply to request 3, expected a reply to GET_FEATURES (1)",
  );
  assertFails(
    () => validateReply(reply(17, new Uint8Array(4)), Request.GET_QUEUE_NUM),
    VhostUserSyntaxError,
    "GET_QUEUE_NUM: payload is 4 bytes, expected 8",
  );
  assertFails(
    () => validateReply(msg(17, encodeU64(1n), 0x6), Request.GET_QUEUE_NUM),
    VhostUserSyntaxError,
    "version 2",
  );
});

// ---------------------------------------------------------------- random input

Deno.test("random bytes never throw anything but the documented errors", () => {
  const rand = prng(0x5eed_1234);
  const int = (n: number) => Math.floor(rand() * n);
  const codes = Object.values(Request) as number[];
  const counts = { messages: 0, valid: 0, syntax: 0, range: 0 };
  const expectDocumented = (fn: () => unknown) => {
    try {
      fn();
      return true;
    } catch (e) {
      if (e instanceof VhostUserSyntaxError) counts.syntax++;
      else if (e instanceof VhostUserRangeError) counts.range++;
      else throw new Error(`undocumented error: ${String(e)}`, { cause: e });
      return false;
    }
  };
  /** A payload length the request's layout could have, so payload checks run too. */
  const plausibleSize = (request: number): number => {
    if ([1, 3, 4, 15, 17].includes(request)) return 0;
    if (request === Request.SET_VRING_ADDR) return 40;
    if (request === Request.SET_MEM_TABLE) return 8 + 32 * int(4);
    if (request === Request.GET_CONFIG || request === Request.SET_CONFIG) return 12 + int(8);
    return 8;
  };
  for (let i = 0; i < 10_000; i++) {
    let bytes = new Uint8Array(int(120));
    // Half the strings get a plausible header (and often a plausible size)
    // so that framing succeeds and the payload checks see random payloads.
    if (rand() < 0.5) {
      const request = codes[int(codes.length)]!;
      const size = rand() < 0.7 ? plausibleSize(request) : int(80);
      bytes = new Uint8Array(HEADER_SIZE + size + (rand() < 0.8 ? 0 : int(40)));
      for (let k = 0; k < bytes.length; k++) bytes[k] = int(256);
      const v = new DataView(bytes.buffer);
      v.setUint32(0, request, true);
      v.setUint32(4, [1, 5, 9, 1][int(4)]!, true);
      v.setUint32(8, size, true);
      // Small counts in the count fields, or they almost never match.
      if (request === Request.SET_MEM_TABLE && size >= 8) v.setUint32(12, (size - 8) / 32, true);
      if (size >= 12 && (request === 24 || request === 25)) v.setUint32(16, size - 12, true);
      if (size >= 12 && (request === 24 || request === 25)) v.setUint32(20, int(2), true);
      if (size === 8 && rand() < 0.8) v.setUint32(12, int(5), true); // queue index
      if (size === 8 && rand() < 0.8) v.setUint32(16, 0, true); // high half of a u64
      if (size === 8 && rand() < 0.5) bytes[13] = int(2); // bits 8-15: NOFD
    } else {
      for (let k = 0; k < bytes.length; k++) bytes[k] = int(256);
    }
    const reader = new MessageReader();
    let at = 0;
    let ok = true;
    while (ok && at < bytes.length) {
      const step = 1 + int(bytes.length);
      ok = expectDocumented(() => reader.push(bytes.subarray(at, at + step)));
      at += step;
      ok &&= expectDocumented(() => {
        for (const m of reader.drain()) {
          counts.messages++;
          const options = { fdCount: int(3), maxQueues: int(5), configSize: int(128) };
          if (expectDocumented(() => validateMessage(m, options))) counts.valid++;
          expectDocumented(() => validateReply(m, codes[int(codes.length)]!));
        }
      });
    }
    const payload = bytes.subarray(int(13));
    for (
      const decode of [
        decodeU64,
        decodeVringState,
        decodeVringAddr,
        decodeVringFile,
        decodeMemoryTable,
        decodeConfig,
      ]
    ) {
      expectDocumented(() => decode(payload, codes[int(codes.length)]));
    }
  }
  // The loop must have exercised every outcome, or it proves nothing.
  assert.ok(counts.messages > 1000, `only ${counts.messages} messages framed`);
  assert.ok(counts.valid > 200, `only ${counts.valid} messages validated`);
  assert.ok(counts.syntax > 1000 && counts.range > 100, JSON.stringify(counts));
});
