//! `switchboard bench`: the load generator.
//!
//! A run opens WebSocket clients against one or more gateways (or any server
//! that relays a Redis channel), subscribes them, publishes timestamped and
//! sequenced messages into Redis at a set rate, and reports deliveries/s,
//! publish→receive latency (HDR histogram), lost and duplicated messages, the
//! connect rate, and the servers' CPU seconds and memory read from `/proc`.
//!
//! It is configured by plain types ([`BenchConfig`], [`plan::Plan`]), which
//! `cli.rs` builds from the flags.
//!
//! | module | role |
//! |---|---|
//! | `plan.rs` | the validated settings of a run |
//! | `wsclient.rs` | a minimal WebSocket client (handshake, masked frames; framing from `ws/frame.rs`) |
//! | `fields.rs` | finds `type`, `offset`, `seq`, `ts` in a frame without parsing JSON |
//! | `seen.rs` | per-client bitmap: duplicates and losses |
//! | `client.rs` | one simulated dashboard |
//! | `fleet.rs` | the clients of one process |
//! | `worker.rs` | more processes for more sockets (`--workers`) |
//! | `publisher.rs` | the paced publisher (publish script or plain PUBLISH) |
//! | `procstat.rs` | CPU and memory of a process |
//! | `hist.rs` | latency histograms, mergeable across processes |
//! | `report.rs` | the JSON report and the table |

pub mod client;
pub mod delta;
pub mod fields;
pub mod fleet;
pub mod hist;
pub mod plan;
pub mod procstat;
pub mod publisher;
pub mod report;
pub mod seen;
pub mod worker;
pub mod wsclient;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use client::{ChannelEnd, Expectation};
use fleet::{ConnectReport, Fleet, FleetReport};
use plan::{Length, Plan};
use procstat::{ProcError, Sample};
use publisher::PublisherError;
use report::{
    ClientUsage, ConnectSummary, DeliverySummary, Report, ServerTotal, ServerUsage, Setup,
    WireSummary,
};
use worker::{FromWorker, ToWorker, Worker, WorkerError};

/// Why a run could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Publisher(#[from] PublisherError),
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(
        "{per_process} clients per process need more than this process's limit of {limit} open files: use --workers {workers} or more"
    )]
    TooManyFiles {
        per_process: usize,
        limit: u64,
        workers: usize,
    },
    #[error("no client could connect ({0}); is the server running at --url?")]
    NoneConnected(String),
    #[error("cannot write the report to {path}: {source}")]
    Output {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupted")]
    Interrupted,
}

/// What `switchboard bench` runs, and where its report goes.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The run: servers, clients, publishing (validated).
    pub plan: Plan,
    /// Runtime threads of each client process (this one and every worker).
    pub threads: usize,
    /// Also write the JSON report to this file.
    pub output: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    pub json: bool,
}

