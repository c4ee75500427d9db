//! The web client at `/`: nine static files under `api/web/`, compiled
//! into the binary so `rose serve` needs nothing beside it. They are small
//! and change only with the binary, so they are sent whole, revalidated by
//! an `ETag` derived from the build's contents.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rose_shared::Rose;

const INDEX: &str = include_str!("../../web/index.html");
const SCRIPT: &str = include_str!("../../web/app.js");
const STYLE: &str = include_str!("../../web/app.css");
const SAFETY: &str = include_str!("../../web/safety.js");
const IDENTITY: &str = include_str!("../../web/identity.js");
const JOBS: &str = include_str!("../../web/jobs.js");
const PLAYER: &str = include_str!("../../web/player.js");
const LISTEN: &str = include_str!("../../web/listen.js");
const VAD: &str = include_str!("../../web/vad.js");

/// The page's scripts by path.
const SCRIPTS: [(&str, &str); 7] = [
    ("/app.js", SCRIPT),
    ("/safety.js", SAFETY),
    ("/identity.js", IDENTITY),
    ("/jobs.js", JOBS),
    ("/player.js", PLAYER),
    ("/listen.js", LISTEN),
    ("/vad.js", VAD),
];

/// What the page may load: only itself, plus recorded audio as blobs. Web
/// Audio needs nothing more: sentences are fetched from `'self'`
/// (`connect-src`) and decoded in script, the microphone is a stream.
const CSP: &str = "default-src 'self'; media-src 'self' blob:; img-src 'self' data:; \
                   object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// Web client routes.
pub fn router() -> Router<Rose> {
    let page = Router::new()
        .route(
            "/",
            get(|h: HeaderMap| async move { asset(&h, INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.css",
            get(|h: HeaderMap| async move { asset(&h, STYLE, "text/css; charset=utf-8") }),
        );
    SCRIPTS.into_iter().fold(page, |router, (path, body)| {
        router.route(
            path,
            get(move |h: HeaderMap| async move {
                asset(&h, body, "text/javascript; charset=utf-8")
            }),
        )
    })
}

/// A weak validator from the file's contents (FNV-1a; no secrecy needed).
fn etag(body: &str) -> String {
    let hash = body.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("W/\"{hash:016x}\"")
}

fn asset(request: &HeaderMap, body: &'static str, content_type: &'static str) -> Response {
    let tag = etag(body);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&tag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_follow_the_contents() {
        assert_eq!(etag(INDEX), etag(INDEX));
        assert_ne!(etag(INDEX), etag(SCRIPT));
    }

    #[test]
    fn the_policy_never_allows_eval() {
        assert!(!CSP.contains("unsafe-eval") && !CSP.contains("unsafe-inline"));
    }

    #[test]
    fn a_matching_validator_gets_304() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&etag(STYLE)).expect("ascii"),
        );
        assert_eq!(
            asset(&h, STYLE, "text/css").status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            asset(&HeaderMap::new(), STYLE, "text/css").status(),
            StatusCode::OK
        );
    }
}
