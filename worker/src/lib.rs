//! The worker role: consumes the `voice` queue with apalis and runs the
//! [`pipeline`] for each job; beside it, the `memory` and `summary` queues
//! run the [`background`] work.
//!
//! The carrier follows the deployment: apalis-sqlite on the embedded one, our
//! Redis Streams backend on the scaled one; the handler is the same.

pub mod background;
mod failure;
pub mod persona;
pub mod pipeline;
mod prompt;
pub mod safety;
mod silence;
mod speaking;
mod voicing;

use std::sync::Arc;

use apalis::prelude::*;
use futures::FutureExt;
use rose_shared::Rose;
use std::time::Duration;

use apalis::layers::catch_panic::CatchPanicLayer;
use rose_shared::callback::{self, Attempt};
use rose_shared::domain::{CallbackTask, MemoryTask, SummaryTask, VoiceTask};
use rose_shared::queue::{
    Abort, CALLBACK_QUEUE, ConsumerOptions, Defer, MEMORY_QUEUE, Panicked, QUEUES, Queue,
    RetryPolicy, SUMMARY_QUEUE, VOICE_QUEUE,
};
use tokio_util::sync::CancellationToken;

pub use pipeline::{Outcome, Pipeline, PipelineError, job_backoff};

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

/// Runs one voice job. A panic in the pipeline fails the job with
/// `internal_error` ([`Pipeline::fail_internal`]) and buries its message;
/// a panic anywhere else is caught by the worker's catch-panic layer.
async fn handle(task: VoiceTask, pipeline: Data<Arc<Pipeline>>) -> Result<(), BoxDynError> {
    let run = std::panic::AssertUnwindSafe(pipeline.process(&task)).catch_unwind();
    match run.await {
        Ok(outcome) => match outcome.map_err(settle_pipeline_error)? {
            Outcome::Finished | Outcome::Rescheduled => Ok(()),
            // The policy said stop: the message goes to the dead letters.
            Outcome::GaveUp(reason) => Err(Box::new(Abort(reason))),
        },
        Err(payload) => {
            let panicked = Panicked::from_payload(payload.as_ref());
            tracing::error!(job_id = %task.job_id, error = %panicked, "the voice pipeline panicked; the job fails with internal_error");
            pipeline.fail_internal(task.job_id).await?;
            Err(Box::new(Abort(panicked.to_string())))
        }
    }
}

/// What the queue does with a delivery whose row could not be read or
/// written: while the database is out of reach (or its disk is full) the
/// job waits, retried every
/// 1–3 s (jittered, so a recovering database is not met by every job at
/// once) without spending one of its attempts — an outage is not the job's
/// fault, and its checkpoints make the retry resume where it stopped. Any
/// other failure spends an attempt ([`voice_retry`]).
fn settle_pipeline_error(error: PipelineError) -> BoxDynError {
    match error {
        PipelineError::Store(e) if e.is_unavailable() || e.is_full() => Box::new(Defer {
            after: Duration::from_millis(rand::random_range(1_000..3_000)),
            reason: format!("the database cannot be written: {e}"),
        }),
        e => Box::new(e),
    }
}

/// Attempts a background task gets before it goes to the dead letters.
pub const BACKGROUND_ATTEMPTS: u32 = 5;

/// The retry policy of the background queues (`memory`, `summary`,
/// `callbacks`): [`BACKGROUND_ATTEMPTS`] attempts, 1 s doubling to 5 min.
#[must_use]
pub fn background_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: BACKGROUND_ATTEMPTS,
        base: Duration::from_secs(1),
        cap: Duration::from_secs(300),
    }
}

/// The retry policy of the `voice` queue, for what the pipeline hands back
/// (its row or its queue could not be written): the job's own attempts and
/// backoff (`ROSE_JOB_MAX_ATTEMPTS`, `ROSE_JOB_RETRY_BASE_MS`, `…_CAP_MS`).
#[must_use]
pub fn voice_retry(config: &rose_shared::config::Config) -> RetryPolicy {
    RetryPolicy {
        max_attempts: config.job_max_attempts,
        base: config.job_retry_base,
        cap: config.job_retry_cap,
    }
}

