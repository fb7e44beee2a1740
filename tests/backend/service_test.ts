import assert from "node:assert/strict";
import { openDevice, startBackend, VerbsError } from "../../mod.ts";
import { Op } from "../../protocol/device_interface.ts";
import { readStats } from "../../backend/management.ts";
import { eventually, tempSocket, testBackend } from "../helpers/backend.ts";

Deno.test("a guest opens a device, reads its attributes and runs control commands", async () => {
  await using host = await testBackend({ ip: "127.0.0.2" });
  assert.equal(host.gid, "::ffff:127.0.0.2");
  const dev = await openDevice({ socket: host.socket, memoryBytes: 8 << 20 });
  assert.equal(dev.attr.maxQp, 16384);
  assert.equal(dev.attr.maxCqe, 65536);
  assert.equal(dev.attr.maxMr, 65536);
  assert.equal(dev.attr.maxSge, 16);
  assert.ok(dev.attr.maxMrSize >= BigInt(8 << 20), `maxMrSize ${dev.attr.maxMrSize}`);
  const port = dev.queryPort(1);
  assert.equal(port.state, "ACTIVE");
  assert.equal(port.activeMtu, 4096);
  assert.equal(port.linkLayer, "Ethernet");
  assert.equal(dev.queryGid(1, 0), "::ffff:127.0.0.2");
  assert.throws(() => dev.queryPort(2), (e) => e instanceof VerbsError && e.errno === "EINVAL");
  assert.throws(() => dev.queryGid(1, 5), /GID index 5/);

  const gid = await dev.command(Op.QUERY_GID, { port: 1, index: 0 });
  assert.equal(gid.gid, "::ffff:127.0.0.2");
  await assert.rejects(
    dev.command(Op.QUERY_GID, { port: 1, index: 9 }),
    (e) => e instanceof VerbsError && e.errno === "EINVAL" && /GID index 9/.test(e.message),
  );
  await assert.rejects(
    dev.command(Op.QUERY_PORT, { port: "one" }),
    (e) => e instanceof VerbsError && /port = "one"/.test(e.message),
  );
  const stats = host.stats();
  assert.equal(stats.guests, 1);
  assert.equal(stats.queues, 2);
  assert.equal(stats.controlCommands, 3);
  assert.equal(stats.controlErrors, 2);
  assert.deepEqual(
    await readStats(host.socket),
    host.stats(),
    "management socket reports the same",
  );

  const buf = dev.allocBuffer(4096);
  assert.equal(buf.length, 4096);
  assert.ok(buf.bytes.every((b) => b === 0));
  buf.bytes[0] = 7;
  assert.equal(dev.memory.u8(Number(buf.addr)), 7, "the buffer is guest memory at its address");
  buf.free();
  assert.throws(
    () => dev.allocBuffer(64 << 20),
    (e) => e instanceof VerbsError && e.errno === "ENOMEM",
  );

  await dev.close();
  assert.ok(await eventually(() => host.stats().guests === 0), "guest gone after close");
  assert.equal(host.stats().queues, 0);
  await assert.rejects(
    dev.command(Op.QUERY_DEVICE),
    (e) => e instanceof VerbsError && e.errno === "ENODEV",
  );
});

Deno.test("many guests are served at once, each with its own memory and queues", async () => {
  await using host = await testBackend();
  const devs = await Promise.all(
    Array.from({ length: 8 }, () => openDevice({ socket: host.socket, memoryBytes: 1 << 20 })),
  );
  assert.equal(host.stats().guests, 8);
  assert.equal(host.stats().queues, 16);
  await Promise.all(devs.map(async (dev) => {
    for (let i = 0; i < 50; i++) {
      const r = await dev.command(Op.QUERY_GID, { port: 1, index: 0 });
      assert.equal(r.gid, "::ffff:127.0.0.1");
    }
  }));
  assert.equal(host.stats().controlCommands, 400);
  // Closing half leaves the others untouched.
  await Promise.all(devs.slice(0, 4).map((d) => d.close()));
  assert.ok(await eventually(() => host.stats().guests === 4));
  for (const dev of devs.slice(4)) await dev.command(Op.QUERY_DEVICE);
  await Promise.all(devs.slice(4).map((d) => d.close()));
  assert.ok(await eventually(() => host.stats().guests === 0 && host.stats().queues === 0));
});

Deno.test("no backend at the socket is a VerbsError naming the socket", async () => {
  const missing = tempSocket("missing");
  await assert.rejects(
    openDevice({ socket: missing }),
    (e) => e instanceof VerbsError && e.errno === "ENOENT" && e.message.includes(missing),
  );
  // A socket file nobody listens on (bound, never listening, owner gone).
  const stale = tempSocket("stale");
  const bind = new Deno.Command("python3", {
    args: ["-c", "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])", stale],
  }).outputSync();
  assert.ok(bind.success, new TextDecoder().decode(bind.stderr));
  await assert.rejects(
    openDevice({ socket: stale }),
    (e) => e instanceof VerbsError && e.errno === "ECONNREFUSED" && e.message.includes(stale),
  );
});

Deno.test("a backend at its guest limit refuses with ECONNREFUSED", async () => {
  await using host = await testBackend({ maxGuests: 1 });
  const first = await openDevice({ socket: host.socket, memoryBytes: 1 << 20 });
  await assert.rejects(
    openDevice({ socket: host.socket, memoryBytes: 1 << 20 }),
    (e) => e instanceof VerbsError && e.errno === "ECONNREFUSED" && e.message.includes(host.socket),
  );
  assert.equal(host.stats().guests, 1);
  await first.command(Op.QUERY_DEVICE);
  await first.close();
});

Deno.test("a backend that shuts down tells its guests; their verbs then fail", async () => {
  const host = await testBackend();
  const dev = await openDevice({ socket: host.socket, memoryBytes: 1 << 20 });
  const event = dev.getAsyncEvent();
  await host.close("test shutdown");
  const fatal = await event;
  assert.equal(fatal.type, "DEVICE_FATAL");
  await assert.rejects(
    dev.command(Op.QUERY_DEVICE),
    (e) => e instanceof VerbsError && e.errno === "ENODEV",
  );
  assert.throws(() => dev.queryPort(1), (e) => e instanceof VerbsError && e.errno === "ENODEV");
  await assert.rejects(Deno.stat(host.socket), Deno.errors.NotFound, "socket file removed");
  await dev.close();
});

Deno.test("startBackend refuses bad options and a socket already served", async () => {
  await assert.rejects(
    startBackend({ ip: "300.1.1.1", socket: tempSocket() }),
    /"300.1.1.1" is not an IPv4/,
  );
  await assert.rejects(startBackend({ port: 0, socket: tempSocket() }), /port 0/);
  await assert.rejects(startBackend({ maxGuests: 0, socket: tempSocket() }), /maxGuests 0/);
  await using host = await testBackend();
  await assert.rejects(testBackend({ socket: host.socket }), /EADDRINUSE/);
  // The liveness probe was a connection that closed at once: no guest stays.
  assert.ok(await eventually(() => host.stats().guests === 0));
});
