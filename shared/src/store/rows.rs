//! Rows as both databases return them, and their conversion to domain types.

use std::str::FromStr;

use crate::domain::{
    Audio, AudioId, Job, JobError, JobId, Role, Session, SessionId, Timings, Turn,
};
use crate::safety::{CrisisResource, Safety};
use crate::store::{AudioLookup, StoreError};

/// Every column [`JobRow`] reads, for `SELECT` and `RETURNING`.
macro_rules! job_columns {
    () => {
        "id, session_id, status, stage, attempts, input_audio_id, transcript, \
         reply_text, reply_audio_id, degraded, error_code, error_message, queue_wait_ms, \
         stt_ms, memory_ms, llm_ms, tts_ms, total_ms, idempotency_key, request_id, \
         callback_url, created_at, updated_at, deferrals, memories, \
         callback_status, callback_attempts, callback_last_status, safety, safety_resource, \
         chunks, first_token_ms, first_audio_ms"
    };
}
pub(super) use job_columns;

/// `SELECT` of every column [`JobRow`] reads, followed by the rest of the statement.
macro_rules! select_job {
    ($($rest:literal),+) => {
        concat!("SELECT ", job_columns!(), " ", $($rest),+)
    };
}
pub(super) use select_job;

#[derive(sqlx::FromRow)]
pub(super) struct JobRow {
    id: String,
    session_id: String,
    status: String,
    stage: Option<String>,
    attempts: i64,
    input_audio_id: Option<String>,
    transcript: Option<String>,
    reply_text: Option<String>,
    reply_audio_id: Option<String>,
    degraded: String,
    error_code: Option<String>,
    error_message: Option<String>,
    queue_wait_ms: Option<i64>,
    stt_ms: Option<i64>,
    memory_ms: Option<i64>,
    llm_ms: Option<i64>,
    tts_ms: Option<i64>,
    total_ms: Option<i64>,
    idempotency_key: Option<String>,
    request_id: Option<String>,
    callback_url: Option<String>,
    created_at: i64,
    updated_at: i64,
    deferrals: i64,
    memories: Option<String>,
    callback_status: Option<String>,
    callback_attempts: i64,
    callback_last_status: Option<i64>,
    safety: Option<String>,
    safety_resource: Option<String>,
    chunks: String,
    first_token_ms: Option<i64>,
    first_audio_ms: Option<i64>,
}

fn parse<T: FromStr>(what: &str, raw: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    raw.parse::<T>()
        .map_err(|e| StoreError::Corrupt(format!("{what} {raw:?}: {e}")))
}

impl TryFrom<JobRow> for Job {
    type Error = StoreError;
    fn try_from(r: JobRow) -> Result<Self, StoreError> {
        Ok(Job {
            id: parse::<JobId>("job id", &r.id)?,
            session_id: parse::<SessionId>("session id", &r.session_id)?,
            status: parse("job status", &r.status)?,
            stage: r.stage.as_deref().map(|s| parse("stage", s)).transpose()?,
            attempts: r.attempts,
            // NULL for a typed job.
            input_audio_id: r
                .input_audio_id
                .as_deref()
                .map(|raw| parse::<AudioId>("audio id", raw))
                .transpose()?,
            transcript: r.transcript,
            memories: r
                .memories
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("memories: {e}")))?,
            reply_text: r.reply_text,
            reply_audio_id: r
                .reply_audio_id
                .as_deref()
                .map(|s| parse::<AudioId>("audio id", s))
                .transpose()?,
            degraded: serde_json::from_str(&r.degraded)
                .map_err(|e| StoreError::Corrupt(format!("degraded list: {e}")))?,
            error: r.error_code.map(|code| JobError {
                code,
                message: r.error_message.unwrap_or_default(),
            }),
            timings: Timings {
                queue_wait: r.queue_wait_ms,
                stt: r.stt_ms,
                memory: r.memory_ms,
                llm: r.llm_ms,
                tts: r.tts_ms,
                total: r.total_ms,
                first_token: r.first_token_ms,
                first_audio: r.first_audio_ms,
            },
            chunks: serde_json::from_str(&r.chunks)
                .map_err(|e| StoreError::Corrupt(format!("reply chunks: {e}")))?,
            idempotency_key: r.idempotency_key,
            request_id: r.request_id,
            callback_url: r.callback_url,
            created_at: r.created_at,
            updated_at: r.updated_at,
            deferrals: r.deferrals,
            safety: safety(r.safety.as_deref(), r.safety_resource.as_deref())?,
            callback: r
                .callback_status
                .map(|status| crate::domain::CallbackState {
                    status,
                    attempts: r.callback_attempts,
                    last_status_code: r.callback_last_status,
                }),
        })
    }
}

/// The mark and the resource it was given with; a mark whose resource is
/// missing or unreadable keeps the mark with the international default.
fn safety(mark: Option<&str>, resource: Option<&str>) -> Result<Option<Safety>, StoreError> {
    match mark {
        None => Ok(None),
        Some("crisis") => Ok(Some(Safety::Crisis(
            resource
                .and_then(|json| serde_json::from_str::<CrisisResource>(json).ok())
                .unwrap_or_default(),
        ))),
        Some(other) => Err(StoreError::Corrupt(format!("safety mark {other:?}"))),
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct SessionRow {
    id: String,
    user_id: Option<String>,
    created_at: i64,
    last_active_at: i64,
    summary: Option<String>,
    summarized_until: i64,
}

impl TryFrom<SessionRow> for Session {
    type Error = StoreError;
    fn try_from(r: SessionRow) -> Result<Self, StoreError> {
        Ok(Session {
            id: parse("session id", &r.id)?,
            user_id: r.user_id,
            created_at: r.created_at,
            last_active_at: r.last_active_at,
            summary: r.summary,
            summarized_until: r.summarized_until,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct TurnRow {
    role: String,
    text: String,
    created_at: i64,
}

impl TryFrom<TurnRow> for Turn {
    type Error = StoreError;
    fn try_from(r: TurnRow) -> Result<Self, StoreError> {
        let role = match r.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => return Err(StoreError::Corrupt(format!("turn role {other:?}"))),
        };
        Ok(Turn {
            role,
            text: r.text,
            created_at: r.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct AudioRow {
    id: String,
    mime: String,
    bytes: Option<Vec<u8>>,
    created_at: i64,
}

impl AudioRow {
    /// `Expired` when retention erased the bytes.
    pub(super) fn into_lookup(self) -> Result<AudioLookup, StoreError> {
        let id = parse("audio id", &self.id)?;
        Ok(match self.bytes {
            Some(bytes) => AudioLookup::Found(Audio {
                id,
                bytes,
                mime: self.mime,
                created_at: self.created_at,
            }),
            None => AudioLookup::Expired,
        })
    }
}
