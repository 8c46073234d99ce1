//! The operations feed and the page's routes, checked on the wire: every
//! replica's report on `sys:stats` reaches an admin through any one replica;
//! a token without `websocket:admin` gets none of it (refused subscribe,
//! refused drop-in route, no frame), nobody publishes on it; `/api/v1/whoami`;
//! the page and its assets with their Content-Security-Policy and caching.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{Client, Received, RedisServer, Switchboard, http_request};
use serde_json::{Value, json};

const SECRET: &str = "ops-test-secret-0123456789-abcdefghijklmnopqrstuv";

struct Keys {
    dir: std::path::PathBuf,
}

impl Keys {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sb-ops-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("secret"), format!("{SECRET}\n")).unwrap();
        Self { dir }
    }

    fn secret(&self) -> String {
        self.dir.join("secret").display().to_string()
    }

    fn token(&self, perms: &[&str], channels: &[&str]) -> String {
        let spec = switchboard::auth::mint::TokenSpec {
            roles: Vec::new(),
            subject: "ops-test".into(),
            permissions: perms.iter().map(|s| s.to_string()).collect(),
            channels: channels.iter().map(|s| s.to_string()).collect(),
            ttl: Duration::from_secs(600),
            audience: None,
            issuer: None,
            key_id: None,
        };
        switchboard::auth::mint::mint(
            &spec,
            jsonwebtoken::Algorithm::HS256,
            &self.dir.join("secret"),
        )
        .unwrap()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn auth_gateway(redis: &RedisServer, keys: &Keys, name: &str) -> Switchboard {
    let url = redis.url();
    let secret = keys.secret();
    let gw = Switchboard::start(&[
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        &url,
        "--jwt-secret-file",
        &secret,
        "--replica-id",
        name,
        "--stats-interval",
        "1s",
    ]);
    gw.wait_ready(Duration::from_secs(10));
    gw
}

async fn connect(gw: &Switchboard, token: &str) -> Client {
    let mut client = Client::connect(&gw.ws_url(&format!("/ws?token={token}"))).await;
    assert_eq!(client.recv_json().await["type"], "connection_established");
    client
}

#[tokio::test]
async fn every_replica_reports_to_admins_and_to_nobody_else() {
    let redis = RedisServer::start();
    let keys = Keys::new();
    let a = auth_gateway(&redis, &keys, "gw-a");
    let b = auth_gateway(&redis, &keys, "gw-b");
    let admin = keys.token(&["websocket:admin"], &[]);
    let everything = keys.token(
        &[
            "websocket:connect",
            "websocket:subscribe",
            "websocket:publish",
        ],
        &["*"],
    );

    // An admin on gw-a hears both replicas.
    let mut ops = connect(&a, &admin).await;
    let subscribed = ops
        .subscribe(json!({"type": "subscribe", "channel": "sys:stats"}))
        .await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "reports from {seen:?} only");
        let m = ops
            .recv_until(Duration::from_secs(5), |m| m["type"] == "message")
            .await;
        assert_eq!(m["channel"], "sys:stats");
        assert!(m["offset"].is_u64(), "reports have offsets (resumable)");
        let r = &m["data"];
        assert_eq!(r["role"], "gateway");
        assert_eq!(r["engine"]["kind"], "redis");
        assert_eq!(r["engine"]["ready"], true);
        assert_eq!(r["ready"], true);
        assert_eq!(r["interval_seconds"], 1.0);
        for field in [
            "messages_in_per_second",
            "messages_out_per_second",
            "bytes_out_per_second",
        ] {
            assert!(r[field].is_number(), "{field}: {r}");
        }
        for field in [
            "slow_consumer_closes",
            "redis_errors",
            "redis_reconnects",
            "messages_out",
        ] {
            assert!(r["totals"][field].is_u64(), "{field}: {r}");
        }
        if r["replica"] == "gw-a" {
            // This very connection is counted by its replica.
            assert!(r["connections"]["native"].as_i64().unwrap() >= 1, "{r}");
            assert!(r["subscriptions"].as_i64().unwrap() >= 1, "{r}");
        }
        seen.insert(r["replica"].as_str().unwrap().to_string());
    }

    // A token with every channel glob but no admin permission: refused.
    let mut viewer = connect(&b, &everything).await;
    let refused = viewer
        .subscribe(json!({"type": "subscribe", "channel": "sys:stats", "id": 7}))
        .await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "forbidden");
    assert_eq!(refused["id"], 7);
    let ok = viewer
        .subscribe(json!({"type": "subscribe", "channel": "federation"}))
        .await;
    assert_eq!(ok["type"], "subscribed");
    // On the wire: nothing of the feed reaches it (reports go out every second).
    let quiet_until = Instant::now() + Duration::from_secs(3);
    loop {
        let left = quiet_until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match viewer.next(left).await {
            Some(Received::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_ne!(v["channel"], "sys:stats", "operations data leaked: {t}");
                assert!(
                    !t.contains("\"replica\":\"gw-"),
                    "operations data leaked: {t}"
                );
            }
            Some(Received::Closed(code)) => panic!("closed: {code:?}"),
            None => break,
        }
    }
    // The drop-in routes refuse it before the upgrade.
    let refused = Client::connect_with(
        &b.ws_url("/ws/sys:stats"),
        &[("authorization", &format!("Bearer {everything}"))],
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(refused.0, 403);
    let refused = Client::connect_with(
        &b.ws_url("/api/ws/sys:stats"),
        &[("authorization", &format!("Bearer {everything}"))],
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(refused.0, 403);

    // Nobody publishes on the system namespace, not even an admin.
    let body = json!({"channel": "sys:stats", "data": {"replica": "fake"}}).to_string();
    for token in [&admin, &everything] {
        let auth = format!("Bearer {token}");
        let (status, response) = http_request(
            a.port,
            "POST",
            "/api/v1/publish",
            &[("authorization", &auth)],
            Some(&body),
        )
        .unwrap();
        assert_eq!(status, 403, "{response}");
        assert!(response.contains("written by the gateways"), "{response}");
    }

    // whoami: what the page asks before connecting.
    let (status, body) = http_request(a.port, "GET", "/api/v1/whoami", &[], None).unwrap();
    assert_eq!(status, 401);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "missing_token"
    );
    let (status, body) = http_request(
        a.port,
        "GET",
        "/api/v1/whoami",
        &[("authorization", "Bearer not.a.jwt")],
        None,
    )
    .unwrap();
    assert_eq!(status, 401, "{body}");
    for (token, is_admin) in [(&admin, true), (&everything, false)] {
        let auth = format!("Bearer {token}");
        let (status, body) = http_request(
            a.port,
            "GET",
            "/api/v1/whoami",
            &[("authorization", &auth)],
            None,
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        let who: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(who["auth"], true);
        assert_eq!(who["admin"], is_admin);
        assert_eq!(who["user"], "ops-test");
        assert_eq!(who["replica"], "gw-a");
    }

    // `tail` says the same in one line.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "tail",
            "sys:stats",
            "--url",
            &b.http_url(""),
            "--token",
            &everything,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sys:stats") && stderr.contains("forbidden"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_replica_says_it_is_leaving() {
    let redis = RedisServer::start();
    let keys = Keys::new();
    let a = auth_gateway(&redis, &keys, "gw-a");
    let mut b = auth_gateway(&redis, &keys, "gw-b");
    let admin = keys.token(&["websocket:admin"], &[]);
    let mut ops = connect(&a, &admin).await;
    ops.subscribe(json!({"type": "subscribe", "channel": "sys:stats"}))
        .await;
    ops.recv_until(Duration::from_secs(5), |m| m["data"]["replica"] == "gw-b")
        .await;
    b.signal("TERM");
    let last = ops
        .recv_until(Duration::from_secs(10), |m| {
            m["data"]["replica"] == "gw-b" && m["data"]["draining"] == true
        })
        .await;
    assert_eq!(last["data"]["ready"], false);
    assert!(b.wait_exit(Duration::from_secs(30)).is_some());
}

/// A raw HTTP exchange: (status, headers in lower case, body).
fn exchange(port: u16, request: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body)
}

