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
