//! Never lose a message: resume on any replica behind a real load balancer,
//! replica crashes, Redis restarts, gaps older than history, session resume,
//! heartbeats. Real processes throughout: gateways, redis-server, nginx.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Client, Nginx, Received, RedisServer, Switchboard, http_get, http_request, publish};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// A client that does what docs/PROTOCOL.md asks of one: on any loss it
/// reconnects (through the load balancer) and subscribes with `since`.
/// Counts itself in `subscribed` once its first subscription is confirmed.
/// Returns every offset it received, in order, and how many times it resumed.
async fn resilient_reader(
    url: String,
    channel: &'static str,
    last: u64,
    deadline: Duration,
    subscribed: Arc<AtomicUsize>,
) -> (Vec<u64>, u32) {
    let started = Instant::now();
    let mut offsets: Vec<u64> = Vec::new();
    let mut position: Option<(u64, String)> = None;
    let mut resumes = 0;
    let mut log: Vec<String> = Vec::new();
    while offsets.last().copied() != Some(last) {
        assert!(
            started.elapsed() < deadline,
            "gave up at {:?} after {resumes} resumes",
            offsets.last()
        );
        let Ok(mut client) = Client::try_connect(&url).await else {
            // A client's backoff before it tries again.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Some(Received::Text(_hello)) = client.next(WAIT).await else {
            continue;
        };
        let mut subscribe = json!({"type":"subscribe","channel":channel});
        if let Some((offset, epoch)) = &position {
            subscribe["since"] = json!({"offset": offset, "epoch": epoch});
            resumes += 1;
        }
        client.send_json(&subscribe).await;
        log.push(format!("connect {_hello} sub {subscribe}"));
        while let Some(Received::Text(t)) = client.next(Duration::from_secs(15)).await {
            let m: Value = serde_json::from_str(&t).unwrap();
            match m["type"].as_str() {
                Some("subscribed") => {
                    log.push(format!("got {m} after {:?}", offsets.last()));
                    if position.is_none() {
                        subscribed.fetch_add(1, Ordering::SeqCst);
                    }
                    if position.is_some() {
                        assert_eq!(
                            m["recovered"], true,
                            "resume within history must recover: {m}"
                        );
                    }
                    let epoch = m["epoch"].as_str().unwrap().to_string();
                    let offset = position
                        .as_ref()
                        .map_or(m["offset"].as_u64().unwrap(), |p| p.0);
                    position = Some((offset, epoch));
                }
                Some("message") => {
                    let offset = m["offset"].as_u64().unwrap();
                    if offsets.last().is_some_and(|l| offset <= *l) {
                        log.push(format!("DUP {offset} after {:?}", offsets.last()));
                        eprintln!("{}", log.join("\n"));
                    }
                    offsets.push(offset);
                    if let Some(p) = position.as_mut() {
                        p.0 = offset;
                    }
                    if offset == last {
                        break;
                    }
                }
                Some("error") => break,
                _ => {}
            }
        }
    }
    (offsets, resumes)
}

/// Publishes `{"n": 1..=count}` on `channel`, one every `every` (a steady
/// stream is the point: the failure happens mid-stream). Counts what it
/// published in the returned counter.
fn spawn_publisher(
    port: u16,
    channel: &'static str,
    count: u64,
    every: Duration,
) -> (Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let published = Arc::new(AtomicU64::new(0));
    let counter = published.clone();
    let handle = std::thread::spawn(move || {
        for n in 1..=count {
            loop {
                let body = json!({"channel": channel, "data": {"n": n}}).to_string();
                match http_request(port, "POST", "/api/v1/publish", &[], Some(&body)) {
                    // The script ran: exactly one offset per n.
                    Ok((200, _)) => break,
                    // Refused before the script ran (Redis unreachable): a
                    // producer's backoff, then retry.
                    Ok((503, _)) | Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    Ok((status, body)) => panic!("publish failed: {status} {body}"),
                }
            }
            counter.store(n, Ordering::SeqCst);
            // The publishing rate.
            std::thread::sleep(every);
        }
    });
    (published, handle)
}

/// Waits until `counter` reaches `n`: `what` names it in the failure.
async fn wait_count(what: &str, counter: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n} within 30 s",
            counter.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the publisher has published `n` messages (mid-stream).
