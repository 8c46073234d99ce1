//! Where Redis is and how commands reach it: one Redis or a Redis Cluster.
//!
//! [`RedisTarget`] is what the flags name: `--redis-url redis://…` for one
//! Redis, `--redis-cluster-urls` (or a `redis+cluster://host:port,host:port`
//! URL) for a cluster; `rediss://` and `rediss+cluster://` for the same over
//! TLS (see [`super::tls`]). [`Commands`] hands out [`RedisConnection`]s — a shared
//! multiplexed connection to the one Redis ([`SingleConnections`]), or a cluster
//! connection that routes each command to the master owning its key's slot
//! (following `MOVED`/`ASK` and refreshing its slot map). Both implement
//! `redis::aio::ConnectionLike`, so the engine, sessions, presence and the
//! collector's lease issue the same commands either way.
//!
//! A pipeline on a cluster must only touch keys of one slot: [`Batch`] groups
//! commands by the slot of the key they are filed under (one group on a single
//! Redis, so nothing changes there) and runs the groups concurrently.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_redis::{Pool, Runtime};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, ConnectionAddr, IntoConnectionInfo, RedisFuture, Value};

use super::EngineError;
use super::keys::slot;
use super::tls::{self, RedisTls};

/// Which Redis the engine uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis: `redis[s]://[user:password@]host:port[/db]`.
    Single(String),
    /// A Redis Cluster, named by some of its nodes (`redis[s]://[user:password@]host:port`
    /// each, all with the same scheme; the others are discovered).
    Cluster(Vec<String>),
}

/// Why the Redis flags do not name a usable Redis.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("give either --redis-url or --redis-cluster-urls, not both")]
    Both,
    #[error(
        "no Redis configured: pass --redis-url redis://host:6379 (one Redis) or --redis-cluster-urls redis://host1:6379,redis://host2:6379 (a Redis Cluster); rediss:// for TLS"
    )]
    Missing,
    #[error("bad Redis URL {url:?}: {why}")]
    BadUrl { url: String, why: String },
    #[error(
        "Redis URL {0:?}: certificate checks cannot be turned off (#insecure); give --redis-ca-file with the CA that signed the server's certificate instead"
    )]
    Insecure(String),
    #[error(
        "Redis Cluster nodes {0}: either all rediss:// (TLS) or all redis://, the cluster's nodes are reached the same way"
    )]
    MixedTls(String),
    #[error("Redis Cluster URL {0:?}: a cluster has only database 0; remove the /<db> part")]
    Database(String),
}

impl RedisTarget {
    /// The target the flags describe: `--redis-url` (which may itself be a
    /// `redis+cluster://` URL) or `--redis-cluster-urls`, exactly one.
    pub fn from_flags(url: Option<&str>, cluster_urls: &[String]) -> Result<Self, TargetError> {
        let cluster_urls: Vec<&str> = cluster_urls
            .iter()
            .map(|u| u.trim())
            .filter(|u| !u.is_empty())
            .collect();
        match (url.map(str::trim).filter(|u| !u.is_empty()), cluster_urls) {
            (Some(_), c) if !c.is_empty() => Err(TargetError::Both),
            (None, c) if c.is_empty() => Err(TargetError::Missing),
            (Some(url), _) => Self::from_url(url),
            (None, c) => {
                let mut nodes = Vec::new();
                for u in c {
                    match Self::from_url(u)? {
                        Self::Cluster(more) => nodes.extend(more),
                        Self::Single(one) => nodes.push(check_node(&one)?),
                    }
                }
                let tls = nodes.iter().filter(|n| tls::is_tls_url(n)).count();
                if tls != 0 && tls != nodes.len() {
                    return Err(TargetError::MixedTls(
                        nodes
                            .iter()
                            .map(|n| redact(n))
                            .collect::<Vec<_>>()
                            .join(","),
                    ));
                }
                Ok(Self::Cluster(nodes))
            }
        }
    }

