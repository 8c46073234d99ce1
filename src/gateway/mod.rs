//! A gateway replica: its shared state and its life from bind to drain.
//!
//! The [`Gateway`] holds what every connection needs (engine, hub, metrics,
//! configuration, the shutdown token). [`Gateway::serve`] runs the accept loop
//! until shutdown, then waits for the sessions — which close themselves spread
//! over the drain window — until the drain deadline.

pub mod http;
pub mod recovery;
pub mod server;
pub mod session;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ::http::{HeaderMap, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Identity;
use crate::config::GatewayConfig;
use crate::engine::Engine;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::ws::conn::Conn;

/// Shared state of one gateway replica.
pub struct Gateway {
    pub config: GatewayConfig,
    pub engine: Arc<dyn Engine>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    /// Cancelled on SIGTERM/SIGINT: stop accepting, drain the clients.
    pub shutdown: CancellationToken,
    /// Authentication is off (`--no-auth`): every caller may do everything.
    pub auth_disabled: bool,
    connection_slots: Arc<Semaphore>,
    sessions: TaskTracker,
    next_conn: AtomicU64,
}

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        engine: Arc<dyn Engine>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        auth_disabled: bool,
    ) -> Arc<Self> {
        let slots = Arc::new(Semaphore::new(config.limits.max_connections));
        Arc::new(Self {
            config,
            engine,
            hub,
            metrics,
            shutdown,
            auth_disabled,
            connection_slots: slots,
            sessions: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
        })
    }

    /// Serves on `listener` until shutdown, then drains. Returns when every
    /// session has ended or the drain deadline has passed.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let settings = server::HttpSettings {
            header_read_timeout: self.config.timeouts.header_read_timeout,
            max_header_bytes: 16 * 1024,
        };
        let http_tasks = TaskTracker::new();
        server::serve(
            listener,
            http::routes(self.clone()),
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
        self.sessions.close();
        http_tasks.close();
        let remaining = self.config.drain.deadline.saturating_sub(started.elapsed());
        let all = async {
            self.sessions.wait().await;
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
    pub fn readiness(&self) -> Result<(), String> {
        if self.shutdown.is_cancelled() {
            return Err("draining".into());
        }
        let health = self.engine.health();
        if !health.ready {
            return Err(health.detail);
        }
        Ok(())
    }

    pub(crate) fn refresh_ready_gauge(&self) {
        self.metrics.ready.set(i64::from(self.readiness().is_ok()));
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

    /// Authorizes a REST call: the configured API key, or anyone when
    /// authentication is disabled.
    pub(crate) fn authorize_api(&self, headers: &HeaderMap) -> Result<Identity, http::ApiError> {
        if let (Some(expected), Some(given)) = (&self.config.api_key, headers.get("x-api-key"))
            && constant_time_eq(expected.as_bytes(), given.as_bytes())
        {
            return Ok(Identity::anonymous());
        }
        if self.auth_disabled {
            return Ok(Identity::anonymous());
        }
        Err(http::ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the API key as X-API-Key",
        ))
    }
}

/// Compares secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
