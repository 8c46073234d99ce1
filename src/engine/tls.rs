//! TLS to Redis (`rediss://`): which certificates to trust, which to present.
//!
//! One [`RedisTls`] per process, loaded at start from `--redis-ca-file` and,
//! for servers that require mutual TLS, `--redis-client-cert-file` /
//! `--redis-client-key-file` ([`TlsFiles`]). The files are read and checked
//! then, so a bad one stops the process with its name and what is wrong.
//! Every Redis connection of the process uses the same trust: the redis
//! crate's connections (the engine's commands and pub/sub, the cluster client,
//! the collector's federation Redis, `bench`, `demo-data`) through
//! [`redis::TlsCertificates`], the cluster engine's own pub/sub connections
//! through a rustls [`TlsConnector`] — one TLS stack (rustls, ring).
//!
//! Trusted: the CA file's certificates if it is given (only those, as
//! `redis-cli --cacert`), otherwise the system's root certificates, which is
//! what managed Redis services need. The server's certificate must name the
//! host of the URL (or, on a cluster, the address each node announces). No
//! option turns verification off.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

/// The TLS flags: files, not yet read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificates of the CA(s) to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to servers requiring client certificates.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
}

impl TlsFiles {
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.client_cert_file.is_none() && self.client_key_file.is_none()
    }

    /// The flags that are set, for messages.
    fn flags(&self) -> String {
        [
            self.ca_file.as_ref().map(|_| "--redis-ca-file"),
            self.client_cert_file
                .as_ref()
                .map(|_| "--redis-client-cert-file"),
            self.client_key_file
                .as_ref()
                .map(|_| "--redis-client-key-file"),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {}: cannot read it: {source}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag} {}: {why}", path.display())]
    Pem {
        flag: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error(
        "--redis-client-cert-file and --redis-client-key-file go together: give both (for a Redis that requires client certificates) or neither"
    )]
    HalfClientPair,
    #[error(
        "the client certificate {} and key {} cannot be used together: {why}",
        cert.display(),
        key.display()
    )]
    ClientPair {
        cert: PathBuf,
        key: PathBuf,
        why: String,
    },
    #[error(
        "no trusted root certificates for rediss://: the system has none ({0}); install the ca-certificates package, or give --redis-ca-file with the CA that signed the Redis server's certificate"
    )]
    NoSystemRoots(String),
    #[error(
        "{0} given, but no Redis URL uses TLS: write the URL as rediss:// (rediss+cluster:// for a Redis Cluster), or remove the flag"
    )]
    Unused(String),
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

/// Loaded TLS settings; cheap to clone.
#[derive(Clone)]
pub struct RedisTls {
    certificates: redis::TlsCertificates,
    connector: TlsConnector,
    trust: Arc<str>,
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("trust", &self.trust)
            .field(
                "client_certificate",
                &self.certificates.client_tls.is_some(),
            )
            .finish()
    }
}

