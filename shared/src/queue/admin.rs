//! Queue inspection and repair for operators, on either carrier: the same
//! figures and actions behind `rose queue …` and `/api/admin/…`.
//!
//! On Redis they come from our Streams backend's inspection; a revived
//! voice job also gets its row put back to `queued`. On the embedded
//! deployment they come from SQL: apalis' `Jobs` table for what the queue
//! holds, and the `voice_jobs` rows for the dead set, since a voice job that
//! failed for good is the row marked `failed` (whatever the queue kept of
//! it); retrying one puts the row back and pushes it again.

use sqlx::Row as _;

use super::{ListStatus, QUEUES, Queue, QueueEntry, QueueError, QueueStats, VOICE_QUEUE};
use crate::domain::{JobId, JobStatus, VoiceTask};
use crate::store::{Database, StoreError};

/// Why a repair could not be done.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no job {0}")]
    NotFound(String),
    #[error("job {0} has not failed; only failed (dead) jobs are retried")]
    NotFailed(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for AdminError {
    fn from(e: sqlx::Error) -> Self {
        Self::Queue(QueueError::Sqlx(e))
    }
}

/// Operator access to the queues of one deployment.
#[derive(Clone, Copy)]
pub struct Admin<'a> {
    pub queue: &'a Queue,
    /// The job rows; on Redis without `DATABASE_URL` only the queue is seen.
    pub db: Option<&'a Database>,
}

