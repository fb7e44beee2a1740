/**
 * The backend's counters as users read them: device, port and per-QP
 * counters under the names Linux soft-RoCE (rxe) gives them where it has one,
 * gathered into one {@linkcode CountersReport}, and rendered in the
 * Prometheus text format for an opt-in HTTP endpoint.
 *
 * Three levels, as `rdma statistic` shows them:
 * - device: every counter of the shared block (`data_plane/stats.ts`), under
 *   its own name; the resource counts among them are gauges.
 * - port 1 (the RoCEv2 port): a mapping of those counters onto rxe's hw
 *   counter names, plus aggregates (every NAK sent, every NAK received). rxe
 *   counts per port too, so these are what `rdma statistic show link rxe0/1`
 *   would show. rxe counters with no vrdma equivalent are left out rather than
 *   shown as a made-up 0: `ack_deferred` (a tasklet rescheduling),
 *   `send_err` (vrdma's outbox waits instead of dropping), `link_downed` (a
 *   UDP socket has no link), `rdma_sends`/`rdma_recvs` (not counted apart).
 * - QP: the host adapter's per-QP wire counters (`adapter/qp_counters.ts`)
 *   under the same names as the port's. Only QPs that used the wire have them.
 *
 * Port counters come from the device block, not from summing QPs, so they
 * keep counting what destroyed QPs did.
 *
 * @module
 */

import { COUNTER_NAMES, type CounterName } from "./data_plane/stats.ts";
import { QP_COUNTER_NAMES, type QpCounterName } from "./adapter/qp_counters.ts";
import type { QpCounterRow } from "./data_plane/messages.ts";

/** How a device counter is presented. */
export interface DeviceCounterInfo {
  /** What it counts. */
  readonly help: string;
  /** A live count that goes down too (resources, queues), not an ever-growing counter. */
  readonly gauge: boolean;
}

const gauge = (help: string): DeviceCounterInfo => ({ help, gauge: true });
const counter = (help: string): DeviceCounterInfo => ({ help, gauge: false });

/** Every device counter's description; typed by name, so a new counter must be described. */
export const DEVICE_COUNTERS: Readonly<Record<CounterName, DeviceCounterInfo>> = {
  guests: gauge("Guests connected"),
  pds: gauge("Protection domains allocated"),
  mrs: gauge("Memory regions registered"),
  cqs: gauge("Completion queues"),
  qps: gauge("Queue pairs"),
  srqs: gauge("Shared receive queues"),
  ahs: gauge("Address handles"),
  queues: gauge("Virtqueues set up"),
  kicks: counter("Guest kicks (eventfd notifications) received"),
  calls: counter("Interrupts (call eventfd signals) sent to guests"),
  controlCommands: counter("Control commands handled"),
  controlErrors: counter("Control commands that failed"),
  brokenQueues: counter("Virtqueues found broken (device needs reset)"),
  events: counter("Asynchronous events delivered to guests"),
  eventsDropped: counter("Asynchronous events dropped (event queue full)"),
  sendWqes: counter("Send WQEs taken from send queues"),
  recvWqes: counter("Receive WQEs taken from receive queues"),
  completions: counter("Completions written"),
  cqOverruns: counter("Completions that found their CQ full"),
  localOps: counter("Operations between QPs of this host (memory copies)"),
  localBytes: counter("Bytes moved between QPs of this host"),
  rnrNaks: counter("Same-host SENDs that found no receive WQE (RNR)"),
  rnrRetryExceeded: counter("WRs completed with RNR_RETRY_EXC_ERR"),
  flushedWrs: counter("WRs completed with WR_FLUSH_ERR"),
  accessErrors: counter("Remote accesses refused (bad rkey, bounds or rights)"),
  udDropped: counter("UD datagrams dropped (no QP, Q_Key mismatch, no receive WQE)"),
  udpPacketsSent: counter("RoCEv2 packets sent"),
  udpPacketsReceived: counter("RoCEv2 packets received"),
  udpBytesSent: counter("Bytes of RoCEv2 packets sent (UDP payload: BTH to ICRC)"),
  udpBytesReceived: counter("Bytes of RoCEv2 packets received (UDP payload: BTH to ICRC)"),
  retransmits: counter("Times a requester went back to resend (timeout or sequence NAK)"),
  retransmittedPackets: counter("Request packets sent again"),
  timeouts: counter("Requester retransmission timer expiries"),
  retryExceeded: counter("WRs completed with RETRY_EXC_ERR"),
  rnrNaksReceived: counter("RNR NAKs received"),
  seqNaksReceived: counter("PSN sequence error NAKs received"),
  fatalNaksReceived: counter("Other NAKs received (access, invalid request, operational)"),
  duplicateResponses: counter("Responses received for PSNs already acknowledged"),
  staleResponses: counter("Responses for PSNs never sent or long acknowledged"),
  badResponses: counter("Responses that made no sense (unknown AETH code)"),
  acksSent: counter("ACKs sent"),
  seqNaksSent: counter("PSN sequence error NAKs sent"),
  rnrNaksSent: counter("RNR NAKs sent"),
  accessNaksSent: counter("Remote access error NAKs sent (or UC messages dropped for one)"),
  fatalNaksSent: counter("Invalid request / operational error NAKs sent (or UC drops)"),
  outOfSequence: counter("Requests received ahead of the expected PSN"),
  duplicateRequests: counter("Requests received behind the expected PSN (duplicates)"),
  duplicatesReplayed: counter("Duplicate READ/atomic requests answered from saved results"),
  duplicatesDropped: counter("Duplicate requests that could not be answered again"),
  ucDropped: counter("UC messages dropped (no receive WQE or lost packets)"),
  controlDropped: counter("ACKs/NAKs not sent because the outbox was full"),
  icrcErrors: counter("Packets received with a bad ICRC"),
  badPackets: counter("Packets received malformed or not allowed (P_Key, transport, source)"),
  unknownQp: counter("Packets received for a QP that does not exist"),
  droppedNotReady: counter("Requests received by a QP not ready to receive"),
  adapterErrors: counter("Internal errors of the host adapter"),
};

