//! What the AI Council dialect keeps across replicas (seed 004): who owns a
//! request, which of its events each user acknowledged, how often a user
//! connected to it. In Redis on a gateway (every replica sees the same), in
//! the process on `standalone`.
//!
//! Redis keys, under the prefix, each expiring `ttl` after its last write
//! (`--council-retention` plus `--council-tombstone`: they outlive the
//! request's events, so that what expired can still be told apart from what
//! was acknowledged):
//!
//! | key | what |
//! |---|---|
//! | `council:owner:<channel>` | the owner's user id (`SET NX`) |
//! | `council:acks:<epoch>:<channel>:<user>` | a bitmap: bit N set = event N acknowledged |
//! | `council:connects:<channel>:<user>` | connections so far (`INCR`) |
//!
//! Acknowledgements are per event, not "everything below N": the seed's
//! frontend acknowledges only some types. They are keyed by the channel's
//! epoch, so a history that was lost (offsets restarting at 1) never inherits
//! old acknowledgements. Writes are coalesced and sent in one pipeline per
//! flush interval (`--council-ack-flush-interval`; per hash slot on a
//! cluster), like the native sessions' acks, and sent again while Redis does
//! not take them — every flush interval (at least `MIN_ACK_RETRY`) and at
//! once when a connection ends, with no growing backoff, so they are stored
//! as soon as Redis is back (at most `MAX_PENDING_WRITES` wait; beyond, the
//! oldest are dropped and their events replayed). A connection that ends asks for an
//! immediate flush, so its client's next connect finds them; on shutdown the
//! writer stores what it holds before the process exits
//! ([`AckWriter::finish`]). Only a replica that dies (SIGKILL, a crash) or
//! stalls before its flush loses what it held: those events are replayed —
//! the route is at least once. An
//! acknowledgement can only name an event the channel has (the dialect checks
//! against the channel's newest offset), so a bitmap is at most one bit per
//! event of the request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::channel::ChannelName;
use crate::engine::redis::RedisEngine;
use crate::engine::{EngineError, Epoch, Offset};
use crate::metrics::RedisOp;

/// At most this many writes per pipeline.
const MAX_WRITES_PER_PIPELINE: usize = 1024;
/// Writes kept while Redis does not take them (about 100 bytes each).
const MAX_PENDING_WRITES: usize = 100_000;
/// Shortest pause between two attempts to store waiting writes while Redis
/// refuses them (else the flush interval): not a growing backoff — every
/// second an acknowledgement waits after Redis is back is a window in which
/// its event is replayed to a client that reconnects elsewhere, and one failed
/// pipeline per replica every 250 ms costs Redis nothing.
const MIN_ACK_RETRY: Duration = Duration::from_millis(250);

/// Claims the owner of a request: `{1, owner}` newly claimed, `{0, owner}`
/// already this owner (its expiry refreshed), `{2, other}` another's.
const CLAIM_SCRIPT: &str = r#"
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, ARGV[1]}
end
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {0, current}
end
return {2, current}
"#;

/// The events of one request a user acknowledged: bit N for event N, in
/// Redis's bit order (bit 0 is the high bit of the first byte).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckSet {
    bits: Vec<u8>,
}

impl AckSet {
    /// A set as Redis's `GET` returns the bitmap.
    pub fn from_bitmap(bits: Vec<u8>) -> Self {
        Self { bits }
    }

    pub fn contains(&self, offset: Offset) -> bool {
        let Ok(byte) = usize::try_from(offset / 8) else {
            return false;
        };
        self.bits
            .get(byte)
            .is_some_and(|b| b & (0x80 >> (offset % 8)) != 0)
    }

    /// Adds `offset`; false if it was there.
    pub fn insert(&mut self, offset: Offset) -> bool {
        let Ok(byte) = usize::try_from(offset / 8) else {
            return false;
        };
        if self.bits.len() <= byte {
            self.bits.resize(byte + 1, 0);
        }
        let mask = 0x80 >> (offset % 8);
        let new = self.bits[byte] & mask == 0;
        self.bits[byte] |= mask;
        new
    }

    /// Everything in `other` too.
    pub fn extend(&mut self, other: &AckSet) {
        if self.bits.len() < other.bits.len() {
            self.bits.resize(other.bits.len(), 0);
        }
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a |= b;
        }
    }
}

/// What claiming a request's owner found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The request had no owner: it is now this one's.
    New,
    /// Already this owner's.
    Same,
    /// Another user owns it.
    Other(String),
}

/// See the module documentation.
pub struct CouncilStore {
    backend: Backend,
    ttl: Duration,
}

