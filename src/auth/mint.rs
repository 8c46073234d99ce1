//! Minting tokens for development and tests (`switchboard token`).

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::Claims;

/// What to put in a token.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub subject: String,
    pub permissions: Vec<String>,
    pub channels: Vec<String>,
    /// Names for the `roles` claim (mapped to permissions by `--jwt-role`).
    pub roles: Vec<String>,
    pub ttl: Duration,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub key_id: Option<String>,
}

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("--sub is empty: a token must name its user (gateways refuse tokens without `sub`)")]
    EmptySubject,
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is empty: it must hold the HMAC secret on its first line")]
    EmptySecret(String),
    #[error("{path}: not a {alg:?} private key in PEM")]
    BadKey { path: String, alg: Algorithm },
    #[error("algorithm {0:?} is not supported: use HS256, HS384, HS512, RS256 or ES256")]
    Algorithm(Algorithm),
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Signs a token: `key_file` is the HMAC secret file (first line) for HS*, or
/// a PEM private key for RS256/ES256.
pub fn mint(spec: &TokenSpec, alg: Algorithm, key_file: &Path) -> Result<String, MintError> {
    if spec.subject.trim().is_empty() {
        return Err(MintError::EmptySubject);
    }
    let path = key_file.display().to_string();
    let bytes = std::fs::read(key_file).map_err(|source| MintError::Read {
        path: path.clone(),
        source,
    })?;
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let text = String::from_utf8_lossy(&bytes);
            let secret = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .ok_or_else(|| MintError::EmptySecret(path.clone()))?;
            EncodingKey::from_secret(secret.as_bytes())
        }
        Algorithm::RS256 => {
            EncodingKey::from_rsa_pem(&bytes).map_err(|_| MintError::BadKey { path, alg })?
        }
        Algorithm::ES256 => {
            EncodingKey::from_ec_pem(&bytes).map_err(|_| MintError::BadKey { path, alg })?
        }
        other => return Err(MintError::Algorithm(other)),
    };
    let now = crate::time::unix_secs();
    let claims = Claims {
        sub: Some(spec.subject.clone()),
        exp: now + spec.ttl.as_secs(),
        nbf: None,
        iat: Some(now),
        aud: spec.audience.clone().map(serde_json::Value::String),
        iss: spec.issuer.clone(),
        permissions: spec.permissions.clone(),
        channels: spec.channels.clone(),
        roles: spec.roles.clone(),
    };
    let mut header = Header::new(alg);
    header.kid = spec.key_id.clone();
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
}
