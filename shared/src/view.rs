//! The JSON shapes clients read.

use crate::domain::{Job, JobStatus, rfc3339};
use serde_json::{Value, json};

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

/// The full job JSON (`GET /api/jobs/{id}`, callbacks, finished long-polls).
///
/// `result` is `null` until the job succeeded; URLs are relative to the api.
#[must_use]
pub fn job_json(job: &Job) -> Value {
    let result = (job.status == JobStatus::Succeeded).then(|| {
        json!({
            "transcript": job.transcript,
            "text": job.reply_text,
            "audio_url": job.reply_audio_id.map(|id| format!("/api/audio/{id}")),
            "degraded": job.degraded,
        })
    });
    json!({
        "job_id": job.id,
        "session_id": job.session_id,
        "status": job.status.as_str(),
        "stage": job.stage.map(|s| s.as_str()),
        "attempts": job.attempts,
        "result": result,
        "error": job.error,
        "timings_ms": job.timings.to_map(),
        "created_at": rfc3339(job.created_at),
        "updated_at": rfc3339(job.updated_at),
        "status_url": status_url(job),
        "events_url": events_url(job),
        "callback": job.callback,
    })
}

/// The short answer to an accepted upload.
#[must_use]
pub fn accepted_json(job: &Job) -> Value {
    json!({
        "job_id": job.id,
        "status": job.status.as_str(),
        "status_url": status_url(job),
        "events_url": events_url(job),
    })
}
