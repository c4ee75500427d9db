//! The maintenance role (`rose scheduler`, and inside `rose serve`): cron
//! jobs for audio and session cleanup, memory pruning, backups and the
//! stale-job reaper, on tokio-cron-scheduler.
//!
//! Every replica keeps the schedule; only the leader runs it ([`lease`]).
//! Each run is claimed in `schedule_runs` by `(name, tick)` under a unique
//! index before it starts, so a tick runs once across replicas even while
//! leadership changes hands. Runs record their outcome and counts there and
//! log the job's event name with `duration_ms`.

pub mod jobs;
pub mod lease;

use std::time::Instant;

use anyhow::Context as _;
use chrono::{DateTime, Timelike, Utc};
use rose_shared::Rose;
use rose_shared::config::parse_cron;
use rose_shared::domain::now_ms;
use rose_shared::queue::Queue;
use rose_shared::store::Database;
use serde::Serialize;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

pub use lease::{Leadership, Lease};

/// Runs the same statement on either pool.
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            Database::Sqlite($pool) => $body,
            Database::Postgres($pool) => $body,
        }
    };
}

/// One maintenance job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    AudioCleanup,
    SessionCleanup,
    MemoryPruning,
    Backup,
    StaleJobs,
}

impl Task {
    /// Every job.
    pub const ALL: [Self; 5] = [
        Self::AudioCleanup,
        Self::SessionCleanup,
        Self::MemoryPruning,
        Self::Backup,
        Self::StaleJobs,
    ];

    /// The schedule's name (also the log event, except the reaper's).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::AudioCleanup => "audio_cleanup",
            Self::SessionCleanup => "session_cleanup",
            Self::MemoryPruning => "memory_pruning",
            Self::Backup => "backup",
            Self::StaleJobs => "stale_jobs",
        }
    }

    /// The event operators grep for.
    #[must_use]
    pub fn event(self) -> &'static str {
        match self {
            Self::StaleJobs => "stale_jobs_requeued",
            Self::Backup => "backup_created",
            other => other.name(),
        }
    }

    /// Its cron expression in `rose`'s configuration.
    #[must_use]
    pub fn cron(self, rose: &Rose) -> &str {
        let s = &rose.config.schedules;
        match self {
            Self::AudioCleanup => &s.audio_cleanup,
            Self::SessionCleanup => &s.session_cleanup,
            Self::MemoryPruning => &s.memory_pruning,
            Self::Backup => &s.backup,
            Self::StaleJobs => &s.stale_jobs,
        }
    }

    async fn execute(self, rose: &Rose) -> anyhow::Result<jobs::Counts> {
        match self {
            Self::AudioCleanup => jobs::audio_cleanup(rose).await,
            Self::SessionCleanup => jobs::session_cleanup(rose).await,
            Self::MemoryPruning => jobs::memory_pruning(rose).await,
            Self::Backup => jobs::backup(rose).await,
            Self::StaleJobs => jobs::stale_jobs(rose).await,
        }
    }
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|t| t.name()).collect();
                format!(
                    "unknown schedule {s:?}: expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// One recorded run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub id: String,
    pub name: &'static str,
    /// The tick it belongs to (unix ms); `None` for a run triggered by hand.
    pub scheduled_for: Option<i64>,
    pub outcome: &'static str,
    pub counts: jobs::Counts,
    pub detail: Option<String>,
    pub duration_ms: u64,
}