enum Backend {
    Memory(Mutex<Memory>),
    Redis {
        engine: Arc<RedisEngine>,
        acks: mpsc::UnboundedSender<AckWrite>,
        flush: FlushRequest,
    },
}

/// Asks the acknowledgement writer to store what it holds now rather than at
/// the end of its flush interval (a connection ended: its client may be
/// reconnecting to another replica). Cheap to clone and to call.
#[derive(Clone, Default)]
pub struct FlushRequest(Arc<Notify>);

impl FlushRequest {
    pub fn request(&self) {
        self.0.notify_one();
    }
}

/// The running acknowledgement writer of a Redis-backed store.
pub struct AckWriter(JoinHandle<()>);

impl AckWriter {
    /// Waits until the writer has stored what it held (one last attempt,
    /// bounded by `--redis-timeout`) once the store's `shutdown`
    /// token is cancelled: acknowledgements made during a drain are not lost
    /// with the exiting process.
    pub async fn finish(self) {
        if let Err(e) = self.0.await {
            tracing::warn!(error = %e, "the AI Council acknowledgement writer failed");
        }
    }
}

#[derive(Default)]
struct Memory {
    owners: HashMap<String, (String, Instant)>,
    acks: HashMap<String, (AckSet, Instant)>,
    connects: HashMap<String, (u64, Instant)>,
    swept: Option<Instant>,
}

struct AckWrite {
    key: String,
    offset: Offset,
}

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

fn acks_key(epoch: &Epoch, channel: &ChannelName, user: &str) -> String {
    format!("council:acks:{epoch}:{channel}:{user}")
}

impl CouncilStore {
    /// Everything in this process (standalone).
    pub fn memory(ttl: Duration) -> Self {
        Self {
            backend: Backend::Memory(Mutex::new(Memory::default())),
            ttl,
        }
    }

    /// Everything in Redis, shared by every replica. Acknowledgements are
    /// written every `flush_interval` (sooner when a connection ends); once
    /// `shutdown` is cancelled the writer stores what it holds and ends
    /// ([`AckWriter::finish`] waits for it).
    pub fn redis(
        engine: Arc<RedisEngine>,
        ttl: Duration,
        flush_interval: Duration,
        shutdown: CancellationToken,
    ) -> (Self, AckWriter) {
        let (tx, rx) = mpsc::unbounded_channel();
        let flush = FlushRequest::default();
        let writer = tokio::spawn(ack_writer(
            engine.clone(),
            rx,
            WriterTiming {
                ttl,
                flush_interval,
            },
            flush.clone(),
            shutdown,
        ));
        let store = Self {
            backend: Backend::Redis {
                engine,
                acks: tx,
                flush,
            },
            ttl,
        };
        (store, AckWriter(writer))
    }

    /// What asks for an early flush of the acknowledgements (none in memory).
    pub fn flush_request(&self) -> Option<FlushRequest> {
        match &self.backend {
            Backend::Memory(_) => None,
            Backend::Redis { flush, .. } => Some(flush.clone()),
        }
    }

