//! Checks that need the publishers' outcomes: evaluated once every publish
//! they concern has been answered (`SETTLE` after they are filed), by one
//! task. Clients file a check where their stream shows a gap, where it starts
//! and where it ends; the checker counts the acknowledged messages the check
//! says the client should have had and did not.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;

use crate::clock::now_us;
use crate::ledger::{Filter, Ledger};
use crate::stats::{Route, Stats};

/// How long after a check is filed the publishes it concerns are surely
/// answered (a publish times out after 5 s).
pub const SETTLE: Duration = Duration::from_secs(8);

/// What a client should have received and what it did.
#[derive(Debug)]
pub enum Kind {
    /// Received seq `lo`, then seq `hi`: the acknowledged ones between were lost.
    SeqGap { lo: u64, hi: u64 },
    /// Received offset `lo - 1`, then `hi + 1` (of `epoch`): those between were lost.
    OffsetGap { epoch: u32, lo: u64, hi: u64 },
    /// The stream started at `marker_us` (subscription confirmed) and its
    /// first message was seq `first` (u64::MAX: none): acknowledged messages
    /// sent after the marker and before `first` were lost.
    Start { marker_us: u64, first: u64 },
    /// Nothing arrived between the marker and the end: acknowledged
    /// messages sent after `marker_us` and acknowledged before `until_us` were lost.
    Window { marker_us: u64, until_us: u64 },
    /// The stream ended after seq `last`; messages acknowledged before
    /// `until_us` and after `last` were lost.
    Tail { last: u64, until_us: u64 },
    /// A native subscription ended after offset `after` of `epoch`:
    /// messages of that epoch acknowledged before `until_us` with a higher
    /// offset were lost.
    OffsetTail {
        epoch: u32,
        after: u64,
        until_us: u64,
    },
    /// Seq `seq` came again, or after a later one.
    Repeat { seq: u64 },
}

/// A filed check.
pub struct Check {
    pub route: Route,
    pub client: u64,
    pub ledger: Arc<Ledger>,
    pub filter: Filter,
    pub kind: Kind,
}

/// Where clients file checks.
#[derive(Clone)]
pub struct Checks {
    tx: mpsc::UnboundedSender<(u64, Check)>,
}

impl Checks {
    pub fn file(&self, check: Check) {
        let _ = self.tx.send((now_us(), check));
    }
}

/// Starts the checker; `finish` makes it evaluate everything pending at once
/// and return.
pub fn start(
    stats: Arc<Stats>,
) -> (
    Checks,
    mpsc::UnboundedSender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Check)>();
    let (finish_tx, mut finish_rx) = mpsc::unbounded_channel::<()>();
    let task = tokio::spawn(async move {
        let mut queue: VecDeque<(u64, Check)> = VecDeque::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let settle = SETTLE.as_micros() as u64;
        let mut finishing = false;
        loop {
            tokio::select! {
                Some(item) = rx.recv() => queue.push_back(item),
                _ = tick.tick() => {}
                Some(()) = finish_rx.recv(), if !finishing => finishing = true,
            }
            while let Ok(item) = rx.try_recv() {
                queue.push_back(item);
            }
            let now = now_us();
            while let Some((filed, _)) = queue.front() {
                let due = match &queue.front().map(|q| &q.1.kind) {
                    Some(
                        Kind::Tail { until_us, .. }
                        | Kind::Window { until_us, .. }
                        | Kind::OffsetTail { until_us, .. },
                    ) => (*until_us).max(*filed) + settle,
                    _ => filed + settle,
                };
                if !finishing && due > now {
                    // Checks are filed in time order; a later-due tail waits
                    // behind, which only delays its count.
                    break;
                }
                if let Some((_, check)) = queue.pop_front() {
                    evaluate(&stats, check);
                }
            }
            if finishing && queue.is_empty() && rx.is_empty() {
                return;
            }
        }
    });
    (Checks { tx }, finish_tx, task)
}

fn evaluate(stats: &Stats, c: Check) {
    let counters = stats.route(c.route);
    let (kind, lost, first) = match c.kind {
        Kind::SeqGap { lo, hi } => {
            let (n, first) = c.ledger.acked_between(lo, hi, c.filter, |_| true);
            ("gap", n, first)
        }
        Kind::OffsetGap { epoch, lo, hi } => {
            let (n, first) = c.ledger.acked_offsets(epoch, lo, hi);
            ("offset_gap", n, first)
        }
        Kind::Start { marker_us, first } => {
            let (n, f) = c
                .ledger
                .acked_between(0, first, c.filter, |e| e.send_us > marker_us);
            ("start", n, f)
        }
        Kind::Window {
            marker_us,
            until_us,
        } => {
            let (n, f) = c.ledger.acked_between(0, u64::MAX, c.filter, |e| {
                e.send_us > marker_us && e.ack_us <= until_us
            });
            ("window", n, f)
        }
        Kind::OffsetTail {
            epoch,
            after,
            until_us,
        } => {
            let (n, f) = c
                .ledger
                .acked_offsets_where(epoch, after + 1, u64::MAX, |e| e.ack_us <= until_us);
            ("offset_tail", n, f)
        }
        Kind::Tail { last, until_us } => {
            let (n, f) = c
                .ledger
                .acked_between(last, u64::MAX, c.filter, |e| e.ack_us <= until_us);
            ("tail", n, f)
        }
        Kind::Repeat { seq } => {
            let acked = c
                .ledger
                .get(seq)
                .is_some_and(|e| e.state == crate::ledger::State::Acked);
            if acked {
                counters.duplicated.fetch_add(1, Ordering::Relaxed);
                stats.event(
                    "duplicate",
                    json!({"route": c.route.label(), "client": c.client, "channel": c.ledger.channel, "seq": seq}),
                );
            } else {
                counters.unacked_anomalies.fetch_add(1, Ordering::Relaxed);
                stats.event(
                    "unacked_repeat",
                    json!({"route": c.route.label(), "client": c.client, "channel": c.ledger.channel, "seq": seq}),
                );
            }
            return;
        }
    };
    if lost > 0 {
        counters.lost.fetch_add(lost, Ordering::Relaxed);
        let entry = first.and_then(|s| c.ledger.get(s));
        stats.event(
            "lost",
            json!({
                "route": c.route.label(), "client": c.client, "channel": c.ledger.channel,
                "check": kind, "count": lost, "first_seq": first,
                "first_sent": entry.map(|e| e.send_us as f64 / 1e6),
                "first_offset": entry.map(|e| e.offset),
                "detail": format!("{:?}", describe(kind)),
            }),
        );
    }
}

fn describe(kind: &str) -> &'static str {
    match kind {
        "gap" => "acknowledged messages missing between two received ones",
        "offset_gap" => "offsets skipped between two received messages",
        "start" => "acknowledged after the subscription was confirmed, never received",
        "tail" => "acknowledged well before the client left, never received",
        "offset_tail" => "acknowledged well before the client left, offsets never received",
        "window" => "acknowledged while the client was subscribed, nothing received",
        _ => "",
    }
}
