//! Bursts of bad input, each case with the answer docs/PROTOCOL.md promises:
//! malformed frames and requests on every route, floods, oversized and
//! invalid frames, refused upgrades, bad publishes, and bytes that are not
//! JSON published straight into Redis. A case whose answer differs is an
//! `bad_input_unexpected` event; the gateways must log no ERROR for any.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

use crate::Ctx;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// What a case saw (printed into the event of an unexpected answer).
#[derive(Debug)]
#[allow(dead_code)]
enum Seen {
    /// Error codes (from `error` frames), then how it ended.
    Frames(Vec<String>, Option<u16>),
    Status(u16),
    Failed(String),
}

async fn open(ctx: &Ctx, path: &str, token: Option<&str>) -> Result<Ws, Seen> {
    let mut request = format!("ws://{}{}", ctx.args.lb, path)
        .into_client_request()
        .map_err(|e| Seen::Failed(e.to_string()))?;
    if let Some(t) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {t}")
                .parse()
                .map_err(|_| Seen::Failed("header".into()))?,
        );
    }
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await
    {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(r))) => {
            Err(Seen::Status(r.status().as_u16()))
        }
        Ok(Err(e)) => Err(Seen::Failed(e.to_string())),
        Err(_) => Err(Seen::Failed("timeout".into())),
    }
}

/// Reads for `wait` (or until the close): the error codes seen and the close code.
async fn collect(ws: &mut Ws, wait: Duration) -> Seen {
    let mut codes = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Seen::Frames(codes, None),
            Ok(Some(Ok(Message::Text(t)))) => {
                if let Ok(v) = serde_json::from_str::<Value>(t.as_str())
                    && v["type"] == "error"
                {
                    let code = v["code"]
                        .as_str()
                        .or(v["data"]["code"].as_str())
                        .unwrap_or("?");
                    codes.push(code.to_string());
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => {
                return Seen::Frames(codes, Some(f.map_or(1005, |f| u16::from(f.code))));
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return Seen::Frames(codes, Some(1006)),
        }
    }
}

async fn frames_case(
    ctx: &Ctx,
    path: &str,
    token: Option<&str>,
    sends: Vec<Message>,
    wait: Duration,
) -> Seen {
    let mut ws = match open(ctx, path, token).await {
        Ok(ws) => ws,
        Err(seen) => return seen,
    };
    for m in sends {
        if ws.send(m).await.is_err() {
            break;
        }
    }
    let seen = collect(&mut ws, wait).await;
    let _ = ws.close(None).await;
    seen
}

async fn raw_http(addr: &str, request: &[u8]) -> Seen {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
    else {
        return Seen::Failed("connect".into());
    };
    if s.write_all(request).await.is_err() {
        return Seen::Failed("write".into());
    }
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => {
            let text = String::from_utf8_lossy(&buf[..n]);
            let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok());
            status.map_or(Seen::Failed(text.chars().take(80).collect()), Seen::Status)
        }
        _ => Seen::Failed("no answer".into()),
    }
}

async fn publish_case(ctx: &Ctx, body: &str, token: Option<&str>) -> Seen {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw_http(&ctx.args.lb, request.as_bytes()).await
}

fn text(s: &str) -> Message {
    Message::text(s.to_string())
}

