//! The operations feed: every replica publishes its own figures on the
//! admin-only channel `sys:stats` every `--stats-interval`, through the engine,
//! so a client of any one replica sees all of them (the dashboard's operations
//! view, `switchboard tail sys:stats`).
//!
//! A report is one JSON object per replica and interval (see [`Report`]);
//! rates are computed from this replica's counters over the interval. The
//! channel keeps a small history (the `sys` namespace policy, [`HISTORY`]) so a
//! page that opens can draw the last minutes at once. On shutdown a last report
//! says `"draining": true`. While the engine is down reports cannot be
//! published: the silence itself is the signal (viewers mark a replica whose
//! reports stop as silent).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Gateway;
use crate::channel::ChannelName;
use crate::engine::{HistoryConfig, HistoryPolicy, PublishOptions};
use crate::json::Json;
use crate::metrics::{EngineMetrics, GatewayMetrics};

/// The channel of the operations feed.
pub const CHANNEL: &str = "sys:stats";

/// History of the `sys` namespace unless `--namespace-history sys=…` says otherwise:
/// with a few replicas reporting every 5 s, several minutes.
pub const HISTORY: HistoryPolicy = HistoryPolicy {
    size: 240,
    ttl: Duration::from_secs(600),
    tombstone: Duration::ZERO,
};

/// Gives the `sys` namespace its small history unless one was configured.
pub fn with_system_history(mut history: HistoryConfig) -> HistoryConfig {
    history
        .namespaces
        .entry(crate::auth::SYSTEM_NAMESPACE.to_string())
        .or_insert(HISTORY);
    history
}

/// One replica's report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub replica: String,
    /// `gateway` or `standalone`.
    pub role: &'static str,
    pub version: &'static str,
    /// RFC 3339 time of the report.
    pub at: String,
    /// Seconds until the next report (viewers call a replica silent after 3).
    pub interval_seconds: f64,
    pub uptime_seconds: u64,
    pub ready: bool,
    /// Why the replica is not ready, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_ready_reason: Option<String>,
    pub draining: bool,
    pub engine: EngineStatus,
    pub connections: Connections,
    pub subscriptions: i64,
    /// Channels with at least one local subscriber.
    pub channels: i64,
    /// Messages received from the engine's live feed per second over the interval.
    pub messages_in_per_second: f64,
    /// Messages written to clients per second (one per message per client).
    pub messages_out_per_second: f64,
    pub bytes_out_per_second: f64,
    /// Counters since the replica started.
    pub totals: Totals,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EngineStatus {
    /// `redis` or `memory`.
    pub kind: &'static str,
    pub ready: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Connections {
    pub total: i64,
    pub native: i64,
    pub snapshot: i64,
    pub relay: i64,
    /// The ESCAI route (seed 003).
    pub escai: i64,
    /// The AI Council route (seed 004).
    pub council: i64,
    /// Of all these, the connections without a token (`--anonymous-subscribe`).
    pub anonymous: i64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
pub struct Totals {
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
    pub slow_consumer_closes: u64,
    pub redis_errors: u64,
    pub redis_reconnects: u64,
}

impl Totals {
    fn read(metrics: &GatewayMetrics, engine: &EngineMetrics) -> Self {
        Self {
            messages_in: metrics.messages_in.get(),
            messages_out: metrics.messages_out.get(),
            bytes_out: metrics.bytes_out.get(),
            slow_consumer_closes: metrics.slow_consumer_closes.get(),
            redis_errors: engine.redis_errors.get(),
            redis_reconnects: engine.redis_reconnects.get(),
        }
    }
}

/// Per-second rate of a counter between two readings.
fn rate(now: u64, before: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    let per_second = now.saturating_sub(before) as f64 / secs;
    (per_second * 100.0).round() / 100.0
}

/// Builds the reports of one replica from its counters.
struct Reporter {
    role: &'static str,
    interval: Duration,
    started: Instant,
    last: Totals,
    last_at: Instant,
}

impl Reporter {
    fn new(gw: &Gateway, role: &'static str, interval: Duration) -> Self {
        let now = Instant::now();
        Self {
            role,
            interval,
            started: now,
            last: Totals::read(&gw.metrics, &gw.engine_metrics),
            last_at: now,
        }
    }

    fn report(&mut self, gw: &Gateway) -> Report {
        let now = Instant::now();
        let totals = Totals::read(&gw.metrics, &gw.engine_metrics);
        let elapsed = now.duration_since(self.last_at);
        let readiness = gw.readiness();
        gw.metrics_registry.ready.set(i64::from(readiness.is_ok()));
        let health = gw.engine.health();
        let route = |r: &str| gw.metrics.route_connections(r);
        let (native, snapshot, relay) = (route("native"), route("snapshot"), route("relay"));
        let (escai, council) = (route("escai"), route("council"));
        let report = Report {
            replica: gw.config.replica_id.clone(),
            role: self.role,
            version: env!("CARGO_PKG_VERSION"),
            at: crate::time::rfc3339_now(),
            interval_seconds: self.interval.as_secs_f64(),
            uptime_seconds: now.duration_since(self.started).as_secs(),
            ready: readiness.is_ok(),
            not_ready_reason: readiness.err().map(|e| e.to_string()),
            draining: gw.shutdown.is_cancelled(),
            engine: EngineStatus {
                kind: gw.engine.kind(),
                ready: health.ready,
                detail: health.detail,
            },
            connections: Connections {
                total: native + snapshot + relay + escai + council,
                native,
                snapshot,
                relay,
                escai,
                council,
                anonymous: gw.metrics.anonymous_connections(),
            },
            subscriptions: gw.metrics.subscriptions.get(),
            channels: gw.metrics.channels.get(),
            messages_in_per_second: rate(totals.messages_in, self.last.messages_in, elapsed),
            messages_out_per_second: rate(totals.messages_out, self.last.messages_out, elapsed),
            bytes_out_per_second: rate(totals.bytes_out, self.last.bytes_out, elapsed),
            totals,
        };
        self.last = totals;
        self.last_at = now;
        report
    }
}

async fn publish(gw: &Gateway, channel: &ChannelName, report: &Report) -> bool {
    let Ok(value) = serde_json::to_value(report) else {
        return false;
    };
    let data = Json::from_value(&value);
    match gw
        .engine
        .publish(channel, &data, PublishOptions::default())
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(error = %e, "could not publish this replica's stats on {CHANNEL}");
            false
        }
    }
}

