//! The maintenance jobs. Each returns the counts it reports (recorded in
//! `schedule_runs` and logged under the job's event name).

use rose_shared::Rose;
use rose_shared::domain::{CallbackTask, JobId, SessionId, VoiceTask, now_ms};
use rose_shared::queue::{CALLBACK_QUEUE, VOICE_QUEUE};
use rose_shared::store::Database;
use serde_json::{Map, Value, json};

/// Runs the same statement on either pool.
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            Database::Sqlite($pool) => $body,
            Database::Postgres($pool) => $body,
        }
    };
}

/// What a job reports.
pub type Counts = Map<String, Value>;

fn counts(value: Value) -> Counts {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Rows handled per statement, so no run holds a long lock.
const BATCH: i64 = 500;

/// Erases the bytes of audio older than `AUDIO_RETENTION_HOURS`: every
/// reply, and uploads whose job no longer needs them. The row stays, so
/// `GET /api/audio/{id}` can answer `expired` rather than "never existed".
///
/// # Errors
/// When the database fails.
pub async fn audio_cleanup(rose: &Rose) -> anyhow::Result<Counts> {
    let now = now_ms();
    let cutoff = now - i64::from(rose.config.audio_retention_hours) * HOUR_MS;
    let sql = "UPDATE audio SET bytes = NULL, expired_at = $1 \
               WHERE bytes IS NOT NULL AND created_at < $2 AND (kind = 'reply' OR NOT EXISTS \
               (SELECT 1 FROM voice_jobs j WHERE j.input_audio_id = audio.id \
                AND j.status IN ('queued', 'processing')))";
    let deleted = on_pool!(&rose.db, |pool| sqlx::query(sql)
        .bind(now)
        .bind(cutoff)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
    Ok(counts(json!({ "deleted": deleted })))
}

/// Erases sessions idle longer than `SESSION_RETENTION_DAYS` with
/// everything they own: their memories first (so none outlives its session),
/// then turns, jobs and audio.
///
/// # Errors
/// When the database or the memory store fails.
pub async fn session_cleanup(rose: &Rose) -> anyhow::Result<Counts> {
    let cutoff = now_ms() - i64::from(rose.config.session_retention_days) * DAY_MS;
    let sql = "SELECT id FROM sessions WHERE last_active_at < $1 ORDER BY last_active_at LIMIT $2";
    let mut sessions = 0u64;
    let mut memories = 0u64;
    loop {
        let ids: Vec<String> = on_pool!(&rose.db, |pool| sqlx::query_scalar(sql)
            .bind(cutoff)
            .bind(BATCH)
            .fetch_all(pool)
            .await)?;
        if ids.is_empty() {
            break;
        }
        for id in &ids {
            let id: SessionId = id
                .parse()
                .map_err(|e| anyhow::anyhow!("session id {id:?}: {e}"))?;
            memories += rose.memory.store.delete_session(id).await?;
            if rose.store.delete_session(id).await? {
                sessions += 1;
            }
        }
    }
    Ok(counts(
        json!({ "deleted": sessions, "memories_deleted": memories }),
    ))
}

/// Drops memories and profile lines whose owner is gone (no session of that
/// user, or the owning session erased), then caps each person at
/// `ROSE_MEMORY_CAP_PER_USER`, keeping the most recently recalled.
///
/// # Errors
/// When the database or the memory store fails.
pub async fn memory_pruning(rose: &Rose) -> anyhow::Result<Counts> {
    let store = &rose.memory.store;
    let owners = store.owners().await?;
    let mut orphaned = 0u64;
    let mut capped = 0u64;
    let mut kept_owners = 0u64;
    for owner in &owners {
        if !owner_exists(&rose.db, owner).await? {
            orphaned += store.delete_owner(owner).await?;
            continue;
        }
        kept_owners += 1;
        capped += store.cap(owner, rose.config.memory_cap_per_user).await?;
    }
    let profile_lines = rose.store.prune_people().await?;
    Ok(counts(json!({
        "deleted": orphaned + capped,
        "orphaned": orphaned,
        "over_cap": capped,
        "owners": kept_owners,
        "profile_lines_orphaned": profile_lines,
    })))
}

async fn owner_exists(db: &Database, owner: &str) -> anyhow::Result<bool> {
    let (sql, key) = match owner.strip_prefix("session:") {
        Some(session) => ("SELECT COUNT(*) FROM sessions WHERE id = $1", session),
        None => ("SELECT COUNT(*) FROM sessions WHERE user_id = $1", owner),
    };
    let n: i64 = on_pool!(db, |pool| sqlx::query_scalar(sql)
        .bind(key)
        .fetch_one(pool)
        .await)?;
    Ok(n > 0)
}

/// Takes back voice jobs that stopped moving: `queued` or `processing` with
/// no progress for `ROSE_STALE_JOB_SECS`, whose message the queue no longer
/// holds (a push lost, a message lost with its worker). They are marked
/// `queued` and pushed again; their checkpoints make them resume at the
/// first unfinished stage. Jobs the queue still holds are left to it (it
/// redelivers a dead worker's messages itself). Callback deliveries still
/// pending whose task was lost are pushed again too.
///
/// # Errors
/// When the database or the queue fails.
pub async fn stale_jobs(rose: &Rose) -> anyhow::Result<Counts> {
    let now = now_ms();
    let cutoff = now - i64::try_from(rose.config.stale_job_after.as_millis()).unwrap_or(i64::MAX);
    let sql = "SELECT id FROM voice_jobs WHERE status IN ('queued', 'processing') \
               AND updated_at < $1 ORDER BY updated_at LIMIT $2";
    let stale: Vec<String> = on_pool!(&rose.db, |pool| sqlx::query_scalar(sql)
        .bind(cutoff)
        .bind(BATCH)
        .fetch_all(pool)
        .await)?;
    let callbacks = lost_callbacks(rose, cutoff).await?;
    if stale.is_empty() {
        return Ok(counts(
            json!({ "count": 0, "stale": 0, "callbacks": callbacks }),
        ));
    }
    let Some(held) = rose.queue.held_ids(VOICE_QUEUE).await? else {
        tracing::warn!(
            stale = stale.len(),
            "the voice queue is too long to tell which jobs it lost; left to the next run"
        );
        return Ok(counts(
            json!({ "count": 0, "stale": stale.len(), "undecided": stale.len() }),
        ));
    };
    let lost: Vec<&String> = stale.iter().filter(|id| !held.contains(*id)).collect();
    let mut requeued = 0u64;
    let claim = "UPDATE voice_jobs SET status = 'queued', updated_at = $2 \
                 WHERE id = $1 AND status IN ('queued', 'processing') AND updated_at < $3";
    for id in lost {
        let job_id: JobId = id
            .parse()
            .map_err(|e| anyhow::anyhow!("job id {id:?}: {e}"))?;
        // Compare-and-set on the row: a job that moved meanwhile is not pushed twice.
        let claimed = on_pool!(&rose.db, |pool| sqlx::query(claim)
            .bind(id)
            .bind(now)
            .bind(cutoff)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        if claimed == 0 {
            continue;
        }
        rose.queue
            .push_voice(&VoiceTask {
                job_id,
                request_id: None,
            })
            .await?;
        requeued += 1;
    }
    Ok(counts(
        json!({ "count": requeued, "stale": stale.len(), "callbacks": callbacks }),
    ))
}

/// Pushes again the callback deliveries still `pending` whose task the
/// `callbacks` queue no longer holds (its push was lost with a worker).
/// Returns how many.
async fn lost_callbacks(rose: &Rose, cutoff: i64) -> anyhow::Result<u64> {
    let sql = "SELECT id FROM voice_jobs WHERE callback_status = 'pending' \
               AND updated_at < $1 ORDER BY updated_at LIMIT $2";
    let pending: Vec<String> = on_pool!(&rose.db, |pool| sqlx::query_scalar(sql)
        .bind(cutoff)
        .bind(BATCH)
        .fetch_all(pool)
        .await)?;
    if pending.is_empty() {
        return Ok(0);
    }
    let Some(held) = rose.queue.held_ids(CALLBACK_QUEUE).await? else {
        return Ok(0);
    };
    let mut pushed = 0;
    for id in pending.iter().filter(|id| !held.contains(*id)) {
        let job_id: JobId = id
            .parse()
            .map_err(|e| anyhow::anyhow!("job id {id:?}: {e}"))?;
        rose.queue
            .push(CALLBACK_QUEUE, id, &CallbackTask { job_id })
            .await?;
        pushed += 1;
    }
    Ok(pushed)
}

/// Backs the database up into `BACKUP_DIR` (verified, the newest
/// `BACKUP_KEEP` kept) and, when Qdrant holds the memories, its snapshot
/// beside it under the same stamp and retention. Without `pg_dump` the
/// database part is recorded as skipped, saying why.
///
/// # Errors
/// When a backup cannot be written or fails verification, or the snapshot
/// fails.
pub async fn backup(rose: &Rose) -> anyhow::Result<Counts> {
    use rose_shared::backup::{self, Outcome, Source};
    let source = Source::of(&rose.config, &rose.db)?;
    let made = backup::create_with_memory(
        &source,
        rose.memory.store.as_qdrant(),
        &rose.config.backup_dir,
        rose.config.backup_keep,
    )
    .await?;
    let snapshot = made.memory.as_ref().map(|r| r.path.display().to_string());
    let snapshots_removed = made.memory.as_ref().map_or(0, |r| r.removed.len());
    Ok(match made.database {
        Outcome::Created(report) => counts(json!({
            "path": report.path.display().to_string(),
            "bytes": report.bytes,
            "verified": report.verification.ok,
            "removed": report.removed.len(),
            "qdrant_snapshot": snapshot,
            "qdrant_snapshots_removed": snapshots_removed,
        })),
        Outcome::Skipped { reason } => counts(json!({
            "skipped": reason,
            "qdrant_snapshot": snapshot,
            "qdrant_snapshots_removed": snapshots_removed,
        })),
    })
}
