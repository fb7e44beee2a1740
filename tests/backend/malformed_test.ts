/**
 * A table of malformed, truncated, oversized and out-of-order control
 * messages. Each gets an error reply or closes that guest's connection; the
 * backend keeps serving everyone else, and nothing of the bad guest stays.
 */

import assert from "node:assert/strict";
import { openDevice } from "../../mod.ts";
import { Op } from "../../protocol/device_interface.ts";
import {
  encodeMemoryTable,
  encodeMessage,
  encodeU64,
  encodeVringAddr,
  encodeVringFile,
  encodeVringState,
  featureMask,
  MessageReader,
  ProtocolFeature,
  Request,
} from "../../protocol/vhost_user.ts";
import { SharedMemory } from "../../virtqueue/sys/shm.ts";
import { UnixSocket } from "../../virtqueue/sys/unix_socket.ts";
import { eventually, testBackend } from "../helpers/backend.ts";

type Outcome = "error-reply" | "closed";

/** A raw vhost-user front-end for hostile tests. */
class RawGuest {
  readonly sock: UnixSocket;
  readonly #buf = new Uint8Array(8192);
  readonly #reader = new MessageReader();
  constructor(path: string) {
    this.sock = UnixSocket.connect(path);
  }
  send(bytes: Uint8Array, fds: number[] = []): void {
    this.sock.send(bytes, fds);
  }
  request(request: number, payload: Uint8Array = new Uint8Array(0), fds: number[] = []): void {
    this.send(encodeMessage(request, payload, { needReply: true }), fds);
  }
  /** Waits up to `ms` for the next reply: its u64 status/value, "closed" on EOF. */
  async reply(ms = 2000): Promise<bigint | "closed" | "timeout"> {
    this.sock.setNonBlocking(true);
    const deadline = performance.now() + ms;
    for (;;) {
      const msg = this.#reader.next();
      if (msg !== undefined) {
        return msg.payload.length >= 8
          ? new DataView(msg.payload.buffer, msg.payload.byteOffset).getBigUint64(0, true)
          : -1n;
      }
      let r;
      try {
        r = this.sock.receive(this.#buf);
      } catch {
        return "closed"; // ECONNRESET
      }
      if (r.bytes === 0) return "closed";
      if (r.bytes > 0) this.#reader.push(this.#buf.subarray(0, r.bytes));
      else if (performance.now() > deadline) return "timeout";
      else await new Promise((res) => setTimeout(res, 5));
    }
  }
  /** Negotiates REPLY_ACK and takes ownership, as a real front-end would. */
  async handshake(): Promise<void> {
    this.send(encodeMessage(Request.GET_FEATURES, new Uint8Array(0)));
    await this.reply();
    const ack = featureMask(ProtocolFeature.REPLY_ACK) | featureMask(ProtocolFeature.CONFIG);
    this.send(encodeMessage(Request.SET_PROTOCOL_FEATURES, encodeU64(ack)));
    this.request(Request.SET_FEATURES, encodeU64(featureMask(32)));
    assert.equal(await this.reply(), 0n);
    this.request(Request.SET_OWNER);
    assert.equal(await this.reply(), 0n);
  }
  close(): void {
    this.sock.close();
  }
}

function header(request: number, flags: number, size: number): Uint8Array {
  const b = new Uint8Array(12);
  const v = new DataView(b.buffer);
  v.setUint32(0, request, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, size, true);
  return b;
}

const memfd = () => SharedMemory.create(1 << 20, { seal: true });
const region = (size: bigint, offset = 0n, addr = 0x10000n) => ({
  guestPhysAddr: addr,
  memorySize: size,
  userspaceAddr: addr,
  mmapOffset: offset,
});

interface Case {
  name: string;
  handshake: boolean;
  run: (g: RawGuest) => void | Promise<void>;
  expect: Outcome;
}

const CASES: Case[] = [
  {
    name: "random bytes",
    handshake: false,
    run: (g) => g.send(crypto.getRandomValues(new Uint8Array(64))),
    expect: "closed",
  },
  {
    name: "size field of 4 GiB",
    handshake: false,
    run: (g) => g.send(header(Request.SET_FEATURES, 0x1, 0xffff_ffff)),
    expect: "closed",
  },
  {
    name: "wrong version bits",
    handshake: false,
    run: (g) => g.send(header(Request.GET_FEATURES, 0x2, 0)),
    expect: "closed",
  },
  {
    name: "unknown request",
    handshake: false,
    run: (g) => g.send(header(9999, 0x1, 0)),
    expect: "closed",
  },
  {
    name: "truncated message then hang-up",
    handshake: true,
    run: (g) => {
      g.send(header(Request.SET_VRING_NUM, 0x9, 8).subarray(0, 7));
      g.sock.shutdown();
    },
    expect: "closed",
  },
  {
    name: "SET_VRING_ADDR before SET_MEM_TABLE",
    handshake: true,
    run: (g) => {
      g.request(Request.SET_VRING_NUM, encodeVringState({ index: 0, num: 64 }));
      g.request(
        Request.SET_VRING_ADDR,
        encodeVringAddr({
          index: 0,
          flags: 0,
          descUserAddr: 0x10000n,
          usedUserAddr: 0x11000n,
          availUserAddr: 0x10400n,
          logGuestAddr: 0n,
        }),
      );
    },
    expect: "error-reply",
  },
  {
    name: "SET_MEM_TABLE before SET_OWNER",
    handshake: false,
    run: (g) => {
      const shm = memfd();
      g.send(
        encodeMessage(
          Request.SET_PROTOCOL_FEATURES,
          encodeU64(featureMask(ProtocolFeature.REPLY_ACK)),
        ),
      );
      g.request(Request.SET_MEM_TABLE, encodeMemoryTable([region(1n << 20n)]), [shm.fd]);
      shm.close();
    },
    expect: "error-reply",
  },
  {
    name: "memory region past the end of the memfd",
    handshake: true,
    run: (g) => {
      const shm = memfd();
      g.request(Request.SET_MEM_TABLE, encodeMemoryTable([region(4n << 20n)]), [shm.fd]);
      shm.close();
    },
    expect: "error-reply",
  },
  {
    name: "memfd not sealed against shrinking",
    handshake: true,
    run: (g) => {
      const shm = SharedMemory.create(1 << 20, { seal: false });
      g.request(Request.SET_MEM_TABLE, encodeMemoryTable([region(1n << 20n)]), [shm.fd]);
      shm.close();
    },
    expect: "error-reply",
  },
  {
    name: "memory table without its fd",
    handshake: true,
    run: (g) => g.request(Request.SET_MEM_TABLE, encodeMemoryTable([region(1n << 20n)])),
    expect: "error-reply",
  },
  {
    name: "vring outside the memory table",
    handshake: true,
    run: (g) => {
      const shm = memfd();
      g.request(Request.SET_MEM_TABLE, encodeMemoryTable([region(1n << 20n)]), [shm.fd]);
      shm.close();
      g.request(Request.SET_VRING_NUM, encodeVringState({ index: 0, num: 64 }));
      g.request(
        Request.SET_VRING_ADDR,
        encodeVringAddr({
          index: 0,
          flags: 0,
          descUserAddr: 0x10000n + (1n << 20n) - 16n,
          usedUserAddr: 0x11000n,
          availUserAddr: 0x10400n,
          logGuestAddr: 0n,
        }),
      );
    },
    expect: "error-reply",
  },
  {
    name: "vring size not a power of two",
    handshake: true,
    run: (g) => g.request(Request.SET_VRING_NUM, encodeVringState({ index: 0, num: 100 })),
    expect: "error-reply",
  },
  {
    name: "queue index past the device's queues",
    handshake: true,
    run: (g) => g.request(Request.SET_VRING_NUM, encodeVringState({ index: 7, num: 64 })),
    expect: "error-reply",
  },
  {
    name: "kick fd that is not an eventfd",
    handshake: true,
    run: (g) => {
      const shm = memfd();
      g.request(Request.SET_VRING_KICK, encodeVringFile({ index: 0, noFd: false }), [shm.fd]);
      shm.close();
    },
    expect: "error-reply",
  },
  {
    name: "config write into the read-only attributes",
    handshake: true,
    run: (g) => {
      const payload = new Uint8Array(12 + 4);
      new DataView(payload.buffer).setUint32(4, 4, true);
      g.request(Request.SET_CONFIG, payload);
    },
    expect: "error-reply",
  },
  {
    name: "enable a queue that has no addresses",
    handshake: true,
    run: (g) => {
      g.request(Request.SET_VRING_NUM, encodeVringState({ index: 1, num: 64 }));
      g.request(Request.SET_VRING_ENABLE, encodeVringState({ index: 1, num: 1 }));
    },
    expect: "error-reply",
  },
];

Deno.test("malformed control messages get an error reply or close only that guest", async (t) => {
  await using host = await testBackend();
  // A well-behaved guest that must notice nothing.
  const good = await openDevice({ socket: host.socket, memoryBytes: 1 << 20 });
  for (const c of CASES) {
    await t.step(c.name, async () => {
      const g = new RawGuest(host.socket);
      try {
        if (c.handshake) await g.handshake();
        await c.run(g);
        let outcome = await g.reply();
        // Multi-message cases: earlier messages may be acked before the bad one.
        while (outcome === 0n) outcome = await g.reply();
        if (c.expect === "closed") assert.equal(outcome, "closed");
        else {assert.ok(
            typeof outcome === "bigint" && outcome > 0n,
            `expected an error status, got ${outcome}`,
          );}
      } finally {
        g.close();
      }
      const r = await good.command(Op.QUERY_GID, { port: 1, index: 0 });
      assert.equal(r.gid, "::ffff:127.0.0.1", "the good guest still works");
    });
  }
  assert.ok(await eventually(() => host.stats().guests === 1), `guests: ${host.stats().guests}`);
  assert.equal(host.stats().queues, 2, "only the good guest's queues remain");
  await good.close();
  assert.ok(await eventually(() => host.stats().guests === 0));
});
