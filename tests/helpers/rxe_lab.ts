/**
 * The rxe lab for interoperability tests: two small Linux VMs running the
 * real Linux soft-RoCE driver (rxe) with rdma-core's and perftest's tools,
 * on a bridge inside the private network namespace `rxelab`, and a vrdma
 * backend in that namespace bound to the bridge's address 10.99.0.1. It
 * drives the harness in shared/interop/ (beside the checkout, as in CI)
 * without changing it:
 *
 * - the VM image is built by `build_initramfs.sh` when missing, then a
 *   second cpio archive with `ib_atomic_bw`/`ib_atomic_lat` (the harness
 *   does not pack them) is appended: the kernel unpacks concatenated
 *   archives in order;
 * - VMs boot with `run_vm.sh`, commands run in them with `vm_exec.py`;
 * - tshark records every UDP 4791 packet on the bridge for the ICRC check;
 * - `cleanup.sh` stops the VMs and deletes the namespace, also when a test
 *   fails (the lab is `AsyncDisposable`).
 *
 * Everything needs root; {@linkcode rxeLabUnavailable} says why the lab
 * cannot run, for a skip message.
 *
 * @module
 */

import { runCommand } from "./netns.ts";

/** shared/interop beside the checkout (here and in CI). */
export const INTEROP_DIR = new URL("../../../shared/interop/", import.meta.url).pathname;
/** The namespace the harness creates. */
export const LAB_NS = "rxelab";
/** The backend's address on the lab bridge. */
export const HOST_IP = "10.99.0.1";
/** VM n's address. */
export function vmIp(n: number): string {
  return `10.99.0.${n + 2}`;
}

const EXIT_MARK = "vrdma-lab-exit=";
const REPO = new URL("../../", import.meta.url).pathname;
const HARNESS_INITRD = "/tmp/rxe-initrd.cpio.gz";
const EXTRA_BINARIES = ["/usr/bin/ib_atomic_bw", "/usr/bin/ib_atomic_lat"];
const NEEDED_COMMANDS = ["qemu-system-x86_64", "ip", "tshark", "cpio", "gzip", "ib_write_bw"];

async function has(command: string): Promise<boolean> {
  return (await runCommand("sh", ["-c", `command -v ${command}`])).code === 0;
}

/**
 * Why the lab cannot run here, or null when it can: not root, the harness
 * not beside the checkout, or a package its README lists not installed.
 */
export async function rxeLabUnavailable(): Promise<string | null> {
  if (Deno.uid() !== 0) return "the rxe lab needs root (network namespace, TAP devices)";
  try {
    await Deno.stat(`${INTEROP_DIR}run_vm.sh`);
  } catch {
    return `the interop harness is not at ${INTEROP_DIR}`;
  }
  for (const c of NEEDED_COMMANDS) {
    if (!(await has(c))) return `${c} is not installed (see ${INTEROP_DIR}README.md)`;
  }
  for (const b of EXTRA_BINARIES) {
    try {
      await Deno.stat(b);
    } catch {
      return `${b} is not installed (perftest)`;
    }
  }
  const kernels = [...Deno.readDirSync("/lib/modules")].filter((e) => e.name.startsWith("6.1."));
  if (kernels.length === 0) return "no /lib/modules/6.1.* kernel (linux-image-amd64)";
  if ((await runCommand("/usr/bin/python3", ["-c", "import scapy"])).code !== 0) {
    return "python3-scapy is not installed";
  }
  return null;
}

/** What a command in a VM or on the host printed and how it ended. */
export interface Outcome {
  /** Exit code (124 when the timeout killed it). */
  code: number;
  /** Standard output and standard error, in that order. */
  output: string;
}

/** A command started in the background inside a VM. */
export interface VmJob {
  /** The VM. */
  vm: number;
  /** Its pid inside the VM. */
  pid: number;
  /** The file in the VM its output goes to. */
  out: string;
}

/** Where the lab keeps its files on the host (per lab). */
interface LabFiles {
  dir: string;
  initrd: string;
  pcap: string;
  socket: string;
  backendLog: string;
}

function sh(script: string, timeoutSeconds = 120): Promise<Outcome> {
  return runCommand("timeout", ["-k", "5", `${timeoutSeconds}`, "bash", "-c", script]).then(
    (r) => ({ code: r.code, output: r.stdout + r.stderr }),
  );
}

async function mustSh(script: string, timeoutSeconds = 120): Promise<string> {
  const r = await sh(script, timeoutSeconds);
  if (r.code !== 0) throw new Error(`${script}: exit ${r.code}\n${r.output.slice(-2000)}`);
  return r.output;
}

