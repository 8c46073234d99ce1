//! The Redis engine: channels, history and snapshots in Redis (one Redis or a
//! Redis Cluster), shared by every gateway replica.
//!
//! Commands go through [`Commands`](super::connection::Commands): shared
//! multiplexed connections from a `deadpool-redis` pool on one Redis, cluster
//! connections on a cluster (every key of a channel shares its hash tag, so the
//! publish script runs whole on the master owning the channel). On a cluster
//! the publish script uses `SPUBLISH` and the live feed is
//! [`ClusterPubSub`]: sharded pub/sub, one connection per master. On one
//! Redis the live feed is one dedicated pub/sub connection per replica (over
//! TLS for `rediss://`, see [`super::tls`]), owned by the subscriber task below: it holds
//! the set of channels this replica needs, subscribes each once however many
//! clients want it, and after a lost connection reconnects with backoff,
//! subscribes everything again and reports [`EngineEvent::Restored`] so the hub
//! can fill the gap from history. A probe message published to the replica's
//! own probe channel every few seconds detects a connection that is alive but no
//! longer delivering; it is then rebuilt.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::{Script, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::cluster::ClusterPubSub;
use super::connection::{Batch, Commands, ConnectionSettings, RedisTarget};
use super::counted::{Counted, count};
pub use super::feed::parse_payload;
use super::feed::{FeedWriter, Health, SubCommand, unavailable};
use super::keys::Keys;
pub use super::redis_config::{DEFAULT_CLUSTER_REBUILD_AFTER, RedisConfig};
use super::tls::{self, RedisTls, TlsFiles};
use super::{
    Engine, EngineError, EngineEvent, EngineHealth, Entry, Epoch, EventSink, HistoryPage,
    IdempotencyKey, Offset, Position, PublishOptions, Published, Snapshot,
};
use crate::backoff::Backoff;
use crate::channel::ChannelName;
use crate::json::Json;
use crate::metrics::{EngineMetrics, RedisOp};

/// The Redis engine.
pub struct RedisEngine {
    commands: Commands,
    /// `publish` on one Redis, `spublish` on a cluster.
    publish_command: &'static str,
    keys: Keys,
    config: RedisConfig,
    publish_script: Script,
    history_script: Script,
    subscriber: mpsc::Sender<SubCommand>,
    health: Arc<Health>,
    metrics: Arc<EngineMetrics>,
    /// When the last "not replicated in time" warning was logged (Unix ms).
    last_wait_warning: std::sync::atomic::AtomicU64,
}

