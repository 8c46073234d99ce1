//! Structured logging with `tracing`: human-readable text by default, one JSON
//! object per line with `--log-format json`. Text is coloured only on a
//! terminal: redirected to a file or a pipe (or with `NO_COLOR` set) it has no
//! ANSI escape codes.

use std::io::IsTerminal;

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
pub fn init(format: LogFormat, level: &str) -> Result<(), LoggingError> {
    let mut filter = EnvFilter::try_new(level).map_err(|e| LoggingError::Level {
        level: level.to_owned(),
        reason: e.to_string(),
    })?;
    if !names_redis(level) {
        let quiet =
            "redis=error"
                .parse()
                .map_err(
                    |e: tracing_subscriber::filter::ParseError| LoggingError::Level {
                        level: "redis=error".into(),
                        reason: e.to_string(),
                    },
                )?;
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    result.map_err(|e| LoggingError::Init(e.to_string()))
}

/// Why logging could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoggingError {
    #[error("bad --log-level {level:?}: {reason}")]
    Level { level: String, reason: String },
    #[error("could not install the logger: {0}")]
    Init(String),
}

/// Colours only on a terminal, and not when `NO_COLOR` is set to anything
/// non-empty (no-color.org).
fn colours(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
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

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(!colours(false, None));
        assert!(!colours(true, Some("1".into())));
        assert!(colours(true, Some("".into())));
    }
}
