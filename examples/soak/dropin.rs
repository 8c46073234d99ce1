//! Clients of the drop-in routes: the ARK snapshot route `/ws/{channel}`
//! and the relay route `/api/ws/{channel}`. Neither resumes: each connection
//! is a new stream, checked while it lasts (docs/RELIABILITY.md, "Soak runs"):
//!
//! - snapshot route: the snapshot first, then every acknowledged message
//!   published after it, exactly once and in order. A snapshot frame whose
//!   producer was told it failed may have been applied by Redis after newer
//!   messages (the cluster client retries a timed-out command), so its seq
//!   says nothing of its place; it counts as an unacknowledged repeat and
//!   checking starts afresh after it (every acknowledged message sent from
//!   then on must follow). The gateway never resends the snapshot mid-stream
//!   (the client sends no `refresh`): an acknowledged snapshot frame older
//!   than the stream is a repeat like any message;
//! - relay route: from the answer to the client's first `ping` (the
//!   subscription is live before the gateway reads it) every acknowledged
//!   message sent after it, exactly once and in order;
//! - both: when a replica missed messages beyond history it closes the
//!   connection with 1012 (docs/PROTOCOL.md): an honest restart, like a
//!   native `recovered: false`. The stream ends there without a tail check
//!   (nothing is owed after the close: the gap may lie before it), and the
//!   client reconnects and starts a new stream, checked afresh. Any other
//!   close is only a reconnect, and a gap before it is still counted (the
//!   stream's gap and start checks are filed as the frames arrive).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::Ctx;
use crate::clock::now_us;
use crate::ledger::{Filter, State};
use crate::stats::Route;
use crate::stream::SeqStream;
use crate::ws::{self, Frame};

/// The close code of a drop-in connection whose replica missed messages
/// beyond history (docs/PROTOCOL.md, "Close codes"): reconnect, start over.
const MISSED_MESSAGES: u16 = 1012;

#[derive(Deserialize)]
struct Bare<'a> {
    s: Option<u64>,
    t: Option<u64>,
    #[serde(default)]
    snap: bool,
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
}

fn life(mean: Duration) -> Duration {
    let u: f64 = rand::rng().random_range(0.0001..1.0);
    Duration::from_secs_f64((-u.ln() * mean.as_secs_f64()).clamp(5.0, mean.as_secs_f64() * 5.0))
}

/// One client slot of the snapshot (`snapshot` true) or relay route.
pub async fn slot(ctx: Arc<Ctx>, snapshot: bool, hot: bool, delay: Duration, mean_life: Duration) {
    tokio::time::sleep(delay).await;
    let route = if snapshot {
        Route::Snapshot
    } else {
        Route::Relay
    };
    while !ctx.stop_clients.is_cancelled() {
        let channel = if hot {
            crate::load::HOT.to_string()
        } else {
            crate::load::quiet(rand::rng().random_range(0..ctx.args.quiet_channels))
        };
        let id = ctx.client_id();
        let token = ctx.token(
            &format!("{}-{id}", route.label()),
            &["websocket:connect", "websocket:subscribe"],
        );
        one_client(&ctx, route, &channel, id, &token, life(mean_life)).await;
    }
}

