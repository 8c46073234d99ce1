//! The two dashboard snapshots (seed 000's JSON shapes) and the provenance the
//! collector adds to them.
//!
//! Every field of seed 000 is kept with its name and type; the collector adds
//! `generated_at`, a `version` that only increases, and `sources`: for each
//! section, whether its numbers are `live`, `simulated` or `stale` (with the age
//! of the last good value and the error that made it stale).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One federation peer (seed 000 `peers[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    pub id: String,
    pub hostname: String,
    /// `core`, `trusted` or `verified`.
    pub trust_tier: String,
    /// `online`, `degraded` or `offline`.
    pub status: String,
    /// Milliseconds.
    pub latency: u64,
    /// Unix milliseconds.
    pub last_seen: u64,
}

/// One synchronization event (seed 000 `sync_traffic[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncEvent {
    /// Unix milliseconds.
    pub timestamp: u64,
    pub source: String,
    pub target: String,
    pub event_type: String,
    pub bytes: u64,
    pub success: bool,
}

/// One memory log event (seed 000 `logs[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEvent {
    /// RFC 3339, UTC.
    pub timestamp: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    /// `info`, `warning` or `error`.
    pub severity: String,
}

/// Where a section's numbers come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "source")]
pub enum Provenance {
    /// Read from the configured source in this cycle.
    Live {
        /// Columns (`table.column`) the source lacks that only feed log text:
        /// the log lines leave them out, the numbers are complete. Absent when
        /// none is missing.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        missing_columns: Vec<String>,
    },
    /// Invented: no source is configured for this section (or `--simulate
    /// always`), or — with `error` — its configured source failed and
    /// `--on-source-failure simulate` falls back to simulated values.
    Simulated {
        /// Why the configured source failed (absent when none is configured).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The configured source failed; these are its last good values.
    Stale {
        /// Seconds since the values were read (absent if there never were any).
        #[serde(skip_serializing_if = "Option::is_none")]
        age_seconds: Option<f64>,
        /// Why the source failed.
        error: String,
    },
}

impl Provenance {
    /// Live, nothing missing.
    pub fn live() -> Self {
        Self::Live {
            missing_columns: Vec::new(),
        }
    }

    /// Simulated because no source is configured (or `--simulate always`).
    pub fn simulated() -> Self {
        Self::Simulated { error: None }
    }
}

/// The federation dashboard (`/ws/federation`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Federation {
    pub peers: Vec<Peer>,
    /// The 10 newest, newest first (as `LRANGE sync_events 0 9` returns them).
    pub sync_traffic: Vec<SyncEvent>,
    /// Percent of peers online.
    pub network_health: f64,
    /// Percent, weighted by trust tier.
    pub data_integrity: f64,
    /// Milliseconds, mean over online peers.
    pub avg_latency: f64,
    pub generated_at: String,
    pub version: u64,
    pub sources: BTreeMap<String, Provenance>,
}

/// The memory dashboard (`/ws/memory`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Reasoning sessions per second over the last minute.
    pub ingestion_rate: f64,
    /// High-confidence stages per second over the last minute.
    pub consolidation_rate: f64,
    /// Percent of pattern uses that were reuses.
    pub dedup_rate: f64,
    pub quarantine_count: u64,
    pub trust_distribution: BTreeMap<String, u64>,
    /// Fifty most recent confidence changes, oldest first.
    pub confidence_deltas: Vec<f64>,
    pub logs: Vec<LogEvent>,
    pub generated_at: String,
    pub version: u64,
    pub sources: BTreeMap<String, Provenance>,
}

/// Rounds to `digits` decimals (dashboards show 94.0, 99.7, 45.2).
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}
