//! `GET /ws/status` (admin): the AI Council connections of every replica, per
//! request, with the seed's metadata (`user_id`, `connected_at`,
//! `last_heartbeat`, `reconnection_count`). This exact path answers HTTP; it
//! is not the ARK snapshot route of a channel named `status`.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::gateway::Gateway;
use crate::gateway::reply::{ApiError, json_response};

/// The route.
pub fn routes(gw: Arc<Gateway>) -> BoxedFilter<(Response,)> {
    warp::path!("ws" / "status")
        .and(warp::get())
        .and(warp::any().map(move || gw.clone()))
        .and(warp::header::headers_cloned())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .then(status)
        .boxed()
}

async fn status(gw: Arc<Gateway>, headers: HeaderMap, query: String) -> Response {
    let result = async {
        let identity = gw.authorize_api(&headers, &query)?;
        if !identity.is_admin() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the connection status needs websocket:admin",
            ));
        }
        let all = gw.presence.list(&gw.registry, None).await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{e}; retry with backoff"),
            )
        })?;
        let mut requests: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for c in all.into_iter().filter(|c| c.route == "council") {
            let detail = c.detail.unwrap_or(Value::Null);
            let Some(request) = detail["request_id"].as_str() else {
                continue;
            };
            requests.entry(request.to_owned()).or_default().push(json!({
                "connection_id": c.connection_id,
                "replica": c.replica,
                "user_id": c.user,
                "connected_at": c.connected_at,
                "last_heartbeat": detail["last_heartbeat"],
                "last_seen": c.last_seen,
                "reconnection_count": detail["reconnection_count"],
            }));
        }
        let total: usize = requests.values().map(Vec::len).sum();
        Ok(json_response(
            StatusCode::OK,
            json!({
                "active_connections": total,
                "requests": requests,
                "timestamp": crate::time::rfc3339_now(),
            }),
        ))
    }
    .await;
    result.unwrap_or_else(ApiError::into_response)
}
