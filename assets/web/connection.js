// The page's side of the native protocol (docs/PROTOCOL.md): one WebSocket to
// `ws` next to the page, subscriptions that resume with `since` after a lost
// connection, full-jitter backoff, an application ping as a watchdog, and a
// one-time backfill of recent history so charts have a past when the page opens.
//
// Handlers:
//   status({state, text, attempt, delayMs, replica})  state: connecting | connected | reconnecting | offline | stopped
//   data(channel, {kind, offset, data, bytes})         kind: snapshot | live | history
//   reset(channel, why)                               the channel's history was lost: drop derived state
//   channelError(channel, code, message)
//   greeted(established)                              connection_established
//   failedBeforeOpen()                                the socket closed before the greeting (the token may be refused)
//   tokenExpired(message)

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30000;
const STABLE_MS = 60000;
const FLOOD_ATTEMPT = 6;
const PING_EVERY_MS = 15000;
const SILENCE_LIMIT_MS = 2 * PING_EVERY_MS + 5000;
// A resume expected to replay more than this (per channel) starts the channel
// over from its snapshot instead: the gateway closes a client whose queue
// passes --max-outbound-bytes (1 MiB by default) with 4000.
const RESUME_BUDGET_BYTES = 384 * 1024;
// A channel's rate is measured over this much of its recent news, from offsets
// (which count messages exactly), not from arrival times (which bunch up).
const RATE_WINDOW_MS = 30000;
const RATE_SAMPLE_EVERY_MS = 1000;
// Close codes after which reconnecting cannot help.
const FINAL = {
  4004: "an administrator disconnected this user",
  1002: "the gateway refused this page's frames (protocol error)",
  1007: "the gateway refused this page's frames (not UTF-8)",
  1009: "the gateway refused a frame as too large",
};

export class Connection {
  /**
   * @param {object} options
   * @param {string} options.url WebSocket URL
   * @param {string|null} options.token
   * @param {Array<{name: string, backfill: {max: number, budgetBytes?: number, afterSnapshot: boolean}}>} options.channels
   * @param {object} options.handlers
   */
  constructor({ url, token, channels, handlers, resumeFrom }) {
    this.url = url;
    this.token = token;
    this.handlers = handlers;
    this.channels = new Map(
      channels.map((c) => [
        c.name,
        {
          name: c.name,
          backfill: c.backfill,
          epoch: null,
          last: 0,
          phase: "idle",
          backfilled: false,
          position: 0,
          backfilling: false,
          // Estimates of the channel's traffic, to size a resume.
          bytesPerMessage: 0,
          // {at, offset} of news, one per RATE_SAMPLE_EVERY_MS, over RATE_WINDOW_MS.
          samples: [],
          lastLiveAt: 0,
          lastLiveOffset: 0,
        },
      ]),
    );
    // Continue where another connection of this page stopped (new token).
    for (const ch of this.channels.values()) {
      const before = resumeFrom && resumeFrom.channels.get(ch.name);
      if (before) Object.assign(ch, { epoch: before.epoch, last: before.last, backfilled: before.backfilled });
    }
    this.ws = null;
    this.attempt = 0;
    this.stopped = false;
    this.timer = null;
    this.countdown = null;
    this.pingTimer = null;
    this.lastFrameAt = 0;
    this.openedAt = 0;
    this.greeted = false;
    this.replica = null;
    this.nextId = 1;
    // After a 4000 (the replay overflowed the queue), the next connection starts over.
    this.skipResume = false;
    window.addEventListener("offline", () => this.onOffline());
    window.addEventListener("online", () => this.onOnline());
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop(text) {
    this.stopped = true;
    this.clearTimers();
    this.closeSocket();
    this.emitStatus({ state: "stopped", text });
  }

  id() {
    return this.nextId++;
  }

  emitStatus(status) {
    this.handlers.status({ replica: this.replica, ...status });
  }

  connect() {
    this.clearTimers();
    if (this.stopped) return;
    if (navigator.onLine === false) {
      this.emitStatus({ state: "offline", text: "offline: this browser has no network; waiting for it" });
      return;
    }
    this.emitStatus({ state: "connecting", text: "connecting…", attempt: this.attempt });
    const protocols = this.token ? ["switchboard", "bearer." + this.token] : undefined;
    let ws;
    try {
      ws = protocols ? new WebSocket(this.url, protocols) : new WebSocket(this.url);
    } catch (e) {
      this.scheduleReconnect("cannot open a WebSocket: " + e.message);
      return;
    }
    this.ws = ws;
    this.greeted = false;
    this.openedAt = 0;
    ws.onopen = () => {
      this.openedAt = Date.now();
      this.lastFrameAt = Date.now();
    };
    ws.onmessage = (event) => this.onFrame(event.data);
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.onClose(event.code, event.reason);
    };
    ws.onerror = () => {
      /* a close event follows */
    };
  }

