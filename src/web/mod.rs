//! The dashboard page: static files embedded in the binary, served at `/` and
//! `/assets/…` by `gateway` and `standalone` (`GET /api/v1/whoami`, which tells
//! the page whether it needs a token, is the gateway's: `gateway/http.rs`).
//!
//! The page (`assets/web/`) speaks the native protocol on `/ws` through the
//! client library of `clients/js/` (served as `assets/switchboard.js`); its charts
//! come from Apache ECharts, vendored from the npm registry with its licences
//! (`assets/vendor/`). No CDN, and no build step for the page itself: `build.rs`
//! only compresses each file with gzip and brotli, and both variants are
//! embedded beside it; a response carries the smallest one the request's
//! `Accept-Encoding` takes (`Vary: Accept-Encoding`, an ETag per encoding).
//! Every page response carries a Content-Security-Policy that allows scripts,
//! styles and connections only from the gateway itself, and no inline script or
//! style.

use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use sha1::{Digest, Sha1};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

/// One embedded file, and its compressed forms (empty when compressing did
/// not make it smaller).
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    gzip: &'static [u8],
    brotli: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $file)),
            gzip: include_bytes!(concat!(env!("OUT_DIR"), "/assets/", $file, ".gz")),
            brotli: include_bytes!(concat!(env!("OUT_DIR"), "/assets/", $file, ".br")),
        }
    };
}

/// How a response body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Brotli,
}

impl Encoding {
    /// Order of the ETags computed for each file.
    const ALL: [Encoding; 3] = [Self::Identity, Self::Gzip, Self::Brotli];

    fn token(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Gzip => "gzip",
            Self::Brotli => "br",
        }
    }

    /// The ETag suffix: the same file's encodings are different entities.
    fn tag_suffix(self) -> &'static str {
        match self {
            Self::Identity => "",
            Self::Gzip => "-gz",
            Self::Brotli => "-br",
        }
    }
}

impl Asset {
    fn encoded(&self, encoding: Encoding) -> &'static [u8] {
        match encoding {
            Encoding::Identity => self.body,
            Encoding::Gzip => self.gzip,
            Encoding::Brotli => self.brotli,
        }
    }
}

/// The encoding to send: the coding the request's `Accept-Encoding` prefers
/// (highest `q`, brotli before gzip on a tie) among those this file has, or
/// the file as it is. A coding given `q=0`, or absent without a `*`, is not
/// acceptable (RFC 9110, 12.5.3).
fn negotiate(accept: Option<&str>, asset: &Asset) -> Encoding {
    let Some(accept) = accept else {
        return Encoding::Identity;
    };
    let weight = |name: &str| -> f32 {
        let mut star = None;
        for part in accept.split(',') {
            let mut fields = part.split(';');
            let coding = fields.next().unwrap_or("").trim();
            let q = fields
                .find_map(|f| f.trim().strip_prefix("q="))
                .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok())
                .unwrap_or(0.0);
            if coding.eq_ignore_ascii_case(name)
                || (name == "gzip" && coding.eq_ignore_ascii_case("x-gzip"))
            {
                return q;
            }
            if coding == "*" {
                star = Some(q);
            }
        }
        star.unwrap_or(0.0)
    };
    let brotli = if asset.brotli.is_empty() {
        0.0
    } else {
        weight("br")
    };
    let gzip = if asset.gzip.is_empty() {
        0.0
    } else {
        weight("gzip")
    };
    if brotli > 0.0 && brotli >= gzip {
        Encoding::Brotli
    } else if gzip > 0.0 {
        Encoding::Gzip
    } else {
        Encoding::Identity
    }
}

