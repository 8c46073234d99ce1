//! The load: the producers of every channel, the client slots of every
//! route, and a watch on the collector's channels.
//!
//! Channels: `soak.hot` (`--hot-rate` messages/s, a snapshot every 50th),
//! `soak.q.N` (`--quiet-channels`, `--quiet-rate` each, a snapshot every 10th),
//! `agents:aN` (ESCAI events of four kinds), `alerts` (system alerts every
//! ~5 s), `council:sS-N` (one AI Council request per client slot at a time),
//! and the collector's `federation` and `memory`. Every producer sends one
//! message at a time and picks HTTP or the Redis script at random per message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::Ctx;
use crate::clock::now_us;
use crate::escai::EVENTS;
use crate::ledger::Ledger;
use crate::publish::Method;

pub const HOT: &str = "soak.hot";
pub const ALERTS: &str = "alerts";

pub fn quiet(n: usize) -> String {
    format!("soak.q.{n}")
}

pub fn agent(n: usize) -> String {
    format!("agents:a{n}")
}

pub fn is_collector(channel: &str) -> bool {
    matches!(channel, "federation" | "memory")
}

fn method() -> Method {
    if rand::rng().random_bool(0.5) {
        Method::Http
    } else {
        Method::Redis
    }
}

/// A little padding so frames look like dashboard updates (~150 bytes).
const PAD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn plain(seq: u64, t: u64, snap: bool) -> Value {
    if snap {
        json!({"s": seq, "t": t, "snap": true, "p": PAD})
    } else {
        json!({"s": seq, "t": t, "p": PAD})
    }
}

/// An exponential pause with mean `1 / rate` (at most 10 means).
fn pause(rate: f64) -> Duration {
    let u: f64 = rand::rng().random_range(0.0001..1.0);
    Duration::from_secs_f64((-u.ln() / rate).min(10.0 / rate))
}

/// Starts every producer; returns once each channel has its first message
/// (the snapshot the snapshot route starts with).
pub async fn start_producers(ctx: Arc<Ctx>) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut expected = 0;
    // The hot channel.
    {
        let ctx = ctx.clone();
        let ready = ready_tx.clone();
        expected += 1;
        tasks.push(tokio::spawn(async move {
            let ledger = ctx.ledgers.channel(HOT);
            let period = Duration::from_secs_f64(1.0 / ctx.args.hot_rate);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = ctx.stop_publishing.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let snap = n.is_multiple_of(50);
                ctx.publisher
                    .publish(&ledger, 0, method(), snap, |s, t| plain(s, t, snap))
                    .await;
                if n == 0 {
                    let _ = ready.send(());
                }
                n += 1;
            }
        }));
    }
    // Quiet channels.
    for i in 0..ctx.args.quiet_channels {
        let ctx = ctx.clone();
        let ready = ready_tx.clone();
        expected += 1;
        tasks.push(tokio::spawn(async move {
            let ledger = ctx.ledgers.channel(&quiet(i));
            let mut n = 0u64;
            loop {
                let snap = n.is_multiple_of(10);
                ctx.publisher
                    .publish(&ledger, 0, method(), snap, |s, t| plain(s, t, snap))
                    .await;
                if n == 0 {
                    let _ = ready.send(());
                }
                n += 1;
                tokio::select! {
                    _ = ctx.stop_publishing.cancelled() => return,
                    _ = tokio::time::sleep(pause(ctx.args.quiet_rate)) => {}
                }
            }
        }));
    }
    // ESCAI agents.
    for i in 0..ctx.args.agents {
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let ledger = ctx.ledgers.channel(&agent(i));
            loop {
                tokio::select! {
                    _ = ctx.stop_publishing.cancelled() => return,
                    _ = tokio::time::sleep(pause(ctx.args.agent_rate)) => {}
                }
                let kind = rand::rng().random_range(0..EVENTS.len());
                let confidence: f64 = rand::rng().random_range(0.0..1.0);
                ctx.publisher
                    .publish(&ledger, kind as u8, method(), false, |s, t| {
                        json!({"type": EVENTS[kind].0, "data": {"s": s, "t": t, "confidence_level": confidence}})
                    })
                    .await;
            }
        }));
    }
    // System alerts.
    {
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let ledger = ctx.ledgers.channel(ALERTS);
            loop {
                tokio::select! {
                    _ = ctx.stop_publishing.cancelled() => return,
                    _ = tokio::time::sleep(pause(0.2)) => {}
                }
                ctx.publisher
                    .publish(&ledger, 0, method(), false, |s, t| {
                        json!({"type": "system_alert", "data": {"s": s, "t": t, "message": "soak"}})
                    })
                    .await;
            }
        }));
    }
    drop(ready_tx);
    let wait = async {
        for _ in 0..expected {
            if ready_rx.recv().await.is_none() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(60), wait).await;
    tasks
}

