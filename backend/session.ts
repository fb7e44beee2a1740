/**
 * One guest's control connection: the vhost-user back-end side.
 *
 * Every message passes `validateMessage` (syntax: sizes, flags, fds) before a
 * handler checks it against the session's state (order, memory table) and
 * acts. A handler that refuses a message changes nothing; the guest gets an
 * error reply when it asked for one (REPLY_ACK), and otherwise its connection
 * is closed — only its own.
 *
 * @module
 */

import {
  checkHeader,
  encodeConfig,
  encodeReply,
  encodeU64,
  featureMask,
  HEADER_SIZE,
  type MemoryRegionDesc,
  ProtocolFeature,
  Request,
  requestName,
  validateMessage,
  type ValidRequest,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VirtioFeature,
  type VringAddr,
} from "../protocol/vhost_user.ts";
import { CONFIG_SIZE, encodeDeviceConfig } from "../protocol/device_config.ts";
import {
  decodeDriverArea,
  DRIVER_AREA_BYTES,
  Errno,
  FIXED_QUEUES,
} from "../protocol/device_interface.ts";
import { layoutFromAddresses } from "./vring_addresses.ts";
import { SharedMemory } from "../virtqueue/sys/shm.ts";
import { closeFd, dupFd } from "../virtqueue/sys/libc.ts";
import type { UnixSocket } from "../virtqueue/sys/unix_socket.ts";
import type { DataPlane } from "./data_plane/client.ts";
import type { RegionMapping } from "./data_plane/messages.ts";
import { deviceConfigFor } from "./device/attributes.ts";
import type { Logger } from "./log.ts";

/** Virtio features the device offers. */
export const DEVICE_FEATURES: bigint = featureMask(VirtioFeature.VERSION_1) |
  featureMask(VirtioFeature.RING_EVENT_IDX) | featureMask(VirtioFeature.RING_INDIRECT_DESC) |
  featureMask(VHOST_USER_F_PROTOCOL_FEATURES);

/** vhost-user protocol features the device offers. */
export const DEVICE_PROTOCOL_FEATURES: bigint = featureMask(ProtocolFeature.REPLY_ACK) |
  featureMask(ProtocolFeature.CONFIG);

/** Config space: the read-only attributes, then the driver area. */
const CONFIG_SPACE_BYTES = CONFIG_SIZE + DRIVER_AREA_BYTES;

/** A message the session refuses: becomes an error reply or a closed connection. */
class Refused extends Error {
  readonly errno: number;
  constructor(errno: number, message: string) {
    super(message);
    this.errno = errno;
  }
}

interface Vring {
  num?: number;
  addr?: VringAddr;
  base: number;
  enabled: boolean;
  started: boolean;
}

/** What a session needs from the service. */
export interface SessionContext {
  /** The data-plane Worker. */
  dataPlane: DataPlane;
  /** This host's IPv4 address. */
  ip: string;
  /** Logger. */
  log: Logger;
}

/** One connected guest. */
export class GuestSession {
  /** Guest number on this host (also the data plane's name for it). */
  readonly id: number;
  readonly #socket: UnixSocket;
  readonly #ctx: SessionContext;
  readonly #header = new Uint8Array(HEADER_SIZE);
  #headerLen = 0;
  #payload: Uint8Array | null = null;
  #payloadLen = 0;
  #messageFds: number[] = [];
  #queue: Promise<void> = Promise.resolve();
  #closed = false;
  #acked = 0n;
  #protocol = 0n;
  #owner = false;
  #features: bigint | undefined;
  #memory: { regions: MemoryRegionDesc[]; maps: SharedMemory[] } | undefined;
  #vrings = new Map<number, Vring>();
  #driverArea = new Uint8Array(DRIVER_AREA_BYTES);
  #onClose: (session: GuestSession) => void;

  /** A session for an accepted connection; `onClose` runs once when it ends. */
  constructor(
    id: number,
    socket: UnixSocket,
    ctx: SessionContext,
    onClose: (s: GuestSession) => void,
  ) {
    this.id = id;
    this.#socket = socket;
    this.#ctx = ctx;
    this.#onClose = onClose;
  }

