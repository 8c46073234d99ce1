// The real things the tests run against: a private redis-server and gateway
// replicas (the switchboard binary) on free loopback ports, a JWT secret file
// and tokens minted by `switchboard token`. Everything is killed by stop().

import { spawn, execFile } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync, existsSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

export const BINARY = process.env.SWITCHBOARD_BIN || join(ROOT, "target/debug/switchboard");

/** The environment of child processes: this one without SWITCHBOARD_* (they would configure the binary). */
function childEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("SWITCHBOARD_")) env[k] = v;
  return { ...env, SWITCHBOARD_LOG_LEVEL: "warn", ...extra };
}

/** A port that was free a moment ago (the caller retries if it is taken meanwhile). */
export function freePort() {
  return new Promise((res, rej) => {
    const server = createServer();
    server.once("error", rej);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => res(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until `check()` returns a truthy value (polled), or fails after `ms`. */
export async function waitFor(what, check, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

function canConnect(port) {
  return new Promise((res) => {
    const socket = connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      res(true);
    });
    socket.once("error", () => res(false));
  });
}

class Proc {
  constructor(child, port) {
    this.child = child;
    this.port = port;
    this.exited = new Promise((res) => {
      child.once("exit", (code, signal) => res({ code, signal }));
      child.once("error", (error) => res({ error }));
    });
    this.done = false;
    this.exited.then(() => (this.done = true));
  }

  async kill(signal = "SIGKILL") {
    if (this.done) return;
    this.child.kill(signal);
    await this.exited;
  }
}

export class Env {
  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), "sb-js-"));
    this.secretFile = join(this.dir, "jwt.secret");
    writeFileSync(this.secretFile, randomBytes(48).toString("base64") + "\n");
    this.procs = [];
  }

  async startRedis() {
    for (let tries = 0; ; tries++) {
      const port = await freePort();
      const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", this.dir], { stdio: "ignore" });
      const proc = new Proc(child, port);
      this.procs.push(proc);
      try {
        await waitFor("redis-server", async () => proc.done || (await canConnect(port)), 10000);
      } catch (e) {
        await proc.kill();
        throw e;
      }
      if (!proc.done) {
        this.redis = proc;
        this.redisUrl = `redis://127.0.0.1:${port}`;
        return proc;
      }
      if (tries >= 3) throw new Error("redis-server did not start");
    }
  }

  /** A gateway replica on the Redis, ready (`/health/ready` 200). */
  async startGateway(name, extraArgs = [], port = null) {
    for (let tries = 0; ; tries++) {
      const listen = port ?? (await freePort());
      // The admin listener shares the client port: no second port to collide on.
      const args = ["gateway", "--listen", `127.0.0.1:${listen}`, "--admin-listen", `127.0.0.1:${listen}`, "--redis-url", this.redisUrl, "--jwt-secret-file", this.secretFile, "--replica-id", name, "--stats-interval", "0", "--drain-window", "200ms", ...extraArgs];
      const child = spawn(BINARY, args, { stdio: ["ignore", "ignore", "inherit"], env: childEnv() });
      const proc = new Proc(child, listen);
      proc.name = name;
      proc.args = extraArgs;
      proc.url = `http://127.0.0.1:${listen}`;
      proc.wsUrl = `ws://127.0.0.1:${listen}/ws`;
      this.procs.push(proc);
      const ready = await waitFor(`gateway ${name}`, async () => {
        if (proc.done) return "exited";
        try {
          const r = await fetch(proc.url + "/health/ready");
          return r.status === 200 ? "ready" : null;
        } catch {
          return null;
        }
      });
      if (ready === "ready") return proc;
      if (tries >= 3 || port !== null) throw new Error(`gateway ${name} did not start`);
    }
  }

  /** A token from `switchboard token`. */
  mint({ sub = "alice", perm = ["websocket:connect", "websocket:subscribe"], channels = [], ttl = "1h" } = {}) {
    const args = ["token", "--secret-file", this.secretFile, "--sub", sub, "--ttl", ttl];
    if (perm.length) args.push("--perm", perm.join(","));
    if (channels.length) args.push("--channels", channels.join(","));
    return new Promise((res, rej) =>
      execFile(BINARY, args, { env: childEnv() }, (err, stdout, stderr) => (err ? rej(new Error(`${err.message}: ${stderr}`)) : res(stdout.trim()))),
    );
  }

  async stop() {
    await Promise.all(this.procs.map((p) => p.kill()));
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export function requireBinary() {
  if (!existsSync(BINARY)) throw new Error(`${BINARY} is missing: build it with \`cargo build\` (or set SWITCHBOARD_BIN)`);
}
