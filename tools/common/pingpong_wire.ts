/**
 * The out-of-band address message of rdma-core's `ibv_rc_pingpong` and
 * `ibv_ud_pingpong`, byte for byte, so vrdma's pingpong talks to the real
 * tools over TCP.
 *
 * Each side sends one 52-byte message: `sprintf("%04x:%06x:%06x:%s", lid,
 * qpn, psn, gid)` plus its NUL, where `gid` is 32 lowercase hex digits of the
 * 16 GID bytes in wire order (rdma-core's `gid_to_wire_gid`: four big-endian
 * 32-bit words). The client then sends `done` and its NUL (5 bytes).
 *
 * @module
 */

import { formatGid } from "../../protocol/device_config.ts";

/** Bytes of one address message: `sizeof "0000:000000:000000:" + 32 hex digits`, NUL included. */
export const DEST_MESSAGE_BYTES = 52;

/** What the client sends after reading the server's address: `"done"` and its NUL. */
export const DONE_MESSAGE: Uint8Array = new TextEncoder().encode("done\0");

/** One side's address, as `struct pingpong_dest` holds it. */
export interface PingpongDest {
  /** Local identifier (0 on RoCE), 16 bits. */
  lid: number;
  /** QP number, 24 bits. */
  qpn: number;
  /** Initial packet sequence number, 24 bits. */
  psn: number;
  /** The 16 GID bytes in wire order (all zero when the peer sent no GID). */
  gid: Uint8Array;
}

function hex(value: number, digits: number): string {
  return value.toString(16).padStart(digits, "0");
}

/**
 * The GID as rdma-core's `gid_to_wire_gid` writes it: 32 lowercase hex digits.
 *
 * @example
 * ```ts
 * import { gidToWire } from "./pingpong_wire.ts";
 * import { parseGid } from "../../protocol/device_config.ts";
 * const wire = gidToWire(parseGid("::ffff:10.99.0.3"));
 * if (wire !== "00000000000000000000ffff0a630003") throw new Error(wire);
 * ```
 */
export function gidToWire(gid: Uint8Array): string {
  if (gid.length !== 16) throw new RangeError(`a GID is 16 bytes, got ${gid.length}`);
  return Array.from(gid, (b) => hex(b, 2)).join("");
}

/**
 * Parses 32 hex digits into the 16 GID bytes (`wire_gid_to_gid`). Throws a
 * `SyntaxError` naming the text when it is not 32 hex digits.
 */
export function wireToGid(text: string): Uint8Array {
  if (!/^[0-9a-fA-F]{32}$/.test(text)) {
    throw new SyntaxError(`GID "${text}" is not 32 hex digits`);
  }
  const out = new Uint8Array(16);
  for (let i = 0; i < 16; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/**
 * Encodes an address message: 51 characters and a NUL.
 *
 * @example
 * ```ts
 * import { decodeDest, encodeDest } from "./pingpong_wire.ts";
 * import { parseGid } from "../../protocol/device_config.ts";
 * const msg = encodeDest({ lid: 0, qpn: 0x11, psn: 0x214fec, gid: parseGid("::ffff:10.99.0.3") });
 * const text = new TextDecoder().decode(msg);
 * if (text !== "0000:000011:214fec:00000000000000000000ffff0a630003\0") throw new Error(text);
 * if (decodeDest(msg).psn !== 0x214fec) throw new Error("round trip");
 * ```
 */
export function encodeDest(dest: PingpongDest): Uint8Array {
  const fields: [string, number, number][] = [
    ["lid", dest.lid, 0xffff],
    ["qpn", dest.qpn, 0xffffff],
    ["psn", dest.psn, 0xffffff],
  ];
  for (const [name, value, max] of fields) {
    if (!Number.isInteger(value) || value < 0 || value > max) {
      throw new RangeError(`${name} ${value} is not in 0..0x${max.toString(16)}`);
    }
  }
  const text = `${hex(dest.lid, 4)}:${hex(dest.qpn, 6)}:${hex(dest.psn, 6)}:${gidToWire(dest.gid)}`;
  const out = new Uint8Array(DEST_MESSAGE_BYTES);
  out.set(new TextEncoder().encode(text));
  return out;
}

/**
 * Decodes an address message as rdma-core's `sscanf("%x:%x:%x:%s")` reads
 * it, but strictly: three hex fields and 32 hex GID digits, then a NUL.
 * Throws a `SyntaxError` quoting the message when it is anything else.
 */
export function decodeDest(bytes: Uint8Array): PingpongDest {
  const end = bytes.indexOf(0);
  const text = new TextDecoder().decode(bytes.subarray(0, end < 0 ? bytes.length : end));
  const m = /^([0-9a-fA-F]{1,4}):([0-9a-fA-F]{1,6}):([0-9a-fA-F]{1,6}):([0-9a-fA-F]{32})$/.exec(
    text,
  );
  if (m === null) {
    throw new SyntaxError(
      `peer address ${JSON.stringify(text)} is not "LID:QPN:PSN:GID" (hex, GID 32 digits)`,
    );
  }
  return {
    lid: parseInt(m[1]!, 16),
    qpn: parseInt(m[2]!, 16),
    psn: parseInt(m[3]!, 16),
    gid: wireToGid(m[4]!),
  };
}

/** True when the GID's interface id (its last 8 bytes) is zero: rdma-core then sends no GRH. */
export function isNullGid(gid: Uint8Array): boolean {
  return gid.subarray(8, 16).every((b) => b === 0);
}

/**
 * IPv6 text of a GID as glibc's `inet_ntop(AF_INET6)` prints it: longest run
 * of two or more zero words compressed (the first of equals), lowercase hex,
 * and the last 32 bits in dotted form for IPv4-mapped (`::ffff:a.b.c.d`) and
 * IPv4-compatible (`::a.b.c.d`) addresses.
 *
 * @example
 * ```ts
 * import { inetNtop6 } from "./pingpong_wire.ts";
 * import { parseGid } from "../../protocol/device_config.ts";
 * if (inetNtop6(parseGid("::ffff:127.0.0.2")) !== "::ffff:127.0.0.2") throw new Error("mapped");
 * if (inetNtop6(new Uint8Array(16)) !== "::") throw new Error("zero");
 * ```
 */
export function inetNtop6(gid: Uint8Array): string {
  if (gid.length !== 16) throw new RangeError(`a GID is 16 bytes, got ${gid.length}`);
  // glibc's rule for an IPv4-compatible address: the leading zero run covers
  // exactly six words. Everything else (IPv4-mapped included) it prints as
  // formatGid does.
  const compatible = gid.subarray(0, 12).every((b) => b === 0) && (gid[12]! | gid[13]!) !== 0;
  if (compatible) return `::${gid[12]}.${gid[13]}.${gid[14]}.${gid[15]}`;
  return formatGid(gid);
}