  /** The fd the service watches for readability. */
  get fd(): number {
    return this.#socket.fd;
  }

  /** True once the connection is gone. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Registers the guest with the data plane. */
  async start(): Promise<void> {
    await this.#ctx.dataPlane.call({ cmd: "addGuest", guest: this.id, ip: this.#ctx.ip });
  }

  /**
   * Reads what the socket has and handles every complete message, in order.
   *
   * Each `recvmsg` asks for exactly the rest of the current header or
   * payload. The kernel attaches a message's fds to its first bytes but may
   * merge the bytes of several messages into one read, handing over the fds
   * with the later message's bytes; reading one message at a time (as QEMU and
   * rust-vmm do) keeps every fd with the message it was sent with.
   */
  onReadable(): void {
    if (this.#closed) return;
    for (;;) {
      const target = this.#payload === null
        ? this.#header.subarray(this.#headerLen)
        : this.#payload.subarray(this.#payloadLen);
      let got;
      try {
        got = this.#socket.receive(target, 8);
      } catch (e) {
        this.#ctx.log.warn(`guest ${this.id}: receive failed: ${(e as Error).message}`);
        void this.close("receive failed");
        return;
      }
      if (got.bytes === -1) return; // nothing more for now
      this.#messageFds.push(...got.fds);
      if (got.bytes === 0) {
        void this.close("guest disconnected");
        return;
      }
      if (this.#payload === null) {
        this.#headerLen += got.bytes;
        if (this.#headerLen < HEADER_SIZE) continue;
        const view = new DataView(this.#header.buffer);
        const request = view.getUint32(0, true);
        const flags = view.getUint32(4, true);
        const size = view.getUint32(8, true);
        try {
          // Version, reserved bits, known request and a size cap, from the
          // header alone: a 4 GiB size field is refused before any payload.
          checkHeader(request, flags, size);
        } catch (e) {
          // Framing is lost: nothing after this point can be trusted.
          this.#ctx.log.warn(`guest ${this.id}: ${(e as Error).message}; disconnecting`);
          void this.close((e as Error).message);
          return;
        }
        this.#payload = new Uint8Array(size);
        this.#payloadLen = 0;
      } else {
        this.#payloadLen += got.bytes;
      }
      if (this.#payloadLen < this.#payload.length) continue;
      const view = new DataView(this.#header.buffer);
      const msg = {
        request: view.getUint32(0, true),
        flags: view.getUint32(4, true),
        payload: this.#payload,
      };
      const fds = this.#messageFds;
      this.#messageFds = [];
      this.#payload = null;
      this.#headerLen = 0;
      // A handler that throws must not stall the chain (later messages would
      // never be handled): it costs the guest its connection.
      this.#queue = this.#queue.then(() => this.#handle(msg, fds)).catch((e) => {
        this.#ctx.log.error(`guest ${this.id}: handler failed: ${(e as Error).stack ?? e}`);
        void this.close("internal error");
      });
    }
  }

  async #handle(
    msg: { request: number; flags: number; payload: Uint8Array },
    fds: number[],
  ): Promise<void> {
    // The fds that came with a message are closed here, after its handler,
    // whatever happens: a handler that keeps one takes its own dup.
    try {
      if (this.#closed) return;
      let valid: ValidRequest;
      try {
        valid = validateMessage(msg, {
          fdCount: fds.length,
          maxQueues: FIXED_QUEUES,
          configSize: CONFIG_SPACE_BYTES,
        });
      } catch (e) {
        return this.#fail(msg.request, msg.flags, Errno.EINVAL, (e as Error).message);
      }
      try {
        const reply = await this.#dispatch(valid, fds);
        if (reply !== undefined) this.#send(encodeReply(valid.request, reply));
        else if (this.#wantsAck(valid.flags)) this.#send(encodeReply(valid.request, encodeU64(0n)));
      } catch (e) {
        const errno = e instanceof Refused ? e.errno : Errno.EIO;
        return this.#fail(valid.request, valid.flags, errno, (e as Error).message);
      }
    } finally {
      for (const fd of fds) closeFd(fd);
    }
  }

  #wantsAck(flags: number): boolean {
    return (this.#acked & featureMask(ProtocolFeature.REPLY_ACK)) !== 0n && (flags & 0x8) !== 0;
  }

  #fail(request: number, flags: number, errno: number, why: string): void {
    this.#ctx.log.warn(`guest ${this.id}: ${requestName(request)} refused: ${why}`);
    // GET requests always expect their payload; an error can only be told by
    // closing. SET requests with need-reply get the errno as their status.
    const isGet = request === Request.GET_FEATURES || request === Request.GET_PROTOCOL_FEATURES ||
      request === Request.GET_QUEUE_NUM || request === Request.GET_VRING_BASE ||
      request === Request.GET_CONFIG;
    if (!isGet && this.#wantsAck(flags)) {
      this.#send(encodeReply(request, encodeU64(BigInt(errno))));
    } else {
      void this.close(`${requestName(request)} refused: ${why}`);
    }
  }

  #send(bytes: Uint8Array): void {
    if (this.#closed) return;
    try {
      this.#socket.send(bytes);
    } catch (e) {
      void this.close(`send failed: ${(e as Error).message}`);
    }
  }

  #needOwner(request: number): void {
    if (!this.#owner) throw new Refused(Errno.EPERM, `${requestName(request)} before SET_OWNER`);
  }

  #vring(index: number): Vring {
    let v = this.#vrings.get(index);
    if (v === undefined) {
      v = { base: 0, enabled: false, started: false };
      this.#vrings.set(index, v);
    }
    return v;
  }

  async #dispatch(m: ValidRequest, fds: number[]): Promise<Uint8Array | undefined> {
    const plane = this.#ctx.dataPlane;
    switch (m.request) {
      case Request.GET_FEATURES:
        return encodeU64(DEVICE_FEATURES);
      case Request.SET_FEATURES: {
        const unknown = m.body & ~DEVICE_FEATURES;
        if (unknown !== 0n) {
          throw new Refused(Errno.EINVAL, `features 0x${unknown.toString(16)} were not offered`);
        }
        if ((m.body & featureMask(VirtioFeature.VERSION_1)) === 0n) {
          throw new Refused(Errno.EINVAL, "VERSION_1 is required (no legacy devices)");
        }
        if ([...this.#vrings.values()].some((v) => v.started)) {
          throw new Refused(Errno.EBUSY, "SET_FEATURES while queues are running");
        }
        this.#features = m.body;
        return;
      }
      case Request.GET_PROTOCOL_FEATURES:
        return encodeU64(DEVICE_PROTOCOL_FEATURES);
      case Request.SET_PROTOCOL_FEATURES: {
        const unknown = m.body & ~DEVICE_PROTOCOL_FEATURES;
        if (unknown !== 0n) {
          throw new Refused(Errno.EINVAL, `protocol features 0x${unknown.toString(16)} unknown`);
        }
        this.#protocol = m.body;
        this.#acked = m.body;
        return;
      }
      case Request.SET_OWNER:
        if (this.#owner) throw new Refused(Errno.EBUSY, "SET_OWNER twice");
        this.#owner = true;
        return;
      case Request.RESET_OWNER:
        await this.#reset();
        return;
      case Request.GET_QUEUE_NUM:
        return encodeU64(BigInt(FIXED_QUEUES));
      case Request.SET_MEM_TABLE:
        this.#needOwner(m.request);
        await this.#setMemTable(m.body, fds);
        return;
      case Request.SET_VRING_NUM: {
        this.#needOwner(m.request);
        const v = this.#vring(m.body.index);
        if (v.started) throw new Refused(Errno.EBUSY, `queue ${m.body.index} is running`);
        v.num = m.body.num;
        return;
      }
      case Request.SET_VRING_BASE: {
        this.#needOwner(m.request);
        const v = this.#vring(m.body.index);
        if (v.started) throw new Refused(Errno.EBUSY, `queue ${m.body.index} is running`);
        if (m.body.num > 0xffff) {
          throw new Refused(Errno.EINVAL, `ring base ${m.body.num} is not a 16-bit index`);
        }
        v.base = m.body.num;
        return;
      }
      case Request.SET_VRING_ADDR: {
        this.#needOwner(m.request);
        const v = this.#vring(m.body.index);
        if (this.#memory === undefined) {
          throw new Refused(Errno.EINVAL, "SET_VRING_ADDR before SET_MEM_TABLE");
        }
        if (v.num === undefined) {
          throw new Refused(
            Errno.EINVAL,
            `SET_VRING_ADDR for queue ${m.body.index} before SET_VRING_NUM`,
          );
        }
        if (v.started) throw new Refused(Errno.EBUSY, `queue ${m.body.index} is running`);
        // Throws a Refused-worthy RangeError naming the address that is not guest memory.
        try {
          layoutFromAddresses(m.body, v.num, this.#memory.regions);
        } catch (e) {
          throw new Refused(Errno.EINVAL, (e as Error).message);
        }
        v.addr = m.body;
        return;
      }
      case Request.SET_VRING_KICK:
      case Request.SET_VRING_CALL: {
        this.#needOwner(m.request);
        const index = m.body.index;
        if (m.body.noFd) {
          throw new Refused(
            Errno.EINVAL,
            `${requestName(m.request)} without an fd (polling) is not supported`,
          );
        }
        // The Worker owns the dup from here (it closes it on failure too).
        const fd = dupFd(fds[0]!);
        await plane.call({
          cmd: m.request === Request.SET_VRING_KICK ? "setKick" : "setCall",
          guest: this.id,
          index,
          fd,
        });
        return;
      }
      case Request.SET_VRING_ERR:
        // Errors are reported as events on the event queue; the fd is not needed.
        return;
      case Request.SET_VRING_ENABLE: {
        this.#needOwner(m.request);
        const index = m.body.index;
        const v = this.#vring(index);
        if (m.body.num > 1) {
          throw new Refused(Errno.EINVAL, `enable flag ${m.body.num} is not 0 or 1`);
        }
        const enable = m.body.num === 1;
        if (enable && !v.started) {
          if (v.num === undefined || v.addr === undefined || this.#memory === undefined) {
            throw new Refused(Errno.EINVAL, `queue ${index} enabled before its size and addresses`);
          }
          const layout = layoutFromAddresses(v.addr, v.num, this.#memory.regions);
          const features = this.#features ?? 0n;
          await plane.call({
            cmd: "setVring",
            guest: this.id,
            vring: {
              index,
              layout,
              base: v.base,
              eventIdx: (features & featureMask(VirtioFeature.RING_EVENT_IDX)) !== 0n,
              indirect: (features & featureMask(VirtioFeature.RING_INDIRECT_DESC)) !== 0n,
            },
          });
          v.started = true;
        }
        await plane.call({ cmd: "enableVring", guest: this.id, index, enabled: enable });
        v.enabled = enable;
        return;
      }
      case Request.GET_VRING_BASE: {
        this.#needOwner(m.request);
        const v = this.#vring(m.body.index);
        let base = v.base;
        if (v.started) {
          base = (await plane.call({ cmd: "stopVring", guest: this.id, index: m.body.index })) ?? 0;
          v.started = false;
          v.enabled = false;
          v.base = base;
        }
        const payload = new Uint8Array(8);
        new DataView(payload.buffer).setUint32(0, m.body.index, true);
        new DataView(payload.buffer).setUint32(4, base, true);
        return payload;
      }
      case Request.GET_CONFIG: {
        const space = this.#configSpace();
        const { offset, flags, data } = m.body;
        return encodeConfig({ offset, flags, data: space.slice(offset, offset + data.length) });
      }
      case Request.SET_CONFIG: {
        this.#needOwner(m.request);
        const { offset, data } = m.body;
        const size = data.length;
        if (offset < CONFIG_SIZE || offset + size > CONFIG_SPACE_BYTES) {
          throw new Refused(
            Errno.EPERM,
            `config bytes ${offset}..${
              offset + size
            } are read-only (driver area is ${CONFIG_SIZE}..${CONFIG_SPACE_BYTES})`,
          );
        }
        const area = this.#driverArea.slice();
        area.set(data, offset - CONFIG_SIZE);
        const parsed = decodeDriverArea(area);
        if (parsed.doorbellAddr !== 0) {
          await plane.call({
            cmd: "setDoorbell",
            guest: this.id,
            addr: parsed.doorbellAddr,
            queues: parsed.doorbellQueues,
          });
        }
        this.#driverArea = area;
        return;
      }
    }
  }

  #configSpace(): Uint8Array {
    const memoryBytes = this.#memory?.maps.reduce((n, m) => n + m.size, 0) ?? 0;
    const config = deviceConfigFor({ ip: this.#ctx.ip, memoryBytes });
    const space = new Uint8Array(CONFIG_SPACE_BYTES);
    space.set(encodeDeviceConfig(config));
    space.set(this.#driverArea, CONFIG_SIZE);
    return space;
  }

  async #setMemTable(regions: MemoryRegionDesc[], fds: number[]): Promise<void> {
    if ([...this.#vrings.values()].some((v) => v.started)) {
      throw new Refused(Errno.EBUSY, "SET_MEM_TABLE while queues are running");
    }
    const maps: SharedMemory[] = [];
    try {
      regions.forEach((r, i) => {
        const size = Number(r.memorySize);
        const offset = Number(r.mmapOffset);
        if (!Number.isSafeInteger(Number(r.guestPhysAddr) + size)) {
          throw new Refused(Errno.EINVAL, `region ${i} ends beyond 2^53`);
        }
        // map() checks the file really holds offset+size bytes and that it is
        // sealed against shrinking: a region past the end of the memfd would
        // otherwise crash the whole service with SIGBUS on first access.
        const fd = dupFd(fds[i]!);
        try {
          maps.push(SharedMemory.map(fd, size, { offset, requireSealed: true }));
        } catch (e) {
          closeFd(fd); // map() owns the fd only when it succeeds
          throw e;
        }
      });
    } catch (e) {
      for (const m of maps) m.close();
      if (e instanceof Refused) throw e;
      throw new Refused(Errno.EINVAL, `SET_MEM_TABLE: ${(e as Error).message}`);
    }
    const mappings: RegionMapping[] = regions.map((r, i) => ({
      guestAddr: Number(r.guestPhysAddr),
      size: maps[i]!.size,
      hostAddr: maps[i]!.address,
    }));
    try {
      await this.#ctx.dataPlane.call({ cmd: "setMemory", guest: this.id, regions: mappings });
    } catch (e) {
      for (const m of maps) m.close();
      throw new Refused(Errno.EINVAL, (e as Error).message);
    }
    // The Worker now uses the new table; the old mappings can go.
    for (const m of this.#memory?.maps ?? []) m.close();
    this.#memory = { regions, maps };
  }

  async #reset(): Promise<void> {
    await this.#ctx.dataPlane.call({ cmd: "removeGuest", guest: this.id });
    this.#releaseMemory();
    this.#vrings.clear();
    this.#owner = false;
    this.#features = undefined;
    this.#driverArea = new Uint8Array(DRIVER_AREA_BYTES);
    // The connection may have closed while the Worker removed the guest:
    // adding it again now would leave it there for good.
    if (this.#closed) return;
    await this.start();
  }

  #releaseMemory(): void {
    for (const m of this.#memory?.maps ?? []) m.close();
    this.#memory = undefined;
  }

  /** Tells the guest the device is gone (DEVICE_FATAL on its event queue). */
  async notifyFatal(): Promise<void> {
    if (this.#closed) return;
    await this.#ctx.dataPlane.send({ cmd: "notifyFatal", guest: this.id, errno: Errno.ENODEV });
  }

  /** Frees everything of this guest and closes the connection. Idempotent. */
  async close(why: string): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#ctx.log.info(`guest ${this.id}: closing (${why})`);
    // The Worker must stop touching the memory before it is unmapped.
    await this.#ctx.dataPlane.send({ cmd: "removeGuest", guest: this.id });
    this.#releaseMemory();
    for (const fd of this.#messageFds.splice(0)) closeFd(fd);
    // The service unwatches the fd first: once closed, its number can be reused.
    this.#onClose(this);
    this.#socket.close();
  }

  /** Negotiated virtio features, once SET_FEATURES arrived. */
  get features(): bigint | undefined {
    return this.#features;
  }

  /** Negotiated protocol features. */
  get protocolFeatures(): bigint {
    return this.#protocol;
  }
}
