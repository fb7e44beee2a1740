import assert from "node:assert/strict";
import {
  checkIcrc,
  computeIcrc,
  type IcrcFlow,
  recoverIpIds,
  writeIcrc,
} from "../../../backend/roce/icrc.ts";
import { parseIpv4 } from "../../../backend/roce/ipv4.ts";
import { ipv4Datagram } from "./fixtures/pcap.ts";
import { randomFlow, Rng } from "./fixtures/random.ts";

function hex(s: string): Uint8Array {
  return new Uint8Array(s.match(/../g)!.map((b) => parseInt(b, 16)));
}

// Vectors computed by scapy.contrib.roce (an independent implementation):
// the RoCE bytes (BTH to ICRC) and the IPv4/UDP fields they were sent with.
const VECTORS: ReadonlyArray<{ name: string; flow: IcrcFlow; roce: string; icrc: number }> = [
  {
    name: "RC ACK, IP ID 0x1234, DF",
    flow: {
      srcIp: parseIpv4("10.99.0.2"),
      dstIp: parseIpv4("10.99.0.1"),
      ipId: 0x1234,
      srcPort: 49441,
    },
    roce: "1100ffff0000001100214fec1f000001cec71bb0",
    icrc: 0xb01bc7ce,
  },
  {
    name: "UD SEND only 'hello', pad 3",
    flow: {
      srcIp: parseIpv4("10.99.0.1"),
      dstIp: parseIpv4("10.99.0.2"),
      ipId: 0,
      srcPort: 53368,
    },
    roce: "6430ffff0000001400000100111111110000001368656c6c6f000000dbf2ceee",
    icrc: 0xeecef2db,
  },
  {
    // Sent with TOS 0x2e, TTL 3 and UDP checksum 0x1234: all masked out.
    name: "RC SEND only 64 B, FECN+BECN, no DF, PSN 0xffffff",
    flow: {
      srcIp: parseIpv4("192.168.1.10"),
      dstIp: parseIpv4("192.168.1.20"),
      ipId: 0xbeef,
      ipFlags: 0,
      srcPort: 50000,
    },
    roce: "04008001c0abcdef80ffffff" +
      Array.from({ length: 64 }, (_, i) => i.toString(16).padStart(2, "0")).join("") + "56adf8a7",
    icrc: 0xa7f8ad56,
  },
];

// Bitwise CRC-32 (reflected 0xEDB88320, init and final all ones): slow,
// obviously right, and shares no code with zlib.
function referenceCrc32(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of bytes) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}

// The ICRC as IBA annex A17 defines it, from the whole datagram: prepend
// 8 x 0xFF, mask TOS, TTL, IP checksum, UDP checksum and BTH byte 4, CRC
// everything but the ICRC itself.
function referenceIcrc(datagram: Uint8Array): number {
  const m = new Uint8Array(8 + datagram.length - 4);
  m.fill(0xff, 0, 8);
  m.set(datagram.subarray(0, datagram.length - 4), 8);
  m[8 + 1] = 0xff; // TOS
  m[8 + 8] = 0xff; // TTL
  m[8 + 10] = m[8 + 11] = 0xff; // IP checksum
  m[8 + 26] = m[8 + 27] = 0xff; // UDP checksum
  m[8 + 28 + 4] = 0xff; // BTH FECN, BECN, reserved
  return referenceCrc32(m);
}

Deno.test("reference CRC-32 gives the standard check value", () => {
  assert.equal(referenceCrc32(new TextEncoder().encode("123456789")), 0xcbf43926);
});

Deno.test("ICRC matches scapy's on known packets", () => {
  for (const v of VECTORS) {
    const roce = hex(v.roce);
    assert.equal(computeIcrc(v.flow, roce), v.icrc, v.name);
    assert.ok(checkIcrc(v.flow, roce), v.name);
    assert.equal(referenceIcrc(ipv4Datagram(v.flow, roce)), v.icrc, `${v.name} (reference)`);
    const blank = roce.slice();
    blank.fill(0, blank.length - 4);
    writeIcrc(v.flow, blank);
    assert.deepEqual(blank, roce, `${v.name}: stored little-endian`);
  }
});

