//! Test harness: real processes and real sockets.
//!
//! * [`RedisServer`]: a private `redis-server` on a free loopback port, killed on drop.
//! * [`Switchboard`]: the real `switchboard` binary as a child process, listening on
//!   ports the kernel picked (`127.0.0.1:0`), which it reports in its log.
//! * [`Client`]: a real WebSocket client (tokio-tungstenite).
//!
//! Ports: a `switchboard` process binds port 0 and says which port it got (its
//! "listening" log event, read from its JSON logs), so no two tests can race for
//! one. `redis-server` and nginx cannot report a port they picked: they are
//! given a free port and started again on another one if that port was taken
//! meanwhile (each is recognised by an answer only it can give).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
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

/// A free TCP port on 127.0.0.1 (bound and released: another process may take
/// it before it is used). Only for programs that cannot bind port 0 and report
/// the port (redis-server, nginx, deploy/local-cluster.sh): start them in a
/// loop that tries another port when this one was taken.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A loopback port on which nothing listens, for as long as this lives: the
/// port is bound (so no other process can take it) but never listened on, so
/// every connection to it is refused.
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

pub fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind a loopback port");
    let port = socket.local_addr().expect("its address").port();
    ClosedPort {
        _socket: socket,
        port,
    }
}

/// Polls `check` every `every` until it gives a value; panics with `what` after
/// `timeout`.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(every);
    }
}

/// How a program started on a port we picked came up.
enum Startup {
    /// It answers on the port, and it is the process we started.
    Ours,
    /// It exited (its bind failed, most likely): try another port.
    Exited(std::process::ExitStatus),
    /// Another process answers on the port: try another one.
    Taken,
}

/// Waits until `child` answers on `port`: `owner(port)` tells which process
/// answers there (`Some(pid)`), `None` while nothing does.
fn wait_started(
    child: &mut Child,
    port: u16,
    timeout: Duration,
    owner: impl Fn(u16) -> Option<u32>,
) -> Startup {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Startup::Exited(status);
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            match owner(port) {
                Some(pid) if pid == child.id() => return Startup::Ours,
                Some(_) => return Startup::Taken,
                None => {}
            }
        }
        assert!(
            Instant::now() < deadline,
            "process {} did not start on port {port} within {timeout:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The process id a redis-server on `port` reports (`INFO server`), over a
/// plain connection.
pub fn redis_pid(port: u16) -> Option<u32> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some(pid) = pid_in_info(&text) {
            return Some(pid);
        }
    }
    None
}

/// The `process_id` of an `INFO server` reply (a complete line).
pub fn pid_in_info(info: &str) -> Option<u32> {
    let start = info.find("process_id:")? + "process_id:".len();
    let rest = &info[start..];
    let end = rest.find("\r\n").or_else(|| rest.find('\n'))?;
    rest[..end].trim().parse().ok()
}

