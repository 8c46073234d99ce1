//! The Redis engine's settings (one Redis or a Redis Cluster).

use std::time::Duration;

use super::HistoryConfig;
use super::connection::RedisTarget;
use super::tls::RedisTls;

/// Default of [`RedisConfig::cluster_rebuild_after`] (`--redis-cluster-rebuild-after`).
pub const DEFAULT_CLUSTER_REBUILD_AFTER: u32 = 3;

/// Default of [`RedisConfig::resend_guard`] (`--redis-resend-guard`).
pub const DEFAULT_RESEND_GUARD: Duration = Duration::from_secs(60);

/// Connection settings of the Redis engine.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// One Redis or a Redis Cluster.
    pub target: RedisTarget,
    /// Prefix of every key and channel name.
    pub prefix: String,
    /// Limit on one command's round trip.
    pub response_timeout: Duration,
    /// Limit on establishing a connection.
    pub connect_timeout: Duration,
    /// Command connections (each is multiplexed); on a cluster, per master.
    pub pool_size: usize,
    /// Interval between pub/sub liveness probes; a probe unanswered for three
    /// intervals rebuilds the pub/sub connection.
    pub probe_interval: Duration,
    /// Longest channel name accepted from the feed.
    pub max_channel_len: usize,
    /// JSON nesting accepted from plain `PUBLISH`es.
    pub max_json_depth: usize,
    /// History per namespace.
    pub history: HistoryConfig,
    /// Names this replica in its probe channel.
    pub replica_id: String,
    /// Replicas that must have a message before its publish is acknowledged
    /// (`WAIT`); 0: acknowledge at once (Redis replicates asynchronously).
    pub wait_replicas: usize,
    /// Longest `WAIT` for those replicas.
    pub wait_timeout: Duration,
    /// On a Redis Cluster: consecutive failed health checks (one every
    /// [`HEALTH_INTERVAL`](super::redis::HEALTH_INTERVAL)) after which, if a
    /// seed node says the cluster is ok, the cluster command client is
    /// rebuilt; 0 never rebuilds it.
    pub cluster_rebuild_after: u32,
    /// On a Redis Cluster: how long a publish without a producer's key is
    /// remembered under a key of its own, so that the cluster client resending
    /// the publish script after a connection lost before the reply (a master
    /// failing over) does not publish the message twice; 0 turns it off. It
    /// must outlast the client's resends of one command (each bounded by
    /// `response_timeout`). Costs one small key per publish for this long.
    pub resend_guard: Duration,
    /// Trust and client certificate for a `rediss://` target (`None`: the
    /// system's roots, no client certificate); unused without TLS.
    pub tls: Option<RedisTls>,
}
