//! Leadership among collector replicas: a lease in Redis.
//!
//! Any number of collectors may run; the one holding the lease publishes. A
//! follower tries `SET key token NX PX ttl`, in a script that answers a refusal
//! with the lease's remaining time (`PTTL`); it tries again the moment that
//! time runs out, or after a renew interval if that comes first (the leader
//! may renew meanwhile). The leader extends its lease with a compare-and-set
//! script (only if the key still holds its own token) and deletes it the same
//! way on shutdown, so a follower takes over within a renew interval after a
//! clean stop, and right when the TTL runs out after a crash.
//!
//! The leader treats itself as leader only until 90 % of the TTL after it *sent*
//! its last successful renewal, so it stops before Redis can hand the lease to
//! another. What is left — a leader paused between its check and its write — is
//! fenced by the snapshot version: the engine refuses a snapshot whose version
//! is not newer than the stored one, and a new leader continues from the stored
//! version.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::CollectorMetrics;
use crate::engine::EngineError;
use crate::engine::redis::RedisEngine;
use crate::metrics::RedisOp;

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The lease key (full name, prefix included).
    pub key: String,
    /// How long a lease lasts without renewal.
    pub ttl: Duration,
    /// How often the leader renews and a follower tries to acquire.
    pub renew_interval: Duration,
    /// This collector's name, stored in the key (with a random suffix).
    pub holder: String,
}

/// Whether this collector may publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderState {
    pub leading: bool,
    /// Leadership ends here unless renewed (`None`: no lease, always leader).
    pub until: Option<Instant>,
}

impl LeaderState {
    /// The state of a collector without a lease (the in-memory engine).
    pub fn always() -> Self {
        Self {
            leading: true,
            until: None,
        }
    }

    pub fn follower() -> Self {
        Self {
            leading: false,
            until: None,
        }
    }

    /// Whether this collector may publish now.
    pub fn may_publish(&self, now: Instant) -> bool {
        self.leading && self.until.is_none_or(|u| now < u)
    }
}

/// `{1, 0}`: acquired; `{0, PTTL}`: held by another (`PTTL` -1: no expiry).
const ACQUIRE: &str = "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then \
                       return {1, 0} else return {0, redis.call('PTTL', KEYS[1])} end";
const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                     return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                       return redis.call('DEL', KEYS[1]) else return 0 end";

/// A follower retries this long after the lease it saw should have expired
/// (Redis expires a key at its deadline to the millisecond; this covers the
/// rounding of `PTTL`).
const EXPIRY_MARGIN: Duration = Duration::from_millis(5);

/// The answer to an attempt to take the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acquire {
    Acquired,
    /// Another collector holds it; it expires in this long unless renewed
    /// (`None`: the key has no expiry, so only a renew interval is known).
    Held(Option<Duration>),
}

/// A lease contender.
pub struct Lease {
    engine: Arc<RedisEngine>,
    config: LeaseConfig,
    token: String,
    acquire: Script,
    renew: Script,
    release: Script,
}

impl Lease {
    pub fn new(engine: Arc<RedisEngine>, config: LeaseConfig) -> Self {
        let token = format!("{}:{}", config.holder, crate::engine::Epoch::random());
        Self {
            engine,
            config,
            token,
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
        }
    }

    /// Runs the lease loop until `stop`, then releases the lease. The receiver
    /// changes whenever leadership is gained or lost.
    pub fn spawn(
        self,
        metrics: Arc<CollectorMetrics>,
        stop: CancellationToken,
    ) -> (watch::Receiver<LeaderState>, JoinHandle<()>) {
        let (tx, rx) = watch::channel(LeaderState::follower());
        let task = tokio::spawn(self.run(tx, metrics, stop));
        (rx, task)
    }

