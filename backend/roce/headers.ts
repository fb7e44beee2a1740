/**
 * RoCEv2 header access in two layers, as Linux soft-RoCE's `rxe_hdr.h`:
 *
 * 1. Raw accessors: `bthPsn(view, at)`, `setRethVa(view, at, va)`, ... read
 *    or write one field of one header that starts at byte `at` of a
 *    `DataView`. They know field layouts and nothing else.
 * 2. {@linkcode RocePacket}: a packet (BTH to ICRC) plus its opcode table row;
 *    its getters find each header's offset through the table and then use
 *    the raw accessors. Asking for a header the opcode does not carry is a
 *    programming error and throws `TypeError`.
 *
 * All fields are big-endian; only the ICRC is stored little-endian.
 *
 * @module
 */

import { ICRC_BYTES, type OpcodeInfo } from "./opcodes.ts";

// ---- BTH (12 bytes) ------------------------------------------------------

/** BTH opcode (byte 0). */
export function bthOpcode(view: DataView, at: number): number {
  return view.getUint8(at);
}
/** Sets the BTH opcode. */
export function setBthOpcode(view: DataView, at: number, opcode: number): void {
  view.setUint8(at, opcode);
}

// Byte 1 packs four fields; the setters keep the other bits as they are.
function setBits(view: DataView, at: number, mask: number, bits: number): void {
  view.setUint8(at, (view.getUint8(at) & ~mask) | (bits & mask));
}

/** BTH solicited event bit. */
export function bthSe(view: DataView, at: number): boolean {
  return (view.getUint8(at + 1) & 0x80) !== 0;
}
/** Sets the BTH solicited event bit. */
export function setBthSe(view: DataView, at: number, se: boolean): void {
  setBits(view, at + 1, 0x80, se ? 0x80 : 0);
}
/** BTH migration request bit. */
export function bthMig(view: DataView, at: number): boolean {
  return (view.getUint8(at + 1) & 0x40) !== 0;
}
/** Sets the BTH migration request bit. */
export function setBthMig(view: DataView, at: number, mig: boolean): void {
  setBits(view, at + 1, 0x40, mig ? 0x40 : 0);
}
/** BTH pad count: bytes of pad between payload and ICRC (0-3). */
export function bthPadCnt(view: DataView, at: number): number {
  return (view.getUint8(at + 1) >>> 4) & 3;
}
/** Sets the BTH pad count (0-3). */
export function setBthPadCnt(view: DataView, at: number, padCnt: number): void {
  setBits(view, at + 1, 0x30, padCnt << 4);
}
/** BTH transport header version (0 is the only one defined). */
export function bthTver(view: DataView, at: number): number {
  return view.getUint8(at + 1) & 0x0f;
}
/** Sets the BTH transport header version. */
export function setBthTver(view: DataView, at: number, tver: number): void {
  setBits(view, at + 1, 0x0f, tver);
}
/** BTH partition key. */
export function bthPkey(view: DataView, at: number): number {
  return view.getUint16(at + 2);
}
/** Sets the BTH partition key. */
export function setBthPkey(view: DataView, at: number, pkey: number): void {
  view.setUint16(at + 2, pkey);
}
/** BTH forward congestion notification bit. */
export function bthFecn(view: DataView, at: number): boolean {
  return (view.getUint8(at + 4) & 0x80) !== 0;
}
/** Sets the BTH FECN bit. */
export function setBthFecn(view: DataView, at: number, fecn: boolean): void {
  setBits(view, at + 4, 0x80, fecn ? 0x80 : 0);
}
/** BTH backward congestion notification bit. */
export function bthBecn(view: DataView, at: number): boolean {
  return (view.getUint8(at + 4) & 0x40) !== 0;
}
/** Sets the BTH BECN bit. */
export function setBthBecn(view: DataView, at: number, becn: boolean): void {
  setBits(view, at + 4, 0x40, becn ? 0x40 : 0);
}
/** BTH destination QP number (24 bits). */
export function bthDestQp(view: DataView, at: number): number {
  return view.getUint32(at + 4) & 0xffffff;
}
/** Sets the BTH destination QP number; byte 4 (FECN, BECN) is kept. */
export function setBthDestQp(view: DataView, at: number, qpn: number): void {
  view.setUint8(at + 5, qpn >>> 16);
  view.setUint16(at + 6, qpn & 0xffff);
}
/** BTH acknowledge request bit. */
export function bthAckReq(view: DataView, at: number): boolean {
  return (view.getUint8(at + 8) & 0x80) !== 0;
}
/** Sets the BTH acknowledge request bit. */
export function setBthAckReq(view: DataView, at: number, ackReq: boolean): void {
  setBits(view, at + 8, 0x80, ackReq ? 0x80 : 0);
}
/** BTH packet sequence number (24 bits). */
export function bthPsn(view: DataView, at: number): number {
  return view.getUint32(at + 8) & 0xffffff;
}
/** Sets the BTH PSN; byte 8 (AckReq) is kept. */
export function setBthPsn(view: DataView, at: number, psn: number): void {
  view.setUint8(at + 9, psn >>> 16);
  view.setUint16(at + 10, psn & 0xffff);
}

