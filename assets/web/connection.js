// The page's connection: the client library of clients/js (served from the
// binary as assets/switchboard.js) does the native protocol — resume with
// `since`, full-jitter backoff, the ping watchdog, refused tokens diagnosed
// with `GET api/v1/whoami`. This file adds what is the page's own: status
// lines for the header and banner, the estimate that starts a channel over
// instead of replaying more than the gateway's outbound queue holds, and a
// one-time backfill of recent history so charts have a past when the page opens.
//
// Handlers:
//   status({state, text, attempt, delayMs, replica, extensions})  state: connecting | connected | reconnecting | offline | stopped
//   data(channel, {kind, offset, data, bytes})         kind: snapshot | live | history
//   reset(channel, why)                               the channel's history was lost: drop derived state
//   channelError(channel, code, message)
//   greeted(established)                              connection_established
//   refused(error)                                    the gateway refused the token (error.status 401) or the connection (403)
//   tokenExpired(message)

import { Client, AuthError, ForbiddenError } from "./switchboard.js";

// A resume expected to replay more than this (per channel) starts the channel
// over from its snapshot instead: the gateway closes a client whose queue
// passes --max-outbound-bytes (1 MiB by default) with 4000.
const RESUME_BUDGET_BYTES = 384 * 1024;
// A channel's rate is measured over this much of its recent news, from offsets
// (which count messages exactly), not from arrival times (which bunch up).
const RATE_WINDOW_MS = 30000;
const RATE_SAMPLE_EVERY_MS = 1000;
const RESET_WHY = {
  not_recovered: "the gap was older than the history",
  new_epoch: "the channel's history was lost (new epoch)",
  restart: "too much was missed to replay",
};

