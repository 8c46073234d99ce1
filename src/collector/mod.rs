//! The collector: computes the federation and memory snapshots every 2–3 s and
//! publishes each as its channel's snapshot through the engine.
//!
//! Sections whose source is not configured are simulated ([`simulate`]) and say
//! so in `sources`. Snapshots carry a `version` that only increases; the engine
//! refuses a snapshot whose version is not newer than the stored one.

pub mod simulate;
pub mod snapshot;

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::channel::ChannelName;
use crate::engine::{Engine, EngineError, PublishOptions};
use crate::json::Json;
use crate::metrics::Metrics;
use simulate::Simulator;
use snapshot::{Federation, Memory, Provenance};

/// The federation dashboard's channel.
pub const FEDERATION_CHANNEL: &str = "federation";
/// The memory dashboard's channel.
pub const MEMORY_CHANNEL: &str = "memory";

/// Collector settings.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// Time between cycles, drawn uniformly from this range.
    pub interval: RangeInclusive<Duration>,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2)..=Duration::from_secs(3),
        }
    }
}

/// See the module documentation.
pub struct Collector {
    engine: Arc<dyn Engine>,
    config: CollectorConfig,
    metrics: Arc<Metrics>,
    simulator: Simulator,
    rng: StdRng,
    federation: ChannelName,
    memory: ChannelName,
    version: u64,
}

impl Collector {
    pub fn new(engine: Arc<dyn Engine>, config: CollectorConfig, metrics: Arc<Metrics>) -> Self {
        let channel = |name| {
            ChannelName::parse(name, crate::channel::DEFAULT_MAX_CHANNEL_LEN)
                .unwrap_or_else(|_| unreachable!("built-in channel names are valid"))
        };
        Self {
            engine,
            config,
            metrics,
            simulator: Simulator::new(StdRng::from_os_rng()),
            rng: StdRng::from_os_rng(),
            federation: channel(FEDERATION_CHANNEL),
            memory: channel(MEMORY_CHANNEL),
            version: 0,
        }
    }

    /// Runs cycles until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!("collector started (simulated sections: federation, memory)");
        loop {
            let started = std::time::Instant::now();
            self.cycle().await;
            self.metrics
                .collector_cycle
                .observe(started.elapsed().as_secs_f64());
            let (low, high) = (*self.config.interval.start(), *self.config.interval.end());
            let wait = if high > low {
                self.rng.random_range(low..=high)
            } else {
                low
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One cycle: compute both snapshots and publish them.
    pub async fn cycle(&mut self) {
        let now_ms = crate::time::unix_millis();
        self.version = self.next_version().await;
        let generated_at = crate::time::rfc3339_from_millis(now_ms);
        let simulated = |sections: &[&str]| -> BTreeMap<String, Provenance> {
            sections
                .iter()
                .map(|s| ((*s).to_string(), Provenance::Simulated))
                .collect()
        };

        let f = self.simulator.federation(now_ms);
        let federation = Federation {
            peers: f.peers,
            sync_traffic: f.sync_traffic,
            network_health: f.network_health,
            data_integrity: f.data_integrity,
            avg_latency: f.avg_latency,
            generated_at: generated_at.clone(),
            version: self.version,
            sources: simulated(&["peers", "sync_events"]),
        };
        let m = self.simulator.memory(now_ms);
        let memory = Memory {
            ingestion_rate: m.ingestion_rate,
            consolidation_rate: m.consolidation_rate,
            dedup_rate: m.dedup_rate,
            quarantine_count: m.quarantine_count,
            trust_distribution: m.trust_distribution,
            confidence_deltas: m.confidence_deltas,
            logs: m.logs,
            generated_at,
            version: self.version,
            sources: simulated(&["reasoning", "ark"]),
        };
        let federation_channel = self.federation.clone();
        let memory_channel = self.memory.clone();
        self.publish(&federation_channel, &federation).await;
        self.publish(&memory_channel, &memory).await;
    }

    /// Continues after the newest stored version (another collector's, or a
    /// previous run's), so versions only increase.
    async fn next_version(&self) -> u64 {
        let mut stored = 0;
        for channel in [&self.federation, &self.memory] {
            if let Ok(Some(s)) = self.engine.snapshot(channel).await {
                stored = stored.max(s.version.unwrap_or(0));
            }
        }
        self.version.max(stored) + 1
    }

    async fn publish<T: serde::Serialize>(&self, channel: &ChannelName, value: &T) {
        let data = match serde_json::to_value(value) {
            Ok(v) => Json::from_value(&v),
            Err(e) => {
                tracing::error!(%channel, error = %e, "could not encode a snapshot");
                return;
            }
        };
        let options = PublishOptions {
            snapshot: true,
            version: Some(self.version),
        };
        let result = match self.engine.publish(channel, &data, options).await {
            Ok(_) => {
                self.metrics
                    .collector_last_publish
                    .set(crate::time::unix_secs() as i64);
                "ok"
            }
            Err(EngineError::StaleVersion { current }) => {
                tracing::info!(%channel, current, mine = self.version, "a newer snapshot is stored; skipped");
                "stale"
            }
            Err(e) => {
                tracing::warn!(%channel, error = %e, "could not publish a snapshot");
                "error"
            }
        };
        self.metrics
            .collector_publishes
            .with_label_values(&[channel.as_str(), result])
            .inc();
    }
}
