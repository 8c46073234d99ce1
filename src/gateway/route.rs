//! The routes a WebSocket upgrade can take, and what each implies below the
//! dialects: its metrics label, the form the hub encodes its messages in, the
//! heartbeat profile the hub's timing wheel keeps it alive with.

use std::time::Duration;

use crate::channel::ChannelName;
use crate::config::Dialects;
use crate::hub::heartbeat::Profile;
use crate::hub::{FrameKind, HeartbeatConfig};
use crate::protocol::{council as council_wire, escai as escai_wire};

/// Which dialect a connection speaks: labels, forms, heartbeat profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Native,
    Snapshot,
    Relay,
    Escai,
    Council,
}

impl Kind {
    /// Every dialect, for metrics initialised at 0.
    pub const ALL: [Kind; 5] = [
        Self::Native,
        Self::Snapshot,
        Self::Relay,
        Self::Escai,
        Self::Council,
    ];

    /// The `route` label of metrics, the connection list and `sys:stats`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Snapshot => "snapshot",
            Self::Relay => "relay",
            Self::Escai => "escai",
            Self::Council => "council",
        }
    }

    /// The form live messages take on this route.
    pub fn form(self) -> FrameKind {
        match self {
            Self::Native => FrameKind::Native,
            Self::Snapshot | Self::Relay => FrameKind::Bare,
            Self::Escai => FrameKind::Escai,
            Self::Council => FrameKind::Council,
        }
    }

    /// The hub's heartbeat profile for this route (see `HubConfig`).
    pub fn heartbeat_profile(self) -> Profile {
        match self {
            Self::Native | Self::Snapshot | Self::Relay => 0,
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
    Snapshot(ChannelName),
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
            Self::Snapshot(_) => Kind::Snapshot,
            Self::Relay(_) => Kind::Relay,
            Self::Escai { .. } => Kind::Escai,
            Self::Council { .. } => Kind::Council,
        }
    }

    /// The channel the route's path names, if it names one.
    pub fn channel(&self) -> Option<&ChannelName> {
        match self {
            Self::Snapshot(c) | Self::Relay(c) | Self::Council { channel: c, .. } => Some(c),
            Self::Native { .. } | Self::Escai { .. } => None,
        }
    }
}
