//! A delta subscriber's side of `"delta": "fossil"` (docs/PROTOCOL.md,
//! "Deltas"): each `message` frame's `data` is the published text as a JSON
//! string, whole or as a fossil delta against the previous message, and this
//! rebuilds the published text so the load generator can check it like any
//! other client's (its `seq` and `ts`), and count what the delta saved.
//!
//! Only delta runs parse frames as JSON: the other routes keep the substring
//! scan of `fields.rs`.

use serde::Deserialize;

/// Why a delta frame could not be turned back into its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("a message frame that is not JSON")]
    NotJson,
    #[error("a delta with no previous message")]
    NoBase,
    #[error("a delta against offset {got:?}, not the previous {want}")]
    Chain { want: u64, got: Option<u64> },
    #[error("a delta with a character above U+00FF")]
    NotBytes,
    #[error("a delta that does not apply")]
    Apply,
}

/// The fields of a native `message` frame a delta subscriber reads.
#[derive(Deserialize)]
struct Frame {
    offset: Option<u64>,
    #[serde(default)]
    delta: bool,
    data: serde_json::Value,
}

/// A message rebuilt from its frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Rebuilt {
    /// The published text.
    pub text: Vec<u8>,
    /// It came as a delta.
    pub was_delta: bool,
    /// The bytes the frame carried in `data` (the delta's, or the text's).
    pub carried: usize,
}

/// The previous message of one subscription: the base of the next delta.
#[derive(Debug, Default)]
pub struct Chain {
    base: Option<(u64, Vec<u8>)>,
}

impl Chain {
    /// Rebuilds the message of a native `message` frame.
    pub fn rebuild(&mut self, frame: &[u8]) -> Result<Rebuilt, DeltaError> {
        let f: Frame = serde_json::from_slice(frame).map_err(|_| DeltaError::NotJson)?;
        let rebuilt = match f.data {
            serde_json::Value::String(s) if f.delta => {
                let delta = latin1(&s)?;
                let (base_offset, base) = self.base.as_ref().ok_or(DeltaError::NoBase)?;
                if f.offset != Some(base_offset + 1) {
                    return Err(DeltaError::Chain {
                        want: base_offset + 1,
                        got: f.offset,
                    });
                }
                let text = std::panic::catch_unwind(|| fossil_delta::apply(base, &delta))
                    .map_err(|_| DeltaError::Apply)?
                    .map_err(|_| DeltaError::Apply)?;
                Rebuilt {
                    text,
                    was_delta: true,
                    carried: delta.len(),
                }
            }
            serde_json::Value::String(s) => Rebuilt {
                carried: s.len(),
                text: s.into_bytes(),
                was_delta: false,
            },
            // A message without offset comes in the ordinary form.
            other => {
                let text = other.to_string().into_bytes();
                Rebuilt {
                    carried: text.len(),
                    text,
                    was_delta: false,
                }
            }
        };
        self.base = f.offset.map(|o| (o, rebuilt.text.clone()));
        Ok(rebuilt)
    }
}

/// A delta carried one byte per character.
fn latin1(s: &str) -> Result<Vec<u8>, DeltaError> {
    s.chars()
        .map(|c| u8::try_from(u32::from(c)).map_err(|_| DeltaError::NotBytes))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(offset: u64, delta: bool, data: &[u8]) -> Vec<u8> {
        let data: String = if delta {
            data.iter().map(|&b| char::from(b)).collect()
        } else {
            String::from_utf8(data.to_vec()).unwrap()
        };
        let mut v =
            serde_json::json!({"type": "message", "channel": "c", "offset": offset, "data": data});
        if delta {
            v["delta"] = true.into();
        }
        v.to_string().into_bytes()
    }

    #[test]
    fn deltas_rebuild_the_published_text_in_a_chain() {
        let a = br#"{"seq":1,"ts":5,"peers":["alpha","beta","gamma","delta"]}"#.to_vec();
        let b = br#"{"seq":2,"ts":6,"peers":["alpha","beta","gamma","delta"]}"#.to_vec();
        let c = r#"{"seq":3,"ts":7,"peers":["alpha","beta","gamma","delta","é"]}"#
            .as_bytes()
            .to_vec();
        let mut chain = Chain::default();
        let first = chain.rebuild(&frame(10, false, &a)).unwrap();
        assert_eq!((first.text, first.was_delta), (a.clone(), false));
        let d = fossil_delta::delta(&b, &a);
        let second = chain.rebuild(&frame(11, true, &d)).unwrap();
        assert_eq!(
            (second.text, second.was_delta, second.carried),
            (b.clone(), true, d.len())
        );
        let d = fossil_delta::delta(&c, &b);
        assert_eq!(chain.rebuild(&frame(12, true, &d)).unwrap().text, c);
        // A delta that skips an offset, or with no base, is refused.
        let d = fossil_delta::delta(&a, &c);
        assert_eq!(
            chain.rebuild(&frame(14, true, &d)),
            Err(DeltaError::Chain {
                want: 13,
                got: Some(14)
            })
        );
        assert_eq!(
            Chain::default().rebuild(&frame(1, true, &d)),
            Err(DeltaError::NoBase)
        );
        assert_eq!(chain.rebuild(b"nope"), Err(DeltaError::NotJson));
    }
}
