//! `POST /api/voice/process`: validate the upload, write the job, push it, answer 202.
//!
//! The person either speaks (an `audio` file part) or types (a `text`
//! field, up to 2,000 characters): typed words become the job's transcript
//! and the STT stage is skipped; everything after it is the same job.
//!
//! Everything is checked before anything is stored: the audio's size is
//! counted while its part streams in (never trusting `Content-Length`), its
//! container is told by magic bytes (415 when it is none Rose takes), its
//! structure must hold at least one decodable audio frame (422
//! `invalid_audio` otherwise: an empty WAV `fmt `, a WebM without frames, an
//! MP4 without a sound track — what the provider would refuse anyway, and
//! Rose can tell without paying for it), and the session must exist. The job row
//! is committed before the push; if the push fails the job and its recording
//! are removed (the answer says nothing was taken), or, when even that
//! fails, the job is marked failed so it is never left waiting for nothing.

use std::collections::HashMap;

use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Multipart, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use rose_shared::Rose;
use rose_shared::audio::{self, AudioError};
use rose_shared::callback::{self, UrlError};
use rose_shared::domain::{JobError, SessionId, VoiceTask};
use rose_shared::store::{Created, JobInput, NewJob, StoreError};

use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{OpenApi, RefOr};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, ErrorBody, MAX_AUDIO_BYTES, MAX_TYPED_CHARS};
use crate::middleware::RequestId;
use crate::routes::parse_wait;
use crate::view::{AcceptedView, JobView, accepted_json, job_json};

/// Longest accepted text field (session id, callback URL).
const MAX_TEXT_FIELD: usize = 2048;

/// Voice routes.
pub fn router() -> OpenApiRouter<Rose> {
    OpenApiRouter::new()
        .routes(routes!(process))
        // Room for the multipart framing around a maximal upload; the audio
        // part itself is held to MAX_AUDIO_BYTES while it streams.
        .layer(DefaultBodyLimit::max(MAX_AUDIO_BYTES + 64 * 1024))
}

/// The multipart form `POST /api/voice/process` reads (documentation of
/// the parts; they are read as they stream): a recording or typed words,
/// exactly one of the two (both, or neither, is 400).
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum VoiceForm {
    Spoken(SpokenForm),
    Typed(TypedForm),
}

/// A recording.
#[derive(ToSchema)]
#[allow(dead_code)]
struct SpokenForm {
    /// The recording, 1 byte to 10 MB (empty is 400, larger 413): WAV,
    /// WebM, Ogg, MP3, FLAC or MP4/M4A, told by its first bytes (anything
    /// else is 415), holding at least one decodable audio frame (else 422).
    #[schema(value_type = String, format = Binary)]
    audio: Vec<u8>,
    /// From `POST /api/session/start`.
    #[schema(pattern = "^[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    session_id: String,
    /// An absolute http(s) URL that receives the finished job, signed per
    /// Standard Webhooks.
    #[schema(nullable = false, max_length = 2048)]
    callback_url: Option<String>,
}

/// Typed words instead of a recording; the STT stage is skipped.
#[derive(ToSchema)]
#[allow(dead_code)]
struct TypedForm {
    /// Up to 2,000 characters once trimmed, not only whitespace (the
    /// pattern: a character outside Unicode's White_Space, which is what
    /// trimming takes off).
    #[schema(
        min_length = 1,
        max_length = 2000,
        pattern = r"[^\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    text: String,
    /// From `POST /api/session/start`.
    #[schema(pattern = "^[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    session_id: String,
    /// An absolute http(s) URL that receives the finished job, signed per
    /// Standard Webhooks.
    #[schema(nullable = false, max_length = 2048)]
    callback_url: Option<String>,
}