impl RedisEngine {
    /// Creates the engine and starts its subscriber and health tasks. Does not
    /// wait for Redis: a replica may start first and turn ready when Redis is up.
    pub fn start(
        config: RedisConfig,
        events: impl Into<EventSink>,
        metrics: Arc<EngineMetrics>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, EngineError> {
        let events = events.into();
        let keys = Keys::new(&config.prefix).map_err(|e| EngineError::Protocol(e.to_string()))?;
        let mut config = config;
        if config.tls.is_none() && config.target.is_tls() {
            let defaults = RedisTls::load(&TlsFiles::default())
                .map_err(|e| EngineError::Protocol(e.to_string()))?;
            config.tls = Some(defaults);
        }
        let commands = Commands::new(
            &config.target,
            ConnectionSettings {
                response_timeout: config.response_timeout,
                connect_timeout: config.connect_timeout,
                pool_size: config.pool_size,
            },
            config.tls.as_ref(),
        )?;
        let health = Arc::new(Health::default());
        health.set_detail("connecting to Redis");
        let (tx, rx) = mpsc::channel(1024);
        let feed = Arc::new(FeedWriter {
            events,
            keys: keys.clone(),
            max_channel_len: config.max_channel_len,
            max_json_depth: config.max_json_depth,
            metrics: metrics.clone(),
        });
        let engine = Arc::new(Self {
            commands: commands.clone(),
            publish_command: if commands.is_cluster() {
                "spublish"
            } else {
                "publish"
            },
            keys: keys.clone(),
            publish_script: Script::new(include_str!("publish.lua")),
            history_script: Script::new(include_str!("history.lua")),
            subscriber: tx,
            health: health.clone(),
            metrics: metrics.clone(),
            last_wait_warning: std::sync::atomic::AtomicU64::new(0),
            config: config.clone(),
        });
        match &config.target {
            RedisTarget::Single(url) => {
                let client = tls::client(url, config.tls.as_ref())
                    .map_err(|e| EngineError::Protocol(format!("bad Redis URL: {e}")))?;
                let subscriber = PubSubTask {
                    client,
                    commands,
                    keys,
                    config,
                    feed,
                    requests: rx,
                    health,
                    metrics,
                    wanted: HashSet::new(),
                };
                tokio::spawn(subscriber.run(shutdown.clone()));
            }
            RedisTarget::Cluster(_) => {
                let subscriber = ClusterPubSub::new(commands, config, feed, health, metrics, rx);
                tokio::spawn(subscriber.run(shutdown.clone()));
            }
        }
        tokio::spawn(health_loop(Arc::downgrade(&engine), shutdown));
        Ok(engine)
    }

    /// The key names this engine uses.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A command connection, for the engine and other Redis-backed stores
    /// (sessions, presence, the collector's lease); its failures are counted
    /// under `op`. On a cluster each command goes to the master owning its
    /// key; a pipeline must stay within one slot (see [`RedisEngine::batch`]).
    pub async fn connection(&self, op: RedisOp) -> Result<Counted, EngineError> {
        let conn = self.commands.get().await;
        let conn = conn.map_err(count(&self.metrics, op))?;
        Ok(Counted::new(conn, op, self.metrics.clone()))
    }

    /// Whether the engine runs on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.commands.is_cluster()
    }

    /// An empty batch: commands filed by key, sent as one pipeline per slot.
    pub fn batch(&self) -> Batch {
        self.commands.batch()
    }

    /// Sends a batch (its pipelines concurrently on a cluster); a failure is
    /// counted under `op`.
    pub async fn run_batch(&self, op: RedisOp, batch: Batch) -> Result<(), EngineError> {
        let sent = self.commands.run(batch).await;
        sent.map_err(count(&self.metrics, op))
    }

