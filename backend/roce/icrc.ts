/**
 * The RoCEv2 invariant CRC (IBA annex A17) over IPv4.
 *
 * The ICRC is zlib's CRC-32 over, in order: 8 bytes of 0xFF (standing in for
 * the InfiniBand LRH), the IPv4 header with TOS, TTL and header checksum set
 * to all ones, the UDP header with its checksum all ones, the BTH with byte 4
 * (FECN, BECN, reserved) all ones, then every byte after the BTH up to the
 * ICRC. It is stored little-endian in the packet's last 4 bytes. The masked
 * fields are the ones routers may rewrite.
 *
 * Speed: the 48 bytes of masked headers are assembled in a small scratch
 * buffer and the rest of the packet is handed to `node:zlib`'s native
 * `crc32` as is, chained through its running value. No per-byte JavaScript
 * loop touches the payload.
 *
 * IP ID recovery: a plain UDP socket does not show the receiver the IPv4
 * Identification field, yet the ICRC covers it. {@linkcode recoverIpIds}
 * finds the IDs that make a packet's ICRC right (see there for how).
 *
 * @module
 */

import { crc32 } from "node:zlib";
import { BTH_BYTES, ICRC_BYTES } from "./opcodes.ts";

import { IPV4_DF, ROCE_PORT } from "./ipv4.ts";

/**
 * What the ICRC needs from the IPv4 and UDP headers around a RoCE packet.
 * Lengths are not here: they follow from the RoCE bytes (IPv4 header of 20
 * bytes without options, UDP 8, then BTH to ICRC).
 */
export interface IcrcFlow {
  /** IPv4 source address as a 32-bit number (see `parseIpv4` in ipv4.ts). */
  readonly srcIp: number;
  /** IPv4 destination address as a 32-bit number. */
  readonly dstIp: number;
  /** IPv4 Identification; default 0 (what a DF socket with PMTUDISC_DO sends). */
  readonly ipId?: number;
  /** IPv4 flags and fragment offset word; default {@linkcode IPV4_DF}. */
  readonly ipFlags?: number;
  /** UDP source port. */
  readonly srcPort: number;
  /** UDP destination port; default {@linkcode ROCE_PORT}. */
  readonly dstPort?: number;
}

const LRH_BYTES = 8;
const IPV4_BYTES = 20;
const UDP_BYTES = 8;
const IP_AT = LRH_BYTES;
const UDP_AT = IP_AT + IPV4_BYTES;
const BTH_AT = UDP_AT + UDP_BYTES;
const MASKED_BYTES = BTH_AT + BTH_BYTES;
// Where the IPv4 Identification sits in the masked block.
const IP_ID_AT = IP_AT + 4;

const scratch = new Uint8Array(MASKED_BYTES);
const scratchView = new DataView(scratch.buffer);

function checkRoceLength(roce: Uint8Array): void {
  if (roce.byteLength < BTH_BYTES + ICRC_BYTES) {
    throw new RangeError(
      `a RoCE packet has at least ${
        BTH_BYTES + ICRC_BYTES
      } bytes (BTH and ICRC), got ${roce.byteLength}`,
    );
  }
  if (roce.byteLength > 0xffff - IPV4_BYTES - UDP_BYTES) {
    throw new RangeError(`a RoCE packet of ${roce.byteLength} bytes does not fit in IPv4`);
  }
}

// Fills the scratch block: the masked LRH, IPv4, UDP and BTH.
function maskHeaders(flow: IcrcFlow, roce: Uint8Array, ipId: number): void {
  const v = scratchView;
  v.setUint32(0, 0xffffffff);
  v.setUint32(4, 0xffffffff);
  v.setUint8(IP_AT, 0x45);
  v.setUint8(IP_AT + 1, 0xff); // TOS masked
  v.setUint16(IP_AT + 2, IPV4_BYTES + UDP_BYTES + roce.byteLength);
  v.setUint16(IP_AT + 4, ipId);
  v.setUint16(IP_AT + 6, flow.ipFlags ?? IPV4_DF);
  v.setUint8(IP_AT + 8, 0xff); // TTL masked
  v.setUint8(IP_AT + 9, 17); // UDP
  v.setUint16(IP_AT + 10, 0xffff); // header checksum masked
  v.setUint32(IP_AT + 12, flow.srcIp);
  v.setUint32(IP_AT + 16, flow.dstIp);
  v.setUint16(UDP_AT, flow.srcPort);
  v.setUint16(UDP_AT + 2, flow.dstPort ?? ROCE_PORT);
  v.setUint16(UDP_AT + 4, UDP_BYTES + roce.byteLength);
  v.setUint16(UDP_AT + 6, 0xffff); // UDP checksum masked
  // Byte by byte: cheaper than a subarray per packet for 12 bytes.
  for (let i = 0; i < BTH_BYTES; i++) scratch[BTH_AT + i] = roce[i]!;
  scratch[BTH_AT + 4] = 0xff; // FECN, BECN, reserved masked
}

