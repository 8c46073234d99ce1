//! The collector's metrics (`switchboard_collector_*`), registered into the
//! registry its process renders: a collector exports these and the engine's,
//! never a gateway's.

use prometheus::{Histogram, IntCounterVec, IntGauge, IntGaugeVec};

use crate::metrics::{LATENCY_BUCKETS, MetricsRegistry, counter_vec, gauge, gauge_vec, histogram};

/// See the module documentation.
pub struct CollectorMetrics {
    pub cycle: Histogram,
    pub source_up: IntGaugeVec,
    pub leader: IntGauge,
    pub last_publish: IntGauge,
    pub publishes: IntCounterVec,
    pub source_last_success: IntGaugeVec,
    pub invalid_records: IntCounterVec,
    pub version: IntGauge,
    pub lease_changes: IntCounterVec,
}

impl CollectorMetrics {
    /// Registers the collector's metrics in `r`.
    pub fn register(r: &MetricsRegistry) -> Self {
        Self {
            cycle: histogram(
                r,
                "switchboard_collector_cycle_seconds",
                "Duration of one collector cycle (read sources, compute, publish).",
                LATENCY_BUCKETS.to_vec(),
            ),
            source_up: gauge_vec(
                r,
                "switchboard_collector_source_up",
                "1 when a collector source answered in its last cycle, by source.",
                &["source"],
            ),
            leader: gauge(
                r,
                "switchboard_collector_leader",
                "1 while this collector holds the lease and publishes.",
            ),
            last_publish: gauge(
                r,
                "switchboard_collector_last_publish_timestamp_seconds",
                "Unix time of the collector's last successful publish.",
            ),
            publishes: counter_vec(
                r,
                "switchboard_collector_publishes_total",
                "Snapshots published by the collector, by channel (federation, memory) and result.",
                &["channel", "result"],
            ),
            source_last_success: gauge_vec(
                r,
                "switchboard_collector_source_last_success_timestamp_seconds",
                "Unix time a collector source last answered, by source (alert on its age).",
                &["source"],
            ),
            invalid_records: counter_vec(
                r,
                "switchboard_collector_invalid_records_total",
                "Source records skipped because they were malformed, by source (sync_events, discover).",
                &["source"],
            ),
            version: gauge(
                r,
                "switchboard_collector_snapshot_version",
                "Version of the last snapshot this collector published.",
            ),
            lease_changes: counter_vec(
                r,
                "switchboard_collector_lease_changes_total",
                "Leadership changes of this collector, by event (acquired, lost, released).",
                &["event"],
            ),
        }
    }
}
