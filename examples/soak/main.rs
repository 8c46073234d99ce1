//! The soak harness's load client and checker (issue 23). `scripts/soak/soak.py`
//! starts the topology, runs this, injects faults and writes the report; see
//! docs/RELIABILITY.md ("Soak runs").
//!
//! It opens thousands of clients through the load balancer on every route —
//! native (sessions and acks, or `since`), the ARK snapshot route, the relay
//! route, ESCAI and AI Council — that come and go, publishes through the HTTP
//! API and straight into Redis with the publish script, and checks that every
//! acknowledged publish reaches every subscriber that stayed subscribed
//! exactly once and in order, or that the client was told (`recovered:false`,
//! `events_expired`). Results: `client-events.jsonl` (every finding, with
//! times), `client-timeseries.jsonl` (every 5 s) and `client-final.json` in `--out`.
//!
//! ```sh
//! cargo run --release --example soak -- --help
//! ```
//!
//! | module | role |
//! |---|---|
//! | `ledger.rs` | every publish per channel, with its outcome |
//! | `check.rs` | checks that need the outcomes: gaps, starts, tails, repeats |
//! | `stream.rs` | a subscription known by seq (relay, snapshot, ESCAI) |
//! | `native.rs`, `dropin.rs`, `escai.rs`, `council.rs` | the clients of each route |
//! | `publish.rs` | the HTTP and Redis publishers; `load.rs` the producers |
//! | `vandal.rs` | bursts of bad input; `stopper.rs` a client that stops reading |
//! | `ws.rs` | connections, silence limits, backoff |
//! | `stats.rs`, `hist.rs`, `clock.rs` | counters, latency, time |

mod check;
mod clock;
mod council;
mod dropin;
mod escai;
mod hist;
mod ledger;
mod load;
mod native;
mod publish;
mod stats;
mod stopper;
mod stream;
mod vandal;
mod ws;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use check::Checks;
use ledger::Ledgers;
use publish::{Policy, Publisher, PublisherConfig};
use stats::Stats;

#[derive(Debug, Parser, Clone)]
#[command(about = "switchboard soak load client and checker (run by scripts/soak/soak.py)")]
pub struct Args {
    /// The load balancer, host:port (every client and HTTP publish goes through it).
    #[arg(long)]
    pub lb: String,
    /// A gateway replica: NAME=HOST:PORT (its client port). Repeatable.
    #[arg(long = "replica", value_parser = parse_pair)]
    pub replicas: Vec<(String, String)>,
    /// One Redis, for direct publishes.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// A Redis Cluster's nodes (comma-separated redis:// URLs), for direct publishes.
    #[arg(long, value_delimiter = ',')]
    pub redis_cluster: Vec<String>,
    /// WAIT for this many replicas after each direct publish (as the
    /// gateways' --redis-wait-replicas).
    #[arg(long, default_value_t = 0)]
    pub wait_replicas: u64,
    #[arg(long, default_value_t = 500)]
    pub wait_timeout_ms: u64,
    /// The gateways' HMAC secret file (tokens are minted with it).
    #[arg(long)]
    pub jwt_secret_file: PathBuf,
    /// How long to publish (then the run drains and checks).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub duration: Duration,
    /// Clients, over every route.
    #[arg(long, default_value_t = 3000)]
    pub clients: usize,
    /// Connections per second opened by churn (clients that leave and come back).
    #[arg(long, default_value_t = 20.0)]
    pub churn: f64,
    /// Connections per second at the start.
    #[arg(long, default_value_t = 250.0)]
    pub ramp: f64,
    /// Messages per second on the hot channel.
    #[arg(long, default_value_t = 200.0)]
    pub hot_rate: f64,
    /// Share of clients on the hot channel.
    #[arg(long, default_value_t = 0.05)]
    pub hot_share: f64,
    /// Quiet channels, and messages per second on each.
    #[arg(long, default_value_t = 300)]
    pub quiet_channels: usize,
    #[arg(long, default_value_t = 0.2)]
    pub quiet_rate: f64,
    /// ESCAI agents (channels agents:aN), and events per second on each.
    #[arg(long, default_value_t = 40)]
    pub agents: usize,
    #[arg(long, default_value_t = 0.5)]
    pub agent_rate: f64,
    /// The gateways' history settings (a direct publisher repeats them).
    #[arg(long, default_value_t = 1000)]
    pub history_size: u64,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub history_ttl: Duration,
    #[arg(long, default_value_t = 10_000)]
    pub council_history_size: u64,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
    pub council_retention: Duration,
    /// Server heartbeats: a client that receives nothing for this (plus 5 s) is stuck.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "25s")]
    pub heartbeat: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub escai_heartbeat: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub council_heartbeat: Duration,
    /// A client leaving checks what was acknowledged this long before it left.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    pub leave_grace: Duration,
    /// Longest wait for deliveries to settle after the last publish.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "45s")]
    pub drain: Duration,
    /// Results directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| format!("expected NAME=HOST:PORT, got {s:?}"))
}

