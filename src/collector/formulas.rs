//! The dashboards' formulas (seed 001), as pure functions of what the sources
//! returned. `docs/SOURCES.md` states each one; the unit tests below check them
//! against numbers worked out by hand.
//!
//! Rounding, applied last: percentages and latencies to 1 decimal, rates to 2,
//! confidence deltas to 3.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::snapshot::{Peer, round};

/// Weights of trust tiers in data integrity.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustWeights {
    tiers: BTreeMap<String, f64>,
    other: f64,
}

/// The default weights: a core peer's copy counts fully, a trusted one 0.75,
/// a verified one 0.5, any other tier 0.25.
pub const DEFAULT_TRUST_WEIGHTS: &str = "core=1,trusted=0.75,verified=0.5,*=0.25";

impl TrustWeights {
    /// The weight of `tier` (case-insensitive).
    pub fn weight(&self, tier: &str) -> f64 {
        self.tiers
            .get(&tier.to_ascii_lowercase())
            .copied()
            .unwrap_or(self.other)
    }
}

impl Default for TrustWeights {
    fn default() -> Self {
        DEFAULT_TRUST_WEIGHTS
            .parse()
            .unwrap_or_else(|_| unreachable!("the default weights parse"))
    }
}

/// Why a `--trust-weights` value is not `TIER=WEIGHT,…`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustWeightsError {
    #[error("expected TIER=WEIGHT pairs such as {DEFAULT_TRUST_WEIGHTS}, got {0:?}")]
    Usage(String),
    #[error("trust weight of {0:?} must be 0 or more")]
    Negative(String),
}

impl FromStr for TrustWeights {
    type Err = TrustWeightsError;

    /// `TIER=WEIGHT,…` with `*=WEIGHT` for every other tier (0 if absent).
    fn from_str(s: &str) -> Result<Self, TrustWeightsError> {
        let mut tiers = BTreeMap::new();
        let mut other = 0.0;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let usage = || TrustWeightsError::Usage(part.to_owned());
            let (tier, weight) = part.split_once('=').ok_or_else(usage)?;
            let weight: f64 = weight.trim().parse().map_err(|_| usage())?;
            if !weight.is_finite() || weight < 0.0 {
                return Err(TrustWeightsError::Negative(tier.to_owned()));
            }
            match tier.trim() {
                "" => return Err(usage()),
                "*" => other = weight,
                t => {
                    tiers.insert(t.to_ascii_lowercase(), weight);
                }
            }
        }
        Ok(Self { tiers, other })
    }
}

impl fmt::Display for TrustWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (tier, w) in &self.tiers {
            write!(f, "{tier}={w},")?;
        }
        write!(f, "*={}", self.other)
    }
}

/// A peer as shown, with its latency as read (absent when unreadable).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerView {
    pub peer: Peer,
    pub latency: Option<f64>,
}

/// A peer's status as shown: its own status in lower case — unless a
/// `staleness` is given and its heartbeat (`last_seen`) is older than that, or
/// missing (0): then `offline`, whatever it says. Without a staleness the
/// hash's `status` is authoritative (seed 001 reads it as the federation
/// service wrote it).
pub fn effective_status(
    status: &str,
    last_seen_ms: u64,
    now_ms: u64,
    staleness: Option<Duration>,
) -> String {
    if let Some(staleness) = staleness {
        let age = now_ms.saturating_sub(last_seen_ms);
        if last_seen_ms == 0 || age > staleness.as_millis() as u64 {
            return "offline".to_string();
        }
    }
    status.trim().to_ascii_lowercase()
}

/// Network health, data integrity and average latency of a peer list.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NetworkMetrics {
    pub network_health: f64,
    pub data_integrity: f64,
    pub avg_latency: f64,
}

