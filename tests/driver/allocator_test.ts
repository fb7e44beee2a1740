import assert from "node:assert/strict";
import { RangeAllocator } from "../../driver/allocator.ts";

Deno.test("allocator aligns, refuses what does not fit, and merges freed ranges", () => {
  const a = new RangeAllocator(0x10000, 4096);
  const x = a.alloc(100, 64);
  const y = a.alloc(1000, 1024);
  const z = a.alloc(10, 8);
  assert.equal(x % 64, 0);
  assert.equal(y % 1024, 0);
  assert.ok(x + 100 <= y || y + 1000 <= x, "no overlap");
  assert.equal(a.allocations, 3);
  assert.throws(() => a.alloc(4096), { name: "RangeError", message: /cannot allocate 4096 bytes/ });
  for (const addr of [y, x, z]) a.free(addr);
  assert.equal(a.freeBytes, 4096);
  assert.equal(a.alloc(4096, 4096), 0x10000, "everything merged back into one piece");
  assert.throws(() => a.free(0x10001), /was not allocated here/);
  assert.throws(() => a.alloc(0), /positive integer/);
  assert.throws(() => a.alloc(8, 3), /alignment 3/);
});

Deno.test("allocator survives a seeded random alloc/free workload with no overlap or leak", () => {
  let seed = 12345;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed % n;
  };
  const a = new RangeAllocator(0, 1 << 20);
  const live = new Map<number, number>();
  for (let i = 0; i < 20000; i++) {
    if (live.size > 0 && rand(2) === 0) {
      const keys = [...live.keys()];
      const k = keys[rand(keys.length)]!;
      a.free(k);
      live.delete(k);
    } else {
      const len = 1 + rand(4000);
      try {
        const addr = a.alloc(len, 1 << rand(8));
        for (const [s, l] of live) assert.ok(addr + len <= s || s + l <= addr, "overlap");
        live.set(addr, len);
      } catch (e) {
        assert.ok(e instanceof RangeError);
      }
    }
  }
  for (const k of live.keys()) a.free(k);
  assert.equal(a.freeBytes, 1 << 20);
  assert.equal(a.allocations, 0);
});
