//! Storage behind one trait, with PostgreSQL and SQLite implementations.
//!
//! Both implementations run the *same* SQL (written once in [`sql`] and
//! instantiated per database by a macro): timestamps are `BIGINT` unix
//! milliseconds, ids are ULID text, lists are JSON text, so no statement needs
//! a dialect of its own. Stage checkpoints are written with `… IS NULL` guards,
//! so a redelivered job can never overwrite or duplicate an earlier stage's
//! output, and a reply's two turns are inserted in the same transaction as
//! the reply checkpoint.
//!
//! Migrations live in `migrations/{sqlite,postgres}` and are recorded in
//! `_rose_migrations` (the queue's own tables keep sqlx's default table).

pub mod person;
mod rows;
mod sql;
pub mod sqlite;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, SqlitePool};

use crate::config::DatabaseUrl;
use crate::domain::{
    Audio, AudioId, Job, JobError, JobId, ReplyChunk, Session, SessionId, Stage, Turn,
};

pub use person::{Erased, PersonStore};
pub use sql::{PgStore, SqliteStore};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The session already has as many jobs in flight as it may.
    #[error("the session has {0} jobs queued or processing already")]
    SessionBusy(u32),
}

impl StoreError {
    /// The database could not be reached, or dropped the connection under
    /// the call: a passing outage, not a fault of what was asked.
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Database(e) if unreachable(e))
    }

    /// The disk under the database is full (SQLite `SQLITE_FULL`,
    /// PostgreSQL `disk_full`, or `ENOSPC` from the file system).
    #[must_use]
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Database(e) if disk_full(e))
    }
}

/// Whether `e` says the database is out of reach (connection refused,
/// reset or timed out; the pool could not connect; the server shutting
/// down or refusing connections: SQLSTATE class 08, 57P01–57P03, 53300).
#[must_use]
pub fn unreachable(e: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match e {
        E::Io(io) => io.raw_os_error() != Some(ENOSPC),
        E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Protocol(_) => true,
        E::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// `ENOSPC`: no space left on the device.
const ENOSPC: i32 = 28;

/// Whether `e` says the disk is full.
#[must_use]
pub fn disk_full(e: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match e {
        E::Io(io) => io.raw_os_error() == Some(ENOSPC),
        // SQLite's primary result code 13 (SQLITE_FULL, "database or disk
        // is full"); PostgreSQL's SQLSTATE 53100 (disk_full).
        E::Database(db) => db
            .code()
            .is_some_and(|code| matches!(code.as_ref(), "13" | "53100")),
        _ => false,
    }
}

/// Result alias for storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// What the api hands the store to create a job.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub session_id: SessionId,
    pub input: JobInput,
    pub idempotency_key: Option<String>,
    pub request_id: Option<String>,
    pub callback_url: Option<String>,
    /// Refuse the job ([`StoreError::SessionBusy`]) when the session has
    /// this many jobs queued or processing; a replay of an idempotency key
    /// is never refused.
    pub max_in_flight: Option<u32>,
}

/// What the person gave: a recording, or words typed instead of spoken.
#[derive(Debug, Clone)]
pub enum JobInput {
    /// A recording, stored with the job; the STT stage transcribes it.
    Audio { bytes: Vec<u8>, mime: String },
    /// Typed words: they are the job's transcript from the start, so the
    /// STT stage is skipped.
    Text(String),
}

/// Reply audio produced by the TTS stage.
#[derive(Debug, Clone)]
pub struct NewAudio {
    pub bytes: Vec<u8>,
    pub mime: String,
}

/// What looking up an audio id found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioLookup {
    Found(Audio),
    /// It existed; retention erased its bytes.
    Expired,
    Missing,
}

/// Whether `create_job` made a new job or found the one an earlier request
/// with the same idempotency key made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    Existing,
}

/// What [`Store::cancel_job`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// This call cancelled the job (the row as it is now).
    Cancelled(Box<Job>),
    /// The job had already ended (succeeded, failed or cancelled).
    Finished(Box<Job>),
    /// No such job.
    Missing,
}

