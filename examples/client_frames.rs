//! The load generator's own cost per received frame: the receive loop of
//! `bench/client.rs` (frames found in place with
//! `ws::frame::parse_server_frame`, fragments reassembled, pings answered) and
//! then the fields the client reads (`bench/fields.rs`), on native message
//! frames (~156 B) and raw ones (the 100 B data alone), in batches of 64 frames
//! as one read returns them. Client and server share the cores in a benchmark,
//! so the client's cost is part of every latency it measures. For comparison,
//! the server's `Decoder` on masked frames of the same sizes (it splits each
//! payload off into owned bytes, unmasks it and checks UTF-8).
//!
//! ```sh
//! cargo run --release --example client_frames
//! ```
//!
//! Prints ns per frame, the best of 7 rounds of 5 M frames (`FRAMES`, `ROUNDS`
//! in the environment); `client_frames NAME` runs one measurement, e.g. under
//! `valgrind --tool=callgrind` for instruction counts (BENCHMARKS.md).

use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use switchboard::bench::fields::{self, Native};
use switchboard::bench::wsclient;
use switchboard::ws::frame::{
    self, DecodeLimits, Decoder, FrameError, Incoming, OpCode, ServerFrame,
};

const BATCH: usize = 64;

/// One measured pass over a batch.
type Scan = fn(&[u8]) -> u64;

/// Server (unmasked) or client (masked) frames: the native and the raw batch.
fn buffers(masked: bool) -> (BytesMut, BytesMut) {
    let (mut native, mut raw) = (BytesMut::new(), BytesMut::new());
    let put = |out: &mut BytesMut, payload: &[u8]| {
        if masked {
            frame::encode_masked_into(out, OpCode::Text, payload, rand::random());
        } else {
            frame::encode_into(out, OpCode::Text, payload);
        }
    };
    for i in 0..BATCH as u64 {
        let data = fields::make_data(1000 + i, 1_700_000_000_000_000 + i, 100);
        let frame = format!(
            r#"{{"type":"message","channel":"bench","offset":{},"data":{data}}}"#,
            5000 + i
        );
        put(&mut native, frame.as_bytes());
        put(&mut raw, data.as_bytes());
    }
    (native, raw)
}

/// Frames per round and rounds: `FRAMES` and `ROUNDS` in the environment.
fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// ns per frame of `scan` over the buffer, best of the rounds.
fn time(buf: &[u8], scan: Scan) -> f64 {
    let (frames, rounds) = (setting("FRAMES", 5_000_000), setting("ROUNDS", 7));
    let batches = (frames / BATCH).max(1);
    let mut best = f64::MAX;
    for _ in 0..rounds.max(1) {
        let started = Instant::now();
        let mut sum = 0u64;
        for _ in 0..batches {
            sum = sum.wrapping_add(scan(black_box(buf)));
        }
        black_box(sum);
        best = best.min(started.elapsed().as_nanos() as f64 / (batches * BATCH) as f64);
    }
    best
}

/// The receive loop of `bench/client.rs` (`Conn::process`): every complete
/// frame in the buffer, fragments reassembled, pings answered.
fn frames(buf: &[u8], mut each: impl FnMut(&[u8])) -> Result<Option<String>, FrameError> {
    let (mut pos, mut ended) = (0, None);
    let (mut partial, mut out) = (Vec::new(), BytesMut::new());
    while let Some(f) = frame::parse_server_frame(&buf[pos..], false)? {
        let ServerFrame {
            fin,
            opcode,
            start,
            len,
            ..
        } = f;
        let payload = &buf[pos + start..pos + start + len];
        match opcode {
            OpCode::Text | OpCode::Binary if fin => each(payload),
            OpCode::Text | OpCode::Binary => {
                partial.clear();
                partial.extend_from_slice(payload);
            }
            OpCode::Continuation => {
                partial.extend_from_slice(payload);
                if fin {
                    each(&std::mem::take(&mut partial));
                }
            }
            OpCode::Ping => wsclient::encode(&mut out, OpCode::Pong, payload),
            OpCode::Close => {
                ended = Some(format!(
                    "close {}",
                    wsclient::close_code(payload).unwrap_or(1005)
                ));
            }
            OpCode::Pong => {}
        }
        pos += start + len;
        if ended.is_some() {
            break;
        }
    }
    black_box(out);
    Ok(ended)
}

fn parse_only(buf: &[u8]) -> u64 {
    let mut n = 0;
    let _ = frames(buf, |p| n += p.len() as u64);
    n
}

fn native(buf: &[u8]) -> u64 {
    let mut n = 0;
    let _ = frames(buf, |p| {
        if let Native::Message { offset, stamp } = fields::native(p) {
            n += offset.unwrap_or(0) + stamp.ts.unwrap_or(0);
        }
    });
    n
}

fn raw(buf: &[u8]) -> u64 {
    let mut n = 0;
    let _ = frames(buf, |p| n += fields::stamp(p).ts.unwrap_or(0));
    n
}

/// The server's decoder over a copy of the batch (the copy is timed too:
/// `decode` consumes its buffer).
fn decoder(buf: &[u8]) -> u64 {
    let mut buf = BytesMut::from(buf);
    let mut d = Decoder::new(DecodeLimits {
        max_frame: 1 << 20,
        max_message: 1 << 20,
    });
    let mut n = 0;
    while let Ok(Some(m)) = d.decode(&mut buf) {
        if let Incoming::Text(t) = m {
            n += t.len() as u64;
        }
    }
    n
}

fn main() {
    let (native_buf, raw_buf) = buffers(false);
    let (native_masked, raw_masked) = buffers(true);
    // One measurement by name (`client_frames native`), e.g. under callgrind.
    let only = std::env::args().nth(1);
    let cases: [(&str, &[u8], Scan); 6] = [
        ("frames-native", &native_buf, parse_only),
        ("frames-raw", &raw_buf, parse_only),
        ("native", &native_buf, native),
        ("raw", &raw_buf, raw),
        ("decoder-native", &native_masked, decoder),
        ("decoder-raw", &raw_masked, decoder),
    ];
    for (name, buf, scan) in cases {
        if only.as_deref().is_none_or(|o| o == name) {
            println!("{name}: {:.1} ns per frame", time(buf, scan));
        }
    }
}
