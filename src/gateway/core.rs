//! What every dialect does to the core on behalf of one connection: its
//! identity, its subscriptions, its rate limit, and the operations that keep
//! the core's guarantees — a subscription starts from a snapshot and history
//! with no gap and no duplicate, live messages go out in the forms the hub
//! encodes once per message per replica, every refusal is counted.
//!
//! A subscription starts in two steps so that a dialect can send its own
//! start between them: [`Core::begin`] joins the hub (which holds live
//! messages for the newcomer) and reads the start from the engine;
//! [`Core::go_live`] releases the held messages after the start and records
//! the subscription ([`Core::abandon`] undoes a begun one instead). The
//! [`Pending`] a dialect holds in between must be passed to one of them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::Gateway;
use super::recovery::{self, Start};
use super::route::Kind;
use crate::auth::Identity;
use crate::channel::ChannelName;
use crate::engine::{Entry, Offset, Position};
use crate::hub::{Delivery, Mode};
use crate::protocol::{CloseCode, ErrorCode, RequestId, Since, council, escai, server};
use crate::ws::conn::Conn;

/// Where a subscription's start comes from.
#[derive(Debug, Clone)]
pub(crate) enum Plan {
    /// The native rule: resume after `since` if the history covers it, else
    /// the snapshot (when `snapshot`) and what followed it.
    Resume {
        since: Option<Since>,
        snapshot: bool,
    },
    /// Every message the channel's history holds, from its first offset (the
    /// AI Council replay).
    Everything,
}

/// A subscription between [`Core::begin`] and [`Core::go_live`] (or
/// [`Core::abandon`]): the hub holds its live messages meanwhile.
#[must_use = "a begun subscription must go live or be abandoned"]
pub(crate) struct Pending {
    pub channel: ChannelName,
    pub mode: Mode,
    pub start: Start,
}

/// Why a subscription could not start.
#[derive(Debug, Clone)]
pub(crate) struct Refused {
    pub code: ErrorCode,
    pub message: String,
}

/// One connection as the core sees it.
pub(crate) struct Core {
    pub gw: Arc<Gateway>,
    pub conn: Arc<Conn>,
    pub shard: usize,
    pub kind: Kind,
    pub identity: Identity,
    pub connection_id: String,
    /// The connection negotiated permessage-deflate: its live messages come
    /// in their compressed form (encoded once per message per replica).
    pub deflate: bool,
    subscriptions: HashMap<ChannelName, Mode>,
    rate: RateLimit,
}

impl Core {
    pub(crate) fn new(
        gw: Arc<Gateway>,
        conn: Arc<Conn>,
        kind: Kind,
        identity: Identity,
        deflate: bool,
    ) -> Self {
        let shard = gw.hub.assign_shard();
        let connection_id = format!("{}-{}", gw.config.replica_id, conn.id());
        let security = &gw.config.security;
        let rate = RateLimit::new(security.messages_per_second, security.message_burst);
        Self {
            gw,
            conn,
            shard,
            kind,
            identity,
            connection_id,
            deflate,
            subscriptions: HashMap::new(),
            rate,
        }
    }

    /// Sends one text frame.
    pub(crate) fn send_text(&self, text: &str) {
        self.conn.send_text(text);
    }

    /// Counts an error sent to the client (`switchboard_client_errors_total{code}`).
    pub(crate) fn count_error(&self, code: ErrorCode) {
        self.gw
            .metrics
            .client_errors
            .with_label_values(&[code.as_str()])
            .inc();
    }

    /// Sends a refusal in this connection's dialect; the connection stays open.
    pub(crate) fn send_error(
        &self,
        code: ErrorCode,
        message: &str,
        channel: Option<&str>,
        id: Option<&RequestId>,
    ) {
        self.count_error(code);
        let text = match self.kind {
            Kind::Native | Kind::Snapshot | Kind::Relay => {
                server::error(code, message, channel, id)
            }
            Kind::Escai => escai::error(escai::Code::from_core(code), message),
            Kind::Council => council::error(council::Code::from_core(code), message),
        };
        self.conn.send_text(&text);
    }

