//! The federation service's `GET /discover` (optional): peers the service
//! knows of, merged into the peers read from Redis.
//!
//! The answer is a JSON array of peer objects, or an object with a `peers`
//! array. Each peer has `id` (or `node_id`) and optionally the fields of a peer
//! hash (`hostname`, `trust_tier`, `status`, `latency`, `last_seen`). Plain HTTP
//! only: the service runs beside the collector (terminate TLS in a sidecar if it
//! does not). The request and the body are bounded in time and size.

use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::federation::PeerRecord;

/// Where and how to ask.
#[derive(Debug, Clone)]
pub struct DiscoverConfig {
    pub url: Uri,
    /// Limit on the whole request, body included.
    pub timeout: Duration,
    /// Largest body accepted.
    pub max_bytes: usize,
}

/// Why a `--federation-discover-url` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoverUrlError {
    #[error("bad --federation-discover-url {url:?}: {reason}")]
    Unparsable { url: String, reason: String },
    #[error(
        "--federation-discover-url {0:?}: https is not supported by the built-in client; reach the federation service over plain HTTP inside the cluster"
    )]
    Https(String),
    #[error("--federation-discover-url {0:?}: expected http://host[:port]/path")]
    NotHttp(String),
}

impl DiscoverConfig {
    /// Checks a URL given on the command line.
    pub fn parse_url(url: &str) -> Result<Uri, DiscoverUrlError> {
        let uri: Uri =
            url.parse()
                .map_err(|e: http::uri::InvalidUri| DiscoverUrlError::Unparsable {
                    url: url.to_owned(),
                    reason: e.to_string(),
                })?;
        match uri.scheme_str() {
            Some("http") if uri.host().is_some() => Ok(uri),
            Some("https") => Err(DiscoverUrlError::Https(url.to_owned())),
            _ => Err(DiscoverUrlError::NotHttp(url.to_owned())),
        }
    }
}

/// Why `/discover` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoverError {
    #[error("GET {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("GET {url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: no answer within the source timeout")]
    Timeout { url: String },
    #[error("GET {url}: body larger than {max} bytes")]
    TooLarge { url: String, max: usize },
    #[error("GET {url}: {reason}")]
    Format {
        url: String,
        reason: PeersFormatError,
    },
}

/// Why a `/discover` body is not a list of peers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeersFormatError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("expected an array of peers or {{\"peers\": [...]}}")]
    Shape,
}

/// A `/discover` client.
pub struct Discover {
    client: Client<HttpConnector, Empty<Bytes>>,
    config: DiscoverConfig,
}

impl Discover {
    pub fn new(config: DiscoverConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .build(connector);
        Self { client, config }
    }

    pub fn url(&self) -> &Uri {
        &self.config.url
    }

    /// The discovered peers, and how many entries were not peers (skipped).
    pub async fn peers(&self) -> Result<(Vec<PeerRecord>, usize), DiscoverError> {
        let url = self.config.url.to_string();
        let body = tokio::time::timeout(self.config.timeout, self.fetch())
            .await
            .map_err(|_| DiscoverError::Timeout { url: url.clone() })??;
        parse_peers(&body).map_err(|reason| DiscoverError::Format { url, reason })
    }

    async fn fetch(&self) -> Result<Bytes, DiscoverError> {
        let url = self.config.url.to_string();
        let request = http::Request::get(self.config.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| DiscoverError::Request {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| DiscoverError::Request {
                url: url.clone(),
                reason: error_chain(&e),
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(DiscoverError::Status {
                url,
                status: status.as_u16(),
            });
        }
        let limited = Limited::new(response.into_body(), self.config.max_bytes);
        match limited.collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(DiscoverError::TooLarge {
                url,
                max: self.config.max_bytes,
            }),
            Err(e) => Err(DiscoverError::Request {
                url,
                reason: e.to_string(),
            }),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Parses a `/discover` body into peer records, sorted by id.
pub fn parse_peers(body: &[u8]) -> Result<(Vec<PeerRecord>, usize), PeersFormatError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| PeersFormatError::NotJson(e.to_string()))?;
    let items = match &value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(o) => match o.get("peers") {
            Some(serde_json::Value::Array(items)) => items,
            _ => return Err(PeersFormatError::Shape),
        },
        _ => return Err(PeersFormatError::Shape),
    };
    let mut invalid = 0;
    let mut peers = Vec::new();
    for item in items {
        let field = |name: &str| -> Option<String> {
            match item.get(name)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        let Some(id) = field("id").or_else(|| field("node_id")) else {
            invalid += 1;
            continue;
        };
        peers.push(PeerRecord::from_fields(&id, field));
    }
    peers.sort_by(|a, b| a.id.cmp(&b.id));
    peers.dedup_by(|a, b| a.id == b.id);
    Ok((peers, invalid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_bodies() {
        let (peers, invalid) = parse_peers(
            br#"{"peers":[{"node_id":"b","status":"online","latency":7,"last_seen":1699800000},{"id":"a"},{"hostname":"no id"}]}"#,
        )
        .unwrap();
        assert_eq!(invalid, 1);
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].id, "a");
        assert_eq!(peers[1].latency, Some(7.0));
        assert_eq!(peers[1].last_seen_ms, Some(1_699_800_000_000));
        assert_eq!(parse_peers(b"[]").unwrap().0.len(), 0);
        assert!(parse_peers(b"{}").is_err());
        assert!(parse_peers(b"<html>").is_err());
    }

    #[test]
    fn only_plain_http_urls() {
        assert!(DiscoverConfig::parse_url("http://fed:9001/discover").is_ok());
        assert!(
            DiscoverConfig::parse_url("https://fed/discover")
                .unwrap_err()
                .to_string()
                .contains("https")
        );
        assert!(DiscoverConfig::parse_url("fed:9001").is_err());
    }
}
