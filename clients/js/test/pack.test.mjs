// `npm pack` makes a tarball that installs and works: installed into an empty
// project, the package imports by its name (the `exports` map), has every
// export, and TypeScript finds its declarations (the `types` condition).

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const PACKAGE = resolve(dirname(fileURLToPath(import.meta.url)), "..");

test("npm pack gives a tarball that installs, imports and type-checks", () => {
  const dir = mkdtempSync(join(tmpdir(), "sb-pack-"));
  try {
    const npm = (args, cwd) => execFileSync("npm", [...args, "--no-audit", "--no-fund", "--loglevel=error"], { cwd, encoding: "utf8" });
    const name = npm(["pack", "--pack-destination", dir], PACKAGE).trim().split("\n").pop();
    const tarball = join(dir, name);
    const listing = execFileSync("tar", ["-tzf", tarball], { encoding: "utf8" }).trim().split("\n").sort();
    assert.deepEqual(listing, ["package/README.md", "package/package.json", "package/switchboard.d.ts", "package/switchboard.js"]);

    const app = join(dir, "app");
    execFileSync("mkdir", ["-p", app]);
    writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
    npm(["install", "--offline", tarball], app);
    assert.deepEqual(readdirSync(join(app, "node_modules")).filter((n) => !n.startsWith(".")), ["switchboard-client"], "no dependencies");

    const script = `import * as sb from "switchboard-client";
      const names = Object.keys(sb).sort().join(",");
      const client = new sb.Client({ url: "http://127.0.0.1:1", WebSocket: class {} });
      console.log(names, client.state, new sb.ForbiddenError("x", { code: "forbidden" }) instanceof sb.SwitchboardError);`;
    const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], { cwd: app, encoding: "utf8" }).trim();
    assert.equal(out, "AuthError,Client,ClosedError,ForbiddenError,PublishError,Subscription,SwitchboardError,VERSION,applyFossilDelta,publish,tokenExpiry idle true");

    writeFileSync(join(app, "main.ts"), `import { Client, type MessageEvent } from "switchboard-client";
      const c = new Client({ url: "ws://gw/ws" });
      c.subscribe<{ n: number }>("c").on("message", (m: MessageEvent<{ n: number }>) => m.data.n.toFixed());
      export {};\n`);
    writeFileSync(join(app, "tsconfig.json"), JSON.stringify({ compilerOptions: { strict: true, noEmit: true, module: "nodenext", moduleResolution: "nodenext", target: "es2022", lib: ["es2022", "dom"], types: [] }, files: ["main.ts"] }));
    execFileSync(process.execPath, [join(PACKAGE, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.json"], { cwd: app, encoding: "utf8" });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
