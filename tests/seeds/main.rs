//! The seed systems' own clients against switchboard, unmodified: each module
//! drives a client written from its seed's examples (a Python script with the
//! `websockets` library for ESCAI, the AI Council frontend snippet in headless
//! Chromium) against two gateway replicas on a real Redis, with
//! authentication on, and checks what the seed's users would see.

#[path = "../browser/mod.rs"]
mod browser;
#[path = "../common/mod.rs"]
mod common;

mod ark;
mod council;
mod devskyy;
mod escai;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{RedisServer, Switchboard};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

/// The HMAC secret the seed backends and the gateways share.
pub const SECRET: &str = "seed-backends-shared-secret-0123456789abcdef";
/// The publish API key the seed backends' producers use.
pub const API_KEY: &str = "seed-producer-key";

/// Generous: the machine is shared.
pub const WAIT: Duration = Duration::from_secs(15);

/// Redis and two authenticated gateway replicas on it (dropped in this
/// order: the gateways stop before their Redis).
pub struct Fleet {
    pub a: Switchboard,
    pub b: Switchboard,
    pub redis: RedisServer,
    dir: PathBuf,
}

impl Fleet {
    /// Two replicas with `extra` flags (roles, heartbeats, …).
    pub fn start(extra: &[&str]) -> Self {
        let redis = RedisServer::start();
        static FLEETS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = FLEETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sb-seeds-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let secret = dir.join("jwt.secret");
        std::fs::write(&secret, format!("{SECRET}\n")).expect("secret file");
        let a = Self::gateway(&redis, &secret, "gw-a", extra);
        let b = Self::gateway(&redis, &secret, "gw-b", extra);
        Self { a, b, redis, dir }
    }

    fn gateway(
        redis: &RedisServer,
        secret: &std::path::Path,
        name: &str,
        extra: &[&str],
    ) -> Switchboard {
        // The kernel picks the port; the process reports it in its logs.
        let listen = "127.0.0.1:0";
        let url = redis.url();
        let secret = secret.display().to_string();
        let mut args = vec![
            "gateway",
            "--listen",
            listen,
            "--redis-url",
            &url,
            "--replica-id",
            name,
            "--jwt-secret-file",
            &secret,
            "--api-key",
            API_KEY,
        ];
        args.extend_from_slice(extra);
        let gw = Switchboard::start(&args);
        gw.wait_ready(WAIT);
        gw
    }

    /// A temporary file path.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Signs `claims` (HS256 with [`SECRET`]), as the seed backends sign theirs.
pub fn token(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign a token")
}

/// The Python with `websockets` (and Playwright) that `./scripts/test.sh` installs.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("SWITCHBOARD_PLAYWRIGHT_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let venv = PathBuf::from(home).join(".cache/switchboard/playwright/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// Publishes through a gateway's REST API with the producers' API key;
/// returns (status, reply).
pub fn publish(gw: &Switchboard, body: &Value) -> (u16, Value) {
    let (status, reply) = common::http_request(
        gw.port,
        "POST",
        "/api/v1/publish",
        &[("X-API-Key", API_KEY)],
        Some(&body.to_string()),
    )
    .expect("publish request");
    (status, serde_json::from_str(&reply).unwrap_or(Value::Null))
}
