//! Resumable sessions (seed 004): a connection's subscriptions and the
//! positions its client acknowledged, kept with a TTL in the engine's storage,
//! so that a client reconnecting to any replica with `?session=<id>` gets its
//! subscriptions back, each resumed from its last acknowledged offset.
//!
//! In Redis a session is the hash `<prefix>session:<id>`: `user` (the token's
//! `sub`, which a resuming token must match), `s:<channel>` (epoch and filters
//! as JSON) and `o:<channel>` (acknowledged offset). Acknowledgements are
//! coalesced and written in one pipeline per interval (one per hash slot on a
//! Redis Cluster, where each session hash lives on the master owning its slot),
//! so a client may ack every message without costing a Redis round trip each.
//!
//! A subscription's stored position is only ever what its client is known to
//! have: the `since` it resumed from, or its acknowledgements — never the
//! channel's newest offset at the time of a start whose snapshot and replay the
//! client may not have read before its connection ended (a start with such
//! content is stored with `restart`, and restored afresh, `recovered: false`,
//! until the client acknowledges something).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::EngineError;
use crate::engine::redis::RedisEngine;
use crate::metrics::RedisOp;

/// Rewrites the epoch, offset and restart flag of a stored subscription,
/// keeping its filters.
const RESYNC_SCRIPT: &str = r#"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local sub = cjson.decode(raw)
sub['epoch'] = ARGV[2]
sub['offset'] = tonumber(ARGV[3])
if ARGV[4] == '1' then sub['restart'] = true else sub['restart'] = nil end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(sub))
return 1
"#;

/// Acknowledgements are written at most this often.
const ACK_FLUSH: Duration = Duration::from_millis(500);
/// At most this many writes per pipeline (a backlog goes out in several): the
/// Redis connection's write buffer keeps the capacity of the largest pipeline.
const MAX_WRITES_PER_PIPELINE: usize = 1024;

/// A session id: 128 random bits as hex.
pub fn new_session_id() -> String {
    let bits: u128 = rand::rng().random();
    format!("{bits:032x}")
}

/// Whether `id` has the shape of a session id (so garbage never reaches Redis).
pub fn valid_session_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Where one subscription of a session stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<crate::protocol::DeltaFormat>,
    /// The subscription started afresh (a snapshot and what followed it) at
    /// `offset`, and its client has acknowledged nothing since: it may not have
    /// read that start, so a restore starts it afresh again instead of
    /// resuming after `offset`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restart: bool,
}

impl Position {
    /// Takes the client's acknowledgement of `offset` into account: a
    /// restarted subscription resumes from what its client acknowledged (it
    /// has read its start that far), any other from the later of the two.
    fn acknowledge(&mut self, offset: u64) {
        if self.restart {
            self.offset = offset;
            self.restart = false;
        } else {
            self.offset = self.offset.max(offset);
        }
    }
}

/// A stored session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    pub user: Option<String>,
    pub subscriptions: BTreeMap<String, Position>,
}

enum Write {
    Subscribe {
        id: String,
        user: Option<String>,
        channel: String,
        position: Position,
    },
    Unsubscribe {
        id: String,
        channel: String,
    },
    Ack {
        id: String,
        channel: String,
        offset: u64,
    },
    Resync {
        id: String,
        channel: String,
        position: Position,
    },
}

/// See the module documentation.
pub struct SessionStore {
    backend: Backend,
}

enum Backend {
    Memory {
        sessions: Mutex<HashMap<String, (Instant, Record)>>,
        ttl: Duration,
    },
    Redis {
        engine: Arc<RedisEngine>,
        writes: mpsc::UnboundedSender<Write>,
        ttl: Duration,
    },
}

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

impl SessionStore {
    /// Sessions in this process (standalone).
    pub fn memory(ttl: Duration) -> Self {
        Self {
            backend: Backend::Memory {
                sessions: Mutex::new(HashMap::new()),
                ttl,
            },
        }
    }

