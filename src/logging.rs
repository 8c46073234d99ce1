//! Structured logging with `tracing`: human-readable text by default, one JSON
//! object per line with `--log-format json`.

use tracing_subscriber::EnvFilter;

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `level` is an `EnvFilter` directive such as
/// `info` or `switchboard=debug,warn`. The Redis client library's own logs are
/// kept to errors unless a directive names `redis` (on a Redis Cluster it logs
/// every failed reconnect attempt during a failover; switchboard reports what
/// happened itself, once).
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let mut filter =
        EnvFilter::try_new(level).map_err(|e| format!("bad --log-level {level:?}: {e}"))?;
    if !names_redis(level) {
        let quiet = "redis=error"
            .parse()
            .map_err(|e| format!("log directive: {e}"))?;
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    result.map_err(|e| e.to_string())
}

/// Whether a filter has a directive for the `redis` crate's target.
fn names_redis(level: &str) -> bool {
    level.split(',').any(|d| d.trim().starts_with("redis"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redis_library_is_quiet_unless_named() {
        assert!(!names_redis("info"));
        assert!(!names_redis("switchboard::engine::redis=debug,warn"));
        assert!(names_redis("info,redis=warn"));
        assert!(names_redis(" redis::cluster_handling=debug"));
    }
}
