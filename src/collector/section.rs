//! One section of a dashboard and its provenance: live when its source answered
//! this cycle, stale (last good values kept, with their age and the error) when
//! a configured source failed, simulated when no source is configured.
//!
//! A failing source is logged once when it goes down (and again only if the
//! error changes) and once when it comes back — never every cycle.

use std::fmt;
use std::time::{Duration, SystemTime};

use super::discover::DiscoverError;
use super::federation::FederationError;
use super::metrics::CollectorMetrics;
use super::snapshot::Provenance;
use super::sqlite::SqliteError;

/// Why a section's source could not be read this cycle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Federation(#[from] FederationError),
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    #[error(transparent)]
    Database(#[from] SqliteError),
}

/// The sections, each read from one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    /// Federation: Redis peer hashes → peers and the network metrics.
    Peers,
    /// Federation: the Redis sync events list → sync traffic.
    SyncEvents,
    /// Federation: the federation service's `/discover` → more peers.
    Discover,
    /// Memory: `reasoning_logs.db` → rates, confidence deltas, events.
    Reasoning,
    /// Memory: `ark.db` → dedup, quarantine, trust distribution, events.
    Ark,
}

impl Section {
    /// The name in `sources` and in the `source` metric label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Peers => "peers",
            Self::SyncEvents => "sync_events",
            Self::Discover => "discover",
            Self::Reasoning => "reasoning",
            Self::Ark => "ark",
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A section's last good values and current failure.
#[derive(Debug)]
pub struct Tracked<T> {
    section: Section,
    last_good: Option<(T, SystemTime)>,
    failing: Option<SourceError>,
    ever_read: bool,
    /// A failure is shown with simulated values (`--on-source-failure
    /// simulate`): only what the log says.
    simulates_failures: bool,
}

impl<T: Clone + Default> Tracked<T> {
    pub fn new(section: Section) -> Self {
        Self {
            section,
            last_good: None,
            failing: None,
            ever_read: false,
            simulates_failures: false,
        }
    }

    /// Says in the log that a failure is shown with simulated values.
    pub fn simulating_failures(mut self, yes: bool) -> Self {
        self.simulates_failures = yes;
        self
    }

    /// Records this cycle's read and returns the values to show with their provenance.
    pub fn record(
        &mut self,
        result: Result<T, SourceError>,
        now: SystemTime,
        metrics: &CollectorMetrics,
    ) -> (T, Provenance) {
        let section = self.section.name();
        match result {
            Ok(value) => {
                if let Some(error) = self.failing.take() {
                    tracing::info!(section, previous_error = %error, "collector source is back; section live again");
                } else if !self.ever_read {
                    tracing::info!(section, "collector source live");
                }
                self.ever_read = true;
                metrics.source_up.with_label_values(&[section]).set(1);
                metrics
                    .source_last_success
                    .with_label_values(&[section])
                    .set(
                        now.duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs()) as i64,
                    );
                self.last_good = Some((value.clone(), now));
                (value, Provenance::live())
            }
            Err(error) => {
                if self.failing.as_ref() != Some(&error) {
                    tracing::warn!(
                        section,
                        %error,
                        kept = if self.simulates_failures { "simulated values, marked simulated (--on-source-failure simulate)" } else if self.last_good.is_some() { "last good values, marked stale" } else { "no values yet, marked stale" },
                        "collector source unavailable"
                    );
                    self.failing = Some(error.clone());
                }
                metrics.source_up.with_label_values(&[section]).set(0);
                self.stale(error.to_string(), now)
            }
        }
    }

    /// The last good values as stale (none yet: defaults), without reading.
    pub fn stale(&self, error: String, now: SystemTime) -> (T, Provenance) {
        match &self.last_good {
            Some((value, at)) => (
                value.clone(),
                Provenance::Stale {
                    age_seconds: Some(age(now, *at)),
                    error,
                },
            ),
            None => (
                T::default(),
                Provenance::Stale {
                    age_seconds: None,
                    error,
                },
            ),
        }
    }

    /// Seeds the last good values (from a snapshot another collector stored),
    /// unless this collector has read its own.
    pub fn seed(&mut self, value: T, at: SystemTime) {
        if self.last_good.is_none() {
            self.last_good = Some((value, at));
        }
    }

    /// The last good values, if any.
    pub fn last_good(&self) -> Option<&T> {
        self.last_good.as_ref().map(|(v, _)| v)
    }
}

/// Seconds from `at` to `now` with one decimal (0 if `at` is in the future).
fn age(now: SystemTime, at: SystemTime) -> f64 {
    let d = now.duration_since(at).unwrap_or(Duration::ZERO);
    (d.as_secs_f64() * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_then_stale_with_age_then_live() {
        let metrics = CollectorMetrics::register(&crate::metrics::MetricsRegistry::new());
        let mut t: Tracked<u32> = Tracked::new(Section::Ark);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(t.record(Ok(7), t0, &metrics), (7, Provenance::live()));
        let locked = SourceError::Database(SqliteError::Locked("ark.db".into()));
        let (v, p) = t.record(Err(locked), t0 + Duration::from_millis(2_500), &metrics);
        assert_eq!(v, 7, "last good value kept");
        assert_eq!(
            p,
            Provenance::Stale {
                age_seconds: Some(2.5),
                error: "ark.db: database is locked by a writer (still busy after the busy timeout)"
                    .into()
            }
        );
        assert_eq!(metrics.source_up.with_label_values(&["ark"]).get(), 0);
        assert_eq!(
            t.record(Ok(9), t0 + Duration::from_secs(5), &metrics).1,
            Provenance::live()
        );
        assert_eq!(metrics.source_up.with_label_values(&["ark"]).get(), 1);
    }

    #[test]
    fn never_read_is_stale_without_age_and_default_values() {
        let metrics = CollectorMetrics::register(&crate::metrics::MetricsRegistry::new());
        let mut t: Tracked<Vec<u8>> = Tracked::new(Section::Peers);
        let gone = SourceError::Database(SqliteError::Missing("ark.db".into()));
        let (v, p) = t.record(Err(gone), SystemTime::now(), &metrics);
        assert!(v.is_empty());
        assert_eq!(
            p,
            Provenance::Stale {
                age_seconds: None,
                error: "ark.db: no such file".into()
            }
        );
        t.seed(vec![1], SystemTime::now());
        assert_eq!(t.last_good(), Some(&vec![1]));
        t.seed(vec![2], SystemTime::now());
        assert_eq!(t.last_good(), Some(&vec![1]), "seeding never overwrites");
    }
}
