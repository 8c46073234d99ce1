//! Native clients (`/ws`): subscriptions with offsets, resumed after every
//! disconnect — with their session (`?session=`, acknowledging positions) or
//! with `since` — and checked by offset: within an epoch every offset after
//! the start exactly once, in order; `recovered: false` is an honest restart.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;
use rand::seq::IndexedRandom;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::Ctx;
use crate::check::{Check, Kind};
use crate::clock::now_us;
use crate::ledger::{Filter, Ledger};
use crate::stats::Route;
use crate::ws::{self, Frame};

const ROUTE: Route = Route::Native;

#[derive(Deserialize)]
struct Data {
    s: Option<u64>,
    t: Option<u64>,
}

#[derive(Deserialize)]
struct NativeFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    offset: Option<u64>,
    #[serde(borrow)]
    epoch: Option<Cow<'a, str>>,
    recovered: Option<bool>,
    data: Option<Data>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    session: Option<Cow<'a, str>>,
    resumed: Option<bool>,
    id: Option<serde_json::Value>,
}

/// One subscription and where it stands.
struct Sub {
    name: String,
    /// None for channels others publish on (the collector's).
    ledger: Option<Arc<Ledger>>,
    epoch: u32,
    epoch_name: String,
    /// Newest offset processed (0: none in this epoch).
    last_off: u64,
    /// Offsets above this must be contiguous (the start's offset).
    floor: u64,
    /// Offsets up to this may come again (a session resumed from its acknowledged position).
    redeliver_upto: u64,
    /// Subscribed on the current connection.
    live: bool,
    /// Subscribe sent on the current connection.
    requested: bool,
    acked: u64,
    retry_at: Option<Instant>,
    /// Whether it ever had a start (a position to resume from).
    started: bool,
}

impl Sub {
    fn check(&self, ctx: &Ctx, client: u64, kind: Kind) {
        if let Some(ledger) = &self.ledger {
            ctx.checks.file(Check {
                route: ROUTE,
                client,
                ledger: ledger.clone(),
                filter: Filter::ALL,
                kind,
            });
        }
    }
}

enum Ending {
    Stop,
    Leave,
    Resume,
    Lost(Option<u16>),
}

/// One client slot: a succession of clients (a new user when one leaves).
pub async fn slot(ctx: Arc<Ctx>, hot: bool, delay: Duration, mean_life: Duration) {
    tokio::time::sleep(delay).await;
    while !ctx.stop_clients.is_cancelled() {
        let mut client = Native::new(&ctx, hot);
        client.live(&ctx, mean_life).await;
    }
}

struct Native {
    id: u64,
    /// When the current connection opened (messages sent before are replays).
    opened_us: u64,
    token: String,
    session_mode: bool,
    session: Option<String>,
    subs: Vec<Sub>,
}

fn life(mean: Duration) -> Duration {
    let u: f64 = rand::rng().random_range(0.0001..1.0);
    Duration::from_secs_f64((-u.ln() * mean.as_secs_f64()).clamp(5.0, mean.as_secs_f64() * 5.0))
}

impl Native {
    fn new(ctx: &Ctx, hot: bool) -> Self {
        let id = ctx.client_id();
        let mut rng = rand::rng();
        let mut names: Vec<String> = Vec::new();
        if hot {
            names.push(crate::load::HOT.to_string());
        }
        let quiet = rng.random_range(1..=3);
        for _ in 0..quiet {
            let n = rng.random_range(0..ctx.args.quiet_channels);
            let name = crate::load::quiet(n);
            if !names.contains(&name) {
                names.push(name);
            }
        }
        if rng.random_bool(0.1) {
            let c = ["federation", "memory"]
                .choose(&mut rng)
                .copied()
                .unwrap_or("federation");
            names.push(c.to_string());
        }
        let subs = names
            .into_iter()
            .map(|name| Sub {
                ledger: (!crate::load::is_collector(&name)).then(|| ctx.ledgers.channel(&name)),
                name,
                epoch: 0,
                epoch_name: String::new(),
                last_off: 0,
                floor: 0,
                redeliver_upto: 0,
                live: false,
                requested: false,
                acked: 0,
                retry_at: None,
                started: false,
            })
            .collect();
        Self {
            id,
            opened_us: 0,
            token: ctx.token(
                &format!("native-{id}"),
                &["websocket:connect", "websocket:subscribe"],
            ),
            session_mode: rng.random_bool(0.6),
            session: None,
            subs,
        }
    }

