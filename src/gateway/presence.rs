//! The cluster-wide view of connections, for the admin API.
//!
//! Each replica mirrors its [`Registry`] into Redis: a hash
//! `<prefix>presence:<replica>` (connection id → JSON), written in batches once a
//! second and expiring 30 s after the replica stops refreshing it, plus the
//! sorted set `<prefix>replicas` (replica → expiry). A dead replica's entries
//! therefore vanish by themselves. On a Redis Cluster the two keys live in
//! different slots: each write is one pipeline per key (sent concurrently), and
//! a listing reads the set, then each hash on its own master. "Disconnect this
//! user everywhere" is a message on the control channel `<prefix>control`,
//! which every replica subscribes to (sharded pub/sub on a cluster), and so
//! is "this AI Council request now belongs to U" (each replica closes its
//! readers of the request that are not U). In `standalone` the local registry
//! is the whole picture.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::registry::{Change, ConnInfo, Registry};
use crate::engine::EngineError;
use crate::engine::redis::RedisEngine;
use crate::metrics::RedisOp;
use crate::protocol::CloseCode;
use crate::ws::conn::ConnId;

/// How long a replica's entries outlive its last refresh.
const PRESENCE_TTL: Duration = Duration::from_secs(30);
/// Changes are written in batches at this interval.
const WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// At most this many connections per pipeline: the Redis connection's write
/// buffer keeps the capacity of the largest pipeline it sent, so a connect
/// storm must not make it as large as the storm.
const MAX_WRITES_PER_PIPELINE: usize = 512;

/// See the module documentation.
pub enum Presence {
    Local,
    Redis {
        engine: Arc<RedisEngine>,
        changes: mpsc::UnboundedSender<Change>,
    },
}

/// What a disconnect request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// Closed this many connections (this process is the whole cluster).
    Closed(usize),
    /// Sent to every replica; each closes its own connections of the user.
    Broadcast,
}

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

impl Presence {
    /// Mirrors `registry` into Redis until `shutdown`.
    pub fn redis(
        engine: Arc<RedisEngine>,
        registry: Arc<Registry>,
        replica: String,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(engine.clone(), registry, replica, rx, shutdown));
        Self::Redis {
            engine,
            changes: tx,
        }
    }

    /// Records a registry change.
    pub fn record(&self, change: Change) {
        if let Self::Redis { changes, .. } = self {
            let _ = changes.send(change);
        }
    }

    /// Connections across every replica (or of one user).
    pub async fn list(
        &self,
        registry: &Registry,
        user: Option<&str>,
    ) -> Result<Vec<ConnInfo>, EngineError> {
        let Self::Redis { engine, .. } = self else {
            return Ok(registry.list(user));
        };
        let mut conn = engine.connection(RedisOp::Presence).await?;
        let now = crate::time::unix_millis();
        let replicas: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(engine.keys().global("replicas"))
            .arg(now)
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut all = Vec::new();
        for replica in replicas {
            let values: Vec<String> = redis::cmd("HVALS")
                .arg(engine.keys().global(&format!("presence:{replica}")))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            all.extend(
                values
                    .iter()
                    .filter_map(|v| serde_json::from_str::<ConnInfo>(v).ok())
                    .filter(|c| user.is_none() || c.user.as_deref() == user),
            );
        }
        Ok(all)
    }

    /// Closes every connection of `user`, on every replica, with 4004.
    pub async fn disconnect_user(
        &self,
        registry: &Registry,
        user: &str,
    ) -> Result<Disconnect, EngineError> {
        match self {
            Self::Local => Ok(Disconnect::Closed(
                registry.close_user(user, CloseCode::Kicked),
            )),
            Self::Redis { engine, .. } => {
                let message = json!({"op": "disconnect", "user": user}).to_string();
                engine.publish_control(&message).await?;
                Ok(Disconnect::Broadcast)
            }
        }
    }
}

