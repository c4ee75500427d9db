//! The operator API under `/api/admin`, guarded by
//! `Authorization: Bearer $ROSE_ADMIN_TOKEN`, taken exactly as sent and
//! compared in constant time (see [`authorize`]); the token is at least 32
//! characters, or Rose does not start.
//! With no token configured every admin route answers 404, as if it did not
//! exist: an unset token never means "open".
//!
//! `GET /api/admin/schedules`: each maintenance schedule with its cron, last
//! run and next run. `POST /api/admin/schedules/{name}/run`: runs one now
//! (recorded like a scheduled run, with `triggered_by: "manual"`).
//!
//! `GET /api/admin/queues`: counts per queue (`rose queue stats`).
//! `GET /api/admin/jobs?status=&limit=&cursor=`: job rows, newest first,
//! paged by `next_cursor`. `POST /api/admin/jobs/{id}/retry`: revives a
//! failed job (`rose queue retry`).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use chrono::{TimeZone, Timelike, Utc};
use rose_scheduler::{Task, run_task};
use rose_shared::Rose;
use rose_shared::config::parse_cron;
use rose_shared::domain::JobId;
use rose_shared::queue::admin::{Admin, AdminError};
use rose_shared::store::Database;
use rose_shared::view::job_json;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, ErrorBody};

/// Admin routes.
pub fn router() -> OpenApiRouter<Rose> {
    OpenApiRouter::new()
        .routes(routes!(schedules))
        .routes(routes!(run_now))
        .routes(routes!(queues))
        .routes(routes!(jobs))
        .routes(routes!(retry_job))
}

fn admin(rose: &Rose) -> Admin<'_> {
    Admin {
        queue: &rose.queue,
        db: Some(&rose.db),
    }
}

fn admin_error(e: AdminError) -> ApiError {
    match e {
        AdminError::NotFound(_) => ApiError::JobNotFound,
        AdminError::NotFailed(_) => ApiError::JobNotFailed,
        AdminError::Invalid(m) => ApiError::InvalidQuery(m),
        AdminError::Queue(e) => ApiError::Queue(e),
        AdminError::Store(e) => ApiError::Store(e),
    }
}

