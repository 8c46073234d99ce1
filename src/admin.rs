//! The admin listener (`--admin-listen`): `/metrics`, `/health/live` and
//! `/health/ready` on an address of their own, for Prometheus and probes.
//!
//! A gateway's client port is what a load balancer or an Ingress routing `/`
//! exposes; metrics there would be public. So the client port keeps only the
//! health endpoints (load balancers check them) and `/metrics` lives here,
//! where a NetworkPolicy or a firewall can restrict who scrapes. Giving
//! `--admin-listen` the same address as `--listen` keeps the single-port
//! layout: `/metrics` is then served on the client port. The admin listener
//! stays open while the gateway drains (readiness answers 503 `draining`,
//! metrics keep being scraped) and closes when the process is done.
//!
//! The collector has no clients: its one listener (`--listen`) serves
//! [`probe_routes`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::engine::Engine;
use crate::gateway::Gateway;
use crate::gateway::reply::{error_response, json_response};
use crate::gateway::server::{self, HttpSettings};
use crate::metrics::MetricsRegistry;

/// Where a gateway serves `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// On their own listener (the default).
    Own(SocketAddr),
    /// On the client listener (`--admin-listen` equal to `--listen`).
    ClientPort,
}

impl Layout {
    /// The same address as `listen` means the client port, except port 0:
    /// two binds of port 0 are two listeners, each on a port of its own.
    pub fn new(listen: SocketAddr, admin_listen: SocketAddr) -> Self {
        if listen == admin_listen && listen.port() != 0 {
            Self::ClientPort
        } else {
            Self::Own(admin_listen)
        }
    }
}

/// Limits of the admin listener's HTTP connections.
const SETTINGS: HttpSettings = HttpSettings {
    header_read_timeout: Duration::from_secs(10),
    max_header_bytes: 16 * 1024,
};

fn text_metrics(body: String) -> Response {
    let mut response = http::Response::new(Bytes::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response.into_response()
}

fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// `GET /metrics` of a gateway (or standalone), nothing else.
pub fn metrics_route(gw: Arc<Gateway>) -> BoxedFilter<(Response,)> {
    warp::path!("metrics")
        .and(warp::get())
        .map(move || {
            gw.refresh_ready_gauge();
            text_metrics(gw.metrics_registry.render())
        })
        .boxed()
}

/// Everything a gateway's admin listener serves: health and metrics; any other
/// path is a 404 (no WebSocket, no API, no page).
pub fn gateway_routes(gw: Arc<Gateway>) -> BoxedFilter<(Response,)> {
    let live = warp::path!("health" / "live")
        .and(warp::get())
        .map(|| json_response(StatusCode::OK, json!({"status": "ok"})));
    let ready_gw = gw.clone();
    let ready = warp::path!("health" / "ready")
        .and(warp::get())
        .map(move || match ready_gw.readiness() {
            Ok(()) => json_response(StatusCode::OK, json!({"status": "ready"})),
            Err(reason) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "not_ready", "reason": reason}),
            ),
        });
    live.or(ready)
        .unify()
        .or(metrics_route(gw))
        .unify()
        .recover(|_| async { Ok::<_, std::convert::Infallible>(not_found()) })
        .unify()
        .boxed()
}

/// `/health/live`, `/health/ready` and `/metrics` of a process without a
/// gateway (the collector): ready when its engine is, and not shutting down.
pub fn probe_routes(
    engine: Arc<dyn Engine>,
    metrics: Arc<MetricsRegistry>,
    shutdown: CancellationToken,
) -> BoxedFilter<(Response,)> {
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
        text_metrics(metrics.render())
    });
    live.or(ready)
        .unify()
        .or(metrics_route)
        .unify()
        .recover(|_| async { Ok::<_, std::convert::Infallible>(not_found()) })
        .unify()
        .boxed()
}

/// A running admin listener; [`AdminServer::stop`] closes it.
pub struct AdminServer {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Serves `routes` on `listener` until stopped.
    pub fn spawn(listener: TcpListener, routes: BoxedFilter<(Response,)>) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(server::serve(
            listener,
            routes,
            SETTINGS,
            stop.clone(),
            TaskTracker::new(),
        ));
        Self { stop, task }
    }

    /// Stops accepting and lets requests in flight finish.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_address_as_listen_means_the_client_port() {
        let listen: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(Layout::new(listen, listen), Layout::ClientPort);
        let admin: SocketAddr = "0.0.0.0:9091".parse().unwrap();
        assert_eq!(Layout::new(listen, admin), Layout::Own(admin));
        // Another address on the same port is not the client listener: binding
        // it fails at start with a message, rather than silently merging.
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(Layout::new(listen, loopback), Layout::Own(loopback));
        // Port 0 twice: two listeners on two ports the system picks.
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(Layout::new(any, any), Layout::Own(any));
    }
}