/// A client that keeps one channel open until its life ends (or the run
/// stops), reconnecting when the gateway ends the connection.
async fn one_client(ctx: &Ctx, route: Route, channel: &str, id: u64, token: &str, life: Duration) {
    let counters = ctx.stats.route(route);
    let path = match route {
        Route::Snapshot => format!("/ws/{channel}"),
        _ => format!("/api/ws/{channel}"),
    };
    let limit = ctx.args.heartbeat + Duration::from_secs(5);
    let life_end = Instant::now() + life;
    let mut attempt = 0u32;
    let mut first = true;
    loop {
        if ctx.stop_clients.is_cancelled() || Instant::now() >= life_end {
            return;
        }
        let mut conn = match ws::connect(ctx, &path, Some(token)).await {
            Ok(c) => c,
            Err(e) => {
                counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                ctx.stats.event(
                    "connect_failed",
                    json!({"route": route.label(), "client": id, "status": e.status, "error": e.message}),
                );
                attempt += 1;
                tokio::time::sleep(ws::backoff(attempt)).await;
                continue;
            }
        };
        counters.connects.fetch_add(1, Ordering::Relaxed);
        if !first {
            // Only a connection the gateway (or the network) ended comes back here.
            counters.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        ctx.stats.connected(route, 1);
        let mut stream = SeqStream::new(ctx, channel, Filter::ALL, route, id);
        if route == Route::Relay {
            conn.send("ping".to_string()).await;
        }
        let mut got_snapshot = false;
        let ending: Option<Option<u16>> = loop {
            let frame = tokio::select! {
                biased;
                _ = ctx.stop_clients.cancelled() => {
                    stream.end(ctx, ctx.publishing_ended_us.load(Ordering::Relaxed));
                    conn.finish_silence(ctx, route, id, "stop");
                    break None;
                }
                _ = tokio::time::sleep_until(life_end) => {
                    counters.voluntary_leaves.fetch_add(1, Ordering::Relaxed);
                    stream.end(ctx, now_us().saturating_sub(ctx.args.leave_grace.as_micros() as u64));
                    conn.finish_silence(ctx, route, id, "leave");
                    break None;
                }
                f = conn.next(ctx, route, id, limit) => f,
            };
            let text = match frame {
                Frame::Silent => continue,
                Frame::Closed(code) => break Some(code),
                Frame::Text(t) => t,
            };
            let Ok(b) = serde_json::from_str::<Bare<'_>>(text.as_str()) else {
                ctx.stats.event(
                    "bad_frame",
                    json!({"route": route.label(), "client": id, "text": text.as_str().chars().take(200).collect::<String>()}),
                );
                continue;
            };
            match (b.s, b.kind.as_deref()) {
                (Some(s), _) => {
                    // A snapshot whose publish the producer was told failed:
                    // Redis may have applied it after later messages, so its
                    // seq does not place it. (The state is final here unless
                    // it is the newest publish: the producer sends the next
                    // one only once this one is answered.)
                    let unplaced = route == Route::Snapshot
                        && b.snap
                        && stream
                            .ledger
                            .get(s)
                            .is_some_and(|e| e.state == State::Failed);
                    if route == Route::Snapshot && b.snap && !got_snapshot {
                        got_snapshot = true;
                        ctx.delivered(route, b.t.unwrap_or(0), u64::MAX);
                        if unplaced {
                            stream.unplaced_snapshot(s);
                        } else {
                            stream.start_after(s);
                        }
                    } else if unplaced && s <= stream.last {
                        // Applied late (a live message after newer ones) or
                        // stored by a late application and resent by a
                        // restart: not a violation either way, since it was
                        // never acknowledged; checking starts afresh.
                        counters.unacked_anomalies.fetch_add(1, Ordering::Relaxed);
                        ctx.stats.event(
                            "unacked_repeat",
                            json!({"route": route.label(), "client": id, "channel": channel, "seq": s, "had": stream.last, "snapshot": true, "replica": conn.replica}),
                        );
                        ctx.delivered(route, b.t.unwrap_or(0), u64::MAX);
                        stream.unplaced_snapshot(s);
                    } else {
                        stream.message(ctx, s, b.t.unwrap_or(0));
                    }
                }
                (None, Some("pong")) if route == Route::Relay => stream.confirm(),
                (None, Some("error")) => {
                    ctx.stats
                        .error_code(route, b.code.as_deref().unwrap_or("?"));
                }
                _ => {
                    counters.junk.fetch_add(1, Ordering::Relaxed);
                    ctx.stats.event(
                        "unexpected_frame",
                        json!({"route": route.label(), "client": id, "text": text.as_str().chars().take(200).collect::<String>()}),
                    );
                }
            }
        };
        ctx.stats.connected(route, -1);
        let stream_last = stream.last;
        match ending {
            None => {
                conn.close().await;
                return;
            }
            Some(code) => {
                counters.disconnects.fetch_add(1, Ordering::Relaxed);
                if code == Some(MISSED_MESSAGES) {
                    // The replica missed messages beyond history and said so.
                    counters.honest_restarts.fetch_add(1, Ordering::Relaxed);
                    ctx.stats.event(
                        "dropin_restart",
                        json!({"route": route.label(), "client": id, "channel": channel, "had": stream_last, "replica": conn.replica}),
                    );
                }
                conn.finish_silence(ctx, route, id, "lost");
                ctx.stats
                    .close_code(route, &code.map_or("none".to_string(), |c| c.to_string()));
                if !ws::should_reconnect(code) {
                    ctx.stats.event(
                        "unexpected_close",
                        json!({"route": route.label(), "client": id, "code": code, "replica": conn.replica}),
                    );
                }
                attempt = if code == Some(1001) { 0 } else { attempt + 1 };
                tokio::time::sleep(ws::backoff(attempt)).await;
            }
        }
    }
}
