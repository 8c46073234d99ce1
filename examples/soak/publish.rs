//! Producers: through the gateways' HTTP API (behind the load balancer) and
//! straight into Redis with the publish script (`src/engine/publish.lua`, the
//! contract of docs/REDIS.md), one message at a time per channel, each
//! recorded in the channel's ledger with its outcome.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use redis::Value as RValue;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::ledger::{Ledger, Ledgers};
use crate::stats::{PublishCounters, Stats};

/// The publish script, exactly as the gateways run it.
const SCRIPT: &str = include_str!("../../src/engine/publish.lua");

/// How a message is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Http,
    Redis,
}

/// How a channel's history is kept (the gateways' settings, which a direct
/// publisher must repeat).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub size: u64,
    pub ttl_ms: u64,
}

/// The Redis side: one Redis (reconnected on failure) or a cluster.
enum RedisConn {
    Single {
        client: Box<redis::Client>,
        conn: Mutex<Option<redis::aio::MultiplexedConnection>>,
    },
    /// The `redis` cluster client can stay stuck on a master that stopped
    /// answering (it refreshes its slot map only on MOVED or a missing
    /// connection; a timed-out request is dropped — docs/RELIABILITY.md):
    /// after `CLUSTER_REBUILD_AFTER` timeouts in a row the connection is
    /// built anew, as the gateway's engine does.
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        conn: Mutex<redis::cluster_async::ClusterConnection>,
        timeouts: std::sync::atomic::AtomicU32,
    },
}

/// How long a direct publish's idempotency record is kept.
const IDEMPOTENCY_WINDOW_MS: u64 = 60_000;

/// One message of a direct publish.
struct Message<'a> {
    channel: &'a str,
    seq: u64,
    data: &'a str,
    snapshot: bool,
}

/// Timeouts in a row after which the cluster connection is rebuilt.
const CLUSTER_REBUILD_AFTER: u32 = 3;

pub struct Publisher {
    http: HttpClient<HttpConnector, Full<Bytes>>,
    publish_url: String,
    token: String,
    redis: RedisConn,
    sha: String,
    wait_replicas: u64,
    wait_timeout_ms: u64,
    pub default_policy: Policy,
    pub council_policy: Policy,
    pub ledgers: Arc<Ledgers>,
    stats: Arc<Stats>,
    timeout: Duration,
}

/// Settings of [`Publisher::connect`].
pub struct PublisherConfig {
    pub lb: String,
    pub token: String,
    pub redis_url: Option<String>,
    pub redis_cluster: Vec<String>,
    pub wait_replicas: u64,
    pub wait_timeout_ms: u64,
    pub default_policy: Policy,
    pub council_policy: Policy,
}

