//! The production topology end to end, through `deploy/local-cluster.sh`: a private
//! redis-server, three gateways, the collector and nginx on loopback, with the nginx
//! configuration the compose file uses. Clients connect through nginx only; each
//! replica's `/metrics` is scraped (a gateway's on its admin port, which alone
//! serves it) for the series the dashboard and alerts rely on;
//! with Prometheus available (scripts/test.sh provides it) it scrapes the cluster
//! with deploy/prometheus/alerts.yml loaded. The dashboard page is fetched through
//! nginx, and its WebSocket is accepted as same-origin despite an Origin allowlist.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Client, Received, free_port, http_get, http_request, metric_value};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The one site the test cluster's `--allowed-origins` lists.
const DASHBOARD_SITE: &str = "https://dash.example.com";

/// `deploy/local-cluster.sh` running in its own run directory; stopped on drop.
struct Cluster {
    child: Child,
    dir: PathBuf,
    lb: u16,
    /// The gateways' client ports (`--listen`).
    gateways: Vec<u16>,
    /// Their admin ports (`--admin-listen`): `/metrics` and health.
    admin: Vec<u16>,
    collector: u16,
    redis: u16,
    prometheus: Option<u16>,
}

/// nginx from PATH or where Debian puts it (not on a non-root user's PATH).
fn nginx_available() -> bool {
    let on_path = Command::new("sh")
        .args(["-c", "command -v nginx"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    on_path || Path::new("/usr/sbin/nginx").exists()
}

/// Prometheus from PATH or the copy scripts/test.sh unpacks into the cache.
fn prometheus_binary() -> Option<PathBuf> {
    let cache = std::env::var_os("SWITCHBOARD_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("switchboard"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/switchboard"))
        })?;
    let unpacked = cache.join("prometheus-deb/root/usr/bin/prometheus");
    if unpacked.exists() {
        return Some(unpacked);
    }
    let out = Command::new("sh")
        .args(["-c", "command -v prometheus"])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

impl Cluster {
    /// Starts the cluster; `None` (with a message) only when nginx is not
    /// installed, and never in CI (a failure there).
    ///
    /// The script is given free ports (its processes cannot report ports they
    /// picked); one taken by another process before the script bound it makes
    /// the script stop, and the cluster is started again on other ports.
    fn start(with_prometheus: bool) -> Option<Self> {
        if !nginx_available() {
            common::skip_unless_ci(
                "nginx is not installed",
                "apt-get install nginx; scripts/test.sh does it",
            );
            return None;
        }
        let mut failures = Vec::new();
        for attempt in 0..3 {
            match Self::try_start(with_prometheus, attempt) {
                Ok(cluster) => return Some(cluster),
                Err(e) => {
                    eprintln!("local-cluster.sh stopped before it was ready: {e}");
                    failures.push(e);
                }
            }
        }
        panic!("local-cluster.sh did not start on free ports: {failures:?}");
    }

