/**
 * The backend as users run it: a process started from the CLI, guests in
 * other processes, guests killed with SIGKILL at every stage of setup and
 * mid-traffic, and SIGTERM shutdown.
 */

import assert from "node:assert/strict";
import { openDevice, VerbsError } from "../../mod.ts";
import { Op } from "../../protocol/device_interface.ts";
import { managementPath, readStats } from "../../backend/management.ts";
import { eventually, fixture, spawnReady, tempSocket } from "../helpers/backend.ts";

const MAIN = new URL("../../backend/main.ts", import.meta.url).pathname;
const GUEST = fixture("backend/fixtures/guest.ts");

function cli(args: string[]): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--unstable-net", MAIN, ...args],
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  });
}

/** Distinct memfd files the process has mapped (guest memories). */
function guestMappings(pid: number): number {
  const maps = Deno.readTextFileSync(`/proc/${pid}/maps`);
  const files = new Set(
    maps.split("\n").filter((l) => l.includes("/memfd:")).map((l) => l.split(/\s+/)[4]),
  );
  return files.size;
}

/** Starts the CLI backend and waits for its socket. */
async function startCli(socket: string, ip = "127.0.0.3"): Promise<Deno.ChildProcess> {
  const child = cli(["--socket", socket, "--ip", ip, "--log-level", "info"]).spawn();
  const up = await eventually(async () => {
    try {
      await readStats(socket);
      return true;
    } catch {
      return false;
    }
  }, 10_000);
  if (!up) {
    child.kill("SIGKILL");
    const out = await child.output();
    throw new Error(`backend did not start: ${new TextDecoder().decode(out.stderr)}`);
  }
  return child;
}

Deno.test("--help prints real help and bad flags exit 2 with the reason", async () => {
  const help = await cli(["--help"]).output();
  assert.equal(help.code, 0);
  const text = new TextDecoder().decode(help.stdout);
  for (const flag of ["--socket", "--ip", "--port", "--max-guests", "--log-level"]) {
    assert.ok(text.includes(flag), `help mentions ${flag}`);
  }
  const bad = await cli(["--bogus"]).output();
  assert.equal(bad.code, 2);
  assert.match(new TextDecoder().decode(bad.stderr), /bogus/);
  const badIp = await cli(["--ip", "1.2.3", "--socket", tempSocket()]).output();
  assert.equal(badIp.code, 1);
  assert.match(new TextDecoder().decode(badIp.stderr), /"1\.2\.3" is not an IPv4 address/);
  const badLevel = await cli(["--log-level", "loud", "--socket", tempSocket()]).output();
  assert.equal(badLevel.code, 1);
  assert.match(new TextDecoder().decode(badLevel.stderr), /--log-level loud/);
});

Deno.test("guests killed with SIGKILL at any stage are freed; others notice nothing; SIGTERM ends cleanly", async () => {
  const socket = tempSocket();
  const backend = await startCli(socket);
  try {
    // A guest in this process that keeps working throughout.
    const survivor = await openDevice({ socket, memoryBytes: 1 << 20 });
    assert.equal(survivor.queryGid(1, 0), "::ffff:127.0.0.3");

    // Guests in other processes, killed mid-setup at each step and mid-traffic.
    const stages = [
      ["partial", "connected"],
      ["partial", "features"],
      ["partial", "owner"],
      ["partial", "memtable"],
      ["partial", "vring"],
      ["open"],
      ["open"],
    ];
    const guests = await Promise.all(stages.map((args) => spawnReady(GUEST, [socket, ...args])));
    assert.ok(
      await eventually(async () => (await readStats(socket)).guests === stages.length + 1),
      "every guest connected",
    );
    const busy = await readStats(socket);
    assert.equal(busy.queues, 2 * 3, "the survivor and two open guests have their queues");
    // Guest memory the backend maps: the survivor, two open guests, and the
    // two partial guests that got as far as SET_MEM_TABLE.
    assert.ok(await eventually(() => guestMappings(backend.pid) === 5), "5 guest memories mapped");
    for (const g of guests) g.child.kill("SIGKILL");
    await Promise.all(guests.map((g) => g.child.status));

    const freed = await eventually(async () => {
      const s = await readStats(socket);
      return s.guests === 1 && s.queues === 2;
    }, 2000);
    assert.ok(freed, `resources freed within 2 s: ${JSON.stringify(await readStats(socket))}`);
    assert.ok(
      await eventually(() => guestMappings(backend.pid) === 1),
      `killed guests' memory unmapped (still ${guestMappings(backend.pid)})`,
    );
    for (let i = 0; i < 20; i++) {
      const r = await survivor.command(Op.QUERY_GID, { port: 1, index: 0 });
      assert.equal(r.gid, "::ffff:127.0.0.3");
    }

    // SIGTERM: the guest is told, the process exits 0, the socket file goes.
    const fatal = survivor.getAsyncEvent();
    backend.kill("SIGTERM");
    const status = await backend.status;
    assert.equal(status.code, 0, "exit code 0 after SIGTERM");
    assert.equal((await fatal).type, "DEVICE_FATAL");
    await assert.rejects(
      survivor.command(Op.QUERY_DEVICE),
      (e) => e instanceof VerbsError && e.errno === "ENODEV" && e.message.includes(socket),
    );
    await assert.rejects(Deno.stat(socket), Deno.errors.NotFound);
    await assert.rejects(Deno.stat(managementPath(socket)), Deno.errors.NotFound);
    await survivor.close();
    const log = new TextDecoder().decode((await backend.output()).stderr);
    assert.match(log, /shutting down: SIGTERM received/);
  } finally {
    try {
      backend.kill("SIGKILL");
    } catch {
      // Already exited.
    }
    await backend.output().catch(() => {});
  }
});

Deno.test("a backend killed with SIGKILL: DEVICE_FATAL, then every verb fails with the socket named", async () => {
  const socket = tempSocket();
  const backend = await startCli(socket);
  const dev = await openDevice({ socket, memoryBytes: 1 << 20 });
  const pending = dev.getAsyncEvent();
  backend.kill("SIGKILL");
  // A dead backend cannot say so itself: the driver delivers DEVICE_FATAL for it.
  assert.equal((await pending).type, "DEVICE_FATAL");
  await backend.output();
  const failed = await eventually(() => dev.error !== null, 2000);
  assert.ok(failed, "the driver noticed the backend died");
  assert.equal(dev.error!.errno, "ENODEV");
  assert.ok(dev.error!.message.includes(socket));
  await assert.rejects(dev.command(Op.QUERY_PORT, { port: 1 }), (e) => e instanceof VerbsError);
  await assert.rejects(dev.getAsyncEvent(), VerbsError);
  await dev.close();
});
