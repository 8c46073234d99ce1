//! The gateway end to end: the real binary, real WebSocket clients, a private
//! redis-server.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Client, Received, RedisServer, Switchboard, http_request, publish};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

fn fast_collector() -> [&'static str; 4] {
    [
        "--collect-interval-min",
        "200ms",
        "--collect-interval-max",
        "300ms",
    ]
}

/// Waits until the collector of a standalone has published a snapshot of
/// both its channels (so that a client connecting now gets one at once).
async fn wait_snapshots(sb: &Switchboard) {
    for channel in ["federation", "memory"] {
        let labels = format!("channel=\"{channel}\",result=\"ok\"");
        sb.wait_metric(
            "switchboard_collector_publishes_total",
            &labels,
            WAIT,
            |n| n >= 1.0,
        )
        .await;
    }
}

#[tokio::test]
async fn dropin_routes_send_the_snapshot_at_once_then_updates() {
    let sb = Switchboard::standalone(&fast_collector());
    sb.wait_ready(WAIT);
    // The collector has published, so the snapshot exists before we connect.
    wait_snapshots(&sb).await;
    for (path, fields) in [
        (
            "/ws/federation",
            &[
                "peers",
                "sync_traffic",
                "network_health",
                "data_integrity",
                "avg_latency",
            ][..],
        ),
        (
            "/ws/memory",
            &[
                "ingestion_rate",
                "consolidation_rate",
                "dedup_rate",
                "quarantine_count",
                "trust_distribution",
                "confidence_deltas",
                "logs",
            ][..],
        ),
    ] {
        let mut client = Client::connect(&sb.ws_url(path)).await;
        let first = tokio::time::timeout(Duration::from_millis(200), client.recv_json())
            .await
            .unwrap_or_else(|_| panic!("{path}: no snapshot at once"));
        for f in fields {
            assert!(first.get(*f).is_some(), "{path}: missing {f} in {first}");
        }
        assert_eq!(
            first["sources"]
                .as_object()
                .unwrap()
                .values()
                .next()
                .unwrap()["source"],
            "simulated"
        );
        let next = client.recv_json().await;
        assert!(
            next["version"].as_u64() > first["version"].as_u64(),
            "{path}: updates follow"
        );
    }
}

#[tokio::test]
async fn dropin_ping_and_refresh_as_text_or_json() {
    let sb = Switchboard::standalone(&fast_collector());
    sb.wait_ready(WAIT);
    wait_snapshots(&sb).await;
    let mut client = Client::connect(&sb.ws_url("/ws/federation")).await;
    let snapshot = client.recv_json().await;
    for ping in ["ping", r#"{"type":"ping"}"#] {
        client.send_text(ping).await;
        let pong = client.recv_until(WAIT, |m| m["type"] == "pong").await;
        assert!(pong["timestamp"].is_string());
    }
    for refresh in ["refresh", r#"{"type":"refresh"}"#] {
        client.send_text(refresh).await;
        let again = client.recv_until(WAIT, |m| m.get("peers").is_some()).await;
        assert!(again["version"].as_u64() >= snapshot["version"].as_u64());
    }
    let mut relay = Client::connect(&sb.ws_url("/api/ws/agents")).await;
    relay.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(relay.recv_json().await["type"], "pong");
}

#[tokio::test]
async fn native_subscribe_receives_offsets_in_order_and_unsubscribe_stops() {
    let sb = Switchboard::standalone(&[]);
    sb.wait_ready(WAIT);
    let mut client = Client::connect(&sb.ws_url("/ws")).await;
    let hello = client.recv_json().await;
    assert_eq!(hello["type"], "connection_established");
    assert!(hello["connection_id"].is_string());
    assert_eq!(hello["heartbeat_interval"], 25);
    let sub = client
        .subscribe(json!({"type":"subscribe","channel":"agents:a1","id":1}))
        .await;
    assert_eq!(sub["type"], "subscribed");
    assert_eq!(sub["id"], 1);
    assert_eq!(sub["offset"], 0);
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    for n in 1..=20 {
        let offset = publish(sb.port, "agents:a1", &json!({ "n": n }));
        assert_eq!(offset, n);
    }
    for n in 1..=20u64 {
        let m = client.recv_json().await;
        assert_eq!(m["type"], "message");
        assert_eq!(m["channel"], "agents:a1");
        assert_eq!(m["offset"], n);
        assert_eq!(m["data"]["n"], n);
    }
    client
        .send_json(&json!({"type":"unsubscribe","channel":"agents:a1","id":"u"}))
        .await;
    let reply = client.recv_json().await;
    assert_eq!(
        reply,
        json!({"type":"unsubscribed","channel":"agents:a1","id":"u"})
    );
    publish(sb.port, "agents:a1", &json!({"after": true}));
    client.expect_silence(Duration::from_millis(300)).await;
    // Subscribing again continues in the same epoch.
    let again = client
        .subscribe(json!({"type":"subscribe","channel":"agents:a1"}))
        .await;
    assert_eq!(again["epoch"], epoch.as_str());
    assert_eq!(again["offset"], 21);
}

