//! The HTTP routes of a gateway's client port (warp): WebSocket upgrades,
//! health and the REST API (`/metrics` is on the admin listener, `admin.rs`). Every refusal is a JSON body `{"error": code, "message": …}`
//! with a status a client can act on (and `Retry-After` where waiting helps).
//!
//! An upgrade is checked in this order, each step refusing before any
//! WebSocket exists: route and channel name (400), handshake headers (400),
//! draining (503), `Origin` (403), token (401), the route's rights (403:
//! `websocket:connect`, the route's channel, a request's owner), the user's
//! connection limit (429), the replica's connection limit (503).

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
use super::connection::{Connection, ConnectionStart};
use super::dialect::council::store::Claim;
use super::dialect::{council, escai};
use super::presence::Disconnect;
pub use super::reply::{ApiError, error_response, json_response};
use super::route::Route;
use super::server::PeerAddr;
use crate::auth::{AuthError, AuthKind, Identity};
use crate::channel::ChannelName;
use crate::engine::{EngineError, Idempotency, IdempotencyKey, PublishOptions};
use crate::json::Json;
use crate::ws::handshake::{UpgradeRequest, take_stream};

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

    let native = warp::path!("ws")
        .and(warp::get())
        .map(|| Ok(Route::Native { resume: None }));
    let max_len = gw.config.limits.max_channel_len;
    let snapshot = warp::path!("ws" / String)
        .and(warp::get())
        .map(move |name: String| channel_route(&name, max_len, Route::Snapshot));
    let relay = warp::path!("api" / "ws" / String)
        .and(warp::get())
        .map(move |name: String| channel_route(&name, max_len, Route::Relay));
    let escai = warp::path!("ws" / "monitor" / String)
        .and(warp::get())
        .map(|session_id: String| escai_route(session_id));
    let council = warp::path!("api" / "v1" / "ws" / String)
        .and(warp::get())
        .map(move |request_id: String| council_route(request_id, max_len));
    // Seed 000's reasoning traces: channel `reasoning:{agent_name}`, relayed.
    let reasoning = warp::path!("ws" / "reasoning" / String)
        .and(warp::get())
        .map(move |agent: String| {
            channel_route(&format!("reasoning:{agent}"), max_len, Route::Relay)
        });
    let websocket = native
        .or(snapshot)
        .unify()
        .or(relay)
        .unify()
        .or(escai)
        .unify()
        .or(council)
        .unify()
        .or(reasoning)
        .unify()
        .and(state.clone())
        .and(warp::header::headers_cloned())
        .and(query)
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::ext::optional::<PeerAddr>())
        .then(upgrade);

    // `/live`, `/ready` and `/health` are seed 002's probe paths.
    let live = warp::path!("health" / "live")
        .or(warp::path!("live"))
        .unify()
        .and(warp::get())
        .map(|| json_response(StatusCode::OK, json!({"status": "ok"})));
    let ready = warp::path!("health" / "ready")
        .or(warp::path!("ready"))
        .unify()
        .and(warp::get())
        .and(state.clone())
        .map(|gw: Arc<Gateway>| readiness(&gw));
    let health = warp::path!("health")
        .and(warp::get())
        .and(state.clone())
        .map(|gw: Arc<Gateway>| health(&gw));
    let whoami_route = warp::path!("api" / "v1" / "whoami")
        .and(warp::get())
        .and(state.clone())
        .and(warp::header::headers_cloned())
        .and(query)
        .map(|gw: Arc<Gateway>, headers: HeaderMap, query: String| whoami(&gw, &headers, &query));
    let publish = warp::path!("api" / "v1" / "publish")
        .and(warp::post())
        .and(state.clone())
        .and(warp::header::headers_cloned())
        .and(query)
        .and(super::body::bounded(
            gw.config.limits.max_message_bytes as u64 + 1024,
            gw.config.limits.discard_body_bytes,
        ))
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
        .and(super::body::bounded(
            4096,
            gw.config.limits.discard_body_bytes,
        ))
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

    // The seeds' REST paths first: `/ws/health`, `/ws/connections` and
    // `/ws/status` answer HTTP, not the ARK route of a channel of that name.
    escai::rest::routes(gw.clone())
        .or(council::rest::routes(gw.clone()))
        .unify()
        .or(websocket)
        .unify()
        .or(live)
        .unify()
        .or(ready)
        .unify()
        .or(health)
        .unify()
        .or(preflight)
        .unify()
        .or(rest)
        .unify()
        .or(whoami_route)
        .unify()
        .or(crate::web::routes())
        .unify()
        .recover(rejection)
        .unify()
        .boxed()
}