impl RedisTls {
    /// The settings for `urls`: loaded if one of them is `rediss://`
    /// (`rediss+cluster://`); none if none is, and then no TLS flag may be set.
    pub fn for_urls<'a>(
        files: &TlsFiles,
        urls: impl IntoIterator<Item = &'a str>,
    ) -> Result<Option<Self>, TlsError> {
        if urls.into_iter().any(is_tls_url) {
            Self::load(files).map(Some)
        } else if files.is_empty() {
            Ok(None)
        } else {
            Err(TlsError::Unused(files.flags()))
        }
    }

    /// Reads and checks the files (or the system's roots).
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        // The redis crate builds its rustls configurations with the process's
        // default provider: make it ring, the one this crate is built with.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match (&files.client_cert_file, &files.client_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(read_client_pair(cert, key)?),
            _ => return Err(TlsError::HalfClientPair),
        };
        let (roots, trusted, trust) = match &files.ca_file {
            Some(path) => {
                let certs = read_certificates("--redis-ca-file", path)?;
                let (roots, trusted) = root_store(&certs);
                if roots.is_empty() {
                    return Err(TlsError::Pem {
                        flag: "--redis-ca-file",
                        path: path.clone(),
                        why: "none of its certificates can be used as a trust anchor".into(),
                    });
                }
                let trust = format!("CA file {}", path.display());
                (roots, trusted, trust)
            }
            None => {
                let loaded = rustls_native_certs::load_native_certs();
                let (roots, trusted) = root_store(&loaded.certs);
                if roots.is_empty() {
                    let why = match loaded.errors.first() {
                        Some(e) => e.to_string(),
                        None => "no certificate found".into(),
                    };
                    return Err(TlsError::NoSystemRoots(why));
                }
                let trust = format!("the system's {} root certificates", roots.len());
                (roots, trusted, trust)
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots);
        let (config, client_tls) = match client {
            None => (builder.with_no_client_auth(), None),
            Some(pair) => {
                let config = builder
                    .with_client_auth_cert(pair.chain, pair.key)
                    .map_err(|e| TlsError::ClientPair {
                        cert: pair.cert_path.clone(),
                        key: pair.key_path.clone(),
                        why: e.to_string(),
                    })?;
                let client_tls = redis::ClientTlsConfig {
                    client_cert: pair.cert_pem,
                    client_key: pair.key_pem,
                };
                (config, Some(client_tls))
            }
        };
        Ok(Self {
            certificates: redis::TlsCertificates {
                client_tls,
                root_cert: Some(to_pem(&trusted).into_bytes()),
            },
            connector: TlsConnector::from(Arc::new(config)),
            trust: trust.into(),
        })
    }

    /// What is trusted, for logs.
    pub fn describe(&self) -> &str {
        &self.trust
    }

    /// Whether a client certificate is presented.
    pub fn has_client_certificate(&self) -> bool {
        self.certificates.client_tls.is_some()
    }

    /// For the redis crate's (cluster) clients.
    pub fn certificates(&self) -> redis::TlsCertificates {
        self.certificates.clone()
    }

    /// For connections made here (the cluster engine's pub/sub).
    pub fn connector(&self) -> &TlsConnector {
        &self.connector
    }
}

/// Whether a Redis URL asks for TLS.
pub fn is_tls_url(url: &str) -> bool {
    let url = url.trim_start();
    url.starts_with("rediss://") || url.starts_with("rediss+cluster://")
}

/// The redis crate's client for `url`: with these TLS settings when the URL
/// is `rediss://` (without any: the system's roots).
pub fn client(url: &str, tls: Option<&RedisTls>) -> redis::RedisResult<redis::Client> {
    match tls {
        Some(tls) if is_tls_url(url) => redis::Client::build_with_tls(url, tls.certificates()),
        _ => redis::Client::open(url),
    }
}

/// The name the server's certificate must carry: a host name or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, ServerNameError> {
    ServerName::try_from(host.to_string()).map_err(|source| ServerNameError {
        host: host.to_owned(),
        source,
    })
}

/// A host that is neither a DNS name nor an IP address.
#[derive(Debug, thiserror::Error)]
#[error("{host:?} cannot be checked against a TLS certificate: {source}")]
pub struct ServerNameError {
    host: String,
    source: rustls::pki_types::InvalidDnsNameError,
}

