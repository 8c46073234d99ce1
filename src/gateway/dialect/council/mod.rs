//! The AI CouncilDialect frontends' route `/api/v1/ws/{request_id}` (seed 004).
//!
//! One connection follows one request: channel `council:{request_id}`, where
//! producers publish `{"type": event_type, "data": {…}}` (the seed's
//! `broadcast_progress`). Events go out in the seed's envelope with
//! `message_id` = the event's offset, the same on every replica. The client
//! acknowledges events one by one (`ack`); on every connect, and on
//! `reconnect`, the gateway replays every event of the request the user has
//! not acknowledged — those published before the client first connected too —
//! in order and before live events, and never an acknowledged one. What the
//! request's history no longer holds (older than the retention) is reported
//! with an `error` (`events_expired`), never skipped silently.
//!
//! An acknowledgement of an event the connection could have received costs
//! nothing against the message rate limit (a client may ack every event at
//! any event rate); anything else is rate limited like any client message.

pub mod rest;
pub mod store;

use bytes::Bytes;
use serde_json::json;

use super::Dialect;
use crate::auth::AuthKind;
use crate::channel::ChannelName;
use crate::engine::Epoch;
use crate::gateway::core::{Core, Plan};
use crate::protocol::CloseCode;
use crate::protocol::council::{self, Code, Request};
use store::AckSet;

/// The namespace of AI CouncilDialect requests: `council:{request_id}`.
pub const NAMESPACE: &str = "council";

/// The channel of a request.
pub fn request_channel(
    request_id: &str,
    max_len: usize,
) -> Result<ChannelName, crate::channel::ChannelNameError> {
    ChannelName::parse(&format!("{NAMESPACE}:{request_id}"), max_len)
}

/// An AI CouncilDialect connection: one request.
pub(crate) struct CouncilDialect {
    request_id: String,
    channel: ChannelName,
    /// The epoch the replay and the acknowledgements belong to.
    epoch: Option<Epoch>,
    /// Acknowledged on this connection (also sent to the store): excluded from
    /// a `reconnect` replay even before the store has them.
    acked: AckSet,
    /// The newest offset a start read: acks up to it (or to the hub's newest)
    /// name events this connection could have had.
    newest: u64,
    reconnection_count: u64,
    /// Set once this connection sent an acknowledgement to the store: when
    /// the connection ends, the store writes what it holds at once (the
    /// client may be reconnecting elsewhere) rather than at its interval.
    flush: Option<store::FlushRequest>,
}

impl Drop for CouncilDialect {
    fn drop(&mut self) {
        if let Some(flush) = &self.flush {
            flush.request();
        }
    }
}

impl CouncilDialect {
    pub(crate) fn new(request_id: String, channel: ChannelName) -> Self {
        Self {
            request_id,
            channel,
            epoch: None,
            acked: AckSet::default(),
            newest: 0,
            reconnection_count: 0,
            flush: None,
        }
    }

    fn send(core: &Core, code: Code, message: &str) {
        core.count_error(code.core());
        core.send_text(&council::error(code, message));
    }

    /// Shows the connection in `GET /ws/status` (and the connection list).
    fn publish_detail(&self, core: &Core) {
        let detail = json!({
            "request_id": self.request_id,
            "last_heartbeat": crate::time::rfc3339_now(),
            "reconnection_count": self.reconnection_count,
        });
        if let Some(change) = core.gw.registry.set_detail(core.conn.id(), detail) {
            core.gw.presence.record(change);
        }
    }

    /// Subscribes the request's channel, replaying first every event not acknowledged.
    async fn start(&mut self, core: &mut Core) {
        let mode = core.mode_with(None);
        let pending = match core
            .begin(self.channel.clone(), mode, Plan::Everything)
            .await
        {
            Ok(p) => p,
            Err(r) => {
                Self::send(core, Code::Unavailable, &r.message);
                core.conn.close(CloseCode::TryAgainLater);
                return;
            }
        };
        if self.replay(core, &pending.start).await {
            core.go_live(pending).await;
        } else {
            core.abandon(pending).await;
            core.conn.close(CloseCode::TryAgainLater);
        }
    }