    /// Sessions in Redis, shared by every replica.
    pub fn redis(engine: Arc<RedisEngine>, ttl: Duration, shutdown: CancellationToken) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(engine.clone(), rx, ttl, shutdown));
        Self {
            backend: Backend::Redis {
                engine,
                writes: tx,
                ttl,
            },
        }
    }

    /// The session `id`, if it exists and has not expired.
    pub async fn load(&self, id: &str) -> Result<Option<Record>, EngineError> {
        match &self.backend {
            Backend::Memory { sessions, ttl } => {
                let mut map = memory_lock(sessions);
                map.retain(|_, (touched, _)| touched.elapsed() < *ttl);
                Ok(map.get(id).map(|(_, r)| r.clone()))
            }
            Backend::Redis { engine, .. } => {
                let mut conn = engine.connection(RedisOp::Session).await?;
                let fields: HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(engine.keys().global(&format!("session:{id}")))
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                if fields.is_empty() {
                    return Ok(None);
                }
                let mut record = Record {
                    user: fields.get("user").filter(|u| !u.is_empty()).cloned(),
                    ..Record::default()
                };
                for (field, value) in &fields {
                    let Some(channel) = field.strip_prefix("s:") else {
                        continue;
                    };
                    let Ok(mut position) = serde_json::from_str::<Position>(value) else {
                        continue;
                    };
                    if let Some(acked) = fields
                        .get(&format!("o:{channel}"))
                        .and_then(|o| o.parse::<u64>().ok())
                    {
                        position.acknowledge(acked);
                    }
                    record.subscriptions.insert(channel.to_string(), position);
                }
                Ok(Some(record))
            }
        }
    }

    /// Records a subscription (its start position).
    pub fn subscribed(&self, id: &str, user: Option<&str>, channel: &str, position: Position) {
        match &self.backend {
            Backend::Memory { sessions, .. } => {
                let mut map = memory_lock(sessions);
                let entry = map
                    .entry(id.to_string())
                    .or_insert_with(|| (Instant::now(), Record::default()));
                entry.0 = Instant::now();
                entry.1.user = user.map(str::to_owned);
                entry.1.subscriptions.insert(channel.to_string(), position);
            }
            Backend::Redis { writes, .. } => {
                let _ = writes.send(Write::Subscribe {
                    id: id.to_string(),
                    user: user.map(str::to_owned),
                    channel: channel.to_string(),
                    position,
                });
            }
        }
    }

    /// Moves a subscription to a new start after a resync, keeping its filters.
    pub fn resynced(&self, id: &str, channel: &str, position: Position) {
        match &self.backend {
            Backend::Memory { sessions, .. } => {
                if let Some((touched, record)) = memory_lock(sessions).get_mut(id)
                    && let Some(p) = record.subscriptions.get_mut(channel)
                {
                    *touched = Instant::now();
                    p.epoch = position.epoch;
                    p.offset = position.offset;
                    p.restart = position.restart;
                }
            }
            Backend::Redis { writes, .. } => {
                let _ = writes.send(Write::Resync {
                    id: id.to_string(),
                    channel: channel.to_string(),
                    position,
                });
            }
        }
    }

    /// Forgets a subscription.
    pub fn unsubscribed(&self, id: &str, channel: &str) {
        match &self.backend {
            Backend::Memory { sessions, .. } => {
                if let Some((touched, record)) = memory_lock(sessions).get_mut(id) {
                    *touched = Instant::now();
                    record.subscriptions.remove(channel);
                }
            }
            Backend::Redis { writes, .. } => {
                let _ = writes.send(Write::Unsubscribe {
                    id: id.to_string(),
                    channel: channel.to_string(),
                });
            }
        }
    }

    /// Records that the client has processed `channel` up to `offset`.
    pub fn acked(&self, id: &str, channel: &str, offset: u64) {
        match &self.backend {
            Backend::Memory { sessions, .. } => {
                if let Some((touched, record)) = memory_lock(sessions).get_mut(id)
                    && let Some(position) = record.subscriptions.get_mut(channel)
                {
                    *touched = Instant::now();
                    position.acknowledge(offset);
                }
            }
            Backend::Redis { writes, .. } => {
                let _ = writes.send(Write::Ack {
                    id: id.to_string(),
                    channel: channel.to_string(),
                    offset,
                });
            }
        }
    }

    /// How long a session outlives its last change.
    pub fn ttl(&self) -> Duration {
        match &self.backend {
            Backend::Memory { ttl, .. } | Backend::Redis { ttl, .. } => *ttl,
        }
    }
}

