//! Channel names: the validated identifier of a stream of messages.
//!
//! A channel name is what clients subscribe to and producers publish on. It is
//! embedded in Redis key names (inside a `{…}` hash tag) and in URL paths, so its
//! grammar is deliberately narrow: ASCII letters, digits and `_ - . : @`, at most
//! a configurable number of bytes. The part before the first `:` is the channel's
//! namespace (`agents:agent_1` is in namespace `agents`), used for per-namespace
//! settings such as history size.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// Default maximum length of a channel name, in bytes.
pub const DEFAULT_MAX_CHANNEL_LEN: usize = 128;

/// A channel name that satisfies the grammar. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a string is not a valid channel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is {len} bytes long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error(
        "channel name contains {0:?}; allowed are ASCII letters, digits and the characters _ - . : @"
    )]
    BadChar(char),
}

impl ChannelName {
    /// Validates `s` against the channel grammar with the given maximum length.
    pub fn parse(s: &str, max_len: usize) -> Result<Self, ChannelNameError> {
        if s.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if s.len() > max_len {
            return Err(ChannelNameError::TooLong {
                len: s.len(),
                max: max_len,
            });
        }
        if let Some(c) = s.chars().find(|c| !is_channel_char(*c)) {
            return Err(ChannelNameError::BadChar(c));
        }
        Ok(Self(Arc::from(s)))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace: the part before the first `:`, if there is one.
    pub fn namespace(&self) -> Option<&str> {
        self.0.split_once(':').map(|(ns, _)| ns)
    }
}

fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@')
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_grammar() {
        for ok in [
            "federation",
            "agents:agent_1",
            "3d_pipeline",
            "a.b-c@d",
            "x",
        ] {
            assert_eq!(ChannelName::parse(ok, 128).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_what_would_break_keys_or_paths() {
        assert_eq!(ChannelName::parse("", 128), Err(ChannelNameError::Empty));
        assert_eq!(
            ChannelName::parse("a{b}", 128),
            Err(ChannelNameError::BadChar('{'))
        );
        assert_eq!(
            ChannelName::parse("a b", 128),
            Err(ChannelNameError::BadChar(' '))
        );
        assert_eq!(
            ChannelName::parse("a/b", 128),
            Err(ChannelNameError::BadChar('/'))
        );
        assert_eq!(
            ChannelName::parse("a*", 128),
            Err(ChannelNameError::BadChar('*'))
        );
        assert_eq!(
            ChannelName::parse("abcd", 3),
            Err(ChannelNameError::TooLong { len: 4, max: 3 })
        );
    }

    #[test]
    fn namespace_is_the_part_before_the_first_colon() {
        let c = ChannelName::parse("agents:a:b", 128).unwrap();
        assert_eq!(c.namespace(), Some("agents"));
        assert_eq!(
            ChannelName::parse("federation", 128).unwrap().namespace(),
            None
        );
    }
}
