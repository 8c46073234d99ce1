//! The command line: subcommands, flags, and their environment variables.
//!
//! Every flag can also be set as `SWITCHBOARD_<FLAG>` (upper case, dashes as
//! underscores), which is how the Helm chart configures pods; the two
//! exceptions, `--check-config` (which a stray variable must not turn on) and
//! `bench --channels`, are listed (with their reasons) in the test that walks
//! the command tree to keep this true. Flags map onto the
//! runtime configuration in `config.rs`, where each default is explained.
//! `collector` and `standalone` also read seed 001's `REDIS_URL` and
//! `ARK_BASE_PATH` for what the flags leave unset ([`seed_env`]).

pub mod seed_env;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::auth::JwtConfig;
use crate::auth::origin::OriginPolicy;
use crate::collector::discover::DiscoverConfig;
use crate::collector::federation::FederationRedisConfig;
use crate::collector::formulas::TrustWeights;
use crate::collector::sqlite::SqliteConfig;
use crate::collector::{CollectorConfig, FormulaConfig, OnSourceFailure, SimulateMode};
use crate::config::{
    CouncilConfig, Dialects, Drain, EscaiConfig, GatewayConfig, Limits, Security, Timeouts,
};
use crate::engine::connection::RedisTarget;
use crate::engine::tls::{RedisTls, TlsError, TlsFiles};
use crate::engine::{HistoryConfig, HistoryPolicy};
use crate::filter::FilterLimits;
use crate::hub::{HeartbeatConfig, HubConfig};
use crate::logging::LogFormat;

/// A configuration the flags describe that cannot run, in the flags' words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value out of its range: the flag, and what it must be.
    #[error("{flag} {requirement}")]
    Range {
        flag: &'static str,
        requirement: String,
    },
    /// Flags that cannot go together, or a flag another needs.
    #[error("{0}")]
    Conflict(String),
    /// A value that does not parse (a URL, an address).
    #[error("{0}")]
    Value(String),
    #[error(transparent)]
    ClientIp(#[from] crate::auth::client_ip::ClientIpError),
}

impl ConfigError {
    fn range(flag: &'static str, requirement: impl Into<String>) -> Self {
        Self::Range {
            flag,
            requirement: requirement.into(),
        }
    }
}

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
    /// directives such as `switchboard=debug,warn`. The Redis client library
    /// logs only errors unless a directive names it (`info,redis=warn`).
    /// Without it (flag or variable), RUST_LOG if set, else `info` (`warn` for
    /// tail, publish and health).
    #[arg(long, global = true, env = "SWITCHBOARD_LOG_LEVEL")]
    pub log_level: Option<String>,
}

impl Cli {
    /// The log filter to use: `--log-level` (or `SWITCHBOARD_LOG_LEVEL`), else
    /// `RUST_LOG`, else `quiet_default` for the command-line client and `info`
    /// for everything else. An empty value counts as unset.
    pub fn log_filter(&self, rust_log: Option<String>) -> String {
        let given = |v: &Option<String>| v.clone().filter(|l| !l.trim().is_empty());
        let client = matches!(
            self.command,
            Command::Tail(_) | Command::Publish(_) | Command::Health(_)
        );
        given(&self.log_level)
            .or_else(|| given(&rust_log))
            .unwrap_or_else(|| if client { "warn" } else { "info" }.to_string())
    }
}

// Parsed once at startup: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Gateway and collector in one process on an in-memory engine (no Redis).
    /// Without a JWT key flag it runs without authentication, so it binds
    /// loopback only (unless --allow-remote); with one it authenticates like a gateway.
    #[command(after_help = seed_env::STANDALONE_HELP)]
    Standalone(StandaloneArgs),
    /// One gateway replica on a shared Redis.
    Gateway(GatewayArgs),
    /// The collector: computes the federation and memory snapshots and publishes them to Redis.
    #[command(after_help = seed_env::COLLECTOR_HELP)]
    Collector(CollectorArgs),
    /// Prints a signed JWT for development and tests.
    Token(TokenArgs),
    /// Creates sample reasoning_logs.db and ark.db (and, with --redis-url, sample
    /// peers and sync events) with the schema the collector reads.
    DemoData(DemoDataArgs),
    /// Load generator: opens WebSocket clients against one or more gateways,
    /// publishes timestamped messages into Redis at a set rate, and reports
    /// deliveries/s, publish→receive latency, lost and duplicated messages,
    /// connect rate, and the servers' CPU and memory (see BENCHMARKS.md).
    Bench(BenchArgs),
    /// Internal: one client process of `bench --workers N` (reads its plan on stdin).
    #[command(hide = true)]
    BenchWorker(BenchWorkerArgs),
    /// Prints a channel's messages as JSON lines, following them across
    /// replicas: `{"channel", "offset", "data"}` per message.
    Tail(TailArgs),
    /// Publishes a JSON message on a channel through the HTTP API (`-`: one
    /// message per line of standard input).
    Publish(PublishArgs),
    /// Asks a running switchboard's /health/ready: exit 0 when it answers 200,
    /// 1 otherwise (the container image's HEALTHCHECK; needs no shell).
    Health(HealthArgs),
}

