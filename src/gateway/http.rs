//! The HTTP routes of a gateway's client port (warp): WebSocket upgrades,
//! health and the REST API (`/metrics` is on the admin listener, `admin.rs`). Every refusal is a JSON body `{"error": code, "message": …}`
//! with a status a client can act on (and `Retry-After` where waiting helps).
//!
//! An upgrade is checked in this order, each step refusing before any
//! WebSocket exists: route and channel name (400), handshake headers (400),
//! draining (503), `Origin` (403), token (401), `websocket:connect` and the
//! route's channel (403), the user's connection limit (429), the replica's
//! connection limit (503).

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
use super::presence::Disconnect;
use super::server::PeerAddr;
use super::session::{Route, Session, SessionStart};
use crate::auth::{AuthError, Identity};
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

/// A refused request, rendered by [`ApiError::into_response`].
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// A 401 for a refused token.
    pub fn unauthorized(e: &AuthError) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string())
    }

    fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn into_response(self) -> Response {
        let mut response = error_response(self.status, self.code, &self.message);
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED
            && let Ok(value) = HeaderValue::from_str(&format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                self.code
            ))
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// The token of a request: `Authorization: Bearer`, then the `bearer.<token>`
/// subprotocol, then `?token=`.
fn token_of<'a>(
    headers: &'a HeaderMap,
    query: &'a str,
    subprotocol: Option<&'a str>,
) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string());
    bearer
        .or_else(|| subprotocol.map(str::to_owned))
        .or_else(|| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        })
        .filter(|t| !t.is_empty())
}

fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Every route of the gateway.
pub fn routes(gw: Arc<Gateway>) -> BoxedFilter<(Response,)> {
    let state = {
        let gw = gw.clone();
        warp::any().map(move || gw.clone())
    };
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let origin = warp::header::optional::<String>("origin");

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
        .and(warp::header::headers_cloned())
        .and(query)
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::ext::optional::<PeerAddr>())
        .then(upgrade);

    let live = warp::path!("health" / "live")
        .and(warp::get())
        .map(|| json_response(StatusCode::OK, json!({"status": "ok"})));
    let ready = warp::path!("health" / "ready")
        .and(warp::get())
        .and(state.clone())
        .map(|gw: Arc<Gateway>| readiness(&gw));
    let publish = warp::path!("api" / "v1" / "publish")
        .and(warp::post())
        .and(state.clone())
        .and(warp::header::headers_cloned())
        .and(query)
        .and(warp::body::content_length_limit(
            gw.config.limits.max_message_bytes as u64 + 1024,
        ))
        .and(warp::body::bytes())
        .then(publish);
    let connections = warp::path!("api" / "v1" / "connections")
        .and(warp::get())
        .and(state.clone())
        .and(warp::header::headers_cloned())
        .and(query)
        .then(list_connections);
    let disconnect = warp::path!("api" / "v1" / "disconnect")
        .and(warp::post())
        .and(state.clone())
        .and(warp::header::headers_cloned())
        .and(query)
        .and(warp::body::content_length_limit(4096))
        .and(warp::body::bytes())
        .then(disconnect);
    let preflight = warp::path("api")
        .and(warp::path("v1"))
        .and(warp::options())
        .and(state.clone())
        .and(origin)
        .map(|gw: Arc<Gateway>, origin: Option<String>| preflight(&gw, origin.as_deref()));
    let rest = publish
        .or(connections)
        .unify()
        .or(disconnect)
        .unify()
        .and(state.clone())
        .and(origin)
        .map(
            |response: Response, gw: Arc<Gateway>, origin: Option<String>| {
                with_cors(&gw, origin.as_deref(), response)
            },
        );

    websocket
        .or(live)
        .unify()
        .or(ready)
        .unify()
        .or(preflight)
        .unify()
        .or(rest)
        .unify()
        .or(crate::web::routes(gw.clone()))
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