/// A connection error with what to do about it, when it is a TLS problem.
pub fn explain(error: impl fmt::Display) -> String {
    let text = error.to_string();
    let hint = if text.contains("UnknownIssuer") || text.contains("unknown issuer") {
        Some(
            "the Redis server's certificate is not signed by a trusted CA: give --redis-ca-file with the CA that signed it",
        )
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        Some(
            "the Redis server's certificate does not name the host in the URL: connect by a name (or IP address) the certificate lists",
        )
    } else if text.contains("invalid peer certificate") {
        Some("the Redis server's certificate is not accepted: check it and --redis-ca-file")
    } else if text.contains("CertificateRequired") || text.contains("certificate required") {
        Some(
            "the Redis server requires a client certificate: give --redis-client-cert-file and --redis-client-key-file",
        )
    } else if text.contains("InvalidContentType")
        || text.contains("corrupt message")
        || text.contains("InvalidMessage")
    {
        Some(
            "the server did not answer in TLS: is this its TLS port (tls-port), or should the URL be redis://?",
        )
    } else {
        None
    };
    match hint {
        Some(hint) => format!("{text} ({hint})"),
        None => text,
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certificates(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(flag, path)?;
    let bad = |why: String| TlsError::Pem {
        flag,
        path: path.to_path_buf(),
        why,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            "no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

struct ClientPair {
    cert_path: PathBuf,
    key_path: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

fn read_client_pair(cert: &Path, key: &Path) -> Result<ClientPair, TlsError> {
    const KEY_FLAG: &str = "--redis-client-key-file";
    let chain = read_certificates("--redis-client-cert-file", cert)?;
    let key_pem = read(KEY_FLAG, key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        flag: KEY_FLAG,
        path: key.to_path_buf(),
        why: format!("no usable private key in it (expected PEM: PKCS#8, PKCS#1 or SEC1): {e}"),
    })?;
    Ok(ClientPair {
        cert_path: cert.to_path_buf(),
        key_path: key.to_path_buf(),
        cert_pem: to_pem(&chain).into_bytes(),
        chain,
        key: private,
        key_pem,
    })
}

/// The certificates rustls accepts as trust anchors, as a store and as a list.
fn root_store(certs: &[CertificateDer<'static>]) -> (RootCertStore, Vec<CertificateDer<'static>>) {
    let mut store = RootCertStore::empty();
    let mut trusted = Vec::new();
    for cert in certs {
        if store.add(cert.clone()).is_ok() {
            trusted.push(cert.clone());
        }
    }
    (store, trusted)
}

/// Certificates as PEM text (what the redis crate takes).
fn to_pem(certs: &[CertificateDer<'_>]) -> String {
    let mut pem = String::new();
    for cert in certs {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let body = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        for line in body.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_urls_are_recognised() {
        assert!(is_tls_url("rediss://h:6380"));
        assert!(is_tls_url("rediss+cluster://a:1,b:2"));
        assert!(!is_tls_url("redis://h:6379"));
        assert!(!is_tls_url("redis+cluster://a:1"));
    }

    #[test]
    fn flags_without_a_tls_url_are_refused() {
        let files = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        let err = RedisTls::for_urls(&files, ["redis://h:6379"]).unwrap_err();
        assert!(matches!(err, TlsError::Unused(ref f) if f == "--redis-ca-file"));
        assert!(
            RedisTls::for_urls(&TlsFiles::default(), ["redis://h:6379"])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn unreadable_and_empty_files_say_which_flag() {
        let files = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        let err = RedisTls::load(&files).unwrap_err().to_string();
        assert!(err.starts_with("--redis-ca-file /nonexistent/ca.pem: cannot read it"));
        let dir = std::env::temp_dir().join(format!("sb-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let files = TlsFiles {
            ca_file: Some(empty.clone()),
            ..TlsFiles::default()
        };
        let err = RedisTls::load(&files).unwrap_err().to_string();
        assert!(err.contains("no certificate in it"), "{err}");
        let half = TlsFiles {
            client_cert_file: Some(empty),
            ..TlsFiles::default()
        };
        assert!(matches!(
            RedisTls::load(&half),
            Err(TlsError::HalfClientPair)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_failures_come_with_what_to_do() {
        assert!(explain("invalid peer certificate: UnknownIssuer").contains("--redis-ca-file"));
        assert!(
            explain("received corrupt message of type InvalidContentType").contains("TLS port")
        );
        assert_eq!(explain("connection refused"), "connection refused");
    }

    #[test]
    fn pem_round_trips() {
        let der = CertificateDer::from(vec![1u8, 2, 3, 4]);
        let pem = to_pem(std::slice::from_ref(&der));
        let back: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, vec![der]);
    }
}
