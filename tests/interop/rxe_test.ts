/**
 * Issue 8: vrdma against the real Linux soft-RoCE (rxe). Two QEMU VMs run
 * rxe with rdma-core's and perftest's tools (tests/helpers/rxe_lab.ts);
 * a vrdma backend sits on the lab bridge at 10.99.0.1 and vrdma guests run
 * `tools/pingpong.ts` and `tools/perf.ts` against `ibv_rc_pingpong`,
 * `ibv_ud_pingpong`, `ib_write_bw`, `ib_read_bw`, `ib_send_bw`,
 * `ib_atomic_bw` and the four `_lat` tests, vrdma as client and as server. Both sides validate the
 * data where the tool can (`-c`), both must succeed, and the figures the
 * two sides print must agree. Every packet on the bridge, in both
 * directions, must then pass `icrc_check.py` (scapy); vrdma's packets must
 * carry IPv4 ID 0 and rxe's nonzero IDs, and the backend must have counted
 * no ICRC error. The backend runs in socket mode (it solves for rxe's IP
 * IDs) and, for a second round, in raw mode (it sees them).
 *
 * Needs root and the Debian packages of shared/interop/README.md; skips
 * with the reason otherwise. About 2-3 minutes (VMs under TCG).
 *
 * ```sh
 * deno task test:interop
 * ```
 */

import assert from "node:assert/strict";
import { icrcCheck, readPcap } from "../helpers/capture.ts";
import { HOST_IP, type Outcome, RxeLab, rxeLabUnavailable, vmIp } from "../helpers/rxe_lab.ts";

const whyNot = await rxeLabUnavailable();
if (whyNot !== null) console.log(`skipping the rxe interop tests: ${whyNot}`);

const EXCHANGE_PORT = 18515;
/** Sizes from 1 B to 64 KiB; 1024 and 1025 straddle rxe's 1024-byte path MTU. */
const RC_SIZES = [1, 1024, 1025, 65536];
const UD_SIZES = [1, 1024];

/** One pingpong or perftest run: the rxe tool in a VM, the vrdma tool here. */
interface Case {
  name: string;
  /** The rxe side's command without the server address. */
  rxe: string;
  /** tools/ script and its arguments, without the server address. */
  vrdma: [string, string[]];
  /** Checks both sides' output; returns the figures to print. */
  check: (vrdma: Outcome, rxe: Outcome) => string;
}

function explain(vrdma: Outcome, rxe: Outcome): string {
  return `--- vrdma (exit ${vrdma.code}):\n${vrdma.output}\n--- rxe (exit ${rxe.code}):\n${rxe.output}`;
}

/** "N bytes in S seconds" and "I iters in" of an rdma-core pingpong. */
function pingpongTotals(output: string): { bytes: number; iters: number } | null {
  const bytes = /(\d+) bytes in [\d.]+ seconds/.exec(output);
  const iters = /(\d+) iters in [\d.]+ seconds/.exec(output);
  if (bytes === null || iters === null) return null;
  return { bytes: Number(bytes[1]), iters: Number(iters[1]) };
}

function pingpongCase(kind: "rc" | "ud", size: number, iters: number): Case {
  const tool = kind === "rc" ? "ibv_rc_pingpong" : "ibv_ud_pingpong";
  const common = ["-s", `${size}`, "-n", `${iters}`, "-c"];
  return {
    name: `${tool} ${size} B`,
    rxe: `${tool} -d rxe0 -g 1 ${common.join(" ")}`,
    vrdma: ["tools/pingpong.ts", kind === "ud" ? ["--ud", ...common] : common],
    check: (vrdma, rxe) => {
      assert.equal(vrdma.code, 0, explain(vrdma, rxe));
      assert.equal(rxe.code, 0, explain(vrdma, rxe));
      // Each side sends and receives `iters` messages of `size` bytes.
      const expected = { bytes: 2 * size * iters, iters };
      assert.deepEqual(pingpongTotals(vrdma.output), expected, explain(vrdma, rxe));
      assert.deepEqual(pingpongTotals(rxe.output), expected, explain(vrdma, rxe));
      const usec = (o: Outcome) => /([\d.]+) usec\/iter/.exec(o.output)?.[1] ?? "?";
      return `${iters} iters, data checked both sides; usec/iter vrdma ${usec(vrdma)}, rxe ${
        usec(rxe)
      }`;
    },
  };
}