/// What every task shares.
pub struct Ctx {
    pub args: Args,
    pub stats: Arc<Stats>,
    pub ledgers: Arc<Ledgers>,
    pub checks: Checks,
    pub publisher: Arc<Publisher>,
    /// Upstream address → replica name.
    replicas: HashMap<String, String>,
    /// Publishing stops.
    pub stop_publishing: CancellationToken,
    /// Clients stop (and file their final checks).
    pub stop_clients: CancellationToken,
    /// When the last publish was answered (µs), once publishing stopped.
    pub publishing_ended_us: AtomicU64,
    next_client: AtomicU64,
    pub collector: load::CollectorWatch,
    /// Live deliveries of messages from the ledger (the collector's and
    /// replays excluded): the drain waits for them to stop.
    pub checked: AtomicU64,
}

impl Ctx {
    pub fn replica_name(&self, upstream: &str) -> String {
        // nginx lists every upstream it tried: the last one answered.
        let last = upstream.rsplit(',').next().unwrap_or("").trim();
        self.replicas.get(last).cloned().unwrap_or_else(|| {
            if last.is_empty() {
                "?".into()
            } else {
                last.into()
            }
        })
    }

    /// Counts a delivery: its latency if it was published after `since_us`
    /// (the subscription's start), else it is a replay.
    pub fn delivered(&self, route: stats::Route, sent_us: u64, since_us: u64) {
        let counters = self.stats.route(route);
        counters.deliveries.fetch_add(1, Ordering::Relaxed);
        if sent_us >= since_us {
            self.checked.fetch_add(1, Ordering::Relaxed);
            self.stats
                .latency(route, clock::now_us().saturating_sub(sent_us));
        } else {
            counters.replayed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn client_id(&self) -> u64 {
        self.next_client.fetch_add(1, Ordering::Relaxed)
    }

    /// A token for user `sub` with `permissions` on every channel.
    pub fn token(&self, sub: &str, permissions: &[&str]) -> String {
        let spec = switchboard::auth::mint::TokenSpec {
            subject: sub.to_string(),
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
            channels: vec!["*".into()],
            roles: Vec::new(),
            ttl: self.args.duration + Duration::from_secs(4 * 3600),
            audience: None,
            issuer: None,
            key_id: None,
        };
        switchboard::auth::mint::mint(
            &spec,
            jsonwebtoken::Algorithm::HS256,
            &self.args.jwt_secret_file,
        )
        .unwrap_or_default()
    }

    /// The gateway client address of a replica (for the stopped reader).
    pub fn replica_addrs(&self) -> Vec<(String, String)> {
        self.args.replicas.clone()
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(args));
    // The stdin reader is a blocking task that would hold the runtime's shutdown.
    runtime.shutdown_background();
    result
}

async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let stats = Arc::new(Stats::new(&args.out.join("client-events.jsonl"))?);
    let ledgers = Arc::new(Ledgers::default());
    let (checks, finish_checks, checker) = check::start(stats.clone());
    let publisher_token = {
        let spec = switchboard::auth::mint::TokenSpec {
            subject: "soak-producer".into(),
            permissions: vec!["websocket:publish".into()],
            channels: vec!["*".into()],
            roles: Vec::new(),
            ttl: args.duration + Duration::from_secs(4 * 3600),
            audience: None,
            issuer: None,
            key_id: None,
        };
        switchboard::auth::mint::mint(&spec, jsonwebtoken::Algorithm::HS256, &args.jwt_secret_file)?
    };
    let publisher = Publisher::connect(
        PublisherConfig {
            lb: args.lb.clone(),
            token: publisher_token,
            redis_url: args.redis_url.clone(),
            redis_cluster: args.redis_cluster.clone(),
            wait_replicas: args.wait_replicas,
            wait_timeout_ms: args.wait_timeout_ms,
            default_policy: Policy {
                size: args.history_size,
                ttl_ms: args.history_ttl.as_millis() as u64,
            },
            council_policy: Policy {
                size: args.council_history_size,
                ttl_ms: args.council_retention.as_millis() as u64,
            },
        },
        ledgers.clone(),
        stats.clone(),
    )
    .await?;
    let replicas = args
        .replicas
        .iter()
        .map(|(name, addr)| (addr.clone(), name.clone()))
        .collect();
    let ctx = Arc::new(Ctx {
        args: args.clone(),
        stats: stats.clone(),
        ledgers,
        checks,
        publisher: Arc::new(publisher),
        replicas,
        stop_publishing: CancellationToken::new(),
        stop_clients: CancellationToken::new(),
        publishing_ended_us: AtomicU64::new(0),
        next_client: AtomicU64::new(1),
        collector: load::CollectorWatch::default(),
        checked: AtomicU64::new(0),
    });
    let started = Instant::now();
    stats.event("start", json!({"args": format!("{args:?}")}));

    // Producers first (every channel has its first message and snapshot), then clients.
    let producers = load::start_producers(ctx.clone()).await;
    let clients = load::start_clients(ctx.clone());
    let reporter = tokio::spawn(report_loop(ctx.clone(), started));
    let control = tokio::spawn(control_loop(ctx.clone()));

    tokio::time::sleep(args.duration).await;
    eprintln!("soak: publishing stops; draining");
    ctx.stop_publishing.cancel();
    for p in producers {
        let _ = p.await;
    }
    ctx.publishing_ended_us
        .store(clock::now_us(), Ordering::Relaxed);
    // Deliveries settle: wait until nothing arrives for 5 s (or --drain).
    let drain_started = Instant::now();
    let mut last = u64::MAX;
    let mut quiet_since = Instant::now();
    while drain_started.elapsed() < args.drain {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = ctx.checked.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_secs(3) {
            break;
        }
    }
    eprintln!("soak: clients stop; final checks");
    ctx.stop_clients.cancel();
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(20), c).await;
    }
    let _ = finish_checks.send(());
    let _ = tokio::time::timeout(Duration::from_secs(60), checker).await;
    reporter.abort();
    control.abort();
    // The last interval, and the totals.
    write_line(
        &args.out.join("client-timeseries.jsonl"),
        &stats.interval_line(started.elapsed().as_secs_f64()),
    );
    let mut publishes = serde_json::Map::new();
    for l in ctx.ledgers.all() {
        let (acked, failed, pending) = l.outcomes();
        let kind = if l.channel == "soak.hot" {
            "hot"
        } else if l.channel.starts_with("council:") {
            "council"
        } else if l.channel.starts_with("agents:") {
            "agents"
        } else if l.channel == "alerts" {
            "alerts"
        } else {
            "quiet"
        };
        let e = publishes
            .entry(kind)
            .or_insert_with(|| json!({"channels": 0, "acked": 0, "failed": 0, "pending": 0}));
        for (k, v) in [
            ("channels", 1),
            ("acked", acked),
            ("failed", failed),
            ("pending", pending),
        ] {
            e[k] = json!(e[k].as_u64().unwrap_or(0) + v);
        }
    }
    let final_report = json!({
        "duration_s": started.elapsed().as_secs_f64(),
        "publishing_s": args.duration.as_secs_f64(),
        "clients": args.clients,
        "totals": stats.totals(),
        "publishes_by_kind": publishes,
        "collector": load::collector_summary(&ctx),
        "args": format!("{args:?}"),
    });
    stats.flush_events();
    std::fs::write(
        args.out.join("client-final.json"),
        serde_json::to_string_pretty(&final_report)?,
    )?;
    let t = &final_report["totals"];
    eprintln!(
        "soak: done: deliveries {} lost {} duplicated {} mismatched {} honest restarts {} reconnects {} stuck {}",
        t["deliveries"],
        t["lost"],
        t["duplicated"],
        t["mismatched"],
        t["honest_restarts"],
        t["reconnects"],
        t["stuck"]
    );
    Ok(())
}

