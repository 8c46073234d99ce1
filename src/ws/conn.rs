//! One client socket's outbound side: non-blocking writes of shared frames and a
//! bounded queue for what the kernel did not take.
//!
//! Any task may call [`Conn::send`]: the fan-out shard writes a broadcast frame
//! straight into the socket (no task wake-up per client), the session task
//! writes its replies. When the kernel buffer is full the rest is queued, and the
//! session task, woken once, waits for the socket to become writable and drains
//! the queue with vectored writes. A queue that grows past its byte limit marks
//! the client a slow consumer: what was queued is dropped, a close frame is
//! queued in its place, and the connection ends.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::net::TcpStream;

use super::close::CloseCode;
use super::frame;
use crate::metrics::GatewayMetrics;

/// A connection's identifier, unique within one gateway process.
pub type ConnId = u64;

/// How many queued buffers one vectored write carries at most.
const MAX_IOVECS: usize = 64;

/// The outbound side of one client connection, shared by the session task and
/// the fan-out shard that owns the client.
pub struct Conn {
    id: ConnId,
    stream: TcpStream,
    out: Mutex<Outbound>,
    wake: Wake,
    max_queued_bytes: usize,
    metrics: Arc<GatewayMetrics>,
    heartbeat: Heartbeat,
    /// Set by [`Conn::flag_work`].
    work: AtomicBool,
}

/// Wakes the session task. A flag and the one waker of its one task: no
/// waiter list and no future to keep per connection (an idle client costs the
/// memory of what its task waits on).
#[derive(Default)]
struct Wake {
    pending: AtomicBool,
    waker: AtomicWaker,
}

impl Wake {
    fn notify(&self) {
        self.pending.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Register first: a notify between the check and the registration
        // would otherwise be missed.
        self.waker.register(cx.waker());
        if self.pending.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Heartbeat bookkeeping, read by the shard's timing wheel. Times are
/// milliseconds on the monotonic clock (`time::mono_millis`, 0 = never) except
/// `expires_at` (Unix seconds of the token's `exp`, 0 = no expiry).
#[derive(Default)]
struct Heartbeat {
    last_seen: AtomicU64,
    last_ping: AtomicU64,
    awaiting_pong_since: AtomicU64,
    expires_at: AtomicU64,
    expiry_notified_at: AtomicU64,
}

struct Outbound {
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    /// The queue's head is the unsent rest of a frame whose start was written.
    head_partial: bool,
    state: OutState,
}

/// Where the connection is in its life, seen from the sending side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutState {
    /// Frames are accepted.
    Open,
    /// A close frame is queued; nothing else is accepted.
    Closing(CloseCode),
    /// The socket failed or is finished; nothing is written any more.
    Closed,
}

/// What became of a frame handed to [`Conn::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Written to the socket, or queued behind earlier frames.
    Accepted,
    /// The connection is closing or closed; the frame was discarded.
    Dropped,
    /// The frame overflowed the queue: the client is being closed as a slow consumer.
    Overflow,
}

/// Progress of [`Conn::flush`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued is written.
    Done,
    /// The kernel buffer is full; wait for writability and flush again.
    Blocked,
    /// The socket failed.
    Broken,
}

