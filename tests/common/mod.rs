//! Test harness: real processes and real sockets.
//!
//! * [`RedisServer`]: a private `redis-server` on a free loopback port, killed on drop.
//! * [`Switchboard`]: the real `switchboard` binary as a child process.
//! * [`Client`]: a real WebSocket client (tokio-tungstenite).
#![allow(dead_code)]

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// Whether the tests run in CI: `CI` set to anything but empty, `0` or `false`
/// (`.ci/run` exports `CI=1`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// A test (or part of one) that needs a tool this machine lacks: skipped with a
/// message on a developer's machine, but a failure in CI, where `scripts/test.sh`
/// installs every tool and a skip would hide a test that never ran.
pub fn skip_unless_ci(what: &str, remedy: &str) {
    assert!(
        !in_ci(),
        "{what}, and CI is set: a skipped test is a failure there ({remedy})"
    );
    eprintln!("SKIPPED: {what} ({remedy})");
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A private redis-server.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    dir: PathBuf,
    persistent: bool,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::launch(free_port(), false)
    }

    /// A server on a given port (to bring one back where a test killed it).
    pub fn start_on(port: u16) -> Self {
        Self::launch(port, false)
    }

    /// A server that keeps its data across [`RedisServer::restart`] (AOF).
    pub fn start_persistent() -> Self {
        Self::launch(free_port(), true)
    }

    fn launch(port: u16, persistent: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("sb-redis-{port}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let child = Self::spawn_server(port, &dir, persistent);
        Self {
            port,
            child,
            dir,
            persistent,
        }
    }

    fn spawn_server(port: u16, dir: &std::path::Path, persistent: bool) -> Child {
        let appendonly = if persistent { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                appendonly,
                "--appendfsync",
                "always",
                "--dir",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        assert!(
            wait_for_port(port, Duration::from_secs(10)),
            "redis-server did not start on port {port}"
        );
        child
    }

    /// Shuts the server down (gracefully: data is flushed), keeps it down for
    /// `down`, and starts it again on the same port with the same data.
    pub fn restart(&mut self, down: Duration) {
        assert!(self.persistent, "restart needs start_persistent");
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown"])
            .status();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = Self::spawn_server(self.port, &self.dir, true);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A plain Redis connection for the test's own commands.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis")
    }

    /// Stops the server (as a crash would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `switchboard` binary running as a child process.
pub struct Switchboard {
    /// The client port (`--listen`).
    pub port: u16,
    /// Where `/metrics` is served: the admin listener a gateway or standalone
    /// is given on a free port (`SWITCHBOARD_ADMIN_LISTEN`, unless the
    /// arguments name `--admin-listen`), the collector's `--listen`.
    pub admin_port: u16,
    child: Child,
}

impl Switchboard {
    /// `switchboard standalone` on a free port, with extra flags.
    pub fn standalone(extra: &[&str]) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["standalone", "--listen", &listen];
        args.extend_from_slice(extra);
        Self::spawn(port, &args)
    }

    /// `switchboard gateway --no-auth` on a free port against `redis`.
    pub fn gateway(redis: &RedisServer, extra: &[&str]) -> Self {
        Self::gateway_with(
            &["--redis-url", &redis.url()],
            extra,
            Duration::from_secs(10),
        )
    }

    /// `switchboard gateway --no-auth` on a free port, named `gw<port>`, with
    /// `redis` (the flags naming its Redis) and `extra`; waits until it is ready.
    fn gateway_with(redis: &[&str], extra: &[&str], ready_within: Duration) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let replica = format!("gw{port}");
        let mut args = vec!["gateway", "--listen", &listen];
        args.extend_from_slice(redis);
        args.extend_from_slice(&["--no-auth", "--replica-id", &replica]);
        args.extend_from_slice(extra);
        let gw = Self::spawn(port, &args);
        gw.wait_ready(ready_within);
        gw
    }

    pub fn spawn(port: u16, args: &[&str]) -> Self {
        Self::spawn_with(port, args, "warn", Stdio::inherit())
    }

    /// Spawns with a log level and where its logs (stderr) go. A gateway or
    /// standalone gets its admin listener on a free loopback port (the default,
    /// 9091, would be shared by every process of the test run).
    pub fn spawn_with(port: u16, args: &[&str], level: &str, stderr: Stdio) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command
            .args(args)
            .env("SWITCHBOARD_LOG_LEVEL", level)
            // Seed 001's variables, which collector and standalone read, come
            // only from the test that sets them, never from the caller's shell.
            .env_remove("REDIS_URL")
            .env_remove("ARK_BASE_PATH")
            .stdout(Stdio::null())
            .stderr(stderr);
        let admin_port = match admin_listen_arg(args) {
            Some(addr) => addr,
            None if matches!(args.first(), Some(&("gateway" | "standalone"))) => {
                let admin = free_port();
                command.env("SWITCHBOARD_ADMIN_LISTEN", format!("127.0.0.1:{admin}"));
                admin
            }
            None => port,
        };
        let child = command.spawn().expect("spawn switchboard");
        assert!(
            wait_for_port(port, Duration::from_secs(15)),
            "switchboard did not listen on {port}"
        );
        Self {
            port,
            admin_port,
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, path)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Waits until /health/ready answers 200.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok((200, _)) = http_get(self.port, "/health/ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("switchboard on {} did not become ready", self.port);
    }

    /// Sends a signal (`TERM`, `KILL`, `STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        assert!(send_signal(&self.child, signal), "kill -{signal}");
    }

    /// Waits for the process to exit; returns how long it took, if within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Duration> {
        wait_exit(&mut self.child, timeout)
    }

    /// The value of a metric (summed over label sets matching `labels`).
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        metric_value(&self.scrape(), name, labels)
    }

    /// `/metrics`, from the admin listener.
    pub fn scrape(&self) -> String {
        let (status, body) = http_get(self.admin_port, "/metrics").expect("scrape /metrics");
        assert_eq!(status, 200, "/metrics on port {}: {body}", self.admin_port);
        body
    }
}

