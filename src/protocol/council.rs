//! The AI Council seed's wire format (seed 004) on `/api/v1/ws/{request_id}`:
//! every server message is the seed's envelope
//! `{"type","timestamp","message_id","data"}`, and the client sends `ack`,
//! `heartbeat_response` and `reconnect`.
//!
//! `message_id` is the event's offset in its request's channel: it grows with
//! each event and is the same on every replica. Frames that are not events
//! (`connection_established`, `heartbeat`, `error`) carry `message_id: 0`,
//! which no event has; acknowledging 0 does nothing.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::ErrorCode;
use crate::json::{Json, check_depth};

/// One request from an AI Council client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The client processed this event.
    Ack { message_id: u64 },
    /// The answer to the server's `heartbeat`.
    HeartbeatResponse,
    /// Send again every event of the request not acknowledged.
    Reconnect,
    /// `{"type":"ping"}`, answered with `pong` (not in the seed; harmless).
    Ping,
}

/// The error codes of this route (under `data.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidJson,
    InvalidMessage,
    UnknownType,
    UnknownMessageId,
    RateLimited,
    TokenExpired,
    EventsExpired,
    Unavailable,
    BinaryNotSupported,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidMessage => "invalid_message",
            Self::UnknownType => "unknown_type",
            Self::UnknownMessageId => "unknown_message_id",
            Self::RateLimited => "rate_limited",
            Self::TokenExpired => "token_expired",
            Self::EventsExpired => "events_expired",
            Self::Unavailable => "unavailable",
            Self::BinaryNotSupported => "binary_not_supported",
        }
    }

    /// This route's code for a core error.
    pub fn from_core(code: ErrorCode) -> Self {
        match code {
            ErrorCode::InvalidJson => Self::InvalidJson,
            ErrorCode::UnknownType => Self::UnknownType,
            ErrorCode::RateLimited => Self::RateLimited,
            ErrorCode::TokenExpired => Self::TokenExpired,
            ErrorCode::Unavailable | ErrorCode::Internal => Self::Unavailable,
            ErrorCode::BinaryNotSupported => Self::BinaryNotSupported,
            _ => Self::InvalidMessage,
        }
    }

    /// The core code counted in `switchboard_client_errors_total{code}`.
    pub fn core(self) -> ErrorCode {
        match self {
            Self::InvalidJson => ErrorCode::InvalidJson,
            Self::InvalidMessage | Self::UnknownMessageId => ErrorCode::InvalidMessage,
            Self::UnknownType => ErrorCode::UnknownType,
            Self::RateLimited => ErrorCode::RateLimited,
            Self::TokenExpired => ErrorCode::TokenExpired,
            Self::EventsExpired | Self::Unavailable => ErrorCode::Unavailable,
            Self::BinaryNotSupported => ErrorCode::BinaryNotSupported,
        }
    }
}

/// Why a frame is not a valid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub code: Code,
    pub message: String,
}

/// Parses one text frame.
pub fn parse(text: &[u8], max_depth: usize) -> Result<Request, RequestError> {
    let error = |code, message: String| RequestError { code, message };
    check_depth(text, max_depth).map_err(|e| error(Code::InvalidJson, e.to_string()))?;
    let value: Value =
        serde_json::from_slice(text).map_err(|e| error(Code::InvalidJson, e.to_string()))?;
    let kind = value.get("type").and_then(Value::as_str).ok_or_else(|| {
        error(
            Code::InvalidMessage,
            "a message is a JSON object with a \"type\"".into(),
        )
    })?;
    match kind {
        "ack" => {
            let id = value
                .get("message_id")
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    error(
                        Code::InvalidMessage,
                        "\"ack\" needs \"message_id\": the event's non-negative integer id".into(),
                    )
                })?;
            Ok(Request::Ack { message_id: id })
        }
        "heartbeat_response" | "heartbeat" | "pong" => Ok(Request::HeartbeatResponse),
        "reconnect" => Ok(Request::Reconnect),
        "ping" => Ok(Request::Ping),
        other => Err(error(
            Code::UnknownType,
            format!(
                "unknown message type {other:?}: this route understands ack, heartbeat_response and reconnect"
            ),
        )),
    }
}

fn envelope(kind: &str, message_id: u64, data: Value) -> String {
    json!({
        "type": kind,
        "timestamp": crate::time::rfc3339_now(),
        "message_id": message_id,
        "data": data,
    })
    .to_string()
}

