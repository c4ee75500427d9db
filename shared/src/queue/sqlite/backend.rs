//! The embedded queue's apalis backend, on apalis-sqlite's `Jobs` table.
//!
//! apalis-sqlite's own backend is not used to consume: it polls whenever its
//! worker is woken and its fetch wakes the worker again, so an idle
//! `rose serve` ran some 2,000 fetches a second; and a failed task is
//! fetched again at once, with no backoff. This one does what the Redis
//! backend does, over the same table:
//!
//! - a fetch loop per consumer: reads the next due time (a read, not a
//!   write), claims what is due in one `UPDATE … RETURNING` (`Running`,
//!   `lock_by` = the consumer, `lock_at` = now) and sleeps until a push in
//!   this process wakes it, the next delayed message falls due, or the
//!   fallback poll (writes from other processes, e.g. `rose queue retry`);
//! - a heartbeat that refreshes `lock_at` of the messages it holds, only
//!   while it holds any;
//! - a reclaim every half visibility timeout: messages `Running` whose
//!   `lock_at` is older than the visibility timeout (their settlement failed,
//!   or their consumer stopped without handing them back) become `Pending`;
//! - settlement by the shared [`AckLayer`](crate::queue::settle::AckLayer): success marks the row `Done`
//!   (batched), a failure is settled by the [`RetryPolicy`]: `Pending` again
//!   with `attempts + 1` and `run_at` after the backoff, or `Killed` (the
//!   dead letters) with the error in `last_result`.
//!
//! Times in the table are unix seconds (apalis' convention, which the
//! inspection queries share), so a delay is rounded up to the next second.
//!
//! [`RetryPolicy`]: crate::queue::RetryPolicy

use std::sync::{Arc, Mutex};
use std::time::Duration;

use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use sqlx::SqlitePool;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::queue::consumer::{Consumer, ConsumerBackend};
use crate::queue::settle::{Carrier, Held};
use crate::queue::{Abort, ConsumerOptions, QueueError, Settle};

/// What a task carries about its row (in the task's data).
#[derive(Debug, Clone)]
pub struct RowMeta {
    /// The row's task id (a ULID).
    pub id: String,
    /// Failed attempts before this one.
    pub attempt: u32,
}

type AckRequest = (String, oneshot::Sender<Result<(), QueueError>>);

/// One consumer of one queue: what its loops, its settling layer and its
/// backend share.
pub struct RowConsumer {
    pool: SqlitePool,
    queue: String,
    options: ConsumerOptions,
    /// Woken by pushes in this process.
    wake: Arc<Notify>,
    fallback_poll: Duration,
    held: Held,
    acks: mpsc::UnboundedSender<AckRequest>,
    ack_rx: Mutex<Option<mpsc::UnboundedReceiver<AckRequest>>>,
}

/// Unix seconds now.
fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The unix second at which a wait of `wait` from now is over (rounded up).
pub(super) fn due_secs(wait: Duration) -> i64 {
    let due =
        chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
    due.timestamp() + i64::from(due.timestamp_subsec_nanos() > 0)
}

impl Carrier for RowConsumer {
    type Meta = RowMeta;

    fn claim(meta: &RowMeta) -> &str {
        &meta.id
    }

    fn held(&self) -> &Held {
        &self.held
    }

    fn complete(&self, meta: &RowMeta) -> BoxFuture<'_, Result<(), QueueError>> {
        let id = meta.id.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.acks
                .send((id, tx))
                .map_err(|_| QueueError::Stopped("acknowledger"))?;
            rx.await.map_err(|_| QueueError::Stopped("acknowledger"))?
        })
    }

    fn fail<'a>(
        &'a self,
        meta: &'a RowMeta,
        error: &'a BoxDynError,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(self.settle_failure(meta, error))
    }
}