fn random_epoch() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..10)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl Publisher {
    pub async fn connect(
        cfg: PublisherConfig,
        ledgers: Arc<Ledgers>,
        stats: Arc<Stats>,
    ) -> anyhow::Result<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let timeout = Duration::from_secs(5);
        let redis = if cfg.redis_cluster.is_empty() {
            let url = cfg
                .redis_url
                .ok_or_else(|| anyhow::anyhow!("--redis-url or --redis-cluster is required"))?;
            RedisConn::Single {
                client: Box::new(redis::Client::open(url)?),
                conn: Mutex::new(None),
            }
        } else {
            let client = redis::cluster::ClusterClientBuilder::new(cfg.redis_cluster)
                .response_timeout(timeout)
                .connection_timeout(Duration::from_secs(2))
                .build()?;
            let conn = client.get_async_connection().await?;
            RedisConn::Cluster {
                client: Box::new(client),
                conn: Mutex::new(conn),
                timeouts: std::sync::atomic::AtomicU32::new(0),
            }
        };
        let sha = redis::Script::new(SCRIPT).get_hash().to_string();
        Ok(Self {
            http,
            publish_url: format!("http://{}/api/v1/publish", cfg.lb),
            token: cfg.token,
            redis,
            sha,
            wait_replicas: cfg.wait_replicas,
            wait_timeout_ms: cfg.wait_timeout_ms,
            default_policy: cfg.default_policy,
            council_policy: cfg.council_policy,
            ledgers,
            stats,
            timeout,
        })
    }

    fn counters(&self, method: Method) -> &PublishCounters {
        match method {
            Method::Http => &self.stats.http,
            Method::Redis => &self.stats.redis,
        }
    }

    /// Publishes the next message of `ledger`'s channel: `make` builds the
    /// data from (seq, send time µs). Returns the seq and whether it was acknowledged.
    pub async fn publish(
        &self,
        ledger: &Ledger,
        kind: u8,
        method: Method,
        snapshot: bool,
        make: impl FnOnce(u64, u64) -> Value,
    ) -> (u64, bool) {
        let (seq, send_us) = ledger.begin(kind);
        let data = make(seq, send_us).to_string();
        let counters = self.counters(method);
        counters.sent.fetch_add(1, Ordering::Relaxed);
        if snapshot {
            counters.snapshots.fetch_add(1, Ordering::Relaxed);
        }
        let result = match method {
            Method::Http => self.via_http(&ledger.channel, &data, snapshot).await,
            Method::Redis => self.via_redis(&ledger.channel, seq, &data, snapshot).await,
        };
        let outcome = match result {
            Ok((epoch, offset)) => {
                counters.acked.fetch_add(1, Ordering::Relaxed);
                Some((self.ledgers.epoch(&epoch), offset))
            }
            Err(e) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                self.stats.event(
                    "publish_failed",
                    json!({"channel": ledger.channel, "seq": seq, "method": format!("{method:?}"), "error": e}),
                );
                None
            }
        };
        let acked = outcome.is_some();
        if let Some(m) = ledger.resolve(seq, outcome) {
            self.stats
                .route(crate::stats::Route::Native)
                .mismatched
                .fetch_add(1, Ordering::Relaxed);
            self.stats.event(
                "mismatch",
                json!({"channel": ledger.channel, "seq": m.seq, "acked_as": m.expected, "delivered_as": m.got}),
            );
        }
        (seq, acked)
    }

    async fn via_http(
        &self,
        channel: &str,
        data: &str,
        snapshot: bool,
    ) -> Result<(String, u64), String> {
        let body = format!(
            r#"{{"channel":{},"data":{data},"snapshot":{snapshot}}}"#,
            Value::String(channel.into())
        );
        let request = http::Request::post(&self.publish_url)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", self.token))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(self.timeout, async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        })
        .await
        .map_err(|_| "timed out".to_string())??;
        let (status, body) = answer;
        if status != http::StatusCode::OK {
            return Err(format!(
                "HTTP {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        match (v["epoch"].as_str(), v["offset"].as_u64()) {
            (Some(e), Some(o)) => Ok((e.to_string(), o)),
            _ => Err(format!("unexpected reply {v}")),
        }
    }

    fn policy(&self, channel: &str) -> Policy {
        if channel.starts_with("council:") {
            self.council_policy
        } else {
            self.default_policy
        }
    }

    /// The script call of one message, with its idempotency record (the
    /// documented fourth key): the `redis` cluster client resends a script
    /// whose connection dropped before the reply, and the record makes the
    /// resend answer instead of publish again. (HTTP publishes carry no key:
    /// they exercise the gateways' own guard, `--redis-resend-guard`.)
    fn pipeline(&self, eval: &str, body: &str, m: &Message<'_>) -> redis::Pipeline {
        let tag = format!("switchboard:{{{}}}", m.channel);
        let policy = self.policy(m.channel);
        let cluster = matches!(self.redis, RedisConn::Cluster { .. });
        let mut pipe = redis::pipe();
        pipe.cmd(eval)
            .arg(body)
            .arg(4)
            .arg(format!("{tag}:meta"))
            .arg(format!("{tag}:history"))
            .arg(format!("{tag}:snapshot"))
            .arg(format!("{tag}:idem:soak-{}", m.seq))
            .arg(&tag)
            .arg(m.data)
            .arg(policy.size)
            .arg(policy.ttl_ms)
            .arg(random_epoch())
            .arg(if m.snapshot { "1" } else { "0" })
            .arg("")
            .arg(if cluster { "spublish" } else { "publish" })
            .arg("")
            .arg(IDEMPOTENCY_WINDOW_MS);
        if self.wait_replicas > 0 {
            pipe.cmd("WAIT")
                .arg(self.wait_replicas)
                .arg(self.wait_timeout_ms);
        }
        pipe.ignore_errors();
        pipe
    }

    async fn query(&self, pipe: &redis::Pipeline) -> Result<Vec<RValue>, String> {
        match &self.redis {
            RedisConn::Cluster {
                client,
                conn,
                timeouts,
            } => {
                let mut c = conn.lock().await.clone();
                let result: Result<Vec<RValue>, _> = pipe.query_async(&mut c).await;
                match &result {
                    Err(e) if e.is_timeout() => {
                        let n = timeouts.fetch_add(1, Ordering::Relaxed) + 1;
                        if n >= CLUSTER_REBUILD_AFTER {
                            if let Ok(fresh) = client.get_async_connection().await {
                                *conn.lock().await = fresh;
                                eprintln!(
                                    "soak: publisher: rebuilt the Redis Cluster connection after {n} timeouts in a row"
                                );
                            }
                            timeouts.store(0, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => timeouts.store(0, Ordering::Relaxed),
                    Err(_) => {}
                }
                result.map_err(|e| e.to_string())
            }
            RedisConn::Single { client, conn } => {
                let mut guard = conn.lock().await;
                if guard.is_none() {
                    let config = redis::AsyncConnectionConfig::new()
                        .set_response_timeout(Some(self.timeout))
                        .set_connection_timeout(Some(Duration::from_secs(2)));
                    let c = client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map_err(|e| e.to_string())?;
                    *guard = Some(c);
                }
                let mut c = guard.clone().ok_or("no connection")?;
                drop(guard);
                let result: Result<Vec<RValue>, _> = pipe.query_async(&mut c).await;
                if let Err(e) = &result
                    && (e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_timeout()
                        || e.is_unrecoverable_error())
                {
                    *conn.lock().await = None;
                }
                result.map_err(|e| e.to_string())
            }
        }
    }

    async fn via_redis(
        &self,
        channel: &str,
        seq: u64,
        data: &str,
        snapshot: bool,
    ) -> Result<(String, u64), String> {
        let message = Message {
            channel,
            seq,
            data,
            snapshot,
        };
        let mut replies = self
            .query(&self.pipeline("EVALSHA", &self.sha, &message))
            .await?;
        if matches!(replies.first(), Some(RValue::ServerError(e)) if e.code() == "NOSCRIPT") {
            replies = self.query(&self.pipeline("EVAL", SCRIPT, &message)).await?;
        }
        let mut replies = replies.into_iter();
        let script = replies.next().ok_or("no reply")?;
        if self.wait_replicas > 0 {
            let confirmed = match replies.next() {
                Some(RValue::Int(n)) => n,
                other => return Err(format!("WAIT answered {other:?}")),
            };
            if (confirmed as u64) < self.wait_replicas {
                return Err(format!(
                    "only {confirmed} replicas confirmed within {} ms (not acknowledged)",
                    self.wait_timeout_ms
                ));
            }
        }
        match script {
            RValue::Array(items) => match (items.first(), items.get(1)) {
                (Some(RValue::Int(o)), Some(RValue::BulkString(e))) if *o > 0 => {
                    Ok((String::from_utf8_lossy(e).into_owned(), *o as u64))
                }
                other => Err(format!("script answered {other:?}")),
            },
            other => Err(format!("script answered {other:?}")),
        }
    }

    /// A plain `PUBLISH` of bytes that are not JSON on `channel`'s pub/sub
    /// name: the gateways must drop it (and count it), and no client may see it.
    pub async fn publish_junk(&self, channel: &str) -> Result<(), String> {
        let tag = format!("switchboard:{{{channel}}}");
        let command = if matches!(self.redis, RedisConn::Cluster { .. }) {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let mut pipe = redis::pipe();
        pipe.cmd(command).arg(&tag).arg("this is not JSON {");
        // Not an `sb1:` envelope either, but a valid JSON string would be relayed as is.
        pipe.cmd(command).arg(&tag).arg("sb1:not-a-number:x:y:{");
        self.query(&pipe).await.map(|_| ())?;
        self.stats.junk_published.fetch_add(2, Ordering::Relaxed);
        Ok(())
    }
}
