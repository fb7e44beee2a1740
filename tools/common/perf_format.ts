/**
 * What the perf tool prints, in perftest's layout (`ctx_print_test_info`,
 * `ctx_print_pingpong_data`, `RESULT_FMT`/`REPORT_FMT` and their latency
 * forms in perftest_parameters.h), down to the tabs; or one JSON object per
 * measured size.
 *
 * @module
 */

import type { KeyMessage } from "./perf_wire.ts";
import type { AtomicType, TestSpec } from "./perf_options.ts";
import type { BwReport, LatReport } from "./perf_stats.ts";

/** perftest's separator line. */
export const RESULT_LINE =
  "---------------------------------------------------------------------------------------";
/** The bandwidth table's header. */
export const BW_HEADER =
  " #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]";
/** The latency table's header. */
export const LAT_HEADER: string =
  " #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    " +
  "t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] ";

/** `%-Ns`: left-justified in at least `width` characters. */
function left(text: string | number, width: number): string {
  return String(text).padEnd(width);
}

/**
 * C's `%#0Nx`: zero is all zeros, anything else `0x` and hex digits
 * zero-padded so the whole is at least `width` wide.
 */
export function altHex(value: number | bigint, width: number): string {
  if (value === 0 || value === 0n) return "0".padStart(width, "0");
  return `0x${value.toString(16).padStart(width - 2, "0")}`;
}

/**
 * A bandwidth line (`REPORT_FMT`).
 *
 * @example
 * ```ts
 * import { bwLine } from "./perf_format.ts";
 * const line = bwLine({ bytes: 65536, iterations: 5000, bwPeakMBps: 1234.5, bwAvgMBps: 1200, msgRateMpps: 0.0192 });
 * if (line !== " 65536      5000             1234.50            1200.00\t\t   0.019200") throw new Error(line);
 * ```
 */
export function bwLine(r: BwReport): string {
  return ` ${left(r.bytes, 7)}    ${left(r.iterations, 10)}       ${
    left(r.bwPeakMBps.toFixed(2), 7)
  }` +
    `            ${left(r.bwAvgMBps.toFixed(2), 7)}\t\t   ${left(r.msgRateMpps.toFixed(6), 7)}`;
}

/** A latency line (`REPORT_FMT_LAT`). */
export function latLine(r: LatReport): string {
  const f = (x: number) => left(x.toFixed(2), 7);
  return ` ${left(r.bytes, 7)} ${r.iterations}          ${f(r.minUs)}        ${f(r.maxUs)}      ` +
    `${f(r.medianUs)}  \t       ${f(r.avgUs)}     \t${f(r.stdevUs)}\t\t${f(r.p99Us)} \t\t${
      f(r.p999Us)
    }`;
}

/** The title of a test's banner ("RDMA_Write BW Test", "Atomic FETCH_and_ADD Latency Test"). */
export function testTitle(test: TestSpec, atomicType: AtomicType): string {
  const verb =
    { write: "RDMA_Write", read: "RDMA_Read", send: "Send", atomic: "Atomic" }[test.verb];
  const atomic = test.verb === "atomic"
    ? (atomicType === "FETCH_AND_ADD" ? " FETCH_and_ADD" : " CMP_and_SWAP")
    : "";
  return `${verb}${atomic} ${test.kind === "bw" ? "BW" : "Latency"} Test`;
}

/** What the banner shows. */
export interface BannerInfo {
  /** The test. */
  test: TestSpec;
  /** The atomic operation. */
  atomicType: AtomicType;
  /** This side is the client. */
  client: boolean;
  /** WRs in flight. */
  txDepth: number;
  /** Receives posted ahead. */
  rxDepth: number;
  /** Signal every Nth WR. */
  cqMod: number;
  /** The path MTU in bytes. */
  mtu: number;
  /** The local GID index. */
  gidIndex: number;
  /** Inline data. */
  inline: number;
  /** Outstanding reads. */
  outReads: number;
}

