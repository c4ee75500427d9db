//! The worker role: consumes the `voice` queue with apalis and runs the
//! [`pipeline`] for each job.
//!
//! The carrier follows the deployment: apalis-sqlite on the embedded one, our
//! Redis Streams backend on the scaled one; the handler is the same.

pub mod persona;
pub mod pipeline;

use std::sync::Arc;

use apalis::prelude::*;
use futures::FutureExt;
use rose_shared::Rose;
use rose_shared::domain::VoiceTask;
use rose_shared::queue::{Abort, Queue, StreamOptions, VOICE_QUEUE};
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

/// Runs the voice worker until `shutdown`. Then it takes no new jobs, lets
/// running ones finish for up to `ROSE_SHUTDOWN_GRACE_SECS`, and hands back
/// whatever is left (their checkpoints keep what was done).
///
/// # Errors
/// When the worker's backend fails for good.
pub async fn run(
    rose: Rose,
    options: WorkerOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pipeline = Arc::new(Pipeline::new(rose.clone()));
    let signal = shutdown
        .clone()
        .cancelled_owned()
        .map(Ok::<(), std::io::Error>);
    let grace = rose.config.shutdown_grace;
    let grace_over = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tracing::info!(name = %options.name, queue = rose.queue.kind(), concurrency = options.concurrency, "worker started");
    match &rose.queue {
        Queue::Sqlite(queue) => {
            let recovered = queue.recover_orphans(VOICE_QUEUE).await?;
            if recovered > 0 {
                tracing::warn!(
                    count = recovered,
                    "resuming jobs a previous run left unfinished"
                );
            }
            let backend = queue.backend::<VoiceTask>(VOICE_QUEUE, options.concurrency.min(64));
            let worker = WorkerBuilder::new(options.name.clone())
                .backend(backend)
                .concurrency(options.concurrency)
                .data(pipeline)
                .build(handle)
                .run_until(signal);
            tokio::select! {
                result = worker => result?,
                () = grace_over => {
                    // Taken tasks are put back by the next start's recovery.
                    tracing::warn!("shutdown grace period over; unfinished jobs resume on the next start");
                }
            }
        }
        Queue::Redis(queue) => {
            let stream = StreamOptions {
                prefetch: options.concurrency,
                visibility_timeout: rose.config.queue_visibility_timeout,
                ..StreamOptions::new(options.name.clone())
            };
            let backend = queue.backend::<VoiceTask>(VOICE_QUEUE, stream);
            let worker = WorkerBuilder::new(options.name.clone())
                .backend(backend)
                .concurrency(options.concurrency)
                .data(pipeline)
                .build(handle)
                .run_until(signal);
            tokio::select! {
                result = worker => result?,
                () = grace_over => {
                    let handed = queue.hand_back(&queue.keys(VOICE_QUEUE), &options.name).await?;
                    tracing::warn!(count = handed, "shutdown grace period over; handed running jobs back");
                }
            }
        }
    }
    tracing::info!(name = %options.name, "worker stopped");
    Ok(())
}
