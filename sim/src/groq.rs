//! The Groq / OpenAI-compatible surface: routes, the error shape, bearer
//! auth, the `x-ratelimit-*` headers, and the small endpoints (`models`,
//! `audio/speech`, answered once the whole file is generated: the time to
//! first byte, then the audio at the configured speed). Transcriptions and
//! chat live in their own modules.
//!
//! Every error is `{"error": {"message", "type", "code"?}}` as Groq sends it.
//! Refusals from the gate become Groq's shapes too: 429
//! `rate_limit_exceeded` with `retry-after` and `x-ratelimit-*-requests`,
//! 5xx with a message that says the failure is simulated, and the flaky
//! profile's dropped connections as no answer at all.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::Sim;
use crate::content::random_id;
use crate::dropped::dropped_connection;
use crate::pacing::pause;
use crate::state::{Endpoint, Refusal};
use crate::window::{RateInfo, go_duration};

/// Speech-to-text models Groq serves.
pub(crate) const STT_MODELS: [&str; 3] = [
    "whisper-large-v3",
    "whisper-large-v3-turbo",
    "distil-whisper-large-v3-en",
];
/// Chat models the simulator knows.
pub(crate) const CHAT_MODELS: [&str; 4] = [
    "llama-3.3-70b-versatile",
    "llama-3.1-8b-instant",
    "openai/gpt-oss-20b",
    "openai/gpt-oss-120b",
];

/// The Groq routes, relative to the base path (`/openai/v1` or `/v1`).
pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route(
            "/audio/transcriptions",
            post(crate::transcription::transcribe),
        )
        .route("/chat/completions", post(crate::chat::complete))
        .route("/audio/speech", post(speech))
        .route("/models", get(models))
        .route("/models/{*id}", get(model))
}

/// A Groq error answer.
#[derive(Debug)]
pub(crate) struct GroqError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    code: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
}

impl GroqError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            code: None,
            headers: Vec::new(),
        }
    }

    /// A 400 `invalid_request_error`.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub(crate) fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// Adds a header (`name` must be lowercase).
    pub(crate) fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Invalid API Key",
        )
        .code("invalid_api_key")
    }

    pub(crate) fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .code("model_not_found")
    }
}

impl IntoResponse for GroqError {
    fn into_response(self) -> Response {
        let mut error = json!({"message": self.message, "type": self.kind});
        if let Some(code) = self.code {
            error["code"] = json!(code);
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(name), value);
            }
        }
        response
    }
}

/// Requires `Authorization: Bearer <non-empty>`.
pub(crate) fn authorize(headers: &HeaderMap) -> Result<(), GroqError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    if token.is_empty() {
        Err(GroqError::unauthorized())
    } else {
        Ok(())
    }
}

/// Parses a JSON object body, refusing other content types and bad JSON.
pub(crate) fn json_object(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<serde_json::Map<String, Value>, GroqError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        return Err(GroqError::invalid(format!(
            "invalid content type: {content_type:?}; the request body must be application/json"
        )));
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(GroqError::invalid("the request body must be a JSON object")),
        Err(e) => Err(GroqError::invalid(format!(
            "We could not parse the JSON body of your request. (HINT: the simulator expects a JSON payload, but what was sent was not valid JSON: {e})"
        ))),
    }
}

/// The `x-ratelimit-*` headers every successful Groq answer carries, plus a request id.
pub(crate) fn rate_headers(rate: &RateInfo, request_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let pairs = [
        (
            "x-ratelimit-limit-requests",
            rate.limit_requests.to_string(),
        ),
        ("x-ratelimit-limit-tokens", rate.limit_tokens.to_string()),
        (
            "x-ratelimit-remaining-requests",
            rate.remaining_requests.to_string(),
        ),
        (
            "x-ratelimit-remaining-tokens",
            rate.remaining_tokens.to_string(),
        ),
        (
            "x-ratelimit-reset-requests",
            go_duration(rate.reset_requests),
        ),
        ("x-ratelimit-reset-tokens", go_duration(rate.reset_tokens)),
        ("x-request-id", request_id.to_owned()),
    ];
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    headers
}

