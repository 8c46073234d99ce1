//! The WebSocket opening handshake (RFC 6455 §4.2), on top of hyper's upgrade.
//!
//! warp routes the request; this module checks that it is a valid upgrade,
//! answers `101 Switching Protocols`, and hands back the raw `TcpStream` once
//! hyper releases it, so the gateway runs its own frame I/O with no per-socket
//! buffers while a client is idle.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::net::TcpStream;

/// The subprotocol a browser offers next to `bearer.<token>` (browsers cannot
/// set an `Authorization` header on a WebSocket).
pub const SUBPROTOCOL: &str = "switchboard";
/// Prefix of a subprotocol entry that carries a token.
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "bearer.";

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why a request is not a WebSocket upgrade we can accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("not a WebSocket upgrade: send `Connection: Upgrade` and `Upgrade: websocket`")]
    NotUpgrade,
    #[error("unsupported WebSocket version: send `Sec-WebSocket-Version: 13`")]
    BadVersion,
    #[error("missing or malformed `Sec-WebSocket-Key`")]
    BadKey,
}

/// A validated upgrade request.
#[derive(Debug, Clone)]
pub struct UpgradeRequest {
    key: HeaderValue,
    offers_subprotocol: bool,
    token: Option<String>,
    /// The client offers permessage-deflate in a form the gateway accepts.
    offers_deflate: bool,
}

impl UpgradeRequest {
    /// Validates the upgrade headers.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, HandshakeError> {
        let has_token = |name: header::HeaderName, wanted: &str| {
            headers.get_all(name).iter().any(|v| {
                v.to_str()
                    .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(wanted)))
                    .unwrap_or(false)
            })
        };
        if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
            return Err(HandshakeError::NotUpgrade);
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(|v| v.as_bytes())
            != Some(b"13")
        {
            return Err(HandshakeError::BadVersion);
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .filter(|k| {
                base64::engine::general_purpose::STANDARD
                    .decode(k.as_bytes())
                    .map(|raw| raw.len() == 16)
                    .unwrap_or(false)
            })
            .ok_or(HandshakeError::BadKey)?
            .clone();
        let mut offers_subprotocol = false;
        let mut token = None;
        for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
            let Ok(value) = value.to_str() else { continue };
            for proto in value.split(',').map(str::trim) {
                if proto == SUBPROTOCOL {
                    offers_subprotocol = true;
                } else if let Some(t) = proto.strip_prefix(TOKEN_SUBPROTOCOL_PREFIX) {
                    token = Some(t.to_owned());
                }
            }
        }
        Ok(Self {
            key,
            offers_subprotocol,
            token,
            offers_deflate: super::deflate::acceptable_offer(headers),
        })
    }

    /// Whether the client offers permessage-deflate in a form the gateway
    /// accepts ([`super::deflate`]).
    pub fn offers_deflate(&self) -> bool {
        self.offers_deflate
    }

    /// A token offered as a `bearer.<token>` subprotocol, if any.
    pub fn subprotocol_token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The `101 Switching Protocols` response; with `deflate`, accepting
    /// permessage-deflate (only when the client offered it).
    pub fn accept_response(&self, deflate: bool) -> Response<Bytes> {
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept_key(self.key.as_bytes())) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if self.offers_subprotocol {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        if deflate && self.offers_deflate {
            headers.insert(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_static(super::deflate::RESPONSE),
            );
        }
        response
    }
}

/// Marks a refused upgrade with the version this server speaks, as RFC 6455
/// §4.4 asks of a server that does not support the client's
/// `Sec-WebSocket-Version`: `Sec-WebSocket-Version: 13` on any refusal of a
/// request whose version is not 13.
pub fn add_supported_version(request: &HeaderMap, refusal: &mut HeaderMap) {
    if request
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        refusal.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
}

/// `Sec-WebSocket-Accept` for a client key.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Why the upgraded connection could not be taken over.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("the upgrade did not complete: {0}")]
    Upgrade(#[from] hyper::Error),
    #[error("the upgraded connection is not a plain TCP stream")]
    NotTcp,
    #[error("the client sent frames before the handshake completed")]
    EarlyData,
}

/// Waits for hyper to finish the upgrade and returns the raw TCP stream.
///
/// Clients must wait for the `101` before sending frames (RFC 6455 §4.1), so
/// any bytes hyper read past the request are a protocol violation and refused.
pub async fn take_stream(on_upgrade: OnUpgrade) -> Result<TcpStream, TakeoverError> {
    let upgraded = on_upgrade.await?;
    let parts = upgraded
        .downcast::<TokioIo<TcpStream>>()
        .map_err(|_| TakeoverError::NotTcp)?;
    if !parts.read_buf.is_empty() {
        return Err(TakeoverError::EarlyData);
    }
    Ok(parts.io.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    const VALID: &[(&str, &str)] = &[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn rfc_example_accept_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn valid_request_is_accepted_and_token_found_in_subprotocols() {
        let mut h = headers(VALID);
        h.append(
            "sec-websocket-protocol",
            HeaderValue::from_static("switchboard, bearer.abc.def.ghi"),
        );
        let up = UpgradeRequest::from_headers(&h).unwrap();
        assert_eq!(up.subprotocol_token(), Some("abc.def.ghi"));
        let resp = up.accept_response(true);
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(resp.headers()["sec-websocket-protocol"], "switchboard");
    }

    #[test]
    fn invalid_requests_are_refused() {
        let mut no_upgrade = headers(VALID);
        no_upgrade.remove("upgrade");
        assert_eq!(
            UpgradeRequest::from_headers(&no_upgrade).unwrap_err(),
            HandshakeError::NotUpgrade
        );
        let mut v12 = headers(VALID);
        v12.insert("sec-websocket-version", HeaderValue::from_static("12"));
        assert_eq!(
            UpgradeRequest::from_headers(&v12).unwrap_err(),
            HandshakeError::BadVersion
        );
        let mut bad_key = headers(VALID);
        bad_key.insert("sec-websocket-key", HeaderValue::from_static("short"));
        assert_eq!(
            UpgradeRequest::from_headers(&bad_key).unwrap_err(),
            HandshakeError::BadKey
        );
    }
}
