//! `--check-config`: the real binary parses and validates a configuration given
//! as the Helm chart gives it (environment variables), says whether it is valid,
//! and exits without opening a file or contacting anything. scripts/check_chart.py
//! runs every rendered container's configuration through it.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// Environment variables, name and value.
type Env<'a> = &'a [(&'a str, &'a str)];

/// A check that starts the server instead of exiting is a failure, not a hang.
const EXIT_WITHIN: Duration = Duration::from_secs(30);

/// Runs the binary with only these variables in its environment.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the switchboard binary");
    let deadline = Instant::now() + EXIT_WITHIN;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the binary") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`switchboard {}` did not exit: it started instead of checking",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    if let Some(mut out) = child.stdout.take() {
        out.read_to_end(&mut stdout).expect("stdout");
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_end(&mut stderr).expect("stderr");
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A gateway's environment as the chart renders it, plus `extra`. Redis is a
/// port nothing listens on and the key file does not exist: neither is opened.
fn gateway_env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("SWITCHBOARD_LISTEN", "0.0.0.0:8080"),
        ("SWITCHBOARD_LOG_FORMAT", "json"),
        ("SWITCHBOARD_REDIS_URL", "redis://127.0.0.1:1/0"),
        (
            "SWITCHBOARD_JWT_SECRET_FILE",
            "/nonexistent/switchboard/jwt-secret",
        ),
        ("SWITCHBOARD_DRAIN_WINDOW", "10s"),
        ("SWITCHBOARD_DRAIN_DEADLINE", "25s"),
        ("SWITCHBOARD_ALLOWED_ORIGINS", "https://dash.example.com"),
        ("SWITCHBOARD_NAMESPACE_HISTORY", "agents=100:1m"),
    ];
    env.extend_from_slice(extra);
    env
}

