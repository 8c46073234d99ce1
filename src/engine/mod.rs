//! The engine: where channels live — publish with offsets, history, snapshots,
//! and the live subscription feed.
//!
//! Two implementations share this interface and one conformance suite
//! (`tests/engine_conformance.rs`): [`memory::MemoryEngine`] for `standalone`, and
//! [`redis::RedisEngine`] for replicated gateways (on one Redis or a Redis
//! Cluster: [`connection`], [`cluster`]). Every published message gets
//! the next offset of its channel; offsets belong to an epoch, which changes
//! whenever the channel's history is lost (so a client can tell "continue" from
//! "start over").

pub mod cluster;
pub mod connection;
pub mod counted;
pub mod feed;
pub mod keys;
pub mod memory;
pub mod redis;
pub mod redis_config;
pub mod sink;
pub mod tls;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use rand::distr::Alphanumeric;

use crate::channel::ChannelName;
use crate::json::Json;

/// `len` random ASCII letters and digits.
fn random_alphanumeric(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Position of a message in its channel, starting at 1.
pub type Offset = u64;

/// Identifies one continuous history of a channel.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

impl Epoch {
    /// A fresh random epoch.
    pub fn random() -> Self {
        Self(Arc::from(random_alphanumeric(10)))
    }

    pub fn new(s: &str) -> Self {
        Self(Arc::from(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How much history a channel keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Messages kept (0 disables history, and with it resume).
    pub size: usize,
    /// How long history (and the channel's epoch) outlives the last publish.
    pub ttl: Duration,
    /// How much longer than `ttl` the channel's position (epoch and newest
    /// offset) is kept without its entries: a reader within it finds the
    /// offsets it missed reported as a gap (`recovered: false`, the AI
    /// Council's `events_expired`) instead of a new, empty channel whose
    /// offsets start again at 1.
    pub tombstone: Duration,
}

impl HistoryPolicy {
    /// How long the channel's position outlives the last publish.
    pub fn position_ttl(&self) -> Duration {
        self.ttl.saturating_add(self.tombstone)
    }
}

impl Default for HistoryPolicy {
    fn default() -> Self {
        Self {
            size: 1000,
            ttl: Duration::from_secs(600),
            tombstone: Duration::ZERO,
        }
    }
}

/// History policies: a default and per-namespace overrides.
#[derive(Debug, Clone, Default)]
pub struct HistoryConfig {
    pub default: HistoryPolicy,
    pub namespaces: HashMap<String, HistoryPolicy>,
}

impl HistoryConfig {
    /// The policy for a channel: its namespace's, else the default.
    pub fn policy(&self, channel: &ChannelName) -> HistoryPolicy {
        channel
            .namespace()
            .and_then(|ns| self.namespaces.get(ns))
            .copied()
            .unwrap_or(self.default)
    }
}

/// Options of one publish.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Also store the message as the channel's snapshot.
    pub snapshot: bool,
    /// With `snapshot`: refuse unless greater than the stored snapshot's version.
    pub version: Option<u64>,
    /// The producer's key for this message: a second publish with the same
    /// key on the same channel within its window is not published again, and
    /// is answered with the first one's offset and epoch.
    pub idempotency: Option<Idempotency>,
}

/// A producer's idempotency key and how long it is remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: IdempotencyKey,
    /// How long after the first publish a repeat is recognised (more than 0).
    pub window: Duration,
}

/// A producer's idempotency key: 1 to [`IdempotencyKey::MAX_LEN`] visible
/// ASCII characters (it becomes part of a Redis key name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Arc<str>);

/// Why an idempotency key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdempotencyKeyError {
    #[error("the idempotency key is empty")]
    Empty,
    #[error("the idempotency key is longer than {max} bytes", max = IdempotencyKey::MAX_LEN)]
    TooLong,
    #[error(
        "the idempotency key may only hold visible ASCII characters (no spaces or control characters)"
    )]
    Characters,
}

impl IdempotencyKey {
    /// Longest key accepted.
    pub const MAX_LEN: usize = 128;

    pub fn parse(key: &str) -> Result<Self, IdempotencyKeyError> {
        if key.is_empty() {
            return Err(IdempotencyKeyError::Empty);
        }
        if key.len() > Self::MAX_LEN {
            return Err(IdempotencyKeyError::TooLong);
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(IdempotencyKeyError::Characters);
        }
        Ok(Self(Arc::from(key)))
    }

