//! The collector: computes the federation and memory dashboards every 2–3 s
//! from their sources (seed 001) and publishes each as its channel's snapshot.
//!
//! Each dashboard is made of sections, each from one source and each with its
//! own provenance in `sources` ([`section`]): `live`, `stale` (a configured
//! source failed: its last good values, with their age and the error) or
//! `simulated` (no source configured, [`simulate`]). A configured source that
//! fails is replaced by simulated numbers only with `--on-source-failure
//! simulate` (seed 001's fallback), and then says so: `simulated` with the error.
//!
//! | channel | section | source | fields |
//! |---|---|---|---|
//! | `federation` | `peers` | Redis `peer:*` hashes ([`federation`]) | `peers`, `network_health`, `data_integrity`, `avg_latency` |
//! | | `sync_events` | Redis `sync_events` list | `sync_traffic` |
//! | | `discover` | `GET /discover` ([`discover`]), optional | more `peers` |
//! | `memory` | `reasoning` | `reasoning_logs.db` ([`reasoning`]) | `ingestion_rate`, `consolidation_rate`, `confidence_deltas`, `logs` |
//! | | `ark` | `ark.db` ([`ark`]) | `dedup_rate`, `quarantine_count`, `trust_distribution`, `logs` |
//!
//! Only the leader publishes ([`lease`]); both snapshots of a cycle carry the
//! same `version`, one more than the last stored, and the engine refuses a
//! snapshot whose version is not newer than the stored one.

pub mod ark;
pub mod config;
pub mod dashboards;
pub mod demo;
pub mod discover;
pub mod federation;
pub mod formulas;
pub mod lease;
pub mod metrics;
pub mod reasoning;
pub mod schema;
pub mod section;
pub mod simulate;
pub mod snapshot;
pub mod sqlite;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::metrics::CollectorMetrics;
use crate::channel::ChannelName;
use crate::engine::{Engine, EngineError, PublishOptions};
use crate::json::Json;
pub use config::{CollectorConfig, FormulaConfig, OnSourceFailure, Plan, SimulateMode};
use dashboards::{Dashboards, Reads};
use discover::Discover;
use federation::{FederationError, FederationRedis};
use lease::{LeaderState, Lease};
use section::{Section, SourceError};
use sqlite::Database;

/// The federation dashboard's channel.
pub const FEDERATION_CHANNEL: &str = "federation";
/// The memory dashboard's channel.
pub const MEMORY_CHANNEL: &str = "memory";

/// Who may publish.
pub enum Leadership {
    /// This collector always publishes (the in-memory engine: one process).
    Always,
    /// This collector publishes while it holds the lease.
    Lease(Box<Lease>),
}

/// Why a collector could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error(transparent)]
    Federation(#[from] FederationError),
}

struct Sources {
    federation: Option<FederationRedis>,
    discover: Option<Discover>,
    reasoning: Option<Database>,
    ark: Option<Database>,
}

/// See the module documentation.
pub struct Collector {
    engine: Arc<dyn Engine>,
    config: CollectorConfig,
    metrics: Arc<CollectorMetrics>,
    leadership: Option<Leadership>,
    sources: Sources,
    dashboards: Dashboards,
    rng: StdRng,
    federation_channel: ChannelName,
    memory_channel: ChannelName,
    /// The newest version published or seen stored.
    version: u64,
    publish_failing: bool,
}

