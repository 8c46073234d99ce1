//! One simulated dashboard: connects, subscribes by its route, then reads
//! frames, answers pings, and records for each message whether it is new, a
//! duplicate or unexpected, and (once measuring) its publish→receive latency.
//!
//! The receive path takes the clock once per read, finds the fields with a few
//! substring searches, and records latencies into a shared striped histogram
//! once per read, so a client costs little next to the server it measures.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::fields::{self, Native};
use super::hist::Striped;
use super::plan::{LossBasis, Route};
use super::seen::{Mark, Seen};
use super::wsclient;
use crate::time::unix_micros;
use crate::ws::frame::{self, FrameError, OpCode, ServerFrame};

/// Room kept free in a client's read buffer before each read.
const READ_RESERVE: usize = 8 * 1024;
/// A read buffer grown past this is released once empty.
const KEEP_CAPACITY: usize = 64 * 1024;

/// What the fleet tells its clients.
#[derive(Debug, Clone)]
pub enum Control {
    /// Keep receiving.
    Run,
    /// Publishing has ended: this is what each channel got.
    Finish(Arc<Expectation>),
    /// Close and report.
    Stop,
}

/// What was published on each channel (indexed by channel number).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Expectation {
    pub channels: Vec<ChannelEnd>,
}

/// The end state of one channel.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ChannelEnd {
    /// Messages published (sequence numbers `0..published`).
    pub published: u64,
    /// The highest offset the publish script returned (0 for plain publishes).
    pub last_offset: u64,
}

/// Who a client is and where it connects.
#[derive(Debug, Clone)]
pub struct Spec {
    pub index: usize,
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    pub src: Option<IpAddr>,
    pub channel: String,
    pub channel_index: usize,
}

/// State shared by every client of a fleet.
pub struct Shared {
    pub route: Route,
    pub basis: LossBasis,
    pub token: Option<String>,
    pub connect_timeout: Duration,
    /// Messages published at or after this Unix µs count for latency and throughput.
    pub measure_from_us: AtomicU64,
    pub latency: Striped,
    pub handshake: Striped,
    /// Deliveries of measured messages (first receipt only).
    pub measured: AtomicU64,
    /// When the last measured delivery arrived (Unix µs).
    pub last_rx_us: AtomicU64,
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    /// Ready clients that have not yet received everything expected (or ended).
    pub waiting: AtomicUsize,
    pub failures: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// When the fleet started.
    pub started: Instant,
    /// When the last client connected or failed, in µs after `started`.
    pub settled_us: AtomicU64,
}

