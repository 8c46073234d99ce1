//! One conformance suite, run against every engine: the in-memory engine, the
//! Redis engine on a private redis-server, and the Redis engine on a private
//! 3-master Redis Cluster (sharded pub/sub). What the gateway relies on —
//! offsets, epochs, history coverage, fenced snapshots, the live feed — must
//! hold identically for all.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{RedisCluster, RedisServer};
use switchboard::channel::ChannelName;
use switchboard::engine::connection::RedisTarget;
use switchboard::engine::memory::MemoryEngine;
use switchboard::engine::redis::{RedisConfig, RedisEngine};
use switchboard::engine::{
    Engine, EngineError, EngineEvent, HistoryConfig, HistoryPolicy, Idempotency, IdempotencyKey,
    PublishOptions,
};
use switchboard::json::Json;
use switchboard::metrics::{EngineMetrics, MetricsRegistry};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

type Events = mpsc::Receiver<EngineEvent>;

fn history() -> HistoryConfig {
    let mut h = HistoryConfig {
        default: HistoryPolicy {
            size: 5,
            ttl: Duration::from_secs(60),
            tombstone: Duration::ZERO,
        },
        ..HistoryConfig::default()
    };
    h.namespaces.insert(
        "nohist".into(),
        HistoryPolicy {
            size: 0,
            ttl: Duration::from_secs(60),
            tombstone: Duration::ZERO,
        },
    );
    h
}

fn ch(name: &str) -> ChannelName {
    ChannelName::parse(name, 128).unwrap()
}

fn json(text: &str) -> Json {
    Json::parse(Bytes::copy_from_slice(text.as_bytes()), 32).unwrap()
}

fn memory_engine() -> (Arc<dyn Engine>, Events) {
    let (tx, rx) = mpsc::channel(1024);
    (Arc::new(MemoryEngine::new(history(), tx)), rx)
}

async fn redis_engine(redis: &RedisServer) -> (Arc<dyn Engine>, Events, CancellationToken) {
    engine_on(RedisTarget::Single(redis.url()), "test:", 0).await
}

async fn engine_on(
    target: RedisTarget,
    prefix: &str,
    wait_replicas: usize,
) -> (Arc<dyn Engine>, Events, CancellationToken) {
    let (tx, rx) = mpsc::channel(1024);
    let stop = CancellationToken::new();
    let config = RedisConfig {
        target,
        prefix: prefix.into(),
        response_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        pool_size: 4,
        probe_interval: Duration::from_secs(1),
        max_channel_len: 128,
        max_json_depth: 32,
        history: history(),
        replica_id: "conformance".into(),
        wait_replicas,
        wait_timeout: Duration::from_millis(1000),
        cluster_rebuild_after: switchboard::engine::redis::DEFAULT_CLUSTER_REBUILD_AFTER,
        resend_guard: switchboard::engine::redis_config::DEFAULT_RESEND_GUARD,
        tls: None,
    };
    let engine = RedisEngine::start(
        config,
        tx,
        Arc::new(EngineMetrics::register(&MetricsRegistry::new())),
        stop.clone(),
    )
    .unwrap();
    for _ in 0..400 {
        if engine.health().ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(engine.health().ready, "redis engine not ready");
    (engine, rx, stop)
}

async fn next_message(events: &mut Events) -> switchboard::engine::IncomingMessage {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(EngineEvent::Message(m))) => return m,
            Ok(Some(_)) => continue,
            other => panic!("expected a live message, got {other:?}"),
        }
    }
}