    fn try_start(with_prometheus: bool, attempt: u32) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!(
            "sb-cluster-{}-{}-{attempt}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("run directory");
        let (lb, collector, redis) = (free_port(), free_port(), free_port());
        let gateways: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let admin: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let list = |ports: &[u16]| {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut cmd = Command::new("bash");
        cmd.arg(Path::new(ROOT).join("deploy/local-cluster.sh"))
            .args(["--bin", env!("CARGO_BIN_EXE_switchboard")])
            .args(["--lb-port", &lb.to_string()])
            .args(["--gateway-ports", &list(&gateways)])
            .args(["--gateway-admin-ports", &list(&admin)])
            .args(["--collector-port", &collector.to_string()])
            .args(["--redis-port", &redis.to_string()])
            .arg("--dir")
            .arg(&dir)
            // An Origin allowlist naming another site: the dashboard page served
            // through nginx must still reach its gateway as same-origin.
            .args([
                "--gateway-arg",
                &format!("--allowed-origins={DASHBOARD_SITE}"),
            ])
            .args(["--collector-arg", "--collect-interval-min=200ms"])
            .args(["--collector-arg", "--collect-interval-max=300ms"]);
        let prometheus = match (with_prometheus, prometheus_binary()) {
            (true, Some(bin)) => {
                let port = free_port();
                cmd.args(["--prometheus-port", &port.to_string()])
                    .env("PATH", extend_path(bin.parent().unwrap_or(Path::new("/"))));
                Some(port)
            }
            (true, None) => {
                common::skip_unless_ci(
                    "Prometheus not found: the scrape-and-rules part",
                    "scripts/test.sh unpacks Debian's prometheus package into the cache",
                );
                None
            }
            (false, _) => None,
        };
        let mut child = cmd
            .env("SWITCHBOARD_LOG_LEVEL", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run deploy/local-cluster.sh");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let ready = line.contains("local cluster ready");
                let _ = tx.send(line);
                if ready {
                    break;
                }
            }
        });
        let mut cluster = Self {
            child,
            dir,
            lb,
            gateways,
            admin,
            collector,
            redis,
            prometheus,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("local cluster ready") => return Ok(cluster),
                Ok(_) => continue,
                // The script ended (it stops what it started): a port was
                // taken, or a process did not come up.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = cluster.child.wait();
                    return Err(format!("exited: {status:?}"));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let status = cluster.child.try_wait();
                    panic!("local-cluster.sh did not report ready (status {status:?})");
                }
            }
        }
    }

    fn ws(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.lb, path)
    }

    /// Process ids from the run directory's cluster.env.
    fn pid(&self, name: &str) -> u32 {
        let env = std::fs::read_to_string(self.dir.join("cluster.env")).expect("cluster.env");
        let key = format!("PID_{}=", name.to_uppercase().replace('-', "_"));
        env.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in cluster.env"))
    }
}

fn extend_path(dir: &Path) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{}:{path}", dir.display())
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The script stops its processes in order (gateways drain, deadline 5 s).
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The script is stuck: end what it started, by process id.
        if let Ok(env) = std::fs::read_to_string(self.dir.join("cluster.env")) {
            for pid in env.lines().filter_map(|l| {
                l.starts_with("PID_")
                    .then(|| l.split_once('=')?.1.parse::<u32>().ok())?
            }) {
                signal(pid, "KILL");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scrape(port: u16) -> String {
    let (status, body) = http_get(port, "/metrics").expect("scrape /metrics");
    assert_eq!(status, 200, "/metrics on {port}");
    body
}

/// Metric families present in a scrape, with their type (histograms under their
/// base name).
fn families(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_string(), kind.trim().to_string()))
        })
        .collect()
}

fn publish_via(port: u16, channel: &str, data: &Value) -> u64 {
    let body = json!({"channel": channel, "data": data}).to_string();
    let (status, response) =
        http_request(port, "POST", "/api/v1/publish", &[], Some(&body)).expect("publish");
    assert_eq!(status, 200, "publish through nginx: {response}");
    let v: Value = serde_json::from_str(&response).expect("publish reply is JSON");
    v["offset"].as_u64().expect("offset")
}

