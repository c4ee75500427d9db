//! `queue-probe`: a worker process running the probe job on one Redis queue,
//! for tests that kill or stop a real process.
//!
//! `queue-probe REDIS_URL PREFIX QUEUE CONCURRENCY VISIBILITY_MS`
//! Prints `ready <consumer>` once consuming; stops gracefully on SIGTERM.

use std::time::Duration;

use rose_shared::queue::{RedisQueue, StreamOptions};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, prefix, queue, concurrency, visibility_ms] = args.as_slice() else {
        anyhow::bail!("usage: queue-probe REDIS_URL PREFIX QUEUE CONCURRENCY VISIBILITY_MS");
    };
    let concurrency: usize = concurrency.parse()?;
    let redis = RedisQueue::connect(url, prefix).await?;
    let consumer = format!("probe-{}", std::process::id());
    let options = StreamOptions {
        prefetch: concurrency,
        visibility_timeout: Duration::from_millis(visibility_ms.parse()?),
        ..StreamOptions::new(consumer.clone())
    };
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        term.recv().await;
        trigger.cancel();
    });
    println!("ready {consumer}");
    rose_tests::probe::run_probe(&redis, queue, options, concurrency, shutdown).await
}