/// Consecutive failed reports before a warning is logged.
const WARN_AFTER_FAILURES: u32 = 3;

/// How long shutdown waits for the last report.
const LAST_REPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// The running reporter; [`Reporting::finish`] waits for its last report.
pub struct Reporting(Option<tokio::task::JoinHandle<()>>);

impl Reporting {
    /// Waits (briefly) until the last report, sent when the gateway began to
    /// shut down, is published.
    pub async fn finish(self) {
        if let Some(task) = self.0 {
            let _ = tokio::time::timeout(LAST_REPORT_TIMEOUT, task).await;
        }
    }
}

/// Publishes this replica's report every `interval` until the gateway shuts
/// down, then one last report marked draining. `interval` zero: nothing.
pub fn spawn(gw: Arc<Gateway>, role: &'static str, interval: Duration) -> Reporting {
    if interval.is_zero() {
        tracing::info!("operations feed disabled (--stats-interval 0)");
        return Reporting(None);
    }
    let Ok(channel) = ChannelName::parse(CHANNEL, usize::MAX) else {
        return Reporting(None);
    };
    Reporting(Some(tokio::spawn(async move {
        let mut reporter = Reporter::new(&gw, role, interval);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: viewers see a new replica at once.
        // Failures are logged from the third in a row (not while Redis is
        // still being connected at startup), and the recovery after them.
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = gw.shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            if publish(&gw, &channel, &reporter.report(&gw)).await {
                if failures >= WARN_AFTER_FAILURES {
                    tracing::info!("operations feed: publishing stats on {CHANNEL} again");
                }
                failures = 0;
            } else {
                failures += 1;
                if failures == WARN_AFTER_FAILURES {
                    tracing::warn!(
                        "operations feed: cannot publish stats on {CHANNEL} (engine unavailable); retrying every interval"
                    );
                }
            }
        }
        publish(&gw, &channel, &reporter.report(&gw)).await;
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second_and_never_negative() {
        assert_eq!(rate(150, 50, Duration::from_secs(2)), 50.0);
        assert_eq!(rate(10, 20, Duration::from_secs(1)), 0.0);
        assert_eq!(rate(10, 0, Duration::ZERO), 0.0);
        assert_eq!(rate(1, 0, Duration::from_secs(3)), 0.33);
    }

    #[test]
    fn the_system_namespace_gets_a_small_history_unless_configured() {
        let history = with_system_history(HistoryConfig::default());
        let stats = ChannelName::parse(CHANNEL, 128).unwrap();
        assert_eq!(history.policy(&stats), HISTORY);
        let mut configured = HistoryConfig::default();
        let mine = HistoryPolicy {
            size: 5,
            ttl: Duration::from_secs(1),
            tombstone: Duration::ZERO,
        };
        configured.namespaces.insert("sys".into(), mine);
        assert_eq!(with_system_history(configured).policy(&stats), mine);
    }
}