/// `switchboard bench`. Like every command it also reads `SWITCHBOARD_<FLAG>`
/// (except `--channels`), so the report's `setup` records what was run.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Server to connect clients to: `ws://host:port` (`http://` is the same;
    /// a path is a prefix for the native and relay routes, the whole path for
    /// `--route raw`). Repeatable or comma-separated, to spread clients
    /// round-robin over replicas.
    #[arg(
        long = "url",
        env = "SWITCHBOARD_URL",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080"
    )]
    pub urls: Vec<String>,

    /// `native`: /ws and the native protocol (subscribe, offsets); `relay`:
    /// /api/ws/{channel}; `raw`: the URL as given, nothing sent after the
    /// handshake (for other servers, such as the benchmark kit's floor and peers).
    #[arg(long, env = "SWITCHBOARD_ROUTE", value_enum, default_value = "native")]
    pub route: crate::bench::plan::Route,

    /// WebSocket clients to open.
    #[arg(long, env = "SWITCHBOARD_CLIENTS", default_value_t = 100)]
    pub clients: usize,

    /// Channels; client k subscribes to channel k mod N, and messages go round-robin.
    /// Not read from the environment: SWITCHBOARD_CHANNELS is `token --channels`.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,

    /// Channel name (with one channel) or prefix of `PREFIX-i` (with several).
    #[arg(long, env = "SWITCHBOARD_CHANNEL_PREFIX", default_value = "bench")]
    pub channel_prefix: String,

    /// The channels by name, comma-separated, instead of --channels and
    /// --channel-prefix (e.g. `federation,memory`, the collector's snapshots,
    /// with --rate 0 to measure what a dashboard receives).
    #[arg(
        long,
        env = "SWITCHBOARD_CHANNEL_NAMES",
        value_delimiter = ',',
        conflicts_with = "channels"
    )]
    pub channel_names: Vec<String>,

    /// Offer permessage-deflate in every upgrade, as browsers do; the report's
    /// `wire` line says what the messages cost on the wire.
    #[arg(long, env = "SWITCHBOARD_COMPRESSION")]
    pub compression: bool,

    /// Subscribe with `"delta": "fossil"` and apply each delta (native route).
    #[arg(long, env = "SWITCHBOARD_DELTA")]
    pub delta: bool,

    /// Messages per second over all channels; 0 holds the clients idle for --duration.
    #[arg(long, env = "SWITCHBOARD_RATE", default_value_t = 10.0)]
    pub rate: f64,

    /// Measured messages to publish (instead of --duration).
    #[arg(long, env = "SWITCHBOARD_MESSAGES", conflicts_with = "duration")]
    pub messages: Option<u64>,

    /// Length of the measured run (publishing, or idling with --rate 0).
    #[arg(long, env = "SWITCHBOARD_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,

    /// Publishing before the measured run (latency and throughput ignore it;
    /// losses count it).
    #[arg(long, env = "SWITCHBOARD_WARMUP", default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: std::time::Duration,

    /// Longest wait after the last publish for clients to receive everything.
    #[arg(long, env = "SWITCHBOARD_DRAIN", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain: std::time::Duration,

    /// Pause after the last client connected, before reading the servers' memory
    /// and publishing (the raw route also needs it for subscriptions to settle).
    #[arg(long, env = "SWITCHBOARD_SETTLE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub settle: std::time::Duration,

    /// Redis the publisher writes to (the gateways' Redis): redis://…, or
    /// rediss://… over TLS.
    #[arg(
        long,
        env = "SWITCHBOARD_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    #[command(flatten)]
    pub redis_tls: RedisTlsArgs,

    /// The gateways' `--redis-prefix`.
    #[arg(long, env = "SWITCHBOARD_REDIS_PREFIX", default_value = "switchboard:")]
    pub redis_prefix: String,

    /// `script`: switchboard's publish script through the Redis engine (offsets
    /// and history, as the publish API does); `plain`: a plain PUBLISH of the JSON.
    #[arg(
        long,
        env = "SWITCHBOARD_PUBLISHER",
        value_enum,
        default_value = "script"
    )]
    pub publisher: crate::bench::plan::PublisherKind,

    /// Exact Redis pub/sub channel for `--publisher plain` with one channel (for
    /// servers that do not use switchboard's key names, such as the floor).
    #[arg(long, env = "SWITCHBOARD_PUBSUB_NAME")]
    pub pubsub_name: Option<String>,

    /// Size of each message's `data`, in bytes (at least its seq and ts fields).
    #[arg(long, env = "SWITCHBOARD_PAYLOAD_BYTES", default_value_t = 100)]
    pub payload_bytes: usize,

    /// Source addresses for client connections, round-robin: addresses and
    /// ranges such as `127.0.0.1-127.0.0.20` (each gives ~28,000 ports per server).
    #[arg(long, env = "SWITCHBOARD_SRC_IPS", default_value = "127.0.0.1")]
    pub src_ips: String,

    /// New connections per second (0: as fast as --connect-concurrency allows).
    #[arg(long, env = "SWITCHBOARD_CONNECT_RATE", default_value_t = 0.0)]
    pub connect_rate: f64,

    /// Connections being opened (handshake and subscribe) at once.
    #[arg(long, env = "SWITCHBOARD_CONNECT_CONCURRENCY", default_value_t = 256)]
    pub connect_concurrency: usize,

    /// Longest a client may take to connect and subscribe before it counts as failed.
    #[arg(long, env = "SWITCHBOARD_CONNECT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub connect_timeout: std::time::Duration,

    /// Publishes awaiting Redis's reply at once; beyond it the schedule slips
    /// (reported as schedule lag).
    #[arg(long, env = "SWITCHBOARD_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,

    /// Server process whose CPU seconds and RSS to report (from /proc).
    /// Repeatable or comma-separated.
    #[arg(
        long = "server-pid",
        env = "SWITCHBOARD_SERVER_PID",
        value_delimiter = ','
    )]
    pub server_pids: Vec<u32>,

    /// Client processes (beyond ~20,000 sockets one process runs out of files).
    #[arg(long, env = "SWITCHBOARD_WORKERS", default_value_t = 1)]
    pub workers: usize,

    /// Runtime threads per client process (default: one per CPU).
    #[arg(long, env = "SWITCHBOARD_THREADS")]
    pub threads: Option<usize>,

    /// Bearer token sent with every upgrade (`Authorization: Bearer …`).
    #[arg(long, env = "SWITCHBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Name of this run in the report.
    #[arg(long, env = "SWITCHBOARD_LABEL")]
    pub label: Option<String>,

    /// Print the report as JSON instead of a table.
    #[arg(long, env = "SWITCHBOARD_JSON")]
    pub json: bool,

    /// Also write the JSON report to this file.
    #[arg(long, env = "SWITCHBOARD_OUTPUT")]
    pub output: Option<std::path::PathBuf>,
}

impl BenchArgs {
    /// Runtime threads of this process.
    pub fn workers(&self) -> usize {
        threads_or_cpus(self.threads)
    }

    /// The run these flags describe, checked.
    pub fn config(&self) -> Result<crate::bench::BenchConfig, crate::bench::plan::PlanError> {
        use crate::bench::plan::{self, Length, Plan, PlanError};
        let targets = self
            .urls
            .iter()
            .map(|u| plan::parse_target(u, self.route))
            .collect::<Result<Vec<_>, _>>()?;
        let plan = Plan {
            label: self.label.clone(),
            targets,
            route: self.route,
            clients: self.clients,
            channels: if self.channel_names.is_empty() {
                self.channels
            } else {
                self.channel_names.len()
            },
            channel_prefix: self.channel_prefix.clone(),
            channel_names: self.channel_names.clone(),
            rate: self.rate,
            length: match self.messages {
                Some(n) => Length::Messages(n),
                None => Length::Duration(self.duration),
            },
            warmup: self.warmup,
            drain: self.drain,
            settle: self.settle,
            publisher: self.publisher,
            redis_url: self.redis_url.clone(),
            redis_tls: self
                .redis_tls
                .load([self.redis_url.as_str()])
                .map_err(|e| PlanError::Invalid(e.to_string()))?,
            redis_prefix: self.redis_prefix.clone(),
            pubsub_name: self.pubsub_name.clone(),
            payload_bytes: self.payload_bytes,
            src_ips: plan::parse_src_ips(&self.src_ips)?,
            connect_rate: self.connect_rate,
            connect_concurrency: self.connect_concurrency,
            connect_timeout: self.connect_timeout,
            max_in_flight: self.max_in_flight,
            server_pids: self.server_pids.clone(),
            workers: self.workers,
            token: self.token.clone(),
            compression: self.compression,
            delta: self.delta,
        };
        plan.validate()?;
        Ok(crate::bench::BenchConfig {
            plan,
            threads: self.workers(),
            output: self.output.clone(),
            json: self.json,
        })
    }
}

/// `switchboard bench-worker` (internal).
#[derive(Debug, Clone, Args)]
pub struct BenchWorkerArgs {
    /// Runtime threads.
    #[arg(long, env = "SWITCHBOARD_THREADS")]
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

/// Where the command-line client finds a gateway, and as whom.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// A gateway's base URL, `http://host:port` (a path prefix is kept).
    /// Repeatable or comma-separated: `tail` moves to the next one when its
    /// connection is lost; `publish` tries the next one when it cannot connect.
    #[arg(
        long = "url",
        env = "SWITCHBOARD_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    pub urls: Vec<String>,

    /// JWT sent as `Authorization: Bearer` (not needed with --no-auth gateways).
    #[arg(long, env = "SWITCHBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Limit on connecting to a gateway (TCP and handshake).
    #[arg(long, env = "SWITCHBOARD_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
}

impl ClientArgs {
    /// The gateways and token these flags name.
    pub fn config(&self) -> crate::client::ClientConfig {
        crate::client::ClientConfig {
            urls: self.urls.clone(),
            token: self.token.clone(),
            connect_timeout: self.connect_timeout,
        }
    }
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Channels to follow (at least one).
    #[arg(required = true, value_name = "CHANNEL")]
    pub channels: Vec<String>,

    #[command(flatten)]
    pub client: ClientArgs,

    /// Start after this offset (0: everything the channel's history still
    /// holds) instead of at the newest message; applies to every channel.
    #[arg(long, env = "SWITCHBOARD_SINCE", value_name = "OFFSET")]
    pub since: Option<u64>,

    /// Subscription filter, a JSON object (docs/PROTOCOL.md, Filters), e.g.
    /// '{"status":"running"}'.
    #[arg(long, env = "SWITCHBOARD_FILTER", value_name = "JSON")]
    pub filter: Option<String>,

    /// Do not print the channel's snapshot (printed first, with "snapshot": true).
    #[arg(long, env = "SWITCHBOARD_NO_SNAPSHOT")]
    pub no_snapshot: bool,

    /// How long to keep reconnecting after the connection is lost before giving up.
    #[arg(long, env = "SWITCHBOARD_RETRY_FOR", default_value = "5m", value_parser = humantime::parse_duration)]
    pub retry_for: Duration,

    /// Interval of tail's pings to the gateway; three intervals without any
    /// frame from it mean the connection is lost (and tail moves on).
    #[arg(long, env = "SWITCHBOARD_KEEPALIVE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub keepalive: Duration,

    /// Largest message accepted from the gateway, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,
}

