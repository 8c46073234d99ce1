//! The HTTP routes of a gateway (warp): WebSocket upgrades, health, metrics and
//! the REST API. Every refusal is a JSON body `{"error": code, "message": …}`
//! with a status a client can act on.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::Gateway;
use super::server::PeerAddr;
use super::session::{Route, Session};
use crate::auth::Identity;
use crate::channel::ChannelName;
use crate::engine::{EngineError, PublishOptions};
use crate::json::Json;
use crate::ws::handshake::{UpgradeRequest, take_stream};

/// A JSON response.
pub fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = http::Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response.into_response()
}

/// A refusal: `{"error": code, "message": message}`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(status, json!({ "error": code, "message": message }))
}

/// A refused REST call, rendered by [`ApiError::into_response`].
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn into_response(self) -> Response {
        error_response(self.status, self.code, &self.message)
    }
}

fn with_retry_after(mut response: Response, seconds: u64) -> Response {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// Every route of the gateway.
pub fn routes(gw: Arc<Gateway>) -> BoxedFilter<(Response,)> {
    let state = {
        let gw = gw.clone();
        warp::any().map(move || gw.clone())
    };
    let upgrade_parts = warp::header::headers_cloned()
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::ext::optional::<PeerAddr>());

    let native = warp::path!("ws").and(warp::get()).map(|| Ok(Route::Native));
    let max_len = gw.config.limits.max_channel_len;
    let snapshot = warp::path!("ws" / String)
        .and(warp::get())
        .map(move |name: String| channel_route(&name, max_len, Route::Snapshot));
    let relay = warp::path!("api" / "ws" / String)
        .and(warp::get())
        .map(move |name: String| channel_route(&name, max_len, Route::Relay));
    let websocket = native
        .or(snapshot)
        .unify()
        .or(relay)
        .unify()
        .and(state.clone())
        .and(upgrade_parts)
        .then(upgrade);

    let live = warp::path!("health" / "live")
        .and(warp::get())
        .map(|| json_response(StatusCode::OK, json!({"status": "ok"})));
    let ready = warp::path!("health" / "ready")
        .and(warp::get())
        .and(state.clone())
        .map(|gw: Arc<Gateway>| readiness(&gw));
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(state.clone())
        .map(|gw: Arc<Gateway>| {
            gw.refresh_ready_gauge();
            let mut response = http::Response::new(Bytes::from(gw.metrics.render()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response.into_response()
        });
    let publish = warp::path!("api" / "v1" / "publish")
        .and(warp::post())
        .and(state.clone())
        .and(warp::header::headers_cloned())
        .and(warp::body::content_length_limit(
            gw.config.limits.max_message_bytes as u64 + 1024,
        ))
        .and(warp::body::bytes())
        .then(publish);

    websocket
        .or(live)
        .unify()
        .or(ready)
        .unify()
        .or(metrics)
        .unify()
        .or(publish)
        .unify()
        .recover(rejection)
        .unify()
        .boxed()
}

fn channel_route(
    name: &str,
    max_len: usize,
    route: fn(ChannelName) -> Route,
) -> Result<Route, String> {
    ChannelName::parse(name, max_len)
        .map(route)
        .map_err(|e| e.to_string())
}

fn readiness(gw: &Gateway) -> Response {
    match gw.readiness() {
        Ok(()) => json_response(StatusCode::OK, json!({"status": "ready"})),
        Err(reason) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not_ready", "reason": reason}),
        ),
    }
}

async fn upgrade(
    route: Result<Route, String>,
    gw: Arc<Gateway>,
    headers: HeaderMap,
    on_upgrade: Option<OnUpgrade>,
    peer: Option<PeerAddr>,
) -> Response {
    let reject = |status, reason: &str, message: &str| {
        gw.metrics
            .upgrades_rejected
            .with_label_values(&[reason])
            .inc();
        error_response(status, reason, message)
    };
    let route = match route {
        Ok(route) => route,
        Err(why) => return reject(StatusCode::BAD_REQUEST, "bad_channel", &why),
    };
    let request = match UpgradeRequest::from_headers(&headers) {
        Ok(r) => r,
        Err(e) => return reject(StatusCode::BAD_REQUEST, "bad_handshake", &e.to_string()),
    };
    if gw.shutdown.is_cancelled() {
        let response = reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this replica is shutting down: connect again (any replica)",
        );
        return with_retry_after(response, 1);
    }
    let identity = Identity::anonymous();
    if let Route::Snapshot(channel) | Route::Relay(channel) = &route
        && !identity.can_subscribe(channel)
    {
        return reject(
            StatusCode::FORBIDDEN,
            "forbidden",
            "your token does not allow subscribing to this channel",
        );
    }
    let Ok(permit) = gw.connection_slots.clone().try_acquire_owned() else {
        let response = reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "max_connections",
            "this replica is at its connection limit: retry later or another replica",
        );
        return with_retry_after(response, 5);
    };
    let Some(on_upgrade) = on_upgrade else {
        return reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no_upgrade",
            "the connection cannot be upgraded",
        );
    };
    let session_gw = gw.clone();
    gw.sessions.spawn(async move {
        match take_stream(on_upgrade).await {
            Ok(stream) => {
                let conn = session_gw.new_conn(stream);
                Session::new(session_gw, conn, route, identity).run().await;
            }
            Err(e) => {
                tracing::debug!(peer = ?peer.map(|p| p.0), error = %e, "upgrade not completed");
            }
        }
        drop(permit);
    });
    request.accept_response().into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    channel: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    snapshot: bool,
}