/// * network health = online peers / all peers × 100
/// * data integrity = Σ weight(tier) of online peers / Σ weight(tier) of all peers × 100
/// * average latency = mean latency of online peers whose latency is known
///
/// Each is 0 when its denominator is.
pub fn network_metrics(peers: &[PeerView], weights: &TrustWeights) -> NetworkMetrics {
    let online = |p: &&PeerView| p.peer.status == "online";
    let total = peers.len() as f64;
    let up = peers.iter().filter(online).count() as f64;
    let weight_all: f64 = peers
        .iter()
        .map(|p| weights.weight(&p.peer.trust_tier))
        .sum();
    let weight_up: f64 = peers
        .iter()
        .filter(online)
        .map(|p| weights.weight(&p.peer.trust_tier))
        .sum();
    let latencies: Vec<f64> = peers
        .iter()
        .filter(online)
        .filter_map(|p| p.latency)
        .collect();
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b * 100.0 } else { 0.0 };
    NetworkMetrics {
        network_health: round(ratio(up, total), 1),
        data_integrity: round(ratio(weight_up, weight_all), 1),
        avg_latency: if latencies.is_empty() {
            0.0
        } else {
            round(latencies.iter().sum::<f64>() / latencies.len() as f64, 1)
        },
    }
}

/// Events per second: `count` over `window`, 2 decimals.
pub fn per_second(count: u64, window: Duration) -> f64 {
    let secs = window.as_secs_f64();
    if secs > 0.0 {
        round(count as f64 / secs, 2)
    } else {
        0.0
    }
}

/// Deduplication efficiency: (total usage − unique patterns) / total usage × 100
/// (0 without usage; never negative), 1 decimal.
pub fn dedup_rate(unique: u64, total_usage: f64) -> f64 {
    if total_usage > 0.0 {
        round(
            ((total_usage - unique as f64) / total_usage * 100.0).max(0.0),
            1,
        )
    } else {
        0.0
    }
}

/// Most deltas shown (seed 000: a 50-point heatmap).
pub const CONFIDENCE_DELTAS: usize = 50;

/// Changes between consecutive confidences, oldest first, from confidences
/// given newest first (as `ORDER BY created_at DESC` returns them): for values
/// c₀ (oldest) … cₙ, the deltas are c₁ − c₀ … cₙ − cₙ₋₁, at most 50, 3 decimals.
pub fn confidence_deltas(newest_first: &[f64]) -> Vec<f64> {
    let chronological: Vec<f64> = newest_first
        .iter()
        .take(CONFIDENCE_DELTAS + 1)
        .rev()
        .copied()
        .collect();
    chronological
        .windows(2)
        .map(|w| round(w[1] - w[0], 3))
        .collect()
}