// ---- RETH (16 bytes): VA 8, R_Key 4, DMA length 4 -----------------------

/** RETH virtual address. */
export function rethVa(view: DataView, at: number): bigint {
  return view.getBigUint64(at);
}
/** Sets the RETH virtual address. */
export function setRethVa(view: DataView, at: number, va: bigint): void {
  view.setBigUint64(at, va);
}
/** RETH R_Key. */
export function rethRkey(view: DataView, at: number): number {
  return view.getUint32(at + 8);
}
/** Sets the RETH R_Key. */
export function setRethRkey(view: DataView, at: number, rkey: number): void {
  view.setUint32(at + 8, rkey);
}
/** RETH DMA length: bytes of the whole message. */
export function rethDmaLen(view: DataView, at: number): number {
  return view.getUint32(at + 12);
}
/** Sets the RETH DMA length. */
export function setRethDmaLen(view: DataView, at: number, dmaLen: number): void {
  view.setUint32(at + 12, dmaLen);
}

// ---- AtomicETH (28 bytes): VA 8, R_Key 4, swap/add 8, compare 8 ---------

/** AtomicETH virtual address. */
export function atomicEthVa(view: DataView, at: number): bigint {
  return view.getBigUint64(at);
}
/** Sets the AtomicETH virtual address. */
export function setAtomicEthVa(view: DataView, at: number, va: bigint): void {
  view.setBigUint64(at, va);
}
/** AtomicETH R_Key. */
export function atomicEthRkey(view: DataView, at: number): number {
  return view.getUint32(at + 8);
}
/** Sets the AtomicETH R_Key. */
export function setAtomicEthRkey(view: DataView, at: number, rkey: number): void {
  view.setUint32(at + 8, rkey);
}
/** AtomicETH swap (compare-and-swap) or add (fetch-and-add) operand. */
export function atomicEthSwapAdd(view: DataView, at: number): bigint {
  return view.getBigUint64(at + 12);
}
/** Sets the AtomicETH swap-or-add operand. */
export function setAtomicEthSwapAdd(view: DataView, at: number, value: bigint): void {
  view.setBigUint64(at + 12, value);
}
/** AtomicETH compare operand (compare-and-swap only). */
export function atomicEthCompare(view: DataView, at: number): bigint {
  return view.getBigUint64(at + 20);
}
/** Sets the AtomicETH compare operand. */
export function setAtomicEthCompare(view: DataView, at: number, value: bigint): void {
  view.setBigUint64(at + 20, value);
}

// ---- AETH (4 bytes): syndrome 1, MSN 3 ----------------------------------

/** AETH syndrome: ACK 0x00-0x1F, RNR NAK 0x20-0x3F, NAK 0x60-0x63. */
export function aethSyndrome(view: DataView, at: number): number {
  return view.getUint8(at);
}
/** Sets the AETH syndrome. */
export function setAethSyndrome(view: DataView, at: number, syndrome: number): void {
  view.setUint8(at, syndrome);
}
/** AETH message sequence number (24 bits). */
export function aethMsn(view: DataView, at: number): number {
  return view.getUint32(at) & 0xffffff;
}
/** Sets the AETH MSN; the syndrome byte is kept. */
export function setAethMsn(view: DataView, at: number, msn: number): void {
  view.setUint8(at + 1, msn >>> 16);
  view.setUint16(at + 2, msn & 0xffff);
}

