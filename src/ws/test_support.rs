//! Unit-test support for the layers that write to sockets (`ws::conn`, the
//! hub's shards and timing wheel): a [`Conn`] on a real loopback TCP socket, and
//! the client's end of that socket, which reads the server's frames back with
//! this crate's own frame decoder.
//!
//! The decoder reads client frames, which are masked; a server frame is the
//! same frame unmasked. [`Peer`] therefore gives each server frame a zero mask
//! (which leaves the payload as it is) and decodes it with
//! [`frame::Decoder`], so what a test sees went through the same checks as
//! any frame the gateway reads (opcode, lengths, UTF-8, close codes).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::conn::{Conn, ConnId, Flush};
use super::frame::{DecodeLimits, Decoder, Incoming};
use crate::metrics::{GatewayMetrics, MetricsRegistry};

/// How long a read waits before the test fails instead of hanging: a guard
/// against a bug that sends nothing, never a measure of speed.
const HANG_GUARD: Duration = Duration::from_secs(10);

/// Kernel send buffer size asked for by [`small_socket_pair`] (the kernel
/// doubles it and applies its minimum).
const SMALL_BUFFER: u32 = 4096;

/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 64 * 1024;

/// A fresh metrics registry for one test.
pub(crate) fn metrics() -> Arc<GatewayMetrics> {
    Arc::new(GatewayMetrics::register(&MetricsRegistry::new()))
}

/// A connected loopback TCP pair: (the server's end, the client's end).
pub(crate) async fn socket_pair() -> (TcpStream, TcpStream) {
    pair(None).await
}

/// A loopback pair with a small kernel send buffer on the server's side, so
/// that writes of a few hundred KiB that the client does not read end partial
/// (and the rest queues in the `Conn`).
pub(crate) async fn small_socket_pair() -> (TcpStream, TcpStream) {
    pair(Some(SMALL_BUFFER)).await
}

async fn pair(send_buffer: Option<u32>) -> (TcpStream, TcpStream) {
    let listener = TcpSocket::new_v4().expect("socket");
    if let Some(size) = send_buffer {
        // Accepted sockets inherit the listener's buffer sizes.
        listener.set_send_buffer_size(size).expect("SO_SNDBUF");
    }
    listener
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let listener: TcpListener = listener.listen(16).expect("listen");
    let addr = listener.local_addr().expect("local address");
    // The client's receive buffer keeps its default: one smaller than the
    // loopback MSS (64 KiB) makes Linux advertise a zero window, and the data
    // then trickles through zero-window probes.
    let client = TcpSocket::new_v4().expect("socket");
    let (client, accepted) = tokio::join!(client.connect(addr), listener.accept());
    let client = client.expect("connect");
    let (server, _) = accepted.expect("accept");
    // As the gateway's accept loop does (and small writes are not held back).
    server.set_nodelay(true).expect("TCP_NODELAY");
    client.set_nodelay(true).expect("TCP_NODELAY");
    (server, client)
}

/// A [`Conn`] over a loopback socket, with the client's end.
pub(crate) async fn conn_pair(id: ConnId, max_queued_bytes: usize) -> (Arc<Conn>, Peer) {
    let (server, client) = socket_pair().await;
    (
        Arc::new(Conn::new(id, server, max_queued_bytes, metrics())),
        Peer::new(client),
    )
}

/// Like [`conn_pair`], over a [`small_socket_pair`].
pub(crate) async fn small_conn_pair(id: ConnId, max_queued_bytes: usize) -> (Arc<Conn>, Peer) {
    let (server, client) = small_socket_pair().await;
    (
        Arc::new(Conn::new(id, server, max_queued_bytes, metrics())),
        Peer::new(client),
    )
}

/// The client's end of a test connection.
pub(crate) struct Peer {
    stream: TcpStream,
    raw: BytesMut,
    decoder: Decoder,
}

/// A decoded server frame, as a test compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    Text(String),
    Binary(usize),
    Ping,
    Pong,
    Close(Option<u16>),
}

impl From<Incoming> for Seen {
    fn from(frame: Incoming) -> Self {
        match frame {
            Incoming::Text(t) => Self::Text(String::from_utf8_lossy(&t).into_owned()),
            Incoming::Binary(b) => Self::Binary(b.len()),
            Incoming::Ping(_) => Self::Ping,
            Incoming::Pong(_) => Self::Pong,
            Incoming::Close(code) => Self::Close(code),
        }
    }
}

