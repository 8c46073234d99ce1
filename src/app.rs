//! The binary's edge: assembles engine, hub, gateway and collector for each
//! subcommand, binds the listener, and turns SIGTERM/SIGINT into a drain.

use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self};
use crate::auth::mint::{TokenSpec, mint};
use crate::auth::{JwtConfig, Verifier};
use crate::cli::seed_env::{self, SeedEnv};
use crate::cli::{
    CollectorArgs, Command, DemoDataArgs, GatewayArgs, RedisArgs, StandaloneArgs, TokenArgs,
};
use crate::client;
use crate::collector::demo::{self, DemoConfig};
use crate::collector::federation::FederationRedis;
use crate::collector::lease::{Lease, LeaseConfig};
use crate::collector::metrics::CollectorMetrics;
use crate::collector::{Collector, Leadership};
use crate::config::GatewayConfig;
use crate::engine::connection::RedisTarget;
use crate::engine::memory::MemoryEngine;
use crate::engine::redis::{RedisConfig, RedisEngine};
use crate::engine::{Engine, EngineEvent, HistoryConfig, event_channel};
use crate::gateway::dialect::council::store::CouncilStore;
use crate::gateway::presence::{self, Presence};
use crate::gateway::registry::Registry;
use crate::gateway::server::{self, HttpSettings};
use crate::gateway::sessions::SessionStore;
use crate::gateway::stats;
use crate::metrics::{EngineMetrics, MetricsRegistry};

mod replica;

use replica::{Backing, Replica, ReplicaMetrics, bind};

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
        Command::Token(args) => token(&args),
        Command::DemoData(args) => demo_data(args, shutdown).await,
        Command::Bench(args) => Ok(crate::bench::main(args.config()?, shutdown).await?),
        Command::BenchWorker(_) => Ok(crate::bench::worker::serve().await?),
        Command::Tail(args) => Ok(client::tail::run(args.config(), shutdown).await?),
        Command::Publish(args) => Ok(client::publish::run(args.config(), shutdown).await?),
        Command::Health(args) => Ok(client::health::run(args.config()).await?),
    }
}

fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let alg: jsonwebtoken::Algorithm = args
        .alg
        .parse()
        .map_err(|_| anyhow::anyhow!("unknown algorithm {}", args.alg))?;
    let key_file = match (&args.secret_file, &args.private_key_file) {
        (Some(f), None) | (None, Some(f)) => f,
        _ => bail!("give exactly one of --secret-file (HS*) and --private-key-file (RS256, ES256)"),
    };
    let spec = TokenSpec {
        subject: args.sub.clone(),
        permissions: args.permissions.clone(),
        channels: args.channels.clone(),
        roles: args.roles.clone(),
        ttl: args.ttl,
        audience: args.aud.clone(),
        issuer: args.iss.clone(),
        key_id: args.kid.clone(),
    };
    println!("{}", mint(&spec, alg, key_file)?);
    Ok(())
}

/// Starts the task that applies control messages (disconnect a user) to this replica.
fn control_channel(registry: Arc<Registry>) -> mpsc::UnboundedSender<serde_json::Value> {
    let (tx, mut rx) = mpsc::unbounded_channel::<serde_json::Value>();
    tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            presence::apply_control(&registry, &message);
        }
    });
    tx
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

