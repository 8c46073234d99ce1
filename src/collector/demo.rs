//! `switchboard demo-data DIR`: sample sources with exactly the schema the
//! collector reads (`docs/SOURCES.md`), so anyone can try the live path.
//!
//! Creates `DIR/reasoning_logs.db` and `DIR/ark.db` (each written to a
//! temporary file and renamed into place, so a running collector never sees a
//! half-written database), and with a Redis URL five peer hashes and a dozen
//! sync events. With `follow`, it keeps writing — new sessions and stages,
//! occasional sandbox failures, peer heartbeats, sync events — until stopped,
//! so the live dashboards move.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rusqlite::Connection;
use tokio_util::sync::CancellationToken;

use super::federation::pattern_prefix;
use super::schema::{ARK_DDL, REASONING_DDL};
use crate::engine::tls::{self, RedisTls};

/// What to create.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub dir: PathBuf,
    /// Also write peers and sync events to this Redis.
    pub redis_url: Option<String>,
    /// For a `rediss://` URL.
    pub redis_tls: Option<RedisTls>,
    /// Replace existing database files.
    pub force: bool,
    /// Keep writing at this interval until stopped.
    pub follow: Option<Duration>,
    /// Peer hash pattern (`PREFIX*`), as the collector's `--federation-peer-pattern`.
    pub peer_pattern: String,
    /// Sync events list, as the collector's `--federation-sync-key`.
    pub sync_key: String,
    /// Peer hashes to write: the named five first, then generated ones.
    pub peers: usize,
}

/// Why demo data could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0} already exists; pass --force to replace it")]
    Exists(PathBuf),
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path}: SQLite: {reason}")]
    Sqlite { path: PathBuf, reason: String },
    #[error("Redis: {0}")]
    Redis(String),
    #[error(
        "the peer pattern {0:?} must be a literal prefix followed by a single * (such as peer:*)"
    )]
    Pattern(String),
}

/// What was written.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    pub reasoning_db: PathBuf,
    pub ark_db: PathBuf,
    pub peers: usize,
    pub sync_events: usize,
}

const AGENTS: [&str; 4] = ["kyle", "aria", "sage", "nova"];
const STAGES: [&str; 3] = ["analysis", "synthesis", "validation"];
/// id, trust tier, status, latency, heartbeat age in seconds (the last one
/// stopped 10 minutes ago and its status says so, as a federation service
/// would write it: offline with or without --peer-staleness).
const NAMED_PEERS: [(&str, &str, &str, u64, u64); 5] = [
    ("ark-core-1", "core", "online", 12, 1),
    ("ark-core-2", "core", "online", 18, 2),
    ("ark-trusted-1", "trusted", "online", 35, 1),
    ("ark-trusted-2", "trusted", "degraded", 140, 3),
    ("ark-verified-1", "verified", "offline", 60, 600),
];

/// One sample peer: id, trust tier, status, latency, heartbeat age in seconds.
#[derive(Debug, Clone, PartialEq)]
struct Peer {
    id: String,
    tier: &'static str,
    status: &'static str,
    latency: u64,
    age: u64,
}

/// `count` peers: the named five first, then a generated mesh (`ark-mesh-NNN`,
/// tiers in turn, mostly online, one in 17 degraded and one in 29 offline).
fn peers(count: usize) -> Vec<Peer> {
    let named = NAMED_PEERS
        .iter()
        .map(|&(id, tier, status, latency, age)| Peer {
            id: id.to_string(),
            tier,
            status,
            latency,
            age,
        });
    let mesh = (1..).map(|i: u64| {
        let (status, age) = match i {
            i if i % 29 == 0 => ("offline", 600),
            i if i % 17 == 0 => ("degraded", 4),
            _ => ("online", 1 + i % 4),
        };
        Peer {
            id: format!("ark-mesh-{i:03}"),
            tier: ["core", "trusted", "verified", "community"][(i % 4) as usize],
            status,
            latency: 8 + (i * 37) % 150,
            age,
        }
    });
    named.chain(mesh).take(count).collect()
}

const EVENT_TYPES: [&str; 3] = ["memory_sync", "config_update", "heartbeat"];
/// Sync events kept in the list by `follow`.
const SYNC_KEEP: isize = 100;

