//! A client that stops reading: subscribed to the hot channel, it reads
//! nothing for a while; the gateway must close it as a slow consumer (4000)
//! once its queue for it is full, without holding more than
//! `--max-outbound-bytes` for it. It connects to a replica directly, with a
//! 4 KiB receive buffer: behind nginx the proxy's own buffers (megabytes)
//! would fill first and the run would measure nginx.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::seq::IndexedRandom;
use serde_json::json;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::Ctx;
use crate::clock::now_s;

pub async fn run(ctx: &Ctx, hold: Duration) {
    let replicas = ctx.replica_addrs();
    let Some((name, addr)) = replicas.choose(&mut rand::rng()).cloned() else {
        return;
    };
    let outcome = attempt(ctx, &addr, hold).await;
    ctx.stats.event(
        "stopped_reader",
        json!({"replica": name, "hold_s": hold.as_secs_f64(), "outcome": outcome}),
    );
}

async fn attempt(ctx: &Ctx, addr: &str, hold: Duration) -> serde_json::Value {
    let token = ctx.token("stopper", &["websocket:connect", "websocket:subscribe"]);
    let Ok(sock_addr) = addr.parse() else {
        return json!({"error": "bad address"});
    };
    let Ok(socket) = TcpSocket::new_v4() else {
        return json!({"error": "socket"});
    };
    let _ = socket.set_recv_buffer_size(4096);
    let stream = match socket.connect(sock_addr).await {
        Ok(s) => s,
        Err(e) => return json!({"error": format!("connect: {e}")}),
    };
    let Ok(mut request) = format!("ws://{addr}/ws").into_client_request() else {
        return json!({"error": "request"});
    };
    if let Ok(v) = format!("Bearer {token}").parse() {
        request.headers_mut().insert("authorization", v);
    }
    let mut ws = match tokio_tungstenite::client_async(request, stream).await {
        Ok((ws, _)) => ws,
        Err(e) => return json!({"error": format!("upgrade: {e}")}),
    };
    let subscribe = json!({"type": "subscribe", "channel": crate::load::HOT});
    if ws.send(Message::text(subscribe.to_string())).await.is_err() {
        return json!({"error": "send"});
    }
    let started = now_s();
    // Stop reading.
    tokio::time::sleep(hold).await;
    // Read what is there: the close comes after everything queued before it.
    let mut frames = 0u64;
    let mut bytes = 0u64;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Err(_) => break json!("still open"),
            Ok(Some(Ok(Message::Close(f)))) => break json!(f.map(|f| u16::from(f.code))),
            Ok(Some(Ok(m))) => {
                frames += 1;
                bytes += m.len() as u64;
            }
            Ok(Some(Err(e))) => break json!(format!("error: {e}")),
            Ok(None) => break json!("ended without close"),
        }
    };
    let _ = ws.close(None).await;
    // On overflow the gateway queues its close (4000) behind what the socket
    // could not take and drops the connection after --close-timeout: the
    // close frame itself may never fit, so an end without it counts too.
    let ended = code != json!("still open");
    json!({"close": code, "frames_read": frames, "bytes_read": bytes, "started": started,
           "closed_by_gateway": ended})
}