const JS: &str = "text/javascript; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Every file the page uses, by URL path under `/assets/`.
static ASSETS: &[Asset] = &[
    asset!("app.css", "web/app.css", "text/css; charset=utf-8"),
    asset!("app.js", "web/app.js", JS),
    asset!("connection.js", "web/connection.js", JS),
    // The client library of clients/js, which connection.js builds on.
    Asset {
        path: "switchboard.js",
        content_type: JS,
        body: include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/clients/js/switchboard.js"
        )),
        gzip: include_bytes!(concat!(
            env!("OUT_DIR"),
            "/assets/clients/switchboard.js.gz"
        )),
        brotli: include_bytes!(concat!(
            env!("OUT_DIR"),
            "/assets/clients/switchboard.js.br"
        )),
    },
    asset!("panels.js", "web/panels.js", JS),
    asset!("series.js", "web/series.js", JS),
    asset!("favicon.svg", "web/favicon.svg", "image/svg+xml"),
    asset!(
        "vendor/echarts/echarts.min.js",
        "vendor/echarts/echarts.min.js",
        JS
    ),
    asset!("vendor/echarts/LICENSE", "vendor/echarts/LICENSE", TEXT),
    asset!("vendor/echarts/NOTICE", "vendor/echarts/NOTICE", TEXT),
    asset!(
        "vendor/echarts/LICENSE-d3",
        "vendor/echarts/LICENSE-d3",
        TEXT
    ),
    asset!(
        "vendor/echarts/LICENSE-zrender",
        "vendor/echarts/LICENSE-zrender",
        TEXT
    ),
];

static INDEX: Asset = asset!("", "web/index.html", "text/html; charset=utf-8");

/// Entity tags of the embedded files, one per encoding, computed once: the
/// file's digest, with `-gz` or `-br` for its compressed forms.
fn etag(asset: &Asset, encoding: Encoding) -> &'static str {
    static TAGS: OnceLock<Vec<[String; 3]>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .chain(std::iter::once(&INDEX))
            .map(|a| {
                let digest = Sha1::digest(a.body);
                let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
                Encoding::ALL.map(|e| format!("\"{hex}{}\"", e.tag_suffix()))
            })
            .collect()
    });
    let index = ASSETS
        .iter()
        .position(|a| std::ptr::eq(a, asset))
        .unwrap_or(ASSETS.len());
    let slot = Encoding::ALL
        .iter()
        .position(|e| *e == encoding)
        .unwrap_or(0);
    tags.get(index).map(|t| t[slot].as_str()).unwrap_or("\"0\"")
}

/// The Content-Security-Policy of the page. `host` (the request's `Host`,
/// when it is a plain host name or address) is added to `connect-src` as
/// `ws://` and `wss://` for browsers whose `'self'` does not cover WebSockets.
pub fn content_security_policy(host: Option<&str>) -> String {
    let sockets = host
        .filter(|h| is_plain_host(h))
        .map(|h| format!(" ws://{h} wss://{h}"))
        .unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'{sockets}; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'; object-src 'none'"
    )
}

/// A `Host` header that cannot change the meaning of the policy.
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// What a request for a file says about itself.
struct Request {
    host: Option<String>,
    if_none_match: Option<String>,
    accept_encoding: Option<String>,
}

fn serve(asset: &'static Asset, request: Request) -> Response {
    let encoding = negotiate(request.accept_encoding.as_deref(), asset);
    let tag = etag(asset, encoding);
    let fresh = request.if_none_match.as_deref().is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().trim_start_matches("W/") == tag)
    });
    let mut response = if fresh {
        let mut r = http::Response::new(Bytes::new());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = http::Response::new(Bytes::from_static(asset.encoded(encoding)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        if encoding != Encoding::Identity {
            r.headers_mut().insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(encoding.token()),
            );
        }
        r
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_static(tag));
    // Caches keep one copy per encoding.
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    // Revalidated on every load (a 304 when unchanged): an upgraded gateway
    // never serves a page that mixes old and new files.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(csp) = HeaderValue::from_str(&content_security_policy(request.host.as_deref())) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response.into_response()
}