/// Starts a redis-server with `command(port)` on a free port, and again on
/// another one if that port was taken before it could bind it (it cannot bind
/// port 0 and report the port). `owner` tells which process answers on a port.
pub fn start_redis_on_free_port(
    what: &str,
    mut command: impl FnMut(u16) -> Command,
    owner: impl Fn(u16) -> Option<u32>,
) -> (u16, Child) {
    let mut tried = Vec::new();
    for _ in 0..5 {
        let port = free_port();
        let mut child = command(port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        match wait_started(&mut child, port, Duration::from_secs(10), &owner) {
            Startup::Ours => return (port, child),
            Startup::Exited(status) => tried.push(format!("{port}: exited ({status})")),
            Startup::Taken => tried.push(format!("{port}: taken by another process")),
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("{what} could not start on any free port: {tried:?}");
}

/// A private redis-server.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    dir: PathBuf,
    persistent: bool,
}

/// Each server's data directory, distinct within a test binary.
static DIRS: AtomicU64 = AtomicU64::new(0);

impl RedisServer {
    pub fn start() -> Self {
        Self::launch(None, false)
    }

    /// A server on a given port (to bring one back where a test killed it).
    pub fn start_on(port: u16) -> Self {
        Self::launch(Some(port), false)
    }

    /// A server that keeps its data across [`RedisServer::restart`] (AOF).
    pub fn start_persistent() -> Self {
        Self::launch(None, true)
    }

    fn launch(port: Option<u16>, persistent: bool) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sb-redis-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::create_dir_all(&dir);
        let (port, child) = match port {
            Some(port) => (port, Self::spawn_server(port, &dir, persistent)),
            None => start_redis_on_free_port(
                "redis-server",
                |port| Self::command(port, &dir, persistent),
                redis_pid,
            ),
        };
        Self {
            port,
            child,
            dir,
            persistent,
        }
    }

    fn command(port: u16, dir: &std::path::Path, persistent: bool) -> Command {
        let appendonly = if persistent { "yes" } else { "no" };
        let mut command = Command::new("redis-server");
        command
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
            .arg(dir);
        command
    }

    /// Starts the server on exactly `port` (a restart: the port was its own).
    fn spawn_server(port: u16, dir: &std::path::Path, persistent: bool) -> Child {
        let mut child = Self::command(port, dir, persistent)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        match wait_started(&mut child, port, Duration::from_secs(10), redis_pid) {
            Startup::Ours => child,
            Startup::Exited(status) => panic!("redis-server on port {port} exited: {status}"),
            Startup::Taken => panic!("port {port} was taken by another process"),
        }
    }

    /// Shuts the server down (gracefully: data is flushed), keeps it down for
    /// `down`, and starts it again on the same port with the same data.
    pub fn restart(&mut self, down: Duration) {
        assert!(self.persistent, "restart needs start_persistent");
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown"])
            .status();
        let _ = self.child.wait();
        // The outage itself: what the test is about, not a wait for something.
        std::thread::sleep(down);
        self.child = Self::spawn_server(self.port, &self.dir, true);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Writes a message into `channel`'s history exactly as the publish API
    /// does (history of `history` messages), but announces it on a pub/sub
    /// channel nobody listens to: a gateway sees it only as a gap before the
    /// next message (its feed missed it).
    pub async fn publish_unseen(&self, channel: &str, data: &serde_json::Value, history: u64) {
        let mut conn = self.connection().await;
        let key = |suffix: &str| format!("switchboard:{{{channel}}}{suffix}");
        let _: redis::Value = redis::cmd("EVAL")
            .arg(include_str!("../../src/engine/publish.lua"))
            .arg(3)
            .arg(key(":meta"))
            .arg(key(":history"))
            .arg(key(":snapshot"))
            .arg("switchboard:nobody-listens")
            .arg(data.to_string())
            .arg(history)
            .arg(600_000)
            .arg("unused")
            .arg(1)
            .arg("")
            .arg("publish")
            .query_async(&mut conn)
            .await
            .expect("the publish script");
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

/// Where a `switchboard` process listens, as it reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// The client port (`--listen`; the collector's only listener).
    pub listen: SocketAddr,
    /// The admin listener (`/metrics`, health); the client port when shared.
    pub admin: SocketAddr,
}

/// The "listening" event of a switchboard process's JSON logs: what
/// `announce` in src/app.rs logs once a gateway or standalone has bound its
/// listeners ("gateway listening: …", fields `listen` and `admin_listen`), or
/// the collector's "collector: health and metrics listening" (field `listen`).
fn listening_event(event: &Value) -> Option<Listening> {
    let message = event["message"].as_str()?;
    let addr = |field: &str| -> Option<SocketAddr> {
        event[field]
            .as_str()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    if message.starts_with("gateway listening") {
        let listen = addr("listen")?;
        Some(Listening {
            listen,
            admin: addr("admin_listen").unwrap_or(listen),
        })
    } else if message.starts_with("collector: health and metrics listening") {
        let listen = addr("listen")?;
        Some(Listening {
            listen,
            admin: listen,
        })
    } else {
        None
    }
}

/// Where the harness sends a switchboard process's log lines once it read them.
pub enum Logs {
    /// The test's own stderr, as readable text (libtest shows it when the test
    /// fails, or with `--nocapture`).
    Test,
    /// A file, each line as the binary wrote it (JSON).
    File(std::fs::File),
}

fn level_rank(level: &str) -> u8 {
    match level.to_ascii_lowercase().as_str() {
        "trace" => 0,
        "debug" => 1,
        "info" => 2,
        "warn" => 3,
        "error" => 4,
        _ => 5,
    }
}

/// One JSON log line as text: time, level, target, message, other fields.
fn render(event: &Value) -> String {
    let field = |k: &str| event[k].as_str().unwrap_or_default().to_string();
    let mut line = format!(
        "{} {:5} {}: {}",
        field("timestamp"),
        field("level"),
        field("target"),
        field("message")
    );
    if let Some(fields) = event.as_object() {
        for (k, v) in fields {
            if !matches!(k.as_str(), "timestamp" | "level" | "target" | "message") {
                match v.as_str() {
                    Some(s) => line.push_str(&format!(" {k}={s}")),
                    None => line.push_str(&format!(" {k}={v}")),
                }
            }
        }
    }
    line
}

/// Reads a switchboard process's JSON logs on a thread of its own: sends its
/// "listening" event on the returned channel, forwards every line at
/// `at_least` or above to `logs`, and keeps the last lines in `tail` (for the
/// message of a process that exited). The channel closes when the process's
/// stderr does.
fn read_logs(
    name: String,
    stderr: ChildStderr,
    at_least: Option<u8>,
    mut logs: Logs,
    tail: Arc<Mutex<Vec<String>>>,
) -> (mpsc::Receiver<Listening>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut announced = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let event: Option<Value> = serde_json::from_str(&line).ok();
            if let Some(event) = event.as_ref().filter(|_| !announced)
                && let Some(listening) = listening_event(event)
            {
                announced = true;
                let _ = tx.send(listening);
            }
            let shown = match (&event, at_least) {
                (Some(e), Some(min)) => level_rank(e["level"].as_str().unwrap_or("")) >= min,
                _ => true,
            };
            {
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                tail.push(line.clone());
                if tail.len() > 40 {
                    tail.remove(0);
                }
            }
            if !shown {
                continue;
            }
            match &mut logs {
                Logs::Test => match &event {
                    Some(e) if e.is_object() => eprintln!("[{name}] {}", render(e)),
                    _ => eprintln!("[{name}] {line}"),
                },
                Logs::File(file) => {
                    let _ = writeln!(file, "{line}");
                }
            }
        }
    });
    (rx, reader)
}

/// Starts `command` (a `switchboard` subcommand whose listeners are given as
/// `…:0` or as fixed addresses) with JSON logs at `level` (at least `info`
/// is read: the "listening" event is logged at info; lines below `level` are
/// not forwarded), and waits until it reports where it listens. Panics with
/// its last log lines if it exits first.
pub fn start_reporting(
    command: &mut Command,
    level: &str,
    logs: Logs,
    timeout: Duration,
) -> (Child, Listening) {
    try_start_reporting(command, level, logs, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// [`start_reporting`], with the failure (its last log lines) as an error.
pub fn try_start_reporting(
    command: &mut Command,
    level: &str,
    logs: Logs,
    timeout: Duration,
) -> Result<(Child, Listening), String> {
    let known = level_rank(level) <= 4;
    let read_level = if known && level_rank(level) > 2 {
        "info"
    } else {
        level
    };
    command
        .env("SWITCHBOARD_LOG_FORMAT", "json")
        .env("SWITCHBOARD_LOG_LEVEL", read_level)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let what = format!(
        "switchboard {}",
        command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut child = command.spawn().expect("spawn switchboard");
    let subcommand = command
        .get_args()
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = format!("{subcommand} {}", child.id());
    let stderr = child.stderr.take().expect("piped stderr");
    let tail = Arc::new(Mutex::new(Vec::new()));
    let (rx, reader) = read_logs(
        name,
        stderr,
        known.then(|| level_rank(level)),
        logs,
        tail.clone(),
    );
    match rx.recv_timeout(timeout) {
        Ok(listening) => Ok((child, listening)),
        Err(e) => {
            if matches!(e, mpsc::RecvTimeoutError::Timeout) {
                let _ = child.kill();
            }
            let status = child.wait();
            // The reader has read the last lines once the pipe closed.
            let _ = reader.join();
            let tail = tail.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
            Err(format!(
                "`{what}` did not report where it listens ({e}; {status:?}); its last log lines:\n{tail}"
            ))
        }
    }
}

/// The `switchboard` binary running as a child process.
pub struct Switchboard {
    /// The client port (`--listen`), as the process reported it.
    pub port: u16,
    /// Where `/metrics` is served: the admin listener a gateway or standalone
    /// is given on a port of its own (`SWITCHBOARD_ADMIN_LISTEN=127.0.0.1:0`,
    /// unless the arguments name `--admin-listen`), the collector's `--listen`;
    /// as the process reported it.
    pub admin_port: u16,
    child: Child,
}

/// Replica ids of the gateways a test binary starts, distinct within it.
static REPLICAS: AtomicU64 = AtomicU64::new(0);

impl Switchboard {
    /// `switchboard standalone` on a port the kernel picks, with extra flags.
    pub fn standalone(extra: &[&str]) -> Self {
        let mut args = vec!["standalone", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    /// `switchboard gateway --no-auth` on a port the kernel picks, against `redis`.
    pub fn gateway(redis: &RedisServer, extra: &[&str]) -> Self {
        Self::gateway_with(
            &["--redis-url", &redis.url()],
            extra,
            Duration::from_secs(10),
        )
    }

    /// `switchboard gateway --no-auth` on a port the kernel picks, named
    /// `gw<n>`, with `redis` (the flags naming its Redis) and `extra`; waits
    /// until it is ready.
    fn gateway_with(redis: &[&str], extra: &[&str], ready_within: Duration) -> Self {
        let replica = format!("gw{}", REPLICAS.fetch_add(1, Ordering::Relaxed));
        let mut args = vec!["gateway", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(redis);
        args.extend_from_slice(&["--no-auth", "--replica-id", &replica]);
        args.extend_from_slice(extra);
        let gw = Self::start(&args);
        gw.wait_ready(ready_within);
        gw
    }

    /// Starts `switchboard <args>`; its listeners are what `args` say (give
    /// `--listen 127.0.0.1:0`), the ports those it reports. Logs at `warn` go
    /// to the test's stderr.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, "warn", Logs::Test)
    }

    /// [`Switchboard::start`] for a process told to listen on `port` (a
    /// restart on the port it had): checks it reports that port.
    pub fn spawn(port: u16, args: &[&str]) -> Self {
        let sb = Self::start(args);
        assert_eq!(sb.port, port, "switchboard {args:?} listens elsewhere");
        sb
    }

    /// Starts a process that must name its port in more than one flag (so
    /// cannot be given port 0): `args(port)` on a free port, and again on
    /// another one if that port was taken before the process could bind it.
    pub fn start_on_free_port(args: impl Fn(u16) -> Vec<String>) -> Self {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let args = args(free_port());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match Self::try_start_with(&args, "warn", Logs::Test) {
                Ok(sb) => return sb,
                Err(e) => failures.push(e),
            }
        }
        panic!("could not start on any free port:\n{}", failures.join("\n"));
    }

    /// Starts with a log level and where its logs go. A gateway or standalone
    /// gets its admin listener on a port of its own (the default, 9091, would
    /// be shared by every process of the test run).
    pub fn start_with(args: &[&str], level: &str, logs: Logs) -> Self {
        Self::try_start_with(args, level, logs).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start_with(args: &[&str], level: &str, logs: Logs) -> Result<Self, String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command
            .args(args)
            // Seed 001's variables, which collector and standalone read, come
            // only from the test that sets them, never from the caller's shell.
            .env_remove("REDIS_URL")
            .env_remove("ARK_BASE_PATH");
        if !names_admin_listen(args) && matches!(args.first(), Some(&("gateway" | "standalone"))) {
            command.env("SWITCHBOARD_ADMIN_LISTEN", "127.0.0.1:0");
        }
        let (child, listening) =
            try_start_reporting(&mut command, level, logs, Duration::from_secs(15))?;
        Ok(Self {
            port: listening.listen.port(),
            admin_port: listening.admin.port(),
            child,
        })
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

    /// Polls a metric until `pred` holds for its value; returns it. Panics
    /// after `timeout`, naming `what`.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &str,
        timeout: Duration,
        pred: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.metric(name, labels);
            if pred(value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{{{labels}}} is still {value} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

/// Whether the arguments name `--admin-listen` (as `--admin-listen ADDR` or
/// `--admin-listen=ADDR`).
fn names_admin_listen(args: &[&str]) -> bool {
    args.iter()
        .any(|a| *a == "--admin-listen" || a.starts_with("--admin-listen="))
}

/// The failures of a table test, collected so that one failing case does not
/// hide the others; [`Failures::finish`] reports them all.
#[derive(Default)]
pub struct Failures {
    cases: usize,
    failed: Vec<String>,
}

impl Failures {
    /// Records one case: `Err(why)` is a failure.
    pub fn record(&mut self, case: &str, outcome: Result<(), String>) {
        self.cases += 1;
        if let Err(why) = outcome {
            eprintln!("FAILED case {case}: {why}");
            self.failed.push(format!("{case}: {why}"));
        }
    }

    /// Records a case whose check is a condition; `detail` says what was seen.
    pub fn check(&mut self, case: &str, ok: bool, detail: impl std::fmt::Display) {
        self.record(case, if ok { Ok(()) } else { Err(detail.to_string()) });
    }

    /// Records a case whose check is a comparison.
    pub fn expect_eq<T: PartialEq + std::fmt::Debug>(&mut self, case: &str, got: T, want: T) {
        let outcome = if got == want {
            Ok(())
        } else {
            Err(format!("got {got:?}, want {want:?}"))
        };
        self.record(case, outcome);
    }

    /// Runs one case, written with assertions: a panic is its failure.
    pub async fn run<F: std::future::Future<Output = ()>>(&mut self, case: &str, check: F) {
        let outcome = std::panic::AssertUnwindSafe(check)
            .catch_unwind()
            .await
            .map_err(|panic| panic_message(&*panic));
        self.record(case, outcome);
    }

    /// Panics listing every failed case, if any failed.
    pub fn finish(self, what: &str) {
        assert!(
            self.failed.is_empty(),
            "{what}: {} of {} cases failed:\n  {}",
            self.failed.len(),
            self.cases,
            self.failed.join("\n  ")
        );
    }
}

/// The text of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".to_string())
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
    /// Starts nginx on a free port, and again on another one if that port
    /// was taken before nginx could bind it (nginx cannot report a port it
    /// picked). It is recognised by a path only it answers with its nonce.
    pub fn start(upstreams: &[u16]) -> Self {
        let mut tried = Vec::new();
        for attempt in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!(
                "sb-nginx-{}-{}",
                std::process::id(),
                DIRS.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("nginx dir");
            let nonce = format!("sb-nginx-{}-{port}-{attempt}", std::process::id());
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, Self::config(upstreams, port, &dir, &nonce))
                .expect("write nginx.conf");
            let mut child = Command::new(nginx_binary())
                .arg("-c")
                .arg(&conf)
                .arg("-p")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("nginx must be installed (apt-get install nginx)");
            let ours = child.id();
            let owner = |port: u16| match http_get(port, NGINX_MARKER) {
                Ok((200, body)) if body == nonce => Some(ours),
                Ok(_) => Some(0),
                Err(_) => None,
            };
            match wait_started(&mut child, port, Duration::from_secs(10), owner) {
                Startup::Ours => return Self { port, child, dir },
                Startup::Exited(status) => tried.push(format!("{port}: exited ({status})")),
                Startup::Taken => tried.push(format!("{port}: taken by another process")),
            }
            send_signal(&child, "TERM");
            wait_exit(&mut child, Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&dir);
        }
        panic!("nginx could not start on any free port: {tried:?}");
    }

    fn config(upstreams: &[u16], port: u16, dir: &std::path::Path, nonce: &str) -> String {
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
        format!(
            "{user}\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             upstream gateways {{\n{servers}  }}\n\
             map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
             server {{\n    listen 127.0.0.1:{port};\n\
             location = {NGINX_MARKER} {{ return 200 \"{nonce}\"; }}\n\
             location / {{\n      proxy_pass http://gateways;\n\
             proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n\
             proxy_set_header Connection $connection_upgrade;\n      proxy_read_timeout 3600s;\n\
             proxy_connect_timeout 2s;\n      proxy_next_upstream error timeout http_502 http_503;\n    }}\n  }}\n}}\n"
        )
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, path)
    }
}

/// A path the harness's nginx answers itself, with its nonce.
const NGINX_MARKER: &str = "/__switchboard_test_nginx";

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
        let dir = std::env::temp_dir().join(format!(
            "sb-cluster-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
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
            // A port taken since it was found free: start over on others.
            cluster.try_start_node(p)?;
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
        if let Err(e) = self.try_start_node(port) {
            panic!("{e}");
        }
    }

    fn try_start_node(&mut self, port: u16) -> Result<(), String> {
        let dir = self.node_dir(port);
        let _ = std::fs::create_dir_all(&dir);
        let mut child = Command::new("redis-server")
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
        let failure = match wait_started(&mut child, port, Duration::from_secs(10), redis_pid) {
            Startup::Ours => {
                self.children.insert(port, child);
                return Ok(());
            }
            Startup::Exited(status) => format!("cluster node on port {port} exited: {status}"),
            Startup::Taken => format!("port {port} of a cluster node was taken"),
        };
        let _ = child.kill();
        let _ = child.wait();
        Err(failure)
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

/// A raw WebSocket over TCP, for what a client library would not send or
/// would do by itself (tungstenite answers every ping it reads).
pub mod raw {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// Sends an upgrade request with `version`; the status line and headers.
    pub fn upgrade(port: u16, version: &str) -> (TcpStream, String) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: {version}\r\n\r\n"
        );
        s.write_all(request.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).unwrap(), 1, "response head cut short");
            head.push(byte[0]);
        }
        (s, String::from_utf8_lossy(&head).to_lowercase())
    }

    /// A masked client frame.
    pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [7u8, 11, 13, 17];
        let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// The close code of the server's close frame, skipping any frame before it.
    pub fn close_code(s: &mut TcpStream) -> Option<u16> {
        loop {
            let mut head = [0u8; 2];
            s.read_exact(&mut head).ok()?;
            let len = match head[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    s.read_exact(&mut l).ok()?;
                    u16::from_be_bytes(l) as usize
                }
                127 => {
                    let mut l = [0u8; 8];
                    s.read_exact(&mut l).ok()?;
                    u64::from_be_bytes(l) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).ok()?;
            if head[0] & 0x0f == 8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    }
}
