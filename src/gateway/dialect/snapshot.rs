//! The ARK dashboards' route `/ws/{channel}` (seed 000): the channel's
//! snapshot as a bare JSON object at once, then each new message as
//! published; `ping` and `refresh` as plain text or `{"type": …}`. A replica
//! that missed messages beyond history closes the connection with 1012.

use bytes::Bytes;

use super::Dialect;
use crate::channel::ChannelName;
use crate::gateway::core::{Core, Plan};
use crate::gateway::recovery::Start;
use crate::protocol::{CloseCode, ErrorCode, dropin, server};

/// An ARK dashboard connection: one channel.
pub(crate) struct SnapshotDialect {
    channel: ChannelName,
}

impl SnapshotDialect {
    pub(crate) fn new(channel: ChannelName) -> Self {
        Self { channel }
    }
}

const PLAN: Plan = Plan::Resume {
    since: None,
    snapshot: true,
};

/// The snapshot, then what followed it, as bare JSON.
fn send_start(core: &Core, channel: &ChannelName, start: &Start) {
    if let Some(snapshot) = &start.snapshot {
        core.send_text(snapshot.data.as_str());
    }
    core.send_entries(channel, &core.mode_with(None), &start.replay, |_| false);
}

/// A drop-in route's answer to a resync (the replica missed more of `channel`
/// than the history keeps): its clients have no offsets to be told what was
/// lost with, and on the snapshot route the snapshot is a bare object like
/// any message, so the restart would not show. The connection ends with
/// 1012 ("missed messages: reconnect", counted in
/// `switchboard_disconnects_total{code="1012"}`); a reconnecting client
/// starts over from the current state. docs/PROTOCOL.md, "Close codes".
pub(super) async fn close_for_resync(core: &mut Core, channel: &ChannelName, route: &'static str) {
    tracing::info!(%channel, route, "messages missed beyond history; closing the drop-in connection with 1012 so the client reconnects");
    core.end_subscription(channel).await;
    core.conn.close(CloseCode::ServiceRestart);
}

/// `ping` and `refresh` of the drop-in routes.
pub(super) async fn on_dropin_text(core: &mut Core, channel: &ChannelName, text: &[u8]) {
    if !core.admit() {
        return;
    }
    match dropin::parse(text) {
        Some(dropin::Command::Ping) => core.send_text(&server::pong(None)),
        Some(dropin::Command::Refresh) => match core.gw.engine.snapshot(channel).await {
            Ok(Some(snapshot)) => core.send_text(snapshot.data.as_str()),
            Ok(None) => core.send_error(
                ErrorCode::NoSnapshot,
                "this channel has no snapshot yet",
                Some(channel.as_str()),
                None,
            ),
            Err(e) => core.send_error(
                ErrorCode::Unavailable,
                &format!("{e}; retry with backoff"),
                Some(channel.as_str()),
                None,
            ),
        },
        None => core.send_error(
            ErrorCode::UnknownType,
            "this route understands \"ping\" and \"refresh\" (as text or {\"type\": …})",
            None,
            None,
        ),
    }
}

impl Dialect for SnapshotDialect {
    async fn open(&mut self, core: &mut Core) {
        // The start goes out between join and release, so nothing slips
        // between the snapshot and the first live message.
        let mode = core.mode_with(None);
        match core.begin(self.channel.clone(), mode, PLAN).await {
            Ok(pending) => {
                send_start(core, &pending.channel, &pending.start);
                core.go_live(pending).await;
            }
            Err(refused) => {
                tracing::warn!(channel = %self.channel, error = %refused.message, "could not start a drop-in subscription");
                core.conn.close(CloseCode::TryAgainLater);
            }
        }
    }

    async fn on_text(&mut self, core: &mut Core, text: Bytes) {
        on_dropin_text(core, &self.channel, &text).await;
    }

    /// The history was lost: a snapshot sent now would look like any message
    /// (the route's frames are bare), so the client is closed with 1012 and
    /// gets the snapshot again when it reconnects.
    async fn resync(&mut self, core: &mut Core, channel: ChannelName) {
        close_for_resync(core, &channel, "snapshot").await;
    }
}
