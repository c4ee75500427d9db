//! The worker role: consumes the `voice` queue with apalis and runs the
//! [`pipeline`] for each job; beside it, the `memory` and `summary` queues
//! run the [`background`] work.
//!
//! The carrier follows the deployment: apalis-sqlite on the embedded one, our
//! Redis Streams backend on the scaled one; the handler is the same.

pub mod background;
pub mod persona;
pub mod pipeline;

use std::sync::Arc;

use apalis::prelude::*;
use futures::FutureExt;
use rose_shared::Rose;
use std::time::Duration;

use rose_shared::callback::{self, Attempt};
use rose_shared::domain::{CallbackTask, MemoryTask, SummaryTask, VoiceTask};
use rose_shared::queue::{
    Abort, CALLBACK_QUEUE, MEMORY_QUEUE, Queue, SUMMARY_QUEUE, StreamOptions, VOICE_QUEUE,
};
use tokio_util::sync::CancellationToken;

pub use pipeline::{Outcome, Pipeline, job_backoff};

/// How a worker process runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Voice jobs run at once.
    pub concurrency: usize,
    /// This worker's name (its Redis consumer name: unique per process).
    pub name: String,
}

impl WorkerOptions {
    /// Options from configuration, with a name unique to this process.
    #[must_use]
    pub fn from_rose(rose: &Rose) -> Self {
        Self {
            concurrency: rose.config.worker_concurrency,
            name: unique_name(),
        }
    }
}

/// `host-pid-random`: distinct for every worker process, readable in inspection.
#[must_use]
pub fn unique_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "rose".to_owned());
    let suffix: u32 = rand::random();
    format!("{host}-{}-{suffix:08x}", std::process::id())
}

async fn handle(task: VoiceTask, pipeline: Data<Arc<Pipeline>>) -> Result<(), BoxDynError> {
    match pipeline.process(&task).await? {
        Outcome::Finished | Outcome::Rescheduled => Ok(()),
        // The policy said stop: the message goes to the dead letters.
        Outcome::GaveUp(reason) => Err(Box::new(Abort(reason))),
    }
}

/// Attempts a background task gets before it goes to the dead letters.
pub const BACKGROUND_ATTEMPTS: u32 = 5;

/// How long a memory extraction waits for a missing embedding model (from
/// its job's creation) before it goes to the dead letters; its attempts are
/// not spent meanwhile. A day covers an operator fixing
/// `EMBEDDING_MODEL_DIR` the next morning.
pub const MODEL_WAIT: Duration = Duration::from_secs(24 * 3600);
/// While waiting for the model, an extraction is tried again this often.
pub const MODEL_WAIT_RETRY: Duration = Duration::from_secs(300);

/// What becomes of a failed background task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryDecision {
    /// Run it again after this long, as its next attempt.
    Retry(Duration),
    /// Run it again after this long without spending an attempt (waiting
    /// for the embedding model).
    Hold(Duration),
    /// Give it to the dead letters.
    GiveUp,
}

/// The retry rule for a background task that failed on its `attempt`
/// (0-based) with `error`, at `now_ms`: a task waiting for the model is held
/// every [`MODEL_WAIT_RETRY`] for up to [`MODEL_WAIT`], others get
/// [`BACKGROUND_ATTEMPTS`] with backoff (1 s doubling to 5 min, jittered).
#[must_use]
pub fn retry_decision(attempt: u32, error: &background::Retry, now_ms: i64) -> RetryDecision {
    if let Some(since) = error.waiting_for_model_since {
        let waited = u64::try_from(now_ms.saturating_sub(since)).unwrap_or(0);
        return if u128::from(waited) < MODEL_WAIT.as_millis() {
            RetryDecision::Hold(MODEL_WAIT_RETRY)
        } else {
            RetryDecision::GiveUp
        };
    }
    if attempt + 1 >= BACKGROUND_ATTEMPTS {
        return RetryDecision::GiveUp;
    }
    RetryDecision::Retry(job_backoff(
        Duration::from_secs(1),
        Duration::from_secs(300),
        i64::from(attempt) + 1,
        None,
    ))
}

/// Re-schedules a failed background task (see [`retry_decision`]), or gives
/// it up to the dead letters. `next` is the task as its next attempt, `same`
/// as it is (a held task keeps its attempt count).
async fn retry_later<T: serde::Serialize + Sync>(
    rose: &Rose,
    queue: &str,
    id: &str,
    (same, next): (&T, &T),
    attempt: u32,
    error: background::Retry,
) -> Result<(), BoxDynError> {
    match retry_decision(attempt, &error, rose_shared::domain::now_ms()) {
        RetryDecision::GiveUp if error.waiting_for_model_since.is_some() => {
            tracing::warn!(queue, id, %error, waited_h = MODEL_WAIT.as_secs() / 3600, "background task gave up waiting for the embedding model; moved to the dead letters");
            Err(Box::new(Abort(error.reason)))
        }
        RetryDecision::GiveUp => {
            tracing::warn!(queue, id, %error, attempts = attempt + 1, "background task failed for good; moved to the dead letters");
            Err(Box::new(Abort(error.reason)))
        }
        RetryDecision::Hold(delay) => {
            // The model's absence was logged once at error level already.
            tracing::debug!(
                queue,
                id,
                delay_ms = delay.as_millis() as u64,
                "background task waits for the embedding model"
            );
            rose.queue.push_delayed(queue, id, same, delay).await?;
            Ok(())
        }
        RetryDecision::Retry(delay) => {
            tracing::warn!(queue, id, %error, delay_ms = delay.as_millis() as u64, "background task failed; retrying later");
            rose.queue.push_delayed(queue, id, next, delay).await?;
            Ok(())
        }
    }
}

