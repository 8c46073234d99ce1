//! The dashboard page: static files embedded in the binary, served at `/` and
//! `/assets/…` by `gateway` and `standalone`, and `GET /api/v1/whoami`, which
//! tells the page whether it needs a token and what that token may do.
//!
//! The page (`assets/web/`) speaks the native protocol on `/ws` through the
//! client library of `clients/js/` (served as `assets/switchboard.js`); its charts
//! come from Apache ECharts, vendored from the npm registry with its licences
//! (`assets/vendor/`). No build step, no CDN. Every page response carries a
//! Content-Security-Policy that allows scripts, styles and connections only
//! from the gateway itself, and no inline script or style.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::json;
use sha1::{Digest, Sha1};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::gateway::Gateway;
use crate::gateway::http::json_response;

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $file)),
        }
    };
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

/// Entity tags of the embedded files, computed once.
fn etag(asset: &Asset) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .chain(std::iter::once(&INDEX))
            .map(|a| {
                let digest = Sha1::digest(a.body);
                let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    });
    let index = ASSETS
        .iter()
        .position(|a| std::ptr::eq(a, asset))
        .unwrap_or(ASSETS.len());
    tags.get(index).map(String::as_str).unwrap_or("\"0\"")
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

fn serve(asset: &'static Asset, host: Option<String>, if_none_match: Option<String>) -> Response {
    let tag = etag(asset);
    let fresh = if_none_match
        .as_deref()
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut response = if fresh {
        let mut r = http::Response::new(Bytes::new());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = http::Response::new(Bytes::from_static(asset.body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        r
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_static(tag));
    // Revalidated on every load (a 304 when unchanged): an upgraded gateway
    // never serves a page that mixes old and new files.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(csp) = HeaderValue::from_str(&content_security_policy(host.as_deref())) {
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
pub fn routes(gw: Arc<Gateway>) -> BoxedFilter<(Response,)> {
    let host = warp::header::optional::<String>("host");
    let inm = warp::header::optional::<String>("if-none-match");
    let get_or_head = || warp::get().or(warp::head()).unify();
    let index = warp::path::end()
        .and(get_or_head())
        .and(host)
        .and(inm)
        .map(|host, inm| serve(&INDEX, host, inm));
    let assets = warp::path("assets")
        .and(warp::path::tail())
        .and(get_or_head())
        .and(host)
        .and(inm)
        .and_then(
            |tail: warp::path::Tail, host: Option<String>, inm: Option<String>| async move {
                match ASSETS.iter().find(|a| a.path == tail.as_str()) {
                    Some(asset) => Ok(serve(asset, host, inm)),
                    None => Err(warp::reject::not_found()),
                }
            },
        );
    let whoami = warp::path!("api" / "v1" / "whoami")
        .and(warp::get())
        .and(warp::any().map(move || gw.clone()))
        .and(warp::header::headers_cloned())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .map(|gw: Arc<Gateway>, headers: HeaderMap, query: String| whoami(&gw, &headers, &query));
    index.or(assets).unify().or(whoami).unify().boxed()
}

/// Who the caller is: `{"auth", "user", "admin", "expires_at", "replica"}`,
/// or the 401 a refused token gets (so the page can say why).
fn whoami(gw: &Gateway, headers: &HeaderMap, query: &str) -> Response {
    let answer = match gw.authorize_api(headers, query) {
        Ok(identity) => Ok(json!({
            "auth": gw.auth.is_some(),
            "user": identity.user,
            "admin": identity.is_admin(),
            "expires_at": identity.expires_at,
            "replica": gw.config.replica_id,
        })),
        // No token, and the gateway lets clients without one read some
        // channels: the page may show those without asking for a token.
        Err(e) if e.code == "missing_token" && gw.config.security.anonymous.is_some() => {
            let patterns = gw
                .config
                .security
                .anonymous
                .as_ref()
                .map(|a| a.patterns().to_vec())
                .unwrap_or_default();
            Ok(json!({
                "auth": true,
                "user": null,
                "admin": false,
                "anonymous": true,
                "channels": patterns,
                "replica": gw.config.replica_id,
            }))
        }
        Err(e) => Err(e),
    };
    match answer {
        Ok(body) => {
            let mut response = json_response(StatusCode::OK, body);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_embedded_with_a_distinct_tag() {
        let mut tags: Vec<_> = ASSETS.iter().map(etag).collect();
        tags.push(etag(&INDEX));
        assert!(ASSETS.iter().all(|a| !a.body.is_empty()));
        let n = tags.len();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), n);
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
