//! A minimal WebSocket client for the load generator: the opening handshake
//! (offering permessage-deflate when asked, as browsers do) and masked client
//! frames. The framing is `ws/frame.rs`'s: the caller finds the
//! server's unmasked frames in place with [`frame::parse_server_frame`].
//!
//! It keeps one growable read buffer per socket and never copies a payload, so
//! tens of thousands of clients cost little CPU next to the server under test.

use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use bytes::BytesMut;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::ws::frame::{self, OpCode};

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest response head accepted during the handshake.
const MAX_HEAD: usize = 16 * 1024;

/// Why a connection could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("handshake: HTTP {0}")]
    Status(u16),
    #[error("handshake: {0}")]
    Handshake(String),
}

impl ConnectError {
    /// A short, bounded label for counting failures by kind.
    pub fn label(&self) -> String {
        match self {
            Self::Connect(e) => format!("connect: {e}"),
            Self::Status(s) => format!("http {s}"),
            Self::Handshake(_) => "bad handshake".into(),
        }
    }
}

/// The offer of permessage-deflate: each message compressed on its own both
/// ways, which is what the gateway accepts (`ws/deflate.rs`).
const DEFLATE_OFFER: &str =
    "permessage-deflate; client_no_context_takeover; server_no_context_takeover";

/// An upgraded connection.
pub struct Opened {
    pub stream: TcpStream,
    /// Whatever the server sent after its response head.
    pub rest: BytesMut,
    /// The server accepted permessage-deflate: its messages may come compressed.
    pub deflate: bool,
}

/// Opens a TCP connection (from `src` when given) and performs the upgrade,
/// offering permessage-deflate when `offer_deflate`.
pub async fn connect(
    addr: SocketAddr,
    src: Option<IpAddr>,
    host: &str,
    path: &str,
    token: Option<&str>,
    offer_deflate: bool,
) -> Result<Opened, ConnectError> {
    let io = |e: std::io::Error| ConnectError::Connect(e.kind().to_string());
    let socket = TcpSocket::new_v4().map_err(io)?;
    if let Some(src) = src {
        socket.bind(SocketAddr::new(src, 0)).map_err(io)?;
    }
    let mut stream = socket.connect(addr).await.map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let extensions = if offer_deflate {
        format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n")
    } else {
        String::new()
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{auth}{extensions}\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut buf = BytesMut::with_capacity(1024);
    let head_len = loop {
        if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(ConnectError::Handshake("response head too large".into()));
        }
        if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
            return Err(ConnectError::Handshake(
                "connection closed during the handshake".into(),
            ));
        }
    };
    let deflate = check_response(&buf[..head_len], &key, offer_deflate)?;
    let rest = buf.split_off(head_len);
    Ok(Opened {
        stream,
        rest,
        deflate,
    })
}

/// Checks the server's response head; returns whether it accepted
/// permessage-deflate (an extension that was not offered is refused).
fn check_response(head: &[u8], key: &str, offered_deflate: bool) -> Result<bool, ConnectError> {
    let head = std::str::from_utf8(head)
        .map_err(|_| ConnectError::Handshake("response head is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| ConnectError::Handshake("no HTTP status line".into()))?;
    if status != 101 {
        return Err(ConnectError::Status(status));
    }
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID);
    let expected = base64::engine::general_purpose::STANDARD.encode(h.finalize());
    let headers: Vec<(&str, &str)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|&(_, v)| v)
    };
    if header("sec-websocket-accept") != Some(expected.as_str()) {
        return Err(ConnectError::Handshake(
            "missing or wrong Sec-WebSocket-Accept".into(),
        ));
    }
    match header("sec-websocket-extensions") {
        None => Ok(false),
        Some(ext) if offered_deflate && ext.starts_with("permessage-deflate") => Ok(true),
        Some(_) => Err(ConnectError::Handshake(
            "the server accepted an extension that was not offered".into(),
        )),
    }
}

/// Appends a client frame, masked with a fresh random mask.
pub fn encode(out: &mut BytesMut, opcode: OpCode, payload: &[u8]) {
    frame::encode_masked_into(out, opcode, payload, rand::random());
}

/// The close code carried by a close frame's payload.
pub fn close_code(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_are_masked_with_fresh_masks() {
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        encode(&mut a, OpCode::Text, b"hello world");
        encode(&mut b, OpCode::Text, b"hello world");
        assert_eq!((a[0], a[1]), (0x81, 0x80 | 11));
        // Two random 32-bit masks are equal once in 2^32 runs.
        assert_ne!(a[2..6], b[2..6]);
        assert_ne!(&a[6..], b"hello world");
    }

    #[test]
    fn close_codes() {
        assert_eq!(close_code(&4000u16.to_be_bytes()), Some(4000));
        assert_eq!(close_code(b"x"), None);
    }

    #[test]
    fn handshake_response_is_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(check_response(ok.as_bytes(), key, true), Ok(false));
        let busy = "HTTP/1.1 503 Service Unavailable\r\n\r\n";
        assert_eq!(
            check_response(busy.as_bytes(), key, false),
            Err(ConnectError::Status(503))
        );
        let wrong = "HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert!(check_response(wrong.as_bytes(), key, false).is_err());
        let deflate = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n";
        assert_eq!(check_response(deflate.as_bytes(), key, true), Ok(true));
        // An extension the client did not offer is a broken handshake.
        assert!(check_response(deflate.as_bytes(), key, false).is_err());
    }
}
