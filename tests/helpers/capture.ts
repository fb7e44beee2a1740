/// <reference lib="deno.unstable" />
/**
 * Live packet capture on the loopback for wire tests: {@linkcode captureLo}
 * runs `tshark -i lo` around a piece of test code and hands back the pcap;
 * {@linkcode tsharkFields} decodes it with tshark (InfiniBand on any UDP
 * port) and {@linkcode icrcCheck} has scapy check every ICRC
 * (shared/interop/icrc_check.py beside the checkout).
 *
 * ## Knowing the capture is running
 *
 * tshark takes about a second before packets are really captured (its
 * "Capture started" message comes about then, but is only a hint). So the
 * capture filter also takes "canary" datagrams the helper sends to itself
 * on 127.0.0.1 and a random port: they are sent every 20 ms until one is
 * in the file, and only then does the test code run. Afterwards one more
 * canary is sent and awaited, so every packet of the test code (sent
 * before it, on the same in-order loopback) is in the file before tshark
 * is stopped. The canaries are then cut out of the pcap, which ends up
 * holding only what `filter` matched.
 *
 * @module
 */

const PYTHON = "/usr/bin/python3";
/** shared/ sits beside the checkout, here and in CI. */
export const ICRC_CHECK =
  new URL("../../../shared/interop/icrc_check.py", import.meta.url).pathname;

/**
 * Upper-layer dissectors tshark tries on InfiniBand payload (`tshark -G
 * heuristic-decodes`, table infiniband.payload). Payload bytes can look
 * like one of them by chance, which then reports them as malformed: they
 * are turned off so "malformed" can only be about the InfiniBand headers.
 */
export const PAYLOAD_DISSECTORS: readonly string[] = [
  "smc",
  "smb_direct",
  "rpcordma",
  "nvme-rdma",
  "lnet",
  "iser",
  "infiniband.eoib",
  "infiniband_sdp",
  "fcoib",
];

async function succeeds(cmd: string, args: string[]): Promise<boolean> {
  try {
    const r = await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output();
    return r.success;
  } catch {
    return false; // not installed
  }
}

/** Why a live capture cannot run here (not root, no tshark), or null when it can. */
export async function captureUnavailable(): Promise<string | null> {
  if (!await succeeds("tshark", ["--version"])) return "tshark is not installed";
  if (Deno.uid() !== 0) return `not root (uid ${Deno.uid()}): capturing on lo needs root`;
  return null;
}

/** Why {@linkcode icrcCheck} cannot run here (no scapy, no icrc_check.py), or null when it can. */
export async function scapyUnavailable(): Promise<string | null> {
  if (!await succeeds(PYTHON, ["-c", "import scapy.contrib.roce"])) {
    return `${PYTHON} cannot import scapy.contrib.roce`;
  }
  if (!await Deno.stat(ICRC_CHECK).then(() => true, () => false)) {
    return `${ICRC_CHECK} is missing`;
  }
  return null;
}

/** Options of {@linkcode captureLo}. */
export interface CaptureOptions {
  /** How long tshark may take to start capturing. Default 20 s. */
  startTimeoutMs?: number;
}

const CANARY_IP = "127.0.0.1";
const ETHERTYPE_IPV4 = 0x0800;
const LINKTYPE_ETHERNET = 1;
const LINKTYPE_LINUX_SLL = 113;

/**
 * Captures the loopback traffic `filter` (a capture filter, e.g. `udp port
 * 4791`) matches while `body` runs, into a pcap file (libpcap format) in a
 * fresh temp directory, and returns its path. Remove it with
 * {@linkcode removeCapture}. See the module notes for how the start and
 * the end are made certain.
 *
 * @throws {Error} when tshark fails or does not start capturing in time;
 *   whatever `body` throws (the capture is then stopped and removed).
 *
 * @example
 * ```ts ignore
 * const pcap = await captureLo("udp port 4791", async () => {
 *   await sendSomePackets();
 * });
 * try {
 *   console.log(await tsharkFields(pcap, { udpPort: 4791, fields: ["infiniband.bth.opcode"] }));
 * } finally {
 *   await removeCapture(pcap);
 * }
 * ```
 */