/// `connection_established`, as the seed sends it.
pub fn connection_established(request_id: &str) -> String {
    envelope(
        "connection_established",
        0,
        json!({"request_id": request_id, "message": "WebSocket connection established"}),
    )
}

/// The server's `heartbeat` (the client answers `heartbeat_response`).
pub fn heartbeat() -> String {
    envelope("heartbeat", 0, json!({}))
}

/// `pong`.
pub fn pong() -> String {
    envelope("pong", 0, json!({}))
}

/// `error`, with `code` and `message` under `data`; the connection stays open.
pub fn error(code: Code, message: &str) -> String {
    error_with(code, message, json!({}))
}

/// `error` with more fields under `data` (e.g. the range of expired events).
pub fn error_with(code: Code, message: &str, extra: Value) -> String {
    let mut data = json!({"code": code.as_str(), "message": message});
    if let (Some(d), Value::Object(more)) = (data.as_object_mut(), extra) {
        d.extend(more);
    }
    envelope("error", 0, data)
}

#[derive(Deserialize)]
struct Published<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// The envelope a published event goes out in. Producers publish
/// `{"type": event_type, "data": {…}}` (the seed's `broadcast_progress`); the
/// inner `data` is spliced in as published. A message of another shape goes
/// out whole as the `data` of a `message`.
pub fn event(data: &Json, offset: Option<u64>, published_us: u64) -> String {
    let timestamp = Value::String(crate::time::rfc3339_from_micros(published_us)).to_string();
    let message_id = offset.unwrap_or(0);
    let (kind, inner) = match serde_json::from_str::<Published<'_>>(data.as_str()) {
        Ok(Published {
            kind: Some(kind),
            data,
        }) => (kind.into_owned(), data.map_or("{}", RawValue::get)),
        _ => ("message".to_owned(), data.as_str()),
    };
    format!(
        r#"{{"type":{},"timestamp":{timestamp},"message_id":{message_id},"data":{inner}}}"#,
        Value::String(kind)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn json(text: &'static str) -> Json {
        Json::parse(Bytes::from_static(text.as_bytes()), 16).unwrap()
    }

    #[test]
    fn events_go_out_in_the_seeds_envelope() {
        let out = event(
            &json(r#"{"type":"analysis_complete","data":{"intent": "research"}}"#),
            Some(7),
            1_700_000_000_000_000,
        );
        assert_eq!(
            out,
            r#"{"type":"analysis_complete","timestamp":"2023-11-14T22:13:20.000Z","message_id":7,"data":{"intent": "research"}}"#
        );
        let v: Value = serde_json::from_str(&event(&json("[1]"), Some(2), 0)).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["data"], json!([1]));
        let v: Value = serde_json::from_str(&event(&json(r#"{"type":"x"}"#), None, 0)).unwrap();
        assert_eq!(v["message_id"], 0);
        assert_eq!(v["data"], json!({}));
        let v: Value =
            serde_json::from_str(&event(&json(r#"{"type":"a\"b","data":1}"#), Some(1), 0)).unwrap();
        assert_eq!(v["type"], "a\"b");
    }

    #[test]
    fn client_requests() {
        assert_eq!(
            parse(br#"{"type":"ack","message_id":12}"#, 8),
            Ok(Request::Ack { message_id: 12 })
        );
        assert_eq!(
            parse(br#"{"type":"heartbeat_response"}"#, 8),
            Ok(Request::HeartbeatResponse)
        );
        assert_eq!(parse(br#"{"type":"reconnect"}"#, 8), Ok(Request::Reconnect));
        let code = |t: &[u8]| parse(t, 8).unwrap_err().code;
        assert_eq!(
            code(br#"{"type":"ack","message_id":-1}"#),
            Code::InvalidMessage
        );
        assert_eq!(
            code(br#"{"type":"ack","message_id":"7"}"#),
            Code::InvalidMessage
        );
        assert_eq!(code(br#"{"type":"fly"}"#), Code::UnknownType);
        assert_eq!(code(b"nope"), Code::InvalidJson);
        assert_eq!(code(br#"{"x":1}"#), Code::InvalidMessage);
    }

    #[test]
    fn control_frames_have_message_id_zero() {
        for text in [
            connection_established("r"),
            heartbeat(),
            error(Code::UnknownType, "m"),
        ] {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["message_id"], 0);
            assert!(v["timestamp"].is_string() && v["data"].is_object());
        }
    }
}