fn write_line(path: &std::path::Path, v: &serde_json::Value) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{v}");
    }
}

/// Every 5 s a time series line; every 30 s a progress line on stderr.
async fn report_loop(ctx: Arc<Ctx>, started: Instant) {
    let path = ctx.args.out.join("client-timeseries.jsonl");
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    let mut n = 0u64;
    loop {
        tick.tick().await;
        n += 1;
        let line = ctx.stats.interval_line(started.elapsed().as_secs_f64());
        write_line(&path, &line);
        ctx.stats.flush_events();
        if n.is_multiple_of(6) {
            let t = ctx.stats.totals();
            let connected: i64 = stats::ROUTES
                .iter()
                .map(|r| line["routes"][r.label()]["connected"].as_i64().unwrap_or(0))
                .sum();
            eprintln!(
                "soak: {:>5.0}s connected {connected} deliveries {} lost {} dup {} restarts {} reconnects {} stuck {} p99 {:.1} ms",
                started.elapsed().as_secs_f64(),
                t["deliveries"],
                t["lost"],
                t["duplicated"],
                t["honest_restarts"],
                t["reconnects"],
                t["stuck"],
                line["p99_ms"].as_f64().unwrap_or(0.0)
            );
        }
    }
}

/// Commands from the orchestrator, one JSON object per line on stdin:
/// `{"cmd":"bad_input"}`, `{"cmd":"stop_reading","secs":90}`, `{"cmd":"junk"}`.
async fn control_loop(ctx: Arc<Ctx>) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let c = ctx.clone();
        match v["cmd"].as_str() {
            Some("bad_input") => {
                tokio::spawn(async move { vandal::burst(&c).await });
            }
            Some("stop_reading") => {
                let secs = v["secs"].as_u64().unwrap_or(90);
                tokio::spawn(async move { stopper::run(&c, Duration::from_secs(secs)).await });
            }
            _ => ctx.stats.event("unknown_command", json!({"line": line})),
        }
    }
}
