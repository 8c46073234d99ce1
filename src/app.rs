//! The binary's edge: assembles engine, hub, gateway and collector for each
//! subcommand, binds the listener, and turns SIGTERM/SIGINT into a drain.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use http::StatusCode;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::{Filter, Reply};

use crate::cli::{CollectorArgs, Command, GatewayArgs, RedisArgs, StandaloneArgs};
use crate::collector::{Collector, CollectorConfig};
use crate::config::GatewayConfig;
use crate::engine::memory::MemoryEngine;
use crate::engine::redis::{RedisConfig, RedisEngine};
use crate::engine::{Engine, EngineEvent, HistoryConfig};
use crate::gateway::Gateway;
use crate::gateway::http::json_response;
use crate::gateway::server::{self, HttpSettings};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Live messages buffered between the engine feed and the hub's dispatcher.
const EVENT_QUEUE: usize = 16 * 1024;

/// Runs a subcommand to completion.
pub async fn run(command: Command) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    match command {
        Command::Standalone(args) => standalone(args, shutdown).await,
        Command::Gateway(args) => gateway(args, shutdown).await,
        Command::Collector(args) => collector(args, shutdown).await,
        Command::Bench(args) => Ok(crate::bench::main(args, shutdown).await?),
        Command::BenchWorker(_) => Ok(crate::bench::worker::serve().await?),
    }
}

/// First SIGTERM or SIGINT: drain. A second one: exit at once.
async fn signals(shutdown: CancellationToken) {
    let mut count = 0;
    loop {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
        }
        count += 1;
        if count == 1 {
            tracing::info!("shutdown signal received: draining (send it again to exit at once)");
            shutdown.cancel();
        } else {
            tracing::warn!("second shutdown signal: exiting now");
            std::process::exit(130);
        }
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "could not listen on {addr} (is another process using it? choose another with --listen)"
        )
    })
}

async fn standalone(args: StandaloneArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = args
        .server
        .gateway_config(args.listen)
        .map_err(anyhow::Error::msg)?;
    if args.listen.ip().is_loopback() {
        tracing::info!(
            listen = %args.listen,
            "standalone: in-memory engine, authentication disabled, listening on loopback only"
        );
    } else {
        tracing::warn!(
            listen = %args.listen,
            "standalone: in-memory engine, authentication DISABLED, and listening beyond loopback: anyone who reaches this address can read and publish every channel"
        );
    }
    let metrics = Arc::new(Metrics::new());
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new(args.history.config(), events_tx));
    let hub = Hub::start(
        engine.clone(),
        events_rx,
        metrics.clone(),
        config.hub.clone(),
    );
    let listener = bind(config.listen).await?;
    let collector_stop = CancellationToken::new();
    let collector = Collector::new(engine.clone(), schedule(&args.collector), metrics.clone());
    tokio::spawn(collector.run(collector_stop.clone()));
    announce(&listener, &config);
    Gateway::new(config, engine, hub, metrics, shutdown, true)
        .serve(listener)
        .await;
    collector_stop.cancel();
    Ok(())
}

async fn gateway(args: GatewayArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    if !args.no_auth {
        bail!(
            "authentication is not configured: pass --no-auth (or SWITCHBOARD_NO_AUTH=true) to run without it"
        );
    }
    let config = args
        .server
        .gateway_config(args.listen)
        .map_err(anyhow::Error::msg)?;
    let metrics = Arc::new(Metrics::new());
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let engine_stop = CancellationToken::new();
    let engine = RedisEngine::start(
        redis_config(&args.redis, args.history.config(), &config),
        events_tx,
        metrics.clone(),
        engine_stop.clone(),
    )
    .context("could not set up the Redis engine")?;
    let engine: Arc<dyn Engine> = engine;
    let hub = Hub::start(
        engine.clone(),
        events_rx,
        metrics.clone(),
        config.hub.clone(),
    );
    let listener = bind(config.listen).await?;
    announce(&listener, &config);
    Gateway::new(config, engine, hub, metrics, shutdown, args.no_auth)
        .serve(listener)
        .await;
    engine_stop.cancel();
    Ok(())
}

