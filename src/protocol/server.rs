//! Encoding what the gateway sends on the native protocol.
//!
//! Each function returns the JSON text of one server message. `data` is spliced
//! in as raw JSON, never re-serialized.

use serde::Serialize;
use serde_json::value::RawValue;

use super::{DeltaFormat, ErrorCode, RequestId};
use crate::json::Json;

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    body: T,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RequestId>,
}

fn encode<T: Serialize>(kind: &'static str, body: T, id: Option<&RequestId>) -> String {
    serde_json::to_string(&Envelope { kind, body, id })
        // Serializing these plain structs cannot fail; keep a valid frame if it ever did.
        .unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"encoding failed"}"#.into()
        })
}

/// The body of `connection_established`.
#[derive(Serialize)]
pub struct Established<'a> {
    pub connection_id: &'a str,
    pub replica: &'a str,
    /// Seconds between the server's pings.
    pub heartbeat_interval: u64,
    /// The session id to present (`?session=`) when reconnecting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<&'a str>,
    /// Whether the `?session=` given was found and its subscriptions restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
}

/// `connection_established`: sent once, first.
pub fn connection_established(body: Established<'_>) -> String {
    encode("connection_established", body, None)
}

#[derive(Serialize)]
struct Subscribed<'a> {
    channel: &'a str,
    epoch: &'a str,
    offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<DeltaFormat>,
}

/// `subscribed`: the channel's epoch and current offset; `recovered` answers a
/// `since`; `delta` confirms the delta format the messages will use.
pub fn subscribed(
    channel: &str,
    epoch: &str,
    offset: u64,
    recovered: Option<bool>,
    delta: Option<DeltaFormat>,
    id: Option<&RequestId>,
) -> String {
    encode(
        "subscribed",
        Subscribed {
            channel,
            epoch,
            offset,
            recovered,
            delta,
        },
        id,
    )
}

#[derive(Serialize)]
struct Unsubscribed<'a> {
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// `unsubscribed`: answer to `unsubscribe`, or (with a `reason`) the server
/// ending a subscription, e.g. `forbidden` after a token refresh.
pub fn unsubscribed(channel: &str, reason: Option<&str>, id: Option<&RequestId>) -> String {
    encode("unsubscribed", Unsubscribed { channel, reason }, id)
}

#[derive(Serialize)]
struct TokenRefreshed {
    expires_at: u64,
}

/// `token_refreshed`: the new token is accepted; `expires_at` in Unix seconds.
pub fn token_refreshed(expires_at: u64, id: Option<&RequestId>) -> String {
    encode("token_refreshed", TokenRefreshed { expires_at }, id)
}

#[derive(Serialize)]
struct Data<'a> {
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    data: &'a RawValue,
}

/// `message`: one published message; `offset` is absent for plain `PUBLISH`es.
pub fn message(channel: &str, offset: Option<u64>, data: &Json) -> String {
    encode(
        "message",
        Data {
            channel,
            offset,
            data: data.as_raw(),
        },
        None,
    )
}

#[derive(Serialize)]
struct TextData<'a> {
    channel: &'a str,
    offset: u64,
    data: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    delta: bool,
}

/// `message` of a subscription with `"delta": "fossil"`: `data` is the
/// published JSON's text as a JSON string (the bytes a next delta applies to).
pub fn message_text(channel: &str, offset: u64, data: &Json) -> String {
    encode(
        "message",
        TextData {
            channel,
            offset,
            data: data.as_str(),
            delta: false,
        },
        None,
    )
}

/// `message` with `"delta": true`: `patch` is a fossil delta that turns the
/// previous message's JSON text (offset − 1) into this one's. Its bytes are
/// carried one per character (U+0000–U+00FF), as a JSON string.
pub fn message_delta(channel: &str, offset: u64, patch: &[u8]) -> String {
    let text: String = patch.iter().map(|&b| char::from(b)).collect();
    encode(
        "message",
        TextData {
            channel,
            offset,
            data: &text,
            delta: true,
        },
        None,
    )
}

/// `snapshot`: the channel's latest state.
pub fn snapshot(channel: &str, offset: u64, data: &Json, id: Option<&RequestId>) -> String {
    encode(
        "snapshot",
        Data {
            channel,
            offset: Some(offset),
            data: data.as_raw(),
        },
        id,
    )
}

#[derive(Serialize)]
struct Pong {
    timestamp: String,
}

/// `pong`, with the server's time (RFC 3339, as seeds 002 and 003 expect).
pub fn pong(id: Option<&RequestId>) -> String {
    encode(
        "pong",
        Pong {
            timestamp: crate::time::rfc3339_now(),
        },
        id,
    )
}

#[derive(Serialize)]
struct Acked<'a> {
    channel: &'a str,
    offset: u64,
}

/// `acked`: confirms an `ack` that carried an `id`.
pub fn acked(channel: &str, offset: u64, id: Option<&RequestId>) -> String {
    encode("acked", Acked { channel, offset }, id)
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
}

/// `error`: a refused request; the connection stays open.
pub fn error(
    code: ErrorCode,
    message: &str,
    channel: Option<&str>,
    id: Option<&RequestId>,
) -> String {
    encode(
        "error",
        ErrorBody {
            code: code.as_str(),
            message,
            channel,
        },
        id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::{Value, json};

    #[test]
    fn message_splices_data_without_reencoding() {
        let data = Json::parse(Bytes::from_static(b"{\"b\": 1,  \"a\":2}"), 8).unwrap();
        let text = message("c", Some(5), &data);
        assert_eq!(
            text,
            r#"{"type":"message","channel":"c","offset":5,"data":{"b": 1,  "a":2}}"#
        );
        let text = message("c", None, &data);
        assert!(!text.contains("offset"));
    }

    #[test]
    fn replies_echo_the_request_id() {
        let v: Value =
            serde_json::from_str(&error(ErrorCode::UnknownType, "m", None, Some(&json!(3))))
                .unwrap();
        assert_eq!(
            v,
            json!({"type":"error","code":"unknown_type","message":"m","id":3})
        );
        let v: Value = serde_json::from_str(&subscribed(
            "c",
            "e",
            9,
            Some(true),
            None,
            Some(&json!("r")),
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"type":"subscribed","channel":"c","epoch":"e","offset":9,"recovered":true,"id":"r"})
        );
    }
}