/** How a port counter is made from device counters. */
export interface PortCounterSpec {
  /** The device counters it adds up. */
  readonly from: readonly CounterName[];
  /** Whether Linux soft-RoCE has a hw counter of this name and meaning. */
  readonly rxe: boolean;
  /** What it counts. */
  readonly help: string;
}

const PORT_SPEC = {
  sent_pkts: { from: ["udpPacketsSent"], rxe: true, help: "RoCEv2 packets sent" },
  rcvd_pkts: { from: ["udpPacketsReceived"], rxe: true, help: "RoCEv2 packets received" },
  sent_bytes: {
    from: ["udpBytesSent"],
    rxe: false,
    help: "Bytes of RoCEv2 packets sent (UDP payload: BTH to ICRC)",
  },
  rcvd_bytes: {
    from: ["udpBytesReceived"],
    rxe: false,
    help: "Bytes of RoCEv2 packets received (UDP payload: BTH to ICRC)",
  },
  duplicate_request: {
    from: ["duplicateRequests"],
    rxe: true,
    help: "Duplicate requests received (PSN behind the expected one)",
  },
  out_of_seq_request: {
    from: ["outOfSequence"],
    rxe: true,
    help: "Requests received out of sequence (PSN ahead of the expected one)",
  },
  rcvd_rnr_err: { from: ["rnrNaksReceived"], rxe: true, help: "RNR NAKs received" },
  send_rnr_err: { from: ["rnrNaksSent"], rxe: true, help: "RNR NAKs sent" },
  rcvd_seq_err: { from: ["seqNaksReceived"], rxe: true, help: "PSN sequence error NAKs received" },
  send_seq_err: { from: ["seqNaksSent"], rxe: false, help: "PSN sequence error NAKs sent" },
  rcvd_fatal_nak: {
    from: ["fatalNaksReceived"],
    rxe: false,
    help: "Fatal NAKs received (remote access, invalid request, operational error)",
  },
  send_fatal_nak: {
    from: ["accessNaksSent", "fatalNaksSent"],
    rxe: false,
    help: "Fatal NAKs sent (remote access, invalid request, operational error)",
  },
  send_access_nak: {
    from: ["accessNaksSent"],
    rxe: false,
    help: "Remote access error NAKs sent (part of send_fatal_nak)",
  },
  rcvd_naks: {
    from: ["rnrNaksReceived", "seqNaksReceived", "fatalNaksReceived"],
    rxe: false,
    help: "NAKs received, every kind",
  },
  sent_naks: {
    from: ["rnrNaksSent", "seqNaksSent", "accessNaksSent", "fatalNaksSent"],
    rxe: false,
    help: "NAKs sent, every kind",
  },
  sent_acks: { from: ["acksSent"], rxe: false, help: "ACKs sent" },
  duplicate_response: {
    from: ["duplicateResponses"],
    rxe: false,
    help: "Responses received for PSNs already acknowledged",
  },
  completer_retry_err: {
    from: ["retransmits"],
    rxe: true,
    help: "Times a requester went back to resend (timeout or sequence NAK)",
  },
  retransmitted_pkts: {
    from: ["retransmittedPackets"],
    rxe: false,
    help: "Request packets sent again",
  },
  // No rxe counter; the name is mlx5's for the same event.
  local_ack_timeout_err: {
    from: ["timeouts"],
    rxe: false,
    help: "Retransmission timer expiries (no ACK in time)",
  },
  retry_exceeded_err: {
    from: ["retryExceeded"],
    rxe: true,
    help: "WRs failed after the last transport retry",
  },
  // The device counter does not tell same-host QPs apart: theirs are in it too.
  retry_rnr_exceeded_err: {
    from: ["rnrRetryExceeded"],
    rxe: true,
    help: "WRs failed after the last RNR retry (same-host QPs included)",
  },
  rcvd_icrc_err: { from: ["icrcErrors"], rxe: false, help: "Packets received with a bad ICRC" },
  rcvd_bad_pkts: {
    from: ["badPackets"],
    rxe: false,
    help: "Packets received malformed or not allowed (P_Key, transport, source)",
  },
  rcvd_unknown_qp: {
    from: ["unknownQp"],
    rxe: false,
    help: "Packets received for a QP that does not exist",
  },
  cq_overrun: {
    from: ["cqOverruns"],
    rxe: false,
    help: "Completions that found their CQ full (device-wide)",
  },
} as const satisfies Record<string, PortCounterSpec>;