/// Names of `switchboard_*` series a file queries (histogram suffixes removed).
fn queried_metrics(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(Path::new(ROOT).join(path)).expect("read file");
    let mut names = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("switchboard_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        // Job names (switchboard-gateway) and the dashboard's own uid are not metrics.
        if base.len() > "switchboard_".len() {
            names.insert(base.to_string());
        }
        rest = &tail[end..];
    }
    names
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One local cluster at a time: each picks its ports with `free_port` and
/// hands them to `deploy/local-cluster.sh`, so two starting together can pick
/// the same one between the check and the bind ("Address already in use").
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

#[tokio::test]
async fn clients_through_nginx_get_snapshots_and_messages_and_every_replica_reports_metrics() {
    let _serial = serial().await;
    let Some(cluster) = Cluster::start(true) else {
        return;
    };

    // Drop-in dashboards through the load balancer: the snapshot at once, then a
    // newer one from the collector (collector → Redis → every gateway → nginx).
    let mut dashboards = Vec::new();
    for i in 0..6 {
        let path = if i % 2 == 0 {
            "/ws/federation"
        } else {
            "/ws/memory"
        };
        let mut c = Client::connect(&cluster.ws(path)).await;
        let first = c.recv_json().await;
        assert!(first["version"].as_u64().is_some(), "{path}: {first}");
        let field = if i % 2 == 0 { "peers" } else { "logs" };
        assert!(first.get(field).is_some(), "{path}: no {field} in {first}");
        let next = c.recv_json().await;
        assert!(
            next["version"].as_u64() > first["version"].as_u64(),
            "{path}: live snapshots follow"
        );
        dashboards.push(c);
    }

    // Native clients and relay clients on one channel, spread over the replicas.
    let channel = "deploy:e2e";
    let mut natives = Vec::new();
    let mut epoch = Value::Null;
    for _ in 0..6 {
        let mut c = Client::connect(&cluster.ws("/ws")).await;
        let hello = c.recv_json().await;
        assert_eq!(hello["type"], "connection_established", "{hello}");
        let sub = c
            .subscribe(json!({"type": "subscribe", "channel": channel}))
            .await;
        assert_eq!(sub["type"], "subscribed", "{sub}");
        epoch = sub["epoch"].clone();
        natives.push(c);
    }
    let mut relays = Vec::new();
    for _ in 0..3 {
        relays.push(Client::connect(&cluster.ws(&format!("/api/ws/{channel}"))).await);
    }
    // Subscriptions are live once `subscribed` arrived; relay routes subscribe on
    // connect, before they read the first frame: a ping answered proves it.
    for relay in relays.iter_mut() {
        relay.send_text("ping").await;
        let pong = relay.recv_json().await;
        assert_eq!(pong["type"], "pong", "{pong}");
    }

    let mut offsets = Vec::new();
    for n in 0..5 {
        offsets.push(publish_via(cluster.lb, channel, &json!({"n": n})));
    }
    for (i, c) in natives.iter_mut().enumerate() {
        for (n, offset) in offsets.iter().enumerate() {
            let m = c
                .recv_until(WAIT, |m| m["type"] == "message" && m["channel"] == channel)
                .await;
            assert_eq!(m["data"], json!({"n": n}), "native client {i}");
            assert_eq!(m["offset"].as_u64(), Some(*offset), "native client {i}");
        }
    }
    for (i, c) in relays.iter_mut().enumerate() {
        for n in 0..5 {
            let m = c.recv_json().await;
            assert_eq!(m, json!({"n": n}), "relay client {i}");
        }
    }

    // A resume through the load balancer (to whichever replica): nothing missed.
    let mut late = Client::connect(&cluster.ws("/ws")).await;
    late.recv_json().await;
    let sub = late
        .subscribe(json!({"type": "subscribe", "channel": channel,
                          "since": {"offset": offsets[1], "epoch": epoch}}))
        .await;
    assert_eq!(sub["recovered"], true, "{sub}");
    for (n, offset) in offsets.iter().enumerate().skip(2) {
        let m = late.recv_until(WAIT, |m| m["type"] == "message").await;
        assert_eq!(m["offset"].as_u64(), Some(*offset));
        assert_eq!(m["data"], json!({"n": n}));
    }

    // Bad input through nginx: an error frame, a refused upgrade, a bad feed message.
    natives[0].send_text("{not json").await;
    let err = natives[0].recv_until(WAIT, |m| m["type"] == "error").await;
    assert!(err["code"].is_string(), "{err}");
    assert_eq!(
        Client::try_connect(&cluster.ws("/api/ws/bad%20channel"))
            .await
            .err(),
        Some(400)
    );
    let mut redis = redis::Client::open(format!("redis://127.0.0.1:{}", cluster.redis))
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the cluster's redis");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("switchboard:{{{channel}}}"))
        .arg("not json")
        .query_async(&mut redis)
        .await
        .expect("PUBLISH");
    // A publish over --max-message-bytes through nginx: the gateway's 413, not
    // a 502 (answered before the body was read, the gateway closed while nginx
    // was still sending it: "Broken pipe"). Large, so that the body does not fit
    // in the socket buffers; under nginx's own limit (client_max_body_size 1m).
    let big = json!({"channel": channel, "data": "y".repeat(900 * 1024)}).to_string();
    for _ in 0..3 {
        let (status, response) =
            http_request(cluster.lb, "POST", "/api/v1/publish", &[], Some(&big))
                .expect("oversized publish through nginx");
        assert_eq!(status, 413, "oversized publish through nginx: {response}");
    }
    // Two clients leave.
    for mut c in natives.drain(..2) {
        c.send_message(tokio_tungstenite::tungstenite::Message::Close(None))
            .await;
        assert!(c.closed_code(WAIT).await.is_some());
    }
    let open = (dashboards.len() + natives.len() + relays.len() + 1) as f64;
    // Counted once their sessions ended, and the bad feed message once read.
    let sum = |name: &str, labels: &str| -> f64 {
        cluster
            .admin
            .iter()
            .map(|p| metric_value(&scrape(*p), name, labels))
            .sum()
    };
    common::wait_until(
        "the two closes, the open connections and the bad feed message counted",
        WAIT,
        Duration::from_millis(50),
        || {
            (sum("switchboard_connections", "") == open
                && sum("switchboard_disconnects_total", "code=\"client\"") >= 2.0
                && sum("switchboard_invalid_messages_total", "") >= 1.0)
                .then_some(())
        },
    );

    // Every replica: ready, serving some of the clients, plausible counters.
    // Every check is made, and every failing one reported.
    let mut failures = common::Failures::default();
    let mut total_connections = 0.0;
    let mut published = 0.0;
    let mut seen = BTreeMap::new();
    for (client_port, port) in cluster.gateways.iter().zip(&cluster.admin) {
        // The client port does not serve /metrics: only the admin port does.
        let (status, _) = http_get(*client_port, "/metrics").expect("GET /metrics");
        failures.expect_eq(
            &format!("/metrics on gateway client port {client_port}"),
            status,
            404,
        );
        let m = scrape(*port);
        let v = |name: &str, labels: &str| metric_value(&m, name, labels);
        seen.extend(families(&m));
        let conns = v("switchboard_connections", "");
        total_connections += conns;
        let lag_n = v("switchboard_delivery_lag_seconds_count", "");
        let lag_mean = v("switchboard_delivery_lag_seconds_sum", "") / lag_n;
        let checks = [
            ("ready", v("switchboard_ready", "") == 1.0),
            ("has clients (nginx balances)", conns >= 1.0),
            (
                "connections opened ≥ open",
                v("switchboard_connections_opened_total", "") >= conns,
            ),
            ("subscriptions", v("switchboard_subscriptions", "") >= 1.0),
            ("channels", v("switchboard_channels", "") >= 1.0),
            (
                "messages received ≥ 5",
                v("switchboard_messages_received_total", "") >= 5.0,
            ),
            (
                "messages delivered ≥ 5",
                v("switchboard_messages_delivered_total", "") >= 5.0,
            ),
            ("bytes sent", v("switchboard_bytes_sent_total", "") > 0.0),
            ("delivery lag observed ≥ 5 times", lag_n >= 5.0),
            (
                "mean publish→deliver lag in 0..5 s",
                (0.0..5.0).contains(&lag_mean),
            ),
            (
                "broadcasts timed",
                v("switchboard_broadcast_duration_seconds_count", "") >= 1.0,
            ),
            (
                "no Redis error",
                v("switchboard_redis_errors_total", "") == 0.0,
            ),
            (
                "no Redis reconnect",
                v("switchboard_redis_reconnects_total", "") == 0.0,
            ),
            (
                "resident memory",
                v("process_resident_memory_bytes", "") > 1e6,
            ),
            ("open fds ≥ connections", v("process_open_fds", "") >= conns),
        ];
        for (what, ok) in checks {
            failures.check(
                &format!("gateway {port}: {what}"),
                ok,
                format!("connections {conns}, lag {lag_n} × {lag_mean} s"),
            );
        }
        published += v("switchboard_publishes_total", "result=\"ok\"");
    }
    failures.expect_eq("every open client is counted once", total_connections, open);
    failures.expect_eq("each publish reached one replica", published, 5.0);

    let m: HashMap<&str, f64> = {
        let body = scrape(cluster.admin[0]);
        let all: String = cluster.admin[1..]
            .iter()
            .map(|p| scrape(*p))
            .collect::<Vec<_>>()
            .join("\n");
        let both = format!("{body}\n{all}");
        [
            (
                "client_closes",
                metric_value(&both, "switchboard_disconnects_total", "code=\"client\""),
            ),
            (
                "resumes",
                metric_value(&both, "switchboard_resumes_total", "result=\"recovered\""),
            ),
            (
                "errors",
                metric_value(&both, "switchboard_client_errors_total", ""),
            ),
            (
                "rejected",
                metric_value(
                    &both,
                    "switchboard_upgrades_rejected_total",
                    "reason=\"bad_channel\"",
                ),
            ),
            (
                "invalid",
                metric_value(&both, "switchboard_invalid_messages_total", ""),
            ),
        ]
        .into_iter()
        .collect()
    };
    failures.check(
        "two client closes",
        m["client_closes"] >= 2.0,
        format!("{m:?}"),
    );
    failures.check("one resume", m["resumes"] == 1.0, format!("{m:?}"));
    failures.check("a client error", m["errors"] >= 1.0, format!("{m:?}"));
    failures.check(
        "one refused upgrade",
        m["rejected"] == 1.0,
        format!("{m:?}"),
    );
    failures.check(
        "an invalid feed message",
        m["invalid"] >= 1.0,
        format!("{m:?}"),
    );
    failures.finish("the gateways' metrics");

    // The collector: cycles, publishes, fresh, ready.
    let c = scrape(cluster.collector);
    seen.extend(families(&c));
    assert_eq!(metric_value(&c, "switchboard_ready", ""), 1.0);
    assert!(metric_value(&c, "switchboard_collector_cycle_seconds_count", "") >= 2.0);
    assert!(
        metric_value(&c, "switchboard_collector_publishes_total", "result=\"ok\"") >= 2.0,
        "{c}"
    );
    let last = metric_value(
        &c,
        "switchboard_collector_last_publish_timestamp_seconds",
        "",
    );
    assert!(
        (now_secs() - last).abs() < 10.0,
        "last publish {last} is not recent"
    );

    // Every metric the dashboard and the alerts query is exported by the cluster,
    // except series that exist only after an event this test cannot cause.
    // (Labelled counters such as switchboard_gap_fills_total are exported at 0
    // from the start, so they are checked too.)
    let only_after_event = [
        // set per configured real source; this cluster simulates every section
        "switchboard_collector_source_up",
    ];
    let mut queried = queried_metrics("deploy/grafana/switchboard.json");
    queried.extend(queried_metrics("deploy/prometheus/alerts.yml"));
    let missing: Vec<_> = queried
        .iter()
        .filter(|q| !seen.contains_key(*q) && !only_after_event.contains(&q.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "dashboard/alerts query metrics no replica exports: {missing:?}"
    );
    // Conventional names: prefix, lower snake case, counters in `_total`,
    // durations in `_seconds`.
    for (name, kind) in &seen {
        if !name.starts_with("switchboard_") {
            continue;
        }
        assert!(
            name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "unconventional metric name {name}"
        );
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name} is a {kind}"
        );
        if kind == "histogram" {
            assert!(
                name.ends_with("_seconds"),
                "histogram {name} is not in seconds"
            );
        }
    }

    if let Some(port) = cluster.prometheus {
        check_prometheus(port, &cluster, open).await;
    }

    check_dashboard_through_nginx(&cluster).await;
}