    async fn live(&mut self, ctx: &Ctx, mean_life: Duration) {
        let counters = ctx.stats.route(ROUTE);
        let mut attempt = 0u32;
        let mut lost = false;
        loop {
            if ctx.stop_clients.is_cancelled() {
                return;
            }
            let path = match (&self.session, self.session_mode) {
                (Some(s), true) => format!("/ws?session={s}"),
                _ => "/ws".to_string(),
            };
            let mut conn = match ws::connect(ctx, &path, Some(&self.token)).await {
                Ok(c) => c,
                Err(e) => {
                    counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                    ctx.stats.event(
                        "connect_failed",
                        json!({"route": "native", "client": self.id, "status": e.status, "error": e.message}),
                    );
                    attempt += 1;
                    tokio::time::sleep(ws::backoff(attempt)).await;
                    continue;
                }
            };
            counters.connects.fetch_add(1, Ordering::Relaxed);
            if lost {
                counters.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            lost = false;
            self.opened_us = now_us();
            ctx.stats.connected(ROUTE, 1);
            let ending = self.serve(ctx, &mut conn, life(mean_life)).await;
            ctx.stats.connected(ROUTE, -1);
            for s in &mut self.subs {
                s.live = false;
                s.requested = false;
                s.retry_at = None;
            }
            match ending {
                Ending::Stop => {
                    let until = ctx.publishing_ended_us.load(Ordering::Relaxed);
                    self.file_tails(ctx, until);
                    conn.finish_silence(ctx, ROUTE, self.id, "stop");
                    conn.close().await;
                    return;
                }
                Ending::Leave => {
                    counters.voluntary_leaves.fetch_add(1, Ordering::Relaxed);
                    let until = now_us().saturating_sub(ctx.args.leave_grace.as_micros() as u64);
                    self.file_tails(ctx, until);
                    conn.finish_silence(ctx, ROUTE, self.id, "leave");
                    conn.close().await;
                    return;
                }
                Ending::Resume => {
                    counters.voluntary_leaves.fetch_add(1, Ordering::Relaxed);
                    conn.finish_silence(ctx, ROUTE, self.id, "resume");
                    conn.close().await;
                    attempt = 0;
                    let pause = rand::rng().random_range(0.0..2.0);
                    tokio::time::sleep(Duration::from_secs_f64(pause)).await;
                }
                Ending::Lost(code) => {
                    lost = true;
                    counters.disconnects.fetch_add(1, Ordering::Relaxed);
                    conn.finish_silence(ctx, ROUTE, self.id, "lost");
                    let label = code.map_or("none".to_string(), |c| c.to_string());
                    ctx.stats.close_code(ROUTE, &label);
                    if !ws::should_reconnect(code) {
                        ctx.stats.event(
                            "unexpected_close",
                            json!({"route": "native", "client": self.id, "code": code, "replica": conn.replica}),
                        );
                    }
                    attempt = if code == Some(1001) { 0 } else { attempt + 1 };
                    tokio::time::sleep(ws::backoff(attempt)).await;
                }
            }
        }
    }

    fn file_tails(&self, ctx: &Ctx, until_us: u64) {
        for s in &self.subs {
            if s.started && s.epoch != 0 {
                s.check(
                    ctx,
                    self.id,
                    Kind::OffsetTail {
                        epoch: s.epoch,
                        after: s.last_off.max(s.floor),
                        until_us,
                    },
                );
            }
        }
    }

    async fn subscribe(&mut self, conn: &mut ws::Conn, i: usize) {
        let s = &mut self.subs[i];
        let mut request = json!({"type": "subscribe", "channel": s.name});
        if s.started && s.epoch != 0 {
            request["since"] = json!({"offset": s.last_off.max(s.floor), "epoch": s.epoch_name});
        }
        s.requested = true;
        s.retry_at = None;
        conn.send(request.to_string()).await;
    }

    async fn serve(&mut self, ctx: &Ctx, conn: &mut ws::Conn, life: Duration) -> Ending {
        let limit = ctx.args.heartbeat + Duration::from_secs(5);
        let life_end = Instant::now() + life;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let frame = tokio::select! {
                biased;
                _ = ctx.stop_clients.cancelled() => return Ending::Stop,
                _ = tokio::time::sleep_until(life_end) => {
                    return if rand::rng().random_bool(0.5) { Ending::Resume } else { Ending::Leave };
                }
                _ = tick.tick() => {
                    self.on_tick(conn).await;
                    continue;
                }
                f = conn.next(ctx, ROUTE, self.id, limit) => f,
            };
            match frame {
                Frame::Silent => continue,
                Frame::Closed(code) => return Ending::Lost(code),
                Frame::Text(text) => self.on_text(ctx, conn, text.as_str()).await,
            }
        }
    }

