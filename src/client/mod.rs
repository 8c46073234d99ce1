//! The command-line client of a gateway: `switchboard tail` follows channels
//! over the native protocol ([`tail`]), `switchboard publish` publishes
//! through the HTTP API ([`publish`]). Both take gateway base URLs
//! ([`Target`]) and a token, and fail with one line that says what to do.
//! `switchboard health` ([`health`]) asks a process's readiness. Each command
//! is configured by a plain type of its module ([`tail::TailConfig`],
//! [`publish::PublishConfig`], [`health::HealthConfig`]), which `cli.rs` builds
//! from the flags.

pub mod health;
pub mod publish;
pub mod tail;

use std::fmt;
use std::time::Duration;

use http::Uri;

/// Where the command-line client finds a gateway, and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Gateways' base URLs, `http://host:port[/prefix]`, in the order tried.
    pub urls: Vec<String>,
    /// JWT sent as `Authorization: Bearer` (none or empty: no header).
    pub token: Option<String>,
    /// Limit on connecting to a gateway (TCP and handshake).
    pub connect_timeout: Duration,
}

/// Why a client command failed. Each message is one line meant for a person.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("{url}: the gateway refused {what}: {message} ({code}){hint}")]
    Refused {
        url: String,
        what: &'static str,
        code: String,
        message: String,
        hint: &'static str,
    },
    #[error("could not reach any gateway ({reasons})")]
    Unreachable { reasons: String },
    #[error("{channel}: {message} ({code})")]
    Channel {
        channel: String,
        code: String,
        message: String,
    },
    #[error("{url}: {message}")]
    Closed { url: String, message: String },
    #[error("gave up after {seconds} s without a connection (--retry-for); last error: {last}")]
    GaveUp { seconds: u64, last: String },
    #[error("{0}")]
    Io(String),
}

impl ClientError {
    /// A refusal whose HTTP status or error code says the token is the problem.
    fn refused(url: &Target, what: &'static str, status: u16, code: &str, message: &str) -> Self {
        let hint = match status {
            401 => " — pass a valid token with --token or SWITCHBOARD_TOKEN",
            403 => " — the token lacks the permission or channel",
            _ => "",
        };
        Self::Refused {
            url: url.to_string(),
            what,
            code: if code.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("{code}, HTTP {status}")
            },
            message: message.to_string(),
            hint,
        }
    }
}

/// A gateway's base URL: `http://host:port[/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    authority: String,
    prefix: String,
}

impl Target {
    /// Parses a base URL; the error says what a good one looks like.
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = |why: &str| {
            ClientError::Usage(format!(
                "bad gateway URL {url:?}: {why} (expected http://host:port, e.g. http://127.0.0.1:8080)"
            ))
        };
        let uri: Uri = url.trim().parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported by this client (it has no TLS); use the gateway's plain http address, e.g. through kubectl port-forward",
                ));
            }
            Some(other) => return Err(bad(&format!("scheme {other:?} is not http"))),
            None => return Err(bad("no scheme")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.host().is_empty() {
            return Err(bad("no host"));
        }
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported: use --token"));
        }
        if uri.query().is_some() {
            return Err(bad("a base URL has no query"));
        }
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
        };
        Ok(Self {
            authority,
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// Parses every URL given; at least one is required.
    pub fn parse_all(urls: &[String]) -> Result<Vec<Self>, ClientError> {
        let targets = urls
            .iter()
            .filter(|u| !u.trim().is_empty())
            .map(|u| Self::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() {
            return Err(ClientError::Usage(
                "no gateway URL: pass --url http://host:port (or set SWITCHBOARD_URL)".into(),
            ));
        }
        Ok(targets)
    }

    /// The native WebSocket endpoint.
    pub fn websocket(&self) -> String {
        format!("ws://{}{}/ws", self.authority, self.prefix)
    }

    /// An HTTP endpoint under the base URL.
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}{}", self.authority, self.prefix, path)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.prefix)
    }
}

/// `(code, message)` of a gateway's JSON refusal body, if it is one.
fn refusal_of(body: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let message = text("message");
    let message = if message.is_empty() {
        String::from_utf8_lossy(body)
            .trim()
            .chars()
            .take(200)
            .collect()
    } else {
        message
    };
    (text("error"), message)
}

/// The error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(t.websocket(), "ws://127.0.0.1:8080/ws");
        assert_eq!(
            t.http("/api/v1/publish"),
            "http://127.0.0.1:8080/api/v1/publish"
        );
        let t = Target::parse("http://gw.example/switchboard/").unwrap();
        assert_eq!(t.websocket(), "ws://gw.example:80/switchboard/ws");
        assert_eq!(t.to_string(), "http://gw.example:80/switchboard");
        for bad in [
            "127.0.0.1:8080",
            "https://gw",
            "ftp://gw",
            "http://",
            "http://u:p@gw:1",
            "http://gw:1/?a=b",
            "not a url",
        ] {
            let e = Target::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected http://host:port"), "{bad}: {e}");
        }
        assert!(Target::parse_all(&[String::new()]).is_err());
    }

    #[test]
    fn refusal_bodies() {
        assert_eq!(
            refusal_of(br#"{"error":"invalid_token","message":"bad signature"}"#),
            ("invalid_token".into(), "bad signature".into())
        );
        assert_eq!(refusal_of(b"oops"), (String::new(), "oops".into()));
    }
}
