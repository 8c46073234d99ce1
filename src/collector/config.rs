//! The collector's configuration: schedule, sources, simulation policy and
//! formula parameters (each flag and default is in docs/OPERATIONS.md, Configuration).

use std::ops::RangeInclusive;
use std::time::Duration;

use super::discover::DiscoverConfig;
use super::federation::FederationRedisConfig;
use super::formulas::TrustWeights;
use super::section::Section;
use super::sqlite::SqliteConfig;

/// When sections are simulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SimulateMode {
    /// Simulate exactly the sections whose source is not configured.
    #[default]
    Auto,
    /// Simulate every section, reading no source (demos).
    Always,
    /// Simulate nothing: a section without a source is shown empty, marked stale.
    Never,
}

/// What a section shows when its configured source fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnSourceFailure {
    /// Its last good values, marked stale with their age and the error; never
    /// invented numbers.
    #[default]
    Stale,
    /// Simulated values (seed 001's fallback), marked simulated with the error,
    /// for clients that never read `sources` and must not show frozen numbers.
    Simulate,
}

/// Parameters of the formulas.
#[derive(Debug, Clone)]
pub struct FormulaConfig {
    /// With a value, a peer whose `last_seen` is older (or missing) is offline,
    /// whatever its status says; without (the default), its status is kept.
    pub peer_staleness: Option<Duration>,
    /// Weights of trust tiers in data integrity.
    pub trust_weights: TrustWeights,
    /// Ingestion and consolidation rates count rows this recent.
    pub rate_window: Duration,
    /// Stages at or above this confidence count as consolidated.
    pub consolidation_threshold: f64,
    /// Failed sandbox executions this recent count as quarantined.
    pub quarantine_window: Duration,
}

impl Default for FormulaConfig {
    fn default() -> Self {
        Self {
            peer_staleness: None,
            trust_weights: TrustWeights::default(),
            rate_window: Duration::from_secs(60),
            consolidation_threshold: 0.7,
            quarantine_window: Duration::from_secs(24 * 3600),
        }
    }
}

/// Collector settings.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// Time between cycles, drawn uniformly from this range.
    pub interval: RangeInclusive<Duration>,
    pub simulate: SimulateMode,
    pub on_source_failure: OnSourceFailure,
    /// Peers and sync events in Redis.
    pub federation: Option<FederationRedisConfig>,
    /// The federation service's `/discover` (used with `federation`).
    pub discover: Option<DiscoverConfig>,
    /// `reasoning_logs.db`.
    pub reasoning_db: Option<SqliteConfig>,
    /// `ark.db`.
    pub ark_db: Option<SqliteConfig>,
    pub formulas: FormulaConfig,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2)..=Duration::from_secs(3),
            simulate: SimulateMode::Auto,
            on_source_failure: OnSourceFailure::Stale,
            federation: None,
            discover: None,
            reasoning_db: None,
            ark_db: None,
            formulas: FormulaConfig::default(),
        }
    }
}

/// What a cycle does for one section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Read the configured source.
    Read,
    /// Invent values.
    Simulate,
    /// No source and no simulation: empty, stale, saying which flag is missing.
    Missing(&'static str),
    /// The section does not exist in this configuration.
    Omit,
}

impl CollectorConfig {
    /// Whether a failed read of a configured source shows simulated values.
    pub fn simulates_failures(&self) -> bool {
        self.on_source_failure == OnSourceFailure::Simulate
    }

    /// The plan for `section` under this configuration.
    pub fn plan(&self, section: Section) -> Plan {
        let (configured, flag) = match section {
            Section::Peers | Section::SyncEvents => (
                self.federation.is_some(),
                "no source configured (--federation-redis-url)",
            ),
            Section::Discover => {
                return if self.discover.is_some()
                    && self.federation.is_some()
                    && self.simulate != SimulateMode::Always
                {
                    Plan::Read
                } else {
                    Plan::Omit
                };
            }
            Section::Reasoning => (
                self.reasoning_db.is_some(),
                "no source configured (--reasoning-db)",
            ),
            Section::Ark => (self.ark_db.is_some(), "no source configured (--ark-db)"),
        };
        match (self.simulate, configured) {
            (SimulateMode::Always, _) => Plan::Simulate,
            (_, true) => Plan::Read,
            (SimulateMode::Auto, false) => Plan::Simulate,
            (SimulateMode::Never, false) => Plan::Missing(flag),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn plans_follow_the_simulation_mode() {
        let mut c = CollectorConfig::default();
        assert_eq!(c.plan(Section::Reasoning), Plan::Simulate);
        assert_eq!(c.plan(Section::Discover), Plan::Omit);
        c.reasoning_db = Some(SqliteConfig {
            path: PathBuf::from("r.db"),
            busy_timeout: Duration::from_secs(1),
            query_timeout: Duration::from_secs(2),
        });
        assert_eq!(c.plan(Section::Reasoning), Plan::Read);
        assert_eq!(c.plan(Section::Ark), Plan::Simulate);
        c.simulate = SimulateMode::Never;
        assert!(matches!(c.plan(Section::Ark), Plan::Missing(f) if f.contains("--ark-db")));
        assert_eq!(c.plan(Section::Reasoning), Plan::Read);
        c.simulate = SimulateMode::Always;
        assert_eq!(c.plan(Section::Reasoning), Plan::Simulate);
    }
}
