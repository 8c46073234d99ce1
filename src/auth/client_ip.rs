//! Which address a client connects from, for per-address limits: the TCP peer,
//! or — only when the peer is a trusted proxy (`--trusted-proxies`) — the
//! address the proxy reports in `--client-ip-header`. In an `X-Forwarded-For`
//! list that is the rightmost address that is not itself a trusted proxy (the
//! leftmost entries are whatever the client wrote).

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;

/// Where the client's address comes from.
#[derive(Debug, Clone)]
pub struct ClientIpPolicy {
    header: HeaderName,
    trusted: Vec<IpNet>,
}

impl Default for ClientIpPolicy {
    fn default() -> Self {
        Self {
            header: HeaderName::from_static("x-forwarded-for"),
            trusted: Vec::new(),
        }
    }
}

/// A bad `--client-ip-header` or `--trusted-proxies` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientIpError {
    #[error("--client-ip-header {0:?} is not a valid HTTP header name")]
    Header(String),
    #[error("--trusted-proxies {0:?} is not an address or a network (10.0.0.0/8, ::1)")]
    Network(String),
}

impl ClientIpPolicy {
    /// `header` read from peers in `trusted` (addresses or CIDR networks).
    pub fn new(header: &str, trusted: &[String]) -> Result<Self, ClientIpError> {
        let header = HeaderName::from_bytes(header.trim().as_bytes())
            .map_err(|_| ClientIpError::Header(header.to_owned()))?;
        let trusted = trusted
            .iter()
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .map(|t| {
                t.parse::<IpNet>()
                    .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| ClientIpError::Network(t.to_owned()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { header, trusted })
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The client's address, if known.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = canonical(peer?);
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let listed: Vec<IpAddr> = headers
            .get_all(&self.header)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| parse_address(a.trim()))
            .collect();
        Some(
            listed
                .into_iter()
                .rev()
                .find(|ip| !self.is_trusted(*ip))
                .unwrap_or(peer),
        )
    }
}

/// An IPv4 address mapped into IPv6 counts as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:5678`.
fn parse_address(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    text.parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| canonical(s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
        h
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_proxy() {
        let p = ClientIpPolicy::new(
            "X-Forwarded-For",
            &["10.0.0.0/8".into(), "127.0.0.1".into()],
        )
        .unwrap();
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let outsider: IpAddr = "203.0.113.9".parse().unwrap();
        let h = headers("198.51.100.7, 10.9.9.9");
        assert_eq!(
            p.client_ip(Some(proxy), &h),
            Some("198.51.100.7".parse().unwrap())
        );
        assert_eq!(
            p.client_ip(Some(outsider), &h),
            Some(outsider),
            "a client cannot claim an address"
        );
        let spoof = headers("1.1.1.1, 198.51.100.7");
        assert_eq!(
            p.client_ip(Some(proxy), &spoof),
            Some("198.51.100.7".parse().unwrap()),
            "the rightmost untrusted address, not what the client wrote first"
        );
        assert_eq!(p.client_ip(Some(proxy), &HeaderMap::new()), Some(proxy));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(
            p.client_ip(Some(mapped), &headers("[2001:db8::1]:443")),
            Some("2001:db8::1".parse().unwrap())
        );
        assert!(ClientIpPolicy::new("bad header", &[]).is_err());
        assert!(ClientIpPolicy::new("x", &["nonsense".into()]).is_err());
    }
}
