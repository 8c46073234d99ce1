//! Turns one cycle's reads into the two dashboards. Each section is shown
//! live (read this cycle), stale (its configured source failed: last good
//! values, with their age and the error) or simulated, as the configuration's
//! plan says; a configured source is never replaced by invented numbers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::FEDERATION_CHANNEL;
use super::ark::ArkValues;
use super::config::{CollectorConfig, Plan};
use super::federation::PeerRecord;
use super::formulas::{NetworkMetrics, PeerView, effective_status, network_metrics};
use super::metrics::CollectorMetrics;
use super::reasoning::{self, LOG_EVENTS, ReasoningValues};
use super::section::{Section, SourceError, Tracked};
use super::simulate::{FederationValues, MemoryValues, Simulator};
use super::snapshot::{Federation, Memory, Peer, Provenance, SyncEvent};
use crate::channel::ChannelName;

/// The peers section's values.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PeersValue {
    pub peers: Vec<Peer>,
    pub metrics: NetworkMetrics,
}

/// What one cycle read: `None` where the plan is not to read.
#[derive(Default)]
pub struct Reads {
    pub peers: Option<Result<Vec<PeerRecord>, SourceError>>,
    pub sync: Option<Result<Vec<SyncEvent>, SourceError>>,
    pub discover: Option<Result<Vec<PeerRecord>, SourceError>>,
    pub reasoning: Option<Result<ReasoningValues, SourceError>>,
    pub ark: Option<Result<ArkValues, SourceError>>,
}

/// The sections' state across cycles.
pub struct Dashboards {
    config: CollectorConfig,
    metrics: Arc<CollectorMetrics>,
    simulator: Simulator,
    peers: Tracked<PeersValue>,
    sync: Tracked<Vec<SyncEvent>>,
    discover: Tracked<Vec<PeerRecord>>,
    reasoning: Tracked<ReasoningValues>,
    ark: Tracked<ArkValues>,
    /// Log-text columns found missing at the last live read, per section
    /// (logged when the set changes).
    reasoning_missing: Vec<String>,
    ark_missing: Vec<String>,
}

impl Dashboards {
    pub fn new(config: CollectorConfig, metrics: Arc<CollectorMetrics>) -> Self {
        let fallback = config.simulates_failures();
        Self {
            config,
            metrics,
            simulator: Simulator::new(StdRng::from_os_rng()),
            peers: Tracked::new(Section::Peers).simulating_failures(fallback),
            sync: Tracked::new(Section::SyncEvents).simulating_failures(fallback),
            // /discover only completes the peers: it has no simulated values.
            discover: Tracked::new(Section::Discover),
            reasoning: Tracked::new(Section::Reasoning).simulating_failures(fallback),
            ark: Tracked::new(Section::Ark).simulating_failures(fallback),
            reasoning_missing: Vec::new(),
            ark_missing: Vec::new(),
        }
    }

    /// Takes a stored snapshot's live (or stale, with an age) sections as last
    /// good values, unless this collector has read its own.
    pub fn seed(&mut self, channel: &ChannelName, value: serde_json::Value) {
        let good_at = |generated_at: &str, provenance: Option<&Provenance>| {
            let generated = humantime::parse_rfc3339_weak(generated_at).ok()?;
            match provenance? {
                Provenance::Live { .. } => Some(generated),
                Provenance::Stale {
                    age_seconds: Some(age),
                    ..
                } => generated.checked_sub(Duration::from_secs_f64(age.max(0.0))),
                _ => None,
            }
        };
        if channel.as_str() == FEDERATION_CHANNEL {
            let Ok(f) = serde_json::from_value::<Federation>(value) else {
                return;
            };
            if let Some(at) = good_at(&f.generated_at, f.sources.get("peers")) {
                self.peers.seed(
                    PeersValue {
                        peers: f.peers,
                        metrics: NetworkMetrics {
                            network_health: f.network_health,
                            data_integrity: f.data_integrity,
                            avg_latency: f.avg_latency,
                        },
                    },
                    at,
                );
            }
            if let Some(at) = good_at(&f.generated_at, f.sources.get("sync_events")) {
                self.sync.seed(f.sync_traffic, at);
            }
        } else {
            let Ok(m) = serde_json::from_value::<Memory>(value) else {
                return;
            };
            let (ark_logs, reasoning_logs): (Vec<_>, Vec<_>) =
                m.logs.into_iter().partition(|l| l.kind == "quarantine");
            if let Some(at) = good_at(&m.generated_at, m.sources.get("reasoning")) {
                self.reasoning.seed(
                    ReasoningValues {
                        ingestion_rate: m.ingestion_rate,
                        consolidation_rate: m.consolidation_rate,
                        confidence_deltas: m.confidence_deltas,
                        logs: reasoning_logs,
                        missing_columns: Vec::new(),
                    },
                    at,
                );
            }
            if let Some(at) = good_at(&m.generated_at, m.sources.get("ark")) {
                self.ark.seed(
                    ArkValues {
                        dedup_rate: m.dedup_rate,
                        quarantine_count: m.quarantine_count,
                        trust_distribution: m.trust_distribution,
                        logs: ark_logs,
                        missing_columns: Vec::new(),
                    },
                    at,
                );
            }
        }
    }