    async fn on_tick(&mut self, conn: &mut ws::Conn) {
        let now = Instant::now();
        for i in 0..self.subs.len() {
            if self.subs[i].retry_at.is_some_and(|t| t <= now) {
                self.subscribe(conn, i).await;
            }
        }
        if !self.session_mode {
            return;
        }
        for s in &mut self.subs {
            if s.live && s.last_off > s.acked {
                s.acked = s.last_off;
                let ack = json!({"type": "ack", "channel": s.name, "offset": s.last_off});
                conn.send(ack.to_string()).await;
            }
        }
    }

    async fn on_text(&mut self, ctx: &Ctx, conn: &mut ws::Conn, text: &str) {
        let Ok(f) = serde_json::from_str::<NativeFrame<'_>>(text) else {
            ctx.stats.event("bad_frame", json!({"route": "native", "client": self.id, "text": text.chars().take(200).collect::<String>()}));
            return;
        };
        let index = f
            .channel
            .as_deref()
            .and_then(|c| self.subs.iter().position(|s| s.name == c));
        match f.kind.as_ref() {
            "connection_established" => {
                if let Some(s) = f.session {
                    self.session = Some(s.into_owned());
                }
                if f.resumed == Some(true) {
                    // The session restores its subscriptions; any it did not
                    // have are subscribed once the pong says the restore is over.
                    ctx.stats
                        .route(ROUTE)
                        .resumes
                        .fetch_add(1, Ordering::Relaxed);
                    conn.send(json!({"type": "ping", "id": "restored"}).to_string())
                        .await;
                } else {
                    for i in 0..self.subs.len() {
                        self.subscribe(conn, i).await;
                    }
                }
            }
            "pong" if f.id == Some(json!("restored")) => {
                for i in 0..self.subs.len() {
                    if !self.subs[i].live && !self.subs[i].requested {
                        self.subscribe(conn, i).await;
                    }
                }
            }
            "subscribed" => {
                let Some(i) = index else { return };
                let epoch_name = f.epoch.as_deref().unwrap_or("").to_string();
                let epoch = ctx.ledgers.epoch(&epoch_name);
                let offset = f.offset.unwrap_or(0);
                let by_session = !self.subs[i].requested;
                let s = &mut self.subs[i];
                s.live = true;
                match f.recovered {
                    Some(true) if s.started && s.epoch == epoch => {
                        // Continues after what this client processed; a
                        // session resumes from its acknowledged position, so
                        // what came after that may come again.
                        s.floor = s.last_off.max(s.floor);
                        s.redeliver_upto = if by_session { s.last_off } else { 0 };
                    }
                    Some(true) => {
                        ctx.stats.event(
                            "recovered_elsewhere",
                            json!({"client": self.id, "channel": s.name, "epoch": epoch_name, "had": s.epoch_name, "started": s.started}),
                        );
                        s.epoch = epoch;
                        s.epoch_name = epoch_name;
                        s.floor = offset;
                        s.last_off = 0;
                        s.redeliver_upto = 0;
                        s.started = true;
                    }
                    recovered => {
                        if recovered == Some(false) {
                            ctx.stats
                                .route(ROUTE)
                                .honest_restarts
                                .fetch_add(1, Ordering::Relaxed);
                            ctx.stats.event(
                                "honest_restart",
                                json!({"route": "native", "client": self.id, "channel": s.name,
                                    "replica": conn.replica, "by_session": by_session,
                                    "had": [s.epoch_name, s.last_off], "now": [epoch_name, offset]}),
                            );
                        }
                        s.epoch = epoch;
                        s.epoch_name = epoch_name;
                        s.floor = offset;
                        s.last_off = 0;
                        s.redeliver_upto = 0;
                        s.started = true;
                    }
                }
            }
            "snapshot" => {
                let Some(i) = index else { return };
                let s = &mut self.subs[i];
                let offset = f.offset.unwrap_or(0);
                if offset > s.last_off && offset <= s.floor {
                    s.last_off = offset;
                }
            }
            "message" => {
                let Some(i) = index else { return };
                let opened = self.opened_us;
                self.on_message(ctx, i, &f, &conn.replica, opened);
            }
            "error" => {
                let code = f.code.as_deref().unwrap_or("?");
                ctx.stats.error_code(ROUTE, code);
                if let Some(i) = index
                    && !self.subs[i].live
                {
                    // A refused subscribe (the engine unavailable): retry.
                    self.subs[i].requested = false;
                    self.subs[i].retry_at = Some(Instant::now() + Duration::from_secs(2));
                }
            }
            _ => {}
        }
    }

    fn on_message(
        &mut self,
        ctx: &Ctx,
        i: usize,
        f: &NativeFrame<'_>,
        replica: &str,
        opened_us: u64,
    ) {
        let counters = ctx.stats.route(ROUTE);
        let client = self.id;
        let s = &mut self.subs[i];
        let Some(o) = f.offset else {
            counters.junk.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let data = f.data.as_ref();
        if !s.live {
            ctx.stats.event(
                "message_while_not_subscribed",
                json!({"client": client, "channel": s.name, "offset": o}),
            );
        }
        if s.ledger.is_none() {
            counters.deliveries.fetch_add(1, Ordering::Relaxed);
            crate::load::collector_message(ctx, &s.name, o);
        } else {
            ctx.delivered(ROUTE, data.and_then(|d| d.t).unwrap_or(0), opened_us);
        }
        if let (Some(ledger), Some(seq)) = (&s.ledger, data.and_then(|d| d.s))
            && let Some(m) = ledger.observe(seq, s.epoch, o)
        {
            // A publish its producer was told failed, carried out twice (e.g.
            // by a stalled replica once it resumed): not owed to anyone.
            let (counter, kind) = if m.unacked {
                (&counters.unacked_anomalies, "unacked_repeat")
            } else {
                (&counters.mismatched, "mismatch")
            };
            counter.fetch_add(1, Ordering::Relaxed);
            ctx.stats.event(
                kind,
                json!({"client": client, "channel": s.name, "seq": m.seq, "expected": m.expected, "got": m.got, "replica": replica}),
            );
        }
        if o <= s.last_off {
            if o <= s.redeliver_upto {
                counters.redelivered.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.duplicated.fetch_add(1, Ordering::Relaxed);
                ctx.stats.event(
                    "duplicate",
                    json!({"route": "native", "client": client, "channel": s.name, "offset": o,
                        "after": s.last_off, "epoch": s.epoch_name, "replica": replica}),
                );
            }
            return;
        }
        if o > s.floor {
            let expected = s.last_off.max(s.floor) + 1;
            if o > expected {
                if s.ledger.is_some() {
                    let kind = Kind::OffsetGap {
                        epoch: s.epoch,
                        lo: expected,
                        hi: o - 1,
                    };
                    // Where it was seen: the check (filed now, judged once the
                    // ledger has settled) names no replica.
                    ctx.stats.event(
                        "offset_gap_seen",
                        json!({"client": client, "channel": s.name, "from": expected, "to": o - 1, "replica": replica}),
                    );
                    s.check(ctx, client, kind);
                } else {
                    ctx.stats.event(
                        "collector_offset_gap",
                        json!({"client": client, "channel": s.name, "from": expected, "to": o - 1, "replica": replica}),
                    );
                }
            }
        }
        s.last_off = o;
    }
}