impl Drop for Switchboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port of an `--admin-listen ADDR` (or `--admin-listen=ADDR`) argument.
fn admin_listen_arg(args: &[&str]) -> Option<u16> {
    let value = args
        .iter()
        .position(|a| *a == "--admin-listen")
        .and_then(|i| args.get(i + 1).copied())
        .or_else(|| args.iter().find_map(|a| a.strip_prefix("--admin-listen=")))?;
    value.rsplit_once(':')?.1.parse().ok()
}

/// Sums the samples of `name` whose label text contains `labels`.
pub fn metric_value(body: &str, name: &str, labels: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && rest.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// A minimal blocking HTTP/1.1 request; returns (status, body).
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    request.push_str("\r\n");
    if let Some(b) = body {
        request.push_str(b);
    }
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_request(port, "GET", path, &[], None)
}

/// Publishes through the gateway's REST API; returns the offset.
pub fn publish(port: u16, channel: &str, data: &Value) -> u64 {
    let body = serde_json::json!({"channel": channel, "data": data}).to_string();
    let (status, response) =
        http_request(port, "POST", "/api/v1/publish", &[], Some(&body)).expect("publish");
    assert_eq!(status, 200, "publish failed: {response}");
    let v: Value = serde_json::from_str(&response).expect("publish reply is JSON");
    v["offset"].as_u64().expect("offset")
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Sends `signal` (`TERM`, `KILL`, `STOP`, `CONT`) to `child`; whether `kill` succeeded.
fn send_signal(child: &Child, signal: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits for `child` to exit; how long it took, if within `timeout`.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// An nginx load balancer on loopback in front of `upstreams` (round robin,
/// WebSocket upgrades proxied, a failed upstream skipped).
pub struct Nginx {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    pub fn start(upstreams: &[u16]) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("sb-nginx-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let servers: String = upstreams
            .iter()
            .map(|p| format!("    server 127.0.0.1:{p} max_fails=1 fail_timeout=3s;\n"))
            .collect();
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let user = if is_root { "user root;" } else { "" };
        let d = dir.display();
        let config = format!(
            "{user}\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             upstream gateways {{\n{servers}  }}\n\
             map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
             server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://gateways;\n\
             proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n\
             proxy_set_header Connection $connection_upgrade;\n      proxy_read_timeout 3600s;\n\
             proxy_connect_timeout 2s;\n      proxy_next_upstream error timeout http_502 http_503;\n    }}\n  }}\n}}\n"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).expect("write nginx.conf");
        let child = Command::new(nginx_binary())
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx must be installed (apt-get install nginx)");
        assert!(
            wait_for_port(port, Duration::from_secs(10)),
            "nginx did not start"
        );
        Self { port, child, dir }
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, path)
    }
}