/// A refused route: the error code and why.
type BadRoute = (&'static str, String);

fn channel_route(
    name: &str,
    max_len: usize,
    route: fn(ChannelName) -> Route,
) -> Result<Route, BadRoute> {
    ChannelName::parse(name, max_len)
        .map(route)
        .map_err(|e| ("bad_channel", e.to_string()))
}

/// Longest ESCAI session id in the path.
const MAX_SESSION_ID: usize = 128;

fn escai_route(session_id: String) -> Result<Route, BadRoute> {
    let ok = !session_id.is_empty()
        && session_id.len() <= MAX_SESSION_ID
        && session_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@".contains(&b));
    if !ok {
        return Err((
            "bad_session_id",
            format!(
                "the session id in /ws/monitor/{{session_id}} must be 1 to {MAX_SESSION_ID} ASCII letters, digits or _ - . : @"
            ),
        ));
    }
    Ok(Route::Escai { session_id })
}

fn council_route(request_id: String, max_len: usize) -> Result<Route, BadRoute> {
    let channel = council::request_channel(&request_id, max_len)
        .map_err(|e| ("bad_channel", format!("request id {request_id:?}: {e}")))?;
    Ok(Route::Council {
        request_id,
        channel,
    })
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

/// `GET /health`, as seed 002's clients read it: `"healthy"` when ready.
fn health(gw: &Gateway) -> Response {
    match gw.readiness() {
        Ok(()) => json_response(
            StatusCode::OK,
            json!({"status": "healthy", "replica": gw.config.replica_id}),
        ),
        Err(reason) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "unhealthy", "reason": reason, "replica": gw.config.replica_id}),
        ),
    }
}