/** The test information block (`ctx_print_test_info`), lines without newlines. */
export function bannerLines(b: BannerInfo): string[] {
  const lines = [
    RESULT_LINE,
    `                    ${testTitle(b.test, b.atomicType)}`,
    " Dual-port       : OFF\t\tDevice         : vrdma0",
    " Number of qps   : 1\t\tTransport type : IB",
    " Connection type : RC\t\tUsing SRQ      : OFF",
  ];
  if (b.client) lines.push(` TX depth        : ${b.txDepth}`);
  if (b.test.verb === "send" && !b.client) lines.push(` RX depth        : ${b.rxDepth}`);
  if (b.test.kind === "bw") lines.push(` CQ Moderation   : ${b.cqMod}`);
  lines.push(` Mtu             : ${b.mtu}[B]`, " Link type       : Ethernet");
  lines.push(` GID index       : ${b.gidIndex}`);
  if (b.test.verb === "read" || b.test.verb === "atomic") {
    lines.push(` Outstand reads  : ${b.outReads}`);
  } else {
    lines.push(` Max inline data : ${b.inline}[B]`);
  }
  lines.push(" rdma_cm QPs\t : OFF", " Data ex. method : Ethernet", RESULT_LINE);
  return lines;
}

/**
 * A QP's address lines (`ctx_print_pingpong_data`): LID, QPN, PSN; the
 * outstanding reads for READ tests; rkey and address for READ and WRITE
 * tests; then the GID bytes in decimal.
 */
export function addressLines(side: "local" | "remote", k: KeyMessage, test: TestSpec): string[] {
  let line = ` ${side} address: LID ${altHex(k.lid, 4)} QPN ${altHex(k.qpn, 6)} PSN ${
    altHex(k.psn, 6)
  }`;
  if (test.verb === "read") line += ` OUT ${altHex(k.outReads, 4)}`;
  if (test.verb === "read" || test.verb === "write") {
    line += ` RKey ${altHex(k.rkey, 8)} VAddr ${altHex(k.vaddr, 16)}`;
  }
  const gid = Array.from(k.gid, (b) => String(b).padStart(2, "0")).join(":");
  return [line, ` GID: ${gid}`];
}

/** Where one side's output goes. */
export interface Printer {
  /** The test information block. */
  banner(info: BannerInfo): void;
  /** Both QPs' addresses. */
  addresses(local: KeyMessage, remote: KeyMessage, test: TestSpec): void;
  /** The table header (bandwidth or latency). */
  header(kind: "bw" | "lat"): void;
  /** One bandwidth line. */
  bw(r: BwReport): void;
  /** One latency line. */
  lat(r: LatReport): void;
  /** The closing separator. */
  footer(): void;
}

/** Prints perftest's table through `write` (one call per line). */
export class TablePrinter implements Printer {
  readonly #write: (line: string) => void;

  /** Prints through `write`, one call per line without its newline. */
  constructor(write: (line: string) => void) {
    this.#write = write;
  }

  banner(info: BannerInfo): void {
    for (const l of bannerLines(info)) this.#write(l);
  }

  addresses(local: KeyMessage, remote: KeyMessage, test: TestSpec): void {
    for (const l of addressLines("local", local, test)) this.#write(l);
    for (const l of addressLines("remote", remote, test)) this.#write(l);
  }

  header(kind: "bw" | "lat"): void {
    this.#write(RESULT_LINE);
    this.#write(kind === "bw" ? BW_HEADER : LAT_HEADER);
  }

  bw(r: BwReport): void {
    this.#write(bwLine(r));
  }

  lat(r: LatReport): void {
    this.#write(latLine(r));
  }

  footer(): void {
    this.#write(RESULT_LINE);
  }
}

/** Figures rounded for JSON: bandwidth to 2 decimals, rates to 6, latencies to 3. */
function rounded(r: BwReport | LatReport): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(r)) {
    const digits = k === "msgRateMpps" ? 6 : k.endsWith("MBps") ? 2 : k.endsWith("Us") ? 3 : 0;
    out[k] = Number(v.toFixed(digits));
  }
  return out;
}

/** Prints one JSON object per measured size through `write`. */
export class JsonPrinter implements Printer {
  readonly #write: (line: string) => void;
  readonly #test: string;
  #mtu = 0;

  /** Prints through `write`; every object names `test`. */
  constructor(write: (line: string) => void, test: string) {
    this.#write = write;
    this.#test = test;
  }

  banner(info: BannerInfo): void {
    this.#mtu = info.mtu;
  }

  addresses(): void {}

  header(): void {}

  bw(r: BwReport): void {
    this.#write(JSON.stringify({ test: this.#test, ...rounded(r), mtu: this.#mtu }));
  }

  lat(r: LatReport): void {
    this.#write(JSON.stringify({ test: this.#test, ...rounded(r), mtu: this.#mtu }));
  }

  footer(): void {}
}

/** Prints nothing (the server side of `--local`). */
export class SilentPrinter implements Printer {
  banner(): void {}
  addresses(): void {}
  header(): void {}
  bw(): void {}
  lat(): void {}
  footer(): void {}
}