/// One AI Council request: 8–16 events 1–3 s apart; `done` once the last is answered.
pub async fn council_request(ctx: &Ctx, ledger: &Ledger, done: &AtomicBool) {
    let events = rand::rng().random_range(8..=16);
    for i in 0..events {
        if ctx.stop_publishing.is_cancelled() {
            break;
        }
        let kind = match i {
            0 => "request_received",
            _ if i == events - 1 => "final_answer",
            _ if i % 3 == 0 => "agent_response",
            _ => "analysis_progress",
        };
        ctx.publisher
            .publish(
                ledger,
                0,
                method(),
                false,
                |s, t| json!({"type": kind, "data": {"s": s, "t": t, "step": i}}),
            )
            .await;
        let gap = rand::rng().random_range(1.0..3.0);
        tokio::select! {
            _ = ctx.stop_publishing.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs_f64(gap)) => {}
        }
    }
    done.store(true, Ordering::Relaxed);
}

/// Starts every client slot, spread over the ramp.
pub fn start_clients(ctx: Arc<Ctx>) -> Vec<JoinHandle<()>> {
    let n = ctx.args.clients;
    let mean_life = Duration::from_secs_f64((n as f64 / ctx.args.churn.max(0.01)).max(10.0));
    let hot = ((n as f64) * ctx.args.hot_share).round() as usize;
    // Routes by share: native 40 %, snapshot 15 %, relay 15 %, ESCAI 15 %, AI Council 15 %.
    let native = n * 40 / 100;
    let snapshot = n * 15 / 100;
    let relay = n * 15 / 100;
    let escai = n * 15 / 100;
    let council = n - native - snapshot - relay - escai;
    let (hot_native, hot_snapshot) = (hot / 2, hot / 4);
    let hot_relay = hot - hot_native - hot_snapshot;
    let mut tasks = Vec::new();
    let mut k = 0usize;
    let delay = |k: &mut usize| {
        *k += 1;
        Duration::from_secs_f64(*k as f64 / ctx.args.ramp.max(1.0))
    };
    for i in 0..native {
        let d = delay(&mut k);
        tasks.push(tokio::spawn(crate::native::slot(
            ctx.clone(),
            i < hot_native,
            d,
            mean_life,
        )));
    }
    for i in 0..snapshot {
        let d = delay(&mut k);
        tasks.push(tokio::spawn(crate::dropin::slot(
            ctx.clone(),
            true,
            i < hot_snapshot,
            d,
            mean_life,
        )));
    }
    for i in 0..relay {
        let d = delay(&mut k);
        tasks.push(tokio::spawn(crate::dropin::slot(
            ctx.clone(),
            false,
            i < hot_relay,
            d,
            mean_life,
        )));
    }
    for _ in 0..escai {
        let d = delay(&mut k);
        tasks.push(tokio::spawn(crate::escai::slot(ctx.clone(), d, mean_life)));
    }
    for i in 0..council {
        let d = delay(&mut k);
        tasks.push(tokio::spawn(crate::council::slot(ctx.clone(), i, d)));
    }
    // Shuffle nothing: the ramp interleaves routes by their order; fine for a soak.
    tasks
}

/// The collector's channels as native clients see them: the newest offset,
/// when it arrived, and the longest wait between two new offsets.
#[derive(Default)]
pub struct CollectorWatch {
    federation: Watch,
    memory: Watch,
}

#[derive(Default)]
struct Watch {
    offset: AtomicU64,
    at_us: AtomicU64,
    max_gap_us: AtomicU64,
    max_gap_at_us: AtomicU64,
    updates: AtomicU64,
}

pub fn collector_message(ctx: &Ctx, channel: &str, offset: u64) {
    let w = match channel {
        "federation" => &ctx.collector.federation,
        _ => &ctx.collector.memory,
    };
    let previous = w.offset.fetch_max(offset, Ordering::Relaxed);
    if offset <= previous {
        return;
    }
    let now = now_us();
    let before = w.at_us.swap(now, Ordering::Relaxed);
    w.updates.fetch_add(1, Ordering::Relaxed);
    if before != 0 && previous != 0 {
        let gap = now.saturating_sub(before);
        if w.max_gap_us.fetch_max(gap, Ordering::Relaxed) < gap {
            w.max_gap_at_us.store(now, Ordering::Relaxed);
        }
        if gap > 8_000_000 {
            ctx.stats.event(
                "collector_pause",
                json!({"channel": channel, "gap_s": gap as f64 / 1e6, "from": before as f64 / 1e6, "to": now as f64 / 1e6}),
            );
        }
    }
}

pub fn collector_summary(ctx: &Ctx) -> Value {
    let one = |w: &Watch| {
        json!({
            "updates": w.updates.load(Ordering::Relaxed),
            "newest_offset": w.offset.load(Ordering::Relaxed),
            "max_gap_s": w.max_gap_us.load(Ordering::Relaxed) as f64 / 1e6,
            "max_gap_at": w.max_gap_at_us.load(Ordering::Relaxed) as f64 / 1e6,
        })
    };
    json!({"federation": one(&ctx.collector.federation), "memory": one(&ctx.collector.memory)})
}