/// A timestamp as Unix milliseconds: a number of seconds (below 10¹¹) or
/// milliseconds, possibly fractional or quoted, or RFC 3339 text.
pub fn timestamp_ms(text: &str) -> Option<u64> {
    let t = text.trim();
    if let Ok(n) = t.parse::<f64>() {
        if !n.is_finite() || n < 0.0 {
            return None;
        }
        return Some(if n < 1e11 {
            (n * 1000.0) as u64
        } else {
            n as u64
        });
    }
    humantime::parse_rfc3339_weak(t)
        .ok()
        .and_then(|st| st.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(tier: &str, status: &str, latency: Option<f64>) -> PeerView {
        PeerView {
            peer: Peer {
                id: "p".into(),
                hostname: "p".into(),
                trust_tier: tier.into(),
                status: status.into(),
                latency: latency.map_or(0, |l| l.round() as u64),
                last_seen: 1,
            },
            latency,
        }
    }

    #[test]
    fn weights_parse_and_default() {
        let w = TrustWeights::default();
        assert_eq!(w.weight("core"), 1.0);
        assert_eq!(w.weight("Trusted"), 0.75);
        assert_eq!(w.weight("verified"), 0.5);
        assert_eq!(w.weight("whatever"), 0.25);
        let w: TrustWeights = "core=3, trusted=2".parse().unwrap();
        assert_eq!(w.weight("core"), 3.0);
        assert_eq!(w.weight("verified"), 0.0);
        assert!("core".parse::<TrustWeights>().is_err());
        assert!("core=-1".parse::<TrustWeights>().is_err());
        assert!("=1".parse::<TrustWeights>().is_err());
        assert_eq!(
            w.to_string().parse::<TrustWeights>().unwrap(),
            w,
            "display round-trips"
        );
    }

    #[test]
    fn without_staleness_the_status_is_kept() {
        let now = 1_700_000_100_000;
        assert_eq!(
            effective_status(" Online", now - 3_600_000, now, None),
            "online"
        );
        assert_eq!(effective_status("online", 0, now, None), "online");
        assert_eq!(effective_status("offline", now, now, None), "offline");
    }

    #[test]
    fn staleness_overrides_status() {
        let s = Some(Duration::from_secs(30));
        let now = 1_700_000_100_000;
        assert_eq!(effective_status("Online", now - 29_000, now, s), "online");
        assert_eq!(effective_status("online", now - 31_000, now, s), "offline");
        assert_eq!(effective_status("degraded", now, now, s), "degraded");
        assert_eq!(effective_status("online", 0, now, s), "offline");
        // A heartbeat from the future (clock skew) is fresh, not stale.
        assert_eq!(effective_status("online", now + 5_000, now, s), "online");
    }

    #[test]
    fn network_metrics_by_hand() {
        let peers = [
            view("core", "online", Some(10.0)),
            view("core", "online", Some(20.0)),
            view("trusted", "online", Some(33.0)),
            view("trusted", "offline", Some(500.0)),
            view("verified", "degraded", Some(80.0)),
        ];
        let m = network_metrics(&peers, &TrustWeights::default());
        // 3 of 5 online.
        assert_eq!(m.network_health, 60.0);
        // (1 + 1 + 0.75) / (1 + 1 + 0.75 + 0.75 + 0.5) = 2.75 / 4 = 68.75 % → 68.8
        assert_eq!(m.data_integrity, 68.8);
        // (10 + 20 + 33) / 3 = 21.0
        assert_eq!(m.avg_latency, 21.0);
        let none = network_metrics(&[], &TrustWeights::default());
        assert_eq!(
            (none.network_health, none.data_integrity, none.avg_latency),
            (0.0, 0.0, 0.0)
        );
        let unknown_latency =
            network_metrics(&[view("core", "online", None)], &TrustWeights::default());
        assert_eq!(unknown_latency.avg_latency, 0.0);
        assert_eq!(unknown_latency.network_health, 100.0);
    }

    #[test]
    fn rates_dedup_and_deltas_by_hand() {
        assert_eq!(per_second(7, Duration::from_secs(60)), 0.12);
        assert_eq!(per_second(480, Duration::from_secs(60)), 8.0);
        // 3 unique snippets used 12 times in all: 9 of 12 uses were reuses.
        assert_eq!(dedup_rate(3, 12.0), 75.0);
        assert_eq!(dedup_rate(5, 3.0), 0.0);
        assert_eq!(dedup_rate(0, 0.0), 0.0);
        // Newest first 0.9, 0.7, 0.8 → chronological 0.8, 0.7, 0.9.
        assert_eq!(confidence_deltas(&[0.9, 0.7, 0.8]), vec![-0.1, 0.2]);
        assert!(confidence_deltas(&[0.5]).is_empty());
        let many: Vec<f64> = (0..100).map(|i| i as f64 / 100.0).collect();
        assert_eq!(confidence_deltas(&many).len(), CONFIDENCE_DELTAS);
    }

    #[test]
    fn timestamps_in_seconds_milliseconds_or_rfc3339() {
        assert_eq!(timestamp_ms("1699800000"), Some(1_699_800_000_000));
        assert_eq!(timestamp_ms("1699800000.5"), Some(1_699_800_000_500));
        assert_eq!(timestamp_ms("1699800000000"), Some(1_699_800_000_000));
        assert_eq!(
            timestamp_ms("2023-11-12T14:40:00Z"),
            Some(1_699_800_000_000)
        );
        assert_eq!(timestamp_ms("yesterday"), None);
        assert_eq!(timestamp_ms("-1"), None);
    }
}