/// The dashboard page as a browser reaches it through the load balancer
/// (`http://127.0.0.1:<lb>/`, what local-cluster.sh prints): served at `/`, its
/// Content-Security-Policy naming the address the browser used, and its
/// WebSocket accepted as same-origin although `--allowed-origins` lists only
/// another site (nginx passes the Host with its port), while a third site's
/// page is refused.
async fn check_dashboard_through_nginx(cluster: &Cluster) {
    use std::io::{Read, Write};
    let address = format!("127.0.0.1:{}", cluster.lb);
    let mut stream = std::net::TcpStream::connect(&address).expect("connect to nginx");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET / HTTP/1.0\r\nHost: {address}\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "GET / through nginx: {head}"
    );
    assert!(
        body.to_ascii_lowercase().starts_with("<!doctype html"),
        "the dashboard page: {body:.200}"
    );
    let csp = head
        .lines()
        .find_map(|l| l.strip_prefix("content-security-policy: "))
        .unwrap_or_else(|| panic!("no Content-Security-Policy: {head}"));
    assert!(
        csp.contains(&format!("ws://{address} ")),
        "connect-src names the address the browser used: {csp}"
    );

    let own = Client::connect_with(
        &cluster.ws("/ws"),
        &[("Origin", &format!("http://{address}"))],
    )
    .await;
    assert!(
        own.is_ok(),
        "the page's own WebSocket through nginx: {:?}",
        own.err()
    );
    drop(own);
    let listed = Client::connect_with(&cluster.ws("/ws"), &[("Origin", DASHBOARD_SITE)]).await;
    assert!(listed.is_ok(), "an allowed site: {:?}", listed.err());
    let other = Client::connect_with(
        &cluster.ws("/ws"),
        &[("Origin", "https://elsewhere.example")],
    )
    .await;
    assert_eq!(
        other.err().map(|(status, _)| status),
        Some(403),
        "a site not in --allowed-origins is refused"
    );
}

