/**
 * Isolation between guests (issue 7): a guest cannot use another guest's
 * lkeys (in its SGEs), rkeys (remote ops through its own QP against the
 * other guest's MR), PD, MR, CQ or QP handles (control commands naming
 * them), even guessing; and a deregistered MR's keys fail even after its key
 * slot is reused with a new tag.
 *
 * Runs on one host and on two: V (victim) on host 1 with a connection to
 * its peer W, X (attacker) on host 1 next to V, and X's accomplice Y; W and
 * Y on host 1 in the same-host run, on host 2 in the two-host run. V's
 * buffer holds random secret bytes: no attack may change them or carry
 * them anywhere the attacker can read.
 *
 * The step marked "was a bug" found one in production code, since fixed;
 * it guards it.
 */

import assert from "node:assert/strict";
import { Op } from "../../protocol/device_interface.ts";
import { type Mr, type Qp, SendFlags, VerbsError } from "../../mod.ts";
import { Frozen, SecretIndex } from "./fixtures/net_canary.ts";
import { Rng } from "./fixtures/net_forge.ts";
import { ALL_ACCESS, Player, sleep, startTwoHosts } from "./fixtures/net_guests.ts";

/** Bytes at the start of V's buffer that hold V's secret; the rest is for V's own traffic. */
const SECRET_BYTES = 32 << 10;

/** Keys to guess: slots 1..`slots`, tags 0..`tags`-1, plus `extra`, minus `own`. */
function guesses(slots: number, tags: number, extra: number[], own: number[]): number[] {
  const out = new Set<number>(extra);
  for (let slot = 1; slot <= slots; slot++) {
    for (let tag = 0; tag < tags; tag++) out.add(((slot << 8) | tag) >>> 0);
  }
  for (const k of own) out.delete(k);
  return [...out];
}

/**
 * Runs `fn` while X's control commands `op` get `patch` merged into their
 * arguments: a well-formed command (real rings, real sizes) that names
 * handles the driver would never send.
 */
async function rewriting(
  player: Player,
  op: number,
  patch: Record<string, unknown>,
  fn: () => Promise<void>,
): Promise<void> {
  const dev = player.dev;
  const original = dev.command;
  dev.command = (o: number, args: Record<string, unknown> = {}) =>
    original.call(dev, o, o === op ? { ...args, ...patch } : args);
  try {
    await fn();
  } finally {
    dev.command = original;
  }
}

/** Completes when `p` rejects with a VerbsError whose errno is `errno`; returns its message. */
async function rejects(p: Promise<unknown>, errno: string, what: string): Promise<string> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof VerbsError, `${what}: threw ${e}`);
    assert.equal(e.errno, errno, `${what}: ${e.message}`);
    return e.message;
  }
  assert.fail(`${what}: succeeded`);
}