async fn offsets_start_at_one_and_increase(engine: Arc<dyn Engine>, _events: Events) {
    let c = ch("offsets");
    let first = engine
        .publish(&c, &json("{\"n\":1}"), PublishOptions::default())
        .await
        .unwrap();
    let second = engine
        .publish(&c, &json("{\"n\":2}"), PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(first.offset, 1);
    assert_eq!(second.offset, 2);
    assert_eq!(first.epoch, second.epoch);
    let other = engine
        .publish(&ch("offsets2"), &json("1"), PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(other.offset, 1, "offsets are per channel");
}

async fn new_channel_has_an_epoch_the_first_publish_keeps(engine: Arc<dyn Engine>, _e: Events) {
    let c = ch("fresh");
    let position = engine.position(&c).await.unwrap();
    assert_eq!(position.offset, 0);
    let published = engine
        .publish(&c, &json("{}"), PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(published.epoch, position.epoch);
    assert_eq!(engine.position(&c).await.unwrap().offset, 1);
}

async fn history_is_ordered_and_honest_about_coverage(engine: Arc<dyn Engine>, _e: Events) {
    let c = ch("hist");
    for n in 1..=4 {
        engine
            .publish(
                &c,
                &json(&format!("{{\"n\":{n}}}")),
                PublishOptions::default(),
            )
            .await
            .unwrap();
    }
    let page = engine.history(&c, 1, 100).await.unwrap();
    assert!(page.covered);
    assert_eq!(page.position.offset, 4);
    let offsets: Vec<u64> = page.entries.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, vec![2, 3, 4]);
    assert_eq!(page.entries[0].data.as_str(), "{\"n\":2}");
    assert!(page.entries[0].published_us > 0);
    let at_top = engine.history(&c, 4, 100).await.unwrap();
    assert!(at_top.covered && at_top.entries.is_empty());
    let future = engine.history(&c, 9, 100).await.unwrap();
    assert!(
        !future.covered,
        "an offset beyond the top is not a valid position"
    );
    // Capacity 5: after 20 messages the oldest are gone.
    for n in 5..=20 {
        engine
            .publish(&c, &json(&format!("{n}")), PublishOptions::default())
            .await
            .unwrap();
    }
    let behind = engine.history(&c, 2, 100).await.unwrap();
    assert!(
        !behind.covered,
        "a gap older than history must not look covered"
    );
    let recent = engine.history(&c, 17, 100).await.unwrap();
    assert!(recent.covered);
    assert_eq!(recent.entries.len(), 3);
}

async fn namespace_policy_applies(engine: Arc<dyn Engine>, _e: Events) {
    let c = ch("nohist:x");
    engine
        .publish(&c, &json("1"), PublishOptions::default())
        .await
        .unwrap();
    engine
        .publish(&c, &json("2"), PublishOptions::default())
        .await
        .unwrap();
    let page = engine.history(&c, 0, 100).await.unwrap();
    assert!(page.entries.is_empty());
    assert!(!page.covered);
    assert_eq!(page.position.offset, 2, "offsets exist without history");
}

async fn snapshots_are_stored_and_fenced_by_version(engine: Arc<dyn Engine>, _e: Events) {
    let c = ch("snap");
    assert_eq!(engine.snapshot(&c).await.unwrap(), None);
    let v5 = PublishOptions {
        snapshot: true,
        version: Some(5),
        ..PublishOptions::default()
    };
    let p = engine.publish(&c, &json("{\"v\":5}"), v5).await.unwrap();
    let s = engine.snapshot(&c).await.unwrap().unwrap();
    assert_eq!((s.offset, s.version), (p.offset, Some(5)));
    assert_eq!(s.data.as_str(), "{\"v\":5}");
    for stale in [5, 4] {
        let options = PublishOptions {
            snapshot: true,
            version: Some(stale),
            ..PublishOptions::default()
        };
        let err = engine.publish(&c, &json("{}"), options).await.unwrap_err();
        assert_eq!(err, EngineError::StaleVersion { current: 5 });
    }
    assert_eq!(
        engine.position(&c).await.unwrap().offset,
        p.offset,
        "a refused publish assigns no offset"
    );
    let v6 = PublishOptions {
        snapshot: true,
        version: Some(6),
        ..PublishOptions::default()
    };
    engine.publish(&c, &json("{\"v\":6}"), v6).await.unwrap();
    assert_eq!(engine.snapshot(&c).await.unwrap().unwrap().version, Some(6));
    // A plain message does not replace the snapshot.
    engine
        .publish(&c, &json("{\"plain\":1}"), PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(
        engine.snapshot(&c).await.unwrap().unwrap().data.as_str(),
        "{\"v\":6}"
    );
}

async fn feed_delivers_subscribed_channels_in_order(engine: Arc<dyn Engine>, mut events: Events) {
    let c = ch("live");
    engine.subscribe(std::slice::from_ref(&c)).await.unwrap();
    let mut expected = Vec::new();
    for n in 1..=50 {
        expected.push(
            engine
                .publish(
                    &c,
                    &json(&format!("{{\"n\":{n}}}")),
                    PublishOptions::default(),
                )
                .await
                .unwrap(),
        );
    }
    for (n, published) in expected.iter().enumerate() {
        let m = next_message(&mut events).await;
        assert_eq!(m.channel, c);
        assert_eq!(m.seq, Some((published.offset, published.epoch.clone())));
        assert_eq!(m.data.as_str(), format!("{{\"n\":{}}}", n + 1));
        assert!(m.published_us.is_some());
    }
    engine
        .publish(&ch("unwatched"), &json("1"), PublishOptions::default())
        .await
        .unwrap();
    engine.unsubscribe(std::slice::from_ref(&c)).await.unwrap();
    engine
        .publish(&c, &json("{\"after\":1}"), PublishOptions::default())
        .await
        .unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let Some(EngineEvent::Message(m)) = events.recv().await {
                return m;
            }
        }
    })
    .await;
    assert!(
        quiet.is_err(),
        "no delivery after unsubscribe or for unsubscribed channels: {quiet:?}"
    );
}