  closeSocket() {
    clearInterval(this.pingTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close();
      } catch (e) {
        /* already closed */
      }
    }
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
    }
  }

  onClose(code, reason) {
    const upFor = this.openedAt ? Date.now() - this.openedAt : 0;
    const wasGreeted = this.greeted;
    this.closeSocket();
    if (this.stopped) return;
    for (const ch of this.channels.values()) ch.phase = "idle";
    if (FINAL[code]) {
      this.stop(`${FINAL[code]} (close ${code}${reason ? ": " + reason : ""}); reload the page to connect again`);
      return;
    }
    if (code === 4001) {
      this.handlers.tokenExpired("the token expired and the gateway closed the connection (4001)");
      this.stopped = true;
      this.emitStatus({ state: "stopped", text: "token expired: sign in again" });
      return;
    }
    if (upFor >= STABLE_MS) this.attempt = 0;
    if (code === 4000) this.skipResume = true;
    if (code === 1008) this.attempt = Math.max(this.attempt, FLOOD_ATTEMPT);
    if (!wasGreeted) this.handlers.failedBeforeOpen();
    const why = code === 1001 ? "the replica is shutting down (1001)" : code === 1006 ? "connection lost (1006)" : `closed (${code}${reason ? ": " + reason : ""})`;
    this.scheduleReconnect(why);
  }

  scheduleReconnect(why) {
    if (this.stopped) return;
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(this.attempt, 16));
    const delay = Math.floor(Math.random() * ceiling);
    const attempt = ++this.attempt;
    const due = Date.now() + delay;
    const tick = () => {
      const left = Math.max(0, due - Date.now());
      this.emitStatus({ state: "reconnecting", text: `${why}; reconnecting in ${Math.ceil(left / 1000)} s (attempt ${attempt})`, attempt, delayMs: left });
    };
    this.clearTimers();
    tick();
    this.countdown = setInterval(tick, 1000);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  clearTimers() {
    clearTimeout(this.timer);
    clearInterval(this.countdown);
  }

  onOffline() {
    if (this.stopped) return;
    this.emitStatus({ state: "offline", text: "offline: this browser has no network; the data shown is not updating" });
  }

  onOnline() {
    if (this.stopped) return;
    if (!this.ws) {
      this.attempt = 0;
      this.connect();
    }
  }

  watchdog() {
    if (!this.ws) return;
    if (Date.now() - this.lastFrameAt > SILENCE_LIMIT_MS) {
      this.onClose(1006, "no answer to pings");
      return;
    }
    this.send({ type: "ping", id: "watchdog" });
  }

  onFrame(text) {
    this.lastFrameAt = Date.now();
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (e) {
      return;
    }
    const ch = frame.channel !== undefined ? this.channels.get(frame.channel) : undefined;
    switch (frame.type) {
      case "connection_established":
        this.greeted = true;
        this.replica = frame.replica;
        this.handlers.greeted(frame);
        this.emitStatus({ state: "connected", text: `connected to replica ${frame.replica}` });
        clearInterval(this.pingTimer);
        this.pingTimer = setInterval(() => this.watchdog(), PING_EVERY_MS);
        for (const c of this.channels.values()) this.subscribe(c);
        this.skipResume = false;
        break;
      case "subscribed":
        if (ch) this.onSubscribed(ch, frame);
        break;
      case "unsubscribed":
        if (ch && ch.phase === "unsubscribing") {
          this.subscribe(ch, { offset: Math.max(0, ch.position - ch.backfillCount), epoch: ch.epoch });
          ch.backfilling = true;
        } else if (ch && frame.reason === "forbidden") {
          ch.phase = "idle";
          this.handlers.channelError(ch.name, "forbidden", "the token no longer allows this channel");
        }
        break;
      case "snapshot":
        if (ch) this.onData(ch, "snapshot", frame, text.length);
        break;
      case "message":
        if (ch) this.onData(ch, "live", frame, text.length);
        break;
      case "error":
        if (frame.code === "token_expired") {
          this.handlers.tokenExpired(frame.message);
        } else if (ch) {
          ch.phase = "idle";
          this.handlers.channelError(ch.name, frame.code, frame.message);
        }
        break;
      default:
        break;
    }
  }

  subscribe(ch, since) {
    const request = { type: "subscribe", channel: ch.name, id: this.id() };
    const resume = since || (this.resumable(ch) ? { offset: ch.last, epoch: ch.epoch } : null);
    if (resume) request.since = resume;
    ch.phase = "starting";
    this.send(request);
  }

  /** Whether to resume `ch` with `since`, or start it over from its snapshot. */
  resumable(ch) {
    if (ch.epoch === null || ch.last === 0) return false;
    const missedSeconds = ch.lastLiveAt ? (Date.now() - ch.lastLiveAt) / 1000 : 0;
    const expected = this.messagesPerSecond(ch) * missedSeconds * ch.bytesPerMessage;
    if (this.skipResume || expected > RESUME_BUDGET_BYTES) {
      console.info(`${ch.name}: about ${Math.round(expected / 1024)} KiB missed; starting over from the snapshot instead of replaying`);
      this.handlers.reset(ch.name, "too much was missed to replay");
      ch.last = 0;
      return false;
    }
    return true;
  }

  onSubscribed(ch, frame) {
    const sameEpoch = ch.epoch === frame.epoch;
    // A failed resume (or backfill), or a fresh start in another epoch: the
    // page replaces the channel's state with the snapshot that follows.
    if (frame.recovered === false || (ch.epoch !== null && !sameEpoch)) {
      this.handlers.reset(ch.name, sameEpoch ? "the gap was older than the history" : "the channel's history was lost (new epoch)");
      ch.last = 0;
      // Offsets of another epoch measure nothing against these.
      if (!sameEpoch) ch.samples = [];
    }
    ch.epoch = frame.epoch;
    ch.position = frame.offset;
    ch.phase = "live";
    if (frame.recovered !== true) ch.backfilling = false;
    // A channel without a snapshot is backfilled at once; one with a snapshot
    // after the snapshot arrives (its size sets how much history to ask for).
    if (!ch.backfilled && !ch.backfill.afterSnapshot) this.startBackfill(ch, ch.backfill.max);
  }

  measure(ch, bytes, offset) {
    const now = Date.now();
    ch.bytesPerMessage = ch.bytesPerMessage ? 0.8 * ch.bytesPerMessage + 0.2 * bytes : bytes;
    ch.lastLiveAt = now;
    ch.lastLiveOffset = offset;
    const newest = ch.samples[ch.samples.length - 1];
    if (!newest || now - newest.at >= RATE_SAMPLE_EVERY_MS) ch.samples.push({ at: now, offset });
    while (ch.samples.length > 1 && now - ch.samples[1].at >= RATE_WINDOW_MS) ch.samples.shift();
  }

  /**
   * Messages per second on `ch` over its recent news: the offsets say how many
   * were published, the clock only how long that took. Rates from the gaps
   * between arrivals made a quiet channel look flooded whenever a busy tab
   * read several messages at once, and a short outage was then started over
   * instead of resumed.
   */
  messagesPerSecond(ch) {
    const oldest = ch.samples[0];
    if (!oldest || ch.lastLiveOffset <= oldest.offset) return 0;
    const seconds = Math.max(1, (ch.lastLiveAt - oldest.at) / 1000);
    return (ch.lastLiveOffset - oldest.offset) / seconds;
  }

  startBackfill(ch, count) {
    ch.backfilled = true;
    if (count <= 0 || ch.position <= 1) return;
    ch.backfillCount = count;
    ch.phase = "unsubscribing";
    this.send({ type: "unsubscribe", channel: ch.name, id: this.id() });
  }

  onData(ch, kind, frame, bytes) {
    if (ch.phase !== "live") return;
    const offset = frame.offset;
    if (typeof offset === "number") {
      if (offset <= ch.last) {
        // Older than what the page shows: only a backfill asks for it.
        if (ch.backfilling) this.handlers.data(ch.name, { kind: "history", offset, data: frame.data, bytes });
        return;
      }
      ch.last = offset;
      // History replays in order: past the shown offset, it is news again.
      ch.backfilling = false;
    }
    // Only news counts for the estimates (not a replay's burst).
    if (kind === "live" && typeof offset === "number" && offset > ch.position) this.measure(ch, bytes, offset);
    this.handlers.data(ch.name, { kind, offset, data: frame.data, bytes });
    if (kind === "snapshot" && !ch.backfilled && ch.backfill.afterSnapshot) {
      const budget = ch.backfill.budgetBytes || 256 * 1024;
      this.startBackfill(ch, Math.min(ch.backfill.max, Math.floor(budget / Math.max(bytes, 1))));
    }
  }
}
