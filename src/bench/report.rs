//! The result of a run: a JSON document (stable field names, for scripts) and
//! a short table for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::hist::Summary;
use super::plan::{LossBasis, PublisherKind, Route};
use super::procstat::Sample;
use super::publisher::PublishReport;

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    pub label: Option<String>,
    pub started_at: String,
    pub setup: Setup,
    pub connect: ConnectSummary,
    /// `None` when the clients were held idle (`--rate 0`).
    pub publish: Option<PublishReport>,
    pub delivery: DeliverySummary,
    pub wire: WireSummary,
    pub servers: Vec<ServerUsage>,
    pub server_total: ServerTotal,
    pub client: ClientUsage,
}

/// What was run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setup {
    pub route: Route,
    pub urls: Vec<String>,
    pub clients: usize,
    pub channels: usize,
    pub rate: f64,
    pub payload_bytes: usize,
    pub publisher: PublisherKind,
    pub loss_basis: LossBasis,
    pub workers: usize,
    pub source_addresses: usize,
    pub warmup_s: f64,
    /// Seconds of publishing (or idling) measured.
    pub run_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectSummary {
    pub attempted: u64,
    pub connected: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub seconds: f64,
    /// Connections (through subscription) completed per second.
    pub per_second: f64,
    pub handshake_ms: Summary,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliverySummary {
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub unexpected: u64,
    pub ended_early: BTreeMap<String, u64>,
    /// First deliveries of measured messages per second, from the start of the
    /// measured window to the last of them.
    pub deliveries_per_s: f64,
    /// Publish → receive, measured messages only.
    pub latency_ms: Summary,
}

/// What the clients read in the measured window (from its start until
/// publishing ended, or the idle run's end).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WireSummary {
    /// Permessage-deflate was offered (`--compression`).
    pub offered_deflate: bool,
    /// Subscriptions asked for deltas (`--delta`).
    pub delta: bool,
    /// Clients whose server accepted permessage-deflate.
    pub deflate_clients: u64,
    /// Bytes read from the sockets, all clients.
    pub bytes: u64,
    /// Bytes on the wire per client per minute.
    pub bytes_per_client_per_min: f64,
    /// Messages received, all clients.
    pub messages: u64,
    /// Their size inflated and rebuilt from deltas, per client per minute.
    pub message_bytes_per_client_per_min: f64,
    /// Bytes on the wire ÷ bytes of the messages they carried (1.0: no saving;
    /// a little above 1 for plain frames, whose headers count).
    pub ratio: f64,
    /// Messages that came compressed, and as deltas.
    pub compressed: u64,
    pub deltas: u64,
    /// Deltas that could not be applied: should be 0.
    pub bad_deltas: u64,
}

/// One server process (`--server-pid`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerUsage {
    pub pid: u32,
    pub before: Sample,
    pub connected: Sample,
    pub end: Sample,
    /// CPU seconds from before the first connection until all were connected.
    pub cpu_s_connect: f64,
    /// CPU seconds from the start of publishing (or idling) until the drain ended.
    pub cpu_s_run: f64,
}

/// All server processes together.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerTotal {
    pub cpu_s_connect: f64,
    pub cpu_s_run: f64,
    pub rss_before_kb: u64,
    pub rss_connected_kb: u64,
    pub rss_end_kb: u64,
    pub hwm_kb: u64,
    /// (RSS connected − RSS before) / connected clients.
    pub rss_per_conn_kb: f64,
    /// CPU milliseconds per connection per minute during the run (idle cost).
    pub cpu_ms_per_conn_per_min: f64,
}

/// The load generator's own cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientUsage {
    pub processes: usize,
    pub cpu_s: f64,
}

fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let s = &self.setup;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "switchboard bench{}: {:?} route, {} clients on {} channel(s), {} server(s), {} msg/s × {} B, {:?} publisher",
            self.label
                .as_ref()
                .map(|l| format!(" [{l}]"))
                .unwrap_or_default(),
            s.route,
            thousands(s.clients as f64),
            thousands(s.channels as f64),
            s.urls.len(),
            s.rate,
            s.payload_bytes,
            s.publisher
        );
        let c = &self.connect;
        let _ = writeln!(
            t,
            "connect   {}/{} in {:.2} s ({}/s); handshake p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{}",
            thousands(c.connected as f64),
            thousands(c.attempted as f64),
            c.seconds,
            thousands(c.per_second),
            c.handshake_ms.p50,
            c.handshake_ms.p99,
            c.handshake_ms.max,
            if c.failures.is_empty() {
                String::new()
            } else {
                format!("; failures {:?}", c.failures)
            }
        );
        if let Some(p) = &self.publish {
            let _ = writeln!(
                t,
                "publish   {} messages (+{} warmup) at {:.1}/s; {} errors; schedule lag max {:.1} ms",
                thousands(p.messages as f64),
                p.warmup_messages,
                p.rate,
                p.errors,
                p.lag_max_ms
            );
            let d = &self.delivery;
            let _ = writeln!(
                t,
                "delivery  {}/{} delivered, lost {}, duplicated {}, unexpected {}; {} deliveries/s{}",
                thousands(d.delivered as f64),
                thousands(d.expected as f64),
                d.lost,
                d.duplicated,
                d.unexpected,
                thousands(d.deliveries_per_s),
                if d.ended_early.is_empty() {
                    String::new()
                } else {
                    format!("; ended early {:?}", d.ended_early)
                }
            );
            let l = &d.latency_ms;
            let _ = writeln!(
                t,
                "latency   p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms  (mean {:.2}, n={})",
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
                l.mean,
                thousands(l.count as f64)
            );
        } else if !self.delivery.ended_early.is_empty() {
            let _ = writeln!(t, "idle      ended early {:?}", self.delivery.ended_early);
        }
        let w = &self.wire;
        if w.messages > 0 {
            let _ = writeln!(
                t,
                "wire      {} B per client per minute for {} B of messages: ratio {:.3}; {} of {} clients compressed ({} compressed messages, {} deltas{})",
                thousands(w.bytes_per_client_per_min),
                thousands(w.message_bytes_per_client_per_min),
                w.ratio,
                thousands(w.deflate_clients as f64),
                thousands(s.clients as f64),
                thousands(w.compressed as f64),
                thousands(w.deltas as f64),
                if w.bad_deltas > 0 {
                    format!(", {} BAD deltas", w.bad_deltas)
                } else {
                    String::new()
                }
            );
        }
        for u in &self.servers {
            let _ = writeln!(
                t,
                "server    pid {}: CPU {:.2} s run, {:.2} s connect; RSS {} → {} (end {}), peak {}",
                u.pid,
                u.cpu_s_run,
                u.cpu_s_connect,
                mb(u.before.rss_kb),
                mb(u.connected.rss_kb),
                mb(u.end.rss_kb),
                mb(u.end.hwm_kb)
            );
        }
        if !self.servers.is_empty() {
            let st = &self.server_total;
            let _ = writeln!(
                t,
                "servers   CPU {:.2} s run; {:.2} KB RSS per connection; {:.3} CPU ms per connection per minute",
                st.cpu_s_run, st.rss_per_conn_kb, st.cpu_ms_per_conn_per_min
            );
        }
        let _ = writeln!(
            t,
            "client    CPU {:.2} s in {} process(es)",
            self.client.cpu_s, self.client.processes
        );
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(400_000.4), "400,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }
}
