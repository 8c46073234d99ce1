// switchboard client: the native protocol of switchboard's docs/PROTOCOL.md, for
// browsers and Node, with no dependency. One WebSocket to any gateway replica;
// subscriptions with `since` and filters that resume after a lost connection
// (on any replica, with `?session=` and `since`) without a gap or a duplicate;
// the protocol's reconnect algorithm (full jitter); acknowledgements; a token
// refreshed before it expires; publishing over the HTTP API; typed errors.
//
// The declarations are in switchboard.d.ts; README.md has examples.

export const VERSION = "0.1.0";

// ---------------------------------------------------------------- errors

/** Every error this module raises or emits. */
export class SwitchboardError extends Error {
  /**
   * @param {string} message
   * @param {{code?: string, status?: number, channel?: string, closeCode?: number, cause?: unknown}} [details]
   */
  constructor(message, { code = "error", status, channel, closeCode, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "SwitchboardError";
    this.code = code;
    if (status !== undefined) this.status = status;
    if (channel !== undefined) this.channel = channel;
    if (closeCode !== undefined) this.closeCode = closeCode;
  }
}

/** The token is missing, refused or expired (HTTP 401, `unauthorized`, close 4001). */
export class AuthError extends SwitchboardError {
  constructor(message, details) {
    super(message, details);
    this.name = "AuthError";
  }
}

/** The token does not allow this: a channel, publishing, or connecting at all (403, `forbidden`). */
export class ForbiddenError extends SwitchboardError {
  constructor(message, details) {
    super(message, details);
    this.name = "ForbiddenError";
  }
}

/** The client was closed, or the gateway ended it for good (4004, 1002, 1007, 1009). */
export class ClosedError extends SwitchboardError {
  constructor(message, details) {
    super(message, details);
    this.name = "ClosedError";
  }
}

/** The publish API refused a message (other than for the token: see AuthError, ForbiddenError). */
export class PublishError extends SwitchboardError {
  constructor(message, details) {
    super(message, details);
    this.name = "PublishError";
  }
}

// ---------------------------------------------------------------- constants

/** Close codes after which reconnecting cannot help (docs/PROTOCOL.md, close codes). */
const FINAL_CLOSE = {
  4004: "an administrator disconnected this user",
  1002: "the gateway refused the client's frames (protocol error)",
  1007: "the gateway refused the client's frames (not UTF-8)",
  1009: "the gateway refused a frame as too large",
};
const OPEN = 1;
const noop = () => {};
/** Marks a promise as handled (its rejection is still seen by whoever awaits it). */
const quiet = (promise) => {
  promise.catch(noop);
  return promise;
};

function deferred() {
  /** @type {(value?: any) => void} */
  let resolve = noop;
  /** @type {(error: any) => void} */
  let reject = noop;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  quiet(promise);
  return { promise, resolve, reject };
}

function errorOf(code, message, details = {}) {
  if (["missing_token", "invalid_token", "token_expired", "token_not_yet_valid", "wrong_audience", "wrong_issuer", "missing_claim", "unauthorized"].includes(code)) {
    return new AuthError(message, { code, ...details });
  }
  if (code === "forbidden" || code === "origin_not_allowed") return new ForbiddenError(message, { code, ...details });
  return new SwitchboardError(message, { code, ...details });
}

/** The `exp` of a JWT in milliseconds, or null (the token is not verified here). */
export function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    return typeof claims.exp === "number" ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

/** `ws://host/prefix/ws` → `http://host/prefix/` (where the HTTP API is). */
function httpBase(wsUrl) {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === "wss:" ? "https:" : url.protocol === "ws:" ? "http:" : url.protocol;
  url.search = "";
  url.hash = "";
  url.pathname = url.pathname.replace(/ws\/?$/, "");
  if (!url.pathname.endsWith("/")) url.pathname += "/";
  return url.toString();
}

/**
 * A gateway URL as a WebSocket URL of `/ws`: `http://h:8080` and `ws://h:8080`
 * → `ws://h:8080/ws`; a `ws(s)://` URL with a path stays as it is.
 */
function socketUrl(url) {
  const u = new URL(url);
  if (u.protocol === "http:" || u.protocol === "https:") {
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    u.pathname = u.pathname.replace(/\/?$/, "/ws");
  } else if (u.pathname === "/" || u.pathname === "") {
    u.pathname = "/ws";
  }
  if (u.protocol !== "ws:" && u.protocol !== "wss:") throw new SwitchboardError(`not a gateway URL: ${url}`, { code: "bad_url" });
  return u.toString();
}

// ---------------------------------------------------------------- events

class Emitter {
  #listeners = new Map();

  /** Adds a listener; returns a function that removes it. */
  on(type, listener) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(listener);
    return () => this.off(type, listener);
  }

  off(type, listener) {
    const set = this.#listeners.get(type);
    if (set) set.delete(listener);
  }

  once(type, listener) {
    const off = this.on(type, (value) => {
      off();
      listener(value);
    });
    return off;
  }

  listenerCount(type) {
    return this.#listeners.get(type)?.size ?? 0;
  }

  emit(type, value) {
    const set = this.#listeners.get(type);
    if (!set) return;
    for (const listener of Array.from(set)) {
      try {
        listener(value);
      } catch (e) {
        this.listenerFailed(type, e);
      }
    }
  }

