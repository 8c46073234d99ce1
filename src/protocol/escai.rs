//! The ESCAI seed's wire format (seed 003) on `/ws/monitor/{session_id}`:
//! what its clients send, what they receive, encoded here and nowhere else.
//!
//! Modelled on the seed's own server (its `websocket.py`): every server frame
//! is a JSON object with `type` and `timestamp`; errors carry `code` and
//! `message` both at the top level (as the seed sent them) and under `data`;
//! a subscription names an event family (`epistemic_updates`, …, singular
//! forms accepted) and an agent, with filters in the seed's syntax on the
//! event's `data`.

use serde_json::{Map, Value, json};

use super::ErrorCode;
use crate::json::{Json, check_depth};

/// The event families an ESCAI client subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Epistemic,
    Pattern,
    Prediction,
    AgentStatus,
    SystemAlerts,
}

impl Family {
    /// Every family, in the order listings use.
    pub const ALL: [Family; 5] = [
        Self::Epistemic,
        Self::Pattern,
        Self::Prediction,
        Self::AgentStatus,
        Self::SystemAlerts,
    ];

    /// A subscription type as clients write it: plural (the seed's) or singular.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "epistemic_updates" | "epistemic_update" => Self::Epistemic,
            "pattern_alerts" | "pattern_alert" => Self::Pattern,
            "prediction_updates" | "prediction_update" => Self::Prediction,
            "agent_status" | "agent_status_change" | "agent_status_changes" => Self::AgentStatus,
            "system_alerts" | "system_alert" => Self::SystemAlerts,
            _ => return None,
        })
    }

    /// The subscription type, as the seed names it.
    pub fn subscription_type(self) -> &'static str {
        match self {
            Self::Epistemic => "epistemic_updates",
            Self::Pattern => "pattern_alerts",
            Self::Prediction => "prediction_updates",
            Self::AgentStatus => "agent_status",
            Self::SystemAlerts => "system_alerts",
        }
    }

    /// The `type` of the events of this family, as producers publish them.
    pub fn event_type(self) -> &'static str {
        match self {
            Self::Epistemic => "epistemic_update",
            Self::Pattern => "pattern_alert",
            Self::Prediction => "prediction_update",
            Self::AgentStatus => "agent_status_change",
            Self::SystemAlerts => "system_alert",
        }
    }

    /// Whether a subscription to this family names an agent.
    pub fn per_agent(self) -> bool {
        self != Self::SystemAlerts
    }
}

/// One request from an ESCAI client.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Subscribe {
        family: Family,
        agent_id: Option<String>,
        filters: Option<Map<String, Value>>,
    },
    Unsubscribe {
        family: Family,
        agent_id: Option<String>,
    },
    Ping,
    /// The answer to the server's `ping`.
    Pong,
    GetSubscriptions,
    GetStats,
}

/// The seed's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidJson,
    ValidationError,
    UnknownMessageType,
    PermissionDenied,
    AgentAccessDenied,
    SubscriptionExists,
    SubscriptionNotFound,
    TooManySubscriptions,
    RateLimited,
    TokenExpired,
    ServiceUnavailable,
    BinaryNotSupported,
    InternalError,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "INVALID_JSON",
            Self::ValidationError => "VALIDATION_ERROR",
            Self::UnknownMessageType => "UNKNOWN_MESSAGE_TYPE",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::AgentAccessDenied => "AGENT_ACCESS_DENIED",
            Self::SubscriptionExists => "SUBSCRIPTION_EXISTS",
            Self::SubscriptionNotFound => "SUBSCRIPTION_NOT_FOUND",
            Self::TooManySubscriptions => "TOO_MANY_SUBSCRIPTIONS",
            Self::RateLimited => "RATE_LIMITED",
            Self::TokenExpired => "TOKEN_EXPIRED",
            Self::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            Self::BinaryNotSupported => "BINARY_NOT_SUPPORTED",
            Self::InternalError => "INTERNAL_ERROR",
        }
    }

    /// The seed's code for a core error.
    pub fn from_core(code: ErrorCode) -> Self {
        match code {
            ErrorCode::InvalidJson => Self::InvalidJson,
            ErrorCode::InvalidMessage
            | ErrorCode::BadChannel
            | ErrorCode::BadFilter
            | ErrorCode::NoSnapshot => Self::ValidationError,
            ErrorCode::UnknownType => Self::UnknownMessageType,
            ErrorCode::AlreadySubscribed => Self::SubscriptionExists,
            ErrorCode::NotSubscribed => Self::SubscriptionNotFound,
            ErrorCode::TooManyChannels => Self::TooManySubscriptions,
            ErrorCode::Forbidden | ErrorCode::Unauthorized => Self::PermissionDenied,
            ErrorCode::TokenExpired => Self::TokenExpired,
            ErrorCode::Unavailable => Self::ServiceUnavailable,
            ErrorCode::BinaryNotSupported => Self::BinaryNotSupported,
            ErrorCode::RateLimited => Self::RateLimited,
            ErrorCode::Internal => Self::InternalError,
        }
    }

    /// The core code counted in `switchboard_client_errors_total{code}`.
    pub fn core(self) -> ErrorCode {
        match self {
            Self::InvalidJson => ErrorCode::InvalidJson,
            Self::ValidationError => ErrorCode::InvalidMessage,
            Self::UnknownMessageType => ErrorCode::UnknownType,
            Self::PermissionDenied | Self::AgentAccessDenied => ErrorCode::Forbidden,
            Self::SubscriptionExists => ErrorCode::AlreadySubscribed,
            Self::SubscriptionNotFound => ErrorCode::NotSubscribed,
            Self::TooManySubscriptions => ErrorCode::TooManyChannels,
            Self::RateLimited => ErrorCode::RateLimited,
            Self::TokenExpired => ErrorCode::TokenExpired,
            Self::ServiceUnavailable => ErrorCode::Unavailable,
            Self::BinaryNotSupported => ErrorCode::BinaryNotSupported,
            Self::InternalError => ErrorCode::Internal,
        }
    }
}

