//! Job change notifications, across processes.
//!
//! Whoever changes a job row publishes its id; waiters (long-polls, event
//! streams) subscribe and re-read the row, which stays the truth. A change is
//! either progress (a stage began) or an end (the job succeeded or failed):
//! long-polls wait for the end only, so a job's stages cost them no reads. On the
//! embedded deployment this is an in-process broadcast. On the scaled one the
//! worker that changes a job is not the api process holding the request, so
//! ids travel over Redis pub/sub on channel `P:job-events`; each api process
//! keeps one subscription and fans out in-process. A missed notification only
//! delays a waiter until its next periodic re-read.
//!
//! On the wire a progress notification is `ID:progress` and any other change
//! is the bare `ID`; a receiver treats whatever it does not know as a change
//! worth a re-read, so processes of different versions still wake each other.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::ConnectionManager;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::domain::{Job, JobId};
use crate::store::{Store, StoreResult};

/// How often a waiter re-reads the row even without a notification.
const RECHECK: Duration = Duration::from_millis(500);

/// One notification: job `id` changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// The job.
    pub id: JobId,
    /// False when only its progress moved (a stage began); true for anything
    /// else, the end of the job among it.
    pub decisive: bool,
}

impl Change {
    /// The wire form (see the module documentation).
    fn encode(self) -> String {
        if self.decisive {
            self.id.to_string()
        } else {
            format!("{}:progress", self.id)
        }
    }

    fn decode(payload: &str) -> Option<Self> {
        let (id, decisive) = match payload.split_once(':') {
            Some((id, "progress")) => (id, false),
            Some((id, _)) => (id, true),
            None => (payload, true),
        };
        Some(Self {
            id: id.parse().ok()?,
            decisive,
        })
    }
}

/// Publishes and delivers job change notifications.
#[derive(Clone)]
pub struct JobEvents {
    local: broadcast::Sender<Change>,
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
        let (local, _) = broadcast::channel(4096);
        Self { local, redis: None }
    }

    /// Notifications over Redis pub/sub on `{prefix}:job-events`.
    #[must_use]
    pub fn redis(client: redis::Client, conn: ConnectionManager, prefix: &str) -> Self {
        let (local, _) = broadcast::channel(4096);
        Self {
            local,
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
        self.send(Change { id, decisive: true }).await;
    }

    /// Announces that job `id` entered a stage: event streams show it,
    /// long-polls waiting for the end do not re-read for it.
    pub async fn publish_progress(&self, id: JobId) {
        self.send(Change {
            id,
            decisive: false,
        })
        .await;
    }

    async fn send(&self, change: Change) {
        match &self.redis {
            None => {
                let _ = self.local.send(change);
            }
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

    /// A receiver of job changes (starts the Redis listener on first use).
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        if let Some(link) = &self.redis {
            link.listening.get_or_init(|| {
                tokio::spawn(listen(link.clone(), self.local.downgrade()));
            });
        }
        self.local.subscribe()
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
        let mut rx = self.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            let job = store.get_job(id).await?;
            let done = job.as_ref().is_none_or(|j| j.status.is_terminal());
            if done || Instant::now() >= deadline {
                return Ok(job);
            }
            let wake = (Instant::now() + RECHECK).min(deadline);
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(wake) => break,
                    got = rx.recv() => match got {
                        Ok(change) if change.id == id && change.decisive => break,
                        Ok(_) => {}
                        // Lagged: something may have been missed, re-read.
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => {
                            tokio::time::sleep_until(wake).await;
                            break;
                        }
                    },
                }
            }
        }
    }
}

/// Forwards Redis notifications into the local broadcast while anyone holds it.
async fn listen(link: Arc<RedisLink>, local: broadcast::WeakSender<Change>) {
    loop {
        match link.client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if let Err(e) = pubsub.subscribe(&link.channel).await {
                    tracing::warn!(error = %e, "job events subscribe failed");
                } else {
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        let Some(sender) = local.upgrade() else {
                            return;
                        };
                        let payload: String = msg.get_payload().unwrap_or_default();
                        if let Some(change) = Change::decode(&payload) {
                            let _ = sender.send(change);
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "job events connection failed"),
        }
        if local.upgrade().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_and_unknown_forms_count_as_decisive() {
        let id = JobId::new();
        for decisive in [true, false] {
            let change = Change { id, decisive };
            assert_eq!(Change::decode(&change.encode()), Some(change));
        }
        assert_eq!(
            Change::decode(&id.to_string()).map(|c| c.decisive),
            Some(true)
        );
        let later = format!("{id}:something-newer");
        assert_eq!(Change::decode(&later), Some(Change { id, decisive: true }));
        assert_eq!(Change::decode("not-an-id:progress"), None);
    }
}
