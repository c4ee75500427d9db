//! `POST /api/session/start`, `DELETE /api/session/{id}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rose_shared::Rose;
use rose_shared::domain::SessionId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, ErrorBody};

/// Session routes.
pub fn router() -> OpenApiRouter<Rose> {
    OpenApiRouter::new()
        .routes(routes!(start))
        .routes(routes!(erase))
}

/// Who the session belongs to; without it, memories stay with the session.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StartBody {
    /// 1-200 characters once trimmed, not only whitespace: a stable id for
    /// the person across sessions.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    user_id: Option<String>,
}

/// A new session.
#[derive(Debug, Serialize, ToSchema)]
struct Started {
    session_id: String,
}

/// Starts a session. The body is optional: empty, or `{"user_id": "..."}`.
#[utoipa::path(
    post,
    path = "/api/session/start",
    tag = "sessions",
    request_body(content = StartBody, content_type = "application/json", description = "Optional: no body, or a JSON object"),
    responses(
        (status = 201, description = "Session started", body = Started),
        (status = 400, description = "`invalid_json`, `invalid_user_id`", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    )
)]
async fn start(State(rose): State<Rose>, body: Bytes) -> ApiResult<Response> {
    let body: StartBody = if body.iter().all(u8::is_ascii_whitespace) {
        StartBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::InvalidJson(e.to_string()))?
    };
    let user_id = body.user_id.map(|u| u.trim().to_owned());
    if let Some(u) = &user_id
        && (u.is_empty() || u.chars().count() > 200)
    {
        return Err(ApiError::InvalidUserId);
    }
    let session = rose.store.create_session(user_id.as_deref()).await?;
    let started = Started {
        session_id: session.id.to_string(),
    };
    Ok((StatusCode::CREATED, Json(started)).into_response())
}

/// Marks the start body optional in `doc`. `request_body` can only say
/// "optional" by making the schema nullable, which would promise that a
/// `null` body is taken; it is refused (400 `invalid_json`): the body is
/// absent (or blank), or a JSON object.
pub fn document(doc: &mut utoipa::openapi::OpenApi) {
    if let Some(RefOr::T(body)) = doc
        .paths
        .paths
        .get_mut("/api/session/start")
        .and_then(|item| item.post.as_mut())
        .and_then(|operation| operation.request_body.as_mut())
    {
        body.required = Some(utoipa::openapi::Required::False);
    }
}

/// Erases the session and everything it owned. Its memories go first: when
/// the memory store cannot be reached the answer is 503 and nothing else is
/// touched, so the client can simply try again.
#[utoipa::path(
    delete,
    path = "/api/session/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 204, description = "Erased with its turns, jobs, audio and memories"),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`, `memory_unavailable`", body = ErrorBody),
    )
)]
async fn erase(State(rose): State<Rose>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let id: SessionId = id.parse().map_err(|_| ApiError::SessionNotFound)?;
    if rose.store.get_session(id).await?.is_none() {
        return Err(ApiError::SessionNotFound);
    }
    let memories = rose.memory.store.delete_session(id).await?;
    tracing::info!(session_id = %id, memories, "session erased");
    if rose.store.delete_session(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::SessionNotFound)
    }
}
