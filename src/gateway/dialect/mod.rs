//! Dialects: each seed system's wire format mapped onto the one core.
//!
//! A dialect is a route plus the mapping between one client's frames and the
//! core's operations ([`super::core::Core`]: subscribe with a start and no
//! gap, filters, acknowledgements, errors). The core does not change per
//! dialect, and a dialect never encodes a live message itself: it picks the
//! form ([`FrameKind`]) the hub encodes once per message per replica.
//!
//! | route | dialect | clients |
//! |---|---|---|
//! | `/ws` | [`native`] | switchboard's own protocol |
//! | `/ws/{channel}` | [`snapshot`] | the ARK dashboards (seed 000) |
//! | `/api/ws/{channel}` | [`relay`] | DevSkyy-style channels (seeds 000, 002) |
//! | `/ws/monitor/{session_id}` | [`escai`] | ESCAI monitors (seed 003) |
//! | `/api/v1/ws/{request_id}` | [`council`] | AI Council frontends (seed 004) |
//!
//! Architecture invariant: a dialect reaches the engine, the hub and the
//! registry only through the core, and the layers below know no dialect (the
//! heartbeat frames and error forms they need come in as data).

pub mod council;
pub mod escai;
pub mod native;
pub mod relay;
pub mod snapshot;

use bytes::Bytes;

use super::core::Core;
pub use super::route::{Kind, Route};
use crate::channel::ChannelName;

/// One seed's wire format on the core. Implemented by each dialect module;
/// [`AnyDialect`] dispatches to them without a box per call.
///
/// Rate limiting of text frames is the dialect's: it calls [`Core::admit`]
/// for each frame that costs (the AI Council dialect lets a client
/// acknowledge each event it was sent without counting it as a flood).
pub(crate) trait Dialect {
    /// What the connection gets when it opens (greeting, first subscriptions).
    async fn open(&mut self, core: &mut Core);

    /// One text frame from the client.
    async fn on_text(&mut self, core: &mut Core, text: Bytes);

    /// The core lost `channel`'s continuity (its history is gone): restart the
    /// subscription the dialect's way. The hub holds its live messages meanwhile.
    async fn resync(&mut self, core: &mut Core, channel: ChannelName);
}

/// The dialect of one connection.
pub(crate) enum AnyDialect {
    Native(native::NativeDialect),
    Snapshot(snapshot::SnapshotDialect),
    Relay(relay::RelayDialect),
    Escai(Box<escai::EscaiDialect>),
    Council(Box<council::CouncilDialect>),
}

impl AnyDialect {
    /// The dialect a route speaks.
    pub(crate) fn for_route(route: Route) -> Self {
        match route {
            Route::Native { resume } => Self::Native(native::NativeDialect::new(resume)),
            Route::Snapshot(channel) => Self::Snapshot(snapshot::SnapshotDialect::new(channel)),
            Route::Relay(channel) => Self::Relay(relay::RelayDialect::new(channel)),
            Route::Escai { session_id } => {
                Self::Escai(Box::new(escai::EscaiDialect::new(session_id)))
            }
            Route::Council {
                request_id,
                channel,
            } => Self::Council(Box::new(council::CouncilDialect::new(request_id, channel))),
        }
    }

    pub(crate) async fn open(&mut self, core: &mut Core) {
        match self {
            Self::Native(d) => d.open(core).await,
            Self::Snapshot(d) => d.open(core).await,
            Self::Relay(d) => d.open(core).await,
            Self::Escai(d) => d.open(core).await,
            Self::Council(d) => d.open(core).await,
        }
    }

    pub(crate) async fn on_text(&mut self, core: &mut Core, text: Bytes) {
        match self {
            Self::Native(d) => d.on_text(core, text).await,
            Self::Snapshot(d) => d.on_text(core, text).await,
            Self::Relay(d) => d.on_text(core, text).await,
            Self::Escai(d) => d.on_text(core, text).await,
            Self::Council(d) => d.on_text(core, text).await,
        }
    }

    pub(crate) async fn resync(&mut self, core: &mut Core, channel: ChannelName) {
        match self {
            Self::Native(d) => d.resync(core, channel).await,
            Self::Snapshot(d) => d.resync(core, channel).await,
            Self::Relay(d) => d.resync(core, channel).await,
            Self::Escai(d) => d.resync(core, channel).await,
            Self::Council(d) => d.resync(core, channel).await,
        }
    }
}