impl TailArgs {
    /// What `tail` follows, as these flags say.
    pub fn config(&self) -> crate::client::tail::TailConfig {
        crate::client::tail::TailConfig {
            channels: self.channels.clone(),
            client: self.client.config(),
            since: self.since,
            filter: self.filter.clone(),
            snapshots: !self.no_snapshot,
            retry_for: self.retry_for,
            keepalive: self.keepalive,
            max_message_bytes: self.max_message_bytes,
        }
    }
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The channel to publish on.
    #[arg(value_name = "CHANNEL")]
    pub channel: String,

    /// The message: a JSON value, or `-` (the default) for JSON lines from
    /// standard input, published in order, one per non-empty line.
    #[arg(value_name = "JSON | -", default_value = "-")]
    pub data: String,

    #[command(flatten)]
    pub client: ClientArgs,

    /// Also store each message as the channel's snapshot.
    #[arg(long, env = "SWITCHBOARD_SNAPSHOT")]
    pub snapshot: bool,

    /// Print nothing on success (by default: the gateway's answer per
    /// message, `{"channel","offset","epoch"}`).
    #[arg(long, short, env = "SWITCHBOARD_QUIET")]
    pub quiet: bool,

    /// Limit on one publish request, from connecting to the answer.
    #[arg(long, env = "SWITCHBOARD_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Longest line read from standard input, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_LINE_BYTES", default_value_t = 1024 * 1024)]
    pub max_line_bytes: usize,
}

impl PublishArgs {
    /// What `publish` sends, as these flags say (`-`: standard input).
    pub fn config(&self) -> crate::client::publish::PublishConfig {
        crate::client::publish::PublishConfig {
            channel: self.channel.clone(),
            data: Some(self.data.clone()).filter(|d| d != "-"),
            client: self.client.config(),
            snapshot: self.snapshot,
            quiet: self.quiet,
            timeout: self.timeout,
            max_line_bytes: self.max_line_bytes,
        }
    }
}

/// `switchboard health`. Without a URL it asks the process configured by the
/// same variables: the admin listener, else the listener, else 127.0.0.1:9091.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// What to ask, e.g. http://127.0.0.1:9091/health/ready (a bare
    /// http://host:port asks /health/ready). Default: from --admin-listen,
    /// else --listen (an unspecified address is asked on loopback), else
    /// http://127.0.0.1:9091/health/ready.
    #[arg(value_name = "URL")]
    pub url: Option<String>,

    /// The admin listener of the gateway or standalone to ask (what it was
    /// given as --admin-listen).
    #[arg(long, env = "SWITCHBOARD_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// The listener to ask when no admin listener is named: the collector's,
    /// or a gateway's client port (which answers health too).
    #[arg(long, env = "SWITCHBOARD_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Limit on the whole check, connect to answer.
    #[arg(long, env = "SWITCHBOARD_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

impl HealthArgs {
    /// What `health` asks, as these flags say.
    pub fn config(&self) -> crate::client::health::HealthConfig {
        crate::client::health::HealthConfig {
            url: self.url.clone(),
            admin_listen: self.admin_listen,
            listen: self.listen,
            timeout: self.timeout,
        }
    }
}

#[derive(Debug, Args)]
pub struct StandaloneArgs {
    /// Address to listen on (WebSocket, REST API, the dashboard page, health).
    /// Loopback only, unless --allow-remote.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Address of the admin listener: /metrics, /health/live and /health/ready
    /// (only these). The same address as --listen serves them there instead
    /// (one port, as before this flag existed); port 0 in both gives each a
    /// port of its own.
    #[arg(
        long,
        env = "SWITCHBOARD_ADMIN_LISTEN",
        default_value = "127.0.0.1:9091"
    )]
    pub admin_listen: SocketAddr,

    /// Allow a non-loopback --listen address without authentication: anyone
    /// who can reach the address can read and publish every channel. Not
    /// needed with a JWT key flag (then every client needs a token).
    #[arg(long, env = "SWITCHBOARD_ALLOW_REMOTE")]
    pub allow_remote: bool,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub server: ServerArgs,

    #[command(flatten)]
    pub history: HistoryArgs,

    #[command(flatten)]
    pub collector: CollectorSchedule,

    #[command(flatten)]
    pub sources: CollectorSources,

    #[command(flatten)]
    pub check: CheckArgs,

    /// For a rediss:// --federation-redis-url.
    #[command(flatten)]
    pub redis_tls: RedisTlsArgs,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Address to listen on for clients (WebSocket, REST API, the dashboard
    /// page, health; not /metrics).
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of the admin listener: /metrics, /health/live and /health/ready
    /// (only these), for Prometheus and probes, kept off the client port. The
    /// same address as --listen serves them there instead (one port, as before
    /// this flag existed); port 0 in both gives each a port of its own.
    #[arg(long, env = "SWITCHBOARD_ADMIN_LISTEN", default_value = "0.0.0.0:9091")]
    pub admin_listen: SocketAddr,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub server: ServerArgs,

    #[command(flatten)]
    pub history: HistoryArgs,

    #[command(flatten)]
    pub check: CheckArgs,
}

#[derive(Debug, Args)]
pub struct CollectorArgs {
    /// Address of the collector's own /health/live, /health/ready and /metrics
    /// (its only listener: it serves no clients, so it needs no --admin-listen).
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub history: HistoryArgs,

    #[command(flatten)]
    pub schedule: CollectorSchedule,

    #[command(flatten)]
    pub sources: CollectorSources,

    #[command(flatten)]
    pub lease: LeaseArgs,

    #[command(flatten)]
    pub check: CheckArgs,
}

/// `--check-config` of the long-running commands (standalone, gateway, collector).
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Check the configuration (flags and environment) and exit: 0 and one line
    /// when every value is valid, 1 and what to fix when not. Opens no file and
    /// contacts nothing (key files, databases and Redis are first used at
    /// startup). Not read from the environment.
    #[arg(long)]
    pub check_config: bool,
}

/// Authentication of clients: JWT keys and what tokens must say.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// Run without authentication: every client may subscribe to and publish on
    /// every channel. Only for trusted networks. gateway: required unless a JWT
    /// key flag is given; standalone: the default, which this flag confirms.
    #[arg(long, env = "SWITCHBOARD_NO_AUTH")]
    pub no_auth: bool,

    /// File of HMAC secrets (HS256/384/512), one per line, at least 32 bytes each;
    /// two may be active at once for rotation. Repeatable. Re-read when it changes.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET_FILE", value_delimiter = ',')]
    pub jwt_secret_file: Vec<PathBuf>,

    /// PEM file of an RSA (RS256) or EC P-256 (ES256) public key. Repeatable.
    #[arg(long, env = "SWITCHBOARD_JWT_PUBLIC_KEY_FILE", value_delimiter = ',')]
    pub jwt_public_key_file: Vec<PathBuf>,

    /// JWKS file (`{"keys": [...]}`, e.g. a mounted Kubernetes secret); keys are
    /// chosen by `kid` and the file is re-read when it changes.
    #[arg(long, env = "SWITCHBOARD_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,

    /// Tolerance on the `exp` and `nbf` claims (clock skew).
    #[arg(long, env = "SWITCHBOARD_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,

    /// Required `aud` claim (any of these). Repeatable or comma-separated.
    #[arg(long, env = "SWITCHBOARD_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,

    /// Required `iss` claim (any of these). Repeatable or comma-separated.
    #[arg(long, env = "SWITCHBOARD_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Vec<String>,

    /// How often the key files are checked for changes.
    #[arg(long, env = "SWITCHBOARD_JWT_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub jwt_reload_interval: Duration,

    /// Longest token accepted, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_TOKEN_BYTES", default_value_t = 8192)]
    pub max_token_bytes: usize,

    /// Permissions a name in a token's `roles` claim grants: `NAME=PERM,PERM…`
    /// (e.g. `admin=websocket:admin`). Repeatable; in the variable, separate
    /// roles with `;`. A role not named here grants nothing.
    #[arg(long, env = "SWITCHBOARD_JWT_ROLE", value_delimiter = ';', value_parser = crate::auth::parse_role)]
    pub jwt_role: Vec<(String, Vec<String>)>,
}