/** A port counter name (rxe's where it has one). */
export type PortCounterName = keyof typeof PORT_SPEC;

/** How each port counter is made, in report order. */
export const PORT_COUNTERS: Readonly<Record<PortCounterName, PortCounterSpec>> = PORT_SPEC;

/** The port counter names, in report order. */
export const PORT_COUNTER_NAMES: readonly PortCounterName[] = Object.keys(
  PORT_SPEC,
) as PortCounterName[];

/** The only port of a vrdma device. */
export const PORT_NUM = 1;

/** How a per-QP counter is presented. */
export interface QpCounterInfo {
  /** Its name in reports, the port counter's of the same meaning. */
  readonly name: string;
  /** Whether Linux soft-RoCE has a hw counter of this name and meaning. */
  readonly rxe: boolean;
  /** What it counts, for this QP. */
  readonly help: string;
}

const QP_SPEC = {
  sentPkts: { name: "sent_pkts", rxe: true, help: "Packets sent" },
  rcvdPkts: { name: "rcvd_pkts", rxe: true, help: "Packets received" },
  sentBytes: { name: "sent_bytes", rxe: false, help: "Bytes of packets sent" },
  rcvdBytes: { name: "rcvd_bytes", rxe: false, help: "Bytes of packets received" },
  completerRetryErr: {
    name: "completer_retry_err",
    rxe: true,
    help: "Times the requester went back to resend",
  },
  retransmittedPkts: {
    name: "retransmitted_pkts",
    rxe: false,
    help: "Request packets sent again",
  },
  timeouts: { name: "local_ack_timeout_err", rxe: false, help: "Retransmission timer expiries" },
  retryExceededErr: {
    name: "retry_exceeded_err",
    rxe: true,
    help: "WRs failed after the last transport retry",
  },
  retryRnrExceededErr: {
    name: "retry_rnr_exceeded_err",
    rxe: true,
    help: "WRs failed after the last RNR retry",
  },
  rcvdRnrErr: { name: "rcvd_rnr_err", rxe: true, help: "RNR NAKs received" },
  sendRnrErr: { name: "send_rnr_err", rxe: true, help: "RNR NAKs sent" },
  rcvdSeqErr: { name: "rcvd_seq_err", rxe: true, help: "PSN sequence error NAKs received" },
  sendSeqErr: { name: "send_seq_err", rxe: false, help: "PSN sequence error NAKs sent" },
  rcvdFatalNak: { name: "rcvd_fatal_nak", rxe: false, help: "Fatal NAKs received" },
  sendFatalNak: { name: "send_fatal_nak", rxe: false, help: "Fatal NAKs sent" },
  duplicateRequest: { name: "duplicate_request", rxe: true, help: "Duplicate requests received" },
  outOfSeqRequest: {
    name: "out_of_seq_request",
    rxe: true,
    help: "Requests received out of sequence",
  },
} as const satisfies Record<QpCounterName, QpCounterInfo>;

/** A per-QP counter's name in reports. */
export type QpStatName = typeof QP_SPEC[QpCounterName]["name"];

