//! Runtime configuration of a gateway, independent of how it was given (flags,
//! environment, tests). Every limit, timeout and buffer lives here with its
//! production default; `cli.rs` maps flags onto these.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::AnonymousReads;
use crate::auth::client_ip::ClientIpPolicy;
use crate::auth::origin::OriginPolicy;
use crate::filter::FilterLimits;
use crate::hub::HubConfig;
pub use crate::ws::deflate::DeflateConfig;

/// Limits that protect the replica and its clients from each other.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open WebSocket connections per replica; further upgrades get 503.
    pub max_connections: usize,
    /// Subscriptions one connection may hold.
    pub max_channels_per_connection: usize,
    /// Largest frame a client may send (close 1009 beyond).
    pub max_frame_bytes: usize,
    /// Largest message a client may send, all fragments together (close 1009 beyond).
    /// Also the largest body accepted by `POST /api/v1/publish`.
    pub max_message_bytes: usize,
    /// A REST request body over its endpoint's limit but not over this many
    /// bytes is read and discarded before the 413, so a proxy in front gets the
    /// answer (not a reset connection it reports as 502).
    pub discard_body_bytes: u64,
    /// Bytes queued for one client before it is closed as a slow consumer (4000).
    pub max_outbound_bytes: usize,
    /// Bytes read from a socket at a time. Nothing is allocated while a client is idle.
    pub read_chunk_bytes: usize,
    /// Nesting depth of JSON accepted from clients and publishers.
    pub max_json_depth: usize,
    /// Length of a channel name, in bytes.
    pub max_channel_len: usize,
    /// History entries replayed to one resuming subscription at most.
    pub max_replay: usize,
    /// How long a publish's idempotency key (`POST /api/v1/publish`) is
    /// remembered: a repeat within it is answered, not published again.
    pub idempotency_window: Duration,
    /// Filter size limits.
    pub filter: FilterLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_channels_per_connection: 64,
            max_frame_bytes: 64 * 1024,
            max_message_bytes: 64 * 1024,
            discard_body_bytes: 1024 * 1024,
            max_outbound_bytes: 1024 * 1024,
            read_chunk_bytes: 4096,
            max_json_depth: 32,
            max_channel_len: crate::channel::DEFAULT_MAX_CHANNEL_LEN,
            max_replay: 10_000,
            idempotency_window: Duration::from_secs(300),
            filter: FilterLimits::default(),
        }
    }
}

/// Timers of the connection handling (heartbeats are in `HubConfig::heartbeat`).
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// Time allowed for the closing handshake before the socket is dropped.
    pub close_timeout: Duration,
    /// Time an HTTP client has to send its request headers.
    pub header_read_timeout: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            close_timeout: Duration::from_secs(2),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Who may connect, from where, and how much they may send.
#[derive(Debug, Clone)]
pub struct Security {
    /// Pages allowed to open WebSockets and call the REST API from a browser.
    pub origins: OriginPolicy,
    /// Connections one user (token `sub`) may hold on one replica; more get 429.
    pub max_connections_per_user: usize,
    /// Sustained messages per second a client may send.
    pub messages_per_second: u32,
    /// Messages a client may send in a burst above the sustained rate.
    pub message_burst: u32,
    /// Channels a WebSocket client without a token may read, with
    /// authentication on (`--anonymous-subscribe`); `None`: a token is required.
    pub anonymous: Option<Arc<AnonymousReads>>,
    /// Connections without a token per replica (a share of `max_connections`).
    pub max_anonymous_connections: usize,
    /// Connections without a token per client address per replica.
    pub max_anonymous_connections_per_ip: usize,
    /// Where a client's address comes from (behind trusted proxies: a header).
    pub client_ip: ClientIpPolicy,
}

impl Default for Security {
    fn default() -> Self {
        Self {
            origins: OriginPolicy::Any,
            max_connections_per_user: 100,
            messages_per_second: 20,
            message_burst: 50,
            anonymous: None,
            max_anonymous_connections: 5_000,
            max_anonymous_connections_per_ip: 20,
            client_ip: ClientIpPolicy::default(),
        }
    }
}

/// How a replica leaves on SIGTERM.
#[derive(Debug, Clone)]
pub struct Drain {
    /// Clients are closed (1001) spread evenly over this window, so that they do
    /// not all reconnect to the other replicas at once.
    pub window: Duration,
    /// The process exits by this deadline whatever is left.
    pub deadline: Duration,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            deadline: Duration::from_secs(25),
        }
    }
}

/// The ESCAI route (seed 003): its heartbeat, as the seed's `HeartbeatManager`.
#[derive(Debug, Clone)]
pub struct EscaiConfig {
    /// A WebSocket ping and the seed's `{"type":"ping"}` every interval (0 disables).
    pub ping_interval: Duration,
    /// Time to answer (a WebSocket pong or `{"type":"pong"}`) before the close with 4002.
    pub pong_timeout: Duration,
    /// Time a client may send nothing before it is closed with 4003 (0 disables).
    pub idle_timeout: Duration,
}

impl Default for EscaiConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// The AI Council route (seed 004).
#[derive(Debug, Clone)]
pub struct CouncilConfig {
    /// The seed's `{"type":"heartbeat"}` every interval (0 disables).
    pub heartbeat_interval: Duration,
    /// Time a client may send nothing before it is closed with 4003 (0 disables).
    pub idle_timeout: Duration,
    /// How long a request's events are kept after its last event (the seed's
    /// `cleanup_old_data(max_age_hours=24)`).
    pub retention: Duration,
    /// How much longer than `retention` the request's position (its newest
    /// `message_id`), owner and acknowledgements are kept: a client that
    /// reconnects after the events expired is told which it missed
    /// (`events_expired`) rather than finding an empty request.
    pub tombstone: Duration,
    /// Events kept per request (the history of the `council` namespace).
    pub history_size: usize,
    /// How long acknowledgements are coalesced before they are written to
    /// Redis: what a replica that is killed or stalled can lose (those events
    /// are replayed; the route is at least once).
    pub ack_flush_interval: Duration,
}

impl CouncilConfig {
    /// How long a request's owner, acknowledgements and position are kept
    /// after its last write: the retention and the tombstone.
    pub fn record_ttl(&self) -> Duration {
        self.retention.saturating_add(self.tombstone)
    }
}

impl Default for CouncilConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            retention: Duration::from_secs(24 * 3600),
            tombstone: Duration::from_secs(7 * 24 * 3600),
            history_size: 10_000,
            ack_flush_interval: Duration::from_millis(500),
        }
    }
}

/// The seed systems' routes.
#[derive(Debug, Clone, Default)]
pub struct Dialects {
    pub escai: EscaiConfig,
    pub council: CouncilConfig,
}

/// Everything a gateway replica needs to run.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// Names this replica in logs, connection ids and the admin API.
    pub replica_id: String,
    /// Accepted as `X-API-Key` on the publish and admin endpoints.
    pub api_key: Option<String>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub security: Security,
    pub drain: Drain,
    pub hub: HubConfig,
    pub dialects: Dialects,
}

impl GatewayConfig {
    /// A configuration with production defaults listening on `listen`.
    pub fn new(listen: SocketAddr, replica_id: String) -> Self {
        Self {
            listen,
            replica_id,
            api_key: None,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            security: Security::default(),
            drain: Drain::default(),
            hub: HubConfig::default(),
            dialects: Dialects::default(),
        }
    }
}