    /// Publishes on the control channel every replica listens to (sharded
    /// pub/sub on a cluster, like every channel).
    pub async fn publish_control(&self, message: &str) -> Result<(), EngineError> {
        let mut conn = self.connection(RedisOp::Control).await?;
        redis::cmd(self.publish_command)
            .arg(self.keys.control())
            .arg(message)
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    /// Asks each command connection (on a cluster, each of the set used in
    /// turn) for `PING` — a second time when it fails: Redis may have closed
    /// it, and it is replaced — and, on a cluster, to read one key on every
    /// master ([`Health::slot_probes`]): a connection whose slot map is stale
    /// answers `PING` on every master it knows yet fails the commands of the
    /// slots it routes wrong. The first connection that fails says why.
    async fn probe_each(&self) -> Result<(), EngineError> {
        let connections = self
            .commands
            .each()
            .await
            .map_err(count(&self.metrics, RedisOp::Ping))?;
        let probes = self
            .health
            .slot_probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for conn in connections {
            let mut conn = Counted::new(conn, RedisOp::Ping, self.metrics.clone());
            let ping = redis::cmd("PING").query_async::<()>(&mut conn).await;
            if ping.is_err() {
                redis::cmd("PING")
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(unavailable)?;
            }
            for key in &probes {
                redis::cmd("EXISTS")
                    .arg(key)
                    .query_async::<i64>(&mut conn)
                    .await
                    .map_err(|e| unavailable(format!("EXISTS {key}: {e}")))?;
            }
        }
        Ok(())
    }

    /// The publish script followed by `WAIT` on the same connection, in one
    /// round trip: the publish is acknowledged only once `wait_replicas`
    /// replicas have the message. If they do not within `wait_timeout` (no
    /// replica connected, a master that was failed over while it ran the
    /// script), the message may already have been delivered live, but it is
    /// not acknowledged: the producer hears 503 and retries, so nothing it was
    /// told is published can be lost with its master (a retry may publish it
    /// twice).
    async fn publish_and_wait(
        &self,
        conn: &mut Counted,
        channel: &ChannelName,
        data: &Json,
        options: PublishOptions,
    ) -> Result<Value, EngineError> {
        let policy = self.config.history.policy(channel);
        let epoch = Epoch::random();
        let version = options.version.map(|v| v.to_string()).unwrap_or_default();
        let record = self.idempotency(channel, &options);
        let pipeline = |eval: &str, body: &str| {
            let mut pipe = redis::pipe();
            pipe.cmd(eval)
                .arg(body)
                .arg(if record.is_some() { 4 } else { 3 })
                .arg(self.keys.meta(channel))
                .arg(self.keys.history(channel))
                .arg(self.keys.snapshot(channel));
            if let Some((key, _)) = &record {
                pipe.arg(key);
            }
            pipe.arg(self.keys.pubsub(channel))
                .arg(data.as_bytes())
                .arg(policy.size)
                .arg(policy.ttl.as_millis() as u64)
                .arg(epoch.as_str())
                .arg(if options.snapshot { "1" } else { "0" })
                .arg(&version)
                .arg(self.publish_command)
                .arg(policy.position_ttl().as_millis() as u64);
            if let Some((_, window)) = &record {
                pipe.arg(window.as_millis().max(1) as u64);
            }
            pipe.cmd("WAIT")
                .arg(self.config.wait_replicas)
                .arg(self.config.wait_timeout.as_millis() as u64);
            pipe.ignore_errors();
            pipe
        };
        let hash = self.publish_script.get_hash().to_string();
        let (mut script, mut acked) = two_replies(conn, pipeline("EVALSHA", &hash)).await?;
        if matches!(&script, Value::ServerError(e) if e.code() == "NOSCRIPT") {
            // This node has not seen the script yet: EVAL caches it there.
            let pipe = pipeline("EVAL", include_str!("publish.lua"));
            (script, acked) = two_replies(conn, pipe).await?;
        }
        if let Value::ServerError(e) = &script {
            return Err(unavailable(format!("publish script: {e:?}")));
        }
        let acked = integer(&acked).unwrap_or(0);
        if acked < self.config.wait_replicas as i64 {
            self.metrics.redis_errors.inc(RedisOp::Publish);
            let now = crate::time::unix_millis();
            let last = self.last_wait_warning.swap(now, Ordering::Relaxed);
            if now.saturating_sub(last) >= 10_000 {
                tracing::warn!(
                    %channel,
                    acked,
                    wanted = self.config.wait_replicas,
                    timeout = ?self.config.wait_timeout,
                    "publishes are not confirmed by enough Redis replicas in time and are answered 503 (check the replicas of the channel's master, or lower --redis-wait-replicas); repeated failures are counted in switchboard_redis_errors_total"
                );
            }
            return Err(EngineError::Unavailable(format!(
                "published, but only {acked} of {} Redis replicas confirmed it within {:?}: it may be lost if its master fails; a retry may publish it twice",
                self.config.wait_replicas, self.config.wait_timeout
            )));
        }
        Ok(script)
    }

    /// The idempotency record of a publish and how long to keep it: the
    /// producer's key, else — on a Redis Cluster, whose client resends a
    /// command after a connection lost before its reply — a fresh key kept for
    /// `resend_guard`, so a resent script is answered, not applied twice. One
    /// Redis is reached over connections that never resend.
    fn idempotency(
        &self,
        channel: &ChannelName,
        options: &PublishOptions,
    ) -> Option<(String, Duration)> {
        match &options.idempotency {
            Some(given) => Some((self.keys.idempotency(channel, &given.key), given.window)),
            None if self.commands.is_cluster() && !self.config.resend_guard.is_zero() => Some((
                self.keys.idempotency(channel, &IdempotencyKey::random()),
                self.config.resend_guard,
            )),
            None => None,
        }
    }

    async fn subscriber_call(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), EngineError>>) -> SubCommand,
    ) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.subscriber
            .send(make(tx))
            .await
            .map_err(|_| unavailable("the subscriber task has stopped"))?;
        rx.await
            .map_err(|_| unavailable("the subscriber task has stopped"))?
    }
}