impl AuthArgs {
    fn has_keys(&self) -> bool {
        !self.jwt_secret_file.is_empty()
            || !self.jwt_public_key_file.is_empty()
            || self.jwks_file.is_some()
    }

    /// The gateway's JWT configuration, or `None` when authentication is off:
    /// a key flag or `--no-auth` is required.
    pub fn jwt_config(&self) -> Result<Option<JwtConfig>, ConfigError> {
        if !self.no_auth && !self.has_keys() {
            return Err(ConfigError::Conflict("authentication needs a key: pass --jwt-secret-file, --jwt-public-key-file or --jwks-file (or --no-auth to run without authentication)".into()));
        }
        self.optional_jwt_config()
    }

    /// standalone's JWT configuration: `None` (no authentication) unless a key
    /// flag is given; `--no-auth` confirms the default.
    pub fn optional_jwt_config(&self) -> Result<Option<JwtConfig>, ConfigError> {
        match (self.no_auth, self.has_keys()) {
            (true, true) => Err(ConfigError::Conflict(
                "--no-auth contradicts the JWT key flags: choose one".into(),
            )),
            (_, false) => Ok(None),
            (false, true) => Ok(Some(JwtConfig {
                secret_files: self.jwt_secret_file.clone(),
                public_key_files: self.jwt_public_key_file.clone(),
                jwks_file: self.jwks_file.clone(),
                leeway: self.jwt_leeway,
                audience: self.jwt_audience.clone(),
                issuer: self.jwt_issuer.clone(),
                reload_interval: self.jwt_reload_interval,
                max_token_bytes: self.max_token_bytes,
                roles: self.jwt_role.iter().cloned().collect(),
            })),
        }
    }
}

/// `switchboard token`: what to sign.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// HMAC secret file (its first line is the secret) for HS256/384/512.
    #[arg(
        long,
        env = "SWITCHBOARD_SECRET_FILE",
        required_unless_present = "private_key_file"
    )]
    pub secret_file: Option<PathBuf>,

    /// PEM private key for RS256 or ES256 (use with --alg).
    #[arg(
        long,
        env = "SWITCHBOARD_PRIVATE_KEY_FILE",
        conflicts_with = "secret_file"
    )]
    pub private_key_file: Option<PathBuf>,

    /// Signing algorithm.
    #[arg(long, env = "SWITCHBOARD_ALG", default_value = "HS256", value_parser = ["HS256", "HS384", "HS512", "RS256", "ES256"])]
    pub alg: String,

    /// The user (`sub` claim); must not be empty: gateways refuse tokens
    /// without a user.
    #[arg(long, env = "SWITCHBOARD_SUB")]
    pub sub: String,

    /// A permission: websocket:connect, websocket:subscribe, websocket:publish,
    /// websocket:admin, agent:ID:monitor. Repeatable or comma-separated.
    #[arg(long = "perm", env = "SWITCHBOARD_PERM", value_delimiter = ',')]
    pub permissions: Vec<String>,

    /// Channel glob patterns the token may subscribe to (and publish on, with
    /// websocket:publish), e.g. `federation` or `dash:*`. Repeatable or comma-separated.
    #[arg(long, env = "SWITCHBOARD_CHANNELS", value_delimiter = ',')]
    pub channels: Vec<String>,

    /// A name for the `roles` claim (the ESCAI seed's tokens carry roles; a
    /// gateway maps each to permissions with --jwt-role). Repeatable or comma-separated.
    #[arg(long = "role", env = "SWITCHBOARD_ROLE", value_delimiter = ',')]
    pub roles: Vec<String>,

    /// Lifetime of the token.
    #[arg(long, env = "SWITCHBOARD_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,

    /// `aud` claim.
    #[arg(long, env = "SWITCHBOARD_AUD")]
    pub aud: Option<String>,

    /// `iss` claim.
    #[arg(long, env = "SWITCHBOARD_ISS")]
    pub iss: Option<String>,

    /// `kid` header (selects the key in a JWKS).
    #[arg(long, env = "SWITCHBOARD_KID")]
    pub kid: Option<String>,
}

/// Connection to the Redis that carries channels, history and snapshots.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// One Redis: redis://[user:password@]host:port[/db], or rediss://… over
    /// TLS. A Redis Cluster: redis+cluster://[user:password@]host:port[,host:port…]
    /// (rediss+cluster://… over TLS), or use --redis-cluster-urls. Exactly one
    /// of the two is required; the collector, given neither (nor their
    /// variables), takes seed 001's REDIS_URL.
    #[arg(long, env = "SWITCHBOARD_REDIS_URL")]
    pub redis_url: Option<String>,

    /// A Redis Cluster (Redis ≥ 7, for sharded pub/sub), by some of its nodes:
    /// comma-separated redis://[user:password@]host:port, or all rediss://…
    /// for TLS (the other nodes are discovered). Instead of --redis-url.
    #[arg(long, env = "SWITCHBOARD_REDIS_CLUSTER_URLS", value_delimiter = ',')]
    pub redis_cluster_urls: Vec<String>,

    #[command(flatten)]
    pub tls: RedisTlsArgs,

    /// Prefix of every Redis key and pub/sub channel switchboard uses.
    #[arg(long, env = "SWITCHBOARD_REDIS_PREFIX", default_value = "switchboard:")]
    pub redis_prefix: String,

    /// Limit on one Redis command's round trip.
    #[arg(long, env = "SWITCHBOARD_REDIS_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,

    /// Limit on establishing a Redis connection.
    #[arg(long, env = "SWITCHBOARD_REDIS_CONNECT_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub redis_connect_timeout: Duration,

    /// Redis command connections (each one multiplexes many commands); on a
    /// cluster, this many per master.
    #[arg(long, env = "SWITCHBOARD_REDIS_POOL_SIZE", default_value_t = 8)]
    pub redis_pool_size: usize,

    /// Interval of the probe that checks the pub/sub connection still delivers;
    /// three missed probes rebuild it.
    #[arg(long, env = "SWITCHBOARD_REDIS_PROBE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub redis_probe_interval: Duration,

    /// Acknowledge a publish only once this many replicas of its Redis master
    /// have it (WAIT), so that a master crash cannot lose an acknowledged
    /// message; 0 acknowledges at once (Redis replicates asynchronously).
    /// Costs a replication round trip per publish, and a master left without
    /// that many replicas refuses publishes (503) until they are back.
    #[arg(long, env = "SWITCHBOARD_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: usize,

    /// Longest wait for --redis-wait-replicas; a publish not confirmed by then
    /// is answered 503 (it may have been delivered; a retry may publish it
    /// twice), logged and counted in switchboard_redis_errors_total.
    #[arg(long, env = "SWITCHBOARD_REDIS_WAIT_TIMEOUT", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub redis_wait_timeout: Duration,

    /// On a Redis Cluster: after this many consecutive failed Redis health
    /// checks (one every 2 s, every 0.5 s while they fail), if a seed node answers on a new connection that
    /// the cluster is ok, the cluster command connections are thrown away and
    /// opened again from the seeds (logged, counted in
    /// switchboard_redis_client_rebuilds_total); 0 never rebuilds them.
    #[arg(long, env = "SWITCHBOARD_REDIS_CLUSTER_REBUILD_AFTER", default_value_t = crate::engine::redis::DEFAULT_CLUSTER_REBUILD_AFTER)]
    pub redis_cluster_rebuild_after: u32,

    /// On a Redis Cluster: how long a publish made without an idempotency key
    /// is remembered under a key of its own, so that the cluster client
    /// resending the publish script after a connection lost before its reply (a
    /// master failing over) does not publish the message twice; 0 turns the
    /// guard off. One small key per publish, kept this long.
    #[arg(long, env = "SWITCHBOARD_REDIS_RESEND_GUARD", default_value = "60s", value_parser = humantime::parse_duration)]
    pub redis_resend_guard: Duration,
}