  /** A listener threw: it must not stop the client. */
  listenerFailed(type, e) {
    if (type !== "error" && this.listenerCount("error") > 0) {
      this.emit("error", new SwitchboardError(`a "${type}" listener threw: ${e && e.message}`, { code: "listener_failed", cause: e }));
    } else {
      console.error(`switchboard: a "${type}" listener threw`, e);
    }
  }
}

// ---------------------------------------------------------------- deltas

// Fossil deltas (https://fossil-scm.org/home/doc/tip/www/delta_format.wiki),
// applied here rather than with a package so the module keeps no dependency
// and loads in the page as it is: ~50 lines, tested against the gateway's own.
const FOSSIL_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";
const FOSSIL_VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < FOSSIL_DIGITS.length; i++) FOSSIL_VALUE[FOSSIL_DIGITS.charCodeAt(i)] = i;

/**
 * Applies a fossil delta to `base`; throws if the delta is malformed or does
 * not belong to `base` (its checksum does not match).
 * @param {Uint8Array} base
 * @param {Uint8Array} delta
 * @returns {Uint8Array}
 */
export function applyFossilDelta(base, delta) {
  let pos = 0;
  const fail = (why) => {
    throw new SwitchboardError(`cannot apply the delta: ${why}`, { code: "bad_delta" });
  };
  const int = () => {
    let n = 0;
    const start = pos;
    while (pos < delta.length && delta[pos] < 128 && FOSSIL_VALUE[delta[pos]] >= 0) {
      n = n * 64 + FOSSIL_VALUE[delta[pos++]];
    }
    if (pos === start) fail("a number is missing");
    return n;
  };
  const size = int();
  if (delta[pos++] !== 0x0a) fail("no size line");
  const out = new Uint8Array(size);
  let total = 0;
  while (pos < delta.length) {
    const count = int();
    const op = delta[pos++];
    if (op === 0x40 /* @ copy */) {
      const from = int();
      if (delta[pos++] !== 0x2c) fail("a copy without its comma");
      if (total + count > size || from + count > base.length) fail("a copy out of bounds");
      out.set(base.subarray(from, from + count), total);
      total += count;
    } else if (op === 0x3a /* : insert */) {
      if (total + count > size || pos + count > delta.length) fail("an insert out of bounds");
      out.set(delta.subarray(pos, pos + count), total);
      total += count;
      pos += count;
    } else if (op === 0x3b /* ; checksum */) {
      if (total !== size) fail("the result is shorter than announced");
      if (count !== fossilChecksum(out)) fail("checksum mismatch (not this delta's base)");
      return out;
    } else {
      fail("an unknown command");
    }
  }
  return fail("the delta is cut short");
}

/** Fossil's checksum: the sum of the big-endian 32-bit words, zero-padded. */
function fossilChecksum(bytes) {
  let sum = 0;
  let i = 0;
  for (; i + 4 <= bytes.length; i += 4) {
    sum = (sum + ((bytes[i] << 24) | (bytes[i + 1] << 16) | (bytes[i + 2] << 8) | bytes[i + 3])) >>> 0;
  }
  let tail = 0;
  for (let shift = 24; i < bytes.length; i++, shift -= 8) tail |= bytes[i] << shift;
  return (sum + tail) >>> 0;
}

const UTF8 = new TextEncoder();
const UTF8_STRICT = new TextDecoder("utf-8", { fatal: true });

// ---------------------------------------------------------------- subscription

/** One channel of a Client: survives reconnections until unsubscribed. */
export class Subscription extends Emitter {
  constructor(client, channel, options) {
    super();
    this.client = client;
    this.channel = channel;
    this.filters = options.filters ?? null;
    /** `"fossil"`: messages come as deltas against the previous one (decoded here). */
    this.delta = options.delta === "fossil" ? "fossil" : null;
    /** The gateway confirmed the delta format on this connection's subscription. */
    this.deltaActive = false;
    /** The previous message's JSON text (bytes) and offset: what the next delta applies to. */
    this.base = null;
    this.baseOffset = null;
    this.ackMode = options.ack ?? "auto";
    this.shouldResume = options.shouldResume ?? null;
    /** "pending" | "subscribed" | "unsubscribed" | "failed" */
    this.state = "pending";
    /** Epoch of `offset`. */
    this.epoch = options.since ? options.since.epoch : null;
    /** The newest offset delivered (or the start of the subscription). */
    this.offset = options.since ? options.since.offset : 0;
    /** The channel's newest offset when this connection's subscription started. */
    this.startOffset = 0;
    this.error = null;
    this.live = false; // subscribed on the current connection
    this.requestId = null;
    this.sentSince = false;
    this.startSnapshot = false;
    /** The oldest offset delivered since the subscription (re)started: a backfill reads what lies before it. */
    this.floor = null;
    this.backfilling = false;
    this.backfillCount = 0;
    this.unsubscribing = false;
    this.acked = 0;
    this.ready$ = deferred();
    /** Resolves with the first `subscribed` event; rejects if the subscription is refused. */
    this.ready = this.ready$.promise;
    if (options.signal) {
      if (options.signal.aborted) queueMicrotask(() => quiet(this.unsubscribe()));
      else options.signal.addEventListener("abort", () => quiet(this.unsubscribe()), { once: true });
    }
  }