/// Runs `task` once and records it. With a `tick`, the run is first claimed
/// for that tick: `Ok(None)` means another replica already ran it.
///
/// # Errors
/// When the run cannot be recorded (the job's own failure is recorded as
/// outcome `failed`, not returned).
pub async fn run_task(
    rose: &Rose,
    task: Task,
    tick: Option<i64>,
    runner: &str,
) -> anyhow::Result<Option<RunReport>> {
    abandon_silent_runs(rose).await?;
    let id = ulid::Ulid::generate().to_string();
    let started_at = now_ms();
    let claim = "INSERT INTO schedule_runs (id, name, scheduled_for, triggered_by, runner, started_at, outcome, alive_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'running', $6) ON CONFLICT DO NOTHING";
    let triggered_by = if tick.is_some() { "schedule" } else { "manual" };
    let claimed = on_pool!(&rose.db, |pool| sqlx::query(claim)
        .bind(&id)
        .bind(task.name())
        .bind(tick)
        .bind(triggered_by)
        .bind(runner)
        .bind(started_at)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
    .context("cannot record the run")?;
    if claimed == 0 {
        return Ok(None);
    }
    let started = Instant::now();
    let alive = tokio::spawn(keep_alive(rose.clone(), id.clone()));
    let result = task.execute(rose).await;
    alive.abort();
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (outcome, counts, detail) = match result {
        Ok(counts) => match counts.get("skipped").and_then(serde_json::Value::as_str) {
            Some(reason) => ("skipped", counts.clone(), Some(reason.to_owned())),
            None => ("ok", counts, None),
        },
        Err(e) => ("failed", jobs::Counts::new(), Some(format!("{e:#}"))),
    };
    rose_shared::metrics::scheduler_run(task.name(), outcome);
    let counts_json = serde_json::Value::Object(counts.clone()).to_string();
    let finish = "UPDATE schedule_runs SET finished_at = $2, outcome = $3, counts = $4, detail = $5 WHERE id = $1";
    on_pool!(&rose.db, |pool| sqlx::query(finish)
        .bind(&id)
        .bind(now_ms())
        .bind(outcome)
        .bind(&counts_json)
        .bind(&detail)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
    .context("cannot record the run's end")?;
    let event = task.event();
    let field = |name: &str| counts.get(name).and_then(serde_json::Value::as_i64);
    // The audio job also answers to the name older runbooks grep for.
    let message = if task == Task::AudioCleanup {
        "audio_cleanup cleanup_old_audio"
    } else {
        event
    };
    match &detail {
        None => tracing::info!(
            event,
            schedule = task.name(),
            deleted = field("deleted"),
            count = field("count"),
            counts = %counts_json,
            duration_ms,
            "{message}"
        ),
        Some(error) => {
            tracing::error!(event, schedule = task.name(), %error, duration_ms, "{message} failed")
        }
    }
    Ok(Some(RunReport {
        id,
        name: task.name(),
        scheduled_for: tick,
        outcome,
        counts,
        detail,
        duration_ms,
    }))
}

/// How often a run in progress records that it is alive.
pub const RUN_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);
/// A run `running` this long without a heartbeat was abandoned: the
/// process running it stopped (killed, crashed, its machine gone).
pub const RUN_SILENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Writes `alive_at` of run `id` every [`RUN_HEARTBEAT`] until aborted.
async fn keep_alive(rose: Rose, id: String) {
    let mut every = tokio::time::interval(RUN_HEARTBEAT);
    every.tick().await;
    loop {
        every.tick().await;
        let sql = "UPDATE schedule_runs SET alive_at = $2 WHERE id = $1 AND outcome = 'running'";
        let beat = on_pool!(&rose.db, |pool| sqlx::query(sql)
            .bind(&id)
            .bind(now_ms())
            .execute(pool)
            .await
            .map(|r| r.rows_affected()));
        if let Err(e) = beat {
            tracing::warn!(run = %id, error = %e, "could not record that a maintenance run is alive");
        }
    }
}

/// Records as `abandoned` every run left `running` by a process that
/// stopped (silent for [`RUN_SILENCE`]). Returns how many.
///
/// # Errors
/// When the runs cannot be written.
pub async fn abandon_silent_runs(rose: &Rose) -> anyhow::Result<u64> {
    let silent_since = now_ms() - i64::try_from(RUN_SILENCE.as_millis()).unwrap_or(i64::MAX);
    let sql = "UPDATE schedule_runs SET outcome = 'abandoned', \
               finished_at = COALESCE(alive_at, started_at), \
               detail = 'the process running it stopped before it finished' \
               WHERE outcome = 'running' AND COALESCE(alive_at, started_at) < $1";
    let n = on_pool!(&rose.db, |pool| sqlx::query(sql)
        .bind(silent_since)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
    .context("cannot record abandoned runs")?;
    if n > 0 {
        tracing::warn!(
            count = n,
            "maintenance runs abandoned by a process that stopped"
        );
    }
    Ok(n)
}

/// The tick a firing belongs to: the schedule's latest time at or before now.
#[must_use]
pub fn current_tick(cron: &croner::Cron, now: DateTime<Utc>) -> Option<i64> {
    // Whole seconds: every replica must name the same tick.
    let now = now.with_nanosecond(0)?;
    cron.find_previous_occurrence(&now, true)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Runs the schedules until `shutdown`. On the scaled deployment only the
/// holder of the Redis lease runs jobs; on the embedded one this process does.
///
/// # Errors
/// When a schedule cannot be set up.
pub async fn run(rose: Rose, runner: String, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (leadership, lease) = match &rose.queue {
        Queue::Redis(q) => {
            let key = format!("{}:scheduler:leader", q.prefix());
            let lease = Lease::new(q.connection(), key, rose.config.scheduler_lease);
            (lease.leadership(), Some(lease))
        }
        Queue::Sqlite(_) => (Leadership::sole(), None),
    };
    let mut scheduler = JobScheduler::new()
        .await
        .context("cannot start the scheduler")?;
    for task in Task::ALL {
        let expression = task.cron(&rose).to_owned();
        let (full, cron) = parse_cron(&expression)
            .map_err(|e| anyhow::anyhow!("schedule {} ({expression:?}): {e}", task.name()))?;
        let rose = rose.clone();
        let leadership = leadership.clone();
        let runner = runner.clone();
        let job = Job::new_async(full.as_str(), move |_id, _scheduler| {
            let rose = rose.clone();
            let leadership = leadership.clone();
            let runner = runner.clone();
            let tick = current_tick(&cron, Utc::now());
            Box::pin(async move {
                if !leadership.is_leader() {
                    return;
                }
                let Some(tick) = tick else { return };
                if let Err(e) = run_task(&rose, task, Some(tick), &runner).await {
                    tracing::error!(schedule = task.name(), error = %format!("{e:#}"), "scheduled run not recorded");
                }
            })
        })
        .map_err(|e| anyhow::anyhow!("schedule {} ({full:?}): {e}", task.name()))?;
        scheduler
            .add(job)
            .await
            .map_err(|e| anyhow::anyhow!("schedule {}: {e}", task.name()))?;
    }
    scheduler
        .start()
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the scheduler: {e}"))?;
    tracing::info!(runner = %runner, leased = lease.is_some(), "scheduler started");
    match lease {
        Some(lease) => lease.run(shutdown.clone()).await,
        None => shutdown.cancelled().await,
    }
    if let Err(e) = scheduler.shutdown().await {
        tracing::warn!(error = %e, "scheduler did not stop cleanly");
    }
    tracing::info!(runner = %runner, "scheduler stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_name_the_same_tick_whenever_they_fire() {
        let (_, every_minute) = parse_cron("0 * * * * *").expect("cron");
        let at = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .expect("time")
                .with_timezone(&Utc)
        };
        let tick = current_tick(&every_minute, at("2026-11-28T10:15:00.004Z"));
        assert_eq!(
            tick,
            current_tick(&every_minute, at("2026-11-28T10:15:01.731Z"))
        );
        assert_eq!(tick, Some(at("2026-11-28T10:15:00Z").timestamp_millis()));
        let (_, nightly) = parse_cron("0 0 2 * * *").expect("cron");
        assert_eq!(
            current_tick(&nightly, at("2026-11-28T02:00:00.250Z")),
            Some(at("2026-11-28T02:00:00Z").timestamp_millis())
        );
    }
}
