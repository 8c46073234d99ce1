//! ESCAI (seed 003): the seed's Python monitoring client, its tokens (roles
//! and permissions), its broadcasts as producers publish them, its REST
//! endpoints — against two replicas.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::http_request;
use crate::{API_KEY, Fleet, WAIT, now, publish, python, token};

/// The seed's client (`tests/seeds/escai_monitor.py`) as a child process.
struct Monitor {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Value>,
}

impl Monitor {
    /// Connects to `url` and sends one `subscribe` per item of `subscriptions`.
    fn connect(url: &str, subscriptions: &[Value]) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/seeds/escai_monitor.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg(url)
            .args(subscriptions.iter().map(Value::to_string))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python with websockets: run ./scripts/test.sh, which installs it");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("the client printed {line:?}: {e}"));
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// The next message received, within `timeout`.
    fn next(&self, timeout: Duration) -> Option<Value> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Skips messages until one satisfies `pred`; panics after `timeout`.
    fn until(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left) {
                Some(v) if pred(&v) => return v,
                Some(v) if v.get("closed").is_some() || v.get("refused").is_some() => {
                    panic!("waiting for {what}, the connection ended: {v}")
                }
                Some(_) => {}
                None => break,
            }
        }
        panic!("no {what} within {WAIT:?}");
    }

    /// Every message received within `wait`.
    fn drain(&self, wait: Duration) -> Vec<Value> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left) {
                Some(v) => out.push(v),
                None => break,
            }
        }
        out
    }

    /// Sends a raw text frame.
    fn send(&mut self, text: &str) {
        writeln!(self.stdin, "{text}").expect("write to the client");
        self.stdin.flush().expect("flush");
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An ESCAI token: the seed's claims (`sub`, `exp`, `roles`, `permissions`).
fn escai_token(sub: &str, roles: &[&str], permissions: &[&str]) -> String {
    token(&json!({
        "sub": sub,
        "exp": now() + 3600,
        "roles": roles,
        "permissions": permissions,
    }))
}

fn event(kind: &str, data: Value) -> Value {
    json!({"type": kind, "data": data})
}

#[test]
fn the_seeds_python_client_gets_filtered_events_alerts_and_its_errors_across_replicas() {
    let fleet = Fleet::start(&[
        "--jwt-role",
        "viewer=websocket:connect,websocket:subscribe",
        "--jwt-role",
        "admin=websocket:admin",
        "--escai-ping-interval",
        "1s",
    ]);
    // A role-mapped token: `viewer` gives connect and subscribe (through
    // --jwt-role), the permission names the one agent it may monitor.
    let analyst = escai_token("analyst", &["viewer"], &["agent:agent_1:monitor"]);
    let url = fleet
        .a
        .ws_url(&format!("/ws/monitor/session_1?token={analyst}"));
    let mut monitor = Monitor::connect(
        &url,
        &[
            json!({"type": "epistemic_updates", "agent_id": "agent_1", "filters": {"confidence_level": {"min": 0.8}}}),
            json!({"type": "pattern_alerts", "agent_id": "agent_1"}),
            json!({"type": "epistemic_updates", "agent_id": "agent_2"}),
        ],
    );
    let hello = monitor.until("connection_established", |v| {
        v["type"] == "connection_established"
    });
    assert_eq!(hello["session_id"], "session_1");
    assert_eq!(hello["user_id"], "analyst");
    assert_eq!(hello["data"]["session_id"], "session_1");
    assert_eq!(hello["data"]["user_id"], "analyst");
    assert!(hello["timestamp"].is_string() && hello["data"]["connection_id"].is_string());
    for family in ["epistemic_updates", "pattern_alerts"] {
        let confirmed = monitor.until("subscription_confirmed", |v| {
            v["type"] == "subscription_confirmed" && v["data"]["subscription_type"] == family
        });
        assert_eq!(confirmed["data"]["agent_id"], "agent_1");
    }
    // A forbidden agent: the seed's AGENT_ACCESS_DENIED, the connection stays.
    let denied = monitor.until("the agent_2 refusal", |v| v["type"] == "error");
    assert_eq!(denied["code"], "AGENT_ACCESS_DENIED");
    assert_eq!(denied["data"]["code"], "AGENT_ACCESS_DENIED");

    // Another ESCAI client on the other replica: no agent rights at all, but
    // alerts reach every ESCAI connection.
    let operator = escai_token("operator", &["viewer"], &[]);
    let other = Monitor::connect(
        &fleet.b.ws_url(&format!("/ws/monitor/ops?token={operator}")),
        &[],
    );
    other.until("connection_established", |v| {
        v["type"] == "connection_established"
    });
    wait_for_escai_connections(&fleet, 2);

    // Producers publish on agents:agent_1 through the other replica.
    let events = [
        event(
            "epistemic_update",
            json!({"confidence_level": 0.9, "beliefs": ["a"]}),
        ),
        event("epistemic_update", json!({"confidence_level": 0.5})),
        event("prediction_update", json!({"success_probability": 0.7})),
        json!({"type": "pattern_alert", "alert_type": "loop", "severity": "warning", "data": {"pattern": "retry"}}),
        event("epistemic_update", json!({"confidence_level": 0.85})),
    ];
    for e in &events {
        let (status, reply) = publish(&fleet.b, &json!({"channel": "agents:agent_1", "data": e}));
        assert_eq!(status, 200, "{reply}");
    }
    let got: Vec<Value> = (0..3)
        .map(|_| {
            monitor.until("an agent event", |v| {
                v.get("agent_id").is_some() && v["type"] != "error"
            })
        })
        .collect();
    let summary: Vec<(String, Value)> = got
        .iter()
        .map(|v| {
            (
                v["type"].as_str().unwrap_or_default().to_owned(),
                v["data"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "epistemic_update".into(),
                json!({"confidence_level": 0.9, "beliefs": ["a"]})
            ),
            ("pattern_alert".into(), json!({"pattern": "retry"})),
            ("epistemic_update".into(), json!({"confidence_level": 0.85})),
        ],
        "the filtered events, in order: below 0.8 and unsubscribed families left out"
    );
    for v in &got {
        assert_eq!(v["agent_id"], "agent_1");
        assert!(
            v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{v}"
        );
    }
    assert_eq!(
        got[1]["severity"], "warning",
        "the producer's extra fields pass through"
    );
    assert!(
        other
            .drain(Duration::from_millis(300))
            .iter()
            .all(|v| v.get("agent_id").is_none()),
        "a client without the agent's subscription gets none of its events"
    );

    // A system alert published on `alerts` reaches both, on both replicas.
    let (status, _) = publish(
        &fleet.a,
        &json!({"channel": "alerts", "data": {"type": "system_alert", "data": {"alert_type": "maintenance", "message": "at 02:00"}}}),
    );
    assert_eq!(status, 200);
    for m in [&monitor, &other] {
        let alert = m.until("the system alert", |v| v["type"] == "system_alert");
        assert_eq!(alert["data"]["message"], "at 02:00");
    }

    // The admin's test broadcast, as the seed's REST endpoint takes it.
    let admin = escai_token("root", &["admin"], &[]);
    let (status, body) = http_request(
        fleet.b.port,
        "POST",
        "/ws/broadcast/test?message=hello%20all",
        &[("Authorization", &format!("Bearer {admin}"))],
        None,
    )
    .expect("broadcast");
    assert_eq!(status, 200, "{body}");
    for m in [&monitor, &other] {
        let alert = m.until("the test broadcast", |v| {
            v["type"] == "system_alert" && v["message"] == "hello all"
        });
        assert_eq!(alert["alert_type"], "test");
    }
    let (status, _) = http_request(
        fleet.b.port,
        "POST",
        "/ws/broadcast/test?message=x",
        &[("Authorization", &format!("Bearer {analyst}"))],
        None,
    )
    .expect("broadcast");
    assert_eq!(status, 403, "a viewer may not broadcast");

    // ping → pong; the server's heartbeat ping is answered with pong; bad
    // input gets the seed's codes and the connection stays.
    monitor.send(r#"{"type":"ping"}"#);
    monitor.until("pong", |v| {
        v["type"] == "pong" && v["timestamp"].is_string()
    });
    monitor.until("the server's heartbeat ping", |v| v["type"] == "ping");
    monitor.send(r#"{"type":"pong"}"#);
    monitor.send("{not json");
    let bad = monitor.until("INVALID_JSON", |v| v["type"] == "error");
    assert_eq!(bad["code"], "INVALID_JSON");
    monitor.send(r#"{"type":"fly"}"#);
    let unknown = monitor.until("UNKNOWN_MESSAGE_TYPE", |v| v["type"] == "error");
    assert_eq!(unknown["code"], "UNKNOWN_MESSAGE_TYPE");
    monitor.send(r#"{"type":"subscribe","data":{"type":"epistemic_updates","agent_id":"agent_1","filters":{"confidence_level":{"gt":1}}}}"#);
    let exists = monitor.until("SUBSCRIPTION_EXISTS", |v| v["type"] == "error");
    assert_eq!(exists["code"], "SUBSCRIPTION_EXISTS");
    monitor.send(r#"{"type":"get_subscriptions"}"#);
    let list = monitor.until("subscriptions_list", |v| v["type"] == "subscriptions_list");
    let kinds: Vec<&str> = list["data"]["subscriptions"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|s| s["type"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["epistemic_updates", "pattern_alerts", "system_alerts"]
    );

    // Unsubscribing one family keeps the other.
    monitor.send(r#"{"type":"unsubscribe","data":{"subscription_type":"epistemic_updates","agent_id":"agent_1"}}"#);
    monitor.until("unsubscription_confirmed", |v| {
        v["type"] == "unsubscription_confirmed"
    });
    publish(
        &fleet.b,
        &json!({"channel": "agents:agent_1", "data": event("epistemic_update", json!({"confidence_level": 0.99}))}),
    );
    publish(
        &fleet.b,
        &json!({"channel": "agents:agent_1", "data": event("pattern_alert", json!({"pattern": "after"}))}),
    );
    let next = monitor.until("the next agent event", |v| v.get("agent_id").is_some());
    assert_eq!(
        next["type"], "pattern_alert",
        "the epistemic update no longer comes"
    );

    // The REST endpoints of the seed.
    let (status, health) =
        http_request(fleet.a.port, "GET", "/ws/health", &[], None).expect("health");
    let health: Value = serde_json::from_str(&health).expect("JSON");
    assert_eq!(status, 200);
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["heartbeat_interval"], 1);
    assert_eq!(health["active_connections"], 1);
    let (status, _) = http_request(
        fleet.a.port,
        "GET",
        "/ws/connections",
        &[("Authorization", &format!("Bearer {analyst}"))],
        None,
    )
    .expect("connections");
    assert_eq!(status, 403, "the connection list is for admins");
    let list = escai_connections(&fleet, &admin);
    assert_eq!(list["total"], 2, "{list}");
    let mine = list["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .find(|c| c["user_id"] == "analyst")
        .expect("the analyst's connection, whatever replica is asked");
    assert_eq!(mine["session_id"], "session_1");
    assert_eq!(mine["replica"], "gw-a");
}

fn escai_connections(fleet: &Fleet, admin: &str) -> Value {
    let (status, body) = http_request(
        fleet.b.port,
        "GET",
        "/ws/connections",
        &[("Authorization", &format!("Bearer {admin}"))],
        None,
    )
    .expect("connections");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Waits until both replicas' presence shows `n` ESCAI connections.
fn wait_for_escai_connections(fleet: &Fleet, n: usize) {
    let deadline = Instant::now() + WAIT;
    let (status, _) = http_request(fleet.a.port, "GET", "/ws/health", &[], None).expect("health");
    assert_eq!(status, 200);
    while Instant::now() < deadline {
        let (_, body) = http_request(
            fleet.a.port,
            "GET",
            "/ws/connections",
            &[("X-API-Key", API_KEY)],
            None,
        )
        .expect("connections");
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if v["total"].as_u64() == Some(n as u64) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the replicas never listed {n} ESCAI connections");
}

#[test]
fn refused_escai_clients_get_the_gateways_answers_and_bad_paths_a_400() {
    let fleet = Fleet::start(&[]);
    // No token, a bad token, a token without websocket:connect.
    let no_connect = escai_token("u", &[], &["agent:agent_1:monitor"]);
    for (query, status) in [
        (String::new(), 401),
        ("?token=garbage".to_string(), 401),
        (format!("?token={no_connect}"), 403),
    ] {
        let m = Monitor::connect(&fleet.a.ws_url(&format!("/ws/monitor/s1{query}")), &[]);
        let v = m.next(WAIT).expect("an answer");
        assert_eq!(v["refused"], status, "{query}: {v}");
    }
    let (status, body) = http_request(
        fleet.a.port,
        "GET",
        "/ws/monitor/bad%20id",
        &[("Upgrade", "websocket")],
        None,
    )
    .expect("request");
    assert_eq!(status, 400, "{body}");
}
