//! WebSocket close codes the gateway sends, and what each asks the client to do.
//!
//! Standard codes where RFC 6455 has one; 4000–4999 (reserved for applications)
//! for the rest. `docs/PROTOCOL.md` lists them with the client's expected action.

/// Why the gateway closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the client asked to close.
    Normal,
    /// 1001: the replica is shutting down or draining: reconnect (any replica) and resume.
    GoingAway,
    /// 1002: the client broke the WebSocket framing rules.
    ProtocolError,
    /// 1007: a text frame was not UTF-8.
    InvalidPayload,
    /// 1008: abuse (message flood): reconnect only after backing off.
    PolicyViolation,
    /// 1009: a frame or message exceeded the size limit.
    TooBig,
    /// 1011: an unexpected server fault.
    Internal,
    /// 1012: a drop-in stream (no offsets) restarted because this replica
    /// missed more than the history keeps: reconnect for the current state.
    ServiceRestart,
    /// 1013: the engine is unavailable right now: reconnect with backoff.
    TryAgainLater,
    /// 4000: the client did not read fast enough; its queue overflowed. Reconnect and resume.
    SlowConsumer,
    /// 4001: the token expired and no fresh one came in time. Get a new token, reconnect.
    TokenExpired,
    /// 4002: no pong to the server's ping within the timeout.
    HeartbeatTimeout,
    /// 4003: the client sent nothing for longer than the idle limit.
    IdleTimeout,
    /// 4004: an administrator disconnected this user.
    Kicked,
}

impl CloseCode {
    /// Every code, for metrics and documentation.
    pub const ALL: [CloseCode; 14] = [
        Self::Normal,
        Self::GoingAway,
        Self::ProtocolError,
        Self::InvalidPayload,
        Self::PolicyViolation,
        Self::TooBig,
        Self::Internal,
        Self::ServiceRestart,
        Self::TryAgainLater,
        Self::SlowConsumer,
        Self::TokenExpired,
        Self::HeartbeatTimeout,
        Self::IdleTimeout,
        Self::Kicked,
    ];

    /// The numeric code on the wire.
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::ProtocolError => 1002,
            Self::InvalidPayload => 1007,
            Self::PolicyViolation => 1008,
            Self::TooBig => 1009,
            Self::Internal => 1011,
            Self::ServiceRestart => 1012,
            Self::TryAgainLater => 1013,
            Self::SlowConsumer => 4000,
            Self::TokenExpired => 4001,
            Self::HeartbeatTimeout => 4002,
            Self::IdleTimeout => 4003,
            Self::Kicked => 4004,
        }
    }

    /// The short reason sent in the close frame.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Normal => "normal closure",
            Self::GoingAway => "going away: reconnect and resume",
            Self::ProtocolError => "websocket protocol error",
            Self::InvalidPayload => "text frame is not valid UTF-8",
            Self::PolicyViolation => "message rate limit exceeded",
            Self::TooBig => "message too big",
            Self::Internal => "internal error",
            Self::ServiceRestart => "missed messages: reconnect",
            Self::TryAgainLater => "engine unavailable: try again later",
            Self::SlowConsumer => "slow consumer: reconnect and resume",
            Self::TokenExpired => "token expired",
            Self::HeartbeatTimeout => "no pong within the heartbeat timeout",
            Self::IdleTimeout => "idle timeout",
            Self::Kicked => "disconnected by an administrator",
        }
    }

    /// A stable label for metrics (`switchboard_disconnects_total{code=…}`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Normal => "1000",
            Self::GoingAway => "1001",
            Self::ProtocolError => "1002",
            Self::InvalidPayload => "1007",
            Self::PolicyViolation => "1008",
            Self::TooBig => "1009",
            Self::Internal => "1011",
            Self::ServiceRestart => "1012",
            Self::TryAgainLater => "1013",
            Self::SlowConsumer => "4000",
            Self::TokenExpired => "4001",
            Self::HeartbeatTimeout => "4002",
            Self::IdleTimeout => "4003",
            Self::Kicked => "4004",
        }
    }

    /// The code for a framing error.
    pub fn from_frame_error(code: u16) -> Self {
        match code {
            1007 => Self::InvalidPayload,
            1009 => Self::TooBig,
            _ => Self::ProtocolError,
        }
    }
}
