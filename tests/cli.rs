//! `switchboard tail` and `switchboard publish` against real gateways: tail
//! follows a channel through the loss of its replica with no gap and no
//! duplicate, `--since`, `--filter`, snapshots, JSON lines on stdin, and one
//! clear line (exit ≠ 0) for each kind of bad input; `switchboard health`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{RedisServer, Switchboard, closed_port, free_port, publish};
use serde_json::{Value, json};

const SECRET: &str = "cli-test-secret-0123456789-abcdefghijklmnopqrstuv";

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_switchboard")
}

/// A running `switchboard tail`, its output collected line by line.
struct Tail {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn collect(reader: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

impl Tail {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(binary())
            .arg("tail")
            .args(args)
            .env_remove("SWITCHBOARD_URL")
            .env_remove("SWITCHBOARD_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tail");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Self {
            child,
            stdout,
            stderr,
        }
    }

    fn lines(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    fn wait_lines(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "tail printed {} of {n} lines; stderr: {:?}",
                lines.len(),
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_stderr(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self
            .stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
        {
            assert!(
                Instant::now() < deadline,
                "tail never said {needle:?}; stderr: {:?}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a client command to its end: (exit code, stdout, stderr).
fn run(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(binary());
    command
        .args(args)
        .env_remove("SWITCHBOARD_URL")
        .env_remove("SWITCHBOARD_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn the client");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().expect("client output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A failure: exit code ≠ 0 and exactly one line on stderr containing `needle`.
fn assert_one_line_failure(result: (i32, String, String), needle: &str) {
    let (code, _, stderr) = result;
    assert_ne!(code, 0, "expected a failure, stderr: {stderr}");
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
}

#[test]
fn tail_moves_to_another_replica_without_gap_or_duplicate() {
    let redis = RedisServer::start();
    let gw1 = Switchboard::gateway(&redis, &[]);
    let gw2 = Switchboard::gateway(&redis, &[]);
    let urls = format!("{},{}", gw1.http_url(""), gw2.http_url(""));
    let tail = Tail::start(&["stream", "--url", &urls]);
    tail.wait_stderr(
        &format!("connected to {}", gw1.http_url("")),
        Duration::from_secs(10),
    );
    // Subscribed once the gateway counts the subscription.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw1.metric("switchboard_subscriptions", "") < 1.0 {
        assert!(Instant::now() < deadline, "tail did not subscribe");
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 1..=200u64 {
        let offset = publish(gw2.port, "stream", &json!({"i": i}));
        assert_eq!(offset, i);
        if i == 70 {
            // The replica tail is on dies mid-stream.
            gw1.signal("KILL");
        }
        // A steady stream, so that the loss happens mid-stream.
        std::thread::sleep(Duration::from_millis(5));
    }
    // A last message: the stream is in order, so once it is printed every
    // duplicate of an earlier one would have been printed before it.
    assert_eq!(publish(gw2.port, "stream", &json!({"i": 201})), 201);
    tail.wait_lines(201, Duration::from_secs(30));
    let mut lines = tail.lines();
    assert_eq!(lines.len(), 201, "{lines:?}");
    assert_eq!(lines.pop().map(|l| l["offset"].clone()), Some(json!(201)));
    for (n, line) in lines.iter().enumerate() {
        let expected = n as u64 + 1;
        assert_eq!(line["channel"], "stream");
        assert_eq!(line["offset"], expected, "line {n}: {line}");
        assert_eq!(line["data"]["i"], expected);
    }
    tail.wait_stderr(
        &format!("reconnecting to {}", gw2.http_url("")),
        Duration::from_secs(1),
    );
    tail.wait_stderr(
        &format!("connected to {}", gw2.http_url("")),
        Duration::from_secs(1),
    );
}

#[test]
fn publish_lines_and_tail_since_filter_and_snapshot() {
    let redis = RedisServer::start();
    let gw = Switchboard::gateway(&redis, &[]);
    let url = gw.http_url("");

    // JSON lines from stdin, blank lines skipped, one answer per message.
    let (code, stdout, stderr) = run(
        &["publish", "lines", "--url", &url],
        Some("{\"n\":1,\"kind\":\"a\"}\n\n{\"n\":2,\"kind\":\"b\"}\n{\"n\":3,\"kind\":\"a\"}\n"),
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let answers: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let offsets: Vec<_> = answers.iter().map(|a| a["offset"].clone()).collect();
    assert_eq!(offsets, [json!(1), json!(2), json!(3)]);
    // One message as an argument, the URL from SWITCHBOARD_URL.
    let (code, stdout, _) = run(
        &["publish", "lines", "{\"n\":4,\"kind\":\"b\"}", "--quiet"],
        None,
        &[("SWITCHBOARD_URL", &url)],
    );
    assert_eq!((code, stdout.as_str()), (0, ""));

    // --since replays what the history holds after the offset, then goes on live.
    let since = Tail::start(&["lines", "--url", &url, "--since", "1"]);
    let lines = since.wait_lines(3, Duration::from_secs(10));
    let offsets: Vec<_> = lines
        .iter()
        .map(|l| l["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [2, 3, 4]);
    publish(gw.port, "lines", &json!({"n": 5, "kind": "a"}));
    let lines = since.wait_lines(4, Duration::from_secs(10));
    assert_eq!(lines[3]["data"]["n"], 5);

    // --filter applies to history and live messages.
    let filtered = Tail::start(&[
        "lines",
        "--url",
        &url,
        "--since",
        "0",
        "--filter",
        "{\"kind\":\"a\"}",
    ]);
    let lines = filtered.wait_lines(3, Duration::from_secs(10));
    let ns: Vec<_> = lines
        .iter()
        .map(|l| l["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [1, 3, 5]);

    // A snapshot comes first, marked; --no-snapshot leaves it out.
    let (code, _, stderr) = run(
        &["publish", "snap", "{\"v\":1}", "--snapshot", "--url", &url],
        None,
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let with = Tail::start(&["snap", "--url", &url]);
    let lines = with.wait_lines(1, Duration::from_secs(10));
    assert_eq!(
        lines[0],
        json!({"channel": "snap", "offset": 1, "snapshot": true, "data": {"v": 1}})
    );
    let without = Tail::start(&["snap", "--url", &url, "--no-snapshot"]);
    without.wait_stderr("connected to", Duration::from_secs(10));
    publish(gw.port, "snap", &json!({"v": 2}));
    let lines = without.wait_lines(1, Duration::from_secs(10));
    assert_eq!(
        lines[0],
        json!({"channel": "snap", "offset": 2, "data": {"v": 2}})
    );
    let lines = with.wait_lines(2, Duration::from_secs(10));
    assert_eq!(lines[1]["offset"], 2);
}

#[test]
fn client_failures_are_one_clear_line() {
    let dir = std::env::temp_dir().join(format!("sb-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let redis = RedisServer::start();
    let gw = Switchboard::gateway(&redis, &[]);
    let url = gw.http_url("");

    // Bad input, no gateway needed.
    assert_one_line_failure(
        run(&["tail", "x", "--url", "ftp://gw"], None, &[]),
        "bad gateway URL \"ftp://gw\"",
    );
    assert_one_line_failure(
        run(
            &["publish", "x", "--url", "127.0.0.1:8080", "{}"],
            None,
            &[],
        ),
        "expected http://host:port",
    );
    assert_one_line_failure(
        run(&["publish", "x", "{nope", "--url", &url], None, &[]),
        "the message is not JSON",
    );
    assert_one_line_failure(
        run(
            &["publish", "x", "--url", &url],
            Some("{\"ok\":1}\nnope\n"),
            &[],
        ),
        "line 2 is not JSON",
    );
    assert_one_line_failure(
        run(&["tail", "bad channel", "--url", &url], None, &[]),
        "bad channel",
    );
    assert_one_line_failure(
        run(&["tail", "x", "--url", &url, "--filter", "[1]"], None, &[]),
        "--filter must be a JSON object",
    );
    // Nobody listening: a quick, clear failure.
    let closed = closed_port();
    let nobody = format!("http://127.0.0.1:{}", closed.port);
    let started = Instant::now();
    assert_one_line_failure(
        run(&["tail", "x", "--url", &nobody], None, &[]),
        "could not reach any gateway",
    );
    assert_one_line_failure(
        run(&["publish", "x", "{}", "--url", &nobody], None, &[]),
        "could not reach any gateway",
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(gw);

    // A gateway with authentication: bad token, forbidden channel.
    let redis_url = redis.url();
    let secret_arg = secret.to_str().unwrap();
    let auth = Switchboard::start(&[
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        &redis_url,
        "--jwt-secret-file",
        secret_arg,
    ]);
    auth.wait_ready(Duration::from_secs(10));
    let url = auth.http_url("");
    let token = |perms: &[&str], channels: &[&str]| {
        let spec = switchboard::auth::mint::TokenSpec {
            roles: Vec::new(),
            subject: "cli".into(),
            permissions: perms.iter().map(|s| s.to_string()).collect(),
            channels: channels.iter().map(|s| s.to_string()).collect(),
            ttl: Duration::from_secs(600),
            audience: None,
            issuer: None,
            key_id: None,
        };
        switchboard::auth::mint::mint(&spec, jsonwebtoken::Algorithm::HS256, &secret).unwrap()
    };
    let viewer = token(
        &["websocket:connect", "websocket:subscribe"],
        &["federation"],
    );
    let writer = token(&["websocket:publish"], &["feed"]);
    assert_one_line_failure(
        run(&["tail", "x", "--url", &url], None, &[]),
        "(missing_token, HTTP 401)",
    );
    assert_one_line_failure(
        run(
            &["tail", "x", "--url", &url, "--token", "not.a.jwt"],
            None,
            &[],
        ),
        "the gateway refused the connection",
    );
    assert_one_line_failure(
        run(
            &["publish", "feed", "{}", "--url", &url],
            None,
            &[("SWITCHBOARD_TOKEN", "not.a.jwt")],
        ),
        "the gateway refused the publish",
    );
    assert_one_line_failure(
        run(
            &["tail", "secret", "--url", &url, "--token", &viewer],
            None,
            &[],
        ),
        "secret: your token does not allow subscribing to this channel (forbidden)",
    );
    assert_one_line_failure(
        run(
            &["publish", "other", "{}", "--url", &url, "--token", &writer],
            None,
            &[],
        ),
        "(forbidden, HTTP 403)",
    );
    // The right token works, through SWITCHBOARD_TOKEN too.
    let (code, stdout, stderr) = run(
        &["publish", "feed", "{\"ok\":true}", "--url", &url],
        None,
        &[("SWITCHBOARD_TOKEN", &writer)],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"offset\":1"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `switchboard health` (the image's HEALTHCHECK): 0 and the answer when the
/// process is ready, asked by URL or from the variables the process reads;
/// one line and exit 1 when it is not ready or not there.
#[test]
fn health_asks_readiness_and_fails_with_one_line() {
    let sb = Switchboard::standalone(&[]);
    sb.wait_ready(Duration::from_secs(10));
    let url = format!("http://127.0.0.1:{}/health/ready", sb.admin_port);
    let (code, stdout, stderr) = run(&["health", &url], None, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("HTTP 200") && stdout.contains("ready"),
        "{stdout}"
    );
    // No URL: the admin listener the process was given, asked on loopback.
    let admin = format!("0.0.0.0:{}", sb.admin_port);
    let (code, stdout, stderr) = run(&["health"], None, &[("SWITCHBOARD_ADMIN_LISTEN", &admin)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("127.0.0.1:{}", sb.admin_port)),
        "{stdout}"
    );
    // A bare base URL asks /health/ready; the client port answers health too.
    let (code, _, stderr) = run(&["health", &sb.http_url("")], None, &[]);
    assert_eq!(code, 0, "{stderr}");

    // Nothing listening: one line, exit 1.
    let nothing = closed_port();
    let closed = format!("http://127.0.0.1:{}/health/ready", nothing.port);
    assert_one_line_failure(run(&["health", &closed], None, &[]), "cannot connect");
    // A gateway whose Redis is not there: 503 with the reason.
    let no_redis = closed_port();
    let nowhere = format!("redis://127.0.0.1:{}", no_redis.port);
    let gw = Switchboard::start(&[
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        &nowhere,
        "--no-auth",
    ]);
    let url = format!("http://127.0.0.1:{}/health/ready", gw.admin_port);
    assert_one_line_failure(run(&["health", &url], None, &[]), "HTTP 503");
    assert_one_line_failure(
        run(&["health", "https://gw/health"], None, &[]),
        "only http://",
    );
}

/// Logs redirected to a file carry no ANSI colour codes; RUST_LOG sets the
/// filter when SWITCHBOARD_LOG_LEVEL does not, and loses to it when it does.
#[test]
fn logs_are_plain_text_when_redirected_and_follow_rust_log() {
    // Text logs (the subject) do not say which port a process got, and at
    // warn level nothing at all: each run is given free ports, and started
    // again on others if one was taken before it could bind it.
    let run_standalone = |rust_log: &str, log_level: Option<&str>| -> String {
        for _ in 0..5 {
            let (port, admin) = (free_port(), free_port());
            let log = std::env::temp_dir().join(format!("sb-log-{port}.txt"));
            let file = std::fs::File::create(&log).unwrap();
            let mut command = Command::new(binary());
            command
                .args(["standalone", "--listen", &format!("127.0.0.1:{port}")])
                .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
                .env_remove("SWITCHBOARD_LOG_LEVEL")
                .env_remove("NO_COLOR")
                .env("SWITCHBOARD_LOG_FORMAT", "text")
                .env("RUST_LOG", rust_log)
                .stdout(Stdio::null())
                .stderr(Stdio::from(file));
            if let Some(level) = log_level {
                command.env("SWITCHBOARD_LOG_LEVEL", level);
            }
            let mut child = command.spawn().unwrap();
            let deadline = Instant::now() + Duration::from_secs(15);
            let started = loop {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break false;
                }
                if matches!(common::http_get(admin, "/health/ready"), Ok((200, _))) {
                    break true;
                }
                assert!(Instant::now() < deadline, "standalone did not start");
                std::thread::sleep(Duration::from_millis(50));
            };
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&log).unwrap();
            let _ = std::fs::remove_file(&log);
            if started {
                return text;
            }
            eprintln!("standalone exited before it was ready (a port taken?): {text}");
        }
        panic!("standalone could not start on free ports");
    };
    // RUST_LOG=info: the first info line, in plain text.
    let text = run_standalone("info", None);
    assert!(text.contains("standalone: in-memory engine"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI codes in a redirected log: {text:?}"
    );
    // RUST_LOG=warn: no info line.
    let text = run_standalone("warn", None);
    assert!(!text.contains("standalone: in-memory engine"), "{text}");
    // SWITCHBOARD_LOG_LEVEL wins over RUST_LOG.
    let text = run_standalone("warn", Some("info"));
    assert!(text.contains("standalone: in-memory engine"), "{text}");
}