/// Says in `doc` which other parts the form takes: any whose name a
/// multipart body can carry. They are read past; a name with a control
/// character cannot stand in a part's header (tab can, and clients
/// percent-encode CR and LF), and such a body is 400 `malformed_multipart`.
/// `#[derive(ToSchema)]` has no word for `propertyNames`.
pub fn document(doc: &mut OpenApi) {
    let names: Schema = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"))
        .build()
        .into();
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    for form in [SpokenForm::name(), TypedForm::name()] {
        if let Some(RefOr::T(Schema::Object(form))) = components.schemas.get_mut(form.as_ref()) {
            form.property_names = Some(Box::new(names.clone()));
        }
    }
}

/// The parts of an upload Rose reads.
#[derive(Debug, Default)]
struct Upload {
    audio: Option<Vec<u8>>,
    text: Option<String>,
    session_id: Option<String>,
    callback_url: Option<String>,
}

/// A validated upload.
struct Accepted {
    input: JobInput,
    session_id: SessionId,
    callback_url: Option<String>,
}

/// Takes a recording (or typed words), writes the job, queues it and
/// answers at once; `?wait=` holds the answer until the job finishes.
#[utoipa::path(
    post,
    path = "/api/voice/process",
    tag = "jobs",
    request_body(content = VoiceForm, content_type = "multipart/form-data"),
    params(
        ("wait" = Option<f64>, Query, minimum = 0, maximum = 60, description = "Seconds (0-60) to wait for the job to finish"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "1-255 visible ASCII characters: the same key in the same session returns the same job"),
    ),
    responses(
        (status = 202, description = "Queued", body = AcceptedView),
        (status = 200, description = "With `?wait=`: the job finished in time", body = JobView),
        (status = 400, description = "`audio_missing`, `audio_and_text`, `text_empty`, `text_too_long`, `audio_empty`, `session_id_required`, `invalid_session_id`, `malformed_multipart`, `invalid_callback_url`, `callback_url_forbidden`, `callbacks_not_configured`, `invalid_idempotency_key`, `invalid_wait`", body = ErrorBody),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
        (status = 413, description = "`audio_too_large`", body = ErrorBody),
        (status = 429, description = "`rate_limited` (per client address), `session_busy` (jobs in flight); with `Retry-After`", body = ErrorBody),
        (status = 415, description = "`unsupported_audio_format`: the bytes are none of the accepted containers", body = ErrorBody),
        (status = 422, description = "`invalid_audio`: a known container with no decodable audio in it (e.g. a WAV whose `fmt `/`data` chunk is missing or impossible, a WebM without frames, an MP4 without a sound track)", body = ErrorBody),
        (status = 503, description = "`database_unavailable`, `queue_unavailable`; with `Retry-After`", body = ErrorBody),
        (status = 507, description = "`storage_full`: the disk under the database is full; nothing was stored", body = ErrorBody),
    )
)]
async fn process(
    State(rose): State<Rose>,
    Query(query): Query<HashMap<String, String>>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    let wait = parse_wait(&query)?;
    let idempotency_key = idempotency_key(&headers)?;
    let multipart = multipart.map_err(|e| ApiError::MalformedMultipart(e.body_text()))?;
    let upload = validate(&rose, read_upload(multipart).await?).await?;

    let (job, created) = rose
        .store
        .create_job(NewJob {
            session_id: upload.session_id,
            input: upload.input,
            idempotency_key,
            request_id: Some(request_id.0.clone()),
            callback_url: upload.callback_url,
            max_in_flight: Some(rose.config.session_max_in_flight),
        })
        .await
        .map_err(|e| match e {
            StoreError::SessionBusy(cap) => ApiError::SessionBusy(cap),
            e => ApiError::Store(e),
        })?;
    if created == Created::New {
        let task = VoiceTask {
            job_id: job.id,
            request_id: Some(request_id.0),
        };
        if let Err(e) = rose.queue.push_voice(&task).await {
            // The person is told the upload was not taken: nothing of it
            // stays. Should even that fail, the job is marked failed (a
            // row left `queued` would be pushed later by the stale-job
            // reaper and answered after the person heard "not taken").
            if let Err(store_err) = rose.store.discard_job(job.id).await {
                tracing::error!(job_id = %job.id, error = %store_err, "could not remove an unqueued job; marking it failed");
                let error = JobError {
                    code: "queue_unavailable".to_owned(),
                    message: "the job could not be queued".to_owned(),
                };
                if let Err(store_err) = rose.store.fail_job(job.id, &error).await {
                    tracing::error!(job_id = %job.id, error = %store_err, "could not mark unqueued job failed");
                }
            }
            return Err(ApiError::Queue(e));
        }
        tracing::info!(job_id = %job.id, session_id = %job.session_id, "job queued");
    }

    // The job is queued: from here on a failure must not read as "not
    // accepted", or a client retrying without an Idempotency-Key would pay
    // for a second job. A wait that cannot read the row answers 202.
    let job = match wait {
        Some(wait) => match rose
            .events
            .wait_for_terminal(rose.store.as_ref(), job.id, wait)
            .await
        {
            Ok(found) => found.unwrap_or(job),
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "could not wait for the queued job; answering 202");
                job
            }
        },
        None => job,
    };
    let mut response = if job.status.is_terminal() && wait.is_some() {
        (StatusCode::OK, Json(job_json(&job))).into_response()
    } else {
        (StatusCode::ACCEPTED, Json(accepted_json(&job))).into_response()
    };
    if created == Created::Existing {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The `Idempotency-Key` header: 1–255 visible ASCII characters, when present.
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::InvalidIdempotencyKey)?
        .trim();
    let visible = key.bytes().all(|b| b.is_ascii_graphic());
    if key.is_empty() || key.len() > 255 || !visible {
        return Err(ApiError::InvalidIdempotencyKey);
    }
    Ok(Some(key.to_owned()))
}

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::AudioTooLarge
    } else {
        ApiError::MalformedMultipart(e.body_text())
    }
}

