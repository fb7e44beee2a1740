import assert from "node:assert/strict";
import { Op } from "../../../protocol/device_interface.ts";
import { Access } from "../../../protocol/verbs.ts";
import { BASE, makeGuest, makePd, snapshot } from "./model_fixture.ts";

const RW = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC;

Deno.test("ALLOC_PD and DEALLOC_PD: handles from 1, never reused, counted", () => {
  const g = makeGuest();
  assert.deepEqual(g.ok(Op.ALLOC_PD), { status: 0, pd: 1 });
  assert.deepEqual(g.ok(Op.ALLOC_PD), { status: 0, pd: 2 });
  assert.equal(g.counters.get("pds"), 2);
  assert.deepEqual(g.ok(Op.DEALLOC_PD, { pd: 1 }), { status: 0 });
  assert.equal(g.counters.get("pds"), 1);
  assert.equal(g.model.pd(1), undefined);
  g.fail(Op.DEALLOC_PD, { pd: 1 }, "EINVAL", /^pd 1 does not exist$/);
  assert.deepEqual(g.ok(Op.ALLOC_PD), { status: 0, pd: 3 }, "handle 1 is not reused");
  g.fail(Op.DEALLOC_PD, { pd: 99 }, "EINVAL", /pd 99 does not exist/);
  g.fail(Op.DEALLOC_PD, {}, "EINVAL", /pd = undefined is not an integer/);
  g.fail(Op.ALLOC_PD, { pd: 1 }, "EINVAL", /pd is not a field here/);
});

Deno.test("REG_MR returns equal lkey and rkey and records the MR", () => {
  const g = makeGuest();
  const pd = makePd(g);
  const addr = g.alloc(8192);
  const r = g.ok(Op.REG_MR, { pd, addr, length: 8192, access: RW });
  assert.equal(r.mr, 1);
  assert.equal(r.lkey, r.rkey);
  assert.equal(r.lkey, 0x100);
  const mr = g.model.mr(1)!;
  assert.equal(mr.addr, addr);
  assert.equal(mr.length, 8192);
  assert.equal(mr.access, RW);
  assert.equal(mr.pd, g.model.pd(pd));
  assert.equal(mr.guest.memory, g.memory);
  assert.equal(g.host.mrByKey(r.lkey as number), mr);
  assert.equal(g.counters.get("mrs"), 1);
  // A bigint address is accepted: addresses are u64 on the device interface.
  const r2 = g.ok(Op.REG_MR, { pd, addr: BigInt(addr), length: 1, access: 0 });
  assert.equal(g.model.mr(r2.mr as number)?.addr, addr);
  // Exactly the whole of guest memory is fine.
  g.ok(Op.REG_MR, { pd, addr: BASE, length: g.memory.size, access: Access.LOCAL_WRITE });
});

Deno.test("REG_MR checks access bits, range and memory; failures change nothing", () => {
  const g = makeGuest();
  const pd = makePd(g);
  const addr = g.alloc(4096);
  const before = snapshot(g);
  const reg = (args: Record<string, unknown>) => ({ pd, addr, length: 4096, access: 0, ...args });
  g.fail(Op.REG_MR, reg({ access: 0x80 }), "EINVAL", /access 0x80 has bits outside 0x7f/);
  g.fail(Op.REG_MR, reg({ access: Access.MW_BIND }), "EOPNOTSUPP", /access 0x10: MW_BIND/);
  g.fail(Op.REG_MR, reg({ access: Access.ZERO_BASED }), "EOPNOTSUPP", /ZERO_BASED/);
  g.fail(Op.REG_MR, reg({ access: Access.ON_DEMAND | 1 }), "EOPNOTSUPP", /ON_DEMAND/);
  g.fail(
    Op.REG_MR,
    reg({ access: Access.REMOTE_WRITE }),
    "EINVAL",
    /access 0x2: REMOTE_WRITE and REMOTE_ATOMIC need LOCAL_WRITE/,
  );
  g.fail(Op.REG_MR, reg({ access: Access.REMOTE_ATOMIC | Access.REMOTE_READ }), "EINVAL", /0xc/);
  g.fail(Op.REG_MR, reg({ length: 0 }), "EINVAL", /length 0/);
  g.fail(Op.REG_MR, reg({ addr: BASE - 1 }), "EFAULT", /addr 0xffffffff length 4096/);
  g.fail(
    Op.REG_MR,
    reg({ addr: BASE + g.memory.size - 100, length: 101 }),
    "EFAULT",
    /is not inside guest memory/,
  );
  g.fail(
    Op.REG_MR,
    reg({ length: g.memory.size + 1 }),
    "EINVAL",
    new RegExp(`length ${g.memory.size + 1} exceeds maxMrSize ${g.memory.size}`),
  );
  g.fail(Op.REG_MR, reg({ pd: 7 }), "EINVAL", /pd 7 does not exist/);
  g.fail(Op.REG_MR, reg({ addr: -1 }), "EINVAL", /addr = -1 is not a guest address/);
  g.fail(Op.REG_MR, reg({ addr: 2n ** 64n - 1n }), "EINVAL", /addr = 18446744073709551615n/);
  g.fail(Op.REG_MR, reg({ length: "4096" }), "EINVAL", /length = "4096"/);
  g.fail(Op.REG_MR, reg({ access: 1.5 }), "EINVAL", /access = 1.5/);
  g.fail(Op.REG_MR, reg({ access: 1n }), "EINVAL", /access = 1n/);
  g.fail(Op.REG_MR, reg({ lkey: 5 }), "EINVAL", /lkey is not a field here/);
  assert.deepEqual(snapshot(g), before);
  assert.equal(g.ok(Op.REG_MR, reg({})).mr, 1, "no handle was used up by the failures");
});

