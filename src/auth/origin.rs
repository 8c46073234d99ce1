//! The `Origin` allowlist: which web pages may open WebSockets (against
//! cross-site WebSocket hijacking) and call the REST API from a browser (CORS).

use wildmatch::WildMatch;

/// Allowed origins: exact (`https://dash.example.com`) or with wildcards
/// (`https://*.vercel.app`); `*` allows any.
#[derive(Debug, Clone)]
pub enum OriginPolicy {
    Any,
    List(Vec<WildMatch>),
}

impl OriginPolicy {
    /// From the `--allowed-origins` entries; none means any.
    pub fn new(entries: &[String]) -> Self {
        let entries: Vec<&str> = entries
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .collect();
        if entries.is_empty() || entries.contains(&"*") {
            Self::Any
        } else {
            Self::List(
                entries
                    .iter()
                    .map(|e| WildMatch::new(e.trim_end_matches('/')))
                    .collect(),
            )
        }
    }

    /// Like [`Self::allows`], and a page of the gateway itself (the `Origin`'s
    /// host and port are the request's `Host`) is always allowed: another
    /// site's page cannot make a browser send that pair.
    pub fn allows_or_same_origin(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        self.allows(origin) || matches!((origin, host), (Some(o), Some(h)) if same_origin(o, h))
    }

    /// A request without `Origin` does not come from a browser page and is
    /// not subject to the policy (tokens still are).
    pub fn allows(&self, origin: Option<&str>) -> bool {
        match (self, origin) {
            (Self::Any, _) | (_, None) => true,
            (Self::List(list), Some(o)) => list.iter().any(|p| p.matches(o)),
        }
    }

    pub fn is_any(&self) -> bool {
        matches!(self, Self::Any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard_origins() {
        let p = OriginPolicy::new(&[
            "https://dash.example.com".into(),
            "https://*.vercel.app".into(),
        ]);
        assert!(p.allows(Some("https://dash.example.com")));
        assert!(p.allows(Some("https://preview-1.vercel.app")));
        assert!(!p.allows(Some("https://evil.example")));
        assert!(!p.allows(Some("http://dash.example.com")));
        assert!(p.allows(None));
        assert!(OriginPolicy::new(&[]).allows(Some("https://anything")));
    }
}

/// Does `origin` (`scheme://host[:port]`) name the host the request was sent to?
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let normalize = |a: &str| {
        let a = a.trim().to_ascii_lowercase();
        a.strip_suffix(default_port).map(str::to_owned).unwrap_or(a)
    };
    !host.is_empty() && normalize(authority) == normalize(host)
}

#[cfg(test)]
mod same_origin_tests {
    use super::*;

    #[test]
    fn the_gateways_own_page_is_always_allowed() {
        let policy = OriginPolicy::new(&["https://dash.example.com".to_string()]);
        assert!(
            policy.allows_or_same_origin(Some("https://gw.example.com"), Some("gw.example.com"))
        );
        assert!(
            policy
                .allows_or_same_origin(Some("https://gw.example.com"), Some("gw.example.com:443"))
        );
        assert!(
            policy.allows_or_same_origin(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080"))
        );
        assert!(
            !policy.allows_or_same_origin(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8081"))
        );
        assert!(
            !policy.allows_or_same_origin(Some("https://evil.example"), Some("gw.example.com"))
        );
        assert!(!policy.allows_or_same_origin(Some("null"), Some("null")));
        assert!(policy.allows_or_same_origin(Some("https://dash.example.com"), None));
    }
}