/// Why a frame is not a valid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub code: Code,
    pub message: String,
}

fn invalid(code: Code, message: impl Into<String>) -> RequestError {
    RequestError {
        code,
        message: message.into(),
    }
}

/// Parses one text frame.
pub fn parse(text: &[u8], max_depth: usize) -> Result<Request, RequestError> {
    check_depth(text, max_depth)
        .map_err(|e| invalid(Code::InvalidJson, format!("Invalid JSON format: {e}")))?;
    let value: Value = serde_json::from_slice(text)
        .map_err(|e| invalid(Code::InvalidJson, format!("Invalid JSON format: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(invalid(
            Code::InvalidJson,
            "a message is a JSON object with a \"type\"",
        ));
    };
    let kind = match object.get("type") {
        Some(Value::String(t)) => t.clone(),
        _ => {
            return Err(invalid(
                Code::UnknownMessageType,
                "Unknown message type: None",
            ));
        }
    };
    let data = match object.remove("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(d)) => d,
        Some(_) => {
            return Err(invalid(Code::ValidationError, "\"data\" must be an object"));
        }
    };
    match kind.as_str() {
        "subscribe" => {
            let family = family_of(&data, &["type"])?;
            let agent_id = agent_of(&data)?;
            let filters = match data.get("filters") {
                None | Some(Value::Null) => None,
                Some(Value::Object(f)) if f.is_empty() => None,
                Some(Value::Object(f)) => Some(f.clone()),
                Some(_) => {
                    return Err(invalid(
                        Code::ValidationError,
                        "Invalid subscription request: \"filters\" must be an object",
                    ));
                }
            };
            if family.per_agent() && agent_id.is_none() {
                return Err(invalid(
                    Code::ValidationError,
                    format!(
                        "Invalid subscription request: {} needs an \"agent_id\"",
                        family.subscription_type()
                    ),
                ));
            }
            Ok(Request::Subscribe {
                family,
                agent_id: agent_id.filter(|_| family.per_agent()),
                filters,
            })
        }
        "unsubscribe" => {
            // The seed reads `subscription_type`; `type` mirrors `subscribe`.
            let family = family_of(&data, &["subscription_type", "type"])?;
            let agent_id = agent_of(&data)?;
            Ok(Request::Unsubscribe {
                family,
                agent_id: agent_id.filter(|_| family.per_agent()),
            })
        }
        "ping" => Ok(Request::Ping),
        "pong" => Ok(Request::Pong),
        "get_subscriptions" => Ok(Request::GetSubscriptions),
        "get_stats" => Ok(Request::GetStats),
        other => Err(invalid(
            Code::UnknownMessageType,
            format!("Unknown message type: {other}"),
        )),
    }
}

fn family_of(data: &Map<String, Value>, keys: &[&str]) -> Result<Family, RequestError> {
    let name = keys
        .iter()
        .find_map(|k| data.get(*k).and_then(Value::as_str))
        .ok_or_else(|| {
            invalid(
                Code::ValidationError,
                format!(
                    "Invalid subscription request: \"data.{}\" names the subscription type (epistemic_updates, pattern_alerts, prediction_updates, agent_status, system_alerts)",
                    keys[0]
                ),
            )
        })?;
    Family::parse(name).ok_or_else(|| {
        invalid(
            Code::ValidationError,
            format!(
                "Invalid subscription request: unknown subscription type {name:?} (epistemic_updates, pattern_alerts, prediction_updates, agent_status, system_alerts)"
            ),
        )
    })
}

