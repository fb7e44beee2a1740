/**
 * tools/devinfo.ts: the layout of rdma-core's `ibv_devinfo` (tabs and all)
 * for crafted attributes, then the tool run as a process against a backend
 * on 127.0.0.31: plain, `-v`, `-l`, `-i`, `-d`, and without a backend.
 */

import assert from "node:assert/strict";
import {
  type Backend,
  type DeviceAttr,
  openDevice,
  type PortAttr,
  startBackend,
} from "../../mod.ts";
import { tempSocket } from "../helpers/backend.ts";
import { formatDevinfo, guidText } from "../../tools/common/devinfo_format.ts";

const TOOL = new URL("../../tools/devinfo.ts", import.meta.url).pathname;
const IP = "127.0.0.31";

const ATTR: DeviceAttr = {
  fwVer: "1.2.3",
  nodeGuid: 0x0002c90300a1b2c3n,
  sysImageGuid: 0x0002c90300a1b2c0n,
  maxMrSize: 0xffff_ffff_ffffn,
  pageSizeCap: 0xffff_f000n,
  vendorId: 0x2c9,
  vendorPartId: 4099,
  hwVer: 0xa0,
  maxQp: 100,
  maxQpWr: 200,
  deviceCapFlags: (1 << 11) | (1 << 12) | (1 << 31) | (1 << 15),
  maxSge: 3,
  maxSgeRd: 2,
  maxCq: 4,
  maxCqe: 5,
  maxMr: 6,
  maxPd: 7,
  maxQpRdAtom: 8,
  maxResRdAtom: 9,
  maxQpInitRdAtom: 10,
  atomicCap: 2,
  maxAh: 11,
  maxSrq: 0,
  maxSrqWr: 12,
  maxSrqSge: 13,
  maxPkeys: 14,
  physPortCnt: 2,
};

const PORT: PortAttr = {
  state: "ACTIVE",
  maxMtu: 4096,
  activeMtu: 1024,
  gidTblLen: 3,
  portCapFlags: 0x0001_0000,
  maxMsgSz: 0x4000_0000,
  pkeyTblLen: 1,
  lid: 0,
  physState: 5,
  linkLayer: "Ethernet",
  activeWidth: 2,
  activeSpeed: 32,
};

Deno.test("guidText: four groups of four hex digits, most significant first", () => {
  assert.equal(guidText(0x0002c90300a1b2c3n), "0002:c903:00a1:b2c3");
  assert.equal(guidText(0n), "0000:0000:0000:0000");
  assert.equal(guidText(0xffff_ffff_ffff_ffffn), "ffff:ffff:ffff:ffff");
});

Deno.test("formatDevinfo: the short form, tab for tab", () => {
  const text = formatDevinfo({
    name: "vrdma0",
    attr: ATTR,
    ports: [
      { num: 1, attr: PORT, gids: [] },
      { num: 2, attr: { ...PORT, state: "DOWN", maxMtu: 2048, activeMtu: 256 }, gids: [] },
    ],
    numCompVectors: 1,
  }, { verbose: false });
  assert.equal(
    text,
    [
      "hca_id:\tvrdma0",
      "\ttransport:\t\t\tInfiniBand (0)",
      "\tfw_ver:\t\t\t\t1.2.3",
      "\tnode_guid:\t\t\t0002:c903:00a1:b2c3",
      "\tsys_image_guid:\t\t\t0002:c903:00a1:b2c0",
      "\tvendor_id:\t\t\t0x02c9",
      "\tvendor_part_id:\t\t\t4099",
      "\thw_ver:\t\t\t\t0xA0",
      "\tphys_port_cnt:\t\t\t2",
      "\t\tport:\t1",
      "\t\t\tstate:\t\t\tPORT_ACTIVE (4)",
      "\t\t\tmax_mtu:\t\t4096 (5)",
      "\t\t\tactive_mtu:\t\t1024 (3)",
      "\t\t\tsm_lid:\t\t\t0",
      "\t\t\tport_lid:\t\t0",
      "\t\t\tport_lmc:\t\t0x00",
      "\t\t\tlink_layer:\t\tEthernet",
      "",
      "\t\tport:\t2",
      "\t\t\tstate:\t\t\tPORT_DOWN (1)",
      "\t\t\tmax_mtu:\t\t2048 (4)",
      "\t\t\tactive_mtu:\t\t256 (1)",
      "\t\t\tsm_lid:\t\t\t0",
      "\t\t\tport_lid:\t\t0",
      "\t\t\tport_lmc:\t\t0x00",
      "\t\t\tlink_layer:\t\tEthernet",
      "",
      "",
    ].join("\n"),
  );
  const noFw = formatDevinfo({
    name: "x",
    attr: { ...ATTR, fwVer: "" },
    ports: [],
    numCompVectors: 1,
  }, {
    verbose: false,
  });
  assert.ok(!noFw.includes("fw_ver"), "an empty fw_ver is left out, as rdma-core does");
});

