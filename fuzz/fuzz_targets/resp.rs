//! The RESP2 reader of the cluster's pub/sub connections reads whatever a
//! Redis node (or anything listening at its address) sends. It must never
//! panic, never consume part of a frame, and read the same frames however
//! the bytes are split across reads.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard::engine::cluster::resp::{Decoder, Frame, RespError};

/// Every frame of `input` read in pieces of `chunk` bytes, and the error that
/// stopped the reading, if one did.
fn read_all(input: &[u8], chunk: usize) -> (Vec<Frame>, Option<RespError>) {
    let mut decoder = Decoder;
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(buf.len() < before, "a frame consumes its bytes");
                    frames.push(frame);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "nothing consumed while incomplete");
                    break;
                }
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(split).max(1);
    let whole = read_all(input, input.len().max(1));
    let pieces = read_all(input, chunk);
    // Splitting may only delay an error past the frames before it, never
    // change a frame or turn one into an error.
    assert_eq!(whole, pieces, "the same frames whatever the reads");
});
