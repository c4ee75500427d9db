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
use rose_shared::queue::{Queue, StreamOptions, VOICE_QUEUE};
use tokio_util::sync::CancellationToken;

pub use pipeline::{Pipeline, RetryPolicy};

/// How a worker process runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Voice jobs run at once.
    pub concurrency: usize,
    /// This worker's name (its Redis consumer name: unique per process).
    pub name: String,
    pub retry: RetryPolicy,
}

impl WorkerOptions {
    /// Options from configuration, with a name unique to this process.
    #[must_use]
    pub fn from_rose(rose: &Rose) -> Self {
        Self {
            concurrency: rose.config.worker_concurrency,
            name: unique_name(),
            retry: RetryPolicy::default(),
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
    pipeline.process(&task).await.map_err(Into::into)
}

/// Runs the voice worker until `shutdown`; in-flight jobs finish first.
///
/// # Errors
/// When the worker's backend fails for good.
pub async fn run(
    rose: Rose,
    options: WorkerOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pipeline = Arc::new(Pipeline::new(rose.clone(), options.retry.clone()));
    let signal = shutdown.cancelled_owned().map(Ok::<(), std::io::Error>);
    tracing::info!(name = %options.name, queue = rose.queue.kind(), concurrency = options.concurrency, "worker started");
    match &rose.queue {
        Queue::Sqlite(queue) => {
            // A stable name: a restarted `rose serve` takes back its own orphans at once.
            let backend = queue.backend::<VoiceTask>(VOICE_QUEUE, options.concurrency.min(64));
            WorkerBuilder::new(format!("rose-{VOICE_QUEUE}"))
                .backend(backend)
                .concurrency(options.concurrency)
                .data(pipeline)
                .build(handle)
                .run_until(signal)
                .await?;
        }
        Queue::Redis(queue) => {
            let stream = StreamOptions {
                prefetch: options.concurrency,
                visibility_timeout: rose.config.queue_visibility_timeout,
                ..StreamOptions::new(options.name.clone())
            };
            let backend = queue.backend::<VoiceTask>(VOICE_QUEUE, stream);
            WorkerBuilder::new(options.name.clone())
                .backend(backend)
                .concurrency(options.concurrency)
                .data(pipeline)
                .build(handle)
                .run_until(signal)
                .await?;
        }
    }
    tracing::info!(name = %options.name, "worker stopped");
    Ok(())
}