/// `GET /api/v1/whoami`: who the request's token is (the dashboard page asks
/// it first), or — without a token, on a gateway with `--anonymous-subscribe` —
/// which channels it may read without one.
fn whoami(gw: &Gateway, headers: &HeaderMap, query: &str) -> Response {
    let answer = match gw.authorize_api(headers, query) {
        Ok(identity) => Ok(json!({
            "auth": gw.auth.is_some(),
            "user": identity.user,
            "admin": identity.is_admin(),
            "expires_at": identity.expires_at,
            "replica": gw.config.replica_id,
        })),
        // No token, and the gateway lets clients without one read some
        // channels: the page may show those without asking for a token.
        Err(e) if e.code == "missing_token" && gw.config.security.anonymous.is_some() => {
            let patterns = gw
                .config
                .security
                .anonymous
                .as_ref()
                .map(|a| a.patterns().to_vec())
                .unwrap_or_default();
            Ok(json!({
                "auth": true,
                "user": null,
                "admin": false,
                "anonymous": true,
                "channels": patterns,
                "replica": gw.config.replica_id,
            }))
        }
        Err(e) => Err(e),
    };
    match answer {
        Ok(body) => {
            let mut response = json_response(StatusCode::OK, body);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => e.into_response(),
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
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(CORS_EXPOSE_HEADERS),
        );
        // Credentials only for an origin the operator listed: with no list
        // (any origin), a credentialed request from any site is not allowed.
        if !gw.config.security.origins.is_any() {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
    response
}

/// What seed 002 lets pages send (`main_enterprise.py`'s CORS), and the API key.
const CORS_ALLOW_HEADERS: &str = "authorization, content-type, x-api-key, x-request-id, accept, accept-language, content-language";
/// Methods seed 002 lists (the API itself answers GET, POST and OPTIONS).
const CORS_ALLOW_METHODS: &str = "GET, POST, PUT, DELETE, PATCH, OPTIONS, HEAD";
/// Response headers seed 002 lets pages read.
const CORS_EXPOSE_HEADERS: &str = "x-response-time, x-ratelimit-limit, x-ratelimit-remaining";

fn preflight(gw: &Gateway, origin: Option<&str>) -> Response {
    if !gw.config.security.origins.allows(origin) {
        return ApiError::forbidden("this origin is not in --allowed-origins").into_response();
    }
    let mut response = http::Response::new(Bytes::new());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(CORS_ALLOW_METHODS),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(CORS_ALLOW_HEADERS),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    with_cors(gw, origin, response.into_response())
}

#[allow(clippy::too_many_arguments)]
async fn upgrade(
    route: Result<Route, BadRoute>,
    gw: Arc<Gateway>,
    headers: HeaderMap,
    query: String,
    on_upgrade: Option<OnUpgrade>,
    peer: Option<PeerAddr>,
) -> Response {
    match accept(&gw, route, &headers, &query, on_upgrade, peer).await {
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

async fn accept(
    gw: &Arc<Gateway>,
    route: Result<Route, BadRoute>,
    headers: &HeaderMap,
    query: &str,
    on_upgrade: Option<OnUpgrade>,
    peer: Option<PeerAddr>,
) -> Result<Response, ApiError> {
    let mut route =
        route.map_err(|(code, why)| ApiError::new(StatusCode::BAD_REQUEST, code, why))?;
    if let Route::Native { resume } = &mut route {
        *resume = query_param(query, "session");
    }
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
        Some(verifier) => match token_of(headers, query, request.subprotocol_token()) {
            // A token that is given is verified: a bad one is refused, never
            // taken as no token.
            Some(token) => verifier
                .verify(&token)
                .map_err(|e| ApiError::unauthorized(&e))?,
            None => match &gw.config.security.anonymous {
                Some(reads) => Identity::anonymous_reader(reads.clone()),
                None => return Err(ApiError::unauthorized(&AuthError::Missing)),
            },
        },
    };
    let anonymous = identity.auth_kind() == AuthKind::Anonymous;
    // The AI Council seed's tokens carry no permissions: a valid token (and,
    // for an owned request, its owner) is what that route asks.
    if !matches!(route, Route::Council { .. }) && !identity.can_connect() {
        return Err(ApiError::forbidden(
            "your token lacks the websocket:connect permission",
        ));
    }
    if let Some(channel) = route.channel()
        && anonymous
        && !identity.can_subscribe(channel)
    {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            AuthError::Missing.code(),
            "this channel needs a token (it is not among the gateway's --anonymous-subscribe channels)",
        ));
    }
    if let Route::Snapshot(channel) | Route::Relay(channel) = &route
        && !identity.can_subscribe(channel)
    {
        return Err(ApiError::forbidden(
            "your token does not allow subscribing to this channel",
        ));
    }
    if let Some(channel) = route.channel() {
        let allowed = gw.council.may_read(channel, &identity).await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{e}; retry with backoff"),
            )
            .retry_after(1)
        })?;
        if !allowed {
            return Err(ApiError::forbidden("this request belongs to another user"));
        }
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
        // Only without authentication (`--no-auth`, `standalone`) or without a
        // token (`--anonymous-subscribe`): a verified token always names its
        // user (`sub` is required).
        None => None,
    };
    let anonymous_slots = if anonymous {
        Some(reserve_anonymous(gw, headers, peer)?)
    } else {
        None
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
    let deflate = gw.config.hub.compression.enabled && request.offers_deflate();
    // Boxed: what the connection is started with would otherwise stay in the
    // connection task's state for the connection's whole life.
    let start = Box::new(ConnectionStart {
        gw: gw.clone(),
        route,
        identity,
        remote: peer.map(|p| p.0),
        deflate,
    });
    let task = async move {
        match take_stream(on_upgrade).await {
            Ok(stream) => {
                let conn = start.gw.new_conn(stream);
                Box::new(Connection::new(*start, conn)).run().await;
            }
            Err(e) => tracing::debug!(peer = ?start.remote, error = %e, "upgrade not completed"),
        }
        drop(user_slot);
        drop(anonymous_slots);
        drop(permit);
    };
    gw.tasks.spawn(task);
    Ok(request.accept_response(deflate).into_response())
}

