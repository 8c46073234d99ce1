//! A gateway replica: its shared state and its life from bind to drain.
//!
//! The [`Gateway`] holds what every connection needs (engine, hub, metrics,
//! configuration, the shutdown token). [`Gateway::serve`] runs the accept loop
//! until shutdown, then waits for the sessions — which close themselves spread
//! over the drain window — until the drain deadline.

pub mod body;
pub mod connection;
pub mod core;
pub mod dialect;
pub mod http;
pub mod presence;
pub mod recovery;
pub mod registry;
pub mod reply;
pub mod route;
pub mod server;
pub mod sessions;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::config::GatewayConfig;
use crate::engine::Engine;
use crate::hub::Hub;
use crate::metrics::{EngineMetrics, GatewayMetrics, MetricsRegistry};
use crate::ws::conn::Conn;
use dialect::council::store::CouncilStore;
use presence::Presence;
use registry::Registry;

/// Shared state of one gateway replica.
pub struct Gateway {
    pub config: GatewayConfig,
    pub engine: Arc<dyn Engine>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<GatewayMetrics>,
    /// The engine's metrics (the operations report reads Redis failures).
    pub engine_metrics: Arc<EngineMetrics>,
    /// What `/metrics` renders.
    pub metrics_registry: Arc<MetricsRegistry>,
    /// Cancelled on SIGTERM/SIGINT: stop accepting, drain the clients.
    pub shutdown: CancellationToken,
    /// Token verification; `None` when authentication is off.
    pub auth: Option<Arc<Verifier>>,
    /// This replica's connections.
    pub registry: Arc<Registry>,
    /// The cluster's connections (admin API).
    pub presence: Presence,
    /// Resumable sessions.
    pub sessions: sessions::SessionStore,
    /// AI Council requests: owners, acknowledgements, reconnections.
    pub council: CouncilStore,
    connection_slots: Arc<Semaphore>,
    /// Places for connections without a token (`--max-anonymous-connections`).
    anonymous_slots: Arc<Semaphore>,
    /// The tasks of the open WebSocket connections.
    tasks: TaskTracker,
    next_conn: AtomicU64,
}

/// Why a replica should not receive traffic (`/health/ready` says it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("draining")]
    Draining,
    /// The engine's own words (Redis unreachable, subscriptions not live).
    #[error("{0}")]
    Engine(String),
    #[error("catching up from history after the engine feed was lost")]
    CatchingUp,
}

/// In JSON (`/health/ready`'s `reason`), the sentence.
impl serde::Serialize for NotReady {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// What a gateway is built from.
pub struct Parts {
    pub engine: Arc<dyn Engine>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<GatewayMetrics>,
    pub engine_metrics: Arc<EngineMetrics>,
    pub metrics_registry: Arc<MetricsRegistry>,
    pub auth: Option<Arc<Verifier>>,
    pub registry: Arc<Registry>,
    pub presence: Presence,
    pub sessions: sessions::SessionStore,
    pub council: CouncilStore,
}

impl Gateway {
    pub fn new(config: GatewayConfig, parts: Parts, shutdown: CancellationToken) -> Arc<Self> {
        let slots = Arc::new(Semaphore::new(config.limits.max_connections));
        let anonymous_slots = Arc::new(Semaphore::new(config.security.max_anonymous_connections));
        // Capacity beside the connections (utilisation alerts, autoscaling), and
        // every known label value of the counters at 0.
        let closes = crate::ws::close::CloseCode::ALL.map(|c| c.label());
        let errors = crate::protocol::ErrorCode::ALL.map(|c| c.as_str());
        parts.metrics.gateway_started(
            config.limits.max_connections,
            &crate::metrics::GatewayLabels {
                close_codes: &closes,
                client_errors: &errors,
            },
        );
        Arc::new(Self {
            config,
            engine: parts.engine,
            hub: parts.hub,
            metrics: parts.metrics,
            engine_metrics: parts.engine_metrics,
            metrics_registry: parts.metrics_registry,
            shutdown,
            auth: parts.auth,
            registry: parts.registry,
            presence: parts.presence,
            sessions: parts.sessions,
            council: parts.council,
            connection_slots: slots,
            anonymous_slots,
            tasks: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
        })
    }

    /// Serves on `listener` until shutdown, then drains. Returns when every
    /// session has ended or the drain deadline has passed.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let routes = http::routes(self.clone());
        self.serve_routes(listener, routes).await;
    }

    /// [`Gateway::serve`] with the client port's routes given (the admin
    /// module adds `/metrics` to them for the single-port layout).
    pub async fn serve_routes(
        self: Arc<Self>,
        listener: TcpListener,
        routes: warp::filters::BoxedFilter<(warp::reply::Response,)>,
    ) {
        let settings = server::HttpSettings {
            header_read_timeout: self.config.timeouts.header_read_timeout,
            max_header_bytes: 16 * 1024,
        };
        let http_tasks = TaskTracker::new();
        server::serve(
            listener,
            routes,
            settings,
            self.shutdown.clone(),
            http_tasks.clone(),
        )
        .await;
        let started = Instant::now();
        self.refresh_ready_gauge();
        let open = self.open_connections();
        tracing::info!(
            connections = open,
            window = ?self.config.drain.window,
            deadline = ?self.config.drain.deadline,
            "draining: closing clients with 1001 over the drain window"
        );
        self.tasks.close();
        http_tasks.close();
        let remaining = self.config.drain.deadline.saturating_sub(started.elapsed());
        let all = async {
            self.tasks.wait().await;
            http_tasks.wait().await;
        };
        if tokio::time::timeout(remaining, all).await.is_err() {
            tracing::warn!(
                connections = self.open_connections(),
                "drain deadline reached with connections still open; exiting"
            );
        } else {
            tracing::info!(elapsed = ?started.elapsed(), "drained");
        }
    }

    /// Open WebSocket connections.
    pub fn open_connections(&self) -> usize {
        self.config.limits.max_connections - self.connection_slots.available_permits()
    }

    /// `Ok` when the replica should receive traffic; otherwise why not.
    pub fn readiness(&self) -> Result<(), NotReady> {
        if self.shutdown.is_cancelled() {
            return Err(NotReady::Draining);
        }
        let health = self.engine.health();
        if !health.ready {
            return Err(NotReady::Engine(health.detail));
        }
        if !self.hub.feed_ready() {
            return Err(NotReady::CatchingUp);
        }
        Ok(())
    }

    pub(crate) fn refresh_ready_gauge(&self) {
        self.metrics_registry
            .ready
            .set(i64::from(self.readiness().is_ok()));
    }

    fn new_conn(&self, stream: TcpStream) -> Arc<Conn> {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        Arc::new(Conn::new(
            id,
            stream,
            self.config.limits.max_outbound_bytes,
            self.metrics.clone(),
        ))
    }
}