function quote(text: string): string {
  return `'${text.replaceAll("'", `'\\''`)}'`;
}

/**
 * Two rxe VMs (0 at 10.99.0.2, 1 at 10.99.0.3), a capture of every UDP
 * 4791 packet on the bridge, and a vrdma backend at 10.99.0.1.
 */
export class RxeLab implements AsyncDisposable {
  /** The lab's files. */
  readonly files: LabFiles;
  #tshark: Deno.ChildProcess | undefined;
  #backend: Deno.ChildProcess | undefined;

  private constructor(files: LabFiles) {
    this.files = files;
  }

  /**
   * Builds the VM image if missing, boots both VMs, starts the capture.
   * Leftovers of an earlier lab (VMs, namespace) are cleaned up first.
   */
  static async start(log: (line: string) => void): Promise<RxeLab> {
    const dir = await Deno.makeTempDir({ prefix: "vrdma-rxelab-" });
    const lab = new RxeLab({
      dir,
      initrd: `${dir}/initrd.cpio.gz`,
      pcap: `${dir}/lab.pcap`,
      socket: `${dir}/vrdma.sock`,
      backendLog: `${dir}/backend.log`,
    });
    try {
      await sh(`${INTEROP_DIR}cleanup.sh`);
      await lab.#buildImage(log);
      await mustSh(`${INTEROP_DIR}netns_setup.sh tap 0 && ${INTEROP_DIR}netns_setup.sh tap 1`);
      const t0 = performance.now();
      const boots = [0, 1].map((n) =>
        mustSh(`INITRD=${lab.files.initrd} ${INTEROP_DIR}run_vm.sh -w ${n}`, 300)
      );
      await Promise.all(boots);
      for (const n of [0, 1]) {
        const log = await Deno.readTextFile(`/tmp/rxevm-${n}.log`);
        if (!log.includes("RXEVM: ready")) throw new Error(`VM ${n} did not come up:\n${log}`);
      }
      log(`VMs 0 and 1 up in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      await lab.#startCapture();
      return lab;
    } catch (e) {
      await lab[Symbol.asyncDispose]();
      throw e;
    }
  }

  async #buildImage(log: (line: string) => void): Promise<void> {
    try {
      await Deno.stat(HARNESS_INITRD);
    } catch {
      log("building the VM image (build_initramfs.sh)");
      await mustSh(`${INTEROP_DIR}build_initramfs.sh ${HARNESS_INITRD}`, 300);
    }
    const staging = `${this.files.dir}/extra`;
    await Deno.mkdir(`${staging}/usr/bin`, { recursive: true });
    for (const b of EXTRA_BINARIES) await Deno.copyFile(b, `${staging}${b}`);
    await mustSh(
      `cd ${staging} && find . | cpio -o -H newc --quiet | gzip > ../extra.cpio.gz && ` +
        `cat ${HARNESS_INITRD} ../extra.cpio.gz > ${this.files.initrd}`,
    );
  }

  async #startCapture(): Promise<void> {
    this.#tshark = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        LAB_NS,
        "tshark",
        "-q",
        "-i",
        "br0",
        "-f",
        "udp port 4791",
        "-F",
        "pcap",
        "-w",
        this.files.pcap,
      ],
      stdout: "null",
      stderr: "piped",
    }).spawn();
    // tshark says "Capturing on 'br0'" once the capture runs; give it a moment more.
    const reader = this.#tshark.stderr.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    const deadline = Date.now() + 30_000;
    while (!text.includes("Capturing on") && Date.now() < deadline) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
    }
    reader.releaseLock();
    if (!text.includes("Capturing on")) throw new Error(`tshark did not start: ${text}`);
    await new Promise((r) => setTimeout(r, 1000));
  }

  /** Stops the capture (flushing the file) and returns the pcap's path. */
  async stopCapture(): Promise<string> {
    const tshark = this.#tshark;
    this.#tshark = undefined;
    if (tshark !== undefined) {
      await new Promise((r) => setTimeout(r, 1000));
      tshark.kill("SIGINT");
      await tshark.stderr.cancel().catch(() => {});
      await tshark.status;
    }
    return this.files.pcap;
  }

  /**
   * Starts a vrdma backend in the namespace on 10.99.0.1 with
   * `--transport mode`, and waits until it serves guests. One at a time.
   */
  async startBackend(mode: "socket" | "raw"): Promise<void> {
    if (this.#backend !== undefined) await this.stopBackend();
    const command = [
      "ip netns exec",
      LAB_NS,
      Deno.execPath(),
      "run -A --unstable-net",
      `${REPO}backend/main.ts`,
      `--ip ${HOST_IP} --socket ${this.files.socket} --transport ${mode}`,
      `>> ${this.files.backendLog} 2>&1`,
    ].join(" ");
    // exec: the SIGTERM of stopBackend reaches `ip`, which is replaced by the backend.
    const child = new Deno.Command("bash", { args: ["-c", `exec ${command}`] }).spawn();
    this.#backend = child;
    await Deno.writeTextFile(this.files.backendLog, "", { append: true });
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      const text = await Deno.readTextFile(this.files.backendLog);
      if (text.includes(`RoCEv2 on ${HOST_IP}:4791`) && text.lastIndexOf("serving") >= 0) {
        try {
          await Deno.stat(this.files.socket);
          return;
        } catch { /* not yet */ }
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(
      `the backend did not start:\n${await Deno.readTextFile(this.files.backendLog)}`,
    );
  }

  /** Stops the backend (SIGTERM) and waits for it. */
  async stopBackend(): Promise<void> {
    const child = this.#backend;
    this.#backend = undefined;
    if (child === undefined) return;
    try {
      child.kill("SIGTERM");
    } catch { /* already gone */ }
    await child.status;
    await Deno.remove(this.files.socket).catch(() => {});
  }

  /** The backend's counters (`deno task stat -- --json`). */
  async stats(): Promise<Record<string, number>> {
    const r = await runCommand(Deno.execPath(), [
      "run",
      "-A",
      "--unstable-net",
      `${REPO}tools/stat.ts`,
      "--socket",
      this.files.socket,
      "--json",
    ]);
    if (r.code !== 0) throw new Error(`stat failed: ${r.stderr}`);
    return JSON.parse(r.stdout).device as Record<string, number>;
  }

  /** Runs `command` in VM `vm` and waits for it (at most `timeoutSeconds`). */
  vm(vm: number, command: string, timeoutSeconds = 120): Promise<Outcome> {
    return sh(
      `${INTEROP_DIR}vm_exec.py -t ${timeoutSeconds} ${vm} ${quote(command)}`,
      timeoutSeconds + 30,
    );
  }

  /** Starts `command` in VM `vm` in the background. */
  async vmStart(vm: number, command: string): Promise<VmJob> {
    // The VM keeps no exit status of a background job: the job prints it last.
    const job = `${command}; echo ${EXIT_MARK}$?`;
    const out = await mustSh(`${INTEROP_DIR}vm_exec.py -b ${vm} ${quote(job)}`);
    const m = /bgpid=(\d+) out=(\S+)/.exec(out);
    if (m === null) throw new Error(`vm_exec.py -b printed no job: ${out}`);
    return { vm, pid: Number(m[1]), out: m[2]! };
  }

  /** Waits for a background job in a VM to end (killing it after `timeoutSeconds`). */
  async vmWait(job: VmJob, timeoutSeconds = 120): Promise<Outcome> {
    const r = await this.vm(
      job.vm,
      `n=0; while kill -0 ${job.pid} 2>/dev/null && [ $n -lt ${timeoutSeconds * 5} ]; do ` +
        `sleep 0.2; n=$((n+1)); done; kill ${job.pid} 2>/dev/null; cat ${job.out}`,
      timeoutSeconds + 10,
    );
    const at = r.output.lastIndexOf(EXIT_MARK);
    if (at < 0) return { code: 124, output: r.output };
    const code = Number.parseInt(r.output.slice(at + EXIT_MARK.length), 10);
    return { code, output: r.output.slice(0, at) };
  }

  /** Runs a deno script of this repo in the namespace (a vrdma guest tool). */
  host(script: string, args: string[], timeoutSeconds = 120): Promise<Outcome> {
    return runCommand("timeout", [
      "-k",
      "5",
      `${timeoutSeconds}`,
      "ip",
      "netns",
      "exec",
      LAB_NS,
      Deno.execPath(),
      "run",
      "-A",
      "--unstable-net",
      `${REPO}${script}`,
      "--socket",
      this.files.socket,
      ...args,
    ]).then((r) => ({ code: r.code, output: r.stdout + r.stderr }));
  }

  /** Waits until something in the namespace listens on TCP `port`. */
  async waitListening(port: number, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const r = await runCommand("ip", [
        "netns",
        "exec",
        LAB_NS,
        "ss",
        "-ltnH",
        `sport = :${port}`,
      ]);
      if (r.stdout.trim() !== "") return;
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`nothing listens on TCP ${port} in ${LAB_NS} after ${timeoutMs} ms`);
  }

  /** Stops everything: backend, capture, VMs, namespace; removes the lab's files. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.stopBackend().catch(() => {});
    await this.stopCapture().catch(() => {});
    await sh(`${INTEROP_DIR}cleanup.sh`);
    if (Deno.env.get("VRDMA_KEEP_LAB") === undefined) {
      await Deno.remove(this.files.dir, { recursive: true }).catch(() => {});
    }
  }
}
