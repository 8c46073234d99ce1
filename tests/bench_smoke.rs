//! Smoke test of the load generator (`switchboard bench`): a few hundred real
//! clients for a few seconds against a real gateway on a private redis-server.
//! It checks the report's structure and that nothing was lost or duplicated;
//! it never asserts timings (those belong in BENCHMARKS.md).

mod common;

use std::process::Command;

use common::{RedisServer, Switchboard};
use serde_json::Value;

/// Runs `switchboard bench` with `args`; returns its JSON report.
fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .env("SWITCHBOARD_LOG_LEVEL", "warn")
        .output()
        .expect("run switchboard bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bench JSON: {e}\n{stdout}"))
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} missing or not a count in {v:#}"))
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing or not a number in {v:#}"))
}

fn assert_complete(r: &Value, clients: u64) {
    assert_eq!(u(r, "/connect/connected"), clients, "{r:#}");
    assert_eq!(u(r, "/connect/failed"), 0, "{r:#}");
    let expected = u(r, "/delivery/expected");
    assert!(expected > 0, "{r:#}");
    assert_eq!(u(r, "/delivery/delivered"), expected, "{r:#}");
    assert_eq!(u(r, "/delivery/lost"), 0, "{r:#}");
    assert_eq!(u(r, "/delivery/duplicated"), 0, "{r:#}");
    assert_eq!(u(r, "/delivery/unexpected"), 0, "{r:#}");
    assert!(
        r["delivery"]["ended_early"].as_object().unwrap().is_empty(),
        "{r:#}"
    );
    // Every measured message reached every client once.
    assert_eq!(
        u(r, "/delivery/latency_ms/count"),
        u(r, "/publish/messages") * clients / u(r, "/setup/channels"),
        "{r:#}"
    );
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(f(r, &format!("/delivery/latency_ms/{key}")) > 0.0, "{r:#}");
    }
    assert!(f(r, "/delivery/deliveries_per_s") > 0.0, "{r:#}");
}

#[test]
fn native_clients_over_two_channels_receive_every_offset_once() {
    let redis = RedisServer::start();
    let gw = Switchboard::gateway(&redis, &["--max-connections", "1000"]);
    let pid = gw.pid().to_string();
    let r = bench(&[
        "--url",
        &gw.ws_url(""),
        "--redis-url",
        &redis.url(),
        "--clients",
        "300",
        "--channels",
        "2",
        "--rate",
        "40",
        "--messages",
        "60",
        "--warmup",
        "0.5s",
        "--settle",
        "200ms",
        "--server-pid",
        &pid,
        "--label",
        "smoke",
    ]);
    assert_eq!(r["tool"], "switchboard bench");
    assert_eq!(r["label"], "smoke");
    assert_eq!(r["setup"]["route"], "native");
    assert_eq!(r["setup"]["loss_basis"], "offset");
    assert_eq!(u(&r, "/publish/messages"), 60);
    assert_eq!(u(&r, "/publish/warmup_messages"), 20);
    assert_eq!(u(&r, "/publish/errors"), 0);
    assert_complete(&r, 300);
    // Warmup messages are delivered (and checked for loss) but not measured.
    assert_eq!(u(&r, "/delivery/expected"), 300 * 80 / 2);
    let server = &r["servers"][0];
    assert_eq!(server["pid"], gw.pid());
    assert!(f(server, "/end/rss_kb") > 0.0 && f(server, "/end/hwm_kb") > 0.0);
    assert!(f(&r, "/server_total/cpu_s_run") >= 0.0);
    assert!(f(&r, "/connect/per_second") > 0.0);
    assert_eq!(u(&r, "/client/processes"), 1);
}

#[test]
fn relay_clients_in_two_worker_processes_with_plain_publishes() {
    let redis = RedisServer::start();
    let gw = Switchboard::gateway(&redis, &["--max-connections", "1000"]);
    let r = bench(&[
        "--url",
        &gw.ws_url(""),
        "--redis-url",
        &redis.url(),
        "--route",
        "relay",
        "--publisher",
        "plain",
        "--clients",
        "200",
        "--rate",
        "50",
        "--duration",
        "1s",
        "--workers",
        "2",
        "--src-ips",
        "127.0.0.1-127.0.0.4",
        "--settle",
        "200ms",
    ]);
    assert_eq!(r["setup"]["loss_basis"], "seq");
    assert_eq!(u(&r, "/setup/source_addresses"), 4);
    assert_eq!(u(&r, "/client/processes"), 3);
    assert_eq!(u(&r, "/publish/messages"), 50);
    assert_complete(&r, 200);
}

#[test]
fn idle_clients_report_memory_per_connection() {
    let redis = RedisServer::start();
    let gw = Switchboard::gateway(&redis, &["--ping-interval", "1s"]);
    let pid = gw.pid().to_string();
    let r = bench(&[
        "--url",
        &gw.ws_url(""),
        "--redis-url",
        &redis.url(),
        "--clients",
        "200",
        "--rate",
        "0",
        "--duration",
        "2500ms",
        "--settle",
        "300ms",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(u(&r, "/connect/connected"), 200);
    assert!(r["publish"].is_null());
    assert_eq!(u(&r, "/delivery/expected"), 0);
    // Pings were answered: nobody was closed for a missing pong.
    assert!(
        r["delivery"]["ended_early"].as_object().unwrap().is_empty(),
        "{r:#}"
    );
    assert!(f(&r, "/server_total/rss_connected_kb") > 0.0);
    assert!(r["server_total"]["rss_per_conn_kb"].is_number());
    assert!(f(&r, "/server_total/cpu_ms_per_conn_per_min") >= 0.0);
}

#[test]
fn bad_input_fails_with_a_clear_message() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("bench")
            .args(args)
            .output()
            .expect("run switchboard bench");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(run(&["--url", "https://127.0.0.1:1"]).contains("only ws:// (or http://) URLs"));
    // Flags are read from SWITCHBOARD_<FLAG> too (here SWITCHBOARD_URL, as tail's).
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("bench")
        .env("SWITCHBOARD_URL", "wss://127.0.0.1:1")
        .output()
        .expect("run switchboard bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wss://127.0.0.1:1"), "{stderr}");
    assert!(run(&["--clients", "2", "--channels", "3"]).contains("--channels"));
    assert!(run(&["--src-ips", "127.0.0.9-127.0.0.1"]).contains("--src-ips"));
    // More sockets than one process may open: told to use more worker processes.
    assert!(run(&["--clients", "10000000", "--workers", "1"]).contains("--workers"));
    // Nothing listens there: every client fails, and the error says where to look.
    let redis = RedisServer::start();
    let nothing = common::closed_port();
    let err = run(&[
        "--url",
        &format!("ws://127.0.0.1:{}", nothing.port),
        "--redis-url",
        &redis.url(),
        "--clients",
        "5",
        "--connect-timeout",
        "2s",
    ]);
    assert!(err.contains("no client could connect"), "{err}");
    let err = run(&["--redis-url", "redis://127.0.0.1:1", "--clients", "1"]);
    assert!(err.contains("cannot reach Redis"), "{err}");
}
