/**
 * Classic BPF socket filters (`SO_ATTACH_FILTER`): the programs the UDP
 * layer attaches so the kernel drops what a socket has no use for, before it
 * is queued.
 *
 * Layouts are x86_64 Linux: `struct sock_filter` 8 bytes (code u16, jt u8,
 * jf u8, k u32), `struct sock_fprog` 16 (length u16, filter pointer at 8).
 *
 * @module
 */

import { lastError } from "../../virtqueue/sys/libc.ts";
import { addressOf, pinned, SO_ATTACH_FILTER, SOL_SOCKET, sys } from "./socket_calls.ts";

/** One classic BPF instruction: code, jump-if-true, jump-if-false, constant. */
export type BpfInstruction = readonly [code: number, jt: number, jf: number, k: number];

/**
 * Attaches a classic BPF program (`SO_ATTACH_FILTER`): it decides which datagrams the socket keeps.
 *
 * @throws {SysError} from `setsockopt`, naming `target`.
 */
export function attachFilter(fd: number, program: readonly BpfInstruction[], target: string): void {
  const code = pinned(program.length * 8);
  const view = new DataView(code.buffer);
  program.forEach(([op, jt, jf, k], i) => {
    view.setUint16(i * 8, op, true);
    view.setUint8(i * 8 + 2, jt);
    view.setUint8(i * 8 + 3, jf);
    view.setUint32(i * 8 + 4, k, true);
  });
  const fprog = pinned(16);
  const fview = new DataView(fprog.buffer);
  fview.setUint16(0, program.length, true);
  fview.setBigUint64(8, addressOf(code), true);
  if (sys().setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, fprog, 16) < 0) {
    throw lastError("setsockopt", { target, note: "SO_ATTACH_FILTER" });
  }
}

// Classic BPF opcodes (linux/filter.h).
const BPF_LD_B_ABS = 0x30;
const BPF_LD_H_ABS = 0x28;
const BPF_JEQ_K = 0x15;
const BPF_JEQ_X = 0x1d;
const BPF_JSET_K = 0x45;
const BPF_ADD_K = 0x04;
const BPF_TAX = 0x07;
const BPF_RET_K = 0x06;

/** A filter that keeps nothing: for sockets that only send. */
export const DROP_ALL: readonly BpfInstruction[] = [[BPF_RET_K, 0, 0, 0]];

/**
 * A filter for a raw `IPPROTO_UDP` socket, whose programs see the packet from
 * the IPv4 header on: keep datagrams with a plain 20-byte header, not
 * fragments, whose UDP length agrees with the IPv4 length, and (if given)
 * to `port`. What is kept then always has its payload at byte 28.
 *
 * @example
 * ```ts
 * import { udpFilter } from "./bpf_filter.ts";
 * const program = udpFilter(4791);
 * // The last two instructions return: keep (256 KiB of it), then drop.
 * const [accept, drop] = program.slice(-2);
 * if (program.length !== 13 || accept?.[3] !== 0x4_0000 || drop?.[3] !== 0) {
 *   throw new Error("unexpected program");
 * }
 * ```
 */
export function udpFilter(port: number | undefined): BpfInstruction[] {
  const accept: BpfInstruction = [BPF_RET_K, 0, 0, 0x4_0000];
  const drop: BpfInstruction = [BPF_RET_K, 0, 0, 0];
  const head: BpfInstruction[] = [
    [BPF_LD_B_ABS, 0, 0, 0],
    [BPF_JEQ_K, 0, 0, 0x45], // jf patched below
    [BPF_LD_H_ABS, 0, 0, 6],
    [BPF_JSET_K, 0, 0, 0x3fff], // jt patched
    [BPF_LD_H_ABS, 0, 0, 2],
    [BPF_TAX, 0, 0, 0],
    [BPF_LD_H_ABS, 0, 0, 24],
    [BPF_ADD_K, 0, 0, 20],
    [BPF_JEQ_X, 0, 0, 0], // jf patched
  ];
  if (port !== undefined) {
    head.push([BPF_LD_H_ABS, 0, 0, 22], [BPF_JEQ_K, 0, 0, port]);
  }
  const program = [...head, accept, drop];
  const dropAt = program.length - 1;
  // Jump offsets count from the next instruction.
  const to = (from: number): number => dropAt - from - 1;
  program[1] = [BPF_JEQ_K, 0, to(1), 0x45];
  program[3] = [BPF_JSET_K, to(3), 0, 0x3fff];
  program[8] = [BPF_JEQ_X, 0, to(8), 0];
  if (port !== undefined) program[10] = [BPF_JEQ_K, 0, to(10), port];
  return program;
}
