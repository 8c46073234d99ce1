//! permessage-deflate (RFC 7692), shaped so that the gateway compresses each
//! message once per replica, not once per client.
//!
//! The gateway accepts the extension with `server_no_context_takeover` and
//! `client_no_context_takeover`: every message, in either direction, is
//! compressed on its own, with a fresh compressor. A message's compressed
//! frame therefore depends on the message alone, and the same bytes go to
//! every subscriber that negotiated the extension — no per-connection
//! compressor, no per-connection window. A client's compressed message is
//! inflated with a decompressor that exists only while that message is read:
//! an idle connection holds no compression state at all. An offer the gateway
//! cannot honour that way (a `server_max_window_bits` below 15) is declined,
//! and the connection runs uncompressed.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use http::HeaderMap;

/// The tail every sync-flushed deflate block ends with, removed on the wire.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The extension as the gateway accepts it (`Sec-WebSocket-Extensions`).
pub const RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Whether and how the gateway compresses what it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Negotiate the extension with clients that offer it.
    pub enabled: bool,
    /// Messages smaller than this go out uncompressed (a frame may be sent
    /// either way on a connection that negotiated the extension).
    pub threshold: usize,
    /// zlib level, 0 (none) to 9 (smallest).
    pub level: u32,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 256,
            level: 3,
        }
    }
}

/// Whether the request offers permessage-deflate in a form the gateway can
/// accept (no offer asking for a server window below 15 bits).
pub fn acceptable_offer(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|offer| {
            let mut params = offer.split(';').map(str::trim);
            if !params
                .next()
                .is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate"))
            {
                return false;
            }
            params.all(|p| {
                let (name, value) = p.split_once('=').unwrap_or((p, ""));
                let value = value.trim().trim_matches('"');
                match name.trim().to_ascii_lowercase().as_str() {
                    "server_no_context_takeover" | "client_no_context_takeover" => value.is_empty(),
                    // Any client window is fine: we inflate with the largest.
                    "client_max_window_bits" => {
                        value.is_empty() || value.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b))
                    }
                    // We compress with a 15-bit window; a smaller one cannot be honoured.
                    "server_max_window_bits" => value == "15",
                    _ => false,
                }
            })
        })
}

/// Compresses one message as permessage-deflate carries it: raw deflate, sync
/// flush, the trailing `00 00 ff ff` removed.
pub fn compress(payload: &[u8], level: u32) -> Vec<u8> {
    let mut compressor = Compress::new(Compression::new(level.min(9)), false);
    // Deflate may expand incompressible input slightly: room for that, then
    // more if ever needed (compressing into a Vec fails only when it is full).
    let mut out = Vec::with_capacity(payload.len() + payload.len() / 64 + 64);
    loop {
        let consumed = compressor.total_in() as usize;
        let _ = compressor.compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync);
        // The flush is complete once the input is taken and room is left over.
        if compressor.total_in() as usize == payload.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    out
}

/// Why a compressed message cannot be inflated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    #[error("compressed message is not valid deflate data")]
    Corrupt,
    #[error("compressed message inflates beyond {limit} bytes")]
    TooBig { limit: usize },
}

/// Inflates one message of a client that negotiated the extension (each
/// message on its own: `client_no_context_takeover`), refusing one that
/// inflates beyond `max` bytes (a small frame can carry a huge message).
pub fn inflate(payload: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    let mut decompressor = Decompress::new(false);
    let mut input = Vec::with_capacity(payload.len() + TAIL.len());
    input.extend_from_slice(payload);
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity((payload.len() * 4).max(64).min(max.saturating_add(1)));
    loop {
        let (in_before, out_before) = (decompressor.total_in(), decompressor.total_out());
        let status = decompressor
            .decompress_vec(
                &input[in_before as usize..],
                &mut out,
                FlushDecompress::Sync,
            )
            .map_err(|_| InflateError::Corrupt)?;
        if out.len() > max {
            return Err(InflateError::TooBig { limit: max });
        }
        let all_in = decompressor.total_in() as usize == input.len();
        if status == Status::StreamEnd || (all_in && out.len() < out.capacity()) {
            return Ok(out);
        }
        let progress =
            decompressor.total_in() != in_before || decompressor.total_out() != out_before;
        if !progress && out.len() < out.capacity() {
            // Input left, room left, nothing happened: not a deflate stream.
            return Err(InflateError::Corrupt);
        }
        // At most one byte past the limit, so a bomb stops as soon as it shows.
        let room = (max + 1)
            .saturating_sub(out.len())
            .clamp(1, out.capacity().max(64));
        out.reserve(room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn offer(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    #[test]
    fn offers_the_gateway_can_accept() {
        // Chromium's and Firefox's offer.
        assert!(acceptable_offer(&offer(
            "permessage-deflate; client_max_window_bits"
        )));
        assert!(acceptable_offer(&offer("permessage-deflate")));
        assert!(acceptable_offer(&offer(
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=12"
        )));
        assert!(!acceptable_offer(&offer(
            "permessage-deflate; server_max_window_bits=10"
        )));
        assert!(acceptable_offer(&offer(
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        )));
        assert!(!acceptable_offer(&offer("x-webkit-deflate-frame")));
        assert!(!acceptable_offer(&offer(
            "permessage-deflate; unknown_param"
        )));
        assert!(!acceptable_offer(&HeaderMap::new()));
    }

    #[test]
    fn messages_round_trip_each_on_its_own() {
        let json = br#"{"peers":[{"id":"ark-core-1","status":"online"},{"id":"ark-core-2","status":"online"}],"network_health":94.0}"#.repeat(20);
        let small = compress(&json, 3);
        assert!(small.len() * 4 < json.len(), "JSON compresses well");
        assert!(!small.ends_with(&TAIL));
        assert_eq!(inflate(&small, 1 << 20).unwrap(), json);
        assert_eq!(
            compress(&json, 3),
            small,
            "the same bytes every time: one frame for all"
        );
        assert_eq!(inflate(&compress(b"", 3), 16).unwrap(), b"");
        let big = vec![b'a'; 100_000];
        assert_eq!(inflate(&compress(&big, 9), 200_000).unwrap(), big);
    }

    #[test]
    fn a_bomb_and_garbage_are_refused() {
        let bomb = compress(&vec![0u8; 1_000_000], 9);
        assert!(bomb.len() < 2_000);
        assert_eq!(
            inflate(&bomb, 65_536),
            Err(InflateError::TooBig { limit: 65_536 })
        );
        assert_eq!(
            inflate(&[0xff, 0xfe, 0xfd, 0x00], 1024),
            Err(InflateError::Corrupt)
        );
    }
}