    async fn run(
        self,
        tx: watch::Sender<LeaderState>,
        metrics: Arc<CollectorMetrics>,
        stop: CancellationToken,
    ) {
        let key = self.config.key.as_str();
        tracing::info!(key, holder = %self.token, ttl = ?self.config.ttl, "collector lease: contending");
        let mut state = LeaderState::follower();
        let mut erroring = false;
        loop {
            let sent = Instant::now();
            // When the lease held by another runs out, if it is not renewed.
            let mut expires_in = None;
            let attempt = if state.leading {
                self.try_renew().await
            } else {
                self.try_acquire().await.map(|answer| match answer {
                    Acquire::Acquired => true,
                    Acquire::Held(remaining) => {
                        expires_in = remaining;
                        false
                    }
                })
            };
            let until = sent + self.config.ttl.mul_f64(0.9);
            match attempt {
                Ok(true) => {
                    if !state.leading {
                        tracing::info!(key, holder = %self.token, "collector lease acquired: this collector leads");
                        metrics.lease_changes.with_label_values(&["acquired"]).inc();
                    }
                    erroring = false;
                    state = LeaderState {
                        leading: true,
                        until: Some(until),
                    };
                }
                Ok(false) => {
                    if state.leading {
                        tracing::warn!(key, "collector lease lost to another collector: following");
                        metrics.lease_changes.with_label_values(&["lost"]).inc();
                    }
                    erroring = false;
                    state = LeaderState::follower();
                }
                Err(e) => {
                    if !erroring {
                        tracing::warn!(key, error = %e, "collector lease: Redis unavailable; retrying");
                        erroring = true;
                    }
                    if state.leading && !state.may_publish(Instant::now()) {
                        tracing::warn!(key, "collector lease expired without renewal: following");
                        metrics.lease_changes.with_label_values(&["lost"]).inc();
                        state = LeaderState::follower();
                    }
                }
            }
            metrics.leader.set(i64::from(state.leading));
            tx.send_if_modified(|current| {
                let changed = current.leading != state.leading;
                *current = state;
                changed
            });
            // A leader whose renewals fail must notice its expiry on time; a
            // follower tries again right when the lease it saw runs out.
            let wait = match state.until {
                Some(u) if state.leading => self
                    .config
                    .renew_interval
                    .min(u.saturating_duration_since(Instant::now()))
                    .max(Duration::from_millis(50)),
                _ => match expires_in {
                    Some(remaining) => {
                        let at = sent + remaining + EXPIRY_MARGIN;
                        self.config
                            .renew_interval
                            .min(at.saturating_duration_since(Instant::now()))
                    }
                    None => self.config.renew_interval,
                },
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        tx.send_replace(LeaderState::follower());
        metrics.leader.set(0);
        if state.leading {
            match self.try_release().await {
                Ok(()) => {
                    tracing::info!(key, "collector lease released");
                    metrics.lease_changes.with_label_values(&["released"]).inc();
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "could not release the collector lease; it expires by itself")
                }
            }
        }
    }

    async fn try_acquire(&self) -> Result<Acquire, LeaseError> {
        let mut conn = self.engine.connection(RedisOp::Lease).await?;
        let (acquired, pttl): (i64, i64) = self
            .acquire
            .key(&self.config.key)
            .arg(&self.token)
            .arg(self.config.ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(acquire_answer(acquired, pttl))
    }

    async fn try_renew(&self) -> Result<bool, LeaseError> {
        let mut conn = self.engine.connection(RedisOp::Lease).await?;
        let renewed: i64 = self
            .renew
            .key(&self.config.key)
            .arg(&self.token)
            .arg(self.config.ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }

    async fn try_release(&self) -> Result<(), LeaseError> {
        let mut conn = self.engine.connection(RedisOp::Lease).await?;
        let _: i64 = self
            .release
            .key(&self.config.key)
            .arg(&self.token)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}

/// Why the lease could not be acquired, renewed or released this time.
#[derive(Debug, thiserror::Error)]
enum LeaseError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("lease script: {0}")]
    Script(#[from] redis::RedisError),
}

/// The acquire script's reply `{acquired, PTTL}`.
fn acquire_answer(acquired: i64, pttl: i64) -> Acquire {
    match (acquired, pttl) {
        (1, _) => Acquire::Acquired,
        // No expiry: only a renew interval can tell.
        (_, -1) => Acquire::Held(None),
        // -2: gone meanwhile (cannot happen inside the script): retry at once.
        (_, ms) => Acquire::Held(Some(Duration::from_millis(ms.max(0) as u64))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquire_replies() {
        assert_eq!(acquire_answer(1, 0), Acquire::Acquired);
        assert_eq!(
            acquire_answer(0, 1500),
            Acquire::Held(Some(Duration::from_millis(1500)))
        );
        assert_eq!(acquire_answer(0, -1), Acquire::Held(None));
        assert_eq!(acquire_answer(0, -2), Acquire::Held(Some(Duration::ZERO)));
    }

    #[tokio::test]
    async fn leadership_is_valid_until_its_deadline() {
        let now = Instant::now();
        assert!(LeaderState::always().may_publish(now));
        assert!(!LeaderState::follower().may_publish(now));
        let lead = LeaderState {
            leading: true,
            until: Some(now + Duration::from_secs(1)),
        };
        assert!(lead.may_publish(now));
        assert!(!lead.may_publish(now + Duration::from_secs(2)));
    }
}
