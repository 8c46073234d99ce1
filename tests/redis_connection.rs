//! The Redis connection layer against real servers: the single-Redis command
//! path (shared multiplexed connections: no check round trip per command, a
//! closed connection replaced), and TLS (`rediss://`) to one Redis and to a
//! Redis Cluster, with certificates made here by `openssl`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, Logs, RedisServer, Switchboard, http_get, http_request, publish};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);

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

// ---------------------------------------------------------------- TLS

/// Certificates made by `openssl` for one test: a CA; the server's, signed by
/// it, for 127.0.0.1 and localhost (also usable as a client certificate, as a
/// cluster node presents it to the others); a client's; and an unrelated CA.
struct Certs {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    fn make(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sb-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (ca, cn) in [("ca", "switchboard test CA"), ("other-ca", "unrelated CA")] {
            let (key, crt, subj) = (
                format!("{ca}.key"),
                format!("{ca}.crt"),
                format!("/CN={cn}"),
            );
            let mut args = vec!["req", "-x509"];
            args.extend_from_slice(&ec);
            args.extend_from_slice(&["-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subj]);
            openssl(&dir, &args);
        }
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, cn) in [("server", "localhost"), ("client", "switchboard")] {
            let (key, csr, crt, ext, subj) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("{name}.ext"),
                format!("/CN={cn}"),
            );
            let mut args = vec!["req"];
            args.extend_from_slice(&ec);
            args.extend_from_slice(&["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(&dir, &args);
            openssl(
                &dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &crt,
                    "-days",
                    "2",
                    "-extfile",
                    &ext,
                ],
            );
        }
        Self { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// The redis crate's TLS settings for the test's own connections.
    fn redis_tls(&self, client_certificate: bool) -> redis::TlsCertificates {
        let read = |f: &str| std::fs::read(self.dir.join(f)).unwrap();
        redis::TlsCertificates {
            client_tls: client_certificate.then(|| redis::ClientTlsConfig {
                client_cert: read("client.crt"),
                client_key: read("client.key"),
            }),
            root_cert: Some(read("ca.crt")),
        }
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The process id of the TLS redis-server on `port` (`INFO server` through
/// redis-cli, which speaks TLS, with the client certificate a server that
/// requires one asks for), if one answers there.
fn tls_redis_pid(certs: &Certs, port: u16) -> Option<u32> {
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert", &certs.path("ca.crt")])
        .args(["--cert", &certs.path("client.crt")])
        .args(["--key", &certs.path("client.key")])
        .args(["-p", &port.to_string(), "info", "server"])
        .output()
        .ok()?;
    common::pid_in_info(&String::from_utf8_lossy(&out.stdout))
}

/// The TLS options of a redis-server: TLS only (`--port 0`).
fn tls_server_args(certs: &Certs, port: u16, client_certificates: bool) -> Vec<String> {
    [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &certs.path("server.crt"),
        "--tls-key-file",
        &certs.path("server.key"),
        "--tls-ca-cert-file",
        &certs.path("ca.crt"),
        "--tls-auth-clients",
        if client_certificates { "yes" } else { "no" },
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .map(String::from)
    .to_vec()
}

/// A redis-server that speaks only TLS.
struct TlsRedis {
    port: u16,
    child: Child,
}

impl TlsRedis {
    fn start(certs: &Certs, client_certificates: bool) -> Self {
        let (port, child) = common::start_redis_on_free_port(
            "a TLS redis-server",
            |port| {
                let mut command = Command::new("redis-server");
                command
                    .args(tls_server_args(certs, port, client_certificates))
                    .args(["--dir".to_string(), certs.path("")]);
                command
            },
            |port| tls_redis_pid(certs, port),
        );
        Self { port, child }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    async fn connection(
        &self,
        certs: &Certs,
        client_certificate: bool,
    ) -> redis::aio::MultiplexedConnection {
        redis::Client::build_with_tls(self.url(), certs.redis_tls(client_certificate))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("the test's own TLS connection")
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway whose logs (JSON lines) go to a file, for reading them back.
fn gateway_logging_to(log: &Path, args: &[&str]) -> Switchboard {
    static REPLICAS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let replica = format!(
        "gw-tls-{}",
        REPLICAS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut all = vec![
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--no-auth",
        "--replica-id",
        &replica,
    ];
    all.extend_from_slice(args);
    let file = std::fs::File::create(log).unwrap();
    Switchboard::start_with(&all, "info", Logs::File(file))
}

/// Waits for /health/ready to answer `status`; returns the body.
fn wait_readiness(gw: &Switchboard, status: u16) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok((s, body)) = http_get(gw.port, "/health/ready")
            && s == status
        {
            return serde_json::from_str(&body).unwrap_or(Value::Null);
        }
        assert!(
            Instant::now() < deadline,
            "/health/ready did not answer {status} within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Subscribes `client` to `channel` (optionally resuming) and returns the reply.
async fn subscribe(client: &mut Client, channel: &str, since: Option<(u64, &str)>) -> Value {
    let mut request = json!({"type": "subscribe", "channel": channel});
    if let Some((offset, epoch)) = since {
        request["since"] = json!({"offset": offset, "epoch": epoch});
    }
    let reply = client.subscribe(request).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    reply
}

async fn next_message(client: &mut Client) -> Value {
    client.recv_until(WAIT, |m| m["type"] == "message").await
}

/// Live delivery and resume through a gateway, on `channels`.
async fn relays_and_resumes(gw: &Switchboard, channels: &[&str]) {
    let mut live = Client::connect(&gw.ws_url("/ws")).await;
    live.recv_json().await;
    let mut epochs = Vec::new();
    for channel in channels {
        let sub = subscribe(&mut live, channel, None).await;
        epochs.push(sub["epoch"].as_str().unwrap_or("").to_string());
    }
    for n in 1..=3u64 {
        for channel in channels {
            assert_eq!(publish(gw.port, channel, &json!({"n": n})), n);
            let m = next_message(&mut live).await;
            assert_eq!(
                (m["channel"].as_str(), m["offset"].as_u64(), &m["data"]),
                (Some(*channel), Some(n), &json!({"n": n}))
            );
        }
    }
    // A client that saw offset 1 resumes: exactly 2 and 3, from history.
    let mut back = Client::connect(&gw.ws_url("/ws")).await;
    back.recv_json().await;
    for (channel, epoch) in channels.iter().zip(&epochs) {
        let sub = subscribe(&mut back, channel, Some((1, epoch))).await;
        assert_eq!(sub["recovered"], true, "{sub}");
        for n in 2..=3u64 {
            let m = next_message(&mut back).await;
            assert_eq!(
                (m["channel"].as_str(), m["offset"].as_u64()),
                (Some(*channel), Some(n))
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_on_rediss_relays_and_resumes() {
    let certs = Certs::make("relay");
    let redis = TlsRedis::start(&certs, false);
    let url = redis.url();
    let ca = certs.path("ca.crt");
    let log = certs.dir.join("gateway.log");
    let gw = gateway_logging_to(&log, &["--redis-url", &url, "--redis-ca-file", &ca]);
    wait_readiness(&gw, 200);
    relays_and_resumes(&gw, &["secure"]).await;
    // Sessions and presence ride the same TLS connections: the keys exist.
    let mut conn = redis.connection(&certs, false).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("switchboard:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        keys.iter().any(|k| k.contains("{secure}")),
        "channel keys written over TLS: {keys:?}"
    );
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("Redis connections use TLS") && logs.contains("CA file"),
        "the gateway says how Redis is secured: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused_with_what_to_do() {
    let certs = Certs::make("wrong-ca");
    let redis = TlsRedis::start(&certs, false);
    let url = redis.url();
    let other = certs.path("other-ca.crt");
    let log = certs.dir.join("gateway.log");
    let gw = gateway_logging_to(&log, &["--redis-url", &url, "--redis-ca-file", &other]);
    // Not ready, and the reason says what is wrong and what to do.
    let deadline = Instant::now() + WAIT;
    let reason = loop {
        let (status, body) = http_get(gw.port, "/health/ready").unwrap();
        assert_eq!(status, 503, "never ready with an untrusted server: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        let reason = body["reason"].as_str().unwrap_or("").to_string();
        if reason.contains("--redis-ca-file") || Instant::now() > deadline {
            break reason;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        reason.contains("UnknownIssuer") && reason.contains("--redis-ca-file"),
        "readiness reason: {reason}"
    );
    let logs = std::fs::read_to_string(&log).unwrap();
    let line = logs
        .lines()
        .find(|l| l.contains("UnknownIssuer"))
        .unwrap_or_else(|| panic!("a log line names the TLS failure: {logs}"));
    let line: Value = serde_json::from_str(line).expect("JSON log line");
    assert!(
        line["reason"]
            .as_str()
            .is_some_and(|r| r.contains("give --redis-ca-file")),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate() {
    let certs = Certs::make("mutual");
    let redis = TlsRedis::start(&certs, true);
    let url = redis.url();
    let ca = certs.path("ca.crt");
    let (cert, key) = (certs.path("client.crt"), certs.path("client.key"));
    // Without a client certificate the server refuses the handshake.
    let log = certs.dir.join("without.log");
    let without = gateway_logging_to(&log, &["--redis-url", &url, "--redis-ca-file", &ca]);
    let deadline = Instant::now() + WAIT;
    let reason = loop {
        let (status, body) = http_get(without.port, "/health/ready").unwrap();
        assert_eq!(
            status, 503,
            "never ready without a client certificate: {body}"
        );
        if body.contains("--redis-client-cert-file") || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        reason.contains("requires a client certificate"),
        "readiness reason: {reason}"
    );
    drop(without);
    let log = certs.dir.join("with.log");
    let gw = gateway_logging_to(
        &log,
        &[
            "--redis-url",
            &url,
            "--redis-ca-file",
            &ca,
            "--redis-client-cert-file",
            &cert,
            "--redis-client-key-file",
            &key,
        ],
    );
    wait_readiness(&gw, 200);
    relays_and_resumes(&gw, &["mutual"]).await;
    let mut conn = redis.connection(&certs, true).await;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
}

/// Runs the binary to completion; returns (success, stderr).
fn run_switchboard(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .env("SWITCHBOARD_LOG_LEVEL", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_tls_settings_stop_the_start_with_the_flag_and_the_reason() {
    let certs = Certs::make("flags");
    // Each start stops before it binds; port 0 in case one did not.
    let listen = "127.0.0.1:0";
    let rediss = "rediss://127.0.0.1:1";
    let garbage = certs.dir.join("garbage.pem");
    std::fs::write(&garbage, "hello\n").unwrap();
    let garbage = garbage.display().to_string();
    let (cert, key, other_key) = (
        certs.path("client.crt"),
        certs.path("client.key"),
        certs.path("server.key"),
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--redis-url",
                rediss,
                "--redis-ca-file",
                "/nonexistent/ca.pem",
            ],
            "--redis-ca-file /nonexistent/ca.pem: cannot read it",
        ),
        (
            vec!["--redis-url", rediss, "--redis-ca-file", &garbage],
            "no certificate in it",
        ),
        (
            vec!["--redis-url", rediss, "--redis-client-cert-file", &cert],
            "give both",
        ),
        (
            vec![
                "--redis-url",
                rediss,
                "--redis-client-cert-file",
                &cert,
                "--redis-client-key-file",
                &other_key,
            ],
            "cannot be used together",
        ),
        (
            vec![
                "--redis-url",
                rediss,
                "--redis-client-cert-file",
                &cert,
                "--redis-client-key-file",
                &garbage,
            ],
            "--redis-client-key-file",
        ),
        (
            vec![
                "--redis-url",
                "redis://127.0.0.1:1",
                "--redis-ca-file",
                &key,
            ],
            "no Redis URL uses TLS",
        ),
        (
            vec!["--redis-url", "rediss://127.0.0.1:1/#insecure"],
            "cannot be turned off",
        ),
        (
            vec![
                "--redis-cluster-urls",
                "rediss://127.0.0.1:1,redis://127.0.0.1:2",
            ],
            "either all rediss://",
        ),
    ];
    // Every case is checked, and every failing one reported.
    let mut failures = common::Failures::default();
    for (flags, expected) in cases {
        let mut args = vec!["gateway", "--listen", listen, "--no-auth"];
        args.extend_from_slice(&flags);
        let (ok, stderr) = run_switchboard(&args);
        let outcome = if ok {
            Err("the start went on".to_string())
        } else if !stderr.contains(expected) {
            Err(format!("expected {expected:?} in: {stderr}"))
        } else {
            Ok(())
        };
        failures.record(&format!("{flags:?}"), outcome);
    }
    failures.finish("bad TLS settings");
}

/// A Redis Cluster of three masters that speaks only TLS, between its nodes
/// too (`tls-cluster`, `tls-replication`).
struct TlsCluster {
    ports: Vec<u16>,
    children: Vec<Child>,
}

impl TlsCluster {
    /// Three nodes on free ports, and again on others if one was taken before
    /// its node could bind it.
    fn start(certs: &Certs) -> Self {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start(certs) {
                Ok(cluster) => return cluster,
                Err(e) => failures.push(e),
            }
        }
        panic!("could not start a TLS Redis Cluster: {failures:?}");
    }

    fn try_start(certs: &Certs) -> Result<Self, String> {
        use rand::Rng;
        let mut ports: Vec<u16> = Vec::new();
        let mut rng = rand::rng();
        while ports.len() < 3 {
            let p: u16 = rng.random_range(20000..45000);
            let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
            if !ports.contains(&p) && free(p) && free(p + 10000) {
                ports.push(p);
            }
        }
        let mut cluster = Self {
            ports: ports.clone(),
            children: Vec::new(),
        };
        for &port in &ports {
            let dir = certs.dir.join(format!("node-{port}"));
            std::fs::create_dir_all(&dir).unwrap();
            let child = Command::new("redis-server")
                .args(tls_server_args(certs, port, false))
                .args([
                    "--tls-cluster",
                    "yes",
                    "--tls-replication",
                    "yes",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--dir",
                ])
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (apt-get install redis-server)");
            cluster.children.push(child);
            let child = cluster.children.last_mut().expect("just pushed");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("node on {port} exited: {status}"));
                }
                match tls_redis_pid(certs, port) {
                    Some(pid) if pid == child.id() => break,
                    Some(_) => return Err(format!("port {port} was taken")),
                    None => {}
                }
                if Instant::now() > deadline {
                    return Err(format!("node on {port} did not start"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args([
                "--tls",
                "--cacert",
                &certs.path("ca.crt"),
                "--cluster",
                "create",
            ])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli");
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.ports.iter().all(|p| {
            cluster
                .cli(certs, *p, &["cluster", "info"])
                .contains("cluster_state:ok")
        }) {
            assert!(Instant::now() < deadline, "the TLS cluster did not form");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(cluster)
    }

    fn cli(&self, certs: &Certs, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args([
                "--tls",
                "--cacert",
                &certs.path("ca.crt"),
                "-p",
                &port.to_string(),
            ])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_on_a_tls_redis_cluster_relays_and_resumes_on_every_master() {
    let certs = Certs::make("cluster");
    let cluster = TlsCluster::start(&certs);
    let url = format!(
        "rediss+cluster://127.0.0.1:{},127.0.0.1:{}",
        cluster.ports[0], cluster.ports[1]
    );
    let ca = certs.path("ca.crt");
    // Channels on every master (each channel's keys are in the slot of `{C}`).
    let names = [
        "tls-a", "tls-b", "tls-c", "tls-d", "tls-e", "tls-f", "tls-g", "tls-h",
    ];
    let mut owners = std::collections::HashSet::new();
    for name in names {
        let key = format!("switchboard:{{{name}}}");
        let slot: u32 = cluster
            .cli(&certs, cluster.ports[0], &["cluster", "keyslot", &key])
            .parse()
            .unwrap();
        // `redis-cli --cluster create` gives each of 3 masters a third of the slots.
        owners.insert(slot * 3 / 16384);
    }
    assert_eq!(owners.len(), 3, "the channels spread over every master");
    let log = certs.dir.join("gateway.log");
    let gw = gateway_logging_to(
        &log,
        &[
            "--redis-url",
            &url,
            "--redis-ca-file",
            &ca,
            "--redis-probe-interval",
            "1s",
        ],
    );
    wait_readiness(&gw, 200);
    relays_and_resumes(&gw, &names).await;
    // The same cluster trusted through another CA: refused, and said why.
    let log = certs.dir.join("wrong.log");
    let other = certs.path("other-ca.crt");
    let wrong = gateway_logging_to(&log, &["--redis-url", &url, "--redis-ca-file", &other]);
    let deadline = Instant::now() + WAIT;
    let reason = loop {
        let (status, body) = http_get(wrong.port, "/health/ready").unwrap();
        assert_eq!(status, 503, "never ready with an untrusted cluster: {body}");
        if body.contains("--redis-ca-file") || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        reason.contains("UnknownIssuer") && reason.contains("--redis-ca-file"),
        "readiness reason: {reason}"
    );
}

/// Everything else that connects to Redis, over TLS: `demo-data` writes the
/// federation's peers, the collector (its engine, lease and federation
/// source) reads them and publishes, and `bench` publishes through the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_data_the_collector_and_bench_work_over_tls() {
    let certs = Certs::make("others");
    let redis = TlsRedis::start(&certs, false);
    let url = redis.url();
    let ca = certs.path("ca.crt");
    let data = certs.dir.join("demo");
    let data_dir = data.display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "demo-data",
            &data_dir,
            "--redis-url",
            &url,
            "--redis-ca-file",
            &ca,
        ])
        .env("SWITCHBOARD_LOG_LEVEL", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demo-data over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (reasoning, ark) = (
        data.join("reasoning_logs.db").display().to_string(),
        data.join("ark.db").display().to_string(),
    );
    let collector = Switchboard::start(&[
        "collector",
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        &url,
        "--redis-ca-file",
        &ca,
        "--reasoning-db",
        &reasoning,
        "--ark-db",
        &ark,
        "--peer-staleness",
        "5m",
        "--collect-interval-min",
        "200ms",
        "--collect-interval-max",
        "300ms",
    ]);
    wait_readiness(&collector, 200);
    let mut conn = redis.connection(&certs, false).await;
    let deadline = Instant::now() + WAIT;
    let federation = loop {
        let stored: Option<String> = redis::cmd("HGET")
            .arg("switchboard:{federation}:snapshot")
            .arg("d")
            .query_async(&mut conn)
            .await
            .unwrap();
        let snapshot: Value = stored
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);
        if snapshot["sources"]["peers"]["source"] == "live" || Instant::now() > deadline {
            break snapshot;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        federation["sources"]["peers"]["source"], "live",
        "the peers were read over TLS: {federation:#}"
    );
    assert_eq!(federation["peers"].as_array().map(Vec::len), Some(5));
    let leader: Option<String> = redis::cmd("GET")
        .arg("switchboard:collector:leader")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(leader.is_some(), "the lease is held over TLS");
    drop(collector);

    let log = certs.dir.join("gateway.log");
    let gw = gateway_logging_to(&log, &["--redis-url", &url, "--redis-ca-file", &ca]);
    wait_readiness(&gw, 200);
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["bench", "--url", &gw.ws_url(""), "--redis-url", &url])
        .args(["--redis-ca-file", &ca, "--clients", "10", "--channels", "2"])
        .args([
            "--rate",
            "40",
            "--messages",
            "20",
            "--settle",
            "200ms",
            "--json",
        ])
        .env("SWITCHBOARD_LOG_LEVEL", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench over TLS: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["publish"]["messages"], 20, "{report:#}");
    assert_eq!(report["publish"]["errors"], 0, "{report:#}");
    let delivered = &report["delivery"];
    assert_eq!(delivered["lost"], 0, "{report:#}");
    assert_eq!(delivered["delivered"], delivered["expected"], "{report:#}");
}
