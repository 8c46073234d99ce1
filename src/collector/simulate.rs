//! Simulated dashboard values with seed 000's shapes and ranges, for sections
//! whose source is not configured (and for demos). Each value drifts from the
//! previous one, so charts move like the real thing.
//!
//! Ranges (seed 000): 5 peers over the three trust tiers; network health around
//! 94 % (±2), data integrity 99.5–99.9 %, average latency 40–50 ms; sync events
//! of types memory_sync, config_update, heartbeat. Ingestion 7–9/s,
//! consolidation 6–8/s, dedup 91–94 %, quarantine 0–2, trust distribution core
//! 8–12, sandbox 2–5, external 0–2 (and trusted 3–6: seed 000's sample has no
//! trusted tier, but seed 001 counts it and the live section always carries
//! it), confidence deltas in ±0.05, a 10-event log.

use std::collections::{BTreeMap, VecDeque};

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

use super::snapshot::{LogEvent, Peer, SyncEvent, round};

const PEERS: [(&str, &str); 5] = [
    ("ark-core-1", "core"),
    ("ark-core-2", "core"),
    ("ark-trusted-1", "trusted"),
    ("ark-trusted-2", "trusted"),
    ("ark-verified-1", "verified"),
];
const EVENT_TYPES: [&str; 3] = ["memory_sync", "config_update", "heartbeat"];

/// Federation values of one cycle.
#[derive(Debug, Clone)]
pub struct FederationValues {
    pub peers: Vec<Peer>,
    pub sync_traffic: Vec<SyncEvent>,
    pub network_health: f64,
    pub data_integrity: f64,
    pub avg_latency: f64,
}

/// Memory values of one cycle.
#[derive(Debug, Clone)]
pub struct MemoryValues {
    pub ingestion_rate: f64,
    pub consolidation_rate: f64,
    pub dedup_rate: f64,
    pub quarantine_count: u64,
    pub trust_distribution: BTreeMap<String, u64>,
    pub confidence_deltas: Vec<f64>,
    pub logs: Vec<LogEvent>,
}

/// The simulator's evolving state.
pub struct Simulator {
    rng: StdRng,
    health: f64,
    integrity: f64,
    latency: f64,
    sync: VecDeque<SyncEvent>,
    ingestion: f64,
    consolidation: f64,
    dedup: f64,
    deltas: VecDeque<f64>,
    logs: VecDeque<LogEvent>,
    cluster: u64,
}

impl Simulator {
    pub fn new(rng: StdRng) -> Self {
        Self {
            rng,
            health: 94.0,
            integrity: 99.7,
            latency: 45.0,
            sync: VecDeque::new(),
            ingestion: 8.0,
            consolidation: 7.0,
            dedup: 92.5,
            deltas: VecDeque::new(),
            logs: VecDeque::new(),
            cluster: 40,
        }
    }

    fn drift(&mut self, value: f64, step: f64, low: f64, high: f64) -> f64 {
        (value + self.rng.random_range(-step..=step)).clamp(low, high)
    }

    /// The next federation values at `now_ms`.
    pub fn federation(&mut self, now_ms: u64) -> FederationValues {
        self.health = self.drift(self.health, 1.5, 92.0, 96.0);
        self.integrity = self.drift(self.integrity, 0.1, 99.5, 99.9);
        self.latency = self.drift(self.latency, 2.0, 40.0, 50.0);
        let peers: Vec<Peer> = PEERS
            .iter()
            .map(|(id, tier)| {
                let online = self.rng.random_bool(0.95);
                Peer {
                    id: (*id).to_string(),
                    hostname: format!("{id}.local"),
                    trust_tier: (*tier).to_string(),
                    status: if online { "online" } else { "degraded" }.to_string(),
                    latency: (self.latency + self.rng.random_range(-30.0..30.0)).clamp(5.0, 120.0)
                        as u64,
                    last_seen: now_ms - self.rng.random_range(0..2000),
                }
            })
            .collect();
        for _ in 0..self.rng.random_range(1..=3) {
            let ids: Vec<&str> = PEERS.iter().map(|(id, _)| *id).collect();
            let source = *ids.choose(&mut self.rng).unwrap_or(&"ark-core-1");
            let target = *ids
                .iter()
                .filter(|t| **t != source)
                .collect::<Vec<_>>()
                .choose(&mut self.rng)
                .copied()
                .unwrap_or(&"ark-core-2");
            let event = SyncEvent {
                timestamp: now_ms,
                source: source.to_string(),
                target: target.to_string(),
                event_type: EVENT_TYPES
                    .choose(&mut self.rng)
                    .unwrap_or(&"heartbeat")
                    .to_string(),
                bytes: self.rng.random_range(256..16_384),
                success: self.rng.random_bool(0.97),
            };
            // Newest first, as the live section shows them.
            self.sync.push_front(event);
        }
        self.sync.truncate(10);
        FederationValues {
            peers,
            sync_traffic: self.sync.iter().cloned().collect(),
            network_health: round(self.health, 1),
            data_integrity: round(self.integrity, 1),
            avg_latency: round(self.latency, 1),
        }
    }