/// Reads a part to its end, refusing it past `limit` bytes as it streams.
async fn read_limited(
    field: &mut Field<'_>,
    limit: usize,
    too_large: fn() -> ApiError,
) -> ApiResult<Vec<u8>> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

async fn read_text(field: &mut Field<'_>) -> ApiResult<String> {
    let bytes = read_limited(field, MAX_TEXT_FIELD, || {
        ApiError::MalformedMultipart("a text field is too long".to_owned())
    })
    .await?;
    String::from_utf8(bytes)
        .map(|s| s.trim().to_owned())
        .map_err(|_| ApiError::MalformedMultipart("a text field is not UTF-8".to_owned()))
}

async fn read_upload(mut multipart: Multipart) -> ApiResult<Upload> {
    let mut upload = Upload::default();
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("audio") => {
                upload.audio = Some(
                    read_limited(&mut field, MAX_AUDIO_BYTES, || ApiError::AudioTooLarge).await?,
                );
            }
            Some("text") => {
                // Four bytes per character at most in UTF-8.
                let bytes =
                    read_limited(&mut field, MAX_TYPED_CHARS * 4, || ApiError::TextTooLong).await?;
                let text = String::from_utf8(bytes).map_err(|_| {
                    ApiError::MalformedMultipart("the `text` field is not UTF-8".to_owned())
                })?;
                upload.text = Some(text);
            }
            Some("session_id") => upload.session_id = Some(read_text(&mut field).await?),
            Some("callback_url") => upload.callback_url = Some(read_text(&mut field).await?),
            // Unknown parts are read past (they still count toward the body limit).
            _ => while field.chunk().await.map_err(multipart_error)?.is_some() {},
        }
    }
    Ok(upload)
}

/// Typed words, trimmed and held to [`MAX_TYPED_CHARS`].
fn typed_input(text: &str) -> ApiResult<JobInput> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ApiError::TextEmpty);
    }
    if text.chars().count() > MAX_TYPED_CHARS {
        return Err(ApiError::TextTooLong);
    }
    Ok(JobInput::Text(text.to_owned()))
}

