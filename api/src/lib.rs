//! The HTTP api: takes voice uploads, writes and queues jobs, serves their
//! status and audio, and reports health.
//!
//! [`run`] serves on a listener until shutdown; `rose serve` and `rose api`
//! call it, and tests call it on port 0.

pub mod error;
pub mod middleware;
pub mod routes;
pub mod serve;
pub use rose_shared::view;

use axum::Router;
use rose_shared::Rose;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// The `/api` routes and the OpenAPI document describing exactly them.
pub fn api_routes() -> (Router<Rose>, OpenApi) {
    let (routes, mut doc) = OpenApiRouter::with_openapi(routes::openapi::base())
        .merge(routes::session::router())
        .merge(routes::me::router())
        .merge(routes::voice::router())
        .merge(routes::jobs::router())
        .merge(routes::audio::router())
        .merge(routes::health::router())
        .merge(routes::resources::router())
        .merge(routes::admin::router())
        .split_for_parts();
    // What the handlers' annotations cannot say, said by the code that enforces it.
    routes::session::document(&mut doc);
    routes::voice::document(&mut doc);
    middleware::document_rate_limit(&mut doc);
    (routes, doc)
}

/// Every route, with request ids, request logs, a time bound, CORS for
/// `ALLOWED_ORIGINS` and security headers on every response; a path that
/// matches no route, or a method its route does not take, is answered with
/// the error JSON (`not_found`, `method_not_allowed` with `Allow`).
pub fn router(rose: Rose) -> Router {
    let (api, doc) = api_routes();
    let cors = middleware::cors(&rose.config.allowed_origins);
    let timeout = rose.config.request_timeout;
    let routes = api
        .merge(routes::openapi::router(doc))
        .merge(routes::metrics::router())
        .merge(routes::web::router())
        // After every route is in: it is set on the routes present.
        .method_not_allowed_fallback(|| async { error::ApiError::MethodNotAllowed })
        .fallback(|| async { error::ApiError::RouteNotFound })
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            rose.clone(),
            middleware::rate_limit,
        ))
        .layer(cors);
    middleware::security_headers(routes)
        .layer(axum::middleware::from_fn(middleware::request_context))
        .with_state(rose)
}

/// A session counts as active when it was used in the last 15 minutes.
const ACTIVE_WINDOW_MS: i64 = 15 * 60 * 1000;

/// Logs `active_sessions` (and sets its gauge) once a minute.
async fn report_active_sessions(rose: Rose, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let since = rose_shared::domain::now_ms() - ACTIVE_WINDOW_MS;
        let sql = "SELECT COUNT(*) FROM sessions WHERE last_active_at >= $1";
        let counted: Result<i64, sqlx::Error> = match &rose.db {
            rose_shared::store::Database::Sqlite(pool) => {
                sqlx::query_scalar(sql).bind(since).fetch_one(pool).await
            }
            rose_shared::store::Database::Postgres(pool) => {
                sqlx::query_scalar(sql).bind(since).fetch_one(pool).await
            }
        };
        match counted {
            Ok(n) => {
                rose_shared::metrics::active_sessions(n);
                tracing::info!(
                    event = "active_sessions",
                    active_sessions = n,
                    "active_sessions"
                );
            }
            Err(e) => tracing::warn!(error = %e, "could not count active sessions"),
        }
    }
}

/// Serves only `GET /metrics` on `listener` until `shutdown`: the
/// `ROSE_METRICS_PORT` listener of workers and schedulers.
///
/// # Errors
/// When the listener fails.
pub async fn serve_metrics(
    rose: Rose,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "metrics listening");
    let bound = rose.config.header_read_timeout;
    let app = routes::metrics::router().with_state(rose);
    serve::serve(listener, app, bound, shutdown).await;
    Ok(())
}

/// Serves the api on `listener` until `shutdown` is cancelled, then drains
/// in-flight requests (see [`serve::serve`] for the connections' bounds).
///
/// # Errors
/// When the listener fails.
pub async fn run(
    rose: Rose,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "api listening");
    tokio::spawn(report_active_sessions(rose.clone(), shutdown.clone()));
    let bound = rose.config.header_read_timeout;
    serve::serve(listener, router(rose), bound, shutdown).await;
    Ok(())
}
