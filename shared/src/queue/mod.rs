//! The job queue seam: the api pushes job ids, workers consume them through
//! apalis. Two carriers, chosen by deployment:
//!
//! - [`SqliteQueue`]: apalis-sqlite in the same SQLite file (`rose serve`), with
//!   an in-process wake-up so a push reaches the idle worker at once; the poll
//!   interval is only the fallback.
//! - [`RedisQueue`]: our own apalis backend on Redis Streams (scaled deployment).
//!
//! Queues are named explicitly (`voice`, …); the message is the job id (plus the
//! request id for log correlation). The database row is the truth; it is always
//! written before the push.

pub mod admin;
pub mod consumer;
pub mod redis;
pub mod retry;
pub mod settle;
pub mod sqlite;

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;

use crate::domain::VoiceTask;

pub use redis::{
    ListStatus, QueueEntry, QueueStats, RedisQueue, RedisStreamBackend, StreamOptions,
};
pub use retry::{Panicked, RetryPolicy, Settle};
pub use sqlite::SqliteQueue;

/// The voice pipeline's queue.
pub const VOICE_QUEUE: &str = "voice";
/// Every queue Rose runs, for reports that cover them all.
pub const QUEUES: [&str; 4] = [VOICE_QUEUE, MEMORY_QUEUE, SUMMARY_QUEUE, CALLBACK_QUEUE];
/// Memory extraction, off the reply's path.
pub const MEMORY_QUEUE: &str = "memory";
/// Rolling session summaries.
pub const SUMMARY_QUEUE: &str = "summary";
/// Callback deliveries.
pub const CALLBACK_QUEUE: &str = "callbacks";

/// A handler error that sends its job straight to the dead letters: the
/// handler's policy says trying again will not help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Abort(pub String);

/// A handler error that asks for the next attempt after `after` exactly
/// (instead of the queue's own backoff).
#[derive(Debug, Clone, thiserror::Error)]
#[error("retry in {after:?}: {reason}")]
pub struct RetryAfter {
    pub after: Duration,
    pub reason: String,
}

/// A handler error that asks for the next attempt after `after` without
/// spending an attempt: the message waits for something outside it (a model
/// being installed, a provider's outage). The handler bounds how long it
/// defers (by the message's age) and gives up with [`Abort`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("deferred for {after:?}: {reason}")]
pub struct Defer {
    pub after: Duration,
    pub reason: String,
}

