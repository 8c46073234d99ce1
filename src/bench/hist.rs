//! Latency histograms: HDR histograms in microseconds, their summaries in
//! milliseconds, and a plain serialized form so that worker processes can send
//! theirs to the coordinator, which merges them without losing precision.

use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest value recorded: one hour in µs (larger values are clamped).
const MAX_US: u64 = 3_600_000_000;
/// Stripes of the shared histogram (client `k` records into stripe `k % STRIPES`).
const STRIPES: usize = 32;

fn new_hist() -> Histogram<u64> {
    // 3 significant digits over 1 µs ..= 1 h: constant, valid bounds.
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid")
}

/// A histogram as `(value µs, count)` pairs: what travels between processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistData(pub Vec<(u64, u64)>);

/// Percentiles of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// A histogram that many tasks record into with little contention.
pub struct Striped {
    stripes: Vec<Mutex<Histogram<u64>>>,
}

impl Default for Striped {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Mutex::new(new_hist())).collect(),
        }
    }
}

impl Striped {
    /// Records a batch of values (µs) into stripe `key % STRIPES`.
    pub fn record(&self, key: usize, values_us: &[u64]) {
        if values_us.is_empty() {
            return;
        }
        let mut h = self.stripes[key % STRIPES]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for &v in values_us {
            h.saturating_record(v.clamp(1, MAX_US));
        }
    }

    /// All stripes together.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_hist();
        for s in &self.stripes {
            let h = s.lock().unwrap_or_else(|e| e.into_inner());
            let _ = all.add(&*h);
        }
        all
    }
}

/// The serializable form of a histogram.
pub fn to_data(h: &Histogram<u64>) -> HistData {
    HistData(
        h.iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect(),
    )
}

/// Adds serialized values into a histogram.
pub fn add_data(h: &mut Histogram<u64>, data: &HistData) {
    for &(v, n) in &data.0 {
        let _ = h.record_n(v.clamp(1, MAX_US), n);
    }
}

/// Merges serialized histograms.
pub fn merge(parts: &[&HistData]) -> Histogram<u64> {
    let mut h = new_hist();
    for p in parts {
        add_data(&mut h, p);
    }
    h
}

/// Percentiles in milliseconds.
pub fn summary(h: &Histogram<u64>) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Summary {
        count: h.len(),
        mean: (h.mean() / 10.0).round() / 100.0,
        p50: ms(h.value_at_quantile(0.5)),
        p90: ms(h.value_at_quantile(0.9)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_records_merge_and_round_trip() {
        let s = Striped::default();
        s.record(0, &[1000; 90]);
        s.record(1, &[50_000; 10]);
        let h = s.merged();
        assert_eq!(h.len(), 100);
        let sum = summary(&h);
        assert!((sum.p50 - 1.0).abs() < 0.01);
        assert!((sum.p99 - 50.0).abs() < 0.1);
        let data = to_data(&h);
        let back = merge(&[&data, &data]);
        assert_eq!(back.len(), 200);
        assert_eq!(summary(&back).p99, sum.p99);
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(summary(&new_hist()), Summary::default());
    }
}
