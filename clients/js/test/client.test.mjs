// The client against real gateway replicas on a real Redis (see harness.mjs):
// every message exactly once across a replica kill, resume from an offset,
// starting over when the history cannot cover a gap, filters, acknowledgements
// and session resume, delta subscriptions (fossil) decoded to the published
// data, token refresh before expiry, and typed errors for a bad
// token, an expired one and a forbidden channel. No unhandled rejection anywhere.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { Client, publish, applyFossilDelta, AuthError, ForbiddenError, ClosedError, SwitchboardError, tokenExpiry } from "../switchboard.js";
import { readFileSync } from "node:fs";
import { Env, waitFor, requireBinary } from "./harness.mjs";

const WebSocket = globalThis.WebSocket ?? (await import("ws")).WebSocket;

const unhandled = [];
process.on("unhandledRejection", (reason) => unhandled.push(reason));
after(() => assert.deepEqual(unhandled, [], "no unhandled rejections"));

requireBinary();

const SUBSCRIBER = { perm: ["websocket:connect", "websocket:subscribe"], channels: ["orders:*", "council:*"] };
const PUBLISHER = { sub: "producer", perm: ["websocket:publish"], channels: ["orders:*", "council:*"] };

/** Records a subscription's events; `until(n)` waits for n messages. */
function record(sub) {
  const seen = { messages: [], snapshots: [], resyncs: [], subscribed: [], history: [] };
  sub.on("message", (m) => seen.messages.push(m));
  sub.on("snapshot", (s) => seen.snapshots.push(s));
  sub.on("resync", (r) => seen.resyncs.push(r));
  sub.on("subscribed", (s) => seen.subscribed.push(s));
  sub.on("history", (h) => seen.history.push(h));
  seen.offsets = () => seen.messages.map((m) => m.offset);
  seen.until = (what, pred, ms) => waitFor(what, () => pred(seen), ms);
  return seen;
}

function redisCli(env, ...args) {
  return new Promise((res, rej) => execFile("redis-cli", ["-p", String(env.redis.port), ...args], (e, out) => (e ? rej(e) : res(out.trim()))));
}

async function setup(gateways = ["gw-a"], extraArgs = []) {
  const env = new Env();
  await env.startRedis();
  const gws = [];
  for (const name of gateways) gws.push(await env.startGateway(name, extraArgs));
  return { env, gws, subscriberToken: await env.mint(SUBSCRIBER), publisherToken: await env.mint(PUBLISHER) };
}

