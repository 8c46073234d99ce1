//! A WebSocket client connection through the load balancer: which replica it
//! landed on (nginx's `X-Soak-Upstream` header), frames with a silence limit,
//! and the reconnect backoff of docs/PROTOCOL.md.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::Ctx;
use crate::clock::now_us;
use crate::stats::Route;

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Conn {
    ws: Stream,
    pub replica: String,
    /// When the last frame (of any kind) arrived, µs.
    pub last_frame_us: u64,
    /// Since when the connection has been silent beyond its limit.
    stuck_since: Option<u64>,
}

/// What one read gave.
pub enum Frame {
    Text(Utf8Bytes),
    /// The connection ended: the close code, if a close frame came.
    Closed(Option<u16>),
    /// Nothing for the silence limit (the connection stays open).
    Silent,
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub struct ConnectError {
    pub status: Option<u16>,
    pub message: String,
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20))
}

/// Opens `path` through the load balancer, with `token` in the
/// Authorization header (or none: it is then in the path's query).
pub async fn connect(ctx: &Ctx, path: &str, token: Option<&str>) -> Result<Conn, ConnectError> {
    let url = format!("ws://{}{}", ctx.args.lb, path);
    let mut request = url.into_client_request().map_err(|e| ConnectError {
        status: None,
        message: e.to_string(),
    })?;
    if let Some(t) = token {
        let value = format!("Bearer {t}").parse().map_err(|_| ConnectError {
            status: None,
            message: "bad token header".into(),
        })?;
        request.headers_mut().insert("authorization", value);
    }
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config()), true);
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Err(_) => Err(ConnectError {
            status: None,
            message: "upgrade timed out (10 s)".into(),
        }),
        Ok(Err(WsError::Http(response))) => Err(ConnectError {
            status: Some(response.status().as_u16()),
            message: response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).chars().take(200).collect())
                .unwrap_or_default(),
        }),
        Ok(Err(e)) => Err(ConnectError {
            status: None,
            message: e.to_string(),
        }),
        Ok(Ok((ws, response))) => {
            let upstream = response
                .headers()
                .get("x-soak-upstream")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            Ok(Conn {
                ws,
                replica: ctx.replica_name(upstream),
                last_frame_us: now_us(),
                stuck_since: None,
            })
        }
    }
}

impl Conn {
    pub async fn send(&mut self, text: String) -> bool {
        self.ws.send(Message::text(text)).await.is_ok()
    }

    /// Closes with `code` (1000 by default) and reads until the server's close.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// The next text frame, the end, or `Silent` after `limit` without any
    /// frame (pings included). A silence beyond the limit is reported as a
    /// stuck client once it ends.
    pub async fn next(&mut self, ctx: &Ctx, route: Route, client: u64, limit: Duration) -> Frame {
        loop {
            let item = match tokio::time::timeout(limit, self.ws.next()).await {
                Err(_) => {
                    if self.stuck_since.is_none() {
                        self.stuck_since = Some(self.last_frame_us);
                    }
                    return Frame::Silent;
                }
                Ok(item) => item,
            };
            let now = now_us();
            if let Some(since) = self.stuck_since.take() {
                ctx.stats
                    .route(route)
                    .stuck
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                ctx.stats.event(
                    "stuck",
                    serde_json::json!({"route": route.label(), "client": client, "replica": self.replica,
                        "from": since as f64 / 1e6, "to": now as f64 / 1e6,
                        "silent_s": (now - since) as f64 / 1e6, "ended": "frame"}),
                );
            }
            self.last_frame_us = now;
            match item {
                Some(Ok(Message::Text(t))) => return Frame::Text(t),
                Some(Ok(Message::Close(frame))) => {
                    return Frame::Closed(frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Frame::Closed(None),
            }
        }
    }

    /// Reports a silence still running when the connection is dropped.
    pub fn finish_silence(&mut self, ctx: &Ctx, route: Route, client: u64, how: &str) {
        if let Some(since) = self.stuck_since.take() {
            let now = now_us();
            ctx.stats
                .route(route)
                .stuck
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ctx.stats.event(
                "stuck",
                serde_json::json!({"route": route.label(), "client": client, "replica": self.replica,
                    "from": since as f64 / 1e6, "to": now as f64 / 1e6,
                    "silent_s": (now - since) as f64 / 1e6, "ended": how}),
            );
        }
    }
}

/// Full-jitter backoff (docs/PROTOCOL.md): random(0, min(30 s, 0.5 s × 2^attempt)).
pub fn backoff(attempt: u32) -> Duration {
    let cap = (0.5 * 2f64.powi(attempt.min(10) as i32)).min(30.0);
    Duration::from_secs_f64(rand::rng().random_range(0.0..=cap))
}

/// Whether a close code asks the client to reconnect (docs/PROTOCOL.md).
pub fn should_reconnect(code: Option<u16>) -> bool {
    matches!(
        code,
        None | Some(1001 | 1006 | 1011 | 1012 | 1013 | 4000 | 4002)
    )
}
