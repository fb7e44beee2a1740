/**
 * One side of a perf test over a perftest TCP exchange: the order of
 * messages, barriers and runs of each test, as perftest 6.06 has them.
 *
 * Every test starts the same: versions, cycle buffer and cache line, MTU,
 * a key message each way (then the QP goes to RTS against the peer's), and
 * two more key messages as barriers. Then:
 *
 * - write_bw, read_bw, atomic_bw: the client runs every size and prints;
 *   the server waits at a barrier. After a barrier the client sends its
 *   (last) results, which the server prints; a last barrier, `done`.
 * - send_bw: per size the server posts its receives, a barrier, both run
 *   (the client sends, the server receives, each prints its own figures),
 *   with `--all` another barrier; then a barrier and `done`.
 * - write_lat: per size a barrier, then both run the ping-pong (the server
 *   writes first) and print; the socket just closes.
 * - send_lat: per size both post receives, a barrier, the ping-pong; then
 *   a barrier and `done`.
 * - read_lat, atomic_lat: a barrier, then only the client runs and
 *   prints; the server waits at the closing barrier (`done`).
 *
 * @module
 */

import { mtuFromEnum, mtuToEnum } from "../../protocol/device_config.ts";
import { postReceives, runBwClient, runSendServer } from "./perf_bw.ts";
import type { Printer } from "./perf_format.ts";
import { fillPattern, type PerfGuest, READ_PATTERN_SIZE } from "./perf_guest.ts";
import { runReadLat, runSendLat, runWriteLat } from "./perf_lat.ts";
import type { RunContext } from "./perf_ops.ts";
import { type PerfOptions, runSizes } from "./perf_options.ts";
import type { BwReport, LatReport } from "./perf_stats.ts";
import type { KeyMessage, PerftestChannel } from "./perf_wire.ts";

/** The figures one side measured (or, on a bw server, received), one per size. */
export type SideReports =
  | { kind: "bw"; reports: BwReport[] }
  | { kind: "lat"; reports: LatReport[] };

/** Runs this side of `o.test` over `ch` with the resources of `g`, printing through `printer`. */
export async function runSide(
  o: PerfOptions,
  ch: PerftestChannel,
  g: PerfGuest,
  printer: Printer,
  ctx: RunContext,
): Promise<SideReports> {
  const client = ch.client;
  await ch.versions();
  await ch.sysData();
  const active = g.activeMtu;
  const wanted = o.mtu === null ? active : Math.min(o.mtu, active);
  const mtu = mtuFromEnum(await ch.mtu(mtuToEnum(wanted)));
  printer.banner({
    test: o.test,
    atomicType: o.atomicType,
    client,
    txDepth: o.txDepth,
    rxDepth: o.rxDepth,
    cqMod: o.cqMod,
    mtu,
    gidIndex: o.gidIndex,
    inline: o.inline,
    outReads: g.outReads,
  });
  // What peers read is always there, whatever the size (no barrier tells a
  // bw server when the client moves to the next size).
  if (o.test.verb === "read") fillPattern(g.in, READ_PATTERN_SIZE);
  const mine = g.keyMessage();
  const remote = await ch.keys(mine);
  await g.connect(remote, mtu);
  await ch.keys(mine, "the barrier after connecting");
  printer.addresses(mine, remote, o.test);
  await ch.keys(mine, "the barrier before the test");
  // perftest's read_lat and atomic_lat servers measure nothing: no table.
  const idle = o.test.kind === "lat" && !client &&
    (o.test.verb === "read" || o.test.verb === "atomic");
  if (!idle) printer.header(o.test.kind);
  const reports = o.test.kind === "bw"
    ? { kind: "bw" as const, reports: await bwSide(o, ch, g, remote, mine, printer, ctx) }
    : { kind: "lat" as const, reports: await latSide(o, ch, g, remote, mine, printer, ctx) };
  printer.footer();
  return reports;
}

async function bwSide(
  o: PerfOptions,
  ch: PerftestChannel,
  g: PerfGuest,
  remote: KeyMessage,
  mine: KeyMessage,
  printer: Printer,
  ctx: RunContext,
): Promise<BwReport[]> {
  const reports: BwReport[] = [];
  const run = (size: number) => ({ ...o, verb: o.test.verb, size });
  if (o.test.verb === "send") {
    for (const size of runSizes(o)) {
      const posted = ch.client ? 0 : postReceives(g, size, Math.min(o.rxDepth, o.iters));
      await ch.keys(mine, `the barrier before ${size} B`);
      const r = ch.client
        ? await runBwClient(g, remote, run(size), ctx)
        : await runSendServer(g, { size, iters: o.iters, posted }, ctx);
      printer.bw(r);
      reports.push(r);
      if (o.all) await ch.keys(mine, `the barrier after ${size} B`);
    }
    await ch.keys(mine, "the closing barrier");
    await ch.finish();
    return reports;
  }
  if (ch.client) {
    for (const size of runSizes(o)) {
      const r = await runBwClient(g, remote, run(size), ctx);
      printer.bw(r);
      reports.push(r);
    }
    await ch.keys(mine, "the barrier after the test");
    const last = reports[reports.length - 1]!;
    await ch.results({
      size: last.bytes,
      iters: last.iterations,
      bwPeak: last.bwPeakMBps,
      bwAvg: last.bwAvgMBps,
      msgRate: last.msgRateMpps,
    });
  } else {
    await ch.keys(mine, "the barrier after the test");
    // The server's own fields mean nothing (perftest sends whatever its struct holds).
    const theirs = await ch.results({ size: 0, iters: 0, bwPeak: 0, bwAvg: 0, msgRate: 0 });
    const r = {
      bytes: theirs.size,
      iterations: theirs.iters,
      bwPeakMBps: theirs.bwPeak,
      bwAvgMBps: theirs.bwAvg,
      msgRateMpps: theirs.msgRate,
    };
    printer.bw(r);
    reports.push(r);
  }
  await ch.keys(mine, "the closing barrier");
  await ch.finish();
  return reports;
}

async function latSide(
  o: PerfOptions,
  ch: PerftestChannel,
  g: PerfGuest,
  remote: KeyMessage,
  mine: KeyMessage,
  printer: Printer,
  ctx: RunContext,
): Promise<LatReport[]> {
  const reports: LatReport[] = [];
  const run = (size: number) => ({
    ...o,
    verb: o.test.verb,
    size,
    client: ch.client,
    sqDepth: g.plan.sqDepth,
  });
  switch (o.test.verb) {
    case "write":
      for (const size of runSizes(o)) {
        await ch.keys(mine, `the barrier before ${size} B`);
        const r = await runWriteLat(g, remote, run(size), ctx);
        printer.lat(r);
        reports.push(r);
      }
      ch.close();
      return reports;
    case "send":
      for (const size of runSizes(o)) {
        const preposted = postReceives(g, size, Math.min(o.rxDepth, o.iters));
        await ch.keys(mine, `the barrier before ${size} B`);
        const r = await runSendLat(g, remote, { ...run(size), preposted }, ctx);
        printer.lat(r);
        reports.push(r);
      }
      break;
    default:
      // perftest's read_lat and atomic_lat: one more barrier (as every
      // latency test has, seen on the wire), then only the client posts.
      await ch.keys(mine, "the barrier before the test");
      if (ch.client) {
        for (const size of runSizes(o)) {
          const r = await runReadLat(g, remote, run(size), ctx);
          printer.lat(r);
          reports.push(r);
        }
      }
  }
  await ch.keys(mine, "the closing barrier");
  await ch.finish();
  return reports;
}