/// Loads the JWT keys (and keeps re-reading them until shutdown), if any.
fn verifier(
    jwt: Option<JwtConfig>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Arc<Verifier>>> {
    let Some(jwt) = jwt else {
        return Ok(None);
    };
    let verifier = Verifier::load(jwt).context("cannot use the JWT keys")?;
    verifier.watch(shutdown.child_token());
    Ok(Some(verifier))
}

async fn standalone(mut args: StandaloneArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    seed_env::log_applied(&SeedEnv::from_env().apply_to_standalone(&mut args));
    let config = args.server.gateway_config(args.listen)?;
    let jwt = args.auth.optional_jwt_config()?;
    if jwt.is_none() && !args.listen.ip().is_loopback() && !args.allow_remote {
        bail!(
            "standalone without a JWT key has no authentication, so it listens on loopback only; {} is not loopback. Give it a key (--jwt-secret-file, --jwt-public-key-file or --jwks-file) so that clients need a token, or pass --allow-remote if you accept that anyone who reaches it can read and publish everything",
            args.listen
        );
    }
    let mut collector_config = args.sources.config(&args.collector, None)?;
    if args.check.check_config {
        // What `Collector::new` checks later: the federation URL parses.
        if let Some(federation) = collector_config.federation.clone() {
            FederationRedis::new(federation).context("--federation-redis-url")?;
        }
        return configuration_valid("standalone", "in-memory engine");
    }
    if jwt.is_some() {
        tracing::info!(
            listen = %args.listen,
            "standalone: in-memory engine, JWT required on every connection and REST call"
        );
    } else if args.listen.ip().is_loopback() {
        tracing::info!(
            listen = %args.listen,
            "standalone: in-memory engine, authentication disabled, listening on loopback only"
        );
    } else {
        tracing::warn!(
            listen = %args.listen,
            "standalone: in-memory engine, authentication DISABLED, and listening beyond loopback (--allow-remote): anyone who reaches this address can read and publish every channel"
        );
    }
    let auth = verifier(jwt, &shutdown)?;
    let federation_url = collector_config.federation.as_ref().map(|f| f.url.as_str());
    let tls = args
        .redis_tls
        .load(federation_url)
        .context("cannot use the Redis TLS settings")?;
    if let Some(federation) = collector_config.federation.as_mut() {
        federation.tls = tls;
    }
    let metrics = ReplicaMetrics::new();
    let collector_metrics = Arc::new(CollectorMetrics::register(&metrics.registry));
    let (events_tx, events) = event_channel(EVENT_QUEUE);
    let history = with_dialect_history(stats::with_system_history(args.history.config()), &config)?;
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new(history, events_tx));
    // The embedded collector publishes into the same engine, always leading.
    let collector = Collector::new(
        engine.clone(),
        collector_config,
        collector_metrics,
        Leadership::Always,
    )
    .context("could not set up the collector")?;
    let collector_stop = CancellationToken::new();
    let collector_task = tokio::spawn(collector.run(collector_stop.clone()));
    let replica = Replica {
        role: "standalone",
        registry: Arc::new(Registry::new(&config.replica_id)),
        backing: Backing {
            engine,
            events,
            presence: Presence::Local,
            sessions: SessionStore::memory(args.server.session_ttl),
            council: CouncilStore::memory(config.dialects.council.record_ttl()),
            control: None,
        },
        config,
        admin_listen: args.admin_listen,
        auth,
        stats_interval: args.server.stats_interval,
        metrics,
    };
    let served = replica::serve(replica, shutdown).await;
    collector_stop.cancel();
    let _ = collector_task.await;
    served
}

async fn gateway(args: GatewayArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = args.server.gateway_config(args.listen)?;
    let jwt = args.auth.jwt_config()?;
    if args.check.check_config {
        // Before the TLS files are read: --check-config opens none.
        let target = args.redis.target()?;
        return configuration_valid("gateway", &target.describe());
    }
    let history = with_dialect_history(stats::with_system_history(args.history.config()), &config)?;
    let redis = redis_config(&args.redis, history, &config)?;
    if jwt.is_some() {
        tracing::info!("authentication: JWT required on every connection and REST call");
    } else {
        tracing::warn!(
            "authentication DISABLED (--no-auth): any client may read and publish every channel"
        );
    }
    let auth = verifier(jwt, &shutdown)?;
    if config.security.origins.is_any() {
        tracing::info!(
            "no --allowed-origins: pages from any origin may connect (tokens are still required)"
        );
    }
    tracing::info!(redis = %redis.target.describe(), "gateway: engine on Redis");
    let metrics = ReplicaMetrics::new();
    let (events_tx, events) = event_channel(EVENT_QUEUE);
    let engine_stop = CancellationToken::new();
    let engine = RedisEngine::start(
        redis,
        events_tx,
        metrics.engine.clone(),
        engine_stop.clone(),
    )
    .context("could not set up the Redis engine")?;
    // Presence, sessions and AI Council records live in Redis beside the
    // channels, so that any replica serves any client.
    let registry = Arc::new(Registry::new(&config.replica_id));
    let (council, council_writer) = CouncilStore::redis(
        engine.clone(),
        config.dialects.council.record_ttl(),
        config.dialects.council.ack_flush_interval,
        engine_stop.clone(),
    );
    let backing = Backing {
        presence: Presence::redis(
            engine.clone(),
            registry.clone(),
            config.replica_id.clone(),
            engine_stop.clone(),
        ),
        sessions: SessionStore::redis(engine.clone(), args.server.session_ttl, engine_stop.clone()),
        council,
        control: Some(control_channel(registry.clone())),
        engine,
        events,
    };
    let replica = Replica {
        role: "gateway",
        config,
        admin_listen: args.admin_listen,
        auth,
        stats_interval: args.server.stats_interval,
        metrics,
        registry,
        backing,
    };
    let served = replica::serve(replica, shutdown).await;
    engine_stop.cancel();
    // Acknowledgements received during the drain are stored before the exit.
    council_writer.finish().await;
    served
}

