/**
 * QUERY_DEVICE, QUERY_PORT, QUERY_GID: answers from the config space.
 *
 * @module
 */

import { mtuToEnum } from "../../protocol/device_config.ts";
import { checkKeys, type Fields, intField, invalid } from "./fields.ts";
import type { GuestState } from "./guest_state.ts";

function checkPort(cmd: Fields): void {
  const port = intField(cmd, "port", { max: 0xff });
  if (port !== 1) throw invalid(`port ${port} does not exist (ports: 1)`);
}

/** QUERY_DEVICE `{}` -> `{attr}`. */
export function queryDevice(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op"]);
  return { attr: state.config.device };
}

/** QUERY_PORT `{port}` -> `{attr}` with `maxMtuEnum` added. */
export function queryPort(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op", "port"]);
  checkPort(cmd);
  const port = state.config.port;
  return { attr: { ...port, maxMtuEnum: mtuToEnum(port.maxMtu) } };
}

/** QUERY_GID `{port, index}` -> `{gid}`. */
export function queryGid(state: GuestState, cmd: Fields): Fields {
  checkKeys(cmd, ["op", "port", "index"]);
  checkPort(cmd);
  const index = intField(cmd, "index", { max: 0xffff });
  const gid = state.config.gids[index];
  if (gid === undefined) {
    throw invalid(`GID index ${index} is past the table (${state.config.gids.length} entries)`);
  }
  return { gid };
}
