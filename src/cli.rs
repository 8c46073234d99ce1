//! The command line: subcommands, flags, and their environment variables.
//!
//! Every flag can also be set as `SWITCHBOARD_<FLAG>` (upper case, dashes as
//! underscores), which is how the Helm chart configures pods. Flags map onto the
//! runtime configuration in `config.rs`, where each default is explained.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Drain, GatewayConfig, Limits, Timeouts};
use crate::engine::{HistoryConfig, HistoryPolicy};
use crate::filter::FilterLimits;
use crate::hub::HubConfig;
use crate::logging::LogFormat;

/// switchboard: a horizontally scaled real-time gateway.
///
/// Relays Redis channels to WebSocket dashboards: gateway replicas terminate
/// WebSockets and fan messages out; the collector computes the federation and
/// memory snapshots; `standalone` runs both in one process on an in-memory engine.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format: human-readable text, or one JSON object per line.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Log filter: a level (error, warn, info, debug, trace) or per-module
    /// directives such as `switchboard=debug,warn`.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Gateway and collector in one process on an in-memory engine (no Redis).
    /// Binds loopback by default and runs without authentication.
    Standalone(StandaloneArgs),
    /// One gateway replica on a shared Redis.
    Gateway(GatewayArgs),
    /// The collector: computes the federation and memory snapshots and publishes them to Redis.
    Collector(CollectorArgs),
    /// Load generator: opens WebSocket clients against one or more gateways,
    /// publishes timestamped messages into Redis at a set rate, and reports
    /// deliveries/s, publish→receive latency, lost and duplicated messages,
    /// connect rate, and the servers' CPU and memory (see BENCHMARKS.md).
    Bench(BenchArgs),
    /// Internal: one client process of `bench --workers N` (reads its plan on stdin).
    #[command(hide = true)]
    BenchWorker(BenchWorkerArgs),
}

/// `switchboard bench`. Not read from the environment: a benchmark is a
/// command line to copy, so every setting is on it.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Server to connect clients to: `ws://host:port` (a path is a prefix for the
    /// native and relay routes, the whole path for `--route raw`). Repeat it to
    /// spread clients round-robin over replicas.
    #[arg(long = "url", default_value = "ws://127.0.0.1:8080")]
    pub urls: Vec<String>,

    /// `native`: /ws and the native protocol (subscribe, offsets); `relay`:
    /// /api/ws/{channel}; `raw`: the URL as given, nothing sent after the
    /// handshake (for other servers, such as the benchmark kit's floor and peers).
    #[arg(long, value_enum, default_value = "native")]
    pub route: crate::bench::plan::Route,

    /// WebSocket clients to open.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,

    /// Channels; client k subscribes to channel k mod N, and messages go round-robin.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,

    /// Channel name (with one channel) or prefix of `PREFIX-i` (with several).
    #[arg(long, default_value = "bench")]
    pub channel_prefix: String,

    /// Messages per second over all channels; 0 holds the clients idle for --duration.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,

    /// Measured messages to publish (instead of --duration).
    #[arg(long, conflicts_with = "duration")]
    pub messages: Option<u64>,

    /// Length of the measured run (publishing, or idling with --rate 0).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,

    /// Publishing before the measured run (latency and throughput ignore it;
    /// losses count it).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: std::time::Duration,

    /// Longest wait after the last publish for clients to receive everything.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain: std::time::Duration,

    /// Pause after the last client connected, before reading the servers' memory
    /// and publishing (the raw route also needs it for subscriptions to settle).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub settle: std::time::Duration,

    /// Redis the publisher writes to (the gateways' Redis).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// The gateways' `--redis-prefix`.
    #[arg(long, default_value = "switchboard:")]
    pub redis_prefix: String,

    /// `script`: switchboard's publish script through the Redis engine (offsets
    /// and history, as the publish API does); `plain`: a plain PUBLISH of the JSON.
    #[arg(long, value_enum, default_value = "script")]
    pub publisher: crate::bench::plan::PublisherKind,

    /// Exact Redis pub/sub channel for `--publisher plain` with one channel (for
    /// servers that do not use switchboard's key names, such as the floor).
    #[arg(long)]
    pub pubsub_name: Option<String>,

    /// Size of each message's `data`, in bytes (at least its seq and ts fields).
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,

    /// Source addresses for client connections, round-robin: addresses and
    /// ranges such as `127.0.0.1-127.0.0.20` (each gives ~28,000 ports per server).
    #[arg(long, default_value = "127.0.0.1")]
    pub src_ips: String,

    /// New connections per second (0: as fast as --connect-concurrency allows).
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,

    /// Connections being opened (handshake and subscribe) at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,

    /// Longest a client may take to connect and subscribe before it counts as failed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub connect_timeout: std::time::Duration,

    /// Publishes awaiting Redis's reply at once; beyond it the schedule slips
    /// (reported as schedule lag).
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,

    /// Server process whose CPU seconds and RSS to report (from /proc). Repeatable.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,

    /// Client processes (beyond ~20,000 sockets one process runs out of files).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,

    /// Runtime threads per client process (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Bearer token sent with every upgrade (`Authorization: Bearer …`).
    #[arg(long)]
    pub token: Option<String>,

    /// Name of this run in the report.
    #[arg(long)]
    pub label: Option<String>,

    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Also write the JSON report to this file.
    #[arg(long)]
    pub output: Option<std::path::PathBuf>,
}

