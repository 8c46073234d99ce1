//! One client connection, from the upgrade to the close: the loop every
//! dialect shares.
//!
//! The connection task reads and decodes the client's frames, hands text
//! frames to the connection's dialect ([`super::dialect`]), restarts
//! subscriptions the hub asks it to resync, drains the outbound queue when the
//! kernel buffer was full, and performs the closing handshake. Broadcast
//! messages do not pass through it: the connection's fan-out shard writes them
//! directly. While a client is idle the task holds no buffer at all.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::BytesMut;

use super::Gateway;
use super::core::Core;
use super::dialect::AnyDialect;
use super::registry::NewConn;
use super::route::Route;
use crate::auth::Identity;
use crate::protocol::{CloseCode, ErrorCode};
use crate::ws::conn::{Conn, Flush, OutState};
use crate::ws::frame::{self, Decoder, Incoming, OpCode};

/// How a connection ended, for logs and `switchboard_disconnects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The gateway closed it with this code.
    Closed(CloseCode),
    /// The client closed it.
    ClientClosed,
    /// The socket failed or ended without a closing handshake.
    Lost,
}

impl Ending {
    fn label(self) -> &'static str {
        match self {
            Self::Closed(code) => code.label(),
            Self::ClientClosed => "client",
            Self::Lost => "lost",
        }
    }
}

/// What an accepted upgrade starts its connection with (the socket aside).
pub(crate) struct ConnectionStart {
    pub gw: Arc<Gateway>,
    pub route: Route,
    pub identity: Identity,
    pub remote: Option<SocketAddr>,
    /// The connection negotiated permessage-deflate.
    pub deflate: bool,
}

pub(crate) struct Connection {
    core: Core,
    dialect: AnyDialect,
    decoder: Decoder,
    /// Empty (no allocation) whenever no frame is partly received.
    rbuf: BytesMut,
    /// The client sent its close frame.
    client_closed: bool,
    /// The close was the client's initiative.
    client_initiated: bool,
    remote: Option<SocketAddr>,
}

impl Connection {
    pub(crate) fn new(start: ConnectionStart, conn: Arc<Conn>) -> Self {
        let ConnectionStart {
            gw,
            route,
            identity,
            remote,
            deflate,
        } = start;
        let limits = &gw.config.limits;
        let decoder = Decoder::new(frame::DecodeLimits {
            max_frame: limits.max_frame_bytes,
            max_message: limits.max_message_bytes,
        })
        .with_deflate(deflate);
        let kind = route.kind();
        Self {
            core: Core::new(gw, conn, kind, identity, deflate),
            dialect: AnyDialect::for_route(route),
            decoder,
            rbuf: BytesMut::new(),
            client_closed: false,
            client_initiated: false,
            remote,
        }
    }

    /// Serves the connection to its end. The connection is boxed: an async
    /// fn keeps its argument twice in its state, and this state is what every
    /// connected client costs.
    pub(crate) async fn run(mut self: Box<Self>) {
        let route = self.core.kind.label();
        let gw = self.core.gw.clone();
        let conn = self.core.conn.clone();
        let metrics = gw.metrics.clone();
        let auth = self.core.identity.auth_kind().label();
        metrics.connections.with_label_values(&[route, auth]).inc();
        metrics
            .connections_opened
            .with_label_values(&[route, auth])
            .inc();
        tracing::debug!(connection = %self.core.connection_id, route, user = ?self.core.identity.user, "connected");
        let new = NewConn {
            user: self.core.identity.user.clone(),
            route,
            remote: self.remote,
            admin: self.core.identity.is_admin(),
            auth: self.core.identity.auth_kind().label(),
        };
        let change = gw.registry.insert(conn.clone(), new);
        gw.presence.record(change);
        conn.set_expiry(self.core.identity.expires_at.unwrap_or(0));
        let profile = self.core.kind.heartbeat_profile();
        Box::pin(gw.hub.watch(&conn, self.core.shard, profile)).await;

        let ending = self.serve().await;

        self.core.end_all().await;
        gw.hub.forget_connection(conn.id());
        let change = gw.registry.remove(conn.id());
        gw.presence.record(change);
        conn.mark_closed();
        let _ = socket2::SockRef::from(conn.stream()).shutdown(std::net::Shutdown::Both);
        metrics.connections.with_label_values(&[route, auth]).dec();
        metrics
            .disconnects
            .with_label_values(&[ending.label()])
            .inc();
        tracing::debug!(connection = %self.core.connection_id, ending = ending.label(), "disconnected");
    }