fn keyed(key: &str, window: Duration) -> PublishOptions {
    PublishOptions {
        idempotency: Some(Idempotency {
            key: IdempotencyKey::parse(key).unwrap(),
            window,
        }),
        ..PublishOptions::default()
    }
}

/// A producer's retry with the same key is answered with the first publish's
/// offset and epoch, and nothing is published again: no offset, no history
/// entry, no live message. Keys are per channel, and forgotten after their window.
async fn an_idempotency_key_publishes_once_within_its_window(
    engine: Arc<dyn Engine>,
    mut events: Events,
) {
    let c = ch("idem");
    let minute = Duration::from_secs(60);
    engine.subscribe(std::slice::from_ref(&c)).await.unwrap();
    let first = engine
        .publish(&c, &json("{\"n\":1}"), keyed("order-1", minute))
        .await
        .unwrap();
    let retry = engine
        .publish(&c, &json("{\"n\":1}"), keyed("order-1", minute))
        .await
        .unwrap();
    assert_eq!(retry, first, "the retry is answered with the first publish");
    let other = engine
        .publish(&c, &json("{\"n\":2}"), keyed("order-2", minute))
        .await
        .unwrap();
    assert_eq!(
        other.offset,
        first.offset + 1,
        "another key is another message"
    );
    let elsewhere = engine
        .publish(&ch("idem2"), &json("1"), keyed("order-1", minute))
        .await
        .unwrap();
    assert_eq!(elsewhere.offset, 1, "keys are per channel");
    let page = engine.history(&c, 0, 100).await.unwrap();
    let offsets: Vec<_> = page.entries.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, vec![first.offset, other.offset]);
    for expected in [&first, &other] {
        let m = next_message(&mut events).await;
        assert_eq!(m.seq, Some((expected.offset, expected.epoch.clone())));
    }
    // A short window: once it has passed, the key publishes again.
    let short = Duration::from_millis(200);
    let once = engine
        .publish(&c, &json("3"), keyed("brief", short))
        .await
        .unwrap();
    assert_eq!(
        engine
            .publish(&c, &json("3"), keyed("brief", short))
            .await
            .unwrap(),
        once
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = engine
        .publish(&c, &json("3"), keyed("brief", short))
        .await
        .unwrap();
    assert_eq!(
        again.offset,
        once.offset + 1,
        "a key past its window is new"
    );
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    let (engine, events) = super::memory_engine();
                    super::$name(engine, events).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let server = super::RedisServer::start();
                    let (engine, events, stop) = super::redis_engine(&server).await;
                    super::$name(engine, events).await;
                    stop.cancel();
                }
            )*
        }
        mod cluster {
            /// Every case on one cluster (six redis-servers take seconds to
            /// start), each with its own key prefix and engine; then again
            /// with publishes acknowledged only once a replica has them.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_suite_on_a_3_master_redis_cluster() {
                let cluster = super::RedisCluster::start(std::time::Duration::from_secs(2));
                let target = super::RedisTarget::from_url(&cluster.cluster_url()).unwrap();
                for wait_replicas in [0, 1] {
                    $(
                        let prefix = format!("{}-{wait_replicas}:", stringify!($name));
                        let (engine, events, stop) =
                            super::engine_on(target.clone(), &prefix, wait_replicas).await;
                        super::$name(engine, events).await;
                        stop.cancel();
                    )*
                }
                let waits: u64 = cluster
                    .ports
                    .iter()
                    .map(|p| {
                        let stats = cluster.cli(*p, &["info", "commandstats"]);
                        stats
                            .lines()
                            .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
                            .and_then(|rest| rest.split(',').next())
                            .and_then(|n| n.parse::<u64>().ok())
                            .unwrap_or(0)
                    })
                    .sum();
                assert!(waits > 0, "publishes with wait_replicas 1 ran WAIT on their master");
                // Publishes without a producer's key are guarded against the
                // cluster client resending the script: each left a record
                // of its own that expires with the guard.
                let guards: Vec<String> = cluster
                    .ports
                    .iter()
                    .flat_map(|p| {
                        cluster
                            .cli(*p, &["--scan", "--pattern", "*:idem:~*"])
                            .lines()
                            .map(|l| (*p, l.to_string()))
                            .collect::<Vec<_>>()
                    })
                    .map(|(p, key)| cluster.cli(p, &["-c", "pttl", &key]))
                    .collect();
                assert!(!guards.is_empty(), "publishes on a cluster leave resend guards");
                for ttl in &guards {
                    let ms: i64 = ttl.parse().unwrap_or(-3);
                    assert!((1..=60_000).contains(&ms), "a resend guard expires within 60 s: {ttl}");
                }
            }
        }
    };
}