    /// The federation dashboard of this cycle.
    pub fn federation(
        &mut self,
        reads: &Reads,
        now: SystemTime,
        version: u64,
        generated_at: &str,
    ) -> Federation {
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let fallback = self.config.simulates_failures()
            && (matches!(reads.peers, Some(Err(_))) || matches!(reads.sync, Some(Err(_))));
        let simulated = ([Section::Peers, Section::SyncEvents]
            .iter()
            .any(|s| self.config.plan(*s) == Plan::Simulate)
            || fallback)
            .then(|| self.simulator.federation(now_ms));
        let fallback_values = simulated.as_ref().filter(|_| fallback);
        let mut sources = BTreeMap::new();

        let discovered: Vec<PeerRecord> = match &reads.discover {
            Some(result) => {
                let (records, provenance) =
                    self.discover.record(result.clone(), now, &self.metrics);
                sources.insert(Section::Discover.name().to_string(), provenance);
                records
            }
            None => Vec::new(),
        };

        let (peers, provenance) = match (self.config.plan(Section::Peers), &reads.peers) {
            (Plan::Read, Some(Ok(records))) => {
                let value = self.peer_values(records, &discovered, now_ms);
                self.peers.record(Ok(value), now, &self.metrics)
            }
            (Plan::Read, Some(Err(e))) => failed(
                &mut self.peers,
                e.clone(),
                now,
                &self.metrics,
                fallback_values.map(simulated_peers),
            ),
            (Plan::Simulate, _) => (
                simulated.as_ref().map(simulated_peers).unwrap_or_default(),
                Provenance::simulated(),
            ),
            (Plan::Missing(why), _) => self.peers.stale(why.to_string(), now),
            _ => self.peers.stale("not read".to_string(), now),
        };
        sources.insert(Section::Peers.name().to_string(), provenance);

        let (sync_traffic, provenance) = match (self.config.plan(Section::SyncEvents), &reads.sync)
        {
            (Plan::Read, Some(Ok(events))) => {
                self.sync.record(Ok(events.clone()), now, &self.metrics)
            }
            (Plan::Read, Some(Err(e))) => failed(
                &mut self.sync,
                e.clone(),
                now,
                &self.metrics,
                fallback_values.map(|f| f.sync_traffic.clone()),
            ),
            (Plan::Simulate, _) => (
                simulated
                    .as_ref()
                    .map(|f| f.sync_traffic.clone())
                    .unwrap_or_default(),
                Provenance::simulated(),
            ),
            (Plan::Missing(why), _) => self.sync.stale(why.to_string(), now),
            _ => self.sync.stale("not read".to_string(), now),
        };
        sources.insert(Section::SyncEvents.name().to_string(), provenance);

        Federation {
            peers: peers.peers,
            sync_traffic,
            network_health: peers.metrics.network_health,
            data_integrity: peers.metrics.data_integrity,
            avg_latency: peers.metrics.avg_latency,
            generated_at: generated_at.to_string(),
            version,
            sources,
        }
    }