    async fn serve(&mut self) -> Ending {
        // Rarely-taken paths are boxed: the task's size is the size of its
        // largest state, and an idle client should cost only the select below.
        Box::pin(self.dialect.open(&mut self.core)).await;
        let drain = drain_signal(self.core.gw.clone(), self.core.conn.id());
        tokio::pin!(drain);
        let mut drained = false;
        // Armed once the close is sent; boxed: most connections never close
        // from this side, and the task's size is what an idle client costs.
        let mut close_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            for channel in self.core.gw.hub.take_resyncs(&self.core.conn) {
                Box::pin(self.dialect.resync(&mut self.core, channel)).await;
            }
            if self.core.conn.flush() == Flush::Broken {
                return Ending::Lost;
            }
            match self.core.conn.state() {
                OutState::Closed => return Ending::Lost,
                OutState::Closing(code) => {
                    let sent = !self.core.conn.has_queued();
                    if sent && self.client_closed {
                        return self.ending(code);
                    }
                    if close_timer.is_none() {
                        close_timer = Some(Box::pin(tokio::time::sleep(
                            self.core.gw.config.timeouts.close_timeout,
                        )));
                    }
                }
                OutState::Open => {}
            }
            let want_write = self.core.conn.has_queued();
            // Readiness is polled in place (no readiness future per branch):
            // the socket keeps the task's waker itself.
            let conn = &self.core.conn;
            tokio::select! {
                _ = &mut drain, if !drained => {
                    drained = true;
                    self.core.conn.close(CloseCode::GoingAway);
                }
                _ = poll_fn(|cx| conn.poll_woken(cx)) => {}
                ready = poll_fn(|cx| conn.stream().poll_read_ready(cx)) => {
                    if ready.is_err() {
                        return Ending::Lost;
                    }
                    if let Some(ending) = self.read().await {
                        return ending;
                    }
                }
                _ = poll_fn(|cx| conn.stream().poll_write_ready(cx)), if want_write => {}
                _ = poll_fn(|cx| match close_timer.as_mut() {
                    Some(timer) => timer.as_mut().poll(cx),
                    None => Poll::Pending,
                }), if close_timer.is_some() => {
                    return match self.core.conn.state() {
                        OutState::Closing(code) => self.ending(code),
                        _ => Ending::Lost,
                    };
                }
            }
        }
    }

    fn ending(&self, code: CloseCode) -> Ending {
        if self.client_initiated {
            Ending::ClientClosed
        } else {
            Ending::Closed(code)
        }
    }

    /// Reads what the socket has and handles every complete frame.
    async fn read(&mut self) -> Option<Ending> {
        let conn = self.core.conn.clone();
        self.rbuf
            .reserve(self.core.gw.config.limits.read_chunk_bytes);
        match conn.stream().try_read_buf(&mut self.rbuf) {
            Ok(0) => {
                return Some(match conn.state() {
                    OutState::Closing(code) => self.ending(code),
                    _ => Ending::Lost,
                });
            }
            Ok(n) => self.core.gw.metrics.client_bytes.inc_by(n as u64),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Some(Ending::Lost),
        }
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(incoming)) => Box::pin(self.on_frame(incoming)).await,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(connection = %self.core.connection_id, error = %e, "bad frame");
                    self.rbuf.clear();
                    conn.close(CloseCode::from_frame_error(e.close_code()));
                    break;
                }
            }
        }
        if self.rbuf.is_empty() && !self.decoder.in_message() {
            // Give the buffer back: an idle client costs no read buffer.
            self.rbuf = BytesMut::new();
        }
        None
    }

    async fn on_frame(&mut self, incoming: Incoming) {
        let conn = self.core.conn.clone();
        conn.touch();
        self.core.gw.metrics.client_messages.inc();
        let open = conn.state() == OutState::Open;
        match incoming {
            Incoming::Close(_) => {
                self.client_closed = true;
                if open {
                    self.client_initiated = true;
                    conn.close(CloseCode::Normal);
                }
            }
            Incoming::Pong(_) => conn.pong_received(),
            _ if !open => {}
            Incoming::Ping(payload) => {
                if self.core.admit() {
                    conn.send(frame::encode(OpCode::Pong, &payload));
                }
            }
            Incoming::Binary(_) => {
                if self.core.admit() {
                    self.core.send_error(
                        ErrorCode::BinaryNotSupported,
                        "binary frames are not supported: send JSON as text frames",
                        None,
                        None,
                    );
                }
            }
            Incoming::Text(text) => self.dialect.on_text(&mut self.core, text).await,
        }
    }
}

/// Resolves when this connection's turn to close comes during a drain: the
/// replica's clients are closed evenly over the drain window.
async fn drain_signal(gw: Arc<Gateway>, conn_id: u64) {
    gw.shutdown.cancelled().await;
    let fraction = crate::time::spread(conn_id);
    tokio::time::sleep(gw.config.drain.window.mul_f64(fraction)).await;
}