/** perftest's result row: bytes, iterations, then the figures (bw: 3, lat: 7). */
function perfRow(output: string): number[] | null {
  const m = /^[ \t]*(\d+)[ \t]+(\d+)((?:[ \t]+[\d.]+)+)[ \t]*$/m.exec(output);
  if (m === null) return null;
  return [Number(m[1]), Number(m[2]), ...m[3]!.trim().split(/\s+/).map(Number)];
}

/**
 * A perftest latency test. write_lat and send_lat are ping-pongs: both
 * sides print their own figures. read_lat and atomic_lat: only the client
 * posts and prints.
 */
function perfLatCase(test: string, size: number, iters: number): Case {
  const bothPrint = test === "write_lat" || test === "send_lat";
  return perftestCase(test, size, iters, (vrdma, rxe) => {
    assert.equal(vrdma.code, 0, explain(vrdma, rxe));
    assert.equal(rxe.code, 0, explain(vrdma, rxe));
    const rows = [perfRow(vrdma.output), perfRow(rxe.output)];
    const printed = rows.filter((r) => r !== null);
    assert.ok(printed.length >= (bothPrint ? 2 : 1), `no result row\n${explain(vrdma, rxe)}`);
    for (const row of printed) {
      assert.deepEqual(row.slice(0, 2), [size, iters], explain(vrdma, rxe));
      assert.equal(row.length, 9, `a latency row has 9 columns: ${row}`);
      assert.ok(row[5]! > 0, `t_avg ${row[5]}\n${explain(vrdma, rxe)}`);
    }
    const avg = (r: number[] | null) => r === null ? "-" : `${r[5]} us`;
    return `t_avg vrdma ${avg(rows[0]!)}, perftest ${avg(rows[1]!)}`;
  });
}

/** perftest's `test` against `perf.ts test`, the same size and iterations; `check` judges. */
function perftestCase(test: string, size: number, iters: number, check: Case["check"]): Case {
  // Atomics have their fixed 8 bytes; perftest takes no -s for them.
  const sizeArgs = test.startsWith("atomic_") ? [] : ["-s", `${size}`];
  return {
    name: `ib_${test} ${size} B x ${iters}`,
    rxe: `ib_${test} -d rxe0 -x 1 -F -n ${iters} ${sizeArgs.join(" ")}`,
    vrdma: ["tools/perf.ts", [test, "-n", `${iters}`, ...sizeArgs]],
    check,
  };
}

function perfCase(test: string, size: number, iters: number): Case {
  return perftestCase(test, size, iters, (vrdma, rxe) => {
    assert.equal(vrdma.code, 0, explain(vrdma, rxe));
    assert.equal(rxe.code, 0, explain(vrdma, rxe));
    const ours = perfRow(vrdma.output);
    const theirs = perfRow(rxe.output);
    assert.ok(ours !== null && theirs !== null, `no result row\n${explain(vrdma, rxe)}`);
    assert.deepEqual(ours.slice(0, 2), [size, iters], explain(vrdma, rxe));
    assert.deepEqual(theirs.slice(0, 2), [size, iters], explain(vrdma, rxe));
    assert.ok(ours[3]! > 0, `average BW ${ours[3]}\n${explain(vrdma, rxe)}`);
    if (test === "send_bw") {
      // perftest's send_bw server measures its own receive side (peak
      // printed as 0.00), so the two rows differ a little by design.
      const ratio = ours[3]! / theirs[3]!;
      assert.ok(ratio > 0.5 && ratio < 2, `average BW ${ours[3]} vs ${theirs[3]}`);
    } else {
      // The server prints the figures the client sent it: the same row.
      assert.deepEqual(ours, theirs, explain(vrdma, rxe));
    }
    return `vrdma prints ${ours.join(" ")}; perftest prints ${theirs.join(" ")}`;
  });
}

