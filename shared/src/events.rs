//! Job change notifications, across processes.
//!
//! Whoever changes a job row publishes its id; waiters (long-polls, later
//! event streams) subscribe and re-read the row, which stays the truth. On the
//! embedded deployment this is an in-process broadcast. On the scaled one the
//! worker that changes a job is not the api process holding the request, so
//! ids travel over Redis pub/sub on channel `P:job-events`; each api process
//! keeps one subscription and fans out in-process. A missed notification only
//! delays a waiter until its next periodic re-read.

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

/// Publishes and delivers job change notifications.
#[derive(Clone)]
pub struct JobEvents {
    local: broadcast::Sender<JobId>,
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

    /// Announces that job `id` changed. Best effort: waiters re-read periodically.
    pub async fn publish(&self, id: JobId) {
        match &self.redis {
            None => {
                let _ = self.local.send(id);
            }
            Some(link) => {
                let mut conn = link.conn.clone();
                let sent: Result<i64, _> = redis::cmd("PUBLISH")
                    .arg(&link.channel)
                    .arg(id.to_string())
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "job event publish failed");
                }
            }
        }
    }

    /// A receiver of changed job ids (starts the Redis listener on first use).
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<JobId> {
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
                        Ok(changed) if changed == id => break,
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
async fn listen(link: Arc<RedisLink>, local: broadcast::WeakSender<JobId>) {
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
                        if let Ok(id) = payload.parse::<JobId>() {
                            let _ = sender.send(id);
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
