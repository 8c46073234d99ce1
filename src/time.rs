//! Clock helpers: Unix time in the units the protocol and Redis use, the
//! process's monotonic milliseconds, and spreading per-connection moments.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    since_epoch().as_secs()
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> u64 {
    since_epoch().as_millis() as u64
}

/// Microseconds since the Unix epoch.
pub fn unix_micros() -> u64 {
    since_epoch().as_micros() as u64
}

/// The current time as RFC 3339 with milliseconds, UTC (`2026-11-23T14:00:00.000Z`).
pub fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A Unix time in milliseconds as RFC 3339 with seconds, UTC.
pub fn rfc3339_from_millis(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A Unix time in microseconds as RFC 3339 with milliseconds, UTC.
pub fn rfc3339_from_micros(us: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_micros(us)).to_string()
}

/// Milliseconds on the process's monotonic clock. It starts a day in, so a
/// moment shortly before the process started is still a positive number (a
/// first ping clock set back from a connection's arrival) and 0 can mean
/// "never".
pub fn mono_millis() -> u64 {
    const START_AT: u64 = 24 * 3600 * 1000;
    static START: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    START.elapsed().as_millis() as u64 + START_AT
}

/// A well-mixed fraction in [0, 1) from a connection id: spreads moments that
/// would otherwise coincide for connections that arrived together (where in
/// the drain window each is closed, when each gets its first ping).
pub fn spread(id: u64) -> f64 {
    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn spread_covers_the_unit_interval_evenly() {
        let mut buckets = [0u32; 10];
        for id in 0..10_000u64 {
            let f = super::spread(id);
            assert!((0.0..1.0).contains(&f), "{f}");
            buckets[(f * 10.0) as usize] += 1;
        }
        // Consecutive ids (how connections are numbered) land evenly.
        assert!(
            buckets.iter().all(|&n| (900..=1100).contains(&n)),
            "{buckets:?}"
        );
    }
}
