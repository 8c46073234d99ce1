//! The publisher of a run: sends timestamped, sequenced messages into Redis at
//! the planned rate, round-robin over the channels, either through switchboard's
//! publish script (the Redis engine, as every producer of offsets does) or as a
//! plain `PUBLISH`. Publishes overlap (up to `max_in_flight`) so a slow reply
//! does not shift the schedule; how late the schedule ran is reported.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::client::{ChannelEnd, Expectation};
use super::fields;
use super::plan::{Plan, PublisherKind};
use crate::channel::{ChannelName, DEFAULT_MAX_CHANNEL_LEN};
use crate::engine::connection::RedisTarget;
use crate::engine::redis::{RedisConfig, RedisEngine};
use crate::engine::tls;
use crate::engine::{Engine, HistoryConfig, PublishOptions};
use crate::json::Json;
use crate::metrics::EngineMetrics;
use crate::time::unix_micros;

/// Limit on connecting to Redis and on each command.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// Why publishing could not start.
#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    #[error("cannot reach Redis at {url}: {why} (is --redis-url right and redis-server running?)")]
    Unreachable { url: String, why: String },
    #[error("cannot set up the publisher: {0}")]
    Setup(String),
}

/// How publishing went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PublishReport {
    pub publisher: PublisherKind,
    /// Measured messages published (warmup excluded).
    pub messages: u64,
    pub warmup_messages: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Measured messages per second actually sent.
    pub rate: f64,
    /// Largest delay of a publish behind its schedule.
    pub lag_max_ms: f64,
    /// The measured window (Unix µs).
    pub measure_from_us: u64,
    pub measure_until_us: u64,
}

/// Where messages go.
pub enum Sink {
    Script {
        engine: Arc<RedisEngine>,
        channels: Vec<ChannelName>,
        stop: CancellationToken,
    },
    Plain {
        conn: redis::aio::MultiplexedConnection,
        names: Vec<String>,
    },
}

impl Sink {
    /// Connects to Redis (checking it answers) for the planned publisher.
    pub async fn open(plan: &Plan) -> Result<Self, PublisherError> {
        let unreachable = |why: String| PublisherError::Unreachable {
            url: plan.redis_url.clone(),
            why,
        };
        let client = tls::client(&plan.redis_url, plan.redis_tls.as_ref())
            .map_err(|e| unreachable(e.to_string()))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| unreachable(tls::explain(e)))?;
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        match plan.publisher {
            PublisherKind::Plain => Ok(Self::Plain {
                conn,
                names: (0..plan.channels).map(|i| plan.pubsub_channel(i)).collect(),
            }),
            PublisherKind::Script => {
                let channels = (0..plan.channels)
                    .map(|i| ChannelName::parse(&plan.channel_name(i), DEFAULT_MAX_CHANNEL_LEN))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| PublisherError::Setup(e.to_string()))?;
                // The engine's own live feed is not needed: drain and drop it.
                let (events, mut feed) = mpsc::channel(16);
                tokio::spawn(async move { while feed.recv().await.is_some() {} });
                let stop = CancellationToken::new();
                let target = RedisTarget::from_url(&plan.redis_url)
                    .map_err(|e| PublisherError::Setup(e.to_string()))?;
                let engine = RedisEngine::start(
                    RedisConfig {
                        target,
                        prefix: plan.redis_prefix.clone(),
                        response_timeout: REDIS_TIMEOUT,
                        connect_timeout: REDIS_TIMEOUT,
                        pool_size: 8,
                        probe_interval: Duration::from_secs(5),
                        max_channel_len: DEFAULT_MAX_CHANNEL_LEN,
                        max_json_depth: 8,
                        history: HistoryConfig::default(),
                        replica_id: format!("bench-{}", std::process::id()),
                        wait_replicas: 0,
                        wait_timeout: Duration::from_millis(500),
                        cluster_rebuild_after: crate::engine::redis::DEFAULT_CLUSTER_REBUILD_AFTER,
                        resend_guard: crate::engine::redis_config::DEFAULT_RESEND_GUARD,
                        tls: plan.redis_tls.clone(),
                    },
                    events,
                    Arc::new(EngineMetrics::register(
                        &crate::metrics::MetricsRegistry::new(),
                    )),
                    stop.clone(),
                )
                .map_err(|e| PublisherError::Setup(e.to_string()))?;
                Ok(Self::Script {
                    engine,
                    channels,
                    stop,
                })
            }
        }
    }

    /// Publishes `data` on channel `i`; returns the offset (0 for a plain publish).
    async fn publish(&self, i: usize, data: String) -> Result<u64, PublishFailure> {
        match self {
            Self::Script {
                engine, channels, ..
            } => {
                let json = Json::parse(Bytes::from(data), 8)?;
                Ok(engine
                    .publish(&channels[i], &json, PublishOptions::default())
                    .await?
                    .offset)
            }
            Self::Plain { conn, names } => {
                let mut conn = conn.clone();
                redis::cmd("PUBLISH")
                    .arg(&names[i])
                    .arg(data)
                    .query_async::<i64>(&mut conn)
                    .await?;
                Ok(0)
            }
        }
    }
}

