//! A minimal WebSocket client for the load generator: the opening handshake,
//! masked client frames, and in-place parsing of the server's unmasked frames.
//!
//! It keeps one growable read buffer per socket and never copies a payload, so
//! tens of thousands of clients cost little CPU next to the server under test.

use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use bytes::BytesMut;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest response head accepted during the handshake.
const MAX_HEAD: usize = 16 * 1024;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

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

/// A server frame found in the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef {
    pub fin: bool,
    pub opcode: u8,
    /// Where the payload starts in the buffer, and its length.
    pub start: usize,
    pub len: usize,
}

/// A malformed server frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed frame from the server: {0}")]
pub struct FrameError(pub &'static str);

/// Opens a TCP connection (from `src` when given) and performs the upgrade.
/// Returns the stream and whatever the server sent after its response head.
pub async fn connect(
    addr: SocketAddr,
    src: Option<IpAddr>,
    host: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(TcpStream, BytesMut), ConnectError> {
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
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
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
    check_response(&buf[..head_len], &key)?;
    let rest = buf.split_off(head_len);
    Ok((stream, rest))
}

fn check_response(head: &[u8], key: &str) -> Result<(), ConnectError> {
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
    let accept = lines.filter_map(|l| l.split_once(':')).find_map(|(k, v)| {
        k.trim()
            .eq_ignore_ascii_case("sec-websocket-accept")
            .then(|| v.trim())
    });
    if accept != Some(expected.as_str()) {
        return Err(ConnectError::Handshake(
            "missing or wrong Sec-WebSocket-Accept".into(),
        ));
    }
    Ok(())
}

/// Parses the frame at the start of `buf`; `None` until it is complete.
pub fn parse_frame(buf: &[u8]) -> Result<Option<FrameRef>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0F;
    if buf[1] & 0x80 != 0 {
        return Err(FrameError("masked server frame"));
    }
    let (len, header) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    let len = usize::try_from(len).map_err(|_| FrameError("frame too large"))?;
    if buf.len() - header < len {
        return Ok(None);
    }
    Ok(Some(FrameRef {
        fin,
        opcode,
        start: header,
        len,
    }))
}

/// Appends a masked client frame.
pub fn encode_client(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask: [u8; 4] = rand::random();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// The close code carried by a close frame's payload.
pub fn close_code(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
        let (len, at) = match frame[1] & 0x7F {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            n => (n as usize, 2),
        };
        let mask = &frame[at..at + 4];
        let payload = frame[at + 4..at + 4 + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        (frame[0] & 0x0F, payload)
    }

    #[test]
    fn client_frames_are_masked_and_round_trip() {
        let mut out = Vec::new();
        encode_client(&mut out, OP_TEXT, b"hello");
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1], 0x80 | 5);
        assert_eq!(unmask(&out), (OP_TEXT, b"hello".to_vec()));
        let long = vec![b'x'; 300];
        out.clear();
        encode_client(&mut out, OP_PONG, &long);
        assert_eq!(unmask(&out), (OP_PONG, long));
    }

    #[test]
    fn server_frames_parse_in_place_and_wait_for_more() {
        let mut buf = vec![0x81, 3, b'a', b'b', b'c', 0x89, 0];
        let f = parse_frame(&buf).unwrap().unwrap();
        assert_eq!((f.fin, f.opcode, f.start, f.len), (true, OP_TEXT, 2, 3));
        let g = parse_frame(&buf[5..]).unwrap().unwrap();
        assert_eq!((g.opcode, g.len), (OP_PING, 0));
        buf.truncate(4);
        assert_eq!(parse_frame(&buf).unwrap(), None);
        let mut big = vec![0x81, 126, 1, 0];
        assert_eq!(parse_frame(&big).unwrap(), None);
        big.extend(std::iter::repeat_n(b'x', 256));
        assert_eq!(parse_frame(&big).unwrap().unwrap().len, 256);
        assert!(parse_frame(&[0x81, 0x81, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn handshake_response_is_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(check_response(ok.as_bytes(), key), Ok(()));
        let busy = "HTTP/1.1 503 Service Unavailable\r\n\r\n";
        assert_eq!(
            check_response(busy.as_bytes(), key),
            Err(ConnectError::Status(503))
        );
        let wrong = "HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert!(check_response(wrong.as_bytes(), key).is_err());
    }
}