/// Creates the sample data.
pub async fn create(config: &DemoConfig) -> Result<DemoSummary, DemoError> {
    let prefix = peer_prefix(&config.peer_pattern)?;
    std::fs::create_dir_all(&config.dir).map_err(|e| DemoError::Io {
        path: config.dir.clone(),
        reason: e.to_string(),
    })?;
    let reasoning_db = config.dir.join("reasoning_logs.db");
    let ark_db = config.dir.join("ark.db");
    for path in [&reasoning_db, &ark_db] {
        if path.exists() && !config.force {
            return Err(DemoError::Exists(path.clone()));
        }
    }
    let (r, a) = (reasoning_db.clone(), ark_db.clone());
    blocking(move || {
        let mut rng = StdRng::from_os_rng();
        create_db(&r, REASONING_DDL, |c| fill_reasoning(c, &mut rng))?;
        create_db(&a, ARK_DDL, |c| fill_ark(c, &mut rng))
    })
    .await?;
    let mut summary = DemoSummary {
        reasoning_db,
        ark_db,
        peers: 0,
        sync_events: 0,
    };
    if let Some(url) = &config.redis_url {
        let mut conn = connect(url, config.redis_tls.as_ref()).await?;
        let mut rng = StdRng::from_os_rng();
        let peers = peers(config.peers);
        write_peers(&mut conn, &prefix, &peers, &mut rng).await?;
        let mut pipe = redis::pipe();
        pipe.del(&config.sync_key);
        let now = now_ms();
        for i in (0..12u64).rev() {
            pipe.lpush(
                &config.sync_key,
                sync_event(&peers, &mut rng, now - i * 2_500),
            );
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| DemoError::Redis(e.to_string()))?;
        summary.peers = peers.len();
        summary.sync_events = 12;
    }
    Ok(summary)
}

async fn connect(
    url: &str,
    tls: Option<&RedisTls>,
) -> Result<redis::aio::MultiplexedConnection, DemoError> {
    tls::client(url, tls)
        .map_err(|e| DemoError::Redis(format!("bad URL: {e}")))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| DemoError::Redis(tls::explain(e)))
}

