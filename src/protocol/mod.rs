//! The wire formats, pure (no I/O): the native client protocol on `/ws` —
//! what clients send (`client`), what the gateway answers (`server`), the
//! codes both use — and the formats of the seed systems' own clients, which
//! dialects map onto the same core: the drop-in routes' commands (`dropin`),
//! ESCAI (`escai`, seed 003) and AI Council (`council`, seed 004).
//! `docs/PROTOCOL.md` is the prose version.

pub mod client;
pub mod council;
pub mod dropin;
pub mod escai;
pub mod server;

/// The close codes are the WebSocket layer's (`ws::close`), listed in PROTOCOL.md.
pub use crate::ws::close::{self, CloseCode};
pub use client::{ClientMessage, DeltaFormat, ParseError, RequestId, Since};

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
    /// Every code (`switchboard_client_errors_total` exports each from the start).
    pub const ALL: [ErrorCode; 16] = [
        Self::InvalidJson,
        Self::InvalidMessage,
        Self::UnknownType,
        Self::BadChannel,
        Self::BadFilter,
        Self::AlreadySubscribed,
        Self::NotSubscribed,
        Self::TooManyChannels,
        Self::Forbidden,
        Self::Unauthorized,
        Self::TokenExpired,
        Self::Unavailable,
        Self::BinaryNotSupported,
        Self::RateLimited,
        Self::NoSnapshot,
        Self::Internal,
    ];

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

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn every_error_code_is_listed_once() {
        // A new variant fails this match until it is added to ALL.
        let listed = |c: ErrorCode| match c {
            ErrorCode::InvalidJson
            | ErrorCode::InvalidMessage
            | ErrorCode::UnknownType
            | ErrorCode::BadChannel
            | ErrorCode::BadFilter
            | ErrorCode::AlreadySubscribed
            | ErrorCode::NotSubscribed
            | ErrorCode::TooManyChannels
            | ErrorCode::Forbidden
            | ErrorCode::Unauthorized
            | ErrorCode::TokenExpired
            | ErrorCode::Unavailable
            | ErrorCode::BinaryNotSupported
            | ErrorCode::RateLimited
            | ErrorCode::NoSnapshot
            | ErrorCode::Internal => c.as_str(),
        };
        let mut names: Vec<&str> = ErrorCode::ALL.into_iter().map(listed).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }
}