impl RowConsumer {
    /// Retries, defers or buries a failed attempt, as the retry policy says.
    async fn settle_failure(&self, meta: &RowMeta, error: &BoxDynError) -> Result<(), QueueError> {
        let attempts = meta.attempt + 1;
        let (wait, counted) = match self.options.retry.settle(attempts, error) {
            Settle::Retry(wait) => (wait, attempts),
            Settle::Defer(wait) => (wait, meta.attempt),
            Settle::Bury(reason) => {
                sqlx::query(
                    "UPDATE Jobs SET status = 'Killed', attempts = $1, done_at = $2, \
                     lock_by = NULL, lock_at = NULL, last_result = $3 \
                     WHERE id = $4 AND job_type = $5",
                )
                .bind(i64::from(attempts))
                .bind(now_secs())
                .bind(&reason)
                .bind(&meta.id)
                .bind(&self.queue)
                .execute(&self.pool)
                .await?;
                tracing::warn!(queue = %self.queue, task = %meta.id, attempts, error = %reason, "job moved to the dead letters");
                return Ok(());
            }
        };
        sqlx::query(
            "UPDATE Jobs SET status = 'Pending', attempts = $1, run_at = $2, \
             lock_by = NULL, lock_at = NULL, last_result = $3 \
             WHERE id = $4 AND job_type = $5",
        )
        .bind(i64::from(counted))
        .bind(due_secs(wait))
        .bind(error.to_string())
        .bind(&meta.id)
        .bind(&self.queue)
        .execute(&self.pool)
        .await?;
        // The fetch loop recomputes its next due time.
        self.wake.notify_one();
        tracing::info!(queue = %self.queue, task = %meta.id, attempts = counted, wait_ms = wait.as_millis() as u64, "job retry scheduled");
        Ok(())
    }

    /// Records this consumer in apalis' `Workers` table (`Jobs.lock_by`
    /// refers to it).
    async fn register(&self) -> Result<(), QueueError> {
        sqlx::query(
            "INSERT INTO Workers (id, worker_type, storage_name, layers, last_seen, started_at) \
             VALUES ($1, $2, 'RoseSqliteQueue', '', $3, $3) \
             ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen",
        )
        .bind(&self.options.consumer)
        .bind(&self.queue)
        .bind(now_secs())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The earliest `run_at` of a waiting message (unix seconds).
    async fn next_due(&self) -> Result<Option<i64>, QueueError> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(run_at) FROM Jobs WHERE job_type = $1 AND status = 'Pending'",
        )
        .bind(&self.queue)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Claims up to `limit` due messages.
    async fn claim_due(&self, limit: usize) -> Result<Vec<(String, Vec<u8>, i64)>, QueueError> {
        let now = now_secs();
        Ok(sqlx::query_as(
            "UPDATE Jobs SET status = 'Running', lock_by = $1, lock_at = $2 \
             WHERE ROWID IN (SELECT ROWID FROM Jobs WHERE job_type = $3 AND status = 'Pending' \
               AND run_at <= $2 ORDER BY priority DESC, run_at ASC, id ASC LIMIT $4) \
             RETURNING id, job, attempts",
        )
        .bind(&self.options.consumer)
        .bind(now)
        .bind(&self.queue)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Puts back messages whose claim went stale (see the module documentation).
    async fn reclaim(&self) -> Result<u64, QueueError> {
        let stale = now_secs()
            - i64::try_from(self.options.visibility_timeout.as_secs()).unwrap_or(i64::MAX / 2);
        let done = sqlx::query(
            "UPDATE Jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL \
             WHERE job_type = $1 AND status IN ('Queued', 'Running') AND lock_at < $2",
        )
        .bind(&self.queue)
        .bind(stale)
        .execute(&self.pool)
        .await?;
        let n = done.rows_affected();
        if n > 0 {
            tracing::info!(queue = %self.queue, count = n, "reclaimed messages whose claim went stale");
        }
        Ok(n)
    }

    /// Hands back every message this consumer still claims: called once
    /// every started task finished, so these were fetched but never started.
    async fn hand_back_all(&self) -> Result<u64, QueueError> {
        let done = sqlx::query(
            "UPDATE Jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL \
             WHERE job_type = $1 AND lock_by = $2 AND status = 'Running'",
        )
        .bind(&self.queue)
        .bind(&self.options.consumer)
        .execute(&self.pool)
        .await?;
        let n = done.rows_affected();
        if n > 0 {
            tracing::info!(queue = %self.queue, count = n, "handed unstarted messages back to the queue");
        }
        Ok(n)
    }

    /// Hands claimed but unstarted messages back to the queue.
    async fn hand_back(&self, ids: &[String]) -> Result<u64, QueueError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let list = serde_json::to_string(ids)?;
        let done = sqlx::query(
            "UPDATE Jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL \
             WHERE job_type = $1 AND lock_by = $2 AND status = 'Running' \
             AND id IN (SELECT value FROM json_each($3))",
        )
        .bind(&self.queue)
        .bind(&self.options.consumer)
        .bind(list)
        .execute(&self.pool)
        .await?;
        for id in ids {
            self.held.release(id);
        }
        Ok(done.rows_affected())
    }
}

/// The apalis backend of one embedded queue's consumer.
pub type SqliteQueueBackend<Args> = ConsumerBackend<RowConsumer, Args>;

impl RowConsumer {
    pub(super) fn new(
        pool: SqlitePool,
        queue: &str,
        options: ConsumerOptions,
        wake: Arc<Notify>,
        fallback_poll: Duration,
    ) -> Self {
        let (acks, ack_rx) = mpsc::unbounded_channel();
        Self {
            pool,
            queue: queue.to_owned(),
            options,
            wake,
            fallback_poll,
            held: Held::default(),
            acks,
            ack_rx: Mutex::new(Some(ack_rx)),
        }
    }
}

impl Consumer for RowConsumer {
    fn options(&self) -> &ConsumerOptions {
        &self.options
    }

