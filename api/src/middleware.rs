//! Request ids and the `request` log line; security headers; CORS.
//!
//! Every request carries a `request_id`: the incoming `X-Request-ID` when it
//! is a sane token, else a fresh ULID. It is echoed back, recorded on the
//! request span, and handed to jobs so worker logs join the api's.

use std::time::Instant;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use rose_shared::Rose;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tracing::Instrument;

use crate::error::ApiError;

/// Headers every response carries unless the route set its own (the web
/// client sets a CSP that lets it load itself and play recorded audio).
const SECURITY_HEADERS: [(HeaderName, &str); 5] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (
        HeaderName::from_static("permissions-policy"),
        "microphone=(self), camera=(), geolocation=()",
    ),
];

/// Adds [`SECURITY_HEADERS`] to every response of `router`.
pub fn security_headers<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    SECURITY_HEADERS
        .into_iter()
        .fold(router, |router, (name, value)| {
            router.layer(SetResponseHeaderLayer::if_not_present(
                name,
                HeaderValue::from_static(value),
            ))
        })
}

/// CORS for the configured origins only; with none, browsers on other
/// origins get no CORS headers and cannot read answers.
pub fn cors(origins: &[String]) -> CorsLayer {
    let allowed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed))
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static(REQUEST_ID_HEADER),
            HeaderName::from_static(crate::routes::me::PERSON_KEY_HEADER),
        ])
        .expose_headers([
            HeaderName::from_static(REQUEST_ID_HEADER),
            header::RETRY_AFTER,
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// The header carrying the request id both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request id of the current request.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The client's address: the peer, or the first `X-Forwarded-For` entry
/// when Rose is told to trust it.
fn client_address(request: &Request, trust_forwarded: bool) -> String {
    if trust_forwarded
        && let Some(first) = request
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| v.parse::<std::net::IpAddr>().is_ok())
    {
        return first.to_owned();
    }
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string())
}

/// Per-client request limits: voice jobs and other requests have their own
/// budgets per minute; health checks, metrics, the crisis resources (someone
/// looking for help is never turned away) and CORS preflights are free.
pub async fn rate_limit(State(rose): State<Rose>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if matches!(path, "/api/health" | "/metrics" | "/api/resources")
        || request.method() == Method::OPTIONS
    {
        return next.run(request).await;
    }
    let voice = request.method() == Method::POST && path == "/api/voice/process";
    let (class, limit) = if voice {
        ("voice", rose.config.rate_limit_voice)
    } else {
        ("other", rose.config.rate_limit_other)
    };
    let client = client_address(&request, rose.config.trust_forwarded_for);
    match rose
        .requests
        .check(&format!("{client}:{class}"), limit, RATE_WINDOW)
        .await
    {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            tracing::warn!(client = %client, class, wait_ms = wait.as_millis() as u64, "request rate limited");
            ApiError::RateLimited(wait).into_response()
        }
    }
}

/// The window the per-minute limits count over.
const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Assigns the request id, runs the request in its span, logs the outcome.
pub async fn request_context(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map_or_else(|| ulid::Ulid::generate().to_string(), str::to_owned);
    request.extensions_mut().insert(RequestId(id.clone()));
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let span = tracing::info_span!("request", request_id = %id);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    rose_shared::metrics::http_request(method.as_str(), status, started.elapsed());
    span.in_scope(|| {
        tracing::info!(
            event = "request",
            request_id = %id,
            method = %method,
            path = %path,
            status,
            duration_ms = started.elapsed().as_millis() as u64,
            "request"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// Adds the rate limit's answer to every operation of `doc` it applies to
/// (all but `GET /api/health` and `GET /api/resources`): 429 `rate_limited`
/// with `Retry-After`.
pub fn document_rate_limit(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let answer = ResponseBuilder::new()
        .description(
            "`rate_limited`: this client address spent its request budget; `Retry-After` says \
             when to come back",
        )
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build();
    for (path, item) in &mut doc.paths.paths {
        if path == "/api/health" || path == "/api/resources" {
            continue;
        }
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            operation
                .responses
                .responses
                .entry("429".to_owned())
                .or_insert_with(|| RefOr::T(answer.clone()));
        }
    }
}