/// `/`, `/assets/…` and `/api/v1/whoami`.
/// `/` and `/assets/…`: the page and its files.
pub fn routes() -> BoxedFilter<(Response,)> {
    let request = warp::header::optional::<String>("host")
        .and(warp::header::optional::<String>("if-none-match"))
        .and(warp::header::optional::<String>("accept-encoding"))
        .map(|host, if_none_match, accept_encoding| Request {
            host,
            if_none_match,
            accept_encoding,
        });
    let get_or_head = || warp::get().or(warp::head()).unify();
    let index = warp::path::end()
        .and(get_or_head())
        .and(request)
        .map(|request| serve(&INDEX, request));
    let assets = warp::path("assets")
        .and(warp::path::tail())
        .and(get_or_head())
        .and(request)
        .and_then(|tail: warp::path::Tail, request: Request| async move {
            match ASSETS.iter().find(|a| a.path == tail.as_str()) {
                Some(asset) => Ok(serve(asset, request)),
                None => Err(warp::reject::not_found()),
            }
        });
    index.or(assets).unify().boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_embedded_with_a_distinct_tag_per_encoding() {
        let mut tags: Vec<_> = ASSETS
            .iter()
            .chain(std::iter::once(&INDEX))
            .flat_map(|a| Encoding::ALL.map(|e| etag(a, e)))
            .collect();
        assert!(ASSETS.iter().all(|a| !a.body.is_empty()));
        let n = tags.len();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), n);
    }

    #[test]
    fn the_large_files_are_embedded_compressed() {
        let echarts = ASSETS
            .iter()
            .find(|a| a.path == "vendor/echarts/echarts.min.js")
            .unwrap();
        assert!(echarts.brotli.len() * 3 < echarts.body.len());
        assert!(echarts.gzip.len() * 2 < echarts.body.len());
        assert!(echarts.brotli.len() < echarts.gzip.len());
        for a in ASSETS.iter().chain(std::iter::once(&INDEX)) {
            for variant in [a.gzip, a.brotli] {
                assert!(
                    variant.is_empty() || variant.len() < a.body.len(),
                    "{}",
                    a.path
                );
            }
        }
    }

    #[test]
    fn accept_encoding_picks_the_best_acceptable_coding() {
        let echarts = ASSETS
            .iter()
            .find(|a| a.path == "vendor/echarts/echarts.min.js")
            .unwrap();
        let pick = |accept: Option<&str>| negotiate(accept, echarts);
        assert_eq!(pick(None), Encoding::Identity);
        assert_eq!(pick(Some("")), Encoding::Identity);
        assert_eq!(pick(Some("gzip, deflate, br, zstd")), Encoding::Brotli);
        assert_eq!(pick(Some("gzip")), Encoding::Gzip);
        assert_eq!(pick(Some("x-gzip")), Encoding::Gzip);
        assert_eq!(pick(Some("br;q=0.5, gzip")), Encoding::Gzip);
        assert_eq!(pick(Some("br;q=0, gzip;q=0")), Encoding::Identity);
        assert_eq!(pick(Some("*")), Encoding::Brotli);
        assert_eq!(pick(Some("*;q=0.2, br;q=0")), Encoding::Gzip);
        assert_eq!(pick(Some("identity")), Encoding::Identity);
        assert_eq!(pick(Some("GZIP;Q=1")), Encoding::Gzip);
        // A file without a smaller compressed form is sent as it is.
        let plain = Asset {
            path: "x",
            content_type: TEXT,
            body: b"x",
            gzip: b"",
            brotli: b"",
        };
        assert_eq!(negotiate(Some("br, gzip"), &plain), Encoding::Identity);
    }

    #[test]
    fn the_policy_forbids_inline_code_and_foreign_origins() {
        let csp = content_security_policy(Some("dash.example.com:8080"));
        assert!(csp.contains("script-src 'self';"));
        assert!(!csp.contains("unsafe"));
        assert!(csp.contains(
            "connect-src 'self' ws://dash.example.com:8080 wss://dash.example.com:8080;"
        ));
        let hostile = content_security_policy(Some("x; script-src *"));
        assert!(hostile.contains("connect-src 'self';"), "{hostile}");
    }

    #[test]
    fn the_page_loads_only_embedded_files() {
        let html = std::str::from_utf8(INDEX.body).unwrap();
        for reference in html
            .split("src=\"")
            .skip(1)
            .chain(html.split("href=\"").skip(1))
        {
            let target = reference.split('"').next().unwrap();
            let path = target.strip_prefix("assets/").unwrap_or_else(|| {
                panic!("index.html refers to {target}, which is not under assets/")
            });
            assert!(
                ASSETS.iter().any(|a| a.path == path),
                "index.html refers to {target}, which is not embedded"
            );
        }
        assert!(!html.contains("<script>") && !html.contains("style="));
    }
}