test("every message exactly once, in order, across a replica kill (resumed on the other replica)", async () => {
  const { env, gws, subscriberToken, publisherToken } = await setup(["gw-a", "gw-b"]);
  const [a, b] = gws;
  const client = new Client({ url: [a.wsUrl, b.wsUrl], token: subscriberToken, WebSocket, backoffBaseMs: 200 });
  const states = [];
  client.on("state", (s) => states.push(s));
  const connections = [];
  client.on("connected", (c) => connections.push(c));
  try {
    const sub = client.subscribe("orders:kill");
    const seen = record(sub);
    const established = await client.connect();
    assert.equal(established.replica, "gw-a");
    await sub.ready;
    // The producer publishes on the other replica until told to stop.
    let published = 0;
    let stop = false;
    const producer = (async () => {
      while (!stop) {
        const r = await publish(b.url, "orders:kill", { i: published + 1 }, { token: publisherToken });
        assert.equal(r.offset, ++published);
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    await seen.until("the first messages", (s) => s.messages.length >= 50);
    // The session (subscription and automatic acknowledgements) is in Redis,
    // written every 0.5 s: the other replica can restore it.
    const session = `switchboard:session:${client.session}`;
    await waitFor("the stored session", async () => Number(await redisCli(env, "HGET", session, "o:orders:kill")) > 0);
    await a.kill("SIGKILL");
    await waitFor("the connection to the other replica", () => connections.length === 2, 20000);
    const atReconnect = published;
    await waitFor("more messages", () => published >= atReconnect + 50);
    stop = true;
    await producer;
    const total = published;
    await seen.until("every message", (s) => s.messages.length >= total, 30000);
    const offsets = seen.offsets();
    assert.deepEqual(offsets, Array.from({ length: total }, (_, i) => i + 1), "each offset once, in order");
    assert.deepEqual(seen.messages.map((m) => m.data.i), offsets);
    assert.equal(connections.length, 2);
    assert.equal(connections[1].replica, "gw-b");
    assert.equal(connections[1].resumed, true, "the session was restored on the other replica");
    assert.equal(connections[1].session, connections[0].session);
    assert.ok(states.some((s) => s.state === "reconnecting" && s.code === 1006), "the loss was reported");
    assert.deepEqual(seen.resyncs, []);
  } finally {
    client.close();
    await env.stop();
  }
});

test("resume from an offset; a since the history cannot cover starts over from the snapshot", async () => {
  const { env, gws, subscriberToken, publisherToken } = await setup();
  const [gw] = gws;
  const clients = [];
  try {
    let last;
    for (let i = 1; i <= 5; i++) last = await publish(gw.url, "orders:resume", { i }, { token: publisherToken, snapshot: i === 5 });
    const client = new Client({ url: gw.url, token: subscriberToken, WebSocket });
    clients.push(client);
    const sub = client.subscribe("orders:resume", { since: { offset: 2, epoch: last.epoch } });
    const seen = record(sub);
    client.connect();
    const started = await sub.ready;
    assert.equal(started.recovered, true);
    await seen.until("the replay", (s) => s.messages.length === 3);
    assert.deepEqual(seen.offsets(), [3, 4, 5]);
    assert.ok(seen.messages.every((m) => m.replayed), "replayed from history");
    assert.equal(seen.snapshots.length, 0, "a recovered resume has no snapshot");
    await publish(gw.url, "orders:resume", { i: 6 }, { token: publisherToken });
    await seen.until("the live message", (s) => s.messages.length === 4);
    assert.equal(seen.messages[3].offset, 6);
    assert.equal(seen.messages[3].replayed, false);

    // Another epoch: not recoverable; the client starts over from the snapshot.
    const other = new Client({ url: gw.url, token: subscriberToken, WebSocket });
    clients.push(other);
    const stale = other.subscribe("orders:resume", { since: { offset: 3, epoch: "not-this-one" } });
    const seen2 = record(stale);
    other.connect();
    const answer = await stale.ready;
    assert.equal(answer.recovered, false);
    await seen2.until("the snapshot", (s) => s.snapshots.length === 1);
    assert.deepEqual(seen2.resyncs.map((r) => r.reason), ["not_recovered"]);
    assert.deepEqual(seen2.snapshots[0].data, { i: 5 });
    assert.equal(seen2.snapshots[0].offset, 5);
    await seen2.until("what followed the snapshot", (s) => s.messages.length === 1);
    assert.deepEqual(seen2.offsets(), [6]);
    assert.equal(stale.epoch, last.epoch);
  } finally {
    clients.forEach((c) => c.close());
    await env.stop();
  }
});

test("history lost while disconnected: a new epoch, the channel starts over from the new snapshot", async () => {
  const { env, gws, subscriberToken, publisherToken } = await setup();
  let [gw] = gws;
  const client = new Client({ url: gw.url, token: subscriberToken, WebSocket, backoffBaseMs: 100, backoffCapMs: 500 });
  try {
    await publish(gw.url, "orders:lost", { v: 1 }, { token: publisherToken, snapshot: true });
    const sub = client.subscribe("orders:lost");
    const seen = record(sub);
    await client.connect();
    await seen.until("the first snapshot", (s) => s.snapshots.length === 1);
    const epoch = sub.epoch;
    const port = gw.port;
    await gw.kill("SIGKILL");
    await redisCli(env, "FLUSHALL");
    gw = await env.startGateway("gw-a2", [], port);
    const fresh = await publish(gw.url, "orders:lost", { v: 2 }, { token: publisherToken, snapshot: true });
    assert.notEqual(fresh.epoch, epoch);
    // The client may come back before { v: 2 } is published (then it is the
    // first message of the new epoch) or after (then it is the snapshot).
    const hasV2 = (s) => s.snapshots.length === 2 || s.messages.some((m) => m.data.v === 2);
    await seen.until("the new state", hasV2, 20000);
    assert.deepEqual(seen.resyncs.map((r) => r.reason), ["not_recovered"]);
    if (seen.snapshots.length === 2) assert.deepEqual(seen.snapshots[1].data, { v: 2 });
    else assert.deepEqual(seen.messages.map((m) => [m.offset, m.data]), [[1, { v: 2 }]]);
    assert.equal(sub.epoch, fresh.epoch);
    await publish(gw.url, "orders:lost", { v: 3 }, { token: publisherToken });
    await seen.until("live after the restart", (s) => s.messages.some((m) => m.data.v === 3));
    assert.deepEqual(seen.messages.at(-1).offset, 2);
  } finally {
    client.close();
    await env.stop();
  }
});

test("filters select messages on the gateway", async () => {
  const { env, gws, subscriberToken, publisherToken } = await setup();
  const [gw] = gws;
  const client = new Client({ url: gw.wsUrl, token: subscriberToken, WebSocket });
  try {
    const sub = client.subscribe("orders:filtered", { filters: { agent_id: "a1", confidence: { min: 0.8 } } });
    const seen = record(sub);
    await client.connect();
    await sub.ready;
    const items = [
      { agent_id: "a1", confidence: 0.9, n: 1 },
      { agent_id: "a2", confidence: 0.95, n: 2 },
      { agent_id: "a1", confidence: 0.5, n: 3 },
      { agent_id: "a1", confidence: 0.8, n: 4 },
      { agent_id: "a1", n: 5 },
    ];
    for (const data of items) await publish(gw.url, "orders:filtered", data, { token: publisherToken });
    await publish(gw.url, "orders:filtered", { agent_id: "a1", confidence: 1, n: 6 }, { token: publisherToken });
    await seen.until("the matching messages", (s) => s.messages.some((m) => m.data.n === 6));
    assert.deepEqual(seen.messages.map((m) => m.data.n), [1, 4, 6]);
    assert.deepEqual(seen.offsets(), [1, 4, 6], "offsets keep the channel's numbering");
  } finally {
    client.close();
    await env.stop();
  }
});

test("acknowledgements: a new client with the session id resumes after the acknowledged offset", async () => {
  const { env, gws, subscriberToken, publisherToken } = await setup();
  const [gw] = gws;
  const first = new Client({ url: gw.wsUrl, token: subscriberToken, WebSocket });
  let second;
  try {
    const sub = first.subscribe("orders:acks", { ack: "manual" });
    const seen = record(sub);
    await first.connect();
    await sub.ready;
    for (let i = 1; i <= 5; i++) await publish(gw.url, "orders:acks", { i }, { token: publisherToken });
    await seen.until("five messages", (s) => s.messages.length === 5);
    const acked = await sub.ack(3);
    assert.equal(acked.offset, 3);
    const session = first.session;
    assert.match(session, /^[0-9a-f]{32}$/);
    // The gateway stores acknowledgements every 0.5 s.
    await waitFor("the stored acknowledgement", async () => (await redisCli(env, "HGET", `switchboard:session:${session}`, "o:orders:acks")) === "3");
    first.close();

    second = new Client({ url: gw.wsUrl, token: subscriberToken, WebSocket, session });
    const again = second.subscribe("orders:acks");
    const seen2 = record(again);
    const established = await second.connect();
    assert.equal(established.resumed, true);
    assert.equal(established.session, session);
    await seen2.until("the unacknowledged messages", (s) => s.messages.length === 2);
    assert.deepEqual(seen2.offsets(), [4, 5]);
    assert.equal(seen2.subscribed[0].restored, true);
    await publish(gw.url, "orders:acks", { i: 6 }, { token: publisherToken });
    await seen2.until("the live message", (s) => s.messages.length === 3);
    assert.deepEqual(seen2.offsets(), [4, 5, 6]);

    // Auto acknowledgement (the default) records what the listeners processed.
    await waitFor("the automatic acknowledgement", async () => (await redisCli(env, "HGET", `switchboard:session:${session}`, "o:orders:acks")) === "6");
  } finally {
    first.close();
    second?.close();
    await env.stop();
  }
});

test("the token is refreshed before it expires: the connection outlives it", async () => {
  const { env, gws, publisherToken } = await setup(["gw-a"], ["--token-expiry-grace", "1s"]);
  const [gw] = gws;
  const token = await env.mint({ ...SUBSCRIBER, ttl: "3s" });
  const expiresAt = tokenExpiry(token);
  assert.ok(expiresAt > Date.now());
  const asked = [];
  const client = new Client({
    url: gw.wsUrl,
    token,
    WebSocket,
    getToken: async (why) => {
      asked.push({ at: Date.now(), why });
      return env.mint({ ...SUBSCRIBER, ttl: "1h" });
    },
  });
  const refreshed = [];
  client.on("token_refreshed", (r) => refreshed.push({ at: Date.now(), ...r }));
  const connections = [];
  client.on("connected", (c) => connections.push(c));
  try {
    const sub = client.subscribe("orders:refresh");
    const seen = record(sub);
    await client.connect();
    await sub.ready;
    await waitFor("the refresh", () => refreshed.length === 1, 10000);
    assert.ok(refreshed[0].at < expiresAt, "refreshed before the expiry");
    assert.ok(refreshed[0].expiresAt * 1000 > expiresAt + 3000000, "with the new token's expiry");
    assert.equal(asked[0].why.reason, "expiring");
    // Past the old token's expiry and the grace period: still the same connection.
    await waitFor("the old token's expiry and grace to pass", () => Date.now() > expiresAt + 2500, 10000);
    await publish(gw.url, "orders:refresh", { after: "expiry" }, { token: publisherToken });
    await seen.until("a message after the old expiry", (s) => s.messages.length === 1);
    assert.equal(connections.length, 1, "never reconnected");
    assert.equal(client.state, "connected");
  } finally {
    client.close();
    await env.stop();
  }
});

test("typed errors: bad token, expired token, forbidden channel, forbidden publish", async () => {
  const { env, gws, subscriberToken } = await setup(["gw-a"], ["--token-expiry-grace", "1s"]);
  const [gw] = gws;
  const clients = [];
  try {
    // A refused token: the upgrade is answered 401; connect() rejects.
    const bad = new Client({ url: gw.wsUrl, token: "not.a.token", WebSocket, backoffBaseMs: 50 });
    clients.push(bad);
    const badSub = bad.subscribe("orders:x");
    await assert.rejects(bad.connect(), (e) => e instanceof AuthError && e instanceof SwitchboardError && e.code === "invalid_token" && e.status === 401);
    assert.equal(bad.state, "closed");
    await assert.rejects(badSub.ready, AuthError);

    // No token at all.
    const none = new Client({ url: gw.wsUrl, WebSocket, backoffBaseMs: 50 });
    clients.push(none);
    await assert.rejects(none.connect(), (e) => e instanceof AuthError && e.code === "missing_token");

    // A channel the token does not allow: that subscription fails, the rest goes on.
    const client = new Client({ url: gw.wsUrl, token: subscriberToken, WebSocket });
    clients.push(client);
    const errors = [];
    client.on("error", (e) => errors.push(e));
    const forbidden = client.subscribe("secrets");
    const allowed = client.subscribe("orders:ok");
    await client.connect();
    await assert.rejects(forbidden.ready, (e) => e instanceof ForbiddenError && e.code === "forbidden" && e.channel === "secrets");
    assert.equal(forbidden.state, "failed");
    await allowed.ready;
    assert.equal(client.subscription("secrets"), null);
    assert.ok(errors.some((e) => e instanceof ForbiddenError));
    assert.equal(client.state, "connected");

    // Publishing without websocket:publish.
    await assert.rejects(client.publish("orders:ok", { x: 1 }), (e) => e instanceof ForbiddenError && e.status === 403);
    await assert.rejects(publish(gw.url, "orders:ok", { x: 1 }, { token: "garbage" }), (e) => e instanceof AuthError && e.status === 401);

    // A token that expires without a refresh callback: token_expired, then 4001.
    const short = new Client({ url: gw.wsUrl, token: await env.mint({ ...SUBSCRIBER, ttl: "2s" }), WebSocket });
    clients.push(short);
    const shortErrors = [];
    short.on("error", (e) => shortErrors.push(e));
    await short.connect();
    await waitFor("the closed client", () => short.state === "closed", 15000);
    assert.ok(shortErrors[0] instanceof AuthError && shortErrors[0].code === "token_expired", "the expiry notice");
    assert.ok(short.error instanceof AuthError && short.error.closeCode === 4001, String(short.error));
  } finally {
    clients.forEach((c) => c.close());
    await env.stop();
  }
});

test("an AbortSignal shuts the client down; pending promises reject with ClosedError", async () => {
  const { env, gws, subscriberToken } = await setup();
  const [gw] = gws;
  const controller = new AbortController();
  const client = new Client({ url: gw.wsUrl, token: subscriberToken, WebSocket, signal: controller.signal });
  const subAbort = new AbortController();
  const sub = client.subscribe("orders:abort", { signal: subAbort.signal });
  const states = [];
  client.on("state", (s) => states.push(s.state));
  await client.connect();
  await sub.ready;
  const pong = await client.ping();
  assert.equal(typeof pong.timestamp, "string");
  const unsubscribed = new Promise((r) => sub.once("unsubscribed", r));
  subAbort.abort();
  await unsubscribed;
  assert.equal(sub.state, "unsubscribed");
  const later = client.subscribe("orders:never");
  const ping = client.ping();
  controller.abort();
  await assert.rejects(ping, ClosedError);
  assert.equal(client.state, "closed");
  assert.equal(states.at(-1), "closed");
  assert.equal(later.state, "pending");
  await assert.rejects(later.ready, ClosedError);
  assert.throws(() => client.subscribe("orders:y"), ClosedError);
  await env.stop();
});

test("backfill: history from before the start, then the live stream without a gap or a duplicate", async () => {
  const { env, gws, subscriberToken, publisherToken } = await setup();
  const [gw] = gws;
  const client = new Client({ url: gw.wsUrl, token: subscriberToken, WebSocket });
  try {
    for (let i = 1; i <= 8; i++) await publish(gw.url, "orders:backfill", { i }, { token: publisherToken, snapshot: i === 6 });
    const sub = client.subscribe("orders:backfill");
    const seen = record(sub);
    await client.connect();
    await seen.until("the snapshot and what followed it", (s) => s.snapshots.length === 1 && s.messages.length === 2);
    assert.equal(seen.snapshots[0].offset, 6);
    assert.deepEqual(seen.offsets(), [7, 8]);
    const backfill = sub.backfill(3);
    await publish(gw.url, "orders:backfill", { i: 9 }, { token: publisherToken });
    await backfill;
    await seen.until("the live message", (s) => s.messages.length === 3);
    assert.deepEqual(seen.history.map((h) => h.offset), [3, 4, 5], "what lies before the snapshot, once");
    assert.deepEqual(seen.offsets(), [7, 8, 9]);
    assert.deepEqual(seen.resyncs, []);
  } finally {
    client.close();
    await env.stop();
  }
});

/** A snapshot of `peers` peers, as a federation dashboard publishes it every few seconds. */
function federation(n, peers = 60) {
  return {
    sequence: n,
    peers: Array.from({ length: peers }, (_, i) => ({ id: `peer-${i}`, status: (i + n) % 13 === 0 ? "degraded" : "online", latency_ms: 10 + ((i * 7 + n) % 90), note: "ŝtation ✓" })),
  };
}

test("delta: fossil: the same data as a plain subscriber, in fewer bytes, across a gap the gateway fills", async () => {
  const { env, gws, subscriberToken, publisherToken } = await setup();
  const [gw] = gws;
  const plainClient = new Client({ url: gw.wsUrl, token: subscriberToken, WebSocket });
  const deltaClient = new Client({ url: gw.wsUrl, token: subscriberToken, WebSocket });
  try {
    const plain = record(plainClient.subscribe("orders:fed"));
    const deltaSub = deltaClient.subscribe("orders:fed", { delta: "fossil" });
    const delta = record(deltaSub);
    await Promise.all([plainClient.connect(), deltaClient.connect()]);
    await Promise.all([plain.until("plain subscribed", (s) => s.subscribed.length === 1), delta.until("delta subscribed", (s) => s.subscribed.length === 1)]);
    assert.equal(deltaSub.deltaActive, true, "the gateway confirmed the delta format");
    for (let n = 1; n <= 5; n++) await publish(gw.url, "orders:fed", federation(n), { token: publisherToken, snapshot: true });
    // A gap: 6 is written to history but announced where nobody listens; 7 reveals it.
    const script = readFileSync(new URL("../../../src/engine/publish.lua", import.meta.url), "utf8");
    const key = (suffix) => `switchboard:{orders:fed}${suffix}`;
    await redisCli(env, "EVAL", script, "3", key(":meta"), key(":history"), key(":snapshot"), "switchboard:nobody-listens", JSON.stringify(federation(6)), "1000", "600000", "unused", "1", "", "publish");
    await publish(gw.url, "orders:fed", federation(7), { token: publisherToken, snapshot: true });
    await plain.until("plain got 7", (s) => s.offsets().includes(7));
    await delta.until("delta got 7", (s) => s.offsets().includes(7));
    assert.deepEqual(delta.offsets(), [1, 2, 3, 4, 5, 6, 7]);
    assert.deepEqual(delta.messages.map((m) => m.data), plain.messages.map((m) => m.data));
    assert.deepEqual(delta.messages.map((m) => m.data), [1, 2, 3, 4, 5, 6, 7].map((n) => federation(n)));
    // The first message is whole; the others are deltas, a fraction of the size.
    for (let i = 1; i < 7; i++) assert.ok(delta.messages[i].size * 4 < plain.messages[i].size, `message ${i + 1}: ${delta.messages[i].size} vs ${plain.messages[i].size}`);
    assert.ok(delta.messages[0].size >= plain.messages[0].size * 0.9, "the first message is whole");
    assert.equal(delta.messages[1].fullSize, new TextEncoder().encode(JSON.stringify(federation(2))).length, "fullSize: the message whole, in bytes");
    // A delta that cannot be applied (simulated): an error, then the
    // subscription resumes after the last message delivered; nothing lost.
    const errors = [];
    deltaSub.on("error", (e) => errors.push(e.code));
    const decode = deltaSub._decode;
    deltaSub._decode = () => {
      deltaSub._decode = decode;
      throw new SwitchboardError("simulated", { code: "bad_delta" });
    };
    for (let n = 8; n <= 10; n++) await publish(gw.url, "orders:fed", federation(n), { token: publisherToken, snapshot: true });
    await delta.until("delta got 10", (s) => s.offsets().includes(10));
    assert.deepEqual(errors, ["bad_delta"]);
    assert.deepEqual(delta.offsets(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.deepEqual(delta.messages.slice(7).map((m) => m.data), [8, 9, 10].map((n) => federation(n)));
  } finally {
    plainClient.close();
    deltaClient.close();
    await env.stop();
  }
});

test("applyFossilDelta: rebuilds the target, and refuses a corrupt delta or the wrong base", () => {
  const enc = (s) => new TextEncoder().encode(s);
  const base = enc("the quick brown fox jumps over the lazy dog; the quick brown fox");
  const target = enc("the quick brown red fox jumps over the lazy dog; the quick brown fox");
  // Deltas written by hand in the fossil format (the gateway's own are checked
  // in the test above): size, newline, commands, checksum.
  const sum = (bytes) => {
    let s = 0;
    for (let i = 0; i < bytes.length; i += 4) s = (s + (((bytes[i] << 24) | ((bytes[i + 1] ?? 0) << 16) | ((bytes[i + 2] ?? 0) << 8) | (bytes[i + 3] ?? 0)) >>> 0)) >>> 0;
    return s;
  };
  const b64 = (n) => {
    const d = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";
    let out = "";
    do {
      out = d[n % 64] + out;
      n = Math.floor(n / 64);
    } while (n > 0);
    return out;
  };
  const literal = enc(`${b64(target.length)}\n${b64(target.length)}:${new TextDecoder().decode(target)}${b64(sum(target))};`);
  // The whole target as one literal.
  assert.deepEqual(applyFossilDelta(base, literal), target);
  // Copy 16 bytes from 0, insert "red ", copy the rest from 16.
  const copying = enc(`${b64(target.length)}\n${b64(16)}@0,4:red ${b64(target.length - 20)}@${b64(16)},${b64(sum(target))};`);
  assert.deepEqual(new TextDecoder().decode(applyFossilDelta(base, copying)), new TextDecoder().decode(target));
  const corrupt = copying.slice();
  corrupt[corrupt.length - 2] ^= 1; // the checksum
  assert.throws(() => applyFossilDelta(base, corrupt), (e) => e instanceof SwitchboardError && e.code === "bad_delta");
  assert.throws(() => applyFossilDelta(enc("another base entirely, of some length"), copying), (e) => e.code === "bad_delta");
  assert.throws(() => applyFossilDelta(base, copying.slice(0, 10)), (e) => e.code === "bad_delta");
});