/// Interval of the engine's Redis health check (`PING`, on a cluster to every
/// master).
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// Interval of the health check while it fails: a client stuck on a stale
/// slot map is rebuilt within a few seconds, before clients of this replica
/// notice more than a pause (a failed check already took its timeouts).
pub const HEALTH_RETRY: Duration = Duration::from_millis(500);

/// Checks every [`HEALTH_INTERVAL`] that Redis answers commands (readiness).
///
/// On a Redis Cluster it also heals the command client: the `redis` crate's
/// cluster connection can stay on a stale view of the cluster after a master
/// died (its slot map is refreshed only on some errors, and never on those of
/// requests whose caller already gave up at the response timeout, nor on a
/// failed `PING` to every master), and then fails the commands it routes
/// wrong — all of them, or (one connection of the set stuck, a demoted master
/// that answers `PING` as a replica) only some slots'. After
/// `cluster_rebuild_after` consecutive failed checks, if a seed node answers
/// `cluster_state:ok` on a new connection (the cluster serves: the fault is
/// this client's), the command connections are rebuilt from the seeds.
async fn health_loop(engine: std::sync::Weak<RedisEngine>, shutdown: CancellationToken) {
    let mut failed: u32 = 0;
    let node_settings = engine.upgrade().and_then(|e| {
        e.is_cluster()
            .then(|| super::cluster::node_settings(&e.config, &e.keys))
    });
    loop {
        let Some(e) = engine.upgrade() else { return };
        // Every connection is asked: on a cluster one of the set can be stuck
        // on a stale slot map while the others answer, and the commands that
        // draw it fail (a history read, a session write) until it is rebuilt.
        let result = e.probe_each().await;
        if let Err(err) = &result {
            *e.health
                .command_error
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = err.to_string();
        }
        e.health
            .commands_ok
            .store(result.is_ok(), Ordering::Relaxed);
        failed = match &result {
            Ok(()) => 0,
            Err(_) => failed.saturating_add(1),
        };
        let threshold = e.config.cluster_rebuild_after;
        if let (Err(err), Some(settings)) = (&result, &node_settings)
            && threshold > 0
            && failed >= threshold
        {
            match super::cluster::cluster_serves(&e.config.target, settings).await {
                Ok(seed) => {
                    tracing::warn!(
                        failed_checks = failed,
                        error = %err,
                        seed = %seed,
                        "Redis Cluster commands keep failing although the cluster answers (cluster_state:ok): rebuilding the cluster command connections from the seed nodes; if this repeats, check the cluster's failovers (CLUSTER NODES), the network between this replica and each master, and --redis-timeout; counted in switchboard_redis_client_rebuilds_total"
                    );
                    e.commands.rebuild();
                    e.metrics.redis_client_rebuilds.inc();
                    failed = 0;
                }
                // Said once per run of failures (at the threshold), then at
                // debug: the cluster's own failover is what to wait for.
                Err(why) if failed == threshold => tracing::warn!(
                    failed_checks = failed,
                    error = %err,
                    reason = %why,
                    "Redis Cluster commands fail and the cluster does not say it is ok (cluster_state): not rebuilding the command connections while it fails over"
                ),
                Err(why) => tracing::debug!(
                    failed_checks = failed,
                    reason = %why,
                    "Redis Cluster commands fail and the cluster does not say it is ok: not rebuilding the command connections"
                ),
            }
        }
        drop(e);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(if failed > 0 { HEALTH_RETRY } else { HEALTH_INTERVAL }) => {}
        }
    }
}

