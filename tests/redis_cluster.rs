//! Scaling out past one Redis: gateways and the collector on a real local
//! Redis Cluster (three masters, three replicas, started by each test from
//! apt's redis-server). Same protocol, same resume, same snapshots as on one
//! Redis; a master restarted, or a slot moving, mid-stream costs clients
//! nothing: each ends with every message exactly once. A master that crashes
//! or freezes (with `--redis-wait-replicas 1`) loses no acknowledged message;
//! only clients of its channels may be told to start over (and from then on
//! get every message exactly once), every other client gets every message
//! exactly once.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Client, Received, RedisCluster, Switchboard, http_get, http_request};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::sync::{Mutex, MutexGuard};

const WAIT: Duration = Duration::from_secs(10);

/// Six redis-servers per test and timing-sensitive failovers on two cores:
/// one cluster test at a time.
async fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

fn pubsub(channel: &str) -> String {
    format!("switchboard:{{{channel}}}")
}

/// What one client received on one channel.
#[derive(Debug, Default)]
struct Reading {
    offsets: Vec<u64>,
    data: Vec<u64>,
    /// Reconnections that resumed from the last offset.
    resumes: u32,
    /// Times the gateway restarted the subscription (`recovered: false`).
    restarts: u32,
    /// Where in `offsets` each restart happened.
    restarted_at: Vec<usize>,
}

/// A client doing what docs/PROTOCOL.md asks: it reads `channel` through `url`
/// until the message with `n == last` arrives, and on any loss reconnects and
/// resumes from the last offset it received. Counts itself in `subscribed`
/// once its first subscription is confirmed.
async fn reader(
    url: String,
    channel: String,
    last: u64,
    deadline: Duration,
    subscribed: Arc<AtomicUsize>,
) -> Reading {
    let started = Instant::now();
    let mut got = Reading::default();
    let mut position: Option<(u64, String)> = None;
    'connect: while got.data.last().copied() != Some(last) {
        assert!(
            started.elapsed() < deadline,
            "{channel}: gave up after {:?} (last offset {:?}, {} resumes)",
            started.elapsed(),
            got.offsets.last(),
            got.resumes
        );
        let Ok(mut client) = Client::try_connect(&url).await else {
            // A client's backoff before it tries again.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Some(Received::Text(_hello)) = client.next(WAIT).await else {
            continue;
        };
        let mut subscribe = json!({"type": "subscribe", "channel": channel});
        if let Some((offset, epoch)) = &position {
            subscribe["since"] = json!({"offset": offset, "epoch": epoch});
            got.resumes += 1;
        }
        client.send_json(&subscribe).await;
        while let Some(Received::Text(t)) = client.next(Duration::from_secs(20)).await {
            let m: Value = serde_json::from_str(&t).expect("JSON from the gateway");
            match m["type"].as_str() {
                Some("subscribed") => {
                    let epoch = m["epoch"].as_str().expect("epoch").to_string();
                    match &position {
                        Some((offset, _)) if m["recovered"] == true => {
                            position = Some((*offset, epoch));
                        }
                        Some(_) => {
                            got.restarts += 1;
                            got.restarted_at.push(got.offsets.len());
                            position = Some((m["offset"].as_u64().expect("offset"), epoch));
                        }
                        None => {
                            subscribed.fetch_add(1, Ordering::SeqCst);
                            position = Some((m["offset"].as_u64().expect("offset"), epoch));
                        }
                    }
                }
                Some("message") => {
                    let offset = m["offset"].as_u64().expect("offset");
                    got.offsets.push(offset);
                    got.data.push(m["data"]["n"].as_u64().expect("data.n"));
                    if let Some(p) = position.as_mut() {
                        p.0 = offset;
                    }
                    if m["data"]["n"].as_u64() == Some(last) {
                        break 'connect;
                    }
                }
                Some("error") => panic!("{channel}: error frame {m}"),
                _ => {}
            }
        }
    }
    got
}

/// A publisher thread: how far it got, and its handle.
struct Publisher {
    published: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<u32>,
}

