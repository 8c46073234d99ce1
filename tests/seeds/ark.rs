//! ARK (seeds 000 and 001): the Svelte dashboards open `/ws/federation` and
//! `/ws/memory` without a token and read the snapshot objects; the reasoning
//! traces come on `/ws/reasoning/{agent_name}` — against two replicas with
//! authentication on and anonymous reading configured, beside a collector.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Client, Received};
use crate::{Fleet, WAIT};

/// The channels the seeds' dashboards read without a token.
pub const ANONYMOUS: &str =
    "federation,memory,reasoning:*,agents,round_table,tasks,3d_pipeline,metrics";

/// `switchboard collector` on the fleet's Redis, every section simulated
/// (`--simulate always`: the test is about the clients, not the sources),
/// publishing every 200–300 ms.
struct Collector(Child);

impl Collector {
    fn start(fleet: &Fleet) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args([
                "collector",
                "--redis-url",
                &fleet.redis.url(),
                // Its listener is not used here: the kernel picks the port.
                "--listen",
                "127.0.0.1:0",
                "--collect-interval-min",
                "200ms",
                "--collect-interval-max",
                "300ms",
                "--simulate",
                "always",
            ])
            .env("SWITCHBOARD_LOG_LEVEL", "warn")
            .env_remove("REDIS_URL")
            .env_remove("ARK_BASE_PATH")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the collector");
        Self(child)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn next_json(client: &mut Client) -> Value {
    match client.next(WAIT).await {
        Some(Received::Text(t)) => serde_json::from_str(&t).expect("JSON"),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_svelte_dashboards_read_their_snapshots_without_a_token() {
    let fleet = Fleet::start(&["--anonymous-subscribe", ANONYMOUS]);
    let _collector = Collector::start(&fleet);

    // FederationMesh.svelte: `${protocol}//${window.location.host}/ws/federation`,
    // no token; its onmessage reads data.peers, data.sync_traffic, … .
    let mut federation = Client::connect(&fleet.a.ws_url("/ws/federation")).await;
    let first = next_json(&mut federation).await;
    for field in ["peers", "sync_traffic"] {
        assert!(first[field].is_array(), "{field} in {first}");
    }
    for field in ["network_health", "data_integrity", "avg_latency"] {
        assert!(first[field].is_number(), "{field} in {first}");
    }
    let peer = &first["peers"][0];
    for field in [
        "id",
        "hostname",
        "trust_tier",
        "status",
        "latency",
        "last_seen",
    ] {
        assert!(!peer[field].is_null(), "peer {field} in {peer}");
    }
    let next = next_json(&mut federation).await;
    assert!(next["peers"].is_array(), "then each new snapshot");

    // MemoryEngine.svelte on the other replica.
    let mut memory = Client::connect(&fleet.b.ws_url("/ws/memory")).await;
    let m = next_json(&mut memory).await;
    for field in [
        "ingestion_rate",
        "consolidation_rate",
        "dedup_rate",
        "quarantine_count",
    ] {
        assert!(m[field].is_number(), "{field} in {m}");
    }
    for tier in ["core", "trusted", "sandbox", "external"] {
        assert!(
            m["trust_distribution"][tier].is_number(),
            "tier {tier} in {m}"
        );
    }
    assert!(m["confidence_deltas"].is_array() && m["logs"].is_array());

    // The seed's test script: ping and refresh.
    memory.send_text("ping").await;
    let pong = loop {
        let v = next_json(&mut memory).await;
        if v["type"] == "pong" {
            break v;
        }
    };
    assert!(pong["timestamp"].is_string());
    memory.send_text(r#"{"type":"refresh"}"#).await;
    let refreshed = next_json(&mut memory).await;
    assert!(refreshed["trust_distribution"].is_object(), "{refreshed}");

    // The reasoning traces, exactly as published — surrounding whitespace too.
    let mut reasoning = Client::connect(&fleet.b.ws_url("/ws/reasoning/planner")).await;
    let mut redis = fleet.redis.connection().await;
    // The relay is live from the moment it is subscribed on its replica: a
    // plain PUBLISH until one arrives.
    let published = " \n{\"step\":1,\"thought\":\"plan\"}\n ";
    let text = loop {
        let _: () = redis::cmd("PUBLISH")
            .arg("switchboard:{reasoning:planner}")
            .arg(published)
            .query_async(&mut redis)
            .await
            .expect("PUBLISH");
        if let Some(Received::Text(t)) = reasoning.next(Duration::from_millis(300)).await {
            break t;
        }
    };
    assert_eq!(text, published, "the bytes as published");
    let (status, reply) = crate::publish(
        &fleet.a,
        &json!({"channel": "reasoning:planner", "data": {"step": 2}}),
    );
    assert_eq!(status, 200, "{reply}");
    let v: Value = loop {
        match reasoning.next(WAIT).await {
            Some(Received::Text(t)) if t.contains("step\":2") => {
                break serde_json::from_str(&t).expect("JSON");
            }
            Some(Received::Text(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(v, json!({"step": 2}));

    // A channel outside the anonymous ones needs a token.
    let refusal = Client::connect_or_refusal(&fleet.a.ws_url("/ws/secret"), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(refusal.status, 401);
    assert_eq!(refusal.body["error"], "missing_token");
}