fn agent_of(data: &Map<String, Value>) -> Result<Option<String>, RequestError> {
    match data.get("agent_id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(a)) if !a.is_empty() => Ok(Some(a.clone())),
        Some(_) => Err(invalid(
            Code::ValidationError,
            "Invalid subscription request: \"agent_id\" must be a non-empty string",
        )),
    }
}

fn frame(kind: &str, mut body: Map<String, Value>) -> String {
    let mut object = Map::new();
    object.insert("type".into(), Value::String(kind.into()));
    object.append(&mut body);
    object.insert(
        "timestamp".into(),
        Value::String(crate::time::rfc3339_now()),
    );
    Value::Object(object).to_string()
}

fn body(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// What `connection_established` says.
#[derive(Debug, Clone, Copy)]
pub struct Established<'a> {
    pub connection_id: &'a str,
    pub session_id: &'a str,
    pub user_id: &'a str,
    pub heartbeat_interval: u64,
}

/// `connection_established`: the seed's top-level fields, and the same under `data`.
pub fn connection_established(e: Established<'_>) -> String {
    frame(
        "connection_established",
        body(json!({
            "connection_id": e.connection_id,
            "session_id": e.session_id,
            "user_id": e.user_id,
            "server_time": crate::time::rfc3339_now(),
            "heartbeat_interval": e.heartbeat_interval,
            "data": {
                "connection_id": e.connection_id,
                "session_id": e.session_id,
                "user_id": e.user_id,
            },
        })),
    )
}

/// `subscription_confirmed`.
pub fn subscription_confirmed(
    family: Family,
    agent_id: Option<&str>,
    filters: Option<&Map<String, Value>>,
) -> String {
    frame(
        "subscription_confirmed",
        body(json!({"data": {
            "subscription_type": family.subscription_type(),
            "agent_id": agent_id,
            "filters": filters,
        }})),
    )
}

/// `unsubscription_confirmed`.
pub fn unsubscription_confirmed(family: Family, agent_id: Option<&str>) -> String {
    frame(
        "unsubscription_confirmed",
        body(json!({"data": {
            "subscription_type": family.subscription_type(),
            "agent_id": agent_id,
        }})),
    )
}

/// `subscriptions_list`: each subscription as `{type, agent_id, filters}`.
pub fn subscriptions_list(subscriptions: Vec<Value>) -> String {
    frame(
        "subscriptions_list",
        body(json!({"data": {"subscriptions": subscriptions}})),
    )
}

/// `stats` (admin).
pub fn stats(data: Value) -> String {
    frame("stats", body(json!({ "data": data })))
}

/// `error`: `code` and `message` at the top level (the seed's) and under `data`.
pub fn error(code: Code, message: &str) -> String {
    frame(
        "error",
        body(json!({
            "code": code.as_str(),
            "message": message,
            "data": {"code": code.as_str(), "message": message},
        })),
    )
}

/// `pong`, the answer to a client's `ping`.
pub fn pong() -> String {
    frame("pong", Map::new())
}

/// The server's heartbeat `ping` (the client answers `{"type":"pong"}`).
pub fn ping() -> String {
    frame("ping", Map::new())
}