    /// Applies the rate limit to one client message; false if it is refused
    /// (the first refusal of a run is reported; a client that keeps going is
    /// closed with 1008).
    pub(crate) fn admit(&mut self) -> bool {
        match self.rate.check() {
            Admission::Pass => true,
            Admission::Refuse { notify } => {
                if notify {
                    let message = format!(
                        "more than {} messages per second: this and further messages are dropped until you slow down",
                        self.gw.config.security.messages_per_second
                    );
                    self.send_error(ErrorCode::RateLimited, &message, None, None);
                }
                false
            }
            Admission::Abuse => {
                tracing::info!(connection = %self.connection_id, user = ?self.identity.user, "closing a client that kept flooding");
                self.conn.close(CloseCode::PolicyViolation);
                false
            }
        }
    }

    /// Whether the connection subscribes to `channel`.
    pub(crate) fn is_subscribed(&self, channel: &ChannelName) -> bool {
        self.subscriptions.contains_key(channel)
    }

    /// The subscription's mode, if subscribed.
    pub(crate) fn mode(&self, channel: &ChannelName) -> Option<&Mode> {
        self.subscriptions.get(channel)
    }

    /// Refuses one more subscription past `--max-channels-per-connection`.
    pub(crate) fn room_for_one_more(&self) -> Result<(), Refused> {
        let max = self.gw.config.limits.max_channels_per_connection;
        if self.subscriptions.len() >= max {
            return Err(Refused {
                code: ErrorCode::TooManyChannels,
                message: format!("a connection may hold at most {max} subscriptions"),
            });
        }
        Ok(())
    }

    /// The channels the connection subscribes to.
    pub(crate) fn subscribed_channels(&self) -> impl Iterator<Item = &ChannelName> {
        self.subscriptions.keys()
    }

    /// Reads the start of a subscription from the engine.
    pub(crate) async fn read_start(
        &self,
        channel: &ChannelName,
        plan: &Plan,
    ) -> Result<Start, crate::engine::EngineError> {
        let engine = &*self.gw.engine;
        let max = self.gw.config.limits.max_replay;
        match plan {
            Plan::Resume { since, snapshot } => {
                recovery::plan(engine, channel, since.as_ref(), *snapshot, max).await
            }
            Plan::Everything => {
                recovery::everything(
                    engine,
                    channel,
                    max.max(self.gw.config.dialects.council.history_size),
                )
                .await
            }
        }
    }

    /// Restarts a subscription the hub holds after a resync: reads its start
    /// (the dialect sends it), then [`Core::release`].
    pub(crate) async fn restart(&self, channel: &ChannelName, plan: &Plan) -> Option<Start> {
        match self.read_start(channel, plan).await {
            Ok(start) => Some(start),
            Err(e) => {
                tracing::warn!(%channel, error = %e, "could not restart a subscription; closing so the client resumes elsewhere");
                self.conn.close(CloseCode::TryAgainLater);
                None
            }
        }
    }

    /// Lets the held live messages of `channel` after `after` go out.
    pub(crate) async fn release(&self, channel: &ChannelName, after: Offset) {
        self.gw
            .hub
            .release(self.conn.id(), self.shard, channel, after)
            .await;
    }

