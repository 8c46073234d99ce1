//! Fewer bytes on the wire: permessage-deflate and fossil deltas.
//!
//! Each client here decodes independently of the gateway's code — a raw
//! socket that inflates with flate2 (zlib's raw inflate), the fossil-delta
//! crate's `apply` — and must end up with exactly the JSON that was published,
//! across a gap the gateway fills from history and a gap beyond it (a resync).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Client, RedisServer, Switchboard, http_request};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// A WebSocket client on a raw socket that offers permessage-deflate the way
/// browsers do, and inflates what the gateway compresses with flate2.
struct DeflateClient {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The `Sec-WebSocket-Extensions` the gateway answered with.
    extensions: Option<String>,
    /// Text messages that arrived compressed (RSV1).
    compressed: usize,
}

impl DeflateClient {
    async fn connect(port: u16, offer: &str) -> Self {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: {offer}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the gateway closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let extensions = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_string())
        });
        buf.drain(..end);
        Self {
            stream,
            buf,
            extensions,
            compressed: 0,
        }
    }

    /// Sends a text message, compressed (RSV1) if `compress`.
    async fn send(&mut self, text: &str, compress: bool) {
        let (first, payload) = if compress {
            (0x80 | 0x40 | 0x1, deflate(text.as_bytes()))
        } else {
            (0x80 | 0x1, text.as_bytes().to_vec())
        };
        self.stream
            .write_all(&masked_frame(first, &payload))
            .await
            .unwrap();
    }

    async fn send_json(&mut self, v: &Value) {
        self.send(&v.to_string(), true).await;
    }

    /// The next text message (inflated), or the close code.
    async fn next(&mut self, timeout: Duration) -> Option<Result<String, u16>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((first, payload, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                match first & 0x0F {
                    0x1 if first & 0x40 != 0 => {
                        self.compressed += 1;
                        return Some(Ok(String::from_utf8(inflate(&payload)).unwrap()));
                    }
                    0x1 => return Some(Ok(String::from_utf8(payload).unwrap())),
                    0x8 => {
                        return Some(Err(u16::from_be_bytes([payload[0], payload[1]])));
                    }
                    _ => continue, // pings: the test is shorter than the ping interval
                }
            }
            let mut chunk = [0u8; 65536];
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    async fn recv_json(&mut self) -> Value {
        match self.next(WAIT).await {
            Some(Ok(text)) => serde_json::from_str(&text).unwrap(),
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// One of the test's clients: raw and compressing, or tungstenite and plain.
enum Any {
    Raw(DeflateClient),
    Ws(Box<Client>),
}

impl Any {
    async fn recv_json(&mut self) -> Value {
        match self {
            Self::Raw(c) => c.recv_json().await,
            Self::Ws(c) => c.recv_json().await,
        }
    }

    async fn send_json(&mut self, v: &Value) {
        match self {
            Self::Raw(c) => c.send_json(v).await,
            Self::Ws(c) => c.send_json(v).await,
        }
    }
}

/// A complete unmasked server frame at the front of `buf`: its first byte,
/// payload and length.
fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
    let (len, header) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    assert_ne!(buf[0] & 0x80, 0, "the gateway sends whole messages");
    (buf.len() >= header + len).then(|| (buf[0], buf[header..header + len].to_vec(), header + len))
}

fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Raw deflate, sync-flushed, the tail removed (RFC 7692 section 7.2.1).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - TAIL.len());
    out
}

fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(payload.len() * 20 + 1024);
    loop {
        let before = d.total_in() as usize;
        d.decompress_vec(&input[before..], &mut out, FlushDecompress::Sync)
            .unwrap();
        if d.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity());
    }
}

/// A federation snapshot of 100 peers, as seed 001's ARK mesh would publish
/// it every few seconds: most of it the same from one message to the next.
fn snapshot(n: u64) -> Value {
    let peers: Vec<Value> = (0..100)
        .map(|i| {
            let tier = ["core", "trusted", "known", "unverified"][i as usize % 4];
            json!({
                "peer_id": format!("ark-peer-{i:03}"),
                "status": if (i + n).is_multiple_of(17) { "degraded" } else { "online" },
                "trust_tier": tier,
                "latency_ms": 10 + (i * 7 + n * (i % 3)) % 90,
                "last_sync": format!("2026-12-07T05:{:02}:{:02}Z", n % 60, i % 60),
            })
        })
        .collect();
    json!({"type": "federation_update", "sequence": n, "peers": peers, "note": "ŝtation ✓"})
}

/// What one client made of the channel: messages and snapshots by offset
/// (decoded JSON text), and how many times its subscription started.
#[derive(Debug, Default)]
struct Seen {
    messages: BTreeMap<u64, String>,
    snapshots: BTreeMap<u64, String>,
    starts: Vec<Value>,
    deltas: usize,
}

