//! ESCAI monitors (`/ws/monitor/{session_id}`): one agent's events of one or
//! two families, and the system alerts every connection gets. No resume: each
//! connection's streams are checked from their confirmation on — the agent's
//! from the last `subscription_confirmed`, the alerts' from the first (the
//! alerts are subscribed before the gateway reads the client's requests).

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
use crate::ledger::Filter;
use crate::stats::Route;
use crate::stream::SeqStream;
use crate::ws::{self, Frame};

const ROUTE: Route = Route::Escai;

/// Event types by kind (the ledger's `kind`) and the subscription type of each.
pub const EVENTS: [(&str, &str); 4] = [
    ("epistemic_update", "epistemic_updates"),
    ("pattern_alert", "pattern_alerts"),
    ("prediction_update", "prediction_updates"),
    ("agent_status_change", "agent_status"),
];

#[derive(Deserialize)]
struct Data {
    s: Option<u64>,
    t: Option<u64>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    subscription_type: Option<String>,
}

#[derive(Deserialize)]
struct EscaiFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    data: Option<Data>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
}

fn life(mean: Duration) -> Duration {
    let u: f64 = rand::rng().random_range(0.0001..1.0);
    Duration::from_secs_f64((-u.ln() * mean.as_secs_f64()).clamp(5.0, mean.as_secs_f64() * 5.0))
}

pub async fn slot(ctx: Arc<Ctx>, delay: Duration, mean_life: Duration) {
    tokio::time::sleep(delay).await;
    while !ctx.stop_clients.is_cancelled() {
        let id = ctx.client_id();
        let (agent, families) = {
            let mut rng = rand::rng();
            let agent = rng.random_range(0..ctx.args.agents);
            let first = rng.random_range(0..EVENTS.len());
            let mut families = vec![first];
            if rng.random_bool(0.5) {
                families.push((first + rng.random_range(1..EVENTS.len())) % EVENTS.len());
            }
            (agent, families)
        };
        let monitor = format!("agent:a{agent}:monitor");
        let token = ctx.token(
            &format!("escai-{id}"),
            &["websocket:connect", "websocket:subscribe", &monitor],
        );
        one_client(&ctx, id, agent, &families, &token, life(mean_life)).await;
    }
}

