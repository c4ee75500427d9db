//! `GET /api/audio/{id}`: reply (and uploaded) audio, while retained.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rose_shared::Rose;
use rose_shared::domain::AudioId;
use rose_shared::store::AudioLookup;

use crate::error::{ApiError, ApiResult};

/// Audio routes.
pub fn router() -> Router<Rose> {
    Router::new().route("/api/audio/{id}", get(fetch))
}

async fn fetch(State(rose): State<Rose>, Path(id): Path<String>) -> ApiResult<Response> {
    let id: AudioId = id.parse().map_err(|_| ApiError::AudioNotFound)?;
    match rose.store.get_audio(id).await? {
        AudioLookup::Found(audio) => Ok((
            [
                (header::CONTENT_TYPE, audio.mime),
                // Audio never changes under its id; only this listener should keep it.
                (header::CACHE_CONTROL, "private, max-age=3600".to_owned()),
            ],
            audio.bytes,
        )
            .into_response()),
        AudioLookup::Expired => Err(ApiError::AudioExpired),
        AudioLookup::Missing => Err(ApiError::AudioNotFound),
    }
}
