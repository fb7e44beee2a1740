/**
 * The data-plane Worker: serves every guest's virtqueues of one backend.
 *
 * It sleeps in a synchronous `epoll_wait` over the guests' kick eventfds and
 * its own control eventfd, so a kick costs one syscall to wake and no thread
 * per queue. After work it keeps polling the doorbells for a short while
 * (guests see `deviceAwake` and skip the eventfd write), then re-arms and
 * sleeps. Commands from the service thread are posted and then announced on
 * the control eventfd; the Worker yields to its event loop to receive exactly
 * as many as the eventfd counted.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { Epoll } from "../../virtqueue/sys/epoll.ts";
import { EventFd } from "../../virtqueue/sys/eventfd.ts";
import { closeFd, yieldCpu } from "../../virtqueue/sys/libc.ts";
import { EventType } from "../../protocol/device_interface.ts";
import { GuestDevice } from "./guest_device.ts";
import { HostTables } from "../device/host_tables.ts";
import { VerbsEngine } from "../engine/engine.ts";
import { hostView } from "../engine/host_view.ts";
import { Counters } from "./stats.ts";
import { UdpTransport } from "../roce/transport.ts";
import type { WorkerInit } from "./client.ts";
import type {
  DataPlaneNotice,
  DataPlaneReply,
  QpCounterRow,
  SequencedCommand,
} from "./messages.ts";

/**
 * How long to keep polling after the last work, in milliseconds. Waking a
 * sleeping Worker costs tens of microseconds (more on a loaded machine); a
 * window shorter than a guest's round trip means every WR pays that wake-up
 * (measured here: 50 us windows gave ~70 us per 8-byte WRITE round trip, 1 ms
 * gave ~7 us).
 */
const SPIN_MS = 1;
const CONTROL_TOKEN = 0;
/** The RoCE transport's epoll token; guest ids are small positive integers. */
const ROCE_TOKEN = 0xffff_fffe;

const inbox: SequencedCommand[] = [];
let wakeInbox: (() => void) | null = null;
let started = false;

function post(msg: DataPlaneReply | DataPlaneNotice): void {
  self.postMessage(msg);
}

self.onmessage = (e: MessageEvent<WorkerInit | SequencedCommand>) => {
  if (!started) {
    started = true;
    run(e.data as WorkerInit).catch((err) => {
      post({ notice: "log", level: "error", message: `data plane died: ${err?.stack ?? err}` });
      self.close();
    });
    return;
  }
  inbox.push(e.data as SequencedCommand);
  wakeInbox?.();
};

async function nextCommand(): Promise<SequencedCommand> {
  while (inbox.length === 0) {
    await new Promise<void>((resolve) => (wakeInbox = resolve));
    wakeInbox = null;
  }
  return inbox.shift()!;
}