/// Counts per queue: pending, delayed, running, dead, oldest pending age.
#[utoipa::path(
    get,
    path = "/api/admin/queues",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"queues\": [...]}`", body = serde_json::Value),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`: no `ROSE_ADMIN_TOKEN` is configured", body = ErrorBody),
    )
)]
async fn queues(State(rose): State<Rose>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    authorize(&rose, &headers)?;
    let stats = admin(&rose).stats().await.map_err(admin_error)?;
    Ok(Json(json!({ "queues": stats })))
}

/// The `?status=&limit=&cursor=` of the jobs listing.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct JobsQuery {
    /// `queued`, `processing`, `succeeded`, `failed` (or `dead`), `cancelled`; all when absent or empty.
    #[param(
        nullable = false,
        pattern = "^(queued|processing|succeeded|failed|dead|cancelled)?$"
    )]
    status: Option<String>,
    /// 1-200 (default 50).
    #[param(nullable = false, minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page (a job id).
    #[param(nullable = false, pattern = "^([0-7][0-9A-HJKMNP-TV-Z]{25})?$")]
    cursor: Option<String>,
}

/// Job rows, newest first.
#[utoipa::path(
    get,
    path = "/api/admin/jobs",
    tag = "admin",
    security(("admin_token" = [])),
    params(JobsQuery),
    responses(
        (status = 200, description = "`{\"jobs\": [Job...], \"next_cursor\"}`", body = serde_json::Value),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`: no `ROSE_ADMIN_TOKEN` is configured", body = ErrorBody),
    )
)]
async fn jobs(
    State(rose): State<Rose>,
    headers: HeaderMap,
    query: Result<Query<JobsQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    authorize(&rose, &headers)?;
    let Query(query) = query.map_err(|e| ApiError::InvalidQuery(e.body_text()))?;
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some("dead") => Some("failed"),
        Some(s @ ("queued" | "processing" | "succeeded" | "failed" | "cancelled")) => Some(s),
        Some(other) => {
            return Err(ApiError::InvalidQuery(format!(
                "status {other:?}: expected queued, processing, succeeded, failed, dead or cancelled"
            )));
        }
    };
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::InvalidQuery("limit must be 1 to 200".to_owned()));
    }
    let cursor = match query.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(
            c.parse::<JobId>()
                .map_err(|_| ApiError::InvalidQuery("cursor is not a job id".to_owned()))?
                .to_string(),
        ),
        None => None,
    };
    // ULIDs sort by creation: the id is the page key.
    let sql = "SELECT id FROM voice_jobs WHERE ($1 IS NULL OR status = $1) \
               AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3";
    let ids: Vec<String> = match &rose.db {
        Database::Sqlite(pool) => {
            sqlx::query_scalar(sql)
                .bind(status)
                .bind(&cursor)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        }
        Database::Postgres(pool) => {
            sqlx::query_scalar(sql)
                .bind(status)
                .bind(&cursor)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        }
    }
    .map_err(|e| ApiError::Store(e.into()))?;
    let mut out = Vec::with_capacity(ids.len());
    for id in &ids {
        if let Ok(id) = id.parse::<JobId>()
            && let Some(job) = rose.store.get_job(id).await?
        {
            out.push(job_json(&job));
        }
    }
    let next_cursor = (ids.len() == limit as usize)
        .then(|| ids.last().cloned())
        .flatten();
    Ok(Json(json!({ "jobs": out, "next_cursor": next_cursor })))
}

/// Revives a failed job: its row goes back to `queued` and it is pushed
/// again, resuming at its first unfinished stage.
#[utoipa::path(
    post,
    path = "/api/admin/jobs/{id}/retry",
    tag = "admin",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "`{\"job_id\", \"queue\"}`", body = serde_json::Value),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`job_not_found`, or `not_found` without an admin token", body = ErrorBody),
        (status = 409, description = "`job_not_failed`", body = ErrorBody),
    )
)]
async fn retry_job(
    State(rose): State<Rose>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    authorize(&rose, &headers)?;
    let job_id: JobId = id.parse().map_err(|_| ApiError::JobNotFound)?;
    let queue = admin(&rose)
        .retry(&job_id.to_string())
        .await
        .map_err(admin_error)?;
    tracing::info!(job_id = %job_id, queue, "job revived by an operator");
    Ok(Json(json!({ "job_id": job_id, "queue": queue })))
}

/// The token of an `Authorization: Bearer <token>` header, exactly as sent:
/// the scheme is matched regardless of case (RFC 9110 §11.1), one space
/// follows it, and nothing is trimmed (a token with a space before it is not
/// the token).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(b"Bearer ".len())?;
    scheme.eq_ignore_ascii_case(b"Bearer ").then_some(token)
}