Deno.test("formatDevinfo -v: flags by name, SRQ lines only with SRQs, GIDs skipping null entries", () => {
  const text = formatDevinfo({
    name: "vrdma0",
    attr: ATTR,
    ports: [{
      num: 1,
      attr: PORT,
      gids: ["fe80::5054:ff:fe99:2", "::", "::ffff:10.99.0.2"],
    }],
    numCompVectors: 1,
  }, { verbose: true });
  const lines = text.split("\n");
  const at = (line: string) => {
    const i = lines.indexOf(line);
    assert.ok(i >= 0, `missing ${JSON.stringify(line)} in\n${text}`);
    return i;
  };
  const flags = at("\tdevice_cap_flags:\t\t0x80009800");
  assert.deepEqual(lines.slice(flags + 1, flags + 5), [
    "\t\t\t\t\tSYS_IMAGE_GUID",
    "\t\t\t\t\tRC_RNR_NAK_GEN",
    "\t\t\t\t\tUnknown flags: 0x80008000",
    "\tmax_sge:\t\t\t3",
  ]);
  assert.ok(at("\tmax_mr_size:\t\t\t0xffffffffffff") < flags);
  at("\tpage_size_cap:\t\t\t0xfffff000");
  at("\tatomic_cap:\t\t\tATOMIC_GLOB (2)");
  const srq = at("\tmax_srq:\t\t\t0");
  assert.equal(lines[srq + 1], "\tmax_pkeys:\t\t\t14", "no max_srq_wr/max_srq_sge without SRQs");
  at("\tnum_comp_vectors:\t\t1");
  at("\t\t\tmax_msg_sz:\t\t0x40000000");
  at("\t\t\tport_cap_flags:\t\t0x00010000");
  at("\t\t\tactive_width:\t\t4X (2)");
  at("\t\t\tactive_speed:\t\t25.0 Gbps (32)");
  at("\t\t\tphys_state:\t\tLINK_UP (5)");
  assert.deepEqual(lines.slice(-4), [
    "\t\t\tGID[  0]:\t\tfe80::5054:ff:fe99:2, RoCE v2",
    "\t\t\tGID[  2]:\t\t::ffff:10.99.0.2, RoCE v2",
    "",
    "",
  ]);
  const ib = formatDevinfo({
    name: "x",
    attr: { ...ATTR, maxSrq: 5 },
    ports: [{ num: 1, attr: { ...PORT, linkLayer: "InfiniBand" }, gids: ["fe80::1"] }],
    numCompVectors: 1,
  }, { verbose: true });
  assert.ok(ib.includes("\tmax_srq:\t\t\t5\n\tmax_srq_wr:\t\t\t12\n\tmax_srq_sge:\t\t\t13\n"));
  assert.ok(ib.includes("\t\t\tGID[  0]:\t\tfe80::1\n"), "no GID type on InfiniBand");
});