impl Conn {
    pub fn new(
        id: ConnId,
        stream: TcpStream,
        max_queued_bytes: usize,
        metrics: Arc<GatewayMetrics>,
    ) -> Self {
        let now = crate::time::mono_millis();
        Self {
            id,
            stream,
            out: Mutex::new(Outbound {
                queue: VecDeque::new(),
                queued_bytes: 0,
                head_partial: false,
                state: OutState::Open,
            }),
            wake: Wake::default(),
            max_queued_bytes,
            metrics,
            heartbeat: Heartbeat {
                last_seen: AtomicU64::new(now),
                last_ping: AtomicU64::new(now),
                ..Heartbeat::default()
            },
            work: AtomicBool::new(false),
        }
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The socket, for readiness and reads by the session task.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Ready when the connection has output to drain or a state change (once
    /// per wake-up; a wake-up before the poll is kept).
    pub fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.wake.poll(cx)
    }

    fn lock(&self) -> MutexGuard<'_, Outbound> {
        // A panic while holding this lock leaves the queue consistent (every
        // mutation is a single step), so a poisoned lock is still usable.
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends an encoded frame: written now if nothing is queued, queued
    /// otherwise. Counts its bytes in `switchboard_bytes_sent_total`.
    pub fn send(&self, frame: Bytes) -> Sent {
        let len = frame.len() as u64;
        let sent = self.send_uncounted(frame);
        if sent == Sent::Accepted {
            self.metrics.bytes_out.inc_by(len);
        }
        sent
    }

    /// [`Conn::send`] without touching the shared byte counter: the fan-out
    /// shard counts a whole batch at once instead of contending on it per client.
    pub fn send_uncounted(&self, frame: Bytes) -> Sent {
        let mut out = self.lock();
        if out.state != OutState::Open {
            return Sent::Dropped;
        }
        let frame = if out.queue.is_empty() {
            match self.stream.try_write(&frame) {
                Ok(n) if n == frame.len() => return Sent::Accepted,
                Ok(n) => {
                    out.head_partial = n > 0;
                    frame.slice(n..)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => frame,
                Err(_) => {
                    out.state = OutState::Closed;
                    drop(out);
                    self.wake.notify();
                    return Sent::Dropped;
                }
            }
        } else {
            frame
        };
        out.queued_bytes += frame.len();
        out.queue.push_back(frame);
        let overflow = out.queued_bytes > self.max_queued_bytes;
        if overflow {
            Self::start_close(&mut out, CloseCode::SlowConsumer);
        }
        drop(out);
        self.wake.notify();
        if overflow {
            Sent::Overflow
        } else {
            Sent::Accepted
        }
    }

    /// Sends a text frame.
    pub fn send_text(&self, text: &str) -> Sent {
        self.send(frame::text(text))
    }

    /// Begins the closing handshake: drops what is queued (except the rest of a
    /// frame already begun), queues a close frame, accepts nothing more.
    /// Returns false if the connection was already closing.
    pub fn close(&self, code: CloseCode) -> bool {
        let mut out = self.lock();
        if out.state != OutState::Open {
            return false;
        }
        Self::start_close(&mut out, code);
        drop(out);
        self.wake.notify();
        true
    }

    fn start_close(out: &mut Outbound, code: CloseCode) {
        let keep = usize::from(out.head_partial).min(out.queue.len());
        out.queue.truncate(keep);
        out.queued_bytes = out.queue.iter().map(Bytes::len).sum();
        let close = frame::close(code.code(), code.reason());
        out.queued_bytes += close.len();
        out.queue.push_back(close);
        out.state = OutState::Closing(code);
    }

    /// Tells the connection's task that work waits for it elsewhere (what, the
    /// layer above knows: e.g. subscriptions to restart) and wakes it.
    pub fn flag_work(&self) {
        self.work.store(true, Ordering::Release);
        self.wake.notify();
    }

    /// Whether work was flagged since the last call (and clears the flag).
    pub fn take_work(&self) -> bool {
        self.work.swap(false, Ordering::AcqRel)
    }

    /// Marks the socket finished: nothing more will be written.
    pub fn mark_closed(&self) {
        self.lock().state = OutState::Closed;
        self.wake.notify();
    }

    /// The connection's state.
    pub fn state(&self) -> OutState {
        self.lock().state
    }

    /// Whether anything waits in the queue.
    pub fn has_queued(&self) -> bool {
        !self.lock().queue.is_empty()
    }

    /// Writes as much of the queue as the kernel takes, without blocking.
    pub fn flush(&self) -> Flush {
        let mut out = self.lock();
        while !out.queue.is_empty() {
            if out.state == OutState::Closed {
                return Flush::Broken;
            }
            let slices: Vec<IoSlice<'_>> = out
                .queue
                .iter()
                .take(MAX_IOVECS)
                .map(|b| IoSlice::new(b))
                .collect();
            let written = match self.stream.try_write_vectored(&slices) {
                Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                other => other,
            };
            drop(slices);
            match written {
                Ok(mut n) => {
                    out.queued_bytes -= n;
                    while n > 0 {
                        let Some(head) = out.queue.front_mut() else {
                            break;
                        };
                        if n >= head.len() {
                            n -= head.len();
                            out.queue.pop_front();
                            out.head_partial = false;
                        } else {
                            *head = head.slice(n..);
                            out.head_partial = true;
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flush::Blocked,
                Err(_) => {
                    out.state = OutState::Closed;
                    return Flush::Broken;
                }
            }
        }
        Flush::Done
    }

    /// Records that the client sent something now.
    pub fn touch(&self) {
        self.heartbeat
            .last_seen
            .store(crate::time::mono_millis(), Ordering::Relaxed);
    }

    /// When the client last sent a frame (monotonic milliseconds).
    pub fn last_seen(&self) -> u64 {
        self.heartbeat.last_seen.load(Ordering::Relaxed)
    }

    /// Records a ping sent now; it awaits a pong unless one is already awaited.
    pub fn ping_sent(&self, now: u64) {
        self.heartbeat.last_ping.store(now, Ordering::Relaxed);
        let _ = self.heartbeat.awaiting_pong_since.compare_exchange(
            0,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// When the last ping was sent (monotonic milliseconds, 0 = never).
    /// Sets the moment (monotonic milliseconds) the first ping interval
    /// counts from.
    pub fn start_ping_clock(&self, at: u64) {
        self.heartbeat.last_ping.store(at, Ordering::Relaxed);
    }

    pub fn last_ping(&self) -> u64 {
        self.heartbeat.last_ping.load(Ordering::Relaxed)
    }

    /// Since when a pong is awaited (monotonic milliseconds, 0 = none).
    pub fn awaiting_pong_since(&self) -> u64 {
        self.heartbeat.awaiting_pong_since.load(Ordering::Relaxed)
    }

    /// Records a pong from the client.
    pub fn pong_received(&self) {
        self.heartbeat
            .awaiting_pong_since
            .store(0, Ordering::Relaxed);
    }

    /// Sets the token expiry (Unix seconds; 0 = none) and forgets any expiry notice.
    pub fn set_expiry(&self, unix_secs: u64) {
        self.heartbeat
            .expires_at
            .store(unix_secs, Ordering::Relaxed);
        self.heartbeat
            .expiry_notified_at
            .store(0, Ordering::Relaxed);
    }

    /// The token expiry (Unix seconds; 0 = none).
    pub fn expires_at(&self) -> u64 {
        self.heartbeat.expires_at.load(Ordering::Relaxed)
    }

    /// When the client was told its token expired (monotonic milliseconds, 0 = not yet).
    pub fn expiry_notified_at(&self) -> u64 {
        self.heartbeat.expiry_notified_at.load(Ordering::Relaxed)
    }

    /// Records that the client was told its token expired.
    pub fn expiry_notified(&self, now: u64) {
        self.heartbeat
            .expiry_notified_at
            .store(now, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("id", &self.id).finish()
    }
}
