//! `GET /api/jobs/{id}[?wait=SECONDS]`, `GET /api/jobs/{id}/events` and
//! `POST /api/jobs/{id}/cancel`.
//!
//! The event stream (Server-Sent Events) sends one event per state the job
//! is seen in — `queued`, then its stage (`stt`, `memory`, `llm`, `tts`)
//! while processing, then `succeeded`, `failed` or `cancelled` — each with
//! the job JSON as data, and ends after the final one. Each sentence of the
//! reply spoken so far is an `audio` event with
//! `{"index", "text", "audio_url"}` as data, sent once, in index order, as
//! soon as it is stored and always before the final state. It follows the job change
//! notifications (Redis pub/sub on the scaled deployment, so a worker in
//! another process is heard; in-process on the embedded one) and re-reads
//! the row, which stays the truth: a state that lasts less than one re-read
//! can be folded into the next. A client that connects after the job
//! finished gets the final event at once.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use rose_shared::Rose;
use rose_shared::domain::{Job, JobId, JobStatus, Stage};
use rose_shared::events::{JobWatch, RECHECK};
use rose_shared::metrics;
use rose_shared::queue::VOICE_QUEUE;
use rose_shared::store::Cancel;
use rose_shared::view::ChunkView;
use serde_json::Value;

use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
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
        .routes(routes!(cancel))
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
    /// Spoken sentences already sent as `audio` events.
    chunks_sent: usize,
    /// Events read but not yet sent.
    ready: VecDeque<Event>,
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
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
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
            self.read(&job);
        }
    }

    /// Queues what `job` shows that was not sent yet: a new state while it
    /// runs, then its newly spoken sentences, then its final state.
    fn read(&mut self, job: &Job) {
        let state = state_of(job).filter(|state| self.last != Some(*state));
        let terminal = job.status.is_terminal();
        if let Some(state) = state
            && !terminal
        {
            self.last = Some(state);
            self.ready.push_back(state_event(state, job));
        }
        for chunk in job.chunks.iter().skip(self.chunks_sent) {
            let data = serde_json::to_string(&ChunkView::from(chunk)).unwrap_or_default();
            self.ready
                .push_back(Event::default().event("audio").data(data));
        }
        self.chunks_sent = self.chunks_sent.max(job.chunks.len());
        if terminal {
            self.ready.push_back(state_event(job.status.as_str(), job));
            self.done = true;
        }
    }
}

fn state_event(state: &'static str, job: &Job) -> Event {
    Event::default()
        .event(state)
        .data(job_json(job).to_string())
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
            JobStatus::Cancelled.as_str(),
        ];
        let event = |names: &[&str], data: &str, description: &str| {
            ObjectBuilder::new()
                .description(Some(description))
                .property(
                    "event",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some(names.to_vec())),
                )
                .required("event")
                .property(
                    "data",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .content_media_type("application/json")
                        .content_schema(Some(Ref::from_schema_name(data))),
                )
                .required("data")
        };
        OneOfBuilder::new()
            .description(Some(
                "One Server-Sent Event: a state the job was seen in with the job JSON, or \
                 a spoken sentence of the reply.",
            ))
            .item(event(
                &states,
                &JobView::name(),
                "`event` is the state the job was seen in, `data` the job JSON at that moment.",
            ))
            .item(event(
                &["audio"],
                &ChunkView::name(),
                "`event` is `audio`, `data` one spoken sentence of the reply.",
            ))
            .into()
    }
}

impl ToSchema for JobEvent {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((JobView::name().into_owned(), JobView::schema()));
        <JobView as ToSchema>::schemas(schemas);
        schemas.push((ChunkView::name().into_owned(), ChunkView::schema()));
    }
}

/// `GET /api/jobs/{id}/events`.
/// The job's states as Server-Sent Events: event name = state (`queued`,
/// `stt`, `memory`, `llm`, `tts`, `succeeded`, `failed`, `cancelled`), data
/// = the job JSON; each spoken sentence of the reply as an `audio` event
/// (`{"index", "text", "audio_url"}`, in index order, before the final
/// state); the stream ends after the final state.
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
        chunks_sent: 0,
        ready: VecDeque::new(),
        done: false,
    };
    let stream = futures::stream::unfold(follow, |mut follow| async move {
        let event = follow.next().await?;
        Some((Ok(event), follow))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// `POST /api/jobs/{id}/cancel`.
/// Stops a queued or running job: a queued job never starts; a running one
/// stops where it is, across processes, and no provider request is started
/// for it after this answer. The conversation keeps only what was heard (the
/// sentences already spoken). Answers the job, `cancelled`; repeating the
/// cancel answers the same; a job that had already ended is a 409.
#[utoipa::path(
    post,
    path = "/api/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id (a ULID)", pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")),
    responses(
        (status = 200, description = "The job, `cancelled`", body = JobView),
        (status = 400, description = "`invalid_job_id`", body = ErrorBody),
        (status = 404, description = "`job_not_found`", body = ErrorBody),
        (status = 409, description = "`job_finished`: it had already succeeded or failed", body = ErrorBody),
    )
)]
async fn cancel(State(rose): State<Rose>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id: JobId = id.parse().map_err(|_| ApiError::InvalidJobId)?;
    match rose.store.cancel_job(id).await? {
        Cancel::Cancelled(job) => {
            rose.events.publish_cancel(id).await;
            metrics::job_cancelled(VOICE_QUEUE);
            rose.queue_callback(&job).await;
            tracing::info!(job_id = %id, heard = job.chunks.len(), "job cancelled");
            Ok(Json(job_json(&job)))
        }
        Cancel::Finished(job) if job.status == JobStatus::Cancelled => Ok(Json(job_json(&job))),
        Cancel::Finished(_) => Err(ApiError::JobFinished),
        Cancel::Missing => Err(ApiError::JobNotFound),
    }
}