  /**
   * The data of a message of a delta subscription: its JSON text whole, or a
   * delta against the previous message. Throws a SwitchboardError
   * (`bad_delta`) if it cannot be decoded.
   */
  _decode(frame) {
    let text;
    let bytes;
    try {
      if (frame.delta === true) {
        if (this.base === null || this.baseOffset !== frame.offset - 1) {
          throw new SwitchboardError(`a delta for offset ${frame.offset} without its base`, { code: "bad_delta", channel: this.channel });
        }
        const patch = new Uint8Array(frame.data.length);
        for (let i = 0; i < patch.length; i++) patch[i] = frame.data.charCodeAt(i);
        bytes = applyFossilDelta(this.base, patch);
        text = UTF8_STRICT.decode(bytes);
      } else {
        text = frame.data;
        bytes = UTF8.encode(text);
      }
      const data = JSON.parse(text);
      this.base = bytes;
      this.baseOffset = frame.offset;
      return data;
    } catch (e) {
      if (e instanceof SwitchboardError) throw e;
      throw new SwitchboardError(`cannot decode the message at offset ${frame.offset}: ${e && e.message}`, { code: "bad_delta", channel: this.channel, cause: e });
    }
  }

  /** Acknowledges processing up to `offset` (default: the newest delivered); resolves on `acked`. */
  ack(offset = this.offset) {
    return quiet(this.client._ack(this, offset));
  }

  /** Ends the subscription (resolves when the gateway confirms, or at once when offline). */
  unsubscribe() {
    return quiet(this.client._unsubscribe(this));
  }

  /** Asks for the channel's snapshot again; it comes as a `snapshot` event. */
  refresh() {
    return quiet(this.client._request({ type: "refresh", channel: this.channel }).then(noop));
  }

  /**
   * Reads up to `count` messages from before the oldest one delivered (or the
   * start snapshot) out of the channel's history; they come as `history` events (oldest first), the
   * live stream continues without a gap or a duplicate.
   */
  backfill(count) {
    return quiet(this.client._backfill(this, count));
  }