/// A recording, told by its magic bytes and checked for decodable audio.
fn audio_input(audio: Vec<u8>) -> ApiResult<JobInput> {
    let outcome = if audio.is_empty() {
        Err(ApiError::AudioEmpty)
    } else {
        audio::check(&audio).map_err(|e| match e {
            AudioError::UnknownContainer => ApiError::UnsupportedAudioFormat,
            e @ AudioError::Undecodable { .. } => ApiError::InvalidAudio(e.to_string()),
        })
    };
    let format = audio::sniff(&audio).map_or("unknown", |f| f.name());
    let reason = match &outcome {
        Err(ApiError::InvalidAudio(reason)) => Some(reason.as_str()),
        _ => None,
    };
    tracing::info!(
        event = "audio_validation",
        audio_size = audio.len(),
        format,
        outcome = if outcome.is_ok() {
            "accepted"
        } else {
            "rejected"
        },
        reason,
        "audio_validation"
    );
    let format = outcome?;
    Ok(JobInput::Audio {
        bytes: audio,
        mime: format.mime().to_owned(),
    })
}

async fn validate(rose: &Rose, upload: Upload) -> ApiResult<Accepted> {
    let input = match (upload.audio, upload.text) {
        (Some(_), Some(_)) => return Err(ApiError::AudioAndText),
        (Some(audio), None) => audio_input(audio)?,
        (None, Some(text)) => typed_input(&text)?,
        (None, None) => return Err(ApiError::AudioMissing),
    };

    let raw_session = upload
        .session_id
        .filter(|s| !s.is_empty())
        .ok_or(ApiError::SessionIdRequired)?;
    let session_id: SessionId = raw_session
        .parse()
        .map_err(|_| ApiError::InvalidSessionId)?;
    if rose.store.get_session(session_id).await?.is_none() {
        return Err(ApiError::SessionNotFound);
    }

    let callback_url = upload.callback_url.filter(|s| !s.is_empty());
    if let Some(url) = &callback_url {
        if !is_http_url(url) {
            return Err(ApiError::InvalidCallbackUrl(
                "not an absolute http(s) URL".to_owned(),
            ));
        }
        if rose.config.webhook_secret.is_none() {
            return Err(ApiError::CallbacksNotConfigured);
        }
        match callback::resolve(url, rose.config.callback_allow_private).await {
            Ok(_) => {}
            Err(UrlError::Invalid(why)) => return Err(ApiError::InvalidCallbackUrl(why)),
            Err(UrlError::Forbidden(_)) => return Err(ApiError::CallbackUrlForbidden),
        }
    }
    Ok(Accepted {
        input,
        session_id,
        callback_url,
    })
}

/// An absolute http(s) URL with a host.
fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|r| {
        let host = r.split(['/', '?', '#']).next().unwrap_or_default();
        !host.is_empty() && !host.contains(char::is_whitespace)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_urls_must_be_absolute_http() {
        assert!(is_http_url("https://example.com/hook"));
        assert!(is_http_url("http://127.0.0.1:9000"));
        assert!(!is_http_url("ftp://example.com"));
        assert!(!is_http_url("https:///path"));
        assert!(!is_http_url("example.com"));
    }

    #[test]
    fn typed_words_are_trimmed_and_bounded() {
        assert!(matches!(typed_input("  hello \n"), Ok(JobInput::Text(t)) if t == "hello"));
        assert!(matches!(typed_input(" \n\t"), Err(ApiError::TextEmpty)));
        let longest = "é".repeat(MAX_TYPED_CHARS);
        assert!(typed_input(&longest).is_ok());
        let longer = format!("{longest}x");
        assert!(matches!(typed_input(&longer), Err(ApiError::TextTooLong)));
    }

    #[test]
    fn idempotency_keys_are_bounded() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h).ok(), Some(None));
        h.insert("idempotency-key", HeaderValue::from_static("abc-123"));
        assert_eq!(idempotency_key(&h).ok(), Some(Some("abc-123".to_owned())));
        h.insert("idempotency-key", HeaderValue::from_static("has space"));
        assert!(idempotency_key(&h).is_err());
        let long = "k".repeat(256);
        h.insert(
            "idempotency-key",
            HeaderValue::from_str(&long).expect("ascii"),
        );
        assert!(idempotency_key(&h).is_err());
    }
}
