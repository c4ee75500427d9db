//! `GET /api/jobs/{id}[?wait=SECONDS]`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use rose_shared::Rose;
use rose_shared::domain::JobId;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::routes::parse_wait;
use crate::view::job_json;

/// Job routes.
pub fn router() -> Router<Rose> {
    Router::new().route("/api/jobs/{id}", get(show))
}

/// The job; with `?wait=`, answers as soon as it is finished or the wait ends.
async fn show(
    State(rose): State<Rose>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let wait = parse_wait(&query)?;
    let id: JobId = id.parse().map_err(|_| ApiError::JobNotFound)?;
    let job = match wait {
        Some(wait) => {
            rose.events
                .wait_for_terminal(rose.store.as_ref(), id, wait)
                .await?
        }
        None => rose.store.get_job(id).await?,
    };
    job.map(|j| Json(job_json(&j))).ok_or(ApiError::JobNotFound)
}