/// Publishes `{"n": 1..=count}` on `channel` through the gateway's REST API,
/// one every `every` (a steady stream: the failure happens mid-stream),
/// retrying what the gateway refuses with 503 (Redis unreachable). Its handle
/// returns how many attempts failed without a clear answer (a retry of those
/// may publish the same `n` twice, with two offsets: the publisher's side of
/// at-least-once).
fn publisher(port: u16, channel: String, count: u64, every: Duration) -> Publisher {
    let published = Arc::new(AtomicU64::new(0));
    let counter = published.clone();
    let handle = std::thread::spawn(move || {
        let mut ambiguous = 0;
        for n in 1..=count {
            loop {
                let body = json!({"channel": channel, "data": {"n": n}}).to_string();
                match http_request(port, "POST", "/api/v1/publish", &[], Some(&body)) {
                    Ok((200, _)) => break,
                    // A producer's backoff, then retry.
                    Ok((503, _)) => {
                        ambiguous += 1;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    Ok((status, body)) => panic!("publish failed: {status} {body}"),
                }
            }
            counter.store(n, Ordering::SeqCst);
            // The publishing rate.
            std::thread::sleep(every);
        }
        ambiguous
    });
    Publisher { published, handle }
}

/// Waits until `n` readers have subscribed.
async fn wait_subscribed(subscribed: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while subscribed.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} readers subscribed within 30 s",
            subscribed.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every publisher has published `n` messages: mid-stream.
async fn wait_published(publishers: &[Publisher], n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while publishers
        .iter()
        .any(|p| p.published.load(Ordering::SeqCst) < n)
    {
        assert!(
            Instant::now() < deadline,
            "the publishers did not reach {n} messages within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The channel's history as Redis holds it: (offset, n) in order.
fn history(cluster: &RedisCluster, channel: &str) -> Vec<(u64, u64)> {
    let key = format!("{}:history", pubsub(channel));
    let port = cluster.master_of(&key);
    let out = cluster.cli(port, &["xrange", &key, "-", "+"]);
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(5)
        .map(|e| {
            let offset = e[0].split('-').next().unwrap().parse().unwrap();
            let data: Value = serde_json::from_str(e[2]).unwrap();
            (offset, data["n"].as_u64().unwrap())
        })
        .collect()
}

/// Channel names: `on` of them served by master `master`, `off` by others.
fn channels_by_master(cluster: &RedisCluster, master: u16, on: usize, off: usize) -> Vec<String> {
    let (mut mine, mut others) = (Vec::new(), Vec::new());
    for i in 0.. {
        let name = format!("feed-{i}");
        if cluster.master_of(&pubsub(&name)) == master {
            if mine.len() < on {
                mine.push(name);
            }
        } else if others.len() < off {
            others.push(name);
        }
        if mine.len() == on && others.len() == off {
            break;
        }
    }
    mine.extend(others);
    mine
}

/// Polls `/health/ready` of `port` until stopped; true if it ever said 503.
fn readiness_watcher(port: u16) -> (Arc<AtomicBool>, std::thread::JoinHandle<bool>) {
    let watching = Arc::new(AtomicBool::new(true));
    let flag = watching.clone();
    let handle = std::thread::spawn(move || {
        let mut saw_not_ready = false;
        while flag.load(Ordering::Relaxed) && !saw_not_ready {
            if let Ok((503, _)) = http_get(port, "/health/ready") {
                saw_not_ready = true;
            }
            // Sampling: a frozen master's replacement can be short (the slot
            // map moves its channels within tens of milliseconds).
            std::thread::sleep(Duration::from_millis(5));
        }
        saw_not_ready
    });
    (watching, handle)
}

/// Every client got every message Redis holds for its channel, exactly once,
/// in order, without being told to start over.
fn assert_exactly_once(cluster: &RedisCluster, channel: &str, count: u64, readings: &[Reading]) {
    let stored = history(cluster, channel);
    let offsets: Vec<u64> = stored.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (1..=offsets.len() as u64).collect::<Vec<_>>(),
        "{channel}: history holds every offset"
    );
    let mut ns: Vec<u64> = stored.iter().map(|(_, n)| *n).collect();
    ns.dedup();
    assert_eq!(
        ns,
        (1..=count).collect::<Vec<_>>(),
        "{channel}: every n was published, in order"
    );
    for r in readings {
        assert_eq!(
            r.restarts, 0,
            "{channel}: nothing was lost, so nothing restarts"
        );
        let got: Vec<(u64, u64)> = r
            .offsets
            .iter()
            .copied()
            .zip(r.data.iter().copied())
            .collect();
        assert_eq!(
            got, stored,
            "{channel}: the client got exactly what was published, once, in order"
        );
    }
}

/// After a crash, on a channel of the master that went down: every
/// acknowledged message survived in Redis (the replica had it before the
/// producer got its answer), and every client either got every message exactly
/// once, in order, or was told honestly to start over (`recovered: false`:
/// the master had delivered messages live that it never replicated), was
/// consistent in between, and from its last restart on got exactly what Redis
/// holds, once, in order, to the end.
fn assert_nothing_lost_silently(
    cluster: &RedisCluster,
    channel: &str,
    count: u64,
    readings: &[Reading],
) {
    nothing_lost_silently(channel, &history(cluster, channel), count, readings);
}

/// [`assert_nothing_lost_silently`] on the history `stored` (offset, n).
fn nothing_lost_silently(channel: &str, stored: &[(u64, u64)], count: u64, readings: &[Reading]) {
    let offsets: Vec<u64> = stored.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (1..=offsets.len() as u64).collect::<Vec<_>>(),
        "{channel}: history holds every offset"
    );
    let ns: std::collections::BTreeSet<u64> = stored.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        ns,
        (1..=count).collect(),
        "{channel}: every acknowledged message is in Redis after the failover"
    );
    let mut restarted = 0;
    for r in readings {
        let got: Vec<(u64, u64)> = r
            .offsets
            .iter()
            .copied()
            .zip(r.data.iter().copied())
            .collect();
        if r.restarts == 0 {
            assert_eq!(
                got, stored,
                "{channel}: a client never told to start over got exactly what was published, once, in order"
            );
            continue;
        }
        restarted += 1;
        let mut bounds = r.restarted_at.clone();
        bounds.push(got.len());
        let mut start = 0;
        for end in bounds {
            let stretch = &got[start..end];
            assert!(
                stretch.windows(2).all(|w| w[1].0 == w[0].0 + 1),
                "{channel}: between restarts offsets follow each other: {stretch:?}"
            );
            start = end;
        }
        // After the last restart: exactly what Redis holds, to the end.
        let last = &got[*r.restarted_at.last().expect("restarted")..];
        assert!(
            !last.is_empty(),
            "{channel}: messages follow the last restart"
        );
        let from = usize::try_from(last[0].0).expect("an offset") - 1;
        assert_eq!(
            stored.get(from..from + last.len()),
            Some(last),
            "{channel}: after its restart a client gets exactly what was published, once, in order"
        );
    }
    eprintln!(
        "{channel}: {} of {} clients were told to start over",
        restarted,
        readings.len()
    );
}

/// Redis holds n = 1..=6 at offsets 1..=6; `tail` is what a client got after
/// it was told to start over, having had n = 1, 2, 3 and, live from the master
/// that then crashed, n = 99 at offset 4 (never replicated).
fn restarted_reading(tail: &[(u64, u64)]) -> Reading {
    let got = [(1, 1), (2, 2), (3, 3), (4, 99)];
    let all: Vec<(u64, u64)> = got.iter().chain(tail).copied().collect();
    Reading {
        offsets: all.iter().map(|(o, _)| *o).collect(),
        data: all.iter().map(|(_, n)| *n).collect(),
        restarts: 1,
        restarted_at: vec![got.len()],
        ..Reading::default()
    }
}

const STORED: [(u64, u64); 6] = [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6)];

