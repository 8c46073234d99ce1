//! Prometheus metrics of one process (`/metrics`): the [`MetricsRegistry`] a process
//! renders, and each component's metric set, registered into the registry it
//! is given — the engine's ([`EngineMetrics`]), a gateway's ([`GatewayMetrics`];
//! the collector's are `collector::metrics::CollectorMetrics`). A gateway
//! therefore exports only gateway and engine series, a collector only
//! collector and engine series, `standalone` (both) all of them.
//!
//! Names follow Prometheus conventions: `switchboard_` prefix, `_total` for
//! counters, `_seconds` for durations. Labels are bounded sets (route, close
//! code, result); channel names are never labels.
//!
//! A labelled series exists only once it has a value, so a gateway creates
//! every known label value of its counters at 0 when it starts
//! ([`Metrics::gateway_started`]): dashboards and `rate()`/`increase()` alerts
//! then see a fresh replica's first event as an increase from 0, instead of a
//! series that appears already at 1 (which `increase` cannot tell from nothing).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    TextEncoder,
};

/// The metrics of one process: what `/metrics` renders. Every process has
/// readiness and build information; components register the rest.
pub struct MetricsRegistry {
    inner: prometheus::Registry,
    /// `switchboard_ready`: 1 when the process is ready.
    pub ready: IntGauge,
    /// `switchboard_runtime_alive_tasks`: the Tokio runtime's live tasks,
    /// read when the metrics are rendered (a leak of tasks shows as growth).
    tasks: IntGauge,
}

/// The engine's metrics: Redis failures and the live feed's invalid messages.
pub struct EngineMetrics {
    pub invalid_messages: IntCounter,
    pub redis_errors: RedisErrors,
    pub redis_reconnects: IntCounter,
    pub redis_client_rebuilds: IntCounter,
}

/// A gateway's metrics (also `standalone`'s): connections, the hub's fan-out,
/// publishes, resumes.
pub struct GatewayMetrics {
    pub connections: IntGaugeVec,
    pub max_connections: IntGauge,
    pub connections_opened: IntCounterVec,
    pub upgrades_rejected: IntCounterVec,
    pub disconnects: IntCounterVec,
    pub subscriptions: IntGauge,
    pub channels: IntGauge,
    pub messages_in: IntCounter,
    pub bytes_in: IntCounter,
    pub messages_out: IntCounter,
    pub bytes_out: IntCounter,
    /// Of `messages_out`: those that went out compressed (permessage-deflate).
    pub compressed_out: IntCounter,
    /// Of `messages_out`: those that went out as fossil deltas.
    pub deltas_out: IntCounter,
    pub client_messages: IntCounter,
    pub client_bytes: IntCounter,
    pub client_errors: IntCounterVec,
    pub slow_consumer_closes: IntCounter,
    pub publishes: IntCounterVec,
    pub broadcast_duration: Histogram,
    pub delivery_lag: Histogram,
    pub resumes: IntCounterVec,
    pub gap_fills: IntCounterVec,
    pub resyncs: IntCounter,
}

