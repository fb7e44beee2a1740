/**
 * Private network namespaces for system tests that need the kernel's help:
 * a namespace of their own (so they can use UDP 4791 and nftables rules
 * without touching the machine's), a loopback that is up, and an nftables
 * table that drops a share of some UDP traffic at random (`numgen random`;
 * this kernel has no netem) with counters to read back.
 *
 * Everything here needs root; {@linkcode netnsUnavailable} says why a test
 * cannot run, for a skip message.
 *
 * @module
 */

let counter = 0;

/** What a command printed and how it ended. */
export interface CommandResult {
  /** Exit code. */
  code: number;
  /** Standard output as text. */
  stdout: string;
  /** Standard error as text. */
  stderr: string;
}

/** Runs `cmd` with `args` (and `stdin` text, if given) to the end; never throws for a nonzero exit. */
export async function runCommand(
  cmd: string,
  args: string[],
  stdin?: string,
): Promise<CommandResult> {
  const child = new Deno.Command(cmd, {
    args,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(stdin));
    await writer.close();
  }
  const out = await child.output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

/** Like {@linkcode runCommand}, but a nonzero exit throws an Error naming the command and its stderr. */
export async function mustRun(cmd: string, args: string[], stdin?: string): Promise<string> {
  const r = await runCommand(cmd, args, stdin);
  if (r.code !== 0) {
    throw new Error(`${cmd} ${args.join(" ")} exited with ${r.code}: ${r.stderr.trim()}`);
  }
  return r.stdout;
}

async function works(cmd: string, args: string[]): Promise<boolean> {
  try {
    return (await runCommand(cmd, args)).code === 0;
  } catch {
    return false; // not installed
  }
}

/**
 * Why network-namespace tests cannot run here, or null when they can:
 * not root, `ip` or `nft` missing, or the kernel refusing a namespace or an
 * nftables table in it. Creates and deletes a probe namespace to find out.
 *
 * @example
 * ```ts ignore
 * const why = await netnsUnavailable();
 * if (why !== null) console.log(`skipping: ${why}`);
 * ```
 */
export async function netnsUnavailable(): Promise<string | null> {
  if (Deno.uid() !== 0) return `not root (uid ${Deno.uid()}): network namespaces need root`;
  if (!await works("ip", ["-V"])) return "ip (iproute2) is not installed";
  if (!await works("nft", ["--version"])) return "nft (nftables) is not installed";
  let probe: Netns;
  try {
    probe = await Netns.create("vrdma-probe");
  } catch (e) {
    return `cannot create a network namespace: ${(e as Error).message}`;
  }
  try {
    await probe.run("nft", ["add", "table", "inet", "vrdmaprobe"]);
  } catch (e) {
    return `nftables does not work in a network namespace: ${(e as Error).message}`;
  } finally {
    await probe.close();
  }
  return null;
}

/** Counters of a {@linkcode RandomDrop} rule pair. */
export interface DropCounters {
  /** Packets the rule looked at (every packet to the port). */
  matched: number;
  /** Packets it dropped. */
  dropped: number;
}

/**
 * A private network namespace with its loopback up. Delete it with
 * {@linkcode Netns.close} (or `await using`); deleting it also removes its
 * nftables tables.
 *
 * @example
 * ```ts ignore
 * await using ns = await Netns.create("vrdma-loss");
 * const drop = await ns.dropRandom({ port: 4791, percent: 10 });
 * const out = await ns.run("ip", ["-brief", "address"]);
 * console.log(out, await drop.counters());
 * ```
 */
export class Netns implements AsyncDisposable {
  /** Its name (`ip netns` lists it under this). */
  readonly name: string;
  #closed = false;

  private constructor(name: string) {
    this.name = name;
  }

  /**
   * Creates `<prefix>-<pid>-<n>` and sets its `lo` up (a new namespace's
   * loopback is down, and 127.0.0.0/8 needs it).
   *
   * @throws {Error} naming the `ip` command that failed.
   */
  static async create(prefix = "vrdma"): Promise<Netns> {
    const name = `${prefix}-${Deno.pid}-${++counter}`;
    await mustRun("ip", ["netns", "add", name]);
    const ns = new Netns(name);
    try {
      await ns.run("ip", ["link", "set", "lo", "up"]);
    } catch (e) {
      await ns.close();
      throw e;
    }
    return ns;
  }

  /**
   * The `ip` arguments that run `cmd args` inside the namespace (`ip netns
   * exec NAME cmd ...`). `ip netns exec` replaces itself with `cmd`, so the
   * child's pid is `cmd`'s and killing it kills `cmd`.
   */
  execArgs(cmd: string, args: string[]): string[] {
    return ["netns", "exec", this.name, cmd, ...args];
  }

  /** Runs `cmd` inside the namespace to the end and returns its stdout; a nonzero exit throws. */
  run(cmd: string, args: string[], stdin?: string): Promise<string> {
    return mustRun("ip", this.execArgs(cmd, args), stdin);
  }

  /**
   * Installs a table `inet <table>` whose output hook drops `percent`% of
   * UDP packets to `port` at random, with one counter for every packet to
   * the port and one for those dropped. On loopback every packet passes
   * the output hook once, so this is the loss rate of the path.
   */
  async dropRandom(
    options: { port: number; percent: number; table?: string },
  ): Promise<RandomDrop> {
    const { port, percent } = options;
    const table = options.table ?? "vrdmaloss";
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw new RangeError(`port must be an integer 1..65535, got ${port}`);
    }
    if (!Number.isInteger(percent) || percent < 0 || percent > 100) {
      throw new RangeError(`percent must be an integer 0..100, got ${percent}`);
    }
    if (!/^[a-z][a-z0-9_]*$/.test(table)) {
      throw new SyntaxError(`table name must be lowercase letters, digits and _, got "${table}"`);
    }
    // `numgen random mod 100` draws 0..99 per packet, so `< percent` drops percent%.
    await this.run(
      "nft",
      ["-f", "-"],
      [
        `table inet ${table} {`,
        `  chain output {`,
        `    type filter hook output priority 0; policy accept;`,
        `    udp dport ${port} counter comment "matched"`,
        `    udp dport ${port} numgen random mod 100 < ${percent} counter drop comment "dropped"`,
        `  }`,
        `}`,
      ].join("\n"),
    );
    return new RandomDrop(this, table);
  }

  /** Deletes the namespace (idempotent). Processes still inside keep it alive until they exit. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await mustRun("ip", ["netns", "delete", this.name]);
  }

  /** Same as {@linkcode Netns.close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** The rules {@linkcode Netns.dropRandom} installed. */
export class RandomDrop {
  /** The namespace they are in. */
  readonly netns: Netns;
  /** Their nftables table (family inet). */
  readonly table: string;

  /** Use {@linkcode Netns.dropRandom}. */
  constructor(netns: Netns, table: string) {
    this.netns = netns;
    this.table = table;
  }

  /** Reads both counters back (`nft -j list table`). */
  async counters(): Promise<DropCounters> {
    const text = await this.netns.run("nft", ["-j", "list", "table", "inet", this.table]);
    return parseDropCounters(text);
  }
}

interface NftRule {
  comment?: string;
  expr?: { counter?: { packets: number } }[];
}

/**
 * The "matched" and "dropped" counters from `nft -j list table` output.
 *
 * @throws {SyntaxError} when the text is not nft JSON or a rule or counter is missing.
 *
 * @example
 * ```ts
 * import { parseDropCounters } from "./netns.ts";
 * const rule = (comment: string, packets: number) => ({
 *   rule: { comment, expr: [{ counter: { packets, bytes: 0 } }] },
 * });
 * const text = JSON.stringify({ nftables: [rule("matched", 100), rule("dropped", 9)] });
 * const c = parseDropCounters(text);
 * if (c.matched !== 100 || c.dropped !== 9) throw new Error("misread");
 * ```
 */
export function parseDropCounters(text: string): DropCounters {
  let doc: { nftables?: { rule?: NftRule }[] };
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new SyntaxError(`nft -j output is not JSON: ${(e as Error).message}`);
  }
  const rules = (doc.nftables ?? []).flatMap((item) => item.rule ? [item.rule] : []);
  const read = (comment: string): number => {
    const rule = rules.find((r) => r.comment === comment);
    const packets = rule?.expr?.find((e) => e.counter !== undefined)?.counter?.packets;
    if (typeof packets !== "number") {
      throw new SyntaxError(`nft -j output has no rule "${comment}" with a counter`);
    }
    return packets;
  };
  return { matched: read("matched"), dropped: read("dropped") };
}
