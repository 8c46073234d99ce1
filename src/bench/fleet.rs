//! The clients of one process: opened at the planned pace, then told when
//! measuring starts, what was published, and when to stop; their outcomes are
//! summed into a [`FleetReport`] that can be merged with other processes'.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use super::client::{self, Control, Expectation, Outcome, Shared, Spec, Wire};
use super::hist::{self, HistData, Striped};
use super::plan::Plan;

/// How the connect phase went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectReport {
    pub attempted: u64,
    pub connected: u64,
    pub failed: u64,
    /// Failures by kind (`http 503`, `connect: …`, `timed out`, …).
    pub failures: BTreeMap<String, u64>,
    /// From the first attempt until every client was connected or had failed.
    pub seconds: f64,
    /// Time from a client's first TCP packet to its subscription being live.
    pub handshake: HistData,
}

/// What one process's clients saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetReport {
    pub connect: ConnectReport,
    /// Messages the connected clients should have received, summed.
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Frames that were neither a tracked message nor a protocol reply.
    pub unexpected: u64,
    /// Clients that stopped before the end, by reason (`close 4000`, `eof`, …).
    pub ended_early: BTreeMap<String, u64>,
    pub latency: HistData,
    /// First deliveries of measured messages.
    pub measured_deliveries: u64,
    /// When the last measured delivery arrived (Unix µs).
    pub last_rx_us: u64,
    /// When every client had received everything, or the drain ran out (Unix µs).
    pub drained_at_us: u64,
    /// What the messages cost on the wire in the measured window.
    #[serde(default)]
    pub wire: Wire,
}

/// The clients of this process.
pub struct Fleet {
    shared: Arc<Shared>,
    ctl: watch::Sender<Control>,
    launcher: JoinHandle<Vec<JoinHandle<Outcome>>>,
    total: usize,
    plan: Arc<Plan>,
}

impl Fleet {
    /// Starts opening the clients whose global numbers are `indices`.
    pub fn launch(plan: Arc<Plan>, indices: Vec<usize>) -> Self {
        let shared = Arc::new(Shared {
            route: plan.route,
            basis: plan.loss_basis(),
            token: plan.token.clone(),
            compression: plan.compression,
            delta: plan.delta,
            connect_timeout: plan.connect_timeout,
            measure_from_us: AtomicU64::new(u64::MAX),
            latency: Striped::default(),
            handshake: Striped::default(),
            measured: AtomicU64::new(0),
            last_rx_us: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            failures: Default::default(),
            started: Instant::now(),
            settled_us: AtomicU64::new(0),
        });
        let (ctl, ctl_rx) = watch::channel(Control::Run);
        let total = indices.len();
        let launcher = tokio::spawn(launch_all(plan.clone(), indices, shared.clone(), ctl_rx));
        Self {
            shared,
            ctl,
            launcher,
            total,
            plan,
        }
    }

    /// Waits until every client is connected or has failed.
    pub async fn connected(&self) -> ConnectReport {
        let pace = if self.plan.connect_rate > 0.0 {
            Duration::from_secs_f64(self.total as f64 / self.plan.connect_rate)
        } else {
            Duration::ZERO
        };
        let deadline =
            self.shared.started + pace + self.plan.connect_timeout * 2 + Duration::from_secs(5);
        loop {
            let done = self.shared.ready.load(Ordering::Relaxed)
                + self.shared.failed.load(Ordering::Relaxed);
            if done >= self.total || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ready = self.shared.ready.load(Ordering::Relaxed) as u64;
        let failed = self.shared.failed.load(Ordering::Relaxed) as u64;
        let mut failures = self
            .shared
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let missing = (self.total as u64).saturating_sub(ready + failed);
        if missing > 0 {
            failures.insert("still connecting at the deadline".into(), missing);
        }
        ConnectReport {
            attempted: self.total as u64,
            connected: ready,
            failed: failed + missing,
            failures,
            seconds: self.shared.settled_us.load(Ordering::Relaxed) as f64 / 1e6,
            handshake: hist::to_data(&self.shared.handshake.merged()),
        }
    }

    /// Messages published at or after `from_us` (Unix µs) count from now on.
    pub fn measure_from(&self, from_us: u64) {
        self.shared
            .measure_from_us
            .store(from_us, Ordering::Relaxed);
    }

    /// Tells the clients what was published, waits up to `drain` for them to
    /// receive it, stops them and sums up.
    pub async fn finish(self, expectation: Expectation, drain: Duration) -> FleetReport {
        let _ = self.ctl.send(Control::Finish(Arc::new(expectation)));
        let deadline = Instant::now() + drain;
        // Clients leave `waiting` only once they have seen the expectation.
        while self.shared.waiting.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let drained_at_us = crate::time::unix_micros();
        let _ = self.ctl.send(Control::Stop);
        let connect = self.connected().await;
        let handles = self.launcher.await.unwrap_or_default();
        let mut report = FleetReport {
            connect,
            drained_at_us,
            ..FleetReport::default()
        };
        for h in handles {
            let Ok(outcome) = h.await else { continue };
            if !outcome.ready {
                continue;
            }
            report.expected += outcome.expected;
            report.delivered += outcome.seen.distinct;
            report.lost += outcome.expected.saturating_sub(outcome.seen.distinct);
            report.duplicated += outcome.seen.duplicated;
            report.unexpected += outcome.seen.unexpected;
            report.wire.add(&outcome.wire);
            if let Some(why) = outcome.ended {
                *report.ended_early.entry(why).or_default() += 1;
            }
        }
        report.latency = hist::to_data(&self.shared.latency.merged());
        report.measured_deliveries = self.shared.measured.load(Ordering::Relaxed);
        report.last_rx_us = self.shared.last_rx_us.load(Ordering::Relaxed);
        report
    }
}

/// Opens the clients at the planned pace, at most `connect_concurrency` at a time.
async fn launch_all(
    plan: Arc<Plan>,
    indices: Vec<usize>,
    shared: Arc<Shared>,
    ctl: watch::Receiver<Control>,
) -> Vec<JoinHandle<Outcome>> {
    let gate = Arc::new(Semaphore::new(plan.connect_concurrency));
    let start = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(indices.len());
    // Let the kernel choose the source unless other addresses were asked for.
    let bind_source = plan.src_ips != [std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)];
    for (n, k) in indices.into_iter().enumerate() {
        if plan.connect_rate > 0.0 {
            tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / plan.connect_rate))
                .await;
        }
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let target = &plan.targets[k % plan.targets.len()];
        let src = plan.src_ips[k % plan.src_ips.len()];
        let channel_index = plan.channel_of(k);
        let spec = Spec {
            index: k,
            addr: target.addr,
            host: target.host.clone(),
            path: plan.path_of(target, k),
            // Let the kernel pick 127.0.0.1's ports unless other sources were asked for.
            src: bind_source.then_some(src),
            channel: plan.channel_name(channel_index),
            channel_index,
        };
        handles.push(tokio::spawn(client::run(
            spec,
            shared.clone(),
            permit,
            ctl.clone(),
        )));
    }
    handles
}
