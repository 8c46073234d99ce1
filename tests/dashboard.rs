//! The dashboard page in a real browser (Debian's Chromium through Playwright,
//! see `tests/browser/`): live figures and charts from real sources, a failing
//! source flagged, a window too small for the charts (nothing drawn, no error,
//! everything drawn once there is room), reconnecting and catching up after
//! the gateway restarts, sign-in with a token, sections marked simulated by a
//! simulating collector, every replica's figures through one, a `--no-auth`
//! gateway opening the page directly, and no console errors but the expected
//! ones (refused connections while the gateway is down, refused tokens) — a
//! missing file always fails. Saves the page's screenshot to
//! `target/tmp/dashboard.png` (and to `docs/dashboard.png` with
//! `SWITCHBOARD_UPDATE_SCREENSHOT=1`).

mod browser;
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use browser::{Browser, ConsoleMessage};
use common::{Client, RedisServer, Switchboard};
use serde_json::json;

/// One browser at a time: the machine has two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SECRET: &str = "dashboard-test-secret-0123456789-abcdefghijklmnop";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sb-dash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_switchboard")
}

fn mint(secret_file: &Path, sub: &str, perms: &[&str], channels: &[&str]) -> String {
    let spec = switchboard::auth::mint::TokenSpec {
        roles: Vec::new(),
        subject: sub.into(),
        permissions: perms.iter().map(|s| s.to_string()).collect(),
        channels: channels.iter().map(|s| s.to_string()).collect(),
        ttl: Duration::from_secs(3600),
        audience: None,
        issuer: None,
        key_id: None,
    };
    switchboard::auth::mint::mint(&spec, jsonwebtoken::Algorithm::HS256, secret_file)
        .expect("mint a token")
}

/// Errors a test expects the browser to log; any other is a failure.
#[derive(Debug, Default, Clone, Copy)]
struct Expect {
    /// The gateway was down: Chromium's own reports of the connections it
    /// refused (the WebSocket, and the page's `GET api/v1/whoami` asking why).
    /// No page can stop the browser from logging them.
    gateway_down: bool,
    /// Tokens were refused: `GET api/v1/whoami` answered 401 (the sign-in form
    /// shows the gateway's reason).
    refused_tokens: bool,
}

/// Whether a console message is the browser reporting a connection to the
/// gateway that was refused while it was down.
fn refused_connection(m: &ConsoleMessage) -> bool {
    let websocket =
        m.text.starts_with("WebSocket connection to '") && m.text.contains("/ws' failed");
    let whoami = m.text.starts_with("Failed to load resource") && m.url.ends_with("/api/v1/whoami");
    (websocket || whoami) && m.text.contains("net::ERR_CONNECTION_REFUSED")
}

/// Console errors and uncaught exceptions, except those `expect` allows. A
/// missing asset, a failed fetch of anything else or a refusal other than a
/// closed port is always reported.
fn page_errors(console: &[ConsoleMessage], expect: Expect) -> Vec<String> {
    console
        .iter()
        .filter(|m| m.kind == "error" || m.kind == "pageerror")
        .filter(|m| !(expect.gateway_down && refused_connection(m)))
        .filter(|m| {
            !(expect.refused_tokens
                && m.url.ends_with("/api/v1/whoami")
                && m.text.starts_with(
                    "Failed to load resource: the server responded with a status of 401",
                ))
        })
        .map(|m| format!("{}: {} ({})", m.kind, m.text, m.url))
        .collect()
}