/// Lets the request through only with the configured token.
///
/// # Errors
/// [`ApiError::AdminDisabled`] with no token configured,
/// [`ApiError::Unauthorized`] for a missing or wrong one.
pub fn authorize(rose: &Rose, headers: &HeaderMap) -> ApiResult<()> {
    let Some(token) = &rose.config.admin_token else {
        return Err(ApiError::AdminDisabled);
    };
    let given = bearer(headers).ok_or(ApiError::Unauthorized)?;
    if rose_shared::identity::same_secret(given, token.expose_secret().as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn iso(ms: i64) -> Option<String> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

type RunRow = (
    String,
    Option<i64>,
    String,
    String,
    i64,
    Option<i64>,
    String,
    String,
    Option<String>,
);

async fn last_run(db: &Database, name: &str) -> ApiResult<Option<Value>> {
    // A run left `running` by a process that stopped shows as abandoned
    // (the scheduler records it so at its next run).
    let sql = "SELECT id, scheduled_for, triggered_by, runner, started_at, finished_at, \
               CASE WHEN outcome = 'running' AND COALESCE(alive_at, started_at) < $2 \
                 THEN 'abandoned' ELSE outcome END, counts, detail \
               FROM schedule_runs WHERE name = $1 ORDER BY started_at DESC, id DESC LIMIT 1";
    let silent_since = rose_shared::domain::now_ms()
        - i64::try_from(rose_scheduler::RUN_SILENCE.as_millis()).unwrap_or(i64::MAX);
    let row: Option<RunRow> = match db {
        Database::Sqlite(pool) => {
            sqlx::query_as(sql)
                .bind(name)
                .bind(silent_since)
                .fetch_optional(pool)
                .await
        }
        Database::Postgres(pool) => {
            sqlx::query_as(sql)
                .bind(name)
                .bind(silent_since)
                .fetch_optional(pool)
                .await
        }
    }
    .map_err(|e| ApiError::Store(e.into()))?;
    Ok(row.map(
        |(
            id,
            scheduled_for,
            triggered_by,
            runner,
            started_at,
            finished_at,
            outcome,
            counts,
            detail,
        )| {
            json!({
                "id": id,
                "scheduled_for": scheduled_for.and_then(iso),
                "triggered_by": triggered_by,
                "runner": runner,
                "started_at": iso(started_at),
                "finished_at": finished_at.and_then(iso),
                "outcome": outcome,
                "counts": serde_json::from_str::<Value>(&counts).unwrap_or(Value::Null),
                "detail": detail,
            })
        },
    ))
}

/// Each maintenance schedule: `name`, `cron`, `last_run`, `next_run`.
#[utoipa::path(
    get,
    path = "/api/admin/schedules",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"schedules\": [...]}`", body = serde_json::Value),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`: no `ROSE_ADMIN_TOKEN` is configured", body = ErrorBody),
    )
)]
async fn schedules(State(rose): State<Rose>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    authorize(&rose, &headers)?;
    let now = Utc::now().with_nanosecond(0).unwrap_or_else(Utc::now);
    let mut out = Vec::with_capacity(Task::ALL.len());
    for task in Task::ALL {
        let cron = task.cron(&rose).to_owned();
        let next = parse_cron(&cron)
            .ok()
            .and_then(|(_, c)| c.find_next_occurrence(&now, false).ok())
            .and_then(|t| iso(t.timestamp_millis()));
        out.push(json!({
            "name": task.name(),
            "cron": cron,
            "last_run": last_run(&rose.db, task.name()).await?,
            "next_run": next,
        }));
    }
    Ok(Json(json!({ "schedules": out })))
}

/// Runs one maintenance job now, recorded like a scheduled run.
#[utoipa::path(
    post,
    path = "/api/admin/schedules/{name}/run",
    tag = "admin",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "`audio_cleanup`, `session_expiry`, `memory_pruning`, `backup` or `stale_job_reaper`")),
    responses(
        (status = 200, description = "`{\"run\": {...}}`: the recorded run", body = serde_json::Value),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`schedule_not_found`, or `not_found` without an admin token", body = ErrorBody),
        (status = 503, description = "`maintenance_unavailable`", body = ErrorBody),
    )
)]
async fn run_now(
    State(rose): State<Rose>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    authorize(&rose, &headers)?;
    let task: Task = name.parse().map_err(|_| ApiError::ScheduleNotFound)?;
    let report = run_task(&rose, task, None, "admin")
        .await
        .map_err(|e| ApiError::Maintenance(format!("{e:#}")))?
        .ok_or_else(|| ApiError::Maintenance("the run was not recorded".to_owned()))?;
    Ok(Json(json!({ "run": report })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokens_compare_whole() {
        assert!(rose_shared::identity::same_secret(
            b"secret-token",
            b"secret-token"
        ));
        assert!(!rose_shared::identity::same_secret(
            b"secret-token",
            b"secret-tokem"
        ));
        assert!(!rose_shared::identity::same_secret(
            b"secret",
            b"secret-token"
        ));
        assert!(!rose_shared::identity::same_secret(
            b"secret-token ",
            b"secret-token"
        ));
        assert!(!rose_shared::identity::same_secret(b"", b"x"));
    }

    #[test]
    fn the_bearer_token_is_taken_as_sent() {
        let token = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_static(value));
            bearer(&headers).map(<[u8]>::to_vec)
        };
        assert_eq!(token("Bearer abc"), Some(b"abc".to_vec()));
        assert_eq!(token("bEARER abc"), Some(b"abc".to_vec()));
        assert_eq!(token("Bearer  abc"), Some(b" abc".to_vec()));
        assert_eq!(token("Bearer abc  "), Some(b"abc  ".to_vec()));
        assert_eq!(token("Basic abc"), None);
        assert_eq!(token("Bearer"), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