pub(crate) fn counter(registry: &MetricsRegistry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .inner
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

pub(crate) fn counter_vec(
    registry: &MetricsRegistry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .inner
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

pub(crate) fn gauge(registry: &MetricsRegistry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .inner
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

pub(crate) fn gauge_vec(
    registry: &MetricsRegistry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .inner
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

pub(crate) fn histogram(
    registry: &MetricsRegistry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    registry
        .inner
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

/// What a failed Redis operation was for: the `op` label of
/// `switchboard_redis_errors_total` (a fixed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisOp {
    /// The publish script (and `WAIT` with `--redis-wait-replicas`).
    Publish,
    /// History reads (resume, gap fill).
    History,
    /// Snapshot reads.
    Snapshot,
    /// The cluster-wide connection list: reads and this replica's writes.
    Presence,
    /// Resumable sessions: reads and position writes.
    Session,
    /// The collector's leadership lease.
    Lease,
    /// The control channel ("disconnect this user everywhere").
    Control,
    /// The engine's health check.
    Ping,
    /// The live feed: pub/sub connections, (S)SUBSCRIBE, the cluster's slot map.
    PubSub,
}

impl RedisOp {
    pub const ALL: [RedisOp; 9] = [
        Self::Publish,
        Self::History,
        Self::Snapshot,
        Self::Presence,
        Self::Session,
        Self::Lease,
        Self::Control,
        Self::Ping,
        Self::PubSub,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::History => "history",
            Self::Snapshot => "snapshot",
            Self::Presence => "presence",
            Self::Session => "session",
            Self::Lease => "lease",
            Self::Control => "control",
            Self::Ping => "ping",
            Self::PubSub => "pubsub",
        }
    }
}

/// `switchboard_redis_errors_total{op}`: every label value exists from the
/// start (at 0), so rates work from the first failure.
pub struct RedisErrors {
    by_op: IntCounterVec,
}

impl RedisErrors {
    fn new(registry: &MetricsRegistry) -> Self {
        let by_op = counter_vec(
            registry,
            "switchboard_redis_errors_total",
            "Redis operations that failed, by op: a command or pipeline that got an error reply, timed out or found no connection, and pub/sub connections lost or refused.",
            &["op"],
        );
        for op in RedisOp::ALL {
            by_op.with_label_values(&[op.label()]);
        }
        Self { by_op }
    }

    pub fn inc(&self, op: RedisOp) {
        self.by_op.with_label_values(&[op.label()]).inc();
    }

    /// The sum over every `op`.
    pub fn get(&self) -> u64 {
        RedisOp::ALL
            .iter()
            .map(|op| self.by_op.with_label_values(&[op.label()]).get())
            .sum()
    }
}

/// The gateway's WebSocket routes (`route` label).
pub const ROUTES: [&str; 5] = ["native", "snapshot", "relay", "escai", "council"];

/// Why an upgrade is refused before the handshake (`reason` label of
/// `switchboard_upgrades_rejected_total`): the codes of `gateway/http.rs`'s
/// checks, and the token refusals of `AuthError::code`.
pub const UPGRADE_REJECTIONS: [&str; 19] = [
    "bad_channel",
    "bad_handshake",
    "draining",
    "origin_not_allowed",
    "missing_token",
    "token_expired",
    "token_not_yet_valid",
    "wrong_audience",
    "wrong_issuer",
    "missing_claim",
    "invalid_token",
    "forbidden",
    "max_connections_per_user",
    "max_connections",
    "no_upgrade",
    "bad_session_id",
    "unavailable",
    "max_anonymous_connections",
    "max_anonymous_connections_per_ip",
];

/// Label values the layers above know and a gateway exports at 0 from the
/// start: the close codes it sends (`ws::close`), the `error` frame codes
/// (`protocol::ErrorCode`).
pub struct GatewayLabels<'a> {
    pub close_codes: &'a [&'static str],
    pub client_errors: &'a [&'static str],
}

/// How a connection ends besides a close code the gateway sends (`code` label
/// of `switchboard_disconnects_total`).
pub const CLIENT_ENDINGS: [&str; 2] = ["client", "lost"];

/// Results of publishes through the API, resumes and gap fills.
pub const PUBLISH_RESULTS: [&str; 3] = ["ok", "stale", "error"];
pub const RESUME_RESULTS: [&str; 2] = ["recovered", "not_recovered"];
pub const GAP_FILL_RESULTS: [&str; 2] = ["filled", "lost"];

pub(crate) const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `auth` label values of the connection series.
const AUTH_LABELS: [&str; 3] = ["token", "anonymous", "none"];