export class Connection {
  /**
   * @param {object} options
   * @param {string} options.url WebSocket URL
   * @param {string|null} options.token
   * @param {Array<{name: string, delta?: "fossil", backfill: {max: number, budgetBytes?: number, afterSnapshot: boolean}}>} options.channels
   * @param {object} options.handlers
   * @param {Connection} [options.resumeFrom] a stopped connection of this page to continue from (new token)
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
          delta: c.delta ?? null,
          backfill: c.backfill,
          backfilled: false,
          // The newest offset handed to the page (history included once it passes it).
          last: 0,
          since: null,
          sub: null,
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
      if (!before) continue;
      ch.backfilled = before.backfilled;
      ch.last = before.last;
      if (before.sub && before.sub.epoch !== null) ch.since = { offset: before.sub.offset, epoch: before.sub.epoch };
    }
    this.client = null;
    this.countdown = null;
    this.stopText = null;
    // After a 4000 (the replay overflowed the queue), the next connection starts over.
    this.skipResume = false;
    this.skipThisConnection = false;
  }

  start() {
    const client = new Client({ url: this.url, token: this.token, session: false });
    this.client = client;
    client.on("state", (s) => this.onState(s));
    client.on("connected", (established) => {
      this.skipThisConnection = this.skipResume;
      this.skipResume = false;
      this.handlers.greeted(established);
    });
    client.on("error", (e) => {
      if (e instanceof AuthError && e.code === "token_expired" && e.closeCode === undefined) this.handlers.tokenExpired(e.message);
    });
    for (const ch of this.channels.values()) this.subscribe(ch);
    client.connect();
  }

  stop(text) {
    this.stopText = text;
    if (this.client) this.client.close();
  }

  emitStatus(status) {
    this.handlers.status({ replica: this.client && this.client.replica, extensions: this.client ? this.client.extensions : "", ...status });
  }

  onState(s) {
    clearInterval(this.countdown);
    switch (s.state) {
      case "connecting":
        this.emitStatus({ state: "connecting", text: "connecting…", attempt: s.attempt });
        break;
      case "connected":
        this.emitStatus({ state: "connected", text: `connected to replica ${s.replica}` });
        break;
      case "offline":
        this.emitStatus({ state: "offline", text: "offline: this browser has no network; the data shown is not updating" });
        break;
      case "reconnecting": {
        if (s.code === 4000) this.skipResume = true;
        const due = Date.now() + s.delayMs;
        const tick = () => {
          const left = Math.max(0, due - Date.now());
          this.emitStatus({ state: "reconnecting", text: `${s.reason}; reconnecting in ${Math.ceil(left / 1000)} s (attempt ${s.attempt})`, attempt: s.attempt, delayMs: left });
        };
        tick();
        this.countdown = setInterval(tick, 1000);
        break;
      }
      case "closed":
        this.onClosed(s.error);
        break;
      default:
        break;
    }
  }

  onClosed(error) {
    if (!error) {
      this.emitStatus({ state: "stopped", text: this.stopText || "stopped" });
    } else if (error instanceof AuthError && error.closeCode === 4001) {
      this.handlers.tokenExpired(error.message);
      this.emitStatus({ state: "stopped", text: "token expired: sign in again" });
    } else if ((error instanceof AuthError || error instanceof ForbiddenError) && error.status) {
      this.emitStatus({ state: "stopped", text: error instanceof AuthError ? "the token was refused" : "the token may not connect" });
      this.handlers.refused(error);
    } else {
      this.emitStatus({ state: "stopped", text: `${error.message}; reload the page to connect again` });
    }
  }

  subscribe(ch) {
    const options = { shouldResume: () => this.resumable(ch) };
    if (ch.since) options.since = ch.since;
    if (ch.delta) options.delta = ch.delta;
    const sub = this.client.subscribe(ch.name, options);
    ch.sub = sub;
    sub.on("subscribed", () => {
      // A channel without a snapshot is backfilled at once; one with a snapshot
      // after the snapshot arrives (its size sets how much history to ask for).
      if (!ch.backfilled && !ch.backfill.afterSnapshot) this.startBackfill(ch, ch.backfill.max);
    });
    sub.on("resync", (r) => {
      ch.last = 0;
      // Offsets of another epoch measure nothing against these.
      if (r.reason === "new_epoch") ch.samples = [];
      this.handlers.reset(ch.name, RESET_WHY[r.reason] || r.reason);
    });
    sub.on("snapshot", (s) => {
      if (typeof s.offset === "number") ch.last = Math.max(ch.last, s.offset);
      this.handlers.data(ch.name, { kind: "snapshot", offset: s.offset, data: s.data, bytes: s.size });
      if (s.start && !ch.backfilled && ch.backfill.afterSnapshot) {
        const budget = ch.backfill.budgetBytes || 256 * 1024;
        this.startBackfill(ch, Math.min(ch.backfill.max, Math.floor(budget / Math.max(s.size, 1))));
      }
    });
    sub.on("message", (m) => {
      if (typeof m.offset === "number") {
        ch.last = Math.max(ch.last, m.offset);
        // Only news counts for the estimates (not a replay's burst).
        // A replay comes whole: a delta channel is measured by the whole size.
        if (!m.replayed) this.measure(ch, m.fullSize ?? m.size, m.offset);
      }
      this.handlers.data(ch.name, { kind: "live", offset: m.offset, data: m.data, bytes: m.size });
    });
    sub.on("history", (h) => {
      // Past what the page shows, history is news to it.
      const news = h.offset > ch.last;
      if (news) ch.last = h.offset;
      this.handlers.data(ch.name, { kind: news ? "live" : "history", offset: h.offset, data: h.data, bytes: h.size });
    });
    sub.on("error", (e) => this.handlers.channelError(ch.name, e.code, e.message));
  }

  startBackfill(ch, count) {
    ch.backfilled = true;
    if (count > 0) ch.sub.backfill(count).catch(() => {});
  }

  /** Whether to resume `ch` with `since`, or start it over from its snapshot. */
  resumable(ch) {
    const missedSeconds = ch.lastLiveAt ? (Date.now() - ch.lastLiveAt) / 1000 : 0;
    const expected = this.messagesPerSecond(ch) * missedSeconds * ch.bytesPerMessage;
    if (this.skipThisConnection || expected > RESUME_BUDGET_BYTES) {
      console.info(`${ch.name}: about ${Math.round(expected / 1024)} KiB missed; starting over from the snapshot instead of replaying`);
      return false;
    }
    return true;
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
}
