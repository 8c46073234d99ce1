//! Who a connection is and what it may do.
//!
//! [`Identity`] is derived once per connection (or REST call) from its token.
//! With authentication disabled (`--no-auth`, or `standalone`) every caller is
//! an anonymous identity with every permission.

use crate::channel::ChannelName;

/// A caller and its rights.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's `sub`; `None` when authentication is disabled.
    pub user: Option<String>,
    all: bool,
}

impl Identity {
    /// The identity of every caller when authentication is disabled.
    pub fn anonymous() -> Self {
        Self {
            user: None,
            all: true,
        }
    }

    /// May this caller subscribe to (and refresh) `channel`?
    pub fn can_subscribe(&self, _channel: &ChannelName) -> bool {
        self.all
    }

    /// May this caller publish on `channel`?
    pub fn can_publish(&self, _channel: &ChannelName) -> bool {
        self.all
    }

    /// May this caller use the admin API?
    pub fn is_admin(&self) -> bool {
        self.all
    }
}