async fn collector(mut args: CollectorArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    seed_env::log_applied(&SeedEnv::from_env().apply_to_collector(&mut args));
    let target = args.redis.target().map_err(|e| {
        if args.redis.redis_url.is_none() && args.redis.redis_cluster_urls.is_empty() {
            anyhow::anyhow!("{e}; or set REDIS_URL (seed 001's variable)")
        } else {
            anyhow::Error::new(e)
        }
    })?;
    // The federation's peers are read with SCAN from one Redis: by default the
    // engine's, which a cluster is not (give --federation-redis-url then).
    let default_federation = match &target {
        RedisTarget::Single(url) => Some(url.as_str()),
        RedisTarget::Cluster(_) => None,
    };
    if target.is_cluster() && args.sources.federation_redis_url.is_none() {
        tracing::warn!(
            "the engine is a Redis Cluster, so the federation's peers are not read from it: pass --federation-redis-url (a single Redis holding the peer hashes and sync events)"
        );
    }
    let mut config = args.sources.config(&args.schedule, default_federation)?;
    // Before any file is read: --check-config opens none (TLS files included).
    let (lease_ttl, renew_interval) = args.lease.timing()?;
    if args.check.check_config {
        // What `Collector::new` checks later, without an engine: the source URLs parse.
        if let Some(federation) = config.federation.clone() {
            FederationRedis::new(federation).context("--federation-redis-url")?;
        }
        return configuration_valid("collector", &target.describe());
    }
    let tls = args
        .redis
        .tls
        .load(
            target
                .urls()
                .into_iter()
                .chain(config.federation.as_ref().map(|f| f.url.as_str())),
        )
        .context("cannot use the Redis TLS settings")?;
    if let Some(federation) = config.federation.as_mut() {
        federation.tls = tls.clone();
    }
    log_tls(&target, tls.as_ref());
    let replica = args
        .lease
        .replica_id
        .clone()
        .unwrap_or_else(crate::cli::default_replica_id);
    let metrics_registry = Arc::new(MetricsRegistry::new());
    let engine_metrics = Arc::new(EngineMetrics::register(&metrics_registry));
    let metrics = Arc::new(CollectorMetrics::register(&metrics_registry));
    // The collector subscribes to nothing; its feed is drained and dropped.
    let (events_tx, mut events_rx) = mpsc::channel::<EngineEvent>(16);
    tokio::spawn(async move { while events_rx.recv().await.is_some() {} });
    tracing::info!(redis = %target.describe(), "collector: engine on Redis");
    let redis = engine_config(
        &args.redis,
        (target, tls),
        args.history.config(),
        format!("collector-{replica}-{}", std::process::id()),
        (crate::channel::DEFAULT_MAX_CHANNEL_LEN, 64),
    );
    let engine_stop = CancellationToken::new();
    let redis_engine = RedisEngine::start(redis, events_tx, engine_metrics, engine_stop.clone())
        .context("could not set up the Redis engine")?;
    let lease = Lease::new(
        redis_engine.clone(),
        LeaseConfig {
            key: redis_engine.keys().global(&args.lease.lease_key),
            ttl: lease_ttl,
            renew_interval,
            holder: replica,
        },
    );
    let engine: Arc<dyn Engine> = redis_engine;
    let collector = Collector::new(
        engine.clone(),
        config,
        metrics,
        Leadership::Lease(Box::new(lease)),
    )
    .context("could not set up the collector")?;
    let listener = bind(args.listen).await?;
    // The bound address (a port the system picked for `:0`); tests read it.
    let bound = listener.local_addr().unwrap_or(args.listen);
    tracing::info!(listen = %bound, "collector: health and metrics listening");
    let collector_stop = CancellationToken::new();
    let task = tokio::spawn(collector.run(collector_stop.clone()));
    let routes = admin::probe_routes(engine.clone(), metrics_registry, shutdown.clone());
    let settings = HttpSettings {
        header_read_timeout: std::time::Duration::from_secs(10),
        max_header_bytes: 16 * 1024,
    };
    server::serve(listener, routes, settings, shutdown, TaskTracker::new()).await;
    // Stop publishing first, then release the lease (inside `run`).
    collector_stop.cancel();
    let _ = task.await;
    engine_stop.cancel();
    Ok(())
}