#[async_trait]
impl Engine for RedisEngine {
    async fn publish(
        &self,
        channel: &ChannelName,
        data: &Json,
        options: PublishOptions,
    ) -> Result<Published, EngineError> {
        let policy = self.config.history.policy(channel);
        let mut conn = self.connection(RedisOp::Publish).await?;
        if self.config.wait_replicas > 0 {
            let reply = self
                .publish_and_wait(&mut conn, channel, data, options)
                .await?;
            return published(reply);
        }
        let record = self.idempotency(channel, &options);
        let mut invocation = self.publish_script.prepare_invoke();
        invocation
            .key(self.keys.meta(channel))
            .key(self.keys.history(channel))
            .key(self.keys.snapshot(channel));
        if let Some((key, _)) = &record {
            invocation.key(key);
        }
        invocation
            .arg(self.keys.pubsub(channel))
            .arg(data.as_bytes())
            .arg(policy.size)
            .arg(policy.ttl.as_millis() as u64)
            .arg(Epoch::random().as_str())
            .arg(if options.snapshot { "1" } else { "0" })
            .arg(options.version.map(|v| v.to_string()).unwrap_or_default())
            .arg(self.publish_command)
            .arg(policy.position_ttl().as_millis() as u64);
        if let Some((_, window)) = &record {
            invocation.arg(window.as_millis().max(1) as u64);
        }
        let reply: Value = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        published(reply)
    }

    async fn history(
        &self,
        channel: &ChannelName,
        after: Offset,
        limit: usize,
    ) -> Result<HistoryPage, EngineError> {
        let policy = self.config.history.policy(channel);
        let mut conn = self.connection(RedisOp::History).await?;
        let reply: Value = self
            .history_script
            .key(self.keys.meta(channel))
            .key(self.keys.history(channel))
            .arg(after)
            .arg(limit)
            .arg(Epoch::random().as_str())
            .arg(policy.position_ttl().as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut items = array(reply)?.into_iter();
        let (Some(epoch), Some(top), Some(entries)) = (items.next(), items.next(), items.next())
        else {
            return Err(EngineError::Protocol("history script reply".into()));
        };
        let position = Position {
            epoch: Epoch::new(&text(&epoch)?),
            offset: integer(&top)?.max(0) as Offset,
        };
        let entries = array(entries)?
            .into_iter()
            .map(|e| parse_entry(e, self.config.max_json_depth))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HistoryPage::new(position, after, entries))
    }

    async fn snapshot(&self, channel: &ChannelName) -> Result<Option<Snapshot>, EngineError> {
        let mut conn = self.connection(RedisOp::Snapshot).await?;
        let fields: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(self.keys.snapshot(channel))
            .arg(&["o", "e", "d", "v"])
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let [Some(o), Some(e), Some(d), v] = <[Option<Vec<u8>>; 4]>::try_from(fields)
            .map_err(|_| EngineError::Protocol("HMGET reply".into()))?
        else {
            return Ok(None);
        };
        let parse_num = |b: &[u8]| {
            std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
        };
        Ok(Some(Snapshot {
            offset: parse_num(&o).ok_or_else(|| EngineError::Protocol("snapshot offset".into()))?,
            epoch: Epoch::new(&String::from_utf8_lossy(&e)),
            data: Json::parse(Bytes::from(d), self.config.max_json_depth)
                .map_err(|e| EngineError::Protocol(format!("stored snapshot: {e}")))?,
            version: v.as_deref().and_then(parse_num),
        }))
    }