/** Runs the tool; returns its exit code and output. */
async function devinfo(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", TOOL, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

async function startHost(): Promise<Backend> {
  for (let attempt = 1;; attempt++) {
    try {
      return await startBackend({
        socket: tempSocket("devinfo"),
        ip: IP,
        port: 20000 + Math.floor(Math.random() * 40000),
        logLevel: "silent",
      });
    } catch (e) {
      if (attempt >= 5) throw e;
    }
  }
}

Deno.test("devinfo: the tool against a running backend", async (t) => {
  const host = await startHost();
  try {
    const dev = await openDevice({ socket: host.socket, memoryBytes: 1 << 20 });
    const attr = dev.attr;
    await dev.close();
    const guid = (g: bigint) => g.toString(16).padStart(16, "0").match(/..../g)!.join(":");

    await t.step("plain: device and port lines", async () => {
      const r = await devinfo(["--socket", host.socket]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stderr, "");
      assert.equal(
        r.stdout,
        [
          "hca_id:\tvrdma0",
          "\ttransport:\t\t\tInfiniBand (0)",
          `\tfw_ver:\t\t\t\t${attr.fwVer}`,
          `\tnode_guid:\t\t\t${guid(attr.nodeGuid)}`,
          `\tsys_image_guid:\t\t\t${guid(attr.sysImageGuid)}`,
          "\tvendor_id:\t\t\t0x1af4",
          `\tvendor_part_id:\t\t\t${attr.vendorPartId}`,
          `\thw_ver:\t\t\t\t0x${attr.hwVer.toString(16).toUpperCase()}`,
          "\tphys_port_cnt:\t\t\t1",
          "\t\tport:\t1",
          "\t\t\tstate:\t\t\tPORT_ACTIVE (4)",
          "\t\t\tmax_mtu:\t\t4096 (5)",
          "\t\t\tactive_mtu:\t\t4096 (5)",
          "\t\t\tsm_lid:\t\t\t0",
          "\t\t\tport_lid:\t\t0",
          "\t\t\tport_lmc:\t\t0x00",
          "\t\t\tlink_layer:\t\tEthernet",
          "",
          "",
        ].join("\n"),
      );
      // The GUID comes from the host's address: its last byte is the address's.
      assert.equal(Number(attr.nodeGuid & 0xffn), 31);
    });

    await t.step("-v: the long list, the port's details and GID[0]", async () => {
      const r = await devinfo(["--socket", host.socket, "-v"]);
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stdout.split("\n");
      const order = [
        "\tphys_port_cnt:\t\t\t1",
        `\tmax_qp:\t\t\t\t${attr.maxQp}`,
        `\tmax_qp_wr:\t\t\t${attr.maxQpWr}`,
        `\tmax_sge:\t\t\t${attr.maxSge}`,
        `\tmax_cqe:\t\t\t${attr.maxCqe}`,
        `\tmax_qp_rd_atom:\t\t\t${attr.maxQpRdAtom}`,
        "\tatomic_cap:\t\t\tATOMIC_HCA (1)",
        `\tmax_srq_wr:\t\t\t${attr.maxSrqWr}`,
        "\t\tport:\t1",
        "\t\t\tlink_layer:\t\tEthernet",
        "\t\t\tmax_msg_sz:\t\t0x80000000",
        "\t\t\tgid_tbl_len:\t\t1",
        "\t\t\tphys_state:\t\tLINK_UP (5)",
        `\t\t\tGID[  0]:\t\t::ffff:${IP}, RoCE v2`,
      ];
      let from = 0;
      for (const line of order) {
        const i = lines.indexOf(line, from);
        assert.ok(i >= from, `${JSON.stringify(line)} missing or out of order in\n${r.stdout}`);
        from = i + 1;
      }
      assert.match(r.stdout, /\n\tmax_mr_size:\t\t\t0x[1-9a-f][0-9a-f]*\n\tpage_size_cap:\t\t\t0x/);
      assert.ok(r.stdout.endsWith(`RoCE v2\n\n`));
    });

    await t.step("-l lists the device; -i 1 and -d vrdma0 select it", async () => {
      const list = await devinfo(["--socket", host.socket, "-l"]);
      assert.equal(list.code, 0);
      assert.equal(list.stdout, "1 HCA found:\n\tvrdma0\n\n");
      const one = await devinfo(["--socket", host.socket, "-i", "1", "-d", "vrdma0"]);
      assert.equal(one.code, 0, one.stderr);
      assert.match(one.stdout, /^hca_id:\tvrdma0\n[^]*\t\tport:\t1\n/);
    });

    await t.step(
      "refusals: another device name, a port past the device's, a bad option",
      async () => {
        const name = await devinfo(["--socket", host.socket, "-d", "rxe0"]);
        assert.equal(name.code, 255);
        assert.equal(name.stdout, "");
        assert.equal(name.stderr, "IB device 'rxe0' wasn't found\n");
        const port = await devinfo(["--socket", host.socket, "-i", "2"]);
        assert.equal(port.code, 4);
        assert.equal(port.stderr, "Invalid port requested for device\n");
        const zero = await devinfo(["--socket", host.socket, "-i", "0"]);
        assert.equal(zero.code, 1);
        assert.match(zero.stdout, /^Usage: /);
        const opt = await devinfo(["--bogus"]);
        assert.equal(opt.code, 255);
        assert.match(opt.stderr, /bogus/);
      },
    );
  } finally {
    await host.close();
  }
  await t.step("no backend on the socket: exit 1 naming why; -l finds nothing", async () => {
    const r = await devinfo(["--socket", host.socket]);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, /^Couldn't get context for vrdma0: .*(ENOENT|ECONNREFUSED)/);
    const list = await devinfo(["--socket", host.socket, "-l"]);
    assert.equal(list.stdout, "0 HCAs found:\n\n");
  });
});