fn assert_refused(out: &Output, needle: &str) {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "accepted, but must be refused ({needle}): {}",
        text(&out.stdout)
    );
    assert!(
        stderr.contains(needle),
        "the refusal does not say {needle:?}: {stderr}"
    );
    assert!(
        !text(&out.stdout).contains("configuration valid"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_valid_gateway_configuration_passes_without_opening_anything() {
    let out = run(&["gateway", "--check-config"], &gateway_env(&[]));
    assert!(
        out.status.success(),
        "refused: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("switchboard gateway: configuration valid"),
        "{stdout}"
    );
    assert!(stdout.contains("redis://127.0.0.1:1/0"), "{stdout}");
}

#[test]
fn a_valid_collector_and_standalone_configuration_pass() {
    for (mode, on_failure) in [
        ("auto", "stale"),
        ("auto", "simulate"),
        ("always", "simulate"),
        ("never", "stale"),
    ] {
        let out = run(
            &["collector", "--check-config"],
            &[
                ("SWITCHBOARD_REDIS_URL", "redis://127.0.0.1:1/0"),
                ("SWITCHBOARD_SIMULATE", mode),
                ("SWITCHBOARD_ON_SOURCE_FAILURE", on_failure),
                ("SWITCHBOARD_REASONING_DB", "/nonexistent/reasoning_logs.db"),
                (
                    "SWITCHBOARD_FEDERATION_REDIS_URL",
                    "redis://federation.example:6379/0",
                ),
            ],
        );
        assert!(
            out.status.success(),
            "--simulate {mode} --on-source-failure {on_failure}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stdout).contains("switchboard collector: configuration valid"));
    }
    let out = run(&["standalone", "--check-config"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("switchboard standalone: configuration valid"));
}

#[test]
fn wrong_values_are_refused_with_what_to_fix() {
    // Each: a value the Helm schema cannot judge, and what the refusal must say.
    let cases: &[(&str, Env, &str)] = &[
        (
            "gateway",
            &[("SWITCHBOARD_PING_INTERVAL", "25")],
            "--ping-interval",
        ),
        (
            "gateway",
            &[("SWITCHBOARD_DRAIN_WINDOW", "30s")],
            "--drain-window must not be longer than --drain-deadline",
        ),
        (
            "gateway",
            &[("SWITCHBOARD_NAMESPACE_HISTORY", "agents")],
            "expected NAMESPACE=SIZE:TTL",
        ),
        (
            "gateway",
            &[("SWITCHBOARD_MAX_CONNECTIONS", "2.097152e+06")],
            "--max-connections",
        ),
        (
            "gateway",
            &[("SWITCHBOARD_NO_AUTH", "true")],
            "--no-auth contradicts the JWT key flags",
        ),
        (
            "gateway",
            &[("SWITCHBOARD_REDIS_URL", "http://redis:6379")],
            "bad Redis URL",
        ),
    ];
    for (command, extra, needle) in cases {
        let out = run(&[command, "--check-config"], &gateway_env(extra));
        assert_refused(&out, needle);
    }

    let collector = |extra: &[(&str, &str)]| {
        let mut env = vec![("SWITCHBOARD_REDIS_URL", "redis://127.0.0.1:1/0")];
        env.extend_from_slice(extra);
        run(&["collector", "--check-config"], &env)
    };
    // What the chart rendered before collector.sources.simulate became an enum.
    assert_refused(
        &collector(&[("SWITCHBOARD_SIMULATE", "true")]),
        "[possible values: auto, always, never]",
    );
    assert_refused(
        &collector(&[("SWITCHBOARD_FEDERATION_REDIS_URL", "federation:6379")]),
        "--federation-redis-url",
    );
    assert_refused(
        &collector(&[("SWITCHBOARD_LEASE_TTL", "1s")]),
        "--lease-renew-interval",
    );
    assert_refused(
        &collector(&[
            ("SWITCHBOARD_SIMULATE", "never"),
            ("SWITCHBOARD_ON_SOURCE_FAILURE", "simulate"),
        ]),
        "--on-source-failure simulate contradicts --simulate never",
    );
    assert_refused(
        &collector(&[("SWITCHBOARD_ON_SOURCE_FAILURE", "mock")]),
        "[possible values: stale, simulate]",
    );
    assert_refused(
        &collector(&[("SWITCHBOARD_PEER_STALENESS", "0s")]),
        "--peer-staleness must be more than 0",
    );
    assert_refused(
        &run(&["collector", "--check-config"], &[]),
        "no Redis configured",
    );
}

#[test]
fn seed_001_variables_fill_what_the_flags_leave_unset() {
    // REDIS_URL alone is the collector's Redis.
    let out = run(
        &["collector", "--check-config"],
        &[
            ("REDIS_URL", "redis://seed.example:6379/0"),
            ("ARK_BASE_PATH", "/nonexistent/ark"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("redis://seed.example:6379/0"), "{stdout}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/ark/data/reasoning_logs.db")
            && stderr.contains("/nonexistent/ark/data/ark.db"),
        "the paths taken from ARK_BASE_PATH are logged: {stderr}"
    );
    // SWITCHBOARD_REDIS_URL wins over REDIS_URL; so does the flag.
    let out = run(
        &["collector", "--check-config"],
        &[
            ("REDIS_URL", "redis://seed.example:6379/0"),
            (
                "SWITCHBOARD_REDIS_URL",
                "redis://switchboard.example:6379/0",
            ),
        ],
    );
    assert!(text(&out.stdout).contains("redis://switchboard.example:6379/0"));
    let out = run(
        &[
            "collector",
            "--check-config",
            "--redis-url",
            "redis://flag.example:6379/0",
        ],
        &[("REDIS_URL", "redis://seed.example:6379/0")],
    );
    assert!(text(&out.stdout).contains("redis://flag.example:6379/0"));
    // A cluster given: REDIS_URL is not taken as a second Redis.
    let out = run(
        &["collector", "--check-config"],
        &[
            ("REDIS_URL", "redis://seed.example:6379/0"),
            (
                "SWITCHBOARD_REDIS_CLUSTER_URLS",
                "redis://node.example:7000",
            ),
            (
                "SWITCHBOARD_FEDERATION_REDIS_URL",
                "redis://federation.example:6379",
            ),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Redis Cluster"));
    // A bad REDIS_URL is refused like a bad --redis-url.
    assert_refused(
        &run(
            &["collector", "--check-config"],
            &[("REDIS_URL", "http://redis:6379")],
        ),
        "bad Redis URL",
    );
    // Without any Redis, the refusal names the seed's variable too.
    assert_refused(&run(&["collector", "--check-config"], &[]), "REDIS_URL");
    // standalone: REDIS_URL is its federation source, checked like the flag.
    assert_refused(
        &run(
            &["standalone", "--check-config"],
            &[("REDIS_URL", "federation:6379")],
        ),
        "--federation-redis-url",
    );
    let out = run(
        &["standalone", "--check-config"],
        &[("REDIS_URL", "redis://seed.example:6379/0")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn check_config_is_not_read_from_the_environment() {
    // A stray variable must not make a pod exit at once: the binary goes on to
    // start, and here stops at the first real check (standalone beyond loopback).
    let out = run(
        &["standalone", "--listen", "0.0.0.0:1"],
        &[("SWITCHBOARD_CHECK_CONFIG", "true")],
    );
    assert_refused(&out, "listens on loopback only");
}