/// The form an ESCAI client receives a published message in: the published
/// object as it is, with `agent_id` (the channel's agent) and `timestamp` (the
/// publish time) added when it has neither; a message that is not an object
/// is wrapped as `{"type":"message","data":…}`. The producer's bytes are kept,
/// not re-encoded.
pub fn event(
    data: &Json,
    parsed: Option<&Value>,
    agent_id: Option<&str>,
    published_us: u64,
) -> String {
    let timestamp = crate::time::rfc3339_from_micros(published_us);
    let quoted = |s: &str| Value::String(s.to_owned()).to_string();
    let Some(Value::Object(object)) = parsed else {
        let mut out = String::from(r#"{"type":"message","#);
        if let Some(agent) = agent_id {
            out.push_str(&format!(r#""agent_id":{},"#, quoted(agent)));
        }
        out.push_str(&format!(
            r#""data":{},"timestamp":{}}}"#,
            data.as_str(),
            quoted(&timestamp)
        ));
        return out;
    };
    let mut additions = Vec::new();
    if let Some(agent) = agent_id
        && !object.contains_key("agent_id")
    {
        additions.push(format!(r#""agent_id":{}"#, quoted(agent)));
    }
    if !object.contains_key("timestamp") {
        additions.push(format!(r#""timestamp":{}"#, quoted(&timestamp)));
    }
    let text = data.as_str().trim_end();
    if additions.is_empty() {
        return text.to_owned();
    }
    let Some(open) = text.strip_suffix('}') else {
        // A parsed object always ends with `}`; keep a valid frame regardless.
        return data.as_str().to_owned();
    };
    let mut out = String::with_capacity(text.len() + 96);
    out.push_str(open);
    if !object.is_empty() {
        out.push(',');
    }
    out.push_str(&additions.join(","));
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn json(text: &'static str) -> (Json, Option<Value>) {
        let j = Json::parse(Bytes::from_static(text.as_bytes()), 16).unwrap();
        let v = j.to_value();
        (j, v)
    }

    #[test]
    fn subscribe_as_the_seed_example_writes_it() {
        let r = parse(
            br#"{"type":"subscribe","data":{"type":"epistemic_updates","agent_id":"agent_1","filters":{"confidence_level":{"min":0.8}}}}"#,
            32,
        )
        .unwrap();
        let Request::Subscribe {
            family,
            agent_id,
            filters,
        } = r
        else {
            panic!("not a subscribe: {r:?}");
        };
        assert_eq!(family, Family::Epistemic);
        assert_eq!(agent_id.as_deref(), Some("agent_1"));
        assert!(filters.unwrap().contains_key("confidence_level"));
        assert!(matches!(
            parse(
                br#"{"type":"subscribe","data":{"type":"pattern_alert","agent_id":"a"}}"#,
                32
            ),
            Ok(Request::Subscribe {
                family: Family::Pattern,
                ..
            })
        ));
    }

    #[test]
    fn unsubscribe_takes_the_seeds_subscription_type_or_type() {
        for text in [
            br#"{"type":"unsubscribe","data":{"subscription_type":"epistemic_updates","agent_id":"a"}}"#.as_slice(),
            br#"{"type":"unsubscribe","data":{"type":"epistemic_updates","agent_id":"a"}}"#.as_slice(),
        ] {
            assert_eq!(
                parse(text, 32),
                Ok(Request::Unsubscribe {
                    family: Family::Epistemic,
                    agent_id: Some("a".into())
                })
            );
        }
    }

    #[test]
    fn bad_requests_get_the_seeds_codes() {
        let code = |t: &[u8]| parse(t, 32).unwrap_err().code;
        assert_eq!(code(b"{not json"), Code::InvalidJson);
        assert_eq!(code(b"[1]"), Code::InvalidJson);
        assert_eq!(code(br#"{"type":"dance"}"#), Code::UnknownMessageType);
        assert_eq!(code(br#"{"data":{}}"#), Code::UnknownMessageType);
        assert_eq!(
            code(br#"{"type":"subscribe","data":{"type":"weather","agent_id":"a"}}"#),
            Code::ValidationError
        );
        assert_eq!(
            code(br#"{"type":"subscribe","data":{"type":"epistemic_updates"}}"#),
            Code::ValidationError
        );
        assert_eq!(
            code(br#"{"type":"subscribe","data":{"type":"epistemic_updates","agent_id":"a","filters":[1]}}"#),
            Code::ValidationError
        );
        assert_eq!(
            code(br#"{"type":"subscribe","data":5}"#),
            Code::ValidationError
        );
        assert_eq!(code(&[b'['; 64]), Code::InvalidJson);
        assert!(matches!(
            parse(
                br#"{"type":"subscribe","data":{"type":"system_alerts"}}"#,
                32
            ),
            Ok(Request::Subscribe {
                family: Family::SystemAlerts,
                agent_id: None,
                ..
            })
        ));
    }

    #[test]
    fn events_keep_the_producers_bytes_and_gain_agent_and_time() {
        let (j, v) = json(r#"{"type":"epistemic_update", "data":{"confidence_level":0.9}}"#);
        let out = event(&j, v.as_ref(), Some("agent_1"), 1_700_000_000_000_000);
        assert_eq!(
            out,
            r#"{"type":"epistemic_update", "data":{"confidence_level":0.9},"agent_id":"agent_1","timestamp":"2023-11-14T22:13:20.000Z"}"#
        );
        let (j, v) = json(r#"{"type":"system_alert","timestamp":"t","data":{}}"#);
        assert_eq!(event(&j, v.as_ref(), None, 0), j.as_str());
        let (j, v) = json("{}");
        let out: Value = serde_json::from_str(&event(&j, v.as_ref(), Some("a"), 0)).unwrap();
        assert_eq!(out["agent_id"], "a");
        let (j, v) = json("[1,2]");
        let out: Value = serde_json::from_str(&event(&j, v.as_ref(), Some("a\"b"), 0)).unwrap();
        assert_eq!(out["type"], "message");
        assert_eq!(out["data"], serde_json::json!([1, 2]));
        assert_eq!(out["agent_id"], "a\"b");
    }

    #[test]
    fn errors_carry_the_code_at_the_top_and_under_data() {
        let v: Value = serde_json::from_str(&error(Code::AgentAccessDenied, "no")).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "AGENT_ACCESS_DENIED");
        assert_eq!(v["data"]["code"], "AGENT_ACCESS_DENIED");
        assert_eq!(v["data"]["message"], "no");
        assert!(v["timestamp"].is_string());
    }
}