async fn handle_memory(task: MemoryTask, rose: Data<Rose>) -> Result<(), BoxDynError> {
    match background::extract(&rose, &task).await {
        Ok(()) => Ok(()),
        Err(error) => {
            let next = MemoryTask {
                attempt: task.attempt + 1,
                ..task.clone()
            };
            retry_later(
                &rose,
                MEMORY_QUEUE,
                &task.job_id.to_string(),
                (&task, &next),
                task.attempt,
                error,
            )
            .await
        }
    }
}

async fn handle_summary(task: SummaryTask, rose: Data<Rose>) -> Result<(), BoxDynError> {
    match background::summarize(&rose, &task).await {
        Ok(()) => Ok(()),
        Err(error) => {
            let next = SummaryTask {
                attempt: task.attempt + 1,
                ..task.clone()
            };
            retry_later(
                &rose,
                SUMMARY_QUEUE,
                &task.session_id.to_string(),
                (&task, &next),
                task.attempt,
                error,
            )
            .await
        }
    }
}

/// Delivers one finished job to its callback URL; a failed attempt is
/// re-scheduled on the configured waits, then the delivery is `exhausted`.
async fn handle_callback(task: CallbackTask, rose: Data<Rose>) -> Result<(), BoxDynError> {
    let Some(job) = rose.store.get_job(task.job_id).await? else {
        return Ok(());
    };
    let attempts = match &job.callback {
        Some(state) if state.status == "pending" => state.attempts + 1,
        // Delivered, exhausted or gone already, or never asked for.
        _ => return Ok(()),
    };
    let id = task.job_id;
    let attempt = callback::deliver(&rose.config, &job).await;
    rose_shared::metrics::callback_delivery(match &attempt {
        Attempt::Delivered(_) => "delivered",
        Attempt::Gone => "gone",
        Attempt::Refused(_) => "refused",
        Attempt::Failed(..) => "failed",
    });
    match attempt {
        Attempt::Delivered(code) => {
            rose.store
                .record_callback(id, "delivered", attempts, Some(i64::from(code)))
                .await?;
            tracing::info!(job_id = %id, attempts, status_code = code, "callback delivered");
        }
        Attempt::Gone => {
            rose.store
                .record_callback(id, "gone", attempts, Some(410))
                .await?;
            tracing::info!(job_id = %id, attempts, "callback receiver answered 410 Gone; no more attempts");
        }
        Attempt::Refused(reason) => {
            rose.store
                .record_callback(id, "exhausted", attempts, None)
                .await?;
            tracing::warn!(job_id = %id, %reason, "callback refused");
        }
        Attempt::Failed(code, reason) => {
            let retry = usize::try_from(attempts).unwrap_or(usize::MAX);
            let last = code.map(i64::from);
            match callback::retry_delay(&rose.config.callback_retry_delays, retry) {
                Some(wait) => {
                    rose.store
                        .record_callback(id, "pending", attempts, last)
                        .await?;
                    rose.queue
                        .push_delayed(CALLBACK_QUEUE, &id.to_string(), &task, wait)
                        .await?;
                    tracing::warn!(job_id = %id, attempts, %reason, wait_ms = wait.as_millis() as u64, "callback failed; retrying later");
                }
                None => {
                    rose.store
                        .record_callback(id, "exhausted", attempts, last)
                        .await?;
                    tracing::warn!(job_id = %id, attempts, %reason, "callback failed for good");
                }
            }
        }
    }
    rose.events.publish(id).await;
    Ok(())
}

/// Background tasks run at once per worker process, per queue.
const MEMORY_CONCURRENCY: usize = 4;
const SUMMARY_CONCURRENCY: usize = 2;
const CALLBACK_CONCURRENCY: usize = 8;