async fn hset(redis: &RedisServer, key: &str, fields: &[(&str, String)]) {
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("HSET")
        .arg(key)
        .arg(fields)
        .query_async(&mut conn)
        .await
        .expect("HSET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_live_sources_flags_a_failure_and_reconnects() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let dir = temp_dir("standalone");
    let status = std::process::Command::new(binary())
        .arg("demo-data")
        .arg(&dir)
        .args(["--redis-url", &redis.url()])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run demo-data");
    assert!(status.success());
    let (reasoning, ark) = (dir.join("reasoning_logs.db"), dir.join("ark.db"));
    let redis_url = redis.url();
    let args = |listen: &str| -> Vec<String> {
        [
            "standalone",
            "--listen",
            listen,
            "--reasoning-db",
            reasoning.to_str().unwrap(),
            "--ark-db",
            ark.to_str().unwrap(),
            "--federation-redis-url",
            &redis_url,
            "--peer-staleness",
            "10m",
            "--collect-interval-min",
            "500ms",
            "--collect-interval-max",
            "700ms",
            "--stats-interval",
            "1s",
        ]
        .map(String::from)
        .to_vec()
    };
    let start = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Switchboard::start(&args)
    };
    let mut gateway = start(&args("127.0.0.1:0"));
    // It comes back on the same port (the page's address) later.
    let again = args(&format!("127.0.0.1:{}", gateway.port));
    let url = gateway.http_url("/");

    let mut b = tokio::task::block_in_place(Browser::start);
    let long = Duration::from_secs(20);
    tokio::task::block_in_place(|| {
        b.open(&url);
        b.wait_attr("#conn", "data-state", "connected", long);
        assert!(
            b.visible("#dashboard") && !b.visible("#signin"),
            "--no-auth opens directly"
        );

        // No room for the charts (a tiny or minimised window): snapshots keep
        // coming, nothing is drawn into an empty box (ECharts' graph throws
        // there: the page error CI once saw), and what arrived meanwhile is
        // drawn once there is room again.
        b.cmd(json!({"cmd": "viewport", "width": 1, "height": 1}));
        let points = b.number("#chart-health", "data-points");
        let held = b.wait_for("points while the window is tiny", long, |b| {
            let now = b.number("#chart-health", "data-points");
            (now >= points + 3.0).then_some(now)
        });
        let drawn = b.number("#chart-health", "data-drawn");
        assert!(
            drawn.is_nan() || drawn < held,
            "nothing is drawn without room: {drawn} drawn of {held}"
        );
        b.cmd(json!({"cmd": "viewport", "width": 1400, "height": 1000}));
        b.wait_for("the held points drawn", long, |b| {
            (b.number("#chart-health", "data-drawn") >= held).then_some(())
        });
        b.wait_attr("#chart-mesh", "data-drawn", "5", long);

        // Peers come from the Redis hashes demo-data wrote; charts grow.
        let peers = b.wait_for("the peer count", long, |b| {
            let n = b.number("#kpi-peers", "data-value");
            n.is_finite().then_some(n)
        });
        assert_eq!(peers, 5.0, "demo-data writes five peers");
        b.wait_attr(".source[data-section='peers']", "data-source", "live", long);
        b.wait_attr(".source[data-section='ark']", "data-source", "live", long);
        b.wait_attr(
            ".source[data-section='reasoning']",
            "data-source",
            "live",
            long,
        );
        let points = b.number("#chart-health", "data-points");
        b.wait_for("new points on the health chart", long, |b| {
            (b.number("#chart-health", "data-points") >= points + 3.0).then_some(())
        });
        let rates = b.number("#chart-rates", "data-points");
        b.wait_for("new points on the rates chart", long, |b| {
            (b.number("#chart-rates", "data-points") >= rates + 2.0).then_some(())
        });
    });

    // A new peer joins: the count changes; it goes offline: the health figure changes.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let peer = |status: &str| {
        vec![
            ("hostname", "ark-test.local".to_string()),
            ("trust_tier", "trusted".to_string()),
            ("status", status.to_string()),
            ("latency", "33".to_string()),
            ("last_seen", now.to_string()),
        ]
    };
    hset(&redis, "peer:ark-test", &peer("online")).await;
    let online_health = tokio::task::block_in_place(|| {
        b.wait_for("six peers", long, |b| {
            (b.number("#kpi-peers", "data-value") == 6.0).then_some(())
        });
        b.number("#kpi-health", "data-value")
    });
    hset(&redis, "peer:ark-test", &peer("offline")).await;
    tokio::task::block_in_place(|| {
        let health = b.wait_for("the health figure to change", long, |b| {
            let h = b.number("#kpi-health", "data-value");
            (h.is_finite() && h != online_health).then_some(h)
        });
        assert!(health < online_health, "{health} < {online_health}");
        assert!(
            b.text("#kpi-peers-sub")
                .unwrap_or_default()
                .contains("offline")
        );

        // Every replica's figures: this one reports on sys:stats.
        b.wait_attr("#kpi-replicas", "data-value", "1", long);
        b.wait_for("points on the operations chart", long, |b| {
            (b.number("#chart-ops-conns", "data-points") >= 2.0).then_some(())
        });
        b.wait_attr("#operations", "data-state", "live", long);
        // Messages in are counted on the in-memory engine too (the page's own
        // subscriptions receive the collector's snapshots).
        let msgs = b.wait_for("an inbound rate", long, |b| {
            b.text("#kpi-msgs").filter(|t| !t.starts_with('–'))
        });
        assert!(msgs.contains(" → "), "{msgs}");
        let rows = b.cmd(json!({"cmd": "count", "selector": "#replicas-table tbody tr"}));
        assert_eq!(rows, 1);
        let row = b.text("#replicas-table tbody tr").unwrap_or_default();
        assert!(
            !row.contains("n/a"),
            "every engine reports messages in: {row}"
        );

        // Tooltips render under the CSP (no inline style, no error): each
        // hover is followed by two painted frames, so its tooltip was drawn
        // (and any error thrown) before the next.
        for chart in ["#chart-health", "#chart-mesh", "#chart-deltas"] {
            b.cmd(json!({"cmd": "hover", "selector": chart}));
            b.frames_painted();
        }

        let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
        b.cmd(json!({"cmd": "hover", "selector": ".brand"}));
        b.screenshot(&shot);
        if std::env::var("SWITCHBOARD_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
            let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
            std::fs::copy(&shot, docs).expect("copy the screenshot to docs/");
        }
        let errors = page_errors(&b.console(), Expect::default());
        assert!(errors.is_empty(), "console errors: {errors:#?}");
    });

    // A source fails: its section is flagged stale with the error; the others stay live.
    std::fs::remove_file(&ark).expect("remove ark.db");
    tokio::task::block_in_place(|| {
        b.wait_attr(".source[data-section='ark']", "data-source", "stale", long);
        b.wait_attr(
            "#memory .panel[data-section='ark']",
            "data-stale",
            "true",
            long,
        );
        let note = b
            .text("#memory .panel[data-section='ark'] .stale-note")
            .unwrap_or_default();
        assert!(note.contains("ark is stale"), "{note}");
        assert!(
            note.contains("ark.db"),
            "the note names the failing file: {note}"
        );
        assert_eq!(
            b.attr(".source[data-section='reasoning']", "data-source")
                .as_deref(),
            Some("live")
        );
        assert_eq!(
            b.attr("#memory .panel[data-section='reasoning']", "data-stale")
                .as_deref(),
            Some("false")
        );
    });

    // The gateway dies: the page says so at once and keeps trying.
    gateway.signal("KILL");
    assert!(gateway.wait_exit(Duration::from_secs(5)).is_some());
    tokio::task::block_in_place(|| {
        b.wait_attr("#conn", "data-state", "reconnecting", long);
        b.wait_attr("#federation", "data-state", "frozen", long);
        assert!(b.visible("#banner"), "a banner says the page is not live");
        let banner = b.text("#banner").unwrap_or_default();
        assert!(banner.contains("Not live"), "{banner}");
    });
    let version_before = tokio::task::block_in_place(|| b.number("#federation", "data-offset"));
    // It keeps trying: a first attempt failed, a second is coming.
    tokio::task::block_in_place(|| {
        b.wait_for("a second reconnect attempt", long, |b| {
            let text = b.text("#conn-text").unwrap_or_default();
            let attempt: u32 = text
                .split("(attempt ")
                .nth(1)?
                .trim_end_matches(')')
                .parse()
                .ok()?;
            (attempt >= 2).then_some(())
        });
    });

    // It comes back (a new in-memory engine: new epochs): the page reconnects,
    // starts the channels over from the new snapshots and is live again.
    let _gateway = start(&again);
    tokio::task::block_in_place(|| {
        b.wait_attr("#conn", "data-state", "connected", Duration::from_secs(40));
        b.wait_attr("#federation", "data-state", "live", long);
        assert!(!b.visible("#banner"));
        b.wait_for("six peers again", long, |b| {
            (b.number("#kpi-peers", "data-value") == 6.0).then_some(())
        });
        let points = b.number("#chart-health", "data-points");
        b.wait_for("the health chart moving again", long, |b| {
            (b.number("#chart-health", "data-points") > points).then_some(())
        });
        assert!(b.number("#federation", "data-offset").is_finite());
        assert!(version_before.is_finite());
        let errors = page_errors(
            &b.console(),
            Expect {
                gateway_down: true,
                ..Expect::default()
            },
        );
        assert!(errors.is_empty(), "console errors: {errors:#?}");
    });
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_signs_in_resumes_without_a_gap_and_sees_every_replica() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let dir = temp_dir("cluster");
    let secret = dir.join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let secret_arg = secret.to_str().unwrap().to_string();
    let redis_url = redis.url();
    let gateway_args = |listen: &str, name: &str| -> Vec<String> {
        [
            "gateway",
            "--listen",
            listen,
            "--redis-url",
            &redis_url,
            "--jwt-secret-file",
            &secret_arg,
            "--replica-id",
            name,
            "--stats-interval",
            "1s",
            // The page is the gateway's own origin: allowed whatever the list says.
            "--allowed-origins",
            "https://dash.example.com",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let spawn = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let gw = Switchboard::start(&args);
        gw.wait_ready(Duration::from_secs(10));
        gw
    };
    let mut gw_a = spawn(&gateway_args("127.0.0.1:0", "gw-a"));
    // gw-a comes back on its port (the page's address) later.
    let args_a = gateway_args(&format!("127.0.0.1:{}", gw_a.port), "gw-a");
    let gw_b = spawn(&gateway_args("127.0.0.1:0", "gw-b"));
    let mut collector = Switchboard::start(&[
        "collector",
        "--redis-url",
        &redis_url,
        "--listen",
        "127.0.0.1:0",
        "--simulate",
        "always",
        "--collect-interval-min",
        "400ms",
        "--collect-interval-max",
        "500ms",
        "--replica-id",
        "c1",
    ]);
    let admin = mint(&secret, "ops", &["websocket:admin"], &[]);
    let viewer = mint(
        &secret,
        "viewer",
        &["websocket:connect", "websocket:subscribe"],
        &["federation", "memory"],
    );
    let long = Duration::from_secs(20);
    let mut b = tokio::task::block_in_place(Browser::start);

    // Without a token the page asks for one.
    tokio::task::block_in_place(|| {
        b.open(&gw_a.http_url("/"));
        b.wait_for("the sign-in form", long, |b| {
            b.visible("#signin").then_some(())
        });
        assert!(!b.visible("#dashboard"));
        // A bad token is refused with the gateway's reason.
        b.cmd(json!({"cmd": "fill", "selector": "#signin-token", "value": "not.a.token"}));
        b.cmd(json!({"cmd": "click", "selector": "#signin-form button"}));
        b.wait_for("the refusal", long, |b| {
            b.text("#signin-error")
                .filter(|t| t.contains("refused"))
                .map(|_| ())
        });
    });

    // `?token=` signs in, leaves the address bar, and is kept for the tab only.
    tokio::task::block_in_place(|| {
        b.open(&gw_a.http_url(&format!("/?token={admin}")));
        b.wait_attr("#conn", "data-state", "connected", long);
        let url = b.cmd(json!({"cmd": "url"}));
        assert!(
            !url.as_str().unwrap_or_default().contains("token="),
            "{url}"
        );
        let kept = b.cmd(json!({"cmd": "session_storage", "key": "switchboard.token"}));
        assert_eq!(kept.as_str(), Some(admin.as_str()));
        assert_eq!(b.attr("#conn", "data-replica").as_deref(), Some("gw-a"));
        // Both replicas' reports arrive through gw-a.
        b.wait_attr("#kpi-replicas", "data-value", "2", long);
        let rows = b.cmd(json!({"cmd": "count", "selector": "#replicas-table tbody tr"}));
        assert_eq!(rows, 2);
        let table = b.text("#replicas-table").unwrap_or_default();
        assert!(table.contains("gw-a") && table.contains("gw-b"), "{table}");
        assert_eq!(b.text("#kpi-redis").as_deref(), Some("ok"));
        b.wait_for("federation history", long, |b| {
            (b.number("#chart-health", "data-points") >= 4.0).then_some(())
        });
        // `--simulate always`: every section is marked simulated, in the
        // section headers and on each panel.
        for section in ["peers", "sync_events", "reasoning", "ark"] {
            let badge = format!(".source[data-section='{section}']");
            b.wait_attr(&badge, "data-source", "simulated", long);
            assert_eq!(
                b.text(&badge).as_deref(),
                Some(format!("{section}: simulated").as_str())
            );
        }
        for panel in [
            "#federation .panel[data-section='peers']",
            "#federation .panel[data-section='sync_events']",
            "#memory .panel[data-section='reasoning']",
            "#memory .panel[data-section='ark']",
        ] {
            assert_eq!(
                b.attr(panel, "data-source").as_deref(),
                Some("simulated"),
                "{panel}"
            );
            assert_eq!(
                b.text(&format!("{panel} > h3 > .badge")).as_deref(),
                Some("simulated"),
                "{panel}"
            );
            assert_eq!(b.attr(panel, "data-stale").as_deref(), Some("false"));
        }
    });

    // A busy tab reads several seconds of frames in one go: a burst, not a
    // flood; the outage that follows is still resumed, not started over.
    tokio::task::block_in_place(|| {
        b.cmd(json!({"cmd": "busy", "ms": 8000}));
    });

    // gw-a dies; the collector keeps publishing, then stops: the channel's
    // newest offset is then fixed.
    let offset_before = tokio::task::block_in_place(|| b.number("#federation", "data-offset"));
    gw_a.signal("KILL");
    assert!(gw_a.wait_exit(Duration::from_secs(5)).is_some());
    tokio::task::block_in_place(|| b.wait_attr("#conn", "data-state", "reconnecting", long));
    // The collector publishes meanwhile: four snapshots more than the page had.
    let mut conn = redis.connection().await;
    let deadline = std::time::Instant::now() + long;
    loop {
        let stored: Option<f64> = redis::cmd("HGET")
            .arg("switchboard:{federation}:meta")
            .arg("o")
            .query_async(&mut conn)
            .await
            .expect("HGET the channel's offset");
        if stored.is_some_and(|o| o >= offset_before + 4.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the collector did not publish while gw-a was down: {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    collector.signal("TERM");
    assert!(collector.wait_exit(Duration::from_secs(15)).is_some());
    let mut probe = Client::connect(&format!("{}?token={admin}", gw_b.ws_url("/ws"))).await;
    probe.recv_json().await;
    let subscribed = probe
        .subscribe(json!({"type": "subscribe", "channel": "federation"}))
        .await;
    let newest = subscribed["offset"].as_f64().expect("offset");
    assert!(
        newest >= offset_before + 4.0,
        "the collector published meanwhile"
    );

    // gw-a returns on its port: the page resumes with `since` and replays
    // exactly what it missed: one chart point per snapshot from the oldest it
    // holds to the newest, none missing, none twice.
    let _gw_a = spawn(&args_a);
    tokio::task::block_in_place(|| {
        b.wait_attr("#conn", "data-state", "connected", Duration::from_secs(40));
        b.wait_attr("#federation", "data-offset", &format!("{newest}"), long);
        let first = b.number("#federation", "data-first-offset");
        if first > offset_before {
            let said: Vec<String> = b.console().into_iter().map(|m| m.text).collect();
            panic!("the page dropped what it held ({first} > {offset_before}): {said:#?}");
        }
        let expected = newest - first + 1.0;
        b.wait_for("every snapshot on the chart, once", long, |b| {
            (b.number("#chart-health", "data-points") == expected).then_some(())
        });
        let console = b.console();
        assert!(
            !console.iter().any(|m| m.text.contains("starts over")),
            "the resume was recovered, not restarted: {console:?}"
        );
        let errors = page_errors(
            &console,
            Expect {
                gateway_down: true,
                refused_tokens: true,
            },
        );
        assert!(errors.is_empty(), "console errors: {errors:#?}");
    });

    // A token without websocket:admin: the page says the operations view needs it.
    tokio::task::block_in_place(|| {
        b.cmd(json!({"cmd": "click", "selector": "#signout"}));
        b.wait_for("the sign-in form", long, |b| {
            b.visible("#signin").then_some(())
        });
        b.cmd(json!({"cmd": "fill", "selector": "#signin-token", "value": viewer}));
        b.cmd(json!({"cmd": "click", "selector": "#signin-form button"}));
        b.wait_attr("#conn", "data-state", "connected", long);
        assert!(b.visible("#dashboard") && !b.visible("#signin"));
        b.wait_for("the peer count from the snapshot", long, |b| {
            b.number("#kpi-peers", "data-value")
                .is_finite()
                .then_some(())
        });
        b.wait_for("the operations notice", long, |b| {
            b.visible("#operations-denied").then_some(())
        });
        assert!(!b.visible("#operations-body"));
        assert_eq!(
            b.attr("#operations", "data-state").as_deref(),
            Some("denied")
        );
        let errors = page_errors(
            &b.console(),
            Expect {
                gateway_down: true,
                refused_tokens: true,
            },
        );
        assert!(errors.is_empty(), "console errors: {errors:#?}");
    });
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_auth_opens_the_page_directly() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let gateway = Switchboard::start(&[
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        &redis_url,
        "--no-auth",
        "--replica-id",
        "open-gw",
        "--stats-interval",
        "1s",
    ]);
    gateway.wait_ready(Duration::from_secs(10));
    let _collector = Switchboard::start(&[
        "collector",
        "--redis-url",
        &redis_url,
        "--listen",
        "127.0.0.1:0",
        "--simulate",
        "always",
        "--collect-interval-min",
        "400ms",
        "--collect-interval-max",
        "500ms",
        "--replica-id",
        "c1",
    ]);
    let long = Duration::from_secs(20);
    let mut b = tokio::task::block_in_place(Browser::start);
    tokio::task::block_in_place(|| {
        b.open(&gateway.http_url("/"));
        b.wait_attr("#conn", "data-state", "connected", long);
        assert!(
            b.visible("#dashboard") && !b.visible("#signin"),
            "no sign-in with --no-auth"
        );
        assert_eq!(b.text("#who-user").as_deref(), Some("no authentication"));
        assert!(!b.visible("#signout"), "nothing to sign out of");
        assert_eq!(b.attr("#conn", "data-replica").as_deref(), Some("open-gw"));
        let peers = b.wait_for("the peer count", long, |b| {
            let n = b.number("#kpi-peers", "data-value");
            n.is_finite().then_some(n)
        });
        assert!(peers >= 1.0, "the simulated mesh has peers: {peers}");
        b.wait_attr("#federation", "data-state", "live", long);
        b.wait_attr("#memory", "data-state", "live", long);
        b.wait_for("ingestion figures", long, |b| {
            b.number("#kpi-ingestion", "data-value")
                .is_finite()
                .then_some(())
        });
        // Without authentication everyone may see the operations view.
        b.wait_attr("#kpi-replicas", "data-value", "1", long);
        // The section's state follows once a second (the page's clock tick),
        // the figures on the next frame: the state may lag the first report.
        b.wait_attr("#operations", "data-state", "live", long);
        assert!(!b.visible("#operations-denied"));
        assert_eq!(b.text("#kpi-redis").as_deref(), Some("ok"));
        let errors = page_errors(&b.console(), Expect::default());
        assert!(errors.is_empty(), "console errors: {errors:#?}");

        // A missing file is an error the checks above would catch, even where
        // refused connections are expected.
        let loaded = b.cmd(json!({"cmd": "load_script", "src": "assets/missing.js"}));
        assert_eq!(loaded, false, "there is no assets/missing.js");
        let errors = page_errors(
            &b.console(),
            Expect {
                gateway_down: true,
                refused_tokens: true,
            },
        );
        assert!(
            errors.len() == 1
                && errors[0].contains("404")
                && errors[0].contains("/assets/missing.js"),
            "{errors:#?}"
        );
    });
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_readers_see_the_allowed_dashboards_without_signing_in() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let dir = temp_dir("anonymous");
    let secret = dir.join("jwt.secret");
    std::fs::write(&secret, "anonymous-dashboard-secret-0123456789abcdef\n").unwrap();
    let secret_path = secret.display().to_string();
    let gateway = Switchboard::start(&[
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        &redis_url,
        "--jwt-secret-file",
        &secret_path,
        "--anonymous-subscribe",
        "federation,memory",
        "--replica-id",
        "anon-gw",
        "--stats-interval",
        "1s",
    ]);
    gateway.wait_ready(Duration::from_secs(10));
    let _collector = Switchboard::start(&[
        "collector",
        "--redis-url",
        &redis_url,
        "--listen",
        "127.0.0.1:0",
        "--simulate",
        "always",
        "--collect-interval-min",
        "400ms",
        "--collect-interval-max",
        "500ms",
    ]);
    let long = Duration::from_secs(20);
    let mut b = tokio::task::block_in_place(Browser::start);
    tokio::task::block_in_place(|| {
        b.open(&gateway.http_url("/"));
        b.wait_attr("#conn", "data-state", "connected", long);
        assert!(
            b.visible("#dashboard") && !b.visible("#signin"),
            "no sign-in prompt for the channels allowed without a token"
        );
        assert_eq!(b.text("#who-user").as_deref(), Some("no token (read-only)"));
        assert_eq!(b.attr("#conn", "data-auth").as_deref(), Some("anonymous"));
        assert_eq!(b.text("#signout").as_deref(), Some("Sign in"));
        b.wait_attr("#federation", "data-state", "live", long);
        b.wait_attr("#memory", "data-state", "live", long);
        // The operations view still needs an admin token.
        b.wait_for("the operations view refused", long, |b| {
            b.visible("#operations-denied").then_some(())
        });
        let errors = page_errors(&b.console(), Expect::default());
        assert!(errors.is_empty(), "console errors: {errors:#?}");

        // Signing in with an admin token adds the operations view.
        let admin = mint(&secret, "root", &["websocket:admin"], &[]);
        b.cmd(json!({"cmd": "click", "selector": "#signout"}));
        b.wait_for("the sign-in form", long, |b| {
            b.visible("#signin").then_some(())
        });
        b.cmd(json!({"cmd": "fill", "selector": "#signin-token", "value": admin}));
        b.cmd(json!({"cmd": "click", "selector": "#signin-form button"}));
        b.wait_attr("#conn", "data-state", "connected", long);
        assert_eq!(b.attr("#conn", "data-auth").as_deref(), Some("token"));
        b.wait_attr("#operations", "data-state", "live", long);
    });
    // The operations view counts connections without a token.
    let _reader = common::Client::connect(&gateway.ws_url("/ws/federation")).await;
    tokio::task::block_in_place(|| {
        b.wait_for("the anonymous reader counted", long, |b| {
            b.text("#kpi-subscriptions")
                .filter(|t| t.contains("1 without a token"))
                .map(|_| ())
        });
    });
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}