    async fn subscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
        let channels = channels.to_vec();
        self.subscriber_call(|tx| SubCommand::Subscribe(channels, tx))
            .await
    }

    async fn unsubscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
        let channels = channels.to_vec();
        self.subscriber_call(|tx| SubCommand::Unsubscribe(channels, tx))
            .await
    }

    fn health(&self) -> EngineHealth {
        let feed = self.health.feed_up.load(Ordering::Relaxed);
        let commands = self.health.commands_ok.load(Ordering::Relaxed);
        let lock = |m: &'_ Mutex<String>| m.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let feed_detail = lock(&self.health.detail);
        let detail = if commands {
            feed_detail
        } else {
            let error = lock(&self.health.command_error);
            let mut detail = "Redis does not answer commands".to_string();
            if !error.is_empty() {
                detail = format!("{detail}: {error}");
            }
            // Both are down: the feed's reason may say more (the cluster's
            // seed check, the pub/sub connection's error).
            if !feed && !feed_detail.is_empty() {
                detail = format!("{detail}; {feed_detail}");
            }
            detail
        };
        EngineHealth {
            ready: feed && commands,
            detail,
        }
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// Runs a pipeline of two commands; their replies, errors included.
async fn two_replies(
    conn: &mut Counted,
    pipe: redis::Pipeline,
) -> Result<(Value, Value), EngineError> {
    let replies: Vec<Value> = pipe.query_async(conn).await.map_err(unavailable)?;
    let mut replies = replies.into_iter();
    match (replies.next(), replies.next()) {
        (Some(first), Some(second)) => Ok((first, second)),
        _ => Err(EngineError::Protocol("pipeline reply".into())),
    }
}

/// The publish script's reply: `{offset, epoch}` or `{-1, stored version}`.
fn published(reply: Value) -> Result<Published, EngineError> {
    let items = array(reply)?;
    let first = items.first().map(integer).transpose()?;
    match (first, items.get(1)) {
        (Some(-1), Some(current)) => Err(EngineError::StaleVersion {
            current: text(current)?.parse().unwrap_or(0),
        }),
        (Some(offset), Some(epoch)) if offset > 0 => Ok(Published {
            offset: offset as Offset,
            epoch: Epoch::new(&text(epoch)?),
        }),
        _ => Err(EngineError::Protocol("publish script reply".into())),
    }
}

fn array(v: Value) -> Result<Vec<Value>, EngineError> {
    match v {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(EngineError::Protocol(format!(
            "expected an array, got {other:?}"
        ))),
    }
}

fn integer(v: &Value) -> Result<i64, EngineError> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| EngineError::Protocol("expected an integer".into())),
        other => Err(EngineError::Protocol(format!(
            "expected an integer, got {other:?}"
        ))),
    }
}

fn text(v: &Value) -> Result<String, EngineError> {
    match v {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(EngineError::Protocol(format!(
            "expected a string, got {other:?}"
        ))),
    }
}

/// One XRANGE item: `[id, [field, value, …]]` with id `<offset>-0`.
fn parse_entry(v: Value, max_depth: usize) -> Result<Entry, EngineError> {
    let bad = || EngineError::Protocol("history entry".into());
    let mut parts = array(v)?.into_iter();
    let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
        return Err(bad());
    };
    let id = text(&id)?;
    let offset = id
        .split_once('-')
        .and_then(|(o, _)| o.parse().ok())
        .ok_or_else(bad)?;
    let mut data = None;
    let mut published_us = 0;
    let mut fields = array(fields)?.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        match (text(&name)?.as_str(), value) {
            ("d", Value::BulkString(b)) => data = Some(b),
            ("t", v) => published_us = text(&v)?.parse().unwrap_or(0),
            _ => {}
        }
    }
    let data = Json::parse(Bytes::from(data.ok_or_else(bad)?), max_depth)
        .map_err(|e| EngineError::Protocol(format!("history entry {offset}: {e}")))?;
    Ok(Entry {
        offset,
        data,
        published_us,
    })
}

/// Owns the pub/sub connection to one Redis; see the module documentation.
struct PubSubTask {
    client: redis::Client,
    commands: Commands,
    keys: Keys,
    config: RedisConfig,
    feed: Arc<FeedWriter>,
    requests: mpsc::Receiver<SubCommand>,
    health: Arc<Health>,
    metrics: Arc<EngineMetrics>,
    /// Channels this replica needs, kept across reconnects.
    wanted: HashSet<ChannelName>,
}

