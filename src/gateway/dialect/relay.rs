//! The relay route `/api/ws/{channel}` (DevSkyy's channels, seed 002): each
//! message of the channel exactly as published, from the moment of
//! connecting; `ping` and `refresh` as on the ARK route.

use bytes::Bytes;

use super::Dialect;
use super::snapshot::on_dropin_text;
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

    /// The history was lost: a relay client has no way to start over, so it
    /// simply continues with the new history's live messages.
    async fn resync(&mut self, core: &mut Core, channel: ChannelName) {
        let Some(start) = core.restart(&channel, &PLAN).await else {
            return;
        };
        core.release(&channel, start.live_after()).await;
    }
}