impl MetricsRegistry {
    /// A registry with the process's own series: CPU, memory and file
    /// descriptors (`process_*`), build information, readiness.
    pub fn new() -> Self {
        let inner = prometheus::Registry::new();
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = inner.register(Box::new(pc));
        }
        let mut registry = Self {
            inner,
            ready: IntGauge::new("switchboard_ready", "unregistered").expect("valid metric"),
            tasks: IntGauge::new("switchboard_runtime_alive_tasks", "unregistered")
                .expect("valid metric"),
        };
        let build = gauge_vec(
            &registry,
            "switchboard_build_info",
            "Build information (always 1).",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.ready = gauge(
            &registry,
            "switchboard_ready",
            "1 when the process is ready (engine reachable, subscriptions live, not draining).",
        );
        registry.tasks = gauge(
            &registry,
            "switchboard_runtime_alive_tasks",
            "Tasks alive in the process's Tokio runtime (connections, shards, timers' owners, background loops).",
        );
        registry
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let alive = runtime.metrics().num_alive_tasks();
            self.tasks.set(i64::try_from(alive).unwrap_or(i64::MAX));
        }
        let mut out = Vec::new();
        let families = self.inner.gather();
        if TextEncoder::new().encode(&families, &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl EngineMetrics {
    /// Registers the engine's metrics in `r`.
    pub fn register(r: &MetricsRegistry) -> Self {
        Self {
            invalid_messages: counter(
                r,
                "switchboard_invalid_messages_total",
                "Messages from the feed dropped because they were not valid JSON.",
            ),
            redis_errors: RedisErrors::new(r),
            redis_reconnects: counter(
                r,
                "switchboard_redis_reconnects_total",
                "Times the Redis pub/sub connection was lost and rebuilt.",
            ),
            redis_client_rebuilds: counter(
                r,
                "switchboard_redis_client_rebuilds_total",
                "Times the Redis Cluster command connections were rebuilt because commands kept failing while the cluster answered.",
            ),
        }
    }
}

impl GatewayMetrics {
    /// Registers a gateway's metrics in `r`.
    pub fn register(r: &MetricsRegistry) -> Self {
        Self {
            connections: gauge_vec(
                r,
                "switchboard_connections",
                "Open WebSocket connections, by route (native, snapshot, relay, escai, council) and auth (token, anonymous, none).",
                &["route", "auth"],
            ),
            max_connections: gauge(
                r,
                "switchboard_max_connections",
                "WebSocket connections this replica accepts (--max-connections); more are refused with 503.",
            ),
            connections_opened: counter_vec(
                r,
                "switchboard_connections_opened_total",
                "WebSocket connections accepted, by route and auth.",
                &["route", "auth"],
            ),
            upgrades_rejected: counter_vec(
                r,
                "switchboard_upgrades_rejected_total",
                "WebSocket upgrades refused before the handshake, by reason.",
                &["reason"],
            ),
            disconnects: counter_vec(
                r,
                "switchboard_disconnects_total",
                "Closed WebSocket connections, by close code (none = connection lost without a close frame).",
                &["code"],
            ),
            subscriptions: gauge(
                r,
                "switchboard_subscriptions",
                "Client subscriptions on this replica.",
            ),
            channels: gauge(
                r,
                "switchboard_channels",
                "Channels with at least one local subscriber (each one engine subscription).",
            ),
            messages_in: counter(
                r,
                "switchboard_messages_received_total",
                "Messages received from the engine's live feed.",
            ),
            bytes_in: counter(
                r,
                "switchboard_bytes_received_total",
                "Bytes of message data (the JSON) received from the engine's live feed.",
            ),
            messages_out: counter(
                r,
                "switchboard_messages_delivered_total",
                "Messages handed to client sockets (one per message per client).",
            ),
            bytes_out: counter(
                r,
                "switchboard_bytes_sent_total",
                "Bytes handed to client sockets (written at once, or queued behind earlier bytes).",
            ),
            compressed_out: counter(
                r,
                "switchboard_messages_compressed_total",
                "Of the messages delivered live: those that went out compressed (permessage-deflate, one compression per message per replica).",
            ),
            deltas_out: counter(
                r,
                "switchboard_messages_delta_total",
                "Of the messages delivered live: those that went out as fossil deltas (subscriptions with \"delta\": \"fossil\").",
            ),
            client_messages: counter(
                r,
                "switchboard_client_messages_total",
                "Frames received from clients.",
            ),
            client_bytes: counter(
                r,
                "switchboard_client_bytes_received_total",
                "Bytes received from clients.",
            ),
            client_errors: counter_vec(
                r,
                "switchboard_client_errors_total",
                "Error frames sent to clients, by code.",
                &["code"],
            ),
            slow_consumer_closes: counter(
                r,
                "switchboard_slow_consumer_closes_total",
                "Clients closed because their outbound queue overflowed.",
            ),
            publishes: counter_vec(
                r,
                "switchboard_publishes_total",
                "Publishes through this process, by result (ok, stale, error).",
                &["result"],
            ),
            broadcast_duration: histogram(
                r,
                "switchboard_broadcast_duration_seconds",
                "Time a fan-out shard spends writing one batch to its subscribers.",
                LATENCY_BUCKETS.to_vec(),
            ),
            delivery_lag: histogram(
                r,
                "switchboard_delivery_lag_seconds",
                "From publish (engine clock) to the fan-out writing it to sockets.",
                LATENCY_BUCKETS.to_vec(),
            ),
            resumes: counter_vec(
                r,
                "switchboard_resumes_total",
                "Subscriptions with `since`, by result (recovered, not_recovered).",
                &["result"],
            ),
            gap_fills: counter_vec(
                r,
                "switchboard_gap_fills_total",
                "Live-feed gaps found by offset and filled from history, by result (filled, lost).",
                &["result"],
            ),
            resyncs: counter(
                r,
                "switchboard_resyncs_total",
                "Channels whose subscribers had to restart (history lost: epoch changed or gap older than history).",
            ),
        }
    }
}

impl GatewayMetrics {
    /// Open connections of a route, whatever their auth.
    pub fn route_connections(&self, route: &str) -> i64 {
        AUTH_LABELS
            .iter()
            .map(|a| self.connections.with_label_values(&[route, a]).get())
            .sum()
    }

    /// Connections of a route accepted since start, whatever their auth.
    pub fn route_connections_opened(&self, route: &str) -> u64 {
        AUTH_LABELS
            .iter()
            .map(|a| self.connections_opened.with_label_values(&[route, a]).get())
            .sum()
    }

    /// Open connections without a token, whatever their route.
    pub fn anonymous_connections(&self) -> i64 {
        ROUTES
            .iter()
            .map(|r| self.connections.with_label_values(&[r, "anonymous"]).get())
            .sum()
    }

    /// Creates and registers every metric. The names are static and distinct,
    /// so registration cannot fail.
    /// A gateway (or standalone) starts: its capacity, and every known label
    /// value of its labelled counters (and of the connections gauge) at 0.
    pub fn gateway_started(&self, max_connections: usize, labels: &GatewayLabels<'_>) {
        self.max_connections
            .set(i64::try_from(max_connections).unwrap_or(i64::MAX));
        for route in ROUTES {
            for auth in AUTH_LABELS {
                self.connections.with_label_values(&[route, auth]);
                self.connections_opened.with_label_values(&[route, auth]);
            }
        }
        for reason in UPGRADE_REJECTIONS {
            self.upgrades_rejected.with_label_values(&[reason]);
        }
        for code in labels.close_codes.iter().chain(&CLIENT_ENDINGS) {
            self.disconnects.with_label_values(&[code]);
        }
        for code in labels.client_errors {
            self.client_errors.with_label_values(&[code]);
        }
        for (counter, results) in [
            (&self.publishes, &PUBLISH_RESULTS[..]),
            (&self.resumes, &RESUME_RESULTS[..]),
            (&self.gap_fills, &GAP_FILL_RESULTS[..]),
        ] {
            for result in results {
                counter.with_label_values(&[result]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every known label value is exported at 0 from the start.
    #[test]
    fn a_started_gateway_exports_every_known_series_at_zero() {
        let registry = MetricsRegistry::new();
        let metrics = GatewayMetrics::register(&registry);
        let closes = crate::ws::close::CloseCode::ALL.map(|c| c.label());
        let errors = crate::protocol::ErrorCode::ALL.map(|c| c.as_str());
        metrics.gateway_started(
            250,
            &GatewayLabels {
                close_codes: &closes,
                client_errors: &errors,
            },
        );
        let text = registry.render();
        let has = |series: &str| {
            assert!(
                text.lines().any(|l| l == format!("{series} 0")),
                "missing {series} 0"
            )
        };
        assert!(text.contains("switchboard_max_connections 250"));
        for route in ROUTES {
            for auth in AUTH_LABELS {
                has(&format!(
                    "switchboard_connections{{auth=\"{auth}\",route=\"{route}\"}}"
                ));
                has(&format!(
                    "switchboard_connections_opened_total{{auth=\"{auth}\",route=\"{route}\"}}"
                ));
            }
        }
        for reason in UPGRADE_REJECTIONS {
            has(&format!(
                "switchboard_upgrades_rejected_total{{reason=\"{reason}\"}}"
            ));
        }
        for code in [
            "1000", "1001", "1002", "1008", "1009", "4000", "4004", "client", "lost",
        ] {
            has(&format!("switchboard_disconnects_total{{code=\"{code}\"}}"));
        }
        for code in ["invalid_json", "forbidden", "rate_limited", "internal"] {
            has(&format!(
                "switchboard_client_errors_total{{code=\"{code}\"}}"
            ));
        }
        for r in PUBLISH_RESULTS {
            has(&format!("switchboard_publishes_total{{result=\"{r}\"}}"));
        }
        for r in RESUME_RESULTS {
            has(&format!("switchboard_resumes_total{{result=\"{r}\"}}"));
        }
        for r in GAP_FILL_RESULTS {
            has(&format!("switchboard_gap_fills_total{{result=\"{r}\"}}"));
        }
    }

    /// Each process exports its components' series only: a collector (engine
    /// and collector metrics) none of a gateway's, a gateway none of a
    /// collector's; both have readiness and build information.
    #[test]
    fn a_process_exports_only_the_series_of_its_components() {
        let collector = MetricsRegistry::new();
        EngineMetrics::register(&collector);
        crate::collector::metrics::CollectorMetrics::register(&collector);
        let text = collector.render();
        assert!(!text.contains("switchboard_connections"), "{text}");
        assert!(!text.contains("switchboard_gap_fills_total"));
        assert!(text.contains("switchboard_redis_errors_total{op=\"lease\"} 0"));
        assert!(text.contains("switchboard_collector_leader"));
        let gateway = MetricsRegistry::new();
        EngineMetrics::register(&gateway);
        GatewayMetrics::register(&gateway);
        let text = gateway.render();
        assert!(!text.contains("switchboard_collector_"), "{text}");
        for both in [collector.render(), text] {
            assert!(both.contains("switchboard_ready") && both.contains("switchboard_build_info"));
        }
    }

    /// The runtime's live tasks are read at each render: they follow tasks
    /// that start and end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn alive_tasks_are_read_when_rendered() {
        let registry = MetricsRegistry::new();
        let tasks = |text: &str| -> i64 {
            text.lines()
                .find_map(|l| l.strip_prefix("switchboard_runtime_alive_tasks "))
                .and_then(|v| v.trim().parse().ok())
                .expect("the gauge is rendered")
        };
        let before = tasks(&registry.render());
        let stop = tokio_util::sync::CancellationToken::new();
        let held: Vec<_> = (0..25)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move { stop.cancelled().await })
            })
            .collect();
        assert!(tasks(&registry.render()) >= before + 25);
        stop.cancel();
        for h in held {
            h.await.expect("task ends");
        }
        assert!(tasks(&registry.render()) <= before);
    }

    /// The token refusals a handshake can get are all listed.
    #[test]
    fn upgrade_rejections_cover_the_token_refusals() {
        use crate::auth::AuthError;
        for e in [
            AuthError::Missing,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::WrongAudience,
            AuthError::WrongIssuer,
            AuthError::MissingClaim("sub".into()),
            AuthError::BadSignature,
            AuthError::Malformed,
            AuthError::TooLong(1),
        ] {
            assert!(UPGRADE_REJECTIONS.contains(&e.code()), "{}", e.code());
        }
    }
}
