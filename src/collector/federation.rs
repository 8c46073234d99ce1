//! The federation source in Redis (seed 001): peer hashes found by `SCAN`
//! (never `KEYS`) and the `sync_events` list.
//!
//! Peers are hashes whose key matches a pattern (default `peer:*`); a peer's id
//! is its `id` field, else the key without the pattern's literal prefix. Fields
//! read: `hostname`, `trust_tier`, `status`, `latency` (ms), `last_seen` (Unix
//! seconds or milliseconds, or RFC 3339). Sync events are JSON objects in a list
//! that producers `LPUSH`, newest first, and are shown in that order (as
//! `LRANGE sync_events 0 9` returns them). A pattern that matches no hash, or a
//! list key that does not exist, is an unavailable source, not an empty one.

use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

use super::formulas::timestamp_ms;
use super::snapshot::SyncEvent;
use crate::engine::tls::{self, RedisTls};

/// Where the federation data lives in Redis.
#[derive(Debug, Clone)]
pub struct FederationRedisConfig {
    pub url: String,
    /// `SCAN MATCH` pattern of peer hashes.
    pub peer_pattern: String,
    /// The list of sync events.
    pub sync_key: String,
    /// More peer keys than this is an error (raise the limit) rather than a
    /// silently truncated mesh.
    pub max_peers: usize,
    /// Limit on connecting and on each command.
    pub timeout: Duration,
    /// For a `rediss://` URL.
    pub tls: Option<RedisTls>,
}

/// Sync events shown (seed 001: the last 10).
pub const SYNC_EVENTS: usize = 10;

/// Keys asked of each `SCAN` step.
const SCAN_COUNT: usize = 500;

/// Hash fields of a peer.
const PEER_FIELDS: [&str; 6] = [
    "id",
    "hostname",
    "trust_tier",
    "status",
    "latency",
    "last_seen",
];

/// Why the federation Redis could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FederationError {
    #[error("federation Redis: {0}")]
    Redis(String),
    #[error("no Redis hash matches {0:?}")]
    NoPeers(String),
    #[error("more than {max} keys match {pattern:?}; raise --federation-max-peers")]
    TooManyPeers { pattern: String, max: usize },
    #[error("Redis key {0:?} does not exist")]
    MissingKey(String),
    #[error("Redis key {key:?} is a {found}, not a list")]
    WrongType { key: String, found: String },
}

/// A peer as read from a source, before staleness and defaults.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PeerRecord {
    pub id: String,
    pub hostname: Option<String>,
    pub trust_tier: Option<String>,
    pub status: Option<String>,
    /// Milliseconds; absent when missing or not a number.
    pub latency: Option<f64>,
    /// Unix milliseconds; absent when missing or unreadable.
    pub last_seen_ms: Option<u64>,
}

impl PeerRecord {
    /// Builds a record from field values (`get(name)`); `fallback_id` when the
    /// fields carry no `id`.
    pub fn from_fields(fallback_id: &str, get: impl Fn(&str) -> Option<String>) -> Self {
        let text = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Self {
            id: text("id").unwrap_or_else(|| fallback_id.to_string()),
            hostname: text("hostname"),
            trust_tier: text("trust_tier"),
            status: text("status"),
            latency: text("latency")
                .and_then(|l| l.parse::<f64>().ok())
                .filter(|l| l.is_finite() && *l >= 0.0),
            last_seen_ms: text("last_seen").and_then(|t| timestamp_ms(&t)),
        }
    }
}

/// Parses one `sync_events` item; `None` if it is not a sync event.
/// Required: `timestamp`, `source`, `target`, `event_type`, `success`;
/// `bytes` defaults to 0.
pub fn parse_sync_event(item: &[u8]) -> Option<SyncEvent> {
    let v: serde_json::Value = serde_json::from_slice(item).ok()?;
    let text = |k: &str| v.get(k)?.as_str().map(str::to_string);
    let timestamp = match v.get("timestamp")? {
        serde_json::Value::Number(n) => timestamp_ms(&n.to_string())?,
        serde_json::Value::String(s) => timestamp_ms(s)?,
        _ => return None,
    };
    Some(SyncEvent {
        timestamp,
        source: text("source")?,
        target: text("target")?,
        event_type: text("event_type")?,
        bytes: match v.get("bytes") {
            None | Some(serde_json::Value::Null) => 0,
            Some(b) => b
                .as_u64()
                .or_else(|| b.as_f64().map(|f| f.max(0.0) as u64))?,
        },
        success: v.get("success")?.as_bool()?,
    })
}

/// The literal part of a `SCAN` pattern before its first glob character.
pub fn pattern_prefix(pattern: &str) -> &str {
    let end = pattern.find(['*', '?', '[', '\\']).unwrap_or(pattern.len());
    &pattern[..end]
}

