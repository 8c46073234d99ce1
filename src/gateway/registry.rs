//! The replica's live connections: who is connected, to what, since when.
//!
//! Used for the per-user connection limit (reserved before the upgrade), the
//! admin API, and closing every connection of a user. Cross-replica views come
//! from [`super::presence`], which mirrors this registry into Redis.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::protocol::CloseCode;
use crate::ws::conn::{Conn, ConnId};

/// What the admin API shows of a connection.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ConnInfo {
    pub connection_id: String,
    pub replica: String,
    pub user: Option<String>,
    pub route: String,
    pub remote: Option<SocketAddr>,
    /// RFC 3339.
    pub connected_at: String,
    pub channels: BTreeSet<String>,
}

struct Entry {
    conn: Arc<Conn>,
    info: ConnInfo,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<ConnId, Entry>,
    per_user: HashMap<String, usize>,
}

/// See the module documentation.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

/// A user's reserved connection place; released when dropped.
pub struct UserSlot {
    registry: Arc<Registry>,
    user: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if let Some(n) = inner.per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                inner.per_user.remove(&self.user);
            }
        }
    }
}

/// A change to mirror elsewhere (presence).
#[derive(Debug, Clone)]
pub enum Change {
    Upsert(ConnId, ConnInfo),
    Remove(ConnId),
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves a place for one more connection of `user`, if under `max`.
    pub fn reserve(self: &Arc<Self>, user: &str, max: usize) -> Option<UserSlot> {
        let mut inner = self.lock();
        let n = inner.per_user.entry(user.to_string()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            registry: self.clone(),
            user: user.to_string(),
        })
    }

    pub fn insert(&self, conn: Arc<Conn>, info: ConnInfo) -> Change {
        let id = conn.id();
        let change = Change::Upsert(id, info.clone());
        self.lock().conns.insert(id, Entry { conn, info });
        change
    }

    pub fn remove(&self, id: ConnId) -> Change {
        self.lock().conns.remove(&id);
        Change::Remove(id)
    }

    /// Records a subscription change of a connection.
    pub fn set_channel(&self, id: ConnId, channel: &str, subscribed: bool) -> Option<Change> {
        let mut inner = self.lock();
        let entry = inner.conns.get_mut(&id)?;
        if subscribed {
            entry.info.channels.insert(channel.to_string());
        } else {
            entry.info.channels.remove(channel);
        }
        Some(Change::Upsert(id, entry.info.clone()))
    }

    /// Every connection, or those of one user.
    pub fn list(&self, user: Option<&str>) -> Vec<ConnInfo> {
        self.lock()
            .conns
            .values()
            .filter(|e| user.is_none() || e.info.user.as_deref() == user)
            .map(|e| e.info.clone())
            .collect()
    }

    /// Every entry, for a full resynchronization of presence.
    pub fn all(&self) -> Vec<(ConnId, ConnInfo)> {
        self.lock()
            .conns
            .iter()
            .map(|(id, e)| (*id, e.info.clone()))
            .collect()
    }

    /// Closes every connection of `user` with `code`; returns how many.
    pub fn close_user(&self, user: &str, code: CloseCode) -> usize {
        let targets: Vec<Arc<Conn>> = self
            .lock()
            .conns
            .values()
            .filter(|e| e.info.user.as_deref() == Some(user))
            .map(|e| e.conn.clone())
            .collect();
        targets.iter().filter(|c| c.close(code)).count()
    }
}
