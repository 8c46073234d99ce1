//! The native protocol on `/ws` (`docs/PROTOCOL.md`): subscriptions with
//! `since` and filters, snapshots, acknowledgements and resumable sessions,
//! token refresh.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::Dialect;
use crate::channel::ChannelName;
use crate::filter::Filter;
use crate::gateway::core::{Core, Plan, Refused};
use crate::gateway::recovery::Start;
use crate::gateway::sessions;
use crate::hub::{FrameKind, Mode};
use crate::protocol::{ClientMessage, DeltaFormat, ErrorCode, RequestId, Since, server};

/// A native connection's own state: its resumable session.
pub(crate) struct NativeDialect {
    /// The session id asked for with `?session=`.
    resume: Option<String>,
    /// This connection's session id, once greeted.
    session_id: Option<String>,
}

impl NativeDialect {
    pub(crate) fn new(resume: Option<String>) -> Self {
        Self {
            resume,
            session_id: None,
        }
    }

    /// Picks this connection's session: the one asked for with `?session=` if
    /// it exists and belongs to the same user, else a new one.
    async fn restore_session(&mut self, core: &Core) -> Option<sessions::Record> {
        let requested = self
            .resume
            .clone()
            .filter(|id| sessions::valid_session_id(id));
        let mut restored = None;
        if let Some(id) = requested {
            match core.gw.sessions.load(&id).await {
                Ok(Some(record)) if record.user == core.identity.user => {
                    self.session_id = Some(id);
                    restored = Some(record);
                }
                Ok(Some(_)) => {
                    tracing::info!(connection = %core.connection_id, "refused to resume a session of another user");
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

    /// Validates a channel name the client says it is subscribed to.
    fn subscribed_channel(
        &self,
        core: &Core,
        name: &str,
        id: Option<&RequestId>,
    ) -> Option<ChannelName> {
        let channel = match ChannelName::parse(name, core.gw.config.limits.max_channel_len) {
            Ok(c) => c,
            Err(e) => {
                core.send_error(ErrorCode::BadChannel, &e.to_string(), Some(name), id);
                return None;
            }
        };
        if !core.is_subscribed(&channel) {
            core.send_error(
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
        core: &mut Core,
        name: &str,
        from: StartFrom,
        filters: Option<Map<String, Value>>,
        delta: Option<DeltaFormat>,
        id: Option<RequestId>,
    ) {
        let refuse = |core: &Core, r: Refused| {
            core.send_error(r.code, &r.message, Some(name), id.as_ref());
        };
        let limits = &core.gw.config.limits;
        let channel = match ChannelName::parse(name, limits.max_channel_len) {
            Ok(c) => c,
            Err(e) => {
                return core.send_error(
                    ErrorCode::BadChannel,
                    &e.to_string(),
                    Some(name),
                    id.as_ref(),
                );
            }
        };
        if core.is_subscribed(&channel) {
            return core.send_error(
                ErrorCode::AlreadySubscribed,
                "already subscribed to this channel on this connection",
                Some(name),
                id.as_ref(),
            );
        }
        if let Err(r) = core.room_for_one_more() {
            return refuse(core, r);
        }
        if !core.identity.can_subscribe(&channel) {
            return core.send_error(
                ErrorCode::Forbidden,
                "your token does not allow subscribing to this channel",
                Some(name),
                id.as_ref(),
            );
        }
        match core.gw.council.may_read(&channel, &core.identity).await {
            Ok(true) => {}
            Ok(false) => {
                return core.send_error(
                    ErrorCode::Forbidden,
                    "this request belongs to another user",
                    Some(name),
                    id.as_ref(),
                );
            }
            Err(e) => {
                return core.send_error(
                    ErrorCode::Unavailable,
                    &format!("{e}; retry with backoff"),
                    Some(name),
                    id.as_ref(),
                );
            }
        }
        let filter = match filters
            .as_ref()
            .map(|f| Filter::compile(f, &limits.filter))
            .transpose()
        {
            Ok(f) => f.map(Arc::new),
            Err(e) => {
                return core.send_error(
                    ErrorCode::BadFilter,
                    &e.to_string(),
                    Some(name),
                    id.as_ref(),
                );
            }
        };
        let mut mode = core.mode_with(filter);
        if delta.is_some() {
            mode.kind = FrameKind::NativeDelta;
        }
        let since = match &from {
            StartFrom::Since(since) => Some(since.clone()),
            StartFrom::Fresh | StartFrom::Restart => None,
        };
        let plan = Plan::Resume {
            since: since.clone(),
            snapshot: true,
        };
        let mut pending = match core.begin(channel.clone(), mode, plan).await {
            Ok(p) => p,
            Err(r) => return refuse(core, r),
        };
        if matches!(from, StartFrom::Restart) {
            pending.start.recovered = Some(false);
        }
        send_start(
            core,
            &pending.channel,
            &pending.mode,
            &pending.start,
            id.as_ref(),
        );
        let stored = session_position(&pending.start, since.as_ref());
        core.go_live(pending).await;
        if let Some(session) = &self.session_id {
            let position = sessions::Position {
                filters,
                delta,
                ..stored
            };
            core.gw.sessions.subscribed(
                session,
                core.identity.user.as_deref(),
                channel.as_str(),
                position,
            );
        }
    }

    async fn unsubscribe(&mut self, core: &mut Core, name: &str, id: Option<RequestId>) {
        let Some(channel) = self.subscribed_channel(core, name, id.as_ref()) else {
            return;
        };
        self.end_subscription(core, &channel).await;
        core.send_text(&server::unsubscribed(channel.as_str(), None, id.as_ref()));
    }

    async fn end_subscription(&mut self, core: &mut Core, channel: &ChannelName) {
        if let Some(session) = &self.session_id {
            core.gw.sessions.unsubscribed(session, channel.as_str());
        }
        core.end_subscription(channel).await;
    }

    /// Replaces the connection's token: same user, new rights and expiry.
    /// Subscriptions the new token no longer allows are ended.
    async fn refresh_token(&mut self, core: &mut Core, token: &str, id: Option<RequestId>) {
        let Some(verifier) = core.gw.auth.clone() else {
            return core.send_error(
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
                return core.send_error(ErrorCode::Unauthorized, &message, None, id.as_ref());
            }
        };
        if identity.user != core.identity.user {
            return core.send_error(
                ErrorCode::Forbidden,
                "the new token is for another user: open a new connection instead",
                None,
                id.as_ref(),
            );
        }
        let revoked: Vec<ChannelName> = core
            .subscribed_channels()
            .filter(|c| !identity.can_subscribe(c))
            .cloned()
            .collect();
        for channel in revoked {
            self.end_subscription(core, &channel).await;
            core.send_text(&server::unsubscribed(
                channel.as_str(),
                Some("forbidden"),
                None,
            ));
        }
        let expires_at = identity.expires_at.unwrap_or(0);
        core.conn.set_expiry(expires_at);
        core.identity = identity;
        core.send_text(&server::token_refreshed(expires_at, id.as_ref()));
    }
}

/// Where a subscription starts.
enum StartFrom {
    /// Afresh: the snapshot and what followed it, then live.
    Fresh,
    /// After the client's `since` (or `recovered: false` and afresh).
    Since(Since),
    /// Afresh, though the client asked to resume: its session cannot say
    /// what it has read (its last start unacknowledged), so it is told
    /// `recovered: false`.
    Restart,
}

/// Where a session keeps a subscription that starts with `start` (its filters
/// and form aside): only what its client is known to have. A resumed one is
/// kept at the `since` it resumed from — the replay after it may not reach the
/// client before its connection ends, and a restore replays it again (the
/// client drops what it has by offset) —; one that started with content (a
/// snapshot and what followed) is kept as a restart until its client
/// acknowledges; one that started with nothing to read, at the newest offset.
fn session_position(start: &Start, since: Option<&Since>) -> sessions::Position {
    let (epoch, offset, restart) = match (start.recovered, since) {
        (Some(true), Some(since)) => (since.epoch.clone(), since.offset, false),
        _ => (
            start.position.epoch.as_str().to_string(),
            start.position.offset,
            start.snapshot.is_some() || !start.replay.is_empty(),
        ),
    };
    sessions::Position {
        epoch,
        offset,
        filters: None,
        delta: None,
        restart,
    }
}

/// Sends a subscription's start: `subscribed`, the snapshot, then the history
/// after it, each through the subscription's filter.
fn send_start(
    core: &Core,
    channel: &ChannelName,
    mode: &Mode,
    start: &Start,
    id: Option<&RequestId>,
) {
    core.send_text(&server::subscribed(
        channel.as_str(),
        start.position.epoch.as_str(),
        start.position.offset,
        start.recovered,
        (mode.kind == FrameKind::NativeDelta).then_some(DeltaFormat::Fossil),
        id,
    ));
    if let Some(snapshot) = &start.snapshot {
        core.send_text(&server::snapshot(
            channel.as_str(),
            snapshot.offset,
            &snapshot.data,
            None,
        ));
    }
    core.send_entries(channel, mode, &start.replay, |_| false);
}

impl Dialect for NativeDialect {
    async fn open(&mut self, core: &mut Core) {
        let restored = self.restore_session(core).await;
        let session_id = self.session_id.clone().unwrap_or_default();
        let text = server::connection_established(server::Established {
            connection_id: &core.connection_id,
            replica: &core.gw.config.replica_id,
            heartbeat_interval: core.gw.config.hub.heartbeat.ping_interval.as_secs(),
            session: Some(&session_id),
            resumed: self.resume.as_ref().map(|_| restored.is_some()),
            user: core.identity.user.as_deref(),
        });
        core.send_text(&text);
        for (channel, position) in restored.unwrap_or_default().subscriptions {
            let from = if position.restart {
                StartFrom::Restart
            } else {
                StartFrom::Since(Since {
                    offset: position.offset,
                    epoch: position.epoch,
                })
            };
            self.subscribe(core, &channel, from, position.filters, position.delta, None)
                .await;
        }
    }

    async fn on_text(&mut self, core: &mut Core, text: Bytes) {
        if !core.admit() {
            return;
        }
        let message = match ClientMessage::parse(&text, core.gw.config.limits.max_json_depth) {
            Ok(m) => m,
            Err(e) => return core.send_error(e.code, &e.message, None, e.id.as_ref()),
        };
        match message {
            ClientMessage::Subscribe {
                channel,
                since,
                filters,
                delta,
                id,
            } => {
                let from = since.map_or(StartFrom::Fresh, StartFrom::Since);
                Box::pin(self.subscribe(core, &channel, from, filters, delta, id)).await
            }
            ClientMessage::Unsubscribe { channel, id } => {
                Box::pin(self.unsubscribe(core, &channel, id)).await
            }
            ClientMessage::Ping { id } => core.send_text(&server::pong(id.as_ref())),
            ClientMessage::Refresh { channel, id } => {
                let Some(channel) = self.subscribed_channel(core, &channel, id.as_ref()) else {
                    return;
                };
                match core.gw.engine.snapshot(&channel).await {
                    Ok(Some(s)) => core.send_text(&server::snapshot(
                        channel.as_str(),
                        s.offset,
                        &s.data,
                        id.as_ref(),
                    )),
                    Ok(None) => core.send_error(
                        ErrorCode::NoSnapshot,
                        "this channel has no snapshot yet",
                        Some(channel.as_str()),
                        id.as_ref(),
                    ),
                    Err(e) => core.send_error(
                        ErrorCode::Unavailable,
                        &format!("{e}; retry with backoff"),
                        Some(channel.as_str()),
                        id.as_ref(),
                    ),
                }
            }
            ClientMessage::Ack {
                channel,
                offset,
                id,
            } => {
                let Some(channel) = self.subscribed_channel(core, &channel, id.as_ref()) else {
                    return;
                };
                if let Some(session) = &self.session_id {
                    core.gw.sessions.acked(session, channel.as_str(), offset);
                }
                if id.is_some() {
                    core.send_text(&server::acked(channel.as_str(), offset, id.as_ref()));
                }
            }
            ClientMessage::RefreshToken { token, id } => {
                Box::pin(self.refresh_token(core, &token, id)).await
            }
        }
    }

    /// Restarts a subscription whose continuity the engine lost: the client
    /// gets `subscribed` with `recovered: false`, the current snapshot and
    /// what followed it — never a silent gap.
    async fn resync(&mut self, core: &mut Core, channel: ChannelName) {
        let Some(mode) = core.mode(&channel).cloned() else {
            return;
        };
        let plan = Plan::Resume {
            since: None,
            snapshot: true,
        };
        let Some(mut start) = core.restart(&channel, &plan).await else {
            return;
        };
        start.recovered = Some(false);
        send_start(core, &channel, &mode, &start, None);
        core.release(&channel, start.live_after()).await;
        if let Some(session) = &self.session_id {
            let position = session_position(&start, None);
            core.gw
                .sessions
                .resynced(session, channel.as_str(), position);
        }
    }
}