    /// Redis peers, completed by discovered ones, as shown, with the metrics.
    fn peer_values(
        &self,
        redis: &[PeerRecord],
        discovered: &[PeerRecord],
        now_ms: u64,
    ) -> PeersValue {
        let f = &self.config.formulas;
        let views: Vec<PeerView> = merge_records(redis, discovered)
            .into_iter()
            .map(|r| {
                let last_seen = r.last_seen_ms.unwrap_or(0);
                let status = effective_status(
                    r.status.as_deref().unwrap_or("unknown"),
                    last_seen,
                    now_ms,
                    f.peer_staleness,
                );
                PeerView {
                    peer: Peer {
                        hostname: r.hostname.clone().unwrap_or_else(|| r.id.clone()),
                        trust_tier: r.trust_tier.clone().unwrap_or_else(|| "unknown".into()),
                        status,
                        latency: r.latency.map_or(0, |l| l.round() as u64),
                        last_seen,
                        id: r.id,
                    },
                    latency: r.latency,
                }
            })
            .collect();
        let metrics = network_metrics(&views, &f.trust_weights);
        PeersValue {
            peers: views.into_iter().map(|v| v.peer).collect(),
            metrics,
        }
    }

    /// The memory dashboard of this cycle.
    pub fn memory(
        &mut self,
        reads: Reads,
        now: SystemTime,
        version: u64,
        generated_at: &str,
    ) -> Memory {
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let fallback = self.config.simulates_failures()
            && (matches!(reads.reasoning, Some(Err(_))) || matches!(reads.ark, Some(Err(_))));
        let simulated = ([Section::Reasoning, Section::Ark]
            .iter()
            .any(|s| self.config.plan(*s) == Plan::Simulate)
            || fallback)
            .then(|| self.simulator.memory(now_ms));
        let mut sources = BTreeMap::new();

        let (reasoning, provenance) = match (self.config.plan(Section::Reasoning), reads.reasoning)
        {
            (Plan::Read, Some(Err(e))) => failed(
                &mut self.reasoning,
                e,
                now,
                &self.metrics,
                simulated
                    .as_ref()
                    .filter(|_| fallback)
                    .map(simulated_reasoning),
            ),
            (Plan::Read, Some(Ok(values))) => {
                let (values, provenance) = self.reasoning.record(Ok(values), now, &self.metrics);
                let provenance = with_missing_columns(
                    Section::Reasoning,
                    provenance,
                    &values.missing_columns,
                    &mut self.reasoning_missing,
                );
                (values, provenance)
            }
            (Plan::Simulate, _) => (
                simulated
                    .as_ref()
                    .map(simulated_reasoning)
                    .unwrap_or_default(),
                Provenance::simulated(),
            ),
            (Plan::Missing(why), _) => self.reasoning.stale(why.to_string(), now),
            _ => self.reasoning.stale("not read".to_string(), now),
        };
        sources.insert(Section::Reasoning.name().to_string(), provenance);

        let (ark, provenance) = match (self.config.plan(Section::Ark), reads.ark) {
            (Plan::Read, Some(Err(e))) => failed(
                &mut self.ark,
                e,
                now,
                &self.metrics,
                simulated.as_ref().filter(|_| fallback).map(simulated_ark),
            ),
            (Plan::Read, Some(Ok(values))) => {
                let (values, provenance) = self.ark.record(Ok(values), now, &self.metrics);
                let provenance = with_missing_columns(
                    Section::Ark,
                    provenance,
                    &values.missing_columns,
                    &mut self.ark_missing,
                );
                (values, provenance)
            }
            (Plan::Simulate, _) => (
                simulated.as_ref().map(simulated_ark).unwrap_or_default(),
                Provenance::simulated(),
            ),
            (Plan::Missing(why), _) => self.ark.stale(why.to_string(), now),
            _ => self.ark.stale("not read".to_string(), now),
        };
        sources.insert(Section::Ark.name().to_string(), provenance);

        let logs = reasoning::newest([reasoning.logs, ark.logs].concat(), LOG_EVENTS);
        Memory {
            ingestion_rate: reasoning.ingestion_rate,
            consolidation_rate: reasoning.consolidation_rate,
            dedup_rate: ark.dedup_rate,
            quarantine_count: ark.quarantine_count,
            trust_distribution: ark.trust_distribution,
            confidence_deltas: reasoning.confidence_deltas,
            logs,
            generated_at: generated_at.to_string(),
            version,
            sources,
        }
    }
}

