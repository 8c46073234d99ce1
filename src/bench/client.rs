//! One simulated dashboard: connects, subscribes by its route, then reads
//! frames, answers pings, and records for each message whether it is new, a
//! duplicate or unexpected, and (once measuring) its publish→receive latency.
//!
//! The receive path takes the clock once per read, finds the fields with a few
//! substring searches, and records latencies into a shared striped histogram
//! once per read, so a client costs little next to the server it measures.
//! With `--compression` it inflates compressed messages, with `--delta` it
//! rebuilds each message from its delta (`delta.rs`), and it counts the bytes
//! it read from the socket against the bytes of the messages they carried.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::delta::Chain;
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
/// Largest message a compressed frame may inflate to (the gateway's own
/// limit on what it sends is far lower).
const MAX_INFLATED: usize = 64 * 1024 * 1024;

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
    /// Offer permessage-deflate.
    pub compression: bool,
    /// Subscribe with `"delta": "fossil"`.
    pub delta: bool,
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
    pub wire: Wire,
}

/// What one client read, from the start of the measured window until
/// publishing ended (or the idle run's end).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Wire {
    /// Clients whose server accepted permessage-deflate.
    pub deflate_clients: u64,
    /// Bytes read from the socket: frame headers, pings and all.
    pub bytes: u64,
    /// Messages received (text and binary, replies included).
    pub messages: u64,
    /// Their size once inflated and rebuilt from deltas: what they would have
    /// cost without compression or deltas, less the frame headers.
    pub message_bytes: u64,
    /// Messages that came compressed.
    pub compressed: u64,
    /// Messages that came as a delta.
    pub deltas: u64,
    /// Delta frames that could not be applied (a broken chain: a bug).
    pub bad_deltas: u64,
}