async fn collector(args: CollectorArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    // The collector subscribes to nothing; its feed is drained and dropped.
    let (events_tx, mut events_rx) = mpsc::channel::<EngineEvent>(16);
    tokio::spawn(async move { while events_rx.recv().await.is_some() {} });
    let redis = RedisConfig {
        url: args.redis.redis_url.clone(),
        prefix: args.redis.redis_prefix.clone(),
        response_timeout: args.redis.redis_timeout,
        connect_timeout: args.redis.redis_connect_timeout,
        pool_size: args.redis.redis_pool_size,
        probe_interval: args.redis.redis_probe_interval,
        max_channel_len: crate::channel::DEFAULT_MAX_CHANNEL_LEN,
        max_json_depth: 64,
        history: args.history.config(),
        replica_id: format!("collector-{}", crate::cli::default_replica_id()),
    };
    let engine_stop = CancellationToken::new();
    let engine: Arc<dyn Engine> =
        RedisEngine::start(redis, events_tx, metrics.clone(), engine_stop.clone())
            .context("could not set up the Redis engine")?;
    let listener = bind(args.listen).await?;
    tracing::info!(listen = %args.listen, "collector: health and metrics listening");
    let collector_stop = CancellationToken::new();
    let task = tokio::spawn(
        Collector::new(engine.clone(), schedule(&args.schedule), metrics.clone())
            .run(collector_stop.clone()),
    );
    let routes = probe_routes(engine.clone(), metrics.clone(), shutdown.clone());
    let settings = HttpSettings {
        header_read_timeout: std::time::Duration::from_secs(10),
        max_header_bytes: 16 * 1024,
    };
    server::serve(listener, routes, settings, shutdown, TaskTracker::new()).await;
    collector_stop.cancel();
    let _ = task.await;
    engine_stop.cancel();
    Ok(())
}

fn schedule(s: &crate::cli::CollectorSchedule) -> CollectorConfig {
    let low = s.collect_interval_min;
    CollectorConfig {
        interval: low..=s.collect_interval_max.max(low),
    }
}

fn redis_config(args: &RedisArgs, history: HistoryConfig, gw: &GatewayConfig) -> RedisConfig {
    RedisConfig {
        url: args.redis_url.clone(),
        prefix: args.redis_prefix.clone(),
        response_timeout: args.redis_timeout,
        connect_timeout: args.redis_connect_timeout,
        pool_size: args.redis_pool_size,
        probe_interval: args.redis_probe_interval,
        max_channel_len: gw.limits.max_channel_len,
        max_json_depth: gw.limits.max_json_depth,
        history,
        replica_id: gw.replica_id.clone(),
    }
}

fn announce(listener: &TcpListener, config: &GatewayConfig) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(
        listen = %addr,
        replica = %config.replica_id,
        max_connections = config.limits.max_connections,
        "gateway listening: ws://{addr}/ws (native), /ws/{{channel}} (snapshot), /api/ws/{{channel}} (relay)"
    );
}

/// `/health/live`, `/health/ready` and `/metrics` of a process without a gateway.
fn probe_routes(
    engine: Arc<dyn Engine>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let live = warp::path!("health" / "live")
        .map(|| json_response(StatusCode::OK, json!({"status": "ok"})));
    let ready_engine = engine.clone();
    let ready = warp::path!("health" / "ready").map(move || {
        let health = ready_engine.health();
        if shutdown.is_cancelled() {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "not_ready", "reason": "shutting down"}),
            )
        } else if health.ready {
            json_response(StatusCode::OK, json!({"status": "ready"}))
        } else {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "not_ready", "reason": health.detail}),
            )
        }
    });
    let metrics_route = warp::path!("metrics").map(move || {
        metrics.ready.set(i64::from(engine.health().ready));
        warp::reply::with_header(
            metrics.render(),
            "content-type",
            "text/plain; version=0.0.4",
        )
        .into_response()
    });
    live.or(ready)
        .unify()
        .or(metrics_route)
        .unify()
        .recover(|_| async {
            Ok::<_, std::convert::Infallible>(crate::gateway::http::error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint",
            ))
        })
        .unify()
        .boxed()
}