Deno.test("DEREG_MR frees the key; a new MR in the slot gets a new tag", () => {
  const g = makeGuest();
  const pd = makePd(g);
  const addr = g.alloc(4096);
  const a = g.ok(Op.REG_MR, { pd, addr, length: 4096, access: RW });
  const mrA = g.model.mr(a.mr as number)!;
  assert.deepEqual(g.ok(Op.DEREG_MR, { mr: a.mr }), { status: 0 });
  assert.equal(mrA.live, false);
  assert.equal(g.host.mrByKey(a.rkey as number), undefined);
  g.fail(Op.DEREG_MR, { mr: a.mr }, "EINVAL", /mr 1 does not exist/);
  const b = g.ok(Op.REG_MR, { pd, addr, length: 4096, access: RW });
  assert.equal(b.mr, 2);
  assert.equal((b.rkey as number) >>> 8, (a.rkey as number) >>> 8, "same slot");
  assert.notEqual(b.rkey, a.rkey);
  assert.equal(g.host.mrByKey(a.rkey as number), undefined, "the old rkey does not resolve");
  assert.equal(g.host.mrByKey(b.rkey as number), g.model.mr(2));
  assert.equal(g.counters.get("mrs"), 1);
  assert.equal(g.host.liveKeys, 1);
});

Deno.test("DEALLOC_PD is EBUSY while an MR or an AH uses it", () => {
  const g = makeGuest();
  const pd = makePd(g);
  const r = g.ok(Op.REG_MR, { pd, addr: g.alloc(64), length: 64, access: 0 });
  g.fail(Op.DEALLOC_PD, { pd }, "EBUSY", /pd 1 is still used by 1 MRs, QPs, SRQs or AHs/);
  const ah = g.ok(Op.CREATE_AH, { pd, ahAttr: { dgid: "::ffff:127.0.0.9" } });
  g.fail(Op.DEALLOC_PD, { pd }, "EBUSY", /still used by 2/);
  g.ok(Op.DEREG_MR, { mr: r.mr });
  g.fail(Op.DEALLOC_PD, { pd }, "EBUSY", /still used by 1/);
  g.ok(Op.DESTROY_AH, { ah: ah.ah });
  assert.equal(g.counters.get("pds"), 1);
  g.ok(Op.DEALLOC_PD, { pd });
  assert.equal(g.counters.get("pds"), 0);
});

Deno.test("maxPd and maxMr are per-guest limits: ENOMEM", () => {
  const g = makeGuest({ limits: { maxPd: 2, maxMr: 3 } });
  const pd = makePd(g);
  makePd(g);
  g.fail(Op.ALLOC_PD, {}, "ENOMEM", /pd limit reached: 2 live/);
  const addr = g.alloc(64);
  const mrs = [1, 2, 3].map(() => g.ok(Op.REG_MR, { pd, addr, length: 64, access: 0 }).mr);
  const before = snapshot(g);
  g.fail(Op.REG_MR, { pd, addr, length: 64, access: 0 }, "ENOMEM", /mr limit reached: 3 live/);
  assert.deepEqual(snapshot(g), before);
  g.ok(Op.DEREG_MR, { mr: mrs[0] });
  assert.equal(g.ok(Op.REG_MR, { pd, addr, length: 64, access: 0 }).mr, 4);
  g.ok(Op.DEALLOC_PD, { pd: 2 });
  assert.equal(makePd(g), 3);
});
