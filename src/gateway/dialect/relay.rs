//! The relay route `/api/ws/{channel}` (DevSkyy's channels, seed 002): each
//! message of the channel exactly as published, from the moment of
//! connecting; `ping` and `refresh` as on the ARK route. A replica that
//! missed messages beyond history closes the connection with 1012.

use bytes::Bytes;

use super::Dialect;
use super::snapshot::{close_for_resync, on_dropin_text};
use crate::channel::ChannelName;
use crate::gateway::core::{Core, Plan};
use crate::protocol::CloseCode;

/// A relay connection: one channel.
pub(crate) struct RelayDialect {
    channel: ChannelName,
}

impl RelayDialect {
    pub(crate) fn new(channel: ChannelName) -> Self {
        Self { channel }
    }
}

/// No snapshot and no history: live messages from now on.
const PLAN: Plan = Plan::Resume {
    since: None,
    snapshot: false,
};

impl Dialect for RelayDialect {
    async fn open(&mut self, core: &mut Core) {
        let mode = core.mode_with(None);
        match core.begin(self.channel.clone(), mode, PLAN).await {
            Ok(pending) => {
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

    /// The history was lost: a relay client has no offsets to be told so
    /// with, so the connection ends with 1012 (reconnect) rather than
    /// continue silently past the missed messages.
    async fn resync(&mut self, core: &mut Core, channel: ChannelName) {
        close_for_resync(core, &channel, "relay").await;
    }
}