function icrcWithId(flow: IcrcFlow, roce: Uint8Array, ipId: number): number {
  checkRoceLength(roce);
  maskHeaders(flow, roce, ipId);
  const head = crc32(scratch);
  return crc32(roce.subarray(BTH_BYTES, roce.byteLength - ICRC_BYTES), head) >>> 0;
}

/**
 * The ICRC of `roce` (BTH up to and including the 4 ICRC bytes, whose value
 * is ignored) sent inside `flow`'s IPv4 and UDP headers.
 *
 * @example
 * ```ts
 * import { computeIcrc } from "./icrc.ts";
 * // RC ACK, QP 0x11, PSN 0, as sent 10.0.0.1:49441 -> 10.0.0.2, ID 0, DF.
 * const ack = new Uint8Array([0x11, 0, 0xff, 0xff, 0, 0, 0, 0x11, 0, 0, 0, 0, 0x1f, 0, 0, 1, 0, 0, 0, 0]);
 * const icrc = computeIcrc({ srcIp: 0x0a000001, dstIp: 0x0a000002, srcPort: 49441 }, ack);
 * if (!Number.isInteger(icrc) || icrc < 0 || icrc > 0xffffffff) throw new Error("u32");
 * ```
 */
export function computeIcrc(flow: IcrcFlow, roce: Uint8Array): number {
  return icrcWithId(flow, roce, flow.ipId ?? 0);
}

/** Computes the ICRC of `roce` and stores it little-endian in its last 4 bytes. */
export function writeIcrc(flow: IcrcFlow, roce: Uint8Array): void {
  const icrc = computeIcrc(flow, roce);
  const at = roce.byteLength - ICRC_BYTES;
  roce[at] = icrc & 0xff;
  roce[at + 1] = (icrc >>> 8) & 0xff;
  roce[at + 2] = (icrc >>> 16) & 0xff;
  roce[at + 3] = icrc >>> 24;
}

function storedIcrc(roce: Uint8Array): number {
  const at = roce.byteLength - ICRC_BYTES;
  return (roce[at]! | (roce[at + 1]! << 8) | (roce[at + 2]! << 16) | (roce[at + 3]! << 24)) >>> 0;
}

/**
 * Whether the ICRC stored in `roce` is right for `flow`. Packets too short
 * to hold a BTH and an ICRC are wrong, not errors.
 */
export function checkIcrc(flow: IcrcFlow, roce: Uint8Array): boolean {
  if (roce.byteLength < BTH_BYTES + ICRC_BYTES || roce.byteLength > 0xffff - 28) return false;
  return computeIcrc(flow, roce) === storedIcrc(roce);
}

// ---- IP ID recovery ------------------------------------------------------
//
// CRC-32 with zlib's pre- and post-inversion is affine over GF(2): for
// equal-length messages crc(a ^ b) = crc(a) ^ crc(b) ^ crc(0). So flipping
// bit i of the IP ID changes the CRC of the 48-byte masked block by a
// constant K[i] (whatever else the block holds), and the whole ICRC by
// K[i] carried through the bytes that follow, which is K[i] times x^(8n)
// modulo the CRC polynomial for n following bytes (what zlib's
// crc32_combine does). Call that D[i]. Then
//   icrc(ID) = icrc(0) ^ XOR of D[i] over the bits i set in ID,
// and "which IDs give the stored ICRC" is 32 linear equations in 16
// unknowns, solved below by Gaussian elimination. The D[i] are independent
// (distinct bit positions less than 32 apart, times an invertible factor),
// so at most one ID fits: an ICRC check with a recovered ID still catches
// corruption, with 16 of its 32 bits spent (a random corruption passes with
// probability 2^-16 instead of 2^-32).