fn memory_lock(
    sessions: &Mutex<HashMap<String, (Instant, Record)>>,
) -> MutexGuard<'_, HashMap<String, (Instant, Record)>> {
    sessions.lock().unwrap_or_else(|e| e.into_inner())
}

async fn write_loop(
    engine: Arc<RedisEngine>,
    mut writes: mpsc::UnboundedReceiver<Write>,
    ttl: Duration,
    shutdown: CancellationToken,
) {
    let ttl_ms = ttl.as_millis() as i64;
    let mut batch = Vec::new();
    loop {
        let received = tokio::select! {
            n = writes.recv_many(&mut batch, MAX_WRITES_PER_PIPELINE) => n,
            _ = shutdown.cancelled() => 0,
        };
        if received == 0 && batch.is_empty() {
            return;
        }
        // Let acknowledgements of the next moments join this batch (a backlog
        // that fills a pipeline goes out at once).
        if batch.len() < MAX_WRITES_PER_PIPELINE {
            tokio::time::sleep(ACK_FLUSH).await;
        }
        while batch.len() < MAX_WRITES_PER_PIPELINE
            && let Ok(w) = writes.try_recv()
        {
            batch.push(w);
        }
        let mut acks: HashMap<(String, String), u64> = HashMap::new();
        // One pipeline on a single Redis; one per hash slot on a cluster.
        let mut batch_out = engine.batch();
        let mut touched = std::collections::HashSet::new();
        for write in batch.drain(..) {
            match write {
                Write::Subscribe {
                    id,
                    user,
                    channel,
                    position,
                } => {
                    let key = engine.keys().global(&format!("session:{id}"));
                    acks.remove(&(id.clone(), channel.clone()));
                    let pipe = batch_out.pipe(&key);
                    pipe.hset(&key, "user", user.unwrap_or_default()).ignore();
                    pipe.hset(
                        &key,
                        format!("s:{channel}"),
                        serde_json::to_string(&position).unwrap_or_default(),
                    )
                    .ignore();
                    pipe.hdel(&key, format!("o:{channel}")).ignore();
                    touched.insert(key);
                }
                Write::Unsubscribe { id, channel } => {
                    let key = engine.keys().global(&format!("session:{id}"));
                    acks.remove(&(id, channel.clone()));
                    batch_out
                        .pipe(&key)
                        .hdel(&key, &[format!("s:{channel}"), format!("o:{channel}")])
                        .ignore();
                    touched.insert(key);
                }
                Write::Resync {
                    id,
                    channel,
                    position,
                } => {
                    // Keep the stored filters: rewrite epoch and offset only.
                    let key = engine.keys().global(&format!("session:{id}"));
                    acks.remove(&(id.clone(), channel.clone()));
                    // Acknowledgements of the old start no longer apply.
                    let pipe = batch_out.pipe(&key);
                    pipe.hdel(&key, format!("o:{channel}")).ignore();
                    pipe.cmd("EVAL")
                        .arg(RESYNC_SCRIPT)
                        .arg(1)
                        .arg(&key)
                        .arg(format!("s:{channel}"))
                        .arg(&position.epoch)
                        .arg(position.offset)
                        .arg(if position.restart { "1" } else { "0" })
                        .ignore();
                    touched.insert(key);
                }
                Write::Ack {
                    id,
                    channel,
                    offset,
                } => {
                    let slot = acks.entry((id, channel)).or_insert(0);
                    *slot = (*slot).max(offset);
                }
            }
        }
        for ((id, channel), offset) in acks {
            let key = engine.keys().global(&format!("session:{id}"));
            batch_out
                .pipe(&key)
                .hset(&key, format!("o:{channel}"), offset)
                .ignore();
            touched.insert(key);
        }
        for key in &touched {
            batch_out.pipe(key).pexpire(key, ttl_ms).ignore();
        }
        if touched.is_empty() {
            continue;
        }
        let result = engine.run_batch(RedisOp::Session, batch_out).await;
        if let Err(e) = result {
            tracing::warn!(error = %e, sessions = touched.len(), "could not store session positions; a resume may replay more than needed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_and_checked() {
        let a = new_session_id();
        assert!(valid_session_id(&a));
        assert_ne!(a, new_session_id());
        assert!(!valid_session_id("x"));
        assert!(!valid_session_id(&"g".repeat(32)));
    }

    #[tokio::test]
    async fn memory_store_keeps_positions_and_acks() {
        let store = SessionStore::memory(Duration::from_secs(60));
        let position = Position {
            epoch: "e".into(),
            offset: 3,
            filters: None,
            delta: None,
            restart: false,
        };
        store.subscribed("s1", Some("u"), "c", position);
        store.acked("s1", "c", 9);
        store.acked("s1", "c", 5);
        let r = store.load("s1").await.unwrap().unwrap();
        assert_eq!(r.user.as_deref(), Some("u"));
        assert_eq!(r.subscriptions["c"].offset, 9);
        store.unsubscribed("s1", "c");
        assert!(
            store
                .load("s1")
                .await
                .unwrap()
                .unwrap()
                .subscriptions
                .is_empty()
        );
        assert_eq!(store.load("nope").await.unwrap(), None);
    }

    /// A restarted subscription stays a restart until its client acknowledges
    /// an offset, then resumes from that offset — not from the (later) newest
    /// offset of its start, which the client may not have read that far.
    #[tokio::test]
    async fn a_restart_resumes_from_the_clients_acknowledgement() {
        let store = SessionStore::memory(Duration::from_secs(60));
        let start = Position {
            epoch: "e".into(),
            offset: 10,
            filters: None,
            delta: None,
            restart: true,
        };
        store.subscribed("s1", None, "c", start.clone());
        assert_eq!(
            store.load("s1").await.unwrap().unwrap().subscriptions["c"],
            start
        );
        store.acked("s1", "c", 7);
        let restored = &store.load("s1").await.unwrap().unwrap().subscriptions["c"];
        assert_eq!((restored.offset, restored.restart), (7, false));
        store.acked("s1", "c", 12);
        store.acked("s1", "c", 11);
        assert_eq!(
            store.load("s1").await.unwrap().unwrap().subscriptions["c"].offset,
            12
        );
        // A resync restarts it again: acknowledgements of the old start are dropped.
        store.resynced(
            "s1",
            "c",
            Position {
                offset: 20,
                ..start
            },
        );
        let restored = &store.load("s1").await.unwrap().unwrap().subscriptions["c"];
        assert_eq!((restored.offset, restored.restart), (20, true));
    }

    #[test]
    fn the_restart_flag_is_stored_only_when_set() {
        let mut p = Position {
            epoch: "e".into(),
            offset: 1,
            filters: None,
            delta: None,
            restart: false,
        };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"epoch":"e","offset":1}"#
        );
        p.restart = true;
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Position>(&text).unwrap(), p);
        // Positions stored before the flag existed read as resumable.
        let old: Position = serde_json::from_str(r#"{"epoch":"e","offset":1}"#).unwrap();
        assert!(!old.restart);
    }
}
