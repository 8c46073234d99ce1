//! `switchboard health`: asks a running process's `/health/ready` (or any health
//! URL) and exits 0 when it answers 200, 1 otherwise, with one line saying why.
//!
//! It is the image's `HEALTHCHECK`: the runtime image has no shell tools, and a
//! check must not need them. Without a URL it asks the process in the same
//! container, from the variables that process reads: `SWITCHBOARD_ADMIN_LISTEN`
//! (a gateway's or standalone's admin listener), else `SWITCHBOARD_LISTEN` (the
//! collector's only listener; a gateway's client port also answers health),
//! else the gateway's default admin address, `127.0.0.1:9091`. An unspecified
//! address (`0.0.0.0`, `::`) is asked on loopback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http::Uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The gateway's default admin address (`--admin-listen`).
const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9091);

/// Most of a response read: a health answer is a few dozen bytes.
const MAX_RESPONSE: u64 = 16 * 1024;

/// Why the check failed; one line each.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("bad URL {url:?}: {why} (expected http://host:port/health/ready)")]
    BadUrl { url: String, why: &'static str },
    #[error("{url}: cannot connect: {error}")]
    Connect { url: String, error: std::io::Error },
    #[error("{url}: no answer within {timeout:?} (--timeout)")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: {error}")]
    Io { url: String, error: std::io::Error },
    #[error("{url}: not an HTTP response")]
    NotHttp { url: String },
    #[error("{url}: HTTP {status} {body}")]
    Unhealthy {
        url: String,
        status: u16,
        body: String,
    },
}

/// What `switchboard health` asks, and how long it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// The URL to ask (a bare `http://host:port` asks `/health/ready`); it
    /// wins over the listeners.
    pub url: Option<String>,
    /// The admin listener of the process to ask (asked on loopback when
    /// unspecified); it wins over `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// The process's listener, asked when no admin listener is named.
    /// Neither: the gateway's default admin address, 127.0.0.1:9091.
    pub listen: Option<SocketAddr>,
    /// Limit on the whole check, connect to answer.
    pub timeout: Duration,
}

/// What to ask: `host:port` to connect to, the `Host` header and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    url: String,
    authority: String,
    path: String,
}

impl Probe {
    fn parse(url: &str) -> Result<Self, HealthError> {
        let bad = |why| HealthError::BadUrl {
            url: url.to_string(),
            why,
        };
        let uri: Uri = url.trim().parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(bad("only http:// (health is served without TLS)")),
            None => return Err(bad("no scheme")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.host().is_empty() {
            return Err(bad("no host"));
        }
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") | Some("/") => "/health/ready".to_string(),
            Some(p) => p.to_string(),
        };
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
        };
        Ok(Self {
            url: format!("http://{authority}{path}"),
            authority,
            path,
        })
    }

    /// `/health/ready` of a process listening on `addr`, asked on loopback
    /// when `addr` is unspecified.
    fn of_listener(addr: SocketAddr) -> Self {
        let ip = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let authority = SocketAddr::new(ip, addr.port()).to_string();
        let path = "/health/ready".to_string();
        Self {
            url: format!("http://{authority}{path}"),
            authority,
            path,
        }
    }

    fn of(config: &HealthConfig) -> Result<Self, HealthError> {
        match (&config.url, config.admin_listen, config.listen) {
            (Some(url), _, _) => Self::parse(url),
            (None, Some(addr), _) | (None, None, Some(addr)) => Ok(Self::of_listener(addr)),
            (None, None, None) => Ok(Self::of_listener(DEFAULT_ADMIN)),
        }
    }
}

/// Runs the check; `Ok` with the answer's first line when it is 200.
pub async fn run(config: HealthConfig) -> Result<(), HealthError> {
    let probe = Probe::of(&config)?;
    let timeout = config.timeout;
    let answer = tokio::time::timeout(timeout, ask(&probe))
        .await
        .map_err(|_| HealthError::Timeout {
            url: probe.url.clone(),
            timeout,
        })??;
    println!("{}: {answer}", probe.url);
    Ok(())
}

/// One `GET`; the status and body of a 200, or why not.
async fn ask(probe: &Probe) -> Result<String, HealthError> {
    let io = |error| HealthError::Io {
        url: probe.url.clone(),
        error,
    };
    let mut stream = TcpStream::connect(&probe.authority)
        .await
        .map_err(|error| HealthError::Connect {
            url: probe.url.clone(),
            error,
        })?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: switchboard-health\r\nConnection: close\r\n\r\n",
        probe.path, probe.authority
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .await
        .map_err(io)?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| HealthError::NotHttp {
            url: probe.url.clone(),
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().chars().take(300).collect::<String>())
        .unwrap_or_default();
    if status == 200 {
        Ok(format!("HTTP 200 {body}"))
    } else {
        Err(HealthError::Unhealthy {
            url: probe.url.clone(),
            status,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: Option<&str>, admin: Option<&str>, listen: Option<&str>) -> HealthConfig {
        HealthConfig {
            url: url.map(str::to_owned),
            admin_listen: admin.map(|a| a.parse().unwrap()),
            listen: listen.map(|a| a.parse().unwrap()),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn what_is_asked() {
        let url = |a: &HealthConfig| Probe::of(a).unwrap().url;
        assert_eq!(
            url(&config(None, None, None)),
            "http://127.0.0.1:9091/health/ready"
        );
        // The admin listener first, then the client (or collector) listener.
        assert_eq!(
            url(&config(None, Some("0.0.0.0:9191"), Some("0.0.0.0:8080"))),
            "http://127.0.0.1:9191/health/ready"
        );
        assert_eq!(
            url(&config(None, None, Some("[::]:9090"))),
            "http://[::1]:9090/health/ready"
        );
        assert_eq!(
            url(&config(None, None, Some("10.0.0.5:9090"))),
            "http://10.0.0.5:9090/health/ready"
        );
        // A URL wins; a bare base URL asks readiness.
        assert_eq!(
            url(&config(Some("http://gw:8080"), Some("0.0.0.0:1"), None)),
            "http://gw:8080/health/ready"
        );
        assert_eq!(
            url(&config(Some("http://gw/health/live"), None, None)),
            "http://gw:80/health/live"
        );
        for bad in ["https://gw/health", "gw:8080", "http://", "nonsense url"] {
            let e = Probe::of(&config(Some(bad), None, None)).unwrap_err();
            assert!(e.to_string().contains("expected http://"), "{bad}: {e}");
        }
    }
}