/// Renders a gate refusal in Groq's shape (or drops the connection);
/// `model` names the rate-limited model.
pub(crate) fn refusal(refusal: Refusal, model: &str) -> Response {
    match refusal {
        Refusal::Fault {
            status,
            retry_after,
            body,
        } => {
            let mut response = match body {
                Some(body) => (status, Json(body)).into_response(),
                None => status_error(status).into_response(),
            };
            if let Some(secs) = retry_after
                && let Ok(value) = HeaderValue::from_str(&secs.to_string())
            {
                response.headers_mut().insert(RETRY_AFTER, value);
            }
            response
        }
        Refusal::Outage => status_error(StatusCode::SERVICE_UNAVAILABLE).into_response(),
        Refusal::Flaky(status) => status_error(status).into_response(),
        Refusal::Dropped => dropped_connection(),
        Refusal::RateLimited { limit, reset } => {
            let wait = go_duration(reset);
            let message = format!(
                "Rate limit reached for model `{model}` in organization `org_simulated` service tier `on_demand` \
                 on requests per minute (RPM): Limit {limit}, Used {limit}, Requested 1. \
                 Please try again in {wait}. (Simulated rate limit.)"
            );
            let retry_after = reset.as_millis().div_ceil(1000).max(1).to_string();
            GroqError::new(StatusCode::TOO_MANY_REQUESTS, "requests", message)
                .code("rate_limit_exceeded")
                .header("retry-after", &retry_after)
                .header("x-ratelimit-limit-requests", &limit.to_string())
                .header("x-ratelimit-remaining-requests", "0")
                .header("x-ratelimit-reset-requests", &wait)
                .into_response()
        }
        Refusal::Busy { .. } => status_error(StatusCode::TOO_MANY_REQUESTS).into_response(),
    }
}

/// A Groq-shaped error for an arbitrary status (faults and the failure profiles).
fn status_error(status: StatusCode) -> GroqError {
    let (kind, code, message) = match status.as_u16() {
        400 => (
            "invalid_request_error",
            None,
            "Bad request (simulated fault).",
        ),
        401 => (
            "invalid_request_error",
            Some("invalid_api_key"),
            "Invalid API Key",
        ),
        403 => (
            "permission_error",
            Some("permission_denied"),
            "Permission denied (simulated fault).",
        ),
        404 => (
            "invalid_request_error",
            Some("not_found"),
            "Not found (simulated fault).",
        ),
        413 => (
            "invalid_request_error",
            Some("request_too_large"),
            "Request Entity Too Large",
        ),
        429 => (
            "requests",
            Some("rate_limit_exceeded"),
            "Rate limit reached (simulated fault).",
        ),
        500 => (
            "internal_server_error",
            None,
            "Internal Server Error (simulated).",
        ),
        502 => ("internal_server_error", None, "Bad Gateway (simulated)."),
        503 => (
            "internal_server_error",
            Some("service_unavailable"),
            "Service Unavailable: the simulated provider is down.",
        ),
        504 => (
            "internal_server_error",
            None,
            "Gateway Timeout (simulated).",
        ),
        _ => ("api_error", None, "Simulated provider error."),
    };
    let error = GroqError::new(status, kind, message);
    match code {
        Some(code) => error.code(code),
        None => error,
    }
}

fn model_entry(id: &str) -> Value {
    let (owner, context, max_completion) = match id {
        "llama-3.3-70b-versatile" => ("Meta", 131_072, 32_768),
        "llama-3.1-8b-instant" => ("Meta", 131_072, 131_072),
        "openai/gpt-oss-20b" | "openai/gpt-oss-120b" => ("OpenAI", 131_072, 65_536),
        "distil-whisper-large-v3-en" => ("Hugging Face", 448, 448),
        _ => ("OpenAI", 448, 448),
    };
    json!({
        "id": id,
        "object": "model",
        "created": 1_693_721_698,
        "owned_by": owner,
        "active": true,
        "context_window": context,
        "public_apps": null,
        "max_completion_tokens": max_completion,
    })
}

