//! Job change notifications, across processes.
//!
//! Whoever changes a job row publishes its id; waiters (long-polls, event
//! streams) subscribe and re-read the row, which stays the truth. A change is
//! either progress (a stage began) or an end (the job succeeded or failed):
//! long-polls wait for the end only, so a job's stages cost them no reads. On the
//! embedded deployment this is an in-process broadcast. On the scaled one the
//! worker that changes a job is not the api process holding the request, so
//! ids travel over Redis pub/sub on channel `P:job-events`; each api process
//! keeps one subscription and fans out in-process, to the waiters of the
//! changed job only. A missed notification only delays a waiter until its
//! next periodic re-read ([`RECHECK`]).
//!
//! On the wire a progress notification is `ID:progress`, a cancel
//! `ID:cancel` (the worker running the job listens for it and stops), and any
//! other change is the bare `ID`; a receiver treats whatever it does not know as a change
//! worth a re-read, so processes of different versions still wake each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::ConnectionManager;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::domain::{Job, JobId};
use crate::store::{Store, StoreResult};

/// How often a waiter re-reads the row even without a notification (the
/// bound on how late a missed notification makes it).
pub const RECHECK: Duration = Duration::from_secs(1);

/// Notifications a waiter may fall behind by before it re-reads at once.
const PER_JOB_BACKLOG: usize = 16;

/// What kind of change a notification announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only its progress moved (a stage began, a sentence was spoken).
    Progress,
    /// Anything else, the end of the job among it.
    Decisive,
    /// The job was cancelled: the worker running it stops (decisive too).
    Cancel,
}

impl Kind {
    fn decisive(self) -> bool {
        self != Self::Progress
    }
}

/// One notification: job `id` changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// The job.
    pub id: JobId,
    pub kind: Kind,
}

impl Change {
    /// The wire form (see the module documentation).
    fn encode(self) -> String {
        match self.kind {
            Kind::Decisive => self.id.to_string(),
            Kind::Progress => format!("{}:progress", self.id),
            Kind::Cancel => format!("{}:cancel", self.id),
        }
    }

    fn decode(payload: &str) -> Option<Self> {
        let (id, kind) = match payload.split_once(':') {
            Some((id, "progress")) => (id, Kind::Progress),
            Some((id, "cancel")) => (id, Kind::Cancel),
            Some((id, _)) => (id, Kind::Decisive),
            None => (payload, Kind::Decisive),
        };
        Some(Self {
            id: id.parse().ok()?,
            kind,
        })
    }
}

/// The jobs someone waits on, each with its own channel: a change wakes the
/// waiters of its job only, so a waiter's wake-ups are bounded by its own
/// job's changes plus one re-read per [`RECHECK`], however busy the
/// system. An entry lives while a waiter holds it.
#[derive(Default)]
struct Waiters(Mutex<HashMap<JobId, (broadcast::Sender<Kind>, usize)>>);

impl Waiters {
    fn deliver(&self, change: Change) {
        if let Ok(jobs) = self.0.lock()
            && let Some((tx, _)) = jobs.get(&change.id)
        {
            let _ = tx.send(change.kind);
        }
    }

    fn join(self: &Arc<Self>, id: JobId) -> JobWatch {
        let rx = match self.0.lock() {
            Ok(mut jobs) => {
                let entry = jobs
                    .entry(id)
                    .or_insert_with(|| (broadcast::channel(PER_JOB_BACKLOG).0, 0));
                entry.1 += 1;
                Some(entry.0.subscribe())
            }
            // Poisoned: the waiter still re-reads every RECHECK.
            Err(_) => None,
        };
        JobWatch {
            id,
            rx,
            waiters: Arc::downgrade(self),
        }
    }

    fn leave(&self, id: JobId) {
        if let Ok(mut jobs) = self.0.lock()
            && let Some(entry) = jobs.get_mut(&id)
        {
            entry.1 -= 1;
            if entry.1 == 0 {
                jobs.remove(&id);
            }
        }
    }
}

/// A waiter's view of one job's notifications (see [`JobEvents::watch`]).
pub struct JobWatch {
    id: JobId,
    rx: Option<broadcast::Receiver<Kind>>,
    waiters: Weak<Waiters>,
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        if let Some(waiters) = self.waiters.upgrade() {
            waiters.leave(self.id);
        }
    }
}

impl JobWatch {
    /// Waits until the job changed (only decisively, with `decisive_only`),
    /// or until `wake` at the latest.
    pub async fn changed(&mut self, decisive_only: bool, wake: Instant) {
        let Some(rx) = &mut self.rx else {
            tokio::time::sleep_until(wake).await;
            return;
        };
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(wake) => return,
                got = rx.recv() => match got {
                    Ok(kind) if kind.decisive() || !decisive_only => return,
                    Ok(_) => {}
                    // Lagged: something may have been missed, re-read.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => {
                        tokio::time::sleep_until(wake).await;
                        return;
                    }
                },
            }
        }
    }
}