    /// Sends the unacknowledged events of `start` and reports what expired.
    /// False if the acknowledgements could not be read (nothing was sent).
    async fn replay(&mut self, core: &mut Core, start: &crate::gateway::recovery::Start) -> bool {
        let epoch = start.position.epoch.clone();
        if self.epoch.as_ref() != Some(&epoch) {
            self.acked = AckSet::default();
            self.epoch = Some(epoch.clone());
        }
        let user = core.identity.user_key().to_owned();
        let stored = if core.identity.auth_kind() == AuthKind::Anonymous {
            Ok(AckSet::default())
        } else {
            core.gw.council.acked(&self.channel, &epoch, &user).await
        };
        let mut acked = match stored {
            Ok(a) => a,
            Err(e) => {
                Self::send(core, Code::Unavailable, &format!("{e}; reconnect to retry"));
                return false;
            }
        };
        acked.extend(&self.acked);
        // Events the history no longer holds: before its first entry, and
        // (past the replay limit) after its last.
        let first = start
            .replay
            .first()
            .map_or(start.position.offset + 1, |e| e.offset);
        let last = start.replay.last().map_or(0, |e| e.offset);
        let (lost, range) = (1..first)
            .chain((last.max(first - 1) + 1)..=start.position.offset)
            .filter(|o| !acked.contains(*o))
            .fold((0u64, None), |(n, range): (u64, Option<(u64, u64)>), o| {
                (n + 1, Some(range.map_or((o, o), |(from, _)| (from, o))))
            });
        self.newest = self.newest.max(start.position.offset);
        let mode = core.mode_with(None);
        core.send_entries(&self.channel, &mode, &start.replay, |o| acked.contains(o));
        if let Some((from, to)) = range {
            let retention = core.gw.config.dialects.council.retention;
            let message = format!(
                "{lost} unacknowledged event(s) of this request (message_id {from} to {to}) are no longer kept (retention {}, at most {} events) and cannot be replayed",
                humantime::format_duration(retention),
                core.gw.config.dialects.council.history_size,
            );
            core.count_error(Code::EventsExpired.core());
            core.send_text(&council::error_with(
                Code::EventsExpired,
                &message,
                json!({"missing": lost, "first_missing": from, "last_missing": to}),
            ));
        }
        true
    }

    /// An `ack`: free when it names an event this connection could have had.
    fn ack(&mut self, core: &mut Core, message_id: u64) {
        if message_id == 0 {
            // Not an event (connection_established, heartbeat): nothing to record.
            return;
        }
        let newest = core
            .gw
            .hub
            .last_offset(&self.channel)
            .unwrap_or(0)
            .max(self.newest);
        let Some(epoch) = self.epoch.clone() else {
            return;
        };
        if message_id > newest {
            if core.admit() {
                Self::send(
                    core,
                    Code::UnknownMessageId,
                    &format!("no event {message_id} in this request (its newest is {newest})"),
                );
            }
            return;
        }
        if !self.acked.insert(message_id) {
            // Already acknowledged: repeats cost like any message.
            core.admit();
            return;
        }
        // Without a token there is no user to keep acknowledgements for: they
        // hold for this connection only (its `reconnect`), not across connects.
        if core.identity.auth_kind() != AuthKind::Anonymous {
            let user = core.identity.user_key().to_owned();
            core.gw
                .council
                .ack(&self.channel, &epoch, &user, message_id);
            if self.flush.is_none() {
                self.flush = core.gw.council.flush_request();
            }
        }
    }
}

impl Dialect for CouncilDialect {
    async fn open(&mut self, core: &mut Core) {
        core.send_text(&council::connection_established(&self.request_id));
        let user = core.identity.user_key().to_owned();
        match core.gw.council.connected(&self.channel, &user).await {
            Ok(n) => self.reconnection_count = n.saturating_sub(1),
            Err(e) => tracing::debug!(error = %e, "could not count a council connection"),
        }
        self.publish_detail(core);
        self.start(core).await;
    }

    async fn on_text(&mut self, core: &mut Core, text: Bytes) {
        let request = match council::parse(&text, core.gw.config.limits.max_json_depth) {
            Ok(r) => r,
            Err(e) => {
                if core.admit() {
                    Self::send(core, e.code, &e.message);
                }
                return;
            }
        };
        match request {
            Request::Ack { message_id } => self.ack(core, message_id),
            Request::HeartbeatResponse => {
                if core.admit() {
                    self.publish_detail(core);
                }
            }
            Request::Ping => {
                if core.admit() {
                    core.send_text(&council::pong());
                }
            }
            Request::Reconnect => {
                if core.admit() {
                    core.end_subscription(&self.channel.clone()).await;
                    Box::pin(self.start(core)).await;
                }
            }
        }
    }

    /// The history was lost (a new epoch): acknowledgements of the old one
    /// mean nothing, so everything the new history holds is replayed.
    async fn resync(&mut self, core: &mut Core, channel: ChannelName) {
        let Some(start) = core.restart(&channel, &Plan::Everything).await else {
            return;
        };
        if self.replay(core, &start).await {
            core.release(&channel, start.live_after()).await;
        } else {
            core.conn.close(CloseCode::TryAgainLater);
        }
    }
}
