//! Heartbeats, idle and token-expiry deadlines of every connection, kept in
//! one timing wheel per fan-out shard.
//!
//! A connection is in exactly one slot of the wheel: the second of its next
//! deadline. Once a second the shard takes the current slot and, for each
//! connection in it, does what is due — write a ping (the shared pre-encoded
//! frame, straight into the socket), close a client that did not answer the
//! last ping (4002), was silent too long (4003) or let its token expire (4001,
//! after a notice and a grace period) — and puts it back in the slot of its
//! next deadline. An idle connection therefore costs one visit per ping
//! interval and no task wake-up at all; the wheel holds weak references, so a
//! closed connection is simply dropped when its slot comes.
//!
//! Connections of different dialects keep alive differently: each is watched
//! under a [`Profile`] (index into the hub's `heartbeats`) — its deadlines,
//! whether it gets WebSocket pings, an application heartbeat text frame (the
//! ESCAI seed's `{"type":"ping"}`, the AI Council seed's `heartbeat`), and the
//! notice its clients get when their token expires. The frames come from the
//! layer above as function pointers: the wheel knows no dialect.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;

use crate::metrics::GatewayMetrics;
use crate::protocol::{CloseCode, ErrorCode, server};
use crate::ws::conn::{Conn, OutState};
use crate::ws::frame;

/// How one kind of connection is kept alive (0 disables the ping, the pong
/// timeout or the idle limit).
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    pub ping_interval: Duration,
    /// Time to answer a ping (a WebSocket pong, or what the dialect counts as
    /// one) before the close with 4002; 0: pings expect no answer.
    pub pong_timeout: Duration,
    pub idle_timeout: Duration,
    /// Time between the `token_expired` notice and the close (4001).
    pub token_grace: Duration,
    /// Send WebSocket ping frames.
    pub ws_ping: bool,
    /// An application heartbeat sent with each ping (built once per tick).
    pub app_ping: Option<fn() -> String>,
    /// The notice a client gets when its token expires (`None`: the native
    /// protocol's `token_expired` error).
    pub expired_notice: Option<fn(Duration) -> String>,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            token_grace: Duration::from_secs(10),
            ws_ping: true,
            app_ping: None,
            expired_notice: None,
        }
    }
}

/// Which of the hub's heartbeat configurations a connection is watched under.
pub type Profile = u8;

/// One profile's configuration with its pre-encoded frames.
struct Keepalive {
    config: HeartbeatConfig,
    expired_notice: Bytes,
}

impl Keepalive {
    fn new(config: HeartbeatConfig) -> Self {
        let grace = config.token_grace;
        let notice = match config.expired_notice {
            Some(build) => build(grace),
            None => server::error(
                ErrorCode::TokenExpired,
                &format!(
                    "your token expired: send {{\"type\":\"refresh_token\",\"token\":…}} within {} s or the connection closes with 4001",
                    grace.as_secs()
                ),
                None,
                None,
            ),
        };
        Self {
            config,
            expired_notice: frame::text(&notice),
        }
    }
}

/// Slots of one tick; deadlines further out are re-examined after a turn.
const SLOTS: usize = 64;
/// One tick of the wheel, in milliseconds (the shard ticks it once a second).
pub(crate) const TICK_MS: u64 = 1000;

/// The wheel; see the module documentation.
pub(crate) struct Wheel {
    slots: Vec<Vec<(Weak<Conn>, Profile)>>,
    cursor: usize,
    profiles: Vec<Keepalive>,
    ping: Bytes,
}

impl Wheel {
    /// A wheel for connections watched under `profiles` (at least one: the
    /// first is the default).
    pub(crate) fn new(profiles: Vec<HeartbeatConfig>) -> Self {
        let mut profiles: Vec<Keepalive> = profiles.into_iter().map(Keepalive::new).collect();
        if profiles.is_empty() {
            profiles.push(Keepalive::new(HeartbeatConfig::default()));
        }
        Self {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            cursor: 0,
            profiles,
            ping: frame::encode(frame::OpCode::Ping, b""),
        }
    }

    /// The index of `profile`'s configuration (the default for an unknown one).
    fn index(&self, profile: Profile) -> usize {
        let i = usize::from(profile);
        if i < self.profiles.len() { i } else { 0 }
    }

    fn keepalive(&self, profile: Profile) -> &Keepalive {
        &self.profiles[self.index(profile)]
    }

    /// Places a connection in the slot of `due` (monotonic milliseconds),
    /// rounded up to the next tick: checks are never early.
    fn insert(&mut self, conn: Weak<Conn>, profile: Profile, due: u64, now: u64) {
        let ahead = due.saturating_sub(now).div_ceil(TICK_MS);
        let ahead = ahead.clamp(1, SLOTS as u64 - 1) as usize;
        self.slots[(self.cursor + ahead) % SLOTS].push((conn, profile));
    }

