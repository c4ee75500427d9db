//! `GET /api/jobs/{id}[?wait=SECONDS]` and `GET /api/jobs/{id}/events`.
//!
//! The event stream (Server-Sent Events) sends one event per state the job
//! is seen in — `queued`, then its stage (`stt`, `memory`, `llm`, `tts`)
//! while processing, then `succeeded` or `failed` — each with the job JSON as
//! data, and ends after the final one. It follows the job change
//! notifications (Redis pub/sub on the scaled deployment, so a worker in
//! another process is heard; in-process on the embedded one) and re-reads
//! the row, which stays the truth: a state that lasts less than one re-read
//! can be folded into the next. A client that connects after the job
//! finished gets the final event at once.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use rose_shared::Rose;
use rose_shared::domain::{Job, JobId, JobStatus, Stage};
use rose_shared::events::{JobWatch, RECHECK};
use serde_json::Value;

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::routes::parse_wait;
use crate::view::{JobView, job_json};

/// Job routes.
pub fn router() -> OpenApiRouter<Rose> {
    OpenApiRouter::new()
        .routes(routes!(show))
        .routes(routes!(events))
}

/// The job; with `?wait=`, answers as soon as it is finished or the wait ends.
#[utoipa::path(
    get,
    path = "/api/jobs/{id}",
    tag = "jobs",
    params(
        ("id" = String, Path, description = "Job id"),
        ("wait" = Option<f64>, Query, minimum = 0, maximum = 60, description = "Seconds (0-60) to wait for the job to finish"),
    ),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, description = "`invalid_wait`", body = ErrorBody),
        (status = 404, description = "`job_not_found`", body = ErrorBody),
    )
)]
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

/// The event name for the state a job is in; `None` for the moment
/// between a worker taking the job and its first stage (no event of its own).
fn state_of(job: &Job) -> Option<&'static str> {
    match (job.status, job.stage) {
        (JobStatus::Processing, Some(stage)) => Some(stage.as_str()),
        (JobStatus::Processing, None) => None,
        (status, _) => Some(status.as_str()),
    }
}

struct Follow {
    rose: Rose,
    id: JobId,
    watch: JobWatch,
    first: Option<Job>,
    last: Option<&'static str>,
    done: bool,
}

impl Follow {
    /// Waits for a notification about this job, or the periodic re-read.
    async fn changed(&mut self) {
        let wake = tokio::time::Instant::now() + RECHECK;
        self.watch.changed(false, wake).await;
    }

    /// The next event, or `None` once the final one was sent (or the job went).
    async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        loop {
            let job = match self.first.take() {
                Some(job) => job,
                None => {
                    self.changed().await;
                    match self.rose.store.get_job(self.id).await {
                        Ok(Some(job)) => job,
                        Ok(None) => return None,
                        Err(e) => {
                            tracing::warn!(job_id = %self.id, error = %e, "event stream cannot read its job");
                            continue;
                        }
                    }
                }
            };
            let Some(state) = state_of(&job) else {
                continue;
            };
            if self.last == Some(state) {
                continue;
            }
            self.last = Some(state);
            self.done = job.status.is_terminal();
            return Some(
                Event::default()
                    .event(state)
                    .data(job_json(&job).to_string()),
            );
        }
    }
}

/// One event of the stream, as the document describes it (OpenAPI 3.1: the
/// schema of an event stream is the schema of each event).
struct JobEvent;

impl PartialSchema for JobEvent {
    fn schema() -> RefOr<Schema> {
        let states = [
            JobStatus::Queued.as_str(),
            Stage::Stt.as_str(),
            Stage::Memory.as_str(),
            Stage::Llm.as_str(),
            Stage::Tts.as_str(),
            JobStatus::Succeeded.as_str(),
            JobStatus::Failed.as_str(),
        ];
        ObjectBuilder::new()
            .description(Some(
                "One Server-Sent Event: `event` is the state the job was seen in, `data` the \
                 job JSON at that moment.",
            ))
            .property(
                "event",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(states)),
            )
            .required("event")
            .property(
                "data",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .content_media_type("application/json")
                    .content_schema(Some(Ref::from_schema_name(JobView::name()))),
            )
            .required("data")
            .into()
    }
}

impl ToSchema for JobEvent {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((JobView::name().into_owned(), JobView::schema()));
        <JobView as ToSchema>::schemas(schemas);
    }
}

/// `GET /api/jobs/{id}/events`.
/// The job's states as Server-Sent Events: event name = state (`queued`,
/// `stt`, `memory`, `llm`, `tts`, `succeeded`, `failed`), data = the job
/// JSON; the stream ends after the final state.
#[utoipa::path(
    get,
    path = "/api/jobs/{id}/events",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "An event stream of the job's states", content_type = "text/event-stream", body = JobEvent),
        (status = 404, description = "`job_not_found`", body = ErrorBody),
    )
)]
async fn events(
    State(rose): State<Rose>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let id: JobId = id.parse().map_err(|_| ApiError::JobNotFound)?;
    // Subscribe before the first read so no change falls in between.
    let watch = rose.events.watch(id);
    let first = rose.store.get_job(id).await?.ok_or(ApiError::JobNotFound)?;
    let follow = Follow {
        rose,
        id,
        watch,
        first: Some(first),
        last: None,
        done: false,
    };
    let stream = futures::stream::unfold(follow, |mut follow| async move {
        let event = follow.next().await?;
        Some((Ok(event), follow))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