/// A queue failure.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis error: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("queue database error: {0}")]
    Sqlite(#[from] apalis_sqlite::Error),
    #[error("queue database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("queue message could not be encoded or decoded: {0}")]
    Codec(#[from] serde_json::Error),
    #[error("malformed queue entry: {0}")]
    Malformed(String),
    /// A batch of acknowledgements could not be written (the cause, as text:
    /// every message of the batch gets it).
    #[error("queue acknowledgement failed: {0}")]
    AckFailed(String),
    /// A request the queue does not take (e.g. purging running entries).
    #[error("{0}")]
    Refused(String),
    /// This consumer stopped (or its acknowledger or wake-up link did):
    /// the entry stays claimed and is reclaimed once it ages out.
    #[error("the queue consumer stopped: {0}")]
    Stopped(&'static str),
}

impl QueueError {
    /// The disk under the embedded queue is full.
    #[must_use]
    pub fn is_full(&self) -> bool {
        match self {
            Self::Sqlx(e) => crate::store::disk_full(e),
            Self::Sqlite(e) => e.to_string().contains("database or disk is full"),
            _ => false,
        }
    }
}

/// How one worker consumes a queue, on either carrier.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// This consumer's name; unique per worker process (and queue).
    pub consumer: String,
    /// Messages fetched ahead of the handlers (and at most per fetch).
    pub prefetch: usize,
    /// A consumer silent this long loses its messages to others (and a
    /// message whose settlement failed is run again after this long).
    pub visibility_timeout: Duration,
    /// Longest single blocking read on Redis (reclaim scans run between reads).
    pub block: Duration,
    /// How a failed attempt is settled: the same policy on both carriers.
    pub retry: RetryPolicy,
}

impl ConsumerOptions {
    /// Options for a consumer named `consumer`: prefetch 32, visibility
    /// timeout 60 s, reads blocking up to 30 s, the default [`RetryPolicy`]
    /// (5 attempts, backoff 1 s … 5 min).
    #[must_use]
    pub fn new(consumer: impl Into<String>) -> Self {
        Self {
            consumer: consumer.into(),
            prefetch: 32,
            visibility_timeout: Duration::from_secs(60),
            block: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }
}

/// How many messages a queue holds, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    pub pending: u64,
    pub delayed: u64,
    pub running: u64,
    pub dead: u64,
    /// Age of the oldest message waiting for a worker.
    pub oldest_pending_age: Option<Duration>,
}

/// The carrier the api pushes to and workers consume from.
#[derive(Debug, Clone)]
pub enum Queue {
    Sqlite(SqliteQueue),
    Redis(RedisQueue),
}

impl Queue {
    /// `"sqlite"` or `"redis"`, as reported by health.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Redis(_) => "redis",
        }
    }

    /// Pushes one voice job.
    ///
    /// # Errors
    /// When the carrier cannot be written.
    pub async fn push_voice(&self, task: &VoiceTask) -> Result<(), QueueError> {
        self.push(VOICE_QUEUE, &task.job_id.to_string(), task).await
    }

    /// Pushes one message to `queue`; `id` names it in inspection and logs.
    ///
    /// # Errors
    /// When the carrier cannot be written.
    pub async fn push<T: Serialize + Sync>(
        &self,
        queue: &str,
        id: &str,
        message: &T,
    ) -> Result<(), QueueError> {
        match self {
            Self::Sqlite(q) => q.push(queue, id, message).await?,
            Self::Redis(q) => q.push(queue, id, message).await?,
        }
        crate::metrics::job_enqueued(queue);
        Ok(())
    }

    /// Schedules one message to enter `queue` after `delay`.
    ///
    /// # Errors
    /// When the carrier cannot be written.
    pub async fn push_delayed<T: Serialize + Sync>(
        &self,
        queue: &str,
        id: &str,
        message: &T,
        delay: Duration,
    ) -> Result<(), QueueError> {
        match self {
            Self::Sqlite(q) => q.push_delayed(queue, message, delay).await?,
            Self::Redis(q) => q.push_delayed(queue, id, message, delay).await?,
        }
        crate::metrics::job_enqueued(queue);
        Ok(())
    }

    /// The ids (`job_id`, else `session_id`) of the messages `queue` still
    /// holds: waiting, scheduled or running. `None` when the queue holds more
    /// than can be listed at once (then nobody can tell what is missing).
    ///
    /// # Errors
    /// When the carrier cannot be read.
    pub async fn held_ids(&self, queue: &str) -> Result<Option<HashSet<String>>, QueueError> {
        const LIMIT: usize = 10_000;
        match self {
            Self::Sqlite(q) => Ok(Some(
                q.held(queue)
                    .await?
                    .iter()
                    .filter_map(|m| m.get("job_id").or_else(|| m.get("session_id")))
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
            )),
            Self::Redis(q) => {
                let mut ids = HashSet::new();
                for status in [
                    ListStatus::Pending,
                    ListStatus::Running,
                    ListStatus::Delayed,
                ] {
                    let entries = q.list(queue, status, LIMIT).await?;
                    if entries.len() >= LIMIT {
                        return Ok(None);
                    }
                    ids.extend(entries.into_iter().map(|e| e.id));
                }
                Ok(Some(ids))
            }
        }
    }

    /// How many messages `queue` holds, by state.
    ///
    /// # Errors
    /// When the carrier cannot be read.
    pub async fn depth(&self, queue: &str) -> Result<Depth, QueueError> {
        match self {
            Self::Sqlite(q) => q.depth(queue).await,
            Self::Redis(q) => {
                let s = q.stats(queue).await?;
                Ok(Depth {
                    pending: s.pending,
                    delayed: s.delayed,
                    running: s.running,
                    dead: s.dead,
                    oldest_pending_age: s.oldest_pending_age_ms.map(Duration::from_millis),
                })
            }
        }
    }

    /// A real round trip to the carrier.
    ///
    /// # Errors
    /// When it cannot be reached.
    pub async fn ping(&self) -> Result<(), QueueError> {
        match self {
            Self::Sqlite(q) => q.ping().await,
            Self::Redis(q) => q.ping().await,
        }
    }
}