/** How each per-QP counter is presented, by its name in `adapter/qp_counters.ts`. */
export const QP_COUNTERS: Readonly<Record<QpCounterName, QpCounterInfo>> = QP_SPEC;

/** The per-QP counter names in reports, in report order. */
export const QP_STAT_NAMES: readonly QpStatName[] = QP_COUNTER_NAMES.map((n) => QP_SPEC[n].name);

/** One port's counters. */
export interface PortReport {
  /** Port number (always {@linkcode PORT_NUM}). */
  port: number;
  /** The counters. */
  counters: Record<PortCounterName, number>;
}

/** One QP's counters, under their report names. */
export interface QpReport extends Omit<QpCounterRow, "counters"> {
  /** The counters. */
  counters: Record<QpStatName, number>;
}

/** Everything the counters say about one backend at one moment. */
export interface CountersReport {
  /** When it was read, in ms since the epoch. */
  time: number;
  /** Which backend. */
  host: { ip: string; gid: string; udpPort: number };
  /** Every device counter (`BackendStats`). */
  device: Record<CounterName, number>;
  /** Port counters (one port). */
  ports: PortReport[];
  /** Per-QP counters of the QPs that used the wire, by QP number. */
  qps: QpReport[];
}

/** What a report is read from: a `Backend` is one. */
export interface CounterSource {
  /** The backend's IPv4 address. */
  readonly ip: string;
  /** Its port's GID. */
  readonly gid: string;
  /** Its RoCEv2 UDP port. */
  readonly port: number;
  /** The device counters, now. */
  stats(): Record<CounterName, number>;
  /** The per-QP counters (from the data-plane Worker). */
  qpCounters(): Promise<QpCounterRow[]>;
}

/**
 * Port counters from device counters.
 *
 * @example
 * ```ts
 * import { portCounters } from "./metrics.ts";
 * import { Counters } from "./data_plane/stats.ts";
 * const c = new Counters();
 * c.add("udpPacketsSent", 3);
 * c.add("seqNaksSent");
 * c.add("rnrNaksSent", 2);
 * const port = portCounters(c.snapshot());
 * if (port.sent_pkts !== 3 || port.sent_naks !== 3) throw new Error("wrong mapping");
 * ```
 */
export function portCounters(device: Record<CounterName, number>): Record<PortCounterName, number> {
  const out = {} as Record<PortCounterName, number>;
  for (const name of PORT_COUNTER_NAMES) {
    let sum = 0;
    for (const from of PORT_SPEC[name].from) sum += device[from];
    out[name] = sum;
  }
  return out;
}

/** A Worker's QP row under report names. */
export function qpReport(row: QpCounterRow): QpReport {
  const counters = {} as Record<QpStatName, number>;
  for (const name of QP_COUNTER_NAMES) counters[QP_SPEC[name].name] = row.counters[name];
  return { ...row, counters };
}

/** Reads a report: per-QP counters first, then the device's (so those are never behind the QPs'). */
export async function collectReport(source: CounterSource): Promise<CountersReport> {
  const rows = await source.qpCounters();
  const device = source.stats();
  return {
    time: Date.now(),
    host: { ip: source.ip, gid: source.gid, udpPort: source.port },
    device,
    ports: [{ port: PORT_NUM, counters: portCounters(device) }],
    qps: rows.map(qpReport).sort((a, b) => a.qpNum - b.qpNum),
  };
}