    /// The next memory values at `now_ms`.
    pub fn memory(&mut self, now_ms: u64) -> MemoryValues {
        self.ingestion = self.drift(self.ingestion, 0.5, 7.0, 9.0);
        self.consolidation = self.drift(self.consolidation, 0.5, 6.0, 8.0);
        self.dedup = self.drift(self.dedup, 0.5, 91.0, 94.0);
        while self.deltas.len() < 50 {
            let d = self.rng.random_range(-0.05..=0.05);
            self.deltas.push_back(round(d, 3));
        }
        self.deltas.pop_front();
        let d = self.rng.random_range(-0.05..=0.05);
        self.deltas.push_back(round(d, 3));
        if self.rng.random_bool(0.6) {
            self.cluster += 1;
            let n = self.rng.random_range(2..8);
            let (kind, message, severity) = match self.rng.random_range(0..10) {
                0 => (
                    "quarantine",
                    "Quarantined 1 memory with a failed sandbox run".to_string(),
                    "warning",
                ),
                1 | 2 => (
                    "dedup",
                    format!("Deduplicated {n} memories against existing patterns"),
                    "info",
                ),
                _ => (
                    "consolidation",
                    format!("Consolidated {n} memories into cluster C-{}", self.cluster),
                    "info",
                ),
            };
            self.logs.push_back(LogEvent {
                timestamp: crate::time::rfc3339_from_millis(now_ms),
                kind: kind.to_string(),
                message,
                severity: severity.to_string(),
            });
            while self.logs.len() > 10 {
                self.logs.pop_front();
            }
        }
        let trust_distribution = BTreeMap::from([
            ("core".to_string(), self.rng.random_range(8..=12)),
            ("trusted".to_string(), self.rng.random_range(3..=6)),
            ("sandbox".to_string(), self.rng.random_range(2..=5)),
            ("external".to_string(), self.rng.random_range(0..=2)),
        ]);
        MemoryValues {
            ingestion_rate: round(self.ingestion, 1),
            consolidation_rate: round(self.consolidation, 1),
            dedup_rate: round(self.dedup, 1),
            quarantine_count: self.rng.random_range(0..=2),
            trust_distribution,
            confidence_deltas: self.deltas.iter().copied().collect(),
            logs: self.logs.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn values_stay_in_seed_ranges_over_many_cycles() {
        let mut sim = Simulator::new(StdRng::seed_from_u64(7));
        for i in 0..500 {
            let now = 1_700_000_000_000 + i * 2500;
            let f = sim.federation(now);
            assert_eq!(f.peers.len(), 5);
            assert!((92.0..=96.0).contains(&f.network_health));
            assert!((99.5..=99.9).contains(&f.data_integrity));
            assert!((40.0..=50.0).contains(&f.avg_latency));
            assert!(!f.sync_traffic.is_empty() && f.sync_traffic.len() <= 10);
            assert!(
                f.sync_traffic
                    .windows(2)
                    .all(|w| w[0].timestamp >= w[1].timestamp),
                "sync events newest first"
            );
            let m = sim.memory(now);
            assert!((7.0..=9.0).contains(&m.ingestion_rate));
            assert!((6.0..=8.0).contains(&m.consolidation_rate));
            assert!((91.0..=94.0).contains(&m.dedup_rate));
            assert!(m.quarantine_count <= 2);
            assert_eq!(m.confidence_deltas.len(), 50);
            assert!(m.confidence_deltas.iter().all(|d| d.abs() <= 0.05));
            assert!((8..=12).contains(&m.trust_distribution["core"]));
            for tier in crate::collector::ark::TRUST_TIERS {
                assert!(m.trust_distribution.contains_key(tier), "{tier}");
            }
            assert!(m.logs.len() <= 10);
        }
    }
}