conformance!(
    offsets_start_at_one_and_increase,
    new_channel_has_an_epoch_the_first_publish_keeps,
    history_is_ordered_and_honest_about_coverage,
    namespace_policy_applies,
    snapshots_are_stored_and_fenced_by_version,
    feed_delivers_subscribed_channels_in_order,
    an_idempotency_key_publishes_once_within_its_window,
);

/// `publish.lua` is a contract for producers that write to Redis directly
/// (docs/REDIS.md): the eight documented arguments keep working, and the
/// optional ninth keeps the channel's position longer than its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_script_takes_the_documented_arguments_and_an_optional_meta_ttl() {
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let script = include_str!("../src/engine/publish.lua");
    let call = |channel: &str, meta_ttl: Option<u64>| {
        let key = |suffix: &str| format!("switchboard:{{{channel}}}{suffix}");
        let mut cmd = ::redis::cmd("EVAL");
        cmd.arg(script)
            .arg(3)
            .arg(key(":meta"))
            .arg(key(":history"))
            .arg(key(":snapshot"))
            .arg(format!("switchboard:{{{channel}}}"))
            .arg(r#"{"n":1}"#)
            .arg(10)
            .arg(60_000)
            .arg("epoch-1")
            .arg(0)
            .arg("")
            .arg("publish");
        if let Some(ms) = meta_ttl {
            cmd.arg(ms);
        }
        cmd
    };
    let pttl = |channel: &str, suffix: &str| {
        let mut cmd = ::redis::cmd("PTTL");
        cmd.arg(format!("switchboard:{{{channel}}}{suffix}"));
        cmd
    };
    // Eight arguments, as every producer written before the ninth existed.
    let (offset, epoch): (u64, String) = call("plain", None)
        .query_async(&mut conn)
        .await
        .expect("the eight-argument call is answered {offset, epoch}");
    assert_eq!((offset, epoch.as_str()), (1, "epoch-1"));
    let meta: i64 = pttl("plain", ":meta")
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(
        (1..=60_000).contains(&meta),
        "meta expires with the history: {meta}"
    );
    // A ninth: the position outlives the history.
    let _: (u64, String) = call("kept", Some(3_600_000))
        .query_async(&mut conn)
        .await
        .expect("the nine-argument call");
    let meta: i64 = pttl("kept", ":meta")
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    let history: i64 = pttl("kept", ":history")
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(
        meta > 60_000 && history <= 60_000,
        "meta {meta} ms, history {history} ms"
    );
}

/// The script's optional fourth key, as the Redis Cluster client would resend
/// it after a connection lost before the reply: the second run is answered
/// with the first's `{offset, epoch}` and neither assigns an offset nor adds
/// an entry; the eight and nine-argument calls above stay valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_script_run_twice_with_its_record_key_publishes_once() {
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let script = include_str!("../src/engine/publish.lua");
    let key = |suffix: &str| format!("switchboard:{{resent}}{suffix}");
    let run = || {
        let mut cmd = ::redis::cmd("EVAL");
        cmd.arg(script)
            .arg(4)
            .arg(key(":meta"))
            .arg(key(":history"))
            .arg(key(":snapshot"))
            .arg(key(":idem:req-7"))
            .arg(key(""))
            .arg(r#"{"n":1}"#)
            .arg(10)
            .arg(60_000)
            .arg("epoch-1")
            .arg(0)
            .arg("")
            .arg("publish")
            .arg("")
            .arg(30_000);
        cmd
    };
    let first: (u64, String) = run().query_async(&mut conn).await.expect("first run");
    let second: (u64, String) = run().query_async(&mut conn).await.expect("second run");
    assert_eq!(first, (1, "epoch-1".to_string()));
    assert_eq!(second, first, "the resent script is answered, not applied");
    let top: u64 = ::redis::cmd("HGET")
        .arg(key(":meta"))
        .arg("o")
        .query_async(&mut conn)
        .await
        .expect("HGET");
    let entries: u64 = ::redis::cmd("XLEN")
        .arg(key(":history"))
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert_eq!((top, entries), (1, 1));
    let record: i64 = ::redis::cmd("PTTL")
        .arg(key(":idem:req-7"))
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(
        (1..=30_000).contains(&record),
        "the record expires: {record}"
    );
}
