//! The embedded queue: messages in apalis-sqlite's `Jobs` table, in Rose's
//! own SQLite file, consumed by Rose's own apalis backend ([`backend`]).
//!
//! Every push in this process wakes the queue's consumer at once (a
//! [`Notify`] per queue, which keeps one wake-up for a consumer that is busy
//! when it comes); a delayed push wakes it too, so it can sleep until the
//! new due time. A slow fallback poll remains for rows written by another
//! process (e.g. `rose queue retry`). Nothing sleeps per message.
//!
//! Each push is a fresh task row (its own ULID); the payload names the job.

pub mod backend;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_sqlite::SqliteStorage;
use serde::Serialize;
use sqlx::SqlitePool;
use tokio::sync::Notify;

pub use backend::{RowConsumer, RowMeta, SqliteQueueBackend};

use super::{ConsumerOptions, Depth, QueueError};

/// How often an idle embedded consumer looks for rows no in-process push announced.
pub const FALLBACK_POLL: Duration = Duration::from_secs(1);

/// The embedded queue carrier.
#[derive(Debug, Clone)]
pub struct SqliteQueue {
    pool: SqlitePool,
    wakers: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    fallback_poll: Duration,
}

impl SqliteQueue {
    /// Creates apalis-sqlite's tables (recorded in sqlx's default migrations
    /// table, apart from Rose's own `_rose_migrations`).
    ///
    /// # Errors
    /// When a migration fails.
    pub async fn setup(pool: &SqlitePool) -> Result<(), QueueError> {
        let mut migrator = SqliteStorage::migrations();
        migrator.set_ignore_missing(true);
        migrator
            .run(pool)
            .await
            .map_err(|e| QueueError::Sqlx(sqlx::Error::from(e)))?;
        Ok(())
    }

    /// Wraps a pool on which [`SqliteQueue::setup`] ran.
    #[must_use]
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            wakers: Arc::default(),
            fallback_poll: FALLBACK_POLL,
        }
    }

    /// Changes the fallback poll interval (tests lengthen it to prove pushes wake).
    #[must_use]
    pub fn with_fallback_poll(mut self, every: Duration) -> Self {
        self.fallback_poll = every;
        self
    }

    /// Pushes one message and wakes the queue's consumer in this process.
    ///
    /// # Errors
    /// When the row cannot be written.
    pub async fn push<T: Serialize + Sync>(
        &self,
        queue: &str,
        _id: &str,
        message: &T,
    ) -> Result<(), QueueError> {
        self.insert(queue, message, None).await
    }

    /// Schedules one message after `delay` (the queue's clock has whole
    /// seconds, so it is rounded up) and wakes the consumer, which sleeps
    /// until the earliest due time.
    ///
    /// # Errors
    /// When the row cannot be written.
    pub async fn push_delayed<T: Serialize + Sync>(
        &self,
        queue: &str,
        message: &T,
        delay: Duration,
    ) -> Result<(), QueueError> {
        self.insert(queue, message, Some(delay)).await
    }

    async fn insert<T: Serialize + Sync>(
        &self,
        queue: &str,
        message: &T,
        delay: Option<Duration>,
    ) -> Result<(), QueueError> {
        let bytes = serde_json::to_vec(message)?;
        let mut task = TaskBuilder::new(bytes).task_id(TaskId::from_ulid(ulid::Ulid::generate()));
        if let Some(delay) = delay {
            let due = u64::try_from(backend::due_secs(delay)).unwrap_or(0);
            task = task.run_at_timestamp(due);
        }
        let mut conn = self.pool.acquire().await?;
        apalis_sqlite::queries::push_tasks(&mut *conn, queue, &[task.build()]).await?;
        self.wake(queue);
        Ok(())
    }

    /// Puts back every task of `queue` a worker had taken: on the embedded
    /// deployment one process owns the file, so at start any taken task was
    /// orphaned by a previous run that died. Returns how many.
    ///
    /// # Errors
    /// When the queue's table cannot be written.
    pub async fn recover_orphans(&self, queue: &str) -> Result<u64, QueueError> {
        let done = sqlx::query(
            "UPDATE Jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL \
             WHERE job_type = $1 AND status IN ('Queued', 'Running')",
        )
        .bind(queue)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// A real round trip to the queue's tables.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn ping(&self) -> Result<(), QueueError> {
        sqlx::query("SELECT COUNT(*) FROM Jobs WHERE 0")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The messages of `queue` still waiting, scheduled or taken, as JSON.
    ///
    /// # Errors
    /// When the queue's table cannot be read.
    pub async fn held(&self, queue: &str) -> Result<Vec<serde_json::Value>, QueueError> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT job FROM Jobs WHERE job_type = $1 AND status IN ('Pending', 'Queued', 'Running')",
        )
        .bind(queue)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|bytes| serde_json::from_slice(bytes).ok())
            .collect())
    }

    /// Counts of `queue`'s messages by state, from apalis' `Jobs` table.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn depth(&self, queue: &str) -> Result<Depth, QueueError> {
        let now = chrono::Utc::now().timestamp();
        // pending, delayed, running, dead, oldest pending run_at.
        type Counts = (
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
        );
        let row: Counts = sqlx::query_as(
                "SELECT \
                   SUM(CASE WHEN status IN ('Pending', 'Queued') AND run_at <= $2 THEN 1 ELSE 0 END), \
                   SUM(CASE WHEN status IN ('Pending', 'Queued') AND run_at > $2 THEN 1 ELSE 0 END), \
                   SUM(CASE WHEN status = 'Running' THEN 1 ELSE 0 END), \
                   SUM(CASE WHEN status IN ('Failed', 'Killed') THEN 1 ELSE 0 END), \
                   MIN(CASE WHEN status IN ('Pending', 'Queued') AND run_at <= $2 THEN run_at END) \
                 FROM Jobs WHERE job_type = $1",
            )
            .bind(queue)
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
        let count = |v: Option<i64>| u64::try_from(v.unwrap_or(0)).unwrap_or(0);
        Ok(Depth {
            pending: count(row.0),
            delayed: count(row.1),
            running: count(row.2),
            dead: count(row.3),
            oldest_pending_age: row
                .4
                .map(|at| Duration::from_secs(u64::try_from(now - at).unwrap_or(0))),
        })
    }

    fn waker(&self, queue: &str) -> Arc<Notify> {
        match self.wakers.lock() {
            Ok(mut wakers) => wakers.entry(queue.to_owned()).or_default().clone(),
            // A poisoned map: a fresh Notify still works (the fallback poll
            // covers the wake-ups it misses).
            Err(_) => Arc::new(Notify::new()),
        }
    }

    fn wake(&self, queue: &str) {
        self.waker(queue).notify_one();
    }

    /// The apalis backend for one consumer of `queue`: woken by pushes in
    /// this process, polling every [`FALLBACK_POLL`] (by default) otherwise.
    #[must_use]
    pub fn backend<Args>(&self, queue: &str, options: ConsumerOptions) -> SqliteQueueBackend<Args> {
        SqliteQueueBackend::new(RowConsumer::new(
            self.pool.clone(),
            queue,
            options,
            self.waker(queue),
            self.fallback_poll,
        ))
    }

    /// The pool the queue lives in.
    #[must_use]
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}