fn get(port: u16, path: &str, extra: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    exchange(
        port,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{extra}\r\n"
        ),
    )
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn body_of(port: u16, path: &str) -> Vec<u8> {
    let (status, _, body) = get(port, path, "");
    assert_eq!(status, 200, "{path}");
    body
}

/// The page's files are embedded precompressed: each request gets the coding
/// its Accept-Encoding prefers, decoding to the same bytes, with `Vary` and an
/// ETag of its own, still under the Content-Security-Policy.
fn check_compressed_assets(port: u16, plain: &[u8]) {
    use std::io::Read;
    let path = "/assets/vendor/echarts/echarts.min.js";
    let (_, identity, _) = get(port, path, "");
    assert_eq!(header(&identity, "content-encoding"), None);
    assert_eq!(header(&identity, "vary"), Some("Accept-Encoding"));
    let mut tags = vec![header(&identity, "etag").unwrap().to_string()];
    for (accept, coding) in [
        ("gzip, deflate, br, zstd", "br"),
        ("gzip, deflate", "gzip"),
        ("br;q=0, gzip", "gzip"),
    ] {
        let (status, headers, body) = get(port, path, &format!("Accept-Encoding: {accept}\r\n"));
        assert_eq!(status, 200);
        assert_eq!(
            header(&headers, "content-encoding"),
            Some(coding),
            "{accept}"
        );
        assert_eq!(header(&headers, "vary"), Some("Accept-Encoding"));
        assert!(header(&headers, "content-security-policy").is_some());
        assert!(
            body.len() * 2 < plain.len(),
            "{coding}: {} bytes",
            body.len()
        );
        let mut decoded = Vec::new();
        if coding == "br" {
            brotli::Decompressor::new(&body[..], 4096)
                .read_to_end(&mut decoded)
                .unwrap();
        } else {
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut decoded)
                .unwrap();
        }
        assert!(decoded == plain, "{coding} decodes to the file");
        let tag = header(&headers, "etag").unwrap().to_string();
        // Revalidation is per encoding.
        let (status, _, _) = get(
            port,
            path,
            &format!("Accept-Encoding: {accept}\r\nIf-None-Match: {tag}\r\n"),
        );
        assert_eq!(status, 304, "{accept}");
        let (status, _, _) = get(port, path, &format!("If-None-Match: {tag}\r\n"));
        assert_eq!(
            status, 200,
            "the {coding} tag does not match the plain file"
        );
        tags.push(tag);
    }
    tags.dedup();
    assert_eq!(tags.len(), 3, "one ETag per encoding: {tags:?}");
    // The page itself too.
    let (_, headers, _) = get(port, "/", "Accept-Encoding: br\r\n");
    assert_eq!(header(&headers, "content-encoding"), Some("br"));
    assert!(header(&headers, "content-security-policy").is_some());
}

