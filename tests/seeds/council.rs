//! AI Council (seed 004): the seed's frontend snippet, run as written in
//! headless Chromium behind a load balancer over two replicas, its
//! `broadcast_progress` events as producers publish them, acknowledgements,
//! a replica killed under the client, the owner check.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::browser::Browser;
use crate::common::{self, Client, Nginx, http_request};
use crate::{API_KEY, Fleet, WAIT, now, publish, token};

const CHANNEL: &str = "council:req-123";

/// The seed's frontend page (`tests/seeds/council_frontend.html`) with the
/// host set, written where the browser can open it.
fn frontend(fleet: &Fleet, host: &str) -> String {
    let template = include_str!("council_frontend.html");
    let path = fleet.path("council.html");
    std::fs::write(&path, template.replace("__HOST__", host)).expect("write the page");
    format!("file://{}", path.display())
}

/// The seed's tokens: a signature, `sub` and `exp`, no permissions.
fn council_token(sub: &str) -> String {
    token(&json!({"sub": sub, "exp": now() + 3600}))
}

fn broadcast_progress(fleet: &Fleet, event_type: &str, data: Value, owner: Option<&str>) -> u64 {
    let mut body = json!({"channel": CHANNEL, "data": {"type": event_type, "data": data}});
    if let Some(owner) = owner {
        body["owner"] = json!(owner);
    }
    let (status, reply) = publish(&fleet.b, &body);
    assert_eq!(status, 200, "{reply}");
    reply["offset"].as_u64().expect("offset")
}