/// Where Rose keeps sessions, turns, jobs and audio.
#[async_trait]
pub trait Store: PersonStore + Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// A real round trip to the database.
    async fn ping(&self) -> StoreResult<()>;

    async fn create_session(&self, user_id: Option<&str>) -> StoreResult<Session>;
    async fn get_session(&self, id: SessionId) -> StoreResult<Option<Session>>;
    /// Erases the session and everything it owns; false when it did not exist.
    async fn delete_session(&self, id: SessionId) -> StoreResult<bool>;

    /// Stores the upload and the job row in one transaction. With an
    /// idempotency key already used in this session, returns that job instead.
    async fn create_job(&self, new: NewJob) -> StoreResult<(Job, Created)>;
    async fn get_job(&self, id: JobId) -> StoreResult<Option<Job>>;

    /// Marks the job `processing` and counts the attempt; records the queue
    /// wait on the first attempt, and shows stage `stt` while the job has no
    /// transcript yet. `None` when the job does not exist.
    async fn begin_attempt(&self, id: JobId) -> StoreResult<Option<Job>>;
    /// Records the stage now running.
    async fn set_stage(&self, id: JobId, stage: Stage) -> StoreResult<()>;
    /// STT checkpoint (first write wins).
    ///
    /// Each checkpoint takes the stage that comes `next`, if known, and shows
    /// it with the same write: a stage marker costs no commit of its own.
    /// A checkpoint another writer got to first changes nothing, stage included.
    async fn save_transcript(
        &self,
        id: JobId,
        transcript: &str,
        stt_ms: i64,
        next: Option<Stage>,
    ) -> StoreResult<()>;
    /// LLM checkpoint plus the user's and Rose's turns, in one transaction.
    async fn save_reply(
        &self,
        job: &Job,
        reply: &str,
        llm_ms: i64,
        next: Option<Stage>,
    ) -> StoreResult<()>;
    /// Marks the job's turn a crisis, with the resource its reply will carry,
    /// before the reply is written (first write wins: a job already marked,
    /// or already answered, is left as it is). True when this call marked it.
    async fn mark_crisis(
        &self,
        id: JobId,
        resource: &crate::safety::CrisisResource,
    ) -> StoreResult<bool>;
    /// LLM checkpoint for a silent turn: the reply without conversation turns
    /// (nothing was said, so nothing enters the history).
    async fn save_silent_reply(
        &self,
        id: JobId,
        reply: &str,
        next: Option<Stage>,
    ) -> StoreResult<()>;
    /// A sentence of a streamed reply, spoken: stores its audio (if any) and
    /// appends `chunk` to the job's chunks, in one transaction, provided the
    /// row still holds exactly `job.chunks` and the job is still processing
    /// (so no index is announced twice and a cancelled job stays as it is).
    /// Records the first token's and the first audio's times once
    /// (`job.timings.first_token`, now) and sets `tts_ms` (the speech that
    /// trails the reply's writing, so far). The chunk's `audio_id`: the one
    /// given (its audio, when not given here, comes later through
    /// [`Store::save_chunk_audio`]: the chunk is announced while its speech
    /// is relayed), else a new one when `audio` is given, else none (the
    /// sentence is delivered as text). `None` when the row had moved on.
    async fn save_chunk(
        &self,
        job: &Job,
        chunk: ReplyChunk,
        audio: Option<NewAudio>,
        tts_ms: i64,
    ) -> StoreResult<Option<ReplyChunk>>;
    /// Stores the audio of an announced chunk under its id (once: a second
    /// call is a no-op).
    async fn save_chunk_audio(&self, job: &Job, id: AudioId, audio: NewAudio) -> StoreResult<()>;
    /// Replaces the job's chunks with `chunks` (an announced chunk whose
    /// speech broke loses its audio), provided the row still holds exactly
    /// `job.chunks` and the job is still processing. False when it had moved on.
    async fn replace_chunks(&self, job: &Job, chunks: &[ReplyChunk]) -> StoreResult<bool>;
    /// Whether audio `id` is stored.
    async fn audio_exists(&self, id: AudioId) -> StoreResult<bool>;
    /// Stops a queued or processing job: `cancelled`, and the conversation
    /// keeps only what the person heard of the reply (its chunks; nothing
    /// when none was delivered: the turn leaves no trace in the history).
    async fn cancel_job(&self, id: JobId) -> StoreResult<Cancel>;
    /// TTS checkpoint: stores the reply audio (the first audio, when no
    /// sentence was spoken before it); returns the audio id now on the job.
    async fn save_speech(&self, job: &Job, audio: NewAudio, tts_ms: i64) -> StoreResult<AudioId>;
    /// The job succeeded, with the stages that fell back. False when it had
    /// already ended (cancelled meanwhile, or finished by another delivery).
    async fn complete_job(&self, id: JobId, degraded: &[String]) -> StoreResult<bool>;
    /// The job failed for good.
    async fn fail_job(&self, id: JobId, error: &JobError) -> StoreResult<()>;
    /// Removes a job no worker has touched (`queued`, never attempted) and
    /// its recording, as if it had never been taken: the api answered an
    /// error because it could not be queued. False when it had moved on.
    async fn discard_job(&self, id: JobId) -> StoreResult<bool>;
    /// The job waits for a later attempt (already pushed, delayed): back to
    /// `queued`; `deferred` counts a breaker deferral rather than a failure.
    async fn reschedule_job(&self, id: JobId, deferred: bool) -> StoreResult<()>;
    /// Puts a failed job back to `queued` (an operator revived it); its
    /// checkpoints stay, so it resumes where it stopped, and its earlier
    /// attempts no longer count against the limit. False when the job was
    /// not failed.
    async fn requeue_job(&self, id: JobId) -> StoreResult<bool>;

    /// Memory checkpoint: the facts recalled for this job (first write wins).
    async fn save_memories(
        &self,
        id: JobId,
        facts: &[String],
        memory_ms: i64,
        next: Option<Stage>,
    ) -> StoreResult<()>;
    /// The latest `limit` turns created after `after` (unix ms), oldest first.
    async fn turns_since(
        &self,
        session: SessionId,
        after: i64,
        limit: usize,
    ) -> StoreResult<Vec<Turn>>;
    /// How many turns were created after `after`.
    async fn count_turns_since(&self, session: SessionId, after: i64) -> StoreResult<i64>;
    /// Stores a new rolling summary covering turns up to `until`, if the
    /// summary still covers `was` (another writer did not get there first).
    async fn save_summary(
        &self,
        session: SessionId,
        summary: &str,
        until: i64,
        was: i64,
    ) -> StoreResult<bool>;
    /// The session's latest `limit` turns, oldest first.
    async fn recent_turns(&self, session: SessionId, limit: usize) -> StoreResult<Vec<Turn>>;
    /// A stored audio blob.
    async fn get_audio(&self, id: AudioId) -> StoreResult<AudioLookup>;
    /// Marks a finished job's callback `pending` the first time; returns
    /// whether this call did (then the delivery is to be queued).
    async fn start_callback(&self, id: JobId) -> StoreResult<bool>;
    /// Records a delivery attempt's outcome.
    async fn record_callback(
        &self,
        id: JobId,
        status: &str,
        attempts: i64,
        last_status: Option<i64>,
    ) -> StoreResult<()>;
}