// CRC-32 polynomial, bit-reversed (zlib's form: bit 31 is x^0).
const POLY = 0xedb88320;

// a * b modulo the polynomial, both in reflected form.
function mulMod(a: number, b: number): number {
  let product = 0;
  for (let m = 0x80000000; m !== 0; m >>>= 1) {
    if ((a & m) !== 0) product ^= b;
    b = (b & 1) !== 0 ? (b >>> 1) ^ POLY : b >>> 1;
  }
  return product >>> 0;
}

// X_POW_2K[k] = x^(2^k) mod the polynomial; x^1 is 0x40000000 reflected.
const X_POW_2K: Uint32Array = (() => {
  const table = new Uint32Array(32);
  let p = 0x40000000;
  for (let k = 0; k < 32; k++) {
    table[k] = p;
    p = mulMod(p, p);
  }
  return table;
})();

// x^(8 * bytes) mod the polynomial: the factor a CRC difference picks up by
// being followed by `bytes` more bytes.
function shiftFactor(bytes: number): number {
  let p = 0x80000000; // x^0
  let n = bytes * 8;
  for (let k = 0; n !== 0; k++, n = Math.floor(n / 2)) {
    if (n % 2 === 1) p = mulMod(X_POW_2K[k]!, p);
  }
  return p;
}

// K[i]: how bit i of the IP ID changes the CRC of the masked block.
const ID_BIT_IN_BLOCK: Uint32Array = (() => {
  const block = new Uint8Array(MASKED_BYTES);
  const zero = crc32(block);
  const k = new Uint32Array(16);
  for (let i = 0; i < 16; i++) {
    block.fill(0);
    new DataView(block.buffer).setUint16(IP_ID_AT, 1 << i);
    k[i] = (crc32(block) ^ zero) >>> 0;
  }
  return k;
})();

// The row-reduced D[i] for one packet length, kept per length: a peer's
// packets come in few lengths (full MTU segments, ACKs), so the reduction is
// done once per length instead of once per packet.
interface IdBasis {
  // pivotVec[bit]: a reduced vector whose highest set bit is `bit` (0: none).
  readonly pivotVec: Uint32Array;
  // pivotCombo[bit]: the ID bits whose D[i] XOR to pivotVec[bit].
  readonly pivotCombo: Uint32Array;
  // ID bit combinations whose D[i] XOR to 0 (none when the D[i] are independent).
  readonly freeCombos: readonly number[];
}

// Enough for every length a packet of MTU 4096 can have (about 300 bytes each,
// 1.3 MB at most), so a peer cycling through lengths cannot force the ~10 µs
// reduction on every packet; longer packets are not RoCE vrdma accepts.
const MAX_CACHED_BASES = 4096 + 128;
const bases = new Map<number, IdBasis>();

function idBasis(roceLength: number): IdBasis {
  const cached = bases.get(roceLength);
  if (cached !== undefined) return cached;
  const factor = shiftFactor(roceLength - BTH_BYTES - ICRC_BYTES);
  const pivotVec = new Uint32Array(32);
  const pivotCombo = new Uint32Array(32);
  const freeCombos: number[] = [];
  for (let i = 0; i < 16; i++) {
    let vec = mulMod(factor, ID_BIT_IN_BLOCK[i]!);
    let combo = 1 << i;
    for (let bit = 31; bit >= 0 && vec !== 0; bit--) {
      if (((vec >>> bit) & 1) === 0) continue;
      if (pivotVec[bit] === 0) {
        pivotVec[bit] = vec;
        pivotCombo[bit] = combo;
        vec = 0;
        combo = 0;
      } else {
        vec = (vec ^ pivotVec[bit]!) >>> 0;
        combo ^= pivotCombo[bit]!;
      }
    }
    if (combo !== 0) freeCombos.push(combo);
  }
  const basis = { pivotVec, pivotCombo, freeCombos };
  // Lengths a hostile peer chooses must not grow the cache without bound.
  if (bases.size >= MAX_CACHED_BASES) bases.delete(bases.keys().next().value!);
  bases.set(roceLength, basis);
  return basis;
}