impl Admin<'_> {
    /// Counts per queue.
    ///
    /// # Errors
    /// When the carrier or the database cannot be read.
    pub async fn stats(&self) -> Result<Vec<QueueStats>, AdminError> {
        match self.queue {
            Queue::Redis(q) => {
                let mut all = Vec::new();
                for name in q.queue_names().await? {
                    all.push(q.stats(&name).await?);
                }
                Ok(all)
            }
            Queue::Sqlite(q) => {
                let mut all = Vec::new();
                for name in QUEUES {
                    let depth = q.depth(name).await?;
                    let completed: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM Jobs WHERE job_type = $1 AND status = 'Done'",
                    )
                    .bind(name)
                    .fetch_one(q.pool())
                    .await?;
                    let dead = if name == VOICE_QUEUE {
                        self.failed_voice_count().await?
                    } else {
                        depth.dead
                    };
                    all.push(QueueStats {
                        queue: name.to_owned(),
                        pending: depth.pending,
                        delayed: depth.delayed,
                        running: depth.running,
                        dead,
                        oldest_pending_age_ms: depth
                            .oldest_pending_age
                            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                        consumers: Vec::new(),
                        completed: u64::try_from(completed).unwrap_or(0),
                        retried: 0,
                        buried: 0,
                        revived: 0,
                        reclaimed: 0,
                    });
                }
                Ok(all)
            }
        }
    }

    /// Entries of `queue` in `status`, at most `limit`.
    ///
    /// # Errors
    /// When the carrier or the database cannot be read.
    pub async fn list(
        &self,
        queue: &str,
        status: ListStatus,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, AdminError> {
        match self.queue {
            Queue::Redis(q) => Ok(q.list(queue, status, limit).await?),
            Queue::Sqlite(q) => {
                if queue == VOICE_QUEUE && status == ListStatus::Dead {
                    return self.failed_voice_jobs(limit).await;
                }
                let now = chrono::Utc::now().timestamp();
                let filter = match status {
                    ListStatus::Pending => "status IN ('Pending', 'Queued') AND run_at <= $2",
                    ListStatus::Delayed => "status IN ('Pending', 'Queued') AND run_at > $2",
                    ListStatus::Running => "status = 'Running' AND $2 = $2",
                    ListStatus::Dead => "status IN ('Failed', 'Killed') AND $2 = $2",
                };
                let sql = format!(
                    "SELECT job, attempts, run_at, lock_by, last_result FROM Jobs \
                     WHERE job_type = $1 AND {filter} ORDER BY run_at LIMIT $3"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(queue)
                    .bind(now)
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .fetch_all(q.pool())
                    .await?;
                Ok(rows
                    .iter()
                    .map(|row| {
                        let job: Vec<u8> = row.try_get("job").unwrap_or_default();
                        let message: serde_json::Value =
                            serde_json::from_slice(&job).unwrap_or_default();
                        let id = ["job_id", "session_id"]
                            .iter()
                            .find_map(|k| message.get(*k).and_then(|v| v.as_str()))
                            .unwrap_or("?")
                            .to_owned();
                        let run_at: i64 = row.try_get("run_at").unwrap_or(0);
                        let attempts: i64 = row.try_get("attempts").unwrap_or(0);
                        QueueEntry {
                            queue: queue.to_owned(),
                            status: status.as_str(),
                            entry_id: None,
                            id,
                            attempt: u32::try_from(attempts).unwrap_or(0),
                            enqueued_at: None,
                            due_at: (status == ListStatus::Delayed).then_some(run_at * 1000),
                            consumer: row.try_get("lock_by").ok().flatten(),
                            idle_ms: None,
                            error: row
                                .try_get::<Option<String>, _>("last_result")
                                .ok()
                                .flatten(),
                            died_at: None,
                        }
                    })
                    .collect())
            }
        }
    }

    /// Revives one dead job by its id; returns the queue it went back to.
    ///
    /// A failed voice job's row goes back to `queued` before its message is
    /// revived, so a worker that picks the message up at once runs it.
    ///
    /// # Errors
    /// [`AdminError::NotFound`] / [`AdminError::NotFailed`] when there is
    /// nothing to revive under `id`.
    pub async fn retry(&self, id: &str) -> Result<String, AdminError> {
        let job = match (self.db, id.parse::<JobId>()) {
            (Some(db), Ok(job_id)) => db.store().get_job(job_id).await?,
            _ => None,
        };
        let failed = job
            .as_ref()
            .filter(|j| j.status == JobStatus::Failed)
            .cloned();
        if let (Some(job), Some(db)) = (&failed, self.db) {
            db.store().requeue_job(job.id).await?;
        }
        if let Queue::Redis(q) = self.queue
            && let Some(revived) = q.revive(id).await?
        {
            return Ok(revived);
        }
        match (failed, job) {
            // The queue kept nothing of it (the embedded queue, or purged
            // dead letters): push it again.
            (Some(job), _) => {
                let task = VoiceTask {
                    job_id: job.id,
                    request_id: job.request_id,
                };
                self.queue.push_voice(&task).await?;
                Ok(VOICE_QUEUE.to_owned())
            }
            (None, Some(_)) => Err(AdminError::NotFailed(id.to_owned())),
            (None, None) => Err(AdminError::NotFound(id.to_owned())),
        }
    }

    /// Revives every dead job of `queue`; returns how many.
    ///
    /// # Errors
    /// When the carrier or the database cannot be written.
    pub async fn retry_all(&self, queue: &str) -> Result<u64, AdminError> {
        let mut revived = 0;
        if let Queue::Redis(q) = self.queue {
            // Rows first, so a worker that takes a message at once runs it.
            if queue == VOICE_QUEUE
                && let Some(db) = self.db
            {
                for entry in q.list(queue, ListStatus::Dead, 10_000).await? {
                    if let Ok(job_id) = entry.id.parse::<JobId>() {
                        db.store().requeue_job(job_id).await?;
                    }
                }
            }
            revived += q.revive_all(queue).await?;
            return Ok(revived);
        }
        if queue != VOICE_QUEUE {
            return Err(AdminError::Invalid(format!(
                "on the embedded queue only {VOICE_QUEUE} jobs are retried"
            )));
        }
        for entry in self.failed_voice_jobs(10_000).await? {
            match self.retry(&entry.id).await {
                Ok(_) => revived += 1,
                Err(AdminError::NotFailed(_) | AdminError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(revived)
    }

    /// Drops the entries of `queue` in `status` (`done`, `dead` or
    /// `delayed`); returns how many.
    ///
    /// # Errors
    /// [`AdminError::Invalid`] for another status; carrier failures.
    pub async fn purge(&self, queue: &str, status: &str) -> Result<u64, AdminError> {
        match self.queue {
            Queue::Redis(q) => {
                if status == "done" {
                    // Acknowledged jobs leave Redis at once: nothing is kept.
                    return Ok(0);
                }
                let status: ListStatus = status.parse().map_err(AdminError::Invalid)?;
                Ok(q.purge(queue, status).await?)
            }
            Queue::Sqlite(q) => {
                let now = chrono::Utc::now().timestamp();
                let filter = match status {
                    "done" => "status = 'Done' AND $2 = $2",
                    "dead" | "failed" => "status IN ('Failed', 'Killed') AND $2 = $2",
                    "delayed" | "scheduled" => "status IN ('Pending', 'Queued') AND run_at > $2",
                    other => {
                        return Err(AdminError::Invalid(format!(
                            "cannot purge {other:?}: expected done, dead or delayed"
                        )));
                    }
                };
                let sql = format!("DELETE FROM Jobs WHERE job_type = $1 AND {filter}");
                let done = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(queue)
                    .bind(now)
                    .execute(q.pool())
                    .await?;
                Ok(done.rows_affected())
            }
        }
    }

    async fn failed_voice_count(&self) -> Result<u64, AdminError> {
        let Some(db) = self.db else { return Ok(0) };
        let sql = "SELECT COUNT(*) FROM voice_jobs WHERE status = 'failed'";
        let n: i64 = match db {
            Database::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
            Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn failed_voice_jobs(&self, limit: usize) -> Result<Vec<QueueEntry>, AdminError> {
        let Some(db) = self.db else {
            return Ok(Vec::new());
        };
        let sql = "SELECT id, attempts, error_code, error_message, created_at, updated_at \
                   FROM voice_jobs WHERE status = 'failed' ORDER BY updated_at DESC LIMIT $1";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        type FailedRow = (String, i64, Option<String>, Option<String>, i64, i64);
        let rows: Vec<FailedRow> = match db {
            Database::Sqlite(pool) => sqlx::query_as(sql).bind(limit).fetch_all(pool).await?,
            Database::Postgres(pool) => sqlx::query_as(sql).bind(limit).fetch_all(pool).await?,
        };
        Ok(rows
            .into_iter()
            .map(
                |(id, attempts, code, message, created, updated)| QueueEntry {
                    queue: VOICE_QUEUE.to_owned(),
                    status: ListStatus::Dead.as_str(),
                    entry_id: None,
                    id,
                    attempt: u32::try_from(attempts).unwrap_or(0),
                    enqueued_at: Some(created),
                    due_at: None,
                    consumer: None,
                    idle_ms: None,
                    error: code.map(|c| format!("{c}: {}", message.unwrap_or_default())),
                    died_at: Some(updated),
                },
            )
            .collect())
    }
}
