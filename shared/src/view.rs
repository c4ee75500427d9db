//! The JSON shapes clients read, as types: the api serialises these and the
//! OpenAPI document at `/api/openapi.json` is derived from the same types, so
//! the two cannot drift apart.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::domain::{CallbackState, Job, JobError, JobStatus, ReplyChunk, rfc3339, spoken_text};
use crate::safety::{CrisisResource, Safety};

/// Where a client polls a job.
#[must_use]
pub fn status_url(job: &Job) -> String {
    format!("/api/jobs/{}", job.id)
}

/// Where a client streams a job's events.
#[must_use]
pub fn events_url(job: &Job) -> String {
    format!("/api/jobs/{}/events", job.id)
}

/// A voice job as clients see it (`GET /api/jobs/{id}`, SSE data,
/// callbacks, finished long-polls). URLs are relative to the api.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Job)]
pub struct JobView {
    /// ULID.
    pub job_id: String,
    pub session_id: String,
    /// `queued`, `processing`, `succeeded`, `failed` or `cancelled`.
    #[schema(example = "succeeded")]
    pub status: &'static str,
    /// The stage running or last run: `stt`, `memory`, `llm`, `tts`.
    pub stage: Option<&'static str>,
    pub attempts: i64,
    /// `null` until the job succeeded or spoke its first sentence (then
    /// `chunks` grows while it runs); on a cancelled job, what was heard.
    pub result: Option<JobResult>,
    /// Set when the job failed.
    pub error: Option<JobError>,
    /// Milliseconds per part that ran: `queue_wait`, `stt`, `memory`, `llm`,
    /// `tts`, `total`; and from the job's creation to the reply's
    /// `first_token` and `first_audio` (its first spoken sentence).
    pub timings_ms: BTreeMap<String, i64>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    pub status_url: String,
    pub events_url: String,
    /// Callback delivery, when the job was submitted with `callback_url`.
    pub callback: Option<CallbackState>,
    /// `"crisis"` when the person spoke of ending their life or harming
    /// themselves (the reply then carries `result.resource`); `null` for an
    /// ordinary turn, and until the words are known.
    pub safety: Option<&'static str>,
}

/// What Rose heard and said.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobResult {
    /// The person's words (typed words as they were sent).
    pub transcript: Option<String>,
    /// Rose's reply (on a cancelled job, the sentences that were spoken).
    pub text: Option<String>,
    /// Rose's spoken reply as one file, ready when the job ends; `null`
    /// when `tts` is degraded.
    pub audio_url: Option<String>,
    /// The reply's sentences, spoken one by one, in order: growing while the
    /// job runs (each is announced as an `audio` event).
    pub chunks: Vec<ChunkView>,
    /// Stages that fell back: `tts` (text only), `memory` (no recall).
    pub degraded: Vec<String>,
    /// On a turn marked `safety: "crisis"`, the human resource the reply
    /// ends with (`ROSE_CRISIS_RESOURCES`); `null` otherwise.
    pub resource: Option<CrisisResource>,
}

/// One spoken sentence of a reply.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Chunk)]
pub struct ChunkView {
    /// 0 for the first sentence.
    pub index: u32,
    pub text: String,
    /// Its speech; `null` when speech failed for it (its text is delivered).
    pub audio_url: Option<String>,
}

impl From<&ReplyChunk> for ChunkView {
    fn from(chunk: &ReplyChunk) -> Self {
        Self {
            index: chunk.index,
            text: chunk.text.clone(),
            audio_url: chunk.audio_id.map(|id| format!("/api/audio/{id}")),
        }
    }
}

/// The answer to an accepted upload (202).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Accepted)]
pub struct AcceptedView {
    pub job_id: String,
    /// `queued`.
    pub status: &'static str,
    pub status_url: String,
    pub events_url: String,
}

impl From<&Job> for JobView {
    fn from(job: &Job) -> Self {
        let shown = job.status == JobStatus::Succeeded || !job.chunks.is_empty();
        let result = shown.then(|| JobResult {
            transcript: job.transcript.clone(),
            text: match job.status {
                JobStatus::Succeeded => job.reply_text.clone(),
                JobStatus::Cancelled => Some(spoken_text(&job.chunks)),
                _ => None,
            },
            audio_url: job.reply_audio_id.map(|id| format!("/api/audio/{id}")),
            chunks: job.chunks.iter().map(ChunkView::from).collect(),
            degraded: job.degraded.clone(),
            resource: job.safety.as_ref().map(|s| s.resource().clone()),
        });
        Self {
            job_id: job.id.to_string(),
            session_id: job.session_id.to_string(),
            status: job.status.as_str(),
            stage: job.stage.map(|s| s.as_str()),
            attempts: job.attempts,
            result,
            error: job.error.clone(),
            timings_ms: job
                .timings
                .to_map()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            created_at: rfc3339(job.created_at),
            updated_at: rfc3339(job.updated_at),
            status_url: status_url(job),
            events_url: events_url(job),
            callback: job.callback.clone(),
            safety: job.safety.as_ref().map(Safety::as_str),
        }
    }
}

impl From<&Job> for AcceptedView {
    fn from(job: &Job) -> Self {
        Self {
            job_id: job.id.to_string(),
            status: job.status.as_str(),
            status_url: status_url(job),
            events_url: events_url(job),
        }
    }
}

/// The full job JSON.
#[must_use]
pub fn job_json(job: &Job) -> Value {
    serde_json::to_value(JobView::from(job)).unwrap_or(Value::Null)
}

/// The short answer to an accepted upload.
#[must_use]
pub fn accepted_json(job: &Job) -> Value {
    serde_json::to_value(AcceptedView::from(job)).unwrap_or(Value::Null)
}
