//! Who a connection is and what it may do.
//!
//! An [`Identity`] is derived once per connection (or REST call) from its JWT
//! ([`verify`]), and refreshed when the client sends a new token. Rights come
//! from two claims (seed 003):
//!
//! * `permissions`: `websocket:connect` (open a WebSocket), `websocket:subscribe`
//!   (subscribe at all), `websocket:publish` (publish through the REST API),
//!   `websocket:admin` (everything, including the admin API), and
//!   `agent:{id}:monitor` (subscribe to the agent's channels `agents:{id}` and
//!   `agents:{id}:…`);
//! * `channels`: glob patterns (`*` any run of characters, `?` one) naming the
//!   channels `websocket:subscribe` and `websocket:publish` apply to. No
//!   `channels` claim means no channels: access is granted, never assumed.
//!
//! A `roles` claim (the ESCAI seed's tokens carry one) adds the permissions the
//! gateway's role map ([`RoleMap`], `--jwt-role NAME=PERM,…`) gives each named
//! role; a role the map does not name grants nothing.
//!
//! With authentication disabled (`--no-auth`, `standalone`) every caller is an
//! anonymous identity with every right. With authentication on, a WebSocket
//! client without a token may still read the channels `--anonymous-subscribe`
//! names ([`AnonymousReads`]): read-only, never the `sys` namespace, never the
//! REST API; a token that is given is always verified, never downgraded.
//!
//! The `sys` namespace ([`SYSTEM_NAMESPACE`]) belongs to the gateways: its
//! channels (`sys:stats`, the operations feed) need `websocket:admin` to
//! subscribe whatever the `channels` claim says, and nobody publishes on them
//! through the API — only the replicas themselves, through the engine.

pub mod client_ip;
pub mod mint;
pub mod origin;
pub mod verify;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use wildmatch::WildMatch;

use crate::channel::ChannelName;

pub use verify::{AuthError, JwtConfig, Verifier};

/// Namespace of the gateways' own channels (admin-only, not publishable).
pub const SYSTEM_NAMESPACE: &str = "sys";

/// Is `channel` one of the gateways' own channels?
pub fn is_system_channel(channel: &ChannelName) -> bool {
    channel.namespace() == Some(SYSTEM_NAMESPACE)
}

/// The claims switchboard reads from a token. `sub` and `exp` are required,
/// but optional here so that a token without them is refused by validation
/// with a `missing_claim` error naming the claim, not as malformed.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default)]
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

/// Role name → the permissions it grants (`--jwt-role admin=websocket:admin`).
pub type RoleMap = HashMap<String, Vec<String>>;

/// Why a `--jwt-role` value is not `NAME=PERM,PERM…`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleSpecError {
    #[error("{0:?}: expected NAME=PERMISSION,PERMISSION…")]
    NoEquals(String),
    #[error("{0:?}: the role name is empty")]
    EmptyName(String),
    #[error("{0:?}: a role must grant at least one permission")]
    NoPermission(String),
}

/// Parses one `--jwt-role` value: `NAME=PERM,PERM…`.
pub fn parse_role(spec: &str) -> Result<(String, Vec<String>), RoleSpecError> {
    let (name, perms) = spec
        .split_once('=')
        .ok_or_else(|| RoleSpecError::NoEquals(spec.to_owned()))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(RoleSpecError::EmptyName(spec.to_owned()));
    }
    let perms: Vec<String> = perms
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    if perms.is_empty() {
        return Err(RoleSpecError::NoPermission(spec.to_owned()));
    }
    Ok((name.to_owned(), perms))
}

/// A caller and its rights.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's `sub` (every verified token has one); `None` only when
    /// authentication is disabled.
    pub user: Option<String>,
    /// The token's `exp` (Unix seconds); `None` when authentication is disabled.
    pub expires_at: Option<u64>,
    grants: Grants,
}

#[derive(Debug, Clone)]
enum Grants {
    Everything,
    Token(TokenGrants),
    Anonymous(Arc<AnonymousReads>),
}