export async function captureLo(
  filter: string,
  body: () => Promise<void>,
  options: CaptureOptions = {},
): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "vrdma-capture-" });
  const path = `${dir}/capture.pcap`;
  const canary = Deno.listenDatagram({ transport: "udp", hostname: CANARY_IP, port: 0 });
  const canaryPort = (canary.addr as Deno.NetAddr).port;
  const token = crypto.randomUUID();
  const child = new Deno.Command("tshark", {
    args: [
      "-i",
      "lo",
      "-f",
      `(${filter}) or (udp and dst host ${CANARY_IP} and dst port ${canaryPort})`,
      "-w",
      path,
      "-F",
      "pcap",
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let stderr = "";
  const stderrDone = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) stderr += chunk;
  })();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  // Drain what the canary socket receives, so its buffer never fills.
  const draining = (async () => {
    const buffer = new Uint8Array(256);
    try {
      for (;;) await canary.receive(buffer);
    } catch {
      // closed
    }
  })();
  let failure: { error: unknown } | undefined;
  try {
    const marker = (n: string) => new TextEncoder().encode(`vrdma-capture-canary:${token}:${n}`);
    const waitFor = async (name: string, ms: number): Promise<void> => {
      const deadline = performance.now() + ms;
      const datagram = marker(name);
      for (;;) {
        if (exited) {
          throw new Error(`tshark exited while waiting for the ${name} canary: ${stderr.trim()}`);
        }
        await canary.send(datagram, { transport: "udp", hostname: CANARY_IP, port: canaryPort });
        await new Promise((r) => setTimeout(r, 20));
        if (await fileHas(path, datagram)) return;
        if (performance.now() > deadline) {
          throw new Error(
            `the ${name} canary was not captured within ${ms} ms; tshark said: ${stderr.trim()}`,
          );
        }
      }
    };
    await waitFor("start", options.startTimeoutMs ?? 20_000);
    await body();
    await waitFor("end", 10_000);
  } catch (error) {
    failure = { error };
  }
  // tshark ends a capture cleanly (file complete, exit 0) on SIGINT.
  if (!exited) child.kill("SIGINT");
  const s = await status;
  await stderrDone;
  canary.close();
  await draining;
  if (failure === undefined && !s.success) {
    failure = { error: new Error(`tshark exited with ${s.code}: ${stderr.trim()}`) };
  }
  if (failure !== undefined) {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw failure.error;
  }
  const bytes = await Deno.readFile(path);
  await Deno.writeFile(path, withoutCanaries(bytes, canaryPort, token));
  return path;
}

/** Removes a pcap {@linkcode captureLo} returned, with its temp directory. */
export async function removeCapture(path: string): Promise<void> {
  const dir = path.slice(0, path.lastIndexOf("/"));
  await Deno.remove(dir, { recursive: true });
}

async function fileHas(path: string, needle: Uint8Array): Promise<boolean> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch {
    return false; // not created yet
  }
  return indexOf(bytes, needle) >= 0;
}