    /// Joins `channel` (its live messages are held for this connection) and
    /// reads the start of the subscription.
    pub(crate) async fn begin(
        &mut self,
        channel: ChannelName,
        mode: Mode,
        plan: Plan,
    ) -> Result<Pending, Refused> {
        let gw = self.gw.clone();
        let unavailable = |e: &dyn std::fmt::Display| Refused {
            code: ErrorCode::Unavailable,
            message: format!("{e}; retry with backoff"),
        };
        gw.hub
            .join(&self.conn, self.shard, &channel, mode.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        match self.read_start(&channel, &plan).await {
            Ok(start) => {
                if let Some(recovered) = start.recovered {
                    let label = if recovered {
                        "recovered"
                    } else {
                        "not_recovered"
                    };
                    gw.metrics.resumes.with_label_values(&[label]).inc();
                }
                Ok(Pending {
                    channel,
                    mode,
                    start,
                })
            }
            Err(e) => {
                gw.hub.leave(self.conn.id(), self.shard, &channel).await;
                Err(unavailable(&e))
            }
        }
    }

    /// Releases the held live messages after the start and records the
    /// subscription. Returns where live delivery continues.
    pub(crate) async fn go_live(&mut self, pending: Pending) -> Position {
        let Pending {
            channel,
            mode,
            start,
        } = pending;
        self.gw
            .hub
            .release(self.conn.id(), self.shard, &channel, start.live_after())
            .await;
        if let Some(change) = self.gw.registry.set_channel(self.conn.id(), &channel, true) {
            self.gw.presence.record(change);
        }
        self.subscriptions.insert(channel, mode);
        start.position
    }

    /// Undoes a begun subscription.
    pub(crate) async fn abandon(&mut self, pending: Pending) {
        self.gw
            .hub
            .leave(self.conn.id(), self.shard, &pending.channel)
            .await;
    }

    /// Ends a subscription.
    pub(crate) async fn end_subscription(&mut self, channel: &ChannelName) {
        self.subscriptions.remove(channel);
        self.gw.hub.leave(self.conn.id(), self.shard, channel).await;
        if let Some(change) = self.gw.registry.set_channel(self.conn.id(), channel, false) {
            self.gw.presence.record(change);
        }
    }

    /// Ends every subscription (the connection is closing).
    pub(crate) async fn end_all(&mut self) {
        for channel in std::mem::take(&mut self.subscriptions).into_keys() {
            Box::pin(self.gw.hub.leave(self.conn.id(), self.shard, &channel)).await;
        }
    }

    /// Changes a subscription's mode (filter or form) in place: no message is
    /// lost or sent twice by the change.
    pub(crate) async fn set_mode(&mut self, channel: &ChannelName, mode: Mode) {
        if let Some(current) = self.subscriptions.get_mut(channel) {
            *current = mode.clone();
            self.gw
                .hub
                .set_mode(self.conn.id(), self.shard, channel, mode)
                .await;
        }
    }

    /// Sends history entries in the subscription's form, through its filter,
    /// skipping those `skip` says. Returns how many went out.
    pub(crate) fn send_entries(
        &self,
        channel: &ChannelName,
        mode: &Mode,
        entries: &[Entry],
        skip: impl Fn(Offset) -> bool,
    ) -> u64 {
        let mut sent = 0;
        for entry in entries.iter().filter(|e| !skip(e.offset)) {
            let d = Delivery::new(
                channel.clone(),
                Some(entry.offset),
                Some(entry.published_us),
                entry.data.clone(),
            );
            if d.passes(mode.filter.as_deref()) {
                self.conn.send(d.frame(mode.kind).clone());
                sent += 1;
            }
        }
        self.gw.metrics.messages_out.inc_by(sent);
        sent
    }

    /// A mode of this connection's form.
    pub(crate) fn mode_with(&self, filter: Option<Arc<crate::filter::Filter>>) -> Mode {
        Mode {
            kind: self.kind.form(),
            filter,
            compressed: self.deflate,
        }
    }
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
enum Admission {
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

    fn check(&mut self) -> Admission {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            return Admission::Pass;
        }
        self.strikes += 1;
        if f64::from(self.strikes) > self.burst {
            Admission::Abuse
        } else {
            Admission::Refuse {
                notify: self.strikes == 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_refuses_then_calls_it_abuse() {
        let mut r = RateLimit::new(1, 3);
        assert_eq!(r.check(), Admission::Pass);
        assert_eq!(r.check(), Admission::Pass);
        assert_eq!(r.check(), Admission::Pass);
        assert_eq!(r.check(), Admission::Refuse { notify: true });
        assert_eq!(r.check(), Admission::Refuse { notify: false });
        assert_eq!(r.check(), Admission::Refuse { notify: false });
        assert_eq!(r.check(), Admission::Abuse);
    }
}
