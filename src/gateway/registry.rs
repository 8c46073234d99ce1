//! The replica's live connections: who is connected, to what, since when.
//!
//! Used for the per-user connection limit (reserved before the upgrade), the
//! admin API, and closing every connection of a user. Cross-replica views come
//! from [`super::presence`], which mirrors this registry into Redis.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;

use crate::channel::ChannelName;
use crate::protocol::CloseCode;
use crate::ws::conn::{Conn, ConnId};

/// What the admin API shows of a connection, and what presence stores in
/// Redis for it (JSON). Built when asked for; the registry keeps less.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ConnInfo {
    pub connection_id: String,
    pub replica: String,
    pub user: Option<String>,
    pub route: String,
    /// How the connection was admitted: `token`, `anonymous` (no token, on
    /// `--anonymous-subscribe` channels) or `none` (authentication off).
    #[serde(default)]
    pub auth: String,
    pub remote: Option<SocketAddr>,
    /// RFC 3339.
    pub connected_at: String,
    pub channels: BTreeSet<String>,
    /// When the client last sent a frame (RFC 3339), as of the listing on this
    /// replica or of the last presence write on another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// What the connection's dialect adds (ESCAI: its session id and
    /// subscriptions; AI Council: heartbeats and reconnections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// A connection as it arrives in the registry.
pub struct NewConn {
    pub user: Option<String>,
    pub route: &'static str,
    pub remote: Option<SocketAddr>,
    /// The token has `websocket:admin` (kept when a request's owner is claimed).
    pub admin: bool,
    /// `token`, `anonymous` or `none` (authentication off).
    pub auth: &'static str,
}

/// A connection as the registry holds it: an idle gateway holds one per client,
/// so nothing here is a copy (the channel names share the hub's allocation, the
/// replica and connection id are put together when asked for).
struct Entry {
    conn: Arc<Conn>,
    user: Option<Box<str>>,
    route: &'static str,
    remote: Option<SocketAddr>,
    connected_at: SystemTime,
    /// Few per connection (`--max-channels-per-connection`, 64 by default):
    /// a vector, not a tree.
    channels: Vec<ChannelName>,
    admin: bool,
    auth: &'static str,
    /// Only for dialects that have one (boxed: most connections have none).
    detail: Option<Box<serde_json::Value>>,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<ConnId, Entry>,
    per_user: HashMap<String, usize>,
    /// Connections without a token, per client address.
    per_address: HashMap<std::net::IpAddr, usize>,
}

/// See the module documentation.
pub struct Registry {
    replica: String,
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

/// A client address's reserved place for a connection without a token;
/// released when dropped.
pub struct AddressSlot {
    registry: Arc<Registry>,
    address: std::net::IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if let Some(n) = inner.per_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                inner.per_address.remove(&self.address);
            }
        }
    }
}

/// A connection whose entry changed, to mirror elsewhere (presence): the
/// mirror reads the entry as it is when it writes, so changes in between
/// coalesce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change(pub ConnId);

impl Registry {
    /// An empty registry of the replica `replica`.
    pub fn new(replica: &str) -> Self {
        Self {
            replica: replica.to_string(),
            inner: Mutex::default(),
        }
    }

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

    /// Reserves a place for one more connection without a token from
    /// `address`, if under `max`.
    pub fn reserve_address(
        self: &Arc<Self>,
        address: std::net::IpAddr,
        max: usize,
    ) -> Option<AddressSlot> {
        let mut inner = self.lock();
        let n = inner.per_address.entry(address).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            registry: self.clone(),
            address,
        })
    }

    pub fn insert(&self, conn: Arc<Conn>, new: NewConn) -> Change {
        let id = conn.id();
        let entry = Entry {
            conn,
            user: new.user.map(String::into_boxed_str),
            route: new.route,
            remote: new.remote,
            connected_at: SystemTime::now(),
            channels: Vec::new(),
            admin: new.admin,
            auth: new.auth,
            detail: None,
        };
        self.lock().conns.insert(id, entry);
        Change(id)
    }

    pub fn remove(&self, id: ConnId) -> Change {
        self.lock().conns.remove(&id);
        Change(id)
    }

    /// Records a subscription change of a connection.
    pub fn set_channel(
        &self,
        id: ConnId,
        channel: &ChannelName,
        subscribed: bool,
    ) -> Option<Change> {
        let mut inner = self.lock();
        let entry = inner.conns.get_mut(&id)?;
        let at = entry.channels.iter().position(|c| c == channel);
        match (subscribed, at) {
            (true, None) => entry.channels.push(channel.clone()),
            (false, Some(i)) => {
                entry.channels.swap_remove(i);
            }
            _ => return None,
        }
        Some(Change(id))
    }

    /// Replaces what the connection's dialect shows of it.
    pub fn set_detail(&self, id: ConnId, detail: serde_json::Value) -> Option<Change> {
        let mut inner = self.lock();
        let entry = inner.conns.get_mut(&id)?;
        entry.detail = Some(Box::new(detail));
        Some(Change(id))
    }

    /// Closes the connections subscribed to `channel` whose user is not
    /// `owner` (administrators excepted) with `code`; returns how many.
    pub fn close_non_owners(&self, channel: &str, owner: &str, code: CloseCode) -> usize {
        let targets: Vec<Arc<Conn>> = self
            .lock()
            .conns
            .values()
            .filter(|e| !e.admin && e.user.as_deref() != Some(owner))
            .filter(|e| e.channels.iter().any(|c| c.as_str() == channel))
            .map(|e| e.conn.clone())
            .collect();
        targets.iter().filter(|c| c.close(code)).count()
    }

    fn info(&self, id: ConnId, entry: &Entry) -> ConnInfo {
        let idle_ms = crate::time::mono_millis().saturating_sub(entry.conn.last_seen());
        let last_seen = SystemTime::now()
            .checked_sub(std::time::Duration::from_millis(idle_ms))
            .map(|t| humantime::format_rfc3339_millis(t).to_string());
        ConnInfo {
            connection_id: format!("{}-{id}", self.replica),
            replica: self.replica.clone(),
            user: entry.user.as_deref().map(str::to_owned),
            route: entry.route.to_owned(),
            auth: entry.auth.to_owned(),
            remote: entry.remote,
            connected_at: humantime::format_rfc3339_millis(entry.connected_at).to_string(),
            channels: entry
                .channels
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect(),
            last_seen,
            detail: entry.detail.as_deref().cloned(),
        }
    }

    /// The connection `id` as it is now; `None` once it is gone.
    pub fn get(&self, id: ConnId) -> Option<ConnInfo> {
        let inner = self.lock();
        inner.conns.get(&id).map(|e| self.info(id, e))
    }

    /// Every connection, or those of one user.
    pub fn list(&self, user: Option<&str>) -> Vec<ConnInfo> {
        self.lock()
            .conns
            .iter()
            .filter(|(_, e)| user.is_none() || e.user.as_deref() == user)
            .map(|(id, e)| self.info(*id, e))
            .collect()
    }

    /// Every connection's id, for a full resynchronization of presence.
    pub fn ids(&self) -> Vec<ConnId> {
        self.lock().conns.keys().copied().collect()
    }

    /// Closes every connection of `user` with `code`; returns how many.
    pub fn close_user(&self, user: &str, code: CloseCode) -> usize {
        let targets: Vec<Arc<Conn>> = self
            .lock()
            .conns
            .values()
            .filter(|e| e.user.as_deref() == Some(user))
            .map(|e| e.conn.clone())
            .collect();
        targets.iter().filter(|c| c.close(code)).count()
    }
}