/// The channels a client without a token may read (`--anonymous-subscribe`).
#[derive(Debug, Clone, Default)]
pub struct AnonymousReads {
    globs: Vec<WildMatch>,
    spec: Vec<String>,
}

impl AnonymousReads {
    /// From glob patterns (`federation`, `reasoning:*`); `None` when there are none.
    pub fn new(globs: &[String]) -> Option<Self> {
        let spec: Vec<String> = globs
            .iter()
            .map(|g| g.trim().to_owned())
            .filter(|g| !g.is_empty())
            .collect();
        (!spec.is_empty()).then(|| Self {
            globs: spec.iter().map(|g| WildMatch::new(g)).collect(),
            spec,
        })
    }

    /// Whether a client without a token may read `channel`.
    pub fn allows(&self, channel: &ChannelName) -> bool {
        !is_system_channel(channel) && self.globs.iter().any(|g| g.matches(channel.as_str()))
    }

    /// The patterns, as configured.
    pub fn patterns(&self) -> &[String] {
        &self.spec
    }
}

/// How a caller was admitted, for metrics and the connection list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// A verified token.
    Token,
    /// No token, on the channels `--anonymous-subscribe` allows.
    Anonymous,
    /// Authentication is off (`--no-auth`, `standalone` without a key).
    Open,
}

impl AuthKind {
    pub const ALL: [AuthKind; 3] = [Self::Token, Self::Anonymous, Self::Open];

    /// The `auth` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Anonymous => "anonymous",
            Self::Open => "none",
        }
    }
}

#[derive(Debug, Clone, Default)]
struct TokenGrants {
    connect: bool,
    subscribe: bool,
    publish: bool,
    admin: bool,
    agents: HashSet<String>,
    channels: Vec<WildMatch>,
}

impl Identity {
    /// The identity of every caller when authentication is disabled.
    pub fn anonymous() -> Self {
        Self {
            user: None,
            expires_at: None,
            grants: Grants::Everything,
        }
    }

    /// A client without a token that may read what `reads` allows.
    pub fn anonymous_reader(reads: Arc<AnonymousReads>) -> Self {
        Self {
            user: None,
            expires_at: None,
            grants: Grants::Anonymous(reads),
        }
    }

    /// How the caller was admitted.
    pub fn auth_kind(&self) -> AuthKind {
        match self.grants {
            Grants::Everything => AuthKind::Open,
            Grants::Token(_) => AuthKind::Token,
            Grants::Anonymous(_) => AuthKind::Anonymous,
        }
    }

    /// The identity a verified token describes (without a role map).
    pub fn from_claims(claims: &Claims) -> Self {
        Self::from_claims_with_roles(claims, &RoleMap::new())
    }

    /// The identity a verified token describes, its `roles` mapped through `roles`.
    pub fn from_claims_with_roles(claims: &Claims, roles: &RoleMap) -> Self {
        let mut grants = TokenGrants::default();
        let from_roles = claims.roles.iter().filter_map(|r| roles.get(r)).flatten();
        for permission in claims.permissions.iter().chain(from_roles) {
            match permission.as_str() {
                "websocket:connect" => grants.connect = true,
                "websocket:subscribe" => grants.subscribe = true,
                "websocket:publish" => grants.publish = true,
                "websocket:admin" => grants.admin = true,
                other => {
                    if let Some(agent) = other
                        .strip_prefix("agent:")
                        .and_then(|rest| rest.strip_suffix(":monitor"))
                        .filter(|a| !a.is_empty())
                    {
                        grants.agents.insert(agent.to_string());
                    }
                }
            }
        }
        grants.channels = claims.channels.iter().map(|g| WildMatch::new(g)).collect();
        Self {
            user: claims.sub.clone(),
            expires_at: Some(claims.exp),
            grants: Grants::Token(grants),
        }
    }

    /// May this caller open a WebSocket?
    pub fn can_connect(&self) -> bool {
        match &self.grants {
            Grants::Everything | Grants::Anonymous(_) => true,
            Grants::Token(g) => g.connect || g.admin,
        }
    }

