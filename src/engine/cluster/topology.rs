//! Which master owns which hash slot, read from `CLUSTER SLOTS`.

use std::fmt;

use redis::Value;

use crate::engine::keys::{SLOTS, slot};

/// A cluster node's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why a `CLUSTER SLOTS` reply is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("unexpected CLUSTER SLOTS reply: {0}")]
    Malformed(&'static str),
    #[error("no slot is assigned to any master (is the cluster created?)")]
    Empty,
}

const UNASSIGNED: u16 = u16::MAX;

/// The masters and the slot table.
#[derive(Clone, PartialEq, Eq)]
pub struct Topology {
    masters: Vec<NodeAddr>,
    /// Slot → index into `masters` (or `UNASSIGNED`).
    owner: Vec<u16>,
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topology")
            .field("masters", &self.masters)
            .field("unassigned", &self.unassigned())
            .finish()
    }
}

impl Topology {
    /// Parses a `CLUSTER SLOTS` reply. A master announced with an empty host
    /// (a node that does not know its own address) gets `fallback_host`.
    pub fn parse(reply: Value, fallback_host: &str) -> Result<Self, TopologyError> {
        let Value::Array(ranges) = reply else {
            return Err(TopologyError::Malformed("not an array"));
        };
        let mut masters: Vec<NodeAddr> = Vec::new();
        let mut owner = vec![UNASSIGNED; SLOTS as usize];
        for range in ranges {
            let Value::Array(fields) = range else {
                return Err(TopologyError::Malformed("a range is not an array"));
            };
            let (Some(start), Some(end), Some(Value::Array(node))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return Err(TopologyError::Malformed(
                    "a range lacks start, end or master",
                ));
            };
            let (start, end) = (int(start)?, int(end)?);
            if start > end || end >= i64::from(SLOTS) || start < 0 {
                return Err(TopologyError::Malformed("slot range out of bounds"));
            }
            let host = match node.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => return Err(TopologyError::Malformed("master host")),
            };
            let host = if host.is_empty() || host == "?" {
                fallback_host.to_string()
            } else {
                host
            };
            let port = node
                .get(1)
                .map(int)
                .transpose()?
                .and_then(|p| u16::try_from(p).ok())
                .ok_or(TopologyError::Malformed("master port"))?;
            let addr = NodeAddr { host, port };
            let index = match masters.iter().position(|m| *m == addr) {
                Some(i) => i,
                None => {
                    masters.push(addr);
                    masters.len() - 1
                }
            };
            for s in start..=end {
                owner[s as usize] = index as u16;
            }
        }
        if masters.is_empty() {
            return Err(TopologyError::Empty);
        }
        Ok(Self { masters, owner })
    }

    /// Every master that owns at least one slot.
    pub fn masters(&self) -> &[NodeAddr] {
        &self.masters
    }

    /// The master owning `slot`, if the slot is assigned.
    pub fn owner(&self, slot: u16) -> Option<&NodeAddr> {
        let index = *self.owner.get(slot as usize)?;
        self.masters.get(index as usize)
    }

    /// The master owning the slot of `key`.
    pub fn owner_of(&self, key: &str) -> Option<&NodeAddr> {
        self.owner(slot(key.as_bytes()))
    }

    /// Slots no master owns (the cluster is not fully covered).
    pub fn unassigned(&self) -> usize {
        self.owner.iter().filter(|o| **o == UNASSIGNED).count()
    }

    /// The smallest tag whose probe channel lands on `master`.
    pub fn probe_tag(&self, master: &NodeAddr, name: impl Fn(u32) -> String) -> Option<u32> {
        let index = self.masters.iter().position(|m| m == master)? as u16;
        // A master owning at least one slot in 16384 is found well within this.
        (0..1_000_000u32).find(|tag| self.owner[slot(name(*tag).as_bytes()) as usize] == index)
    }
}

fn int(v: &Value) -> Result<i64, TopologyError> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(TopologyError::Malformed("expected an integer")),
        _ => Err(TopologyError::Malformed("expected an integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    fn range(start: i64, end: i64, master: Value, replica: Value) -> Value {
        Value::Array(vec![Value::Int(start), Value::Int(end), master, replica])
    }

    #[test]
    fn parses_ranges_and_finds_owners() {
        let reply = Value::Array(vec![
            range(0, 5460, node("127.0.0.1", 7001), node("127.0.0.1", 7004)),
            range(5461, 10922, node("", 7002), node("127.0.0.1", 7005)),
            range(
                10923,
                16383,
                node("127.0.0.1", 7003),
                node("127.0.0.1", 7006),
            ),
        ]);
        let t = Topology::parse(reply, "10.0.0.9").unwrap();
        assert_eq!(t.masters().len(), 3);
        assert_eq!(t.unassigned(), 0);
        assert_eq!(t.owner(0).unwrap().port, 7001);
        assert_eq!(t.owner(5461).unwrap().to_string(), "10.0.0.9:7002");
        assert_eq!(t.owner_of("sb:{a}").unwrap().port, 7003);
        assert_eq!(t.owner_of("sb:{b}").unwrap().port, 7001);
        for m in t.masters() {
            let name = |tag: u32| format!("p:{{sbp{tag}}}:x");
            let tag = t.probe_tag(m, name).unwrap();
            assert_eq!(t.owner_of(&name(tag)), Some(m));
        }
    }

    #[test]
    fn partial_coverage_and_bad_replies() {
        let reply = Value::Array(vec![range(0, 99, node("h", 1), Value::Array(Vec::new()))]);
        let t = Topology::parse(reply, "x").unwrap();
        assert_eq!(t.unassigned(), 16384 - 100);
        assert_eq!(t.owner(100), None);
        assert_eq!(
            Topology::parse(Value::Array(Vec::new()), "x").unwrap_err(),
            TopologyError::Empty
        );
        assert!(Topology::parse(Value::Int(1), "x").is_err());
        let bad = Value::Array(vec![range(5, 20000, node("h", 1), Value::Nil)]);
        assert!(Topology::parse(bad, "x").is_err());
    }
}
