import assert from "node:assert/strict";
import {
  CONFIG_SIZE,
  decodeDeviceConfig,
  type DeviceConfig,
  encodeDeviceConfig,
  formatGid,
  mtuFromEnum,
  mtuToEnum,
  parseGid,
} from "../../protocol/device_config.ts";

function sampleConfig(): DeviceConfig {
  return {
    device: {
      fwVer: "0.1.0",
      nodeGuid: 0x0200_5eff_fe00_0002n,
      sysImageGuid: 0x0200_5eff_fe00_0002n,
      maxMrSize: 64n << 20n,
      pageSizeCap: 0xfffff000n,
      vendorId: 0x1af4,
      vendorPartId: 0x10ff,
      hwVer: 1,
      maxQp: 16384,
      maxQpWr: 16384,
      deviceCapFlags: 0x21361c36,
      maxSge: 16,
      maxSgeRd: 16,
      maxCq: 16384,
      maxCqe: 65536,
      maxMr: 65536,
      maxPd: 65536,
      maxQpRdAtom: 128,
      maxResRdAtom: 258048,
      maxQpInitRdAtom: 128,
      atomicCap: 1,
      maxAh: 65536,
      maxSrq: 4096,
      maxSrqWr: 16384,
      maxSrqSge: 16,
      maxPkeys: 1,
      physPortCnt: 1,
    },
    port: {
      state: "ACTIVE",
      maxMtu: 4096,
      activeMtu: 1024,
      gidTblLen: 1,
      portCapFlags: 0x10000,
      maxMsgSz: 0x80000000,
      pkeyTblLen: 1,
      lid: 0,
      physState: 5,
      linkLayer: "Ethernet",
      activeWidth: 1,
      activeSpeed: 1,
    },
    gids: ["::ffff:127.0.0.2", "fe80::2"],
  };
}

Deno.test("device config round-trips every field", () => {
  const config = sampleConfig();
  const bytes = encodeDeviceConfig(config);
  assert.equal(bytes.length, CONFIG_SIZE);
  assert.deepEqual(decodeDeviceConfig(bytes), config);
});

Deno.test("device config refuses what does not fit or does not parse", () => {
  const config = sampleConfig();
  assert.throws(
    () => encodeDeviceConfig({ ...config, device: { ...config.device, maxQp: -1 } }),
    { name: "RangeError", message: /maxQp = -1/ },
  );
  const bytes = encodeDeviceConfig(config);
  assert.throws(() => decodeDeviceConfig(bytes.subarray(0, 10)), {
    name: "SyntaxError",
    message: new RegExp(`10 bytes, expected ${CONFIG_SIZE}`),
  });
  const wrongMagic = bytes.slice();
  wrongMagic[0] = 0;
  assert.throws(() => decodeDeviceConfig(wrongMagic), { name: "SyntaxError", message: /magic/ });
  const tooManyGids = bytes.slice();
  new DataView(tooManyGids.buffer).setUint32(8, 1000, true);
  assert.throws(() => decodeDeviceConfig(tooManyGids), /1000 GIDs/);
});

Deno.test("GIDs parse and format as IPv6 text", () => {
  assert.deepEqual(
    [...parseGid("::ffff:127.0.0.2")],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 2],
  );
  for (
    const text of ["::ffff:10.99.0.3", "fe80::1", "::", "1:2:3:4:5:6:7:8", "2001:db8::1:0:0:1"]
  ) {
    assert.equal(formatGid(parseGid(text)), text);
  }
  for (const bad of ["1::2::3", "::ffff:300.0.0.1", "abcde::", "1:2:3", "hello"]) {
    assert.throws(() => parseGid(bad), { name: "SyntaxError", message: new RegExp(`"${bad}"`) });
  }
});

Deno.test("MTU enum conversion", () => {
  assert.equal(mtuToEnum(1024), 3);
  assert.equal(mtuFromEnum(5), 4096);
  assert.throws(() => mtuToEnum(1500), /1500 is not an IB path MTU/);
  assert.throws(() => mtuFromEnum(6), /6 is not an IBV_MTU/);
});