impl BenchArgs {
    /// Runtime threads of this process.
    pub fn workers(&self) -> usize {
        threads_or_cpus(self.threads)
    }
}

/// `switchboard bench-worker` (internal).
#[derive(Debug, Clone, Args)]
pub struct BenchWorkerArgs {
    /// Runtime threads.
    #[arg(long)]
    pub threads: Option<usize>,
}

impl BenchWorkerArgs {
    pub fn workers(&self) -> usize {
        threads_or_cpus(self.threads)
    }
}

fn threads_or_cpus(threads: Option<usize>) -> usize {
    threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1)
}

#[derive(Debug, Args)]
pub struct StandaloneArgs {
    /// Address to listen on (HTTP, WebSocket, health, metrics).
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub server: ServerArgs,

    #[command(flatten)]
    pub history: HistoryArgs,

    #[command(flatten)]
    pub collector: CollectorSchedule,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Address to listen on (HTTP, WebSocket, health, metrics).
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Run without authentication: every client may subscribe and publish anything.
    /// Required until a JWT key is configured.
    #[arg(long, env = "SWITCHBOARD_NO_AUTH")]
    pub no_auth: bool,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub server: ServerArgs,

    #[command(flatten)]
    pub history: HistoryArgs,
}

#[derive(Debug, Args)]
pub struct CollectorArgs {
    /// Address of the collector's own /health/live, /health/ready and /metrics.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub history: HistoryArgs,

    #[command(flatten)]
    pub schedule: CollectorSchedule,
}

/// Connection to the Redis that carries channels, history and snapshots.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL: redis://[user:password@]host:port[/db] (rediss:// for TLS).
    #[arg(long, env = "SWITCHBOARD_REDIS_URL")]
    pub redis_url: String,

    /// Prefix of every Redis key and pub/sub channel switchboard uses.
    #[arg(long, env = "SWITCHBOARD_REDIS_PREFIX", default_value = "switchboard:")]
    pub redis_prefix: String,

    /// Limit on one Redis command's round trip.
    #[arg(long, env = "SWITCHBOARD_REDIS_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,

    /// Limit on establishing a Redis connection.
    #[arg(long, env = "SWITCHBOARD_REDIS_CONNECT_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub redis_connect_timeout: Duration,

    /// Pooled Redis command connections (each one multiplexes many commands).
    #[arg(long, env = "SWITCHBOARD_REDIS_POOL_SIZE", default_value_t = 8)]
    pub redis_pool_size: usize,

    /// Interval of the probe that checks the pub/sub connection still delivers;
    /// three missed probes rebuild it.
    #[arg(long, env = "SWITCHBOARD_REDIS_PROBE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub redis_probe_interval: Duration,
}