/// Adds CORS headers to a REST response for an allowed browser origin.
fn with_cors(gw: &Gateway, origin: Option<&str>, mut response: Response) -> Response {
    if let Some(origin) = origin
        && gw.config.security.origins.allows(Some(origin))
        && let Ok(value) = HeaderValue::from_str(origin)
    {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

fn preflight(gw: &Gateway, origin: Option<&str>) -> Response {
    if !gw.config.security.origins.allows(origin) {
        return ApiError::forbidden("this origin is not in --allowed-origins").into_response();
    }
    let mut response = http::Response::new(Bytes::new());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, x-api-key"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    with_cors(gw, origin, response.into_response())
}

#[allow(clippy::too_many_arguments)]
async fn upgrade(
    route: Result<Route, String>,
    gw: Arc<Gateway>,
    headers: HeaderMap,
    query: String,
    on_upgrade: Option<OnUpgrade>,
    peer: Option<PeerAddr>,
) -> Response {
    match accept(&gw, route, &headers, &query, on_upgrade, peer) {
        Ok(response) => response,
        Err(e) => {
            gw.metrics
                .upgrades_rejected
                .with_label_values(&[e.code])
                .inc();
            let mut response = e.into_response();
            crate::ws::handshake::add_supported_version(&headers, response.headers_mut());
            response
        }
    }
}

fn accept(
    gw: &Arc<Gateway>,
    route: Result<Route, String>,
    headers: &HeaderMap,
    query: &str,
    on_upgrade: Option<OnUpgrade>,
    peer: Option<PeerAddr>,
) -> Result<Response, ApiError> {
    let route = route.map_err(|why| ApiError::new(StatusCode::BAD_REQUEST, "bad_channel", why))?;
    let request = UpgradeRequest::from_headers(headers)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_handshake", e.to_string()))?;
    if gw.shutdown.is_cancelled() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this replica is shutting down: connect again (any replica)",
        )
        .retry_after(1));
    }
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if !gw
        .config
        .security
        .origins
        .allows_or_same_origin(origin, host)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this page's origin is not in the gateway's --allowed-origins",
        ));
    }
    let identity = match &gw.auth {
        None => Identity::anonymous(),
        Some(verifier) => {
            let token = token_of(headers, query, request.subprotocol_token())
                .ok_or_else(|| ApiError::unauthorized(&AuthError::Missing))?;
            verifier
                .verify(&token)
                .map_err(|e| ApiError::unauthorized(&e))?
        }
    };
    if !identity.can_connect() {
        return Err(ApiError::forbidden(
            "your token lacks the websocket:connect permission",
        ));
    }
    if let Route::Snapshot(channel) | Route::Relay(channel) = &route
        && !identity.can_subscribe(channel)
    {
        return Err(ApiError::forbidden(
            "your token does not allow subscribing to this channel",
        ));
    }
    let user_slot = match &identity.user {
        Some(user) => Some(
            gw.registry
                .reserve(user, gw.config.security.max_connections_per_user)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "max_connections_per_user",
                        format!(
                            "this user already holds {} connections on this replica",
                            gw.config.security.max_connections_per_user
                        ),
                    )
                    .retry_after(30)
                })?,
        ),
        // Only without authentication (`--no-auth`, `standalone`): a verified
        // token always names its user (`sub` is required).
        None => None,
    };
    let permit = gw
        .connection_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "max_connections",
                "this replica is at its connection limit: retry later or another replica",
            )
            .retry_after(5)
        })?;
    let on_upgrade = on_upgrade.ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no_upgrade",
            "the connection cannot be upgraded",
        )
    })?;
    // Boxed: what the session is started with would otherwise stay in the
    // connection task's state for the connection's whole life.
    let start = Box::new(SessionStart {
        gw: gw.clone(),
        route,
        identity,
        remote: peer.map(|p| p.0),
        resume: query_param(query, "session"),
    });
    let task = async move {
        match take_stream(on_upgrade).await {
            Ok(stream) => {
                let conn = start.gw.new_conn(stream);
                Box::new(Session::new(*start, conn)).run().await;
            }
            Err(e) => tracing::debug!(peer = ?start.remote, error = %e, "upgrade not completed"),
        }
        drop(user_slot);
        drop(permit);
    };
    gw.tasks.spawn(task);
    Ok(request.accept_response().into_response())
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