/// The `bench` subcommand: runs the plan and prints the report.
pub async fn main(config: BenchConfig, shutdown: CancellationToken) -> Result<(), BenchError> {
    let report = tokio::select! {
        r = run(config.plan, config.threads) => r?,
        _ = shutdown.cancelled() => return Err(BenchError::Interrupted),
    };
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    if let Some(path) = &config.output {
        std::fs::write(path, format!("{json}\n")).map_err(|source| BenchError::Output {
            path: path.display().to_string(),
            source,
        })?;
    }
    if config.json {
        println!("{json}");
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// The clients: in this process, or in worker processes.
enum Clients {
    Local(Fleet),
    Remote(Vec<Worker>),
}

impl Clients {
    async fn start(plan: &Arc<Plan>, threads: usize) -> Result<Self, BenchError> {
        if plan.workers == 1 {
            return Ok(Self::Local(Fleet::launch(
                plan.clone(),
                (0..plan.clients).collect(),
            )));
        }
        let mut workers = Vec::with_capacity(plan.workers);
        for i in 0..plan.workers {
            workers.push(Worker::spawn(plan, i, plan.workers, threads).await?);
        }
        Ok(Self::Remote(workers))
    }

    async fn connected(&mut self) -> Result<ConnectReport, BenchError> {
        match self {
            Self::Local(fleet) => Ok(fleet.connected().await),
            Self::Remote(workers) => {
                let mut parts = Vec::new();
                for w in workers.iter_mut() {
                    match w.receive().await? {
                        FromWorker::Connected(c) => parts.push(c),
                        FromWorker::Report { .. } => {
                            return Err(unexpected(w, "a report before connecting").into());
                        }
                    }
                }
                Ok(merge_connect(parts))
            }
        }
    }

    async fn measure_from(&mut self, from_us: u64) -> Result<(), BenchError> {
        match self {
            Self::Local(fleet) => fleet.measure_from(from_us),
            Self::Remote(workers) => {
                for w in workers.iter_mut() {
                    w.send(&ToWorker::MeasureFrom { from_us }).await?;
                }
            }
        }
        Ok(())
    }

    /// Ends the run; returns the merged report and the client processes' CPU seconds.
    async fn finish(
        self,
        expectation: Expectation,
        drain: Duration,
    ) -> Result<(FleetReport, f64, usize), BenchError> {
        match self {
            Self::Local(fleet) => Ok((fleet.finish(expectation, drain).await, 0.0, 1)),
            Self::Remote(mut workers) => {
                for w in workers.iter_mut() {
                    w.send(&ToWorker::Finish {
                        expectation: expectation.clone(),
                        drain,
                    })
                    .await?;
                }
                let mut parts = Vec::new();
                let mut cpu = 0.0;
                let n = workers.len();
                for mut w in workers {
                    match w.receive().await? {
                        FromWorker::Report { report, cpu_s } => {
                            parts.push(report);
                            cpu += cpu_s;
                        }
                        FromWorker::Connected(_) => {
                            return Err(unexpected(&w, "a second connect report").into());
                        }
                    }
                    w.wait().await;
                }
                Ok((merge_fleet(parts), cpu, n + 1))
            }
        }
    }
}

fn unexpected(w: &Worker, what: &str) -> WorkerError {
    WorkerError::Talk {
        pid: w.pid(),
        why: format!("sent {what}"),
    }
}

fn merge_connect(parts: Vec<ConnectReport>) -> ConnectReport {
    let mut all = ConnectReport::default();
    let mut hists = Vec::new();
    for p in parts {
        all.attempted += p.attempted;
        all.connected += p.connected;
        all.failed += p.failed;
        for (k, v) in p.failures {
            *all.failures.entry(k).or_default() += v;
        }
        all.seconds = all.seconds.max(p.seconds);
        hists.push(p.handshake);
    }
    all.handshake = hist::to_data(&hist::merge(&hists.iter().collect::<Vec<_>>()));
    all
}

fn merge_fleet(parts: Vec<FleetReport>) -> FleetReport {
    let connect = merge_connect(parts.iter().map(|p| p.connect.clone()).collect());
    let latency = hist::to_data(&hist::merge(
        &parts.iter().map(|p| &p.latency).collect::<Vec<_>>(),
    ));
    let mut all = FleetReport {
        connect,
        latency,
        ..FleetReport::default()
    };
    for p in parts {
        all.expected += p.expected;
        all.delivered += p.delivered;
        all.lost += p.lost;
        all.duplicated += p.duplicated;
        all.unexpected += p.unexpected;
        all.wire.add(&p.wire);
        for (k, v) in p.ended_early {
            *all.ended_early.entry(k).or_default() += v;
        }
        all.measured_deliveries += p.measured_deliveries;
        all.last_rx_us = all.last_rx_us.max(p.last_rx_us);
        all.drained_at_us = all.drained_at_us.max(p.drained_at_us);
    }
    all
}

/// Files a process may open beyond its clients' sockets (Redis, stdio, the runtime).
const SPARE_FILES: u64 = 64;

/// Refuses a plan whose clients per process exceed the open-file limit, which
/// would otherwise show up as thousands of failed connects.
fn check_file_limit(plan: &Plan) -> Result<(), BenchError> {
    let Some(limit) = procstat::open_file_limit() else {
        return Ok(());
    };
    let per_process = plan.clients.div_ceil(plan.workers);
    if per_process as u64 + SPARE_FILES > limit {
        let usable = limit.saturating_sub(SPARE_FILES).max(1);
        return Err(BenchError::TooManyFiles {
            per_process,
            limit,
            workers: (plan.clients as u64).div_ceil(usable) as usize,
        });
    }
    Ok(())
}

fn sample_all(pids: &[u32]) -> Result<Vec<Sample>, ProcError> {
    pids.iter().map(|&p| procstat::sample(p)).collect()
}

/// Runs a plan to its report.
pub async fn run(plan: Plan, threads: usize) -> Result<Report, BenchError> {
    check_file_limit(&plan)?;
    let plan = Arc::new(plan);
    let started_at = crate::time::rfc3339_now();
    let own_before = procstat::own();
    let publisher = if plan.rate > 0.0 {
        Some(publisher::Thread::spawn(plan.clone()).await?)
    } else {
        None
    };
    let before = sample_all(&plan.server_pids)?;
    let mut clients = Clients::start(&plan, threads).await?;
    let connect = clients.connected().await?;
    let connected_at = sample_all(&plan.server_pids)?;
    if connect.connected == 0 {
        return Err(BenchError::NoneConnected(format!("{:?}", connect.failures)));
    }
    tracing::info!(
        connected = connect.connected,
        failed = connect.failed,
        seconds = connect.seconds,
        "clients connected"
    );
    tokio::time::sleep(plan.settle).await;
    let settled = sample_all(&plan.server_pids)?;
    let run_started = Instant::now();

    // Publishing starts a moment from now, so that every worker knows the
    // measured window before the first message.
    let lead = Duration::from_millis(100);
    let start = std::time::Instant::now() + lead;
    let start_us = crate::time::unix_micros() + lead.as_micros() as u64;
    let measure_from_us = start_us + plan.warmup.as_micros() as u64;
    clients.measure_from(measure_from_us).await?;
    let (publish, expectation, run_s) = match publisher {
        Some(publisher) => {
            let (report, expectation) = publisher.run(start, start_us).await?;
            let run_s = report.measure_until_us.saturating_sub(measure_from_us) as f64 / 1e6;
            (Some(report), expectation, run_s)
        }
        None => {
            // Validated: an idle run has a duration.
            let d = match plan.length {
                Length::Duration(d) => d,
                Length::Messages(_) => Duration::ZERO,
            };
            tokio::time::sleep(d).await;
            let idle = Expectation {
                channels: vec![ChannelEnd::default(); plan.channels],
            };
            (None, idle, d.as_secs_f64())
        }
    };
    let (fleet, workers_cpu, processes) = clients.finish(expectation, plan.drain).await?;
    let end = sample_all(&plan.server_pids)?;
    let run_window = run_started.elapsed().as_secs_f64();
    let client_cpu = procstat::own().cpu_s - own_before.cpu_s + workers_cpu;

    let servers: Vec<ServerUsage> = plan
        .server_pids
        .iter()
        .enumerate()
        .map(|(i, &pid)| ServerUsage {
            pid,
            before: before[i],
            connected: settled[i],
            end: end[i],
            cpu_s_connect: connected_at[i].cpu_s - before[i].cpu_s,
            cpu_s_run: end[i].cpu_s - settled[i].cpu_s,
        })
        .collect();
    let connected = connect.connected.max(1) as f64;
    let sum = |f: fn(&ServerUsage) -> u64| servers.iter().map(f).sum::<u64>();
    let cpu_s_run: f64 = servers.iter().map(|s| s.cpu_s_run).sum();
    let server_total = ServerTotal {
        cpu_s_connect: servers.iter().map(|s| s.cpu_s_connect).sum(),
        cpu_s_run,
        rss_before_kb: sum(|s| s.before.rss_kb),
        rss_connected_kb: sum(|s| s.connected.rss_kb),
        rss_end_kb: sum(|s| s.end.rss_kb),
        hwm_kb: sum(|s| s.end.hwm_kb),
        rss_per_conn_kb: (sum(|s| s.connected.rss_kb) as f64 - sum(|s| s.before.rss_kb) as f64)
            / connected,
        cpu_ms_per_conn_per_min: cpu_s_run * 1000.0 / connected / (run_window / 60.0),
    };
    let window_s = fleet.last_rx_us.saturating_sub(measure_from_us) as f64 / 1e6;
    let delivery = DeliverySummary {
        expected: fleet.expected,
        delivered: fleet.delivered,
        lost: fleet.lost,
        duplicated: fleet.duplicated,
        unexpected: fleet.unexpected,
        ended_early: fleet.ended_early.clone(),
        deliveries_per_s: if window_s > 0.0 {
            fleet.measured_deliveries as f64 / window_s
        } else {
            0.0
        },
        latency_ms: hist::summary(&hist::merge(&[&fleet.latency])),
    };
    let w = &fleet.wire;
    let per_client_min = |n: u64| {
        if run_s > 0.0 {
            n as f64 / connected / (run_s / 60.0)
        } else {
            0.0
        }
    };
    let wire = WireSummary {
        offered_deflate: plan.compression,
        delta: plan.delta,
        deflate_clients: w.deflate_clients,
        bytes: w.bytes,
        bytes_per_client_per_min: per_client_min(w.bytes),
        messages: w.messages,
        message_bytes_per_client_per_min: per_client_min(w.message_bytes),
        ratio: if w.message_bytes > 0 {
            w.bytes as f64 / w.message_bytes as f64
        } else {
            0.0
        },
        compressed: w.compressed,
        deltas: w.deltas,
        bad_deltas: w.bad_deltas,
    };
    let connect_summary = ConnectSummary {
        attempted: connect.attempted,
        connected: connect.connected,
        failed: connect.failed,
        failures: connect.failures.clone(),
        seconds: connect.seconds,
        per_second: if connect.seconds > 0.0 {
            connect.connected as f64 / connect.seconds
        } else {
            0.0
        },
        handshake_ms: hist::summary(&hist::merge(&[&connect.handshake])),
    };
    Ok(Report {
        tool: "switchboard bench".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        label: plan.label.clone(),
        started_at,
        setup: Setup {
            route: plan.route,
            urls: plan.targets.iter().map(|t| t.url.clone()).collect(),
            clients: plan.clients,
            channels: plan.channels,
            rate: plan.rate,
            payload_bytes: plan.payload_bytes,
            publisher: plan.publisher,
            loss_basis: plan.loss_basis(),
            workers: plan.workers,
            source_addresses: plan.src_ips.len(),
            warmup_s: plan.warmup.as_secs_f64(),
            run_s,
        },
        connect: connect_summary,
        publish,
        delivery,
        wire,
        servers,
        server_total,
        client: ClientUsage {
            processes,
            cpu_s: client_cpu,
        },
    })
}
