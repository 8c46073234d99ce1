//! JWT verification: key material, algorithm policy, claim validation.
//!
//! Keys come from files (Kubernetes secrets mounted as files): up to two HMAC
//! secrets (HS256/384/512, for rotation), RSA or EC public keys in PEM (RS256,
//! ES256), and a JWKS file. The files are read every `reload_interval` and,
//! when their contents changed, parsed again, so a rotated secret or JWKS
//! takes effect without a restart; files that fail to parse (or leave no key
//! at all, as a half-written file may) keep the previous keys and are logged.
//!
//! Every token must carry `sub` (the user: per-user limits, sessions and
//! "disconnect this user" key on it) and `exp`; `aud` and `iss` too when they
//! are enforced. A missing claim is refused as `missing_claim`, naming it.
//!
//! The algorithm is never taken on trust: `none` is refused, an HS token is
//! checked only against HMAC secrets and an RS/ES token only against public
//! keys, so a public key can never be used as an HMAC secret (algorithm
//! confusion).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio_util::sync::CancellationToken;

use super::{Claims, Identity};

/// Minimum length of an HMAC secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Where the keys are and what tokens must say.
#[derive(Debug, Clone, Default)]
pub struct JwtConfig {
    /// Files of HMAC secrets, one per line; two secrets at most in all.
    pub secret_files: Vec<PathBuf>,
    /// PEM files of RSA (RS256) or EC P-256 (ES256) public keys.
    pub public_key_files: Vec<PathBuf>,
    /// A JWKS file (`{"keys": [...]}`); keys are chosen by `kid`.
    pub jwks_file: Option<PathBuf>,
    /// Tolerance on `exp` and `nbf`.
    pub leeway: Duration,
    /// Accepted `aud` values; when set, tokens must carry one of them.
    pub audience: Vec<String>,
    /// Accepted `iss` values; when set, tokens must carry one of them.
    pub issuer: Vec<String>,
    /// How often key files are checked for changes.
    pub reload_interval: Duration,
    /// Longest token accepted, in bytes.
    pub max_token_bytes: usize,
    /// Permissions granted by the names in a token's `roles` claim
    /// (`--jwt-role NAME=PERM,…`), as the ESCAI seed's tokens carry them.
    pub roles: super::RoleMap,
}

/// A problem with the configured keys (at startup: the process refuses to start).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no key configured: give --jwt-secret-file, --jwt-public-key-file or --jwks-file")]
    NoKeys,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: at most two HMAC secrets may be active (found {count})")]
    TooManySecrets { path: PathBuf, count: usize },
    #[error(
        "{path}: an HMAC secret must be at least {MIN_SECRET_BYTES} bytes (generate one with `head -c 48 /dev/urandom | base64`)"
    )]
    WeakSecret { path: PathBuf },
    #[error("{path}: not an RSA or EC P-256 public key in PEM")]
    BadPublicKey { path: PathBuf },
    #[error("{path}: not a JWKS document: {reason}")]
    BadJwks { path: PathBuf, reason: String },
}

/// Why a token was refused. Each maps to a stable code for clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no token: send it as ?token=, Authorization: Bearer, or the bearer.<token> subprotocol"
    )]
    Missing,
    #[error("the token is longer than {0} bytes")]
    TooLong(usize),
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("algorithm {0:?} is not accepted here")]
    UnsupportedAlgorithm(String),
    #[error("the token's signature does not verify with any configured key")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's audience is not accepted")]
    WrongAudience,
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    #[error(
        "the token lacks the required claim {0:?}: every token needs `sub` (the user it is for) and `exp`, and `aud`/`iss` when the gateway enforces them"
    )]
    MissingClaim(String),
}

impl AuthError {
    /// The code sent to clients (`error` field of a 401, or of an error frame).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing_token",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::WrongAudience => "wrong_audience",
            Self::WrongIssuer => "wrong_issuer",
            Self::MissingClaim(_) => "missing_claim",
            _ => "invalid_token",
        }
    }
}

/// Keys read from the files, by family.
#[derive(Default)]
struct KeyRing {
    hmac: Vec<DecodingKey>,
    public: Vec<(Algorithm, Option<String>, DecodingKey)>,
}

