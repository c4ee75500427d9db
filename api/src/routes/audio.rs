//! `GET /api/audio/{id}`: reply (and uploaded) audio, while retained.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use rose_shared::Rose;
use rose_shared::domain::AudioId;
use rose_shared::store::AudioLookup;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, ErrorBody};

/// Audio routes.
pub fn router() -> OpenApiRouter<Rose> {
    OpenApiRouter::new().routes(routes!(fetch))
}

/// Rose's spoken reply (MP3 from ElevenLabs or the simulator, WAV from
/// espeak-ng). A sentence of a reply still being spoken streams as its
/// speech arrives (no `Content-Length`), then is served whole once stored.
#[utoipa::path(
    get,
    path = "/api/audio/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "Audio id, from a job's `result.audio_url`")),
    responses(
        (status = 200, description = "The audio", content(
            (Vec<u8> = "audio/mpeg"),
            (Vec<u8> = "audio/wav"),
        )),
        (status = 404, description = "`audio_not_found`, or `expired` past `AUDIO_RETENTION_HOURS`", body = ErrorBody),
    )
)]
async fn fetch(State(rose): State<Rose>, Path(id): Path<String>) -> ApiResult<Response> {
    let id: AudioId = id.parse().map_err(|_| ApiError::AudioNotFound)?;
    let found = rose.store.get_audio(id).await?;
    if matches!(found, AudioLookup::Missing)
        && let Some(live) = rose.relay.read(id).await
    {
        // A sentence still being synthesised: its speech as it arrives.
        return Ok((
            [
                (header::CONTENT_TYPE, live.mime),
                (header::CACHE_CONTROL, "no-store".to_owned()),
            ],
            axum::body::Body::from_stream(live.body),
        )
            .into_response());
    }
    match found {
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