#[test]
fn the_page_comes_from_the_binary_with_a_strict_policy() {
    let sb = Switchboard::standalone(&["--stats-interval", "0"]);
    sb.wait_ready(Duration::from_secs(10));
    let (status, headers, body) = get(sb.port, "/", "");
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = header(&headers, "content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self';"), "{csp}");
    assert!(csp.contains("style-src 'self';"), "{csp}");
    assert!(
        csp.contains(&format!("ws://127.0.0.1:{}", sb.port)),
        "{csp}"
    );
    assert!(
        !csp.contains("unsafe") && !csp.contains("http:") && !csp.contains('*'),
        "{csp}"
    );
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&headers, "referrer-policy"), Some("no-referrer"));
    let html = String::from_utf8(body).unwrap();
    assert!(
        html.contains("assets/app.js") && !html.contains("http"),
        "no remote origin"
    );

    // Assets: the right types, revalidated with an ETag.
    let (status, headers, body) = get(sb.port, "/assets/vendor/echarts/echarts.min.js", "");
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(body.len() > 500_000);
    let etag = header(&headers, "etag").expect("an etag").to_string();
    let (status, _, body) = get(
        sb.port,
        "/assets/vendor/echarts/echarts.min.js",
        &format!("If-None-Match: {etag}\r\n"),
    );
    assert_eq!((status, body.len()), (304, 0));
    check_compressed_assets(
        sb.port,
        &body_of(sb.port, "/assets/vendor/echarts/echarts.min.js"),
    );
    let (status, headers, body) = get(sb.port, "/assets/vendor/echarts/LICENSE", "");
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(String::from_utf8_lossy(&body).contains("Apache License"));
    for path in [
        "/assets/app.js",
        "/assets/connection.js",
        "/assets/panels.js",
        "/assets/series.js",
        "/assets/app.css",
        "/assets/favicon.svg",
    ] {
        assert_eq!(get(sb.port, path, "").0, 200, "{path}");
    }
    // Unknown files: the usual JSON 404; a hostile Host is left out of the policy.
    let (status, _, body) = get(sb.port, "/assets/../Cargo.toml", "");
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) = get(sb.port, "/assets/nope.js", "");
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("not_found"));
    let (_, headers, _) = exchange(
        sb.port,
        "GET / HTTP/1.1\r\nHost: evil; script-src *\r\nConnection: close\r\n\r\n",
    );
    let csp = header(&headers, "content-security-policy").unwrap_or_default();
    assert!(!csp.contains("evil"), "{csp}");
    // Standalone runs without authentication: whoami says so.
    let (status, body) = http_request(sb.port, "GET", "/api/v1/whoami", &[], None).unwrap();
    assert_eq!(status, 200);
    let who: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (who["auth"].clone(), who["admin"].clone()),
        (json!(false), json!(true))
    );
}
