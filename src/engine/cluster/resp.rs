//! A minimal RESP2 reader for the sharded pub/sub connections.
//!
//! A connection in subscribed mode receives only a few shapes: arrays of bulk
//! strings and integers (`smessage`, `ssubscribe`, `sunsubscribe`), errors
//! (`-MOVED …`) and simple strings (the `+OK` of `AUTH`). [`Decoder::decode`]
//! takes one complete frame off the front of a read buffer, or nothing while
//! the frame is still incomplete; bulk payloads are slices of the buffer, never
//! copied.

use bytes::{Bytes, BytesMut};

/// Largest bulk string accepted: Redis's own default `proto-max-bulk-len`.
const MAX_BULK: usize = 512 * 1024 * 1024;
/// Deepest nesting accepted (pub/sub frames are one level deep).
const MAX_DEPTH: usize = 4;
/// Most elements of one array (pub/sub frames have three).
const MAX_ELEMENTS: usize = 1024;

/// One RESP2 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Simple(Bytes),
    Error(String),
    Integer(i64),
    /// `None` is the null bulk string.
    Bulk(Option<Bytes>),
    /// `None` is the null array.
    Array(Option<Vec<Frame>>),
}

/// Why the byte stream is not RESP2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("malformed reply from Redis: {0}")]
    Malformed(&'static str),
}

/// A frame located in the buffer, before the buffer is split off.
enum Raw {
    Simple(usize, usize),
    Error(usize, usize),
    Integer(i64),
    Bulk(Option<(usize, usize)>),
    Array(Option<Vec<Raw>>),
}

/// Reads frames off a growing buffer.
#[derive(Debug, Default)]
pub struct Decoder;

impl Decoder {
    /// Takes one complete frame off the front of `buf`; `Ok(None)` while more
    /// bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, RespError> {
        let Some((raw, end)) = parse(buf, 0, 0)? else {
            return Ok(None);
        };
        let bytes = buf.split_to(end).freeze();
        Ok(Some(build(&bytes, raw)))
    }
}

fn build(bytes: &Bytes, raw: Raw) -> Frame {
    match raw {
        Raw::Simple(s, e) => Frame::Simple(bytes.slice(s..e)),
        Raw::Error(s, e) => Frame::Error(String::from_utf8_lossy(&bytes[s..e]).into_owned()),
        Raw::Integer(i) => Frame::Integer(i),
        Raw::Bulk(range) => Frame::Bulk(range.map(|(s, e)| bytes.slice(s..e))),
        Raw::Array(items) => {
            Frame::Array(items.map(|items| items.into_iter().map(|r| build(bytes, r)).collect()))
        }
    }
}

/// The line starting at `at` (without its CRLF) and where the next one starts.
fn line(buf: &[u8], at: usize) -> Option<(usize, usize, usize)> {
    let rest = buf.get(at..)?;
    let nl = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((at, at + nl, at + nl + 2))
}

fn number(bytes: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(RespError::Malformed("expected a number"))
}

fn parse(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Raw, usize)>, RespError> {
    if depth > MAX_DEPTH {
        return Err(RespError::Malformed("nested too deeply"));
    }
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((start, end, next)) = line(buf, at + 1) else {
        return Ok(None);
    };
    let text = &buf[start..end];
    match kind {
        b'+' => Ok(Some((Raw::Simple(start, end), next))),
        b'-' => Ok(Some((Raw::Error(start, end), next))),
        b':' => Ok(Some((Raw::Integer(number(text)?), next))),
        b'$' => {
            let len = number(text)?;
            if len < 0 {
                return Ok(Some((Raw::Bulk(None), next)));
            }
            let len = len as usize;
            if len > MAX_BULK {
                return Err(RespError::Malformed("bulk string too long"));
            }
            let stop = next + len;
            if buf.len() < stop + 2 {
                return Ok(None);
            }
            if &buf[stop..stop + 2] != b"\r\n" {
                return Err(RespError::Malformed("bulk string without CRLF"));
            }
            Ok(Some((Raw::Bulk(Some((next, stop))), stop + 2)))
        }
        b'*' => {
            let len = number(text)?;
            if len < 0 {
                return Ok(Some((Raw::Array(None), next)));
            }
            let len = len as usize;
            if len > MAX_ELEMENTS {
                return Err(RespError::Malformed("array too long"));
            }
            let mut items = Vec::with_capacity(len);
            let mut pos = next;
            for _ in 0..len {
                let Some((item, after)) = parse(buf, pos, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                pos = after;
            }
            Ok(Some((Raw::Array(Some(items)), pos)))
        }
        _ => Err(RespError::Malformed("unknown type byte")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> (Vec<Frame>, usize) {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = Decoder.decode(&mut buf).unwrap() {
            out.push(f);
        }
        (out, buf.len())
    }

    fn bulk(s: &str) -> Frame {
        Frame::Bulk(Some(Bytes::copy_from_slice(s.as_bytes())))
    }

    #[test]
    fn pubsub_frames_decode() {
        let input = b"*3\r\n$8\r\nsmessage\r\n$6\r\nsb:{b}\r\n$5\r\nhello\r\n\
                      *3\r\n$10\r\nssubscribe\r\n$6\r\nsb:{b}\r\n:1\r\n\
                      -MOVED 15495 127.0.0.1:21003\r\n+OK\r\n*3\r\n$12\r\nsunsubscribe\r\n$-1\r\n:0\r\n";
        let (frames, left) = decode_all(input);
        assert_eq!(left, 0);
        assert_eq!(
            frames,
            vec![
                Frame::Array(Some(vec![bulk("smessage"), bulk("sb:{b}"), bulk("hello")])),
                Frame::Array(Some(vec![
                    bulk("ssubscribe"),
                    bulk("sb:{b}"),
                    Frame::Integer(1)
                ])),
                Frame::Error("MOVED 15495 127.0.0.1:21003".into()),
                Frame::Simple(Bytes::from_static(b"OK")),
                Frame::Array(Some(vec![
                    bulk("sunsubscribe"),
                    Frame::Bulk(None),
                    Frame::Integer(0)
                ])),
            ]
        );
    }

    #[test]
    fn every_split_point_waits_for_the_rest() {
        let input: &[u8] = b"*3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$10\r\n{\"a\":\"\r\n\"}\r\n";
        for cut in 0..input.len() {
            let mut buf = BytesMut::from(&input[..cut]);
            assert_eq!(Decoder.decode(&mut buf).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed at {cut}");
            buf.extend_from_slice(&input[cut..]);
            let frame = Decoder.decode(&mut buf).unwrap().unwrap();
            assert_eq!(
                frame,
                Frame::Array(Some(vec![
                    bulk("smessage"),
                    bulk("ch"),
                    bulk("{\"a\":\"\r\n\"}")
                ]))
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            &b"?x\r\n"[..],
            b"$3\r\nabcd\r\n",
            b":x\r\n",
            b"*99999999\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(Decoder.decode(&mut buf).is_err(), "{bad:?}");
        }
    }
}
