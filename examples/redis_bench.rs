//! Throughput of the Redis engine on one Redis or a Redis Cluster: how many
//! messages per second Redis accepts through the engine's atomic publish
//! (history + offset + pub/sub), how many the engine's live feed receives, and
//! (with `--gateway`) how many a gateway delivers to WebSocket clients.
//!
//! ```sh
//! cargo run --release --example redis_bench -- --redis redis://127.0.0.1:6379
//! cargo run --release --example redis_bench -- --redis redis+cluster://127.0.0.1:7001,127.0.0.1:7002
//! cargo run --release --example redis_bench -- --redis … --gateway ws://127.0.0.1:8080/ws --clients 50
//! ```
//!
//! Results are printed as one line of JSON. See BENCHMARKS.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use switchboard::channel::ChannelName;
use switchboard::engine::connection::RedisTarget;
use switchboard::engine::redis::{RedisConfig, RedisEngine};
use switchboard::engine::{Engine, EngineEvent, HistoryConfig, PublishOptions};
use switchboard::json::Json;
use switchboard::metrics::{EngineMetrics, MetricsRegistry};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct Args {
    /// redis://host:port (one Redis) or redis+cluster://host:port,host:port.
    #[arg(long)]
    redis: String,
    /// Key prefix (a gateway measured with --gateway must use the same).
    #[arg(long, default_value = "switchboard:")]
    prefix: String,
    /// Channels published to, round robin.
    #[arg(long, default_value_t = 300)]
    channels: usize,
    /// Concurrent publishing tasks (each awaits its publish before the next).
    #[arg(long, default_value_t = 64)]
    publishers: usize,
    /// Command connections (per master on a cluster).
    #[arg(long, default_value_t = 8)]
    pool_size: usize,
    /// Acknowledge publishes only once this many replicas have them (WAIT).
    #[arg(long, default_value_t = 0)]
    wait_replicas: usize,
    /// Bytes of padding in each message.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Measured seconds (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Also subscribe the engine's live feed to every channel and count what it receives.
    #[arg(long)]
    feed: bool,
    /// A gateway's native WebSocket URL: clients subscribe there and count deliveries.
    #[arg(long)]
    gateway: Option<String>,
    /// WebSocket clients (with --gateway).
    #[arg(long, default_value_t = 20)]
    clients: usize,
    /// Channels each client subscribes to (consecutive, wrapping).
    #[arg(long, default_value_t = 15)]
    client_channels: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let target = RedisTarget::from_url(&args.redis)?;
    let (tx, mut rx) = mpsc::channel(16 * 1024);
    let stop = CancellationToken::new();
    let config = RedisConfig {
        target: target.clone(),
        prefix: args.prefix.clone(),
        response_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(3),
        pool_size: args.pool_size,
        probe_interval: Duration::from_secs(5),
        max_channel_len: 128,
        max_json_depth: 32,
        history: HistoryConfig::default(),
        replica_id: format!("bench-{}", std::process::id()),
        wait_replicas: args.wait_replicas,
        wait_timeout: Duration::from_millis(1000),
        cluster_rebuild_after: switchboard::engine::redis::DEFAULT_CLUSTER_REBUILD_AFTER,
        resend_guard: switchboard::engine::redis_config::DEFAULT_RESEND_GUARD,
        tls: None,
    };
    let engine = RedisEngine::start(
        config,
        tx,
        Arc::new(EngineMetrics::register(&MetricsRegistry::new())),
        stop.clone(),
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !engine.health().ready {
        anyhow::ensure!(
            Instant::now() < deadline,
            "engine not ready: {}",
            engine.health().detail
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let channels: Vec<ChannelName> = (0..args.channels)
        .map(|i| ChannelName::parse(&format!("bench-{i}"), 128))
        .collect::<Result<_, _>>()?;

    let received = Arc::new(AtomicU64::new(0));
    if args.feed {
        engine.subscribe(&channels).await?;
    }
    {
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                if let EngineEvent::Message(_) = e {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    let delivered = Arc::new(AtomicU64::new(0));
    if let Some(url) = &args.gateway {
        for c in 0..args.clients {
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
            for k in 0..args.client_channels {
                let channel = format!("bench-{}", (c * args.client_channels + k) % args.channels);
                let sub = serde_json::json!({"type": "subscribe", "channel": channel});
                ws.send(Message::text(sub.to_string())).await?;
            }
            let delivered = delivered.clone();
            tokio::spawn(async move {
                while let Some(Ok(m)) = ws.next().await {
                    if let Message::Text(t) = m
                        && t.as_str().starts_with("{\"type\":\"message\"")
                    {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        // Let every subscription become live.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let published = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let pad = "x".repeat(args.payload);
    let mut tasks = Vec::new();
    for p in 0..args.publishers {
        let (engine, channels, published, errors, running, pad) = (
            engine.clone(),
            channels.clone(),
            published.clone(),
            errors.clone(),
            running.clone(),
            pad.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = p;
            while running.load(Ordering::Relaxed) {
                let channel = &channels[i % channels.len()];
                let text = format!("{{\"i\":{i},\"pad\":\"{pad}\"}}");
                let Ok(data) = Json::parse(Bytes::from(text), 8) else {
                    continue;
                };
                match engine
                    .publish(channel, &data, PublishOptions::default())
                    .await
                {
                    Ok(_) => published.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
                i += args.publishers;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = (
        published.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
        delivered.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let end = (
        published.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
        delivered.load(Ordering::Relaxed),
        Instant::now(),
    );
    running.store(false, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let secs = (end.3 - start.3).as_secs_f64();
    let rate = |a: u64, b: u64| ((b - a) as f64 / secs).round();
    println!(
        "{}",
        serde_json::json!({
            "redis": target.describe(),
            "channels": args.channels,
            "publishers": args.publishers,
            "pool_size": args.pool_size,
            "wait_replicas": args.wait_replicas,
            "payload_bytes": args.payload,
            "seconds": secs,
            "published_per_s": rate(start.0, end.0),
            "feed_received_per_s": if args.feed { rate(start.1, end.1) } else { 0.0 },
            "gateway_delivered_per_s": rate(start.2, end.2),
            "errors": errors.load(Ordering::Relaxed),
        })
    );
    stop.cancel();
    Ok(())
}
