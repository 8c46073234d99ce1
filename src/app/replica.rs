//! The wiring `gateway` and `standalone` share: given an engine and the stores
//! kept beside it (on Redis, or in the process), start the hub, bind the
//! listeners, build the [`Gateway`] and serve it until it has drained.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use warp::Filter;

use crate::admin::{self, AdminServer, Layout};
use crate::auth::Verifier;
use crate::config::GatewayConfig;
use crate::engine::{Engine, EventFeed};
use crate::gateway::dialect::council::store::CouncilStore;
use crate::gateway::presence::Presence;
use crate::gateway::registry::Registry;
use crate::gateway::sessions::SessionStore;
use crate::gateway::{Gateway, Parts, http, stats};
use crate::hub::Hub;
use crate::metrics::{EngineMetrics, GatewayMetrics, MetricsRegistry};
use tokio_util::sync::CancellationToken;

/// The metrics of a process that serves clients.
pub struct ReplicaMetrics {
    pub registry: Arc<MetricsRegistry>,
    pub engine: Arc<EngineMetrics>,
    pub gateway: Arc<GatewayMetrics>,
}

impl ReplicaMetrics {
    pub fn new() -> Self {
        let registry = Arc::new(MetricsRegistry::new());
        Self {
            engine: Arc::new(EngineMetrics::register(&registry)),
            gateway: Arc::new(GatewayMetrics::register(&registry)),
            registry,
        }
    }
}

/// Where a replica keeps its channels and what it shares with the others.
pub struct Backing {
    pub engine: Arc<dyn Engine>,
    /// The engine's live feed, for the hub.
    pub events: EventFeed,
    pub presence: Presence,
    pub sessions: SessionStore,
    pub council: CouncilStore,
    /// Where the engine's control messages go (`None`: a single process has none).
    pub control: Option<mpsc::UnboundedSender<serde_json::Value>>,
}

/// Everything a replica is started with.
pub struct Replica {
    /// `gateway` or `standalone` (logs, the operations report).
    pub role: &'static str,
    pub config: GatewayConfig,
    pub admin_listen: SocketAddr,
    pub auth: Option<Arc<Verifier>>,
    pub stats_interval: Duration,
    pub metrics: ReplicaMetrics,
    pub registry: Arc<Registry>,
    pub backing: Backing,
}

/// Starts the hub, binds the listeners and serves until the drain is over.
pub async fn serve(replica: Replica, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Replica {
        role,
        config,
        admin_listen,
        auth,
        stats_interval,
        metrics,
        registry,
        backing,
    } = replica;
    let hub = Hub::start(
        backing.engine.clone(),
        backing.events,
        metrics.gateway.clone(),
        config.hub.clone(),
        backing.control,
    );
    let admin_listener = bind_admin(Layout::new(config.listen, admin_listen)).await?;
    let listener = bind(config.listen).await?;
    announce(role, &listener, admin_listener.as_ref(), &config);
    let parts = Parts {
        engine: backing.engine,
        hub,
        metrics: metrics.gateway,
        engine_metrics: metrics.engine,
        metrics_registry: metrics.registry,
        auth,
        registry,
        presence: backing.presence,
        sessions: backing.sessions,
        council: backing.council,
    };
    let gw = Gateway::new(config, parts, shutdown);
    let reporting = stats::spawn(gw.clone(), role, stats_interval);
    serve_listeners(gw, listener, admin_listener).await;
    reporting.finish().await;
    Ok(())
}

/// Binds a listener, saying what to do when the address is taken.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "could not listen on {addr} (is another process using it? choose another with --listen)"
        )
    })
}

/// Binds the admin listener, unless it shares the client port.
async fn bind_admin(layout: Layout) -> anyhow::Result<Option<TcpListener>> {
    let Layout::Own(addr) = layout else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!(
            "could not listen on {addr} for /metrics and health (is another process using it? choose another with --admin-listen, or give it the --listen address to serve them on the client port)"
        )
    })?;
    Ok(Some(listener))
}

/// Serves a gateway until it has drained: the client listener, and the admin
/// listener (open until the drain is over) or `/metrics` on the client port.
async fn serve_listeners(gw: Arc<Gateway>, listener: TcpListener, admin: Option<TcpListener>) {
    let routes = match &admin {
        Some(_) => http::routes(gw.clone()),
        None => admin::metrics_route(gw.clone())
            .or(http::routes(gw.clone()))
            .unify()
            .boxed(),
    };
    let admin = admin.map(|l| AdminServer::spawn(l, admin::gateway_routes(gw.clone())));
    gw.serve_routes(listener, routes).await;
    if let Some(admin) = admin {
        admin.stop().await;
    }
}

/// The first line an operator looks for: where the replica listens (the
/// addresses actually bound: tests start it on port 0 and read them here).
fn announce(
    role: &str,
    listener: &TcpListener,
    admin: Option<&TcpListener>,
    config: &GatewayConfig,
) {
    let local = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let addr = local(listener);
    let admin = admin.map_or_else(|| format!("{addr} (the client port)"), local);
    tracing::info!(
        role,
        listen = %addr,
        admin_listen = %admin,
        replica = %config.replica_id,
        max_connections = config.limits.max_connections,
        "gateway listening: ws://{addr}/ws (native), /ws/{{channel}} (snapshot), /api/ws/{{channel}} (relay), /ws/monitor/{{session_id}} (ESCAI), /api/v1/ws/{{request_id}} (AI Council)"
    );
}
