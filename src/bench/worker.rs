//! Runs beyond one process's socket limit: the coordinator starts `--workers`
//! copies of this binary (`switchboard bench-worker`), each holding a share of
//! the clients, and talks to them with one JSON object per line on their
//! standard input and output. The coordinator publishes; workers only receive.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::client::Expectation;
use super::fleet::{ConnectReport, Fleet, FleetReport};
use super::plan::Plan;
use super::procstat;

/// Coordinator → worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToWorker {
    /// Open the clients `k` with `k % count == index`.
    Start {
        plan: Box<Plan>,
        index: usize,
        count: usize,
    },
    MeasureFrom {
        from_us: u64,
    },
    Finish {
        expectation: Expectation,
        drain: Duration,
    },
}

/// Worker → coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromWorker {
    Connected(ConnectReport),
    Report { report: FleetReport, cpu_s: f64 },
}

/// Why a worker process failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot start a worker process: {0}")]
    Spawn(std::io::Error),
    #[error("worker process {pid}: {why}")]
    Talk { pid: u32, why: String },
    #[error("bench worker: {0} (it is started by `switchboard bench --workers N`, not by hand)")]
    Coordinator(String),
}

/// A worker process, seen from the coordinator.
pub struct Worker {
    pid: u32,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    /// Starts worker `index` of `count` with `threads` runtime threads and
    /// hands it the plan.
    pub async fn spawn(
        plan: &Plan,
        index: usize,
        count: usize,
        threads: usize,
    ) -> Result<Self, WorkerError> {
        let exe = std::env::current_exe().map_err(WorkerError::Spawn)?;
        let mut child = Command::new(exe)
            .args(["bench-worker", "--threads", &threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(WorkerError::Spawn)?;
        let pid = child.id().unwrap_or(0);
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(WorkerError::Talk {
                pid,
                why: "no standard input or output".into(),
            });
        };
        let mut worker = Self {
            pid,
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        };
        worker
            .send(&ToWorker::Start {
                plan: Box::new(plan.clone()),
                index,
                count,
            })
            .await?;
        Ok(worker)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn error(&self, why: impl Into<String>) -> WorkerError {
        WorkerError::Talk {
            pid: self.pid,
            why: why.into(),
        }
    }

    pub async fn send(&mut self, message: &ToWorker) -> Result<(), WorkerError> {
        let mut line = serde_json::to_vec(message).map_err(|e| self.error(e.to_string()))?;
        line.push(b'\n');
        self.stdin
            .write_all(&line)
            .await
            .map_err(|e| self.error(format!("write: {e}")))?;
        self.stdin
            .flush()
            .await
            .map_err(|e| self.error(format!("write: {e}")))
    }

    pub async fn receive(&mut self) -> Result<FromWorker, WorkerError> {
        match self.stdout.next_line().await {
            Ok(Some(line)) => {
                serde_json::from_str(&line).map_err(|e| self.error(format!("bad message: {e}")))
            }
            Ok(None) => Err(self.error("exited early (see its messages above)")),
            Err(e) => Err(self.error(format!("read: {e}"))),
        }
    }

    /// Waits for the process to exit.
    pub async fn wait(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// `switchboard bench-worker`: serves one coordinator on stdin/stdout.
pub async fn serve() -> Result<(), WorkerError> {
    let fail = |why: String| WorkerError::Coordinator(why);
    // Standard input is read by a plain thread (a few lines per run).
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<std::io::Result<String>>(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            if lines_tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    let mut next = async || -> Result<ToWorker, WorkerError> {
        let line = lines
            .recv()
            .await
            .ok_or_else(|| fail("the coordinator went away".into()))?
            .map_err(|e| fail(format!("read: {e}")))?;
        serde_json::from_str(&line).map_err(|e| fail(format!("bad message: {e}")))
    };
    let ToWorker::Start { plan, index, count } = next().await? else {
        return Err(fail("expected the plan first".into()));
    };
    if count == 0 || index >= count {
        return Err(fail(format!("bad worker index {index} of {count}")));
    }
    let plan = Arc::new(*plan);
    let indices = (0..plan.clients).filter(|k| k % count == index).collect();
    let fleet = Fleet::launch(plan, indices);
    let connected = fleet.connected().await;
    write_line(&FromWorker::Connected(connected))?;
    loop {
        match next().await? {
            ToWorker::MeasureFrom { from_us } => fleet.measure_from(from_us),
            ToWorker::Finish { expectation, drain } => {
                let report = fleet.finish(expectation, drain).await;
                let cpu_s = procstat::own().cpu_s;
                write_line(&FromWorker::Report { report, cpu_s })?;
                return Ok(());
            }
            ToWorker::Start { .. } => return Err(fail("a second plan".into())),
        }
    }
}

/// One message on standard output (a blocking write of one line is fine here).
fn write_line(message: &FromWorker) -> Result<(), WorkerError> {
    use std::io::Write;
    let fail = |e: String| WorkerError::Coordinator(format!("write: {e}"));
    let mut line = serde_json::to_vec(message).map_err(|e| fail(e.to_string()))?;
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    out.write_all(&line).map_err(|e| fail(e.to_string()))?;
    out.flush().map_err(|e| fail(e.to_string()))
}
