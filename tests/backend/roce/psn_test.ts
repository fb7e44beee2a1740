import assert from "node:assert/strict";
import { PSN_MASK, psnAdd, psnCompare, psnDiff, psnInWindow } from "../../../backend/roce/psn.ts";

Deno.test("psnAdd wraps at 2^24 both ways", () => {
  assert.equal(psnAdd(0xffffff, 1), 0);
  assert.equal(psnAdd(0xfffffe, 5), 3);
  assert.equal(psnAdd(0, -1), 0xffffff);
  assert.equal(psnAdd(2, -5), 0xfffffd);
  assert.equal(psnAdd(0x123456, 0), 0x123456);
  assert.equal(psnAdd(0x800000, 0x800000), 0);
  assert.equal(psnAdd(5, 0x1000000 * 3 + 2), 7, "whole turns vanish");
});

Deno.test("psnDiff is the signed 24-bit distance across the wrap", () => {
  assert.equal(psnDiff(0, 0xffffff), 1);
  assert.equal(psnDiff(0xffffff, 0), -1);
  assert.equal(psnDiff(3, 0xfffffd), 6);
  assert.equal(psnDiff(0xfffffd, 3), -6);
  assert.equal(psnDiff(0x7fffff, 0), 0x7fffff, "largest 'after'");
  assert.equal(psnDiff(0x800000, 0), -0x800000, "half a turn reads as before");
  assert.equal(psnDiff(0, 0x800000), -0x800000);
  assert.equal(psnDiff(0x800001, 1), -0x800000);
  assert.equal(psnDiff(1234, 1234), 0);
});

Deno.test("psnCompare orders neighbours across the wrap", () => {
  for (const base of [0, 1, 0x7fffff, 0x800000, 0xfffffe, 0xffffff]) {
    for (const step of [1, 2, 100, 0x7fffff]) {
      const later = psnAdd(base, step);
      assert.equal(psnCompare(later, base), 1, `${later} after ${base}`);
      assert.equal(psnCompare(base, later), -1, `${base} before ${later}`);
      assert.equal(psnDiff(later, base), step);
    }
    assert.equal(psnCompare(base, base), 0);
  }
});

Deno.test("psnInWindow holds exactly size PSNs from start, wrap included", () => {
  const start = 0xfffffc;
  const inside = [0xfffffc, 0xfffffd, 0xfffffe, 0xffffff, 0, 1, 2, 3];
  for (const psn of inside) assert.ok(psnInWindow(psn, start, 8), `${psn} in`);
  for (const psn of [0xfffffb, 4, 5, 0x800000]) {
    assert.ok(!psnInWindow(psn, start, 8), `${psn} out`);
  }
  assert.ok(!psnInWindow(start, start, 0), "an empty window holds nothing");
  assert.ok(psnInWindow(psnAdd(7, 0x7fffff), 7, 0x800000), "the widest window");
  assert.throws(() => psnInWindow(0, 0, 0x800001), {
    name: "RangeError",
    message: "PSN window size 8388609 is not in 0..2^23",
  });
  assert.throws(() => psnInWindow(0, 0, -1), RangeError);
});

Deno.test("psn arithmetic agrees with a bigint model on random values", () => {
  let seed = 12345;
  const next = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0);
  for (let i = 0; i < 10000; i++) {
    const a = next() & PSN_MASK;
    const b = next() & PSN_MASK;
    let d = (a - b) % 0x1000000;
    if (d < 0) d += 0x1000000;
    const expected = d >= 0x800000 ? d - 0x1000000 : d;
    assert.equal(psnDiff(a, b), expected);
    assert.equal(psnAdd(b, expected), a);
  }
});
