//! DevSkyy (seed 002): the `useWebSocket(channel)` hook's URLs without a
//! token, the seed's test script (health, ready, live, each of the five
//! channels, ping), its CORS for an allowlisted origin — and what still needs
//! a token beside the anonymous readers, on two replicas with authentication on.

use serde_json::{Value, json};

use crate::common::{Client, http_request};
use crate::{API_KEY, Fleet, WAIT, now, publish, token};

const CHANNELS: [&str; 5] = ["agents", "round_table", "tasks", "3d_pipeline", "metrics"];
const ORIGIN: &str = "https://devskyy-dashboard.vercel.app";

fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, Value, String) {
    let (status, body) = http_request(port, "GET", path, headers, None).expect("request");
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::Null),
        body,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seeds_hook_and_test_script_work_without_a_token_and_the_rest_still_needs_one() {
    let fleet = Fleet::start(&[
        "--anonymous-subscribe",
        crate::ark::ANONYMOUS,
        "--allowed-origins",
        &format!("{ORIGIN},http://localhost:3000"),
        "--max-anonymous-connections-per-ip",
        "8",
        "--trusted-proxies",
        "127.0.0.2",
    ]);

    // The seed's test script: health, ready, live.
    let (status, health, _) = get(fleet.a.port, "/health", &[]);
    assert_eq!((status, health["status"].as_str()), (200, Some("healthy")));
    assert_eq!(get(fleet.a.port, "/ready", &[]).0, 200);
    assert_eq!(get(fleet.b.port, "/live", &[]).0, 200);

    // useWebSocket(channel): `${NEXT_PUBLIC_WS_URL}/api/ws/${channel}`, no token.
    let mut clients = Vec::new();
    for (i, channel) in CHANNELS.iter().enumerate() {
        let gw = if i % 2 == 0 { &fleet.a } else { &fleet.b };
        let mut c = Client::connect(&gw.ws_url(&format!("/api/ws/{channel}"))).await;
        c.send_text(r#"{"type": "ping"}"#).await;
        let pong = c.recv_until(WAIT, |v| v["type"] == "pong").await;
        assert!(pong["timestamp"].is_string(), "{channel}: {pong}");
        clients.push(c);
    }
    // Each channel's broadcasts arrive as published, on either replica.
    for (channel, client) in CHANNELS.iter().zip(clients.iter_mut()) {
        let message = json!({"type": format!("{channel}_update"), "agent_id": "commerce-001", "status": "running", "data": {"n": 1}, "timestamp": "2024-01-06T12:00:00Z"});
        let (status, reply) = publish(&fleet.b, &json!({"channel": channel, "data": message}));
        assert_eq!(status, 200, "{reply}");
        let got = client
            .recv_until(WAIT, |v| v.get("agent_id").is_some())
            .await;
        assert_eq!(got, message, "{channel}");
    }

    // Anonymous readers are counted as such and listed as such.
    assert_eq!(
        fleet
            .a
            .metric("switchboard_connections", "auth=\"anonymous\"")
            + fleet
                .b
                .metric("switchboard_connections", "auth=\"anonymous\""),
        5.0
    );
    // (Presence is written once a second.)
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, list, body) = get(
            fleet.a.port,
            "/api/v1/connections",
            &[("X-API-Key", API_KEY)],
        );
        assert_eq!(status, 200, "{body}");
        let anonymous = list["connections"]
            .as_array()
            .expect("connections")
            .iter()
            .filter(|c| c["auth"] == "anonymous" && c["user"].is_null())
            .count();
        if anonymous == 5 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Everything else still needs a token, with the documented answers.
    let body = json!({"channel": "agents", "data": {}}).to_string();
    let (status, _) =
        http_request(fleet.a.port, "POST", "/api/v1/publish", &[], Some(&body)).expect("publish");
    assert_eq!(status, 401, "publishing needs a token");
    assert_eq!(
        get(fleet.a.port, "/api/v1/connections", &[]).0,
        401,
        "admin needs a token"
    );
    let refused = Client::connect_or_refusal(&fleet.b.ws_url("/api/ws/payments"), &[])
        .await
        .err()
        .expect("a channel outside --anonymous-subscribe");
    assert_eq!(
        (refused.status, refused.body["error"].as_str()),
        (401, Some("missing_token"))
    );
    let bad = Client::connect_or_refusal(&fleet.b.ws_url("/api/ws/agents?token=garbage"), &[])
        .await
        .err()
        .expect("a bad token is refused, not read as no token");
    assert_eq!(bad.status, 401);
    // On /ws, an anonymous client subscribes to the allowed channels only.
    let mut native = Client::connect(&fleet.a.ws_url("/ws")).await;
    let hello = native.recv_json().await;
    assert!(hello.get("user").is_none(), "{hello}");
    let ok = native
        .subscribe(json!({"type": "subscribe", "channel": "metrics"}))
        .await;
    assert_eq!(ok["type"], "subscribed", "{ok}");
    for channel in ["payments", "sys:stats"] {
        let no = native
            .subscribe(json!({"type": "subscribe", "channel": channel}))
            .await;
        assert_eq!(no["code"], "forbidden", "{channel}: {no}");
    }
    // A token still works beside them.
    let bearer = token(
        &json!({"sub": "ops", "exp": now() + 600, "permissions": ["websocket:connect", "websocket:subscribe"], "channels": ["payments"]}),
    );
    let mut with_token =
        Client::connect(&fleet.b.ws_url(&format!("/api/ws/payments?token={bearer}"))).await;
    // (A relay is live once subscribed on its replica, a moment after the
    // upgrade: publish until the first one arrives.)
    let got = loop {
        publish(
            &fleet.a,
            &json!({"channel": "payments", "data": {"paid": 1}}),
        );
        if let Some(crate::common::Received::Text(t)) =
            with_token.next(std::time::Duration::from_millis(300)).await
        {
            break t;
        }
    };
    assert_eq!(got, r#"{"paid":1}"#);

    // Per address: 8 without a token; behind the trusted proxy each forwarded
    // address counts on its own. (The clients above close first.)
    drop(clients);
    drop(native);
    let deadline = std::time::Instant::now() + WAIT;
    while fleet
        .a
        .metric("switchboard_connections", "auth=\"anonymous\"")
        > 0.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "anonymous clients did not close"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(Client::connect(&fleet.a.ws_url("/api/ws/tasks")).await);
    }
    let over = Client::connect_or_refusal(&fleet.a.ws_url("/api/ws/tasks"), &[])
        .await
        .err()
        .expect("the ninth from one address");
    assert_eq!((over.status, over.header("retry-after")), (429, Some("30")));
    assert_eq!(over.body["error"], "max_anonymous_connections_per_ip");
    let spoofed = Client::connect_or_refusal(
        &fleet.a.ws_url("/api/ws/tasks"),
        &[("X-Forwarded-For", "198.51.100.1")],
    )
    .await;
    assert!(
        spoofed.is_err(),
        "the header counts only from a trusted proxy"
    );
    // The fleet's second loopback address is the trusted proxy.
    let proxied = proxied_connect(fleet.a.port, "/api/ws/tasks", "198.51.100.1").await;
    assert_eq!(proxied, 101, "a forwarded address has its own allowance");

    // CORS for an allowlisted origin, as seed 002 configures it.
    let (status, headers) = preflight(fleet.a.port, ORIGIN);
    assert_eq!(status, 204);
    let h = |name: &str| headers.get(name).cloned().unwrap_or_default();
    assert_eq!(h("access-control-allow-origin"), ORIGIN);
    assert_eq!(h("access-control-allow-credentials"), "true");
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"] {
        assert!(
            h("access-control-allow-methods").contains(method),
            "{method}"
        );
    }
    for header in [
        "x-request-id",
        "authorization",
        "content-type",
        "accept-language",
    ] {
        assert!(
            h("access-control-allow-headers").contains(header),
            "{header}"
        );
    }
    let (_, headers) = raw_get(fleet.a.port, "/api/v1/connections", &[("Origin", ORIGIN)]);
    assert!(
        headers
            .get("access-control-expose-headers")
            .is_some_and(|v| v.contains("x-ratelimit-limit")),
        "{headers:?}"
    );
    let (status, _) = preflight(fleet.a.port, "https://evil.example");
    assert_eq!(status, 403);

    // whoami tells the page it may read without signing in.
    let (status, me, _) = get(fleet.b.port, "/api/v1/whoami", &[]);
    assert_eq!(status, 200);
    assert_eq!(me["anonymous"], true);
    assert_eq!(me["admin"], false);
    drop(held);
}