    /// May this caller subscribe to (and refresh) `channel`? System channels
    /// need the admin permission.
    pub fn can_subscribe(&self, channel: &ChannelName) -> bool {
        if is_system_channel(channel) {
            return self.is_admin();
        }
        match &self.grants {
            Grants::Everything => true,
            Grants::Token(g) => {
                g.admin
                    || (g.subscribe && (g.matches_channel(channel) || g.monitors_agent_of(channel)))
            }
            Grants::Anonymous(reads) => reads.allows(channel),
        }
    }

    /// May this caller publish on `channel`? Never on a system channel.
    pub fn can_publish(&self, channel: &ChannelName) -> bool {
        if is_system_channel(channel) {
            return false;
        }
        match &self.grants {
            Grants::Everything => true,
            Grants::Token(g) => g.admin || (g.publish && g.matches_channel(channel)),
            Grants::Anonymous(_) => false,
        }
    }

    /// May this caller follow agent `agent` (the ESCAI route)? It needs
    /// `websocket:subscribe` and `agent:{agent}:monitor`, or `websocket:admin`.
    pub fn can_monitor_agent(&self, agent: &str) -> bool {
        match &self.grants {
            Grants::Everything => true,
            Grants::Token(g) => g.admin || (g.subscribe && g.agents.contains(agent)),
            Grants::Anonymous(reads) => ChannelName::parse(&format!("agents:{agent}"), usize::MAX)
                .is_ok_and(|c| reads.allows(&c)),
        }
    }

    /// May this caller subscribe at all (`websocket:subscribe` or admin)?
    pub fn can_subscribe_any(&self) -> bool {
        match &self.grants {
            Grants::Everything | Grants::Anonymous(_) => true,
            Grants::Token(g) => g.admin || g.subscribe,
        }
    }

    /// The user as a key for per-user records: the `sub`, or empty without
    /// authentication.
    pub fn user_key(&self) -> &str {
        self.user.as_deref().unwrap_or("")
    }

    /// May this caller use the admin API and admin channels?
    pub fn is_admin(&self) -> bool {
        match &self.grants {
            Grants::Everything => true,
            Grants::Token(g) => g.admin,
            Grants::Anonymous(_) => false,
        }
    }
}

impl TokenGrants {
    fn matches_channel(&self, channel: &ChannelName) -> bool {
        self.channels.iter().any(|g| g.matches(channel.as_str()))
    }

    fn monitors_agent_of(&self, channel: &ChannelName) -> bool {
        let Some(rest) = channel.as_str().strip_prefix("agents:") else {
            return false;
        };
        let agent = rest.split(':').next().unwrap_or_default();
        self.agents.contains(agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s, 128).unwrap()
    }

    fn identity(permissions: &[&str], channels: &[&str]) -> Identity {
        Identity::from_claims(&Claims {
            sub: Some("u".into()),
            exp: 1,
            permissions: permissions.iter().map(|s| s.to_string()).collect(),
            channels: channels.iter().map(|s| s.to_string()).collect(),
            ..Claims::default()
        })
    }

    #[test]
    fn subscribe_needs_the_permission_and_a_matching_glob() {
        let i = identity(
            &["websocket:connect", "websocket:subscribe"],
            &["dash:*", "federation"],
        );
        assert!(i.can_connect());
        assert!(i.can_subscribe(&ch("dash:a")));
        assert!(i.can_subscribe(&ch("federation")));
        assert!(!i.can_subscribe(&ch("memory")));
        assert!(!i.can_publish(&ch("dash:a")));
        assert!(!i.is_admin());
        let no_perm = identity(&["websocket:connect"], &["*"]);
        assert!(!no_perm.can_subscribe(&ch("anything")));
        let no_globs = identity(&["websocket:connect", "websocket:subscribe"], &[]);
        assert!(
            !no_globs.can_subscribe(&ch("federation")),
            "no channels claim grants nothing"
        );
    }

