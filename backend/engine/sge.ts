/**
 * Local scatter/gather entries: checked against the MR their lkey names, and
 * turned into views of guest memory the copy loops use.
 *
 * @module
 */

import { Access } from "../../protocol/verbs.ts";
import type { ParsedWqe } from "./wqe_reader.ts";
import type { EngineGuest, EngineHost, EngineQp } from "./types.ts";

/** Views of the bytes a WQE's SGEs cover, reused from WR to WR. */
export class SgeViews {
  /** The views, `count` valid. */
  readonly views: Uint8Array[] = [];
  /** Views in use. */
  count = 0;
  /** Total bytes. */
  total = 0;

  /** Empties the list. */
  reset(): void {
    this.count = 0;
    this.total = 0;
  }

  /** Appends a view. */
  push(view: Uint8Array): void {
    if (this.count < this.views.length) this.views[this.count] = view;
    else this.views.push(view);
    this.count++;
    this.total += view.length;
  }
}

/**
 * Resolves the SGEs of `wqe` posted on `qp` of `guest` into `out`. Each lkey
 * must name a live MR of the same guest and PD, cover the range, and allow
 * local writes when `write` (the device stores into it). Returns false on any
 * violation (LOC_PROT_ERR). Zero-length SGEs are skipped unchecked, as rxe does.
 */
export function resolveLocal(
  host: EngineHost,
  guest: EngineGuest,
  qp: EngineQp,
  wqe: ParsedWqe,
  write: boolean,
  out: SgeViews,
): boolean {
  out.reset();
  for (let i = 0; i < wqe.numSge; i++) {
    const len = wqe.sgeLen[i]!;
    if (len === 0) continue;
    const addr = wqe.sgeAddr[i]!;
    const found = host.mr(wqe.sgeKey[i]!);
    if (found === undefined || found.guest !== guest) return false;
    const mr = found.mr;
    if (mr.lkey !== wqe.sgeKey[i] || mr.pd !== qp.pd) return false;
    if (write && (mr.access & Access.LOCAL_WRITE) === 0) return false;
    if (addr < mr.addr || addr + len > mr.addr + mr.length) return false;
    out.push(guest.memory.bytes(addr, len));
  }
  return true;
}

/** Copies the bytes of `src` views into `dst` views, in order; returns bytes copied. */
export function copyViews(src: SgeViews, dst: SgeViews): number {
  let di = 0, doff = 0, copied = 0;
  for (let si = 0; si < src.count; si++) {
    const s = src.views[si]!;
    let soff = 0;
    while (soff < s.length && di < dst.count) {
      const d = dst.views[di]!;
      const n = Math.min(s.length - soff, d.length - doff);
      d.set(s.subarray(soff, soff + n), doff);
      soff += n;
      doff += n;
      copied += n;
      if (doff === d.length) {
        di++;
        doff = 0;
      }
    }
  }
  return copied;
}
