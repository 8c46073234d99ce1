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
//! | `/ws/{channel}` | [`ark`] | the ARK dashboards (seed 000) |
//! | `/api/ws/{channel}` | [`relay`] | DevSkyy-style channels (seeds 000, 002) |
//! | `/ws/monitor/{session_id}` | [`escai`] | ESCAI monitors (seed 003) |
//! | `/api/v1/ws/{request_id}` | [`council`] | AI Council frontends (seed 004) |
//!
//! Architecture invariant: a dialect reaches the engine, the hub and the
//! registry only through the core, and the layers below know no dialect (the
//! heartbeat frames and error forms they need come in as data).

pub mod ark;
pub mod council;
pub mod escai;
pub mod native;
pub mod relay;

use std::time::Duration;

use bytes::Bytes;

use super::core::Core;
use crate::channel::ChannelName;
use crate::config::Dialects;
use crate::hub::heartbeat::Profile;
use crate::hub::{FrameKind, HeartbeatConfig};
use crate::protocol::{council as council_wire, escai as escai_wire};

/// Which dialect a connection speaks: labels, forms, heartbeat profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Native,
    Ark,
    Relay,
    Escai,
    Council,
}

impl Kind {
    /// Every dialect, for metrics initialised at 0.
    pub const ALL: [Kind; 5] = [
        Self::Native,
        Self::Ark,
        Self::Relay,
        Self::Escai,
        Self::Council,
    ];

    /// The `route` label of metrics, the connection list and `sys:stats`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Ark => "snapshot",
            Self::Relay => "relay",
            Self::Escai => "escai",
            Self::Council => "council",
        }
    }

    /// The form live messages take on this route.
    pub fn form(self) -> FrameKind {
        match self {
            Self::Native => FrameKind::Native,
            Self::Ark | Self::Relay => FrameKind::Raw,
            Self::Escai => FrameKind::Escai,
            Self::Council => FrameKind::Council,
        }
    }

    /// The hub's heartbeat profile for this route (see `HubConfig`).
    pub fn heartbeat_profile(self) -> Profile {
        match self {
            Self::Native | Self::Ark | Self::Relay => 0,
            Self::Escai => ESCAI_PROFILE,
            Self::Council => COUNCIL_PROFILE,
        }
    }
}

/// Heartbeat profile of the ESCAI route: `HubConfig::dialect_heartbeats[0]`.
pub const ESCAI_PROFILE: Profile = 1;
/// Heartbeat profile of the AI Council route: `HubConfig::dialect_heartbeats[1]`.
pub const COUNCIL_PROFILE: Profile = 2;

/// The heartbeat profiles of the dialects after the native one, in profile
/// order (`ESCAI_PROFILE`, `COUNCIL_PROFILE`): the hub's `dialect_heartbeats`.
pub fn heartbeats(dialects: &Dialects, token_grace: Duration) -> Vec<HeartbeatConfig> {
    let escai = &dialects.escai;
    let council = &dialects.council;
    vec![
        HeartbeatConfig {
            ping_interval: escai.ping_interval,
            pong_timeout: escai.pong_timeout,
            idle_timeout: escai.idle_timeout,
            token_grace,
            ws_ping: true,
            app_ping: Some(escai_wire::ping),
            expired_notice: Some(|grace| {
                escai_wire::error(
                    escai_wire::Code::TokenExpired,
                    &format!(
                        "your token expired: the connection closes with 4001 in {} s; reconnect with a new token",
                        grace.as_secs()
                    ),
                )
            }),
        },
        HeartbeatConfig {
            ping_interval: council.heartbeat_interval,
            // The seed's clients answer `heartbeat_response` when they like:
            // only silence for the idle timeout ends a connection.
            pong_timeout: Duration::ZERO,
            idle_timeout: council.idle_timeout,
            token_grace,
            ws_ping: false,
            app_ping: Some(council_wire::heartbeat),
            expired_notice: Some(|grace| {
                council_wire::error(
                    council_wire::Code::TokenExpired,
                    &format!(
                        "your token expired: the connection closes with 4001 in {} s; reconnect with a new token",
                        grace.as_secs()
                    ),
                )
            }),
        },
    ]
}

/// A route with what its path named, as the upgrade accepted it.
#[derive(Debug, Clone)]
pub enum Route {
    /// `/ws`: the native protocol; `resume` is the `?session=` asked for.
    Native { resume: Option<String> },
    /// `/ws/{channel}`: the channel's snapshot at once, then each new message,
    /// as bare JSON (the ARK dashboards of seed 000).
    Ark(ChannelName),
    /// `/api/ws/{channel}`: the channel's messages as published (seed 002).
    Relay(ChannelName),
    /// `/ws/monitor/{session_id}` (seed 003).
    Escai { session_id: String },
    /// `/api/v1/ws/{request_id}`: channel `council:{request_id}` (seed 004).
    Council {
        request_id: String,
        channel: ChannelName,
    },
}

impl Route {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Native { .. } => Kind::Native,
            Self::Ark(_) => Kind::Ark,
            Self::Relay(_) => Kind::Relay,
            Self::Escai { .. } => Kind::Escai,
            Self::Council { .. } => Kind::Council,
        }
    }

    /// The channel the route's path names, if it names one.
    pub fn channel(&self) -> Option<&ChannelName> {
        match self {
            Self::Ark(c) | Self::Relay(c) | Self::Council { channel: c, .. } => Some(c),
            Self::Native { .. } | Self::Escai { .. } => None,
        }
    }
}

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
    Native(native::Native),
    Ark(ark::Ark),
    Relay(relay::Relay),
    Escai(Box<escai::Escai>),
    Council(Box<council::Council>),
}

impl AnyDialect {
    /// The dialect a route speaks.
    pub(crate) fn for_route(route: Route) -> Self {
        match route {
            Route::Native { resume } => Self::Native(native::Native::new(resume)),
            Route::Ark(channel) => Self::Ark(ark::Ark::new(channel)),
            Route::Relay(channel) => Self::Relay(relay::Relay::new(channel)),
            Route::Escai { session_id } => Self::Escai(Box::new(escai::Escai::new(session_id))),
            Route::Council {
                request_id,
                channel,
            } => Self::Council(Box::new(council::Council::new(request_id, channel))),
        }
    }

    pub(crate) async fn open(&mut self, core: &mut Core) {
        match self {
            Self::Native(d) => d.open(core).await,
            Self::Ark(d) => d.open(core).await,
            Self::Relay(d) => d.open(core).await,
            Self::Escai(d) => d.open(core).await,
            Self::Council(d) => d.open(core).await,
        }
    }

    pub(crate) async fn on_text(&mut self, core: &mut Core, text: Bytes) {
        match self {
            Self::Native(d) => d.on_text(core, text).await,
            Self::Ark(d) => d.on_text(core, text).await,
            Self::Relay(d) => d.on_text(core, text).await,
            Self::Escai(d) => d.on_text(core, text).await,
            Self::Council(d) => d.on_text(core, text).await,
        }
    }

    pub(crate) async fn resync(&mut self, core: &mut Core, channel: ChannelName) {
        match self {
            Self::Native(d) => d.resync(core, channel).await,
            Self::Ark(d) => d.resync(core, channel).await,
            Self::Relay(d) => d.resync(core, channel).await,
            Self::Escai(d) => d.resync(core, channel).await,
            Self::Council(d) => d.resync(core, channel).await,
        }
    }
}