impl RedisArgs {
    /// The Redis (or Redis Cluster) these flags name.
    pub fn target(&self) -> Result<RedisTarget, ConfigError> {
        if self.redis_probe_interval.is_zero() {
            return Err(ConfigError::range(
                "--redis-probe-interval",
                "must be more than 0",
            ));
        }
        if self.redis_wait_replicas > 0 && self.redis_wait_timeout.is_zero() {
            return Err(ConfigError::range(
                "--redis-wait-timeout",
                "must be more than 0 with --redis-wait-replicas (WAIT 0 would block forever)",
            ));
        }
        if self.redis_wait_replicas > 0 && self.redis_wait_timeout >= self.redis_timeout {
            return Err(ConfigError::range(
                "--redis-wait-timeout",
                format!(
                    "({:?}) must be shorter than --redis-timeout ({:?}), which bounds the whole publish",
                    self.redis_wait_timeout, self.redis_timeout
                ),
            ));
        }
        RedisTarget::from_flags(self.redis_url.as_deref(), &self.redis_cluster_urls)
            .map_err(|e| ConfigError::Value(e.to_string()))
    }
}

/// TLS to Redis, for rediss:// URLs: what to trust and what to present.
#[derive(Debug, Clone, Default, Args)]
pub struct RedisTlsArgs {
    /// PEM file of the CA certificate(s) that signed the Redis servers'
    /// certificates (rediss:// URLs); then only these are trusted. Default: the
    /// system's trusted roots, which managed Redis services are signed by.
    #[arg(long, env = "SWITCHBOARD_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// PEM client certificate (chain) presented to a Redis that requires
    /// client certificates (mutual TLS, `tls-auth-clients yes`); with
    /// --redis-client-key-file.
    #[arg(long, env = "SWITCHBOARD_REDIS_CLIENT_CERT_FILE")]
    pub redis_client_cert_file: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --redis-client-cert-file.
    #[arg(long, env = "SWITCHBOARD_REDIS_CLIENT_KEY_FILE")]
    pub redis_client_key_file: Option<PathBuf>,
}

impl RedisTlsArgs {
    /// The TLS settings for these Redis URLs: read and checked if one of
    /// them is rediss://; none otherwise (and then no TLS flag may be given).
    pub fn load<'a>(
        &self,
        urls: impl IntoIterator<Item = &'a str>,
    ) -> Result<Option<RedisTls>, TlsError> {
        let files = TlsFiles {
            ca_file: self.redis_ca_file.clone(),
            client_cert_file: self.redis_client_cert_file.clone(),
            client_key_file: self.redis_client_key_file.clone(),
        };
        RedisTls::for_urls(&files, urls)
    }
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
                tombstone: Duration::ZERO,
            },
            namespaces: self
                .namespace_history
                .iter()
                .cloned()
                .collect::<HashMap<_, _>>(),
        }
    }
}

/// Why a `--namespace-history` value is not `NAMESPACE=SIZE:TTL`.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceHistoryError {
    #[error("expected NAMESPACE=SIZE:TTL such as agents=100:1m, got {0:?}")]
    Usage(String),
    #[error("expected NAMESPACE=SIZE:TTL such as agents=100:1m, got {spec:?}: {source}")]
    Ttl {
        spec: String,
        source: humantime::DurationError,
    },
}

fn parse_namespace_history(s: &str) -> Result<(String, HistoryPolicy), NamespaceHistoryError> {
    let usage = || NamespaceHistoryError::Usage(s.to_owned());
    let (ns, rest) = s.split_once('=').ok_or_else(usage)?;
    let (size, ttl) = rest.split_once(':').ok_or_else(usage)?;
    let size = size.trim().parse().map_err(|_| usage())?;
    let ttl =
        humantime::parse_duration(ttl.trim()).map_err(|source| NamespaceHistoryError::Ttl {
            spec: s.to_owned(),
            source,
        })?;
    if ns.is_empty() {
        return Err(usage());
    }
    Ok((
        ns.trim().to_string(),
        HistoryPolicy {
            size,
            ttl,
            tombstone: Duration::ZERO,
        },
    ))
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

/// Where the collector reads the dashboards' data (seed 001; docs/SOURCES.md).
#[derive(Debug, Clone, Args)]
pub struct CollectorSources {
    /// Which sections are simulated: `auto` those without a configured source,
    /// `always` all (no source is read), `never` none (a section without a
    /// source is shown empty and marked stale).
    #[arg(long, env = "SWITCHBOARD_SIMULATE", value_enum, default_value = "auto")]
    pub simulate: SimulateMode,

    /// What a section shows when its configured source fails: `stale` its last
    /// good values, marked stale with their age and the error (never invented
    /// numbers); `simulate` simulated values, marked simulated with the error
    /// (seed 001's fallback, for clients that never read `sources`).
    #[arg(
        long,
        env = "SWITCHBOARD_ON_SOURCE_FAILURE",
        value_enum,
        default_value = "stale"
    )]
    pub on_source_failure: OnSourceFailure,

    /// Redis holding the federation's peer hashes and sync events
    /// (collector default: --redis-url; standalone: seed 001's REDIS_URL if
    /// set, else none, simulated); one Redis, redis://… or rediss://… (TLS,
    /// with the --redis-ca-file trust).
    #[arg(long, env = "SWITCHBOARD_FEDERATION_REDIS_URL")]
    pub federation_redis_url: Option<String>,

    /// SCAN pattern of the peer hashes; a peer's id is its `id` field or the
    /// key without the pattern's literal prefix.
    #[arg(
        long,
        env = "SWITCHBOARD_FEDERATION_PEER_PATTERN",
        default_value = "peer:*"
    )]
    pub federation_peer_pattern: String,

    /// Redis list of sync events (JSON objects, newest first: producers LPUSH).
    #[arg(
        long,
        env = "SWITCHBOARD_FEDERATION_SYNC_KEY",
        default_value = "sync_events"
    )]
    pub federation_sync_key: String,

    /// More peer hashes than this marks the peers section stale (raise it
    /// rather than show a truncated mesh).
    #[arg(
        long,
        env = "SWITCHBOARD_FEDERATION_MAX_PEERS",
        default_value_t = 10_000
    )]
    pub federation_max_peers: usize,

    /// The federation service's discovery endpoint (plain HTTP), e.g.
    /// http://federation:9001/discover; its peers complete those in Redis.
    #[arg(long, env = "SWITCHBOARD_FEDERATION_DISCOVER_URL")]
    pub federation_discover_url: Option<String>,

    /// Largest /discover response body accepted.
    #[arg(long, env = "SWITCHBOARD_FEDERATION_DISCOVER_MAX_BYTES", default_value_t = 1024 * 1024)]
    pub federation_discover_max_bytes: usize,

    /// Opt-in: a peer whose last_seen is older than this (or missing) counts as
    /// offline, whatever the status in its hash says. Unset (the default): the
    /// hash's status is shown as written, as seed 001 does (its federation
    /// service keeps status up to date); 30s gives the behaviour of releases
    /// before this flag became opt-in.
    #[arg(long, env = "SWITCHBOARD_PEER_STALENESS", value_parser = humantime::parse_duration)]
    pub peer_staleness: Option<Duration>,

    /// Weights of trust tiers in data integrity, TIER=WEIGHT pairs; `*` is every other tier.
    #[arg(long, env = "SWITCHBOARD_TRUST_WEIGHTS", default_value = crate::collector::formulas::DEFAULT_TRUST_WEIGHTS)]
    pub trust_weights: TrustWeights,

    /// SQLite reasoning_logs.db (reasoning_sessions, reasoning_stages), opened
    /// read-only. Default: $ARK_BASE_PATH/data/reasoning_logs.db when seed 001's
    /// ARK_BASE_PATH is set; else none (the section is simulated).
    #[arg(long, env = "SWITCHBOARD_REASONING_DB")]
    pub reasoning_db: Option<PathBuf>,

    /// SQLite ark.db (code_index, code_patterns, sandbox_executions), opened
    /// read-only. Default: $ARK_BASE_PATH/data/ark.db when seed 001's
    /// ARK_BASE_PATH is set; else none (the section is simulated).
    #[arg(long, env = "SWITCHBOARD_ARK_DB")]
    pub ark_db: Option<PathBuf>,

    /// How long a SQLite read waits for a writer's lock before the section turns stale.
    #[arg(long, env = "SWITCHBOARD_SQLITE_BUSY_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub sqlite_busy_timeout: Duration,

    /// Limit on reading one source in a cycle (Redis connect and commands,
    /// /discover, SQLite queries, which are interrupted).
    #[arg(long, env = "SWITCHBOARD_SOURCE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub source_timeout: Duration,

    /// Ingestion and consolidation rates count rows created within this window.
    #[arg(long, env = "SWITCHBOARD_RATE_WINDOW", default_value = "60s", value_parser = humantime::parse_duration)]
    pub rate_window: Duration,

    /// A reasoning stage at or above this confidence counts as consolidated.
    #[arg(
        long,
        env = "SWITCHBOARD_CONSOLIDATION_THRESHOLD",
        default_value_t = 0.7
    )]
    pub consolidation_threshold: f64,

    /// Sandbox executions that did not succeed within this window count as quarantined.
    #[arg(long, env = "SWITCHBOARD_QUARANTINE_WINDOW", default_value = "24h", value_parser = humantime::parse_duration)]
    pub quarantine_window: Duration,
}