/// An upgrade from 127.0.0.2 (the trusted proxy) naming `client` in
/// X-Forwarded-For; the HTTP status.
async fn proxied_connect(port: u16, path: &str, client: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let mut stream = socket
        .connect(format!("127.0.0.1:{port}").parse().expect("addr"))
        .await
        .expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         X-Forwarded-For: {client}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 1024];
    let n = stream.read(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn preflight(port: u16, origin: &str) -> (u16, std::collections::HashMap<String, String>) {
    raw_request(
        port,
        "OPTIONS",
        "/api/v1/publish",
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "PUT"),
            ("Access-Control-Request-Headers", "x-request-id"),
        ],
    )
}

fn raw_get(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, std::collections::HashMap<String, String>) {
    raw_request(port, "GET", path, headers)
}

/// A request whose response headers are wanted (lower-case names).
fn raw_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, std::collections::HashMap<String, String>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, _) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let map = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, map)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_keeps_a_share_for_clients_with_a_token() {
    // Three places for tokenless readers on each replica, ten per address:
    // the replica's share is what refuses the fourth.
    let fleet = Fleet::start(&[
        "--anonymous-subscribe",
        crate::ark::ANONYMOUS,
        "--max-anonymous-connections",
        "3",
        "--max-anonymous-connections-per-ip",
        "10",
    ]);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Client::connect(&fleet.a.ws_url("/api/ws/tasks")).await);
    }
    let over = Client::connect_or_refusal(&fleet.a.ws_url("/api/ws/tasks"), &[])
        .await
        .err()
        .expect("the fourth tokenless client of the replica");
    assert_eq!((over.status, over.header("retry-after")), (503, Some("5")));
    assert_eq!(over.body["error"], "max_anonymous_connections");
    assert!(
        over.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("with a token")),
        "the refusal says what to do: {}",
        over.body
    );
    // The native route counts against the same share.
    let native = Client::connect_or_refusal(&fleet.a.ws_url("/ws"), &[]).await;
    assert_eq!(native.err().map(|r| r.status), Some(503));
    // A client with a token is not counted in the share: it still connects.
    let bearer = token(
        &json!({"sub": "ops", "exp": now() + 600, "permissions": ["websocket:connect", "websocket:subscribe"], "channels": ["tasks"]}),
    );
    let with_token = Client::connect_or_refusal(
        &fleet.a.ws_url(&format!("/api/ws/tasks?token={bearer}")),
        &[],
    )
    .await;
    assert!(with_token.is_ok(), "a token is outside the anonymous share");
    // The other replica has its own share.
    let other = Client::connect_or_refusal(&fleet.b.ws_url("/api/ws/tasks"), &[]).await;
    assert!(other.is_ok(), "each replica has its own share");
    // A place that frees is taken again.
    drop(held.pop());
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match Client::connect_or_refusal(&fleet.a.ws_url("/api/ws/tasks"), &[]).await {
            Ok(c) => {
                held.push(c);
                break;
            }
            Err(r) => {
                assert_eq!(r.status, 503);
                assert!(
                    std::time::Instant::now() < deadline,
                    "a closed tokenless client's place was not given back"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    // The gauge counts a connection once its upgrade is done, which may be
    // just after the client sees the 101.
    fleet
        .a
        .wait_metric("switchboard_connections", "auth=\"anonymous\"", WAIT, |v| {
            v == 3.0
        })
        .await;
}