fn nginx_binary() -> String {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| p.to_string())
        .unwrap_or_else(|| "nginx".to_string())
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM: the master stops its worker before it exits (a KILL would leave
        // the worker running, orphaned, on the port); KILL only if it hangs.
        send_signal(&self.child, "TERM");
        wait_exit(&mut self.child, Duration::from_secs(5));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A WebSocket client.
pub struct Client {
    ws: Ws,
}

/// A refused WebSocket upgrade.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Value,
}

impl Refusal {
    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What a client observed when it stopped reading.
#[derive(Debug, PartialEq)]
pub enum Received {
    Text(String),
    Closed(Option<u16>),
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = connect_async(url).await.expect("websocket connect");
        Self { ws }
    }

    /// Connects with extra request headers; a refused upgrade gives its
    /// status and JSON body.
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Self, (u16, Value)> {
        Self::connect_or_refusal(url, headers)
            .await
            .map_err(|r| (r.status, r.body))
    }

    /// Connects with extra request headers; a refused upgrade gives its
    /// status, headers and JSON body.
    pub async fn connect_or_refusal(url: &str, headers: &[(&str, &str)]) -> Result<Self, Refusal> {
        let mut request = url.into_client_request().expect("valid url");
        for (k, v) in headers {
            request.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                http::HeaderValue::from_str(v).expect("header value"),
            );
        }
        match connect_async(request).await {
            Ok((ws, _)) => Ok(Self { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                Err(Refusal {
                    status,
                    headers: response.headers().clone(),
                    body,
                })
            }
            Err(e) => panic!("connect failed without an HTTP status: {e}"),
        }
    }

    /// Connects, returning the HTTP status of a refused upgrade.
    pub async fn try_connect(url: &str) -> Result<Self, u16> {
        Self::connect_with(url, &[])
            .await
            .map_err(|(status, _)| status)
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_message(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// The next text frame or the close, within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let item = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match item {
                Some(Ok(Message::Text(t))) => return Some(Received::Text(t.to_string())),
                Some(Ok(Message::Close(frame))) => {
                    return Some(Received::Closed(frame.map(|f: CloseFrame| f.code.into())));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(Received::Closed(None)),
            }
        }
    }