/// Runs the worker until `shutdown`: the `voice` queue, and beside it the
/// `memory` and `summary` queues that keep work off the reply's path. On
/// shutdown it takes no new tasks, lets running ones finish for up to
/// `ROSE_SHUTDOWN_GRACE_SECS`, and hands back whatever is left (voice jobs'
/// checkpoints keep what was done).
///
/// # Errors
/// When a worker's backend fails for good.
pub async fn run(
    rose: Rose,
    options: WorkerOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pipeline = Arc::new(Pipeline::new(rose.clone()));
    let signal = || {
        shutdown
            .clone()
            .cancelled_owned()
            .map(Ok::<(), std::io::Error>)
    };
    let grace = rose.config.shutdown_grace;
    let grace_over = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    // Load the embedding model now rather than in the first job; a failure
    // is logged there, once, naming the fix.
    let memory = rose.memory.clone();
    tokio::spawn(async move {
        let _ = memory.embedder().await;
    });
    let memory_name = format!("{}-memory", options.name);
    let summary_name = format!("{}-summary", options.name);
    let callback_name = format!("{}-callbacks", options.name);
    tracing::info!(name = %options.name, queue = rose.queue.kind(), concurrency = options.concurrency, "worker started");
    match &rose.queue {
        Queue::Sqlite(queue) => {
            for name in [VOICE_QUEUE, MEMORY_QUEUE, SUMMARY_QUEUE, CALLBACK_QUEUE] {
                let recovered = queue.recover_orphans(name).await?;
                if recovered > 0 {
                    tracing::warn!(
                        queue = name,
                        count = recovered,
                        "resuming tasks a previous run left unfinished"
                    );
                }
            }
            let voice = WorkerBuilder::new(options.name.clone())
                .backend(queue.backend::<VoiceTask>(VOICE_QUEUE, options.concurrency.min(64)))
                .concurrency(options.concurrency)
                .data(pipeline)
                .build(handle)
                .run_until(signal());
            let memory = WorkerBuilder::new(memory_name)
                .backend(queue.backend::<MemoryTask>(MEMORY_QUEUE, MEMORY_CONCURRENCY))
                .concurrency(MEMORY_CONCURRENCY)
                .data(rose.clone())
                .build(handle_memory)
                .run_until(signal());
            let summary = WorkerBuilder::new(summary_name)
                .backend(queue.backend::<SummaryTask>(SUMMARY_QUEUE, SUMMARY_CONCURRENCY))
                .concurrency(SUMMARY_CONCURRENCY)
                .data(rose.clone())
                .build(handle_summary)
                .run_until(signal());
            let callbacks = WorkerBuilder::new(callback_name)
                .backend(queue.backend::<CallbackTask>(CALLBACK_QUEUE, CALLBACK_CONCURRENCY))
                .concurrency(CALLBACK_CONCURRENCY)
                .data(rose.clone())
                .build(handle_callback)
                .run_until(signal());
            tokio::select! {
                result = futures::future::try_join4(voice, memory, summary, callbacks) => { result?; }
                () = grace_over => {
                    // Taken tasks are put back by the next start's recovery.
                    tracing::warn!("shutdown grace period over; unfinished tasks resume on the next start");
                }
            }
        }
        Queue::Redis(queue) => {
            let stream = |name: &str, prefetch: usize| StreamOptions {
                prefetch,
                visibility_timeout: rose.config.queue_visibility_timeout,
                ..StreamOptions::new(name.to_owned())
            };
            let voice =
                WorkerBuilder::new(options.name.clone())
                    .backend(queue.backend::<VoiceTask>(
                        VOICE_QUEUE,
                        stream(&options.name, options.concurrency),
                    ))
                    .concurrency(options.concurrency)
                    .data(pipeline)
                    .build(handle)
                    .run_until(signal());
            let memory =
                WorkerBuilder::new(memory_name.clone())
                    .backend(queue.backend::<MemoryTask>(
                        MEMORY_QUEUE,
                        stream(&memory_name, MEMORY_CONCURRENCY),
                    ))
                    .concurrency(MEMORY_CONCURRENCY)
                    .data(rose.clone())
                    .build(handle_memory)
                    .run_until(signal());
            let summary = WorkerBuilder::new(summary_name.clone())
                .backend(queue.backend::<SummaryTask>(
                    SUMMARY_QUEUE,
                    stream(&summary_name, SUMMARY_CONCURRENCY),
                ))
                .concurrency(SUMMARY_CONCURRENCY)
                .data(rose.clone())
                .build(handle_summary)
                .run_until(signal());
            let callbacks = WorkerBuilder::new(callback_name.clone())
                .backend(queue.backend::<CallbackTask>(
                    CALLBACK_QUEUE,
                    stream(&callback_name, CALLBACK_CONCURRENCY),
                ))
                .concurrency(CALLBACK_CONCURRENCY)
                .data(rose.clone())
                .build(handle_callback)
                .run_until(signal());
            tokio::select! {
                result = futures::future::try_join4(voice, memory, summary, callbacks) => { result?; }
                () = grace_over => {
                    let mut handed = 0;
                    for (name, consumer) in [
                        (VOICE_QUEUE, &options.name),
                        (MEMORY_QUEUE, &memory_name),
                        (SUMMARY_QUEUE, &summary_name),
                        (CALLBACK_QUEUE, &callback_name),
                    ] {
                        handed += queue.hand_back(&queue.keys(name), consumer).await?;
                    }
                    tracing::warn!(count = handed, "shutdown grace period over; handed running tasks back");
                }
            }
        }
    }
    tracing::info!(name = %options.name, "worker stopped");
    Ok(())
}