/// Why one benchmark publish failed (the first is in the report).
#[derive(Debug, thiserror::Error)]
enum PublishFailure {
    #[error("the generated message is not JSON: {0}")]
    Json(#[from] crate::json::JsonError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("PUBLISH: {0}")]
    Redis(#[from] redis::RedisError),
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Self::Script { stop, .. } = self {
            stop.cancel();
        }
    }
}

/// Messages the plan publishes: (warmup, measured).
pub fn counts(plan: &Plan) -> (u64, u64) {
    let warmup = (plan.rate * plan.warmup.as_secs_f64()).round() as u64;
    let measured = match plan.length {
        super::plan::Length::Messages(n) => n,
        super::plan::Length::Duration(d) => (plan.rate * d.as_secs_f64()).round() as u64,
    };
    (warmup, measured)
}

/// Publishes the planned messages starting at `start`; `start_us` is the same
/// moment in Unix µs.
pub async fn run(
    plan: &Plan,
    sink: Arc<Sink>,
    start: tokio::time::Instant,
    start_us: u64,
) -> (PublishReport, Expectation) {
    let (warmup, measured) = counts(plan);
    let total = warmup + measured;
    let offsets: Arc<Vec<AtomicU64>> =
        Arc::new((0..plan.channels).map(|_| AtomicU64::new(0)).collect());
    let mut published = vec![0u64; plan.channels];
    let errors = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let gate = Arc::new(Semaphore::new(plan.max_in_flight));
    let mut lag_max = Duration::ZERO;
    tokio::time::sleep_until(start).await;
    for n in 0..total {
        let scheduled = start + Duration::from_secs_f64(n as f64 / plan.rate);
        tokio::time::sleep_until(scheduled).await;
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        lag_max = lag_max.max(tokio::time::Instant::now().saturating_duration_since(scheduled));
        let i = (n % plan.channels as u64) as usize;
        let data = fields::make_data(published[i], unix_micros(), plan.payload_bytes);
        published[i] += 1;
        let (sink, offsets, errors, first_error) = (
            sink.clone(),
            offsets.clone(),
            errors.clone(),
            first_error.clone(),
        );
        tokio::spawn(async move {
            match sink.publish(i, data).await {
                Ok(offset) => {
                    offsets[i].fetch_max(offset, Ordering::Relaxed);
                }
                Err(e) => {
                    if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(error = %e, "publish failed");
                        *first_error.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(e.to_string());
                    }
                }
            }
            drop(permit);
        });
    }
    let end_us = unix_micros();
    // Wait for the publishes still in flight.
    let _ = gate.acquire_many(plan.max_in_flight as u32).await;
    let measure_from_us = start_us + (plan.warmup.as_micros() as u64);
    // The last message's slot lasts one interval more.
    let seconds = end_us.saturating_sub(measure_from_us) as f64 / 1e6 + 1.0 / plan.rate;
    let report = PublishReport {
        publisher: plan.publisher,
        messages: measured,
        warmup_messages: warmup,
        errors: errors.load(Ordering::Relaxed),
        first_error: first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        rate: if seconds > 0.0 {
            measured as f64 / seconds
        } else {
            0.0
        },
        lag_max_ms: lag_max.as_secs_f64() * 1000.0,
        measure_from_us,
        measure_until_us: end_us,
    };
    let expectation = Expectation {
        channels: published
            .iter()
            .zip(offsets.iter())
            .map(|(&p, o)| ChannelEnd {
                published: p,
                last_offset: o.load(Ordering::Relaxed),
            })
            .collect(),
    };
    (report, expectation)
}

/// The publisher on a thread of its own, so that its schedule does not wait
/// behind thousands of client tasks in the clients' runtime.
pub struct Thread {
    start: tokio::sync::oneshot::Sender<(std::time::Instant, u64)>,
    done: tokio::sync::oneshot::Receiver<(PublishReport, Expectation)>,
}

impl Thread {
    /// Starts the thread and connects to Redis; returns once it is ready.
    pub async fn spawn(plan: Arc<Plan>) -> Result<Self, PublisherError> {
        use tokio::sync::oneshot;
        let (ready_tx, ready_rx) = oneshot::channel();
        let (start_tx, start_rx) = oneshot::channel::<(std::time::Instant, u64)>();
        let (done_tx, done_rx) = oneshot::channel();
        let setup = |e: std::io::Error| PublisherError::Setup(e.to_string());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(setup)?;
        std::thread::Builder::new()
            .name("bench-publisher".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let sink = match Sink::open(&plan).await {
                        Ok(sink) => Arc::new(sink),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let Ok((start, start_us)) = start_rx.await else {
                        return;
                    };
                    let start = tokio::time::Instant::from_std(start);
                    let _ = done_tx.send(run(&plan, sink, start, start_us).await);
                });
            })
            .map_err(setup)?;
        ready_rx
            .await
            .map_err(|_| PublisherError::Setup("the publisher thread ended".into()))??;
        Ok(Self {
            start: start_tx,
            done: done_rx,
        })
    }

    /// Publishes from `start` (`start_us` in Unix µs) to the end of the plan.
    pub async fn run(
        self,
        start: std::time::Instant,
        start_us: u64,
    ) -> Result<(PublishReport, Expectation), PublisherError> {
        let ended = || PublisherError::Setup("the publisher thread ended".into());
        self.start.send((start, start_us)).map_err(|_| ended())?;
        self.done.await.map_err(|_| ended())
    }
}