/// An open database pool, before it is wrapped in a [`Store`].
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Database {
    /// Opens a pool. SQLite runs in WAL mode, waits for a write in progress
    /// instead of failing with "database is locked", and checkpoints in the
    /// background (see [`sqlite`]).
    ///
    /// # Errors
    /// When the URL is malformed or the database cannot be reached.
    pub async fn connect(url: &DatabaseUrl) -> StoreResult<Self> {
        match url {
            DatabaseUrl::Sqlite(url) => {
                let pool = sqlite::open(url).await?;
                Ok(Self::Sqlite(pool))
            }
            DatabaseUrl::Postgres(url) => {
                let options = PgConnectOptions::from_str(url)?;
                Self::connect_postgres(options).await
            }
        }
    }

    /// Opens a PostgreSQL pool with explicit options (tests use this to pin a schema).
    ///
    /// # Errors
    /// When the database cannot be reached.
    pub async fn connect_postgres(options: PgConnectOptions) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self::Postgres(pool))
    }

    /// Applies Rose's migrations (recorded in `_rose_migrations`).
    ///
    /// # Errors
    /// When a migration fails or the recorded history does not match.
    pub async fn migrate(&self) -> StoreResult<()> {
        match self {
            Self::Sqlite(pool) => {
                let mut m = sqlx::migrate!("../migrations/sqlite");
                m.dangerous_set_table_name("_rose_migrations");
                m.run(pool).await?;
            }
            Self::Postgres(pool) => {
                let mut m = sqlx::migrate!("../migrations/postgres");
                m.dangerous_set_table_name("_rose_migrations");
                m.run(pool).await?;
            }
        }
        Ok(())
    }

    /// Wraps the pool in its [`Store`].
    #[must_use]
    pub fn store(&self) -> std::sync::Arc<dyn Store> {
        match self {
            Self::Sqlite(pool) => std::sync::Arc::new(SqliteStore::new(pool.clone())),
            Self::Postgres(pool) => std::sync::Arc::new(PgStore::new(pool.clone())),
        }
    }
}