/// A failed read: recorded (logged once, `source_up` 0), then shown as the
/// last good values, stale — or, with `fallback` (`--on-source-failure
/// simulate`), as these simulated values, marked simulated with the error.
fn failed<T: Clone + Default>(
    tracked: &mut Tracked<T>,
    error: SourceError,
    now: SystemTime,
    metrics: &CollectorMetrics,
    fallback: Option<T>,
) -> (T, Provenance) {
    let message = error.to_string();
    let stale = tracked.record(Err(error), now, metrics);
    match fallback {
        Some(values) => (
            values,
            Provenance::Simulated {
                error: Some(message),
            },
        ),
        None => stale,
    }
}

fn simulated_peers(f: &FederationValues) -> PeersValue {
    PeersValue {
        peers: f.peers.clone(),
        metrics: NetworkMetrics {
            network_health: f.network_health,
            data_integrity: f.data_integrity,
            avg_latency: f.avg_latency,
        },
    }
}

fn simulated_reasoning(m: &MemoryValues) -> ReasoningValues {
    ReasoningValues {
        ingestion_rate: m.ingestion_rate,
        consolidation_rate: m.consolidation_rate,
        confidence_deltas: m.confidence_deltas.clone(),
        logs: m.logs.clone(),
        missing_columns: Vec::new(),
    }
}

fn simulated_ark(m: &MemoryValues) -> ArkValues {
    ArkValues {
        dedup_rate: m.dedup_rate,
        quarantine_count: m.quarantine_count,
        trust_distribution: m.trust_distribution.clone(),
        // The simulator's log is shown with the reasoning section.
        logs: Vec::new(),
        missing_columns: Vec::new(),
    }
}

/// A live read's provenance names the log-text columns its source lacks
/// (`missing_columns`); a change of that set is logged once.
fn with_missing_columns(
    section: Section,
    provenance: Provenance,
    missing: &[String],
    previous: &mut Vec<String>,
) -> Provenance {
    let Provenance::Live { .. } = provenance else {
        return provenance;
    };
    if previous.as_slice() != missing {
        if missing.is_empty() {
            tracing::info!(%section, "collector source has every log column again");
        } else {
            tracing::warn!(
                %section,
                missing_columns = ?missing,
                "collector source lacks columns that only feed log text: the section stays live, its log lines leave them out"
            );
        }
        *previous = missing.to_vec();
    }
    Provenance::Live {
        missing_columns: missing.to_vec(),
    }
}

/// Redis peers first (their fields win), then discovered peers Redis does not
/// know; a field Redis lacks is taken from discovery. Sorted by id.
pub fn merge_records(redis: &[PeerRecord], discovered: &[PeerRecord]) -> Vec<PeerRecord> {
    let mut merged: BTreeMap<String, PeerRecord> = BTreeMap::new();
    for r in redis {
        merged.insert(r.id.clone(), r.clone());
    }
    for d in discovered {
        match merged.get_mut(&d.id) {
            Some(r) => {
                r.hostname = r.hostname.take().or_else(|| d.hostname.clone());
                r.trust_tier = r.trust_tier.take().or_else(|| d.trust_tier.clone());
                r.status = r.status.take().or_else(|| d.status.clone());
                r.latency = r.latency.or(d.latency);
                r.last_seen_ms = r.last_seen_ms.or(d.last_seen_ms);
            }
            None => {
                merged.insert(d.id.clone(), d.clone());
            }
        }
    }
    merged.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_fields_win_and_discovery_fills_gaps() {
        let redis = [PeerRecord {
            id: "a".into(),
            status: Some("online".into()),
            ..PeerRecord::default()
        }];
        let discovered = [
            PeerRecord {
                id: "a".into(),
                status: Some("offline".into()),
                hostname: Some("a.local".into()),
                ..PeerRecord::default()
            },
            PeerRecord {
                id: "b".into(),
                ..PeerRecord::default()
            },
        ];
        let merged = merge_records(&redis, &discovered);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].status.as_deref(), Some("online"));
        assert_eq!(merged[0].hostname.as_deref(), Some("a.local"));
        assert_eq!(merged[1].id, "b");
    }
}