    /// Parses one URL: `redis://…` (`rediss://…`) is one Redis,
    /// `redis+cluster://[user:password@]host:port[,host:port…]`
    /// (`rediss+cluster://…`) a cluster.
    pub fn from_url(url: &str) -> Result<Self, TargetError> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
            ("redis", rest)
        } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
            ("rediss", rest)
        } else {
            check_url(url)?;
            return Ok(Self::Single(url.to_string()));
        };
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((auth, hosts)) => (format!("{auth}@"), hosts),
            None => (String::new(), rest),
        };
        let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
        let nodes = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| check_node(&format!("{scheme}://{auth}{h}")))
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(TargetError::BadUrl {
                url: redact(url),
                why: format!("no host:port after {scheme}+cluster://"),
            });
        }
        Ok(Self::Cluster(nodes))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Whether connections use TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        match self {
            Self::Single(url) => tls::is_tls_url(url),
            Self::Cluster(nodes) => nodes.iter().any(|n| tls::is_tls_url(n)),
        }
    }

    /// The URLs, for [`RedisTls::for_urls`].
    pub fn urls(&self) -> Vec<&str> {
        match self {
            Self::Single(url) => vec![url.as_str()],
            Self::Cluster(nodes) => nodes.iter().map(String::as_str).collect(),
        }
    }

    /// For logs: the URLs with any password replaced by `***`.
    pub fn describe(&self) -> String {
        match self {
            Self::Single(url) => redact(url),
            Self::Cluster(nodes) => format!(
                "Redis Cluster via {}",
                nodes
                    .iter()
                    .map(|n| redact(n))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

fn check_url(url: &str) -> Result<redis::ConnectionInfo, TargetError> {
    let info = url
        .into_connection_info()
        .map_err(|e| TargetError::BadUrl {
            url: redact(url),
            why: e.to_string(),
        })?;
    if matches!(info.addr(), ConnectionAddr::TcpTls { insecure: true, .. }) {
        return Err(TargetError::Insecure(redact(url)));
    }
    Ok(info)
}

fn check_node(url: &str) -> Result<String, TargetError> {
    let info = check_url(url)?;
    if info.redis_settings().db() != 0 {
        return Err(TargetError::Database(redact(url)));
    }
    if !matches!(
        info.addr(),
        ConnectionAddr::Tcp(..) | ConnectionAddr::TcpTls { .. }
    ) {
        return Err(TargetError::BadUrl {
            url: redact(url),
            why: "a cluster node must be host:port".into(),
        });
    }
    Ok(url.to_string())
}

/// The URL with its password (if any) replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((auth, hosts)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{hosts}"),
            None => format!("{scheme}://***@{hosts}"),
        },
        None => url.to_string(),
    }
}

/// Timeouts and sizes of command connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
    pub pool_size: usize,
}

/// Hands out command connections; cheap to clone.
#[derive(Clone)]
pub enum Commands {
    Single(Arc<SingleConnections>),
    Cluster(Arc<ClusterConnections>),
}

/// Command connections to one Redis: `pool_size` multiplexed connections,
/// each shared by every command sent while it is in use.
///
/// `deadpool-redis` creates them (within the connect timeout) and bounds their
/// number; once created, a connection stays checked out in its slot and each
/// command takes a clone of it in turn (a multiplexed connection is a handle:
/// the commands of many tasks are pipelined on its socket). Checking a
/// connection out per command would cost what deadpool-redis's recycle sends at
/// every checkout — `UNWATCH` and `PING`, a round trip and two commands per
/// publish — and would allow only `pool_size` commands in flight. Nothing is
/// sent to check a connection instead: one whose command failed with an I/O
/// error (reset, timed out) or a protocol error is marked broken, and the next
/// command on its slot has the pool open a new one. A connection found closed
/// (Redis restarted, or closed it) marks every connection opened until then
/// stale, so that one failed command, not one per connection, finds out.
pub struct SingleConnections {
    pool: Pool,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    /// Connections of an earlier generation than this are stale.
    generation: Arc<AtomicU64>,
}

#[derive(Default)]
struct Slot {
    held: Mutex<Option<Held>>,
    /// One replacement at a time per slot; when the last one failed, and why.
    refill: tokio::sync::Mutex<Option<(Instant, String)>>,
}

/// A connection kept out of the pool (so it counts in the pool's size and is
/// never recycled), and whether a command saw it fail.
struct Held {
    object: deadpool_redis::Connection,
    broken: Arc<AtomicBool>,
    generation: u64,
}

impl Held {
    fn share(&self, current: &Arc<AtomicU64>) -> SharedConnection {
        SharedConnection {
            conn: MultiplexedConnection::clone(&self.object),
            broken: self.broken.clone(),
            generation: self.generation,
            current: current.clone(),
        }
    }
}

