//! Parsing what a client sends on the native protocol.
//!
//! Parsing is two-step so that every failure can still echo the request `id`:
//! first the frame becomes a JSON object (depth-checked), then its `type`
//! selects the shape of the rest.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::ErrorCode;
use crate::json::check_depth;

/// A request id as the client sent it (number or string), echoed in replies.
pub type RequestId = Value;

/// Where a resuming subscription starts: the last offset the client has, and
/// the epoch it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

/// How a subscription wants each message after the first: `"delta": "fossil"`
/// asks for fossil deltas against the channel's previous message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeltaFormat {
    Fossil,
}

impl DeltaFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fossil => "fossil",
        }
    }
}

/// One request from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Subscribe {
        channel: String,
        since: Option<Since>,
        filters: Option<Map<String, Value>>,
        delta: Option<DeltaFormat>,
        id: Option<RequestId>,
    },
    Unsubscribe {
        channel: String,
        id: Option<RequestId>,
    },
    Ping {
        id: Option<RequestId>,
    },
    Refresh {
        channel: String,
        id: Option<RequestId>,
    },
    Ack {
        channel: String,
        offset: u64,
        id: Option<RequestId>,
    },
    RefreshToken {
        token: String,
        id: Option<RequestId>,
    },
}

/// Why a frame is not a valid request; carries the `id` when one was readable.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub code: ErrorCode,
    pub message: String,
    pub id: Option<RequestId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeFields {
    channel: String,
    #[serde(default)]
    since: Option<Since>,
    #[serde(default)]
    filters: Option<Map<String, Value>>,
    #[serde(default)]
    delta: Option<DeltaFormat>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelFields {
    channel: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckFields {
    channel: String,
    offset: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFields {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

impl ClientMessage {
    /// Parses one text frame.
    pub fn parse(text: &[u8], max_depth: usize) -> Result<Self, ParseError> {
        let fail = |code, message: String, id| ParseError { code, message, id };
        check_depth(text, max_depth)
            .map_err(|e| fail(ErrorCode::InvalidJson, e.to_string(), None))?;
        let value: Value = serde_json::from_slice(text).map_err(|e| {
            fail(
                ErrorCode::InvalidJson,
                format!("frame is not valid JSON: {e}"),
                None,
            )
        })?;
        let Value::Object(mut object) = value else {
            return Err(fail(
                ErrorCode::InvalidMessage,
                "a request must be a JSON object with a \"type\"".into(),
                None,
            ));
        };
        let id = match object.remove("id") {
            None | Some(Value::Null) => None,
            Some(id @ (Value::Number(_) | Value::String(_))) => Some(id),
            Some(_) => {
                return Err(fail(
                    ErrorCode::InvalidMessage,
                    "\"id\" must be a number or a string".into(),
                    None,
                ));
            }
        };
        let kind = match object.remove("type") {
            Some(Value::String(kind)) => kind,
            Some(_) => {
                return Err(fail(
                    ErrorCode::InvalidMessage,
                    "\"type\" must be a string".into(),
                    id,
                ));
            }
            None => {
                return Err(fail(
                    ErrorCode::InvalidMessage,
                    "missing \"type\"".into(),
                    id,
                ));
            }
        };
        let rest = Value::Object(object);
        let fields = |e: serde_json::Error, id: Option<RequestId>| {
            fail(ErrorCode::InvalidMessage, format!("{kind}: {e}"), id)
        };
        Ok(match kind.as_str() {
            "subscribe" => {
                let f: SubscribeFields =
                    serde_json::from_value(rest).map_err(|e| fields(e, id.clone()))?;
                Self::Subscribe {
                    channel: f.channel,
                    since: f.since,
                    filters: f.filters,
                    delta: f.delta,
                    id,
                }
            }
            "unsubscribe" => {
                let f: ChannelFields =
                    serde_json::from_value(rest).map_err(|e| fields(e, id.clone()))?;
                Self::Unsubscribe {
                    channel: f.channel,
                    id,
                }
            }
            "refresh" => {
                let f: ChannelFields =
                    serde_json::from_value(rest).map_err(|e| fields(e, id.clone()))?;
                Self::Refresh {
                    channel: f.channel,
                    id,
                }
            }
            "ping" => {
                let _: NoFields =
                    serde_json::from_value(rest).map_err(|e| fields(e, id.clone()))?;
                Self::Ping { id }
            }
            "ack" => {
                let f: AckFields =
                    serde_json::from_value(rest).map_err(|e| fields(e, id.clone()))?;
                Self::Ack {
                    channel: f.channel,
                    offset: f.offset,
                    id,
                }
            }
            "refresh_token" => {
                let f: TokenFields =
                    serde_json::from_value(rest).map_err(|e| fields(e, id.clone()))?;
                Self::RefreshToken { token: f.token, id }
            }
            other => {
                return Err(fail(
                    ErrorCode::UnknownType,
                    format!(
                        "unknown type {other:?}; expected subscribe, unsubscribe, ping, refresh, ack or refresh_token"
                    ),
                    id,
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ClientMessage, ParseError> {
        ClientMessage::parse(v.to_string().as_bytes(), 16)
    }

    #[test]
    fn parses_a_delta_subscription_and_refuses_unknown_formats() {
        let m = parse(json!({"type":"subscribe","channel":"c","delta":"fossil"})).unwrap();
        assert!(matches!(
            m,
            ClientMessage::Subscribe {
                delta: Some(DeltaFormat::Fossil),
                ..
            }
        ));
        let e = parse(json!({"type":"subscribe","channel":"c","delta":"xdelta"})).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        assert!(e.message.contains("fossil"), "{}", e.message);
    }

    #[test]
    fn parses_subscribe_with_since_and_filters() {
        let m = parse(json!({"type":"subscribe","channel":"c","id":7,
            "since":{"offset":3,"epoch":"e"},"filters":{"a":{"min":1}}}))
        .unwrap();
        assert_eq!(
            m,
            ClientMessage::Subscribe {
                channel: "c".into(),
                since: Some(Since {
                    offset: 3,
                    epoch: "e".into()
                }),
                filters: Some(json!({"a":{"min":1}}).as_object().unwrap().clone()),
                delta: None,
                id: Some(json!(7)),
            }
        );
    }

    #[test]
    fn every_failure_has_a_code_and_keeps_the_id() {
        let e = ClientMessage::parse(b"{not json", 16).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidJson);
        let e = parse(json!({"type":"dance","id":"x"})).unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::UnknownType, Some(json!("x"))));
        let e = parse(json!({"type":"subscribe","id":2})).unwrap_err();
        assert_eq!(
            (e.code, e.id.clone()),
            (ErrorCode::InvalidMessage, Some(json!(2)))
        );
        assert!(e.message.contains("channel"), "{}", e.message);
        let e = parse(json!([1, 2])).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        let e = parse(json!({"type":"subscribe","channel":"c","since":5})).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        let e = ClientMessage::parse(&[b'['; 100], 16).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidJson);
    }
}