    fn memory_lock(memory: &Mutex<Memory>, ttl: Duration) -> MutexGuard<'_, Memory> {
        let mut m = memory.lock().unwrap_or_else(|e| e.into_inner());
        // Expired records go at most once a minute, so a lookup stays cheap.
        if m.swept
            .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
        {
            m.owners.retain(|_, (_, t)| t.elapsed() < ttl);
            m.acks.retain(|_, (_, t)| t.elapsed() < ttl);
            m.connects.retain(|_, (_, t)| t.elapsed() < ttl);
            m.swept = Some(Instant::now());
        }
        m
    }

    /// Whether `identity` may read `channel`: any channel outside the `council`
    /// namespace; a request without an owner; its owner's own; everything for
    /// an administrator.
    pub async fn may_read(
        &self,
        channel: &ChannelName,
        identity: &crate::auth::Identity,
    ) -> Result<bool, EngineError> {
        if channel.namespace() != Some(super::NAMESPACE) || identity.is_admin() {
            return Ok(true);
        }
        Ok(match self.owner(channel).await? {
            None => true,
            Some(owner) => identity.user.as_deref() == Some(owner.as_str()),
        })
    }

    /// Makes `owner` the owner of the request on `channel`, unless another is.
    pub async fn claim(&self, channel: &ChannelName, owner: &str) -> Result<Claim, EngineError> {
        let key = format!("council:owner:{channel}");
        match &self.backend {
            Backend::Memory(memory) => {
                let mut m = Self::memory_lock(memory, self.ttl);
                match m.owners.get_mut(&key) {
                    Some((current, _)) if current != owner => Ok(Claim::Other(current.clone())),
                    Some((_, touched)) => {
                        *touched = Instant::now();
                        Ok(Claim::Same)
                    }
                    None => {
                        m.owners.insert(key, (owner.to_owned(), Instant::now()));
                        Ok(Claim::New)
                    }
                }
            }
            Backend::Redis { engine, .. } => {
                let mut conn = engine.connection(RedisOp::Session).await?;
                let (code, current): (i64, String) = redis::Script::new(CLAIM_SCRIPT)
                    .key(engine.keys().global(&key))
                    .arg(owner)
                    .arg(self.ttl.as_millis() as u64)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                Ok(match code {
                    1 => Claim::New,
                    0 => Claim::Same,
                    _ => Claim::Other(current),
                })
            }
        }
    }

    /// The owner of the request on `channel`, if it has one.
    pub async fn owner(&self, channel: &ChannelName) -> Result<Option<String>, EngineError> {
        let key = format!("council:owner:{channel}");
        match &self.backend {
            Backend::Memory(memory) => Ok(Self::memory_lock(memory, self.ttl)
                .owners
                .get(&key)
                .map(|(o, _)| o.clone())),
            Backend::Redis { engine, .. } => {
                let mut conn = engine.connection(RedisOp::Session).await?;
                redis::cmd("GET")
                    .arg(engine.keys().global(&key))
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)
            }
        }
    }

    /// Counts a connection of `user` to the request; returns how many so far.
    pub async fn connected(&self, channel: &ChannelName, user: &str) -> Result<u64, EngineError> {
        let key = format!("council:connects:{channel}:{user}");
        match &self.backend {
            Backend::Memory(memory) => {
                let mut m = Self::memory_lock(memory, self.ttl);
                let entry = m.connects.entry(key).or_insert((0, Instant::now()));
                entry.0 += 1;
                entry.1 = Instant::now();
                Ok(entry.0)
            }
            Backend::Redis { engine, .. } => {
                let mut conn = engine.connection(RedisOp::Session).await?;
                let key = engine.keys().global(&key);
                let (count, _): (u64, i64) = redis::pipe()
                    .cmd("INCR")
                    .arg(&key)
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(self.ttl.as_millis() as u64)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                Ok(count)
            }
        }
    }

    /// The events of `channel`'s epoch `epoch` that `user` acknowledged.
    pub async fn acked(
        &self,
        channel: &ChannelName,
        epoch: &Epoch,
        user: &str,
    ) -> Result<AckSet, EngineError> {
        let key = acks_key(epoch, channel, user);
        match &self.backend {
            Backend::Memory(memory) => Ok(Self::memory_lock(memory, self.ttl)
                .acks
                .get(&key)
                .map(|(a, _)| a.clone())
                .unwrap_or_default()),
            Backend::Redis { engine, .. } => {
                let mut conn = engine.connection(RedisOp::Session).await?;
                let bits: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(engine.keys().global(&key))
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                Ok(AckSet::from_bitmap(bits.unwrap_or_default()))
            }
        }
    }

    /// Records that `user` acknowledged event `offset` (written within the
    /// flush interval on Redis).
    pub fn ack(&self, channel: &ChannelName, epoch: &Epoch, user: &str, offset: Offset) {
        let key = acks_key(epoch, channel, user);
        match &self.backend {
            Backend::Memory(memory) => {
                let mut m = Self::memory_lock(memory, self.ttl);
                let entry = m
                    .acks
                    .entry(key)
                    .or_insert_with(|| (AckSet::default(), Instant::now()));
                entry.0.insert(offset);
                entry.1 = Instant::now();
            }
            Backend::Redis { engine, acks, .. } => {
                let _ = acks.send(AckWrite {
                    key: engine.keys().global(&key),
                    offset,
                });
            }
        }
    }
}

struct WriterTiming {
    ttl: Duration,
    flush_interval: Duration,
}

