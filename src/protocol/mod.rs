//! The wire formats, pure (no I/O): the native client protocol on `/ws` —
//! what clients send (`client`), what the gateway answers (`server`), the
//! codes both use — and the formats of the seed systems' own clients, which
//! dialects map onto the same core: the drop-in routes' commands (`dropin`),
//! ESCAI (`escai`, seed 003) and AI Council (`council`, seed 004).
//! `docs/PROTOCOL.md` is the prose version.

pub mod client;
pub mod close;
pub mod council;
pub mod dropin;
pub mod escai;
pub mod server;

pub use client::{ClientMessage, ParseError, RequestId, Since};
pub use close::CloseCode;

/// Machine-readable code of an `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame is not valid JSON (or nests too deep).
    InvalidJson,
    /// The frame is JSON but not an object with the fields its `type` needs.
    InvalidMessage,
    /// The `type` is not one the protocol knows.
    UnknownType,
    /// The channel name breaks the channel grammar.
    BadChannel,
    /// The filter is malformed or too large.
    BadFilter,
    /// Already subscribed to this channel on this connection.
    AlreadySubscribed,
    /// Not subscribed to this channel.
    NotSubscribed,
    /// The connection holds the maximum number of subscriptions.
    TooManyChannels,
    /// The token does not grant this.
    Forbidden,
    /// The token is invalid.
    Unauthorized,
    /// The connection's token expired: send `refresh_token` before the grace ends.
    TokenExpired,
    /// The engine (Redis) is unreachable; retry with backoff.
    Unavailable,
    /// A binary frame: the protocol is JSON text.
    BinaryNotSupported,
    /// Messages arrive faster than the rate limit.
    RateLimited,
    /// The channel has no snapshot to send.
    NoSnapshot,
    /// Something failed on the server.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidMessage => "invalid_message",
            Self::UnknownType => "unknown_type",
            Self::BadChannel => "bad_channel",
            Self::BadFilter => "bad_filter",
            Self::AlreadySubscribed => "already_subscribed",
            Self::NotSubscribed => "not_subscribed",
            Self::TooManyChannels => "too_many_channels",
            Self::Forbidden => "forbidden",
            Self::Unauthorized => "unauthorized",
            Self::TokenExpired => "token_expired",
            Self::Unavailable => "unavailable",
            Self::BinaryNotSupported => "binary_not_supported",
            Self::RateLimited => "rate_limited",
            Self::NoSnapshot => "no_snapshot",
            Self::Internal => "internal",
        }
    }
}
