// The dashboard page: sign-in, the connection, and what the page says about
// the age of what it shows. It never shows a frozen page silently: the
// connection state is always in the header, a section with no update for
// a while is marked, and a lost connection is said in a banner.

import { Connection } from "./connection.js";
import { FederationView, MemoryView, OperationsView } from "./panels.js";

const TOKEN_KEY = "switchboard.token";
// The collector publishes every 2–3 s: a dashboard silent this long is marked.
const SILENT_AFTER_MS = 10000;

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  who: null,
  connection: null,
  views: null,
  dirty: new Set(),
  frame: 0,
  lastReceived: { federation: 0, memory: 0, "sys:stats": 0 },
  connected: false,
  disconnectedAt: 0,
  operationsAllowed: false,
};

function readToken() {
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get("token");
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    params.delete("token");
    const query = params.toString();
    // The token leaves the address bar (and the history) at once.
    history.replaceState(null, "", location.pathname + (query ? "?" + query : "") + location.hash);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function showBanner(message, bad = false) {
  const banner = $("banner");
  if (!message) {
    banner.hidden = true;
    return;
  }
  banner.hidden = false;
  banner.textContent = message;
  banner.classList.toggle("bad", bad);
}

function showSignIn(message) {
  $("dashboard").hidden = true;
  $("signin").hidden = false;
  const error = $("signin-error");
  error.hidden = !message;
  error.textContent = message || "";
  setConn("signed-out", "signed out");
  $("signout").hidden = true;
  $("signin-token").focus();
}

function setConn(kind, message) {
  const conn = $("conn");
  conn.dataset.state = kind;
  $("conn-text").textContent = message;
}

/** Asks the gateway who the token belongs to: {ok, who} or {ok: false, status, code, message}. */
async function whoami(token) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  try {
    const response = await fetch("api/v1/whoami", { headers, cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (response.ok) return { ok: true, who: body };
    return { ok: false, status: response.status, code: body.error || "", message: body.message || response.statusText };
  } catch (e) {
    return { ok: false, status: 0, code: "unreachable", message: "the gateway cannot be reached" };
  }
}

function socketUrl() {
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  url.hash = "";
  return url.toString();
}

function schedule(name) {
  state.dirty.add(name);
  if (state.frame) return;
  state.frame = requestAnimationFrame(() => {
    state.frame = 0;
    const dirty = Array.from(state.dirty);
    state.dirty.clear();
    for (const d of dirty) state.views[d].render();
  });
}

const VIEW_OF = { federation: "federation", memory: "memory", "sys:stats": "operations" };

function onData(channel, message) {
  const view = VIEW_OF[channel];
  if (!view) return;
  if (message.kind !== "history") {
    state.lastReceived[channel] = Date.now();
    // The last offset shown, for people (and tests) comparing with the channel.
    if (typeof message.offset === "number") $(view).dataset.offset = String(message.offset);
  }
  if (typeof message.offset === "number") {
    // The oldest offset the view holds (history included): with no gap, the
    // view holds every message from there to `data-offset`.
    const el = $(view);
    if (!el.dataset.firstOffset || message.offset < Number(el.dataset.firstOffset)) el.dataset.firstOffset = String(message.offset);
  }
  state.views[view].apply(message);
  schedule(view);
}

function onReset(channel, why) {
  const view = VIEW_OF[channel];
  if (!view) return;
  console.info(`${channel}: ${why}; the page starts over from the current snapshot`);
  state.views[view].reset();
  delete $(view).dataset.firstOffset;
  schedule(view);
}

function onChannelError(channel, code, message) {
  if (channel === "sys:stats" && code === "forbidden") {
    denyOperations();
    return;
  }
  const section = document.querySelector(`[data-channel="${CSS.escape(channel)}"]`);
  if (section) {
    section.dataset.state = "error";
    const fresh = section.querySelector(".fresh");
    if (fresh) fresh.textContent = `the gateway refused this channel: ${message} (${code})`;
  }
}

function denyOperations() {
  state.operationsAllowed = false;
  $("operations-denied").hidden = false;
  $("operations-body").hidden = true;
  $("operations").dataset.state = "denied";
  $("operations-fresh").textContent = "";
}

/** Once a second: how old each section's data is, and whether the page is live. */
function tick() {
  const now = Date.now();
  const sections = [
    ["federation", "federation"],
    ["memory", "memory"],
  ];
  if (state.operationsAllowed) sections.push(["operations", "sys:stats"]);
  for (const [id, channel] of sections) {
    const el = $(id);
    if (el.dataset.state === "error" || el.dataset.state === "denied") continue;
    const fresh = $(`${id}-fresh`);
    const last = state.lastReceived[channel];
    let stateName;
    let label;
    if (!last) {
      stateName = "waiting";
      label = id === "operations" ? "waiting for the first report…" : "waiting for the first snapshot…";
    } else if (!state.connected) {
      stateName = "frozen";
      label = `not live: connection lost, showing data from ${Math.round((now - last) / 1000)} s ago`;
    } else if (id === "operations" ? !state.views.operations.anyReporting(now) : now - last > SILENT_AFTER_MS) {
      stateName = "silent";
      label = `no update for ${Math.round((now - last) / 1000)} s — is the ${id === "operations" ? "stats feed" : "collector"} running?`;
    } else {
      stateName = "live";
      label = `updated ${Math.round((now - last) / 1000)} s ago`;
      const latest = id === "operations" ? null : state.views[id].latest;
      if (latest && latest.generated_at) label += ` · generated ${new Date(latest.generated_at).toLocaleTimeString()} · v${latest.version}`;
    }
    el.dataset.state = stateName;
    fresh.textContent = label;
  }
  // "silent for N s" and report ages move with the clock.
  if (state.operationsAllowed && state.lastReceived["sys:stats"]) schedule("operations");
}

function onStatus(status) {
  const connected = status.state === "connected";
  if (state.connected && !connected) state.disconnectedAt = Date.now();
  state.connected = connected;
  setConn(status.state, status.text);
  if (connected) {
    showBanner(null);
  } else if (status.state === "reconnecting" || status.state === "offline") {
    const since = state.disconnectedAt ? ` (since ${new Date(state.disconnectedAt).toLocaleTimeString()})` : "";
    showBanner(`Not live${since}: ${status.text}. The figures below are the last ones received.`);
  } else if (status.state === "stopped") {
    showBanner(`Not live: ${status.text}.`, true);
  }
  const conn = $("conn");
  if (status.replica) conn.dataset.replica = status.replica;
  // permessage-deflate, when the browser and the gateway agreed on it.
  if (connected) conn.dataset.compressed = String(status.extensions.includes("permessage-deflate"));
}

function onRefused(error) {
  // The client asked GET api/v1/whoami why the connection was refused.
  const why = error.message.charAt(0).toUpperCase() + error.message.slice(1);
  if (error.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn(`${why}.`);
  } else {
    showSignIn(`The token may not open a connection: ${error.message}.`);
  }
}

function onTokenExpired(message) {
  showBanner(`The token expired (${message}). Paste a new one below the header to continue.`, true);
  sessionStorage.removeItem(TOKEN_KEY);
  showSignIn("Your token expired: paste a new one to continue.");
}

async function start() {
  const answer = await whoami(state.token);
  if (!answer.ok) {
    if (answer.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      state.token = null;
      showSignIn(answer.code === "missing_token" ? "" : `The gateway refused the token: ${answer.message} (${answer.code}).`);
      return;
    }
    setConn("reconnecting", `${answer.message}; retrying in 3 s`);
    showBanner(`Not live: ${answer.message}. Retrying.`);
    setTimeout(start, 3000);
    return;
  }
  state.who = answer.who;
  $("signin").hidden = true;
  $("dashboard").hidden = false;
  // Without a token, a gateway with --anonymous-subscribe lets the page read
  // the channels it names; signing in (with a token) adds the rest.
  const anonymous = Boolean(answer.who.anonymous);
  $("who-user").textContent = anonymous
    ? "no token (read-only)"
    : answer.who.auth
      ? `${answer.who.user || "?"}${answer.who.admin ? " (admin)" : ""}`
      : "no authentication";
  $("signout").hidden = !answer.who.auth;
  $("signout").textContent = anonymous ? "Sign in" : "Sign out";
  $("conn").dataset.auth = anonymous ? "anonymous" : answer.who.auth ? "token" : "none";
  state.operationsAllowed = Boolean(answer.who.admin);
  if (!state.operationsAllowed) denyOperations();
  else {
    $("operations-denied").hidden = true;
    $("operations-body").hidden = false;
    // A view denied to an earlier token (or to no token) starts over.
    if ($("operations").dataset.state === "denied") $("operations").dataset.state = "waiting";
  }
  if (!state.views) {
    state.views = { federation: new FederationView(), memory: new MemoryView(), operations: new OperationsView() };
    setInterval(tick, 1000);
  }
  // A new token (signed in again) gets a new connection that resumes where
  // the old one stopped.
  const previous = state.connection;
  if (previous) previous.stop("reconnecting with the new token");
  const channels = [
    // The snapshot channels resend their whole state every few seconds: as
    // fossil deltas against the previous one they cost a fraction of the bytes.
    { name: "federation", delta: "fossil", backfill: { max: 120, budgetBytes: 384 * 1024, afterSnapshot: true } },
    { name: "memory", delta: "fossil", backfill: { max: 120, budgetBytes: 384 * 1024, afterSnapshot: true } },
  ];
  if (state.operationsAllowed) channels.push({ name: "sys:stats", backfill: { max: 180, afterSnapshot: false } });
  state.connection = new Connection({
    url: socketUrl(),
    token: state.token,
    channels,
    resumeFrom: previous,
    handlers: {
      status: onStatus,
      data: onData,
      reset: onReset,
      channelError: onChannelError,
      greeted: () => {},
      refused: onRefused,
      tokenExpired: onTokenExpired,
    },
  });
  state.connection.start();
}

function boot() {
  if (!window.echarts) {
    showBanner("The chart library did not load (assets/vendor/echarts/echarts.min.js); reload the page.", true);
    return;
  }
  state.token = readToken();
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("signin-token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    state.token = token;
    $("signin-token").value = "";
    start();
  });
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    if (state.connection) state.connection.stop("signed out");
    showSignIn("");
  });
  start();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
else boot();