/// Turns one native frame into what the client has; `base` is the delta
/// client's previous message (offset and JSON text).
fn take(seen: &mut Seen, frame: &Value, base: &mut Option<(u64, Vec<u8>)>) {
    match frame["type"].as_str() {
        Some("subscribed") => seen.starts.push(frame.clone()),
        Some("snapshot") => {
            let offset = frame["offset"].as_u64().unwrap();
            seen.snapshots.insert(offset, frame["data"].to_string());
        }
        Some("message") => {
            let offset = frame["offset"].as_u64().unwrap();
            let text = match &frame["data"] {
                // A delta subscription: the JSON text, whole or as a delta.
                Value::String(s) if frame["delta"] == true => {
                    let (base_offset, base_text) = base.as_ref().expect("a delta has a base");
                    assert_eq!(*base_offset + 1, offset, "a delta follows its base");
                    let patch: Vec<u8> = s.chars().map(|c| u8::try_from(c).unwrap()).collect();
                    seen.deltas += 1;
                    String::from_utf8(fossil_delta::apply(base_text, &patch).unwrap()).unwrap()
                }
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            *base = Some((offset, text.clone().into_bytes()));
            seen.messages.insert(offset, text);
        }
        other => panic!("unexpected frame {other:?}: {frame}"),
    }
}

fn publish_snapshot(port: u16, channel: &str, data: &Value) -> u64 {
    let body = json!({"channel": channel, "data": data, "snapshot": true}).to_string();
    let (status, reply) =
        http_request(port, "POST", "/api/v1/publish", &[], Some(&body)).expect("publish");
    assert_eq!(status, 200, "{reply}");
    serde_json::from_str::<Value>(&reply).unwrap()["offset"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressing_plain_and_delta_clients_each_get_exactly_the_published_json() {
    let redis = RedisServer::start();
    let gw = Switchboard::gateway(&redis, &["--history-size", "4"]);
    let channel = "federation";
    let offer = "permessage-deflate; client_max_window_bits";

    // A compressing client, a compressing delta client, a plain client (no
    // offer) and a plain delta client, all on the same channel.
    let zipped = DeflateClient::connect(gw.port, offer).await;
    let zipped_delta = DeflateClient::connect(gw.port, offer).await;
    for c in [&zipped, &zipped_delta] {
        assert_eq!(
            c.extensions.as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
    }
    let plain = Client::connect(&gw.ws_url("/ws")).await;
    let plain_delta = Client::connect(&gw.ws_url("/ws")).await;
    let mut clients = [
        Any::Raw(zipped),
        Any::Raw(zipped_delta),
        Any::Ws(Box::new(plain)),
        Any::Ws(Box::new(plain_delta)),
    ];
    let mut seen: [Seen; 4] = Default::default();
    let mut bases: [Option<(u64, Vec<u8>)>; 4] = Default::default();
    for (i, client) in clients.iter_mut().enumerate() {
        client.recv_json().await;
        let mut subscribe = json!({"type":"subscribe","channel":channel});
        if i % 2 == 1 {
            subscribe["delta"] = json!("fossil");
        }
        // The compressing clients send their requests compressed too.
        client.send_json(&subscribe).await;
        let start = client.recv_json().await;
        assert_eq!(start["type"], "subscribed", "{start}");
        assert_eq!(
            start["delta"],
            subscribe.get("delta").cloned().unwrap_or(Value::Null)
        );
        take(&mut seen[i], &start, &mut bases[i]);
    }
    // Reads every client until `done` says it has what it should.
    async fn read_until(
        clients: &mut [Any; 4],
        seen: &mut [Seen; 4],
        bases: &mut [Option<(u64, Vec<u8>)>; 4],
        done: impl Fn(&Seen) -> bool,
    ) {
        for (i, client) in clients.iter_mut().enumerate() {
            while !done(&seen[i]) {
                let frame = client.recv_json().await;
                take(&mut seen[i], &frame, &mut bases[i]);
            }
        }
    }

    // Every offset's data; published live, or only into history (unseen).
    let published: BTreeMap<u64, String> = (1..=25).map(|n| (n, snapshot(n).to_string())).collect();
    let send = |n: u64| assert_eq!(publish_snapshot(gw.port, channel, &snapshot(n)), n);
    for n in 1..=10 {
        send(n);
    }
    // A gap within history: 11 is only in Redis; 12 reveals it.
    redis.publish_unseen(channel, &snapshot(11), 4).await; // the gateway's --history-size
    send(12);
    read_until(&mut clients, &mut seen, &mut bases, |s| {
        s.messages.contains_key(&12)
    })
    .await;
    // A gap beyond history (4 messages kept): the subscriptions restart,
    // with the snapshot (19) standing for what was lost.
    for n in 13..=18 {
        redis.publish_unseen(channel, &snapshot(n), 4).await;
    }
    send(19);
    read_until(&mut clients, &mut seen, &mut bases, |s| {
        s.snapshots.contains_key(&19)
    })
    .await;
    for n in 20..=25 {
        send(n);
    }
    read_until(&mut clients, &mut seen, &mut bases, |s| {
        s.messages.contains_key(&25)
    })
    .await;

    let canonical = |text: &str| serde_json::from_str::<Value>(text).unwrap();
    let expected: Vec<u64> = (1..=12).chain(20..=25).collect();
    for (i, s) in seen.iter().enumerate() {
        let what = ["compressing", "compressing delta", "plain", "plain delta"][i];
        assert_eq!(
            s.messages.keys().copied().collect::<Vec<_>>(),
            expected,
            "{what}: every message once, the gap filled, the lost ones replaced by the snapshot"
        );
        for (offset, text) in &s.messages {
            if i % 2 == 1 {
                // Delta clients rebuild the published bytes exactly.
                assert_eq!(text, &published[offset], "{what} at {offset}");
            } else {
                assert_eq!(
                    canonical(text),
                    canonical(&published[offset]),
                    "{what} at {offset}"
                );
            }
        }
        assert_eq!(s.starts.len(), 2, "{what}: subscribed, then the restart");
        assert_eq!(s.starts[1]["recovered"], false, "{what}");
        assert_eq!(
            s.snapshots.get(&19).map(|t| canonical(t)),
            Some(canonical(&published[&19])),
            "{what}: the restart's snapshot"
        );
    }
    // Deltas for all but the first message and the first after the restart:
    // 2..=12 (11 through the gap fill) and 21..=25.
    assert_eq!(seen[1].deltas, 16, "compressing delta client");
    assert_eq!(seen[3].deltas, 16, "plain delta client");
    assert_eq!(seen[0].deltas + seen[2].deltas, 0);
    // Every message (≈ 15 KB) reached the compressing clients compressed,
    // and the whole ones of the delta client.
    let [Any::Raw(zipped), Any::Raw(zipped_delta), ..] = &clients else {
        unreachable!()
    };
    assert!(zipped.compressed >= expected.len(), "{}", zipped.compressed);
    assert!(zipped_delta.compressed >= 2, "{}", zipped_delta.compressed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_is_negotiated_only_as_offered_and_bad_compressed_input_is_refused() {
    let redis = RedisServer::start();
    let gw = Switchboard::gateway(&redis, &[]);
    let off = Switchboard::gateway(&redis, &["--compression", "off"]);

    // An offer the gateway cannot honour (a smaller server window) is declined.
    let c = DeflateClient::connect(gw.port, "permessage-deflate; server_max_window_bits=10").await;
    assert_eq!(c.extensions, None);
    // Off: never negotiated.
    let c = DeflateClient::connect(off.port, "permessage-deflate").await;
    assert_eq!(c.extensions, None);

    // A compressed frame that is not deflate data: 1007.
    let mut c = DeflateClient::connect(gw.port, "permessage-deflate").await;
    c.recv_json().await;
    c.stream
        .write_all(&masked_frame(0x80 | 0x40 | 0x1, b"\xff\xfenot deflate"))
        .await
        .unwrap();
    assert_eq!(
        c.next(WAIT).await,
        Some(Err(1007)),
        "corrupt compressed data"
    );

    // A small frame that inflates beyond the message limit: 1009.
    let mut c = DeflateClient::connect(gw.port, "permessage-deflate").await;
    c.recv_json().await;
    let bomb = format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "a".repeat(4 << 20));
    c.send(&bomb, true).await;
    assert_eq!(c.next(WAIT).await, Some(Err(1009)), "a deflate bomb");

    // RSV1 without the extension negotiated: a protocol error, 1002.
    let mut c = DeflateClient::connect(off.port, "permessage-deflate").await;
    c.recv_json().await;
    c.send(r#"{"type":"ping"}"#, true).await;
    assert_eq!(c.next(WAIT).await, Some(Err(1002)), "RSV1 not negotiated");

    // A good compressed request is answered (in plain: it is small).
    let mut c = DeflateClient::connect(gw.port, "permessage-deflate").await;
    c.recv_json().await;
    c.send(r#"{"type":"ping","id":7}"#, true).await;
    let pong = c.recv_json().await;
    assert_eq!(
        (pong["type"].as_str(), pong["id"].as_u64()),
        (Some("pong"), Some(7))
    );
    assert_eq!(c.compressed, 0, "below the threshold nothing is compressed");
}