async fn ack_writer(
    engine: Arc<RedisEngine>,
    mut writes: mpsc::UnboundedReceiver<AckWrite>,
    timing: WriterTiming,
    flush: FlushRequest,
    shutdown: CancellationToken,
) {
    let ttl = timing.ttl.as_millis() as i64;
    let interval = timing.flush_interval;
    // Writes not yet stored: a pipeline that failed (Redis unreachable, a
    // master failing over) is sent again — SETBIT is idempotent — so an
    // acknowledged event is not replayed because Redis was away for a while.
    let mut pending: Vec<AckWrite> = Vec::new();
    let retry = interval.max(MIN_ACK_RETRY);
    let mut failing_since: Option<Instant> = None;
    loop {
        // Once shut down: one last attempt with everything received, then the
        // process goes.
        let mut last = shutdown.is_cancelled();
        if !last && pending.is_empty() {
            let received = tokio::select! {
                n = writes.recv_many(&mut pending, MAX_WRITES_PER_PIPELINE) => n,
                _ = shutdown.cancelled() => 0,
            };
            // Nothing received: the store is gone or the process is going;
            // anything sent meanwhile is picked up below.
            last = received == 0;
            if !last && pending.len() < MAX_WRITES_PER_PIPELINE {
                // Coalesce for an interval, unless a connection ended (its
                // client may be reading them on another replica soon) or
                // the process is going.
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = flush.0.notified() => {}
                    _ = shutdown.cancelled() => last = true,
                }
            }
        } else if !last {
            // Waiting writes: try again soon, or at once when a connection
            // ends (its client may be about to read them elsewhere).
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = flush.0.notified() => {}
                _ = shutdown.cancelled() => last = true,
            }
        }
        while let Ok(w) = writes.try_recv() {
            pending.push(w);
        }
        if pending.is_empty() {
            if last {
                return;
            }
            continue;
        }
        if pending.len() > MAX_PENDING_WRITES {
            // Bounded while Redis is away: the oldest are dropped, and those
            // events replayed on the client's next connect.
            let dropped = pending.len() - MAX_PENDING_WRITES;
            pending.drain(..dropped);
            tracing::warn!(
                dropped,
                "too many AI Council acknowledgements waiting for Redis; the oldest are dropped and those events will be replayed on the next connect"
            );
        }
        let mut stored = 0;
        let mut failure = None;
        for chunk in pending.chunks(MAX_WRITES_PER_PIPELINE) {
            let mut out = engine.batch();
            let mut keys = std::collections::HashSet::new();
            for write in chunk {
                out.pipe(&write.key)
                    .cmd("SETBIT")
                    .arg(&write.key)
                    .arg(write.offset)
                    .arg(1)
                    .ignore();
                keys.insert(write.key.as_str());
            }
            for key in keys {
                out.pipe(key).pexpire(key, ttl).ignore();
            }
            match engine.run_batch(RedisOp::Session, out).await {
                Ok(()) => stored += chunk.len(),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        pending.drain(..stored);
        match failure {
            None => {
                if let Some(since) = failing_since.take() {
                    tracing::info!(after = ?since.elapsed(), "AI Council acknowledgements stored again");
                }
            }
            Some(e) => {
                if last {
                    tracing::warn!(error = %e, lost = pending.len(), "could not store AI Council acknowledgements before exiting; those events will be replayed on the next connect");
                } else if failing_since.is_none() {
                    failing_since = Some(Instant::now());
                    tracing::warn!(error = %e, pending = pending.len(), "could not store AI Council acknowledgements; retrying until Redis takes them");
                }
            }
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_sets_use_redis_bit_order() {
        let mut a = AckSet::default();
        assert!(a.insert(1) && a.insert(9) && !a.insert(1));
        assert_eq!(a, AckSet::from_bitmap(vec![0b0100_0000, 0b0100_0000]));
        assert!(a.contains(1) && a.contains(9) && !a.contains(2) && !a.contains(900));
        let mut b = AckSet::from_bitmap(vec![0x80]);
        b.extend(&a);
        assert!(b.contains(0) && b.contains(1) && b.contains(9));
    }

    #[tokio::test]
    async fn memory_owners_and_acks() {
        let store = CouncilStore::memory(Duration::from_secs(60));
        let c = ChannelName::parse("council:r1", 64).unwrap();
        assert_eq!(store.owner(&c).await, Ok(None));
        assert_eq!(store.claim(&c, "alice").await, Ok(Claim::New));
        assert_eq!(store.claim(&c, "alice").await, Ok(Claim::Same));
        assert_eq!(
            store.claim(&c, "bob").await,
            Ok(Claim::Other("alice".into()))
        );
        let e = Epoch::new("e1");
        store.ack(&c, &e, "alice", 3);
        assert!(store.acked(&c, &e, "alice").await.unwrap().contains(3));
        assert!(
            !store
                .acked(&c, &Epoch::new("e2"), "alice")
                .await
                .unwrap()
                .contains(3)
        );
        assert!(!store.acked(&c, &e, "bob").await.unwrap().contains(3));
        assert_eq!(store.connected(&c, "alice").await, Ok(1));
        assert_eq!(store.connected(&c, "alice").await, Ok(2));
    }
}