/// Reads peers and sync events; reconnects after a failure.
pub struct FederationRedis {
    client: redis::Client,
    config: FederationRedisConfig,
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl FederationRedis {
    pub fn new(config: FederationRedisConfig) -> Result<Self, FederationError> {
        let client = tls::client(&config.url, config.tls.as_ref())
            .map_err(|e| FederationError::Redis(format!("bad URL: {e}")))?;
        Ok(Self {
            client,
            config,
            conn: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &FederationRedisConfig {
        &self.config
    }

    async fn connection(&self) -> Result<MultiplexedConnection, FederationError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.timeout))
            .set_response_timeout(Some(self.config.timeout));
        let conn = tokio::time::timeout(
            self.config.timeout * 2,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| FederationError::Redis("connect timed out".into()))?
        .map_err(|e| FederationError::Redis(tls::explain(e)))?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn forget(&self) {
        *self.conn.lock().await = None;
    }

    /// Every peer hash matching the pattern, sorted by id.
    pub async fn peers(&self) -> Result<Vec<PeerRecord>, FederationError> {
        let result = self.read_peers().await;
        if matches!(result, Err(FederationError::Redis(_))) {
            self.forget().await;
        }
        result
    }

    async fn read_peers(&self) -> Result<Vec<PeerRecord>, FederationError> {
        let mut conn = self.connection().await?;
        let pattern = &self.config.peer_pattern;
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .arg("TYPE")
                .arg("hash")
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            keys.extend(batch);
            if keys.len() > self.config.max_peers {
                return Err(FederationError::TooManyPeers {
                    pattern: pattern.clone(),
                    max: self.config.max_peers,
                });
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        // SCAN may return a key more than once.
        keys.sort();
        keys.dedup();
        if keys.is_empty() {
            return Err(FederationError::NoPeers(pattern.clone()));
        }
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("HMGET").arg(key).arg(&PEER_FIELDS[..]);
        }
        let rows: Vec<Vec<Option<String>>> =
            pipe.query_async(&mut conn).await.map_err(redis_error)?;
        let prefix = pattern_prefix(pattern);
        let mut peers: Vec<PeerRecord> = keys
            .iter()
            .zip(rows)
            // A key deleted between SCAN and HMGET has no fields: skip it.
            .filter(|(_, row)| row.iter().any(Option::is_some))
            .map(|(key, row)| {
                let fallback = key.strip_prefix(prefix).unwrap_or(key);
                PeerRecord::from_fields(fallback, |name| {
                    PEER_FIELDS
                        .iter()
                        .position(|f| *f == name)
                        .and_then(|i| row.get(i).cloned().flatten())
                })
            })
            .collect();
        if peers.is_empty() {
            return Err(FederationError::NoPeers(pattern.clone()));
        }
        peers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(peers)
    }

    /// The newest sync events, newest first (the list's own order, as
    /// `LRANGE key 0 9` returns them), and how many items were not sync events
    /// (skipped; the next items take their places).
    pub async fn sync_events(&self) -> Result<(Vec<SyncEvent>, usize), FederationError> {
        let result = self.read_sync_events().await;
        if matches!(result, Err(FederationError::Redis(_))) {
            self.forget().await;
        }
        result
    }

    async fn read_sync_events(&self) -> Result<(Vec<SyncEvent>, usize), FederationError> {
        let mut conn = self.connection().await?;
        let key = &self.config.sync_key;
        // Read a little more than shown so a few bad items do not shorten the list.
        let (kind, items): (String, Vec<Vec<u8>>) = redis::pipe()
            .cmd("TYPE")
            .arg(key)
            .cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(SYNC_EVENTS as i64 * 2 - 1)
            .query_async(&mut conn)
            .await
            .map_err(|e| {
                // LRANGE on another type fails with WRONGTYPE; TYPE tells which.
                if e.code() == Some("WRONGTYPE") {
                    FederationError::WrongType {
                        key: key.clone(),
                        found: "value of another type".into(),
                    }
                } else {
                    redis_error(e)
                }
            })?;
        match kind.as_str() {
            "list" => {}
            "none" => return Err(FederationError::MissingKey(key.clone())),
            other => {
                return Err(FederationError::WrongType {
                    key: key.clone(),
                    found: other.to_string(),
                });
            }
        }
        let mut invalid = 0;
        let mut events = Vec::new();
        for item in &items {
            match parse_sync_event(item) {
                Some(e) if events.len() < SYNC_EVENTS => events.push(e),
                Some(_) => {}
                None => invalid += 1,
            }
        }
        Ok((events, invalid))
    }
}

fn redis_error(e: redis::RedisError) -> FederationError {
    FederationError::Redis(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_fields_with_defaults_and_units() {
        let fields = [
            ("hostname", " ark-1.local "),
            ("status", "online"),
            ("latency", "12.5"),
            ("last_seen", "1699800000"),
        ];
        let get = |k: &str| {
            fields
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        let p = PeerRecord::from_fields("ark-1", get);
        assert_eq!(p.id, "ark-1");
        assert_eq!(p.hostname.as_deref(), Some("ark-1.local"));
        assert_eq!(p.trust_tier, None);
        assert_eq!(p.latency, Some(12.5));
        assert_eq!(p.last_seen_ms, Some(1_699_800_000_000));
        let bad = PeerRecord::from_fields("x", |k| (k == "latency").then(|| "fast".to_string()));
        assert_eq!(bad.latency, None);
    }

    #[test]
    fn sync_events_require_their_fields() {
        let ok = br#"{"timestamp":1699800000000,"source":"a","target":"b","event_type":"memory_sync","bytes":2048,"success":true}"#;
        let e = parse_sync_event(ok).unwrap();
        assert_eq!(
            (e.timestamp, e.bytes, e.success),
            (1_699_800_000_000, 2048, true)
        );
        let secs = br#"{"timestamp":"1699800000","source":"a","target":"b","event_type":"x","success":false}"#;
        assert_eq!(parse_sync_event(secs).unwrap().timestamp, 1_699_800_000_000);
        assert_eq!(parse_sync_event(secs).unwrap().bytes, 0);
        assert!(parse_sync_event(br#"{"source":"a"}"#).is_none());
        assert!(parse_sync_event(b"not json").is_none());
        assert!(
            parse_sync_event(br#"{"timestamp":1,"source":"a","target":"b","event_type":"x"}"#)
                .is_none()
        );
    }

    #[test]
    fn literal_prefix_of_patterns() {
        assert_eq!(pattern_prefix("peer:*"), "peer:");
        assert_eq!(pattern_prefix("ark:peer:?x*"), "ark:peer:");
        assert_eq!(pattern_prefix("exact"), "exact");
    }
}
