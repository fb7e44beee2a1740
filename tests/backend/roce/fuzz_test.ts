import assert from "node:assert/strict";
import { RocePacket } from "../../../backend/roce/headers.ts";
import { Header, OPCODES } from "../../../backend/roce/opcodes.ts";
import { buildPacket, ParseFailure, parsePacket } from "../../../backend/roce/packet.ts";
import { randomFields, Rng } from "./fixtures/random.ts";

const KINDS = new Set([
  "truncated-header",
  "unknown-opcode",
  "bad-tver",
  "unaligned-length",
  "unexpected-payload",
  "pad-length",
]);

// Every field the packet's opcode has, read through the table.
function readAll(p: RocePacket): unknown[] {
  const h = p.info.headers;
  const values: unknown[] = [
    p.opcode,
    p.se,
    p.mig,
    p.padCnt,
    p.tver,
    p.pkey,
    p.fecn,
    p.becn,
    p.destQp,
    p.ackReq,
    p.psn,
  ];
  if (h & Header.DETH) values.push(p.qkey, p.srcQp);
  if (h & Header.RETH) values.push(p.rethVa, p.rethRkey, p.rethDmaLen);
  if (h & Header.ATOMIC_ETH) values.push(p.atomicVa, p.atomicRkey, p.swapAdd, p.compare);
  if (h & Header.AETH) values.push(p.syndrome, p.msn);
  if (h & Header.ATOMIC_ACK_ETH) values.push(p.origData);
  if (h & Header.IMM_DT) values.push(p.immDt);
  if (h & Header.IETH) values.push(p.iethRkey);
  values.push(p.payloadLength, [...p.payload].join(","), p.icrc);
  return values;
}

function outcome(bytes: Uint8Array): unknown[] {
  const r = parsePacket(bytes);
  if (r instanceof ParseFailure) {
    assert.ok(KINDS.has(r.kind), `unknown failure kind ${r.kind}`);
    return ["fail", r.kind, r.message];
  }
  assert.ok(r instanceof RocePacket);
  // The lengths add up, so the payload lies inside the packet.
  assert.equal(r.info.length + r.payloadLength + r.padCnt + 4, bytes.byteLength);
  assert.ok(r.payloadLength >= 0);
  assert.ok(r.payload.byteOffset >= bytes.byteOffset + r.info.length);
  assert.ok(r.payload.byteOffset + r.payload.byteLength <= bytes.byteOffset + bytes.byteLength - 4);
  return ["ok", ...readAll(r)];
}

function mutate(rng: Rng, valid: Uint8Array): Uint8Array {
  let b = valid.slice();
  switch (rng.int(6)) {
    case 0: // flip a few bits anywhere
      for (let i = rng.int(4) + 1; i > 0; i--) b[rng.int(b.length)]! ^= 1 << rng.int(8);
      break;
    case 1: // truncate
      b = b.slice(0, rng.int(b.length + 1));
      break;
    case 2: { // extend with junk
      const longer = new Uint8Array(b.length + rng.int(40));
      longer.set(b);
      longer.set(rng.bytes(longer.length - b.length), b.length);
      b = longer;
      break;
    }
    case 3: // any opcode
      b[0] = rng.int(256);
      break;
    case 4: // SE/M/PadCnt/TVer byte
      b[1] = rng.int(256);
      break;
    default: // opcode of another row on this row's bytes
      b[0] = rng.pick(OPCODES).opcode;
      b[1]! &= 0xf0;
  }
  return b;
}

Deno.test("fuzz: 100,000 random and mutated inputs never throw and stay inside their bytes", () => {
  const rng = new Rng(0x5eed);
  const out = new Uint8Array(4096);
  const counts = new Map<string, number>();
  for (let i = 0; i < 100_000; i++) {
    let input: Uint8Array;
    if (i % 4 === 0) {
      input = rng.bytes(rng.int(i % 8 === 0 ? 80 : 600));
    } else {
      const info = rng.pick(OPCODES);
      const n = buildPacket(out, randomFields(rng, info, { maxPayload: 48 }));
      input = mutate(rng, out.subarray(0, n));
    }
    // The same bytes alone in an exact-size buffer (any read past the end
    // throws) and inside a larger buffer of random bytes (a read past either
    // end would change the outcome): both must agree.
    const exact = input.slice();
    const pre = rng.int(16);
    const framed = rng.bytes(pre + input.length + 16);
    framed.set(input, pre);
    let a: unknown[];
    let b: unknown[];
    try {
      a = outcome(exact);
      b = outcome(framed.subarray(pre, pre + input.length));
    } catch (e) {
      throw new Error(`input ${i} (${[...input].join(",")}): ${e}`);
    }
    assert.deepEqual(b, a, `input ${i}`);
    const key = String(a[0] === "ok" ? "ok" : a[1]);
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  // The mutations must reach every verdict, or the fuzz proves little.
  for (const kind of [...KINDS, "ok"]) {
    assert.ok((counts.get(kind) ?? 0) > 100, `${kind}: ${counts.get(kind)}`);
  }
});