async function run(init: WorkerInit): Promise<void> {
  const counters = new Counters(init.counters);
  // The service thread owns the control eventfd; this view must not close it.
  const control = EventFd.fromFd(init.controlFd, { owned: false });
  const epoll = Epoll.create();
  epoll.add(control.fd, CONTROL_TOKEN);
  const guests = new Map<number, GuestDevice>();
  // Guests whose service threw: quarantined (NEEDS_RESET) until they reset or
  // leave. Hostile input is meant to be caught below this; this is the last
  // line, so one guest can never stop the data plane for the others.
  const quarantined = new Set<number>();
  const serve = (guest: GuestDevice, work: (g: GuestDevice) => boolean): boolean => {
    if (quarantined.has(guest.id)) return false;
    try {
      return work(guest);
    } catch (e) {
      quarantined.add(guest.id);
      counters.add("brokenQueues");
      post({
        notice: "broken",
        guest: guest.id,
        queue: -1,
        error: `data plane failure, guest quarantined: ${(e as Error)?.stack ?? e}`,
      });
      return false;
    }
  };
  const service = (g: GuestDevice) => g.service();
  // QPNs and memory keys are unique across every guest of this backend.
  const hostTables = new HostTables();
  let transport: UdpTransport;
  try {
    transport = UdpTransport.open({ ip: init.ip, port: init.port, mode: init.transport });
  } catch (e) {
    epoll.close();
    post({
      notice: "failed",
      message: `RoCEv2 on ${init.ip}:${init.port}: ${(e as Error).message}`,
    });
    self.close();
    return;
  }
  const engine = new VerbsEngine(
    hostView(hostTables, init.ip, (id) => guests.get(id)),
    counters,
    { transport },
  );
  epoll.add(transport.fd, ROCE_TOKEN);
  const pollRoce = (): boolean => {
    try {
      return engine.poll() > 0;
    } catch (e) {
      post({ notice: "log", level: "error", message: `RoCE receive: ${(e as Error)?.stack ?? e}` });
      return false;
    }
  };

  // The wire counters live here, with the adapter; the service thread asks for a copy.
  const qpCounterRows = (): QpCounterRow[] =>
    engine.qpCounters().flatMap((row) => {
      const qp = hostTables.qpByNum(row.qpNum);
      if (qp === undefined) return [];
      const connected = qp.qpType !== "UD";
      return [{
        guest: qp.guest.id,
        qpNum: row.qpNum,
        qpHandle: row.qpHandle,
        qpType: qp.qpType,
        state: qp.state,
        destQpNum: connected ? qp.destQpNum : 0,
        dgid: connected ? qp.ahAttr.dgid : "",
        counters: { ...row.counters },
      }];
    });

  const execute = (cmd: Exclude<SequencedCommand, { cmd: "qpCounters" }>): number | undefined => {
    if (cmd.cmd === "stop") return undefined;
    if (cmd.cmd === "addGuest") {
      if (guests.has(cmd.guest)) throw new Error(`guest ${cmd.guest} exists`);
      guests.set(
        cmd.guest,
        new GuestDevice({
          id: cmd.guest,
          ip: cmd.ip,
          counters,
          host: hostTables,
          engine,
          onBroken: (queue, error) => post({ notice: "broken", guest: cmd.guest, queue, error }),
        }),
      );
      return undefined;
    }
    const guest = guests.get(cmd.guest);
    if (guest === undefined) {
      // An fd sent along is ours to close, even when the command fails.
      if (cmd.cmd === "setKick" || cmd.cmd === "setCall") closeFd(cmd.fd);
      throw new Error(`guest ${cmd.guest} is unknown`);
    }
    switch (cmd.cmd) {
      case "setMemory":
        guest.setMemory(cmd.regions);
        return undefined;
      case "setVring":
        guest.setVring(cmd.vring);
        return undefined;
      case "enableVring":
        guest.enableVring(cmd.index, cmd.enabled);
        return undefined;
      case "stopVring":
        return guest.stopVring(cmd.index);
      case "setKick": {
        const kick = guest.setKick(cmd.index, cmd.fd, (fd) => epoll.remove(fd));
        epoll.add(kick.fd, cmd.guest);
        // A kick may have come before the fd was watched.
        serve(guest, service);
        return undefined;
      }
      case "setCall":
        guest.setCall(cmd.index, cmd.fd);
        return undefined;
      case "setDoorbell":
        guest.setDoorbell(cmd.addr, cmd.queues);
        return undefined;
      case "notifyFatal":
        guest.postEvent({ type: EventType.DEVICE_FATAL, element: 0, info: cmd.errno });
        return undefined;
      case "removeGuest":
        quarantined.delete(cmd.guest);
        for (const fd of guest.kickFds) epoll.remove(fd);
        guest.destroy();
        guests.delete(cmd.guest);
        return undefined;
    }
  };

  post({ notice: "ready" });
  let expected = 0;
  let running = true;
  let spinUntil = 0;
  let awake = false;
  const setAwake = (on: boolean) => {
    if (awake === on) return;
    awake = on;
    // Through serve(): the flag is in guest memory, and a guest's bad
    // doorbell must quarantine that guest, not stop the loop for everyone.
    for (const g of guests.values()) serve(g, (guest) => (guest.setAwake(on), false));
  };

  while (running) {
    const spinning = performance.now() < spinUntil;
    if (!spinning && awake) {
      // Going to sleep: from now on guests must kick. Look once more, since a
      // guest may have rung the doorbell just before it saw the flag drop.
      setAwake(false);
      let worked = false;
      for (const g of guests.values()) worked = serve(g, service) || worked;
      if (worked) {
        spinUntil = performance.now() + SPIN_MS;
        setAwake(true);
        continue;
      }
    }
    // Held WRs (RNR waits, retries) bound the sleep; epoll counts whole
    // milliseconds, so a sub-millisecond wait is spent polling.
    const before = performance.now();
    const due = engine.nextTimeout(before);
    const sleep = spinning || due < 1 ? 0 : due === Infinity ? -1 : Math.floor(due);
    const n = epoll.wait(sleep);
    let worked = false;
    // Awake before serving: a guest that sees this round's completions and
    // posts again at once must find the flag set, or it kicks needlessly.
    if (n > 0 && !awake && guests.size > 0) setAwake(true);
    for (let i = 0; i < n; i++) {
      const token = epoll.tokenAt(i);
      if (token === CONTROL_TOKEN) {
        expected += Number(control.read());
        continue;
      }
      if (token === ROCE_TOKEN) {
        worked = pollRoce() || worked;
        continue;
      }
      const guest = guests.get(token);
      if (guest === undefined) continue;
      worked = serve(guest, (g) => (g.drainKicks(), g.service())) || worked;
    }
    if (spinning) {
      for (const g of guests.values()) worked = serve(g, service) || worked;
    }
    // Only when one is due: a retransmission timer is armed for every WR in
    // flight, and looking at all of them each round costs the hot path.
    if (due !== Infinity && performance.now() >= before + due) {
      try {
        engine.runTimers();
      } catch (e) {
        post({
          notice: "log",
          level: "error",
          message: `engine timers: ${(e as Error)?.stack ?? e}`,
        });
      }
    }
    while (expected > 0) {
      const cmd = await nextCommand();
      expected--;
      let reply: DataPlaneReply;
      try {
        reply = cmd.cmd === "qpCounters"
          ? { seq: cmd.seq, qps: qpCounterRows() }
          : { seq: cmd.seq, value: execute(cmd) };
      } catch (e) {
        reply = { seq: cmd.seq, error: (e as Error).message };
      }
      if (cmd.cmd === "stop") running = false;
      post(reply);
    }
    if (worked) {
      spinUntil = performance.now() + SPIN_MS;
      setAwake(true);
    } else if (spinning && n === 0) {
      // Polling found nothing: let a thread with work (a guest, the peer
      // host's Worker) have the core now. Machines with fewer cores than
      // busy threads otherwise lose a time slice per hand-off.
      yieldCpu();
    }
  }
  for (const g of guests.values()) g.destroy();
  guests.clear();
  engine.close();
  epoll.close();
  self.close();
}
