//! `POST /api/session/start`, `DELETE /api/session/{id}`.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use rose_shared::Rose;
use rose_shared::domain::SessionId;
use serde::Deserialize;
use serde_json::json;

use crate::error::{ApiError, ApiResult};

/// Session routes.
pub fn router() -> Router<Rose> {
    Router::new()
        .route("/api/session/start", post(start))
        .route("/api/session/{id}", delete(erase))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    user_id: Option<String>,
}

/// The body is optional: empty, or `{"user_id": "..."}`.
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
    Ok((StatusCode::CREATED, Json(json!({"session_id": session.id}))).into_response())
}

/// Erases the session and everything it owned. Its memories go first: when
/// the memory store cannot be reached the answer is 503 and nothing else is
/// touched, so the client can simply try again.
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
