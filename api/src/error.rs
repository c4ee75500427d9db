//! The one error table: every failure the api answers with, its status and
//! its stable snake_case code. Bodies are `{"error": {"code", "message"}}`;
//! 5xx bodies stay generic and the cause is logged once, inside the request span.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rose_shared::memory::MemoryError;
use rose_shared::queue::QueueError;
use rose_shared::store::StoreError;

/// The body of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// A stable code and a message for people.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `audio_missing`, `session_not_found`.
    pub code: String,
    pub message: String,
}

/// Whole seconds to wait, rounded up, at least 1 (`Retry-After`).
fn retry_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

/// Largest accepted upload.
pub const MAX_AUDIO_BYTES: usize = 10 * 1024 * 1024;

/// Longest typed message, in characters (about three minutes of speech).
pub const MAX_TYPED_CHARS: usize = 2000;

/// Everything the api can answer with besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the multipart body is malformed: {0}")]
    MalformedMultipart(String),
    #[error("send an `audio` file part, or a `text` field with typed words")]
    AudioMissing,
    #[error("send either an `audio` file or a `text` field, not both")]
    AudioAndText,
    #[error("the `text` field is empty")]
    TextEmpty,
    #[error("the `text` field is longer than {MAX_TYPED_CHARS} characters")]
    TextTooLong,
    #[error("the `audio` file is empty")]
    AudioEmpty,
    #[error("the audio is larger than {MAX_AUDIO_BYTES} bytes")]
    AudioTooLarge,
    #[error("the audio is not WAV, WebM, Ogg, MP3, FLAC or MP4/M4A")]
    UnsupportedAudioFormat,
    /// A known container holding nothing a decoder could play; the reason
    /// says what is missing (it names structures, never audio content).
    #[error("{0}")]
    InvalidAudio(String),
    #[error("`session_id` is required")]
    SessionIdRequired,
    #[error("`session_id` is not a valid session id")]
    InvalidSessionId,
    #[error("no such session")]
    SessionNotFound,
    #[error("no such job")]
    JobNotFound,
    #[error("no such audio")]
    AudioNotFound,
    #[error("this audio has expired and was erased")]
    AudioExpired,
    #[error("`callback_url` must be an absolute http(s) URL whose host resolves: {0}")]
    InvalidCallbackUrl(String),
    #[error(
        "`callback_url` points at a loopback, private, link-local, metadata or other special-purpose address, which Rose does not call"
    )]
    CallbackUrlForbidden,
    #[error("callbacks are not configured on this server (ROSE_WEBHOOK_SECRET is unset)")]
    CallbacksNotConfigured,
    #[error("the Idempotency-Key header must be 1-255 visible ASCII characters")]
    InvalidIdempotencyKey,
    #[error("`wait` must be a number of seconds from 0 to 60")]
    InvalidWait,
    #[error("the body must be JSON: {0}")]
    InvalidJson(String),
    #[error(
        "`user_id` must be 1-200 characters, not only whitespace, and not start with `pk_` or `session:`"
    )]
    InvalidUserId,
    #[error("`person_key` must be 32 random bytes in base64url (43 characters, no padding)")]
    InvalidPersonKey,
    #[error("{0}")]
    InvalidUserToken(String),
    #[error(
        "a bare `user_id` is taken only from a server holding ROSE_API_KEY (Authorization: Bearer); clients send a `person_key` or a `user_token`"
    )]
    UserIdRequiresToken,
    #[error("send one of `person_key`, `user_token` or `user_id`, not several")]
    AmbiguousIdentity,
    #[error("say who you are: an `X-Person-Key` header, or `Authorization: Bearer <user_token>`")]
    IdentityRequired,
    #[error("person keys are not configured on this server")]
    PersonKeysUnavailable,
    #[error("no such memory")]
    MemoryNotFound,
    #[error("not found")]
    AdminDisabled,
    #[error("no such route; the routes are listed at /api/openapi.json")]
    RouteNotFound,
    #[error("this route does not take this method; `Allow` lists the ones it takes")]
    MethodNotAllowed,
    #[error("a valid `Authorization: Bearer` admin token is required")]
    Unauthorized,
    #[error("no such schedule")]
    ScheduleNotFound,
    #[error("this job has not failed; only failed (dead) jobs are retried")]
    JobNotFailed,
    #[error("this job has already ended; only a queued or running job can be cancelled")]
    JobFinished,
    #[error("not a job id")]
    InvalidJobId,
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("too many requests; try again in {} s", retry_secs(*.0))]
    RateLimited(std::time::Duration),
    #[error("this session already has {0} jobs in flight; wait for one to finish")]
    SessionBusy(u32),
    #[error("the maintenance run failed to start")]
    Maintenance(String),
    #[error("storage failure")]
    Store(#[from] StoreError),
    #[error("queue failure")]
    Queue(#[from] QueueError),
    #[error("memory store failure")]
    Memory(#[from] MemoryError),
}

impl ApiError {
    /// The HTTP status and stable code.
    #[must_use]
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            Self::MalformedMultipart(_) => (S::BAD_REQUEST, "malformed_multipart"),
            Self::AudioMissing => (S::BAD_REQUEST, "audio_missing"),
            Self::AudioEmpty => (S::BAD_REQUEST, "audio_empty"),
            Self::AudioAndText => (S::BAD_REQUEST, "audio_and_text"),
            Self::TextEmpty => (S::BAD_REQUEST, "text_empty"),
            Self::TextTooLong => (S::BAD_REQUEST, "text_too_long"),
            Self::AudioTooLarge => (S::PAYLOAD_TOO_LARGE, "audio_too_large"),
            Self::UnsupportedAudioFormat => (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_audio_format"),
            Self::InvalidAudio(_) => (S::UNPROCESSABLE_ENTITY, "invalid_audio"),
            Self::SessionIdRequired => (S::BAD_REQUEST, "session_id_required"),
            Self::InvalidSessionId => (S::BAD_REQUEST, "invalid_session_id"),
            Self::SessionNotFound => (S::NOT_FOUND, "session_not_found"),
            Self::JobNotFound => (S::NOT_FOUND, "job_not_found"),
            Self::AudioNotFound => (S::NOT_FOUND, "audio_not_found"),
            Self::AudioExpired => (S::NOT_FOUND, "expired"),
            Self::InvalidCallbackUrl(_) => (S::BAD_REQUEST, "invalid_callback_url"),
            Self::CallbackUrlForbidden => (S::BAD_REQUEST, "callback_url_forbidden"),
            Self::CallbacksNotConfigured => (S::BAD_REQUEST, "callbacks_not_configured"),
            Self::InvalidIdempotencyKey => (S::BAD_REQUEST, "invalid_idempotency_key"),
            Self::InvalidWait => (S::BAD_REQUEST, "invalid_wait"),
            Self::InvalidJson(_) => (S::BAD_REQUEST, "invalid_json"),
            Self::InvalidUserId => (S::BAD_REQUEST, "invalid_user_id"),
            Self::InvalidPersonKey => (S::BAD_REQUEST, "invalid_person_key"),
            Self::InvalidUserToken(_) => (S::UNAUTHORIZED, "invalid_user_token"),
            Self::UserIdRequiresToken => (S::UNAUTHORIZED, "user_id_requires_token"),
            Self::AmbiguousIdentity => (S::BAD_REQUEST, "ambiguous_identity"),
            Self::IdentityRequired => (S::UNAUTHORIZED, "identity_required"),
            Self::PersonKeysUnavailable => (S::SERVICE_UNAVAILABLE, "person_keys_unavailable"),
            Self::MemoryNotFound => (S::NOT_FOUND, "memory_not_found"),
            Self::AdminDisabled | Self::RouteNotFound => (S::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Unauthorized => (S::UNAUTHORIZED, "unauthorized"),
            Self::ScheduleNotFound => (S::NOT_FOUND, "schedule_not_found"),
            Self::JobNotFailed => (S::CONFLICT, "job_not_failed"),
            Self::JobFinished => (S::CONFLICT, "job_finished"),
            Self::InvalidJobId => (S::BAD_REQUEST, "invalid_job_id"),
            Self::InvalidQuery(_) => (S::BAD_REQUEST, "invalid_query"),
            Self::RateLimited(_) => (S::TOO_MANY_REQUESTS, "rate_limited"),
            Self::SessionBusy(_) => (S::TOO_MANY_REQUESTS, "session_busy"),
            Self::Maintenance(_) => (S::SERVICE_UNAVAILABLE, "maintenance_unavailable"),
            Self::Store(e) if e.is_full() => (S::INSUFFICIENT_STORAGE, "storage_full"),
            Self::Queue(e) if e.is_full() => (S::INSUFFICIENT_STORAGE, "storage_full"),
            Self::Store(_) => (S::SERVICE_UNAVAILABLE, "database_unavailable"),
            Self::Queue(_) => (S::SERVICE_UNAVAILABLE, "queue_unavailable"),
            Self::Memory(_) => (S::SERVICE_UNAVAILABLE, "memory_unavailable"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = if status.is_server_error() {
            tracing::error!(error = %self, cause = ?self, "request failed");
            "Rose cannot take this request right now; try again shortly.".to_owned()
        } else {
            self.to_string()
        };
        let retry_after = match &self {
            Self::RateLimited(wait) => Some(retry_secs(*wait)),
            Self::SessionBusy(_) => Some(1),
            // An outage of the database or the queue, or a full disk: worth
            // trying again shortly, and nothing of this request was kept.
            Self::Store(_) | Self::Queue(_) => Some(2),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

impl From<rose_shared::identity::IdentityError> for ApiError {
    fn from(e: rose_shared::identity::IdentityError) -> Self {
        use rose_shared::identity::IdentityError as E;
        match e {
            E::InvalidPersonKey => Self::InvalidPersonKey,
            E::PersonKeysUnavailable => Self::PersonKeysUnavailable,
            E::InvalidUserToken(_) => Self::InvalidUserToken(e.to_string()),
            E::InvalidUserId => Self::InvalidUserId,
        }
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;