/// GET over HTTP/1.0 (Prometheus answers HTTP/1.1 requests chunked); the body of a 200.
fn http10_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.contains(" 200 "), "{path}: {head}\n{body}");
    body.to_string()
}

/// Prometheus scrapes all four targets, loaded every alert rule, and sees the
/// cluster's connections.
async fn check_prometheus(port: u16, cluster: &Cluster, open: f64) {
    let get = |path: &str| -> Value {
        let body = http10_get(port, path);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let targets = get("/api/v1/targets");
        let active = targets["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let up = active.iter().filter(|t| t["health"] == "up").count();
        if up == cluster.gateways.len() + 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus targets not all up: {active:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rules = get("/api/v1/rules");
    let loaded: Vec<Value> = rules["data"]["groups"]
        .as_array()
        .expect("rule groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    let alerts = std::fs::read_to_string(Path::new(ROOT).join("deploy/prometheus/alerts.yml"))
        .expect("alerts.yml");
    let defined = alerts.matches("- alert: ").count();
    assert_eq!(loaded.len(), defined, "Prometheus loaded every alert rule");
    for r in &loaded {
        assert_eq!(r["health"], "ok", "rule {} evaluates: {r}", r["name"]);
    }
    let q = get(
        "/api/v1/query?query=sum(switchboard_connections%7Bjob%3D%22switchboard-gateway%22%7D)",
    );
    let value: f64 = q["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a value");
    assert!(
        value > 0.0 && value <= open,
        "Prometheus sees {value} connections, clients hold {open}"
    );
}

#[tokio::test]
async fn a_draining_gateway_hands_its_clients_to_the_others_through_nginx() {
    let _serial = serial().await;
    let Some(cluster) = Cluster::start(false) else {
        return;
    };
    let channel = "deploy:drain";
    let mut clients = Vec::new();
    for _ in 0..9 {
        let mut c = Client::connect(&cluster.ws("/ws")).await;
        c.recv_json().await;
        let sub = c
            .subscribe(json!({"type": "subscribe", "channel": channel}))
            .await;
        assert_eq!(sub["type"], "subscribed");
        clients.push((c, sub["epoch"].clone(), sub["offset"].as_u64().unwrap_or(0)));
    }
    let first = publish_via(cluster.lb, channel, &json!({"n": 0}));
    for (c, _, last) in clients.iter_mut() {
        let m = c.recv_until(WAIT, |m| m["type"] == "message").await;
        assert_eq!(m["offset"].as_u64(), Some(first));
        *last = first;
    }
    let on_first = metric_value(&scrape(cluster.admin[0]), "switchboard_connections", "");
    assert!(on_first >= 1.0, "gateway-1 has clients to hand over");

    // SIGTERM gateway-1: its clients are closed with 1001 (drain window 2 s).
    signal(cluster.pid("gateway-1"), "TERM");
    let mut moved = 0;
    for (c, epoch, last) in clients.iter_mut() {
        match c.next(Duration::from_millis(300)).await {
            Some(Received::Closed(code)) => {
                assert_eq!(code, Some(1001), "a draining replica closes with 1001");
                // Reconnect through nginx (which must skip the draining replica) and resume.
                let mut fresh = Client::connect(&cluster.ws("/ws")).await;
                fresh.recv_json().await;
                let sub = fresh
                    .subscribe(json!({"type": "subscribe", "channel": channel,
                                      "since": {"offset": *last, "epoch": epoch.clone()}}))
                    .await;
                assert_eq!(sub["type"], "subscribed", "{sub}");
                assert_eq!(sub["recovered"], true, "{sub}");
                *c = fresh;
                moved += 1;
            }
            None => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Those not closed yet are on the other replicas, or closed during the window.
    let deadline = Instant::now() + Duration::from_secs(6);
    while moved < on_first as usize && Instant::now() < deadline {
        for (c, epoch, last) in clients.iter_mut() {
            if let Some(Received::Closed(code)) = c.next(Duration::from_millis(50)).await {
                assert_eq!(code, Some(1001));
                let mut fresh = Client::connect(&cluster.ws("/ws")).await;
                fresh.recv_json().await;
                let sub = fresh
                    .subscribe(json!({"type": "subscribe", "channel": channel,
                                      "since": {"offset": *last, "epoch": epoch.clone()}}))
                    .await;
                assert_eq!(sub["recovered"], true, "{sub}");
                *c = fresh;
                moved += 1;
            }
        }
    }
    assert_eq!(moved, on_first as usize, "every client of gateway-1 moved");

    // The gateway exits by its deadline (its admin port, open while it drains,
    // closes); new connections and publishes go to the others.
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(cluster.admin[0], "/health/live").is_ok() {
        assert!(Instant::now() < deadline, "gateway-1 did not exit");
        std::thread::sleep(Duration::from_millis(100));
    }
    let offsets: Vec<u64> = (1..4)
        .map(|n| publish_via(cluster.lb, channel, &json!({"n": n})))
        .collect();
    for (i, (c, _, _)) in clients.iter_mut().enumerate() {
        for (n, offset) in offsets.iter().enumerate() {
            let m = c.recv_until(WAIT, |m| m["type"] == "message").await;
            assert_eq!(
                m["offset"].as_u64(),
                Some(*offset),
                "client {i}: no gap, no duplicate"
            );
            assert_eq!(m["data"], json!({"n": n + 1}));
        }
        c.expect_silence(Duration::from_millis(100)).await;
    }
    let remaining: f64 = cluster.admin[1..]
        .iter()
        .map(|p| metric_value(&scrape(*p), "switchboard_connections", ""))
        .sum();
    assert_eq!(
        remaining, 9.0,
        "all nine clients are on the two remaining gateways"
    );
}

/// A Redis outage does not take the gateways out of the load balancer. While
/// Redis is unreachable every replica answers some requests 503 (readiness,
/// the ESCAI `/ws/health`, an AI Council upgrade whose owner cannot be read):
/// nginx, counting each as a failed attempt (`max_fails`), marked all three
/// down and refused every new client with 502 "no live upstreams" for
/// `fail_timeout` — found by the soak harness during a Redis failover.
#[tokio::test]
async fn a_redis_outage_does_not_take_the_gateways_out_of_the_load_balancer() {
    let _serial = serial().await;
    let Some(cluster) = Cluster::start(false) else {
        return;
    };
    let redis = cluster.pid("redis");
    signal(redis, "STOP");
    // Readiness turns false on every replica once its Redis commands time
    // out; a few requests through nginx reach all three.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refused = 0;
    while refused < 4 {
        if let Ok((status, _)) = http_get(cluster.lb, "/ws/health")
            && status != 200
        {
            refused += 1;
        }
        if Instant::now() > deadline {
            signal(redis, "CONT");
            panic!("the gateways never reported Redis unreachable");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let connected = Client::try_connect(&cluster.ws("/ws")).await;
    let (status, body) = http_get(cluster.lb, "/ws/health").unwrap_or((0, String::new()));
    signal(redis, "CONT");
    let mut client = match connected {
        Ok(c) => c,
        Err(refused) => panic!(
            "a client could not connect through nginx while Redis was away (HTTP {refused}; /ws/health: {status} {body})"
        ),
    };
    assert_eq!(client.recv_json().await["type"], "connection_established");
    assert_ne!(status, 502, "nginx still has live upstreams: {body}");
}