Deno.test({
  name: "isolation: keys, handles and stale keys, on one host and across two",
  sanitizeOps: false,
  sanitizeResources: false,
}, async (outer) => {
  // Both runs share the two backends: starting one costs seconds under `deno test`.
  await using hosts = await startTwoHosts();
  const [h1, h2] = hosts;
  for (const topology of ["same", "two"] as const) {
    await outer.step(topology === "same" ? "same host" : "two hosts", async (t) => {
      const started = performance.now();
      const far = topology === "same" ? h1 : h2;
      await using v = await Player.open("V", h1);
      await using w = await Player.open("W", far);
      await using x = await Player.open("X", h1);
      await using y = await Player.open("Y", far);

      // V holds more objects than X, so some of V's handle numbers are not X's.
      const vExtra = {
        pds: [await v.dev.allocPd(), await v.dev.allocPd()],
        mrs: [] as Mr[],
        cqs: [await v.dev.createCq({ cqe: 8 }), await v.dev.createCq({ cqe: 8 })],
        qps: [] as Qp[],
      };
      for (let i = 0; i < 5; i++) {
        vExtra.mrs.push(
          await v.pd.regMr({ addr: v.mr.addr + BigInt(i * 4096), length: 4096 }, ALL_ACCESS),
        );
      }
      for (let i = 0; i < 3; i++) vExtra.qps.push(await v.qp());

      const secrets = new SecretIndex();
      const frozen = new Frozen();
      const secret = v.buf.bytes.subarray(0, SECRET_BYTES);
      secrets.fill("V's memory", secret, new Rng(0x15e));
      frozen.add("V's memory", secret);
      const vKeys = [v.mr.lkey, ...vExtra.mrs.map((m) => m.lkey)];

      const vQp = await v.qp();
      const wQp = await w.qp();
      const xQp = await x.qp();
      const yQp = await y.qp();
      const connectVW = async () => {
        await v.connect(vQp, w.remote(wQp), { timeout: 14, retryCnt: 7 });
        await w.connect(wQp, v.remote(vQp), { timeout: 14, retryCnt: 7 });
      };
      const connectXY = async () => {
        await x.connect(xQp, y.remote(yQp));
        await y.connect(yQp, x.remote(xQp));
      };
      await connectVW();
      await connectXY();

      /** W writes into and reads back from V's traffic half; a SEND lands in V's receive. */
      const vTraffic = async (tag: number) => {
        const data = new Rng(tag).bytes(4096);
        w.buf.bytes.set(data, 0);
        const at = BigInt(SECRET_BYTES);
        vQp.postRecv({
          wrId: 50n,
          sgList: [{ addr: v.mr.addr + at + 8192n, length: 4096, lkey: v.mr.lkey }],
        });
        wQp.postSend([
          {
            wrId: 51n,
            opcode: "RDMA_WRITE",
            sendFlags: SendFlags.SIGNALED,
            sgList: [{ addr: w.mr.addr, length: 4096, lkey: w.mr.lkey }],
            rdma: { remoteAddr: v.mr.addr + at, rkey: v.mr.rkey },
          },
          {
            wrId: 52n,
            opcode: "RDMA_READ",
            sendFlags: SendFlags.SIGNALED,
            sgList: [{ addr: w.mr.addr + 8192n, length: 4096, lkey: w.mr.lkey }],
            rdma: { remoteAddr: v.mr.addr + at, rkey: v.mr.rkey },
          },
          {
            wrId: 53n,
            opcode: "SEND",
            sendFlags: SendFlags.SIGNALED,
            sgList: [{ addr: w.mr.addr, length: 4096, lkey: w.mr.lkey }],
          },
        ]);
        for (const id of [51n, 52n, 53n]) {
          const wc = await w.next(`W's WR ${id}`);
          assert.deepEqual([wc.wrId, wc.status], [id, "SUCCESS"], "V's peer traffic");
        }
        const recv = await v.next("V's receive");
        assert.deepEqual([recv.wrId, recv.status, recv.byteLen], [50n, "SUCCESS", 4096]);
        const base = SECRET_BYTES;
        assert.deepEqual(v.buf.bytes.subarray(base, base + 4096), data, "W's WRITE in V");
        assert.deepEqual(w.buf.bytes.subarray(8192, 8192 + 4096), data, "W's READ of V");
        assert.deepEqual(v.buf.bytes.subarray(base + 8192, base + 8192 + 4096), data, "W's SEND");
      };

      /** Nothing of V's secret reached X's or Y's memory, and V's secret is unchanged. */
      const assertIsolated = (what: string) => {
        assert.deepEqual(frozen.changes(), [], `${what}: V's memory changed`);
        for (const p of [x, y]) {
          const leak = secrets.find(p.buf.bytes);
          assert.equal(leak, null, `${what}: ${p.name}'s memory holds V's bytes at ${leak?.at}`);
        }
      };

      /** X posts `wr` on its QP; it must complete with `status`. Reconnects X and Y afterwards. */
      const xFails = async (wr: Parameters<Qp["postSend"]>[0], status: string, what: string) => {
        xQp.postSend(wr);
        const wc = await x.next(what);
        assert.equal(wc.status, status, `${what}: ${wc.status}`);
        for (const wc of await x.drain(2)) assert.equal(wc.status, "WR_FLUSH_ERR");
        await y.drain(0);
        await connectXY();
      };

      await t.step("V's own connection works", async () => {
        await vTraffic(1);
        assertIsolated("before");
      });

      await t.step(
        "V's lkeys and guessed lkeys in X's SGEs: LOC_PROT_ERR, nothing moved",
        async () => {
          const keys = guesses(16, 2, vKeys, [x.mr.lkey]);
          for (const lkey of keys) {
            await xFails(
              {
                wrId: 1n,
                opcode: "RDMA_WRITE",
                sendFlags: SendFlags.SIGNALED,
                // V's buffer sits at the same guest address as X's: only the key tells them apart.
                sgList: [{ addr: v.mr.addr, length: 256, lkey }],
                rdma: { remoteAddr: y.mr.addr, rkey: y.mr.rkey },
              },
              "LOC_PROT_ERR",
              `WRITE from lkey 0x${lkey.toString(16)}`,
            );
          }
          await xFails(
            {
              wrId: 2n,
              opcode: "SEND",
              sendFlags: SendFlags.SIGNALED,
              sgList: [{ addr: v.mr.addr, length: 64, lkey: v.mr.lkey }],
            },
            "LOC_PROT_ERR",
            "SEND from V's lkey",
          );
          await xFails(
            {
              wrId: 3n,
              opcode: "RDMA_READ",
              sendFlags: SendFlags.SIGNALED,
              sgList: [{ addr: v.mr.addr, length: 64, lkey: v.mr.lkey }],
              rdma: { remoteAddr: y.mr.addr, rkey: y.mr.rkey },
            },
            "LOC_PROT_ERR",
            "READ into V's lkey",
          );
          // A receive naming V's lkey: Y's SEND must not land in V's memory.
          xQp.postRecv({ wrId: 4n, sgList: [{ addr: v.mr.addr, length: 64, lkey: v.mr.lkey }] });
          y.buf.bytes.fill(0x77, 0, 64);
          yQp.postSend({
            wrId: 5n,
            opcode: "SEND",
            sendFlags: SendFlags.SIGNALED,
            sgList: [{ addr: y.mr.addr, length: 64, lkey: y.mr.lkey }],
          });
          const recv = await x.next("X's receive with V's lkey");
          assert.equal(recv.status, "LOC_PROT_ERR");
          const sent = await y.next("Y's SEND into it");
          assert.notEqual(sent.status, "SUCCESS", "the SEND did not succeed");
          await x.drain(2);
          await y.drain(2);
          await connectXY();
          assertIsolated("lkeys");
          console.log(`  ${keys.length + 3} lkey uses refused`);
        },
      );

      await t.step(
        "V's rkeys and guessed rkeys through X's own connection: REM_ACCESS_ERR",
        async () => {
          const keys = guesses(16, 2, vKeys, [y.mr.rkey]);
          for (const rkey of keys) {
            await xFails(
              {
                wrId: 10n,
                opcode: "RDMA_WRITE",
                sendFlags: SendFlags.SIGNALED,
                sgList: [{ addr: x.mr.addr, length: 64, lkey: x.mr.lkey }],
                rdma: { remoteAddr: v.mr.addr, rkey },
              },
              "REM_ACCESS_ERR",
              `WRITE with rkey 0x${rkey.toString(16)}`,
            );
          }
          for (
            const [opcode, atomic] of [["RDMA_READ", false], [
              "ATOMIC_FETCH_AND_ADD",
              true,
            ]] as const
          ) {
            await xFails(
              {
                wrId: 11n,
                opcode,
                sendFlags: SendFlags.SIGNALED,
                sgList: [{ addr: x.mr.addr, length: atomic ? 8 : 256, lkey: x.mr.lkey }],
                ...(atomic
                  ? { atomic: { remoteAddr: v.mr.addr, rkey: v.mr.rkey, compareAdd: 1n, swap: 0n } }
                  : { rdma: { remoteAddr: v.mr.addr, rkey: v.mr.rkey } }),
              },
              "REM_ACCESS_ERR",
              `${opcode} with V's rkey`,
            );
          }
          // The other way: Y (on the far host in the two-host run) aims V's rkey at X.
          yQp.postSend({
            wrId: 12n,
            opcode: "RDMA_READ",
            sendFlags: SendFlags.SIGNALED,
            sgList: [{ addr: y.mr.addr, length: 256, lkey: y.mr.lkey }],
            rdma: { remoteAddr: v.mr.addr, rkey: v.mr.rkey },
          });
          const wc = await y.next("Y's READ with V's rkey");
          assert.equal(wc.status, "REM_ACCESS_ERR");
          await x.drain(2);
          await connectXY();
          assertIsolated("rkeys");
          console.log(`  ${keys.length + 3} rkey uses refused`);
        },
      );

      await t.step({
        name: "X's QP connected straight to V's QPN on V's host: nothing reaches V",
        // WAS A BUG, fixed (backend/engine/requester.ts execute): the same-host path takes the responder QP
        // as host.qp(qp.destQpNum) and checks only its type and state, never that the
        // responder's own destQpNum/dgid name the requester. Any guest on the host can connect
        // a QP to another guest's QPN (sequential from 0x11) and SEND into its receive queue,
        // and with its rkey (guessable: (slot << 8) | tag, tags from 0) WRITE and READ its memory.
        fn: async () => {
          const hijack = await x.qp();
          try {
            await x.connect(hijack, { qpNum: vQp.qpNum, psn: 0, gid: h1.gid });
            vQp.postRecv({
              wrId: 29n,
              sgList: [{ addr: v.mr.addr + BigInt(SECRET_BYTES), length: 64, lkey: v.mr.lkey }],
            });
            const outcomes: string[] = [];
            for (const op of ["RDMA_READ", "RDMA_WRITE", "SEND"] as const) {
              hijack.postSend({
                wrId: 20n,
                opcode: op,
                sendFlags: SendFlags.SIGNALED,
                sgList: [{ addr: x.mr.addr + 4096n, length: 64, lkey: x.mr.lkey }],
                ...(op === "SEND" ? {} : { rdma: { remoteAddr: v.mr.addr, rkey: v.mr.rkey } }),
              });
              outcomes.push(`${op} ${(await x.next(`${op} through V's QPN`)).status}`);
              await x.drain(2);
              await x.connect(hijack, { qpNum: vQp.qpNum, psn: 0, gid: h1.gid });
            }
            const leaked = secrets.find(x.buf.bytes);
            const changed = frozen.changes();
            const vGot = v.cq.poll(16).map((wc) =>
              `${wc.opcode} ${wc.status} from QP 0x${wc.srcQp.toString(16)}`
            );
            assert.deepEqual(
              { successes: outcomes.filter((o) => o.endsWith("SUCCESS")), vGot, leaked, changed },
              { successes: [], vGot: [], leaked: null, changed: [] },
              `X reached V through V's QPN 0x${vQp.qpNum.toString(16)}`,
            );
          } finally {
            // The receive posted above is still V's when nothing reached V: W uses it up with
            // a 64-byte SEND, so the next step's traffic finds its own receive first.
            if (v.cq.poll(16).length === 0) {
              wQp.postSend({
                wrId: 28n,
                opcode: "SEND",
                sendFlags: SendFlags.SIGNALED,
                sgList: [{ addr: w.mr.addr, length: 64, lkey: w.mr.lkey }],
              });
              for (const [who, p] of [["W", w], ["V", v]] as const) {
                const wc = await p.next(`${who}: the 64-byte SEND that uses up receive 29`);
                assert.equal(wc.status, "SUCCESS");
              }
            }
            // Later steps check V's memory again: put it back whatever happened here.
            frozen.restore();
            x.buf.bytes.fill(0);
            await hijack.destroy();
          }
        },
      });

      await t.step(
        "a guest on another host connected to V's QPN: refused (source address or PSN)",
        async () => {
          // Z is on host 2: in the same-host run V's peer W is on host 1, so Z's datagrams come
          // from the wrong address; in the two-host run W is on host 2 as well, and only V's
          // expected PSN (random, 24 bits) keeps Z out, as on any RoCE fabric.
          await using z = await Player.open("Z", h2);
          const hijack = await z.qp();
          const before = h1.stats() as unknown as Record<string, number>;
          await z.connect(hijack, { qpNum: vQp.qpNum, psn: 0, gid: h1.gid });
          hijack.postSend({
            wrId: 21n,
            opcode: "RDMA_WRITE",
            sendFlags: SendFlags.SIGNALED,
            sgList: [{ addr: z.mr.addr, length: 64, lkey: z.mr.lkey }],
            rdma: { remoteAddr: v.mr.addr, rkey: v.mr.rkey },
          });
          const wc = await z.next("WRITE through V's QPN from host 2");
          assert.equal(wc.status, "RETRY_EXC_ERR", "nobody answers Z");
          const after = h1.stats() as unknown as Record<string, number>;
          if (topology === "same") {
            assert.ok(after.badPackets! - before.badPackets! >= 1, "host 1 refused Z's datagrams");
          } else {
            const seen = ["outOfSequence", "duplicateRequests"].reduce(
              (n, k) => n + after[k]! - before[k]!,
              0,
            );
            assert.ok(seen >= 1, "host 1 took Z's datagrams for out-of-window PSNs");
          }
          await hijack.destroy();
          assertIsolated("far hijack");
          // V's connection may have seen sequence NAKs go to W; it still works.
          await vTraffic(2);
        },
      );

      await t.step(
        "control commands naming V's PD, MR, CQ, QP, SRQ and AH handles: EINVAL",
        async () => {
          const own = {
            pd: [x.pd.handle],
            mr: [x.mr.handle],
            cq: [x.cq.handle],
            qp: [xQp.handle],
          };
          const vHandles = {
            pd: [v.pd.handle, ...vExtra.pds.map((p) => p.handle)],
            mr: [v.mr.handle, ...vExtra.mrs.map((m) => m.handle)],
            cq: [v.cq.handle, ...vExtra.cqs.map((c) => c.handle)],
            qp: [vQp.handle, ...vExtra.qps.map((q) => q.handle)],
          };
          const sweep = (kind: keyof typeof own) =>
            [
              ...new Set([
                ...vHandles[kind],
                ...Array.from({ length: 24 }, (_, i) => i + 1),
                0,
                0xffff_ffff,
              ]),
            ]
              .filter((h) => !own[kind].includes(h));
          const before = h1.stats() as unknown as Record<string, number>;
          let refusedCommands = 0;
          const refuse = async (op: number, args: Record<string, unknown>, what: string) => {
            await rejects(x.dev.command(op, args), "EINVAL", what);
            refusedCommands++;
          };
          for (const h of sweep("mr")) await refuse(Op.DEREG_MR, { mr: h }, `DEREG_MR ${h}`);
          for (const h of sweep("qp")) {
            await refuse(Op.QUERY_QP, { qp: h }, `QUERY_QP ${h}`);
            await refuse(Op.MODIFY_QP, { qp: h, attr: { qpState: "ERR" } }, `MODIFY_QP ${h}`);
            await refuse(Op.DESTROY_QP, { qp: h }, `DESTROY_QP ${h}`);
          }
          const cap = {
            maxSendWr: 1,
            maxRecvWr: 1,
            maxSendSge: 1,
            maxRecvSge: 1,
            maxInlineData: 0,
          };
          for (const h of sweep("cq")) {
            await refuse(Op.DESTROY_CQ, { cq: h }, `DESTROY_CQ ${h}`);
            await refuse(Op.REQ_NOTIFY_CQ, { cq: h, solicitedOnly: false }, `REQ_NOTIFY_CQ ${h}`);
            // A well-formed CREATE_QP (real rings) whose CQ handles are not X's.
            await rewriting(x, Op.CREATE_QP, { sendCq: h, recvCq: h }, async () => {
              await rejects(
                x.pd.createQp({ qpType: "RC", sendCq: x.cq, recvCq: x.cq, cap }),
                "EINVAL",
                `CREATE_QP on CQ ${h}`,
              );
            });
            refusedCommands++;
          }
          for (const h of sweep("pd")) {
            await refuse(Op.DEALLOC_PD, { pd: h }, `DEALLOC_PD ${h}`);
            await rewriting(x, Op.CREATE_QP, { pd: h }, async () => {
              await rejects(
                x.pd.createQp({ qpType: "RC", sendCq: x.cq, recvCq: x.cq, cap }),
                "EINVAL",
                `CREATE_QP in PD ${h}`,
              );
            });
            await rewriting(x, Op.CREATE_SRQ, { pd: h }, async () => {
              await rejects(
                x.pd.createSrq({ maxWr: 4, maxSge: 1 }),
                "EINVAL",
                `CREATE_SRQ in PD ${h}`,
              );
            });
            refusedCommands += 2;
            await refuse(
              Op.REG_MR,
              { pd: h, addr: Number(x.mr.addr), length: 4096, access: ALL_ACCESS },
              `REG_MR in PD ${h}`,
            );
            await refuse(
              Op.CREATE_AH,
              { pd: h, ahAttr: { dgid: h1.gid, portNum: 1 } },
              `CREATE_AH in PD ${h}`,
            );
          }
          for (const h of [1, 2, 3]) {
            await refuse(Op.DESTROY_SRQ, { srq: h }, `DESTROY_SRQ ${h}`);
            await refuse(Op.DESTROY_AH, { ah: h }, `DESTROY_AH ${h}`);
          }
          const after = h1.stats() as unknown as Record<string, number>;
          for (const kind of ["pds", "mrs", "cqs", "qps", "srqs", "ahs"]) {
            assert.equal(after[kind], before[kind], `${kind} on host 1 changed`);
          }
          // V's objects are intact and its connection works.
          assert.equal((await vQp.query()).state, "RTS");
          for (const q of vExtra.qps) assert.equal((await q.query()).state, "RESET");
          await vTraffic(3);
          assertIsolated("handles");
          console.log(`  ${refusedCommands} commands naming handles X does not own refused`);
        },
      );

      await t.step(
        "a deregistered MR's keys fail after its slot is reused with a new tag",
        async () => {
          const half = v.mr.addr + BigInt(SECRET_BYTES);
          const range = { addr: half + 16384n, length: 4096 };
          const old = await v.pd.regMr(range, ALL_ACCESS);
          await old.dereg();
          const held: Mr[] = [];
          let fresh: Mr | undefined;
          for (let i = 0; i < 64 && fresh === undefined; i++) {
            const mr = await v.pd.regMr(range, ALL_ACCESS);
            if (mr.rkey >>> 8 === old.rkey >>> 8) fresh = mr;
            else held.push(mr);
          }
          for (const mr of held) await mr.dereg();
          assert.ok(fresh !== undefined, "the slot came back");
          assert.notEqual(fresh.rkey, old.rkey, "with another tag");
          const off = SECRET_BYTES + 16384;
          v.buf.bytes.fill(0x5c, off, off + 4096);
          // W writes with the stale rkey into the very range the new MR covers.
          wQp.postSend({
            wrId: 30n,
            opcode: "RDMA_WRITE",
            sendFlags: SendFlags.SIGNALED,
            sgList: [{ addr: w.mr.addr, length: 64, lkey: w.mr.lkey }],
            rdma: { remoteAddr: range.addr, rkey: old.rkey },
          });
          assert.equal((await w.next("W's WRITE with the stale rkey")).status, "REM_ACCESS_ERR");
          await w.drain(2);
          await v.drain(2);
          await connectVW();
          // V itself names the stale lkey.
          vQp.postSend({
            wrId: 31n,
            opcode: "RDMA_WRITE",
            sendFlags: SendFlags.SIGNALED,
            sgList: [{ addr: range.addr, length: 64, lkey: old.lkey }],
            rdma: { remoteAddr: w.mr.addr, rkey: w.mr.rkey },
          });
          assert.equal((await v.next("V's WRITE from the stale lkey")).status, "LOC_PROT_ERR");
          await v.drain(2);
          await connectVW();
          assert.deepEqual(
            v.buf.bytes.subarray(off, off + 4096),
            new Uint8Array(4096).fill(0x5c),
            "the new MR's bytes",
          );
          // The new key works where the old one did not.
          wQp.postSend({
            wrId: 32n,
            opcode: "RDMA_WRITE",
            sendFlags: SendFlags.SIGNALED,
            sgList: [{ addr: w.mr.addr, length: 64, lkey: w.mr.lkey }],
            rdma: { remoteAddr: range.addr, rkey: fresh.rkey },
          });
          assert.equal((await w.next("W's WRITE with the new rkey")).status, "SUCCESS");
          await fresh.dereg();

          // Over its next 255 reuses a slot never gives a key it gave before.
          const slot = fresh.rkey >>> 8;
          const seen = new Set([old.rkey, fresh.rkey]);
          let reuses = 0;
          for (let i = 0; i < 4 * 255 && reuses < 254; i++) {
            const mr = await v.pd.regMr(range, ALL_ACCESS);
            if (mr.rkey >>> 8 === slot) {
              assert.ok(
                !seen.has(mr.rkey),
                `reuse ${reuses + 3} of slot 0x${slot.toString(16)} repeats key 0x${
                  mr.rkey.toString(16)
                }`,
              );
              seen.add(mr.rkey);
              reuses++;
            }
            await mr.dereg();
          }
          assert.equal(seen.size, 256, "256 distinct keys from one slot");
          await vTraffic(4);
          assertIsolated("stale keys");
        },
      );

      await t.step("afterwards: V intact, both hosts serve on", async () => {
        await vTraffic(5);
        assertIsolated("end");
        for (const h of [h1, h2]) {
          const s = h.stats() as unknown as Record<string, number>;
          assert.equal(s.adapterErrors, 0, `${h.ip}: adapter errors`);
          assert.equal(s.brokenQueues, 0, `${h.ip}: broken queues`);
        }
        await sleep(0);
        console.log(`isolation (${topology}): ${(performance.now() - started).toFixed(0)} ms`);
      });
    });
  }
});
