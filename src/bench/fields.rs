//! Finding what the load generator needs in a received text frame without
//! parsing it as JSON: the frame's `type`, the native `offset`, and the
//! publisher's `seq` and `ts` (publish time in Unix µs) inside `data`.
//!
//! The publisher writes `data` as `{"seq":N,"ts":T,"pad":"…"}`, so both keys sit
//! at the start of the payload; the scan is a few substring searches.

use memchr::memmem;

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
fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = memmem::find(text, key)? + key.len();
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
fn string_after<'a>(text: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let at = memmem::find(text, key)? + key.len();
    let rest = &text[at..];
    let end = memchr::memchr(b'"', rest)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// `seq` and `ts` of a payload as the publisher wrote it.
pub fn stamp(data: &[u8]) -> Stamp {
    Stamp {
        seq: number_after(data, b"\"seq\":"),
        ts: number_after(data, b"\"ts\":"),
    }
}

/// Classifies a native-protocol frame.
pub fn native(text: &[u8]) -> Native<'_> {
    match string_after(text, b"\"type\":\"") {
        Some("message") => {
            let (head, data) = match memmem::find(text, b"\"data\":") {
                Some(i) => text.split_at(i),
                None => (text, &[][..]),
            };
            Native::Message {
                offset: number_after(head, b"\"offset\":"),
                stamp: stamp(data),
            }
        }
        Some("connection_established") => Native::Established,
        Some("subscribed") => Native::Subscribed {
            offset: number_after(text, b"\"offset\":").unwrap_or(0),
        },
        Some("error") => Native::Error {
            code: string_after(text, b"\"code\":\"").unwrap_or("unknown"),
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
        assert_eq!(
            number_after(br#""ts":99999999999999999999"#, b"\"ts\":"),
            None
        );
        assert_eq!(number_after(br#""ts":-1"#, b"\"ts\":"), None);
    }
}