impl CollectorSources {
    /// The collector configuration these flags describe; `default_federation_url`
    /// is used when --federation-redis-url is not given.
    pub fn config(
        &self,
        schedule: &CollectorSchedule,
        default_federation_url: Option<&str>,
    ) -> Result<CollectorConfig, ConfigError> {
        if schedule.collect_interval_min.is_zero() {
            return Err(ConfigError::range(
                "--collect-interval-min",
                "must be more than 0",
            ));
        }
        if self.source_timeout.is_zero() {
            return Err(ConfigError::range(
                "--source-timeout",
                "must be more than 0",
            ));
        }
        if self.rate_window.is_zero() {
            return Err(ConfigError::range("--rate-window", "must be more than 0"));
        }
        if self.simulate == SimulateMode::Never
            && self.on_source_failure == OnSourceFailure::Simulate
        {
            return Err(ConfigError::Conflict("--on-source-failure simulate contradicts --simulate never (which simulates nothing): choose one".into()));
        }
        if self.peer_staleness.is_some_and(|s| s.is_zero()) {
            return Err(ConfigError::range(
                "--peer-staleness",
                "must be more than 0 (leave it unset to keep each peer's status)",
            ));
        }
        if !(0.0..=1.0).contains(&self.consolidation_threshold) {
            return Err(ConfigError::range(
                "--consolidation-threshold",
                "must be between 0 and 1",
            ));
        }
        if self.federation_peer_pattern.is_empty() || self.federation_sync_key.is_empty() {
            return Err(ConfigError::Conflict(
                "--federation-peer-pattern and --federation-sync-key must not be empty".into(),
            ));
        }
        let federation = self
            .federation_redis_url
            .as_deref()
            .or(default_federation_url)
            .map(|url| FederationRedisConfig {
                url: url.to_string(),
                tls: None,
                peer_pattern: self.federation_peer_pattern.clone(),
                sync_key: self.federation_sync_key.clone(),
                max_peers: self.federation_max_peers.max(1),
                timeout: self.source_timeout,
            });
        let discover = self
            .federation_discover_url
            .as_deref()
            .map(|url| {
                DiscoverConfig::parse_url(url)
                    .map_err(|e| ConfigError::Value(e.to_string()))
                    .map(|url| DiscoverConfig {
                        url,
                        timeout: self.source_timeout,
                        max_bytes: self.federation_discover_max_bytes,
                    })
            })
            .transpose()?;
        if discover.is_some() && federation.is_none() {
            return Err(ConfigError::Conflict("--federation-discover-url completes the peers read from Redis: also pass --federation-redis-url".into()));
        }
        let sqlite = |path: &Option<PathBuf>| {
            path.as_ref().map(|p| SqliteConfig {
                path: p.clone(),
                busy_timeout: self.sqlite_busy_timeout.min(self.source_timeout),
                query_timeout: self.source_timeout,
            })
        };
        let low = schedule.collect_interval_min;
        Ok(CollectorConfig {
            interval: low..=schedule.collect_interval_max.max(low),
            simulate: self.simulate,
            on_source_failure: self.on_source_failure,
            federation,
            discover,
            reasoning_db: sqlite(&self.reasoning_db),
            ark_db: sqlite(&self.ark_db),
            formulas: FormulaConfig {
                peer_staleness: self.peer_staleness,
                trust_weights: self.trust_weights.clone(),
                rate_window: self.rate_window,
                consolidation_threshold: self.consolidation_threshold,
                quarantine_window: self.quarantine_window,
            },
        })
    }
}

/// Leadership among collector replicas.
#[derive(Debug, Clone, Args)]
pub struct LeaseArgs {
    /// How long the leader's lease lasts without renewal: after a leader dies
    /// another collector takes over when it runs out and publishes within a cycle.
    #[arg(long, env = "SWITCHBOARD_LEASE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,

    /// How often the leader renews its lease and followers try to take it
    /// (at most half of --lease-ttl); a follower also tries the moment the
    /// lease it saw runs out.
    #[arg(long, env = "SWITCHBOARD_LEASE_RENEW_INTERVAL", default_value = "3s", value_parser = humantime::parse_duration)]
    pub lease_renew_interval: Duration,

    /// Key of the lease, under --redis-prefix.
    #[arg(
        long,
        env = "SWITCHBOARD_LEASE_KEY",
        default_value = "collector:leader"
    )]
    pub lease_key: String,

    /// This collector's name in the lease and in logs (default: host name).
    #[arg(long, env = "SWITCHBOARD_REPLICA_ID")]
    pub replica_id: Option<String>,
}

impl LeaseArgs {
    /// Checks the timing; returns (ttl, renew interval).
    pub fn timing(&self) -> Result<(Duration, Duration), ConfigError> {
        if self.lease_ttl < Duration::from_millis(100) {
            return Err(ConfigError::range("--lease-ttl", "must be at least 100ms"));
        }
        if self.lease_renew_interval.is_zero() || self.lease_renew_interval * 2 > self.lease_ttl {
            return Err(ConfigError::range(
                "--lease-renew-interval",
                "must be more than 0 and at most half of --lease-ttl",
            ));
        }
        Ok((self.lease_ttl, self.lease_renew_interval))
    }
}

#[derive(Debug, Args)]
pub struct DemoDataArgs {
    /// Directory to create reasoning_logs.db and ark.db in (created if missing).
    pub dir: PathBuf,

    /// Also write sample peer hashes and sync events to this Redis
    /// (redis://… or rediss://… over TLS).
    #[arg(long, env = "SWITCHBOARD_REDIS_URL")]
    pub redis_url: Option<String>,

    #[command(flatten)]
    pub redis_tls: RedisTlsArgs,

    /// Replace existing database files.
    #[arg(long, env = "SWITCHBOARD_FORCE")]
    pub force: bool,

    /// Keep writing (sessions, stages, sandbox runs, peer heartbeats, sync
    /// events) until stopped, so the live dashboards move.
    #[arg(long, env = "SWITCHBOARD_FOLLOW")]
    pub follow: bool,

    /// Interval of --follow writes.
    #[arg(long, env = "SWITCHBOARD_FOLLOW_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub follow_interval: Duration,

    /// Peer hashes to write: the five named ones (core, trusted, verified; one
    /// degraded, one offline), then generated `ark-mesh-NNN` peers — 100 makes
    /// the federation snapshot of a large ARK mesh (tens of KB).
    #[arg(long, env = "SWITCHBOARD_PEERS", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=10000))]
    pub peers: u16,

