//! One client connection, from the upgrade to the close.
//!
//! The session task reads and decodes the client's frames, answers requests,
//! starts and ends subscriptions, drains the outbound queue when the kernel
//! buffer was full, and performs the closing handshake. Broadcast messages do
//! not pass through it: the connection's fan-out shard writes them directly.
//! While a client is idle the task holds no buffer at all.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use super::Gateway;
use super::recovery;
use super::registry::NewConn;
use super::sessions;
use crate::auth::Identity;
use crate::channel::ChannelName;
use crate::filter::Filter;
use crate::hub::{Delivery, FrameKind, Mode};
use crate::protocol::{ClientMessage, CloseCode, ErrorCode, RequestId, Since, server};
use crate::ws::conn::{Conn, Flush, OutState};
use crate::ws::frame::{self, Decoder, Incoming, OpCode};

/// Which protocol a connection speaks.
#[derive(Debug, Clone)]
pub enum Route {
    /// `/ws`: the native JSON protocol.
    Native,
    /// `/ws/{channel}`: the channel's snapshot at once, then each new message,
    /// as bare JSON (the ARK dashboards of seed 000).
    Snapshot(ChannelName),
    /// `/api/ws/{channel}`: the channel's messages as published (seed 002).
    Relay(ChannelName),
}

impl Route {
    /// Label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Snapshot(_) => "snapshot",
            Self::Relay(_) => "relay",
        }
    }
}

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

/// What an accepted upgrade starts its session with (the socket aside).
pub(crate) struct SessionStart {
    pub gw: Arc<Gateway>,
    pub route: Route,
    pub identity: Identity,
    pub remote: Option<SocketAddr>,
    /// The session id asked for with `?session=` (native route).
    pub resume: Option<String>,
}

pub(crate) struct Session {
    gw: Arc<Gateway>,
    conn: Arc<Conn>,
    shard: usize,
    route: Route,
    identity: Identity,
    connection_id: String,
    subscriptions: HashMap<ChannelName, Mode>,
    decoder: Decoder,
    /// Empty (no allocation) whenever no frame is partly received.
    rbuf: BytesMut,
    /// The client sent its close frame.
    client_closed: bool,
    /// The close was the client's initiative.
    client_initiated: bool,
    remote: Option<SocketAddr>,
    rate: RateLimit,
    /// The session id asked for with `?session=` (native route).
    resume: Option<String>,
    /// This connection's session id (native route), once greeted.
    session_id: Option<String>,
}

/// Token bucket on what a client sends (data frames and pings).
struct RateLimit {
    tokens: f64,
    last: Instant,
    per_second: f64,
    burst: f64,
    /// Consecutive refused messages.
    strikes: u32,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    /// Refused; `notify` on the first refusal of a run.
    Refuse {
        notify: bool,
    },
    /// Refused more times in a row than the burst allows: abuse.
    Abuse,
}

impl RateLimit {
    fn new(per_second: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            last: Instant::now(),
            per_second: f64::from(per_second),
            burst: f64::from(burst),
            strikes: 0,
        }
    }

    fn check(&mut self) -> Verdict {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            return Verdict::Pass;
        }
        self.strikes += 1;
        if f64::from(self.strikes) > self.burst {
            Verdict::Abuse
        } else {
            Verdict::Refuse {
                notify: self.strikes == 1,
            }
        }
    }
}

impl Session {
    pub(crate) fn new(start: SessionStart, conn: Arc<Conn>) -> Self {
        let SessionStart {
            gw,
            route,
            identity,
            remote,
            resume,
        } = start;
        let shard = gw.hub.assign_shard();
        let connection_id = format!("{}-{}", gw.config.replica_id, conn.id());
        let limits = &gw.config.limits;
        let decoder = Decoder::new(frame::DecodeLimits {
            max_frame: limits.max_frame_bytes,
            max_message: limits.max_message_bytes,
        });
        let security = &gw.config.security;
        let rate = RateLimit::new(security.messages_per_second, security.message_burst);
        Self {
            gw,
            conn,
            shard,
            route,
            identity,
            connection_id,
            subscriptions: HashMap::new(),
            decoder,
            rbuf: BytesMut::new(),
            client_closed: false,
            client_initiated: false,
            remote,
            rate,
            resume,
            session_id: None,
        }
    }