// ---- AtomicAckETH (8 bytes), ImmDt (4), IETH (4), DETH (8) --------------

/** AtomicAckETH original remote data. */
export function atomicAckEthOrigData(view: DataView, at: number): bigint {
  return view.getBigUint64(at);
}
/** Sets the AtomicAckETH original remote data. */
export function setAtomicAckEthOrigData(view: DataView, at: number, value: bigint): void {
  view.setBigUint64(at, value);
}
/** ImmDt immediate data, as the 32-bit number read big-endian. */
export function immDt(view: DataView, at: number): number {
  return view.getUint32(at);
}
/** Sets ImmDt. */
export function setImmDt(view: DataView, at: number, imm: number): void {
  view.setUint32(at, imm);
}
/** IETH R_Key to invalidate. */
export function iethRkey(view: DataView, at: number): number {
  return view.getUint32(at);
}
/** Sets the IETH R_Key. */
export function setIethRkey(view: DataView, at: number, rkey: number): void {
  view.setUint32(at, rkey);
}
/** DETH Q_Key. */
export function dethQkey(view: DataView, at: number): number {
  return view.getUint32(at);
}
/** Sets the DETH Q_Key. */
export function setDethQkey(view: DataView, at: number, qkey: number): void {
  view.setUint32(at, qkey);
}
/** DETH source QP number (24 bits after a reserved byte). */
export function dethSrcQp(view: DataView, at: number): number {
  return view.getUint32(at + 4) & 0xffffff;
}
/** Sets the DETH source QP number and clears the reserved byte. */
export function setDethSrcQp(view: DataView, at: number, qpn: number): void {
  view.setUint32(at + 4, qpn & 0xffffff);
}

// ---- packet layer --------------------------------------------------------

/**
 * One RoCE packet (BTH up to and including the ICRC) with the table row of
 * its opcode. Field getters find their header through the table.
 *
 * {@linkcode parsePacket} in `packet.ts` is the way to get one from untrusted
 * bytes: it checks every length first, so the getters of a parsed packet
 * stay inside `bytes`. The constructor trusts its caller.
 *
 * @example
 * ```ts
 * import { RocePacket } from "./headers.ts";
 * import { Opcode, opcodeInfo } from "./opcodes.ts";
 * // RC ACK to QP 0x11, PSN 7, syndrome 0x1F (no credits), MSN 3, ICRC left 0.
 * const bytes = new Uint8Array([
 *   0x11, 0, 0xff, 0xff, 0, 0, 0, 0x11, 0, 0, 0, 7, 0x1f, 0, 0, 3, 0, 0, 0, 0,
 * ]);
 * const ack = new RocePacket(bytes, opcodeInfo(Opcode.RC_ACKNOWLEDGE)!);
 * if (ack.destQp !== 0x11 || ack.psn !== 7 || ack.syndrome !== 0x1f || ack.msn !== 3) {
 *   throw new Error("ACK fields");
 * }
 * ```
 */
export class RocePacket {
  /** The packet bytes, BTH to ICRC. */
  readonly bytes: Uint8Array;
  /** The opcode's table row. */
  readonly info: OpcodeInfo;
  /** A view over exactly {@linkcode RocePacket.bytes}. */
  readonly view: DataView;

  /** Wraps `bytes` (BTH to ICRC) whose opcode is `info`; nothing is checked. */
  constructor(bytes: Uint8Array, info: OpcodeInfo) {
    this.bytes = bytes;
    this.info = info;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  #at(offset: number, header: string): number {
    if (offset < 0) throw new TypeError(`${this.info.name} carries no ${header}`);
    return offset;
  }

