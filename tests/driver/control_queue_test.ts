/**
 * The control queue's per-command timeout: a device that stops answering
 * (but keeps its socket open) must not hang a verb for good. The device
 * side here is a `DeviceQueue` over the same in-memory guest memory, which
 * answers only when a test tells it to.
 */

import assert from "node:assert/strict";
import { encode } from "cbor-x";
import { GuestMemory } from "../../virtqueue/memory.ts";
import { layoutAt } from "../../virtqueue/layout.ts";
import { DeviceQueue } from "../../virtqueue/device_queue.ts";
import { DescriptorChain } from "../../virtqueue/descriptor_chain.ts";
import { COMMAND_TIMEOUT_MS, ControlQueue } from "../../driver/control_queue.ts";
import { VerbsError } from "../../driver/errors.ts";
import { Op } from "../../protocol/device_interface.ts";

const BASE = 0x10000;
const SIZE = 8;

/** A control queue over fresh memory, the device's end of it, and what it reported. */
function rig(timeoutMs?: number) {
  const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(1 << 20), BASE);
  const { layout } = layoutAt(BASE, SIZE);
  const timeouts: VerbsError[] = [];
  let rings = 0;
  const control = new ControlQueue(mem, layout, {
    eventIdx: false,
    slotsAddr: BASE + 0x10000,
    ring: () => rings++,
    ...(timeoutMs === undefined ? {} : { timeoutMs }),
    onTimeout: (e) => timeouts.push(e),
  });
  const device = new DeviceQueue(layout);
  const chain = new DescriptorChain();
  /** Answers every command waiting with `{status: 0, op}`; returns how many. */
  const answerAll = (): number => {
    let n = 0;
    while (device.popInto(mem, chain)) {
      const bytes = encode({ status: 0, answered: ++n }) as Uint8Array;
      chain.writer.write(bytes);
      device.addUsed(mem, chain.head, bytes.length);
    }
    device.publishUsed(mem);
    control.drain();
    return n;
  };
  return { control, timeouts, answerAll, rings: () => rings };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

Deno.test("the default command timeout is 30 s", () => {
  assert.equal(COMMAND_TIMEOUT_MS, 30_000);
});

Deno.test("an unanswered command rejects with ETIMEDOUT naming it and the wait; the queue is lost", async () => {
  const { control, timeouts, rings } = rig(60);
  // The queue's timer is unref'd; in a driver the open device's reactor keeps
  // the process alive, here this does.
  const keepAlive = setTimeout(() => {}, 10_000);
  const started = performance.now();
  const regMr = control.execute(Op.REG_MR, { pd: 1 });
  const createCq = control.execute(Op.CREATE_CQ, { cqe: 4 });
  const error = await assert.rejects(regMr, (e: unknown) => {
    assert.ok(e instanceof VerbsError);
    assert.equal(e.errno, "ETIMEDOUT");
    assert.equal(e.message, "ETIMEDOUT: REG_MR: no answer from the device after 60 ms");
    return true;
  }).then(() => timeouts[0]);
  const waited = performance.now() - started;
  assert.ok(waited >= 55, `rejected after ${waited.toFixed(0)} ms, before the timeout`);
  assert.ok(rings() >= 1, "the device was never told about the command");
  // Every other outstanding command fails with it; the device is reported lost once.
  await assert.rejects(createCq, (e: unknown) => e === error);
  await sleep(100);
  assert.equal(timeouts.length, 1, "onTimeout ran more than once");
  // Nothing more goes to a device that is gone.
  await assert.rejects(control.execute(Op.QUERY_DEVICE), (e: unknown) => e === error);
  clearTimeout(keepAlive);
});

Deno.test("a command answered in time resolves, and its timer is gone", async () => {
  const { control, timeouts, answerAll } = rig(80);
  const pending = control.execute(Op.ALLOC_PD);
  assert.equal(answerAll(), 1);
  assert.deepEqual(await pending, { status: 0, answered: 1 });
  await sleep(200); // well past the timeout
  assert.deepEqual(timeouts, []);
  // The queue still works.
  const next = control.execute(Op.ALLOC_PD);
  answerAll();
  assert.deepEqual(await next, { status: 0, answered: 1 });
});

Deno.test("a timeout that is not a positive number of ms is refused", () => {
  for (const timeoutMs of [0, -1, Number.NaN, 2 ** 31]) {
    assert.throws(() => rig(timeoutMs), (e: unknown) => {
      assert.ok(e instanceof RangeError);
      assert.match(e.message, new RegExp(`^command timeout ${timeoutMs} ms is not in 1\\.\\.`));
      return true;
    });
  }
});

Deno.test("a command in flight does not keep the process alive", async () => {
  // With a referenced 30 s timer this child would wait 30 s, then die of the
  // unhandled rejection; unreferenced, it exits as soon as its work is done.
  const url = (p: string) => new URL(p, import.meta.url).href;
  const script = `
    import { ControlQueue } from "${url("../../driver/control_queue.ts")}";
    import { GuestMemory } from "${url("../../virtqueue/memory.ts")}";
    import { layoutAt } from "${url("../../virtqueue/layout.ts")}";
    const mem = GuestMemory.fromBuffer(new SharedArrayBuffer(1 << 20), 0x10000);
    const q = new ControlQueue(mem, layoutAt(0x10000, 8).layout, {
      eventIdx: false, slotsAddr: 0x20000, ring: () => {},
    });
    q.execute(1).catch((e) => { console.log("rejected", e.message); Deno.exit(3); });
    console.log("posted");
  `;
  const started = performance.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", script],
    cwd: new URL("../..", import.meta.url).pathname,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const elapsed = performance.now() - started;
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, text);
  assert.equal(text.trim(), "posted");
  assert.ok(elapsed < 20_000, `the child ran ${elapsed.toFixed(0)} ms`);
});
