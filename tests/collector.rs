//! The collector end to end: the real binary reading a real `redis-server`
//! (peer hashes and sync events written by the test) and real SQLite files
//! (created by the test with the documented schema), publishing to Redis, seen
//! through a real gateway.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Client, Logs, RedisServer, Switchboard, http_get, metric_value};
use serde_json::{Value, json};
use switchboard::collector::schema::{ARK_DDL, REASONING_DDL};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Generous: the machine is shared and may be slow.
const WAIT: Duration = Duration::from_secs(40);

const FAST: [&str; 4] = [
    "--collect-interval-min",
    "200ms",
    "--collect-interval-max",
    "300ms",
];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sb-collector-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `t` as SQLite stores `CURRENT_TIMESTAMP`: `YYYY-MM-DD HH:MM:SS`, UTC.
fn sql_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The fixture databases and the values computed from them by hand.
struct Databases {
    dir: PathBuf,
    reasoning: PathBuf,
    ark: PathBuf,
    /// When the rows' ages were measured from.
    base: SystemTime,
}

impl Drop for Databases {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Recent sessions (seconds ago): 12 within the 2-minute rate window.
const SESSION_AGES: [u64; 12] = [2, 4, 6, 8, 12, 14, 16, 18, 22, 24, 26, 28];
/// Old sessions, outside any window.
const OLD_SESSION_AGES: [u64; 3] = [7_200, 10_800, 14_400];
/// Stages, oldest first: (seconds ago, confidence).
const STAGES: [(u64, f64); 9] = [
    (7_200, 0.95),
    (60, 0.50),
    (50, 0.75),
    (40, 0.90),
    (30, 0.80),
    (20, 0.60),
    (15, 0.72),
    (10, 0.71),
    (5, 0.88),
];

fn create_databases() -> Databases {
    let dir = temp_dir("db");
    let base = SystemTime::now();
    let ago = |s: u64| sql_time(base - Duration::from_secs(s));

    let reasoning = dir.join("reasoning_logs.db");
    let conn = rusqlite::Connection::open(&reasoning).unwrap();
    conn.execute_batch(REASONING_DDL).unwrap();
    for age in OLD_SESSION_AGES
        .iter()
        .rev()
        .chain(SESSION_AGES.iter().rev())
    {
        conn.execute(
            "INSERT INTO reasoning_sessions (session_id, agent_name, query, overall_confidence, created_at)
             VALUES (?1, 'kyle', 'why?', 0.85, ?2)",
            rusqlite::params![format!("s{age}"), ago(*age)],
        )
        .unwrap();
    }
    for (age, confidence) in STAGES {
        conn.execute(
            "INSERT INTO reasoning_stages (session_id, stage_name, confidence, created_at)
             VALUES ('s2', 'analysis', ?1, ?2)",
            rusqlite::params![confidence, ago(age)],
        )
        .unwrap();
    }
    drop(conn);

    let ark = dir.join("ark.db");
    let conn = rusqlite::Connection::open(&ark).unwrap();
    conn.execute_batch(ARK_DDL).unwrap();
    for tier in [
        "core", "core", "core", "trusted", "trusted", "sandbox", "external",
    ] {
        conn.execute(
            "INSERT INTO code_index (file_path, trust_tier) VALUES ('f.py', ?1)",
            [tier],
        )
        .unwrap();
    }
    for (snippet, uses) in [("a", 5), ("a", 3), ("b", 2), ("c", 2)] {
        conn.execute(
            "INSERT INTO code_patterns (code_snippet, usage_count) VALUES (?1, ?2)",
            rusqlite::params![snippet, uses],
        )
        .unwrap();
    }
    for (status, age) in [
        ("failed", 3_600),
        ("timeout", 7_200),
        ("success", 600),
        ("failed", 3 * 86_400),
    ] {
        conn.execute(
            "INSERT INTO sandbox_executions (status, error, created_at) VALUES (?1, 'boom', ?2)",
            rusqlite::params![status, ago(age)],
        )
        .unwrap();
    }
    drop(conn);
    Databases {
        dir,
        reasoning,
        ark,
        base,
    }
}

/// The memory dashboard of the fixture, worked out by hand.
fn expected_memory(db: &Databases) -> Value {
    let at = |s: u64| rfc3339(db.base - Duration::from_secs(s));
    let session = |s: u64| {
        json!({"timestamp": at(s), "type": "ingestion",
               "message": format!("Ingested reasoning session s{s} from kyle (confidence 0.85)"),
               "severity": "info"})
    };
    let stage = |s: u64, c: &str| {
        json!({"timestamp": at(s), "type": "consolidation",
               "message": format!("Consolidated stage analysis of session s2 (confidence {c})"),
               "severity": "info"})
    };
    json!({
        // 12 sessions in the last 120 s: 12 / 120 = 0.1 per second.
        "ingestion_rate": 0.1,
        // Stages in the last 120 s with confidence ≥ 0.7: 0.75, 0.90, 0.80,
        // 0.72, 0.71, 0.88 → 6 / 120 = 0.05 per second.
        "consolidation_rate": 0.05,
        // Snippets a (5 + 3 uses), b (2), c (2): (12 − 3) / 12 = 75 %.
        "dedup_rate": 75.0,
        // Not successful within 24 h: failed 1 h ago, timeout 2 h ago.
        "quarantine_count": 2,
        "trust_distribution": {"core": 3, "external": 1, "sandbox": 1, "trusted": 2},
        // Chronological 0.95, 0.50, 0.75, 0.90, 0.80, 0.60, 0.72, 0.71, 0.88.
        "confidence_deltas": [-0.45, 0.25, 0.15, -0.1, -0.2, 0.12, -0.01, 0.17],
        // The ten newest events (sessions and consolidated stages), oldest first.
        "logs": [
            session(16), stage(15, "0.72"), session(14), session(12), stage(10, "0.71"),
            session(8), session(6), stage(5, "0.88"), session(4), session(2)
        ],
    })
}

/// Writes the fixture's peers (one a non-hash decoy) and returns the
/// federation dashboard worked out by hand.
async fn write_federation(redis: &RedisServer) -> Value {
    let mut conn = redis.connection().await;
    let now = now_ms();
    let hour_ago = now - 3_600_000;
    let peers = [
        ("ark-core-1", "core", "online", "10", now.to_string()),
        // last_seen in seconds, as `date +%s` writes it.
        (
            "ark-core-2",
            "core",
            "online",
            "20",
            (now / 1000).to_string(),
        ),
        ("ark-trusted-1", "trusted", "online", "33", now.to_string()),
        // Says online, but its heartbeat is an hour old: offline.
        (
            "ark-trusted-2",
            "trusted",
            "online",
            "500",
            hour_ago.to_string(),
        ),
        (
            "ark-verified-1",
            "verified",
            "degraded",
            "80",
            now.to_string(),
        ),
    ];
    let mut pipe = redis::pipe();
    for (id, tier, status, latency, last_seen) in &peers {
        pipe.hset_multiple(
            format!("peer:{id}"),
            &[
                ("hostname", format!("{id}.local")),
                ("trust_tier", tier.to_string()),
                ("status", status.to_string()),
                ("latency", latency.to_string()),
                ("last_seen", last_seen.clone()),
            ],
        );
    }
    pipe.set("peer:not-a-hash", "ignored");
    pipe.query_async::<()>(&mut conn).await.unwrap();
    write_sync_events(redis).await;

    let t0 = 1_699_800_000_000u64;
    json!({
        "peers": [
            {"id": "ark-core-1", "hostname": "ark-core-1.local", "trust_tier": "core",
             "status": "online", "latency": 10, "last_seen": now},
            {"id": "ark-core-2", "hostname": "ark-core-2.local", "trust_tier": "core",
             "status": "online", "latency": 20, "last_seen": now / 1000 * 1000},
            {"id": "ark-trusted-1", "hostname": "ark-trusted-1.local", "trust_tier": "trusted",
             "status": "online", "latency": 33, "last_seen": now},
            {"id": "ark-trusted-2", "hostname": "ark-trusted-2.local", "trust_tier": "trusted",
             "status": "offline", "latency": 500, "last_seen": hour_ago},
            {"id": "ark-verified-1", "hostname": "ark-verified-1.local", "trust_tier": "verified",
             "status": "degraded", "latency": 80, "last_seen": now},
        ],
        // The 10 newest of 12 valid events (the malformed item is skipped),
        // newest first, as `LRANGE sync_events 0 9` returns them.
        "sync_traffic": (2..12u64).rev().map(|i| json!({
            "timestamp": t0 + i * 1000, "source": format!("ark-core-{}", i % 2 + 1),
            "target": "ark-trusted-1", "event_type": "memory_sync", "bytes": 1000 + i,
            "success": i % 5 != 0,
        })).collect::<Vec<_>>(),
        // 3 of 5 peers online.
        "network_health": 60.0,
        // (1 + 1 + 0.75) / (1 + 1 + 0.75 + 0.75 + 0.5) = 68.75 % → 68.8.
        "data_integrity": 68.8,
        // (10 + 20 + 33) / 3 online peers.
        "avg_latency": 21.0,
    })
}

/// 12 sync events, LPUSHed oldest first (so the list is newest first), and
/// one malformed item among them.
async fn write_sync_events(redis: &RedisServer) {
    let mut conn = redis.connection().await;
    let t0 = 1_699_800_000_000u64;
    let mut pipe = redis::pipe();
    pipe.del("sync_events");
    for i in 0..12u64 {
        let event = json!({
            "timestamp": t0 + i * 1000, "source": format!("ark-core-{}", i % 2 + 1),
            "target": "ark-trusted-1", "event_type": "memory_sync", "bytes": 1000 + i,
            "success": i % 5 != 0,
        });
        pipe.lpush("sync_events", event.to_string());
        if i == 8 {
            pipe.lpush("sync_events", "not an event");
        }
    }
    pipe.query_async::<()>(&mut conn).await.unwrap();
}

/// The seed-000 fields of a snapshot (without version, time and sources).
fn fields(snapshot: &Value, names: &[&str]) -> Value {
    Value::Object(
        names
            .iter()
            .map(|n| (n.to_string(), snapshot[*n].clone()))
            .collect(),
    )
}

const FEDERATION_FIELDS: [&str; 5] = [
    "peers",
    "sync_traffic",
    "network_health",
    "data_integrity",
    "avg_latency",
];
const MEMORY_FIELDS: [&str; 7] = [
    "ingestion_rate",
    "consolidation_rate",
    "dedup_rate",
    "quarantine_count",
    "trust_distribution",
    "confidence_deltas",
    "logs",
];

fn source_of(snapshot: &Value, section: &str) -> String {
    snapshot["sources"][section]["source"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn all_live(snapshot: &Value) -> bool {
    snapshot["sources"]
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.values().all(|p| p["source"] == "live"))
}

/// `switchboard collector` on a port the kernel picks, cycling every 200–300 ms.
fn collector(redis: &RedisServer, extra: &[&str]) -> Switchboard {
    let url = redis.url();
    let mut args = vec!["collector", "--listen", "127.0.0.1:0", "--redis-url", &url];
    args.extend_from_slice(&FAST);
    args.extend_from_slice(extra);
    Switchboard::start(&args)
}

fn db_args(db: &Databases) -> Vec<String> {
    vec![
        "--reasoning-db".into(),
        db.reasoning.display().to_string(),
        "--ark-db".into(),
        db.ark.display().to_string(),
        "--rate-window".into(),
        "2m".into(),
    ]
}

/// The stored snapshot of `channel`, read straight from Redis.
async fn stored(conn: &mut redis::aio::MultiplexedConnection, channel: &str) -> Option<Value> {
    let data: Option<String> = redis::cmd("HGET")
        .arg(format!("switchboard:{{{channel}}}:snapshot"))
        .arg("d")
        .query_async(conn)
        .await
        .ok()?;
    serde_json::from_str(&data?).ok()
}

/// Polls the stored snapshot until `pred` holds.
async fn wait_stored(
    conn: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(s) = stored(conn, channel).await {
            if pred(&s) {
                return s;
            }
            last = Some(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {WAIT:?}; last {channel} snapshot: {last:#?}");
}

#[tokio::test]
async fn a_gateway_client_sees_live_numbers_equal_to_the_hand_computed_ones() {
    let redis = RedisServer::start();
    let expected_federation = write_federation(&redis).await;
    let db = create_databases();
    let mut extra: Vec<String> = db_args(&db);
    extra.extend(["--peer-staleness".into(), "5m".into()]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let collector_proc = collector(&redis, &extra);
    let gateway = Switchboard::gateway(&redis, &[]);

    let mut client = Client::connect(&gateway.ws_url("/ws/federation")).await;
    let federation = client.recv_until(WAIT, all_live).await;
    assert_eq!(fields(&federation, &FEDERATION_FIELDS), expected_federation);
    assert_eq!(
        federation["sources"],
        json!({"peers": {"source": "live"}, "sync_events": {"source": "live"}})
    );
    assert!(federation["version"].as_u64().unwrap() >= 1);
    assert!(
        humantime::parse_rfc3339(federation["generated_at"].as_str().unwrap()).is_ok(),
        "generated_at is RFC 3339: {}",
        federation["generated_at"]
    );

    let mut client = Client::connect(&gateway.ws_url("/ws/memory")).await;
    let memory = client.recv_until(WAIT, all_live).await;
    assert_eq!(fields(&memory, &MEMORY_FIELDS), expected_memory(&db));
    assert_eq!(
        memory["sources"],
        json!({"reasoning": {"source": "live"}, "ark": {"source": "live"}})
    );
    // Updates keep coming with increasing versions.
    let next = client
        .recv_until(WAIT, |m| m["version"].as_u64() > memory["version"].as_u64())
        .await;
    assert_eq!(fields(&next, &MEMORY_FIELDS)["dedup_rate"], 75.0);

    let body = http_get(collector_proc.port, "/metrics").unwrap().1;
    for source in ["peers", "sync_events", "reasoning", "ark"] {
        assert_eq!(
            metric_value(
                &body,
                "switchboard_collector_source_up",
                &format!("source=\"{source}\"")
            ),
            1.0,
            "{source} up"
        );
    }
    assert_eq!(metric_value(&body, "switchboard_collector_leader", ""), 1.0);
    assert!(
        metric_value(
            &body,
            "switchboard_collector_last_publish_timestamp_seconds",
            ""
        ) > 0.0
    );
    assert!(metric_value(&body, "switchboard_collector_cycle_seconds_count", "") > 0.0);
    assert!(
        metric_value(
            &body,
            "switchboard_collector_invalid_records_total",
            "source=\"sync_events\""
        ) >= 1.0
    );
    let (status, _) = http_get(collector_proc.port, "/health/ready").unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn sources_taken_away_turn_stale_with_last_good_values_and_come_back_live() {
    let redis = RedisServer::start();
    // The federation data lives in a Redis of its own, which the test stops.
    let federation_redis = RedisServer::start();
    write_federation(&federation_redis).await;
    let db = create_databases();
    let mut extra = db_args(&db);
    extra.extend([
        "--federation-redis-url".into(),
        federation_redis.url(),
        "--peer-staleness".into(),
        "5m".into(),
        "--sqlite-busy-timeout".into(),
        "200ms".into(),
    ]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let _collector = collector(&redis, &extra);
    let mut conn = redis.connection().await;
    let mut fed = federation_redis.connection().await;

    let live = wait_stored(&mut conn, "federation", "federation live", all_live).await;
    let live_memory = wait_stored(&mut conn, "memory", "memory live", all_live).await;

    // The sync events list is deleted: stale, last good events kept, with an age.
    let _: () = redis::cmd("DEL")
        .arg("sync_events")
        .query_async(&mut fed)
        .await
        .unwrap();
    let s = wait_stored(&mut conn, "federation", "sync_events stale", |s| {
        source_of(s, "sync_events") == "stale"
    })
    .await;
    let p = &s["sources"]["sync_events"];
    assert!(p["age_seconds"].as_f64().is_some(), "{p}");
    assert!(
        p["error"].as_str().unwrap().contains("does not exist"),
        "{p}"
    );
    assert_eq!(s["sync_traffic"], live["sync_traffic"]);
    assert_eq!(source_of(&s, "peers"), "live");
    write_sync_events(&federation_redis).await;
    wait_stored(&mut conn, "federation", "sync_events live again", |s| {
        source_of(s, "sync_events") == "live"
    })
    .await;

    // Every peer hash is deleted: stale; written again: live.
    let keys = [
        "peer:ark-core-1",
        "peer:ark-core-2",
        "peer:ark-trusted-1",
        "peer:ark-trusted-2",
        "peer:ark-verified-1",
    ];
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut fed)
        .await
        .unwrap();
    let s = wait_stored(&mut conn, "federation", "peers stale", |s| {
        source_of(s, "peers") == "stale"
    })
    .await;
    assert!(
        s["sources"]["peers"]["error"]
            .as_str()
            .unwrap()
            .contains("no Redis hash matches")
    );
    assert_eq!(s["peers"], live["peers"]);
    assert_eq!(s["network_health"], live["network_health"]);
    write_federation(&federation_redis).await;
    let live = wait_stored(&mut conn, "federation", "peers live again", all_live).await;

    // The federation Redis goes down: both sections stale; back (empty, then
    // refilled): live again over a new connection.
    let port = federation_redis.port;
    let mut federation_redis = federation_redis;
    federation_redis.kill();
    let s = wait_stored(&mut conn, "federation", "federation Redis down", |s| {
        source_of(s, "peers") == "stale" && source_of(s, "sync_events") == "stale"
    })
    .await;
    assert_eq!(s["peers"], live["peers"]);
    let restarted = RedisServer::start_on(port);
    write_federation(&restarted).await;
    wait_stored(&mut conn, "federation", "federation Redis back", all_live).await;

    // ark.db is locked by a writer: stale with its last good values; unlocked: live.
    let writer = rusqlite::Connection::open(&db.ark).unwrap();
    writer.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let m = wait_stored(&mut conn, "memory", "ark stale while locked", |s| {
        source_of(s, "ark") == "stale"
    })
    .await;
    assert!(
        m["sources"]["ark"]["error"]
            .as_str()
            .unwrap()
            .contains("locked"),
        "{}",
        m["sources"]["ark"]
    );
    assert_eq!(m["trust_distribution"], live_memory["trust_distribution"]);
    assert_eq!(m["dedup_rate"], 75.0);
    assert_eq!(source_of(&m, "reasoning"), "live");
    writer.execute_batch("COMMIT").unwrap();
    drop(writer);
    wait_stored(&mut conn, "memory", "ark live after unlock", all_live).await;

    // reasoning_logs.db is removed: stale; put back: live.
    let before = stored(&mut conn, "memory").await.unwrap();
    let aside = db.dir.join("aside.db");
    std::fs::rename(&db.reasoning, &aside).unwrap();
    let m = wait_stored(&mut conn, "memory", "reasoning stale when removed", |s| {
        source_of(s, "reasoning") == "stale"
    })
    .await;
    assert!(
        m["sources"]["reasoning"]["error"]
            .as_str()
            .unwrap()
            .contains("no such file")
    );
    assert_eq!(m["ingestion_rate"], before["ingestion_rate"]);
    assert_eq!(m["confidence_deltas"], live_memory["confidence_deltas"]);
    std::fs::rename(&aside, &db.reasoning).unwrap();
    wait_stored(&mut conn, "memory", "reasoning live when back", all_live).await;
    drop(restarted);
}

#[tokio::test]
async fn trust_distribution_always_carries_the_four_tiers() {
    let redis = RedisServer::start();
    let dir = temp_dir("tiers");
    let ark = dir.join("ark.db");
    let conn = rusqlite::Connection::open(&ark).unwrap();
    conn.execute_batch(ARK_DDL).unwrap();
    // No trusted or sandbox row; a tier the seed does not name; a tier in
    // another case (counted with its lower-case form).
    for tier in ["core", "Core", "external", "verified"] {
        conn.execute(
            "INSERT INTO code_index (file_path, trust_tier) VALUES ('f.py', ?1)",
            [tier],
        )
        .unwrap();
    }
    drop(conn);
    let a = ark.display().to_string();
    let _collector = collector(&redis, &["--ark-db", &a]);
    let mut conn = redis.connection().await;
    let m = wait_stored(&mut conn, "memory", "ark live", |s| {
        source_of(s, "ark") == "live"
    })
    .await;
    assert_eq!(
        m["trust_distribution"],
        json!({"core": 2, "trusted": 0, "sandbox": 0, "external": 1, "verified": 1})
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn peers_keep_the_status_of_their_hash_unless_peer_staleness_is_set() {
    let federation_redis = RedisServer::start();
    write_federation(&federation_redis).await;
    // A peer without any last_seen.
    let mut fed = federation_redis.connection().await;
    let _: () = redis::cmd("HSET")
        .arg("peer:ark-edge-1")
        .arg(&[
            "trust_tier",
            "external",
            "status",
            "online",
            "latency",
            "15",
        ])
        .query_async(&mut fed)
        .await
        .unwrap();
    let fed_url = federation_redis.url();
    let peer = |f: &Value, id: &str| {
        f["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("no peer {id} in {f}"))
            .clone()
    };

    // Default: each peer shows the status its hash says.
    let redis = RedisServer::start();
    let _keep = collector(&redis, &["--federation-redis-url", &fed_url]);
    let mut conn = redis.connection().await;
    let f = wait_stored(&mut conn, "federation", "federation live", all_live).await;
    assert_eq!(
        peer(&f, "ark-trusted-2")["status"],
        "online",
        "hour-old last_seen"
    );
    assert_eq!(peer(&f, "ark-edge-1")["status"], "online", "no last_seen");
    assert_eq!(peer(&f, "ark-edge-1")["last_seen"], 0);
    assert_eq!(peer(&f, "ark-verified-1")["status"], "degraded");
    // 5 of 6 online; (1 + 1 + 0.75 + 0.75 + 0.25) / (3.75 + 0.5) = 88.2 %;
    // latency (10 + 20 + 33 + 500 + 15) / 5 = 115.6.
    assert_eq!(f["network_health"], 83.3);
    assert_eq!(f["data_integrity"], 88.2);
    assert_eq!(f["avg_latency"], 115.6);

    // --peer-staleness 30s (opt-in): old or missing heartbeats are offline.
    let redis = RedisServer::start();
    let _stale = collector(
        &redis,
        &[
            "--federation-redis-url",
            &fed_url,
            "--peer-staleness",
            "30s",
        ],
    );
    let mut conn = redis.connection().await;
    let f = wait_stored(&mut conn, "federation", "federation live", all_live).await;
    assert_eq!(peer(&f, "ark-trusted-2")["status"], "offline");
    assert_eq!(peer(&f, "ark-edge-1")["status"], "offline");
    assert_eq!(peer(&f, "ark-core-1")["status"], "online");
    // 3 of 6 online; (1 + 1 + 0.75) / 4.25 = 64.7 %; (10 + 20 + 33) / 3.
    assert_eq!(f["network_health"], 50.0);
    assert_eq!(f["data_integrity"], 64.7);
    assert_eq!(f["avg_latency"], 21.0);
}

#[tokio::test]
async fn databases_without_log_columns_stay_live_and_say_which_are_missing() {
    let redis = RedisServer::start();
    let dir = temp_dir("log-columns");
    let base = SystemTime::now();
    let ago = |s: u64| sql_time(base - Duration::from_secs(s));
    let at = |s: u64| rfc3339(base - Duration::from_secs(s));

    // Only the columns the numbers are computed from: no session_id,
    // agent_name, overall_confidence or stage_name.
    let reasoning = dir.join("reasoning_logs.db");
    let conn = rusqlite::Connection::open(&reasoning).unwrap();
    conn.execute_batch(
        "CREATE TABLE reasoning_sessions (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL);
         CREATE TABLE reasoning_stages (id INTEGER PRIMARY KEY, confidence REAL, created_at TEXT NOT NULL);",
    )
    .unwrap();
    for age in [12, 10, 8, 6, 4, 2] {
        conn.execute(
            "INSERT INTO reasoning_sessions (created_at) VALUES (?1)",
            [ago(age)],
        )
        .unwrap();
    }
    for (age, confidence) in [(9, 0.9), (7, 0.8), (5, 0.5)] {
        conn.execute(
            "INSERT INTO reasoning_stages (confidence, created_at) VALUES (?1, ?2)",
            rusqlite::params![confidence, ago(age)],
        )
        .unwrap();
    }
    drop(conn);
    // ark.db without sandbox_executions.error.
    let ark = dir.join("ark.db");
    let conn = rusqlite::Connection::open(&ark).unwrap();
    conn.execute_batch(
        "CREATE TABLE code_index (trust_tier TEXT);
         CREATE TABLE code_patterns (code_snippet TEXT, usage_count INTEGER);
         CREATE TABLE sandbox_executions (status TEXT, created_at TEXT);
         INSERT INTO code_index VALUES ('core');
         INSERT INTO code_patterns VALUES ('a', 4);",
    )
    .unwrap();
    conn.execute(
        "INSERT INTO sandbox_executions VALUES ('failed', ?1)",
        [ago(30)],
    )
    .unwrap();
    drop(conn);

    let (r, a) = (reasoning.display().to_string(), ark.display().to_string());
    let _collector = collector(
        &redis,
        &["--reasoning-db", &r, "--ark-db", &a, "--rate-window", "2m"],
    );
    let mut conn = redis.connection().await;
    let m = wait_stored(&mut conn, "memory", "memory live", all_live).await;
    assert_eq!(
        m["sources"],
        json!({
            "reasoning": {"source": "live", "missing_columns": [
                "reasoning_sessions.session_id", "reasoning_sessions.agent_name",
                "reasoning_sessions.overall_confidence",
                "reasoning_stages.session_id", "reasoning_stages.stage_name"]},
            "ark": {"source": "live", "missing_columns": ["sandbox_executions.error"]},
        })
    );
    // The numbers are whole: 6 sessions and 2 stages ≥ 0.7 in 120 s;
    // confidences 0.9, 0.8, 0.5; 1 unique snippet used 4 times.
    assert_eq!(m["ingestion_rate"], 0.05);
    assert_eq!(m["consolidation_rate"], 0.02);
    assert_eq!(m["confidence_deltas"], json!([-0.1, -0.3]));
    assert_eq!(m["dedup_rate"], 75.0);
    assert_eq!(m["quarantine_count"], 1);
    // The log lines leave out what is missing.
    let ingested = |s: u64| {
        json!({"timestamp": at(s), "type": "ingestion",
               "message": "Ingested a reasoning session", "severity": "info"})
    };
    let consolidated = |s: u64, c: &str| {
        json!({"timestamp": at(s), "type": "consolidation",
               "message": format!("Consolidated a stage (confidence {c})"), "severity": "info"})
    };
    assert_eq!(
        m["logs"],
        json!([
            {"timestamp": at(30), "type": "quarantine",
             "message": "Quarantined sandbox execution 1 (failed)", "severity": "warning"},
            ingested(12), ingested(10), consolidated(9, "0.90"), ingested(8),
            consolidated(7, "0.80"), ingested(6), ingested(4), ingested(2)
        ])
    );

    // A column added later is read from the next cycle on.
    let writer = rusqlite::Connection::open(&reasoning).unwrap();
    writer
        .execute_batch(
            "ALTER TABLE reasoning_sessions ADD COLUMN agent_name TEXT;
             UPDATE reasoning_sessions SET agent_name = 'kyle';",
        )
        .unwrap();
    drop(writer);
    let m = wait_stored(&mut conn, "memory", "agent_name read", |s| {
        s["sources"]["reasoning"]["missing_columns"]
            .as_array()
            .is_some_and(|m| m.len() == 4)
    })
    .await;
    assert_eq!(source_of(&m, "reasoning"), "live");
    let last = m["logs"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["message"], "Ingested a reasoning session from kyle");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn on_source_failure_simulate_falls_back_to_simulated_values_marked_with_the_failure() {
    let redis = RedisServer::start();
    let federation_redis = RedisServer::start();
    write_federation(&federation_redis).await;
    let db = create_databases();
    // reasoning_logs.db is not there yet.
    let aside = db.dir.join("aside.db");
    std::fs::rename(&db.reasoning, &aside).unwrap();
    let (r, a, fed_url) = (
        db.reasoning.display().to_string(),
        db.ark.display().to_string(),
        federation_redis.url(),
    );
    let collector_proc = collector(
        &redis,
        &[
            "--on-source-failure",
            "simulate",
            "--federation-redis-url",
            &fed_url,
            "--reasoning-db",
            &r,
            "--ark-db",
            &a,
        ],
    );
    let mut conn = redis.connection().await;

    // The failed source: simulated values in the seed's ranges, marked
    // simulated with the failure; the working one live.
    let m = wait_stored(&mut conn, "memory", "reasoning simulated", |s| {
        source_of(s, "reasoning") == "simulated" && source_of(s, "ark") == "live"
    })
    .await;
    let error = m["sources"]["reasoning"]["error"].as_str().unwrap();
    assert!(error.contains("no such file"), "{error}");
    assert!((7.0..=9.0).contains(&m["ingestion_rate"].as_f64().unwrap()));
    assert!((6.0..=8.0).contains(&m["consolidation_rate"].as_f64().unwrap()));
    assert_eq!(m["confidence_deltas"].as_array().unwrap().len(), 50);
    assert_eq!(m["dedup_rate"], 75.0, "ark is read");
    let body = http_get(collector_proc.port, "/metrics").unwrap().1;
    assert_eq!(
        metric_value(
            &body,
            "switchboard_collector_source_up",
            "source=\"reasoning\""
        ),
        0.0,
        "the failure still shows in the metrics"
    );
    // The file appears: live.
    std::fs::rename(&aside, &db.reasoning).unwrap();
    let m = wait_stored(&mut conn, "memory", "reasoning live", all_live).await;
    assert_eq!(m["sources"]["reasoning"], json!({"source": "live"}));

    // The federation Redis goes down: both sections simulated, not frozen.
    wait_stored(&mut conn, "federation", "federation live", all_live).await;
    let port = federation_redis.port;
    let mut federation_redis = federation_redis;
    federation_redis.kill();
    let f = wait_stored(&mut conn, "federation", "federation simulated", |s| {
        source_of(s, "peers") == "simulated" && source_of(s, "sync_events") == "simulated"
    })
    .await;
    for section in ["peers", "sync_events"] {
        assert!(
            f["sources"][section]["error"]
                .as_str()
                .is_some_and(|e| e.contains("federation Redis")),
            "{}",
            f["sources"][section]
        );
    }
    assert!((92.0..=96.0).contains(&f["network_health"].as_f64().unwrap()));
    assert!(
        f["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["id"].as_str().unwrap().starts_with("ark-")),
        "{}",
        f["peers"]
    );
    let version = f["version"].as_u64().unwrap();
    let next = wait_stored(&mut conn, "federation", "another simulated cycle", |s| {
        s["version"].as_u64() > Some(version) && source_of(s, "peers") == "simulated"
    })
    .await;
    assert!(!next["sync_traffic"].as_array().unwrap().is_empty());
    let restarted = RedisServer::start_on(port);
    write_federation(&restarted).await;
    wait_stored(&mut conn, "federation", "federation live again", all_live).await;
}

/// A switchboard process whose JSON logs go to a file.
struct Logged {
    child: Child,
    log: PathBuf,
}

impl Logged {
    /// Runs the binary (its listener given as `127.0.0.1:0`) with JSON logs
    /// at info; returns it and the port it reported.
    fn start(args: &[&str], log: &Path) -> (Self, u16) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command
            .args(args)
            .env_remove("REDIS_URL")
            .env_remove("ARK_BASE_PATH");
        Self::reporting(command, log)
    }

    /// Runs the binary with exactly `env` as its environment, and JSON logs
    /// at info; returns it and the port it reported.
    fn start_env(args: &[&str], env: &[(&str, &str)], log: &Path) -> (Self, u16) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command.args(args).env_clear().envs(env.iter().copied());
        Self::reporting(command, log)
    }

    fn reporting(mut command: Command, log: &Path) -> (Self, u16) {
        let file = File::create(log).unwrap();
        let (child, listening) =
            common::start_reporting(&mut command, "info", Logs::File(file), WAIT);
        let logged = Self {
            child,
            log: log.to_path_buf(),
        };
        (logged, listening.listen.port())
    }

    /// Runs the binary with exactly `env` as its environment (text logs) and
    /// waits until it listens on `port` (a port it was told, as its default).
    fn spawn_env(port: u16, args: &[&str], env: &[(&str, &str)], log: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(File::create(log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "`switchboard {}` exited ({status}) before listening on {port}: {}",
                    args.join(" "),
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            log: log.to_path_buf(),
        }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines with this message and section.
    fn count(&self, message: &str, section: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["message"] == message && l["section"] == section)
            .count()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn missing_and_schema_less_databases_are_stale_empty_and_logged_once() {
    let redis = RedisServer::start();
    let dir = temp_dir("missing");
    let reasoning = dir.join("reasoning_logs.db");
    let ark = dir.join("ark.db");
    std::fs::write(&ark, b"").unwrap();
    let url = redis.url();
    let (r, a) = (reasoning.display().to_string(), ark.display().to_string());
    let mut args = vec![
        "collector",
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        &url,
        "--reasoning-db",
        &r,
        "--ark-db",
        &a,
    ];
    args.extend_from_slice(&FAST);
    let log = dir.join("collector.log");
    let (collector, _) = Logged::start(&args, &log);
    let mut conn = redis.connection().await;

    // Many cycles with both databases unusable.
    let first = wait_stored(&mut conn, "memory", "a memory snapshot", |_| true).await;
    let v0 = first["version"].as_u64().unwrap();
    let m = wait_stored(&mut conn, "memory", "ten more cycles", |s| {
        s["version"].as_u64().unwrap() >= v0 + 10
    })
    .await;
    let reasoning_source = &m["sources"]["reasoning"];
    assert_eq!(reasoning_source["source"], "stale");
    assert!(reasoning_source.get("age_seconds").is_none(), "never read");
    assert!(
        reasoning_source["error"]
            .as_str()
            .unwrap()
            .contains("no such file")
    );
    let ark_source = &m["sources"]["ark"];
    assert_eq!(ark_source["source"], "stale");
    assert!(
        ark_source["error"]
            .as_str()
            .unwrap()
            .contains("no table code_index"),
        "{ark_source}"
    );
    // Nothing invented.
    assert_eq!(m["ingestion_rate"], 0.0);
    assert_eq!(m["dedup_rate"], 0.0);
    // The four tiers are always there, at 0 before anything was read.
    assert_eq!(
        m["trust_distribution"],
        json!({"core": 0, "trusted": 0, "sandbox": 0, "external": 0})
    );
    assert_eq!(m["confidence_deltas"], json!([]));
    assert_eq!(m["logs"], json!([]));
    // A missing file is never created by the reader.
    assert!(!reasoning.exists());
    assert_eq!(
        collector.count("collector source unavailable", "reasoning"),
        1
    );
    assert_eq!(collector.count("collector source unavailable", "ark"), 1);

    // The database appears: live, and logged once as back.
    let c = rusqlite::Connection::open(&reasoning).unwrap();
    c.execute_batch(REASONING_DDL).unwrap();
    drop(c);
    wait_stored(&mut conn, "memory", "reasoning live", |s| {
        source_of(s, "reasoning") == "live"
    })
    .await;
    let deadline = Instant::now() + WAIT;
    while collector.count("collector source is back; section live again", "reasoning") == 0 {
        assert!(Instant::now() < deadline, "recovery not logged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        collector.count("collector source unavailable", "reasoning"),
        1
    );
    drop(collector);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Moves the fixture databases to `<dir>/data/`, where seed 001's
/// `ARK_BASE_PATH=<dir>` puts them.
fn seed_layout(db: &mut Databases) {
    let data = db.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for path in [&mut db.reasoning, &mut db.ark] {
        let to = data.join(path.file_name().unwrap());
        std::fs::rename(&*path, &to).unwrap();
        *path = to;
    }
}

/// The collector's `--listen` when no flag gives it.
const DEFAULT_COLLECTOR_PORT: u16 = 9090;

#[tokio::test]
async fn the_seeds_environment_alone_runs_a_live_collector() {
    let redis = RedisServer::start();
    write_federation(&redis).await;
    // Sync events as seed 001's producers LPUSH them (all valid here).
    let mut conn = redis.connection().await;
    let mut pipe = redis::pipe();
    pipe.del("sync_events");
    for i in 0..15u64 {
        let event = json!({
            "timestamp": 1_699_800_000_000u64 + i * 1000, "source": "ark-node-alpha",
            "target": "ark-node-beta", "event_type": "memory_sync", "bytes": 2048 + i,
            "success": i % 4 != 0,
        });
        pipe.lpush("sync_events", event.to_string());
    }
    pipe.query_async::<()>(&mut conn).await.unwrap();
    let mut db = create_databases();
    seed_layout(&mut db);

    // `switchboard collector`, no flag, and only seed 001's two variables in
    // its environment (no SWITCHBOARD_* at all).
    assert!(
        std::net::TcpListener::bind(("0.0.0.0", DEFAULT_COLLECTOR_PORT)).is_ok(),
        "port {DEFAULT_COLLECTOR_PORT}, the collector's default --listen, is in use: this test starts a collector without flags"
    );
    let base = db.dir.display().to_string();
    let url = redis.url();
    let collector = Logged::spawn_env(
        DEFAULT_COLLECTOR_PORT,
        &["collector"],
        &[("REDIS_URL", &url), ("ARK_BASE_PATH", &base)],
        &db.dir.join("collector.log"),
    );
    let f = wait_stored(&mut conn, "federation", "federation live", all_live).await;
    let m = wait_stored(&mut conn, "memory", "memory live", all_live).await;
    assert_eq!(
        f["sources"],
        json!({"peers": {"source": "live"}, "sync_events": {"source": "live"}})
    );
    assert_eq!(
        m["sources"],
        json!({"reasoning": {"source": "live"}, "ark": {"source": "live"}})
    );
    // The sync events exactly as `LRANGE sync_events 0 9` returns them.
    let newest: Vec<String> = redis::cmd("LRANGE")
        .arg("sync_events")
        .arg(0)
        .arg(9)
        .query_async(&mut conn)
        .await
        .unwrap();
    let newest: Vec<Value> = newest
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(f["sync_traffic"], Value::Array(newest));
    // Each peer with the status of its hash (no --peer-staleness): the one
    // whose last_seen is an hour old still says online. 4 of 5 online;
    // (1 + 1 + 0.75 + 0.75) / 4 = 87.5 %; (10 + 20 + 33 + 500) / 4 = 140.75.
    assert_eq!(f["network_health"], 80.0);
    assert_eq!(f["data_integrity"], 87.5);
    assert_eq!(f["avg_latency"], 140.8);
    // The databases found under $ARK_BASE_PATH/data (seed 001's formulas).
    assert_eq!(
        m["trust_distribution"],
        json!({"core": 3, "trusted": 2, "sandbox": 1, "external": 1})
    );
    assert_eq!(m["dedup_rate"], 75.0);
    assert_eq!(m["quarantine_count"], 2);
    assert_eq!(
        m["confidence_deltas"],
        expected_memory(&db)["confidence_deltas"]
    );
    // It runs as a collector: leading, healthy, and says where its settings came from.
    let (status, _) = http_get(DEFAULT_COLLECTOR_PORT, "/health/ready").unwrap();
    assert_eq!(status, 200);
    let body = http_get(DEFAULT_COLLECTOR_PORT, "/metrics").unwrap().1;
    assert_eq!(metric_value(&body, "switchboard_collector_leader", ""), 1.0);
    let log = collector.text();
    for line in [
        "REDIS_URL stands for --redis-url",
        "ARK_BASE_PATH stands for --reasoning-db",
        "ARK_BASE_PATH stands for --ark-db",
    ] {
        assert!(log.contains(line), "{line:?} not logged: {log}");
    }
}

#[tokio::test]
async fn flags_and_switchboard_variables_win_over_the_seeds_environment() {
    let redis = RedisServer::start();
    write_federation(&redis).await;
    let db = create_databases();
    // ARK_BASE_PATH names a directory without data/; REDIS_URL a port where
    // nothing listens. SWITCHBOARD_REDIS_URL and --ark-db must win.
    let base = temp_dir("no-ark");
    let (url, base_text, ark) = (
        redis.url(),
        base.display().to_string(),
        db.ark.display().to_string(),
    );
    let mut args = vec!["collector", "--listen", "127.0.0.1:0", "--ark-db", &ark];
    args.extend_from_slice(&FAST);
    let _collector = Logged::start_env(
        &args,
        &[
            ("REDIS_URL", "redis://127.0.0.1:1/0"),
            ("SWITCHBOARD_REDIS_URL", &url),
            ("ARK_BASE_PATH", &base_text),
        ],
        &db.dir.join("collector.log"),
    );
    let mut conn = redis.connection().await;
    let m = wait_stored(&mut conn, "memory", "ark live, reasoning stale", |s| {
        source_of(s, "ark") == "live" && source_of(s, "reasoning") == "stale"
    })
    .await;
    // The flag gave ark.db; ARK_BASE_PATH only the database no flag named.
    assert_eq!(m["dedup_rate"], 75.0);
    let error = m["sources"]["reasoning"]["error"].as_str().unwrap();
    let expected = base.join("data").join("reasoning_logs.db");
    assert!(
        error.contains(&format!("{}: no such file", expected.display())),
        "{error}"
    );
    // Published to, and federation read from, SWITCHBOARD_REDIS_URL's Redis.
    wait_stored(&mut conn, "federation", "federation live", all_live).await;
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test]
async fn standalone_in_the_seeds_environment_reads_its_redis_and_databases() {
    let federation_redis = RedisServer::start();
    write_federation(&federation_redis).await;
    let mut db = create_databases();
    seed_layout(&mut db);
    // Its admin listener on a port of its own too (the default, 9091, may
    // be another process's).
    let mut args = vec![
        "standalone",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(&FAST);
    let (url, base) = (federation_redis.url(), db.dir.display().to_string());
    let (_standalone, port) = Logged::start_env(
        &args,
        &[("REDIS_URL", &url), ("ARK_BASE_PATH", &base)],
        &db.dir.join("standalone.log"),
    );
    let ws = |path: &str| format!("ws://127.0.0.1:{port}{path}");
    let mut client = Client::connect(&ws("/ws/federation")).await;
    let f = client.recv_until(WAIT, all_live).await;
    assert_eq!(
        f["sources"],
        json!({"peers": {"source": "live"}, "sync_events": {"source": "live"}})
    );
    assert_eq!(f["peers"].as_array().unwrap().len(), 5);
    let mut client = Client::connect(&ws("/ws/memory")).await;
    let m = client.recv_until(WAIT, all_live).await;
    assert_eq!(
        m["trust_distribution"],
        json!({"core": 3, "trusted": 2, "sandbox": 1, "external": 1})
    );
    assert_eq!(m["dedup_rate"], 75.0);
}

fn leader_flag(collector: &Switchboard) -> Option<f64> {
    let (status, body) = http_get(collector.port, "/metrics").ok()?;
    (status == 200).then(|| metric_value(&body, "switchboard_collector_leader", ""))
}

#[tokio::test]
async fn two_collectors_one_leads_and_the_other_takes_over_with_increasing_versions() {
    let redis = RedisServer::start();
    const TTL: Duration = Duration::from_secs(4);
    let lease = [
        "--simulate",
        "always",
        "--lease-ttl",
        "4s",
        "--lease-renew-interval",
        "2s",
    ];
    const KEY: &str = "switchboard:collector:leader";
    let mut conn = redis.connection().await;
    let a = collector(&redis, &lease);
    // B starts 1.4 s into A's 2 s renew cycle: out of phase, so that only a
    // follower that reads the lease's remaining time takes over right when it
    // runs out (one that retried once per renew interval would be ~1.4 s late).
    let deadline = Instant::now() + WAIT;
    loop {
        let holder: Option<String> = redis::cmd("GET")
            .arg(KEY)
            .query_async(&mut conn)
            .await
            .unwrap();
        if holder.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first collector never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(1400)).await;
    let b = collector(&redis, &lease);
    let gateway = Switchboard::gateway(&redis, &[]);
    let mut client = Client::connect(&gateway.ws_url("/ws")).await;
    client.recv_json().await; // connection_established
    let reply = client
        .subscribe(json!({"type": "subscribe", "channel": "federation"}))
        .await;
    assert_eq!(reply["type"], "subscribed");

    // Exactly one leads.
    let deadline = Instant::now() + WAIT;
    let (leader, follower) = loop {
        match (leader_flag(&a), leader_flag(&b)) {
            (Some(1.0), Some(0.0)) => break (a, b),
            (Some(0.0), Some(1.0)) => break (b, a),
            _ => {}
        }
        assert!(Instant::now() < deadline, "no single leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut versions: Vec<u64> = Vec::new();
    let observe = |versions: &mut Vec<u64>, m: &Value| {
        versions.push(m["data"]["version"].as_u64().expect("a versioned snapshot"));
    };
    for _ in 0..5 {
        let m = client
            .recv_until(WAIT, |m| m["type"] == "snapshot" || m["type"] == "message")
            .await;
        observe(&mut versions, &m);
        assert_eq!(leader_flag(&follower), Some(0.0), "one leader at a time");
    }
    let before = *versions.last().unwrap();

    // The leader dies without releasing its lease.
    let mut leader = leader;
    let dead_token: String = redis::cmd("GET")
        .arg(KEY)
        .query_async(&mut conn)
        .await
        .unwrap();
    leader.signal("KILL");
    leader.wait_exit(WAIT);
    let killed = Instant::now();
    // The lease runs out at the dead leader's last renewal plus the TTL.
    let pttl: i64 = redis::cmd("PTTL")
        .arg(KEY)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 0, "the dead leader's lease is still running: {pttl}");
    let expires = Instant::now() + Duration::from_millis(pttl as u64);
    let deadline = killed + WAIT;
    let taken = loop {
        let holder: Option<String> = redis::cmd("GET")
            .arg(KEY)
            .query_async(&mut conn)
            .await
            .unwrap();
        if holder.is_some_and(|h| h != dead_token) {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the follower never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Never before the lease ran out (the 50 ms cover reading the clock after
    // Redis computed PTTL), and right after it: the follower read the lease's
    // remaining time and tried again then, not a renew interval later.
    assert!(
        taken + Duration::from_millis(50) >= expires,
        "lease taken {:?} before it ran out",
        expires - taken
    );
    let late = taken.saturating_duration_since(expires);
    eprintln!("lease taken {late:?} after it ran out");
    assert!(
        late < Duration::from_secs(1),
        "lease taken {late:?} after it ran out"
    );
    let m = client
        .recv_until(WAIT, |m| {
            m["type"] == "message" && m["data"]["version"].as_u64() > Some(before)
        })
        .await;
    let took = killed.elapsed();
    observe(&mut versions, &m);
    assert_eq!(leader_flag(&follower), Some(1.0));
    // Within the TTL plus one cycle (at most 300 ms here); the 3 s margin is
    // for a loaded machine: a correctness bound, not a performance figure.
    assert!(
        took < TTL + Duration::from_millis(300) + Duration::from_secs(3),
        "takeover took {took:?}"
    );
    for _ in 0..3 {
        let m = client.recv_until(WAIT, |m| m["type"] == "message").await;
        observe(&mut versions, &m);
    }
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions increase across the takeover: {versions:?}"
    );

    // A clean stop releases the lease: a new collector takes over promptly.
    let c = collector(&redis, &lease);
    let mut follower = follower;
    follower.signal("TERM");
    assert!(follower.wait_exit(WAIT).is_some(), "stops on SIGTERM");
    let deadline = Instant::now() + WAIT;
    while leader_flag(&c) != Some(1.0) {
        assert!(Instant::now() < deadline, "no takeover after a clean stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = *versions.last().unwrap();
    let m = client
        .recv_until(WAIT, |m| {
            m["type"] == "message" && m["data"]["version"].as_u64() > Some(last)
        })
        .await;
    observe(&mut versions, &m);
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
}

#[tokio::test]
async fn standalone_reads_the_sqlite_files_and_simulates_federation() {
    let db = create_databases();
    let mut args = db_args(&db);
    args.extend(FAST.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sb = Switchboard::standalone(&args);
    sb.wait_ready(WAIT);
    let mut client = Client::connect(&sb.ws_url("/ws/memory")).await;
    let memory = client.recv_until(WAIT, all_live).await;
    assert_eq!(fields(&memory, &MEMORY_FIELDS), expected_memory(&db));
    let mut client = Client::connect(&sb.ws_url("/ws/federation")).await;
    let federation = client.recv_json().await;
    assert_eq!(source_of(&federation, "peers"), "simulated");
    assert_eq!(source_of(&federation, "sync_events"), "simulated");
}

#[tokio::test]
async fn demo_data_gives_live_dashboards() {
    let redis = RedisServer::start();
    let dir = temp_dir("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "demo-data",
            dir.to_str().unwrap(),
            "--redis-url",
            &redis.url(),
        ])
        .env("SWITCHBOARD_LOG_LEVEL", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("switchboard collector --redis-url"),
        "{stdout}"
    );
    // A second run refuses to overwrite.
    let again = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["demo-data", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let (r, a) = (
        dir.join("reasoning_logs.db").display().to_string(),
        dir.join("ark.db").display().to_string(),
    );
    // No --peer-staleness: the demo peer whose heartbeat stopped says offline itself.
    let _collector = collector(&redis, &["--reasoning-db", &r, "--ark-db", &a]);
    let mut conn = redis.connection().await;
    let f = wait_stored(&mut conn, "federation", "demo federation live", all_live).await;
    assert_eq!(f["peers"].as_array().unwrap().len(), 5);
    // Demo peers: 3 online, 1 degraded, 1 offline (its heartbeat stopped).
    assert_eq!(f["network_health"], 60.0);
    assert_eq!(f["data_integrity"], 68.8);
    assert_eq!(f["sync_traffic"].as_array().unwrap().len(), 10);
    let m = wait_stored(&mut conn, "memory", "demo memory live", all_live).await;
    assert_eq!(
        m["trust_distribution"],
        json!({"core": 18, "trusted": 10, "sandbox": 8, "external": 4})
    );
    assert!(m["ingestion_rate"].as_f64().unwrap() > 0.0);
    assert_eq!(m["confidence_deltas"].as_array().unwrap().len(), 50);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tiny `/discover` server: answers with `body`, or 500 while `failing`.
async fn discover_server(body: String, failing: Arc<AtomicBool>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            let failing = failing.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let (status, body) = if failing.load(Ordering::SeqCst) {
                    ("500 Internal Server Error", "{}".to_string())
                } else {
                    ("200 OK", body)
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn discovered_peers_join_the_mesh_and_a_failing_service_turns_stale() {
    let redis = RedisServer::start();
    write_federation(&redis).await;
    let now = now_ms();
    let body = json!({"peers": [
        // Known to Redis too: Redis fields win.
        {"id": "ark-core-1", "status": "offline"},
        // Only discovered: joins the mesh.
        {"node_id": "ark-edge-1", "hostname": "edge.local", "trust_tier": "verified",
         "status": "online", "latency": 41, "last_seen": now},
    ]})
    .to_string();
    let failing = Arc::new(AtomicBool::new(false));
    let port = discover_server(body, failing.clone()).await;
    let url = format!("http://127.0.0.1:{port}/discover");
    let _collector = collector(
        &redis,
        &["--federation-discover-url", &url, "--peer-staleness", "5m"],
    );
    let mut conn = redis.connection().await;
    let f = wait_stored(&mut conn, "federation", "discover live", all_live).await;
    assert_eq!(source_of(&f, "discover"), "live");
    let peers = f["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 6);
    assert_eq!(peers[0]["id"], "ark-core-1");
    assert_eq!(peers[0]["status"], "online");
    assert_eq!(
        peers[2],
        json!({"id": "ark-edge-1", "hostname": "edge.local", "trust_tier": "verified",
               "status": "online", "latency": 41, "last_seen": now})
    );
    // 4 of 6 online; weights (1 + 1 + 0.75 + 0.5) / (4 + 0.5) = 72.2 %;
    // latency (10 + 20 + 33 + 41) / 4 = 26.0.
    assert_eq!(f["network_health"], 66.7);
    assert_eq!(f["data_integrity"], 72.2);
    assert_eq!(f["avg_latency"], 26.0);

    failing.store(true, Ordering::SeqCst);
    let f = wait_stored(&mut conn, "federation", "discover stale", |s| {
        source_of(s, "discover") == "stale"
    })
    .await;
    assert!(
        f["sources"]["discover"]["error"]
            .as_str()
            .unwrap()
            .contains("500")
    );
    // Redis peers are still read live; the last discovered peer is kept.
    assert_eq!(source_of(&f, "peers"), "live");
    assert_eq!(f["peers"].as_array().unwrap().len(), 6);
    failing.store(false, Ordering::SeqCst);
    wait_stored(&mut conn, "federation", "discover live again", all_live).await;
}

#[tokio::test]
async fn demo_data_follow_keeps_writing_until_stopped() {
    let redis = RedisServer::start();
    let dir = temp_dir("follow");
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "demo-data",
            dir.to_str().unwrap(),
            "--redis-url",
            &redis.url(),
            "--follow",
            "--follow-interval",
            "100ms",
        ])
        .env("SWITCHBOARD_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut conn = redis.connection().await;
    let sessions = |db: &Path| -> i64 {
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| {
                c.busy_timeout(Duration::from_secs(5))?;
                c.query_row("SELECT COUNT(*) FROM reasoning_sessions", [], |r| r.get(0))
            })
            .unwrap_or(0)
    };
    let db = dir.join("reasoning_logs.db");
    let deadline = Instant::now() + WAIT;
    let (first_seen, first_sessions) = loop {
        let seen: Option<u64> = redis::cmd("HGET")
            .arg("peer:ark-core-1")
            .arg("last_seen")
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some(seen) = seen {
            break (seen, sessions(&db));
        }
        assert!(Instant::now() < deadline, "no peers written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Heartbeats move on and sessions keep arriving.
    loop {
        let seen: u64 = redis::cmd("HGET")
            .arg("peer:ark-core-1")
            .arg("last_seen")
            .query_async(&mut conn)
            .await
            .unwrap();
        if seen > first_seen && sessions(&db) > first_sessions {
            break;
        }
        assert!(Instant::now() < deadline, "--follow wrote nothing new");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "--follow did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}");
    let _ = std::fs::remove_dir_all(&dir);
}
