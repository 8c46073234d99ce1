//! The run's counters, the event log (`client-events.jsonl`) and the periodic
//! time series (`client-timeseries.jsonl`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::clock::now_s;
use crate::hist::{Hist, Snapshot};

/// The routes (dialects) clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    Native,
    Snapshot,
    Relay,
    Escai,
    Council,
}

pub const ROUTES: [Route; 5] = [
    Route::Native,
    Route::Snapshot,
    Route::Relay,
    Route::Escai,
    Route::Council,
];

impl Route {
    pub fn label(self) -> &'static str {
        match self {
            Route::Native => "native",
            Route::Snapshot => "snapshot",
            Route::Relay => "relay",
            Route::Escai => "escai",
            Route::Council => "council",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

macro_rules! counters {
    ($name:ident { $($field:ident),* $(,)? }) => {
        #[derive(Default)]
        pub struct $name { $(pub $field: AtomicU64,)* }
        impl $name {
            fn json(&self) -> Value {
                let mut m = serde_json::Map::new();
                $(m.insert(stringify!($field).into(), json!(self.$field.load(Ordering::Relaxed)));)*
                Value::Object(m)
            }
        }
    };
}

counters!(RouteCounters {
    // connections
    connects,
    connect_failures,
    refused,
    disconnects,
    voluntary_leaves,
    reconnects,
    resumes,
    // messages
    deliveries,
    replayed,
    lost,
    duplicated,
    mismatched,
    redelivered,
    honest_restarts,
    expired_reported,
    unacked_anomalies,
    junk,
    stuck,
    errors,
});

counters!(PublishCounters {
    sent,
    acked,
    failed,
    snapshots,
});

/// Everything counted, by route and by publish method.
pub struct Stats {
    routes: [RouteCounters; 5],
    latency: [Hist; 5],
    connected: [AtomicI64; 5],
    pub http: PublishCounters,
    pub redis: PublishCounters,
    pub junk_published: AtomicU64,
    close_codes: Mutex<BTreeMap<String, u64>>,
    error_codes: Mutex<BTreeMap<String, u64>>,
    events: Mutex<Option<BufWriter<File>>>,
    event_counts: Mutex<BTreeMap<String, u64>>,
    /// Whole-run latency per route, for the final report.
    total_latency: Mutex<Vec<Snapshot>>,
}

/// Events of one kind written in full; later ones only counted.
const EVENTS_PER_KIND: u64 = 2000;

impl Stats {
    pub fn new(events: &Path) -> std::io::Result<Self> {
        let file = BufWriter::new(File::create(events)?);
        Ok(Self {
            routes: Default::default(),
            latency: Default::default(),
            connected: Default::default(),
            http: Default::default(),
            redis: Default::default(),
            junk_published: AtomicU64::new(0),
            close_codes: Mutex::new(BTreeMap::new()),
            error_codes: Mutex::new(BTreeMap::new()),
            events: Mutex::new(Some(file)),
            event_counts: Mutex::new(BTreeMap::new()),
            total_latency: Mutex::new(vec![Snapshot::empty(); 5]),
        })
    }

    pub fn route(&self, r: Route) -> &RouteCounters {
        &self.routes[r.index()]
    }

    pub fn latency(&self, r: Route, us: u64) {
        self.latency[r.index()].record(us);
    }

    pub fn connected(&self, r: Route, delta: i64) {
        self.connected[r.index()].fetch_add(delta, Ordering::Relaxed);
    }

    pub fn close_code(&self, r: Route, code: &str) {
        let mut m = self.close_codes.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(format!("{}:{code}", r.label())).or_default() += 1;
    }

    pub fn error_code(&self, r: Route, code: &str) {
        self.route(r).errors.fetch_add(1, Ordering::Relaxed);
        let mut m = self.error_codes.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(format!("{}:{code}", r.label())).or_default() += 1;
    }

    /// Writes an event line (`kind`, time, and `fields`); beyond
    /// `EVENTS_PER_KIND` of a kind, only counts it.
    pub fn event(&self, kind: &str, fields: Value) {
        let n = {
            let mut c = self.event_counts.lock().unwrap_or_else(|e| e.into_inner());
            let n = c.entry(kind.to_string()).or_default();
            *n += 1;
            *n
        };
        if n > EVENTS_PER_KIND {
            return;
        }
        let mut line = json!({"t": now_s(), "kind": kind});
        if let (Value::Object(l), Value::Object(f)) = (&mut line, fields) {
            l.extend(f);
        }
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = events.as_mut() {
            let _ = writeln!(w, "{line}");
        }
    }

    pub fn flush_events(&self) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = events.as_mut() {
            let _ = w.flush();
        }
    }

    /// One line of the time series: counters so far, and this interval's
    /// latencies (which are reset).
    pub fn interval_line(&self, elapsed_s: f64) -> Value {
        let mut routes = serde_json::Map::new();
        let mut all = Snapshot::empty();
        let mut totals = self.total_latency.lock().unwrap_or_else(|e| e.into_inner());
        for r in ROUTES {
            let snap = self.latency[r.index()].take();
            all.add(&snap);
            totals[r.index()].add(&snap);
            let mut c = self.route(r).json();
            if let Value::Object(m) = &mut c {
                m.insert(
                    "connected".into(),
                    json!(self.connected[r.index()].load(Ordering::Relaxed)),
                );
                m.insert("interval_deliveries".into(), json!(snap.count()));
                m.insert("p50_ms".into(), json!(snap.quantile(0.5) as f64 / 1e3));
                m.insert("p99_ms".into(), json!(snap.quantile(0.99) as f64 / 1e3));
                m.insert("max_ms".into(), json!(snap.max as f64 / 1e3));
            }
            routes.insert(r.label().into(), c);
        }
        json!({
            "t": now_s(),
            "elapsed": elapsed_s,
            "deliveries": all.count(),
            "p50_ms": all.quantile(0.5) as f64 / 1e3,
            "p99_ms": all.quantile(0.99) as f64 / 1e3,
            "p999_ms": all.quantile(0.999) as f64 / 1e3,
            "max_ms": all.max as f64 / 1e3,
            "routes": routes,
            "publish": {"http": self.http.json(), "redis": self.redis.json()},
        })
    }

    /// The totals for the final report.
    pub fn totals(&self) -> Value {
        let totals = self.total_latency.lock().unwrap_or_else(|e| e.into_inner());
        let mut routes = serde_json::Map::new();
        let mut all = Snapshot::empty();
        for r in ROUTES {
            let snap = &totals[r.index()];
            all.add(snap);
            let mut c = self.route(r).json();
            if let Value::Object(m) = &mut c {
                m.insert("p50_ms".into(), json!(snap.quantile(0.5) as f64 / 1e3));
                m.insert("p99_ms".into(), json!(snap.quantile(0.99) as f64 / 1e3));
                m.insert("p999_ms".into(), json!(snap.quantile(0.999) as f64 / 1e3));
                m.insert("max_ms".into(), json!(snap.max as f64 / 1e3));
            }
            routes.insert(r.label().into(), c);
        }
        let sum = |f: fn(&RouteCounters) -> &AtomicU64| -> u64 {
            ROUTES
                .iter()
                .map(|r| f(self.route(*r)).load(Ordering::Relaxed))
                .sum()
        };
        json!({
            "deliveries": sum(|c| &c.deliveries),
            "lost": sum(|c| &c.lost),
            "duplicated": sum(|c| &c.duplicated),
            "mismatched": sum(|c| &c.mismatched),
            "redelivered": sum(|c| &c.redelivered),
            "honest_restarts": sum(|c| &c.honest_restarts),
            "expired_reported": sum(|c| &c.expired_reported),
            "reconnects": sum(|c| &c.reconnects),
            "resumes": sum(|c| &c.resumes),
            "connects": sum(|c| &c.connects),
            "stuck": sum(|c| &c.stuck),
            "unacked_anomalies": sum(|c| &c.unacked_anomalies),
            "p50_ms": all.quantile(0.5) as f64 / 1e3,
            "p99_ms": all.quantile(0.99) as f64 / 1e3,
            "p999_ms": all.quantile(0.999) as f64 / 1e3,
            "max_ms": all.max as f64 / 1e3,
            "routes": routes,
            "publish": {"http": self.http.json(), "redis": self.redis.json(),
                        "junk": self.junk_published.load(Ordering::Relaxed)},
            "close_codes": *self.close_codes.lock().unwrap_or_else(|e| e.into_inner()),
            "error_codes": *self.error_codes.lock().unwrap_or_else(|e| e.into_inner()),
            "event_counts": *self.event_counts.lock().unwrap_or_else(|e| e.into_inner()),
        })
    }
}