  /** An iterator over messages (and snapshots with `{snapshots: true}`), for `for await`. */
  [Symbol.asyncIterator]() {
    const queue = [];
    let wake = null;
    let done = false;
    const push = (item) => {
      queue.push(item);
      if (wake) wake();
    };
    const offs = [this.on("message", push), this.on("snapshot", push), this.on("unsubscribed", () => {
      done = true;
      if (wake) wake();
    })];
    const stop = () => {
      done = true;
      offs.forEach((off) => off());
      if (wake) wake();
    };
    return {
      next: async () => {
        for (;;) {
          if (queue.length) return { value: queue.shift(), done: false };
          if (done || this.state === "failed" || this.state === "unsubscribed") {
            stop();
            if (this.state === "failed" && this.error) throw this.error;
            return { value: undefined, done: true };
          }
          await new Promise((resolve) => (wake = resolve));
          wake = null;
        }
      },
      return: async () => {
        stop();
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }
}

// ---------------------------------------------------------------- client

const DEFAULTS = {
  backoffBaseMs: 500,
  backoffCapMs: 30000,
  stableMs: 60000,
  floodDelayMs: 60000,
  pingIntervalMs: 15000,
  refreshBeforeMs: 30000,
  ackIntervalMs: 1000,
  maxAcksPerInterval: 8,
  session: true,
  checkAuth: true,
};

export class Client extends Emitter {
  #ws = null;
  #urls;
  #urlIndex = 0;
  #WebSocket;
  #fetch;
  #options;
  #token;
  #getToken;
  #subs = new Map();
  #pending = new Map();
  #nextId = 1;
  #attempt = 0;
  #timers = {};
  #greeted = false;
  #openedAt = 0;
  #lastFrameAt = 0;
  #downSince = 0;
  #lastClose = 0;
  #started = false;
  #closed = false;
  #connected$ = deferred();
  #refreshing = null;
  #authFailures = 0;
  #ackQueue = new Map();
  #offAbort = noop;
  #offOnline = noop;

  constructor(options) {
    super();
    if (!options || !options.url) throw new SwitchboardError("options.url is required", { code: "bad_options" });
    this.#options = { ...DEFAULTS, ...options };
    this.#urls = (Array.isArray(options.url) ? options.url : [options.url]).map(socketUrl);
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.#fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
    this.#token = options.token ?? null;
    this.#getToken = options.getToken ?? null;
    /** "idle" | "connecting" | "connected" | "reconnecting" | "offline" | "closed" */
    this.state = "idle";
    /** The session id to resume (`?session=`); kept across connections. */
    this.session = typeof options.session === "string" ? options.session : null;
    this.replica = null;
    this.connectionId = null;
    this.user = null;
    /** The WebSocket extensions of the current connection (`permessage-deflate; …` when compressed). */
    this.extensions = "";
    /** Why the client closed for good (null while it runs or after close()). */
    this.error = null;
    if (options.signal) {
      const abort = () => this.close();
      if (options.signal.aborted) queueMicrotask(abort);
      else {
        options.signal.addEventListener("abort", abort, { once: true });
        this.#offAbort = () => options.signal.removeEventListener("abort", abort);
      }
    }
  }

  get token() {
    return this.#token;
  }

  /**
   * Starts the client (it keeps reconnecting until closed). Resolves with the
   * first `connection_established`; rejects only when the client stops for
   * good (bad token, forbidden, closed).
   */
  connect() {
    if (!this.#started && !this.#closed) {
      this.#started = true;
      if (!this.#WebSocket) {
        this.#fail(new SwitchboardError("no WebSocket implementation: pass options.WebSocket (e.g. the ws package's WebSocket on Node < 22)", { code: "no_websocket" }));
      } else {
        this.#watchNetwork();
        this.#scheduleTokenRefresh();
        this.#open();
      }
    }
    return this.#connected$.promise;
  }

  /** Subscribes to `channel` (sent now if connected, else on connection). */
  subscribe(channel, options = {}) {
    if (this.#closed) throw new ClosedError("the client is closed", { code: "closed" });
    const existing = this.#subs.get(channel);
    if (existing) throw new SwitchboardError(`already subscribed to ${channel}`, { code: "already_subscribed", channel });
    const sub = new Subscription(this, channel, options);
    this.#subs.set(channel, sub);
    if (this.#greeted) this.#sendSubscribe(sub, false);
    return sub;
  }

  /** The subscription of `channel`, if any. */
  subscription(channel) {
    return this.#subs.get(channel) ?? null;
  }

  /** Application ping; resolves with the gateway's `pong`. */
  ping() {
    return quiet(this._request({ type: "ping" }));
  }

  /** Replaces the token: used for the next connections and sent now with `refresh_token`. */
  setToken(token) {
    this.#token = token;
    this.#scheduleTokenRefresh();
    if (this.#greeted) return quiet(this._request({ type: "refresh_token", token }).then((frame) => {
      this.emit("token_refreshed", { expiresAt: frame.expires_at });
      return frame;
    }));
    return Promise.resolve(null);
  }

  /** Publishes through the HTTP API of the gateway; resolves with {channel, offset, epoch}. */
  async publish(channel, data, options = {}) {
    if (this.#getToken && this.#tokenNeedsRefresh()) await this.#refreshToken().catch(noop);
    return publish(httpBase(this.#urls[this.#urlIndex % this.#urls.length]), channel, data, {
      token: this.#token,
      fetch: this.#fetch,
      ...options,
    });
  }

  /** Closes the connection for good; every pending promise rejects with ClosedError. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    const error = new ClosedError("the client was closed", { code: "closed" });
    this.#stop(error, 1000);
    this.#setState("closed", {});
  }

  // ------------------------------------------------ connection

  #setState(state, details) {
    this.state = state;
    this.emit("state", { state, replica: this.replica, ...details });
  }

  #open() {
    this.#clearTimer("reconnect");
    if (this.#closed) return;
    if (globalThis.navigator && globalThis.navigator.onLine === false) {
      this.#setState("offline", { reason: "the browser has no network" });
      return;
    }
    if (this.#getToken && this.#tokenNeedsRefresh()) {
      this.#refreshToken().then(
        () => this.#openSocket(),
        (e) => this.#fail(e instanceof SwitchboardError ? e : new AuthError(`getToken failed: ${e && e.message}`, { code: "token_unavailable", cause: e })),
      );
      return;
    }
    this.#openSocket();
  }

  #openSocket() {
    if (this.#closed || this.#ws) return;
    this.#setState("connecting", { attempt: this.#attempt });
    const url = new URL(this.#urls[this.#urlIndex % this.#urls.length]);
    if (this.#options.session && this.session) url.searchParams.set("session", this.session);
    const protocols = this.#token ? ["switchboard", "bearer." + this.#token] : undefined;
    let ws;
    try {
      ws = protocols ? new this.#WebSocket(url.toString(), protocols) : new this.#WebSocket(url.toString());
    } catch (e) {
      this.#lost(1006, `cannot open a WebSocket: ${e && e.message}`);
      return;
    }
    this.#ws = ws;
    this.#greeted = false;
    this.#openedAt = 0;
    ws.onopen = () => {
      this.#openedAt = Date.now();
      this.#lastFrameAt = Date.now();
      this.extensions = typeof ws.extensions === "string" ? ws.extensions : "";
    };
    ws.onmessage = (event) => {
      if (this.#ws !== ws) return;
      const text = typeof event.data === "string" ? event.data : new TextDecoder().decode(event.data);
      this.#onFrame(text);
    };
    ws.onclose = (event) => {
      if (this.#ws !== ws) return;
      this.#lost(event.code, event.reason || "");
    };
    ws.onerror = noop; // a close event follows
  }

  #closeSocket(code) {
    const ws = this.#ws;
    this.#ws = null;
    this.#greeted = false;
    this.#clearTimer("ping");
    this.#clearTimer("acks");
    this.#clearTimer("stable");
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = noop;
    ws.onerror = noop;
    try {
      if (code === undefined && typeof ws.terminate === "function") ws.terminate();
      else ws.close(code ?? 1000);
    } catch {
      /* already closed */
    }
  }

  #send(message) {
    if (!this.#ws || this.#ws.readyState !== OPEN) return false;
    this.#ws.send(JSON.stringify(message));
    return true;
  }

  /** Sends a request with an id; resolves with the answer, rejects with its error. */
  _request(message) {
    if (!this.#greeted) return Promise.reject(new SwitchboardError("not connected", { code: "not_connected" }));
    const id = this.#nextId++;
    const wait = deferred();
    this.#pending.set(id, { ...wait, message });
    this.#send({ ...message, id });
    return wait.promise;
  }

  #lost(code, reason) {
    const wasGreeted = this.#greeted;
    const upFor = this.#openedAt ? Date.now() - this.#openedAt : 0;
    this.#closeSocket();
    this.#dropPending(new SwitchboardError(`connection lost (${code})`, { code: "disconnected", closeCode: code }));
    for (const sub of this.#subs.values()) sub.live = false;
    if (this.#closed) return;
    if (wasGreeted) this.#downSince = Date.now();
    this.#lastClose = code;
    if (FINAL_CLOSE[code]) {
      this.#fail(new ClosedError(`${FINAL_CLOSE[code]} (close ${code}${reason ? ": " + reason : ""})`, { code: "closed", closeCode: code }));
      return;
    }
    if (upFor >= this.#options.stableMs || code === 1001) this.#attempt = 0;
    const why = code === 1001 ? "the replica is shutting down (1001)" : code === 1006 ? "connection lost (1006)" : `closed (${code}${reason ? ": " + reason : ""})`;
    if (code === 4001) {
      if (!this.#getToken) {
        this.#fail(new AuthError("the token expired and the gateway closed the connection (4001)", { code: "token_expired", closeCode: 4001 }));
        return;
      }
      this.#refreshToken().then(
        () => this.#scheduleReconnect(why, code),
        (e) => this.#fail(e),
      );
      return;
    }
    this.#scheduleReconnect(why, code);
    if (!wasGreeted && this.#options.checkAuth && this.#fetch) {
      // In parallel with the backoff: a refused token stops the retries.
      this.#diagnose().then((error) => {
        if (!error || this.#closed || this.#greeted) return;
        if (error instanceof AuthError && this.#getToken && this.#authFailures++ < 2) {
          this.#refreshToken(true).catch((e) => this.#fail(e));
        } else this.#fail(error);
      });
    }
  }

  /** Why an upgrade may have been refused: a browser cannot read the status, so ask the REST API. */
  async #diagnose() {
    try {
      const headers = this.#token ? { Authorization: "Bearer " + this.#token } : {};
      const response = await this.#fetch(httpBase(this.#urls[this.#urlIndex % this.#urls.length]) + "api/v1/whoami", {
        headers,
        signal: typeof AbortSignal.timeout === "function" ? AbortSignal.timeout(10000) : undefined,
      });
      if (response.status !== 401 && response.status !== 403) return null;
      const body = await response.json().catch(() => ({}));
      const message = `the gateway refused the token: ${body.message || response.statusText} (${body.error || response.status})`;
      return errorOf(body.error || (response.status === 401 ? "invalid_token" : "forbidden"), message, { status: response.status });
    } catch {
      return null; // unreachable: retry as usual
    }
  }

  #scheduleReconnect(why, code) {
    if (this.#closed) return;
    const o = this.#options;
    const ceiling = Math.min(o.backoffCapMs, o.backoffBaseMs * 2 ** Math.min(this.#attempt, 30));
    let delay = Math.floor(Math.random() * ceiling);
    if (code === 1008) delay += o.floodDelayMs;
    const attempt = ++this.#attempt;
    // The next replica (a list of URLs), or the same URL through its load balancer.
    this.#urlIndex = (this.#urlIndex + 1) % this.#urls.length;
    this.#setState("reconnecting", { attempt, delayMs: delay, reason: why, code });
    this.#timers.reconnect = setTimeout(() => this.#open(), delay);
  }

  #clearTimer(name) {
    if (this.#timers[name] !== undefined) {
      clearTimeout(this.#timers[name]);
      clearInterval(this.#timers[name]);
      delete this.#timers[name];
    }
  }

  #dropPending(error) {
    const pending = Array.from(this.#pending.values());
    this.#pending.clear();
    for (const p of pending) p.reject(error);
  }

  /** Stops everything: the socket, timers, pending requests and subscriptions. */
  #stop(error, code) {
    for (const name of Object.keys(this.#timers)) this.#clearTimer(name);
    this.#closeSocket(code);
    this.#dropPending(error);
    this.#offAbort();
    this.#offOnline();
    for (const sub of this.#subs.values()) {
      if (sub.state === "pending") sub.ready$.reject(error);
      sub.live = false;
    }
    this.#connected$.reject(error);
  }

  /** The client cannot continue: say why and stop. */
  #fail(error) {
    if (this.#closed) return;
    this.#closed = true;
    this.error = error;
    this.#stop(error);
    for (const sub of this.#subs.values()) {
      if (sub.state !== "unsubscribed") {
        sub.state = "failed";
        sub.error = error;
        sub.emit("unsubscribed", { channel: sub.channel, reason: error.code });
      }
    }
    this.#setState("closed", { error, reason: error.message });
    this.emit("error", error);
  }

  #watchNetwork() {
    const g = globalThis;
    if (typeof g.addEventListener !== "function" || !g.navigator || typeof g.navigator.onLine !== "boolean") return;
    const offline = () => {
      if (!this.#closed) this.#setState("offline", { reason: "the browser has no network" });
    };
    const online = () => {
      if (this.#closed || this.#ws) return;
      this.#attempt = 0;
      this.#open();
    };
    g.addEventListener("offline", offline);
    g.addEventListener("online", online);
    this.#offOnline = () => {
      g.removeEventListener("offline", offline);
      g.removeEventListener("online", online);
    };
  }

  // ------------------------------------------------ frames

  #onFrame(text) {
    this.#lastFrameAt = Date.now();
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    const pending = frame.id !== undefined ? this.#pending.get(frame.id) : undefined;
    if (pending) this.#pending.delete(frame.id);
    const sub = typeof frame.channel === "string" ? this.#subs.get(frame.channel) : undefined;
    switch (frame.type) {
      case "connection_established":
        this.#onEstablished(frame);
        break;
      case "subscribed":
        if (sub) this.#onSubscribed(sub, frame, pending);
        else if (!pending) this.#send({ type: "unsubscribe", channel: frame.channel }); // restored, no longer wanted
        break;
      case "snapshot":
        if (sub) this.#onSnapshot(sub, frame, text.length);
        if (pending) pending.resolve(frame);
        break;
      case "message":
        if (sub) this.#onMessage(sub, frame, text.length);
        break;
      case "unsubscribed":
        this.#onUnsubscribed(sub, frame, pending);
        break;
      case "error":
        this.#onError(sub, frame, pending);
        break;
      case "token_refreshed":
      case "pong":
      case "acked":
        if (pending) pending.resolve(frame);
        break;
      default:
        break;
    }
  }

  #onEstablished(frame) {
    this.#greeted = true;
    this.#authFailures = 0;
    this.replica = frame.replica ?? null;
    this.connectionId = frame.connection_id ?? null;
    this.user = frame.user ?? null;
    if (this.#options.session && typeof frame.session === "string") this.session = frame.session;
    const resumed = frame.resumed === true;
    this.#clearTimer("stable");
    this.#timers.stable = setTimeout(() => (this.#attempt = 0), this.#options.stableMs);
    if (this.#options.pingIntervalMs > 0) {
      const every = this.#options.pingIntervalMs;
      this.#timers.ping = setInterval(() => this.#watchdog(every), every);
    }
    this.#timers.acks = setInterval(() => this.#flushAcks(), this.#options.ackIntervalMs);
    this.#setState("connected", { resumed, connectionId: this.connectionId });
    this.emit("connected", { connectionId: this.connectionId, replica: this.replica, session: this.session, resumed, user: this.user, heartbeatInterval: frame.heartbeat_interval });
    // Restored subscriptions (resumed) came before this frame was handled by
    // the gateway: a subscribe for one of them is answered already_subscribed.
    for (const sub of this.#subs.values()) if (!sub.live && !sub.unsubscribing && sub.state !== "failed") this.#sendSubscribe(sub, true);
    this.#connected$.resolve({ connectionId: this.connectionId, replica: this.replica, session: this.session, resumed, user: this.user });
  }

  #watchdog(every) {
    if (!this.#ws) return;
    if (Date.now() - this.#lastFrameAt > 2 * every + 5000) {
      this.#lost(1006, "no answer to pings");
      return;
    }
    this.#send({ type: "ping", id: "watchdog" });
  }

  /** Subscribes `sub` on this connection, resuming from its position when it has one. */
  #sendSubscribe(sub, reconnecting) {
    const request = { type: "subscribe", channel: sub.channel };
    if (sub.filters) request.filters = sub.filters;
    let since = sub.epoch !== null ? { offset: sub.offset, epoch: sub.epoch } : null;
    if (since && reconnecting && sub.shouldResume) {
      let resume = true;
      try {
        resume = sub.shouldResume({ channel: sub.channel, offset: sub.offset, epoch: sub.epoch, closeCode: this.#lastClose, downMs: this.#downSince ? Date.now() - this.#downSince : 0 });
      } catch (e) {
        sub.listenerFailed("shouldResume", e);
      }
      if (resume === false) {
        since = null;
        sub.pendingResync = "restart";
      }
    }
    if (since) request.since = since;
    this.#subscribeRequest(sub, request);
  }

  /** Subscribes `sub` again after its last delivered offset (in order: the gateway ends the old subscription first). */
  #resubscribe(sub) {
    sub.live = false;
    this.#send({ type: "unsubscribe", channel: sub.channel });
    this.#sendSubscribe(sub, false);
  }

  #subscribeRequest(sub, request) {
    if (sub.delta) request.delta = sub.delta;
    sub.sentSince = Boolean(request.since);
    sub.requestId = this.#nextId++;
    this.#pending.set(sub.requestId, { resolve: noop, reject: noop, message: request });
    this.#send({ ...request, id: sub.requestId });
  }

  #onSubscribed(sub, frame, pending) {
    if (pending && frame.id !== sub.requestId) return; // an answer to a superseded request
    if (sub.unsubscribing && !pending) return;
    const restored = !pending;
    const resumed = restored || sub.sentSince;
    sub.live = true;
    sub.requestId = null;
    sub.startOffset = frame.offset;
    sub.deltaActive = frame.delta === "fossil";
    sub.base = null;
    sub.baseOffset = null;
    let resync = sub.pendingResync ?? null;
    sub.pendingResync = null;
    if (resumed && frame.recovered === false) resync = "not_recovered";
    else if (!resumed && sub.epoch !== null && sub.epoch !== frame.epoch) resync = resync ?? "new_epoch";
    if (!resumed || resync) {
      // A fresh start: the snapshot (if any) follows, then what came after it.
      sub.epoch = frame.epoch;
      sub.offset = frame.offset;
      sub.startSnapshot = true;
      sub.floor = null;
      sub.backfilling = false;
    } else if (sub.epoch !== frame.epoch) {
      sub.epoch = frame.epoch; // recovered: only the first subscription's epoch may be unknown
    }
    const first = sub.state === "pending";
    sub.state = "subscribed";
    const event = { channel: sub.channel, epoch: frame.epoch, offset: frame.offset, recovered: frame.recovered, restored };
    if (resync) sub.emit("resync", { channel: sub.channel, reason: resync, epoch: frame.epoch });
    sub.emit("subscribed", event);
    if (first) sub.ready$.resolve(event);
    if (sub.backfillDone) {
      const done = sub.backfillDone;
      sub.backfillDone = null;
      done.resolve();
    }
  }

  #onSnapshot(sub, frame, size) {
    if (!sub.live) return;
    const start = sub.startSnapshot;
    sub.startSnapshot = false;
    if (start && typeof frame.offset === "number") {
      sub.offset = frame.offset;
      if (sub.floor === null) sub.floor = frame.offset;
    }
    sub.emit("snapshot", { channel: sub.channel, offset: frame.offset, epoch: sub.epoch, data: frame.data, size, start });
  }

  #onMessage(sub, frame, size) {
    if (!sub.live) return;
    sub.startSnapshot = false;
    const offset = frame.offset;
    let data = frame.data;
    let fullSize;
    if (sub.deltaActive && typeof offset === "number" && typeof data === "string") {
      try {
        data = sub._decode(frame);
        fullSize = sub.base.length;
      } catch (e) {
        // Never expected (the gateway sends a delta only after its base):
        // subscribe again from the last message delivered, which comes whole.
        sub.emit("error", e);
        this.#resubscribe(sub);
        return;
      }
    }
    if (typeof offset === "number") {
      if (offset <= sub.offset) {
        // Already delivered (a resume replays from the acknowledged offset),
        // or asked for by a backfill.
        if (sub.backfilling && offset < (sub.floor ?? sub.startOffset + 1)) {
          sub.emit("history", { channel: sub.channel, offset, epoch: sub.epoch, data, size });
        }
        return;
      }
      sub.offset = offset;
      if (sub.floor === null) sub.floor = offset;
      sub.backfilling = false;
    }
    const event = { channel: sub.channel, offset, epoch: sub.epoch, data, size, replayed: typeof offset === "number" && offset <= sub.startOffset };
    if (fullSize !== undefined) event.fullSize = fullSize;
    sub.emit("message", event);
    if (typeof offset === "number" && sub.ackMode === "auto" && this.#options.session) this.#ackQueue.set(sub.channel, offset);
  }

  #onUnsubscribed(sub, frame, pending) {
    if (pending) pending.resolve(frame);
    if (!sub) return;
    if (sub.backfillPending && pending) {
      // Second half of a backfill: subscribe again from further back.
      const count = sub.backfillPending;
      sub.backfillPending = 0;
      sub.unsubscribing = false;
      sub.live = false;
      sub.backfilling = true;
      const request = { type: "subscribe", channel: sub.channel, since: { offset: Math.max(0, (sub.floor ?? sub.startOffset + 1) - 1 - count), epoch: sub.epoch } };
      if (sub.filters) request.filters = sub.filters;
      this.#subscribeRequest(sub, request);
      return;
    }
    if (frame.reason === "forbidden") {
      const error = new ForbiddenError("the token no longer allows this channel", { code: "forbidden", channel: sub.channel });
      this.#subs.delete(sub.channel);
      sub.live = false;
      sub.state = "failed";
      sub.error = error;
      sub.emit("error", error);
      sub.emit("unsubscribed", { channel: sub.channel, reason: "forbidden" });
      this.emit("error", error);
    }
  }

  #onError(sub, frame, pending) {
    const error = errorOf(frame.code, frame.message || frame.code, frame.channel ? { channel: frame.channel } : {});
    const request = pending?.message;
    if (request && request.type === "subscribe" && sub) {
      if (frame.id !== sub.requestId) return;
      sub.requestId = null;
      if (frame.code === "already_subscribed" && sub.live) return; // restored by the session
      if (frame.code === "unavailable" || frame.code === "rate_limited") {
        // The engine could not serve the start: try again shortly.
        const delay = 500 + Math.floor(Math.random() * 2000);
        setTimeout(() => {
          if (this.#greeted && !sub.live && this.#subs.get(sub.channel) === sub) this.#sendSubscribe(sub, true);
        }, delay);
        return;
      }
      if (frame.code === "already_subscribed") {
        sub.live = true; // the gateway has it (a race with a restore): keep it
        return;
      }
      this.#subs.delete(sub.channel);
      sub.state = "failed";
      sub.error = error;
      sub.ready$.reject(error);
      if (sub.backfillDone) sub.backfillDone.reject(error);
      sub.emit("error", error);
      sub.emit("unsubscribed", { channel: sub.channel, reason: frame.code });
      if (this.listenerCount("error") > 0) this.emit("error", error);
      return;
    }
    if (pending) {
      pending.reject(error);
      return;
    }
    if (frame.code === "token_expired") {
      if (this.#getToken) quiet(this.#refreshToken(true));
      else this.emit("error", error);
      return;
    }
    this.emit("error", error);
  }

  // ------------------------------------------------ acknowledgements

  #flushAcks() {
    let budget = this.#options.maxAcksPerInterval;
    for (const [channel, offset] of this.#ackQueue) {
      if (budget-- <= 0) break;
      this.#ackQueue.delete(channel);
      const sub = this.#subs.get(channel);
      if (!sub || !sub.live || offset <= sub.acked) continue;
      if (this.#send({ type: "ack", channel, offset })) sub.acked = offset;
    }
  }

  async _ack(sub, offset) {
    if (typeof offset !== "number" || offset <= 0) throw new SwitchboardError("nothing to acknowledge yet", { code: "invalid_message", channel: sub.channel });
    if (!sub.live) throw new SwitchboardError("not subscribed on the current connection", { code: "not_connected", channel: sub.channel });
    const frame = await this._request({ type: "ack", channel: sub.channel, offset });
    sub.acked = Math.max(sub.acked, offset);
    if (this.#ackQueue.get(sub.channel) <= offset) this.#ackQueue.delete(sub.channel);
    return frame;
  }

  // ------------------------------------------------ unsubscribe, backfill

  async _unsubscribe(sub) {
    if (sub.state === "unsubscribed" || sub.state === "failed") return;
    const wasLive = sub.live && this.#greeted;
    this.#subs.delete(sub.channel);
    this.#ackQueue.delete(sub.channel);
    sub.state = "unsubscribed";
    sub.live = false;
    sub.ready$.reject(new SwitchboardError("unsubscribed", { code: "unsubscribed", channel: sub.channel }));
    sub.emit("unsubscribed", { channel: sub.channel, reason: null });
    if (wasLive) await this._request({ type: "unsubscribe", channel: sub.channel }).catch(noop);
  }

  _backfill(sub, count) {
    if (!sub.live || !this.#greeted) return Promise.reject(new SwitchboardError("not subscribed on the current connection", { code: "not_connected", channel: sub.channel }));
    if (count <= 0 || sub.startOffset <= 0) return Promise.resolve();
    const done = deferred();
    sub.backfillDone = done;
    sub.backfillPending = count;
    sub.unsubscribing = true;
    sub.live = false;
    const id = this.#nextId++;
    this.#pending.set(id, { resolve: noop, reject: noop, message: { type: "unsubscribe" } });
    this.#send({ type: "unsubscribe", channel: sub.channel, id });
    return done.promise;
  }

  // ------------------------------------------------ tokens

  #tokenNeedsRefresh() {
    if (!this.#token) return true;
    const exp = tokenExpiry(this.#token);
    return exp !== null && exp - Date.now() < 1000;
  }

  #scheduleTokenRefresh() {
    this.#clearTimer("token");
    if (!this.#getToken || !this.#token || this.#closed) return;
    const exp = tokenExpiry(this.#token);
    if (exp === null) return;
    const left = exp - Date.now();
    const lead = Math.min(this.#options.refreshBeforeMs, left / 2);
    this.#timers.token = setTimeout(() => {
      delete this.#timers.token;
      this.#refreshToken().catch((e) => {
        this.emit("error", e);
        // Try again while the token lasts; after that, the gateway says token_expired.
        if (!this.#closed) this.#timers.token = setTimeout(() => this.#scheduleTokenRefresh(), 2000);
      });
    }, Math.max(0, left - lead));
  }

  /** Gets a new token from getToken and, when connected, sends it with `refresh_token`. */
  #refreshToken(force = false) {
    if (this.#refreshing) return this.#refreshing;
    const run = async () => {
      let token;
      try {
        token = await this.#getToken({ reason: force ? "refused" : "expiring", token: this.#token });
      } catch (e) {
        throw new AuthError(`getToken failed: ${e && e.message}`, { code: "token_unavailable", cause: e });
      }
      if (typeof token !== "string" || !token) throw new AuthError("getToken gave no token", { code: "token_unavailable" });
      this.#token = token;
      if (this.#greeted) {
        const frame = await this._request({ type: "refresh_token", token });
        this.emit("token_refreshed", { expiresAt: frame.expires_at });
      }
      this.#scheduleTokenRefresh();
      return token;
    };
    this.#refreshing = quiet(run().finally(() => (this.#refreshing = null)));
    return this.#refreshing;
  }
}

// ---------------------------------------------------------------- publish

/**
 * Publishes `data` on `channel` through `POST /api/v1/publish` of the gateway
 * at `url` (its base URL, e.g. `http://gw:8080`); resolves with {channel, offset, epoch}.
 */
export async function publish(url, channel, data, options = {}) {
  const doFetch = options.fetch ?? globalThis.fetch;
  if (!doFetch) throw new SwitchboardError("no fetch: pass options.fetch", { code: "no_fetch" });
  const base = /^wss?:/.test(url) ? httpBase(url) : url.endsWith("/") ? url : url + "/";
  const headers = { "Content-Type": "application/json" };
  if (options.token) headers.Authorization = "Bearer " + options.token;
  let response;
  try {
    response = await doFetch(base + "api/v1/publish", {
      method: "POST",
      headers,
      body: JSON.stringify({ channel, data, snapshot: Boolean(options.snapshot) }),
      signal: options.signal,
    });
  } catch (e) {
    throw new PublishError(`cannot reach the gateway at ${base}: ${e && e.message}`, { code: "unreachable", cause: e, channel });
  }
  const body = await response.json().catch(() => ({}));
  if (response.ok) return { channel: body.channel, offset: body.offset, epoch: body.epoch };
  const code = body.error || `http_${response.status}`;
  const message = `publish on ${channel} refused (${response.status} ${code}): ${body.message || response.statusText}`;
  if (response.status === 401) throw new AuthError(message, { code, status: 401, channel });
  if (response.status === 403) throw new ForbiddenError(message, { code, status: 403, channel });
  throw new PublishError(message, { code, status: response.status, channel });
}