/// One burst: every case once, concurrently.
pub async fn burst(ctx: &Ctx) {
    let token = ctx.token("vandal", &["websocket:connect", "websocket:subscribe"]);
    let publisher = ctx.token("vandal-producer", &["websocket:publish"]);
    let t = Some(token.as_str());
    let short = Duration::from_secs(2);
    let invalid_utf8 = Message::Frame(Frame::message(
        vec![0x7b, 0xff, 0xfe, 0x7d],
        OpCode::Data(Data::Text),
        true,
    ));
    let bad_close = Message::Frame(Frame::from_payload(
        FrameHeader {
            opcode: OpCode::Control(Control::Close),
            ..FrameHeader::default()
        },
        vec![0x03, 0xed].into(),
    ));
    let flood: Vec<Message> = (0..300).map(|_| text(r#"{"type":"ping"}"#)).collect();
    let big = "x".repeat(100 * 1024);
    let gateway = ctx
        .replica_addrs()
        .first()
        .map(|(_, a)| a.clone())
        .unwrap_or_else(|| ctx.args.lb.clone());
    let quiet = crate::load::quiet(0);
    let junk_channel = crate::load::quiet(1);
    let council_path = format!("/api/v1/ws/vandal?token={token}");
    let unauthorized = format!(r#"{{"channel":"{quiet}","data":{{}}}}"#);
    let too_large = format!(
        r#"{{"channel":"{quiet}","data":"{}"}}"#,
        "y".repeat(70 * 1024)
    );
    let (
        native,
        oversized,
        flooded,
        utf8,
        close_code,
        no_token,
        bad_token,
        version,
        garbage,
        escai,
        council,
        bad_path,
        p_body,
        p_channel,
        p_auth,
        p_large,
        p_sys,
        junk,
    ) = tokio::join!(
        frames_case(
            ctx,
            "/ws",
            t,
            vec![
                text("{not json"),
                text(r#"{"type":"dance"}"#),
                text(r#"{"type":"subscribe","channel":"bad channel!"}"#),
                text(r#"{"type":"subscribe"}"#),
                Message::Binary(vec![1u8, 2, 3].into()),
                text(r#"{"type":"ack","channel":"never-subscribed","offset":1}"#),
            ],
            short
        ),
        frames_case(ctx, "/ws", t, vec![text(&big)], short),
        frames_case(ctx, "/ws", t, flood, Duration::from_secs(5)),
        frames_case(ctx, "/ws", t, vec![invalid_utf8], short),
        frames_case(ctx, "/ws", t, vec![bad_close], short),
        frames_case(ctx, "/ws", None, vec![], short),
        frames_case(ctx, "/ws", Some("not.a.token"), vec![], short),
        raw_http(
            &ctx.args.lb,
            b"GET /ws HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 12\r\n\r\n",
        ),
        raw_http(&gateway, b"THIS IS NOT HTTP\r\n\r\n"),
        frames_case(
            ctx,
            "/ws/monitor/vandal",
            t,
            vec![
                text("nope"),
                text(r#"{"type":"subscribe","data":{"type":"weather","agent_id":"a0"}}"#),
                text(r#"{"type":"subscribe","data":{"type":"epistemic_updates","agent_id":"a0"}}"#),
                text(r#"{"type":"fly"}"#),
            ],
            short
        ),
        frames_case(
            ctx,
            &council_path,
            None,
            vec![
                text("garbage"),
                text(r#"{"type":"ack","message_id":999999}"#),
                text(r#"{"type":"fly"}"#),
            ],
            short
        ),
        frames_case(ctx, "/ws/bad%20channel", t, vec![], short),
        publish_case(ctx, "{", Some(&publisher)),
        publish_case(ctx, r#"{"channel":"bad channel!","data":{}}"#, Some(&publisher)),
        publish_case(ctx, &unauthorized, None),
        publish_case(ctx, &too_large, Some(&publisher)),
        publish_case(ctx, r#"{"channel":"sys:stats","data":{}}"#, Some(&publisher)),
        ctx.publisher.publish_junk(&junk_channel),
    );
    let codes = |s: &Seen| match s {
        Seen::Frames(c, _) => c.clone(),
        _ => vec![],
    };
    let close = |s: &Seen| match s {
        Seen::Frames(_, c) => *c,
        _ => None,
    };
    let status = |s: &Seen| match s {
        Seen::Status(c) => Some(*c),
        _ => None,
    };
    let n_codes = codes(&native);
    let e_codes = codes(&escai);
    let c_codes = codes(&council);
    let cases: Vec<(&str, bool, String)> = vec![
        (
            "native_bad_requests",
            n_codes
                == [
                    "invalid_json",
                    "unknown_type",
                    "bad_channel",
                    "invalid_message",
                    "binary_not_supported",
                    "not_subscribed",
                ]
                && close(&native).is_none(),
            format!("{native:?}"),
        ),
        (
            "oversized_frame",
            close(&oversized) == Some(1009),
            format!("{oversized:?}"),
        ),
        (
            "flood",
            close(&flooded) == Some(1008) && codes(&flooded).iter().all(|c| c == "rate_limited"),
            format!("{flooded:?}"),
        ),
        (
            "invalid_utf8",
            close(&utf8) == Some(1007),
            format!("{utf8:?}"),
        ),
        (
            "reserved_close_code",
            close(&close_code) == Some(1002),
            format!("{close_code:?}"),
        ),
        (
            "no_token",
            status(&no_token) == Some(401),
            format!("{no_token:?}"),
        ),
        (
            "bad_token",
            status(&bad_token) == Some(401),
            format!("{bad_token:?}"),
        ),
        (
            "wrong_ws_version",
            status(&version) == Some(400),
            format!("{version:?}"),
        ),
        (
            "not_http",
            status(&garbage) == Some(400),
            format!("{garbage:?}"),
        ),
        (
            "escai_bad_requests",
            e_codes
                == [
                    "INVALID_JSON",
                    "VALIDATION_ERROR",
                    "AGENT_ACCESS_DENIED",
                    "UNKNOWN_MESSAGE_TYPE",
                ]
                && close(&escai).is_none(),
            format!("{escai:?}"),
        ),
        (
            "council_bad_requests",
            c_codes == ["invalid_json", "unknown_message_id", "unknown_type"]
                && close(&council).is_none(),
            format!("{council:?}"),
        ),
        (
            "bad_channel_path",
            status(&bad_path) == Some(400),
            format!("{bad_path:?}"),
        ),
        (
            "publish_bad_body",
            status(&p_body) == Some(400),
            format!("{p_body:?}"),
        ),
        (
            "publish_bad_channel",
            status(&p_channel) == Some(400),
            format!("{p_channel:?}"),
        ),
        (
            "publish_without_token",
            status(&p_auth) == Some(401),
            format!("{p_auth:?}"),
        ),
        (
            "publish_too_large",
            status(&p_large) == Some(413),
            format!("{p_large:?}"),
        ),
        (
            "publish_sys",
            status(&p_sys) == Some(403),
            format!("{p_sys:?}"),
        ),
        ("redis_junk", junk.is_ok(), format!("{junk:?}")),
    ];
    let unexpected: Vec<Value> = cases
        .iter()
        .filter(|(_, ok, _)| !ok)
        .map(|(name, _, seen)| json!({"case": name, "seen": seen}))
        .collect();
    ctx.stats.event(
        "bad_input",
        json!({"cases": cases.len(), "unexpected": unexpected.len()}),
    );
    for u in unexpected {
        ctx.stats.event("bad_input_unexpected", u);
    }
}