    /// Serves the connection to its end. The session is boxed: an async fn
    /// keeps its argument twice in its state, and this state is what every
    /// connected client costs.
    pub(crate) async fn run(mut self: Box<Self>) {
        let route = self.route.label();
        let metrics = self.gw.metrics.clone();
        metrics.connections.with_label_values(&[route]).inc();
        metrics.connections_opened.with_label_values(&[route]).inc();
        tracing::debug!(connection = %self.connection_id, route, user = ?self.identity.user, "connected");
        let new = NewConn {
            user: self.identity.user.clone(),
            route,
            remote: self.remote,
        };
        let change = self.gw.registry.insert(self.conn.clone(), new);
        self.gw.presence.record(change);
        self.conn.set_expiry(self.identity.expires_at.unwrap_or(0));
        Box::pin(self.gw.hub.watch(&self.conn, self.shard)).await;

        let ending = self.serve().await;

        for channel in std::mem::take(&mut self.subscriptions).into_keys() {
            Box::pin(self.gw.hub.leave(self.conn.id(), self.shard, &channel)).await;
        }
        let change = self.gw.registry.remove(self.conn.id());
        self.gw.presence.record(change);
        self.conn.mark_closed();
        let _ = socket2::SockRef::from(self.conn.stream()).shutdown(std::net::Shutdown::Both);
        metrics.connections.with_label_values(&[route]).dec();
        metrics
            .disconnects
            .with_label_values(&[ending.label()])
            .inc();
        tracing::debug!(connection = %self.connection_id, ending = ending.label(), "disconnected");
    }