/// Channel history: what resume can recover.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// Messages kept per channel for resume (0 disables history).
    #[arg(long, env = "SWITCHBOARD_HISTORY_SIZE", default_value_t = 1000)]
    pub history_size: usize,

    /// How long a channel's history (and epoch) outlives its last publish.
    #[arg(long, env = "SWITCHBOARD_HISTORY_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub history_ttl: Duration,

    /// Per-namespace history, `NAMESPACE=SIZE:TTL` (e.g. `agents=100:1m`); the
    /// namespace is the part of a channel name before the first `:`. Repeatable,
    /// or comma-separated in the environment variable.
    #[arg(long, env = "SWITCHBOARD_NAMESPACE_HISTORY", value_delimiter = ',', value_parser = parse_namespace_history)]
    pub namespace_history: Vec<(String, HistoryPolicy)>,
}

impl HistoryArgs {
    pub fn config(&self) -> HistoryConfig {
        HistoryConfig {
            default: HistoryPolicy {
                size: self.history_size,
                ttl: self.history_ttl,
            },
            namespaces: self
                .namespace_history
                .iter()
                .cloned()
                .collect::<HashMap<_, _>>(),
        }
    }
}

fn parse_namespace_history(s: &str) -> Result<(String, HistoryPolicy), String> {
    let usage = || format!("expected NAMESPACE=SIZE:TTL such as agents=100:1m, got {s:?}");
    let (ns, rest) = s.split_once('=').ok_or_else(usage)?;
    let (size, ttl) = rest.split_once(':').ok_or_else(usage)?;
    let size = size.trim().parse().map_err(|_| usage())?;
    let ttl = humantime::parse_duration(ttl.trim()).map_err(|e| format!("{}: {e}", usage()))?;
    if ns.is_empty() {
        return Err(usage());
    }
    Ok((ns.trim().to_string(), HistoryPolicy { size, ttl }))
}

/// When the collector runs.
#[derive(Debug, Clone, Args)]
pub struct CollectorSchedule {
    /// Shortest time between collector cycles.
    #[arg(long, env = "SWITCHBOARD_COLLECT_INTERVAL_MIN", default_value = "2s", value_parser = humantime::parse_duration)]
    pub collect_interval_min: Duration,

    /// Longest time between collector cycles (each wait is drawn between the two).
    #[arg(long, env = "SWITCHBOARD_COLLECT_INTERVAL_MAX", default_value = "3s", value_parser = humantime::parse_duration)]
    pub collect_interval_max: Duration,
}

/// Settings of the WebSocket server common to `gateway` and `standalone`.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Name of this replica in connection ids, logs and the admin API (default: host name).
    #[arg(long, env = "SWITCHBOARD_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// Key accepted as `X-API-Key` on the publish and admin endpoints.
    #[arg(long, env = "SWITCHBOARD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Tokio worker threads (default: one per CPU).
    #[arg(long, env = "SWITCHBOARD_WORKER_THREADS")]
    pub worker_threads: Option<usize>,

    /// Open WebSocket connections per replica; more are refused with 503 and Retry-After.
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Subscriptions one connection may hold.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CHANNELS_PER_CONNECTION",
        default_value_t = 64
    )]
    pub max_channels_per_connection: usize,

    /// Largest WebSocket frame a client may send; larger closes with 1009.
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Largest message a client may send (fragments together), and the largest
    /// `data` of POST /api/v1/publish; larger closes with 1009 (or gets 413).
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Bytes queued for one client that reads too slowly before it is closed with 4000.
    #[arg(long, env = "SWITCHBOARD_MAX_OUTBOUND_BYTES", default_value_t = 1024 * 1024)]
    pub max_outbound_bytes: usize,

    /// Bytes read from a client socket at a time (nothing is held while a client is idle).
    #[arg(long, env = "SWITCHBOARD_READ_CHUNK_BYTES", default_value_t = 4096)]
    pub read_chunk_bytes: usize,

    /// Nesting depth of JSON accepted from clients and publishers.
    #[arg(long, env = "SWITCHBOARD_MAX_JSON_DEPTH", default_value_t = 32)]
    pub max_json_depth: usize,

    /// Longest channel name, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_CHANNEL_LENGTH", default_value_t = 128)]
    pub max_channel_length: usize,

    /// Most history messages replayed to one resuming subscription.
    #[arg(long, env = "SWITCHBOARD_MAX_REPLAY", default_value_t = 10_000)]
    pub max_replay: usize,

    /// Conditions in one subscription filter.
    #[arg(long, env = "SWITCHBOARD_MAX_FILTER_CONDITIONS", default_value_t = 16)]
    pub max_filter_conditions: usize,

    /// Bytes of one subscription filter.
    #[arg(long, env = "SWITCHBOARD_MAX_FILTER_BYTES", default_value_t = 2048)]
    pub max_filter_bytes: usize,

    /// Interval of server WebSocket pings (sent to clients as `heartbeat_interval`).
    #[arg(long, env = "SWITCHBOARD_PING_INTERVAL", default_value = "25s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// Time a client has to answer a ping before it is closed with 4002.
    #[arg(long, env = "SWITCHBOARD_PONG_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub pong_timeout: Duration,

    /// Time a client may send nothing before it is closed with 4003.
    #[arg(long, env = "SWITCHBOARD_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Time allowed for the WebSocket closing handshake.
    #[arg(long, env = "SWITCHBOARD_CLOSE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub close_timeout: Duration,

    /// Time an HTTP client has to send its request headers.
    #[arg(long, env = "SWITCHBOARD_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// On SIGTERM, clients are closed with 1001 spread over this window.
    #[arg(long, env = "SWITCHBOARD_DRAIN_WINDOW", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_window: Duration,

    /// On SIGTERM, the process exits by this deadline (keep it below Kubernetes'
    /// terminationGracePeriodSeconds).
    #[arg(long, env = "SWITCHBOARD_DRAIN_DEADLINE", default_value = "25s", value_parser = humantime::parse_duration)]
    pub drain_deadline: Duration,

    /// Fan-out shards (tasks writing to sockets); default: one per worker thread.
    #[arg(long, env = "SWITCHBOARD_FANOUT_SHARDS")]
    pub fanout_shards: Option<usize>,

    /// Commands queued per fan-out shard before producers wait.
    #[arg(long, env = "SWITCHBOARD_SHARD_QUEUE", default_value_t = 8192)]
    pub shard_queue: usize,
}

