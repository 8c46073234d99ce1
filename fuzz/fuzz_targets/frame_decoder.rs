//! The WebSocket frame decoder must never panic and never buffer past its
//! limits, however the bytes are split across reads.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard::ws::frame::{DecodeLimits, Decoder};

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(split).max(1);
    let limits = DecodeLimits {
        max_frame: 1024,
        max_message: 4096,
    };
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::new();
    for piece in bytes.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // A frame is rejected from its header once it is over the limit, so
        // the buffer never holds more than one frame's worth.
        assert!(buf.len() <= limits.max_frame + 14 + chunk);
    }
});