    fn spawn<Args: DeserializeOwned + Send + 'static>(
        self: &Arc<Self>,
        tx: mpsc::Sender<Task<Args>>,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        tokio::spawn(heartbeat_loop(self.clone(), stop.clone()));
        if let Some(ack_rx) = self.ack_rx.lock().ok().and_then(|mut r| r.take()) {
            tokio::spawn(ack_loop(self.clone(), ack_rx, stop.clone()));
        }
        tokio::spawn(fetch_loop(self.clone(), tx, stop))
    }

    fn close(
        self: Arc<Self>,
        fetcher: Option<JoinHandle<()>>,
    ) -> BoxFuture<'static, Result<(), QueueError>> {
        Box::pin(async move {
            // A fetch in flight finishes (and hands back what it took).
            if let Some(fetcher) = fetcher {
                let _ = fetcher.await;
            }
            self.hand_back_all().await.map(|_| ())
        })
    }
}

/// Claims due messages while there is room, then sleeps (see the module
/// documentation); errors are logged and retried with a capped backoff.
async fn fetch_loop<Args: DeserializeOwned + Send + 'static>(
    shared: Arc<RowConsumer>,
    tx: mpsc::Sender<Task<Args>>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let reclaim_every = (shared.options.visibility_timeout / 2).max(Duration::from_secs(1));
    let mut registered = false;
    let mut next_reclaim = Instant::now();
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = tx.reserve() => match p { Ok(p) => p, Err(_) => return },
        };
        let room = tx.capacity() + 1;
        let claimed = async {
            if !registered {
                shared.register().await?;
                registered = true;
            }
            if Instant::now() >= next_reclaim {
                next_reclaim = Instant::now() + reclaim_every;
                shared.reclaim().await?;
            }
            let due = shared.next_due().await?;
            if due.is_none_or(|due| due > now_secs()) {
                return Ok((Vec::new(), due));
            }
            Ok::<_, QueueError>((shared.claim_due(room).await?, due))
        }
        .await;
        let (rows, due) = match claimed {
            Ok(found) => {
                backoff = Duration::from_millis(100);
                found
            }
            Err(e) => {
                drop(permit);
                tracing::warn!(queue = %shared.queue, error = %e, "queue fetch failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if stop.is_cancelled() {
            // Claimed after the worker began closing: straight back.
            let ids: Vec<String> = rows.into_iter().map(|(id, ..)| id).collect();
            if let Err(e) = shared.hand_back(&ids).await {
                tracing::warn!(queue = %shared.queue, error = %e, "could not hand messages back; they are reclaimed later");
            }
            return;
        }
        if rows.is_empty() {
            drop(permit);
            let wait = match due {
                Some(due) => Duration::from_secs(u64::try_from(due - now_secs()).unwrap_or(0)),
                None => shared.fallback_poll,
            }
            .min(shared.fallback_poll)
            .min(next_reclaim.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(10));
            tokio::select! {
                _ = stop.cancelled() => return,
                () = shared.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        let mut permit = Some(permit);
        for (id, job, attempts) in rows {
            let Some(task) = decode::<Args>(&shared, id, &job, attempts).await else {
                continue;
            };
            match permit.take() {
                Some(p) => p.send(task),
                None => {
                    if tx.send(task).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// The task for a claimed row; an undecodable one goes to the dead letters.
async fn decode<Args: DeserializeOwned>(
    shared: &RowConsumer,
    id: String,
    job: &[u8],
    attempts: i64,
) -> Option<Task<Args>> {
    let meta = RowMeta {
        id,
        attempt: u32::try_from(attempts).unwrap_or(0),
    };
    match serde_json::from_slice::<Args>(job) {
        Ok(args) => {
            shared.held.hold(&meta.id);
            Some(
                TaskBuilder::new(args)
                    .task_id(TaskId::from_string(meta.id.clone()))
                    .attempt(meta.attempt as usize)
                    .data(Arc::new(meta))
                    .build(),
            )
        }
        Err(e) => {
            tracing::error!(queue = %shared.queue, task = %meta.id, error = %e, "undecodable queue message");
            let error: BoxDynError = Box::new(Abort(format!("undecodable message: {e}")));
            if let Err(e) = shared.settle_failure(&meta, &error).await {
                tracing::warn!(queue = %shared.queue, task = %meta.id, error = %e, "could not bury an undecodable message");
            }
            None
        }
    }
}

/// Refreshes the claims this consumer holds, while it holds any.
async fn heartbeat_loop(shared: Arc<RowConsumer>, stop: CancellationToken) {
    let every = (shared.options.visibility_timeout / 3).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let ids = shared.held.snapshot();
        if ids.is_empty() {
            continue;
        }
        let renewed = async {
            let list = serde_json::to_string(&ids)?;
            sqlx::query(
                "UPDATE Jobs SET lock_at = $1 WHERE job_type = $2 AND lock_by = $3 \
                 AND status = 'Running' AND id IN (SELECT value FROM json_each($4))",
            )
            .bind(now_secs())
            .bind(&shared.queue)
            .bind(&shared.options.consumer)
            .bind(list)
            .execute(&shared.pool)
            .await?;
            Ok::<_, QueueError>(())
        }
        .await;
        if let Err(e) = renewed {
            tracing::warn!(queue = %shared.queue, error = %e, "queue heartbeat failed");
        }
    }
}

/// Marks finished messages `Done` in batches: whatever finished while the
/// previous batch was written goes in the next. Ends once `stop` is
/// cancelled and nothing is left.
async fn ack_loop(
    shared: Arc<RowConsumer>,
    mut rx: mpsc::UnboundedReceiver<AckRequest>,
    stop: CancellationToken,
) {
    let mut batch: Vec<AckRequest> = Vec::with_capacity(256);
    loop {
        tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, 256) => if n == 0 { return },
            () = stop.cancelled() => {
                while batch.len() < 256 && let Ok(request) = rx.try_recv() {
                    batch.push(request);
                }
                if batch.is_empty() {
                    rx.close();
                    return;
                }
            }
        }
        let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
        let result = async {
            let list = serde_json::to_string(&ids)?;
            sqlx::query(
                "UPDATE Jobs SET status = 'Done', done_at = $1, \
                 lock_at = NULL WHERE job_type = $2 AND id IN (SELECT value FROM json_each($3))",
            )
            .bind(now_secs())
            .bind(&shared.queue)
            .bind(list)
            .execute(&shared.pool)
            .await?;
            Ok::<_, QueueError>(())
        }
        .await;
        let result = result.map_err(|e| e.to_string());
        for (_, done) in batch.drain(..) {
            let _ = done.send(result.clone().map_err(QueueError::AckFailed));
        }
    }
}
