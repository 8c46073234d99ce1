//! One clock for the whole run: wall-clock microseconds (comparable with the
//! orchestrator's fault log and the gateways' logs), advanced by a monotonic
//! clock so that it never goes back.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

static BASE: OnceLock<(Instant, u64)> = OnceLock::new();

fn base() -> (Instant, u64) {
    *BASE.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        (Instant::now(), wall)
    })
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    let (at, wall) = base();
    wall + at.elapsed().as_micros() as u64
}

/// Seconds since the Unix epoch, as a float (for the JSON lines).
pub fn now_s() -> f64 {
    now_us() as f64 / 1e6
}
