//! The SQL behind [`Store`], written once and instantiated for SQLite and
//! PostgreSQL (both take `$n` placeholders and the same types here).

use async_trait::async_trait;
use sqlx::{PgPool, SqlitePool};

use super::rows::{AudioRow, JobRow, SessionRow, TurnRow, job_columns, select_job};
use super::{
    AudioLookup, Cancel, Created, JobInput, NewAudio, NewJob, Store, StoreError, StoreResult,
};
use crate::domain::{
    AudioId, Job, JobError, JobId, JobStatus, ReplyChunk, Role, Session, SessionId, Stage, Turn,
    now_ms, spoken_text,
};
use crate::safety::CrisisResource;

/// [`Store`] on SQLite (the embedded deployment).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Wraps a pool whose database is migrated.
    #[must_use]
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// [`Store`] on PostgreSQL (the scaled deployment).
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Wraps a pool whose database is migrated.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

macro_rules! sql_store {
    ($store:ident, $name:literal) => {
        impl $store {
            async fn job_where(&self, id: JobId) -> StoreResult<Option<Job>> {
                let row: Option<JobRow> = sqlx::query_as(select_job!("FROM voice_jobs WHERE id = $1"))
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(Job::try_from).transpose()
            }

            async fn job_by_key(&self, session: SessionId, key: &str) -> StoreResult<Option<Job>> {
                let row: Option<JobRow> = sqlx::query_as(select_job!(
                    "FROM voice_jobs WHERE session_id = $1 AND idempotency_key = $2"
                ))
                    .bind(session.to_string())
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(Job::try_from).transpose()
            }

            /// Writes the job (and its upload) in one transaction. The
            /// session's row is written first: that write serializes every
            /// upload of the session (a row lock on PostgreSQL, the write
            /// lock on SQLite), so the in-flight count read after it cannot
            /// be passed by a concurrent upload.
            async fn insert_job(&self, new: &NewJob) -> StoreResult<Job> {
                let now = now_ms();
                let job_id = JobId::new();
                let session = new.session_id.to_string();
                let mut tx = self.pool.begin().await?;
                sqlx::query("UPDATE sessions SET last_active_at = $2 WHERE id = $1")
                    .bind(&session)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                if let Some(cap) = new.max_in_flight.filter(|c| *c > 0) {
                    let active: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM voice_jobs WHERE session_id = $1 \
                         AND status IN ('queued', 'processing')",
                    )
                    .bind(&session)
                    .fetch_one(&mut *tx)
                    .await?;
                    if active >= i64::from(cap) {
                        return Err(StoreError::SessionBusy(cap));
                    }
                }
                let (audio_id, transcript) = match &new.input {
                    JobInput::Audio { bytes, mime } => {
                        let audio_id = AudioId::new();
                        sqlx::query(
                            "INSERT INTO audio (id, session_id, kind, mime, bytes, size, created_at) \
                             VALUES ($1, $2, 'upload', $3, $4, $5, $6)",
                        )
                        .bind(audio_id.to_string())
                        .bind(&session)
                        .bind(mime)
                        .bind(bytes)
                        .bind(bytes.len() as i64)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        (Some(audio_id), None)
                    }
                    JobInput::Text(text) => (None, Some(text.clone())),
                };
                sqlx::query(
                    "INSERT INTO voice_jobs (id, session_id, status, input_audio_id, transcript, \
                     idempotency_key, request_id, callback_url, created_at, updated_at) \
                     VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $8)",
                )
                .bind(job_id.to_string())
                .bind(&session)
                .bind(audio_id.map(|id| id.to_string()))
                .bind(&transcript)
                .bind(&new.idempotency_key)
                .bind(&new.request_id)
                .bind(&new.callback_url)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Job {
                    id: job_id,
                    session_id: new.session_id,
                    status: JobStatus::Queued,
                    stage: None,
                    attempts: 0,
                    input_audio_id: audio_id,
                    transcript,
                    reply_text: None,
                    reply_audio_id: None,
                    chunks: Vec::new(),
                    memories: None,
                    degraded: Vec::new(),
                    error: None,
                    timings: Default::default(),
                    idempotency_key: new.idempotency_key.clone(),
                    request_id: new.request_id.clone(),
                    callback_url: new.callback_url.clone(),
                    created_at: now,
                    updated_at: now,
                    deferrals: 0,
                    callback: None,
                    safety: None,
                })
            }
        }

        #[async_trait]
        impl Store for $store {
            fn backend(&self) -> &'static str {
                $name
            }

            async fn ping(&self) -> StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn create_session(&self, user_id: Option<&str>) -> StoreResult<Session> {
                let now = now_ms();
                let session = Session {
                    id: SessionId::new(),
                    user_id: user_id.map(str::to_owned),
                    created_at: now,
                    last_active_at: now,
                    summary: None,
                    summarized_until: 0,
                };
                sqlx::query(
                    "INSERT INTO sessions (id, user_id, created_at, last_active_at) \
                     VALUES ($1, $2, $3, $3)",
                )
                .bind(session.id.to_string())
                .bind(&session.user_id)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(session)
            }

            async fn get_session(&self, id: SessionId) -> StoreResult<Option<Session>> {
                let row: Option<SessionRow> = sqlx::query_as(
                    "SELECT id, user_id, created_at, last_active_at, summary, summarized_until \
                     FROM sessions WHERE id = $1",
                )
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
                row.map(Session::try_from).transpose()
            }

            async fn delete_session(&self, id: SessionId) -> StoreResult<bool> {
                // Children first, explicitly: correct even where foreign keys are off.
                let id = id.to_string();
                let mut tx = self.pool.begin().await?;
                for statement in [
                    "DELETE FROM turns WHERE session_id = $1",
                    "DELETE FROM voice_jobs WHERE session_id = $1",
                    "DELETE FROM audio WHERE session_id = $1",
                    "DELETE FROM memories WHERE session_id = $1",
                ] {
                    sqlx::query(statement)
                        .bind(&id)
                        .execute(&mut *tx)
                        .await?;
                }
                let done = sqlx::query("DELETE FROM sessions WHERE id = $1")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(done.rows_affected() > 0)
            }

            async fn create_job(&self, new: NewJob) -> StoreResult<(Job, Created)> {
                if let Some(key) = &new.idempotency_key
                    && let Some(job) = self.job_by_key(new.session_id, key).await?
                {
                    return Ok((job, Created::Existing));
                }
                match self.insert_job(&new).await {
                    Ok(job) => Ok((job, Created::New)),
                    // A concurrent request with the same key won the race.
                    Err(StoreError::Database(e)) if is_unique_violation(&e) => {
                        let key = new.idempotency_key.as_deref().unwrap_or_default();
                        match self.job_by_key(new.session_id, key).await? {
                            Some(job) => Ok((job, Created::Existing)),
                            None => Err(StoreError::Database(e)),
                        }
                    }
                    Err(e) => Err(e),
                }
            }

            async fn get_job(&self, id: JobId) -> StoreResult<Option<Job>> {
                self.job_where(id).await
            }

            async fn begin_attempt(&self, id: JobId) -> StoreResult<Option<Job>> {
                // One round trip: the row comes back with the update. A job
                // still waiting for its transcript shows `stt` from here on.
                let now = now_ms();
                let row: Option<JobRow> = sqlx::query_as(concat!(
                    "UPDATE voice_jobs SET status = 'processing', attempts = attempts + 1, \
                     updated_at = $2, started_at = COALESCE(started_at, $2), \
                     queue_wait_ms = COALESCE(queue_wait_ms, $2 - created_at), \
                     stage = CASE WHEN transcript IS NULL THEN 'stt' ELSE stage END \
                     WHERE id = $1 AND status IN ('queued', 'processing') RETURNING ",
                    job_columns!()
                ))
                .bind(id.to_string())
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
                match row {
                    Some(row) => Job::try_from(row).map(Some),
                    // Finished, or gone: whatever the row says.
                    None => self.job_where(id).await,
                }
            }

            async fn set_stage(&self, id: JobId, stage: Stage) -> StoreResult<()> {
                sqlx::query("UPDATE voice_jobs SET stage = $2, updated_at = $3 WHERE id = $1")
                    .bind(id.to_string())
                    .bind(stage.as_str())
                    .bind(now_ms())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn save_transcript(&self, id: JobId, transcript: &str, stt_ms: i64, next: Option<Stage>) -> StoreResult<()> {
                sqlx::query(
                    "UPDATE voice_jobs SET transcript = $2, stt_ms = $3, updated_at = $4, \
                     stage = COALESCE($5, stage) WHERE id = $1 AND transcript IS NULL",
                )
                .bind(id.to_string())
                .bind(transcript)
                .bind(stt_ms)
                .bind(now_ms())
                .bind(next.map(Stage::as_str))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn save_reply(&self, job: &Job, reply: &str, llm_ms: i64, next: Option<Stage>) -> StoreResult<()> {
                let now = now_ms();
                let job_id = job.id.to_string();
                let session = job.session_id.to_string();
                let user_text = job.transcript.as_deref().unwrap_or_default();
                let mut tx = self.pool.begin().await?;
                let degraded = serde_json::to_string(&job.degraded)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let updated = sqlx::query(
                    "UPDATE voice_jobs SET reply_text = $2, llm_ms = $3, updated_at = $4, \
                     stage = COALESCE($5, stage), degraded = $6, \
                     first_token_ms = COALESCE(first_token_ms, $7) \
                     WHERE id = $1 AND reply_text IS NULL AND status <> 'cancelled'",
                )
                .bind(&job_id)
                .bind(reply)
                .bind(llm_ms)
                .bind(now)
                .bind(next.map(Stage::as_str))
                .bind(degraded)
                .bind(job.timings.first_token)
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() > 0 {
                    // The user spoke first; Rose's reply sorts after it.
                    for (offset, role, text) in
                        [(0, Role::User, user_text), (1, Role::Assistant, reply)]
                    {
                        sqlx::query(
                            "INSERT INTO turns (id, session_id, job_id, role, text, created_at) \
                             VALUES ($1, $2, $3, $4, $5, $6)",
                        )
                        .bind(ulid::Ulid::generate().to_string())
                        .bind(&session)
                        .bind(&job_id)
                        .bind(role.as_str())
                        .bind(text)
                        .bind(now + offset)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                tx.commit().await?;
                Ok(())
            }

            async fn mark_crisis(&self, id: JobId, resource: &CrisisResource) -> StoreResult<bool> {
                let resource = serde_json::to_string(resource)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let done = sqlx::query(
                    "UPDATE voice_jobs SET safety = $4, safety_resource = $2, updated_at = $3 \
                     WHERE id = $1 AND safety IS NULL AND reply_text IS NULL",
                )
                .bind(id.to_string())
                .bind(resource)
                .bind(now_ms())
                .bind("crisis")
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn save_silent_reply(&self, id: JobId, reply: &str, next: Option<Stage>) -> StoreResult<()> {
                sqlx::query(
                    "UPDATE voice_jobs SET reply_text = $2, llm_ms = 0, updated_at = $3, \
                     stage = COALESCE($4, stage) WHERE id = $1 AND reply_text IS NULL",
                )
                .bind(id.to_string())
                .bind(reply)
                .bind(now_ms())
                .bind(next.map(Stage::as_str))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn save_chunk(
                &self,
                job: &Job,
                mut chunk: ReplyChunk,
                audio: Option<NewAudio>,
                tts_ms: i64,
            ) -> StoreResult<Option<ReplyChunk>> {
                let now = now_ms();
                let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
                let prior = serde_json::to_string(&job.chunks).map_err(corrupt)?;
                let audio_id = chunk
                    .audio_id
                    .or_else(|| audio.as_ref().map(|_| AudioId::new()));
                chunk.audio_id = audio_id;
                let mut all = job.chunks.clone();
                all.push(chunk.clone());
                let all = serde_json::to_string(&all).map_err(corrupt)?;
                let mut tx = self.pool.begin().await?;
                let updated = sqlx::query(
                    "UPDATE voice_jobs SET chunks = $2, updated_at = $3, \
                     tts_ms = $4, \
                     first_token_ms = COALESCE(first_token_ms, $5), \
                     first_audio_ms = CASE WHEN $6 THEN COALESCE(first_audio_ms, $3 - created_at) \
                         ELSE first_audio_ms END \
                     WHERE id = $1 AND chunks = $7 AND status = 'processing'",
                )
                .bind(job.id.to_string())
                .bind(&all)
                .bind(now)
                .bind(tts_ms)
                .bind(job.timings.first_token)
                .bind(audio_id.is_some())
                .bind(&prior)
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() == 0 {
                    tx.rollback().await?;
                    return Ok(None);
                }
                if let (Some(id), Some(audio)) = (audio_id, audio) {
                    sqlx::query(
                        "INSERT INTO audio (id, session_id, kind, mime, bytes, size, created_at) \
                         VALUES ($1, $2, 'reply', $3, $4, $5, $6)",
                    )
                    .bind(id.to_string())
                    .bind(job.session_id.to_string())
                    .bind(&audio.mime)
                    .bind(&audio.bytes)
                    .bind(audio.bytes.len() as i64)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(Some(chunk))
            }

            async fn save_chunk_audio(&self, job: &Job, id: AudioId, audio: NewAudio) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO audio (id, session_id, kind, mime, bytes, size, created_at) \
                     VALUES ($1, $2, 'reply', $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                )
                .bind(id.to_string())
                .bind(job.session_id.to_string())
                .bind(&audio.mime)
                .bind(&audio.bytes)
                .bind(audio.bytes.len() as i64)
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn replace_chunks(&self, job: &Job, chunks: &[ReplyChunk]) -> StoreResult<bool> {
                let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
                let prior = serde_json::to_string(&job.chunks).map_err(corrupt)?;
                let all = serde_json::to_string(chunks).map_err(corrupt)?;
                let updated = sqlx::query(
                    "UPDATE voice_jobs SET chunks = $2, updated_at = $3 \
                     WHERE id = $1 AND chunks = $4 AND status = 'processing'",
                )
                .bind(job.id.to_string())
                .bind(&all)
                .bind(now_ms())
                .bind(&prior)
                .execute(&self.pool)
                .await?;
                Ok(updated.rows_affected() > 0)
            }

            async fn audio_exists(&self, id: AudioId) -> StoreResult<bool> {
                let found: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audio WHERE id = $1")
                    .bind(id.to_string())
                    .fetch_one(&self.pool)
                    .await?;
                Ok(found > 0)
            }

            async fn cancel_job(&self, id: JobId) -> StoreResult<Cancel> {
                let now = now_ms();
                let job_id = id.to_string();
                let mut tx = self.pool.begin().await?;
                let row: Option<JobRow> = sqlx::query_as(concat!(
                    "UPDATE voice_jobs SET status = 'cancelled', stage = NULL, updated_at = $2, \
                     finished_at = $2, total_ms = $2 - created_at \
                     WHERE id = $1 AND status IN ('queued', 'processing') RETURNING ",
                    job_columns!()
                ))
                .bind(&job_id)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    tx.rollback().await?;
                    return Ok(match self.job_where(id).await? {
                        Some(job) => Cancel::Finished(Box::new(job)),
                        None => Cancel::Missing,
                    });
                };
                let job = Job::try_from(row)?;
                // The history keeps what was heard: the delivered sentences.
                let heard = spoken_text(&job.chunks);
                if heard.is_empty() {
                    sqlx::query("DELETE FROM turns WHERE job_id = $1")
                        .bind(&job_id)
                        .execute(&mut *tx)
                        .await?;
                } else {
                    let kept = sqlx::query(
                        "UPDATE turns SET text = $2 WHERE job_id = $1 AND role = 'assistant'",
                    )
                    .bind(&job_id)
                    .bind(&heard)
                    .execute(&mut *tx)
                    .await?;
                    if kept.rows_affected() == 0 {
                        let user_text = job.transcript.as_deref().unwrap_or_default();
                        for (offset, role, text) in
                            [(0, Role::User, user_text), (1, Role::Assistant, heard.as_str())]
                        {
                            sqlx::query(
                                "INSERT INTO turns (id, session_id, job_id, role, text, created_at) \
                                 VALUES ($1, $2, $3, $4, $5, $6)",
                            )
                            .bind(ulid::Ulid::generate().to_string())
                            .bind(job.session_id.to_string())
                            .bind(&job_id)
                            .bind(role.as_str())
                            .bind(text)
                            .bind(now + offset)
                            .execute(&mut *tx)
                            .await?;
                        }
                    }
                }
                tx.commit().await?;
                Ok(Cancel::Cancelled(Box::new(job)))
            }

            async fn save_speech(&self, job: &Job, audio: NewAudio, tts_ms: i64) -> StoreResult<AudioId> {
                let now = now_ms();
                let audio_id = AudioId::new();
                let mut tx = self.pool.begin().await?;
                let updated = sqlx::query(
                    "UPDATE voice_jobs SET reply_audio_id = $2, tts_ms = $3, updated_at = $4, \
                     first_audio_ms = COALESCE(first_audio_ms, $4 - created_at) \
                     WHERE id = $1 AND reply_audio_id IS NULL",
                )
                .bind(job.id.to_string())
                .bind(audio_id.to_string())
                .bind(tts_ms)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() == 0 {
                    tx.rollback().await?;
                    return self
                        .job_where(job.id)
                        .await?
                        .and_then(|j| j.reply_audio_id)
                        .ok_or_else(|| StoreError::Corrupt("job lost its reply audio".to_owned()));
                }
                sqlx::query(
                    "INSERT INTO audio (id, session_id, kind, mime, bytes, size, created_at) \
                     VALUES ($1, $2, 'reply', $3, $4, $5, $6)",
                )
                .bind(audio_id.to_string())
                .bind(job.session_id.to_string())
                .bind(&audio.mime)
                .bind(&audio.bytes)
                .bind(audio.bytes.len() as i64)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(audio_id)
            }

            async fn complete_job(&self, id: JobId, degraded: &[String]) -> StoreResult<bool> {
                let now = now_ms();
                let degraded = serde_json::to_string(degraded)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let done = sqlx::query(
                    "UPDATE voice_jobs SET status = 'succeeded', stage = NULL, degraded = $2, \
                     error_code = NULL, error_message = NULL, updated_at = $3, finished_at = $3, \
                     total_ms = $3 - created_at \
                     WHERE id = $1 AND status NOT IN ('succeeded', 'cancelled')",
                )
                .bind(id.to_string())
                .bind(degraded)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn fail_job(&self, id: JobId, error: &JobError) -> StoreResult<()> {
                let now = now_ms();
                sqlx::query(
                    "UPDATE voice_jobs SET status = 'failed', error_code = $2, error_message = $3, \
                     updated_at = $4, finished_at = $4, total_ms = $4 - created_at \
                     WHERE id = $1 AND status NOT IN ('succeeded', 'cancelled')",
                )
                .bind(id.to_string())
                .bind(&error.code)
                .bind(&error.message)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn discard_job(&self, id: JobId) -> StoreResult<bool> {
                let mut tx = self.pool.begin().await?;
                let audio: Option<Option<String>> = sqlx::query_scalar(
                    "DELETE FROM voice_jobs WHERE id = $1 AND status = 'queued' AND attempts = 0 \
                     RETURNING input_audio_id",
                )
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
                let Some(audio) = audio else {
                    return Ok(false);
                };
                if let Some(audio) = audio {
                    sqlx::query("DELETE FROM audio WHERE id = $1")
                        .bind(audio)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn reschedule_job(&self, id: JobId, deferred: bool) -> StoreResult<()> {
                sqlx::query(
                    "UPDATE voice_jobs SET status = 'queued', deferrals = deferrals + $2, \
                     updated_at = $3 WHERE id = $1 AND status = 'processing'",
                )
                .bind(id.to_string())
                .bind(i64::from(deferred))
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn requeue_job(&self, id: JobId) -> StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE voice_jobs SET status = 'queued', error_code = NULL, error_message = NULL, \
                     finished_at = NULL, total_ms = NULL, deferrals = attempts, updated_at = $2 \
                     WHERE id = $1 AND status = 'failed'",
                )
                .bind(id.to_string())
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn save_memories(&self, id: JobId, facts: &[String], memory_ms: i64, next: Option<Stage>) -> StoreResult<()> {
                let facts = serde_json::to_string(facts).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                sqlx::query(
                    "UPDATE voice_jobs SET memories = $2, memory_ms = $3, updated_at = $4, \
                     stage = COALESCE($5, stage) WHERE id = $1 AND memories IS NULL",
                )
                .bind(id.to_string())
                .bind(facts)
                .bind(memory_ms)
                .bind(now_ms())
                .bind(next.map(Stage::as_str))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn turns_since(&self, session: SessionId, after: i64, limit: usize) -> StoreResult<Vec<Turn>> {
                let rows: Vec<TurnRow> = sqlx::query_as(
                    "SELECT role, text, created_at FROM turns WHERE session_id = $1 AND created_at > $2 \
                     ORDER BY created_at DESC, id DESC LIMIT $3",
                )
                .bind(session.to_string())
                .bind(after)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
                let mut turns = rows
                    .into_iter()
                    .map(Turn::try_from)
                    .collect::<StoreResult<Vec<_>>>()?;
                turns.reverse();
                Ok(turns)
            }

            async fn count_turns_since(&self, session: SessionId, after: i64) -> StoreResult<i64> {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM turns WHERE session_id = $1 AND created_at > $2",
                )
                .bind(session.to_string())
                .bind(after)
                .fetch_one(&self.pool)
                .await?;
                Ok(n)
            }

            async fn save_summary(&self, session: SessionId, summary: &str, until: i64, was: i64) -> StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE sessions SET summary = $2, summarized_until = $3 \
                     WHERE id = $1 AND summarized_until = $4",
                )
                .bind(session.to_string())
                .bind(summary)
                .bind(until)
                .bind(was)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn recent_turns(&self, session: SessionId, limit: usize) -> StoreResult<Vec<Turn>> {
                let rows: Vec<TurnRow> = sqlx::query_as(
                    "SELECT role, text, created_at FROM turns WHERE session_id = $1 \
                     ORDER BY created_at DESC, id DESC LIMIT $2",
                )
                .bind(session.to_string())
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
                let mut turns = rows
                    .into_iter()
                    .map(Turn::try_from)
                    .collect::<StoreResult<Vec<_>>>()?;
                turns.reverse();
                Ok(turns)
            }

            async fn start_callback(&self, id: JobId) -> StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE voice_jobs SET callback_status = 'pending' \
                     WHERE id = $1 AND callback_url IS NOT NULL AND callback_status IS NULL \
                     AND status IN ('succeeded', 'failed', 'cancelled')",
                )
                .bind(id.to_string())
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn record_callback(&self, id: JobId, status: &str, attempts: i64, last_status: Option<i64>) -> StoreResult<()> {
                sqlx::query(
                    "UPDATE voice_jobs SET callback_status = $2, callback_attempts = $3, \
                     callback_last_status = $4 WHERE id = $1",
                )
                .bind(id.to_string())
                .bind(status)
                .bind(attempts)
                .bind(last_status)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn get_audio(&self, id: AudioId) -> StoreResult<AudioLookup> {
                let row: Option<AudioRow> = sqlx::query_as(
                    "SELECT id, mime, bytes, created_at FROM audio WHERE id = $1",
                )
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
                match row {
                    Some(row) => row.into_lookup(),
                    None => Ok(AudioLookup::Missing),
                }
            }
        }
    };
}

sql_store!(SqliteStore, "sqlite");
sql_store!(PgStore, "postgres");
