//! `rose queue …`: inspection and repair of the queues, on Redis or on the
//! embedded database (see `rose_shared::queue::admin`).
//!
//! Tables for people by default, `--json` for scripts. Reviving a dead voice
//! job also puts its row back to `queued` (when the rows are reachable), so
//! the pipeline runs it again from its first unfinished stage.

use clap::Subcommand;
use rose_shared::config::Config;
use rose_shared::domain::now_ms;
use rose_shared::queue::admin::Admin;
use rose_shared::queue::{
    ListStatus, Queue, QueueEntry, QueueStats, RedisQueue, SqliteQueue, VOICE_QUEUE,
};
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

/// Runs one `rose queue` command: on Redis when `REDIS_URL` is set (the
/// job rows too when `DATABASE_URL` is), else on the embedded database.
///
/// # Errors
/// When the queue (or the database) cannot be reached, or the arguments
/// name something that does not exist or cannot be done.
pub async fn run(config: Config, command: QueueCommand) -> anyhow::Result<()> {
    let (queue, db) = match &config.redis_url {
        Some(url) => {
            let queue = RedisQueue::connect(url, &config.redis_prefix).await?;
            let db = match &config.database_url {
                Some(url) => Some(Database::connect(url).await?),
                None => None,
            };
            (Queue::Redis(queue), db)
        }
        None => {
            let url = config.embedded_database_url();
            let db = Database::connect(&url).await?;
            let Database::Sqlite(pool) = &db else {
                anyhow::bail!(
                    "REDIS_URL is required with a PostgreSQL DATABASE_URL: the queue is in Redis"
                );
            };
            let queue = Queue::Sqlite(SqliteQueue::new(pool.clone()));
            (queue, Some(db))
        }
    };
    let admin = Admin {
        queue: &queue,
        db: db.as_ref(),
    };
    match command {
        QueueCommand::Stats { json } => {
            let all = admin.stats().await?;
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
            let entries = admin.list(&name, status, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print_entries(&entries);
            }
        }
        QueueCommand::Retry { id } => {
            let revived = admin.retry(&id).await?;
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
            let count = admin.retry_all(&name).await?;
            println!("revived {count} jobs into {name}");
        }
        QueueCommand::Purge {
            status,
            queue: name,
        } => {
            let count = admin.purge(&name, &status).await?;
            if status == "done" && matches!(queue, Queue::Redis(_)) {
                println!(
                    "purged 0 jobs: finished jobs leave Redis as soon as they are acknowledged"
                );
            } else {
                println!("purged {count} {status} jobs from {name}");
            }
        }
    }
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
