//! `rose queue …`: inspection and repair of the Redis queues.
//!
//! Tables for people by default, `--json` for scripts. Reviving a dead voice
//! job also puts its row back to `queued` (when `DATABASE_URL` is set), so
//! the pipeline runs it again from its first unfinished stage.

use anyhow::Context as _;
use clap::Subcommand;
use rose_shared::config::Config;
use rose_shared::domain::{JobId, now_ms};
use rose_shared::queue::{ListStatus, QueueEntry, QueueStats, RedisQueue, VOICE_QUEUE};
use rose_shared::store::Database;

/// The `rose queue` subcommands.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Counts per queue: pending, delayed, running, dead, oldest pending age, consumers.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Jobs of one queue in one state.
    List {
        /// pending, delayed (scheduled), running, dead (failed).
        #[arg(long, default_value = "pending")]
        status: ListStatus,
        #[arg(long, default_value = VOICE_QUEUE)]
        queue: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Re-enqueue one dead job (by job id or dead-letter entry id).
    Retry { id: String },
    /// Re-enqueue every dead job of a queue.
    RetryAll {
        /// Only `dead` can be retried.
        #[arg(long)]
        status: String,
        #[arg(long, default_value = VOICE_QUEUE)]
        queue: String,
    },
    /// Drop jobs of a queue: `dead` or `delayed`; `done` jobs are never kept in Redis.
    Purge {
        #[arg(long)]
        status: String,
        #[arg(long, default_value = VOICE_QUEUE)]
        queue: String,
    },
}

/// Runs one `rose queue` command.
///
/// # Errors
/// When Redis (or the database, for revived voice jobs) cannot be reached,
/// or the arguments name something that does not exist.
pub async fn run(config: Config, command: QueueCommand) -> anyhow::Result<()> {
    let url = config
        .redis_url
        .clone()
        .context("REDIS_URL is required: rose queue inspects the Redis queue")?;
    let queue = RedisQueue::connect(&url, &config.redis_prefix).await?;
    match command {
        QueueCommand::Stats { json } => {
            let mut all = Vec::new();
            for name in queue.queue_names().await? {
                all.push(queue.stats(&name).await?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print_stats(&all);
            }
        }
        QueueCommand::List {
            status,
            queue: name,
            limit,
            json,
        } => {
            let entries = queue.list(&name, status, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print_entries(&entries);
            }
        }
        QueueCommand::Retry { id } => {
            let revived = queue
                .revive(&id)
                .await?
                .with_context(|| format!("no dead job {id} in any queue"))?;
            if revived == VOICE_QUEUE {
                requeue_row(&config, &id).await?;
            }
            println!("revived {id} into {revived}");
        }
        QueueCommand::RetryAll {
            status,
            queue: name,
        } => {
            anyhow::ensure!(
                status == "dead",
                "--status must be dead (only dead jobs are retried)"
            );
            let dead = queue.list(&name, ListStatus::Dead, 10_000).await?;
            let count = queue.revive_all(&name).await?;
            if name == VOICE_QUEUE {
                for entry in dead {
                    requeue_row(&config, &entry.id).await?;
                }
            }
            println!("revived {count} jobs into {name}");
        }
        QueueCommand::Purge {
            status,
            queue: name,
        } => {
            if status == "done" {
                println!(
                    "purged 0 jobs: finished jobs leave Redis as soon as they are acknowledged"
                );
                return Ok(());
            }
            let status: ListStatus = status.parse().map_err(anyhow::Error::msg)?;
            let count = queue.purge(&name, status).await?;
            println!("purged {count} {} jobs from {name}", status.as_str());
        }
    }
    Ok(())
}

/// Puts a failed voice job's row back to `queued`, when the database is configured.
async fn requeue_row(config: &Config, id: &str) -> anyhow::Result<()> {
    let (Some(url), Ok(job_id)) = (&config.database_url, id.parse::<JobId>()) else {
        return Ok(());
    };
    let db = Database::connect(url).await?;
    db.store().requeue_job(job_id).await?;
    Ok(())
}

fn age(ms: Option<u64>) -> String {
    match ms {
        None => "-".to_owned(),
        Some(ms) if ms < 1_000 => format!("{ms}ms"),
        Some(ms) if ms < 120_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m", ms / 60_000),
    }
}

fn print_stats(all: &[QueueStats]) {
    println!(
        "{:<12} {:>8} {:>8} {:>8} {:>6} {:>8} {:>10} {:>8} {:>9}",
        "QUEUE",
        "PENDING",
        "DELAYED",
        "RUNNING",
        "DEAD",
        "OLDEST",
        "COMPLETED",
        "RETRIED",
        "CONSUMERS"
    );
    for s in all {
        println!(
            "{:<12} {:>8} {:>8} {:>8} {:>6} {:>8} {:>10} {:>8} {:>9}",
            s.queue,
            s.pending,
            s.delayed,
            s.running,
            s.dead,
            age(s.oldest_pending_age_ms),
            s.completed,
            s.retried,
            s.consumers.len()
        );
    }
    for s in all {
        for c in &s.consumers {
            println!(
                "  {} consumer {} holds {} (idle {})",
                s.queue,
                c.name,
                c.pending,
                age(Some(c.idle_ms))
            );
        }
    }
}

fn print_entries(entries: &[QueueEntry]) {
    println!(
        "{:<28} {:<8} {:>7} {:>9}  DETAIL",
        "ID", "STATUS", "ATTEMPT", "AGE"
    );
    let now = now_ms();
    for e in entries {
        let since = e.enqueued_at.map(|at| u64::try_from(now - at).unwrap_or(0));
        let detail = match (&e.error, &e.consumer, e.due_at) {
            (Some(error), ..) => error.clone(),
            (None, Some(consumer), _) => format!("on {consumer}"),
            (None, None, Some(due)) => format!(
                "due in {}",
                age(Some(u64::try_from(due - now).unwrap_or(0)))
            ),
            _ => String::new(),
        };
        println!(
            "{:<28} {:<8} {:>7} {:>9}  {detail}",
            e.id,
            e.status,
            e.attempt,
            age(since)
        );
    }
}