/// The crash check itself, on made-up readings: it accepts a client that got
/// everything, and one told to start over that then got exactly what Redis
/// holds.
#[test]
fn the_crash_check_accepts_exactly_once_and_an_honest_restart() {
    let complete = Reading {
        offsets: (1..=6).collect(),
        data: (1..=6).collect(),
        ..Reading::default()
    };
    let honest = restarted_reading(&[(4, 4), (5, 5), (6, 6)]);
    nothing_lost_silently("made-up", &STORED, 6, &[complete, honest]);
}

/// …and refuses one that, after its restart, got a message other than the
/// one Redis holds at that offset.
#[test]
#[should_panic(expected = "after its restart")]
fn the_crash_check_refuses_a_wrong_message_after_a_restart() {
    let wrong = restarted_reading(&[(4, 4), (5, 77), (6, 6)]);
    nothing_lost_silently("made-up", &STORED, 6, &[wrong]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_restarted_mid_stream_fails_over_and_no_client_loses_a_message() {
    failover_mid_stream(Stop::Restart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_stream_fails_over_and_no_client_loses_a_message() {
    failover_mid_stream(Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_is_replaced_and_no_client_loses_a_message() {
    failover_mid_stream(Stop::Freeze).await;
}

enum Stop {
    /// `SHUTDOWN`, as in a rolling restart.
    Restart,
    /// SIGKILL, as in a crash.
    Kill,
    /// SIGSTOP: connections stay open and go silent (a hung host, a partition);
    /// only the probes and the slot map tell.
    Freeze,
}

/// Two channels on the master that goes down, one elsewhere; four clients per
/// channel on two gateways; publishing at ~100 messages/s per channel.
async fn failover_mid_stream(stop: Stop) {
    let _serial = serial().await;
    let mut cluster = RedisCluster::start(Duration::from_millis(1000));
    // A crash can take with it what the master had not yet replicated: there,
    // publishes are acknowledged only once the replica has them.
    let flags: &[&str] = match stop {
        Stop::Restart => &["--redis-probe-interval", "1s"],
        Stop::Kill | Stop::Freeze => &[
            "--redis-probe-interval",
            "1s",
            "--redis-wait-replicas",
            "1",
            "--redis-wait-timeout",
            "1s",
        ],
    };
    let a = Switchboard::gateway_on_cluster(&cluster, flags);
    let b = Switchboard::gateway_on_cluster(&cluster, flags);
    let victim = cluster.master_of(&pubsub("feed-0"));
    let channels = channels_by_master(&cluster, victim, 2, 1);
    const COUNT: u64 = 400;
    let subscribed = Arc::new(AtomicUsize::new(0));
    let mut readers: HashMap<String, Vec<_>> = HashMap::new();
    for channel in &channels {
        for gw in [&a, &b, &a, &b] {
            readers
                .entry(channel.clone())
                .or_default()
                .push(tokio::spawn(reader(
                    gw.ws_url("/ws"),
                    channel.clone(),
                    COUNT,
                    Duration::from_secs(120),
                    subscribed.clone(),
                )));
        }
    }
    wait_subscribed(&subscribed, channels.len() * 4).await;
    let publishers: Vec<_> = channels
        .iter()
        .map(|c| publisher(a.port, c.clone(), COUNT, Duration::from_millis(10)))
        .collect();
    wait_published(&publishers, 80).await;

    // The master of two of the channels goes down; its replica takes over
    // after the node timeout; the old master comes back as a replica.
    let (watching, watcher) = readiness_watcher(b.port);
    let slot = cluster.slot_of(&pubsub(&channels[0]));
    match stop {
        Stop::Restart => cluster.shutdown_node(victim),
        Stop::Kill => cluster.kill_node(victim),
        Stop::Freeze => cluster.pause_node(victim),
    }
    let promoted = cluster.wait_failover(slot, victim, Duration::from_secs(30));
    assert_ne!(promoted, victim);
    match stop {
        Stop::Freeze => cluster.resume_node(victim),
        Stop::Restart | Stop::Kill => cluster.start_node(victim),
    }
    cluster.wait_healthy(Duration::from_secs(30));

    let ambiguous: u32 = publishers
        .into_iter()
        .map(|p| p.handle.join().unwrap())
        .sum();
    for (i, channel) in channels.iter().enumerate() {
        let mut readings = Vec::new();
        for r in readers.remove(channel).unwrap() {
            readings.push(r.await.unwrap());
        }
        // `channels_by_master`: the first two are the victim's.
        let on_victim = i < 2;
        match stop {
            // Only the clients of the master that crashed may have to start
            // over; on every other master nothing was lost, so nothing restarts.
            Stop::Kill | Stop::Freeze if on_victim => {
                assert_nothing_lost_silently(&cluster, channel, COUNT, &readings)
            }
            _ => assert_exactly_once(&cluster, channel, COUNT, &readings),
        }
    }
    watching.store(false, Ordering::Relaxed);
    assert!(
        watcher.join().unwrap(),
        "readiness turned false while the shard was re-established"
    );
    a.wait_ready(WAIT);
    b.wait_ready(WAIT);
    assert!(b.metric("switchboard_redis_reconnects_total", "") >= 1.0);
    eprintln!("failover: {ambiguous} publishes refused with 503 and retried");
}

/// A master frozen for good (SIGSTOP: its connections stay open and go
/// silent) after its replica took over. The `redis` crate's cluster client
/// keeps routing the master's slots to the frozen node: its connection never
/// fails, only times out, and a timed-out request's caller has already given
/// up (our response timeout is also the crate's overall one), so its retry
/// logic, which would refresh the slot map, never runs; the `PING` of the
/// health check goes to every master of that stale map and fails too. The
/// gateway must notice (its health checks keep failing while a seed node says
/// `cluster_state:ok`), rebuild its cluster client, and serve the channel from
/// its new master again — publishes and the live feed — while the old master
/// is still frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_stuck_on_a_frozen_master_rebuilds_its_cluster_client() {
    let _serial = serial().await;
    let mut cluster = RedisCluster::start(Duration::from_millis(1000));
    let gw = Switchboard::gateway_on_cluster(
        &cluster,
        &[
            "--redis-probe-interval",
            "1s",
            "--redis-timeout",
            "1s",
            "--redis-cluster-rebuild-after",
            "3",
        ],
    );
    // A master that is not a seed node (the seeds answer the gateway's check
    // of the cluster, and its rebuilt client starts from them).
    let seeds = &cluster.ports[..2];
    let victim = cluster
        .nodes()
        .into_iter()
        .find(|n| n.master && !n.slots.is_empty() && !seeds.contains(&n.port))
        .map(|n| n.port)
        .expect("a master that is not a seed");
    let channel = channels_by_master(&cluster, victim, 1, 0).remove(0);
    // The gateway's cluster client has used the victim.
    common::publish(gw.port, &channel, &json!({"n": 0}));
    assert_eq!(
        gw.metric("switchboard_redis_client_rebuilds_total", ""),
        0.0
    );

    let slot = cluster.slot_of(&pubsub(&channel));
    cluster.pause_node(victim);
    let promoted = cluster.wait_failover(slot, victim, Duration::from_secs(30));
    assert_ne!(promoted, victim);

    // The old master stays frozen: publishes through the gateway must succeed
    // again anyway, within a bound (3 failed checks of up to 2 × 1 s each,
    // 2 s apart, then the rebuild: ~20 s at worst; 60 s on loaded cores).
    let started = Instant::now();
    let port = gw.port;
    let body = json!({"channel": channel, "data": {"n": 1}}).to_string();
    tokio::task::spawn_blocking(move || {
        common::wait_until(
            "a publish on the failed-over slot succeeds",
            Duration::from_secs(60),
            Duration::from_millis(250),
            || match http_request(port, "POST", "/api/v1/publish", &[], Some(&body)) {
                Ok((200, _)) => Some(()),
                _ => None,
            },
        )
    })
    .await
    .unwrap();
    eprintln!(
        "stuck client: publishes succeed again {:?} after the failover",
        started.elapsed()
    );
    assert!(
        gw.metric("switchboard_redis_client_rebuilds_total", "") >= 1.0,
        "the gateway served again without rebuilding its cluster client"
    );
    gw.wait_ready(Duration::from_secs(30));

    // The live feed follows the new master too.
    let mut client = Client::connect(&gw.ws_url("/ws")).await;
    client.recv_json().await;
    let sub = client
        .subscribe(json!({"type": "subscribe", "channel": channel}))
        .await;
    assert_eq!(sub["type"], "subscribed");
    common::publish(gw.port, &channel, &json!({"n": 2}));
    let m = client
        .recv_until(WAIT, |m| m["type"] == "message" && m["data"]["n"] == 2)
        .await;
    assert_eq!(m["channel"], channel.as_str());

    cluster.resume_node(victim);
    cluster.wait_healthy(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_to_another_master_mid_stream_loses_no_message() {
    let _serial = serial().await;
    let cluster = RedisCluster::start(Duration::from_millis(2000));
    let a = Switchboard::gateway_on_cluster(&cluster, &["--redis-probe-interval", "1s"]);
    let b = Switchboard::gateway_on_cluster(&cluster, &["--redis-probe-interval", "1s"]);
    let from = cluster.master_of(&pubsub("feed-0"));
    let channels = channels_by_master(&cluster, from, 1, 1);
    let moving = &channels[0];
    let slot = cluster.slot_of(&pubsub(moving));
    let to = cluster
        .nodes()
        .into_iter()
        .find(|n| n.master && n.port != from && !n.slots.is_empty())
        .unwrap()
        .port;
    const COUNT: u64 = 300;
    let subscribed = Arc::new(AtomicUsize::new(0));
    let mut readers: HashMap<String, Vec<_>> = HashMap::new();
    for channel in &channels {
        for gw in [&a, &b, &a] {
            readers
                .entry(channel.clone())
                .or_default()
                .push(tokio::spawn(reader(
                    gw.ws_url("/ws"),
                    channel.clone(),
                    COUNT,
                    Duration::from_secs(120),
                    subscribed.clone(),
                )));
        }
    }
    wait_subscribed(&subscribed, channels.len() * 3).await;
    let publishers: Vec<_> = channels
        .iter()
        .map(|c| publisher(b.port, c.clone(), COUNT, Duration::from_millis(10)))
        .collect();
    // The slot moves mid-stream.
    wait_published(&publishers, 80).await;
    // Publishes during the move are redirected (ASK, then MOVED); the old
    // master drops the shard channel and the gateways subscribe on the new one.
    cluster.migrate_slot(slot, to);
    assert_eq!(cluster.master_of(&pubsub(moving)), to);
    for p in publishers {
        p.handle.join().unwrap();
    }
    for channel in &channels {
        let mut readings = Vec::new();
        for r in readers.remove(channel).unwrap() {
            readings.push(r.await.unwrap());
        }
        assert_exactly_once(&cluster, channel, COUNT, &readings);
    }
    // A client joining now on the moved channel is served from its new master.
    let mut late = Client::connect(&a.ws_url("/ws")).await;
    late.recv_json().await;
    let sub = late
        .subscribe(json!({"type": "subscribe", "channel": moving, "since": {"offset": COUNT - 2, "epoch": "x"}}))
        .await;
    assert_eq!(sub["type"], "subscribed");
    common::publish(a.port, moving, &json!({"n": COUNT + 1}));
    let m = late
        .recv_until(WAIT, |m| {
            m["type"] == "message" && m["data"]["n"] == COUNT + 1
        })
        .await;
    assert_eq!(m["channel"], moving.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_snapshots_and_sessions_work_across_gateways_on_a_cluster() {
    let _serial = serial().await;
    let cluster = RedisCluster::start(Duration::from_millis(2000));
    let a = Switchboard::gateway_on_cluster(&cluster, &["--history-size", "5"]);
    // The other gateway names the cluster with one redis+cluster:// URL.
    let url = cluster.cluster_url();
    let b = Switchboard::start(&[
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        &url,
        "--no-auth",
        "--replica-id",
        "b",
        "--history-size",
        "5",
    ]);
    b.wait_ready(Duration::from_secs(20));
    common::resume_within_and_beyond_history(&a, &b).await;

    // Sessions: several, so one flush of acknowledged positions spans several
    // slots (one pipeline each); each resumes on the other gateway.
    let names = ["orders", "alerts"];
    let mut sessions: Vec<String> = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&a.ws_url("/ws")).await;
        let hello = c.recv_json().await;
        sessions.push(hello["session"].as_str().unwrap().to_string());
        for name in names {
            c.subscribe(json!({"type":"subscribe","channel":name}))
                .await;
        }
        clients.push(c);
    }
    for name in names {
        for n in 1..=3 {
            common::publish(a.port, name, &json!({"n": n}));
        }
    }
    for c in &mut clients {
        for _ in 0..names.len() * 3 {
            c.recv_until(WAIT, |m| m["type"] == "message").await;
        }
        for name in names {
            c.send_json(&json!({"type":"ack","channel":name,"offset":2,"id":name}))
                .await;
            c.recv_until(WAIT, |m| m["type"] == "acked").await;
        }
    }
    // Acknowledgements are stored in batches: wait until every one is.
    for session in &sessions {
        let key = format!("switchboard:session:{session}");
        let master = cluster.master_of(&key);
        for name in names {
            let field = format!("o:{name}");
            common::wait_until(
                "the acknowledged offsets stored",
                WAIT,
                Duration::from_millis(20),
                || (cluster.cli(master, &["hget", &key, &field]) == "2").then_some(()),
            );
        }
    }
    drop(clients);
    for name in names {
        common::publish(a.port, name, &json!({"n": 4}));
    }
    for session in sessions {
        let mut second = Client::connect(&b.ws_url(&format!("/ws?session={session}"))).await;
        let hello = second.recv_json().await;
        assert_eq!(hello["resumed"], true);
        let mut got: Vec<(String, u64)> = Vec::new();
        let mut subscribed = 0;
        while got.len() < names.len() * 2 {
            let m = second.recv_json().await;
            match m["type"].as_str() {
                Some("subscribed") => {
                    assert_eq!(m["recovered"], true, "{m}");
                    subscribed += 1;
                }
                Some("message") => got.push((
                    m["channel"].as_str().unwrap().to_string(),
                    m["offset"].as_u64().unwrap(),
                )),
                other => panic!("unexpected {other:?}: {m}"),
            }
        }
        assert_eq!(subscribed, names.len());
        got.sort();
        let mut expected: Vec<(String, u64)> = names
            .iter()
            .flat_map(|c| [(c.to_string(), 3), (c.to_string(), 4)])
            .collect();
        expected.sort();
        assert_eq!(
            got, expected,
            "each channel resumes after its acknowledged offset"
        );
        second.expect_silence(Duration::from_millis(300)).await;
    }
}

const SECRET: &str = "a-test-secret-of-at-least-32-bytes-long!";

fn token(sub: &str, permissions: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = json!({"sub": sub, "exp": exp, "permissions": permissions, "channels": ["*"]});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_disconnect_everywhere_work_on_a_cluster() {
    let _serial = serial().await;
    let cluster = RedisCluster::start(Duration::from_millis(2000));
    let dir = std::env::temp_dir().join(format!("sb-cluster-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let secret = secret.display().to_string();
    let urls = cluster.urls();
    let gateway = || {
        let gw = Switchboard::start(&[
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--redis-cluster-urls",
            &urls,
            "--jwt-secret-file",
            &secret,
        ]);
        gw.wait_ready(Duration::from_secs(20));
        gw
    };
    let (a, b) = (gateway(), gateway());
    let viewer = token("victim", &["websocket:connect", "websocket:subscribe"]);
    let mut on_a = Client::connect(&a.ws_url(&format!("/ws?token={viewer}"))).await;
    let mut on_b = Client::connect(&b.ws_url(&format!("/ws?token={viewer}"))).await;
    let other = token("bystander", &["websocket:connect", "websocket:subscribe"]);
    let mut bystander = Client::connect(&b.ws_url(&format!("/ws?token={other}"))).await;
    for c in [&mut on_a, &mut on_b, &mut bystander] {
        c.recv_json().await;
    }
    let admin = format!("Bearer {}", token("root", &["websocket:admin"]));
    // Each replica's presence hash and the replica set live on different slots.
    let mut seen = 0;
    for _ in 0..50 {
        let (_, body) = http_request(
            b.port,
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
    assert_eq!(seen, 2, "connections of both gateways are listed by either");
    // The control channel is a shard channel too.
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
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_publishes_on_a_cluster_and_gateways_serve_its_snapshots() {
    let _serial = serial().await;
    let cluster = RedisCluster::start(Duration::from_millis(2000));
    let urls = cluster.urls();
    let collector = Switchboard::start(&[
        "collector",
        "--listen",
        "127.0.0.1:0",
        "--redis-cluster-urls",
        &urls,
        "--simulate",
        "always",
        "--collect-interval-min",
        "200ms",
        "--collect-interval-max",
        "300ms",
    ]);
    collector.wait_ready(Duration::from_secs(20));
    let gw = Switchboard::gateway_on_cluster(&cluster, &[]);
    for channel in ["federation", "memory"] {
        let mut client = Client::connect(&gw.ws_url("/ws")).await;
        client.recv_json().await;
        let sub = client
            .subscribe(json!({"type":"subscribe","channel":channel}))
            .await;
        assert_eq!(sub["type"], "subscribed", "{sub}");
        // Each cycle publishes a new snapshot: live messages follow.
        let first = client
            .recv_until(WAIT, |m| m["type"] == "message" || m["type"] == "snapshot")
            .await;
        assert!(first["data"].is_object(), "{first}");
        let next = client.recv_until(WAIT, |m| m["type"] == "message").await;
        assert!(next["offset"].as_u64().unwrap() > 1);
    }
    // The lease key lives on the cluster too.
    let lease = cluster.cli(
        cluster.master_of("switchboard:collector:leader"),
        &["get", "switchboard:collector:leader"],
    );
    assert!(
        !lease.is_empty(),
        "the collector holds its lease in the cluster"
    );
}
