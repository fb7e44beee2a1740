/**
 * ALLOC_PD, DEALLOC_PD, REG_MR, DEREG_MR.
 *
 * @module
 */

import { Errno } from "../../protocol/device_interface.ts";
import { Access, ACCESS_MASK } from "../../protocol/verbs.ts";
import { addrField, checkKeys, CommandError, type Fields, intField, invalid } from "./fields.ts";
import type { GuestState } from "./guest_state.ts";
import type { Mr, Pd } from "./objects.ts";

/** Access bits vrdma does not implement (memory windows, zero-based and on-demand MRs). */
const UNSUPPORTED_ACCESS = Access.MW_BIND | Access.ZERO_BASED | Access.ON_DEMAND;

/** ALLOC_PD `{}` -> `{pd}`. */
export function allocPd(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op"]);
  state.pds.checkRoom(state.limits.maxPd);
  const pd = state.pds.add((handle): Pd => ({ handle, guest: state.guest, live: true }));
  state.count("pds", 1);
  return { pd: pd.handle };
}

/** DEALLOC_PD `{pd}` -> `{}`; EBUSY while MRs, QPs, SRQs or AHs use it. */
export function deallocPd(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op", "pd"]);
  const pd = state.pds.find(cmd);
  state.checkUnused(pd, "pd", "MRs, QPs, SRQs or AHs");
  destroyPd(state, pd);
  return {};
}

/** Frees a PD with no users. */
export function destroyPd(state: GuestState, pd: Pd): void {
  state.pds.remove(pd);
  state.count("pds", -1);
}

/** REG_MR `{pd, addr, length, access}` -> `{mr, lkey, rkey}`. */
export function regMr(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op", "pd", "addr", "length", "access"]);
  const pd = state.pds.find(cmd);
  const addr = addrField(cmd, "addr");
  const length = addrField(cmd, "length");
  const access = intField(cmd, "access", { max: 0xffff_ffff });
  if ((access & ~ACCESS_MASK) !== 0) {
    throw invalid(`access 0x${access.toString(16)} has bits outside 0x${ACCESS_MASK.toString(16)}`);
  }
  if ((access & UNSUPPORTED_ACCESS) !== 0) {
    throw new CommandError(
      Errno.EOPNOTSUPP,
      `access 0x${access.toString(16)}: MW_BIND, ZERO_BASED and ON_DEMAND are not supported`,
    );
  }
  const remote = access & (Access.REMOTE_WRITE | Access.REMOTE_ATOMIC);
  if (remote !== 0 && (access & Access.LOCAL_WRITE) === 0) {
    throw invalid(
      `access 0x${access.toString(16)}: REMOTE_WRITE and REMOTE_ATOMIC need LOCAL_WRITE`,
    );
  }
  if (length === 0) throw invalid("length 0: an MR holds at least one byte");
  if (length > state.limits.maxMrSize) {
    throw invalid(`length ${length} exceeds maxMrSize ${state.limits.maxMrSize}`);
  }
  if (!state.memory.contains(addr, length)) {
    throw new CommandError(
      Errno.EFAULT,
      `addr 0x${addr.toString(16)} length ${length} is not inside guest memory`,
    );
  }
  state.mrs.checkRoom(state.limits.maxMr);
  let mr: Mr | undefined;
  state.host.allocKey((key) =>
    mr = state.mrs.add((handle) => ({
      handle,
      guest: state.guest,
      live: true,
      pd,
      addr,
      length,
      access,
      lkey: key,
      rkey: key,
    }))
  );
  state.use(pd);
  state.count("mrs", 1);
  return { mr: mr!.handle, lkey: mr!.lkey, rkey: mr!.rkey };
}

/** DEREG_MR `{mr}` -> `{}`. */
export function deregMr(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op", "mr"]);
  destroyMr(state, state.mrs.find(cmd));
  return {};
}

/** Frees an MR and its key. */
export function destroyMr(state: GuestState, mr: Mr): void {
  state.host.releaseKey(mr.lkey);
  state.mrs.remove(mr);
  state.unuse(mr.pd);
  state.count("mrs", -1);
}