/// `--check-config`: the configuration was read and validated; say so and stop.
fn configuration_valid(command: &str, engine: &str) -> anyhow::Result<()> {
    println!(
        "switchboard {command}: configuration valid ({engine}; key files, databases and Redis not opened)"
    );
    Ok(())
}

async fn demo_data(args: DemoDataArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let redis_tls = args
        .redis_tls
        .load(args.redis_url.as_deref())
        .context("cannot use the Redis TLS settings")?;
    let config = DemoConfig {
        dir: args.dir,
        redis_url: args.redis_url,
        redis_tls,
        force: args.force,
        follow: args.follow.then_some(args.follow_interval),
        peer_pattern: args.federation_peer_pattern,
        sync_key: args.federation_sync_key,
        peers: usize::from(args.peers),
    };
    let redis_url = config.redis_url.clone();
    let summary = demo::create(&config)
        .await
        .context("could not create the demo data")?;
    println!("created {}", summary.reasoning_db.display());
    println!("created {}", summary.ark_db.display());
    match redis_url {
        Some(url) => {
            println!(
                "wrote {} peer hashes and {} sync events to {url}",
                summary.peers, summary.sync_events
            );
            println!(
                "try: switchboard collector --redis-url {url} --reasoning-db {} --ark-db {}",
                summary.reasoning_db.display(),
                summary.ark_db.display()
            );
        }
        None => println!(
            "try: switchboard standalone --reasoning-db {} --ark-db {}",
            summary.reasoning_db.display(),
            summary.ark_db.display()
        ),
    }
    // Shown at once even when stdout is a pipe and --follow keeps running.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    demo::follow(&config, &summary, shutdown)
        .await
        .context("demo data: --follow stopped")?;
    Ok(())
}

/// Gives the `council` namespace the AI Council route's history: its events
/// (`--council-history-size`) kept for `--council-retention`, its position
/// for `--council-tombstone` longer.
fn with_dialect_history(
    mut history: HistoryConfig,
    config: &GatewayConfig,
) -> anyhow::Result<HistoryConfig> {
    let council = &config.dialects.council;
    if history
        .namespaces
        .contains_key(crate::gateway::dialect::council::NAMESPACE)
    {
        bail!(
            "--namespace-history council=… is set by --council-history-size and --council-retention: use those"
        );
    }
    history.namespaces.insert(
        crate::gateway::dialect::council::NAMESPACE.to_string(),
        crate::engine::HistoryPolicy {
            size: council.history_size,
            ttl: council.retention,
            tombstone: council.tombstone,
        },
    );
    Ok(history)
}

fn redis_config(
    args: &RedisArgs,
    history: HistoryConfig,
    gw: &GatewayConfig,
) -> anyhow::Result<RedisConfig> {
    let target = args.target()?;
    let tls = args
        .tls
        .load(target.urls())
        .context("cannot use the Redis TLS settings")?;
    log_tls(&target, tls.as_ref());
    Ok(engine_config(
        args,
        (target, tls),
        history,
        gw.replica_id.clone(),
        (gw.limits.max_channel_len, gw.limits.max_json_depth),
    ))
}

/// The Redis engine's configuration from its flags: the one mapping of
/// `RedisArgs` that gateways, `standalone` and collectors share. `limits` is
/// (longest channel name, deepest JSON) of what the engine reads back.
fn engine_config(
    args: &RedisArgs,
    (target, tls): (RedisTarget, Option<crate::engine::tls::RedisTls>),
    history: HistoryConfig,
    replica_id: String,
    (max_channel_len, max_json_depth): (usize, usize),
) -> RedisConfig {
    RedisConfig {
        target,
        tls,
        prefix: args.redis_prefix.clone(),
        response_timeout: args.redis_timeout,
        connect_timeout: args.redis_connect_timeout,
        pool_size: args.redis_pool_size,
        probe_interval: args.redis_probe_interval,
        max_channel_len,
        max_json_depth,
        history,
        replica_id,
        wait_replicas: args.redis_wait_replicas,
        wait_timeout: args.redis_wait_timeout,
        cluster_rebuild_after: args.redis_cluster_rebuild_after,
        resend_guard: args.redis_resend_guard,
    }
}

/// Says how the engine's Redis connections are secured.
fn log_tls(target: &RedisTarget, tls: Option<&crate::engine::tls::RedisTls>) {
    match tls.filter(|_| target.is_tls()) {
        Some(tls) => tracing::info!(
            trust = tls.describe(),
            client_certificate = tls.has_client_certificate(),
            "Redis connections use TLS"
        ),
        None => tracing::debug!("Redis connections are not encrypted (redis://)"),
    }
}
