//! The ESCAI seed's REST endpoints beside its WebSocket route:
//! `GET /ws/health` (the WebSocket service's health, no token),
//! `GET /ws/connections` (admin: ESCAI connections on every replica) and
//! `POST /ws/broadcast/test` (admin: a test alert, or a test event to one
//! agent's subscribers). These exact paths answer HTTP; they are not ARK
//! snapshot routes (`/ws/{channel}`) for channels named `health` or
//! `connections` — those stay reachable on `/ws` and `/api/ws/{channel}`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use super::{ALERTS_CHANNEL, agent_channel};
use crate::channel::ChannelName;
use crate::engine::PublishOptions;
use crate::gateway::Gateway;
use crate::gateway::reply::{ApiError, json_response};
use crate::json::Json;

/// The three routes.
pub fn routes(gw: Arc<Gateway>) -> BoxedFilter<(Response,)> {
    let state = warp::any().map(move || gw.clone());
    let query = || warp::query::raw().or(warp::any().map(String::new)).unify();
    let health = warp::path!("ws" / "health")
        .and(warp::get())
        .and(state.clone())
        .map(|gw: Arc<Gateway>| health(&gw));
    let connections = warp::path!("ws" / "connections")
        .and(warp::get())
        .and(state.clone())
        .and(warp::header::headers_cloned())
        .and(query())
        .then(connections);
    let broadcast = warp::path!("ws" / "broadcast" / "test")
        .and(warp::post())
        .and(state)
        .and(warp::header::headers_cloned())
        .and(query())
        .and(optional_body(64 * 1024))
        .then(broadcast);
    health.or(connections).unify().or(broadcast).unify().boxed()
}

/// The request body up to `limit` bytes (413 beyond), or an empty one when
/// the request has none: the seed's clients POST with query parameters only.
fn optional_body(limit: u64) -> impl Filter<Extract = (Bytes,), Error = warp::Rejection> + Clone {
    let with_body = warp::body::content_length_limit(limit).and(warp::body::bytes());
    let without = warp::header::optional::<String>("content-length")
        .and(warp::header::optional::<String>("transfer-encoding"))
        .and_then(
            |length: Option<String>, chunked: Option<String>| async move {
                match (length, chunked) {
                    (None, None) => Ok(Bytes::new()),
                    _ => Err(warp::reject::not_found()),
                }
            },
        );
    with_body.or(without).unify()
}

/// The seed's health document, for this replica.
fn health(gw: &Gateway) -> Response {
    let m = &gw.metrics;
    let active = m.route_connections("escai");
    let max = gw.config.limits.max_connections;
    let ready = gw.readiness();
    let status = match &ready {
        Err(_) => "unavailable",
        Ok(()) if gw.open_connections() * 10 >= max * 9 => "near_capacity",
        Ok(()) if active == 0 => "idle",
        Ok(()) => "healthy",
    };
    let escai = &gw.config.dialects.escai;
    let body = json!({
        "status": status,
        "reason": ready.as_ref().err(),
        "replica": gw.config.replica_id,
        "max_connections": max,
        "heartbeat_interval": escai.ping_interval.as_secs(),
        "heartbeat_timeout": escai.pong_timeout.as_secs(),
        "heartbeat_running": !escai.ping_interval.is_zero(),
        "active_connections": active,
        "total_connections_ever": m.route_connections_opened("escai"),
        "gateway_connections": gw.open_connections(),
        "total_subscriptions": m.subscriptions.get(),
        "messages_sent": m.messages_out.get(),
        "messages_received": m.client_messages.get(),
        "timestamp": crate::time::rfc3339_now(),
    });
    let status = if ready.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, body)
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!("{e}; retry with backoff"),
    )
}

fn admin(gw: &Gateway, headers: &HeaderMap, query: &str) -> Result<(), ApiError> {
    let identity = gw.authorize_api(headers, query)?;
    if !identity.is_admin() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Admin access required (websocket:admin, or a role mapped to it with --jwt-role)",
        ));
    }
    Ok(())
}