/// Verifies tokens; see the module documentation.
pub struct Verifier {
    config: JwtConfig,
    keys: RwLock<Arc<KeyRing>>,
    fingerprint: RwLock<Vec<Option<u64>>>,
}

impl Verifier {
    /// Loads the keys; fails if none is configured or a file is unusable.
    pub fn load(config: JwtConfig) -> Result<Arc<Self>, KeyError> {
        let ring = KeyRing::load(&config)?;
        if ring.is_unusable(&config) {
            return Err(KeyError::NoKeys);
        }
        let fingerprint = fingerprints(&config);
        Ok(Arc::new(Self {
            config,
            keys: RwLock::new(Arc::new(ring)),
            fingerprint: RwLock::new(fingerprint),
        }))
    }

    /// Re-reads the key files whenever they change, until `shutdown`.
    pub fn watch(self: &Arc<Self>, shutdown: CancellationToken) {
        let verifier = Arc::downgrade(self);
        let interval = self.config.reload_interval.max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                let Some(v) = verifier.upgrade() else { return };
                v.reload_if_changed();
            }
        });
    }

    fn reload_if_changed(&self) {
        let now = fingerprints(&self.config);
        let changed = *self.fingerprint.read().unwrap_or_else(|e| e.into_inner()) != now;
        if !changed {
            return;
        }
        *self.fingerprint.write().unwrap_or_else(|e| e.into_inner()) = now;
        match KeyRing::load(&self.config) {
            Ok(ring) if ring.is_unusable(&self.config) => {
                tracing::error!(
                    "JWT key files changed but hold no key (a file half written, or emptied); keeping the previous keys"
                )
            }
            Ok(ring) => {
                tracing::info!(
                    hmac = ring.hmac.len(),
                    public = ring.public.len(),
                    "JWT key files changed: keys reloaded"
                );
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
            }
            Err(e) => {
                tracing::error!(error = %e, "JWT key files changed but cannot be used; keeping the previous keys")
            }
        }
    }

    /// Verifies `token` and returns the identity it describes.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > self.config.max_token_bytes {
            return Err(AuthError::TooLong(self.config.max_token_bytes));
        }
        let (alg_name, kid) = peek_header(token)?;
        let alg = match alg_name.as_str() {
            "HS256" => Algorithm::HS256,
            "HS384" => Algorithm::HS384,
            "HS512" => Algorithm::HS512,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => return Err(AuthError::UnsupportedAlgorithm(alg_name)),
        };
        let ring = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        let candidates: Vec<&DecodingKey> = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => ring.hmac.iter().collect(),
            _ => {
                let same_alg = ring.public.iter().filter(|(a, _, _)| *a == alg);
                let by_kid: Vec<&DecodingKey> = same_alg
                    .clone()
                    .filter(|(_, k, _)| kid.is_some() && *k == kid)
                    .map(|(_, _, key)| key)
                    .collect();
                if by_kid.is_empty() {
                    same_alg.map(|(_, _, key)| key).collect()
                } else {
                    by_kid
                }
            }
        };
        if candidates.is_empty() {
            return Err(AuthError::UnsupportedAlgorithm(alg_name));
        }
        let validation = self.validation(alg);
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                // A blank `sub` names nobody: it would pool unrelated callers
                // under one user (limits, sessions) just like a missing one.
                Ok(data)
                    if data
                        .claims
                        .sub
                        .as_deref()
                        .is_none_or(|s| s.trim().is_empty()) =>
                {
                    return Err(AuthError::MissingClaim("sub".into()));
                }
                Ok(data) => {
                    return Ok(Identity::from_claims_with_roles(
                        &data.claims,
                        &self.config.roles,
                    ));
                }
                Err(e) => match classify(e.kind()) {
                    AuthError::BadSignature => continue,
                    other => return Err(other),
                },
            }
        }
        Err(AuthError::BadSignature)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.config.leeway.as_secs();
        v.validate_nbf = true;
        // `sub` names the user: per-user connection limits, resumable
        // sessions and "disconnect this user" all key on it.
        let mut required = vec!["exp", "sub"];
        if self.config.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.config.audience);
            required.push("aud");
        }
        if !self.config.issuer.is_empty() {
            v.set_issuer(&self.config.issuer);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        v
    }
}