impl Shared {
    fn settled(&self) {
        self.settled_us
            .fetch_max(self.started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    fn fail(&self, label: String) {
        self.settled();
        *self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(label)
            .or_default() += 1;
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// What one client saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub ready: bool,
    /// Why it stopped before being told to (`close 4000`, `eof`, …).
    pub ended: Option<String>,
    pub expected: u64,
    pub seen: Seen,
}

/// Runs one client until told to stop.
pub async fn run(
    spec: Spec,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
    mut ctl: watch::Receiver<Control>,
) -> Outcome {
    let started = Instant::now();
    let opened = tokio::time::timeout(shared.connect_timeout, open(&spec, &shared)).await;
    drop(permit);
    let mut conn = match opened {
        Ok(Ok(conn)) => conn,
        Ok(Err(label)) => {
            shared.fail(label);
            return Outcome::default();
        }
        Err(_) => {
            shared.fail("timed out".into());
            return Outcome::default();
        }
    };
    shared
        .handshake
        .record(spec.index, &[started.elapsed().as_micros().max(1) as u64]);
    shared.waiting.fetch_add(1, Ordering::Relaxed);
    shared.settled();
    shared.ready.fetch_add(1, Ordering::Relaxed);
    let mut outcome = Outcome {
        ready: true,
        ..Outcome::default()
    };
    let mut expected: Option<u64> = None;
    let mut waiting = true;
    let mut lat: Vec<u64> = Vec::with_capacity(64);
    let mut out = BytesMut::new();
    loop {
        tokio::select! {
            changed = ctl.changed() => {
                if changed.is_err() {
                    break;
                }
                let control = ctl.borrow_and_update().clone();
                match control {
                    Control::Run => {}
                    Control::Stop => break,
                    Control::Finish(exp) => {
                        let end = exp.channels.get(spec.channel_index).copied().unwrap_or_default();
                        expected = Some(match shared.basis {
                            LossBasis::Offset => end.last_offset.saturating_sub(conn.base),
                            LossBasis::Seq => end.published,
                        });
                    }
                }
            }
            read = conn.stream.read_buf(reserve(&mut conn.buf)) => {
                let now = unix_micros();
                match read {
                    Ok(0) => {
                        outcome.ended = Some("eof".into());
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        outcome.ended = Some(format!("read: {}", e.kind()));
                        break;
                    }
                }
                let from = shared.measure_from_us.load(Ordering::Relaxed);
                match conn.process(&shared, now, from, &mut outcome.seen, &mut lat, &mut out) {
                    Ok(None) => {}
                    Ok(Some(end)) => {
                        outcome.ended = Some(end);
                        break;
                    }
                    Err(e) => {
                        outcome.ended = Some(format!("malformed frame from the server: {e}"));
                        break;
                    }
                }
                if !lat.is_empty() {
                    shared.measured.fetch_add(lat.len() as u64, Ordering::Relaxed);
                    shared.last_rx_us.fetch_max(now, Ordering::Relaxed);
                    shared.latency.record(spec.index, &lat);
                    lat.clear();
                }
                if !out.is_empty() {
                    if conn.stream.write_all(&out).await.is_err() {
                        outcome.ended = Some("write failed".into());
                        break;
                    }
                    out.clear();
                }
            }
        }
        if waiting && expected.is_some_and(|e| outcome.seen.distinct >= e) {
            waiting = false;
            shared.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
    if waiting {
        shared.waiting.fetch_sub(1, Ordering::Relaxed);
    }
    if outcome.ended.is_none() {
        let mut close = BytesMut::new();
        wsclient::encode(&mut close, OpCode::Close, &1000u16.to_be_bytes());
        let _ = conn.stream.try_write(&close);
    }
    outcome.expected = expected.unwrap_or(0);
    outcome
}

fn reserve(buf: &mut BytesMut) -> &mut BytesMut {
    if buf.capacity() - buf.len() < READ_RESERVE {
        buf.reserve(READ_RESERVE);
    }
    buf
}

/// An open, subscribed connection.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// Offset in `subscribed` (native); messages after it are expected.
    base: u64,
    /// A fragmented message being reassembled.
    partial: Vec<u8>,
}

/// Connects, upgrades and subscribes; returns a failure label.
async fn open(spec: &Spec, shared: &Shared) -> Result<Conn, String> {
    let (stream, buf) = wsclient::connect(
        spec.addr,
        spec.src,
        &spec.host,
        &spec.path,
        shared.token.as_deref(),
    )
    .await
    .map_err(|e| e.label())?;
    let mut conn = Conn {
        stream,
        buf,
        base: 0,
        partial: Vec::new(),
    };
    match shared.route {
        Route::Native => {
            conn.expect(|t| matches!(fields::native(t), Native::Established).then_some(0))
                .await?;
            let subscribe =
                serde_json::json!({"type": "subscribe", "channel": spec.channel, "id": 1});
            conn.send_text(subscribe.to_string().as_bytes()).await?;
            conn.base = conn
                .expect(|t| match fields::native(t) {
                    Native::Subscribed { offset } => Some(offset),
                    _ => None,
                })
                .await?;
        }
        Route::Relay => {
            // The relay route subscribes before it reads: a pong proves it is live.
            conn.send_text(b"ping").await?;
            conn.expect(|t| matches!(fields::native(t), Native::Pong).then_some(0))
                .await?;
        }
        Route::Raw => {}
    }
    Ok(conn)
}

impl Conn {
    async fn send_text(&mut self, text: &[u8]) -> Result<(), String> {
        let mut out = BytesMut::with_capacity(text.len() + 14);
        wsclient::encode(&mut out, OpCode::Text, text);
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| format!("write: {}", e.kind()))
    }

    /// Reads frames until `want` accepts a text frame (setup only; not fast).
    async fn expect<T>(&mut self, want: impl Fn(&[u8]) -> Option<T>) -> Result<T, String> {
        loop {
            while let Some(f) = frame::parse_server_frame(&self.buf)
                .map_err(|e| format!("malformed frame from the server: {e}"))?
            {
                let payload = self.buf[f.start..f.start + f.len].to_vec();
                self.buf.advance(f.start + f.len);
                match f.opcode {
                    OpCode::Text => {
                        if let Some(t) = want(&payload) {
                            return Ok(t);
                        }
                        if let Native::Error { code } = fields::native(&payload) {
                            return Err(format!("error {code}"));
                        }
                    }
                    OpCode::Ping => {
                        let mut out = BytesMut::new();
                        wsclient::encode(&mut out, OpCode::Pong, &payload);
                        self.stream
                            .write_all(&out)
                            .await
                            .map_err(|e| format!("write: {}", e.kind()))?;
                    }
                    OpCode::Close => {
                        return Err(format!(
                            "closed {}",
                            wsclient::close_code(&payload).unwrap_or(1005)
                        ));
                    }
                    _ => {}
                }
            }
            match self.stream.read_buf(reserve(&mut self.buf)).await {
                Ok(0) => return Err("eof during setup".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {}", e.kind())),
            }
        }
    }

    /// Handles every complete frame in the buffer. Returns why the connection
    /// ended, if a close frame came.
    fn process(
        &mut self,
        shared: &Shared,
        now: u64,
        measure_from: u64,
        seen: &mut Seen,
        lat: &mut Vec<u64>,
        out: &mut BytesMut,
    ) -> Result<Option<String>, FrameError> {
        let mut pos = 0;
        let mut ended = None;
        while let Some(f) = frame::parse_server_frame(&self.buf[pos..])? {
            let ServerFrame {
                fin,
                opcode,
                start,
                len,
            } = f;
            let payload = &self.buf[pos + start..pos + start + len];
            match opcode {
                OpCode::Text | OpCode::Binary if fin => {
                    on_message(shared, self.base, payload, now, measure_from, seen, lat);
                }
                OpCode::Text | OpCode::Binary => {
                    self.partial.clear();
                    self.partial.extend_from_slice(payload);
                }
                OpCode::Continuation => {
                    self.partial.extend_from_slice(payload);
                    if fin {
                        let whole = std::mem::take(&mut self.partial);
                        on_message(shared, self.base, &whole, now, measure_from, seen, lat);
                    }
                }
                OpCode::Ping => wsclient::encode(out, OpCode::Pong, payload),
                OpCode::Close => {
                    ended = Some(format!(
                        "close {}",
                        wsclient::close_code(payload).unwrap_or(1005)
                    ));
                }
                OpCode::Pong => {}
            }
            pos += start + len;
            if ended.is_some() {
                break;
            }
        }
        self.buf.advance(pos);
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = BytesMut::new();
        }
        Ok(ended)
    }
}

/// Records one received message.
fn on_message(
    shared: &Shared,
    base: u64,
    text: &[u8],
    now: u64,
    measure_from: u64,
    seen: &mut Seen,
    lat: &mut Vec<u64>,
) {
    let (offset, stamp) = match shared.route {
        Route::Native => match fields::native(text) {
            Native::Message { offset, stamp } => (offset, stamp),
            // Replies, pongs and the like are not messages.
            _ => return,
        },
        Route::Relay | Route::Raw => (None, fields::stamp(text)),
    };
    let mark = match shared.basis {
        LossBasis::Offset => match offset {
            Some(o) if o > base => seen.record(o - base - 1),
            _ => seen.unplaceable(),
        },
        LossBasis::Seq => match stamp.seq {
            Some(s) => seen.record(s),
            None => seen.unplaceable(),
        },
    };
    if mark == Mark::New
        && let Some(ts) = stamp.ts
        && ts >= measure_from
    {
        lat.push(now.saturating_sub(ts));
    }
}