    /// A fresh random key (for an engine guarding against its own client
    /// sending one command twice).
    pub fn random() -> Self {
        Self(Arc::from(format!("~{}", random_alphanumeric(22))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a publish landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub offset: Offset,
    pub epoch: Epoch,
}

/// A channel's latest state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub offset: Offset,
    pub epoch: Epoch,
    pub data: Json,
    pub version: Option<u64>,
}

/// One message kept in history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub offset: Offset,
    pub data: Json,
    /// When it was published, in Unix microseconds.
    pub published_us: u64,
}

/// A channel's epoch and the offset of its newest message (0 if none yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: Epoch,
    pub offset: Offset,
}

/// Messages after a given offset, read atomically with the channel's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub position: Position,
    pub entries: Vec<Entry>,
    /// `entries` holds every message in `(after, position.offset]`, none missing.
    pub covered: bool,
}

impl HistoryPage {
    /// Builds a page and decides `covered` from the entries themselves.
    pub fn new(position: Position, after: Offset, entries: Vec<Entry>) -> Self {
        let covered = if after >= position.offset {
            after == position.offset
        } else {
            entries.first().map(|e| e.offset) == Some(after + 1)
                && entries.last().map(|e| e.offset) == Some(position.offset)
                && entries.len() as u64 == position.offset - after
        };
        Self {
            position,
            entries,
            covered,
        }
    }
}

/// A live message from the subscription feed.
#[derive(Debug, Clone)]
pub struct IncomingMessage {
    pub channel: ChannelName,
    /// Offset and epoch; `None` for a plain `PUBLISH` that bypassed history.
    pub seq: Option<(Offset, Epoch)>,
    pub published_us: Option<u64>,
    pub data: Json,
}

/// What the subscription feed reports.
#[derive(Debug, Clone)]
pub enum EngineEvent {
    Message(IncomingMessage),
    /// The feed broke: live messages may be missed until `Restored`.
    Lost,
    /// The feed is back and every channel is subscribed again; what was
    /// published meanwhile is only in history.
    Restored,
    /// A message on the cluster's control channel (e.g. disconnect a user).
    Control(serde_json::Value),
}

pub use sink::{EventFeed, EventSink, FeedClosed, InlineReceiver, event_channel};

/// Whether the engine can serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineHealth {
    pub ready: bool,
    pub detail: String,
}

/// Why an engine call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    #[error("a snapshot with version {current} (not older than this one) is already stored")]
    StaleVersion { current: u64 },
    #[error("unexpected reply from the engine: {0}")]
    Protocol(String),
}

/// The engine interface. See the module documentation.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Appends to history, assigns the next offset, optionally stores the
    /// snapshot, and publishes — as one atomic step.
    async fn publish(
        &self,
        channel: &ChannelName,
        data: &Json,
        options: PublishOptions,
    ) -> Result<Published, EngineError>;

    /// Messages with offsets greater than `after` (at most `limit`), with the position.
    async fn history(
        &self,
        channel: &ChannelName,
        after: Offset,
        limit: usize,
    ) -> Result<HistoryPage, EngineError>;

    /// The channel's epoch and newest offset (creates the epoch if the channel is new).
    async fn position(&self, channel: &ChannelName) -> Result<Position, EngineError> {
        Ok(self.history(channel, Offset::MAX, 0).await?.position)
    }

    /// The channel's snapshot, if one was published.
    async fn snapshot(&self, channel: &ChannelName) -> Result<Option<Snapshot>, EngineError>;

    /// Starts the live feed for these channels; returns once it is active.
    async fn subscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError>;

    /// Stops the live feed for these channels.
    async fn unsubscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError>;

    /// Readiness.
    fn health(&self) -> EngineHealth;

    /// `memory` or `redis`, for logs and metrics.
    fn kind(&self) -> &'static str;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(offset: Offset) -> Entry {
        Entry {
            offset,
            data: Json::parse(Bytes::from_static(b"1"), 4).unwrap(),
            published_us: 0,
        }
    }

    fn pos(offset: Offset) -> Position {
        Position {
            epoch: Epoch::new("e"),
            offset,
        }
    }

    #[test]
    fn coverage_is_decided_from_the_entries() {
        assert!(HistoryPage::new(pos(5), 5, vec![]).covered);
        assert!(HistoryPage::new(pos(5), 3, vec![entry(4), entry(5)]).covered);
        assert!(!HistoryPage::new(pos(5), 2, vec![entry(4), entry(5)]).covered);
        assert!(!HistoryPage::new(pos(5), 3, vec![entry(4)]).covered);
        assert!(!HistoryPage::new(pos(5), 7, vec![]).covered);
        assert!(!HistoryPage::new(pos(5), 3, vec![]).covered);
    }
}