  /** BTH opcode. */
  get opcode(): number {
    return bthOpcode(this.view, 0);
  }
  /** BTH solicited event. */
  get se(): boolean {
    return bthSe(this.view, 0);
  }
  /** BTH migration request. */
  get mig(): boolean {
    return bthMig(this.view, 0);
  }
  /** BTH pad count. */
  get padCnt(): number {
    return bthPadCnt(this.view, 0);
  }
  /** BTH transport header version. */
  get tver(): number {
    return bthTver(this.view, 0);
  }
  /** BTH partition key. */
  get pkey(): number {
    return bthPkey(this.view, 0);
  }
  /** BTH FECN. */
  get fecn(): boolean {
    return bthFecn(this.view, 0);
  }
  /** BTH BECN. */
  get becn(): boolean {
    return bthBecn(this.view, 0);
  }
  /** BTH destination QP number. */
  get destQp(): number {
    return bthDestQp(this.view, 0);
  }
  /** BTH acknowledge request. */
  get ackReq(): boolean {
    return bthAckReq(this.view, 0);
  }
  /** BTH packet sequence number. */
  get psn(): number {
    return bthPsn(this.view, 0);
  }

  /** RETH virtual address; `TypeError` if the opcode has no RETH. */
  get rethVa(): bigint {
    return rethVa(this.view, this.#at(this.info.offsets.reth, "RETH"));
  }
  /** RETH R_Key. */
  get rethRkey(): number {
    return rethRkey(this.view, this.#at(this.info.offsets.reth, "RETH"));
  }
  /** RETH DMA length. */
  get rethDmaLen(): number {
    return rethDmaLen(this.view, this.#at(this.info.offsets.reth, "RETH"));
  }
  /** AtomicETH virtual address. */
  get atomicVa(): bigint {
    return atomicEthVa(this.view, this.#at(this.info.offsets.atomicEth, "AtomicETH"));
  }
  /** AtomicETH R_Key. */
  get atomicRkey(): number {
    return atomicEthRkey(this.view, this.#at(this.info.offsets.atomicEth, "AtomicETH"));
  }
  /** AtomicETH swap-or-add operand. */
  get swapAdd(): bigint {
    return atomicEthSwapAdd(this.view, this.#at(this.info.offsets.atomicEth, "AtomicETH"));
  }
  /** AtomicETH compare operand. */
  get compare(): bigint {
    return atomicEthCompare(this.view, this.#at(this.info.offsets.atomicEth, "AtomicETH"));
  }
  /** AETH syndrome. */
  get syndrome(): number {
    return aethSyndrome(this.view, this.#at(this.info.offsets.aeth, "AETH"));
  }
  /** AETH MSN. */
  get msn(): number {
    return aethMsn(this.view, this.#at(this.info.offsets.aeth, "AETH"));
  }
  /** AtomicAckETH original remote data. */
  get origData(): bigint {
    return atomicAckEthOrigData(
      this.view,
      this.#at(this.info.offsets.atomicAckEth, "AtomicAckETH"),
    );
  }
  /** Immediate data. */
  get immDt(): number {
    return immDt(this.view, this.#at(this.info.offsets.immDt, "ImmDt"));
  }
  /** IETH R_Key to invalidate. */
  get iethRkey(): number {
    return iethRkey(this.view, this.#at(this.info.offsets.ieth, "IETH"));
  }
  /** DETH Q_Key. */
  get qkey(): number {
    return dethQkey(this.view, this.#at(this.info.offsets.deth, "DETH"));
  }
  /** DETH source QP number. */
  get srcQp(): number {
    return dethSrcQp(this.view, this.#at(this.info.offsets.deth, "DETH"));
  }

  /** Bytes of payload (without pad); 0 for opcodes without payload. */
  get payloadLength(): number {
    return this.bytes.byteLength - this.info.length - this.padCnt - ICRC_BYTES;
  }
  /** The payload bytes (a view, not a copy). */
  get payload(): Uint8Array {
    const start = this.info.length;
    // A negative end would count from the end of the buffer: never pass one.
    const length = Math.max(0, this.payloadLength);
    return this.bytes.subarray(start, start + length);
  }
  /** The ICRC as stored (little-endian in the last 4 bytes). */
  get icrc(): number {
    return this.view.getUint32(this.bytes.byteLength - ICRC_BYTES, true);
  }
}