impl Peer {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            raw: BytesMut::new(),
            decoder: Decoder::new(DecodeLimits {
                max_frame: 64 << 20,
                max_message: 64 << 20,
            }),
        }
    }

    /// The next frame the server wrote (waits for it).
    pub(crate) async fn frame(&mut self) -> Seen {
        loop {
            if let Some(frame) = self.decode_one() {
                return frame;
            }
            self.raw.reserve(READ_CHUNK);
            let read = tokio::time::timeout(HANG_GUARD, self.stream.read_buf(&mut self.raw))
                .await
                .expect("the server sent no (complete) frame");
            assert!(
                read.expect("read") > 0,
                "the server closed the socket mid-frame or before the frame"
            );
        }
    }

    /// Every frame up to the text frame `marker` (not included).
    pub(crate) async fn until(&mut self, marker: &str) -> Vec<Seen> {
        let mut seen = Vec::new();
        loop {
            match self.frame().await {
                Seen::Text(t) if t == marker => return seen,
                other => seen.push(other),
            }
        }
    }

    /// The next frame while the server's `conn` is flushed, for a test that
    /// queued more than the kernel buffers hold: as the connection's task
    /// does, the queue is flushed whenever the server's socket is writable.
    pub(crate) async fn frame_flushing(&mut self, conn: &Conn) -> Seen {
        loop {
            if let Some(frame) = self.decode_one() {
                return frame;
            }
            let flushed = conn.flush();
            assert_ne!(flushed, Flush::Broken, "the server's socket broke");
            self.raw.reserve(READ_CHUNK);
            let progress = async {
                tokio::select! {
                    read = self.stream.read_buf(&mut self.raw) => {
                        assert!(read.expect("read") > 0, "the server closed the socket");
                    }
                    writable = conn.stream().writable(), if flushed == Flush::Blocked => {
                        writable.expect("writable");
                    }
                }
            };
            tokio::time::timeout(HANG_GUARD, progress)
                .await
                .expect("the server sent no (complete) frame");
        }
    }

    /// Asserts that the server wrote nothing more before it closed the socket.
    pub(crate) async fn assert_ends(mut self) {
        loop {
            if let Some(frame) = self.decode_one() {
                panic!("a frame after the end: {frame:?}");
            }
            self.raw.reserve(READ_CHUNK);
            let read = tokio::time::timeout(HANG_GUARD, self.stream.read_buf(&mut self.raw))
                .await
                .expect("the server did not close the socket");
            if read.expect("read") == 0 {
                assert!(self.raw.is_empty(), "a partial frame at the end");
                return;
            }
        }
    }

    /// Drops the client's end: the server's next writes fail.
    pub(crate) fn hang_up(self) {
        drop(self.stream);
    }

    /// One complete server frame off the front of the buffer, if there is one.
    fn decode_one(&mut self) -> Option<Seen> {
        let (header, payload) = server_frame_len(&self.raw)?;
        if self.raw.len() < header + payload {
            return None;
        }
        // The same frame with the mask bit set and a zero mask key.
        let mut masked = BytesMut::with_capacity(header + 4 + payload);
        masked.extend_from_slice(&[self.raw[0], self.raw[1] | 0x80]);
        masked.extend_from_slice(&self.raw[2..header]);
        masked.extend_from_slice(&[0; 4]);
        masked.extend_from_slice(&self.raw[header..header + payload]);
        self.raw.advance(header + payload);
        let decoded = self
            .decoder
            .decode(&mut masked)
            .expect("the server wrote a malformed frame");
        assert!(masked.is_empty(), "one frame decoded at a time");
        // The server never fragments: every frame is a whole message.
        Some(decoded.expect("a server frame is a whole message").into())
    }
}

/// The header and payload lengths of the unmasked frame at the front of `raw`,
/// once its header is complete.
fn server_frame_len(raw: &[u8]) -> Option<(usize, usize)> {
    let &[_, b1, ..] = raw else { return None };
    assert_eq!(b1 & 0x80, 0, "server frames are never masked");
    let (header, payload) = match b1 & 0x7F {
        126 => (
            4,
            u64::from(u16::from_be_bytes([*raw.get(2)?, *raw.get(3)?])),
        ),
        127 => {
            let bytes: [u8; 8] = raw.get(2..10)?.try_into().ok()?;
            (10, u64::from_be_bytes(bytes))
        }
        n => (2, u64::from(n)),
    };
    Some((header, usize::try_from(payload).expect("payload length")))
}