async fn publish(gw: Arc<Gateway>, headers: HeaderMap, query: String, body: Bytes) -> Response {
    match try_publish(&gw, &headers, &query, &body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn try_publish(
    gw: &Gateway,
    headers: &HeaderMap,
    query: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let identity = gw.authorize_api(headers, query)?;
    let limits = &gw.config.limits;
    let parsed: PublishBody<'_> = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("expected {{\"channel\": …, \"data\": …}}: {e}"),
        )
    })?;
    if parsed.data.get().len() > limits.max_message_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("\"data\" is larger than {} bytes", limits.max_message_bytes),
        ));
    }
    let channel = ChannelName::parse(&parsed.channel, limits.max_channel_len)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_channel", e.to_string()))?;
    if crate::auth::is_system_channel(&channel) {
        return Err(ApiError::forbidden(format!(
            "channels in the {:?} namespace are written by the gateways themselves, not through the API",
            crate::auth::SYSTEM_NAMESPACE
        )));
    }
    if !identity.can_publish(&channel) {
        return Err(ApiError::forbidden(
            "your credentials do not allow publishing on this channel (needs websocket:publish and a matching channels glob, or websocket:admin)",
        ));
    }
    let data = Json::parse(
        Bytes::copy_from_slice(parsed.data.get().as_bytes()),
        limits.max_json_depth,
    )
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_data", e.to_string()))?;
    let options = PublishOptions {
        snapshot: parsed.snapshot,
        version: None,
    };
    match gw.engine.publish(&channel, &data, options).await {
        Ok(published) => {
            gw.metrics.publishes.with_label_values(&["ok"]).inc();
            Ok(json_response(
                StatusCode::OK,
                json!({
                    "channel": channel.as_str(),
                    "offset": published.offset,
                    "epoch": published.epoch.as_str(),
                }),
            ))
        }
        Err(e @ EngineError::StaleVersion { .. }) => {
            gw.metrics.publishes.with_label_values(&["stale"]).inc();
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "stale_version",
                e.to_string(),
            ))
        }
        Err(e) => {
            gw.metrics.publishes.with_label_values(&["error"]).inc();
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{e}; retry with backoff"),
            )
            .retry_after(1))
        }
    }
}

async fn list_connections(gw: Arc<Gateway>, headers: HeaderMap, query: String) -> Response {
    let result = async {
        let identity = gw.authorize_api(&headers, &query)?;
        if !identity.is_admin() {
            return Err(ApiError::forbidden(
                "listing connections needs websocket:admin",
            ));
        }
        let user = query_param(&query, "user");
        let connections = gw
            .presence
            .list(&gw.registry, user.as_deref())
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    e.to_string(),
                )
                .retry_after(1)
            })?;
        Ok(json_response(
            StatusCode::OK,
            json!({"total": connections.len(), "connections": connections}),
        ))
    }
    .await;
    result.unwrap_or_else(ApiError::into_response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user: String,
}

async fn disconnect(gw: Arc<Gateway>, headers: HeaderMap, query: String, body: Bytes) -> Response {
    let result = async {
        let identity = gw.authorize_api(&headers, &query)?;
        if !identity.is_admin() {
            return Err(ApiError::forbidden(
                "disconnecting users needs websocket:admin",
            ));
        }
        let request: DisconnectBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("expected {{\"user\": …}}: {e}"),
            )
        })?;
        let outcome = gw
            .presence
            .disconnect_user(&gw.registry, &request.user)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    e.to_string(),
                )
                .retry_after(1)
            })?;
        let body = match outcome {
            Disconnect::Closed(n) => json!({"user": request.user, "closed": n}),
            Disconnect::Broadcast => json!({"user": request.user, "sent_to": "all replicas"}),
        };
        Ok(json_response(StatusCode::ACCEPTED, body))
    }
    .await;
    result.unwrap_or_else(ApiError::into_response)
}

impl Gateway {
    /// Authorizes a REST call: the API key (every right), or a token.
    pub(crate) fn authorize_api(
        &self,
        headers: &HeaderMap,
        query: &str,
    ) -> Result<Identity, ApiError> {
        if let (Some(expected), Some(given)) = (&self.config.api_key, headers.get("x-api-key")) {
            return if constant_time_eq(expected.as_bytes(), given.as_bytes()) {
                Ok(Identity::anonymous())
            } else {
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_api_key",
                    "the X-API-Key does not match",
                ))
            };
        }
        match &self.auth {
            None => Ok(Identity::anonymous()),
            Some(verifier) => {
                let token = token_of(headers, query, None).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "missing_token",
                        "send a token as Authorization: Bearer (or the API key as X-API-Key)",
                    )
                })?;
                verifier
                    .verify(&token)
                    .map_err(|e| ApiError::unauthorized(&e))
            }
        }
    }
}

/// Compares secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
            "the request could not be understood".to_string(),
        )
    };
    Ok(error_response(status, code, &message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_sources_in_order() {
        let mut h = HeaderMap::new();
        assert_eq!(token_of(&h, "token=q", None), Some("q".into()));
        assert_eq!(token_of(&h, "a=1&token=q%2Bx", Some("s")), Some("s".into()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer h"));
        assert_eq!(token_of(&h, "token=q", Some("s")), Some("h".into()));
        assert_eq!(token_of(&HeaderMap::new(), "token=", None), None);
    }
}
