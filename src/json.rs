//! Validated JSON text that travels through the gateway without being re-encoded.
//!
//! A published message's `data` is checked once where it enters (publish API,
//! Redis pub/sub, history) and then carried as bytes: it is spliced into each
//! outgoing frame as it is, so the hot path never parses or re-serializes it.

use std::fmt;

use bytes::Bytes;
use serde_json::value::RawValue;

/// JSON text known to be one syntactically valid JSON value.
#[derive(Clone, PartialEq, Eq)]
pub struct Json(Bytes);

/// Why bytes are not acceptable JSON.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("not valid JSON: {0}")]
    Syntax(#[from] serde_json::Error),
    #[error("JSON nests deeper than {max} levels")]
    TooDeep { max: usize },
}

impl Json {
    /// Validates `bytes` as one JSON value, nesting at most `max_depth` levels.
    pub fn parse(bytes: Bytes, max_depth: usize) -> Result<Self, JsonError> {
        check_depth(&bytes, max_depth)?;
        serde_json::from_slice::<&RawValue>(&bytes)?;
        // Kept as published, surrounding whitespace included: the relay
        // routes deliver the bytes exactly; envelopes splice the value itself
        // (`as_raw`, which has no surrounding whitespace).
        Ok(Self(bytes))
    }

    /// Wraps JSON produced by `serde_json` itself (always valid).
    pub fn from_value(value: &serde_json::Value) -> Self {
        Self(Bytes::from(value.to_string()))
    }

    /// The JSON text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The JSON text as a cheap, shareable buffer.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The JSON text as `&str` (valid JSON is valid UTF-8).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("null")
    }

    /// The JSON as a borrowed raw value, for splicing into a serialized envelope.
    pub fn as_raw(&self) -> &RawValue {
        serde_json::from_slice::<&RawValue>(&self.0)
            .unwrap_or_else(|_| serde_json::from_str::<&RawValue>("null").expect("null is JSON"))
    }

    /// Parses into a tree (for filters and for the collector's tests).
    pub fn to_value(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.0).ok()
    }

    /// Whether the value is a JSON object.
    pub fn is_object(&self) -> bool {
        self.0.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Json({})", self.as_str())
    }
}

/// Rejects nesting deeper than `max` without building a tree: a single scan that
/// counts brackets outside strings. Runs before the parser so that a hostile
/// `[[[[…` costs one pass, not a deep recursion.
pub fn check_depth(bytes: &[u8], max: usize) -> Result<(), JsonError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(JsonError::TooDeep { max });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_bytes_and_splices_the_value_alone() {
        let j = Json::parse(Bytes::from_static(b"  {\"a\": [1, 2]} \n"), 8).unwrap();
        assert_eq!(j.as_str(), "  {\"a\": [1, 2]} \n", "exactly as published");
        assert_eq!(
            j.as_raw().get(),
            "{\"a\": [1, 2]}",
            "no surrounding whitespace"
        );
        assert!(j.is_object());
    }

    #[test]
    fn rejects_malformed_and_trailing_garbage() {
        assert!(Json::parse(Bytes::from_static(b"{\"a\":"), 8).is_err());
        assert!(Json::parse(Bytes::from_static(b"{} {}"), 8).is_err());
        assert!(Json::parse(Bytes::from_static(b""), 8).is_err());
    }

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        assert!(check_depth(b"[[[1]]]", 3).is_ok());
        assert!(matches!(
            check_depth(b"[[[[1]]]]", 3),
            Err(JsonError::TooDeep { max: 3 })
        ));
        assert!(check_depth(br#"{"a":"[[[[[[[[\"[["}"#, 1).is_ok());
    }
}
