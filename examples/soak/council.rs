//! AI Council frontends (`/api/v1/ws/{request_id}`, the seed's way: token in
//! the query): each client slot starts a request (its producer publishes 8–16
//! events over ~30 s), follows it — connecting a little before or after the
//! first event, sometimes dropping and reconnecting mid-request — and
//! acknowledges every event it receives — a replayed one again, as the seed's
//! frontend does (the replay says the gateway lost the earlier ack). When the
//! request is over, every acknowledged event must have been processed exactly
//! once, or reported `events_expired`. An event replayed after a reconnect is
//! expected when the client had not acknowledged it, or did so within 2 s of
//! the disconnect (acknowledgements are stored every 0.5 s); an event whose
//! last ack is older that comes again, or one that comes twice on one
//! connection, is a duplicate — unless its producer was told the publish
//! failed (then it is an unacknowledged repeat). A duplicate names the replica
//! its last ack went to and when: the report (scripts/soak/report.py) counts
//! it as "ack lost with its replica", not as a violation, only when the fault
//! timeline shows that replica killed or stalled before it could store the ack.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::Ctx;
use crate::clock::now_us;
use crate::ledger::{Ledger, State};
use crate::stats::Route;
use crate::ws::{self, Frame};

const ROUTE: Route = Route::Council;

#[derive(Deserialize)]
struct Data<'a> {
    s: Option<u64>,
    t: Option<u64>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
    first_missing: Option<u64>,
    last_missing: Option<u64>,
    missing: Option<u64>,
}

#[derive(Deserialize)]
struct CouncilFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    message_id: Option<u64>,
    #[serde(borrow)]
    data: Option<Data<'a>>,
}

pub async fn slot(ctx: Arc<Ctx>, slot: usize, delay: Duration) {
    tokio::time::sleep(delay).await;
    let user = format!("council-{slot}");
    let token = ctx.token(&user, &["websocket:connect"]);
    let mut n = 0u64;
    while !ctx.stop_clients.is_cancelled() {
        if ctx.stop_publishing.is_cancelled() {
            ctx.stop_clients.cancelled().await;
            return;
        }
        n += 1;
        let request = format!("s{slot}-{n}");
        let ledger = ctx.ledgers.channel(&format!("council:{request}"));
        let done = Arc::new(AtomicBool::new(false));
        let lead = rand::rng().random_range(-2.0..4.0f64);
        if lead < 0.0 {
            // The frontend opens its socket before the first event.
            let c = ctx.clone();
            let (l, d) = (ledger.clone(), done.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs_f64(-lead)).await;
                crate::load::council_request(&c, &l, &d).await;
            });
        } else {
            let c = ctx.clone();
            let (l, d) = (ledger.clone(), done.clone());
            tokio::spawn(async move { crate::load::council_request(&c, &l, &d).await });
            tokio::time::sleep(Duration::from_secs_f64(lead)).await;
        }
        let id = ctx.client_id();
        Follower::new(id, &request, ledger)
            .run(&ctx, &token, &done)
            .await;
        let pause = rand::rng().random_range(1.0..5.0);
        tokio::time::sleep(Duration::from_secs_f64(pause)).await;
    }
}

struct Follower {
    id: u64,
    request: String,
    ledger: Arc<Ledger>,
    /// seq → its last ack: when it was sent (µs), on which connection, to
    /// which replica.
    processed: HashMap<u64, Acked>,
    /// Offsets the gateway said it can no longer replay.
    expired: Vec<(u64, u64)>,
    connection: u32,
    last_disconnect_us: u64,
    opened_us: u64,
}

#[derive(Clone)]
struct Acked {
    at_us: u64,
    message_id: u64,
    connection: u32,
    replica: String,
}

enum Ending {
    Done(u64),
    Drop,
    Lost(Option<u16>),
}

impl Follower {
    fn new(id: u64, request: &str, ledger: Arc<Ledger>) -> Self {
        Self {
            id,
            request: request.to_string(),
            ledger,
            processed: HashMap::new(),
            expired: Vec::new(),
            connection: 0,
            last_disconnect_us: 0,
            opened_us: 0,
        }
    }