fn frames(browser: &mut Browser) -> Vec<Value> {
    browser
        .cmd(json!({"cmd": "eval", "js": "window.__frames"}))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn sent(browser: &mut Browser) -> Vec<Value> {
    browser
        .cmd(json!({"cmd": "eval", "js": "window.__sent"}))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The message ids of the events received (not the control frames).
fn event_ids(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| {
            !["connection_established", "heartbeat", "error"]
                .contains(&f["type"].as_str().unwrap_or(""))
        })
        .filter_map(|f| f["message_id"].as_u64())
        .collect()
}

fn wait_events(browser: &mut Browser, want: &[u64]) -> Vec<Value> {
    browser.wait_for(&format!("events {want:?}"), WAIT, |b| {
        let f = frames(b);
        (event_ids(&f).len() >= want.len()).then_some(f)
    })
}

fn status(fleet: &Fleet, port: u16) -> Value {
    let _ = fleet;
    let (code, body) =
        http_request(port, "GET", "/ws/status", &[("X-API-Key", API_KEY)], None).expect("status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Waits until a connection to req-123 (on `replica`, if given) is listed; returns it.
fn wait_listed(fleet: &Fleet, port: u16, replica: Option<&str>) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(fleet, port);
        if let Some(c) = s["requests"]["req-123"].as_array().and_then(|c| {
            c.iter()
                .find(|c| replica.is_none_or(|r| c["replica"] == r))
                .cloned()
        }) {
            return c;
        }
        assert!(Instant::now() < deadline, "{replica:?} never listed: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until Redis holds the acknowledgement of each of `ids` (they are
/// written within half a second).
fn wait_acks_stored(fleet: &Fleet, user: &str, ids: &[u64]) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(acks_stored(fleet, CHANNEL, user, ids));
}

/// Waits until Redis holds `user`'s acknowledgement of each of `ids` on `channel`.
async fn acks_stored(fleet: &Fleet, channel: &str, user: &str, ids: &[u64]) {
    let mut redis = fleet.redis.connection().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("switchboard:council:acks:*:{channel}:{user}"))
            .query_async(&mut redis)
            .await
            .expect("KEYS");
        if let Some(key) = keys.first() {
            let mut all = true;
            for id in ids {
                let bit: u8 = redis::cmd("GETBIT")
                    .arg(key)
                    .arg(*id)
                    .query_async(&mut redis)
                    .await
                    .expect("GETBIT");
                all &= bit == 1;
            }
            if all {
                return;
            }
        }
        assert!(Instant::now() < deadline, "acks {ids:?} were not stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_seeds_frontend_gets_every_unacknowledged_event_once_across_a_replica_kill() {
    let mut fleet = Fleet::start(&["--council-heartbeat-interval", "1s"]);
    let nginx = Nginx::start(&[fleet.a.port, fleet.b.port]);
    let host = format!("127.0.0.1:{}", nginx.port);
    let page = frontend(&fleet, &host);

    // The backend starts the request (and says whose it is) before the
    // frontend connects: these events must be replayed.
    let before = [
        "analysis_started",
        "task_decomposition",
        "analysis_complete",
        "routing_decision",
        "analysis_complete",
    ];
    for (i, kind) in before.iter().enumerate() {
        let owner = (i == 0).then_some("alice");
        let id = broadcast_progress(&fleet, kind, json!({"step": i + 1}), owner);
        assert_eq!(
            id,
            i as u64 + 1,
            "message ids are the request's event count"
        );
    }

    let alice = council_token("alice");
    let mut browser = Browser::start();
    browser.open(&format!("{page}?token={alice}"));
    let got = wait_events(&mut browser, &[1, 2, 3, 4, 5]);
    assert_eq!(got[0]["type"], "connection_established");
    assert_eq!(got[0]["data"]["request_id"], "req-123");
    assert_eq!(event_ids(&got), [1, 2, 3, 4, 5], "every event, in order");
    let third = &got[3];
    assert_eq!(third["type"], "analysis_complete");
    assert_eq!(third["data"], json!({"step": 3}));
    assert!(third["timestamp"].is_string());

    // Live events after the replay; the snippet acknowledges analysis_complete.
    broadcast_progress(&fleet, "analysis_complete", json!({"step": 6}), None);
    broadcast_progress(&fleet, "synthesis_progress", json!({"step": 7}), None);
    wait_events(&mut browser, &[1, 2, 3, 4, 5, 6, 7]);
    let acked: Vec<u64> = browser.wait_for("three acks", WAIT, |b| {
        let acks: Vec<u64> = sent(b)
            .iter()
            .filter(|m| m["type"] == "ack")
            .filter_map(|m| m["message_id"].as_u64())
            .collect();
        (acks.len() >= 3).then_some(acks)
    });
    assert_eq!(acked, [3, 5, 6]);
    // The heartbeat comes every second and the snippet answers it.
    browser.wait_for("a heartbeat_response", WAIT, |b| {
        sent(b)
            .iter()
            .any(|m| m["type"] == "heartbeat_response")
            .then_some(())
    });
    wait_acks_stored(&fleet, "alice", &[3, 5, 6]);

    // The status endpoint, from either replica, shows the connection.
    let s = status(&fleet, fleet.a.port);
    let conns = s["requests"]["req-123"]
        .as_array()
        .expect("the request's connections")
        .clone();
    assert_eq!(conns.len(), 1, "{s}");
    assert_eq!(conns[0]["user_id"], "alice");
    assert_eq!(conns[0]["reconnection_count"], 0);
    assert!(conns[0]["connected_at"].is_string() && conns[0]["last_heartbeat"].is_string());
    let serving = conns[0]["replica"].as_str().expect("replica").to_owned();

    // Kill the replica the frontend is on; an event comes meanwhile.
    let (dead, alive, alive_name) = if serving == "gw-a" {
        (&mut fleet.a, fleet.b.port, "gw-b")
    } else {
        (&mut fleet.b, fleet.a.port, "gw-a")
    };
    dead.signal("KILL");
    dead.wait_exit(WAIT);
    let _ = alive;
    browser.wait_for("the close", WAIT, |b| {
        let events = b.cmd(json!({"cmd": "eval", "js": "window.__events"}));
        events
            .as_array()
            .is_some_and(|e| {
                e.iter()
                    .any(|x| x.as_str().is_some_and(|s| s.starts_with("close")))
            })
            .then_some(())
    });
    let (code, reply) = crate::common::http_request(
        alive,
        "POST",
        "/api/v1/publish",
        &[("X-API-Key", API_KEY)],
        Some(
            &json!({"channel": CHANNEL, "data": {"type": "final_response", "data": {"step": 8}}})
                .to_string(),
        ),
    )
    .expect("publish");
    assert_eq!(code, 200, "{reply}");

    // "Implement reconnection logic": the page connects again, through the
    // load balancer, to the replica that is left.
    browser.open(&format!("{page}?token={alice}"));
    let got = wait_events(&mut browser, &[1, 2, 4, 7, 8]);
    assert_eq!(
        event_ids(&got),
        [1, 2, 4, 7, 8],
        "exactly the unacknowledged events, in order, and none acknowledged"
    );
    let (code, reply) = crate::common::http_request(
        alive,
        "POST",
        "/api/v1/publish",
        &[("X-API-Key", API_KEY)],
        Some(&json!({"channel": CHANNEL, "data": {"type": "analysis_complete", "data": {"step": 9}}}).to_string()),
    )
    .expect("publish");
    assert_eq!(code, 200, "{reply}");
    let got = wait_events(&mut browser, &[1, 2, 4, 7, 8, 9]);
    assert_eq!(event_ids(&got), [1, 2, 4, 7, 8, 9], "then live events");
    // Presence is written once a second; the killed replica's entry stays
    // listed until it expires.
    let now_on = wait_listed(&fleet, alive, Some(alive_name));
    assert_eq!(now_on["reconnection_count"], 1, "{now_on}");

    // Another user is refused the request, as the seed refuses a bad token:
    // no connection at all.
    let bob = council_token("bob");
    let mut other = Browser::start();
    other.open(&format!("{page}?token={bob}"));
    other.wait_for("bob's refusal", WAIT, |b| {
        let events = b.cmd(json!({"cmd": "eval", "js": "window.__events"}));
        events
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x == "error"))
            .then_some(())
    });
    assert!(frames(&mut other).is_empty(), "bob got nothing");
    let errors: Vec<_> = browser
        .console()
        .into_iter()
        .filter(|m| m.kind == "pageerror")
        .collect();
    assert!(errors.is_empty(), "page errors: {errors:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn owners_retention_and_bad_input_on_the_council_route() {
    let fleet = Fleet::start(&["--council-history-size", "3"]);
    for i in 1..=5 {
        let owner = (i == 1).then_some("alice");
        broadcast_progress(&fleet, "step", json!({"n": i}), owner);
    }
    let alice = council_token("alice");
    let bob = council_token("bob");

    // Events older than the request's history are reported, never skipped silently.
    let mut client =
        Client::connect(&fleet.a.ws_url(&format!("/api/v1/ws/req-123?token={alice}"))).await;
    assert_eq!(client.recv_json().await["type"], "connection_established");
    let mut ids = Vec::new();
    let mut expired = None;
    while ids.len() < 3 || expired.is_none() {
        let v = client.recv_json().await;
        match v["type"].as_str() {
            Some("error") => expired = Some(v),
            _ => ids.push(v["message_id"].as_u64().expect("message_id")),
        }
    }
    assert_eq!(ids, [3, 4, 5]);
    let expired = expired.expect("the report");
    assert_eq!(expired["data"]["code"], "events_expired");
    assert_eq!(expired["data"]["missing"], 2);
    assert_eq!(expired["data"]["first_missing"], 1);
    assert_eq!(expired["data"]["last_missing"], 2);

    // Bad input: the route's error frame, the connection stays.
    client.send_text("{nope").await;
    let e = client.recv_until(WAIT, |v| v["type"] == "error").await;
    assert_eq!(e["data"]["code"], "invalid_json");
    client.send_text(r#"{"type":"ack","message_id":99}"#).await;
    let e = client.recv_until(WAIT, |v| v["type"] == "error").await;
    assert_eq!(e["data"]["code"], "unknown_message_id");
    client.send_text(r#"{"type":"dance"}"#).await;
    let e = client.recv_until(WAIT, |v| v["type"] == "error").await;
    assert_eq!(e["data"]["code"], "unknown_type");
    // Acknowledging every event is never a flood.
    for _ in 0..3 {
        for id in 3..=5 {
            client
                .send_text(&format!(r#"{{"type":"ack","message_id":{id}}}"#))
                .await;
        }
    }
    client.send_text(r#"{"type":"reconnect"}"#).await;
    let e = client
        .recv_until(WAIT, |v| v["type"] == "error" || v["type"] == "step")
        .await;
    assert_eq!(
        e["data"]["code"], "events_expired",
        "only the report: 3–5 are acknowledged"
    );

    // Another user: refused before the upgrade on this route, forbidden on /ws.
    let refusal = Client::connect_or_refusal(
        &fleet.b.ws_url(&format!("/api/v1/ws/req-123?token={bob}")),
        &[],
    )
    .await
    .err()
    .expect("bob is refused");
    assert_eq!(refusal.status, 403);
    let bob_native = token(&json!({
        "sub": "bob", "exp": now() + 3600,
        "permissions": ["websocket:connect", "websocket:subscribe"], "channels": ["council:*"],
    }));
    let mut native = Client::connect(&fleet.b.ws_url(&format!("/ws?token={bob_native}"))).await;
    native.recv_json().await;
    let reply = native
        .subscribe(json!({"type": "subscribe", "channel": CHANNEL, "id": 1}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    // A second owner is refused; the request stays alice's.
    let (status, reply) = publish(
        &fleet.a,
        &json!({"channel": CHANNEL, "data": {"type": "x", "data": {}}, "owner": "bob"}),
    );
    assert_eq!(status, 409, "{reply}");
    assert_eq!(reply["error"], "owner_conflict");
    let (status, _) = publish(
        &fleet.a,
        &json!({"channel": "dash:x", "data": {}, "owner": "bob"}),
    );
    assert_eq!(status, 400, "owners are for council requests");

    // A request claimed while someone else reads it: that reader is closed.
    let mut early =
        Client::connect(&fleet.a.ws_url(&format!("/api/v1/ws/req-9?token={bob}"))).await;
    assert_eq!(early.recv_json().await["type"], "connection_established");
    wait_for_presence(&fleet, "req-9").await;
    let (status, reply) = publish(
        &fleet.b,
        &json!({"channel": "council:req-9", "data": {"type": "analysis_started", "data": {}}, "owner": "alice"}),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(early.closed_code(WAIT).await, Some(1008));
}

async fn wait_for_presence(fleet: &Fleet, request: &str) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let s = status(fleet, fleet.b.port);
        if s["requests"][request].is_array() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{request} never listed");
}

#[tokio::test(flavor = "multi_thread")]
async fn acking_every_event_of_a_burst_is_never_a_flood_and_silence_ends_with_4003() {
    let fleet = Fleet::start(&[
        "--council-heartbeat-interval",
        "1s",
        "--council-idle-timeout",
        "3s",
        "--max-messages-per-second",
        "5",
        "--message-burst",
        "10",
    ]);
    let alice = council_token("alice");
    // 300 events before the client connects: its replay comes at once, and it
    // acknowledges each as it arrives — 60 times the message rate it is allowed.
    for i in 1..=300 {
        broadcast_progress(
            &fleet,
            "execution_progress",
            json!({"n": i}),
            (i == 1).then_some("alice"),
        );
    }
    let mut client =
        Client::connect(&fleet.a.ws_url(&format!("/api/v1/ws/req-123?token={alice}"))).await;
    assert_eq!(client.recv_json().await["type"], "connection_established");
    let mut seen = 0;
    while seen < 300 {
        let v = client.recv_json().await;
        match v["type"].as_str() {
            Some("execution_progress") => {
                seen += 1;
                let id = v["message_id"].as_u64().expect("message_id");
                assert_eq!(id, seen, "in order");
                client
                    .send_text(&format!(r#"{{"type":"ack","message_id":{id}}}"#))
                    .await;
            }
            Some("heartbeat") => {}
            other => panic!("unexpected {other:?}: {v}"),
        }
    }
    // Still open, and nothing was refused: the heartbeat comes and is answered.
    let beat = client
        .recv_until(WAIT, |v| v["type"] != "execution_progress")
        .await;
    assert_eq!(beat["type"], "heartbeat", "{beat}");
    client.send_text(r#"{"type":"heartbeat_response"}"#).await;
    // Then silence: closed with 4003 after the idle timeout, heartbeats or not.
    assert_eq!(
        client.closed_code(Duration::from_secs(15)).await,
        Some(4003)
    );
}

/// A request whose events all expired (history, and with it what a replay
/// could send) is not mistaken for a new, empty one: its position, owner and
/// acknowledgements outlive the events by `--council-tombstone`, so the
/// returning client is told exactly which unacknowledged events it missed.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_whose_events_all_expired_reports_them_to_a_returning_client() {
    let fleet = Fleet::start(&["--council-retention", "2s", "--council-tombstone", "1h"]);
    let channel = "council:req-gone";
    for i in 1..=3 {
        let mut body = json!({"channel": channel, "data": {"type": "step", "data": {"n": i}}});
        if i == 1 {
            body["owner"] = json!("alice");
        }
        let (status, reply) = publish(&fleet.b, &body);
        assert_eq!(status, 200, "{reply}");
    }
    let alice = council_token("alice");
    let url = |gw: &common::Switchboard| gw.ws_url(&format!("/api/v1/ws/req-gone?token={alice}"));

    // Alice reads the three events and acknowledges the second.
    let mut client = Client::connect(&url(&fleet.a)).await;
    assert_eq!(client.recv_json().await["type"], "connection_established");
    let mut ids = Vec::new();
    while ids.len() < 3 {
        let v = client.recv_json().await;
        assert_eq!(v["type"], "step", "{v}");
        ids.push(v["message_id"].as_u64().expect("message_id"));
    }
    assert_eq!(ids, [1, 2, 3]);
    client.send_text(r#"{"type":"ack","message_id":2}"#).await;
    acks_stored(&fleet, channel, "alice", &[2]).await;
    drop(client);

    // The retention passes: Redis drops the request's events.
    let mut redis = fleet.redis.connection().await;
    let history = format!("switchboard:{{{channel}}}:history");
    let meta = format!("switchboard:{{{channel}}}:meta");
    let deadline = Instant::now() + WAIT;
    loop {
        let exists: u8 = redis::cmd("EXISTS")
            .arg(&history)
            .query_async(&mut redis)
            .await
            .expect("EXISTS");
        if exists == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the history never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let position: u8 = redis::cmd("EXISTS")
        .arg(&meta)
        .query_async(&mut redis)
        .await
        .expect("EXISTS");
    assert_eq!(position, 1, "the request's position outlives its events");

    // Back on the other replica: the two unacknowledged events are reported
    // as expired, the acknowledged one is not, and nothing is replayed.
    let mut client = Client::connect(&url(&fleet.b)).await;
    assert_eq!(client.recv_json().await["type"], "connection_established");
    let report = client.recv_json().await;
    assert_eq!(report["type"], "error", "{report}");
    assert_eq!(report["data"]["code"], "events_expired", "{report}");
    assert_eq!(report["data"]["missing"], 2, "{report}");
    assert_eq!(report["data"]["first_missing"], 1, "{report}");
    assert_eq!(report["data"]["last_missing"], 3, "{report}");
    client.send_text(r#"{"type":"ping"}"#).await;
    let next = client.recv_json().await;
    assert_eq!(next["type"], "pong", "no replay after the report: {next}");

    // The request goes on where it was: the next event is 4, live.
    let (status, reply) = publish(
        &fleet.a,
        &json!({"channel": channel, "data": {"type": "step", "data": {"n": 4}}}),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["offset"], 4, "{reply}");
    let live = client.recv_until(WAIT, |v| v["type"] == "step").await;
    assert_eq!(live["message_id"], 4, "{live}");

    // And it is still alice's.
    let bob = council_token("bob");
    let refusal = Client::connect_or_refusal(
        &fleet.a.ws_url(&format!("/api/v1/ws/req-gone?token={bob}")),
        &[],
    )
    .await
    .err()
    .expect("bob is refused");
    assert_eq!(refusal.status, 403);
}