async fn wait_published(published: &AtomicU64, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while published.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "published {} of {n} within 30 s",
            published.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_loses_no_client_a_message() {
    let redis = RedisServer::start();
    let a = Switchboard::gateway(&redis, &[]);
    let mut b = Switchboard::gateway(&redis, &[]);
    let c = Switchboard::gateway(&redis, &[]);
    let lb = Nginx::start(&[a.port, b.port, c.port]);
    let url = lb.ws_url("/ws");
    let subscribed = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(resilient_reader(
                url.clone(),
                "stream",
                1000,
                Duration::from_secs(120),
                subscribed.clone(),
            ))
        })
        .collect();
    // Every client subscribed before publishing starts.
    wait_count("clients subscribed", &subscribed, 50).await;
    // Published through A (never killed) at a steady 200 msg/s; B is killed
    // mid-stream.
    let (published, publisher) = spawn_publisher(a.port, "stream", 1000, Duration::from_millis(5));
    wait_published(&published, 300).await;
    b.signal("KILL");
    b.wait_exit(WAIT);
    publisher.join().unwrap();
    let mut total_resumes = 0;
    for r in readers {
        let (offsets, resumes) = r.await.unwrap();
        assert_eq!(
            offsets,
            (1..=1000).collect::<Vec<u64>>(),
            "all 1000, exactly once, in order"
        );
        total_resumes += resumes;
    }
    assert!(
        total_resumes > 0,
        "the clients of the killed replica resumed elsewhere"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_stream_loses_nothing_and_readiness_follows() {
    let mut redis = RedisServer::start_persistent();
    let a = Switchboard::gateway(&redis, &["--redis-probe-interval", "1s"]);
    let b = Switchboard::gateway(&redis, &["--redis-probe-interval", "1s"]);
    let lb = Nginx::start(&[a.port, b.port]);
    let url = lb.ws_url("/ws");
    let subscribed = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn(resilient_reader(
                url.clone(),
                "outage",
                300,
                Duration::from_secs(120),
                subscribed.clone(),
            ))
        })
        .collect();
    wait_count("clients subscribed", &subscribed, 10).await;
    let (published, publisher) = spawn_publisher(a.port, "outage", 300, Duration::from_millis(20));
    // Redis restarts mid-stream.
    wait_published(&published, 100).await;
    // Watch readiness while Redis is down.
    let saw_not_ready = Arc::new(AtomicBool::new(false));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (saw, watching) = (saw_not_ready.clone(), watching.clone());
        let port = a.port;
        std::thread::spawn(move || {
            while watching.load(Ordering::Relaxed) {
                if let Ok((503, _)) = http_get(port, "/health/ready") {
                    saw.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    redis.restart(Duration::from_secs(2));
    publisher.join().unwrap();
    for r in readers {
        let (offsets, reconnects) = r.await.unwrap();
        assert_eq!(
            offsets,
            (1..=300).collect::<Vec<u64>>(),
            "nothing lost, nothing twice"
        );
        assert_eq!(
            reconnects, 0,
            "clients stay connected while Redis is down: the gateway fills the gap itself"
        );
    }
    watching.store(false, Ordering::Relaxed);
    watcher.join().unwrap();
    assert!(
        saw_not_ready.load(Ordering::Relaxed),
        "readiness turned false during the outage"
    );
    a.wait_ready(WAIT);
    b.wait_ready(WAIT);
    assert!(a.metric("switchboard_redis_reconnects_total", "") >= 1.0);
}

/// A TCP proxy in front of Redis that can make the pub/sub connections it
/// carries go silent: their sockets stay open, nothing is forwarded either way
/// and nothing is closed — a connection that is alive but no longer delivers.
/// Command connections are not touched. Runs on its own thread, so that the
/// test's blocking calls cannot stall it.
struct SilentProxy {
    port: u16,
    /// While set, pub/sub connections (existing and new) are silenced.
    silent: Arc<AtomicBool>,
    links: Arc<std::sync::Mutex<Vec<Arc<Link>>>>,
}

/// One proxied connection.
#[derive(Default)]
struct Link {
    /// It has sent a SUBSCRIBE.
    pubsub: AtomicBool,
    /// Nothing is forwarded any more (for the rest of its life).
    frozen: AtomicBool,
}

impl SilentProxy {
    fn start(upstream: u16) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = Arc::new(AtomicBool::new(false));
        let links: Arc<std::sync::Mutex<Vec<Arc<Link>>>> = Arc::default();
        let (silent2, links2) = (silent.clone(), links.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        continue; // drops the client: Redis is not there
                    };
                    let link = Arc::new(Link::default());
                    links2.lock().unwrap().push(link.clone());
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pump(
                        client_read,
                        server_write,
                        link.clone(),
                        Some(silent2.clone()),
                    ));
                    tokio::spawn(pump(server_read, client_write, link, None));
                }
            });
        });
        Self {
            port,
            silent,
            links,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Pub/sub connections stop forwarding, and so will new ones once they subscribe.
    fn silence(&self) {
        self.silent.store(true, Ordering::SeqCst);
        for link in self.links.lock().unwrap().iter() {
            if link.pubsub.load(Ordering::SeqCst) {
                link.frozen.store(true, Ordering::SeqCst);
            }
        }
    }

    /// How many connections have subscribed so far (live or silenced).
    fn pubsub_links(&self) -> usize {
        self.links
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.pubsub.load(Ordering::SeqCst))
            .count()
    }

    /// New pub/sub connections are forwarded again (silenced ones stay silent).
    fn forward_again(&self) {
        self.silent.store(false, Ordering::SeqCst);
    }
}

