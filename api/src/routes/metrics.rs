//! `GET /metrics`: Prometheus text exposition of this process's metrics
//! (see `rose_shared::metrics` for every name). On `rose serve` the worker
//! runs in the same process, so its figures are here too.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use rose_shared::Rose;

/// The metrics route.
pub fn router() -> Router<Rose> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(rose): State<Rose>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        rose_shared::metrics::scrape(&rose).await,
    )
}