function indexOf(haystack: Uint8Array, needle: Uint8Array): number {
  const first = needle[0];
  outer: for (let i = haystack.indexOf(first!); i >= 0; i = haystack.indexOf(first!, i + 1)) {
    if (i + needle.length > haystack.length) return -1;
    for (let j = 1; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/** One record of a libpcap file. */
export interface PcapRecord {
  /** Offset of the 16-byte record header in the file. */
  offset: number;
  /** The captured bytes (a view into the file). */
  data: Uint8Array;
}

/**
 * Reads a libpcap file (little- or big-endian, microsecond or nanosecond):
 * its link type and records.
 *
 * @throws {SyntaxError} for a file that is not libpcap or is cut short.
 *
 * @example
 * ```ts
 * import { readPcap } from "./capture.ts";
 * const file = new Uint8Array(24 + 16 + 3);
 * const v = new DataView(file.buffer);
 * v.setUint32(0, 0xa1b2c3d4, true);
 * v.setUint32(20, 1, true); // Ethernet
 * v.setUint32(24 + 8, 3, true); // captured length
 * const { linkType, records } = readPcap(file);
 * if (linkType !== 1 || records.length !== 1 || records[0]!.data.length !== 3) throw new Error();
 * ```
 */
export function readPcap(file: Uint8Array): { linkType: number; records: PcapRecord[] } {
  if (file.length < 24) {
    throw new SyntaxError(`a pcap file has a 24-byte header, got ${file.length} bytes`);
  }
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const magic = view.getUint32(0, true);
  let little: boolean;
  if (magic === 0xa1b2c3d4 || magic === 0xa1b23c4d) little = true;
  else if (magic === 0xd4c3b2a1 || magic === 0x4d3cb2a1) little = false;
  else throw new SyntaxError(`not a libpcap file: magic 0x${magic.toString(16)}`);
  const linkType = view.getUint32(20, little);
  const records: PcapRecord[] = [];
  for (let at = 24; at < file.length;) {
    if (at + 16 > file.length) throw new SyntaxError(`pcap record header at ${at} is cut short`);
    const length = view.getUint32(at + 8, little);
    if (at + 16 + length > file.length) throw new SyntaxError(`pcap record at ${at} is cut short`);
    records.push({ offset: at, data: file.subarray(at + 16, at + 16 + length) });
    at += 16 + length;
  }
  return { linkType, records };
}

/** Where the IPv4 header starts in a frame of `linkType`, or -1 when the frame is not IPv4. */
function ipv4Offset(linkType: number, frame: Uint8Array): number {
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  if (linkType === LINKTYPE_ETHERNET && frame.length >= 14) {
    return view.getUint16(12) === ETHERTYPE_IPV4 ? 14 : -1;
  }
  if (linkType === LINKTYPE_LINUX_SLL && frame.length >= 16) {
    return view.getUint16(14) === ETHERTYPE_IPV4 ? 16 : -1;
  }
  return -1;
}

/** `file` without the canary datagrams of capture `token` (UDP to `port` carrying the token). */
function withoutCanaries(file: Uint8Array, port: number, token: string): Uint8Array {
  const { linkType, records } = readPcap(file);
  const needle = new TextEncoder().encode(`vrdma-capture-canary:${token}:`);
  const keep = records.filter(({ data }) => {
    const ip = ipv4Offset(linkType, data);
    if (ip < 0 || data.length < ip + 28 || data[ip + 9] !== 17) return true;
    const udp = ip + (data[ip]! & 0x0f) * 4;
    const dstPort = (data[udp + 2]! << 8) | data[udp + 3]!;
    return !(dstPort === port && indexOf(data.subarray(udp + 8), needle) === 0);
  });
  const out = new Uint8Array(24 + keep.reduce((n, r) => n + 16 + r.data.length, 0));
  out.set(file.subarray(0, 24));
  let at = 24;
  for (const r of keep) {
    out.set(file.subarray(r.offset, r.offset + 16 + r.data.length), at);
    at += 16 + r.data.length;
  }
  return out;
}

/**
 * Decodes `pcap` with tshark, UDP port `udpPort` as InfiniBand (RoCEv2;
 * tshark does that by itself only for 4791) with the payload heuristics
 * off, and returns one row per packet with the `fields` values in order
 * (tshark's text: decimal numbers, hex for some; `""` when absent).
 *
 * @throws {Error} when tshark fails.
 */
export async function tsharkFields(
  pcap: string,
  options: { udpPort: number; fields: readonly string[] },
): Promise<string[][]> {
  const args = ["-r", pcap, "-n", "-d", `udp.port==${options.udpPort},infiniband`];
  for (const p of PAYLOAD_DISSECTORS) args.push("--disable-protocol", p);
  args.push("-T", "fields", "-E", "separator=|", "-E", "occurrence=f");
  for (const f of options.fields) args.push("-e", f);
  const r = await new Deno.Command("tshark", { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder();
  if (!r.success) throw new Error(`tshark -r ${pcap} failed: ${text.decode(r.stderr).trim()}`);
  const out = text.decode(r.stdout).trimEnd();
  return out === "" ? [] : out.split("\n").map((line) => line.split("|"));
}

/** What {@linkcode icrcCheck} found. */
export interface IcrcCheckResult {
  /** icrc_check.py's exit code: 0 only when there were packets and every ICRC was right. */
  code: number;
  /** RoCE packets scapy found. */
  packets: number;
  /** Packets whose ICRC scapy computes differently. */
  icrcBad: number;
  /** The distinct BTH opcodes seen, ascending. */
  opcodes: number[];
}

/**
 * Runs scapy's ICRC check (shared/interop/icrc_check.py, unchanged) over
 * `pcap`. scapy only takes UDP 4791 as RoCE, so when `udpPort` differs
 * the port is bound to its BTH layer first and the script then runs as it
 * would from the command line.
 *
 * @throws {Error} when the script prints no JSON summary.
 */
export async function icrcCheck(pcap: string, udpPort = 4791): Promise<IcrcCheckResult> {
  const bind = [
    "import runpy, sys",
    "from scapy.all import UDP, bind_layers",
    "from scapy.contrib.roce import BTH",
    "bind_layers(UDP, BTH, dport=int(sys.argv[1]))",
    "sys.argv = sys.argv[2:]",
    "runpy.run_path(sys.argv[0], run_name='__main__')",
  ].join("\n");
  const r = await new Deno.Command(PYTHON, {
    args: ["-c", bind, `${udpPort}`, ICRC_CHECK, pcap],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  const stdout = text.decode(r.stdout).trim();
  let summary: { packets: number; icrc_bad: number; opcodes: number[] };
  try {
    summary = JSON.parse(stdout.split("\n").at(-1) ?? "");
  } catch {
    throw new Error(
      `icrc_check.py printed no JSON (exit ${r.code}): ${stdout} ${text.decode(r.stderr).trim()}`,
    );
  }
  return {
    code: r.code,
    packets: summary.packets,
    icrcBad: summary.icrc_bad,
    opcodes: summary.opcodes,
  };
}
