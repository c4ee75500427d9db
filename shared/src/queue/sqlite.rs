//! The embedded queue: apalis-sqlite in Rose's own SQLite file.
//!
//! apalis-sqlite only fetches when its worker is polled, and an idle worker is
//! polled on its heartbeat. So every push in this process also sends a wake-up
//! on a per-queue channel that the worker's poll strategy listens on: a push
//! reaches an idle worker at once. A slow interval remains as the fallback for
//! rows written by another process (e.g. `rose queue retry`).
//!
//! Each push is a fresh apalis task (its own ULID); the payload names the job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apalis_core::backend::ext::BackendExt;
use apalis_core::backend::ext::poll_strategy::{PollWith, Strategy};
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_sqlite::{Config as ApalisConfig, SqliteStorage};
use futures::channel::mpsc;
use serde::Serialize;
use sqlx::SqlitePool;

use super::{Depth, QueueError};

/// How often an idle embedded worker looks for rows no in-process push announced.
pub const FALLBACK_POLL: Duration = Duration::from_secs(1);

/// A wake-up channel per queue: the sender side for pushers, the receiver
/// taken once by that queue's worker.
#[derive(Debug)]
struct WakeSlot {
    tx: mpsc::Sender<()>,
    rx: Option<mpsc::Receiver<()>>,
}

/// The embedded queue carrier.
#[derive(Debug, Clone)]
pub struct SqliteQueue {
    pool: SqlitePool,
    wakers: Arc<Mutex<HashMap<String, WakeSlot>>>,
    fallback_poll: Duration,
}

/// The backend a worker of this queue runs on.
pub type SqliteBackend<Args> = PollWith<SqliteStorage<Args>, Strategy>;

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

    /// Pushes one message and wakes the queue's worker in this process.
    ///
    /// # Errors
    /// When the row cannot be written.
    pub async fn push<T: Serialize + Sync>(
        &self,
        queue: &str,
        _id: &str,
        message: &T,
    ) -> Result<(), QueueError> {
        let bytes = serde_json::to_vec(message)?;
        let task = TaskBuilder::new(bytes)
            .task_id(TaskId::from_ulid(ulid::Ulid::generate()))
            .max_attempts(1)
            .build();
        let mut conn = self.pool.acquire().await?;
        apalis_sqlite::queries::push_tasks(&mut *conn, queue, &[task]).await?;
        self.wake(queue);
        Ok(())
    }

    /// Schedules one message after `delay` (the queue's clock has whole
    /// seconds, so it is rounded up) and wakes the worker when it is due.
    ///
    /// # Errors
    /// When the row cannot be written.
    pub async fn push_delayed<T: Serialize + Sync>(
        &self,
        queue: &str,
        message: &T,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let bytes = serde_json::to_vec(message)?;
        let due = std::time::SystemTime::now() + delay;
        let secs = due
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .unwrap_or_default();
        let task = TaskBuilder::new(bytes)
            .task_id(TaskId::from_ulid(ulid::Ulid::generate()))
            .max_attempts(1)
            .run_at_timestamp(secs)
            .build();
        let mut conn = self.pool.acquire().await?;
        apalis_sqlite::queries::push_tasks(&mut *conn, queue, &[task]).await?;
        let me = self.clone();
        let queue = queue.to_owned();
        let wake_at = std::time::UNIX_EPOCH + Duration::from_secs(secs);
        let wait = wake_at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            me.wake(&queue);
        });
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

    fn wake(&self, queue: &str) {
        if let Ok(mut wakers) = self.wakers.lock() {
            let slot = wakers.entry(queue.to_owned()).or_insert_with(new_slot);
            // A full channel already holds a pending wake-up: nothing to add.
            let _ = slot.tx.try_send(());
        }
    }

    /// The apalis backend for one worker of `queue`: woken by pushes in this
    /// process, polling every [`FALLBACK_POLL`] (by default) otherwise.
    #[must_use]
    pub fn backend<Args>(&self, queue: &str, batch_size: usize) -> SqliteBackend<Args> {
        let rx = self.wakers.lock().ok().and_then(|mut wakers| {
            wakers
                .entry(queue.to_owned())
                .or_insert_with(new_slot)
                .rx
                .take()
        });
        let mut strategy = Strategy::new().interval(self.fallback_poll);
        if let Some(rx) = rx {
            strategy = strategy.stream(rx);
        }
        let config = ApalisConfig::default()
            .queue(queue)
            .batch_size(batch_size.max(1))
            // Records each task's end (Done/Failed); without it finished
            // tasks would stay `Running` and be resumed again at every start.
            .persist_results(true)
            .heartbeat_interval(Duration::from_secs(10));
        SqliteStorage::new(&self.pool)
            .with_config(config)
            .poll_with_strategy(strategy)
    }

    /// The pool the queue lives in.
    #[must_use]
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn new_slot() -> WakeSlot {
    let (tx, rx) = mpsc::channel(1);
    WakeSlot { tx, rx: Some(rx) }
}