/// How long a memory extraction waits for a missing embedding model (from
/// its job's creation) before it goes to the dead letters; its attempts are
/// not spent meanwhile. A day covers an operator fixing
/// `EMBEDDING_MODEL_DIR` the next morning.
pub const MODEL_WAIT: Duration = Duration::from_secs(24 * 3600);
/// While waiting for the model, an extraction is tried again this often.
pub const MODEL_WAIT_RETRY: Duration = Duration::from_secs(300);

/// The queue error a failed background task hands back, at `now_ms`: a
/// task waiting for the embedding model is deferred every
/// [`MODEL_WAIT_RETRY`] without spending an attempt, for up to
/// [`MODEL_WAIT`], then given up to the dead letters; any other failure is
/// retried by the queue's [`background_retry`] policy.
#[must_use]
pub fn background_error(error: background::Retry, now_ms: i64) -> BoxDynError {
    let Some(since) = error.waiting_for_model_since else {
        return Box::new(error);
    };
    let waited = u64::try_from(now_ms.saturating_sub(since)).unwrap_or(0);
    if u128::from(waited) < MODEL_WAIT.as_millis() {
        // The model's absence was logged once at error level already.
        tracing::debug!(
            delay_ms = MODEL_WAIT_RETRY.as_millis() as u64,
            "background task waits for the embedding model"
        );
        Box::new(Defer {
            after: MODEL_WAIT_RETRY,
            reason: error.reason,
        })
    } else {
        tracing::warn!(error = %error, waited_h = MODEL_WAIT.as_secs() / 3600, "background task gave up waiting for the embedding model; moved to the dead letters");
        Box::new(Abort(format!(
            "gave up waiting for the embedding model: {}",
            error.reason
        )))
    }
}

async fn handle_memory(task: MemoryTask, rose: Data<Rose>) -> Result<(), BoxDynError> {
    background::extract(&rose, &task)
        .await
        .map_err(|e| background_error(e, rose_shared::domain::now_ms()))
}

async fn handle_summary(task: SummaryTask, rose: Data<Rose>) -> Result<(), BoxDynError> {
    background::summarize(&rose, &task)
        .await
        .map_err(|e| background_error(e, rose_shared::domain::now_ms()))
}

