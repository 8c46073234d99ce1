//! The Redis connection layer against real servers: the single-Redis command
//! path (shared multiplexed connections: no check round trip per command, a
//! closed connection replaced), and TLS (`rediss://`) to one Redis and to a
//! Redis Cluster, with certificates made here by `openssl`.

mod common;

use std::time::Instant;

use common::{RedisServer, Switchboard, http_get, http_request, publish};
use serde_json::json;

/// `calls` of each command in `INFO commandstats`.
async fn command_calls(conn: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

fn calls_of(stats: &[(String, u64)], command: &str) -> u64 {
    stats
        .iter()
        .find(|(name, _)| name == command)
        .map_or(0, |(_, calls)| *calls)
}

/// Connections of normal clients (not pub/sub) other than the caller's own.
async fn other_command_connections(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("normal")
        .query_async(conn)
        .await
        .expect("CLIENT LIST");
    list.lines()
        .filter(|l| !l.is_empty() && !l.contains(" cmd=client|list "))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_share_the_pooled_connections_without_a_ping_each() {
    let redis = RedisServer::start();
    let gw = Switchboard::gateway(&redis, &["--redis-pool-size", "4"]);
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let started = Instant::now();
    // Four producers at once, so commands overlap on the shared connections.
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let port = gw.port;
            std::thread::spawn(move || {
                for n in 0..50 {
                    publish(port, &format!("counted-{p}"), &json!({"n": n}));
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let elapsed = started.elapsed();
    let stats = command_calls(&mut conn).await;
    let scripts = calls_of(&stats, "evalsha") + calls_of(&stats, "eval");
    assert!(scripts >= 200, "every publish ran the script: {stats:?}");
    assert_eq!(
        calls_of(&stats, "unwatch"),
        0,
        "no UNWATCH before commands: {stats:?}"
    );
    // The only PINGs are the engine's health check, one every 2 s (and a
    // second one right after a failed first, which does not happen here).
    let pings = calls_of(&stats, "ping");
    let allowed = elapsed.as_secs() / 2 + 2;
    assert!(
        pings <= allowed,
        "{pings} PINGs for {scripts} publishes in {elapsed:?} (at most {allowed} from the health check): {stats:?}"
    );
    // However many publishes overlapped, no more than the pool's connections.
    let connections = other_command_connections(&mut conn).await;
    assert!(
        (1..=4).contains(&connections),
        "{connections} command connections for --redis-pool-size 4"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_connections_closed_by_redis_are_replaced_after_at_most_one_failure() {
    let redis = RedisServer::start();
    let gw = Switchboard::gateway(&redis, &["--redis-pool-size", "4"]);
    // Open every connection of the pool.
    for n in 0..8 {
        publish(gw.port, "replaced", &json!({"n": n}));
    }
    let mut conn = redis.connection().await;
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(killed >= 1, "the gateway's command connections were closed");
    let mut failures = 0;
    for n in 8..28 {
        let body = json!({"channel": "replaced", "data": {"n": n}}).to_string();
        loop {
            let (status, reply) =
                http_request(gw.port, "POST", "/api/v1/publish", &[], Some(&body)).unwrap();
            match status {
                200 => break,
                503 => failures += 1,
                other => panic!("publish: {other} {reply}"),
            }
            assert!(failures <= 1, "more than one publish failed: {reply}");
        }
    }
    assert!(failures <= 1);
    let (status, body) = http_get(gw.port, "/health/ready").unwrap();
    assert_eq!(status, 200, "still ready: {body}");
    let offset = publish(gw.port, "replaced", &json!({"n": 28}));
    assert_eq!(offset, 29, "every publish ran exactly once");
}
