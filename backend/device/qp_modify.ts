/**
 * MODIFY_QP, and the engine's own state changes.
 *
 * A modify is all or nothing: every key, the transition and every value are
 * checked before anything changes.
 *
 * @module
 */

import type { QpStateName } from "../../protocol/verbs.ts";
import { DescriptorChain } from "../../virtqueue/descriptor_chain.ts";
import type { DeviceQueue } from "../../virtqueue/device_queue.ts";
import type { GuestMemory } from "../../virtqueue/memory.ts";
import { checkKeys, type Fields, invalid, mapField } from "./fields.ts";
import type { GuestState } from "./guest_state.ts";
import type { Qp } from "./objects.ts";
import { readAttrKeys, readAttrValues } from "./qp_attr.ts";
import { checkTransition } from "./qp_state.ts";

/**
 * MODIFY_QP `{qp, attr}` -> `{}`. Without `attr.qpState` the QP stays in its
 * state (only that state's self-transition attributes are legal). After the
 * change the state listeners hear `from -> to`; on RESET the PSNs go back to
 * 0 and what is left on the SQ and RQ is returned unused, without
 * completions (after the listeners, so the engine first gives back the WRs
 * it holds).
 */
export function modifyQp(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op", "qp", "attr"]);
  const qp = state.qps.find(cmd);
  const attr = mapField(cmd, "attr");
  const parsed = readAttrKeys(attr);
  const from = qp.state;
  const to = parsed.target ?? from;
  const problem = checkTransition(qp.qpType, from, to, parsed.given);
  if (problem !== null) throw invalid(problem);
  if (parsed.current !== undefined && parsed.current !== from) {
    throw invalid(`attr.curQpState ${parsed.current} is not the QP's state ${from}`);
  }
  readAttrValues(state, attr, parsed);
  Object.assign(qp, parsed.values);
  qp.state = to;
  if (to === "RESET") {
    qp.sqPsn = 0;
    qp.rqPsn = 0;
  }
  state.emitStateChange(qp, from, to);
  if (to === "RESET") {
    drainUnused(state.memory, qp.sq);
    if (qp.rq !== null) drainUnused(state.memory, qp.rq);
  }
  return {};
}

/** Returns every available chain as used with 0 bytes: a queue emptied without completions. */
function drainUnused(memory: GuestMemory, queue: DeviceQueue): void {
  const chain = new DescriptorChain();
  let drained = 0;
  // At most a queue size is ever available; the bound only guards against a model bug.
  while (drained < queue.size && queue.popInto(memory, chain)) {
    queue.addUsed(memory, chain.head, 0);
    drained++;
  }
  if (drained > 0) queue.publishUsed(memory);
}

/**
 * The engine's own transitions: to ERR on an error, to SQE on a UD/UC send
 * error, and the like. Sets the state without the MODIFY_QP table or the
 * listeners (the engine made the change and knows). RESET is refused: only
 * the guest resets a QP. Returns false for a destroyed QP or no change.
 */
export function moveQp(qp: Qp, to: QpStateName): boolean {
  if (to === "RESET") throw new RangeError(`moveQp to RESET for QP 0x${qp.qpNum.toString(16)}`);
  if (!qp.live || qp.state === to) return false;
  qp.state = to;
  return true;
}