/// ESCAI connections on every replica, in the seed's shape.
async fn connections(gw: Arc<Gateway>, headers: HeaderMap, query: String) -> Response {
    let result = async {
        admin(&gw, &headers, &query)?;
        let all = gw
            .presence
            .list(&gw.registry, None)
            .await
            .map_err(unavailable)?;
        let list: Vec<Value> = all
            .into_iter()
            .filter(|c| c.route == "escai")
            .map(|c| {
                let detail = c.detail.unwrap_or(Value::Null);
                json!({
                    "connection_id": c.connection_id,
                    "user_id": c.user,
                    "session_id": detail["session_id"],
                    "replica": c.replica,
                    "connected_at": c.connected_at,
                    "last_ping": c.last_seen,
                    "is_alive": true,
                    "subscriptions": detail["subscriptions"],
                })
            })
            .collect();
        Ok(json_response(
            StatusCode::OK,
            json!({"connections": list, "total": list.len(), "timestamp": crate::time::rfc3339_now()}),
        ))
    }
    .await;
    result.unwrap_or_else(ApiError::into_response)
}

/// `POST /ws/broadcast/test` parameters, from the query (as the seed takes
/// them) or a JSON body.
#[derive(Debug, Default, Deserialize)]
struct TestBroadcast {
    message: Option<String>,
    message_type: Option<String>,
    agent_id: Option<String>,
}

async fn broadcast(gw: Arc<Gateway>, headers: HeaderMap, query: String, body: Bytes) -> Response {
    let result = async {
        admin(&gw, &headers, &query)?;
        let mut params: TestBroadcast = from_query(&query);
        if !body.is_empty() {
            let from_body: TestBroadcast = serde_json::from_slice(&body).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    format!("expected {{\"message\", \"message_type\", \"agent_id\"}} or query parameters: {e}"),
                )
            })?;
            params.message = params.message.or(from_body.message);
            params.message_type = params.message_type.or(from_body.message_type);
            params.agent_id = params.agent_id.or(from_body.agent_id);
        }
        let message = params.message.ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "\"message\" is required (?message=… or a JSON body)",
            )
        })?;
        let max_len = gw.config.limits.max_channel_len;
        let (channel, data) = match &params.agent_id {
            Some(agent) => {
                let channel = agent_channel(agent, max_len).ok_or_else(|| {
                    ApiError::new(StatusCode::BAD_REQUEST, "bad_channel", format!("agent_id {agent:?} is not a valid agent name"))
                })?;
                let kind = params.message_type.unwrap_or_else(|| "test".into());
                (channel, json!({"type": kind, "message": message, "agent_id": agent}))
            }
            None => {
                let channel = ChannelName::parse(ALERTS_CHANNEL, max_len)
                    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
                (
                    channel,
                    json!({"type": "system_alert", "alert_type": "test", "message": message, "severity": "info", "metadata": {}}),
                )
            }
        };
        let published = gw
            .engine
            .publish(&channel, &Json::from_value(&data), PublishOptions::default())
            .await
            .map_err(unavailable)?;
        gw.metrics.publishes.with_label_values(&["ok"]).inc();
        Ok(json_response(
            StatusCode::OK,
            json!({
                "message": "Broadcast sent",
                // Subscribers are spread over every replica: this one cannot count them.
                "recipients": null,
                "channel": channel.as_str(),
                "offset": published.offset,
                "timestamp": crate::time::rfc3339_now(),
            }),
        ))
    }
    .await;
    result.unwrap_or_else(ApiError::into_response)
}

/// The broadcast parameters of a query string.
fn from_query(query: &str) -> TestBroadcast {
    let mut params = TestBroadcast::default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "message" => params.message = Some(v.into_owned()),
            "message_type" => params.message_type = Some(v.into_owned()),
            "agent_id" => params.agent_id = Some(v.into_owned()),
            _ => {}
        }
    }
    params
}