impl Collector {
    pub fn new(
        engine: Arc<dyn Engine>,
        config: CollectorConfig,
        metrics: Arc<CollectorMetrics>,
        leadership: Leadership,
    ) -> Result<Self, CollectorError> {
        let channel = |name| {
            ChannelName::parse(name, crate::channel::DEFAULT_MAX_CHANNEL_LEN)
                .unwrap_or_else(|_| unreachable!("built-in channel names are valid"))
        };
        let sources = Sources {
            federation: config
                .federation
                .clone()
                .map(FederationRedis::new)
                .transpose()?,
            discover: config.discover.clone().map(Discover::new),
            reasoning: config
                .reasoning_db
                .clone()
                .map(|c| Database::new(c, schema::REASONING_REQUIRED)),
            ark: config
                .ark_db
                .clone()
                .map(|c| Database::new(c, schema::ARK_REQUIRED)),
        };
        Ok(Self {
            engine,
            dashboards: Dashboards::new(config.clone(), metrics.clone()),
            config,
            metrics,
            leadership: Some(leadership),
            sources,
            rng: StdRng::from_os_rng(),
            federation_channel: channel(FEDERATION_CHANNEL),
            memory_channel: channel(MEMORY_CHANNEL),
            version: 0,
            publish_failing: false,
        })
    }