Deno.test("ICRC covers what it should and ignores the masked bits", () => {
  const v = VECTORS[0]!;
  const roce = hex(v.roce);
  const flipped = (at: number, bits: number) => {
    const copy = roce.slice();
    copy[at]! ^= bits;
    return copy;
  };
  assert.ok(checkIcrc(v.flow, flipped(4, 0xc0)), "FECN/BECN are masked");
  assert.ok(checkIcrc(v.flow, flipped(4, 0x3f)), "byte 4 reserved bits are masked");
  for (let at = 0; at < roce.length; at++) {
    if (at === 4) continue;
    assert.ok(!checkIcrc(v.flow, flipped(at, 0x01)), `byte ${at} is covered`);
  }
  assert.ok(!checkIcrc({ ...v.flow, ipId: 0x1235 }, roce), "IP ID is covered");
  assert.ok(!checkIcrc({ ...v.flow, ipFlags: 0 }, roce), "IP flags are covered");
  assert.ok(!checkIcrc({ ...v.flow, srcIp: v.flow.srcIp + 1 }, roce), "source address");
  assert.ok(!checkIcrc({ ...v.flow, srcPort: 49442 }, roce), "UDP source port");
  assert.ok(!checkIcrc({ ...v.flow, dstPort: 4792 }, roce), "UDP destination port");
});

Deno.test("ICRC equals the reference on random packets up to 4 KiB, at any byteOffset", () => {
  const rng = new Rng(7);
  for (let i = 0; i < 200; i++) {
    const length = 16 + 4 * rng.int(i < 190 ? 64 : 1100);
    const backing = rng.bytes(length + 9);
    const start = rng.int(9);
    const roce = backing.subarray(start, start + length);
    const flow = randomFlow(rng);
    const expected = referenceIcrc(ipv4Datagram(flow, roce));
    assert.equal(computeIcrc(flow, roce), expected, `packet ${i}, ${length} bytes`);
    writeIcrc(flow, roce);
    assert.equal(new DataView(backing.buffer, start + length - 4, 4).getUint32(0, true), expected);
    assert.ok(checkIcrc(flow, roce));
  }
});

Deno.test("ICRC length limits: too short is a RangeError for compute, false for check", () => {
  const flow: IcrcFlow = { srcIp: 1, dstIp: 2, srcPort: 3 };
  assert.throws(() => computeIcrc(flow, new Uint8Array(15)), {
    name: "RangeError",
    message: "a RoCE packet has at least 16 bytes (BTH and ICRC), got 15",
  });
  assert.throws(() => writeIcrc(flow, new Uint8Array(70000)), RangeError);
  assert.equal(checkIcrc(flow, new Uint8Array(15)), false);
  assert.equal(checkIcrc(flow, new Uint8Array(0)), false);
  assert.deepEqual(recoverIpIds(flow, new Uint8Array(12)), []);
});

Deno.test("IP ID recovery finds the one ID a packet was sent with", () => {
  const rng = new Rng(99);
  for (let i = 0; i < 300; i++) {
    const id = i === 0 ? 0 : i === 1 ? 0xffff : rng.int(0x10000);
    const flow = randomFlow(rng, id);
    const length = 16 + 4 * rng.int(i % 10 === 0 ? 1100 : 300);
    const roce = rng.bytes(length);
    writeIcrc(flow, roce);
    const { ipId: _, ...unknown } = flow;
    assert.deepEqual(recoverIpIds(unknown, roce), [id], `packet ${i}: ${length} bytes`);
  }
  // The scapy vector sent with ID 0x1234.
  const v = VECTORS[0]!;
  assert.deepEqual(recoverIpIds({ ...v.flow, ipId: 999 }, hex(v.roce)), [0x1234], "ipId ignored");
});

Deno.test("IP ID recovery rejects corrupted packets (all but about 1 in 65536)", () => {
  const rng = new Rng(5);
  let accepted = 0;
  for (let i = 0; i < 2000; i++) {
    const flow = randomFlow(rng);
    const roce = rng.bytes(16 + 4 * rng.int(100));
    writeIcrc(flow, roce);
    const at = rng.int(roce.length);
    roce[at]! ^= 1 << rng.int(8);
    if (at === 4) continue; // masked byte: still a good packet
    if (recoverIpIds(flow, roce).length > 0) accepted++;
  }
  assert.equal(accepted, 0);
  // Wrong flags (a sender without DF) leave no consistent ID either.
  const flow = { srcIp: 1, dstIp: 2, srcPort: 0xc001, ipId: 77, ipFlags: 0 };
  const roce = rng.bytes(64);
  writeIcrc(flow, roce);
  assert.deepEqual(recoverIpIds({ ...flow, ipFlags: 0x4000 }, roce), []);
  assert.deepEqual(recoverIpIds(flow, roce), [77]);
});

Deno.test("parseIpv4 parses dotted quads and rejects the rest", () => {
  assert.equal(parseIpv4("0.0.0.0"), 0);
  assert.equal(parseIpv4("255.255.255.255"), 0xffffffff);
  assert.equal(parseIpv4("10.99.0.1"), 0x0a630001);
  for (const bad of ["", "1.2.3", "1.2.3.4.5", "256.0.0.1", "1.2.3.-4", "a.b.c.d", "1..2.3"]) {
    assert.throws(() => parseIpv4(bad), { name: "SyntaxError", message: /IPv4 address/ });
  }
});