impl JobWatch {
    /// Waits for a sign of a cancel: `true` at the job's cancel
    /// notification; `false` when notifications were missed (the caller
    /// re-reads the row to know). Never returns when notifications cannot
    /// arrive at all.
    pub async fn cancelled(&mut self) -> bool {
        let Some(rx) = &mut self.rx else {
            return std::future::pending().await;
        };
        loop {
            match rx.recv().await {
                Ok(Kind::Cancel) => return true,
                Err(broadcast::error::RecvError::Lagged(_)) => return false,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// Publishes and delivers job change notifications.
#[derive(Clone)]
pub struct JobEvents {
    waiters: Arc<Waiters>,
    redis: Option<Arc<RedisLink>>,
}

struct RedisLink {
    client: redis::Client,
    conn: ConnectionManager,
    channel: String,
    listening: OnceLock<()>,
}

impl std::fmt::Debug for JobEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobEvents")
            .field("redis", &self.redis.as_ref().map(|r| r.channel.as_str()))
            .finish()
    }
}

impl JobEvents {
    /// In-process notifications only (the embedded deployment).
    #[must_use]
    pub fn local() -> Self {
        Self {
            waiters: Arc::default(),
            redis: None,
        }
    }

    /// Notifications over Redis pub/sub on `{prefix}:job-events`.
    #[must_use]
    pub fn redis(client: redis::Client, conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            waiters: Arc::default(),
            redis: Some(Arc::new(RedisLink {
                client,
                conn,
                channel: format!("{prefix}:job-events"),
                listening: OnceLock::new(),
            })),
        }
    }

    /// Announces that job `id` changed (it ended, was rescheduled, its
    /// callback moved). Best effort: waiters re-read periodically.
    pub async fn publish(&self, id: JobId) {
        self.send(Change {
            id,
            kind: Kind::Decisive,
        })
        .await;
    }

    /// Announces that job `id` was cancelled: its followers see the end, and
    /// the worker running it stops.
    pub async fn publish_cancel(&self, id: JobId) {
        self.send(Change {
            id,
            kind: Kind::Cancel,
        })
        .await;
    }

    /// Announces that job `id` entered a stage: event streams show it,
    /// long-polls waiting for the end do not re-read for it.
    pub async fn publish_progress(&self, id: JobId) {
        self.send(Change {
            id,
            kind: Kind::Progress,
        })
        .await;
    }

    async fn send(&self, change: Change) {
        match &self.redis {
            None => self.waiters.deliver(change),
            Some(link) => {
                let mut conn = link.conn.clone();
                let sent: Result<i64, _> = redis::cmd("PUBLISH")
                    .arg(&link.channel)
                    .arg(change.encode())
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "job event publish failed");
                }
            }
        }
    }

    /// Starts watching job `id` (and, on first use, the Redis listener):
    /// watch before the first read, so no change falls in between.
    #[must_use]
    pub fn watch(&self, id: JobId) -> JobWatch {
        self.listen();
        self.waiters.join(id)
    }

    /// Starts hearing other processes' notifications now rather than at the
    /// first [`Self::watch`] (a worker does, so the first cancel it is sent
    /// is not lost to a subscription still on its way).
    pub fn listen(&self) {
        if let Some(link) = &self.redis {
            link.listening.get_or_init(|| {
                tokio::spawn(listen(link.clone(), Arc::downgrade(&self.waiters)));
            });
        }
    }

    /// Waits until job `id` is finished or `timeout` passes; returns the row
    /// as last read (`None` when the job does not exist).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn wait_for_terminal(
        &self,
        store: &dyn Store,
        id: JobId,
        timeout: Duration,
    ) -> StoreResult<Option<Job>> {
        let mut watch = self.watch(id);
        let deadline = Instant::now() + timeout;
        loop {
            let job = store.get_job(id).await?;
            let done = job.as_ref().is_none_or(|j| j.status.is_terminal());
            if done || Instant::now() >= deadline {
                return Ok(job);
            }
            watch
                .changed(true, (Instant::now() + RECHECK).min(deadline))
                .await;
        }
    }
}

/// Forwards Redis notifications to this process's waiters while it has any.
async fn listen(link: Arc<RedisLink>, waiters: Weak<Waiters>) {
    loop {
        match link.client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if let Err(e) = pubsub.subscribe(&link.channel).await {
                    tracing::warn!(error = %e, "job events subscribe failed");
                } else {
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        let Some(waiters) = waiters.upgrade() else {
                            return;
                        };
                        let payload: String = msg.get_payload().unwrap_or_default();
                        if let Some(change) = Change::decode(&payload) {
                            waiters.deliver(change);
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "job events connection failed"),
        }
        if waiters.upgrade().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_waiter_wakes_for_its_own_job_only_and_leaves_no_entry() {
        let events = JobEvents::local();
        let mine = JobId::new();
        let mut watch = events.watch(mine);
        let waiting = tokio::spawn(async move {
            watch
                .changed(true, Instant::now() + Duration::from_secs(3600))
                .await;
            watch
        });
        for _ in 0..1000 {
            events.publish(JobId::new()).await;
        }
        events.publish_progress(mine).await;
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "other jobs' changes and its own progress do not wake a long-poll"
        );
        events.publish(mine).await;
        let watch = waiting.await.expect("woken by its job's end");
        assert_eq!(events.waiters.0.lock().map(|j| j.len()).ok(), Some(1));
        drop(watch);
        assert_eq!(
            events.waiters.0.lock().map(|j| j.len()).ok(),
            Some(0),
            "nobody waits: no entry kept"
        );
    }

    #[test]
    fn changes_round_trip_and_unknown_forms_count_as_decisive() {
        let id = JobId::new();
        for kind in [Kind::Decisive, Kind::Progress, Kind::Cancel] {
            let change = Change { id, kind };
            assert_eq!(Change::decode(&change.encode()), Some(change));
        }
        assert_eq!(
            Change::decode(&id.to_string()).map(|c| c.kind),
            Some(Kind::Decisive)
        );
        let later = format!("{id}:something-newer");
        assert_eq!(
            Change::decode(&later),
            Some(Change {
                id,
                kind: Kind::Decisive
            })
        );
        assert_eq!(Change::decode("not-an-id:progress"), None);
    }
}