/// Copies one direction of a link; `silent` is given for the direction
/// towards Redis, where a SUBSCRIBE marks the link as pub/sub.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: Arc<Link>,
    silent: Option<Arc<AtomicBool>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(silent) = &silent
            && buf[..n].windows(9).any(|w| w == b"SUBSCRIBE")
        {
            link.pubsub.store(true, Ordering::SeqCst);
            if silent.load(Ordering::SeqCst) {
                link.frozen.store(true, Ordering::SeqCst);
            }
        }
        if link.frozen.load(Ordering::SeqCst) {
            continue; // swallowed; the socket stays open
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Polls `path` until it answers `status` (off the runtime's threads).
async fn wait_status(port: u16, path: &'static str, status: u16, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = tokio::task::spawn_blocking(move || http_get(port, path))
            .await
            .unwrap();
        if matches!(got, Ok((s, _)) if s == status) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "{path} did not answer {status} within {timeout:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pubsub_connection_that_silently_stops_delivering_is_detected_and_rebuilt() {
    let redis = RedisServer::start();
    let proxy = SilentProxy::start(redis.port);
    let url = proxy.url();
    // Probe every 500 ms: three missed probes (1.5 s) mean the connection is dead.
    let gw = Switchboard::start(&[
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        &url,
        "--no-auth",
        "--redis-probe-interval",
        "500ms",
        "--redis-timeout",
        "500ms",
    ]);
    gw.wait_ready(WAIT);
    let subscribed = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn(resilient_reader(
                gw.ws_url("/ws"),
                "quiet",
                150,
                Duration::from_secs(60),
                subscribed.clone(),
            ))
        })
        .collect();
    wait_count("clients subscribed", &subscribed, 5).await;
    // Published through the gateway (its command connections are not silenced).
    let (published, publisher) = spawn_publisher(gw.port, "quiet", 150, Duration::from_millis(40));
    wait_published(&published, 25).await;
    assert_eq!(gw.metric("switchboard_redis_reconnects_total", ""), 0.0);

    // The pub/sub connection goes silent: no error, no close, no message.
    let before = proxy.pubsub_links();
    proxy.silence();
    // Three missed 500 ms probes find it in about 2 s. The bound, 10 s, leaves
    // room for a loaded machine and is still below the 15 s that three missed
    // probes of the default 5 s interval would take: a gateway that ignored
    // --redis-probe-interval fails here.
    wait_status(gw.port, "/health/ready", 503, Duration::from_secs(10)).await;
    let deadline = Instant::now() + WAIT;
    while gw.metric("switchboard_redis_reconnects_total", "") < 1.0 {
        assert!(Instant::now() < deadline, "the loss was not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still silent: every new pub/sub connection is swallowed too, so the
    // gateway stays unready while it retries. Once a retry has subscribed
    // (and been swallowed), it must still be unready.
    let deadline = Instant::now() + WAIT;
    while proxy.pubsub_links() <= before {
        assert!(
            Instant::now() < deadline,
            "the gateway did not try a new pub/sub connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        common::http_get(gw.port, "/health/ready")
            .map(|(s, _)| s)
            .ok(),
        Some(503),
        "not ready while the feed is down"
    );

    // Forwarding again: a new connection goes through, the gateway
    // resubscribes, catches up from history and turns ready.
    proxy.forward_again();
    wait_status(gw.port, "/health/ready", 200, Duration::from_secs(20)).await;
    publisher.join().unwrap();
    for r in readers {
        let (offsets, reconnects) = r.await.unwrap();
        assert_eq!(
            offsets,
            (1..=150).collect::<Vec<u64>>(),
            "nothing lost, nothing twice"
        );
        assert_eq!(reconnects, 0, "clients stay connected throughout");
    }
    // One loss, counted once (not once per failed retry).
    assert_eq!(gw.metric("switchboard_redis_reconnects_total", ""), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_within_history_recovers_exactly_and_beyond_it_says_so_with_the_snapshot() {
    let redis = RedisServer::start();
    let a = Switchboard::gateway(&redis, &["--history-size", "5"]);
    let b = Switchboard::gateway(&redis, &["--history-size", "5"]);
    common::resume_within_and_beyond_history(&a, &b).await;
    // A wrong epoch is never "recovered".
    let mut other = Client::connect(&b.ws_url("/ws")).await;
    other.recv_json().await;
    let sub = other
        .subscribe(json!({"type":"subscribe","channel":"board","since":{"offset":19,"epoch":"not-the-epoch"}}))
        .await;
    assert_eq!(sub["recovered"], false);
    assert!(b.metric("switchboard_resumes_total", "result=\"not_recovered\"") >= 2.0);
}

/// Polls the session's stored subscription (`s:<channel>`) and acknowledged
/// offset (`o:<channel>`) of `channel` until `done` holds for them (session
/// writes are batched); panics after `WAIT`, naming `what`.
async fn wait_session(
    redis: &RedisServer,
    session: &str,
    channel: &str,
    what: &str,
    done: impl Fn(Option<&str>, Option<u64>) -> bool,
) {
    let mut conn = redis.connection().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (start, acked): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(format!("switchboard:session:{session}"))
            .arg(format!("s:{channel}"))
            .arg(format!("o:{channel}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if done(start.as_deref(), acked) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} of {channel} was not stored: {start:?}, ack {acked:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the session's acknowledged offset of `channel` is stored.
async fn wait_acked(redis: &RedisServer, session: &str, channel: &str, offset: u64) {
    wait_session(redis, session, channel, "the ack", |_, acked| {
        acked == Some(offset)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_on_another_replica_with_its_subscriptions_and_positions() {
    let redis = RedisServer::start();
    let a = Switchboard::gateway(&redis, &[]);
    let b = Switchboard::gateway(&redis, &[]);
    let mut first = Client::connect(&a.ws_url("/ws")).await;
    let hello = first.recv_json().await;
    let session = hello["session"].as_str().unwrap().to_string();
    assert_eq!(session.len(), 32);
    first
        .subscribe(json!({"type":"subscribe","channel":"orders"}))
        .await;
    first
        .subscribe(json!({"type":"subscribe","channel":"alerts","filters":{"level":"high"}}))
        .await;
    for n in 1..=3 {
        publish(a.port, "orders", &json!({"n": n}));
    }
    for _ in 1..=3 {
        first.recv_json().await;
    }
    first
        .send_json(&json!({"type":"ack","channel":"orders","offset":2,"id":"a"}))
        .await;
    assert_eq!(first.recv_json().await["type"], "acked");
    // Acks are stored in batches: wait until this one is in Redis.
    wait_acked(&redis, &session, "orders", 2).await;
    drop(first);
    publish(a.port, "orders", &json!({"n": 4}));
    publish(a.port, "alerts", &json!({"level": "low"}));
    publish(a.port, "alerts", &json!({"level": "high", "id": "x"}));

    let mut second = Client::connect(&b.ws_url(&format!("/ws?session={session}"))).await;
    let hello = second.recv_json().await;
    assert_eq!(
        (hello["session"].as_str(), hello["resumed"].as_bool()),
        (Some(session.as_str()), Some(true))
    );
    let mut got: Vec<(String, u64)> = Vec::new();
    let mut subscribed = Vec::new();
    while got.len() < 3 {
        let m = second.recv_json().await;
        match m["type"].as_str() {
            Some("subscribed") => {
                assert_eq!(m["recovered"], true, "{m}");
                subscribed.push(m["channel"].as_str().unwrap().to_string());
            }
            Some("message") => got.push((
                m["channel"].as_str().unwrap().to_string(),
                m["offset"].as_u64().unwrap(),
            )),
            other => panic!("unexpected {other:?}: {m}"),
        }
    }
    subscribed.sort();
    assert_eq!(subscribed, ["alerts", "orders"]);
    got.sort();
    // orders after the ack (2): 3 and 4; alerts: only the high one (offset 2), the filter kept.
    assert_eq!(
        got,
        [
            ("alerts".to_string(), 2),
            ("orders".to_string(), 3),
            ("orders".to_string(), 4)
        ]
    );
    second.expect_silence(Duration::from_millis(300)).await;
    // Someone else's (or an unknown) session id resumes nothing.
    let mut stranger =
        Client::connect(&b.ws_url("/ws?session=00000000000000000000000000000000")).await;
    let hello = stranger.recv_json().await;
    assert_eq!(hello["resumed"], false);
    assert_ne!(hello["session"], "00000000000000000000000000000000");
}

/// Waits until the session's subscription of `channel` is stored and holds no
/// acknowledgement (a subscription's start replaces its acknowledgements).
async fn wait_started(redis: &RedisServer, session: &str, channel: &str) {
    wait_session(redis, session, channel, "the start", |start, acked| {
        start.is_some() && acked.is_none()
    })
    .await;
}

/// A session restored on a replica whose replay its client never read (the
/// connection ended first) resumes again from where the client was — not
/// after that replay (found by the soak: a restore skipped an unread replay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_whose_replay_was_not_read_replays_it_again() {
    let redis = RedisServer::start();
    let gw = Switchboard::gateway(&redis, &[]);
    let mut first = Client::connect(&gw.ws_url("/ws")).await;
    let session = first.recv_json().await["session"]
        .as_str()
        .unwrap()
        .to_string();
    first
        .subscribe(json!({"type":"subscribe","channel":"orders"}))
        .await;
    publish(gw.port, "orders", &json!({"n": 1}));
    assert_eq!(first.recv_json().await["offset"], 1);
    first
        .send_json(&json!({"type":"ack","channel":"orders","offset":1,"id":"a"}))
        .await;
    assert_eq!(first.recv_json().await["type"], "acked");
    wait_acked(&redis, &session, "orders", 1).await;
    drop(first);
    publish(gw.port, "orders", &json!({"n": 2}));
    publish(gw.port, "orders", &json!({"n": 3}));
    // The restore replays 2 and 3; this client leaves before reading them.
    let url = gw.ws_url(&format!("/ws?session={session}"));
    let mut second = Client::connect(&url).await;
    assert_eq!(second.recv_json().await["resumed"], true);
    let sub = second.recv_until(WAIT, |m| m["type"] == "subscribed").await;
    assert_eq!(
        (sub["recovered"].as_bool(), sub["offset"].as_u64()),
        (Some(true), Some(3))
    );
    drop(second);
    wait_started(&redis, &session, "orders").await;
    let mut third = Client::connect(&url).await;
    assert_eq!(third.recv_json().await["resumed"], true);
    let sub = third.recv_until(WAIT, |m| m["type"] == "subscribed").await;
    assert_eq!(sub["recovered"], true, "{sub}");
    let replay: Vec<_> = [third.recv_json().await, third.recv_json().await]
        .iter()
        .map(|m| (m["offset"].as_u64(), m["data"]["n"].as_u64()))
        .collect();
    assert_eq!(replay, [(Some(2), Some(2)), (Some(3), Some(3))]);
}

/// A session whose subscription started with a snapshot its client never
/// acknowledged is restarted on restore — `recovered: false` and the snapshot
/// again — instead of resumed after a start the client may not have read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_snapshot_start_is_restarted_on_restore() {
    let redis = RedisServer::start();
    let gw = Switchboard::gateway(&redis, &[]);
    let body = json!({"channel":"board","data":{"v":1},"snapshot":true}).to_string();
    http_request(gw.port, "POST", "/api/v1/publish", &[], Some(&body)).unwrap();
    let mut first = Client::connect(&gw.ws_url("/ws")).await;
    let session = first.recv_json().await["session"]
        .as_str()
        .unwrap()
        .to_string();
    first
        .subscribe(json!({"type":"subscribe","channel":"board"}))
        .await;
    drop(first);
    wait_started(&redis, &session, "board").await;
    let mut second = Client::connect(&gw.ws_url(&format!("/ws?session={session}"))).await;
    assert_eq!(second.recv_json().await["resumed"], true);
    let sub = second.recv_until(WAIT, |m| m["type"] == "subscribed").await;
    assert_eq!(sub["recovered"], false, "{sub}");
    let snapshot = second.recv_json().await;
    assert_eq!(
        (snapshot["type"].as_str(), snapshot["data"]["v"].as_u64()),
        (Some("snapshot"), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_history_makes_subscribers_restart_honestly() {
    let redis = RedisServer::start();
    let gw = Switchboard::gateway(&redis, &[]);
    let mut client = Client::connect(&gw.ws_url("/ws")).await;
    client.recv_json().await;
    let sub = client
        .subscribe(json!({"type":"subscribe","channel":"fragile"}))
        .await;
    let old_epoch = sub["epoch"].as_str().unwrap().to_string();
    publish(gw.port, "fragile", &json!({"n": 1}));
    assert_eq!(client.recv_json().await["offset"], 1);
    // Redis loses everything (as a restart without persistence would).
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let body = json!({"channel":"fragile","data":{"n":"after"},"snapshot":true}).to_string();
    http_request(gw.port, "POST", "/api/v1/publish", &[], Some(&body)).unwrap();
    let restart = client.recv_until(WAIT, |m| m["type"] == "subscribed").await;
    assert_eq!(restart["recovered"], false);
    assert_ne!(restart["epoch"].as_str().unwrap(), old_epoch);
    let snap = client.recv_json().await;
    assert_eq!(
        (snap["type"].as_str(), snap["data"]["n"].as_str()),
        (Some("snapshot"), Some("after"))
    );
    publish(gw.port, "fragile", &json!({"n": 3}));
    let m = client.recv_json().await;
    assert_eq!(
        (m["type"].as_str(), m["offset"].as_u64()),
        (Some("message"), Some(2))
    );
    assert!(gw.metric("switchboard_resyncs_total", "") >= 1.0);
}

/// Reads a drop-in client until the gateway closes it; returns the close code
/// and every text frame that came before the close.
async fn frames_until_closed(client: &mut Client) -> (Option<u16>, Vec<Value>) {
    let mut frames = Vec::new();
    loop {
        match client.next(WAIT).await {
            Some(Received::Text(t)) => frames.push(serde_json::from_str(&t).unwrap()),
            Some(Received::Closed(code)) => return (code, frames),
            None => panic!("not closed within {WAIT:?}; got {frames:?}"),
        }
    }
}

/// The soak's finding: a replica whose feed missed more of a channel than the
/// history keeps restarts its subscribers. A native client is told with
/// `recovered: false`; the drop-in routes have no offsets to say it with, so
/// their connections end with 1012 — nothing past the gap is sent as if it
/// followed — and a client that reconnects gets the current state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_missed_beyond_history_close_drop_in_clients_with_1012() {
    let redis = RedisServer::start();
    let gw = Switchboard::gateway(&redis, &["--history-size", "4"]);
    let channel = "missed";
    let mut native = Client::connect(&gw.ws_url("/ws")).await;
    native.recv_json().await;
    let sub = native
        .subscribe(json!({"type":"subscribe","channel":channel}))
        .await;
    let old_epoch = sub["epoch"].as_str().unwrap().to_string();
    // The drop-in subscriptions are live once the answer to a ping comes.
    let mut relay = Client::connect(&gw.ws_url(&format!("/api/ws/{channel}"))).await;
    let mut ark = Client::connect(&gw.ws_url(&format!("/ws/{channel}"))).await;
    for c in [&mut relay, &mut ark] {
        c.send_text("ping").await;
        assert_eq!(c.recv_json().await["type"], "pong");
    }
    assert_eq!(publish(gw.port, channel, &json!({"n": 1})), 1);
    assert_eq!(native.recv_json().await["data"]["n"], 1);
    assert_eq!(relay.recv_json().await["n"], 1);
    assert_eq!(ark.recv_json().await["n"], 1);

    // 2..=7 reach history but not the gateway's feed: 6 missed, 4 kept.
    for n in 2..=7 {
        redis.publish_unseen(channel, &json!({"n": n}), 4).await;
    }
    let body = json!({"channel":channel,"data":{"n":8},"snapshot":true}).to_string();
    let (status, reply) =
        http_request(gw.port, "POST", "/api/v1/publish", &[], Some(&body)).unwrap();
    assert_eq!(status, 200, "{reply}");

    // Native: told, with the snapshot standing for what was lost.
    let restart = native.recv_until(WAIT, |m| m["type"] == "subscribed").await;
    assert_eq!(restart["recovered"], false, "{restart}");
    assert_eq!(
        restart["epoch"].as_str(),
        Some(old_epoch.as_str()),
        "same stream, gap in it"
    );
    let snap = native.recv_json().await;
    assert_eq!(
        (snap["type"].as_str(), snap["data"]["n"].as_u64()),
        (Some("snapshot"), Some(8))
    );

    // Relay and ARK snapshot routes: closed with 1012, and nothing after the
    // gap arrived first as if it followed message 1.
    for (route, c) in [("relay", &mut relay), ("snapshot", &mut ark)] {
        let (code, frames) = frames_until_closed(c).await;
        assert_eq!(code, Some(1012), "{route} route: {frames:?}");
        assert!(
            frames.is_empty(),
            "{route} route got {frames:?} before its close"
        );
    }
    gw.wait_metric(
        "switchboard_disconnects_total",
        "code=\"1012\"",
        WAIT,
        |v| v >= 2.0,
    )
    .await;
    assert!(gw.metric("switchboard_resyncs_total", "") >= 1.0);

    // Reconnecting continues: the snapshot route starts with the current
    // state, the relay route with the next message.
    let mut ark = Client::connect(&gw.ws_url(&format!("/ws/{channel}"))).await;
    assert_eq!(ark.recv_json().await["n"], 8);
    let mut relay = Client::connect(&gw.ws_url(&format!("/api/ws/{channel}"))).await;
    relay.send_text("ping").await;
    assert_eq!(relay.recv_json().await["type"], "pong");
    assert_eq!(publish(gw.port, channel, &json!({"n": 9})), 9);
    assert_eq!(relay.recv_json().await["n"], 9);
    assert_eq!(ark.recv_json().await["n"], 9);
    let m = native.recv_json().await;
    assert_eq!(
        (m["type"].as_str(), m["offset"].as_u64()),
        (Some("message"), Some(9))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_answer_pings_is_closed_with_4002() {
    let sb = Switchboard::standalone(&["--ping-interval", "1s", "--pong-timeout", "1s"]);
    sb.wait_ready(WAIT);
    // This client answers pings (tungstenite does while reading): it stays
    // connected through three of them, so past two pong deadlines.
    let mut alive = Client::connect(&sb.ws_url("/ws")).await;
    alive.recv_json().await;
    let alive_task = tokio::spawn(async move {
        for ping in 1..=3 {
            assert!(
                alive.next_ping(WAIT).await,
                "a client that answers pings was closed before ping {ping}"
            );
        }
        alive
    });
    // This one reads but never answers a ping (a raw socket: no library
    // answers for it): closed with 4002.
    let port = sb.port;
    let deaf = tokio::task::spawn_blocking(move || {
        let (mut deaf, head) = common::raw::upgrade(port, "13");
        assert!(head.starts_with("http/1.1 101"), "{head}");
        deaf.set_read_timeout(Some(WAIT)).unwrap();
        common::raw::close_code(&mut deaf)
    });
    assert_eq!(deaf.await.unwrap(), Some(4002));
    let mut alive = alive_task.await.unwrap();
    alive
        .send_json(&json!({"type": "ping", "id": "still"}))
        .await;
    let pong = alive.recv_until(WAIT, |m| m["type"] == "pong").await;
    assert_eq!(pong["id"], "still", "a client that answers stays connected");
    // Counted when the session ends (after the closing handshake's timeout).
    let mut counted = 0.0;
    for _ in 0..50 {
        counted = sb.metric("switchboard_disconnects_total", "code=\"4002\"");
        if counted >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counted >= 1.0);
}

/// Clients that connect together are not pinged together: the first ping
/// comes at a moment spread over the second half of the interval, never early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_pings_of_clients_that_connected_together_are_spread() {
    const INTERVAL: Duration = Duration::from_secs(6);
    let sb = Switchboard::standalone(&["--ping-interval", "6s"]);
    sb.wait_ready(WAIT);
    // Each time counts from the client's own connect, so how long the 40
    // connects took does not spread them: without the spread they would all be
    // the interval, give or take the wheel's one-second tick.
    let mut waits = Vec::new();
    for _ in 0..40 {
        let mut c = Client::connect(&sb.ws_url("/ws")).await;
        let connected = Instant::now();
        waits.push(tokio::spawn(async move {
            assert!(
                c.next_ping(INTERVAL * 2).await,
                "a ping within the interval"
            );
            connected.elapsed()
        }));
    }
    let mut firsts = Vec::new();
    for w in waits {
        firsts.push(w.await.unwrap());
    }
    firsts.sort();
    let (earliest, latest) = (firsts[0], firsts[firsts.len() - 1]);
    // Half the interval at the earliest (the wheel is never early), the
    // interval plus one tick of the wheel (and a loaded machine's delay) at
    // the latest.
    assert!(
        earliest >= INTERVAL / 2 - Duration::from_millis(100),
        "{firsts:?}"
    );
    assert!(latest <= INTERVAL + Duration::from_secs(2), "{firsts:?}");
    assert!(
        latest - earliest >= Duration::from_millis(1500),
        "spread: {firsts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_with_4003_after_the_idle_limit() {
    let sb = Switchboard::standalone(&["--ping-interval", "0s", "--idle-timeout", "2s"]);
    sb.wait_ready(WAIT);
    let mut silent = Client::connect(&sb.ws_url("/ws")).await;
    let mut talker = Client::connect(&sb.ws_url("/ws")).await;
    talker.recv_json().await;
    let started = Instant::now();
    let pings = Arc::new(AtomicU64::new(0));
    let talk = {
        let pings = pings.clone();
        tokio::spawn(async move {
            for _ in 0..8 {
                talker.send_json(&json!({"type":"ping"})).await;
                talker.recv_json().await;
                pings.fetch_add(1, Ordering::Relaxed);
                // Talking every 500 ms, well within the 2 s idle limit.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            talker
        })
    };
    assert_eq!(silent.closed_code(WAIT).await, Some(4003));
    assert!(started.elapsed() >= Duration::from_secs(2));
    let mut talker = talk.await.unwrap();
    assert_eq!(
        pings.load(Ordering::Relaxed),
        8,
        "a client that talks is not idle"
    );
    talker.send_json(&json!({"type":"ping","id":1})).await;
    assert_eq!(talker.recv_json().await["id"], 1);
}

/// AI Council acknowledgements sent while Redis is unreachable are stored
/// once it is back: the acknowledged events are not replayed on the next
/// connect (found by the soak harness: a failed write of acknowledgements
/// was dropped, and a Redis failover made acknowledged events come again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn council_acknowledgements_sent_during_a_redis_outage_are_kept() {
    let mut redis = RedisServer::start_persistent();
    let gw = Switchboard::gateway(&redis, &[]);
    for n in 1..=3 {
        publish(
            gw.port,
            "council:req-outage",
            &json!({"type": "analysis_progress", "data": {"n": n}}),
        );
    }
    let url = gw.ws_url("/api/v1/ws/req-outage");
    let mut client = Client::connect(&url).await;
    assert_eq!(client.recv_json().await["type"], "connection_established");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(client.recv_json().await["message_id"].as_u64().unwrap());
    }
    assert_eq!(got, [1, 2, 3]);

    // Redis goes away; the client acknowledges meanwhile; Redis comes back
    // with its data.
    let port = redis.port;
    let restart = tokio::task::spawn_blocking(move || {
        redis.restart(Duration::from_secs(4));
        redis
    });
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "Redis did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in 1..=3 {
        client
            .send_json(&json!({"type": "ack", "message_id": id}))
            .await;
    }
    let redis = restart.await.unwrap();
    gw.wait_ready(Duration::from_secs(20));

    // The acknowledgements reach Redis without the client doing anything.
    let mut conn = redis.connection().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*council:acks:*req-outage*")
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut bits = Vec::new();
        if let Some(key) = keys.first() {
            for id in 1..=3 {
                let bit: i64 = redis::cmd("GETBIT")
                    .arg(key)
                    .arg(id)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                bits.push(bit);
            }
        }
        if bits == [1, 1, 1] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledgements sent during the outage were never stored: {keys:?} {bits:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(client);
    // A new connection replays nothing: every event was acknowledged.
    let mut again = Client::connect(&url).await;
    assert_eq!(again.recv_json().await["type"], "connection_established");
    again.expect_silence(Duration::from_secs(1)).await;
}

/// The AI Council acknowledgement bits of `request` in Redis: which of
/// `ids` are set (any user, any epoch: the test has one of each).
async fn council_ack_bits(redis: &RedisServer, request: &str, ids: &[u64]) -> Vec<i64> {
    let mut conn = redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*council:acks:*{request}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut bits = Vec::new();
    if let Some(key) = keys.first() {
        for id in ids {
            let bit: i64 = redis::cmd("GETBIT")
                .arg(key)
                .arg(*id)
                .query_async(&mut conn)
                .await
                .unwrap();
            bits.push(bit);
        }
    }
    bits
}

/// A Council client on `gw` that received events `1..=n` of `request` and
/// acknowledged them all; returns once the gateway has read the acks (a
/// `ping` sent after them is answered).
async fn council_client_acked(gw: &Switchboard, request: &str, n: u64) -> Client {
    for i in 1..=n {
        publish(
            gw.port,
            &format!("council:{request}"),
            &json!({"type": "analysis_progress", "data": {"n": i}}),
        );
    }
    let mut client = Client::connect(&gw.ws_url(&format!("/api/v1/ws/{request}"))).await;
    assert_eq!(client.recv_json().await["type"], "connection_established");
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(client.recv_json().await["message_id"].as_u64().unwrap());
    }
    assert_eq!(got, (1..=n).collect::<Vec<_>>());
    for id in 1..=n {
        client
            .send_json(&json!({"type": "ack", "message_id": id}))
            .await;
    }
    client.send_json(&json!({"type": "ping"})).await;
    let pong = client.recv_until(WAIT, |m| m["type"] == "pong").await;
    assert_eq!(pong["type"], "pong");
    client
}

/// Acknowledgements a replica received just before a graceful shutdown (a
/// rolling restart's SIGTERM) are stored before the process exits, not lost
/// with it: another replica replays nothing (found by the soak harness; the
/// writer kept them for its flush interval and the process exited first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn council_acknowledgements_received_before_a_shutdown_are_stored() {
    let redis = RedisServer::start();
    // A flush interval far longer than the shutdown: only the writer's final
    // flush can store the acks before the process is gone.
    let mut a = Switchboard::gateway(
        &redis,
        &[
            "--council-ack-flush-interval",
            "60s",
            "--drain-window",
            "0s",
        ],
    );
    let b = Switchboard::gateway(&redis, &[]);
    let mut client = council_client_acked(&a, "req-drain", 3).await;
    a.signal("TERM");
    assert_eq!(client.closed_code(WAIT).await, Some(1001));
    assert!(
        a.wait_exit(WAIT).is_some(),
        "the drained gateway did not exit"
    );
    assert_eq!(
        council_ack_bits(&redis, "req-drain", &[1, 2, 3]).await,
        [1, 1, 1],
        "acknowledgements received before the shutdown were lost with the process"
    );
    let mut again = Client::connect(&b.ws_url("/api/v1/ws/req-drain")).await;
    assert_eq!(again.recv_json().await["type"], "connection_established");
    again.expect_silence(Duration::from_secs(1)).await;
}

/// When a Council connection ends, its acknowledgements are written at once,
/// not at the end of the flush interval: the client reconnecting to another
/// replica is not replayed what it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn council_acknowledgements_are_written_when_their_connection_ends() {
    let redis = RedisServer::start();
    let a = Switchboard::gateway(&redis, &["--council-ack-flush-interval", "60s"]);
    let b = Switchboard::gateway(&redis, &[]);
    let client = council_client_acked(&a, "req-close", 2).await;
    assert_eq!(
        council_ack_bits(&redis, "req-close", &[1, 2])
            .await
            .iter()
            .sum::<i64>(),
        0,
        "written before the interval and before the connection ended"
    );
    drop(client);
    let deadline = Instant::now() + WAIT;
    while council_ack_bits(&redis, "req-close", &[1, 2]).await != [1, 1] {
        assert!(
            Instant::now() < deadline,
            "the acknowledgements of a closed connection waited for the flush interval"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut again = Client::connect(&b.ws_url("/api/v1/ws/req-close")).await;
    assert_eq!(again.recv_json().await["type"], "connection_established");
    again.expect_silence(Duration::from_secs(1)).await;
}
