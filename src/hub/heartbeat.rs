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
        self.watch_at(
            conn,
            profile,
            crate::time::mono_millis(),
            crate::time::unix_secs(),
        );
    }

    /// [`Wheel::watch`] at a given moment (monotonic milliseconds, Unix seconds).
    fn watch_at(&mut self, conn: &Arc<Conn>, profile: Profile, now: u64, now_unix: u64) {
        let interval = millis(self.keepalive(profile).config.ping_interval);
        if interval > 0 {
            // Clients that connect together (a deploy, a reconnect storm)
            // would otherwise be pinged together, and answer together, every
            // interval for as long as they stay: the first ping comes at a
            // moment spread over the second half of the interval.
            let early = (interval as f64 / 2.0 * crate::time::spread(conn.id())) as u64;
            conn.start_ping_clock(now.saturating_sub(early).max(1));
        }
        let due = self.next_deadline(conn, profile, now, now_unix);
        self.insert(Arc::downgrade(conn), profile, due, now);
    }

    /// Advances one tick and handles every connection due now.
    pub(crate) fn tick(&mut self, metrics: &GatewayMetrics) {
        self.tick_at(
            metrics,
            crate::time::mono_millis(),
            crate::time::unix_secs(),
        );
    }

    /// [`Wheel::tick`] at a given moment (monotonic milliseconds, Unix seconds).
    fn tick_at(&mut self, metrics: &GatewayMetrics, now: u64, now_unix: u64) {
        self.cursor = (self.cursor + 1) % SLOTS;
        let due = std::mem::take(&mut self.slots[self.cursor]);
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

#[cfg(test)]
mod tests {
    //! The wheel is driven through `watch_at` / `tick_at` with a simulated
    //! clock: tick `k` happens at `base + k` seconds (monotonic) and
    //! `UNIX0 + k` (Unix), `base` being when the connection was made. What
    //! the wheel wrote is read back at the client's end of a real socket.

    use super::*;
    use crate::ws::test_support::{Seen, conn_pair, metrics};

    const UNIX0: u64 = 1_800_000_000;
    const END: &str = "-- end of test --";

    fn profile(ping: u64, pong: u64, idle: u64) -> HeartbeatConfig {
        HeartbeatConfig {
            ping_interval: Duration::from_secs(ping),
            pong_timeout: Duration::from_secs(pong),
            idle_timeout: Duration::from_secs(idle),
            token_grace: Duration::from_secs(3),
            ws_ping: true,
            app_ping: None,
            expired_notice: None,
        }
    }

    /// A wheel on a simulated clock starting at `base`.
    struct Sim {
        wheel: Wheel,
        metrics: Arc<GatewayMetrics>,
        base: u64,
        tick: u64,
    }

    impl Sim {
        fn new(profiles: Vec<HeartbeatConfig>, base: u64) -> Self {
            Self {
                wheel: Wheel::new(profiles),
                metrics: metrics(),
                base,
                tick: 0,
            }
        }

        fn now(&self) -> u64 {
            self.base + self.tick * TICK_MS
        }

        fn watch(&mut self, conn: &Arc<Conn>, profile: Profile) {
            self.wheel
                .watch_at(conn, profile, self.now(), UNIX0 + self.tick);
        }

        fn tick(&mut self) {
            self.tick += 1;
            self.wheel
                .tick_at(&self.metrics, self.now(), UNIX0 + self.tick);
        }

        fn watched(&self) -> usize {
            self.wheel.slots.iter().map(Vec::len).sum()
        }
    }

    /// The tick of the first ping for a connection watched at tick 0.
    fn first_ping_tick(conn: &Conn, interval_secs: u64) -> u64 {
        let interval = interval_secs * 1000;
        let early = (interval as f64 / 2.0 * crate::time::spread(conn.id())) as u64;
        (interval - early).div_ceil(TICK_MS)
    }

    /// Everything the client received, after the connection's queue is flushed.
    async fn received(conn: &Conn, peer: &mut crate::ws::test_support::Peer) -> Vec<Seen> {
        conn.flush();
        if conn.state() == OutState::Open {
            conn.send_text(END);
            peer.until(END).await
        } else {
            // Closing: the close frame is the last thing written.
            let mut seen = Vec::new();
            loop {
                let frame = peer.frame().await;
                let last = matches!(frame, Seen::Close(_));
                seen.push(frame);
                if last {
                    return seen;
                }
            }
        }
    }

    #[tokio::test]
    async fn answered_pings_come_every_interval_and_keep_the_connection() {
        let (conn, mut peer) = conn_pair(11, 1 << 20).await;
        let mut sim = Sim::new(vec![profile(10, 5, 0)], conn.last_seen());
        sim.watch(&conn, 0);
        let first = first_ping_tick(&conn, 10);
        assert!((5..=10).contains(&first), "{first}");
        let mut pinged = Vec::new();
        for _ in 0..45 {
            sim.tick();
            if conn.awaiting_pong_since() != 0 {
                assert_eq!(conn.awaiting_pong_since(), sim.now(), "recorded when sent");
                pinged.push(sim.tick);
                conn.pong_received();
            }
        }
        let expected: Vec<u64> = (first..=45).step_by(10).collect();
        assert_eq!(pinged, expected);
        assert_eq!(conn.state(), OutState::Open);
        assert_eq!(
            received(&conn, &mut peer).await,
            vec![Seen::Ping; expected.len()]
        );
    }

    #[tokio::test]
    async fn an_unanswered_ping_closes_with_4002_after_the_pong_timeout() {
        let (conn, mut peer) = conn_pair(12, 1 << 20).await;
        let mut sim = Sim::new(vec![profile(10, 5, 0)], conn.last_seen());
        sim.watch(&conn, 0);
        let first = first_ping_tick(&conn, 10);
        while sim.tick < first + 4 {
            sim.tick();
        }
        assert_eq!(conn.state(), OutState::Open, "not before the timeout");
        assert_ne!(conn.awaiting_pong_since(), 0);
        sim.tick();
        assert_eq!(conn.state(), OutState::Closing(CloseCode::HeartbeatTimeout));
        assert_eq!(sim.watched(), 0, "a closed connection leaves the wheel");
        assert_eq!(
            received(&conn, &mut peer).await,
            vec![Seen::Ping, Seen::Close(Some(4002))]
        );
    }

    #[tokio::test]
    async fn silence_closes_with_4003_at_the_idle_limit_and_pong_timeout_0_expects_no_answer() {
        let (conn, mut peer) = conn_pair(13, 1 << 20).await;
        let mut sim = Sim::new(vec![profile(10, 0, 30)], conn.last_seen());
        sim.watch(&conn, 0);
        let first = first_ping_tick(&conn, 10);
        while sim.tick < 29 {
            sim.tick();
            assert_eq!(conn.awaiting_pong_since(), 0, "no answer expected");
        }
        assert_eq!(conn.state(), OutState::Open, "never answered, still open");
        sim.tick();
        assert_eq!(conn.state(), OutState::Closing(CloseCode::IdleTimeout));
        let pings = (first..30).step_by(10).count();
        let mut expected = vec![Seen::Ping; pings];
        expected.push(Seen::Close(Some(4003)));
        assert_eq!(received(&conn, &mut peer).await, expected);
    }

    #[tokio::test]
    async fn a_deadline_past_one_turn_of_the_wheel_is_kept() {
        let (conn, mut peer) = conn_pair(14, 1 << 20).await;
        let mut sim = Sim::new(vec![profile(0, 0, 100)], conn.last_seen());
        sim.watch(&conn, 0);
        while sim.tick < 99 {
            sim.tick();
        }
        assert_eq!(conn.state(), OutState::Open);
        sim.tick();
        assert_eq!(conn.state(), OutState::Closing(CloseCode::IdleTimeout));
        assert_eq!(
            received(&conn, &mut peer).await,
            vec![Seen::Close(Some(4003))]
        );
    }

    #[tokio::test]
    async fn an_expired_token_gets_the_notice_then_4001_after_the_grace() {
        let (conn, mut peer) = conn_pair(15, 1 << 20).await;
        conn.set_expiry(UNIX0 + 5);
        let mut sim = Sim::new(vec![profile(0, 0, 0)], conn.last_seen());
        sim.watch(&conn, 0);
        while sim.tick < 4 {
            sim.tick();
        }
        assert_eq!(conn.expiry_notified_at(), 0, "not before it expires");
        sim.tick();
        assert_eq!(conn.expiry_notified_at(), sim.now());
        while sim.tick < 7 {
            sim.tick();
        }
        assert_eq!(conn.state(), OutState::Open, "within the grace");
        sim.tick();
        assert_eq!(conn.state(), OutState::Closing(CloseCode::TokenExpired));
        let seen = received(&conn, &mut peer).await;
        let [Seen::Text(notice), Seen::Close(Some(4001))] = &seen[..] else {
            panic!("expected the notice and the close: {seen:?}");
        };
        let notice: serde_json::Value = serde_json::from_str(notice).expect("JSON notice");
        assert_eq!(notice["type"], "error");
        assert_eq!(notice["code"], "token_expired");
        assert!(
            notice["message"]
                .as_str()
                .is_some_and(|m| m.contains("3 s")),
            "names the grace: {notice}"
        );
    }

    #[tokio::test]
    async fn a_token_refreshed_within_the_grace_keeps_the_connection() {
        let (conn, mut peer) = conn_pair(16, 1 << 20).await;
        conn.set_expiry(UNIX0 + 5);
        let mut sim = Sim::new(vec![profile(0, 0, 0)], conn.last_seen());
        sim.watch(&conn, 0);
        while sim.tick < 6 {
            sim.tick();
        }
        assert_ne!(conn.expiry_notified_at(), 0);
        conn.set_expiry(UNIX0 + 100);
        while sim.tick < 20 {
            sim.tick();
        }
        assert_eq!(conn.state(), OutState::Open);
        let seen = received(&conn, &mut peer).await;
        assert!(
            matches!(&seen[..], [Seen::Text(t)] if t.contains("token_expired")),
            "one notice, no close: {seen:?}"
        );
    }

    #[tokio::test]
    async fn a_dialect_profile_sends_its_own_heartbeat_and_notice() {
        let dialect = HeartbeatConfig {
            ws_ping: false,
            app_ping: Some(|| r#"{"type":"ping"}"#.to_string()),
            expired_notice: Some(|grace| format!("expired, {} s left", grace.as_secs())),
            ..profile(10, 0, 0)
        };
        let (native, mut native_peer) = conn_pair(17, 1 << 20).await;
        let (conn, mut peer) = conn_pair(18, 1 << 20).await;
        conn.set_expiry(UNIX0 + 25);
        let mut sim = Sim::new(vec![profile(10, 5, 0), dialect], conn.last_seen());
        sim.watch(&native, 0);
        sim.watch(&conn, 1);
        let first = first_ping_tick(&conn, 10);
        let native_first = first_ping_tick(&native, 10);
        while sim.tick < 27 {
            sim.tick();
            if native.awaiting_pong_since() != 0 {
                native.pong_received();
            }
        }
        assert_eq!(conn.state(), OutState::Open, "its pings expect no answer");
        assert_eq!(native.state(), OutState::Open);
        let app_ping = Seen::Text(r#"{"type":"ping"}"#.into());
        let mut expected: Vec<(u64, Seen)> = (first..=27)
            .step_by(10)
            .map(|t| (t, app_ping.clone()))
            .collect();
        expected.push((25, Seen::Text("expired, 3 s left".into())));
        expected.sort_by_key(|(t, _)| *t);
        let expected: Vec<Seen> = expected.into_iter().map(|(_, s)| s).collect();
        assert_eq!(received(&conn, &mut peer).await, expected);
        assert_eq!(
            received(&native, &mut native_peer).await,
            vec![Seen::Ping; (native_first..=27).step_by(10).count()],
            "the default profile keeps WebSocket pings"
        );
    }

    #[tokio::test]
    async fn an_unknown_profile_is_watched_under_the_default() {
        let (conn, mut peer) = conn_pair(19, 1 << 20).await;
        let mut sim = Sim::new(vec![profile(10, 0, 0)], conn.last_seen());
        sim.watch(&conn, 9);
        while sim.tick < 10 {
            sim.tick();
        }
        assert_eq!(received(&conn, &mut peer).await, vec![Seen::Ping]);
    }

    #[tokio::test]
    async fn first_pings_are_spread_over_the_second_half_of_the_interval() {
        let mut conns = Vec::new();
        for id in 100..140 {
            conns.push(conn_pair(id, 1 << 20).await);
        }
        let base = crate::time::mono_millis();
        let mut sim = Sim::new(vec![profile(20, 0, 0)], base);
        for (conn, _) in &conns {
            sim.watch(conn, 0);
        }
        let mut first: Vec<Option<u64>> = vec![None; conns.len()];
        while sim.tick < 20 {
            sim.tick();
            for (i, (conn, _)) in conns.iter().enumerate() {
                if first[i].is_none() && conn.last_ping() == sim.now() {
                    first[i] = Some(sim.tick);
                }
            }
        }
        let mut failures = Vec::new();
        for (i, (conn, _)) in conns.iter().enumerate() {
            let expected = first_ping_tick(conn, 20);
            if first[i] != Some(expected) || !(10..=20).contains(&expected) {
                failures.push(format!(
                    "conn {}: first ping at tick {:?}, expected {expected} (within 10..=20)",
                    conn.id(),
                    first[i]
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        let mut distinct: Vec<u64> = first.iter().flatten().copied().collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(
            distinct.len() >= 8,
            "40 connections made together are pinged at different moments: {distinct:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_closed_or_dropped_elsewhere_leaves_the_wheel() {
        let (closed, mut closed_peer) = conn_pair(20, 1 << 20).await;
        let (dropped, _dropped_peer) = conn_pair(21, 1 << 20).await;
        let mut sim = Sim::new(vec![profile(10, 5, 0)], closed.last_seen());
        sim.watch(&closed, 0);
        sim.watch(&dropped, 0);
        assert_eq!(sim.watched(), 2);
        assert!(closed.close(CloseCode::Kicked));
        drop(dropped);
        while sim.tick < 64 {
            sim.tick();
        }
        assert_eq!(sim.watched(), 0);
        assert_eq!(closed.awaiting_pong_since(), 0, "no ping after the close");
        assert_eq!(
            received(&closed, &mut closed_peer).await,
            vec![Seen::Close(Some(4004))]
        );
    }
}