async fn publish(gw: Arc<Gateway>, headers: HeaderMap, body: Bytes) -> Response {
    let identity = match gw.authorize_api(&headers) {
        Ok(identity) => identity,
        Err(e) => return e.into_response(),
    };
    let limits = &gw.config.limits;
    let parsed: PublishBody<'_> = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                &format!("expected {{\"channel\": …, \"data\": …}}: {e}"),
            );
        }
    };
    if parsed.data.get().len() > limits.max_message_bytes {
        return error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("\"data\" is larger than {} bytes", limits.max_message_bytes),
        );
    }
    let channel = match ChannelName::parse(&parsed.channel, limits.max_channel_len) {
        Ok(c) => c,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "bad_channel", &e.to_string()),
    };
    if !identity.can_publish(&channel) {
        return error_response(
            StatusCode::FORBIDDEN,
            "forbidden",
            "your credentials do not allow publishing on this channel",
        );
    }
    let data = match Json::parse(
        Bytes::copy_from_slice(parsed.data.get().as_bytes()),
        limits.max_json_depth,
    ) {
        Ok(d) => d,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "invalid_data", &e.to_string()),
    };
    let options = PublishOptions {
        snapshot: parsed.snapshot,
        version: None,
    };
    match gw.engine.publish(&channel, &data, options).await {
        Ok(published) => {
            gw.metrics.publishes.with_label_values(&["ok"]).inc();
            json_response(
                StatusCode::OK,
                json!({
                    "channel": channel.as_str(),
                    "offset": published.offset,
                    "epoch": published.epoch.as_str(),
                }),
            )
        }
        Err(e @ EngineError::StaleVersion { .. }) => {
            gw.metrics.publishes.with_label_values(&["stale"]).inc();
            error_response(StatusCode::CONFLICT, "stale_version", &e.to_string())
        }
        Err(e) => {
            gw.metrics.publishes.with_label_values(&["error"]).inc();
            with_retry_after(
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    &format!("{e}; retry with backoff"),
                ),
                1,
            )
        }
    }
}

async fn rejection(rejection: warp::Rejection) -> Result<Response, Infallible> {
    let (status, code, message) = if rejection.is_not_found() {
        (
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint".to_string(),
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not accept that method".to_string(),
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "send a Content-Length header".to_string(),
        )
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the request body is too large".to_string(),
        )
    } else {
        (
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{rejection:?}"),
        )
    };
    Ok(error_response(status, code, &message))
}