fn peer_prefix(pattern: &str) -> Result<String, DemoError> {
    let prefix = pattern_prefix(pattern);
    if pattern.strip_prefix(prefix) != Some("*") {
        return Err(DemoError::Pattern(pattern.to_string()));
    }
    Ok(prefix.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DemoError> + Send + 'static,
) -> Result<T, DemoError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DemoError::Io {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?
}

fn sqlite_error(path: &Path) -> impl Fn(rusqlite::Error) -> DemoError + '_ {
    move |e| DemoError::Sqlite {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Writes a fresh database next to `path` and renames it into place.
fn create_db(
    path: &Path,
    ddl: &str,
    fill: impl FnOnce(&Connection) -> rusqlite::Result<()>,
) -> Result<(), DemoError> {
    let tmp = path.with_extension("db.tmp");
    let _ = std::fs::remove_file(&tmp);
    let conn = Connection::open(&tmp).map_err(sqlite_error(&tmp))?;
    conn.execute_batch(ddl).map_err(sqlite_error(&tmp))?;
    conn.execute_batch("BEGIN").map_err(sqlite_error(&tmp))?;
    fill(&conn).map_err(sqlite_error(&tmp))?;
    conn.execute_batch("COMMIT").map_err(sqlite_error(&tmp))?;
    drop(conn);
    for stale in ["db-journal", "db-wal", "db-shm"] {
        let _ = std::fs::remove_file(path.with_extension(stale));
    }
    std::fs::rename(&tmp, path).map_err(|e| DemoError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn insert_session(
    conn: &Connection,
    rng: &mut StdRng,
    id: &str,
    seconds_ago: f64,
) -> rusqlite::Result<()> {
    let agent = AGENTS.choose(rng).copied().unwrap_or("kyle");
    let confidence: f64 = rng.random_range(0.55..0.98);
    let at = format!("-{seconds_ago:.3} seconds");
    conn.execute(
        "INSERT INTO reasoning_sessions
           (session_id, agent_name, query, final_output, overall_confidence, total_duration_ms, created_at)
         VALUES (?1, ?2, ?3, 'ok', ?4, ?5, datetime('now', ?6))",
        rusqlite::params![
            id,
            agent,
            format!("demo query {id}"),
            (confidence * 100.0).round() / 100.0,
            rng.random_range(40.0..400.0),
            at
        ],
    )?;
    for (order, stage) in STAGES.iter().enumerate() {
        let c: f64 = rng.random_range(0.4..0.99);
        conn.execute(
            "INSERT INTO reasoning_stages (session_id, stage_name, stage_order, confidence, duration_ms, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, datetime('now', ?6))",
            rusqlite::params![
                id,
                stage,
                order as i64,
                (c * 100.0).round() / 100.0,
                rng.random_range(5.0..120.0),
                at
            ],
        )?;
    }
    Ok(())
}

fn fill_reasoning(conn: &Connection, rng: &mut StdRng) -> rusqlite::Result<()> {
    // One session every 2 s over the last 3 minutes: about 30 in the last minute.
    for i in 0..90u32 {
        insert_session(conn, rng, &format!("demo-{i:04}"), f64::from(180 - i * 2))?;
    }
    Ok(())
}

fn fill_ark(conn: &Connection, rng: &mut StdRng) -> rusqlite::Result<()> {
    for (tier, n) in [
        ("core", 18),
        ("trusted", 10),
        ("sandbox", 8),
        ("external", 4),
    ] {
        for i in 0..n {
            conn.execute(
                "INSERT INTO code_index (file_path, content_hash, trust_tier) VALUES (?1, ?2, ?3)",
                rusqlite::params![
                    format!("src/{tier}/module_{i}.py"),
                    format!("{:016x}", rng.random::<u64>()),
                    tier
                ],
            )?;
        }
    }
    let snippets = [
        "def retry(fn, attempts=3): ...",
        "async with session.begin(): ...",
        "logger = logging.getLogger(__name__)",
        "@dataclass(frozen=True)",
        "with open(path, encoding='utf-8') as f: ...",
    ];
    for i in 0..15 {
        conn.execute(
            "INSERT INTO code_patterns (pattern_type, code_snippet, usage_count) VALUES ('idiom', ?1, ?2)",
            rusqlite::params![snippets[i % snippets.len()], rng.random_range(1..20)],
        )?;
    }
    for i in 0..40u32 {
        let status = match i % 13 {
            0 => "failed",
            7 => "timeout",
            _ => "success",
        };
        insert_execution(conn, rng, status, f64::from(i * 900))?;
    }
    Ok(())
}

fn insert_execution(
    conn: &Connection,
    rng: &mut StdRng,
    status: &str,
    seconds_ago: f64,
) -> rusqlite::Result<()> {
    let error = match status {
        "failed" => Some("ImportError: module 'os' is not allowed in the sandbox"),
        "timeout" => Some("execution exceeded 5 s"),
        _ => None,
    };
    conn.execute(
        "INSERT INTO sandbox_executions (code_hash, language, status, exit_code, duration_ms, error, created_at)
         VALUES (?1, 'python', ?2, ?3, ?4, ?5, datetime('now', ?6))",
        rusqlite::params![
            format!("{:016x}", rng.random::<u64>()),
            status,
            i64::from(status != "success"),
            rng.random_range(10.0..900.0),
            error,
            format!("-{seconds_ago:.3} seconds")
        ],
    )?;
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn sync_event(peers: &[Peer], rng: &mut StdRng, timestamp: u64) -> String {
    let ids: Vec<&str> = peers.iter().map(|p| p.id.as_str()).collect();
    let source = ids.choose(rng).copied().unwrap_or("ark-core-1");
    let target = ids
        .iter()
        .copied()
        .filter(|t| *t != source)
        .collect::<Vec<_>>()
        .choose(rng)
        .copied()
        .unwrap_or("ark-core-2");
    serde_json::json!({
        "timestamp": timestamp,
        "source": source,
        "target": target,
        "event_type": EVENT_TYPES.choose(rng).copied().unwrap_or("heartbeat"),
        "bytes": rng.random_range(256..16_384),
        "success": rng.random_bool(0.95),
    })
    .to_string()
}

async fn write_peers(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    peers: &[Peer],
    rng: &mut StdRng,
) -> Result<(), DemoError> {
    let now = now_ms();
    let mut pipe = redis::pipe();
    for p in peers {
        let jitter: i64 = rng.random_range(-3..=3);
        pipe.hset_multiple(
            format!("{prefix}{}", p.id),
            &[
                ("hostname", format!("{}.local", p.id)),
                ("trust_tier", p.tier.to_string()),
                ("status", p.status.to_string()),
                ("latency", (p.latency as i64 + jitter).max(1).to_string()),
                ("last_seen", (now - p.age * 1000).to_string()),
            ],
        );
    }
    pipe.query_async::<()>(conn)
        .await
        .map_err(|e| DemoError::Redis(e.to_string()))
}

/// With `config.follow`, keeps adding to what [`create`] made until `stop`.
pub async fn follow(
    config: &DemoConfig,
    summary: &DemoSummary,
    stop: CancellationToken,
) -> Result<(), DemoError> {
    let Some(every) = config.follow else {
        return Ok(());
    };
    let prefix = peer_prefix(&config.peer_pattern)?;
    let mut redis = match &config.redis_url {
        Some(url) => Some(connect(url, config.redis_tls.as_ref()).await?),
        None => None,
    };
    let (r, a) = (summary.reasoning_db.clone(), summary.ark_db.clone());
    let mut rng = StdRng::from_os_rng();
    let mut n = 0u64;
    let peers = peers(config.peers);
    tracing::info!(every = ?every, "demo-data: writing until stopped (Ctrl-C)");
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
        n += 1;
        let (r, a) = (r.clone(), a.clone());
        let seed: u64 = rng.random();
        blocking(move || {
            let mut rng = StdRng::seed_from_u64(seed);
            let conn = Connection::open(&r).map_err(sqlite_error(&r))?;
            conn.busy_timeout(Duration::from_secs(2))
                .map_err(sqlite_error(&r))?;
            for i in 0..rng.random_range(0..=2) {
                insert_session(&conn, &mut rng, &format!("live-{n}-{i}"), 0.0)
                    .map_err(sqlite_error(&r))?;
            }
            if rng.random_bool(0.1) {
                let conn = Connection::open(&a).map_err(sqlite_error(&a))?;
                conn.busy_timeout(Duration::from_secs(2))
                    .map_err(sqlite_error(&a))?;
                let status = if rng.random_bool(0.3) {
                    "failed"
                } else {
                    "success"
                };
                insert_execution(&conn, &mut rng, status, 0.0).map_err(sqlite_error(&a))?;
            }
            Ok(())
        })
        .await?;
        if let Some(conn) = redis.as_mut() {
            write_peers(conn, &prefix, &peers, &mut rng).await?;
            let mut pipe = redis::pipe();
            pipe.lpush(&config.sync_key, sync_event(&peers, &mut rng, now_ms()))
                .ltrim(&config.sync_key, 0, SYNC_KEEP - 1);
            pipe.query_async::<()>(conn)
                .await
                .map_err(|e| DemoError::Redis(e.to_string()))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_patterns_must_be_a_prefix_and_a_star() {
        assert_eq!(peer_prefix("peer:*").unwrap(), "peer:");
        assert!(peer_prefix("peer:*:x").is_err());
        assert!(peer_prefix("peer:").is_err());
    }

    #[test]
    fn a_mesh_of_peers_starts_with_the_named_five_and_has_unique_ids() {
        assert_eq!(peers(3).len(), 3);
        let mesh = peers(100);
        assert_eq!(mesh.len(), 100);
        assert_eq!(mesh[0].id, "ark-core-1");
        assert_eq!(mesh[5].id, "ark-mesh-001");
        let ids: std::collections::HashSet<&str> = mesh.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids.len(), 100);
        let offline = mesh.iter().filter(|p| p.status == "offline").count();
        assert!((2..10).contains(&offline), "{offline} offline");
    }

    #[tokio::test]
    async fn creates_databases_the_collector_accepts_and_refuses_to_overwrite() {
        let dir = std::env::temp_dir().join(format!("sb-demo-{}", rand::random::<u32>()));
        let config = DemoConfig {
            dir: dir.clone(),
            redis_url: None,
            redis_tls: None,
            force: false,
            follow: None,
            peer_pattern: "peer:*".into(),
            sync_key: "sync_events".into(),
            peers: 5,
        };
        let summary = create(&config).await.unwrap();
        for (path, required) in [
            (
                &summary.reasoning_db,
                super::super::schema::REASONING_REQUIRED,
            ),
            (&summary.ark_db, super::super::schema::ARK_REQUIRED),
        ] {
            let db = super::super::sqlite::Database::new(
                super::super::sqlite::SqliteConfig {
                    path: path.clone(),
                    busy_timeout: Duration::from_millis(100),
                    query_timeout: Duration::from_secs(5),
                },
                required,
            );
            db.read(|c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)))
                .await
                .unwrap();
        }
        assert!(matches!(create(&config).await, Err(DemoError::Exists(_))));
        let forced = DemoConfig {
            force: true,
            ..config
        };
        create(&forced).await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