impl Presence {
    /// A request's owner was claimed: closes, on every replica, the readers of
    /// `channel` that are neither `owner` nor administrators (1008, the close
    /// the seeds give a refused client).
    pub async fn owner_claimed(
        &self,
        registry: &Registry,
        channel: &str,
        owner: &str,
    ) -> Result<(), EngineError> {
        match self {
            Self::Local => {
                registry.close_non_owners(channel, owner, CloseCode::PolicyViolation);
                Ok(())
            }
            Self::Redis { engine, .. } => {
                let message = json!({"op": "owner", "channel": channel, "user": owner}).to_string();
                engine.publish_control(&message).await
            }
        }
    }
}

/// Handles a control message from the control channel.
pub fn apply_control(registry: &Registry, message: &serde_json::Value) {
    match (message["op"].as_str(), message["user"].as_str()) {
        (Some("disconnect"), Some(user)) => {
            let closed = registry.close_user(user, CloseCode::Kicked);
            tracing::info!(closed, "disconnected a user on request of an administrator");
        }
        (Some("owner"), Some(owner)) => {
            if let Some(channel) = message["channel"].as_str() {
                let closed = registry.close_non_owners(channel, owner, CloseCode::PolicyViolation);
                if closed > 0 {
                    tracing::info!(closed, %channel, "closed readers of a request that now belongs to another user");
                }
            }
        }
        _ => {}
    }
}

async fn write_loop(
    engine: Arc<RedisEngine>,
    registry: Arc<Registry>,
    replica: String,
    mut changes: mpsc::UnboundedReceiver<Change>,
    shutdown: CancellationToken,
) {
    let key = engine.keys().global(&format!("presence:{replica}"));
    let replicas = engine.keys().global("replicas");
    let mut resync = true;
    // Connections still to write, each as it is when written: after a
    // resynchronization every one, else the changed ones.
    let mut pending: Vec<ConnId> = Vec::new();
    let mut behind = false;
    loop {
        // A backlog (a connect storm) is written pipeline after pipeline;
        // otherwise once per interval.
        if !behind {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(WRITE_INTERVAL) => {}
            }
        } else if shutdown.is_cancelled() {
            break;
        }
        let mut writes = engine.batch();
        let pipe = writes.pipe(&key);
        if resync {
            // Changes queued so far are in the full rewrite.
            while changes.try_recv().is_ok() {}
            pipe.del(&key).ignore();
            pending = registry.ids();
        } else if pending.is_empty() {
            while pending.len() < MAX_WRITES_PER_PIPELINE
                && let Ok(Change(id)) = changes.try_recv()
            {
                pending.push(id);
            }
            // A connection that subscribed and left within the interval is
            // written once, as it is now.
            pending.sort_unstable();
            pending.dedup();
        }
        let from = pending.len().saturating_sub(MAX_WRITES_PER_PIPELINE);
        for id in pending.drain(from..) {
            match registry.get(id) {
                Some(info) => {
                    pipe.hset(&key, id, serde_json::to_string(&info).unwrap_or_default())
                        .ignore();
                }
                None => {
                    pipe.hdel(&key, id).ignore();
                }
            }
        }
        let expiry = crate::time::unix_millis() + PRESENCE_TTL.as_millis() as u64;
        pipe.pexpire(&key, PRESENCE_TTL.as_millis() as i64).ignore();
        let pipe = writes.pipe(&replicas);
        pipe.zadd(&replicas, &replica, expiry).ignore();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&replicas)
            .arg("-inf")
            .arg(crate::time::unix_millis())
            .ignore();
        let written = engine.run_batch(RedisOp::Presence, writes).await;
        // After a failure, wait the interval (and resynchronize) instead.
        behind = written.is_ok() && (!pending.is_empty() || !changes.is_empty());
        resync = match written {
            Ok(()) => false,
            Err(e) => {
                if !resync {
                    tracing::warn!(error = %e, "could not write presence to Redis; will resynchronize");
                }
                true
            }
        };
    }
    // Leaving: take this replica out of the cluster view at once.
    let mut batch = engine.batch();
    batch.pipe(&key).del(&key).ignore();
    batch.pipe(&replicas).zrem(&replicas, &replica).ignore();
    let _ = engine.run_batch(RedisOp::Presence, batch).await;
}