    async fn serve(&mut self) -> Ending {
        // Rarely-taken paths are boxed: the task's size is the size of its
        // largest state, and an idle client should cost only the select below.
        Box::pin(self.greet()).await;
        let drain = drain_signal(self.gw.clone(), self.conn.id());
        tokio::pin!(drain);
        let mut drained = false;
        // Armed once the close is sent; boxed: most connections never close
        // from this side, and the task's size is what an idle client costs.
        let mut close_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            for channel in self.conn.take_resyncs() {
                Box::pin(self.resync(channel)).await;
            }
            if self.conn.flush() == Flush::Broken {
                return Ending::Lost;
            }
            match self.conn.state() {
                OutState::Closed => return Ending::Lost,
                OutState::Closing(code) => {
                    let sent = !self.conn.has_queued();
                    if sent && self.client_closed {
                        return self.ending(code);
                    }
                    if close_timer.is_none() {
                        close_timer = Some(Box::pin(tokio::time::sleep(
                            self.gw.config.timeouts.close_timeout,
                        )));
                    }
                }
                OutState::Open => {}
            }
            let want_write = self.conn.has_queued();
            // Readiness is polled in place (no readiness future per branch):
            // the socket keeps the task's waker itself.
            let conn = &self.conn;
            tokio::select! {
                _ = &mut drain, if !drained => {
                    drained = true;
                    self.conn.close(CloseCode::GoingAway);
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
                    return match self.conn.state() {
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

    /// What a connection gets first, by route.
    async fn greet(&mut self) {
        match self.route.clone() {
            Route::Native => {
                let restored = self.restore_session().await;
                let session_id = self.session_id.clone().unwrap_or_default();
                let text = server::connection_established(server::Established {
                    connection_id: &self.connection_id,
                    replica: &self.gw.config.replica_id,
                    heartbeat_interval: self.gw.config.hub.heartbeat.ping_interval.as_secs(),
                    session: Some(&session_id),
                    resumed: self.resume.as_ref().map(|_| restored.is_some()),
                    user: self.identity.user.as_deref(),
                });
                self.conn.send_text(&text);
                for (channel, position) in restored.unwrap_or_default().subscriptions {
                    let since = Since {
                        offset: position.offset,
                        epoch: position.epoch,
                    };
                    self.subscribe(&channel, Some(since), position.filters, None)
                        .await;
                }
            }
            Route::Snapshot(channel) | Route::Relay(channel) => {
                let want_snapshot = matches!(self.route, Route::Snapshot(_));
                let mode = Mode {
                    kind: FrameKind::Raw,
                    filter: None,
                };
                if let Err((_, why)) = self
                    .start_subscription(channel.clone(), mode, None, want_snapshot, None)
                    .await
                {
                    tracing::warn!(%channel, error = %why, "could not start a drop-in subscription");
                    self.conn.close(CloseCode::TryAgainLater);
                }
            }
        }
    }

    /// Picks this connection's session: the one asked for with `?session=` if
    /// it exists and belongs to the same user, else a new one.
    async fn restore_session(&mut self) -> Option<sessions::Record> {
        let requested = self
            .resume
            .clone()
            .filter(|id| sessions::valid_session_id(id));
        let mut restored = None;
        if let Some(id) = requested {
            match self.gw.sessions.load(&id).await {
                Ok(Some(record)) if record.user == self.identity.user => {
                    self.session_id = Some(id);
                    restored = Some(record);
                }
                Ok(Some(_)) => {
                    tracing::info!(connection = %self.connection_id, "refused to resume a session of another user");
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not load a session; starting a new one")
                }
            }
        }
        if self.session_id.is_none() {
            self.session_id = Some(sessions::new_session_id());
        }
        restored
    }

    /// Reads what the socket has and handles every complete frame.
    async fn read(&mut self) -> Option<Ending> {
        self.rbuf.reserve(self.gw.config.limits.read_chunk_bytes);
        match self.conn.stream().try_read_buf(&mut self.rbuf) {
            Ok(0) => {
                return Some(match self.conn.state() {
                    OutState::Closing(code) => self.ending(code),
                    _ => Ending::Lost,
                });
            }
            Ok(n) => self.gw.metrics.client_bytes.inc_by(n as u64),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Some(Ending::Lost),
        }
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(incoming)) => Box::pin(self.on_frame(incoming)).await,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(connection = %self.connection_id, error = %e, "bad frame");
                    self.rbuf.clear();
                    self.conn.close(CloseCode::from_frame_error(e.close_code()));
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
        self.conn.touch();
        self.gw.metrics.client_messages.inc();
        let open = self.conn.state() == OutState::Open;
        match incoming {
            Incoming::Close(_) => {
                self.client_closed = true;
                if open {
                    self.client_initiated = true;
                    self.conn.close(CloseCode::Normal);
                }
            }
            Incoming::Pong(_) => self.conn.pong_received(),
            _ if !open => {}
            Incoming::Ping(_) | Incoming::Text(_) | Incoming::Binary(_) if !self.admit() => {}
            Incoming::Ping(payload) => {
                self.conn.send(frame::encode(OpCode::Pong, &payload));
            }
            Incoming::Binary(_) => self.send_error(
                ErrorCode::BinaryNotSupported,
                "binary frames are not supported: send JSON as text frames",
                None,
                None,
            ),
            Incoming::Text(text) => match self.route {
                Route::Native => self.on_native(text).await,
                Route::Snapshot(_) | Route::Relay(_) => self.on_dropin(text).await,
            },
        }
    }

    /// Applies the rate limit to one client message; false if it is refused.
    fn admit(&mut self) -> bool {
        match self.rate.check() {
            Verdict::Pass => true,
            Verdict::Refuse { notify } => {
                if notify {
                    let message = format!(
                        "more than {} messages per second: this and further messages are dropped until you slow down",
                        self.gw.config.security.messages_per_second
                    );
                    self.send_error(ErrorCode::RateLimited, &message, None, None);
                }
                false
            }
            Verdict::Abuse => {
                tracing::info!(connection = %self.connection_id, user = ?self.identity.user, "closing a client that kept flooding");
                self.conn.close(CloseCode::PolicyViolation);
                false
            }
        }
    }

    fn send_error(
        &self,
        code: ErrorCode,
        message: &str,
        channel: Option<&str>,
        id: Option<&RequestId>,
    ) {
        self.gw
            .metrics
            .client_errors
            .with_label_values(&[code.as_str()])
            .inc();
        self.conn
            .send_text(&server::error(code, message, channel, id));
    }

    async fn on_native(&mut self, text: Bytes) {
        let message = match ClientMessage::parse(&text, self.gw.config.limits.max_json_depth) {
            Ok(m) => m,
            Err(e) => return self.send_error(e.code, &e.message, None, e.id.as_ref()),
        };
        match message {
            ClientMessage::Subscribe {
                channel,
                since,
                filters,
                id,
            } => self.subscribe(&channel, since, filters, id).await,
            ClientMessage::Unsubscribe { channel, id } => self.unsubscribe(&channel, id).await,
            ClientMessage::Ping { id } => {
                self.conn.send_text(&server::pong(id.as_ref()));
            }
            ClientMessage::Refresh { channel, id } => {
                let Some(channel) = self.subscribed_channel(&channel, id.as_ref()) else {
                    return;
                };
                self.refresh(&channel, true, id.as_ref()).await;
            }
            ClientMessage::Ack {
                channel,
                offset,
                id,
            } => {
                let Some(channel) = self.subscribed_channel(&channel, id.as_ref()) else {
                    return;
                };
                if let Some(session) = &self.session_id {
                    self.gw.sessions.acked(session, channel.as_str(), offset);
                }
                if id.is_some() {
                    self.conn
                        .send_text(&server::acked(channel.as_str(), offset, id.as_ref()));
                }
            }
            ClientMessage::RefreshToken { token, id } => self.refresh_token(&token, id).await,
        }
    }

    /// Validates a channel name the client says it is subscribed to.
    fn subscribed_channel(&self, name: &str, id: Option<&RequestId>) -> Option<ChannelName> {
        let channel = match ChannelName::parse(name, self.gw.config.limits.max_channel_len) {
            Ok(c) => c,
            Err(e) => {
                self.send_error(ErrorCode::BadChannel, &e.to_string(), Some(name), id);
                return None;
            }
        };
        if !self.subscriptions.contains_key(&channel) {
            self.send_error(
                ErrorCode::NotSubscribed,
                "not subscribed to this channel",
                Some(name),
                id,
            );
            return None;
        }
        Some(channel)
    }

    async fn subscribe(
        &mut self,
        name: &str,
        since: Option<Since>,
        filters: Option<serde_json::Map<String, Value>>,
        id: Option<RequestId>,
    ) {
        let limits = &self.gw.config.limits;
        let channel = match ChannelName::parse(name, limits.max_channel_len) {
            Ok(c) => c,
            Err(e) => {
                return self.send_error(
                    ErrorCode::BadChannel,
                    &e.to_string(),
                    Some(name),
                    id.as_ref(),
                );
            }
        };
        if self.subscriptions.contains_key(&channel) {
            return self.send_error(
                ErrorCode::AlreadySubscribed,
                "already subscribed to this channel on this connection",
                Some(name),
                id.as_ref(),
            );
        }
        if self.subscriptions.len() >= limits.max_channels_per_connection {
            let message = format!(
                "a connection may hold at most {} subscriptions",
                limits.max_channels_per_connection
            );
            return self.send_error(
                ErrorCode::TooManyChannels,
                &message,
                Some(name),
                id.as_ref(),
            );
        }
        if !self.identity.can_subscribe(&channel) {
            return self.send_error(
                ErrorCode::Forbidden,
                "your token does not allow subscribing to this channel",
                Some(name),
                id.as_ref(),
            );
        }
        let filter = match filters
            .as_ref()
            .map(|f| Filter::compile(f, &limits.filter))
            .transpose()
        {
            Ok(f) => f.map(Arc::new),
            Err(e) => {
                return self.send_error(
                    ErrorCode::BadFilter,
                    &e.to_string(),
                    Some(name),
                    id.as_ref(),
                );
            }
        };
        let mode = Mode {
            kind: FrameKind::Native,
            filter,
        };
        match self
            .start_subscription(channel.clone(), mode, since, true, id.clone())
            .await
        {
            Ok(position) => {
                if let Some(session) = &self.session_id {
                    let position = sessions::Position {
                        epoch: position.epoch.as_str().to_string(),
                        offset: position.offset,
                        filters,
                    };
                    self.gw.sessions.subscribed(
                        session,
                        self.identity.user.as_deref(),
                        channel.as_str(),
                        position,
                    );
                }
            }
            Err((code, why)) => self.send_error(code, &why, Some(name), id.as_ref()),
        }
    }

    /// Joins the channel, sends its start (reply, snapshot, history), goes
    /// live. Returns the position live delivery continues from.
    async fn start_subscription(
        &mut self,
        channel: ChannelName,
        mode: Mode,
        since: Option<Since>,
        want_snapshot: bool,
        id: Option<RequestId>,
    ) -> Result<crate::engine::Position, (ErrorCode, String)> {
        let gw = self.gw.clone();
        gw.hub
            .join(&self.conn, self.shard, &channel, mode.clone())
            .await
            .map_err(|e| (ErrorCode::Unavailable, format!("{e}; retry with backoff")))?;
        let start = match recovery::plan(
            &*gw.engine,
            &channel,
            since.as_ref(),
            want_snapshot,
            gw.config.limits.max_replay,
        )
        .await
        {
            Ok(start) => start,
            Err(e) => {
                gw.hub.leave(self.conn.id(), self.shard, &channel).await;
                return Err((ErrorCode::Unavailable, format!("{e}; retry with backoff")));
            }
        };
        if let Some(recovered) = start.recovered {
            let label = if recovered {
                "recovered"
            } else {
                "not_recovered"
            };
            gw.metrics.resumes.with_label_values(&[label]).inc();
        }
        self.send_start(&channel, &mode, &start, id.as_ref());
        gw.hub
            .release(self.conn.id(), self.shard, &channel, start.live_after())
            .await;
        if let Some(change) = self.gw.registry.set_channel(self.conn.id(), &channel, true) {
            self.gw.presence.record(change);
        }
        self.subscriptions.insert(channel, mode);
        Ok(start.position)
    }

    /// Sends a subscription's start: `subscribed` (native), the snapshot, then
    /// the history after it, each through the subscription's filter.
    fn send_start(
        &self,
        channel: &ChannelName,
        mode: &Mode,
        start: &recovery::Start,
        id: Option<&RequestId>,
    ) {
        let native = mode.kind == FrameKind::Native;
        if native {
            self.conn.send_text(&server::subscribed(
                channel.as_str(),
                start.position.epoch.as_str(),
                start.position.offset,
                start.recovered,
                id,
            ));
        }
        if let Some(snapshot) = &start.snapshot {
            self.send_snapshot(channel, snapshot, native, None);
        }
        let mut replayed = 0;
        for entry in &start.replay {
            let d = Delivery::new(
                channel.clone(),
                Some(entry.offset),
                Some(entry.published_us),
                entry.data.clone(),
            );
            if d.passes(mode.filter.as_deref()) {
                self.conn.send(d.frame(mode.kind).clone());
                replayed += 1;
            }
        }
        self.gw.metrics.messages_out.inc_by(replayed);
    }

    /// Restarts a subscription whose continuity the engine lost (its history
    /// was lost): the client gets `subscribed` with `recovered: false`, the
    /// current snapshot and what followed it — never a silent gap. The shard
    /// holds live messages meanwhile.
    async fn resync(&mut self, channel: ChannelName) {
        let Some(mode) = self.subscriptions.get(&channel).cloned() else {
            return;
        };
        let want_snapshot = !matches!(self.route, Route::Relay(_));
        let gw = self.gw.clone();
        let plan = recovery::plan(
            &*gw.engine,
            &channel,
            None,
            want_snapshot,
            gw.config.limits.max_replay,
        )
        .await;
        match plan {
            Ok(mut start) => {
                start.recovered = Some(false);
                self.send_start(&channel, &mode, &start, None);
                gw.hub
                    .release(self.conn.id(), self.shard, &channel, start.live_after())
                    .await;
                if let Some(session) = &self.session_id {
                    let position = sessions::Position {
                        epoch: start.position.epoch.as_str().to_string(),
                        offset: start.position.offset,
                        filters: None,
                    };
                    gw.sessions.resynced(session, channel.as_str(), position);
                }
            }
            Err(e) => {
                tracing::warn!(%channel, error = %e, "could not restart a subscription; closing so the client resumes elsewhere");
                self.conn.close(CloseCode::TryAgainLater);
            }
        }
    }

    /// Replaces the connection's token: same user, new rights and expiry.
    /// Subscriptions the new token no longer allows are ended.
    async fn refresh_token(&mut self, token: &str, id: Option<RequestId>) {
        let Some(verifier) = self.gw.auth.clone() else {
            return self.send_error(
                ErrorCode::InvalidMessage,
                "this gateway runs without authentication: there is no token to refresh",
                None,
                id.as_ref(),
            );
        };
        let identity = match verifier.verify(token) {
            Ok(identity) => identity,
            Err(e) => {
                let message = format!("{e}: the current token stays in force until it expires");
                return self.send_error(ErrorCode::Unauthorized, &message, None, id.as_ref());
            }
        };
        if identity.user != self.identity.user {
            return self.send_error(
                ErrorCode::Forbidden,
                "the new token is for another user: open a new connection instead",
                None,
                id.as_ref(),
            );
        }
        let revoked: Vec<ChannelName> = self
            .subscriptions
            .keys()
            .filter(|c| !identity.can_subscribe(c))
            .cloned()
            .collect();
        for channel in revoked {
            self.end_subscription(&channel).await;
            self.conn.send_text(&server::unsubscribed(
                channel.as_str(),
                Some("forbidden"),
                None,
            ));
        }
        let expires_at = identity.expires_at.unwrap_or(0);
        self.conn.set_expiry(expires_at);
        self.identity = identity;
        self.conn
            .send_text(&server::token_refreshed(expires_at, id.as_ref()));
    }

    async fn end_subscription(&mut self, channel: &ChannelName) {
        if let Some(session) = &self.session_id {
            self.gw.sessions.unsubscribed(session, channel.as_str());
        }
        self.subscriptions.remove(channel);
        self.gw.hub.leave(self.conn.id(), self.shard, channel).await;
        if let Some(change) = self.gw.registry.set_channel(self.conn.id(), channel, false) {
            self.gw.presence.record(change);
        }
    }

    fn send_snapshot(
        &self,
        channel: &ChannelName,
        snapshot: &crate::engine::Snapshot,
        native: bool,
        id: Option<&RequestId>,
    ) {
        let text = if native {
            server::snapshot(channel.as_str(), snapshot.offset, &snapshot.data, id)
        } else {
            snapshot.data.as_str().to_owned()
        };
        self.conn.send_text(&text);
    }

    async fn unsubscribe(&mut self, name: &str, id: Option<RequestId>) {
        let Some(channel) = self.subscribed_channel(name, id.as_ref()) else {
            return;
        };
        self.end_subscription(&channel).await;
        self.conn
            .send_text(&server::unsubscribed(channel.as_str(), None, id.as_ref()));
    }

    async fn refresh(&mut self, channel: &ChannelName, native: bool, id: Option<&RequestId>) {
        match self.gw.engine.snapshot(channel).await {
            Ok(Some(snapshot)) => self.send_snapshot(channel, &snapshot, native, id),
            Ok(None) => self.send_error(
                ErrorCode::NoSnapshot,
                "this channel has no snapshot yet",
                Some(channel.as_str()),
                id,
            ),
            Err(e) => self.send_error(
                ErrorCode::Unavailable,
                &format!("{e}; retry with backoff"),
                Some(channel.as_str()),
                id,
            ),
        }
    }

    /// Drop-in routes understand `ping` and `refresh`, as plain text or as
    /// `{"type": …}`.
    async fn on_dropin(&mut self, text: Bytes) {
        let (Route::Snapshot(channel) | Route::Relay(channel)) = self.route.clone() else {
            return;
        };
        match dropin_command(&text) {
            Some("ping") => {
                self.conn.send_text(&server::pong(None));
            }
            Some("refresh") => self.refresh(&channel, false, None).await,
            _ => self.send_error(
                ErrorCode::UnknownType,
                "this route understands \"ping\" and \"refresh\" (as text or {\"type\": …})",
                None,
                None,
            ),
        }
    }
}

/// `ping`, `refresh`, `{"type":"ping"}` … → the command word.
fn dropin_command(text: &[u8]) -> Option<&'static str> {
    let word = |w: &str| match w {
        "ping" => Some("ping"),
        "refresh" => Some("refresh"),
        _ => None,
    };
    let trimmed = std::str::from_utf8(text).ok()?.trim();
    if let Some(cmd) = word(trimmed) {
        return Some(cmd);
    }
    let value: Value = serde_json::from_str(trimmed).ok()?;
    word(value.get("type")?.as_str()?)
}

/// Resolves when this connection's turn to close comes during a drain: the
/// replica's clients are closed evenly over the drain window.
async fn drain_signal(gw: Arc<Gateway>, conn_id: u64) {
    gw.shutdown.cancelled().await;
    let fraction = crate::time::spread(conn_id);
    tokio::time::sleep(gw.config.drain.window.mul_f64(fraction)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_refuses_then_calls_it_abuse() {
        let mut r = RateLimit::new(1, 3);
        assert_eq!(r.check(), Verdict::Pass);
        assert_eq!(r.check(), Verdict::Pass);
        assert_eq!(r.check(), Verdict::Pass);
        assert_eq!(r.check(), Verdict::Refuse { notify: true });
        assert_eq!(r.check(), Verdict::Refuse { notify: false });
        assert_eq!(r.check(), Verdict::Refuse { notify: false });
        assert_eq!(r.check(), Verdict::Abuse);
    }

    #[test]
    fn dropin_commands_as_text_or_json() {
        assert_eq!(dropin_command(b"ping"), Some("ping"));
        assert_eq!(dropin_command(b" refresh\n"), Some("refresh"));
        assert_eq!(dropin_command(br#"{"type":"ping"}"#), Some("ping"));
        assert_eq!(
            dropin_command(br#"{"type":"refresh","x":1}"#),
            Some("refresh")
        );
        assert_eq!(dropin_command(b"hello"), None);
        assert_eq!(dropin_command(br#"{"type":"dance"}"#), None);
    }
}