    /// Runs until `shutdown`: cycles while leading, follows otherwise, and
    /// releases the lease on the way out.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.announce();
        let lease_stop = CancellationToken::new();
        let (_always, mut leader, lease_task) = match self.leadership.take() {
            Some(Leadership::Lease(lease)) => {
                let (rx, task) = lease.spawn(self.metrics.clone(), lease_stop.clone());
                (None, rx, Some(task))
            }
            Some(Leadership::Always) | None => {
                self.metrics.leader.set(1);
                let (tx, rx) = watch::channel(LeaderState::always());
                (Some(tx), rx, None)
            }
        };
        let mut leading = false;
        loop {
            let state = *leader.borrow_and_update();
            let now_leading = state.may_publish(Instant::now());
            if now_leading && !leading {
                self.take_over().await;
            }
            leading = now_leading;
            if leading {
                let started = std::time::Instant::now();
                self.cycle(&leader).await;
                self.metrics.cycle.observe(started.elapsed().as_secs_f64());
            }
            let wait = self.next_wait();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                _ = role_change(&mut leader) => {}
            }
        }
        lease_stop.cancel();
        if let Some(task) = lease_task {
            let _ = task.await;
        }
    }

    fn announce(&self) {
        let describe = |s: Section| match self.config.plan(s) {
            Plan::Read => "live source",
            Plan::Simulate => "simulated",
            Plan::Missing(_) => "no source (stale, empty)",
            Plan::Omit => "off",
        };
        tracing::info!(
            simulate = ?self.config.simulate,
            on_source_failure = ?self.config.on_source_failure,
            peers = describe(Section::Peers),
            sync_events = describe(Section::SyncEvents),
            discover = describe(Section::Discover),
            reasoning = describe(Section::Reasoning),
            ark = describe(Section::Ark),
            "collector started"
        );
    }

    fn next_wait(&mut self) -> Duration {
        let (low, high) = (*self.config.interval.start(), *self.config.interval.end());
        if high > low {
            self.rng.random_range(low..=high)
        } else {
            low
        }
    }

    /// On becoming leader: continue after the stored version, and take the
    /// stored sections as last good values (so a source that is down right
    /// after a takeover still shows the previous leader's numbers, as stale).
    async fn take_over(&mut self) {
        let mut stored = 0;
        for channel in [self.federation_channel.clone(), self.memory_channel.clone()] {
            match self.engine.snapshot(&channel).await {
                Ok(Some(s)) => {
                    stored = stored.max(s.version.unwrap_or(0));
                    if let Some(value) = s.data.to_value() {
                        self.dashboards.seed(&channel, value);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%channel, error = %e, "could not read the stored snapshot; a refused publish will tell the version")
                }
            }
        }
        if stored > self.version {
            tracing::info!(
                stored,
                "collector leading: continuing after the stored snapshot version"
            );
            self.version = stored;
        }
    }
    async fn cycle(&mut self, leader: &watch::Receiver<LeaderState>) {
        let reads = self.read().await;
        let now = SystemTime::now();
        let version = self.version + 1;
        let generated_at = humantime::format_rfc3339_millis(now).to_string();
        let federation = self
            .dashboards
            .federation(&reads, now, version, &generated_at);
        let memory = self.dashboards.memory(reads, now, version, &generated_at);
        let federation_channel = self.federation_channel.clone();
        let memory_channel = self.memory_channel.clone();
        for (channel, value) in [
            (&federation_channel, serde_json::to_value(&federation)),
            (&memory_channel, serde_json::to_value(&memory)),
        ] {
            let data = match value {
                Ok(v) => Json::from_value(&v),
                Err(e) => {
                    tracing::error!(%channel, error = %e, "could not encode a snapshot");
                    continue;
                }
            };
            if !leader.borrow().may_publish(Instant::now()) {
                tracing::info!("collector lease ended during the cycle; not publishing");
                self.count(channel, "not_leader");
                return;
            }
            if !self.publish(channel, &data, version).await {
                return;
            }
        }
    }

    /// Publishes one snapshot; `false` when the cycle should stop (a newer
    /// snapshot is stored: another collector is, or was, leading).
    async fn publish(&mut self, channel: &ChannelName, data: &Json, version: u64) -> bool {
        let options = PublishOptions {
            snapshot: true,
            version: Some(version),
            idempotency: None,
        };
        match self.engine.publish(channel, data, options).await {
            Ok(_) => {
                if self.publish_failing {
                    tracing::info!("collector publishing again");
                    self.publish_failing = false;
                }
                self.version = self.version.max(version);
                self.metrics.version.set(self.version as i64);
                self.metrics
                    .last_publish
                    .set(crate::time::unix_secs() as i64);
                self.count(channel, "ok");
                true
            }
            Err(EngineError::StaleVersion { current }) => {
                tracing::info!(%channel, current, mine = version, "a newer snapshot is stored (another collector published); continuing after it");
                self.version = self.version.max(current);
                self.count(channel, "stale");
                false
            }
            Err(e) => {
                if !self.publish_failing {
                    tracing::warn!(%channel, error = %e, "could not publish a snapshot; retrying every cycle");
                    self.publish_failing = true;
                }
                self.count(channel, "error");
                true
            }
        }
    }

    fn count(&self, channel: &ChannelName, result: &str) {
        self.metrics
            .publishes
            .with_label_values(&[channel.as_str(), result])
            .inc();
    }

    /// Reads every source whose plan is to read, concurrently.
    async fn read(&self) -> Reads {
        let reads_section = |s| self.config.plan(s) == Plan::Read;
        let metrics = &self.metrics;
        let invalid = |source: &str, n: usize| {
            if n > 0 {
                tracing::debug!(source, skipped = n, "skipped malformed records");
                metrics
                    .invalid_records
                    .with_label_values(&[source])
                    .inc_by(n as u64);
            }
        };
        let federation = async {
            match &self.sources.federation {
                Some(f) if reads_section(Section::Peers) => {
                    let (peers, sync) = tokio::join!(f.peers(), f.sync_events());
                    (
                        Some(peers.map_err(SourceError::from)),
                        Some(
                            sync.map(|(events, bad)| {
                                invalid(Section::SyncEvents.name(), bad);
                                events
                            })
                            .map_err(SourceError::from),
                        ),
                    )
                }
                _ => (None, None),
            }
        };
        let discover = async {
            match &self.sources.discover {
                Some(d) if reads_section(Section::Discover) => Some(
                    d.peers()
                        .await
                        .map(|(peers, bad)| {
                            invalid(Section::Discover.name(), bad);
                            peers
                        })
                        .map_err(SourceError::from),
                ),
                _ => None,
            }
        };
        let params = reasoning::ReasoningParams {
            window: self.config.formulas.rate_window,
            threshold: self.config.formulas.consolidation_threshold,
        };
        let reasoning = async {
            match &self.sources.reasoning {
                Some(db) if reads_section(Section::Reasoning) => Some(
                    db.read(move |c| reasoning::query(c, &params))
                        .await
                        .map_err(SourceError::from),
                ),
                _ => None,
            }
        };
        let ark_params = ark::ArkParams {
            quarantine_window: self.config.formulas.quarantine_window,
        };
        let ark = async {
            match &self.sources.ark {
                Some(db) if reads_section(Section::Ark) => Some(
                    db.read(move |c| ark::query(c, &ark_params))
                        .await
                        .map_err(SourceError::from),
                ),
                _ => None,
            }
        };
        let ((peers, sync), discover, reasoning, ark) =
            tokio::join!(federation, discover, reasoning, ark);
        Reads {
            peers,
            sync,
            discover,
            reasoning,
            ark,
        }
    }
}

