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

    /// Three masters on 7001..7003 owning the usual thirds.
    fn thirds() -> Value {
        Value::Array(vec![
            range(0, 5460, node("127.0.0.1", 7001), node("127.0.0.1", 7004)),
            range(
                5461,
                10922,
                node("127.0.0.1", 7002),
                node("127.0.0.1", 7005),
            ),
            range(
                10923,
                16383,
                node("127.0.0.1", 7003),
                node("127.0.0.1", 7006),
            ),
        ])
    }

    fn port_of(t: &Topology, slot: u16) -> Option<u16> {
        t.owner(slot).map(|m| m.port)
    }

    #[test]
    fn every_slot_maps_to_the_master_of_its_range() {
        let t = Topology::parse(thirds(), "x").unwrap();
        let mut failures = Vec::new();
        for s in 0..SLOTS {
            let expected = match s {
                0..=5460 => 7001,
                5461..=10922 => 7002,
                _ => 7003,
            };
            if port_of(&t, s) != Some(expected) {
                failures.push(format!(
                    "slot {s}: {:?}, expected {expected}",
                    port_of(&t, s)
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} slots wrong: {failures:?}",
            failures.len()
        );
        assert_eq!(t.owner(SLOTS), None, "past the last slot");
        // Keys whose slots Redis documents (CLUSTER KEYSLOT).
        let keys = [
            ("foo", 12182, 7003),
            ("bar", 5061, 7001),
            ("hello", 866, 7001),
        ];
        for (key, slot_of_key, port) in keys {
            assert_eq!(slot(key.as_bytes()), slot_of_key, "{key}");
            assert_eq!(t.owner_of(key).map(|m| m.port), Some(port), "{key}");
        }
        // Only the hash tag counts.
        assert_eq!(t.owner_of("{foo}:anything"), t.owner_of("foo"));
    }

    #[test]
    fn moved_slots_change_owners_and_nothing_else() {
        let before = Topology::parse(thirds(), "x").unwrap();
        // Slots 0..=99 migrated from 7001 to 7003: 7003 now owns two ranges.
        let after = Topology::parse(
            Value::Array(vec![
                range(0, 99, node("127.0.0.1", 7003), Value::Nil),
                range(100, 5460, node("127.0.0.1", 7001), Value::Nil),
                range(5461, 10922, node("127.0.0.1", 7002), Value::Nil),
                range(10923, 16383, node("127.0.0.1", 7003), Value::Nil),
            ]),
            "x",
        )
        .unwrap();
        assert_ne!(before, after, "a changed slot map is seen as changed");
        assert_eq!(
            after.masters().len(),
            3,
            "a master with two ranges is listed once"
        );
        let moved: Vec<u16> = (0..SLOTS)
            .filter(|s| before.owner(*s) != after.owner(*s))
            .collect();
        assert_eq!(moved, (0..=99).collect::<Vec<u16>>());
        assert!(moved.iter().all(|s| port_of(&after, *s) == Some(7003)));
        assert_eq!(
            Topology::parse(thirds(), "x").unwrap(),
            before,
            "the same slot map reads the same"
        );

        // 7001 gives away every slot (failed over to its replica 7004).
        let failover = Topology::parse(
            Value::Array(vec![
                range(0, 5460, node("127.0.0.1", 7004), Value::Nil),
                range(5461, 10922, node("127.0.0.1", 7002), Value::Nil),
                range(10923, 16383, node("127.0.0.1", 7003), Value::Nil),
            ]),
            "x",
        )
        .unwrap();
        let mut ports: Vec<u16> = failover.masters().iter().map(|m| m.port).collect();
        ports.sort_unstable();
        assert_eq!(ports, vec![7002, 7003, 7004], "the old master is gone");
        assert_eq!(port_of(&failover, 0), Some(7004));
    }

    #[test]
    fn addresses_as_redis_may_send_them() {
        let reply = Value::Array(vec![
            // Start, end and port as bulk strings; the host as a simple string.
            Value::Array(vec![
                Value::BulkString(b"0".to_vec()),
                Value::BulkString(b"8191".to_vec()),
                Value::Array(vec![
                    Value::SimpleString("::1".into()),
                    Value::BulkString(b"7001".to_vec()),
                ]),
            ]),
            // "?": the node does not know its address.
            range(8192, 16383, node("?", 7002), Value::Nil),
        ]);
        let t = Topology::parse(reply, "10.1.2.3").unwrap();
        assert_eq!(t.owner(0).unwrap().to_string(), "[::1]:7001");
        assert_eq!(t.owner(16383).unwrap().to_string(), "10.1.2.3:7002");
        assert_eq!(t.unassigned(), 0);
    }

    #[test]
    fn malformed_replies_are_errors() {
        let good = node("h", 1);
        let cases: Vec<(&str, Value)> = vec![
            ("not an array", Value::SimpleString("OK".into())),
            (
                "a range that is not an array",
                Value::Array(vec![Value::Int(1)]),
            ),
            (
                "a range without its master",
                Value::Array(vec![Value::Array(vec![Value::Int(0), Value::Int(1)])]),
            ),
            (
                "start after end",
                Value::Array(vec![range(10, 5, good.clone(), Value::Nil)]),
            ),
            (
                "negative start",
                Value::Array(vec![range(-1, 5, good.clone(), Value::Nil)]),
            ),
            (
                "end past the last slot",
                Value::Array(vec![range(0, 16384, good.clone(), Value::Nil)]),
            ),
            (
                "start not a number",
                Value::Array(vec![Value::Array(vec![
                    Value::BulkString(b"zero".to_vec()),
                    Value::Int(5),
                    good.clone(),
                ])]),
            ),
            (
                "master without a port",
                Value::Array(vec![range(
                    0,
                    5,
                    Value::Array(vec![Value::BulkString(b"h".to_vec())]),
                    Value::Nil,
                )]),
            ),
            (
                "port out of range",
                Value::Array(vec![range(0, 5, node("h", 70_000), Value::Nil)]),
            ),
            (
                "host not a string",
                Value::Array(vec![range(
                    0,
                    5,
                    Value::Array(vec![Value::Int(1), Value::Int(7001)]),
                    Value::Nil,
                )]),
            ),
        ];
        let failures: Vec<String> = cases
            .into_iter()
            .filter_map(|(name, reply)| match Topology::parse(reply, "x") {
                Err(TopologyError::Malformed(_)) => None,
                other => Some(format!("{name}: {other:?}")),
            })
            .collect();
        assert!(
            failures.is_empty(),
            "accepted or wrong error:\n{}",
            failures.join("\n")
        );
    }
}