impl Wire {
    /// Adds another client's (or process's) counts.
    pub fn add(&mut self, o: &Wire) {
        self.deflate_clients += o.deflate_clients;
        self.bytes += o.bytes;
        self.messages += o.messages;
        self.message_bytes += o.message_bytes;
        self.compressed += o.compressed;
        self.deltas += o.deltas;
        self.bad_deltas += o.bad_deltas;
    }
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
        Ok(Err(e)) => {
            shared.fail(e.to_string());
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
    outcome.wire.deflate_clients = u64::from(conn.deflate);
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
                let from = shared.measure_from_us.load(Ordering::Relaxed);
                let counting = now >= from && expected.is_none();
                match read {
                    Ok(0) => {
                        outcome.ended = Some("eof".into());
                        break;
                    }
                    Ok(n) => {
                        if counting {
                            outcome.wire.bytes += n as u64;
                        }
                    }
                    Err(e) => {
                        outcome.ended = Some(format!("read: {}", e.kind()));
                        break;
                    }
                }
                let mut rx = Rx {
                    shared: &shared,
                    now,
                    measure_from: from,
                    seen: &mut outcome.seen,
                    lat: &mut lat,
                    wire: counting.then_some(&mut outcome.wire),
                };
                match conn.process(&mut rx, &mut out) {
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
    /// A fragmented message being reassembled, and whether it is compressed.
    partial: Vec<u8>,
    partial_compressed: bool,
    /// The server accepted permessage-deflate.
    deflate: bool,
    /// The previous message, for a delta subscription.
    chain: Option<Chain>,
}

/// Where one read's messages are recorded.
struct Rx<'a> {
    shared: &'a Shared,
    now: u64,
    measure_from: u64,
    seen: &'a mut Seen,
    lat: &'a mut Vec<u64>,
    /// Inside the measured window: count what the messages cost.
    wire: Option<&'a mut Wire>,
}

/// Why a client's setup (connect, upgrade, subscribe) failed; its text is
/// the label failures are counted by, so it stays short and bounded.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("{}", .0.label())]
    Connect(wsclient::ConnectError),
    #[error("write: {0}")]
    Write(std::io::ErrorKind),
    #[error("read: {0}")]
    Read(std::io::ErrorKind),
    #[error("eof during setup")]
    Eof,
    #[error("malformed frame from the server: {0}")]
    Frame(#[from] FrameError),
    #[error("bad compressed message: {0}")]
    Inflate(#[from] crate::ws::deflate::InflateError),
    #[error("error {0}")]
    Refused(String),
    #[error("closed {0}")]
    Closed(u16),
}

/// Connects, upgrades and subscribes.
async fn open(spec: &Spec, shared: &Shared) -> Result<Conn, SetupError> {
    let opened = wsclient::connect(
        spec.addr,
        spec.src,
        &spec.host,
        &spec.path,
        shared.token.as_deref(),
        shared.compression,
    )
    .await
    .map_err(SetupError::Connect)?;
    let mut conn = Conn {
        stream: opened.stream,
        buf: opened.rest,
        base: 0,
        partial: Vec::new(),
        partial_compressed: false,
        deflate: opened.deflate,
        chain: shared.delta.then(Chain::default),
    };
    match shared.route {
        Route::Native => {
            conn.expect(|t| matches!(fields::native(t), Native::Established).then_some(0))
                .await?;
            let mut subscribe =
                serde_json::json!({"type": "subscribe", "channel": spec.channel, "id": 1});
            if shared.delta {
                subscribe["delta"] = "fossil".into();
            }
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
    async fn send_text(&mut self, text: &[u8]) -> Result<(), SetupError> {
        let mut out = BytesMut::with_capacity(text.len() + 14);
        wsclient::encode(&mut out, OpCode::Text, text);
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| SetupError::Write(e.kind()))
    }

    /// Reads frames until `want` accepts a text frame (setup only; not fast).
    async fn expect<T>(&mut self, want: impl Fn(&[u8]) -> Option<T>) -> Result<T, SetupError> {
        loop {
            while let Some(f) = frame::parse_server_frame(&self.buf, self.deflate)? {
                let mut payload = self.buf[f.start..f.start + f.len].to_vec();
                self.buf.advance(f.start + f.len);
                if f.compressed {
                    payload = crate::ws::deflate::inflate(&payload, MAX_INFLATED)?;
                }
                match f.opcode {
                    OpCode::Text => {
                        if let Some(t) = want(&payload) {
                            return Ok(t);
                        }
                        if let Native::Error { code } = fields::native(&payload) {
                            return Err(SetupError::Refused(code.to_string()));
                        }
                    }
                    OpCode::Ping => {
                        let mut out = BytesMut::new();
                        wsclient::encode(&mut out, OpCode::Pong, &payload);
                        self.stream
                            .write_all(&out)
                            .await
                            .map_err(|e| SetupError::Write(e.kind()))?;
                    }
                    OpCode::Close => {
                        return Err(SetupError::Closed(
                            wsclient::close_code(&payload).unwrap_or(1005),
                        ));
                    }
                    _ => {}
                }
            }
            match self.stream.read_buf(reserve(&mut self.buf)).await {
                Ok(0) => return Err(SetupError::Eof),
                Ok(_) => {}
                Err(e) => return Err(SetupError::Read(e.kind())),
            }
        }
    }

    /// Handles every complete frame in the buffer. Returns why the connection
    /// ended, if a close frame came.
    fn process(
        &mut self,
        rx: &mut Rx<'_>,
        out: &mut BytesMut,
    ) -> Result<Option<String>, FrameError> {
        let mut pos = 0;
        let mut ended = None;
        while let Some(f) = frame::parse_server_frame(&self.buf[pos..], self.deflate)? {
            let ServerFrame {
                fin,
                opcode,
                start,
                len,
                compressed,
            } = f;
            let payload = &self.buf[pos + start..pos + start + len];
            let message = match opcode {
                OpCode::Text | OpCode::Binary if fin => Some((payload, compressed)),
                OpCode::Text | OpCode::Binary => {
                    self.partial.clear();
                    self.partial.extend_from_slice(payload);
                    self.partial_compressed = compressed;
                    None
                }
                OpCode::Continuation => {
                    self.partial.extend_from_slice(payload);
                    if fin {
                        let whole = std::mem::take(&mut self.partial);
                        ended = on_frame(
                            rx,
                            self.base,
                            &mut self.chain,
                            &whole,
                            self.partial_compressed,
                        );
                    }
                    None
                }
                OpCode::Ping => {
                    wsclient::encode(out, OpCode::Pong, payload);
                    None
                }
                OpCode::Close => {
                    ended = Some(format!(
                        "close {}",
                        wsclient::close_code(payload).unwrap_or(1005)
                    ));
                    None
                }
                OpCode::Pong => None,
            };
            if let Some((payload, compressed)) = message {
                ended = on_frame(rx, self.base, &mut self.chain, payload, compressed);
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

/// One whole message off the wire: inflated if compressed, rebuilt if a
/// delta, counted, recorded. Returns why the connection must end, if it must.
fn on_frame(
    rx: &mut Rx<'_>,
    base: u64,
    chain: &mut Option<Chain>,
    payload: &[u8],
    compressed: bool,
) -> Option<String> {
    let inflated;
    let text = if compressed {
        match crate::ws::deflate::inflate(payload, MAX_INFLATED) {
            Ok(t) => {
                inflated = t;
                &inflated[..]
            }
            Err(e) => return Some(format!("bad compressed message: {e}")),
        }
    } else {
        payload
    };
    let mut size = text.len();
    let mut was_delta = false;
    let mut bad_delta = false;
    // Only the native route's frames have a type to find.
    let native = (rx.shared.route == Route::Native).then(|| fields::native(text));
    let rebuilt = match (chain, native) {
        (Some(chain), Some(Native::Message { .. })) => match chain.rebuild(text) {
            Ok(r) => {
                size = size - r.carried + r.text.len();
                was_delta = r.was_delta;
                Some(r.text)
            }
            Err(_) => {
                bad_delta = true;
                None
            }
        },
        _ => None,
    };
    if let Some(wire) = rx.wire.as_deref_mut() {
        wire.messages += 1;
        wire.message_bytes += size as u64;
        wire.compressed += u64::from(compressed);
        wire.deltas += u64::from(was_delta);
        wire.bad_deltas += u64::from(bad_delta);
    }
    let (offset, stamp) = match native {
        Some(Native::Message { offset, stamp }) => match &rebuilt {
            Some(published) => (offset, fields::stamp(published)),
            None => (offset, stamp),
        },
        // Replies, pongs and the like are not messages.
        Some(_) => return None,
        None => (None, fields::stamp(text)),
    };
    record(rx, base, offset, stamp);
    None
}

/// Records one received message.
fn record(rx: &mut Rx<'_>, base: u64, offset: Option<u64>, stamp: fields::Stamp) {
    let Rx {
        shared,
        now,
        measure_from,
        seen,
        lat,
        ..
    } = rx;
    let (now, measure_from) = (*now, *measure_from);
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