    /// Peer hash pattern, as the collector's (a prefix followed by `*`).
    #[arg(
        long,
        env = "SWITCHBOARD_FEDERATION_PEER_PATTERN",
        default_value = "peer:*"
    )]
    pub federation_peer_pattern: String,

    /// Sync events list, as the collector's.
    #[arg(
        long,
        env = "SWITCHBOARD_FEDERATION_SYNC_KEY",
        default_value = "sync_events"
    )]
    pub federation_sync_key: String,
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

    /// A REST request body over its endpoint's limit (e.g. a publish over
    /// --max-message-bytes) is read and discarded up to this size before the 413,
    /// so a load balancer in front passes the 413 on instead of a 502; larger
    /// bodies get 413 at once and the connection is closed. Keep it at least the
    /// load balancer's own body limit (nginx: client_max_body_size, 1m).
    #[arg(long, env = "SWITCHBOARD_DISCARD_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub discard_body_bytes: u64,

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

    /// How long the idempotency key of a publish (POST /api/v1/publish, body
    /// field "idempotency_key" or header Idempotency-Key) is remembered per
    /// channel: a repeat within it is answered with the first publish's offset
    /// and epoch and not published again. Costs one small Redis key per keyed
    /// publish for this long.
    #[arg(long, env = "SWITCHBOARD_IDEMPOTENCY_WINDOW", default_value = "5m", value_parser = humantime::parse_duration)]
    pub idempotency_window: Duration,

    /// Conditions in one subscription filter.
    #[arg(long, env = "SWITCHBOARD_MAX_FILTER_CONDITIONS", default_value_t = 16)]
    pub max_filter_conditions: usize,

    /// Bytes of one subscription filter.
    #[arg(long, env = "SWITCHBOARD_MAX_FILTER_BYTES", default_value_t = 2048)]
    pub max_filter_bytes: usize,

    /// Connections one user (token `sub`) may hold on this replica; more get 429 and Retry-After.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CONNECTIONS_PER_USER",
        default_value_t = 100
    )]
    pub max_connections_per_user: usize,

    /// Sustained messages per second one client may send; beyond, its messages
    /// are refused with `rate_limited`, and a client that keeps going is closed with 1008.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_MESSAGES_PER_SECOND",
        default_value_t = 20
    )]
    pub max_messages_per_second: u32,

    /// Messages one client may send in a burst above the sustained rate.
    #[arg(long, env = "SWITCHBOARD_MESSAGE_BURST", default_value_t = 50)]
    pub message_burst: u32,

    /// Origins allowed to open WebSockets and call the REST API from a browser:
    /// exact (`https://dash.example.com`) or with wildcards (`https://*.example.com`);
    /// `*` or nothing allows any. Comma-separated.
    #[arg(long, env = "SWITCHBOARD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// How long a session (subscriptions and acknowledged positions) can be
    /// resumed with `?session=` after its last change.
    #[arg(long, env = "SWITCHBOARD_SESSION_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub session_ttl: Duration,

    /// Time a client whose token expired has to send `refresh_token` before it is closed with 4001.
    #[arg(long, env = "SWITCHBOARD_TOKEN_EXPIRY_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub token_expiry_grace: Duration,

    /// Interval of server WebSocket pings (sent to clients as `heartbeat_interval`; 0 disables). The first ping comes in the second half of the interval, spread over connections.
    #[arg(long, env = "SWITCHBOARD_PING_INTERVAL", default_value = "25s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// Time a client has to answer a ping before it is closed with 4002.
    #[arg(long, env = "SWITCHBOARD_PONG_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub pong_timeout: Duration,

    /// Time a client may send nothing (no message, no pong) before it is closed with 4003 (0 disables).
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

    /// Interval of this replica's report on the admin-only `sys:stats` channel
    /// (the dashboard's operations view); 0 disables it.
    #[arg(long, env = "SWITCHBOARD_STATS_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub stats_interval: Duration,

    /// Fan-out shards (tasks writing to sockets); default: one per worker thread.
    #[arg(long, env = "SWITCHBOARD_FANOUT_SHARDS")]
    pub fanout_shards: Option<usize>,

    /// Commands queued per fan-out shard before producers wait.
    #[arg(long, env = "SWITCHBOARD_SHARD_QUEUE", default_value_t = 8192)]
    pub shard_queue: usize,

    #[command(flatten)]
    pub dialects: DialectArgs,

    #[command(flatten)]
    pub anonymous: AnonymousArgs,

    /// permessage-deflate (RFC 7692) with clients that offer it: `on` or `off`.
    /// Each message is compressed once per replica and the same frame goes to
    /// every compressing client (no per-connection compression state).
    #[arg(long, env = "SWITCHBOARD_COMPRESSION", value_enum, default_value_t = Switch::On)]
    pub compression: Switch,

    /// Messages smaller than this many bytes go out uncompressed.
    #[arg(long, env = "SWITCHBOARD_COMPRESSION_THRESHOLD", default_value_t = 256)]
    pub compression_threshold: usize,

    /// Compression level, 1 (fastest) to 9 (smallest).
    #[arg(long, env = "SWITCHBOARD_COMPRESSION_LEVEL", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub compression_level: u32,
}

/// A feature turned `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// Reading without a token (the seeds' dashboards open their sockets without one).
#[derive(Debug, Clone, Args)]
pub struct AnonymousArgs {
    /// Channels a WebSocket client without a token may subscribe to, read-only,
    /// on every route: glob patterns, comma-separated or repeated (e.g.
    /// `federation,memory,reasoning:*,agents,round_table,tasks,3d_pipeline,metrics`).
    /// Everything else still needs a token: other channels, publishing, the
    /// admin API; the `sys` namespace never. A token that is given is verified
    /// (a bad one is refused, never treated as no token). Empty: every
    /// connection needs a token.
    #[arg(long, env = "SWITCHBOARD_ANONYMOUS_SUBSCRIBE", value_delimiter = ',')]
    pub anonymous_subscribe: Vec<String>,

    /// Connections without a token per replica; more get 503 and Retry-After
    /// (default: half of --max-connections).
    #[arg(long, env = "SWITCHBOARD_MAX_ANONYMOUS_CONNECTIONS")]
    pub max_anonymous_connections: Option<usize>,

    /// Connections without a token per client address per replica (the address
    /// from --client-ip-header behind --trusted-proxies); more get 429.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_ANONYMOUS_CONNECTIONS_PER_IP",
        default_value_t = 20
    )]
    pub max_anonymous_connections_per_ip: usize,

    /// Proxies (addresses or CIDR networks, comma-separated) whose
    /// --client-ip-header names the client's address; from anyone else the
    /// header is ignored and the TCP peer is the client. Empty: trust none.
    #[arg(long, env = "SWITCHBOARD_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,

    /// The header a trusted proxy puts the client's address in (the rightmost
    /// address not itself a trusted proxy is the client).
    #[arg(
        long,
        env = "SWITCHBOARD_CLIENT_IP_HEADER",
        default_value = "X-Forwarded-For"
    )]
    pub client_ip_header: String,
}

/// The seed systems' routes: ESCAI (`/ws/monitor/{session_id}`, seed 003) and
/// AI Council (`/api/v1/ws/{request_id}`, seed 004).
#[derive(Debug, Clone, Args)]
pub struct DialectArgs {
    /// ESCAI route: interval of the server's heartbeat (a WebSocket ping and the
    /// seed's `{"type":"ping"}`); 0 disables it.
    #[arg(long, env = "SWITCHBOARD_ESCAI_PING_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub escai_ping_interval: Duration,

    /// ESCAI route: time to answer the heartbeat (a WebSocket pong or
    /// `{"type":"pong"}`) before the close with 4002.
    #[arg(long, env = "SWITCHBOARD_ESCAI_PONG_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub escai_pong_timeout: Duration,

    /// ESCAI route: time a client may send nothing before it is closed with 4003 (0 disables).
    #[arg(long, env = "SWITCHBOARD_ESCAI_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub escai_idle_timeout: Duration,

    /// AI Council route: interval of the server's `{"type":"heartbeat"}`; 0 disables it.
    #[arg(long, env = "SWITCHBOARD_COUNCIL_HEARTBEAT_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub council_heartbeat_interval: Duration,

    /// AI Council route: time a client may send nothing (no ack, no
    /// heartbeat_response) before it is closed with 4003 (0 disables).
    #[arg(long, env = "SWITCHBOARD_COUNCIL_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub council_idle_timeout: Duration,

    /// AI Council route: how long a request's events are kept after its last
    /// event (older events are reported to a reconnecting client as expired,
    /// never skipped silently).
    #[arg(long, env = "SWITCHBOARD_COUNCIL_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub council_retention: Duration,

    /// AI Council route: how much longer than --council-retention a request's
    /// newest message_id, owner and acknowledgements are kept (a few bytes per
    /// request and user), so that a client reconnecting after its events
    /// expired is told which it missed (events_expired) instead of finding an
    /// empty request. Past both, the request is forgotten. 0 forgets it with
    /// its events.
    #[arg(long, env = "SWITCHBOARD_COUNCIL_TOMBSTONE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub council_tombstone: Duration,