    async fn run(mut self, ctx: &Ctx, token: &str, done: &AtomicBool) {
        let counters = ctx.stats.route(ROUTE);
        let path = format!("/api/v1/ws/{}?token={token}", self.request);
        let mut attempt = 0u32;
        let mut lost = false;
        // Some followers drop their connection once mid-request and come back.
        let mut drop_at = rand::rng()
            .random_bool(0.3)
            .then(|| Instant::now() + Duration::from_secs_f64(rand::rng().random_range(2.0..20.0)));
        loop {
            let mut conn = match ws::connect(ctx, &path, None).await {
                Ok(c) => c,
                Err(e) => {
                    counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                    ctx.stats.event(
                        "connect_failed",
                        json!({"route": "council", "client": self.id, "status": e.status, "error": e.message}),
                    );
                    if ctx.stop_clients.is_cancelled() {
                        return;
                    }
                    attempt += 1;
                    tokio::time::sleep(ws::backoff(attempt)).await;
                    continue;
                }
            };
            counters.connects.fetch_add(1, Ordering::Relaxed);
            self.connection += 1;
            if lost {
                counters.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            lost = false;
            self.opened_us = now_us();
            ctx.stats.connected(ROUTE, 1);
            let ending = self.serve(ctx, &mut conn, done, drop_at).await;
            ctx.stats.connected(ROUTE, -1);
            self.last_disconnect_us = now_us();
            match ending {
                Ending::Done(until) => {
                    conn.finish_silence(ctx, ROUTE, self.id, "done");
                    conn.close().await;
                    self.evaluate(ctx, until);
                    return;
                }
                Ending::Drop => {
                    drop_at = None;
                    counters.voluntary_leaves.fetch_add(1, Ordering::Relaxed);
                    conn.finish_silence(ctx, ROUTE, self.id, "drop");
                    conn.close().await;
                    attempt = 0;
                    let pause = rand::rng().random_range(0.0..2.0);
                    tokio::time::sleep(Duration::from_secs_f64(pause)).await;
                }
                Ending::Lost(code) => {
                    lost = true;
                    counters.disconnects.fetch_add(1, Ordering::Relaxed);
                    conn.finish_silence(ctx, ROUTE, self.id, "lost");
                    ctx.stats
                        .close_code(ROUTE, &code.map_or("none".to_string(), |c| c.to_string()));
                    if !ws::should_reconnect(code) {
                        ctx.stats.event(
                            "unexpected_close",
                            json!({"route": "council", "client": self.id, "code": code, "replica": conn.replica}),
                        );
                    }
                    attempt = if code == Some(1001) { 0 } else { attempt + 1 };
                    tokio::time::sleep(ws::backoff(attempt)).await;
                }
            }
        }
    }

    /// Whether every acknowledged event of the request has been processed.
    fn complete(&self) -> bool {
        let len = self.ledger.len();
        (1..=len).all(|s| {
            self.processed.contains_key(&s)
                || self
                    .ledger
                    .get(s)
                    .is_some_and(|e| e.state != State::Acked || self.is_expired(e.offset))
        })
    }

    fn is_expired(&self, offset: u64) -> bool {
        self.expired
            .iter()
            .any(|(a, b)| *a <= offset && offset <= *b)
    }

    async fn serve(
        &mut self,
        ctx: &Ctx,
        conn: &mut ws::Conn,
        done: &AtomicBool,
        drop_at: Option<Instant>,
    ) -> Ending {
        let limit = ctx.args.council_heartbeat + Duration::from_secs(5);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut done_since: Option<Instant> = None;
        let mut last_id = 0u64;
        loop {
            let frame = tokio::select! {
                biased;
                _ = ctx.stop_clients.cancelled() => {
                    return Ending::Done(ctx.publishing_ended_us.load(Ordering::Relaxed));
                }
                _ = tokio::time::sleep_until(drop_at.unwrap_or_else(Instant::now)), if drop_at.is_some() => {
                    return Ending::Drop;
                }
                _ = tick.tick() => {
                    if done.load(Ordering::Relaxed) {
                        let since = *done_since.get_or_insert_with(Instant::now);
                        if self.complete() || since.elapsed() > Duration::from_secs(20) {
                            return Ending::Done(now_us());
                        }
                    }
                    continue;
                }
                f = conn.next(ctx, ROUTE, self.id, limit) => f,
            };
            let text = match frame {
                Frame::Silent => continue,
                Frame::Closed(code) => return Ending::Lost(code),
                Frame::Text(t) => t,
            };
            let Ok(f) = serde_json::from_str::<CouncilFrame<'_>>(text.as_str()) else {
                ctx.stats.event(
                    "bad_frame",
                    json!({"route": "council", "client": self.id, "text": text.as_str().chars().take(200).collect::<String>()}),
                );
                continue;
            };
            match (f.kind.as_ref(), f.message_id.unwrap_or(0), f.data) {
                ("heartbeat", _, _) => {
                    conn.send(r#"{"type":"heartbeat_response"}"#.to_string())
                        .await;
                }
                ("connection_established", _, _) => {}
                ("error", _, Some(d)) => {
                    let code = d.code.as_deref().unwrap_or("?");
                    ctx.stats.error_code(ROUTE, code);
                    if code == "events_expired"
                        && let (Some(a), Some(b)) = (d.first_missing, d.last_missing)
                    {
                        ctx.stats
                            .route(ROUTE)
                            .expired_reported
                            .fetch_add(d.missing.unwrap_or(0), Ordering::Relaxed);
                        ctx.stats.event(
                            "events_expired",
                            json!({"client": self.id, "request": self.request, "from": a, "to": b, "missing": d.missing}),
                        );
                        self.expired.push((a, b));
                    }
                }
                (_, id, Some(Data { s: Some(s), t, .. })) if id > 0 => {
                    self.on_event(ctx, conn, id, s, t.unwrap_or(0), &mut last_id)
                        .await;
                }
                _ => {
                    ctx.stats.event(
                        "unexpected_frame",
                        json!({"route": "council", "client": self.id, "text": text.as_str().chars().take(200).collect::<String>()}),
                    );
                }
            }
        }
    }

    async fn on_event(
        &mut self,
        ctx: &Ctx,
        conn: &mut ws::Conn,
        message_id: u64,
        s: u64,
        t: u64,
        last_id: &mut u64,
    ) {
        let counters = ctx.stats.route(ROUTE);
        if let Some(e) = self.ledger.get(s)
            && e.state == State::Acked
            && e.offset != message_id
        {
            counters.mismatched.fetch_add(1, Ordering::Relaxed);
            ctx.stats.event(
                "mismatch",
                json!({"route": "council", "client": self.id, "request": self.request, "seq": s, "acked_offset": e.offset, "message_id": message_id}),
            );
        }
        if message_id <= *last_id {
            ctx.stats.event(
                "out_of_order",
                json!({"route": "council", "client": self.id, "request": self.request, "message_id": message_id, "after": *last_id}),
            );
        }
        *last_id = (*last_id).max(message_id);
        ctx.delivered(ROUTE, t, self.opened_us);
        if let Some(last) = self.processed.get(&s).cloned() {
            let (acked_us, connection) = (last.at_us, last.connection);
            let sanctioned = connection != self.connection
                && (acked_us == 0 || acked_us + 2_000_000 > self.last_disconnect_us);
            let unacked = self.ledger.get(s).is_some_and(|e| e.state == State::Failed);
            if sanctioned {
                counters.redelivered.fetch_add(1, Ordering::Relaxed);
            } else if unacked {
                // Its producer was told the publish failed, and it was carried
                // out twice (two message_ids): not an acknowledged event.
                counters.unacked_anomalies.fetch_add(1, Ordering::Relaxed);
                ctx.stats.event(
                    "unacked_repeat",
                    json!({"route": "council", "client": self.id, "request": self.request, "seq": s,
                        "message_id": message_id, "replica": conn.replica}),
                );
            } else {
                counters.duplicated.fetch_add(1, Ordering::Relaxed);
                ctx.stats.event(
                    "duplicate",
                    json!({"route": "council", "client": self.id, "request": self.request, "seq": s,
                        "message_id": message_id, "first_message_id": last.message_id,
                        "same_connection": connection == self.connection,
                        "acked_before_disconnect_s": (self.last_disconnect_us.saturating_sub(acked_us)) as f64 / 1e6,
                        "acked_at": acked_us as f64 / 1e6,
                        "ack_replica": last.replica,
                        "disconnected_at": self.last_disconnect_us as f64 / 1e6,
                        "replica": conn.replica}),
                );
            }
            if connection == self.connection && last.message_id == message_id {
                // Already acknowledged on this connection: the gateway has it.
                return;
            }
        }
        // Acknowledged on receipt, a replayed copy too: the replay says the
        // gateway does not have the earlier ack, and without a new one the
        // event would come again on every connect.
        conn.send(json!({"type": "ack", "message_id": message_id}).to_string())
            .await;
        self.processed.insert(
            s,
            Acked {
                at_us: now_us(),
                message_id,
                connection: self.connection,
                replica: conn.replica.clone(),
            },
        );
    }

    /// Every event acknowledged to its producer before `until_us` must have
    /// been processed, or reported expired.
    fn evaluate(&self, ctx: &Ctx, until_us: u64) {
        let mut lost = Vec::new();
        for s in 1..=self.ledger.len() {
            let Some(e) = self.ledger.get(s) else {
                continue;
            };
            if e.state == State::Acked
                && e.ack_us <= until_us
                && !self.processed.contains_key(&s)
                && !self.is_expired(e.offset)
            {
                lost.push(s);
            }
        }
        if !lost.is_empty() {
            ctx.stats
                .route(ROUTE)
                .lost
                .fetch_add(lost.len() as u64, Ordering::Relaxed);
            ctx.stats.event(
                "lost",
                json!({"route": "council", "client": self.id, "channel": self.ledger.channel,
                    "check": "request", "count": lost.len(), "seqs": lost, "connections": self.connection}),
            );
        }
    }
}