// One ID whose ICRC differs from icrc(ID 0) by `delta`, or -1 when none does.
function solveId(basis: IdBasis, delta: number): number {
  let rest = delta >>> 0;
  let id = 0;
  for (let bit = 31; bit >= 0 && rest !== 0; bit--) {
    if (((rest >>> bit) & 1) === 0) continue;
    if (basis.pivotVec[bit] === 0) return -1;
    rest = (rest ^ basis.pivotVec[bit]!) >>> 0;
    id ^= basis.pivotCombo[bit]!;
  }
  return id;
}

/**
 * The IPv4 Identification values that make the ICRC stored in `roce` right
 * for `flow` (whose `ipId` is ignored): one ID for a packet that arrived
 * intact, usually none for a corrupted one. Every other header field must be
 * known; for rxe peers that is DF set (the default `ipFlags`).
 *
 * Cost: one ICRC pass plus about 10 µs of bit arithmetic the first time a
 * length is seen, well under 1 µs after. See the module source for the method
 * (CRC linearity).
 *
 * @example
 * ```ts
 * import { recoverIpIds, writeIcrc } from "./icrc.ts";
 * const flow = { srcIp: 0x7f000001, dstIp: 0x7f000002, srcPort: 49441 };
 * const ack = new Uint8Array([0x11, 0, 0xff, 0xff, 0, 0, 0, 0x11, 0, 0, 0, 0, 0x1f, 0, 0, 1, 0, 0, 0, 0]);
 * writeIcrc({ ...flow, ipId: 0xbeef }, ack);
 * const ids = recoverIpIds(flow, ack);
 * if (ids.length !== 1 || ids[0] !== 0xbeef) throw new Error(`recovered ${ids}`);
 * ```
 */
export function recoverIpIds(flow: IcrcFlow, roce: Uint8Array): number[] {
  if (roce.byteLength < BTH_BYTES + ICRC_BYTES || roce.byteLength > 0xffff - 28) return [];
  const basis = idBasis(roce.byteLength);
  const id = solveId(basis, storedIcrc(roce) ^ icrcWithId(flow, roce, 0));
  if (id < 0) return [];
  let ids = [id];
  for (const free of basis.freeCombos) ids = ids.concat(ids.map((x) => x ^ free));
  return ids.sort((a, b) => a - b);
}

/**
 * Verifies the ICRC of a packet whose IPv4 Identification the receiver did
 * not see (a plain UDP socket hides it): the ID that makes the stored ICRC
 * right, or -1 when none does (the packet is corrupt). ID 0, what every
 * vrdma sender and any DF socket uses, is tried first at the price of one
 * ICRC pass; any other ID costs a few hundred nanoseconds more.
 *
 * How strong the check is: 16 of the ICRC's 32 bits go into finding the ID,
 * so a corrupted packet passes with probability 2^-16 instead of 2^-32. A
 * receiver that sees the real IP header (a raw socket) checks all 32 bits
 * with {@linkcode checkIcrc} instead.
 *
 * @example
 * ```ts
 * import { verifyIcrcAnyId, writeIcrc } from "./icrc.ts";
 * const flow = { srcIp: 0x0a630002, dstIp: 0x0a630001, srcPort: 49441 };
 * const ack = new Uint8Array([0x11, 0, 0xff, 0xff, 0, 0, 0, 0x11, 0, 0, 0, 0, 0x1f, 0, 0, 1, 0, 0, 0, 0]);
 * writeIcrc({ ...flow, ipId: 0x1234 }, ack);
 * if (verifyIcrcAnyId(flow, ack) !== 0x1234) throw new Error("ID not recovered");
 * ack[13] = ack[13]! ^ 1; // corrupt the AETH
 * if (verifyIcrcAnyId(flow, ack) === 0x1234) throw new Error("corruption passed");
 * ```
 */
export function verifyIcrcAnyId(flow: IcrcFlow, roce: Uint8Array): number {
  if (roce.byteLength < BTH_BYTES + ICRC_BYTES || roce.byteLength > 0xffff - 28) return -1;
  const delta = (storedIcrc(roce) ^ icrcWithId(flow, roce, 0)) >>> 0;
  if (delta === 0) return 0;
  const basis = idBasis(roce.byteLength);
  // With dependent D[i] (never seen: see above) an ID would be ambiguous: refuse.
  if (basis.freeCombos.length !== 0) return -1;
  return solveId(basis, delta);
}
