//! A controllable job for queue tests, and the worker that runs it, in this
//! process or as the `queue-probe` binary (for SIGKILL and SIGTERM tests).
//!
//! The handler records what happened under the test's own prefix:
//! `P:probe:started` (list of `n:consumer:attempt`, attempts from 1), `P:probe:done` (hash
//! `n` → completions), so a test can tell "ran exactly once" from "ran twice".

use std::time::Duration;

use apalis::prelude::*;
use futures::FutureExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use rose_shared::queue::{Abort, RedisQueue, StreamOptions};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// The probe's job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeJob {
    pub n: u64,
    /// Work time.
    #[serde(default)]
    pub sleep_ms: u64,
    /// Fail the first `fail_times` attempts (attempts count from 1).
    #[serde(default)]
    pub fail_times: u32,
    /// Fail until the key `P:probe:heal` exists.
    #[serde(default)]
    pub fail_until_healed: bool,
}

/// What the probe handler needs.
#[derive(Clone)]
pub struct ProbeContext {
    pub conn: ConnectionManager,
    pub prefix: String,
    pub consumer: String,
}

impl ProbeContext {
    #[must_use]
    pub fn key(&self, name: &str) -> String {
        format!("{}:probe:{name}", self.prefix)
    }
}

async fn handle(
    job: ProbeJob,
    task: TaskId,
    ctx: Data<ProbeContext>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    let _ = task;
    let mut conn = ctx.conn.clone();
    let attempt = attempt.current();
    let _: i64 = conn
        .rpush(
            ctx.key("started"),
            format!("{}:{}:{attempt}", job.n, ctx.consumer),
        )
        .await?;
    if job.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
    }
    if (attempt as u32) <= job.fail_times {
        return Err("planned failure".into());
    }
    if job.fail_until_healed {
        let healed: bool = conn.exists(ctx.key("heal")).await?;
        if !healed {
            return Err(Box::new(Abort("not healed yet".to_owned())));
        }
    }
    let _: i64 = conn.hincr(ctx.key("done"), job.n, 1).await?;
    Ok(())
}

/// Runs a probe worker on `queue` until `shutdown`.
///
/// # Errors
/// When the worker fails.
pub async fn run_probe(
    queue: &RedisQueue,
    name: &str,
    options: StreamOptions,
    concurrency: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ctx = ProbeContext {
        conn: queue.connection(),
        prefix: queue.prefix().to_owned(),
        consumer: options.consumer.clone(),
    };
    let backend = queue.backend::<ProbeJob>(name, options);
    WorkerBuilder::new(ctx.consumer.clone())
        .backend(backend)
        .concurrency(concurrency)
        .data(ctx)
        .build(handle)
        .run_until(shutdown.cancelled_owned().map(Ok::<(), std::io::Error>))
        .await?;
    Ok(())
}

/// Completions per job number, from `P:probe:done`.
///
/// # Panics
/// When Redis cannot be read.
pub async fn done_counts(
    conn: &mut ConnectionManager,
    prefix: &str,
) -> std::collections::HashMap<u64, u64> {
    conn.hgetall(format!("{prefix}:probe:done"))
        .await
        .expect("read done")
}

/// Every start recorded, as `(n, consumer, attempt)`.
///
/// # Panics
/// When Redis cannot be read.
pub async fn starts(conn: &mut ConnectionManager, prefix: &str) -> Vec<(u64, String, u32)> {
    let raw: Vec<String> = conn
        .lrange(format!("{prefix}:probe:started"), 0, -1)
        .await
        .expect("read starts");
    raw.into_iter()
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let n = parts.next()?.parse().ok()?;
            let consumer = parts.next()?.to_owned();
            let attempt = parts.next()?.parse().ok()?;
            Some((n, consumer, attempt))
        })
        .collect()
}