async fn one_client(
    ctx: &Ctx,
    id: u64,
    agent: usize,
    families: &[usize],
    token: &str,
    life: Duration,
) {
    let counters = ctx.stats.route(ROUTE);
    let limit = ctx.args.escai_heartbeat + Duration::from_secs(5);
    let life_end = Instant::now() + life;
    let filter = Filter(families.iter().fold(0, |m, k| m | (1 << k)));
    let channel = crate::load::agent(agent);
    let mut attempt = 0u32;
    let mut first = true;
    loop {
        if ctx.stop_clients.is_cancelled() || Instant::now() >= life_end {
            return;
        }
        let path = format!("/ws/monitor/soak-{id}");
        let mut conn = match ws::connect(ctx, &path, Some(token)).await {
            Ok(c) => c,
            Err(e) => {
                counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                ctx.stats.event(
                    "connect_failed",
                    json!({"route": "escai", "client": id, "status": e.status, "error": e.message}),
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
        ctx.stats.connected(ROUTE, 1);
        let mut events = SeqStream::new(ctx, &channel, filter, ROUTE, id);
        let mut alerts = SeqStream::new(ctx, crate::load::ALERTS, Filter::ALL, ROUTE, id);
        let mut confirmed: Vec<usize> = Vec::new();
        let mut retry_at: Option<Instant> = None;
        let ending: Option<Option<u16>> = loop {
            let frame = tokio::select! {
                biased;
                _ = ctx.stop_clients.cancelled() => {
                    let until = ctx.publishing_ended_us.load(Ordering::Relaxed);
                    events.end(ctx, until);
                    alerts.end(ctx, until);
                    conn.finish_silence(ctx, ROUTE, id, "stop");
                    break None;
                }
                _ = tokio::time::sleep_until(life_end) => {
                    counters.voluntary_leaves.fetch_add(1, Ordering::Relaxed);
                    let until = now_us().saturating_sub(ctx.args.leave_grace.as_micros() as u64);
                    events.end(ctx, until);
                    alerts.end(ctx, until);
                    conn.finish_silence(ctx, ROUTE, id, "leave");
                    break None;
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or(life_end)), if retry_at.is_some() => {
                    retry_at = None;
                    for k in families.iter().filter(|k| !confirmed.contains(k)) {
                        let request = json!({"type": "subscribe", "data": {"type": EVENTS[*k].1, "agent_id": format!("a{agent}")}});
                        conn.send(request.to_string()).await;
                    }
                    continue;
                }
                f = conn.next(ctx, ROUTE, id, limit) => f,
            };
            let text = match frame {
                Frame::Silent => continue,
                Frame::Closed(code) => break Some(code),
                Frame::Text(t) => t,
            };
            let Ok(f) = serde_json::from_str::<EscaiFrame<'_>>(text.as_str()) else {
                ctx.stats.event(
                    "bad_frame",
                    json!({"route": "escai", "client": id, "text": text.as_str().chars().take(200).collect::<String>()}),
                );
                continue;
            };
            match f.kind.as_ref() {
                "connection_established" => {
                    for k in families {
                        let request = json!({"type": "subscribe", "data": {"type": EVENTS[*k].1, "agent_id": format!("a{agent}")}});
                        conn.send(request.to_string()).await;
                    }
                }
                "subscription_confirmed" => {
                    let kind = f
                        .data
                        .as_ref()
                        .and_then(|d| d.subscription_type.as_deref())
                        .and_then(|t| EVENTS.iter().position(|(_, s)| *s == t));
                    if let Some(k) = kind
                        && !confirmed.contains(&k)
                    {
                        if confirmed.is_empty() {
                            alerts.confirm();
                        }
                        confirmed.push(k);
                        if confirmed.len() == families.len() {
                            events.confirm();
                        }
                    }
                }
                "ping" => {
                    conn.send(r#"{"type":"pong"}"#.to_string()).await;
                }
                "error" => {
                    let code = f
                        .code
                        .as_deref()
                        .or(f.data.as_ref().and_then(|d| d.code.as_deref()))
                        .unwrap_or("?");
                    ctx.stats.error_code(ROUTE, code);
                    if code == "SERVICE_UNAVAILABLE" && confirmed.len() < families.len() {
                        retry_at = Some(Instant::now() + Duration::from_secs(2));
                    }
                }
                "system_alert" => {
                    if let Some(Data { s: Some(s), t, .. }) = f.data {
                        alerts.message(ctx, s, t.unwrap_or(0));
                    }
                }
                kind => {
                    if let (Some(k), Some(Data { s: Some(s), t, .. })) =
                        (EVENTS.iter().position(|(e, _)| *e == kind), f.data)
                    {
                        if !filter.passes(k as u8) {
                            ctx.stats.event(
                                "filtered_event_delivered",
                                json!({"client": id, "channel": channel, "kind": kind, "seq": s}),
                            );
                        }
                        events.message(ctx, s, t.unwrap_or(0));
                    }
                }
            }
        };
        ctx.stats.connected(ROUTE, -1);
        match ending {
            None => {
                conn.close().await;
                return;
            }
            Some(code) => {
                counters.disconnects.fetch_add(1, Ordering::Relaxed);
                conn.finish_silence(ctx, ROUTE, id, "lost");
                ctx.stats
                    .close_code(ROUTE, &code.map_or("none".to_string(), |c| c.to_string()));
                if !ws::should_reconnect(code) {
                    ctx.stats.event(
                        "unexpected_close",
                        json!({"route": "escai", "client": id, "code": code, "replica": conn.replica}),
                    );
                }
                attempt = if code == Some(1001) { 0 } else { attempt + 1 };
                tokio::time::sleep(ws::backoff(attempt)).await;
            }
        }
    }
}
