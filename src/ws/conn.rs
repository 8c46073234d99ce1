//! One client socket's outbound side: non-blocking writes of shared frames and a
//! bounded queue for what the kernel did not take.
//!
//! Any task may call [`Conn::send`]: the fan-out shard writes a broadcast frame
//! straight into the socket (no task wake-up per client), the connection task
//! writes its replies. When the kernel buffer is full the rest is queued, and the
//! connection task, woken once, waits for the socket to become writable and drains
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

/// The outbound side of one client connection, shared by the connection task and
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

/// Wakes the connection task. A flag and the one waker of its one task: no
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

    /// The socket, for readiness and reads by the connection task.
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

    /// How many buffers wait in the queue (each `send` that queued adds one):
    /// lets tests see how many writes a batch took.
    #[cfg(test)]
    pub(crate) fn queued_buffers(&self) -> usize {
        self.lock().queue.len()
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

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;
    use crate::ws::test_support::{Seen, conn_pair, small_conn_pair};

    /// A text frame of about `len` bytes whose text starts with its number.
    fn numbered(i: usize, len: usize) -> Bytes {
        let mut text = format!("{i}:");
        text.extend(std::iter::repeat_n('x', len.saturating_sub(text.len())));
        frame::text(&text)
    }

    fn number_of(seen: &Seen) -> usize {
        match seen {
            Seen::Text(t) => t
                .split(':')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a numbered frame: {t:.20}")),
            other => panic!("expected a numbered text frame, got {other:?}"),
        }
    }

    fn woken(conn: &Conn) -> bool {
        conn.poll_woken(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    fn queue_is_consistent(conn: &Conn) {
        let out = conn.lock();
        assert_eq!(
            out.queued_bytes,
            out.queue.iter().map(Bytes::len).sum::<usize>(),
            "queued_bytes matches the queue"
        );
    }

    #[tokio::test]
    async fn a_frame_the_kernel_takes_is_written_at_once_without_a_wake_up() {
        let (conn, mut peer) = conn_pair(1, 1 << 20).await;
        assert_eq!(conn.send_text("hello"), Sent::Accepted);
        assert!(!conn.has_queued());
        assert!(!woken(&conn), "nothing for the connection's task to do");
        assert_eq!(conn.send_text("end"), Sent::Accepted);
        assert_eq!(peer.until("end").await, vec![Seen::Text("hello".into())]);
    }

    #[tokio::test]
    async fn what_the_kernel_refuses_is_queued_and_flushed_whole_and_in_order() {
        let (conn, mut peer) = small_conn_pair(1, 4 << 20).await;
        let count = 500;
        let mut first_queued = None;
        for i in 0..count {
            assert_eq!(conn.send(numbered(i, 1000)), Sent::Accepted, "frame {i}");
            if first_queued.is_none() && conn.has_queued() {
                first_queued = Some(i);
                assert!(woken(&conn), "queuing wakes the connection's task");
            }
        }
        let first_queued = first_queued.expect("500 KB do not fit in the kernel buffers");
        assert!(first_queued < count - 1, "later frames queue behind it");
        assert_eq!(
            conn.queued_buffers(),
            count - first_queued,
            "each frame after the first queued one queues whole, without a write"
        );
        queue_is_consistent(&conn);
        // The client reads while the queue is flushed: partial writes resume
        // where they stopped, frame boundaries intact.
        for i in 0..count {
            let seen = peer.frame_flushing(&conn).await;
            assert_eq!(number_of(&seen), i);
            let Seen::Text(t) = seen else { unreachable!() };
            assert_eq!(t.len(), 1000, "frame {i} arrived whole");
        }
        assert_eq!(conn.flush(), Flush::Done);
        assert!(!conn.has_queued());
        queue_is_consistent(&conn);
        assert_eq!(conn.lock().queued_bytes, 0);
        assert!(!conn.lock().head_partial);
    }

    #[tokio::test]
    async fn overflow_closes_with_4000_drops_the_queue_and_queues_a_close_frame() {
        let limit = 50_000;
        let (conn, mut peer) = small_conn_pair(7, limit).await;
        let mut first_queued = None;
        let mut overflowed_at = None;
        let mut queued_before = 0;
        for i in 0..10_000 {
            queued_before = conn.lock().queued_bytes;
            match conn.send(numbered(i, 2000)) {
                Sent::Accepted => {
                    if first_queued.is_none() && conn.has_queued() {
                        first_queued = Some((i, conn.lock().head_partial));
                    }
                }
                Sent::Overflow => {
                    overflowed_at = Some(i);
                    break;
                }
                Sent::Dropped => panic!("frame {i} dropped before any overflow"),
            }
        }
        let (first_queued, partial) = first_queued.expect("the kernel buffers filled up");
        let overflowed_at = overflowed_at.expect("the queue overflowed");
        assert!(
            queued_before <= limit && queued_before + 2000 > limit,
            "the frame that passed the limit overflowed ({queued_before} bytes queued before it)"
        );
        assert!(overflowed_at > first_queued);
        assert_eq!(conn.state(), OutState::Closing(CloseCode::SlowConsumer));
        {
            let out = conn.lock();
            // What was queued is gone, except the rest of a frame already begun.
            let close = frame::close(4000, CloseCode::SlowConsumer.reason());
            assert_eq!(
                out.queue.back(),
                Some(&close),
                "a close frame is queued last"
            );
            assert_eq!(out.queue.len(), 1 + usize::from(partial));
            assert!(
                out.queued_bytes <= limit,
                "the dropped frames are not counted"
            );
        }
        queue_is_consistent(&conn);
        assert_eq!(
            conn.send(numbered(0, 10)),
            Sent::Dropped,
            "nothing more accepted"
        );
        assert!(!conn.close(CloseCode::IdleTimeout), "already closing");

        // The client gets every frame written before the queue formed (and the
        // one begun), then the close frame: nothing that was dropped.
        let last_sent = if partial {
            first_queued
        } else {
            first_queued - 1
        };
        for i in 0..=last_sent {
            assert_eq!(number_of(&peer.frame_flushing(&conn).await), i);
        }
        assert_eq!(peer.frame_flushing(&conn).await, Seen::Close(Some(4000)));
        assert_eq!(conn.flush(), Flush::Done);
        drop(conn);
        peer.assert_ends().await;
    }

    #[tokio::test]
    async fn a_frame_begun_on_the_wire_is_finished_before_the_close_frame() {
        let big = frame::encode(frame::OpCode::Binary, &vec![7; 256 << 10]);
        let limit = big.len() + 50_000;
        let (conn, mut peer) = small_conn_pair(8, limit).await;
        assert_eq!(conn.send(big), Sent::Accepted);
        assert!(
            conn.lock().head_partial,
            "256 KiB do not fit in the kernel buffers: its start is written, the rest queued"
        );
        let mut sent = 0;
        while conn.send(numbered(sent, 2000)) == Sent::Accepted {
            sent += 1;
            assert!(sent < 1000, "the queue overflows");
        }
        assert_eq!(conn.state(), OutState::Closing(CloseCode::SlowConsumer));
        assert_eq!(
            conn.lock().queue.len(),
            2,
            "the big frame's rest and the close frame"
        );
        queue_is_consistent(&conn);
        // Cutting the frame short would corrupt the stream (and the decoder
        // would say so); dropping the small frames keeps it whole.
        assert_eq!(peer.frame_flushing(&conn).await, Seen::Binary(256 << 10));
        assert_eq!(peer.frame_flushing(&conn).await, Seen::Close(Some(4000)));
        drop(conn);
        peer.assert_ends().await;
    }

    #[tokio::test]
    async fn close_queues_the_close_frame_for_the_connections_task() {
        let (conn, mut peer) = conn_pair(2, 1 << 20).await;
        assert!(conn.close(CloseCode::IdleTimeout));
        assert_eq!(conn.state(), OutState::Closing(CloseCode::IdleTimeout));
        assert!(conn.has_queued(), "written by the connection's task");
        assert!(woken(&conn));
        assert_eq!(conn.send_text("late"), Sent::Dropped);
        assert_eq!(conn.flush(), Flush::Done);
        assert_eq!(peer.frame().await, Seen::Close(Some(4003)));
        drop(conn);
        peer.assert_ends().await;
    }

    #[tokio::test]
    async fn a_broken_socket_drops_frames_and_wakes_the_task() {
        let (conn, peer) = conn_pair(3, 1 << 20).await;
        peer.hang_up();
        // The first writes may still be taken by the kernel; the peer's reset
        // then fails a later one.
        let mut dropped = false;
        for _ in 0..1000 {
            if conn.send_text("into the void") == Sent::Dropped {
                dropped = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(dropped, "a write to a reset socket fails");
        assert_eq!(conn.state(), OutState::Closed);
        assert!(woken(&conn), "the connection's task learns of it");
        assert_eq!(conn.send_text("again"), Sent::Dropped);
        assert!(!conn.close(CloseCode::Normal));
    }

    #[tokio::test]
    async fn flush_of_a_queue_on_a_closed_connection_is_broken() {
        let (conn, _peer) = small_conn_pair(4, 1 << 20).await;
        let mut i = 0;
        while !conn.has_queued() {
            assert_eq!(conn.send(numbered(i, 1000)), Sent::Accepted);
            i += 1;
            assert!(i < 10_000, "the kernel buffers filled up");
        }
        conn.mark_closed();
        assert_eq!(conn.flush(), Flush::Broken);
        assert_eq!(conn.send_text("x"), Sent::Dropped);
    }

    #[tokio::test]
    async fn heartbeat_bookkeeping() {
        let (conn, _peer) = conn_pair(5, 1 << 20).await;
        assert!(conn.last_seen() > 0 && conn.last_ping() > 0);
        assert_eq!(conn.awaiting_pong_since(), 0);
        conn.ping_sent(100);
        conn.ping_sent(200);
        assert_eq!(conn.last_ping(), 200);
        assert_eq!(
            conn.awaiting_pong_since(),
            100,
            "the oldest unanswered ping counts"
        );
        conn.pong_received();
        assert_eq!(conn.awaiting_pong_since(), 0);
        conn.set_expiry(1_000);
        conn.expiry_notified(300);
        assert_eq!(conn.expiry_notified_at(), 300);
        conn.set_expiry(2_000);
        assert_eq!(conn.expires_at(), 2_000);
        assert_eq!(
            conn.expiry_notified_at(),
            0,
            "a new token forgets the notice"
        );
        assert!(!conn.take_work());
        conn.flag_work();
        assert!(woken(&conn));
        assert!(conn.take_work());
        assert!(!conn.take_work(), "taken once");
    }
}
