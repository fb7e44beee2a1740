import assert from "node:assert/strict";
import { buildGrh, GRH_BYTES } from "../../../backend/engine/grh.ts";

Deno.test("the UD GRH area holds 20 zero bytes and the IPv4 header with a valid checksum", () => {
  const out = new Uint8Array(GRH_BYTES).fill(0xee);
  buildGrh(out, { srcIp: "127.0.0.2", dstIp: "10.99.0.3", payloadBytes: 5, immediate: true });
  assert.ok(out.subarray(0, 20).every((b) => b === 0));
  const ip = new DataView(out.buffer, 20, 20);
  assert.equal(ip.getUint8(0), 0x45);
  // 20 IP + 8 UDP + 12 BTH + 8 DETH + 4 ImmDt + 5 payload + 3 pad + 4 ICRC
  assert.equal(ip.getUint16(2), 64);
  assert.equal(ip.getUint16(6), 0x4000, "DF set, ID 0");
  assert.equal(ip.getUint8(8), 64);
  assert.equal(ip.getUint8(9), 17);
  assert.deepEqual([...out.subarray(32, 36)], [127, 0, 0, 2]);
  assert.deepEqual([...out.subarray(36, 40)], [10, 99, 0, 3]);
  // A correct IPv4 header sums to 0xffff in one's complement.
  let sum = 0;
  for (let i = 0; i < 20; i += 2) sum += ip.getUint16(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  assert.equal(sum, 0xffff);
});