    #[test]
    fn agent_monitor_grants_that_agents_channels_only() {
        let i = identity(&["websocket:subscribe", "agent:agent_1:monitor"], &[]);
        assert!(i.can_subscribe(&ch("agents:agent_1")));
        assert!(i.can_subscribe(&ch("agents:agent_1:epistemic")));
        assert!(!i.can_subscribe(&ch("agents:agent_10")));
        assert!(!i.can_subscribe(&ch("agents:agent_2")));
        assert!(!i.can_connect());
    }

    #[test]
    fn admin_may_do_everything_and_anonymous_too() {
        let a = identity(&["websocket:admin"], &[]);
        assert!(
            a.can_connect() && a.is_admin() && a.can_publish(&ch("x")) && a.can_subscribe(&ch("y"))
        );
        let anon = Identity::anonymous();
        assert!(anon.can_connect() && anon.is_admin());
    }

    #[test]
    fn anonymous_readers_read_the_allowed_channels_and_nothing_else() {
        let reads = AnonymousReads::new(&["federation".into(), "reasoning:*".into(), " ".into()])
            .map(Arc::new)
            .unwrap();
        let anon = Identity::anonymous_reader(reads.clone());
        assert!(anon.can_connect() && anon.can_subscribe_any());
        assert!(anon.can_subscribe(&ch("federation")) && anon.can_subscribe(&ch("reasoning:a1")));
        assert!(!anon.can_subscribe(&ch("memory")) && !anon.can_publish(&ch("federation")));
        assert!(!anon.is_admin() && !anon.can_monitor_agent("a1"));
        assert_eq!(anon.auth_kind(), AuthKind::Anonymous);
        assert_eq!(reads.patterns(), ["federation", "reasoning:*"]);
        let everything =
            Identity::anonymous_reader(Arc::new(AnonymousReads::new(&["*".into()]).unwrap()));
        assert!(
            !everything.can_subscribe(&ch("sys:stats")),
            "never the sys namespace"
        );
        assert!(AnonymousReads::new(&[]).is_none());
    }

    #[test]
    fn roles_map_to_permissions_through_the_configured_map() {
        let mut roles = RoleMap::new();
        let (name, perms) = parse_role("viewer=websocket:connect, websocket:subscribe").unwrap();
        roles.insert(name, perms);
        roles.insert("admin".into(), vec!["websocket:admin".into()]);
        let claims = |r: &[&str], p: &[&str]| Claims {
            sub: Some("u".into()),
            exp: 1,
            roles: r.iter().map(|s| s.to_string()).collect(),
            permissions: p.iter().map(|s| s.to_string()).collect(),
            ..Claims::default()
        };
        let viewer =
            Identity::from_claims_with_roles(&claims(&["viewer"], &["agent:a1:monitor"]), &roles);
        assert!(viewer.can_connect() && viewer.can_monitor_agent("a1"));
        assert!(!viewer.can_monitor_agent("a2") && !viewer.is_admin());
        let admin = Identity::from_claims_with_roles(&claims(&["admin"], &[]), &roles);
        assert!(admin.is_admin() && admin.can_monitor_agent("any"));
        let unknown = Identity::from_claims_with_roles(&claims(&["root"], &[]), &roles);
        assert!(!unknown.can_connect(), "an unmapped role grants nothing");
        assert!(parse_role("x").is_err() && parse_role("=a").is_err() && parse_role("x=").is_err());
    }

    #[test]
    fn system_channels_are_admin_only_and_never_published() {
        let everyone = identity(&["websocket:subscribe", "websocket:publish"], &["*"]);
        assert!(everyone.can_subscribe(&ch("federation")));
        assert!(!everyone.can_subscribe(&ch("sys:stats")));
        assert!(!everyone.can_publish(&ch("sys:stats")));
        let admin = identity(&["websocket:admin"], &[]);
        assert!(admin.can_subscribe(&ch("sys:stats")));
        assert!(!admin.can_publish(&ch("sys:stats")));
        let anon = Identity::anonymous();
        assert!(anon.can_subscribe(&ch("sys:stats")) && !anon.can_publish(&ch("sys:stats")));
        assert!(
            everyone.can_subscribe(&ch("system:x")),
            "only the sys namespace"
        );
    }
}