/// `GET …/models`.
async fn models(headers: HeaderMap) -> Result<Json<Value>, GroqError> {
    authorize(&headers)?;
    let data: Vec<Value> = CHAT_MODELS
        .iter()
        .chain(STT_MODELS.iter())
        .map(|id| model_entry(id))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `GET …/models/{id}` (ids may contain a slash).
async fn model(headers: HeaderMap, Path(id): Path<String>) -> Result<Json<Value>, GroqError> {
    authorize(&headers)?;
    if CHAT_MODELS.contains(&id.as_str()) || STT_MODELS.contains(&id.as_str()) {
        Ok(Json(model_entry(&id)))
    } else {
        Err(GroqError::model_not_found(&id))
    }
}

/// `POST …/audio/speech`: OpenAI's text-to-speech shape.
async fn speech(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    let _in_flight = sim.state().arrive(Endpoint::Speech);
    match speech_inner(&sim, &headers, &body).await {
        Ok(response) | Err(response) => response,
    }
}

async fn speech_inner(sim: &Sim, headers: &HeaderMap, body: &Bytes) -> Result<Response, Response> {
    let fail = IntoResponse::into_response;
    authorize(headers).map_err(fail)?;
    let body = json_object(headers, body).map_err(fail)?;
    let string = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
    };
    let model = string("model")
        .ok_or_else(|| fail(GroqError::invalid("'model' : property 'model' is missing")))?;
    let input = string("input").ok_or_else(|| {
        fail(GroqError::invalid(
            "'input' : property 'input' is missing or empty",
        ))
    })?;
    string("voice")
        .ok_or_else(|| fail(GroqError::invalid("'voice' : property 'voice' is missing")))?;
    let chars = input.chars().count();
    if chars > 10_000 {
        return Err(fail(GroqError::invalid(
            "'input' : string must be at most 10000 characters",
        )));
    }
    if let Some(speed) = body.get("speed").filter(|v| !v.is_null()) {
        let ok = speed.as_f64().is_some_and(|s| (0.25..=4.0).contains(&s));
        if !ok {
            return Err(fail(GroqError::invalid(
                "'speed' : number must be between 0.25 and 4",
            )));
        }
    }
    let format = match body.get("response_format") {
        None | Some(Value::Null) => "mp3",
        Some(Value::String(f)) if f == "mp3" || f == "wav" => f.as_str(),
        Some(_) => {
            return Err(fail(GroqError::invalid(
                "'response_format' : value must be one of [mp3 wav]",
            )));
        }
    };
    let grant = sim
        .state()
        .gate(Endpoint::Speech, 0)
        .map_err(|r| refusal(r, model))?;
    let duration = crate::tone::speech_duration(chars);
    // Not streamed: the file leaves once all of it is generated.
    let timing = sim.state().timing();
    let first = sim.state().first_wait(&timing, Endpoint::Speech);
    pause(first.saturating_add(timing.speaking(duration))).await;
    let (mime, audio) = if format == "wav" {
        let samples = crate::tone::soft_tone(24_000, duration);
        (
            "audio/wav",
            rose_shared::audio::build_wav(24_000, &samples, None),
        )
    } else {
        let mp3 = crate::mp3::Mp3Format::new(44_100, 128)
            .map_or_else(Vec::new, |f| crate::mp3::silent(f, duration));
        ("audio/mpeg", mp3)
    };
    let mut response = (StatusCode::OK, [(CONTENT_TYPE, mime)], audio).into_response();
    response
        .headers_mut()
        .extend(rate_headers(&grant.rate, &random_id("req_", 26)));
    Ok(response)
}

/// Unknown paths: OpenAI's `unknown_url` error.
pub(crate) async fn unknown_url(method: Method, uri: Uri) -> GroqError {
    GroqError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!(
            "Unknown request URL: {method} {}. Please check the URL for typos.",
            uri.path()
        ),
    )
    .code("unknown_url")
}

/// A known path with the wrong method.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> GroqError {
    GroqError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("Method {method} is not allowed for {}.", uri.path()),
    )
    .code("method_not_allowed")
}