    /// Reads until the server's next WebSocket ping (answered by tungstenite);
    /// false on close or timeout.
    pub async fn next_ping(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Ping(_)))) => return true,
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) | Err(_) => return false,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next text frame parsed as JSON; panics on close or timeout.
    pub async fn recv_json(&mut self) -> Value {
        match self.next(Duration::from_secs(10)).await {
            Some(Received::Text(t)) => serde_json::from_str(&t).expect("server sent JSON"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Reads frames until one satisfies `pred`; panics after `timeout`.
    pub async fn recv_until(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Received::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).expect("server sent JSON");
                    if pred(&v) {
                        return v;
                    }
                }
                other => panic!("expected a matching frame, got {other:?}"),
            }
        }
    }

    /// Reads until the connection closes; returns the close code.
    pub async fn closed_code(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Received::Text(_)) => continue,
                Some(Received::Closed(code)) => return code,
                None => panic!("connection not closed within {timeout:?}"),
            }
        }
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(r) = self.next(wait).await {
            panic!("expected nothing, got {r:?}");
        }
    }

    /// A native client on `url` (a gateway's `/ws`), past its greeting and
    /// subscribed to `channel`.
    pub async fn subscribed_to(url: &str, channel: &str) -> Self {
        let mut c = Self::connect(url).await;
        c.recv_json().await;
        let reply = c
            .subscribe(serde_json::json!({"type": "subscribe", "channel": channel}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        c
    }

    /// Subscribes on the native protocol and returns the `subscribed` reply.
    pub async fn subscribe(&mut self, v: Value) -> Value {
        self.send_json(&v).await;
        self.recv_until(Duration::from_secs(10), |m| {
            m["type"] == "subscribed" || m["type"] == "error"
        })
        .await
    }

    pub fn into_inner(self) -> Ws {
        self.ws
    }
}

/// A private Redis Cluster on loopback: three masters and three replicas
/// (`redis-server --cluster-enabled yes` + `redis-cli --cluster create`), killed
/// on drop. Each node also listens on its port + 10000 (the cluster bus), so
/// ports are picked ≤ 45535 with both free.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: std::collections::HashMap<u16, Child>,
    /// Stopped with SIGSTOP: running, but answering nothing.
    paused: std::collections::HashSet<u16>,
    dir: PathBuf,
    node_timeout: Duration,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct NodeLine {
    pub id: String,
    pub port: u16,
    pub master: bool,
    pub failing: bool,
    pub master_id: Option<String>,
    pub slots: Vec<(u16, u16)>,
}

fn port_pair_free(port: u16) -> bool {
    StdListener::bind(("127.0.0.1", port)).is_ok()
        && StdListener::bind(("127.0.0.1", port + 10000)).is_ok()
}

impl RedisCluster {
    /// Three masters with one replica each; `node_timeout` is how long a
    /// master may be unreachable before its replica takes over.
    pub fn start(node_timeout: Duration) -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(node_timeout) {
                Ok(c) => return c,
                Err(e) => last = e,
            }
        }
        panic!("could not start a Redis Cluster: {last}");
    }

    fn try_start(node_timeout: Duration) -> Result<Self, String> {
        use rand::Rng;
        let mut ports = Vec::new();
        let mut rng = rand::rng();
        while ports.len() < 6 {
            let p: u16 = rng.random_range(20000..45000);
            if !ports.contains(&p) && port_pair_free(p) {
                ports.push(p);
            }
        }
        let dir =
            std::env::temp_dir().join(format!("sb-cluster-{}-{}", ports[0], std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut cluster = Self {
            ports: ports.clone(),
            children: std::collections::HashMap::new(),
            paused: std::collections::HashSet::new(),
            dir,
            node_timeout,
        };
        for &p in &ports {
            cluster.start_node(p);
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .map_err(|e| format!("redis-cli: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        cluster.wait_healthy(Duration::from_secs(30));
        Ok(cluster)
    }

    fn node_dir(&self, port: u16) -> PathBuf {
        self.dir.join(port.to_string())
    }

    /// Starts (or restarts) the node on `port`, with its cluster state file:
    /// a restarted node rejoins the cluster it was part of.
    pub fn start_node(&mut self, port: u16) {
        let dir = self.node_dir(port);
        let _ = std::fs::create_dir_all(&dir);
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &self.node_timeout.as_millis().to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        assert!(
            wait_for_port(port, Duration::from_secs(10)),
            "cluster node did not start on port {port}"
        );
        self.children.insert(port, child);
    }

    /// Seed URLs for `--redis-cluster-urls` (two nodes: the rest is discovered).
    pub fn urls(&self) -> String {
        self.ports[..2]
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The same seeds as one `redis+cluster://` URL.
    pub fn cluster_url(&self) -> String {
        let hosts: Vec<String> = self.ports[..2]
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Runs `redis-cli -p <port> <args>`; returns its output.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn live_ports(&self) -> Vec<u16> {
        self.children
            .keys()
            .copied()
            .filter(|p| !self.paused.contains(p))
            .collect()
    }

    /// `CLUSTER NODES` as seen from a live node.
    pub fn nodes(&self) -> Vec<NodeLine> {
        let port = *self
            .live_ports()
            .first()
            .expect("at least one cluster node runs");
        self.nodes_seen_by(port)
    }

    fn nodes_seen_by(&self, port: u16) -> Vec<NodeLine> {
        self.cli(port, &["cluster", "nodes"])
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let addr = f.get(1)?.split('@').next()?;
                let port = addr.rsplit(':').next()?.parse().ok()?;
                let flags = f.get(2)?;
                let slots = f
                    .iter()
                    .skip(8)
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| match s.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => s.parse().ok().map(|x| (x, x)),
                    })
                    .collect();
                Some(NodeLine {
                    id: f[0].to_string(),
                    port,
                    master: flags.contains("master"),
                    failing: flags.contains("fail"),
                    master_id: f.get(3).filter(|m| **m != "-").map(|m| m.to_string()),
                    slots,
                })
            })
            .collect()
    }

    /// The slot of a key (or shard channel).
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = *self.live_ports().first().expect("a live node");
        self.cli(port, &["cluster", "keyslot", key])
            .parse()
            .expect("CLUSTER KEYSLOT")
    }

    /// The port of the master serving `slot`, as a live node sees it.
    pub fn master_of_slot(&self, slot: u16) -> Option<u16> {
        self.nodes()
            .into_iter()
            .find(|n| {
                n.master && !n.failing && n.slots.iter().any(|(a, b)| *a <= slot && slot <= *b)
            })
            .map(|n| n.port)
    }

    /// The port of the master owning `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        let slot = self.slot_of(key);
        self.master_of_slot(slot)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// Waits until every live node says `cluster_state:ok`, three masters own
    /// all slots, and each has a replica in sync.
    pub fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.healthy() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not become healthy: {:?}",
                self.nodes()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn healthy(&self) -> bool {
        let live = self.live_ports();
        if !live.iter().all(|p| {
            self.cli(*p, &["cluster", "info"])
                .contains("cluster_state:ok")
        }) {
            return false;
        }
        let nodes = self.nodes();
        let masters: Vec<&NodeLine> = nodes
            .iter()
            .filter(|n| n.master && !n.failing && !n.slots.is_empty())
            .collect();
        let covered: u32 = masters
            .iter()
            .flat_map(|m| m.slots.iter())
            .map(|(a, b)| u32::from(b - a) + 1)
            .sum();
        if masters.len() != 3 || covered != 16384 {
            return false;
        }
        let synced_replica = |m: &NodeLine| {
            nodes.iter().any(|r| {
                !r.master
                    && !r.failing
                    && r.master_id.as_deref() == Some(m.id.as_str())
                    && live.contains(&r.port)
                    && self
                        .cli(r.port, &["info", "replication"])
                        .contains("master_link_status:up")
            })
        };
        masters.iter().all(|m| synced_replica(m))
    }

    /// Stops a node gracefully (`SHUTDOWN`: a master first lets its replicas
    /// catch up), as a rolling restart would.
    pub fn shutdown_node(&mut self, port: u16) {
        let _ = self.cli(port, &["shutdown"]);
        if let Some(mut child) = self.children.remove(&port) {
            let _ = child.wait();
        }
    }

    /// Kills a node (as a crash would).
    pub fn kill_node(&mut self, port: u16) {
        if let Some(mut child) = self.children.remove(&port) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes a node (SIGSTOP): its connections stay open and silent, as with
    /// a hung host or a network partition.
    pub fn pause_node(&mut self, port: u16) {
        self.signal(port, "STOP");
        self.paused.insert(port);
    }

    /// Thaws a node frozen by [`RedisCluster::pause_node`].
    pub fn resume_node(&mut self, port: u16) {
        self.signal(port, "CONT");
        self.paused.remove(&port);
    }

    fn signal(&self, port: u16, signal: &str) {
        let child = self.children.get(&port).expect("a running node");
        assert!(send_signal(child, signal), "kill -{signal}");
    }

    /// Waits until a live master other than `old` serves `slot`; returns its port.
    pub fn wait_failover(&self, slot: u16, old: u16, timeout: Duration) -> u16 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.master_of_slot(slot)
                && p != old
                && self
                    .cli(p, &["cluster", "info"])
                    .contains("cluster_state:ok")
            {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "no replica took over slot {slot}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn node_id(&self, port: u16) -> String {
        self.nodes()
            .into_iter()
            .find(|n| n.port == port)
            .map(|n| n.id)
            .expect("node id")
    }

    /// Moves `slot` (and its keys) to the master on `to`, the way
    /// `redis-cli --cluster reshard` does: importing/migrating, MIGRATE the
    /// keys, then assign the slot everywhere.
    pub fn migrate_slot(&self, slot: u16, to: u16) {
        let from = self.master_of_slot(slot).expect("slot owner");
        assert_ne!(from, to);
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let s = slot.to_string();
        assert_eq!(
            self.cli(to, &["cluster", "setslot", &s, "importing", &from_id]),
            "OK"
        );
        assert_eq!(
            self.cli(from, &["cluster", "setslot", &s, "migrating", &to_id]),
            "OK"
        );
        loop {
            let keys = self.cli(from, &["cluster", "getkeysinslot", &s, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let to_port = to.to_string();
            let mut args = vec!["migrate", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            let out = self.cli(from, &args);
            assert!(out == "OK" || out == "NOKEY", "MIGRATE: {out}");
        }
        for p in [to, from] {
            assert_eq!(
                self.cli(p, &["cluster", "setslot", &s, "node", &to_id]),
                "OK"
            );
        }
        for p in self.live_ports() {
            if p != to && p != from {
                let _ = self.cli(p, &["cluster", "setslot", &s, "node", &to_id]);
            }
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for port in self.paused.clone() {
            self.resume_node(port);
        }
        for (_, mut child) in self.children.drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Switchboard {
    /// `switchboard gateway --no-auth` on a free port against a Redis Cluster.
    pub fn gateway_on_cluster(cluster: &RedisCluster, extra: &[&str]) -> Self {
        Self::gateway_with(
            &["--redis-cluster-urls", &cluster.urls()],
            extra,
            Duration::from_secs(20),
        )
    }
}

/// Resume across replicas, shared by the single-Redis and the Redis Cluster
/// suites: `a` and `b` are gateways on one engine with `--history-size 5`. A
/// client that missed 3 messages resumes on `b` with exactly those
/// (`recovered: true`); one that missed 15 gets `recovered: false` and the
/// current snapshot.
pub async fn resume_within_and_beyond_history(a: &Switchboard, b: &Switchboard) {
    use serde_json::json;
    let snapshot = |port: u16, v: u64| {
        let body = json!({"channel":"board","data":{"state":v},"snapshot":true}).to_string();
        let (status, _) = http_request(port, "POST", "/api/v1/publish", &[], Some(&body)).unwrap();
        assert_eq!(status, 200);
    };
    snapshot(a.port, 1);
    let mut client = Client::connect(&a.ws_url("/ws")).await;
    client.recv_json().await;
    let sub = client
        .subscribe(json!({"type":"subscribe","channel":"board"}))
        .await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    assert_eq!(client.recv_json().await["type"], "snapshot");
    publish(a.port, "board", &json!({"delta": 2}));
    assert_eq!(client.recv_json().await["offset"], 2);
    drop(client);

    // Within history (3 missed, history 5): exactly the missed ones, on the other replica.
    for n in 3..=5 {
        publish(a.port, "board", &json!({"delta": n}));
    }
    let mut back = Client::connect(&b.ws_url("/ws")).await;
    back.recv_json().await;
    let sub = back
        .subscribe(json!({"type":"subscribe","channel":"board","since":{"offset":2,"epoch":epoch}}))
        .await;
    assert_eq!(
        (sub["recovered"].as_bool(), sub["offset"].as_u64()),
        (Some(true), Some(5))
    );
    for n in 3..=5 {
        let m = back.recv_json().await;
        assert_eq!(
            (m["type"].as_str(), m["offset"].as_u64()),
            (Some("message"), Some(n))
        );
    }
    back.expect_silence(Duration::from_millis(300)).await;
    drop(back);

    // Beyond history (15 missed, history 5): recovered false and the current snapshot.
    for n in 6..=19 {
        publish(a.port, "board", &json!({"delta": n}));
    }
    snapshot(a.port, 20);
    let mut late = Client::connect(&b.ws_url("/ws")).await;
    late.recv_json().await;
    let sub = late
        .subscribe(json!({"type":"subscribe","channel":"board","since":{"offset":5,"epoch":epoch}}))
        .await;
    assert_eq!(
        (sub["recovered"].as_bool(), sub["offset"].as_u64()),
        (Some(false), Some(20))
    );
    let snap = late.recv_json().await;
    assert_eq!(
        (snap["type"].as_str(), snap["data"]["state"].as_u64()),
        (Some("snapshot"), Some(20))
    );
    late.expect_silence(Duration::from_millis(300)).await;
}
