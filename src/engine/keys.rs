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
//! | a publish's idempotency record (`<offset> <epoch>`) | `switchboard:{federation}:idem:<key>` |

use super::IdempotencyKey;
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

    /// The record of a publish made with idempotency key `key`.
    pub fn idempotency(&self, channel: &ChannelName, key: &IdempotencyKey) -> String {
        format!("{}{{{}}}:idem:{}", self.prefix, channel, key.as_str())
    }

    /// A key outside any channel (sessions, presence, leases): `prefix` + `rest`.
    pub fn global(&self, rest: &str) -> String {
        format!("{}{}", self.prefix, rest)
    }

    /// The control channel every replica listens to (admin "disconnect user").
    pub fn control(&self) -> String {
        self.global("control")
    }

    /// A replica's probe channel on a single Redis.
    pub fn probe(&self, replica: &str) -> String {
        self.global(&format!("probe:{replica}"))
    }

    /// A replica's probe channel on a cluster shard: the hash tag `{sbp<tag>}`
    /// picks the slot (and so the shard) it lands on.
    pub fn shard_probe(&self, tag: u32, replica: &str) -> String {
        format!("{}probe:{{sbp{tag}}}:{replica}", self.prefix)
    }

    /// The channel whose pub/sub name this is, if it is one of ours.
    pub fn channel_of(&self, pubsub_name: &str, max_len: usize) -> Option<ChannelName> {
        let tagged = pubsub_name.strip_prefix(&self.prefix)?;
        let name = tagged.strip_prefix('{')?.strip_suffix('}')?;
        ChannelName::parse(name, max_len).ok()
    }
}

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The Redis Cluster hash slot of a key (or shard channel): CRC16 (XMODEM) of
/// its hash tag — the part between the first `{` and the next `}`, if not
/// empty — or of the whole key, modulo 16384.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
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
        assert_eq!(k.channel_of(&k.control(), 128), None);
        assert_eq!(k.channel_of(&k.shard_probe(3, "gw"), 128), None);
    }

    #[test]
    fn slots_follow_the_hash_tag() {
        // The reference value of the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        // Values `CLUSTER KEYSLOT` gives on Redis 7.
        assert_eq!(slot(b"sb:{a}"), 15495);
        assert_eq!(slot(b"sb:{b}"), 3300);
        assert_eq!(slot(b"foo"), 12182);
        let k = Keys::new("switchboard:").unwrap();
        let c = ChannelName::parse("federation", 128).unwrap();
        let s = slot(k.pubsub(&c).as_bytes());
        assert_eq!(slot(k.meta(&c).as_bytes()), s);
        assert_eq!(slot(k.history(&c).as_bytes()), s);
        assert_eq!(slot(k.snapshot(&c).as_bytes()), s);
        // A producer's key may hold braces: the first `{…}` still decides.
        let key = super::IdempotencyKey::parse("{x}").unwrap();
        assert_eq!(slot(k.idempotency(&c, &key).as_bytes()), s);
        assert_eq!(
            slot(b"{}x"),
            slot(b"{}x"),
            "an empty tag hashes the whole key"
        );
        assert_ne!(slot(b"a{}"), slot(b"b{}"));
        assert_eq!(slot(k.shard_probe(7, "x").as_bytes()), slot(b"sbp7"));
    }
}