/** `udpPacketsSent` → `udp_packets_sent`. */
export function snakeCase(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/** A label value in the text format: backslash, quote and newline escaped. */
function labelValue(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

/** A HELP text in the text format: backslash and newline escaped. */
function helpText(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

/** The content type of {@linkcode renderPrometheus}'s output. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/**
 * A report in the Prometheus text exposition format (0.0.4): one family
 * per counter, `# HELP` and `# TYPE` first, then its samples.
 *
 * - `vrdma_info{ip,gid,udp_port} 1`
 * - `vrdma_device_<counter>` (gauges) and `vrdma_device_<counter>_total`
 *   for every device counter, snake-cased (`udp_packets_sent`)
 * - `vrdma_port_<name>_total{port="1"}` for every port counter
 * - `vrdma_qp_<name>_total{qpn,guest,type}` for every QP that used the wire
 *
 * @example
 * ```ts
 * import { portCounters, renderPrometheus } from "./metrics.ts";
 * import { Counters } from "./data_plane/stats.ts";
 * const c = new Counters();
 * c.add("udpPacketsSent", 5);
 * const device = c.snapshot();
 * const text = renderPrometheus({
 *   time: 0,
 *   host: { ip: "127.0.0.1", gid: "::ffff:127.0.0.1", udpPort: 4791 },
 *   device,
 *   ports: [{ port: 1, counters: portCounters(device) }],
 *   qps: [],
 * });
 * if (!text.includes('vrdma_port_sent_pkts_total{port="1"} 5\n')) throw new Error(text);
 * ```
 */
export function renderPrometheus(report: CountersReport): string {
  const lines: string[] = [];
  const family = (name: string, type: "counter" | "gauge", help: string) => {
    lines.push(`# HELP ${name} ${helpText(help)}`, `# TYPE ${name} ${type}`);
  };
  const labels = (pairs: Record<string, string | number>) =>
    `{${Object.entries(pairs).map(([k, v]) => `${k}="${labelValue(String(v))}"`).join(",")}}`;

  family("vrdma_info", "gauge", "The backend: its address, GID and RoCEv2 UDP port");
  const h = report.host;
  lines.push(`vrdma_info${labels({ ip: h.ip, gid: h.gid, udp_port: h.udpPort })} 1`);

  for (const name of COUNTER_NAMES) {
    const info = DEVICE_COUNTERS[name];
    const metric = `vrdma_device_${snakeCase(name)}${info.gauge ? "" : "_total"}`;
    family(metric, info.gauge ? "gauge" : "counter", info.help);
    lines.push(`${metric} ${report.device[name]}`);
  }

  for (const name of PORT_COUNTER_NAMES) {
    const spec = PORT_SPEC[name];
    const metric = `vrdma_port_${name}_total`;
    family(metric, "counter", spec.rxe ? `${spec.help} (rxe: ${name})` : spec.help);
    for (const p of report.ports) {
      lines.push(`${metric}${labels({ port: p.port })} ${p.counters[name]}`);
    }
  }

  if (report.qps.length > 0) {
    for (const key of QP_COUNTER_NAMES) {
      const info = QP_SPEC[key];
      const metric = `vrdma_qp_${info.name}_total`;
      family(metric, "counter", `${info.help}, per QP${info.rxe ? ` (rxe: ${info.name})` : ""}`);
      for (const qp of report.qps) {
        const l = labels({ qpn: qp.qpNum, guest: qp.guest, type: qp.qpType });
        lines.push(`${metric}${l} ${qp.counters[info.name]}`);
      }
    }
  }
  return lines.join("\n") + "\n";
}

/** Where {@linkcode MetricsServer} listens. */
export interface MetricsServerOptions {
  /** Address to bind (the backend's IP). */
  hostname: string;
  /** TCP port; 0 picks a free one. */
  port: number;
}

/**
 * The opt-in HTTP endpoint: `GET /metrics` answers the counters in the
 * Prometheus text format; anything else is 404 (405 for other methods).
 */
export class MetricsServer {
  /** The port it listens on (the one picked when asked for 0). */
  readonly port: number;
  /** The scrape URL: `http://<hostname>:<port>/metrics`. */
  readonly url: string;
  readonly #server: Deno.HttpServer<Deno.NetAddr>;

  private constructor(server: Deno.HttpServer<Deno.NetAddr>, hostname: string) {
    this.#server = server;
    this.port = server.addr.port;
    this.url = `http://${hostname}:${this.port}/metrics`;
  }

  /** Starts listening; throws (`Deno.errors.AddrInUse`, ...) when it cannot bind. */
  static start(
    options: MetricsServerOptions,
    report: () => Promise<CountersReport>,
  ): MetricsServer {
    const server = Deno.serve({
      hostname: options.hostname,
      port: options.port,
      onListen: () => {}, // the backend logs the URL itself
    }, async (req) => {
      const path = new URL(req.url).pathname;
      if (path !== "/metrics") return new Response("not found: try /metrics\n", { status: 404 });
      if (req.method !== "GET" && req.method !== "HEAD") {
        return new Response(`method ${req.method} not allowed\n`, {
          status: 405,
          headers: { allow: "GET, HEAD" },
        });
      }
      try {
        const body = renderPrometheus(await report());
        return new Response(req.method === "HEAD" ? null : body, {
          headers: { "content-type": PROMETHEUS_CONTENT_TYPE },
        });
      } catch (e) {
        return new Response(`counters unavailable: ${(e as Error).message}\n`, { status: 503 });
      }
    });
    return new MetricsServer(server, options.hostname);
  }

  /** Stops listening and waits for open requests. */
  async close(): Promise<void> {
    await this.#server.shutdown();
  }
}