/// The places a connection without a token takes: one of the replica's
/// anonymous share, one of its address's.
fn reserve_anonymous(
    gw: &Arc<Gateway>,
    headers: &HeaderMap,
    peer: Option<PeerAddr>,
) -> Result<
    (
        tokio::sync::OwnedSemaphorePermit,
        Option<super::registry::AddressSlot>,
    ),
    ApiError,
> {
    let security = &gw.config.security;
    let permit = gw.anonymous_slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "max_anonymous_connections",
            "this replica holds as many connections without a token as it accepts: retry later, another replica, or with a token",
        )
        .retry_after(5)
    })?;
    let address = security
        .client_ip
        .client_ip(peer.map(|p| p.0.ip()), headers);
    let slot = match address {
        Some(address) => Some(
            gw.registry
                .reserve_address(address, security.max_anonymous_connections_per_ip)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "max_anonymous_connections_per_ip",
                        format!(
                            "this address already holds {} connections without a token on this replica",
                            security.max_anonymous_connections_per_ip
                        ),
                    )
                    .retry_after(30)
                })?,
        ),
        None => None,
    };
    Ok((permit, slot))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    channel: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    snapshot: bool,
    /// The user who owns an AI Council request (`council:{request_id}`): only
    /// that user (or an administrator) may read it.
    #[serde(default)]
    owner: Option<String>,
    /// The producer's key for this message (or the `Idempotency-Key` header):
    /// a retry with the same key within `--idempotency-window` is answered with
    /// the first publish's offset and is not published again.
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// The header a producer may name its idempotency key in (the IETF
/// "Idempotency-Key" HTTP header field) instead of the body field.
const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The publish's idempotency key, from the body field or the header (both
/// given must agree).
fn idempotency(
    body: Option<&str>,
    headers: &HeaderMap,
    window: std::time::Duration,
) -> Result<Option<Idempotency>, ApiError> {
    let bad =
        |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_idempotency_key", message);
    let header = match headers.get(IDEMPOTENCY_KEY_HEADER) {
        Some(value) => Some(value.to_str().map_err(|_| {
            bad("the Idempotency-Key header may only hold visible ASCII characters".into())
        })?),
        None => None,
    };
    let key = match (body, header) {
        (Some(b), Some(h)) if b != h => {
            return Err(bad(
                "\"idempotency_key\" and the Idempotency-Key header differ: send one of them"
                    .into(),
            ));
        }
        (Some(key), _) | (None, Some(key)) => key,
        (None, None) => return Ok(None),
    };
    let key = IdempotencyKey::parse(key).map_err(|e| bad(e.to_string()))?;
    Ok(Some(Idempotency { key, window }))
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
    let idempotency = idempotency(
        parsed.idempotency_key.as_deref(),
        headers,
        limits.idempotency_window,
    )?;
    if let Some(owner) = parsed.owner.as_deref() {
        claim_owner(gw, &channel, owner).await?;
    }
    let options = PublishOptions {
        snapshot: parsed.snapshot,
        version: None,
        idempotency,
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

/// Makes `owner` the owner of an AI Council request before its event is
/// published; a newly claimed request's readers of other users are closed on
/// every replica.
async fn claim_owner(gw: &Gateway, channel: &ChannelName, owner: &str) -> Result<(), ApiError> {
    if channel.namespace() != Some(council::NAMESPACE) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!(
                "\"owner\" applies to AI Council requests, channels {}:{{request_id}}",
                council::NAMESPACE
            ),
        ));
    }
    if owner.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "\"owner\" must name a user (a token's sub)",
        ));
    }
    let unavailable = |e: EngineError| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{e}; retry with backoff"),
        )
        .retry_after(1)
    };
    match gw
        .council
        .claim(channel, owner)
        .await
        .map_err(unavailable)?
    {
        Claim::Same => Ok(()),
        Claim::New => gw
            .presence
            .owner_claimed(&gw.registry, channel.as_str(), owner)
            .await
            .map_err(unavailable),
        Claim::Other(current) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "owner_conflict",
            format!("this request already belongs to {current:?}"),
        )),
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
    // A refused body comes from the route whose path and method matched:
    // it is the answer, whatever the other routes' method checks said.
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some()
        || rejection.find::<super::body::BodyTooLarge>().is_some()
    {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the request body is too large".to_string(),
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "send a Content-Length header".to_string(),
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not accept that method".to_string(),
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
