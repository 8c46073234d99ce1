//! Redis key names of a channel.
//!
//! Every key of a channel carries the channel name as a Redis Cluster hash tag
//! (`{…}`), so its pub/sub name, history stream, metadata and snapshot live in
//! one hash slot and one script can touch them all, on a single Redis or on a
//! cluster shard alike. With the default prefix, channel `federation` uses:
//!
//! | what | key |
//! |---|---|
//! | pub/sub channel | `switchboard:{federation}` |
//! | history stream | `switchboard:{federation}:history` |
//! | epoch and top offset (hash `e`, `o`) | `switchboard:{federation}:meta` |
//! | snapshot (hash `o`, `e`, `d`, `v`) | `switchboard:{federation}:snapshot` |

use crate::channel::ChannelName;

/// Why a key prefix is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("the key prefix must not contain '{{' or '}}' (they would break the hash tag)")]
    Braces,
}

/// Builds key names under a prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Result<Self, PrefixError> {
        if prefix.contains(['{', '}']) {
            return Err(PrefixError::Braces);
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The pub/sub channel name.
    pub fn pubsub(&self, channel: &ChannelName) -> String {
        format!("{}{{{}}}", self.prefix, channel)
    }

    pub fn history(&self, channel: &ChannelName) -> String {
        format!("{}{{{}}}:history", self.prefix, channel)
    }

    pub fn meta(&self, channel: &ChannelName) -> String {
        format!("{}{{{}}}:meta", self.prefix, channel)
    }

    pub fn snapshot(&self, channel: &ChannelName) -> String {
        format!("{}{{{}}}:snapshot", self.prefix, channel)
    }

    /// A key outside any channel (sessions, presence, leases): `prefix` + `rest`.
    pub fn global(&self, rest: &str) -> String {
        format!("{}{}", self.prefix, rest)
    }

    /// The channel whose pub/sub name this is, if it is one of ours.
    pub fn channel_of(&self, pubsub_name: &str, max_len: usize) -> Option<ChannelName> {
        let tagged = pubsub_name.strip_prefix(&self.prefix)?;
        let name = tagged.strip_prefix('{')?.strip_suffix('}')?;
        ChannelName::parse(name, max_len).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_one_hash_tag_and_round_trip() {
        let k = Keys::new("switchboard:").unwrap();
        let c = ChannelName::parse("federation", 128).unwrap();
        assert_eq!(k.pubsub(&c), "switchboard:{federation}");
        assert_eq!(k.history(&c), "switchboard:{federation}:history");
        assert_eq!(k.channel_of("switchboard:{federation}", 128), Some(c));
        assert_eq!(k.channel_of("other:{federation}", 128), None);
        assert_eq!(k.channel_of("switchboard:{a b}", 128), None);
        assert_eq!(Keys::new("x{").unwrap_err(), PrefixError::Braces);
    }
}
