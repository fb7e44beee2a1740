/**
 * `deno task <tool> -- args` (the README's form) hands each script a
 * leading "--" (Deno 2): every tool and the backend must take the flags
 * after it as flags, not as positional arguments.
 */

import assert from "node:assert/strict";
import { main as devinfo } from "../../tools/devinfo.ts";
import { main as pingpong } from "../../tools/pingpong.ts";
import { main as stat } from "../../tools/stat.ts";
import { main as perf } from "../../tools/perf.ts";
import { main as backend } from "../../backend/main.ts";

const TOOLS = { devinfo, pingpong, stat, perf, backend };

for (const [name, main] of Object.entries(TOOLS)) {
  Deno.test(`${name}: "-- --help" is --help (exit 0); "-- --no-such-flag" is a usage error`, async () => {
    const log = console.log, error = console.error;
    const printed: string[] = [];
    console.log = (...a: unknown[]) => printed.push(a.join(" "));
    console.error = (...a: unknown[]) => printed.push(a.join(" "));
    try {
      assert.equal(await main(["--", "--help"]), 0, printed.join("\n"));
      assert.match(printed.join("\n"), /usage|options/i);
      assert.notEqual(await main(["--", "--no-such-flag"]), 0);
    } finally {
      console.log = log;
      console.error = error;
    }
  });
}