fn classify(kind: &jsonwebtoken::errors::ErrorKind) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidAudience => AuthError::WrongAudience,
        K::InvalidIssuer => AuthError::WrongIssuer,
        K::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
        K::InvalidSignature
        | K::InvalidEcdsaKey
        | K::InvalidRsaKey(_)
        | K::InvalidKeyFormat
        | K::InvalidAlgorithm => AuthError::BadSignature,
        _ => AuthError::Malformed,
    }
}

/// Reads `alg` and `kid` from the header without trusting anything else.
fn peek_header(token: &str) -> Result<(String, Option<String>), AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed)?;
    let value: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|_| AuthError::Malformed)?;
    let alg = value
        .get("alg")
        .and_then(|a| a.as_str())
        .ok_or(AuthError::Malformed)?
        .to_string();
    let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
    Ok((alg, kid))
}

fn read(path: &PathBuf) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.clone(),
        source,
    })
}

impl KeyRing {
    /// No key at all, and no JWKS file that may gain some.
    fn is_unusable(&self, config: &JwtConfig) -> bool {
        self.hmac.is_empty() && self.public.is_empty() && config.jwks_file.is_none()
    }

    fn load(config: &JwtConfig) -> Result<Self, KeyError> {
        let mut ring = Self::default();
        for path in &config.secret_files {
            let text = read(path)?;
            for line in String::from_utf8_lossy(&text).lines() {
                let secret = line.trim();
                if secret.is_empty() {
                    continue;
                }
                if secret.len() < MIN_SECRET_BYTES {
                    return Err(KeyError::WeakSecret { path: path.clone() });
                }
                ring.hmac.push(DecodingKey::from_secret(secret.as_bytes()));
                if ring.hmac.len() > 2 {
                    return Err(KeyError::TooManySecrets {
                        path: path.clone(),
                        count: ring.hmac.len(),
                    });
                }
            }
        }
        for path in &config.public_key_files {
            let pem = read(path)?;
            if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                ring.public.push((Algorithm::RS256, None, key));
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                ring.public.push((Algorithm::ES256, None, key));
            } else {
                return Err(KeyError::BadPublicKey { path: path.clone() });
            }
        }
        if let Some(path) = &config.jwks_file {
            let bad = |reason: String| KeyError::BadJwks {
                path: path.clone(),
                reason,
            };
            let set: JwkSet =
                serde_json::from_slice(&read(path)?).map_err(|e| bad(e.to_string()))?;
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(e.to_string()))?;
                let alg = match jwk.common.key_algorithm.map(|a| a.to_string()).as_deref() {
                    Some("RS256") => Algorithm::RS256,
                    Some("ES256") => Algorithm::ES256,
                    None => match &jwk.algorithm {
                        jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                        jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => {
                            Algorithm::ES256
                        }
                        _ => continue,
                    },
                    Some(_) => continue,
                };
                ring.public.push((alg, jwk.common.key_id.clone(), key));
            }
        }
        Ok(ring)
    }
}

/// A hash of each key file's contents (`None`: unreadable), to notice
/// changes. Contents, not modification times: a secret rewritten with one of
/// the same length within the file system's timestamp granularity is still
/// noticed. Key files are small; reading them every interval costs nothing.
fn fingerprints(config: &JwtConfig) -> Vec<Option<u64>> {
    config
        .secret_files
        .iter()
        .chain(&config.public_key_files)
        .chain(config.jwks_file.iter())
        .map(|p| {
            std::fs::read(p).ok().map(|bytes| {
                let mut hasher = DefaultHasher::new();
                bytes.hash(&mut hasher);
                hasher.finish()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_peeked_without_trust() {
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert_eq!(
            peek_header(&format!("{header}.e30.")).unwrap(),
            ("none".to_string(), None)
        );
        assert_eq!(peek_header("a.b"), Err(AuthError::Malformed));
        assert_eq!(peek_header("!!.b.c"), Err(AuthError::Malformed));
    }
}