    /// Starts watching a new connection under `profile`.
    pub(crate) fn watch(&mut self, conn: &Arc<Conn>, profile: Profile) {
        let now = crate::time::mono_millis();
        let interval = millis(self.keepalive(profile).config.ping_interval);
        if interval > 0 {
            // Clients that connect together (a deploy, a reconnect storm)
            // would otherwise be pinged together, and answer together, every
            // interval for as long as they stay: the first ping comes at a
            // moment spread over the second half of the interval.
            let early = (interval as f64 / 2.0 * crate::time::spread(conn.id())) as u64;
            conn.start_ping_clock(now.saturating_sub(early).max(1));
        }
        let due = self.next_deadline(conn, profile, now, crate::time::unix_secs());
        self.insert(Arc::downgrade(conn), profile, due, now);
    }

    /// Advances one tick and handles every connection due now.
    pub(crate) fn tick(&mut self, metrics: &GatewayMetrics) {
        self.cursor = (self.cursor + 1) % SLOTS;
        let due = std::mem::take(&mut self.slots[self.cursor]);
        let now = crate::time::mono_millis();
        let now_unix = crate::time::unix_secs();
        let mut again = Vec::new();
        // Application heartbeats carry the time: built once per tick and profile.
        let mut app_pings: Vec<Option<Bytes>> = vec![None; self.profiles.len()];
        for (weak, profile) in due {
            let Some(conn) = weak.upgrade() else { continue };
            if let Some(next) = self.visit(&conn, profile, &mut app_pings, now, now_unix, metrics) {
                again.push((weak, profile, next));
            }
        }
        for (weak, profile, next) in again {
            self.insert(weak, profile, next, now);
        }
    }

    /// Does what is due for one connection; returns its next deadline, or
    /// `None` when it is finished.
    fn visit(
        &self,
        conn: &Conn,
        profile: Profile,
        app_pings: &mut [Option<Bytes>],
        now: u64,
        now_unix: u64,
        metrics: &GatewayMetrics,
    ) -> Option<u64> {
        if conn.state() != OutState::Open {
            return None;
        }
        let keepalive = self.keepalive(profile);
        let c = &keepalive.config;
        let idle = millis(c.idle_timeout);
        if idle > 0 && now.saturating_sub(conn.last_seen()) >= idle {
            conn.close(CloseCode::IdleTimeout);
            return None;
        }
        let awaiting = conn.awaiting_pong_since();
        let pong_timeout = millis(c.pong_timeout);
        if pong_timeout > 0 && awaiting > 0 && now.saturating_sub(awaiting) >= pong_timeout {
            conn.close(CloseCode::HeartbeatTimeout);
            return None;
        }
        let interval = millis(c.ping_interval);
        if interval > 0 && now.saturating_sub(conn.last_ping()) >= interval {
            // Recorded before it is sent: the pong may come back at once.
            if pong_timeout > 0 {
                conn.ping_sent(now);
            } else {
                conn.start_ping_clock(now);
            }
            if c.ws_ping {
                conn.send(self.ping.clone());
            }
            if let Some(build) = c.app_ping {
                let text =
                    app_pings[self.index(profile)].get_or_insert_with(|| frame::text(&build()));
                conn.send(text.clone());
            }
        }
        let expires = conn.expires_at();
        if expires > 0 && now_unix >= expires {
            let notified = conn.expiry_notified_at();
            if notified == 0 {
                metrics
                    .client_errors
                    .with_label_values(&[ErrorCode::TokenExpired.as_str()])
                    .inc();
                conn.expiry_notified(now);
                conn.send(keepalive.expired_notice.clone());
            } else if now.saturating_sub(notified) >= millis(c.token_grace) {
                conn.close(CloseCode::TokenExpired);
                return None;
            }
        }
        Some(self.next_deadline(conn, profile, now, now_unix))
    }

    /// The earliest moment (monotonic milliseconds) something may be due for `conn`.
    fn next_deadline(&self, conn: &Conn, profile: Profile, now: u64, now_unix: u64) -> u64 {
        let c = &self.keepalive(profile).config;
        let mut next = now + TICK_MS * SLOTS as u64;
        let interval = millis(c.ping_interval);
        if interval > 0 {
            next = next.min(conn.last_ping() + interval);
        }
        let awaiting = conn.awaiting_pong_since();
        if awaiting > 0 && !c.pong_timeout.is_zero() {
            next = next.min(awaiting + millis(c.pong_timeout));
        }
        let idle = millis(c.idle_timeout);
        if idle > 0 {
            next = next.min(conn.last_seen() + idle);
        }
        let expires = conn.expires_at();
        if expires > 0 {
            let notified = conn.expiry_notified_at();
            next = next.min(if notified > 0 {
                notified + millis(c.token_grace)
            } else {
                now + expires.saturating_sub(now_unix) * 1000
            });
        }
        next
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}