/// Delivers one finished job to its callback URL; a failed attempt is
/// re-scheduled on the configured waits, then the delivery is `exhausted`.
async fn handle_callback(task: CallbackTask, rose: Data<Rose>) -> Result<(), BoxDynError> {
    let Some(job) = rose.store.get_job(task.job_id).await? else {
        orphan_message(CALLBACK_QUEUE, &task.job_id.to_string());
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

/// Logs a message whose row does not exist (a database restored from an
/// older backup, a Redis shared by mistake, a session erased meanwhile) and
/// counts it; the caller acknowledges it, so it is neither retried nor left
/// holding a slot.
pub fn orphan_message(queue: &str, id: &str) {
    rose_shared::metrics::orphan_message(queue);
    tracing::warn!(
        event = "orphan_message",
        queue,
        id,
        "queue message names no row; acknowledged and dropped"
    );
}

/// Background tasks run at once per worker process, per queue.
const MEMORY_CONCURRENCY: usize = 4;
const SUMMARY_CONCURRENCY: usize = 2;
const CALLBACK_CONCURRENCY: usize = 8;

/// A panic handler's signature, as apalis' catch-panic layer takes it.
type OnPanic = fn(&Box<dyn std::any::Any + Send>) -> Panicked;

/// apalis' catch-panic layer, turning a handler's panic into a failed
/// attempt ([`Panicked`], `internal_error`) that the queue's retry policy
/// settles, instead of an unwinding worker and a message left claimed.
#[must_use]
pub fn catch_panics() -> CatchPanicLayer<OnPanic, Panicked> {
    fn on_panic(payload: &Box<dyn std::any::Any + Send>) -> Panicked {
        let panicked = Panicked::from_payload(payload.as_ref());
        tracing::error!(error = %panicked, "a queue handler panicked; the attempt failed");
        panicked
    }
    CatchPanicLayer::with_panic_handler(on_panic as OnPanic)
}

/// One apalis worker on `$backend`: panics in the handler are caught (the
/// attempt fails with `internal_error` and the queue's retry policy settles
/// it), at most `$concurrency` tasks at once, until `$signal`.
macro_rules! consume {
    ($name:expr, $backend:expr, $concurrency:expr, $data:expr, $handler:expr, $signal:expr) => {
        WorkerBuilder::new($name)
            .backend($backend)
            .layer(catch_panics())
            .concurrency($concurrency)
            .data($data)
            .build($handler)
            .run_until($signal)
            // Boxed here, where the worker's types are concrete: proving
            // `Send` through `run`'s own future trips on the panic
            // handler's higher-ranked signature.
            .boxed()
    };
}

/// The four workers of a process on one carrier (`$queue`: a `SqliteQueue`
/// or a `RedisQueue`, whose `backend` methods take the same arguments).
macro_rules! consume_all {
    ($queue:expr, $rose:expr, $options:expr, $names:expr, $pipeline:expr, $signal:expr) => {{
        let rose: &Rose = $rose;
        let options: &WorkerOptions = $options;
        let [voice_name, memory_name, summary_name, callback_name] = $names;
        let consumer = |name: &str, prefetch: usize, retry: RetryPolicy| ConsumerOptions {
            prefetch,
            visibility_timeout: rose.config.queue_visibility_timeout,
            retry,
            ..ConsumerOptions::new(name.to_owned())
        };
        let voice = consume!(
            voice_name.clone(),
            $queue.backend::<VoiceTask>(
                VOICE_QUEUE,
                consumer(voice_name, options.concurrency, voice_retry(&rose.config))
            ),
            options.concurrency,
            $pipeline,
            handle,
            $signal()
        );
        let memory = consume!(
            memory_name.clone(),
            $queue.backend::<MemoryTask>(
                MEMORY_QUEUE,
                consumer(memory_name, MEMORY_CONCURRENCY, background_retry())
            ),
            MEMORY_CONCURRENCY,
            rose.clone(),
            handle_memory,
            $signal()
        );
        let summary = consume!(
            summary_name.clone(),
            $queue.backend::<SummaryTask>(
                SUMMARY_QUEUE,
                consumer(summary_name, SUMMARY_CONCURRENCY, background_retry())
            ),
            SUMMARY_CONCURRENCY,
            rose.clone(),
            handle_summary,
            $signal()
        );
        let callbacks = consume!(
            callback_name.clone(),
            $queue.backend::<CallbackTask>(
                CALLBACK_QUEUE,
                consumer(callback_name, CALLBACK_CONCURRENCY, background_retry())
            ),
            CALLBACK_CONCURRENCY,
            rose.clone(),
            handle_callback,
            $signal()
        );
        futures::future::try_join4(voice, memory, summary, callbacks)
    }};
}

/// Runs the worker until `shutdown`: the `voice` queue, and beside it the
/// `memory`, `summary` and `callbacks` queues that keep work off the
/// reply's path. Both carriers run the same workers with the same retry
/// policies. On shutdown it takes no new tasks, lets running ones finish for
/// up to `ROSE_SHUTDOWN_GRACE_SECS`, and hands back whatever is left (voice
/// jobs' checkpoints keep what was done).
///
/// # Errors
/// When a worker's backend fails for good.
pub async fn run(
    rose: Rose,
    options: WorkerOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pipeline = Arc::new(Pipeline::new(rose.clone()));
    // Hear cancels from the first job on.
    rose.events.listen();
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
    let names = [
        options.name.clone(),
        format!("{}-memory", options.name),
        format!("{}-summary", options.name),
        format!("{}-callbacks", options.name),
    ];
    tracing::info!(name = %options.name, queue = rose.queue.kind(), concurrency = options.concurrency, "worker started");
    match &rose.queue {
        Queue::Sqlite(queue) => {
            for name in QUEUES {
                let recovered = queue.recover_orphans(name).await?;
                if recovered > 0 {
                    tracing::warn!(
                        queue = name,
                        count = recovered,
                        "resuming tasks a previous run left unfinished"
                    );
                }
            }
            let workers = consume_all!(queue, &rose, &options, &names, pipeline, signal);
            tokio::select! {
                result = workers => { result?; }
                () = grace_over => {
                    // Taken tasks are put back by the next start's recovery.
                    tracing::warn!("shutdown grace period over; unfinished tasks resume on the next start");
                }
            }
        }
        Queue::Redis(queue) => {
            let workers = consume_all!(queue, &rose, &options, &names, pipeline, signal);
            tokio::select! {
                result = workers => { result?; }
                () = grace_over => {
                    let mut handed = 0;
                    for (name, consumer) in QUEUES.iter().zip(&names) {
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
