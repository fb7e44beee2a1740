import assert from "node:assert/strict";
import { CommandError } from "../../../backend/device/fields.ts";
import { FIRST_QPN, HostTables } from "../../../backend/device/host_tables.ts";
import type { Mr, Qp } from "../../../backend/device/objects.ts";

const fakeQp = (qpNum: number) => ({ qpNum }) as unknown as Qp;
const fakeMr = (key: number) => ({ lkey: key }) as unknown as Mr;

Deno.test("QPNs start at 0x11, skip live ones and come back only after a wrap", () => {
  const t = new HostTables({ qpnLimit: FIRST_QPN + 4 }); // QPNs 0x11..0x14
  const a = t.allocQpn(fakeQp);
  const b = t.allocQpn(fakeQp);
  assert.deepEqual([a, b], [0x11, 0x12]);
  assert.equal(t.qpByNum(0x11)?.qpNum, 0x11);
  t.releaseQpn(a);
  assert.equal(t.qpByNum(0x11), undefined);
  // 0x11 is free again but is not reused before the allocator wraps.
  assert.equal(t.allocQpn(fakeQp), 0x13);
  assert.equal(t.allocQpn(fakeQp), 0x14);
  // Wrapped: 0x11 is free, 0x12 is still live and skipped.
  assert.equal(t.allocQpn(fakeQp), 0x11);
  assert.equal(t.liveQps, 4);
  assert.throws(
    () => t.allocQpn(fakeQp),
    (e) => e instanceof CommandError && e.status === 12 && /every QP number/.test(e.message),
  );
  t.releaseQpn(0x13);
  assert.equal(t.allocQpn(fakeQp), 0x13, "the only free number after a full lap");
  assert.equal(t.qpByNum(0x10), undefined, "reserved numbers never resolve");
  assert.equal(t.qpByNum(0), undefined);
});

Deno.test("the default QPN space is 24 bits", () => {
  const t = new HostTables();
  assert.equal(t.allocQpn(fakeQp), FIRST_QPN);
  assert.throws(() => new HostTables({ qpnLimit: (1 << 24) + 1 }), RangeError);
  assert.throws(() => new HostTables({ qpnLimit: FIRST_QPN }), /qpnLimit 17/);
  assert.throws(() => new HostTables({ keySlots: 1 }), /keySlots 1/);
});

Deno.test("keys are (slot << 8) | tag and a reused slot gets the next tag", () => {
  const t = new HostTables();
  const k1 = t.allocKey(fakeMr);
  const k2 = t.allocKey(fakeMr);
  assert.equal(k1, 0x100, "slot 1, tag 0 (slot 0 is never used)");
  assert.equal(k2, 0x200);
  assert.equal(t.mrByKey(k1)?.lkey, k1);
  t.releaseKey(k1);
  assert.equal(t.mrByKey(k1), undefined, "a freed key no longer resolves");
  const k3 = t.allocKey(fakeMr);
  assert.equal(k3, 0x101, "slot 1 again, tag moved on");
  assert.equal(t.mrByKey(k1), undefined, "the stale key does not match the new MR");
  assert.equal(t.mrByKey(k3)?.lkey, 0x101);
  assert.equal(t.liveKeys, 2);
  // Releasing a stale key must not free the slot's new owner.
  t.releaseKey(k1);
  assert.equal(t.mrByKey(k3)?.lkey, 0x101);
  assert.equal(t.liveKeys, 2);
});

Deno.test("freed key slots are reused oldest first and tags wrap at 8 bits", () => {
  const t = new HostTables({ keySlots: 4 }); // slots 1..3
  const keys = [t.allocKey(fakeMr), t.allocKey(fakeMr), t.allocKey(fakeMr)];
  assert.deepEqual(keys, [0x100, 0x200, 0x300]);
  assert.throws(
    () => t.allocKey(fakeMr),
    (e) => e instanceof CommandError && e.status === 12 && /key slot/.test(e.message),
  );
  t.releaseKey(0x200);
  t.releaseKey(0x100);
  assert.equal(t.allocKey(fakeMr), 0x201, "slot 2 was freed first");
  assert.equal(t.allocKey(fakeMr), 0x101);
  let key = 0x101;
  for (let i = 0; i < 255; i++) {
    t.releaseKey(key);
    key = t.allocKey(fakeMr);
  }
  assert.equal(key, 0x100, "after 256 uses the tag is back at 0");
  assert.equal(t.mrByKey(0x1ff), undefined);
  assert.equal(t.mrByKey(0x100)?.lkey, 0x100);
});

Deno.test("mrByKey refuses unknown, reserved and out-of-table keys", () => {
  const t = new HostTables();
  t.allocKey(fakeMr);
  for (const key of [0, 0xff, 0x1ff, 0x200, 0xffff_ffff, -1, NaN]) {
    assert.equal(t.mrByKey(key), undefined, `key ${key}`);
  }
});

Deno.test("a long free list keeps its order across compaction", () => {
  const t = new HostTables();
  const keys = Array.from({ length: 3000 }, () => t.allocKey(fakeMr));
  // Free in a scrambled order: reuse must follow exactly that order.
  const order = keys.map((_, i) => keys[(i * 7) % 3000]!);
  assert.equal(new Set(order).size, 3000);
  for (const k of order) t.releaseKey(k);
  assert.equal(t.liveKeys, 0);
  const again = Array.from({ length: 3000 }, () => t.allocKey(fakeMr));
  assert.deepEqual(again, order.map((k) => k + 1));
  assert.equal(t.allocKey(fakeMr), 3001 << 8, "then a new slot");
});
