//! Finding what the load generator needs in a received text frame without
//! parsing it as JSON: the frame's `type`, the native `offset`, and the
//! publisher's `seq` and `ts` (publish time in Unix µs) inside `data`.
//!
//! The publisher writes `data` as `{"seq":N,"ts":T,"pad":"…"}`, so both keys sit
//! at the start of the payload; the scan is a few substring searches.

use std::sync::LazyLock;

use memchr::memmem::Finder;

/// The keys searched in every received message, each a searcher built once:
/// `memmem::find` builds one per call, which on these short frames costs more
/// than the search. The client's cost per message is part of every latency
/// it measures (client and server share the machine's cores), so it is kept
/// low and close between routes.
static SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"seq\":"));
static TS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"ts\":"));
static DATA: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"data\":"));
static OFFSET: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"offset\":"));
static TYPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"type\":\""));
static CODE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"code\":\""));

/// How the gateway begins a native message frame (`type` comes first).
const MESSAGE_START: &[u8] = b"{\"type\":\"message\"";

/// What the publisher put into `data`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    pub seq: Option<u64>,
    pub ts: Option<u64>,
}

/// A native-protocol frame, as far as the load generator cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Native<'a> {
    Message { offset: Option<u64>, stamp: Stamp },
    Established,
    Subscribed { offset: u64 },
    Error { code: &'a str },
    Pong,
    Other,
}

/// The data of a published message: `{"seq":N,"ts":T,"pad":"xx…"}`, padded to
/// about `payload_bytes` bytes.
pub fn make_data(seq: u64, ts: u64, payload_bytes: usize) -> String {
    let head = format!("{{\"seq\":{seq},\"ts\":{ts},\"pad\":\"");
    let pad = payload_bytes.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(head.len() + pad + 2);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// The unsigned integer right after `key` (which includes its `"…":`).
fn number_after(text: &[u8], key: &Finder<'_>) -> Option<u64> {
    let at = key.find(text)? + key.needle().len();
    let digits = &text[at..];
    let digits = &digits[..digits.iter().take_while(|b| b.is_ascii_digit()).count()];
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The string value right after `key`.
fn string_after<'a>(text: &'a [u8], key: &Finder<'_>) -> Option<&'a str> {
    let at = key.find(text)? + key.needle().len();
    let rest = &text[at..];
    let end = memchr::memchr(b'"', rest)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// `seq` and `ts` of a payload as the publisher wrote it.
pub fn stamp(data: &[u8]) -> Stamp {
    Stamp {
        seq: number_after(data, &SEQ),
        ts: number_after(data, &TS),
    }
}

/// Classifies a native-protocol frame.
pub fn native(text: &[u8]) -> Native<'_> {
    let kind = if text.starts_with(MESSAGE_START) {
        Some("message")
    } else {
        string_after(text, &TYPE)
    };
    match kind {
        Some("message") => {
            let (head, data) = match DATA.find(text) {
                Some(i) => text.split_at(i),
                None => (text, &[][..]),
            };
            Native::Message {
                offset: number_after(head, &OFFSET),
                stamp: stamp(data),
            }
        }
        Some("connection_established") => Native::Established,
        Some("subscribed") => Native::Subscribed {
            offset: number_after(text, &OFFSET).unwrap_or(0),
        },
        Some("error") => Native::Error {
            code: string_after(text, &CODE).unwrap_or("unknown"),
        },
        Some("pong") => Native::Pong,
        _ => Native::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_padded_and_stamped() {
        let d = make_data(7, 1_700_000_000_000_000, 100);
        assert_eq!(d.len(), 100);
        assert!(serde_json::from_str::<serde_json::Value>(&d).is_ok());
        assert_eq!(
            stamp(d.as_bytes()),
            Stamp {
                seq: Some(7),
                ts: Some(1_700_000_000_000_000)
            }
        );
        // Smaller than the fields themselves: no padding, still valid.
        let d = make_data(1, 2, 0);
        assert_eq!(d, r#"{"seq":1,"ts":2,"pad":""}"#);
    }

    #[test]
    fn native_frames_are_classified() {
        let m = br#"{"type":"message","channel":"bench","offset":42,"data":{"seq":3,"ts":99,"pad":"x"}}"#;
        assert_eq!(
            native(m),
            Native::Message {
                offset: Some(42),
                stamp: Stamp {
                    seq: Some(3),
                    ts: Some(99)
                }
            }
        );
        let plain = br#"{"type":"message","channel":"offset","data":{"seq":3,"ts":99}}"#;
        assert!(matches!(
            native(plain),
            Native::Message { offset: None, .. }
        ));
        assert_eq!(
            native(br#"{"type":"subscribed","channel":"b","epoch":"e","offset":17,"id":1}"#),
            Native::Subscribed { offset: 17 }
        );
        assert_eq!(
            native(br#"{"type":"connection_established","connection_id":"x"}"#),
            Native::Established
        );
        assert_eq!(
            native(br#"{"type":"error","code":"forbidden","message":"no"}"#),
            Native::Error { code: "forbidden" }
        );
        assert_eq!(native(br#"{"type":"pong","timestamp":"t"}"#), Native::Pong);
        assert_eq!(native(b"not json"), Native::Other);
    }

    #[test]
    fn numbers_that_overflow_are_ignored() {
        assert_eq!(number_after(br#""ts":99999999999999999999"#, &TS), None);
        assert_eq!(number_after(br#""ts":-1"#, &TS), None);
    }
}