/// Waits for a leadership change (forever, if leadership cannot change).
async fn role_change(rx: &mut watch::Receiver<LeaderState>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::HistoryConfig;
    use crate::engine::memory::MemoryEngine;

    fn collector(config: CollectorConfig) -> (Collector, Arc<dyn Engine>) {
        let (tx, _rx) = tokio::sync::mpsc::channel(16);
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new(HistoryConfig::default(), tx));
        let c = Collector::new(
            engine.clone(),
            config,
            Arc::new(CollectorMetrics::register(
                &crate::metrics::MetricsRegistry::new(),
            )),
            Leadership::Always,
        )
        .unwrap();
        (c, engine)
    }

    async fn stored(engine: &Arc<dyn Engine>, channel: &str) -> serde_json::Value {
        let c = ChannelName::parse(channel, 128).unwrap();
        engine
            .snapshot(&c)
            .await
            .unwrap()
            .unwrap()
            .data
            .to_value()
            .unwrap()
    }

    #[tokio::test]
    async fn without_sources_everything_is_simulated_and_versions_increase() {
        let (mut c, engine) = collector(CollectorConfig::default());
        let (_tx, leader) = watch::channel(LeaderState::always());
        c.cycle(&leader).await;
        c.cycle(&leader).await;
        let f = stored(&engine, FEDERATION_CHANNEL).await;
        assert_eq!(f["version"], 2);
        assert_eq!(f["sources"]["peers"]["source"], "simulated");
        assert_eq!(f["sources"]["sync_events"]["source"], "simulated");
        assert!(f["sources"].get("discover").is_none());
        let m = stored(&engine, MEMORY_CHANNEL).await;
        assert_eq!(m["version"], 2);
        assert_eq!(m["sources"]["reasoning"]["source"], "simulated");
        assert_eq!(m["sources"]["ark"]["source"], "simulated");
    }

    #[tokio::test]
    async fn never_simulates_nothing_and_says_which_flag_is_missing() {
        let (mut c, engine) = collector(CollectorConfig {
            simulate: SimulateMode::Never,
            ..CollectorConfig::default()
        });
        let (_tx, leader) = watch::channel(LeaderState::always());
        c.cycle(&leader).await;
        let m = stored(&engine, MEMORY_CHANNEL).await;
        assert_eq!(m["sources"]["reasoning"]["source"], "stale");
        assert!(m["sources"]["reasoning"].get("age_seconds").is_none());
        assert!(
            m["sources"]["reasoning"]["error"]
                .as_str()
                .unwrap()
                .contains("--reasoning-db")
        );
        assert_eq!(m["ingestion_rate"], 0.0);
        assert_eq!(m["logs"], serde_json::json!([]));
        let f = stored(&engine, FEDERATION_CHANNEL).await;
        assert_eq!(f["peers"], serde_json::json!([]));
        assert_eq!(f["sources"]["peers"]["source"], "stale");
    }

    #[tokio::test]
    async fn a_failed_source_is_stale_or_with_simulate_simulated_with_the_error() {
        let missing = std::env::temp_dir().join(format!("sb-none-{}.db", rand::random::<u32>()));
        let ark_db = Some(sqlite::SqliteConfig {
            path: missing,
            busy_timeout: Duration::from_millis(100),
            query_timeout: Duration::from_secs(5),
        });
        for (policy, source) in [
            (OnSourceFailure::Stale, "stale"),
            (OnSourceFailure::Simulate, "simulated"),
        ] {
            let (mut c, engine) = collector(CollectorConfig {
                ark_db: ark_db.clone(),
                on_source_failure: policy,
                ..CollectorConfig::default()
            });
            let (_tx, leader) = watch::channel(LeaderState::always());
            c.cycle(&leader).await;
            let m = stored(&engine, MEMORY_CHANNEL).await;
            assert_eq!(m["sources"]["ark"]["source"], source, "{policy:?}");
            assert!(
                m["sources"]["ark"]["error"]
                    .as_str()
                    .unwrap()
                    .contains("no such file")
            );
            // Not configured: simulated without an error either way.
            assert_eq!(
                m["sources"]["reasoning"],
                serde_json::json!({"source": "simulated"})
            );
            let core = m["trust_distribution"]["core"].as_u64().unwrap();
            match policy {
                OnSourceFailure::Stale => assert_eq!(core, 0),
                OnSourceFailure::Simulate => assert!((8..=12).contains(&core)),
            }
        }
    }

    #[tokio::test]
    async fn a_follower_does_not_publish_and_a_refused_version_is_adopted() {
        let (mut c, engine) = collector(CollectorConfig::default());
        let (_tx, follower) = watch::channel(LeaderState::follower());
        c.cycle(&follower).await;
        let ch = ChannelName::parse(FEDERATION_CHANNEL, 128).unwrap();
        assert!(engine.snapshot(&ch).await.unwrap().is_none());

        // Another collector stored version 41.
        let data = Json::from_value(&serde_json::json!({"version": 41}));
        engine
            .publish(
                &ch,
                &data,
                PublishOptions {
                    snapshot: true,
                    version: Some(41),
                    idempotency: None,
                },
            )
            .await
            .unwrap();
        let (_tx, leader) = watch::channel(LeaderState::always());
        c.cycle(&leader).await; // refused: 1 ≤ 41; adopts 41
        c.cycle(&leader).await;
        assert_eq!(stored(&engine, FEDERATION_CHANNEL).await["version"], 42);
    }

    #[tokio::test]
    async fn a_new_leader_continues_after_the_stored_version_and_keeps_stale_values() {
        let dir = std::env::temp_dir().join(format!("sb-takeover-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ark.db");
        let w = rusqlite::Connection::open(&path).unwrap();
        w.execute_batch(schema::ARK_DDL).unwrap();
        w.execute(
            "INSERT INTO code_index (file_path, trust_tier) VALUES ('f', 'core')",
            [],
        )
        .unwrap();
        let config = CollectorConfig {
            ark_db: Some(sqlite::SqliteConfig {
                path: path.clone(),
                busy_timeout: Duration::from_millis(100),
                query_timeout: Duration::from_secs(5),
            }),
            ..CollectorConfig::default()
        };
        let (mut first, engine) = collector(config.clone());
        let (_tx, leader) = watch::channel(LeaderState::always());
        first.cycle(&leader).await;
        first.cycle(&leader).await;
        assert_eq!(
            stored(&engine, MEMORY_CHANNEL).await["sources"]["ark"]["source"],
            "live"
        );

        // The source goes away; a second collector on the same engine takes over.
        std::fs::remove_file(&path).unwrap();
        let mut second = Collector::new(
            engine.clone(),
            config,
            Arc::new(CollectorMetrics::register(
                &crate::metrics::MetricsRegistry::new(),
            )),
            Leadership::Always,
        )
        .unwrap();
        second.take_over().await;
        second.cycle(&leader).await;
        let m = stored(&engine, MEMORY_CHANNEL).await;
        assert_eq!(m["version"], 3);
        assert_eq!(m["sources"]["ark"]["source"], "stale");
        assert!(m["sources"]["ark"]["age_seconds"].as_f64().is_some());
        assert_eq!(
            m["trust_distribution"],
            serde_json::json!({"core": 1, "trusted": 0, "sandbox": 0, "external": 0})
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