impl ServerArgs {
    /// Worker threads to start.
    pub fn workers(&self) -> usize {
        self.worker_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1)
    }

    /// The gateway configuration these flags describe.
    pub fn gateway_config(&self, listen: SocketAddr) -> Result<GatewayConfig, String> {
        if self.drain_window > self.drain_deadline {
            return Err("--drain-window must not be longer than --drain-deadline".into());
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        let replica_id = self.replica_id.clone().unwrap_or_else(default_replica_id);
        Ok(GatewayConfig {
            listen,
            replica_id,
            api_key: self.api_key.clone().filter(|k| !k.is_empty()),
            limits: Limits {
                max_connections: self.max_connections,
                max_channels_per_connection: self.max_channels_per_connection,
                max_frame_bytes: self.max_frame_bytes,
                max_message_bytes: self.max_message_bytes,
                max_outbound_bytes: self.max_outbound_bytes,
                read_chunk_bytes: self.read_chunk_bytes.max(256),
                max_json_depth: self.max_json_depth,
                max_channel_len: self.max_channel_length,
                max_replay: self.max_replay,
                filter: FilterLimits {
                    max_conditions: self.max_filter_conditions,
                    max_bytes: self.max_filter_bytes,
                    ..FilterLimits::default()
                },
            },
            timeouts: Timeouts {
                ping_interval: self.ping_interval,
                pong_timeout: self.pong_timeout,
                idle_timeout: self.idle_timeout,
                close_timeout: self.close_timeout,
                header_read_timeout: self.header_read_timeout,
            },
            drain: Drain {
                window: self.drain_window,
                deadline: self.drain_deadline,
            },
            hub: HubConfig {
                shards: self.fanout_shards.unwrap_or_else(|| self.workers()),
                shard_queue: self.shard_queue.max(16),
                ..HubConfig::default()
            },
        })
    }
}

/// The host name, or a random name when there is none.
pub fn default_replica_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| format!("replica-{}", crate::engine::Epoch::random()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn namespace_history_parses() {
        let (ns, p) = parse_namespace_history("agents=100:1m").unwrap();
        assert_eq!(ns, "agents");
        assert_eq!(p.size, 100);
        assert_eq!(p.ttl, Duration::from_secs(60));
        assert!(parse_namespace_history("agents").is_err());
        assert!(parse_namespace_history("=1:1m").is_err());
    }
}