impl SingleConnections {
    fn new(pool: Pool, size: usize) -> Self {
        Self {
            pool,
            slots: (0..size.max(1)).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A clone of the slot's connection, unless it is missing, broken or stale.
    fn current(&self, slot: &Slot) -> Option<SharedConnection> {
        let generation = self.generation.load(Ordering::Relaxed);
        let held = slot.held.lock().unwrap_or_else(|e| e.into_inner());
        held.as_ref()
            .filter(|h| !h.broken.load(Ordering::Relaxed) && h.generation >= generation)
            .map(|h| h.share(&self.generation))
    }

    /// The next slot's connection, opened (or replaced) first if needed.
    async fn get(&self) -> Result<SharedConnection, EngineError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        if let Some(conn) = self.current(slot) {
            return Ok(conn);
        }
        let arrived = Instant::now();
        let mut refill = slot.refill.lock().await;
        if let Some(conn) = self.current(slot) {
            return Ok(conn);
        }
        // Commands that waited while a replacement failed fail with it rather
        // than each waiting for a connect timeout of its own in turn.
        if let Some((at, why)) = refill.as_ref()
            && *at >= arrived
        {
            return Err(EngineError::Unavailable(why.clone()));
        }
        let old = slot.held.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(old) = old {
            // Out of the pool for good: closed once its last clone is dropped.
            drop(deadpool_redis::Connection::take(old.object));
            tracing::debug!("replacing a failed Redis command connection");
        }
        let object = match self.pool.get().await {
            Ok(object) => object,
            Err(e) => {
                let why = tls::explain(e);
                *refill = Some((Instant::now(), why.clone()));
                return Err(EngineError::Unavailable(why));
            }
        };
        *refill = None;
        let held = Held {
            object,
            broken: Arc::new(AtomicBool::new(false)),
            // Opened now: not stale for failures found before.
            generation: self.generation.load(Ordering::Relaxed),
        };
        let conn = held.share(&self.generation);
        *slot.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(held);
        Ok(conn)
    }
}

/// A clone of one of [`SingleConnections`]' connections; a command that fails
/// with an error after which the connection cannot be trusted marks it (or,
/// when the connection was closed, every connection as old) for replacement.
pub struct SharedConnection {
    conn: MultiplexedConnection,
    broken: Arc<AtomicBool>,
    generation: u64,
    current: Arc<AtomicU64>,
}

impl SharedConnection {
    fn note<T>(&self, result: &redis::RedisResult<T>) {
        let Err(e) = result else { return };
        if e.is_connection_dropped() {
            self.current
                .fetch_max(self.generation + 1, Ordering::Relaxed);
        }
        if e.is_io_error() || e.is_unrecoverable_error() {
            self.broken.store(true, Ordering::Relaxed);
        }
    }
}

impl ConnectionLike for SharedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.conn.req_packed_command(cmd).await;
            self.note(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self.conn.req_packed_commands(cmd, offset, count).await;
            self.note(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// `pool_size` cluster connections used in turn (each keeps one multiplexed
/// connection per node, so there are `pool_size` command connections per node,
/// as on a single Redis).
///
/// The set can be replaced whole ([`ClusterConnections::rebuild`]): the engine's
/// health loop does so when commands keep failing while the cluster itself
/// answers, i.e. when the cluster client is stuck on a stale view of the
/// cluster (see docs/OPERATIONS.md, "Redis Cluster"). Callers holding a clone
/// of an old connection finish with it; the next [`Commands::get`] hands out a
/// new one.
pub struct ClusterConnections {
    client: ClusterClient,
    config: ClusterConfig,
    size: usize,
    connections: std::sync::RwLock<Arc<[ClusterConnection]>>,
    next: AtomicUsize,
}

impl ClusterConnections {
    fn open(
        client: &ClusterClient,
        config: &ClusterConfig,
        size: usize,
    ) -> Arc<[ClusterConnection]> {
        (0..size.max(1))
            .map(|_| client.get_pending_async_connection_with_config(config.clone()))
            .collect()
    }

    fn get(&self) -> ClusterConnection {
        let connections = self
            .connections
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % connections.len();
        connections[i].clone()
    }

    /// Every connection of the set (the health check asks each: one stuck
    /// on a stale slot map fails the commands that draw it, while the others
    /// answer).
    fn all(&self) -> Vec<ClusterConnection> {
        self.connections
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .to_vec()
    }

    /// Replaces every cluster connection by a new one, which starts from the
    /// seed nodes and reads the slot map afresh. The old connections close
    /// once the commands still using them are done.
    pub fn rebuild(&self) {
        let fresh = Self::open(&self.client, &self.config, self.size);
        *self.connections.write().unwrap_or_else(|e| e.into_inner()) = fresh;
    }
}

impl Commands {
    /// Sets up the connections without waiting for Redis: they connect in the
    /// background and commands fail until Redis answers. `tls` is used for
    /// `rediss://` targets.
    pub fn new(
        target: &RedisTarget,
        settings: ConnectionSettings,
        tls: Option<&RedisTls>,
    ) -> Result<Self, EngineError> {
        let bad = |e: String| EngineError::Protocol(format!("bad Redis URL: {e}"));
        match target {
            RedisTarget::Single(url) => {
                let connection_config = AsyncConnectionConfig::new()
                    .set_response_timeout(Some(settings.response_timeout))
                    .set_connection_timeout(Some(settings.connect_timeout));
                let client = tls::client(url, tls).map_err(|e| bad(e.to_string()))?;
                let manager = deadpool_redis::Manager::new_with_config(
                    client.get_connection_info().clone(),
                    connection_config,
                )
                .map_err(|e| bad(e.to_string()))?;
                let pool = Pool::builder(manager)
                    .max_size(settings.pool_size.max(1))
                    .runtime(Runtime::Tokio1)
                    .wait_timeout(Some(settings.response_timeout))
                    .create_timeout(Some(settings.connect_timeout))
                    .build()
                    .map_err(|e| EngineError::Protocol(e.to_string()))?;
                Ok(Self::Single(Arc::new(SingleConnections::new(
                    pool,
                    settings.pool_size,
                ))))
            }
            RedisTarget::Cluster(nodes) => {
                let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .connection_timeout(settings.connect_timeout)
                    .response_timeout(settings.response_timeout);
                if let Some(tls) = tls.filter(|_| target.is_tls()) {
                    builder = builder.certs(tls.certificates());
                }
                let client = builder.build().map_err(|e| bad(e.to_string()))?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(settings.connect_timeout)
                    .set_response_timeout(settings.response_timeout);
                let size = settings.pool_size.max(1);
                Ok(Self::Cluster(Arc::new(ClusterConnections {
                    connections: std::sync::RwLock::new(ClusterConnections::open(
                        &client, &config, size,
                    )),
                    client,
                    config,
                    size,
                    next: AtomicUsize::new(0),
                })))
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// On a cluster, replaces the command connections by new ones (see
    /// [`ClusterConnections::rebuild`]); false (nothing done) on one Redis,
    /// whose connections are replaced one by one as they fail.
    pub fn rebuild(&self) -> bool {
        match self {
            Self::Single(_) => false,
            Self::Cluster(c) => {
                c.rebuild();
                true
            }
        }
    }

    /// On a cluster, each of the connections handed out in turn; on one
    /// Redis, one connection of the pool (its connections are replaced one by
    /// one as they fail).
    pub async fn each(&self) -> Result<Vec<RedisConnection>, EngineError> {
        match self {
            Self::Single(c) => Ok(vec![RedisConnection::Single(c.get().await?)]),
            Self::Cluster(c) => Ok(c.all().into_iter().map(RedisConnection::Cluster).collect()),
        }
    }

    /// A connection for a few commands.
    pub async fn get(&self) -> Result<RedisConnection, EngineError> {
        match self {
            Self::Single(c) => c.get().await.map(RedisConnection::Single),
            Self::Cluster(c) => Ok(RedisConnection::Cluster(c.get())),
        }
    }

    /// An empty batch of commands for this Redis.
    pub fn batch(&self) -> Batch {
        Batch {
            cluster: self.is_cluster(),
            pipes: BTreeMap::new(),
        }
    }

    /// Runs every pipeline of the batch (concurrently on a cluster).
    pub async fn run(&self, batch: Batch) -> Result<(), EngineError> {
        let runs = batch.pipes.into_values().map(|pipe| async move {
            let mut conn = self.get().await?;
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(|e| EngineError::Unavailable(e.to_string()))
        });
        futures_util::future::try_join_all(runs).await.map(|_| ())
    }
}

/// One command connection: to the one Redis, or to the cluster.
pub enum RedisConnection {
    Single(SharedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Commands to send together, filed by the key they touch: one pipeline on a
/// single Redis, one pipeline per hash slot on a cluster.
pub struct Batch {
    cluster: bool,
    pipes: BTreeMap<u16, redis::Pipeline>,
}

impl Batch {
    /// The pipeline for commands on `key`.
    pub fn pipe(&mut self, key: &str) -> &mut redis::Pipeline {
        let group = if self.cluster {
            slot(key.as_bytes())
        } else {
            0
        };
        self.pipes.entry(group).or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.pipes.values().all(|p| p.is_empty())
    }

    /// How many pipelines (round trips) the batch takes.
    pub fn pipelines(&self) -> usize {
        self.pipes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_select_one_redis_or_a_cluster() {
        assert_eq!(
            RedisTarget::from_flags(Some("redis://h:6379/2"), &[]).unwrap(),
            RedisTarget::Single("redis://h:6379/2".into())
        );
        assert_eq!(
            RedisTarget::from_flags(Some("redis+cluster://u:p@a:1,b:2/"), &[]).unwrap(),
            RedisTarget::Cluster(vec!["redis://u:p@a:1".into(), "redis://u:p@b:2".into()])
        );
        assert_eq!(
            RedisTarget::from_flags(None, &["redis://a:1".into(), " redis://b:2 ".into()]).unwrap(),
            RedisTarget::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert_eq!(
            RedisTarget::from_flags(Some("redis://a:1"), &["redis://b:2".into()]),
            Err(TargetError::Both)
        );
        assert_eq!(
            RedisTarget::from_flags(None, &[]),
            Err(TargetError::Missing)
        );
        assert!(matches!(
            RedisTarget::from_flags(None, &["redis://a:1/3".into()]),
            Err(TargetError::Database(_))
        ));
        assert!(matches!(
            RedisTarget::from_flags(Some("redis+cluster://"), &[]),
            Err(TargetError::BadUrl { .. })
        ));
        assert!(matches!(
            RedisTarget::from_flags(Some("http://x"), &[]),
            Err(TargetError::BadUrl { .. })
        ));
        assert!(matches!(
            RedisTarget::from_flags(Some("rediss://u:p@h:1/#insecure"), &[]),
            Err(TargetError::Insecure(u)) if !u.contains(":p@")
        ));
    }

    #[test]
    fn tls_targets() {
        let one = RedisTarget::from_flags(Some("rediss://u:p@h:6380/1"), &[]).unwrap();
        assert_eq!(one, RedisTarget::Single("rediss://u:p@h:6380/1".into()));
        assert!(one.is_tls() && !one.is_cluster());
        let cluster = RedisTarget::from_flags(Some("rediss+cluster://u:p@a:1,b:2"), &[]).unwrap();
        assert_eq!(
            cluster,
            RedisTarget::Cluster(vec!["rediss://u:p@a:1".into(), "rediss://u:p@b:2".into()])
        );
        assert!(cluster.is_tls());
        let listed =
            RedisTarget::from_flags(None, &["rediss://a:1".into(), "rediss://b:2".into()]).unwrap();
        assert!(listed.is_tls());
        assert!(matches!(
            RedisTarget::from_flags(None, &["rediss://a:1".into(), "redis://b:2".into()]),
            Err(TargetError::MixedTls(_))
        ));
        assert!(!RedisTarget::from_url("redis://h:1").unwrap().is_tls());
        assert!(matches!(
            RedisTarget::from_flags(Some("rediss+cluster://"), &[]),
            Err(TargetError::BadUrl { .. })
        ));
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redact("redis://u:secret@h:1"), "redis://u:***@h:1");
        assert_eq!(redact("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        let t = RedisTarget::from_url("redis+cluster://u:secret@a:1,b:2").unwrap();
        assert!(!t.describe().contains("secret"));
    }

    #[test]
    fn batches_split_by_slot_only_on_a_cluster() {
        let mut single = Batch {
            cluster: false,
            pipes: BTreeMap::new(),
        };
        single.pipe("a").hset("a", "f", 1);
        single.pipe("b").hset("b", "f", 1);
        assert_eq!(single.pipelines(), 1);
        let mut cluster = Batch {
            cluster: true,
            pipes: BTreeMap::new(),
        };
        cluster.pipe("p:{x}:1").hset("p:{x}:1", "f", 1);
        cluster.pipe("p:{x}:2").hset("p:{x}:2", "f", 1);
        cluster.pipe("other").del("other");
        assert_eq!(cluster.pipelines(), 2);
        assert!(!cluster.is_empty());
    }
}