/// Why a pub/sub connection's life ended.
/// Why a (un)subscription on the pub/sub connection failed: the connection
/// is then replaced.
#[derive(Debug, thiserror::Error)]
enum SubscriptionError {
    #[error("{0}")]
    Redis(redis::RedisError),
    #[error("{0} timed out")]
    TimedOut(&'static str),
}

enum ConnectionEnd {
    Shutdown,
    /// The connection failed; `established` if it had been subscribed first.
    Lost {
        why: String,
        established: bool,
    },
}

fn lost(why: impl Into<String>) -> ConnectionEnd {
    ConnectionEnd::Lost {
        why: why.into(),
        established: false,
    }
}

impl PubSubTask {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut was_up = false;
        loop {
            match self.serve_connection(&shutdown, &mut was_up).await {
                ConnectionEnd::Shutdown => return,
                ConnectionEnd::Lost { why, established } => {
                    if established {
                        backoff.reset();
                    }
                    self.health.feed_up.store(false, Ordering::Relaxed);
                    self.health.set_detail(format!("Redis pub/sub: {why}"));
                    // A loss is reported (and counted) once; the attempts to
                    // reconnect that fail after it are errors, not more losses.
                    if established {
                        tracing::warn!(reason = %why, "Redis pub/sub connection lost; reconnecting");
                        self.metrics.redis_reconnects.inc();
                        if !self.feed.send(EngineEvent::Lost).await {
                            return;
                        }
                    } else if was_up {
                        tracing::warn!(reason = %why, "Redis pub/sub still unavailable; retrying");
                    } else {
                        tracing::warn!(reason = %why, "Redis pub/sub not available; retrying");
                    }
                    self.metrics.redis_errors.inc(RedisOp::PubSub);
                }
            }
            let delay = backoff.next_delay();
            let until = tokio::time::Instant::now() + delay;
            // Keep answering (un)subscribe requests while waiting to reconnect.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(until) => break,
                    cmd = self.requests.recv() => match cmd {
                        None => return,
                        Some(cmd) => self.answer_offline(cmd),
                    },
                }
            }
        }
    }

    fn answer_offline(&mut self, cmd: SubCommand) {
        match cmd {
            SubCommand::Subscribe(channels, reply) => {
                self.wanted.extend(channels);
                let _ = reply.send(Err(unavailable("Redis pub/sub is reconnecting")));
            }
            SubCommand::Unsubscribe(channels, reply) => {
                for c in &channels {
                    self.wanted.remove(c);
                }
                let _ = reply.send(Ok(()));
            }
        }
    }

    async fn serve_connection(
        &mut self,
        shutdown: &CancellationToken,
        was_up: &mut bool,
    ) -> ConnectionEnd {
        let connect =
            tokio::time::timeout(self.config.connect_timeout, self.client.get_async_pubsub());
        let pubsub = tokio::select! {
            _ = shutdown.cancelled() => return ConnectionEnd::Shutdown,
            r = connect => match r {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return lost(tls::explain(e)),
                Err(_) => return lost("connect timed out"),
            },
        };
        let (mut sink, mut stream) = pubsub.split();
        let probe = self.keys.probe(&self.config.replica_id);
        let control = self.keys.control();
        let mut names: Vec<String> = self.wanted.iter().map(|c| self.keys.pubsub(c)).collect();
        names.push(probe.clone());
        names.push(control.clone());
        for chunk in names.chunks(512) {
            let sub = tokio::time::timeout(self.config.response_timeout * 4, sink.subscribe(chunk));
            match sub.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return lost(e.to_string()),
                Err(_) => return lost("SUBSCRIBE timed out"),
            }
        }
        self.health.feed_up.store(true, Ordering::Relaxed);
        self.health
            .set_detail("Redis reachable, subscriptions live");
        if *was_up {
            tracing::info!(
                channels = self.wanted.len(),
                "Redis pub/sub restored; resubscribed"
            );
            if !self.feed.send(EngineEvent::Restored).await {
                return ConnectionEnd::Shutdown;
            }
        } else {
            tracing::info!(channels = self.wanted.len(), "Redis pub/sub connected");
        }
        *was_up = true;

        let mut probe_timer = tokio::time::interval(self.config.probe_interval);
        probe_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_probe_seen = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return ConnectionEnd::Shutdown,
                cmd = self.requests.recv() => {
                    let Some(cmd) = cmd else { return ConnectionEnd::Shutdown };
                    if let Err(e) = self.apply(&mut sink, cmd).await {
                        return ConnectionEnd::Lost { why: e.to_string(), established: true };
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        return ConnectionEnd::Lost { why: "connection closed".into(), established: true };
                    };
                    if msg.get_channel_name() == probe {
                        last_probe_seen = Instant::now();
                        continue;
                    }
                    if msg.get_channel_name() == control {
                        if let Ok(value) = serde_json::from_slice(msg.get_payload_bytes())
                            && !self.feed.send(EngineEvent::Control(value)).await
                        {
                            return ConnectionEnd::Shutdown;
                        }
                        continue;
                    }
                    let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                    if let Some(event) = self.feed.decode(msg.get_channel_name(), &payload)
                        && !self.feed.send(event).await
                    {
                        return ConnectionEnd::Shutdown;
                    }
                }
                _ = probe_timer.tick() => {
                    if last_probe_seen.elapsed() > self.config.probe_interval * 3 {
                        return ConnectionEnd::Lost {
                            why: "probe messages stopped arriving".into(),
                            established: true,
                        };
                    }
                    self.send_probe(&probe).await;
                }
            }
        }
    }

    async fn send_probe(&self, probe: &str) {
        let Ok(mut conn) = self.commands.get().await else {
            return;
        };
        let _: Result<(), _> = redis::cmd("PUBLISH")
            .arg(probe)
            .arg("probe")
            .query_async(&mut conn)
            .await;
    }

    async fn apply(
        &mut self,
        sink: &mut redis::aio::PubSubSink,
        cmd: SubCommand,
    ) -> Result<(), SubscriptionError> {
        let timeout = self.config.response_timeout * 4;
        match cmd {
            SubCommand::Subscribe(channels, reply) => {
                let names: Vec<String> = channels.iter().map(|c| self.keys.pubsub(c)).collect();
                self.wanted.extend(channels);
                match tokio::time::timeout(timeout, sink.subscribe(&names)).await {
                    Ok(Ok(())) => {
                        let _ = reply.send(Ok(()));
                        Ok(())
                    }
                    Ok(Err(e)) => {
                        let _ = reply.send(Err(unavailable(&e)));
                        Err(SubscriptionError::Redis(e))
                    }
                    Err(_) => {
                        let e = SubscriptionError::TimedOut("SUBSCRIBE");
                        let _ = reply.send(Err(unavailable(&e)));
                        Err(e)
                    }
                }
            }
            SubCommand::Unsubscribe(channels, reply) => {
                let names: Vec<String> = channels.iter().map(|c| self.keys.pubsub(c)).collect();
                for c in &channels {
                    self.wanted.remove(c);
                }
                let result = tokio::time::timeout(timeout, sink.unsubscribe(&names)).await;
                let _ = reply.send(Ok(()));
                match result {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(SubscriptionError::Redis(e)),
                    Err(_) => Err(SubscriptionError::TimedOut("UNSUBSCRIBE")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_envelope_and_plain_messages() {
        let (seq, data) = parse_payload(b"sb1:42:abc:1700000000000000:{\"x\":\"a:b\"}");
        assert_eq!(seq, Some((42, Epoch::new("abc"), 1_700_000_000_000_000)));
        assert_eq!(data, b"{\"x\":\"a:b\"}");
        let (seq, data) = parse_payload(b"{\"plain\":true}");
        assert_eq!(seq, None);
        assert_eq!(data, b"{\"plain\":true}");
        let (seq, _) = parse_payload(b"sb1:notanumber:e:1:{}");
        assert_eq!(seq, None);
    }
}