/** vrdma's tool is the client: rxe's server runs in VM 0 first. */
async function vrdmaClient(lab: RxeLab, c: Case): Promise<string> {
  const job = await lab.vmStart(0, c.rxe);
  let vrdma: Outcome = { code: -1, output: "" };
  // The server in the VM needs a moment to listen; a refused connect is retried.
  for (let attempt = 0; attempt < 20; attempt++) {
    await new Promise((r) => setTimeout(r, 1000));
    vrdma = await lab.host(c.vrdma[0], [...c.vrdma[1], vmIp(0)]);
    if (!/refused|couldn't connect/i.test(vrdma.output)) break;
  }
  return c.check(vrdma, await lab.vmWait(job));
}

/** vrdma's tool is the server: rxe's client in VM 1 connects to it. */
async function vrdmaServer(lab: RxeLab, c: Case): Promise<string> {
  const server = lab.host(c.vrdma[0], c.vrdma[1]);
  await lab.waitListening(EXCHANGE_PORT);
  const rxe = await lab.vm(1, `${c.rxe} ${HOST_IP}`);
  return c.check(await server, rxe);
}

const cases: Case[] = [
  ...RC_SIZES.map((s) => pingpongCase("rc", s, s > 4096 ? 20 : 50)),
  ...UD_SIZES.map((s) => pingpongCase("ud", s, 50)),
  perfCase("write_bw", 65536, 50),
  perfCase("read_bw", 65536, 50),
  perfCase("send_bw", 65536, 50),
  perfCase("atomic_bw", 8, 200),
  perfLatCase("write_lat", 2, 100),
  perfLatCase("send_lat", 2, 100),
  perfLatCase("read_lat", 2, 100),
  perfLatCase("atomic_lat", 8, 100),
];

/** IPv4 ID and addresses of every UDP 4791 packet in an Ethernet capture. */
function packetIds(pcap: Uint8Array): { src: string; dst: string; id: number }[] {
  const { records } = readPcap(pcap);
  const out = [];
  for (const { data } of records) {
    if (data.length < 14 + 28 || ((data[12]! << 8) | data[13]!) !== 0x0800) continue;
    const ip = data.subarray(14);
    out.push({
      src: ip.subarray(12, 16).join("."),
      dst: ip.subarray(16, 20).join("."),
      id: (ip[4]! << 8) | ip[5]!,
    });
  }
  return out;
}

Deno.test({
  name: "rxe interop: pingpong and perftest against Linux soft-RoCE, both roles, two transports",
  ignore: whyNot !== null,
  sanitizeOps: false,
  sanitizeResources: false,
}, async (t) => {
  await using lab = await RxeLab.start((line) => console.log(`  ${line}`));
  const modes = ["socket", "raw"] as const;
  for (const mode of modes) {
    await lab.startBackend(mode);
    // The raw round repeats a subset: the data path is the same, the receive check is not.
    const round = mode === "socket"
      ? cases
      : [pingpongCase("rc", 65536, 20), perfCase("write_bw", 65536, 50)];
    for (const c of round) {
      await t.step(`${mode}: ${c.name}, vrdma client`, async () => {
        console.log(`  ${await vrdmaClient(lab, c)}`);
      });
      await t.step(`${mode}: ${c.name}, vrdma server`, async () => {
        console.log(`  ${await vrdmaServer(lab, c)}`);
      });
    }
    await t.step(`${mode}: the backend counted no ICRC error and no bad packet`, async () => {
      const s = await lab.stats();
      assert.ok(s.udpPacketsReceived! > 100, `${s.udpPacketsReceived} packets received`);
      assert.equal(s.icrcErrors, 0, `icrcErrors ${s.icrcErrors}`);
      assert.equal(s.badPackets, 0, `badPackets ${s.badPackets}`);
      console.log(
        `  ${mode}: ${s.udpPacketsSent} packets sent, ${s.udpPacketsReceived} received, ` +
          `${s.retransmittedPackets} retransmitted, ${s.duplicateRequests} duplicate requests`,
      );
    });
  }
  await lab.stopBackend();
  await t.step(
    "every packet both ways passes icrc_check.py; vrdma sends ID 0, rxe does not",
    async () => {
      const pcap = await lab.stopCapture();
      const check = await icrcCheck(pcap);
      assert.equal(check.icrcBad, 0, `${check.icrcBad} of ${check.packets} ICRCs wrong`);
      assert.equal(check.code, 0, `icrc_check.py exit ${check.code}`);
      const ids = packetIds(await Deno.readFile(pcap));
      const fromUs = ids.filter((p) => p.src === HOST_IP);
      const toUs = ids.filter((p) => p.dst === HOST_IP);
      assert.ok(fromUs.length > 1000 && toUs.length > 1000, `${fromUs.length} / ${toUs.length}`);
      assert.deepEqual(fromUs.filter((p) => p.id !== 0), [], "vrdma packets with IP ID != 0");
      const nonzero = toUs.filter((p) => p.id !== 0).length;
      assert.ok(nonzero > toUs.length * 0.9, `only ${nonzero} of ${toUs.length} rxe IDs nonzero`);
      console.log(
        `  ${check.packets} packets (${fromUs.length} from vrdma, ${toUs.length} from rxe), ` +
          `opcodes ${check.opcodes.join(",")}, all ICRCs right`,
      );
    },
  );
});