#[tokio::test]
async fn native_ping_and_snapshot_refresh() {
    let sb = Switchboard::standalone(&fast_collector());
    sb.wait_ready(WAIT);
    wait_snapshots(&sb).await;
    let mut client = Client::connect(&sb.ws_url("/ws")).await;
    client.recv_json().await;
    client.send_json(&json!({"type":"ping","id":9})).await;
    let pong = client.recv_json().await;
    assert_eq!(
        (pong["type"].as_str(), pong["id"].as_i64()),
        (Some("pong"), Some(9))
    );
    let sub = client
        .subscribe(json!({"type":"subscribe","channel":"federation"}))
        .await;
    assert_eq!(sub["type"], "subscribed");
    let snapshot = client.recv_json().await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["channel"], "federation");
    assert!(snapshot["offset"].as_u64().unwrap() >= 1);
    assert_eq!(snapshot["data"]["peers"].as_array().unwrap().len(), 5);
    client
        .send_json(&json!({"type":"refresh","channel":"federation","id":3}))
        .await;
    let refreshed = client
        .recv_until(WAIT, |m| m["type"] == "snapshot" && m["id"] == 3)
        .await;
    assert!(refreshed["data"]["network_health"].is_number());
}

#[tokio::test]
async fn bad_requests_get_error_frames_and_the_connection_stays_usable() {
    let sb = Switchboard::standalone(&[]);
    sb.wait_ready(WAIT);
    let mut client = Client::connect(&sb.ws_url("/ws")).await;
    client.recv_json().await;
    let cases: Vec<(&str, &str)> = vec![
        ("{not json", "invalid_json"),
        (r#"{"type":"teleport","id":4}"#, "unknown_type"),
        (r#"{"type":"subscribe","id":5}"#, "invalid_message"),
        (
            r#"{"type":"subscribe","channel":"bad channel"}"#,
            "bad_channel",
        ),
        (
            r#"{"type":"subscribe","channel":"c","filters":{"x":[1]}}"#,
            "bad_filter",
        ),
        (
            r#"{"type":"unsubscribe","channel":"never"}"#,
            "not_subscribed",
        ),
        (r#"[1,2,3]"#, "invalid_message"),
    ];
    // Every case is checked, and every failing one reported.
    let mut failures = common::Failures::default();
    for (text, code) in cases {
        failures
            .run(text, async {
                client.send_text(text).await;
                let e = client.recv_json().await;
                assert_eq!(e["type"], "error", "{text}");
                assert_eq!(e["code"], code, "{text}: {e}");
                assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
            })
            .await;
    }
    failures.finish("bad requests");
    client.send_text(r#"{"type":"teleport","id":"x"}"#).await;
    assert_eq!(
        client.recv_json().await["id"],
        "x",
        "errors echo the request id"
    );
    client.send_message(Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(client.recv_json().await["code"], "binary_not_supported");
    // Still usable.
    let sub = client
        .subscribe(json!({"type":"subscribe","channel":"ok"}))
        .await;
    assert_eq!(sub["type"], "subscribed");
    publish(sb.port, "ok", &json!({"fine": true}));
    assert_eq!(client.recv_json().await["data"]["fine"], true);
}

#[tokio::test]
async fn oversized_frame_closes_with_1009_and_others_are_unaffected() {
    let sb = Switchboard::standalone(&["--max-message-bytes", "1024", "--max-frame-bytes", "1024"]);
    sb.wait_ready(WAIT);
    let mut bystander = Client::connect(&sb.ws_url("/ws")).await;
    bystander.recv_json().await;
    bystander
        .subscribe(json!({"type":"subscribe","channel":"c"}))
        .await;
    let mut big = Client::connect(&sb.ws_url("/ws")).await;
    big.recv_json().await;
    big.send_text(&"x".repeat(5000)).await;
    assert_eq!(big.closed_code(WAIT).await, Some(1009));
    publish(sb.port, "c", &json!({"still": "here"}));
    assert_eq!(bystander.recv_json().await["data"]["still"], "here");
}

#[tokio::test]
async fn filtered_subscriber_receives_exactly_the_matching_messages() {
    let sb = Switchboard::standalone(&[]);
    sb.wait_ready(WAIT);
    let mut all = Client::connect(&sb.ws_url("/ws")).await;
    all.recv_json().await;
    all.subscribe(json!({"type":"subscribe","channel":"epistemic"}))
        .await;
    let filter = json!({"agent_id": "agent_1", "confidence_level": {"min": 0.8}});
    let mut filtered = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&sb.ws_url("/ws")).await;
        c.recv_json().await;
        let reply = c
            .subscribe(json!({"type":"subscribe","channel":"epistemic","filters": filter}))
            .await;
        assert_eq!(reply["type"], "subscribed");
        filtered.push(c);
    }
    let mut expected = Vec::new();
    for n in 0..40u64 {
        let agent = if n % 2 == 0 { "agent_1" } else { "agent_2" };
        let confidence = (n % 10) as f64 / 10.0;
        let offset = publish(
            sb.port,
            "epistemic",
            &json!({"n": n, "agent_id": agent, "confidence_level": confidence}),
        );
        if agent == "agent_1" && confidence >= 0.8 {
            expected.push(offset);
        }
    }
    assert!(!expected.is_empty());
    for _ in 0..40 {
        all.recv_json().await;
    }
    for c in filtered.iter_mut() {
        let mut got = Vec::new();
        for _ in 0..expected.len() {
            got.push(c.recv_json().await["offset"].as_u64().unwrap());
        }
        assert_eq!(got, expected);
        c.expect_silence(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn slow_client_is_closed_with_4000_while_a_fast_one_keeps_its_stream() {
    // The slow client reads again only at the end: give the close frame time to
    // get through the megabytes the kernel still buffers for it.
    let sb = Switchboard::standalone(&["--max-outbound-bytes", "262144", "--close-timeout", "30s"]);
    sb.wait_ready(WAIT);
    let mut fast = Client::connect(&sb.ws_url("/ws")).await;
    fast.recv_json().await;
    fast.subscribe(json!({"type":"subscribe","channel":"firehose"}))
        .await;
    let mut slow = Client::connect(&sb.ws_url("/ws")).await;
    slow.recv_json().await;
    slow.subscribe(json!({"type":"subscribe","channel":"firehose"}))
        .await;
    // The slow client now stops reading. ~24 MB exceeds every kernel buffer.
    let blob = "x".repeat(60_000);
    let reader = tokio::spawn(async move {
        let mut offsets = Vec::new();
        while offsets.len() < 400 {
            let m = fast.recv_json().await;
            offsets.push(m["offset"].as_u64().unwrap());
        }
        offsets
    });
    let port = sb.port;
    tokio::task::spawn_blocking(move || {
        for n in 0..400 {
            publish(port, "firehose", &json!({"n": n, "blob": blob}));
        }
    })
    .await
    .unwrap();
    let offsets = reader.await.unwrap();
    assert_eq!(
        offsets,
        (1..=400).collect::<Vec<u64>>(),
        "the fast client got every message in order"
    );
    assert!(sb.metric("switchboard_slow_consumer_closes_total", "") >= 1.0);
    assert_eq!(slow.closed_code(Duration::from_secs(20)).await, Some(4000));
}

#[tokio::test]
async fn two_replicas_on_one_redis_deliver_every_message_exactly_once() {
    let redis = RedisServer::start();
    let a = Switchboard::gateway(&redis, &[]);
    let b = Switchboard::gateway(&redis, &[]);
    let mut clients = Vec::new();
    for gw in [&a, &b, &a, &b] {
        clients.push(Client::subscribed_to(&gw.ws_url("/ws"), "shared").await);
    }
    for n in 0..30 {
        let via = if n % 2 == 0 { a.port } else { b.port };
        publish(via, "shared", &json!({ "n": n }));
    }
    for c in clients.iter_mut() {
        let mut got = Vec::new();
        for _ in 0..30 {
            let m = c.recv_json().await;
            got.push((
                m["offset"].as_u64().unwrap(),
                m["data"]["n"].as_u64().unwrap(),
            ));
        }
        let expected: Vec<(u64, u64)> = (0..30).map(|n| (n + 1, n)).collect();
        assert_eq!(got, expected);
        c.expect_silence(Duration::from_millis(300)).await;
    }
}

/// A producer that retries a publish — to another replica, its first answer
/// lost — with the same idempotency key (body field or header) gets the first
/// publish's offset back, and subscribers get the message once.
#[tokio::test]
async fn a_publish_retried_with_its_idempotency_key_is_delivered_once() {
    let redis = RedisServer::start();
    let a = Switchboard::gateway(&redis, &[]);
    let b = Switchboard::gateway(&redis, &[]);
    let mut client = Client::subscribed_to(&b.ws_url("/ws"), "orders").await;
    let post = |port: u16, headers: &[(&str, &str)], body: &str| {
        let (status, body) =
            http_request(port, "POST", "/api/v1/publish", headers, Some(body)).unwrap();
        (
            status,
            serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
        )
    };
    let (status, first) = post(
        a.port,
        &[],
        r#"{"channel":"orders","data":{"n":1},"idempotency_key":"order-1"}"#,
    );
    assert_eq!(status, 200, "{first}");
    let (status, retry) = post(
        b.port,
        &[("Idempotency-Key", "order-1")],
        r#"{"channel":"orders","data":{"n":1}}"#,
    );
    assert_eq!(status, 200, "{retry}");
    assert_eq!(retry, first, "the retry is answered with the first publish");
    let (_, next) = post(
        a.port,
        &[("Idempotency-Key", "order-2")],
        r#"{"channel":"orders","data":{"n":2}}"#,
    );
    assert_eq!(next["offset"], 2);
    for n in 1..=2 {
        let m = client.recv_json().await;
        assert_eq!(
            (m["offset"].as_u64(), m["data"]["n"].as_u64()),
            (Some(n), Some(n))
        );
    }
    client.expect_silence(Duration::from_millis(300)).await;
    // Bad keys are refused before anything is published.
    let too_long = "k".repeat(129);
    for (headers, body) in [
        (
            vec![("Idempotency-Key", "other")],
            r#"{"channel":"orders","data":1,"idempotency_key":"order-3"}"#.to_string(),
        ),
        (
            vec![],
            r#"{"channel":"orders","data":1,"idempotency_key":"a b"}"#.to_string(),
        ),
        (
            vec![],
            r#"{"channel":"orders","data":1,"idempotency_key":""}"#.to_string(),
        ),
        (
            vec![],
            format!(r#"{{"channel":"orders","data":1,"idempotency_key":"{too_long}"}}"#),
        ),
    ] {
        let (status, answer) = post(a.port, &headers, &body);
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("bad_idempotency_key")),
            "{body}: {answer}"
        );
    }
    client.expect_silence(Duration::from_millis(300)).await;
}

async fn numsub(redis: &RedisServer, channel: &str) -> i64 {
    let mut conn = redis.connection().await;
    let reply: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("switchboard:{{{channel}}}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    reply[0].1
}

#[tokio::test]
async fn one_redis_subscription_per_channel_per_replica_however_many_clients() {
    let redis = RedisServer::start();
    let a = Switchboard::gateway(&redis, &[]);
    let b = Switchboard::gateway(&redis, &[]);
    let mut clients = Vec::new();
    for i in 0..20 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let mut c = Client::connect(&gw.ws_url("/ws")).await;
        c.recv_json().await;
        c.subscribe(json!({"type":"subscribe","channel":"busy"}))
            .await;
        if i < 3 {
            c.subscribe(json!({"type":"subscribe","channel":"quiet"}))
                .await;
        }
        clients.push(c);
    }
    let mut relay = Client::connect(&a.ws_url("/api/ws/busy")).await;
    relay.send_text("ping").await;
    relay.recv_json().await;
    assert_eq!(numsub(&redis, "busy").await, 2, "one per replica");
    assert_eq!(numsub(&redis, "quiet").await, 2);
    assert_eq!(a.metric("switchboard_channels", ""), 2.0);
    assert_eq!(a.metric("switchboard_subscriptions", ""), 10.0 + 2.0 + 1.0);
    drop(clients);
    drop(relay);
    let mut left = -1;
    for _ in 0..100 {
        left = numsub(&redis, "busy").await + numsub(&redis, "quiet").await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        left, 0,
        "subscriptions dropped after the last local subscriber left"
    );
}

#[tokio::test]
async fn plain_publish_from_any_redis_client_is_relayed_as_is() {
    let redis = RedisServer::start();
    let gw = Switchboard::gateway(&redis, &[]);
    let mut native = Client::connect(&gw.ws_url("/ws")).await;
    native.recv_json().await;
    native
        .subscribe(json!({"type":"subscribe","channel":"ext"}))
        .await;
    let mut relay = Client::connect(&gw.ws_url("/api/ws/ext")).await;
    relay.send_text("ping").await;
    relay.recv_json().await;
    let mut conn = redis.connection().await;
    let payload = r#"{"type":"agent_status_update","agent_id":"commerce-001","status":"running"}"#;
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg("switchboard:{ext}")
        .arg(payload)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(receivers, 1);
    let m = native.recv_json().await;
    assert_eq!(m["type"], "message");
    assert!(m.get("offset").is_none(), "a plain PUBLISH has no offset");
    assert_eq!(m["data"]["agent_id"], "commerce-001");
    match relay.next(WAIT).await {
        Some(Received::Text(t)) => assert_eq!(t, payload, "relayed byte for byte"),
        other => panic!("{other:?}"),
    }
    // Not JSON: dropped and counted, nobody disturbed.
    let _: i64 = redis::cmd("PUBLISH")
        .arg("switchboard:{ext}")
        .arg("not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    native.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(gw.metric("switchboard_invalid_messages_total", ""), 1.0);
}

#[tokio::test]
async fn publish_api_validates_its_input() {
    let sb = Switchboard::standalone(&["--api-key", "k3y"]);
    sb.wait_ready(WAIT);
    let post =
        |body: &str| http_request(sb.port, "POST", "/api/v1/publish", &[], Some(body)).unwrap();
    assert_eq!(post(r#"{"channel":"c"}"#).0, 400);
    assert_eq!(post(r#"{"channel":"a b","data":{}}"#).0, 400);
    assert_eq!(post("nope").0, 400);
    let (status, body) = post(r#"{"channel":"c","data":{"k":1}}"#);
    assert_eq!(status, 200, "standalone runs without auth");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["offset"], 1);
    let (status, _) = http_request(sb.port, "GET", "/nowhere", &[], None).unwrap();
    assert_eq!(status, 404);
}

/// A publish whose body is over the limit is answered 413 and one without a
/// length 411, as documented — not 405 (found by the soak harness: the other
/// routes' method checks took precedence over the refused body).
#[tokio::test]
async fn publish_api_answers_an_oversized_or_unsized_body_413_and_411() {
    let sb = Switchboard::standalone(&[]);
    sb.wait_ready(WAIT);
    let post =
        |body: &str| http_request(sb.port, "POST", "/api/v1/publish", &[], Some(body)).unwrap();
    // Over --max-message-bytes (64 KiB) and over the body limit (64 KiB + 1 KiB).
    let big = format!(r#"{{"channel":"c","data":"{}"}}"#, "y".repeat(70 * 1024));
    let (status, body) = post(&big);
    assert_eq!(status, 413, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "too_large"
    );
    // Within the body limit, `data` over --max-message-bytes: the handler's own check.
    let data_only = format!(
        r#"{{"channel":"c","data":"{}"}}"#,
        "y".repeat(64 * 1024 + 10)
    );
    assert_eq!(post(&data_only).0, 413);
    // No Content-Length (chunked).
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", sb.port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(
        b"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          1b\r\n{\"channel\":\"c\",\"data\":{}}\r\n0\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");
    // A small one is published.
    assert_eq!(post(r#"{"channel":"c","data":{"k":1}}"#).0, 200);
}

/// An oversized publish is read to its end before the 413, so the connection
/// ends cleanly (here: stays open for the next request). Answered before the
/// body was read, the socket closed with the body unread and reset: nginx in
/// front lost the 413 and answered 502 (found by the soak harness). A body over
/// `--discard-body-bytes` is still refused at once.
#[tokio::test]
async fn an_oversized_publish_is_read_before_its_413_and_the_connection_survives() {
    use std::io::{BufRead, BufReader, Write};
    let sb = Switchboard::standalone(&["--discard-body-bytes", "200000"]);
    sb.wait_ready(WAIT);
    let request = |body: &str, close: bool| {
        format!(
            "POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
    };
    // Reads one response (status and body, by its Content-Length).
    fn response(r: &mut impl BufRead) -> (u16, String) {
        let mut status_line = String::new();
        r.read_line(&mut status_line).expect("status line");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).expect("header line");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().expect("content-length");
            }
        }
        let mut body = vec![0; length];
        r.read_exact(&mut body).expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }
    let big = format!(r#"{{"channel":"c","data":"{}"}}"#, "y".repeat(70 * 1024));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", sb.port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    s.write_all(request(&big, false).as_bytes()).unwrap();
    let (status, body) = response(&mut reader);
    assert_eq!(status, 413, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "too_large"
    );
    // The same connection takes the next request: the body was consumed.
    s.write_all(request(r#"{"channel":"c","data":{"k":1}}"#, true).as_bytes())
        .unwrap();
    let (status, body) = response(&mut reader);
    assert_eq!(status, 200, "{body}");
    // Over --discard-body-bytes: 413 at once.
    let huge = format!(r#"{{"channel":"c","data":"{}"}}"#, "y".repeat(300_000));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", sb.port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let head = request(&huge, true);
    let head = &head[..head.len() - huge.len()];
    s.write_all(head.as_bytes()).unwrap();
    let (status, _) = response(&mut BufReader::new(s));
    assert_eq!(status, 413);
}

/// Health on both listeners; `/metrics` only on the admin listener (`--admin-listen`),
/// which serves nothing else.
#[tokio::test]
async fn health_and_metrics_endpoints() {
    let redis = RedisServer::start();
    let gw = Switchboard::gateway(&redis, &[]);
    assert_ne!(gw.admin_port, gw.port);
    for port in [gw.port, gw.admin_port] {
        let (status, body) = common::http_get(port, "/health/live").unwrap();
        assert_eq!((status, body.contains("ok")), (200, true), "port {port}");
        let (status, body) = common::http_get(port, "/health/ready").unwrap();
        assert_eq!(status, 200, "port {port}: {body}");
    }
    // The client port (what a load balancer or an Ingress routing `/` exposes)
    // no longer answers /metrics.
    let (status, body) = common::http_get(gw.port, "/metrics").unwrap();
    assert_eq!(status, 404, "/metrics on the client port: {body}");
    assert!(!body.contains("switchboard_"), "{body}");
    // The admin port serves no client route.
    for path in ["/ws", "/", "/api/v1/whoami"] {
        let (status, _) = common::http_get(gw.admin_port, path).unwrap();
        assert_eq!(status, 404, "{path} on the admin port");
    }
    let mut c = Client::connect(&gw.ws_url("/ws")).await;
    c.recv_json().await;
    c.subscribe(json!({"type":"subscribe","channel":"m"})).await;
    publish(gw.port, "m", &json!({"x": 1}));
    c.recv_json().await;
    let metrics = gw.scrape();
    let series: HashMap<&str, f64> = [
        ("switchboard_connections", 1.0),
        ("switchboard_subscriptions", 1.0),
        ("switchboard_channels", 1.0),
        ("switchboard_messages_received_total", 1.0),
        ("switchboard_messages_delivered_total", 1.0),
        ("switchboard_ready", 1.0),
        // Capacity beside the connections (--max-connections, default 10,000).
        ("switchboard_max_connections", 10_000.0),
    ]
    .into_iter()
    .collect();
    for (name, want) in series {
        assert_eq!(common::metric_value(&metrics, name, ""), want, "{name}");
    }
    assert!(common::metric_value(&metrics, "switchboard_bytes_sent_total", "") > 0.0);
    // Bytes in from the feed: the one message's data, as published.
    assert_eq!(
        common::metric_value(&metrics, "switchboard_bytes_received_total", ""),
        json!({"x": 1}).to_string().len() as f64
    );
    assert!(metrics.contains("switchboard_delivery_lag_seconds_bucket"));
    assert!(metrics.contains("process_resident_memory_bytes"));
    // Labelled counters exist at 0 before their first event (rate() and the
    // alerts see a fresh replica).
    for series in [
        "switchboard_gap_fills_total{result=\"lost\"} 0",
        "switchboard_publishes_total{result=\"error\"} 0",
        "switchboard_resumes_total{result=\"not_recovered\"} 0",
        "switchboard_upgrades_rejected_total{reason=\"max_connections\"} 0",
        "switchboard_disconnects_total{code=\"4000\"} 0",
        "switchboard_client_errors_total{code=\"rate_limited\"} 0",
        "switchboard_connections_opened_total{auth=\"none\",route=\"relay\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == series), "{series} missing");
    }
}

/// `--admin-listen` given the `--listen` address keeps the single-port layout:
/// `/metrics` on the client port, no other listener.
#[tokio::test]
async fn admin_listen_equal_to_listen_serves_metrics_on_the_client_port() {
    let redis = RedisServer::start();
    let url = redis.url();
    // One address in two flags: port 0 would mean two listeners.
    let gw = Switchboard::start_on_free_port(|port| {
        let listen = format!("127.0.0.1:{port}");
        [
            "gateway",
            "--listen",
            &listen,
            "--admin-listen",
            &listen,
            "--redis-url",
            &url,
            "--no-auth",
        ]
        .map(String::from)
        .to_vec()
    });
    gw.wait_ready(Duration::from_secs(10));
    let port = gw.port;
    assert_eq!(gw.admin_port, gw.port);
    assert_eq!(gw.metric("switchboard_ready", ""), 1.0);
    assert_eq!(gw.metric("switchboard_max_connections", ""), 10_000.0);
    // The client routes are still there.
    let (status, _) = common::http_get(port, "/api/v1/whoami").unwrap();
    assert_eq!(status, 200);
}

/// While a gateway drains, its admin listener stays open: readiness answers
/// 503 `draining` and metrics can still be scraped; the client port is closed.
#[tokio::test]
async fn the_admin_listener_reports_the_drain() {
    let redis = RedisServer::start();
    let mut gw = Switchboard::gateway(&redis, &["--drain-window", "3s", "--drain-deadline", "4s"]);
    // Ten clients, closed one by one over the 3 s window: the drain lasts.
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut c = Client::connect(&gw.ws_url("/ws")).await;
        c.recv_json().await;
        clients.push(c);
    }
    gw.signal("TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let body = loop {
        let (status, body) = common::http_get(gw.admin_port, "/health/ready")
            .expect("the admin listener is open while the gateway drains");
        if status == 503 {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "still ready: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(body.contains("draining"), "{body}");
    assert_eq!(gw.metric("switchboard_ready", ""), 0.0);
    // The client port stops accepting as the drain starts: readiness and the
    // listener's close are two steps, so allow a moment (well within the 3 s
    // drain window) for the refusal.
    let refused_by = std::time::Instant::now() + Duration::from_secs(1);
    while common::http_get(gw.port, "/health/live").is_ok() {
        assert!(
            std::time::Instant::now() < refused_by,
            "the client port still accepts connections 1 s into the drain"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some());
    drop(clients);
}

/// `switchboard_redis_errors_total{op}` counts failed commands, not only lost
/// pub/sub connections: with Redis stopped, each refused publish and
/// connection listing is counted under its op. `NOSCRIPT` (answered by
/// loading the script) is not a failure.
#[tokio::test]
async fn failed_redis_commands_are_counted_by_operation() {
    let mut redis = RedisServer::start();
    let gw = Switchboard::gateway(&redis, &[]);
    let errors = |op: &str| gw.metric("switchboard_redis_errors_total", &format!("op=\"{op}\""));
    let metrics = gw.scrape();
    for op in [
        "publish", "history", "snapshot", "presence", "session", "lease", "control", "ping",
        "pubsub",
    ] {
        assert!(
            metrics.contains(&format!("switchboard_redis_errors_total{{op=\"{op}\"}} 0")),
            "every op is exposed from the start: {op}"
        );
    }
    // Redis forgets the publish script: the engine loads it again, no error.
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    publish(gw.port, "counted", &json!({"n": 1}));
    assert_eq!(errors("publish"), 0.0, "NOSCRIPT is not a failure");

    redis.kill();
    let failed = 3;
    for n in 0..failed {
        let body = json!({"channel": "counted", "data": {"n": n}}).to_string();
        let (status, reply) =
            http_request(gw.port, "POST", "/api/v1/publish", &[], Some(&body)).unwrap();
        assert_eq!(status, 503, "{reply}");
    }
    assert!(
        errors("publish") >= f64::from(failed),
        "each failed publish is counted: {}",
        errors("publish")
    );
    let (status, reply) = http_request(gw.port, "GET", "/api/v1/connections", &[], None).unwrap();
    assert_eq!(status, 503, "{reply}");
    assert!(errors("presence") >= 1.0, "the failed listing is counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_client_with_1001_spread_over_the_window_and_exits_in_time() {
    const WINDOW: Duration = Duration::from_secs(2);
    const DEADLINE: Duration = Duration::from_secs(5);
    // Slack for a loaded machine on top of the window.
    const MARGIN: Duration = Duration::from_secs(1);
    let redis = RedisServer::start();
    let mut gw = Switchboard::gateway(&redis, &["--drain-window", "2s", "--drain-deadline", "5s"]);
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut c = Client::connect(&gw.ws_url("/ws")).await;
        c.recv_json().await;
        c.subscribe(json!({"type":"subscribe","channel":"d"})).await;
        clients.push(c);
    }
    let started = std::time::Instant::now();
    // Each client reads until its close frame and records when it came.
    let closes: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let code = c.closed_code(DEADLINE).await;
                (code, started.elapsed())
            })
        })
        .collect();
    gw.signal("TERM");
    // Not ready while draining: readiness answers 503, or the client port
    // (which serves it too) no longer accepts — a connection the kernel had
    // queued before the listener closed ends with no answer at all (status 0).
    let port = gw.port;
    tokio::task::spawn_blocking(move || {
        common::wait_until(
            "not ready while draining",
            WINDOW,
            Duration::from_millis(10),
            || match common::http_get(port, "/health/ready") {
                Ok((200, _)) => None,
                Ok((503 | 0, _)) | Err(_) => Some(()),
                Ok((status, body)) => panic!("readiness while draining: {status} {body}"),
            },
        )
    })
    .await
    .unwrap();
    let mut times = Vec::new();
    for close in closes {
        let (code, at) = close.await.unwrap();
        assert_eq!(code, Some(1001), "closed with 'going away, reconnect'");
        times.push(at);
    }
    times.sort();
    eprintln!("close times after SIGTERM: {times:?}");
    let (first, last) = (times[0], times[times.len() - 1]);
    // Spread over the window, not all at once (no reconnect storm)…
    assert!(
        last - first >= WINDOW / 2,
        "closes spread over at least half the {WINDOW:?} window: {times:?}"
    );
    // …and all within it.
    assert!(
        last <= WINDOW + MARGIN,
        "every client closed within the {WINDOW:?} window (+{MARGIN:?}): {times:?}"
    );
    // The process exits by its deadline, counted from SIGTERM.
    let exited = gw.wait_exit(DEADLINE.saturating_sub(started.elapsed()));
    assert!(
        exited.is_some(),
        "exited within the {DEADLINE:?} drain deadline of SIGTERM"
    );
}

/// Presence is written in pipelines of at most 512 connections: a connect
/// storm larger than that reaches the other replica's listing whole, each
/// connection once and as it is now (subscribed), and departures follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_mirrors_a_connect_storm_larger_than_one_pipeline() {
    const CLIENTS: usize = 1_100;
    const LEAVING: usize = 300;
    let redis = RedisServer::start();
    let a = Switchboard::gateway(&redis, &[]);
    let b = Switchboard::gateway(&redis, &[]);
    let url = a.ws_url("/ws");
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut c = Client::connect(&url).await;
        c.recv_json().await;
        let ok = c
            .subscribe(json!({"type": "subscribe", "channel": "room"}))
            .await;
        assert_eq!(ok["type"], "subscribed", "{ok}");
        clients.push(c);
    }
    let listing = |expected: usize| {
        let port = b.port;
        async move {
            let mut last = Value::Null;
            for _ in 0..100 {
                let (status, body) =
                    http_request(port, "GET", "/api/v1/connections", &[], None).unwrap();
                assert_eq!(status, 200, "{body}");
                last = serde_json::from_str(&body).unwrap();
                if last["total"] == expected {
                    return last;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            panic!(
                "the listing never reached {expected}: total {}",
                last["total"]
            );
        }
    };
    let all = listing(CLIENTS).await;
    let conns = all["connections"].as_array().unwrap();
    let ids: std::collections::HashSet<&str> = conns
        .iter()
        .map(|c| c["connection_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), CLIENTS, "each connection once");
    let replica = conns[0]["replica"].as_str().unwrap().to_string();
    for c in conns {
        assert_eq!(c["replica"], replica.as_str(), "{c}");
        assert!(
            c["connection_id"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{replica}-")),
            "{c}"
        );
        assert_eq!(c["route"], "native", "{c}");
        assert_eq!(c["channels"], json!(["room"]), "as it is now: {c}");
        let at = c["connected_at"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(at).is_ok(), "{c}");
    }
    clients.truncate(CLIENTS - LEAVING);
    listing(CLIENTS - LEAVING).await;
}

/// With one-command shard queues a burst keeps them full: messages then take
/// the dispatcher task's queue instead of the in-place path, and back again,
/// and every client still gets every message once, in order.
#[tokio::test]
async fn a_burst_through_full_shard_queues_arrives_whole_and_in_order() {
    let redis = RedisServer::start();
    let gw = Switchboard::gateway(&redis, &["--shard-queue", "1", "--fanout-shards", "2"]);
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(Client::subscribed_to(&gw.ws_url("/ws"), "burst").await);
    }
    const N: u64 = 1000;
    let mut pipe = redis::pipe();
    for n in 0..N {
        pipe.cmd("PUBLISH")
            .arg("switchboard:{burst}")
            .arg(json!({ "n": n }).to_string())
            .ignore();
    }
    let mut conn = redis.connection().await;
    let () = pipe.query_async(&mut conn).await.unwrap();
    for c in clients.iter_mut() {
        for n in 0..N {
            let m = c.recv_json().await;
            assert_eq!(m["type"], "message");
            assert_eq!(m["data"]["n"].as_u64(), Some(n), "in order, none missing");
        }
        c.expect_silence(Duration::from_millis(300)).await;
    }
}

/// RFC 6455 §4.4: a refused `Sec-WebSocket-Version` is answered with the
/// version the server speaks.
#[tokio::test]
async fn an_unsupported_websocket_version_is_answered_with_version_13() {
    let redis = RedisServer::start();
    let gw = Switchboard::gateway(&redis, &[]);
    let (_, head) = common::raw::upgrade(gw.port, "8");
    assert!(head.starts_with("http/1.1 400"), "{head}");
    assert!(head.contains("sec-websocket-version: 13\r\n"), "{head}");
    assert_eq!(
        gw.metric(
            "switchboard_upgrades_rejected_total",
            "reason=\"bad_handshake\""
        ),
        1.0
    );
    // Version 13 is accepted, and its 101 carries no such header.
    let (_, head) = common::raw::upgrade(gw.port, "13");
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains("sec-websocket-version"), "{head}");
}

/// RFC 6455 §7.4: a close frame whose code may not be sent on the wire (1004,
/// 1005, 1006, 1015, unassigned, out of range) is a protocol error, answered
/// with 1002; a valid code is answered with a normal close (1000).
#[tokio::test]
async fn a_close_code_that_may_not_be_sent_is_answered_with_1002() {
    use std::io::Write;
    let redis = RedisServer::start();
    let gw = Switchboard::gateway(&redis, &[]);
    let cases = [
        (999u16, 1002u16),
        (1004, 1002),
        (1005, 1002),
        (1006, 1002),
        (1015, 1002),
        (1016, 1002),
        (2999, 1002),
        (5000, 1002),
        (1000, 1000),
        (1001, 1000),
        (1013, 1000),
        (3000, 1000),
        (4999, 1000),
    ];
    // Every case is checked, and every failing one reported.
    let mut failures = common::Failures::default();
    for (sent, answered) in cases {
        let (mut s, head) = common::raw::upgrade(gw.port, "13");
        assert!(head.starts_with("http/1.1 101"), "{head}");
        let mut payload = sent.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        s.write_all(&common::raw::frame(8, &payload)).unwrap();
        failures.expect_eq(
            &format!("close {sent}"),
            common::raw::close_code(&mut s),
            Some(answered),
        );
    }
    failures.finish("close codes");
    // Each session counts its ending once it is over (just after its close frame).
    let deadline = std::time::Instant::now() + WAIT;
    while gw.metric("switchboard_disconnects_total", "code=\"1002\"") < 8.0 {
        assert!(std::time::Instant::now() < deadline, "8 closes with 1002");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        gw.metric("switchboard_disconnects_total", "code=\"1002\""),
        8.0
    );
}
