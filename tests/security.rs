//! Hostile input, table-driven: every case asserts the exact HTTP status, close
//! code or error frame — while a well-behaved client on the same replica keeps
//! receiving its stream without a gap. Real gateway process, real Redis, real
//! sockets, real keys (generated with openssl).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Client, Failures, Logs, RedisServer, Refusal, Switchboard, http_request};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const WAIT: Duration = Duration::from_secs(10);
const SECRET: &str = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz";
const AUD: &str = "switchboard-test";
const ISS: &str = "test-issuer";

/// Key files in a temporary directory.
struct KeyDir {
    dir: PathBuf,
}

impl KeyDir {
    fn new() -> Self {
        static DIRS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sb-keys-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("secret"), format!("{SECRET}\n")).unwrap();
        let openssl = |args: &[&str]| {
            let ok = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl must be installed")
                .success();
            assert!(ok, "openssl {args:?}");
        };
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.key",
        ]);
        openssl(&["pkey", "-in", "rsa.key", "-pubout", "-out", "rsa.pub"]);
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ec.key",
        ]);
        openssl(&["pkey", "-in", "ec.key", "-pubout", "-out", "ec.pub"]);
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, perms: &[&str], channels: &[&str]) -> Value {
    json!({
        "sub": sub,
        "exp": now() + 3600,
        "aud": AUD,
        "iss": ISS,
        "permissions": perms,
        "channels": channels,
    })
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

fn viewer(sub: &str) -> Value {
    claims(
        sub,
        &["websocket:connect", "websocket:subscribe"],
        &["dash:*", "federation"],
    )
}

fn unsigned(claims: &Value) -> String {
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

fn gateway(redis: &RedisServer, keys: &KeyDir, extra: &[&str], log: Option<&Path>) -> Switchboard {
    let url = redis.url();
    let secret = keys.path("secret").display().to_string();
    let rsa = keys.path("rsa.pub").display().to_string();
    let ec = keys.path("ec.pub").display().to_string();
    let mut args = vec![
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        &url,
        "--jwt-secret-file",
        &secret,
        "--jwt-public-key-file",
        &rsa,
        "--jwt-public-key-file",
        &ec,
        "--jwt-audience",
        AUD,
        "--jwt-issuer",
        ISS,
        "--jwt-leeway",
        "5s",
        "--allowed-origins",
        "https://dash.example.com,https://*.preview.example.com",
        "--api-key",
        "the-api-key",
    ];
    args.extend_from_slice(extra);
    let gw = match log {
        Some(path) => {
            let file = std::fs::File::create(path).unwrap();
            Switchboard::start_with(&args, "debug", Logs::File(file))
        }
        None => Switchboard::start(&args),
    };
    gw.wait_ready(WAIT);
    gw
}

/// What a hostile attempt must produce.
enum Expect {
    /// The upgrade is refused with this status and `error` code, without
    /// `Retry-After` (waiting would not help).
    Refused(u16, &'static str),
    /// The upgrade is refused with this status and `error` code, and
    /// `Retry-After` of this many seconds.
    RefusedRetryAfter(u16, &'static str, u64),
    /// An error frame with this code; the connection stays usable.
    ErrorFrame(&'static str),
    /// The connection is closed with this code.
    Closed(u16),
}

/// Connections a case opens first and holds until it ends.
enum Hold {
    Nothing,
    /// This many connections with this token (each must be accepted).
    Same(String, usize),
    /// Connections of distinct users until the replica refuses one (it must
    /// within this many).
    UntilRefused(usize),
}

/// One hostile case: what to hold, how to connect, and what to send once
/// connected.
struct Case {
    name: &'static str,
    hold: Hold,
    path: String,
    headers: Vec<(&'static str, String)>,
    send: Vec<Message>,
    expect: Expect,
}

fn case(name: &'static str, token: Option<&str>, send: Vec<Message>, expect: Expect) -> Case {
    let path = match token {
        Some(t) => format!("/ws?token={t}"),
        None => "/ws".to_string(),
    };
    Case {
        name,
        hold: Hold::Nothing,
        path,
        headers: vec![],
        send,
        expect,
    }
}

fn text(t: impl Into<String>) -> Message {
    Message::text(t.into())
}

/// Asserts a refusal's status, `error` code and a non-empty message.
fn assert_refusal(name: &str, r: &Refusal, status: u16, code: &str) {
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (status, Some(code)),
        "{name}: {}",
        r.body
    );
    assert!(
        r.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{name}"
    );
}

async fn hold(gw: &Switchboard, c: &Case) -> Vec<Client> {
    let mut held = Vec::new();
    match &c.hold {
        Hold::Nothing => {}
        Hold::Same(token, n) => {
            for _ in 0..*n {
                held.push(Client::connect(&gw.ws_url(&format!("/ws?token={token}"))).await);
            }
        }
        Hold::UntilRefused(max) => {
            for i in 0..*max {
                let token = hs(&viewer(&format!("filler{i}")));
                match Client::connect_or_refusal(&gw.ws_url(&format!("/ws?token={token}")), &[])
                    .await
                {
                    Ok(client) => held.push(client),
                    Err(_) => return held,
                }
            }
            panic!("{}: the replica accepted {max} more connections", c.name);
        }
    }
    held
}

async fn run_case(gw: &Switchboard, c: &Case) {
    let held = hold(gw, c).await;
    let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let outcome = Client::connect_or_refusal(&gw.ws_url(&c.path), &headers).await;
    match (&c.expect, outcome) {
        (Expect::Refused(status, code), Err(r)) => {
            assert_refusal(c.name, &r, *status, code);
            assert_eq!(r.header("retry-after"), None, "{}", c.name);
        }
        (Expect::RefusedRetryAfter(status, code, seconds), Err(r)) => {
            assert_refusal(c.name, &r, *status, code);
            assert_eq!(
                r.header("retry-after"),
                Some(seconds.to_string().as_str()),
                "{}: Retry-After",
                c.name
            );
        }
        (Expect::Refused(status, code) | Expect::RefusedRetryAfter(status, code, _), Ok(_)) => {
            panic!(
                "{}: expected refusal {status} {code}, but connected",
                c.name
            )
        }
        (_, Err(r)) => panic!("{}: refused unexpectedly: {} {}", c.name, r.status, r.body),
        (expect, Ok(mut client)) => {
            let hello = client.recv_json().await;
            assert_eq!(hello["type"], "connection_established", "{}", c.name);
            for m in &c.send {
                client.send_message(m.clone()).await;
            }
            match expect {
                Expect::ErrorFrame(code) => {
                    let e = client.recv_until(WAIT, |m| m["type"] == "error").await;
                    assert_eq!(e["code"], *code, "{}: {e}", c.name);
                    if *code == "rate_limited" {
                        // Waiting out the rate limit (5 messages/s: two new
                        // tokens in 400 ms) is what lets the ping through.
                        tokio::time::sleep(Duration::from_millis(400)).await;
                    }
                    // Still usable.
                    client.send_json(&json!({"type":"ping","id":"alive"})).await;
                    let pong = client.recv_until(WAIT, |m| m["type"] == "pong").await;
                    assert_eq!(pong["id"], "alive", "{}", c.name);
                }
                Expect::Closed(code) => {
                    assert_eq!(client.closed_code(WAIT).await, Some(*code), "{}", c.name);
                }
                Expect::Refused(..) | Expect::RefusedRetryAfter(..) => unreachable!(),
            }
        }
    }
    if !held.is_empty() {
        let (status, _) = http_request(gw.port, "GET", "/health/ready", &[], None).unwrap();
        assert_eq!(
            status, 200,
            "{}: a replica at a limit is still ready",
            c.name
        );
    }
}

/// Waits until the well-behaved client is the only connection left: every
/// connection a hostile case opened has been released.
async fn settle(gw: &Switchboard, name: &str) {
    settle_at(gw, 1.0, name).await;
}

/// Waits until exactly `n` connections are open on the replica (the ones a
/// test keeps throughout): every connection a case opened has been released.
async fn settle_at(gw: &Switchboard, n: f64, name: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let open = gw.metric("switchboard_connections", "");
        if open == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {open} connections still open after the case"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_cases_get_exact_answers_and_never_disturb_a_good_client() {
    let redis = RedisServer::start();
    let keys = KeyDir::new();
    let log = keys.path("gateway.log");
    let gw = gateway(
        &redis,
        &keys,
        &[
            "--max-connections",
            "12",
            "--max-connections-per-user",
            "3",
            "--max-channels-per-connection",
            "3",
            "--max-message-bytes",
            "4096",
            "--max-frame-bytes",
            "4096",
            "--max-messages-per-second",
            "5",
            "--message-burst",
            "10",
            "--max-json-depth",
            "8",
            "--max-filter-bytes",
            "256",
        ],
        Some(&log),
    );

    // The well-behaved client, and a steady publisher.
    let good_token = hs(&viewer("good"));
    let mut good = Client::connect(&gw.ws_url(&format!("/ws?token={good_token}"))).await;
    good.recv_json().await;
    let sub = good
        .subscribe(json!({"type":"subscribe","channel":"dash:stream"}))
        .await;
    assert_eq!(sub["type"], "subscribed");
    let port = gw.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = json!({"channel":"dash:stream","data":{"n":n}}).to_string();
                let (status, _) = http_request(
                    port,
                    "POST",
                    "/api/v1/publish",
                    &[("X-API-Key", "the-api-key")],
                    Some(&body),
                )
                .unwrap();
                assert_eq!(status, 200);
                n += 1;
                // A steady stream while the hostile cases run.
                std::thread::sleep(Duration::from_millis(20));
            }
            n
        })
    };
    let reader = tokio::spawn(async move {
        let mut offsets = Vec::new();
        loop {
            match good.next(Duration::from_secs(3)).await {
                Some(common::Received::Text(t)) => {
                    let m: Value = serde_json::from_str(&t).unwrap();
                    if m["type"] == "message" {
                        offsets.push(m["offset"].as_u64().unwrap());
                    }
                }
                other => return (offsets, other),
            }
        }
    });

    let mut expired = viewer("u");
    expired["exp"] = json!(now() - 120);
    let mut early = viewer("u");
    early["nbf"] = json!(now() + 600);
    let mut wrong_aud = viewer("u");
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = viewer("u");
    wrong_iss["iss"] = json!("mallory");
    let other_secret = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-that-is-long-enough-0123456789"),
        &viewer("u"),
    );
    let confusion = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&keys.read("rsa.pub")),
        &viewer("u"),
    );
    let no_connect = hs(&claims("u", &["websocket:subscribe"], &["*"]));
    let mut no_sub = viewer("u");
    no_sub.as_object_mut().unwrap().remove("sub");
    let no_sub = hs(&no_sub);
    let limited = hs(&viewer("limited"));
    let v = hs(&viewer("hostile"));
    let long_token = "a".repeat(9000);
    let deep = format!("{}{}", "[".repeat(50), "]".repeat(50));
    let many = |n: usize| -> Vec<Message> {
        (0..n)
            .map(|i| text(json!({"type":"subscribe","channel":format!("dash:c{i}")}).to_string()))
            .collect()
    };
    let invalid_utf8 = Message::Frame(Frame::message(
        vec![0xff, 0xfe, 0xfd],
        OpCode::Data(Data::Text),
        true,
    ));

    let cases = vec![
        case(
            "no token",
            None,
            vec![],
            Expect::Refused(401, "missing_token"),
        ),
        case(
            "bad signature",
            Some(&other_secret),
            vec![],
            Expect::Refused(401, "invalid_token"),
        ),
        case(
            "expired",
            Some(&hs(&expired)),
            vec![],
            Expect::Refused(401, "token_expired"),
        ),
        case(
            "not yet valid",
            Some(&hs(&early)),
            vec![],
            Expect::Refused(401, "token_not_yet_valid"),
        ),
        case(
            "wrong audience",
            Some(&hs(&wrong_aud)),
            vec![],
            Expect::Refused(401, "wrong_audience"),
        ),
        case(
            "wrong issuer",
            Some(&hs(&wrong_iss)),
            vec![],
            Expect::Refused(401, "wrong_issuer"),
        ),
        case(
            "alg none",
            Some(&unsigned(&viewer("u"))),
            vec![],
            Expect::Refused(401, "invalid_token"),
        ),
        case(
            "HS/RS confusion",
            Some(&confusion),
            vec![],
            Expect::Refused(401, "invalid_token"),
        ),
        case(
            "garbage token",
            Some("not.a.jwt"),
            vec![],
            Expect::Refused(401, "invalid_token"),
        ),
        case(
            "oversized token",
            Some(&long_token),
            vec![],
            Expect::Refused(401, "invalid_token"),
        ),
        case(
            "no sub claim",
            Some(&no_sub),
            vec![],
            Expect::Refused(401, "missing_claim"),
        ),
        case(
            "blank sub claim",
            Some(&hs(&viewer(" "))),
            vec![],
            Expect::Refused(401, "missing_claim"),
        ),
        case(
            "no websocket:connect",
            Some(&no_connect),
            vec![],
            Expect::Refused(403, "forbidden"),
        ),
        Case {
            name: "over the per-user limit",
            hold: Hold::Same(limited.clone(), 3),
            path: format!("/ws?token={limited}"),
            headers: vec![],
            send: vec![],
            expect: Expect::RefusedRetryAfter(429, "max_connections_per_user", 30),
        },
        Case {
            name: "over the replica's connection limit",
            hold: Hold::UntilRefused(12),
            path: format!("/ws?token={v}"),
            headers: vec![],
            send: vec![],
            expect: Expect::RefusedRetryAfter(503, "max_connections", 5),
        },
        Case {
            name: "bad origin",
            hold: Hold::Nothing,
            path: format!("/ws?token={v}"),
            headers: vec![("origin", "https://evil.example".into())],
            send: vec![],
            expect: Expect::Refused(403, "origin_not_allowed"),
        },
        Case {
            name: "forbidden channel on a drop-in route",
            hold: Hold::Nothing,
            path: format!("/ws/memory?token={v}"),
            headers: vec![],
            send: vec![],
            expect: Expect::Refused(403, "forbidden"),
        },
        Case {
            name: "bad channel name in the path",
            hold: Hold::Nothing,
            path: format!("/api/ws/bad*name?token={v}"),
            headers: vec![],
            send: vec![],
            expect: Expect::Refused(400, "bad_channel"),
        },
        case(
            "forbidden channel",
            Some(&v),
            vec![text(r#"{"type":"subscribe","channel":"memory"}"#)],
            Expect::ErrorFrame("forbidden"),
        ),
        case(
            "malformed JSON",
            Some(&v),
            vec![text("{\"type\":")],
            Expect::ErrorFrame("invalid_json"),
        ),
        case(
            "deep JSON",
            Some(&v),
            vec![text(deep)],
            Expect::ErrorFrame("invalid_json"),
        ),
        case(
            "unknown type",
            Some(&v),
            vec![text(r#"{"type":"sudo"}"#)],
            Expect::ErrorFrame("unknown_type"),
        ),
        case(
            "binary frame",
            Some(&v),
            vec![Message::binary(vec![0u8; 16])],
            Expect::ErrorFrame("binary_not_supported"),
        ),
        case(
            "bad channel name",
            Some(&v),
            vec![text(r#"{"type":"subscribe","channel":"a{b}"}"#)],
            Expect::ErrorFrame("bad_channel"),
        ),
        case(
            "too many channels",
            Some(&v),
            many(4),
            Expect::ErrorFrame("too_many_channels"),
        ),
        case(
            "oversized filter",
            Some(&v),
            vec![text(
                json!({"type":"subscribe","channel":"dash:f","filters":{"k":"x".repeat(400)}})
                    .to_string(),
            )],
            Expect::ErrorFrame("bad_filter"),
        ),
        case(
            "refresh with another user's token",
            Some(&v),
            vec![text(
                json!({"type":"refresh_token","token":hs(&viewer("someone"))}).to_string(),
            )],
            Expect::ErrorFrame("forbidden"),
        ),
        case(
            "refresh with a token without sub",
            Some(&v),
            vec![text(
                json!({"type":"refresh_token","token":no_sub}).to_string(),
            )],
            Expect::ErrorFrame("unauthorized"),
        ),
        case(
            "refresh with an invalid token",
            Some(&v),
            vec![text(
                json!({"type":"refresh_token","token":"x.y.z"}).to_string(),
            )],
            Expect::ErrorFrame("unauthorized"),
        ),
        case(
            "flood: warned first",
            Some(&v),
            (0..12).map(|_| text(r#"{"type":"ping"}"#)).collect(),
            Expect::ErrorFrame("rate_limited"),
        ),
        case(
            "flood: then closed",
            Some(&v),
            (0..200).map(|_| text(r#"{"type":"ping"}"#)).collect(),
            Expect::Closed(1008),
        ),
        case(
            "oversized frame",
            Some(&v),
            vec![text("x".repeat(5000))],
            Expect::Closed(1009),
        ),
        case(
            "text frame not UTF-8",
            Some(&v),
            vec![invalid_utf8],
            Expect::Closed(1007),
        ),
    ];
    assert!(cases.len() >= 25);
    // Every case runs, and every failing one is reported at the end.
    let mut failures = Failures::default();
    for c in &cases {
        eprintln!("case: {}", c.name);
        failures
            .run(c.name, async {
                run_case(&gw, c).await;
                settle(&gw, c.name).await;
            })
            .await;
    }

    failures.finish("hostile cases");

    // The good client is listed as it is (presence is written in batches,
    // once a second: the cases may all have run before the first one).
    let admin_bearer = format!("Bearer {}", hs(&claims("root", &["websocket:admin"], &[])));
    let deadline = Instant::now() + WAIT;
    let listing = loop {
        let (status, listing) = http_request(
            port,
            "GET",
            "/api/v1/connections?user=good",
            &[("Authorization", &admin_bearer)],
            None,
        )
        .unwrap();
        assert_eq!(status, 200, "{listing}");
        let listing: Value = serde_json::from_str(&listing).unwrap();
        if listing["total"] != 0 || Instant::now() > deadline {
            break listing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(listing["connections"][0]["user"], "good", "{listing}");
    assert_eq!(
        listing["connections"][0]["channels"],
        json!(["dash:stream"])
    );

    // The good client saw every message, in order, with no gap.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = publisher.join().unwrap();
    let (offsets, _) = reader.await.unwrap();
    assert_eq!(offsets.len() as u64, published, "every message arrived");
    assert!(
        offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap, no duplicate"
    );

    // Tokens and secrets never reach the logs.
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("authentication"), "the log was captured");
    for secret in [
        v.as_str(),
        good_token.as_str(),
        SECRET,
        "the-api-key",
        other_secret.as_str(),
    ] {
        assert!(!logs.contains(secret), "a secret leaked into the logs");
    }
}

/// What a hostile frame on a seed dialect's route must produce.
enum DialectExpect {
    /// The dialect's error frame with this code; the connection stays usable
    /// (proved by the dialect's own `ping` answered with `pong`).
    ErrorFrame(&'static str),
    /// The dialect's error frame with this code first, then the close code.
    ErrorThenClosed(&'static str, u16),
    /// The connection is closed with this code.
    Closed(u16),
}

/// A seed dialect's route as the hostile cases drive it.
struct DialectRoute {
    name: &'static str,
    /// The upgrade path of the `i`th hostile connection (each its own
    /// session or request: nothing replays into it).
    path: Box<dyn Fn(usize) -> String>,
    /// The error code of an error frame, checked in every place the dialect
    /// puts it.
    error_code: fn(&Value) -> Option<String>,
}

/// ESCAI: `{"type":"error","code",…,"data":{"code",…}}`, both codes equal.
fn escai_error_code(e: &Value) -> Option<String> {
    let code = e["code"].as_str()?;
    (e["data"]["code"] == code && e["message"].is_string()).then(|| code.to_owned())
}

/// AI Council: the seed's envelope, `message_id` 0, the code under `data`.
fn council_error_code(e: &Value) -> Option<String> {
    (e["message_id"] == 0 && e["timestamp"].is_string() && e["data"]["message"].is_string())
        .then(|| e["data"]["code"].as_str().map(str::to_owned))?
}

async fn run_dialect_case(
    gw: &Switchboard,
    route: &DialectRoute,
    i: usize,
    name: &str,
    send: &[Message],
    expect: &DialectExpect,
) {
    let mut client = Client::connect(&gw.ws_url(&(route.path)(i))).await;
    let hello = client.recv_json().await;
    assert_eq!(hello["type"], "connection_established", "{name}: {hello}");
    for m in send {
        client.send_message(m.clone()).await;
    }
    let error = |code: &'static str, e: &Value| {
        assert_eq!(
            (route.error_code)(e).as_deref(),
            Some(code),
            "{name}: the error frame {e}"
        );
    };
    match expect {
        DialectExpect::ErrorFrame(code) => {
            let e = client.recv_until(WAIT, |m| m["type"] == "error").await;
            error(code, &e);
            if code.eq_ignore_ascii_case("rate_limited") {
                // 5 messages/s: two new tokens in 400 ms let the ping through.
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            client.send_json(&json!({"type": "ping"})).await;
            let pong = client
                .recv_until(WAIT, |m| m["type"] == "pong" || m["type"] == "error")
                .await;
            assert_eq!(pong["type"], "pong", "{name}: still usable: {pong}");
        }
        DialectExpect::ErrorThenClosed(code, close) => {
            let e = client.recv_until(WAIT, |m| m["type"] == "error").await;
            error(code, &e);
            assert_eq!(client.closed_code(WAIT).await, Some(*close), "{name}");
        }
        DialectExpect::Closed(close) => {
            assert_eq!(client.closed_code(WAIT).await, Some(*close), "{name}");
        }
    }
}

/// Reads a bystander's frames until the stream stops (3 s of silence) or the
/// connection ends; `key` picks the sequence number of a stream event.
fn read_stream(
    mut client: Client,
    key: fn(&Value) -> Option<u64>,
) -> tokio::task::JoinHandle<(Vec<u64>, Option<common::Received>)> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            match client.next(Duration::from_secs(3)).await {
                Some(common::Received::Text(t)) => {
                    let m: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    if let Some(n) = key(&m) {
                        seen.push(n);
                    }
                }
                other => return (seen, other),
            }
        }
    })
}

/// Issue 17: bad input on the ESCAI (seed 003) and AI Council (seed 004)
/// routes gets the dialect's own error frame (binary, malformed JSON, unknown
/// type, a flood's first refusal) or the close code every route uses
/// (oversized 1009, flood 1008, not UTF-8 1007) — while a bystander on each
/// of those routes and a native client keep receiving a steady publish
/// stream exactly once, in order, without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_on_the_escai_and_council_routes_gets_their_answers_and_disturbs_no_one() {
    let redis = RedisServer::start();
    let keys = KeyDir::new();
    let gw = gateway(
        &redis,
        &keys,
        &[
            "--max-message-bytes",
            "4096",
            "--max-frame-bytes",
            "4096",
            "--max-messages-per-second",
            "5",
            "--message-burst",
            "10",
        ],
        None,
    );
    let escai_token = |sub: &str| {
        hs(&claims(
            sub,
            &[
                "websocket:connect",
                "websocket:subscribe",
                "agent:agent_1:monitor",
            ],
            &[],
        ))
    };
    // The seed's council tokens carry no permissions.
    let council_token =
        |sub: &str| hs(&json!({"sub": sub, "exp": now() + 3600, "aud": AUD, "iss": ISS}));

    // The bystanders: a native client, an ESCAI monitor of agent_1 and an AI
    // Council frontend reading request `stream`.
    let native = Client::subscribed_to(
        &gw.ws_url(&format!("/ws?token={}", hs(&viewer("good")))),
        "dash:stream",
    )
    .await;
    let mut escai = Client::connect(&gw.ws_url(&format!(
        "/ws/monitor/watch?token={}",
        escai_token("watcher")
    )))
    .await;
    assert_eq!(escai.recv_json().await["type"], "connection_established");
    escai
        .send_json(&json!({"type": "subscribe", "data": {"type": "epistemic_updates", "agent_id": "agent_1"}}))
        .await;
    let confirmed = escai
        .recv_until(WAIT, |m| {
            m["type"] == "subscription_confirmed" || m["type"] == "error"
        })
        .await;
    assert_eq!(confirmed["type"], "subscription_confirmed", "{confirmed}");
    let mut council = Client::connect(&gw.ws_url(&format!(
        "/api/v1/ws/stream?token={}",
        council_token("reader")
    )))
    .await;
    assert_eq!(council.recv_json().await["type"], "connection_established");
    settle_at(&gw, 3.0, "the bystanders").await;

    // A steady publisher on the three streams.
    let port = gw.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (channel, data) in [
                    ("dash:stream", json!({"n": n})),
                    (
                        "agents:agent_1",
                        json!({"type": "epistemic_update", "data": {"n": n}}),
                    ),
                    (
                        "council:stream",
                        json!({"type": "progress", "data": {"n": n}}),
                    ),
                ] {
                    let body = json!({"channel": channel, "data": data}).to_string();
                    let (status, reply) = http_request(
                        port,
                        "POST",
                        "/api/v1/publish",
                        &[("X-API-Key", "the-api-key")],
                        Some(&body),
                    )
                    .unwrap();
                    assert_eq!(status, 200, "{reply}");
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            n
        })
    };
    let native_reader = read_stream(native, |m| {
        (m["type"] == "message")
            .then(|| m["offset"].as_u64())
            .flatten()
    });
    let escai_reader = read_stream(escai, |m| {
        (m["type"] == "epistemic_update" && m["agent_id"] == "agent_1")
            .then(|| m["data"]["n"].as_u64())
            .flatten()
    });
    let council_reader = read_stream(council, |m| {
        (m["type"] == "progress" && m["data"]["n"].is_u64())
            .then(|| m["message_id"].as_u64())
            .flatten()
    });

    let escai_hostile = escai_token("hostile");
    let council_hostile = council_token("hostile");
    let routes = [
        DialectRoute {
            name: "escai",
            path: Box::new(move |i| format!("/ws/monitor/hostile-{i}?token={escai_hostile}")),
            error_code: escai_error_code,
        },
        DialectRoute {
            name: "council",
            path: Box::new(move |i| format!("/api/v1/ws/hostile-{i}?token={council_hostile}")),
            error_code: council_error_code,
        },
    ];
    let invalid_utf8 = Message::Frame(Frame::message(
        vec![0xff, 0xfe, 0xfd],
        OpCode::Data(Data::Text),
        true,
    ));
    let ping = || text(r#"{"type":"ping"}"#);
    // (case, what is sent, the ESCAI answer, the AI Council answer)
    let cases: Vec<(&str, Vec<Message>, DialectExpect, DialectExpect)> = vec![
        (
            "binary frame",
            vec![Message::binary(vec![0u8; 16])],
            DialectExpect::ErrorFrame("BINARY_NOT_SUPPORTED"),
            DialectExpect::ErrorFrame("binary_not_supported"),
        ),
        (
            "malformed JSON",
            vec![text("{\"type\":")],
            DialectExpect::ErrorFrame("INVALID_JSON"),
            DialectExpect::ErrorFrame("invalid_json"),
        ),
        (
            "unknown type",
            vec![text(r#"{"type":"sudo"}"#)],
            DialectExpect::ErrorFrame("UNKNOWN_MESSAGE_TYPE"),
            DialectExpect::ErrorFrame("unknown_type"),
        ),
        (
            "oversized frame",
            vec![text("x".repeat(5000))],
            DialectExpect::Closed(1009),
            DialectExpect::Closed(1009),
        ),
        (
            "flood: warned, usable once it slows down",
            (0..12).map(|_| ping()).collect(),
            DialectExpect::ErrorFrame("RATE_LIMITED"),
            DialectExpect::ErrorFrame("rate_limited"),
        ),
        (
            "flood: warned, then closed",
            (0..200).map(|_| ping()).collect(),
            DialectExpect::ErrorThenClosed("RATE_LIMITED", 1008),
            DialectExpect::ErrorThenClosed("rate_limited", 1008),
        ),
        (
            "text frame not UTF-8",
            vec![invalid_utf8],
            DialectExpect::Closed(1007),
            DialectExpect::Closed(1007),
        ),
    ];

    // Every case runs on both routes; every failing one is reported.
    let mut failures = Failures::default();
    let mut i = 0;
    for (case, send, escai_expect, council_expect) in &cases {
        for (route, expect) in routes.iter().zip([escai_expect, council_expect]) {
            let name = format!("{}: {case}", route.name);
            eprintln!("case: {name}");
            i += 1;
            failures
                .run(&name, async {
                    run_dialect_case(&gw, route, i, &name, send, expect).await;
                    settle_at(&gw, 3.0, &name).await;
                })
                .await;
        }
    }

    // Every bystander saw every event, once, in order, without a gap.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = publisher.join().unwrap();
    for (who, reader, first) in [
        ("native bystander", native_reader, None),
        ("escai bystander", escai_reader, Some(0)),
        ("council bystander", council_reader, Some(1)),
    ] {
        let (seen, end) = reader.await.unwrap();
        failures.check(
            who,
            seen.len() as u64 == published
                && seen.windows(2).all(|w| w[1] == w[0] + 1)
                && first.is_none_or(|f| seen.first() == Some(&f)),
            format!(
                "{} of {published} events, first {:?}, last {:?}, in order without gap: {}; ended with {end:?}",
                seen.len(),
                seen.first(),
                seen.last(),
                seen.windows(2).all(|w| w[1] == w[0] + 1)
            ),
        );
    }
    failures.finish("hostile input on the seed dialects' routes");
}

/// Every accepted way in connects (header, subprotocol, RS256, ES256, an
/// allowed origin), and every REST refusal has its exact status and code.
/// Each case is checked and every failing one reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_credentials_connect_and_rest_refusals_are_exact() {
    let redis = RedisServer::start();
    let keys = KeyDir::new();
    let gw = gateway(&redis, &keys, &[], None);
    let rsa = EncodingKey::from_rsa_pem(&keys.read("rsa.key")).unwrap();
    let ec = EncodingKey::from_ec_pem(&keys.read("ec.key")).unwrap();
    let rs_ok = sign(Algorithm::RS256, &rsa, &viewer("rs"));
    let es_ok = sign(Algorithm::ES256, &ec, &viewer("es"));
    let v = hs(&viewer("caller"));
    let mut no_sub = viewer("u");
    no_sub.as_object_mut().unwrap().remove("sub");
    let no_sub = hs(&no_sub);

    let mut failures = Failures::default();
    let bearer = format!("Bearer {v}");
    let proto = format!("switchboard, bearer.{v}");
    let header = |name, value: &str| vec![(name, value.to_string())];
    let ways_in = [
        (
            "Authorization header",
            "/ws".to_string(),
            header("authorization", &bearer),
        ),
        (
            "subprotocol",
            "/ws".to_string(),
            header("sec-websocket-protocol", &proto),
        ),
        // The seeds' routes take the same credentials (ESCAI's monitor and AI
        // Council's request route, seeds 003 and 004).
        (
            "Authorization header on the ESCAI route",
            "/ws/monitor/creds".to_string(),
            header("authorization", &bearer),
        ),
        (
            "subprotocol on the ESCAI route",
            "/ws/monitor/creds".to_string(),
            header("sec-websocket-protocol", &proto),
        ),
        (
            "Authorization header on the AI Council route",
            "/api/v1/ws/creds".to_string(),
            header("authorization", &bearer),
        ),
        (
            "subprotocol on the AI Council route",
            "/api/v1/ws/creds".to_string(),
            header("sec-websocket-protocol", &proto),
        ),
        ("RS256", format!("/ws?token={rs_ok}"), vec![]),
        ("ES256", format!("/ws?token={es_ok}"), vec![]),
        (
            "wildcard origin",
            format!("/ws/federation?token={v}"),
            header("origin", "https://a.preview.example.com"),
        ),
    ];
    for (name, path, headers) in &ways_in {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let outcome = Client::connect_with(&gw.ws_url(path), &headers)
            .await
            .map(drop)
            .map_err(|(status, body)| format!("refused: {status} {body}"));
        failures.record(name, outcome);
    }

    /// One REST request and the refusal it must get.
    struct Refused<'a> {
        name: &'a str,
        headers: Vec<(&'a str, String)>,
        method: &'a str,
        path: &'a str,
        body: Option<&'a str>,
        status: u16,
        code: &'a str,
    }
    let port = gw.port;
    let publish_body = json!({"channel":"dash:stream","data":{}}).to_string();
    let publish = |name, headers, status, code| Refused {
        name,
        headers,
        method: "POST",
        path: "/api/v1/publish",
        body: Some(&publish_body),
        status,
        code,
    };
    let rest = [
        publish("publish without credentials", vec![], 401, "missing_token"),
        publish(
            "publish with a token without sub",
            header("Authorization", &format!("Bearer {no_sub}")),
            401,
            "missing_claim",
        ),
        publish(
            "publish with a wrong API key",
            header("X-API-Key", "wrong"),
            401,
            "invalid_api_key",
        ),
        publish(
            "publish as a viewer",
            header("Authorization", &bearer),
            403,
            "forbidden",
        ),
        Refused {
            name: "connections as a viewer",
            headers: header("Authorization", &bearer),
            method: "GET",
            path: "/api/v1/connections",
            body: None,
            status: 403,
            code: "forbidden",
        },
        Refused {
            name: "disconnect as a viewer",
            headers: header("Authorization", &bearer),
            method: "POST",
            path: "/api/v1/disconnect",
            body: Some(r#"{"user":"good"}"#),
            status: 403,
            code: "forbidden",
        },
    ];
    for r in &rest {
        let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, reply) = http_request(port, r.method, r.path, &headers, r.body).unwrap();
        let error = serde_json::from_str::<Value>(&reply).unwrap_or(Value::Null)["error"].clone();
        failures.expect_eq(r.name, (status, error), (r.status, json!(r.code)));
    }
    failures.finish("ways in and REST refusals");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_token_is_warned_then_closed_unless_refreshed() {
    let redis = RedisServer::start();
    let keys = KeyDir::new();
    let gw = gateway(&redis, &keys, &["--token-expiry-grace", "2s"], None);
    let short = |sub: &str| {
        let mut c = viewer(sub);
        c["exp"] = json!(now() + 2);
        hs(&c)
    };
    // Not refreshed: token_expired notice, then 4001.
    let mut lapsing = Client::connect(&gw.ws_url(&format!("/ws?token={}", short("lapse")))).await;
    lapsing.recv_json().await;
    let notice = lapsing.recv_until(WAIT, |m| m["type"] == "error").await;
    assert_eq!(notice["code"], "token_expired");
    assert_eq!(lapsing.closed_code(WAIT).await, Some(4001));
    // Refreshed in time: stays open, and a subscription the new token drops is ended.
    let mut refreshing =
        Client::connect(&gw.ws_url(&format!("/ws?token={}", short("keeper")))).await;
    refreshing.recv_json().await;
    refreshing
        .subscribe(json!({"type":"subscribe","channel":"federation"}))
        .await;
    let narrower = hs(&claims(
        "keeper",
        &["websocket:connect", "websocket:subscribe"],
        &["dash:*"],
    ));
    refreshing
        .send_json(&json!({"type":"refresh_token","token":narrower,"id":1}))
        .await;
    let ended = refreshing
        .recv_until(WAIT, |m| m["type"] == "unsubscribed")
        .await;
    assert_eq!(
        (ended["channel"].as_str(), ended["reason"].as_str()),
        (Some("federation"), Some("forbidden"))
    );
    let ok = refreshing
        .recv_until(WAIT, |m| m["type"] == "token_refreshed")
        .await;
    assert_eq!(ok["id"], 1);
    // Waiting out the old token's expiry (2 s), its grace (2 s) and a tick of
    // the timing wheel is the point: the refreshed client must still be there.
    tokio::time::sleep(Duration::from_secs(5)).await;
    refreshing.send_json(&json!({"type":"ping","id":2})).await;
    let pong = refreshing.recv_until(WAIT, |m| m["type"] == "pong").await;
    assert_eq!(
        pong["id"], 2,
        "still connected after the old expiry and grace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_disconnects_a_user_on_every_replica() {
    let redis = RedisServer::start();
    let keys = KeyDir::new();
    let a = gateway(&redis, &keys, &[], None);
    let b = gateway(&redis, &keys, &[], None);
    let t = hs(&viewer("victim"));
    let mut on_a = Client::connect(&a.ws_url(&format!("/ws?token={t}"))).await;
    let mut on_b = Client::connect(&b.ws_url(&format!("/ws?token={t}"))).await;
    let bystander_token = hs(&viewer("bystander"));
    let mut bystander = Client::connect(&b.ws_url(&format!("/ws?token={bystander_token}"))).await;
    for c in [&mut on_a, &mut on_b, &mut bystander] {
        c.recv_json().await;
    }
    let admin = format!("Bearer {}", hs(&claims("root", &["websocket:admin"], &[])));
    // Presence is written once a second: wait until both replicas list the victim.
    let mut seen = 0;
    for _ in 0..50 {
        let (_, body) = http_request(
            a.port,
            "GET",
            "/api/v1/connections?user=victim",
            &[("Authorization", &admin)],
            None,
        )
        .unwrap();
        seen = serde_json::from_str::<Value>(&body).unwrap()["total"]
            .as_u64()
            .unwrap_or(0);
        if seen == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(seen, 2, "connections of both replicas are listed by either");
    let (status, _) = http_request(
        a.port,
        "POST",
        "/api/v1/disconnect",
        &[("Authorization", &admin)],
        Some(r#"{"user":"victim"}"#),
    )
    .unwrap();
    assert_eq!(status, 202);
    assert_eq!(on_a.closed_code(WAIT).await, Some(4004));
    assert_eq!(on_b.closed_code(WAIT).await, Some(4004));
    bystander
        .send_json(&json!({"type":"ping","id":"still"}))
        .await;
    assert_eq!(bystander.recv_json().await["id"], "still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_file_is_reloaded_when_it_changes() {
    let redis = RedisServer::start();
    let keys = KeyDir::new();
    let jwks = keys.path("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
    let url = redis.url();
    let jwks_arg = jwks.display().to_string();
    let gw = Switchboard::start(&[
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        &url,
        "--jwks-file",
        &jwks_arg,
        "--jwt-reload-interval",
        "200ms",
    ]);
    gw.wait_ready(WAIT);
    // An RS256 token with kid "k1", and the JWKS that publishes its key.
    let rsa = EncodingKey::from_rsa_pem(&keys.read("rsa.key")).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let mut c = viewer("jwks-user");
    c.as_object_mut().unwrap().remove("aud");
    let token = jsonwebtoken::encode(&header, &c, &rsa).unwrap();
    let url = gw.ws_url(&format!("/ws?token={token}"));
    assert!(
        matches!(Client::connect_with(&url, &[]).await, Err((401, _))),
        "unknown key first"
    );
    let output = Command::new("openssl")
        .args(["rsa", "-pubin", "-in"])
        .arg(keys.path("rsa.pub"))
        .args(["-noout", "-modulus"])
        .output()
        .unwrap();
    let modulus_hex = String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .trim_start_matches("Modulus=")
        .to_string();
    let modulus: Vec<u8> = (0..modulus_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&modulus_hex[i..i + 2], 16).unwrap())
        .collect();
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let doc = json!({"keys":[{"kty":"RSA","kid":"k1","alg":"RS256","use":"sig","n":b64(&modulus),"e":"AQAB"}]});
    std::fs::write(&jwks, doc.to_string()).unwrap();
    let mut accepted = false;
    for _ in 0..50 {
        if Client::connect_with(&url, &[]).await.is_ok() {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "the rotated JWKS is used without a restart");
}

/// A raw HTTP/1.1 exchange: status, headers (names lowercased) and body.
fn http_exchange(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, HashMap<String, String>, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
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
    (status, headers, body.to_string())
}

/// CORS on the REST API follows `--allowed-origins` (exact and wildcard
/// entries): a preflight from an allowed page is answered, one from another
/// site refused, and responses to an allowed page carry
/// `Access-Control-Allow-Origin` (refusals too, so the page can read why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_on_the_rest_api_follows_allowed_origins() {
    let redis = RedisServer::start();
    let keys = KeyDir::new();
    let gw = gateway(&redis, &keys, &[], None);
    let preflight = |origin: &str| {
        http_exchange(
            gw.port,
            "OPTIONS",
            "/api/v1/publish",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "authorization, content-type",
                ),
            ],
            None,
        )
    };
    for origin in [
        "https://dash.example.com",
        "https://pr-7.preview.example.com",
    ] {
        let (status, headers, body) = preflight(origin);
        assert_eq!(status, 204, "{origin}: {body}");
        assert_eq!(
            headers
                .get("access-control-allow-origin")
                .map(String::as_str),
            Some(origin)
        );
        assert_eq!(headers.get("vary").map(String::as_str), Some("Origin"));
        let methods = &headers["access-control-allow-methods"];
        assert!(
            methods.contains("POST") && methods.contains("GET"),
            "{methods}"
        );
        let allowed = &headers["access-control-allow-headers"];
        assert!(
            allowed.contains("authorization") && allowed.contains("content-type"),
            "{allowed}"
        );
        assert_eq!(
            headers.get("access-control-max-age").map(String::as_str),
            Some("600")
        );
    }
    for origin in ["https://evil.example", "http://dash.example.com"] {
        let (status, headers, body) = preflight(origin);
        assert_eq!(status, 403, "{origin}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "forbidden");
        assert!(
            v["message"].as_str().unwrap().contains("--allowed-origins"),
            "{v}"
        );
        assert!(!headers.contains_key("access-control-allow-origin"));
    }

    let publisher = format!(
        "Bearer {}",
        hs(&claims("publisher", &["websocket:publish"], &["dash:*"]))
    );
    let body = json!({"channel":"dash:cors","data":{"n":1}}).to_string();
    let post = |origin: &str, auth: &str| {
        http_exchange(
            gw.port,
            "POST",
            "/api/v1/publish",
            &[("Origin", origin), ("Authorization", auth)],
            Some(&body),
        )
    };
    let (status, headers, reply) = post("https://dash.example.com", &publisher);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("https://dash.example.com")
    );
    assert_eq!(headers.get("vary").map(String::as_str), Some("Origin"));
    let (status, headers, _) = post("https://dash.example.com", "Bearer not.a.jwt");
    assert_eq!(status, 401);
    assert_eq!(
        headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("https://dash.example.com"),
        "a refusal is readable by the allowed page"
    );
    let (_, headers, _) = post("https://evil.example", &publisher);
    assert!(
        !headers.contains_key("access-control-allow-origin"),
        "no CORS grant for another site"
    );
}

/// Claims accepted by a gateway that enforces no audience or issuer.
fn plain_claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 3600, "permissions": ["websocket:connect"]})
}

fn hmac(alg: Algorithm, secret: &str, sub: &str) -> String {
    sign(
        alg,
        &EncodingKey::from_secret(secret.as_bytes()),
        &plain_claims(sub),
    )
}

/// Opens and closes a WebSocket with `token`; the refusal if there is one.
async fn admits(gw: &Switchboard, token: &str) -> Result<(), Refusal> {
    Client::connect_or_refusal(&gw.ws_url(&format!("/ws?token={token}")), &[])
        .await
        .map(drop)
}

async fn refused_as_invalid(gw: &Switchboard, token: &str) -> bool {
    matches!(admits(gw, token).await, Err(r) if r.status == 401 && r.body["error"] == "invalid_token")
}

/// Two HMAC secrets are active at once (rotation), with HS256, HS384 and
/// HS512; a third secret is refused. Rewriting the secret file while the
/// gateway runs takes effect within `--jwt-reload-interval`, without a
/// restart; a file with three secrets is not taken and the previous keys stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_secrets_rotate_without_a_restart() {
    let redis = RedisServer::start();
    let keys = KeyDir::new();
    let secret = |name: &str| format!("{name}-rotation-secret-0123456789abcdefghijklmnop");
    let (old, current, next, extra) = (secret("old"), secret("cur"), secret("new"), secret("xtr"));
    let file = keys.path("rotating");
    std::fs::write(&file, format!("{old}\n{current}\n")).unwrap();
    let url = redis.url();
    let file_arg = file.display().to_string();
    let log = keys.path("rotation.log");
    let gw = Switchboard::start_with(
        &[
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            &url,
            "--jwt-secret-file",
            &file_arg,
            "--jwt-reload-interval",
            "200ms",
            "--max-connections-per-user",
            "1000",
        ],
        "info",
        Logs::File(std::fs::File::create(&log).unwrap()),
    );
    gw.wait_ready(WAIT);

    for (alg, key) in [
        (Algorithm::HS256, &old),
        (Algorithm::HS256, &current),
        (Algorithm::HS384, &old),
        (Algorithm::HS384, &current),
        (Algorithm::HS512, &old),
        (Algorithm::HS512, &current),
    ] {
        let result = admits(&gw, &hmac(alg, key, "rotating")).await;
        assert!(result.is_ok(), "{alg:?}: {:?}", result.err());
    }
    assert!(
        refused_as_invalid(&gw, &hmac(Algorithm::HS256, &next, "rotating")).await,
        "a secret not in the file"
    );

    // Rotate: retire the old secret, add the next one — no restart.
    std::fs::write(&file, format!("{current}\n{next}\n")).unwrap();
    let next_token = hmac(Algorithm::HS512, &next, "rotating");
    let deadline = Instant::now() + WAIT;
    while admits(&gw, &next_token).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the rewritten secret file was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused_as_invalid(&gw, &hmac(Algorithm::HS256, &old, "rotating")).await,
        "the retired secret"
    );
    assert!(
        admits(&gw, &hmac(Algorithm::HS384, &current, "rotating"))
            .await
            .is_ok()
    );

    // Three secrets: refused, the two active ones stay.
    std::fs::write(&file, format!("{current}\n{next}\n{extra}\n")).unwrap();
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("at most two HMAC secrets")
    {
        assert!(
            Instant::now() < deadline,
            "the third secret was not reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        refused_as_invalid(&gw, &hmac(Algorithm::HS256, &extra, "rotating")).await,
        "a third secret"
    );
    assert!(admits(&gw, &next_token).await.is_ok(), "previous keys kept");
    let logs = std::fs::read_to_string(&log).unwrap();
    for secret in [&old, &current, &next, &extra] {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret leaked into the logs"
        );
    }
}

#[test]
fn gateway_refuses_to_start_without_keys_or_with_a_weak_secret() {
    let redis_url = "redis://127.0.0.1:1";
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "gateway",
            "--redis-url",
            redis_url,
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--jwt-secret-file"));
    let dir = std::env::temp_dir().join(format!("sb-weak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("s"), "short\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "gateway",
            "--redis-url",
            redis_url,
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret-file",
        ])
        .arg(dir.join("s"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32 bytes"));
    let long = |n: u8| format!("secret-{n}-0123456789abcdefghijklmnopqrstuvwxyz");
    std::fs::write(
        dir.join("three"),
        format!("{}\n{}\n{}\n", long(1), long(2), long(3)),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "gateway",
            "--redis-url",
            redis_url,
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret-file",
        ])
        .arg(dir.join("three"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most two HMAC secrets"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn token_command_mints_a_token_the_gateway_accepts() {
    let keys = KeyDir::new();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["token", "--secret-file"])
        .arg(keys.path("secret"))
        .args([
            "--sub",
            "alice",
            "--perm",
            "websocket:connect,websocket:subscribe",
            "--channels",
            "dash:*",
            "--ttl",
            "10m",
            "--aud",
            AUD,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
    validation.set_audience(&[AUD]);
    let data = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &validation,
    )
    .unwrap();
    assert_eq!(data.claims["sub"], "alice");
    assert_eq!(
        data.claims["permissions"],
        json!(["websocket:connect", "websocket:subscribe"])
    );
    assert_eq!(data.claims["channels"], json!(["dash:*"]));
    let ttl = data.claims["exp"].as_u64().unwrap() - now();
    assert!((590..=600).contains(&ttl));

    // A token must name its user: an empty --sub is refused with the reason.
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["token", "--secret-file"])
        .arg(keys.path("secret"))
        .args(["--sub", " ", "--perm", "websocket:connect"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--sub is empty"), "{stderr}");
}

#[test]
fn standalone_refuses_to_listen_beyond_loopback_without_allow_remote() {
    // Refused before it binds anything.
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["standalone", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("loopback") && stderr.contains("--allow-remote"),
        "{stderr}"
    );
    // Its first log line says it runs without authentication, on loopback.
    let log = std::env::temp_dir().join(format!("sb-standalone-{}.log", std::process::id()));
    let file = std::fs::File::create(&log).unwrap();
    let sb = Switchboard::start_with(
        &["standalone", "--listen", "127.0.0.1:0"],
        "info",
        Logs::File(file),
    );
    sb.wait_ready(WAIT);
    drop(sb);
    let text = std::fs::read_to_string(&log).unwrap();
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.contains("authentication disabled") && first.contains("loopback"),
        "{first}"
    );
    let _ = std::fs::remove_file(&log);
}

#[tokio::test]
async fn standalone_accepts_no_auth_and_authenticates_with_a_jwt_key() {
    // `--no-auth` (or SWITCHBOARD_NO_AUTH) confirms the default: no token needed.
    let open = Switchboard::standalone(&["--no-auth"]);
    open.wait_ready(WAIT);
    let mut client = Client::connect(&open.ws_url("/ws")).await;
    let hello = client.recv_json().await;
    assert_eq!(hello["type"], "connection_established");
    assert!(hello.get("user").is_none(), "anonymous: {hello}");
    drop(client);
    drop(open);
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .args(["standalone", "--listen", "127.0.0.1:0"])
        .env("SWITCHBOARD_NO_AUTH", "true")
        .env("SWITCHBOARD_ADMIN_LISTEN", "127.0.0.1:0");
    let (mut child, listening) = common::start_reporting(&mut command, "warn", Logs::Test, WAIT);
    let port = listening.listen.port();
    let deadline = std::time::Instant::now() + WAIT;
    while !matches!(common::http_get(port, "/health/ready"), Ok((200, _))) {
        if std::time::Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            panic!("standalone with SWITCHBOARD_NO_AUTH=true did not become ready");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();

    // --no-auth and a key contradict each other: one clear line.
    let keys = KeyDir::new();
    let secret = keys.path("secret").display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["standalone", "--no-auth", "--jwt-secret-file", &secret])
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--no-auth contradicts"), "{stderr}");

    // With a key, standalone authenticates like a gateway, and may then listen
    // beyond loopback without --allow-remote.
    let sb = Switchboard::start(&[
        "standalone",
        "--listen",
        "0.0.0.0:0",
        "--jwt-secret-file",
        &secret,
        "--jwt-audience",
        AUD,
    ]);
    sb.wait_ready(WAIT);
    let refused = Client::connect_with(&sb.ws_url("/ws"), &[]).await.err();
    assert_eq!(
        refused.map(|(status, body)| (status, body["error"].clone())),
        Some((401, json!("missing_token")))
    );
    let token = hs(&viewer("alice"));
    let mut client = Client::connect(&sb.ws_url(&format!("/ws?token={token}"))).await;
    let hello = client.recv_json().await;
    assert_eq!(hello["user"], "alice", "{hello}");
    let reply = client
        .subscribe(json!({"type": "subscribe", "channel": "federation"}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let reply = client
        .subscribe(json!({"type": "subscribe", "channel": "memory"}))
        .await;
    assert_eq!(
        reply["code"], "forbidden",
        "the token's channels apply: {reply}"
    );
}

/// Readers without a token on the ESCAI and AI Council routes (seeds 003 and
/// 004): what `--anonymous-subscribe` names, read-only, and nothing else — an
/// agent or a request outside the globs is refused, system alerts need a
/// token unless `alerts` is named, acknowledgements hold for the connection
/// only, and a tokenless client cannot claim what needs a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenless_readers_on_the_escai_and_council_routes_read_only_what_is_allowed() {
    let redis = RedisServer::start();
    let keys = KeyDir::new();
    let gw = gateway(
        &redis,
        &keys,
        &["--anonymous-subscribe", "agents:agent_1,council:open-*"],
        None,
    );
    let publish = |channel: &str, data: Value| {
        let body = json!({"channel": channel, "data": data}).to_string();
        let (status, reply) = http_request(
            gw.port,
            "POST",
            "/api/v1/publish",
            &[("X-API-Key", "the-api-key")],
            Some(&body),
        )
        .unwrap();
        assert_eq!(status, 200, "{reply}");
    };

    // ESCAI: the allowed agent, live.
    let mut escai = Client::connect(&gw.ws_url("/ws/monitor/anon")).await;
    assert_eq!(escai.recv_json().await["type"], "connection_established");
    let subscribe = |agent: Option<&str>, kind: &str| {
        let mut data = json!({"type": kind});
        if let Some(a) = agent {
            data["agent_id"] = a.into();
        }
        json!({"type": "subscribe", "data": data})
    };
    escai
        .send_json(&subscribe(Some("agent_1"), "epistemic_updates"))
        .await;
    let answer = escai
        .recv_until(WAIT, |m| {
            m["type"] == "subscription_confirmed" || m["type"] == "error"
        })
        .await;
    assert_eq!(answer["type"], "subscription_confirmed", "{answer}");
    publish(
        "agents:agent_1",
        json!({"type": "epistemic_update", "data": {"n": 1}}),
    );
    let event = escai
        .recv_until(WAIT, |m| m["type"] == "epistemic_update")
        .await;
    assert_eq!(event["data"]["n"], 1, "{event}");
    // Another agent, and the system alerts, are not among the globs.
    escai
        .send_json(&subscribe(Some("agent_2"), "epistemic_updates"))
        .await;
    let refused = escai.recv_until(WAIT, |m| m["type"] == "error").await;
    assert_eq!(refused["code"], "AGENT_ACCESS_DENIED", "{refused}");
    escai.send_json(&subscribe(None, "system_alerts")).await;
    let refused = escai.recv_until(WAIT, |m| m["type"] == "error").await;
    assert_eq!(refused["code"], "PERMISSION_DENIED", "{refused}");

    // AI Council: a request outside the globs is refused before the upgrade;
    // an allowed one is read, and its acknowledgements hold for this
    // connection only (there is no user to keep them for).
    let outside = Client::connect_or_refusal(&gw.ws_url("/api/v1/ws/secret-1"), &[]).await;
    assert_eq!(outside.err().map(|r| r.status), Some(401));
    publish(
        "council:open-1",
        json!({"type": "progress", "data": {"n": 1}}),
    );
    let mut council = Client::connect(&gw.ws_url("/api/v1/ws/open-1")).await;
    assert_eq!(council.recv_json().await["type"], "connection_established");
    let first = council.recv_until(WAIT, |m| m["type"] == "progress").await;
    assert_eq!(first["data"]["n"], 1, "{first}");
    let id = first["message_id"].as_u64().expect("a message id");
    council
        .send_json(&json!({"type": "ack", "message_id": id}))
        .await;
    drop(council);
    let mut again = Client::connect(&gw.ws_url("/api/v1/ws/open-1")).await;
    assert_eq!(again.recv_json().await["type"], "connection_established");
    let replayed = again.recv_until(WAIT, |m| m["type"] == "progress").await;
    assert_eq!(
        replayed["message_id"], id,
        "a tokenless client's acknowledgement is not kept across connections: {replayed}"
    );
    // Publishing still needs a key or a token.
    let body = json!({"channel": "council:open-1", "data": {"n": 2}}).to_string();
    let (status, _) = http_request(gw.port, "POST", "/api/v1/publish", &[], Some(&body)).unwrap();
    assert_eq!(status, 401);
}