    /// AI Council route: events kept per request (the history of the `council` namespace).
    #[arg(
        long,
        env = "SWITCHBOARD_COUNCIL_HISTORY_SIZE",
        default_value_t = 10_000
    )]
    pub council_history_size: usize,

    /// AI Council route: how long acknowledgements are gathered before one
    /// write to Redis (sooner when a connection ends, and on shutdown). A
    /// replica killed or stalled within this interval of an ack loses it:
    /// that event is replayed on the client's next connect (at least once).
    #[arg(long, env = "SWITCHBOARD_COUNCIL_ACK_FLUSH_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub council_ack_flush_interval: Duration,
}

impl DialectArgs {
    /// The dialects' configuration.
    pub fn config(&self) -> Result<Dialects, ConfigError> {
        if self.council_retention.is_zero() {
            return Err(ConfigError::range(
                "--council-retention",
                "must be longer than 0",
            ));
        }
        if self.council_history_size == 0 {
            return Err(ConfigError::range(
                "--council-history-size",
                "must be at least 1 (the replay needs the events)",
            ));
        }
        if self.council_ack_flush_interval.is_zero()
            || self.council_ack_flush_interval > Duration::from_secs(60)
        {
            return Err(ConfigError::range(
                "--council-ack-flush-interval",
                "must be between 1ms and 60s",
            ));
        }
        if !self.escai_ping_interval.is_zero() && self.escai_pong_timeout.is_zero() {
            return Err(ConfigError::range(
                "--escai-pong-timeout",
                "must be longer than 0 while --escai-ping-interval is on",
            ));
        }
        Ok(Dialects {
            escai: EscaiConfig {
                ping_interval: self.escai_ping_interval,
                pong_timeout: self.escai_pong_timeout,
                idle_timeout: self.escai_idle_timeout,
            },
            council: CouncilConfig {
                heartbeat_interval: self.council_heartbeat_interval,
                idle_timeout: self.council_idle_timeout,
                retention: self.council_retention,
                tombstone: self.council_tombstone,
                history_size: self.council_history_size,
                ack_flush_interval: self.council_ack_flush_interval,
            },
        })
    }
}

impl ServerArgs {
    /// Worker threads to start.
    pub fn workers(&self) -> usize {
        self.worker_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1)
    }

    /// The gateway configuration these flags describe.
    pub fn gateway_config(&self, listen: SocketAddr) -> Result<GatewayConfig, ConfigError> {
        if self.drain_window > self.drain_deadline {
            return Err(ConfigError::range(
                "--drain-window",
                "must not be longer than --drain-deadline",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::range(
                "--max-connections",
                "must be at least 1",
            ));
        }
        if self.idempotency_window.is_zero() {
            return Err(ConfigError::range(
                "--idempotency-window",
                "must be more than 0 (a key would be forgotten at once)",
            ));
        }
        let replica_id = self.replica_id.clone().unwrap_or_else(default_replica_id);
        let dialects = self.dialects.config()?;
        Ok(GatewayConfig {
            listen,
            replica_id,
            api_key: self.api_key.clone().filter(|k| !k.is_empty()),
            limits: Limits {
                max_connections: self.max_connections,
                max_channels_per_connection: self.max_channels_per_connection,
                max_frame_bytes: self.max_frame_bytes,
                max_message_bytes: self.max_message_bytes,
                discard_body_bytes: self.discard_body_bytes,
                max_outbound_bytes: self.max_outbound_bytes,
                read_chunk_bytes: self.read_chunk_bytes.max(256),
                max_json_depth: self.max_json_depth,
                max_channel_len: self.max_channel_length,
                max_replay: self.max_replay,
                idempotency_window: self.idempotency_window,
                filter: FilterLimits {
                    max_conditions: self.max_filter_conditions,
                    max_bytes: self.max_filter_bytes,
                    ..FilterLimits::default()
                },
            },
            timeouts: Timeouts {
                close_timeout: self.close_timeout,
                header_read_timeout: self.header_read_timeout,
            },
            security: Security {
                origins: OriginPolicy::new(&self.allowed_origins),
                max_connections_per_user: self.max_connections_per_user.max(1),
                messages_per_second: self.max_messages_per_second.max(1),
                message_burst: self.message_burst.max(1),
                anonymous: crate::auth::AnonymousReads::new(&self.anonymous.anonymous_subscribe)
                    .map(std::sync::Arc::new),
                max_anonymous_connections: self
                    .anonymous
                    .max_anonymous_connections
                    .unwrap_or(self.max_connections / 2)
                    .min(self.max_connections),
                max_anonymous_connections_per_ip: self
                    .anonymous
                    .max_anonymous_connections_per_ip
                    .max(1),
                client_ip: crate::auth::client_ip::ClientIpPolicy::new(
                    &self.anonymous.client_ip_header,
                    &self.anonymous.trusted_proxies,
                )?,
            },
            drain: Drain {
                window: self.drain_window,
                deadline: self.drain_deadline,
            },
            hub: HubConfig {
                shards: self.fanout_shards.unwrap_or_else(|| self.workers()),
                shard_queue: self.shard_queue.max(16),
                heartbeat: HeartbeatConfig {
                    ping_interval: self.ping_interval,
                    pong_timeout: self.pong_timeout,
                    idle_timeout: self.idle_timeout,
                    token_grace: self.token_expiry_grace,
                    ..HeartbeatConfig::default()
                },
                compression: crate::ws::deflate::DeflateConfig {
                    enabled: self.compression == Switch::On,
                    threshold: self.compression_threshold,
                    level: self.compression_level,
                },
                dialect_heartbeats: crate::gateway::route::heartbeats(
                    &dialects,
                    self.token_expiry_grace,
                ),
                ..HubConfig::default()
            },
            dialects,
        })
    }
}

/// The host name and a random suffix (several replicas may share a host).
pub fn default_replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "replica".to_string());
    let suffix = crate::engine::Epoch::random();
    format!("{host}-{}", &suffix.as_str()[..4])
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Flags deliberately not read from the environment (docs/OPERATIONS.md, Configuration):
    /// `bench --channels` is a count, while `SWITCHBOARD_CHANNELS` is the glob
    /// list of `token --channels`; sharing it could mint a token for channel "4".
    const NO_ENV: &[(&str, &str)] = &[
        ("bench", "channels"),
        ("standalone", "check-config"),
        ("gateway", "check-config"),
        ("collector", "check-config"),
    ];

    #[test]
    fn every_flag_is_also_read_from_switchboard_flag() {
        fn walk(cmd: &clap::Command, path: &str, seen: &mut usize, wrong: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let Some(long) = arg.get_long() else {
                    continue; // positional
                };
                if long == "help" || long == "version" {
                    continue;
                }
                *seen += 1;
                let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                if NO_ENV.contains(&(cmd.get_name(), long)) {
                    if env.is_some() {
                        wrong.push(format!(
                            "{path} --{long}: listed in NO_ENV but reads {env:?}"
                        ));
                    }
                    continue;
                }
                let want = format!("SWITCHBOARD_{}", long.to_uppercase().replace('-', "_"));
                if env.as_deref() != Some(want.as_str()) {
                    wrong.push(format!("{path} --{long}: reads {env:?}, want {want}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), seen, wrong);
            }
        }
        let (mut seen, mut wrong) = (0, Vec::new());
        walk(&Cli::command(), "switchboard", &mut seen, &mut wrong);
        assert!(
            seen > 100,
            "walked only {seen} flags: is the tree complete?"
        );
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn log_level_then_rust_log_then_the_default() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap();
        let gw = parse(&["switchboard", "gateway", "--no-auth"]);
        // Nothing set (the test environment may set neither: pass None).
        assert_eq!(gw.log_filter(None), "info");
        assert_eq!(gw.log_filter(Some("debug".into())), "debug");
        assert_eq!(gw.log_filter(Some(" ".into())), "info");
        let tail = parse(&["switchboard", "tail", "x"]);
        assert_eq!(tail.log_filter(None), "warn");
        assert_eq!(tail.log_filter(Some("info".into())), "info");
        let given = parse(&[
            "switchboard",
            "--log-level",
            "trace",
            "gateway",
            "--no-auth",
        ]);
        assert_eq!(given.log_filter(Some("debug".into())), "trace");
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
