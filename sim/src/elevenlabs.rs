//! ElevenLabs text-to-speech: `POST /v1/text-to-speech/{voice_id}` and its
//! `/stream` twin.
//!
//! Errors use ElevenLabs' two shapes: `{"detail": {"status", "message"}}` for
//! its own checks (401 `invalid_api_key`, 400 `text_too_long`, 429
//! `too_many_concurrent_requests`) and FastAPI's validation list
//! `{"detail": [{"loc", "msg", "type"}]}` for 422s. Audio follows
//! `output_format`: `mp3_<rate>_<kbps>` is a run of valid silent MPEG frames,
//! `pcm_<rate>` raw 16-bit little-endian samples, `wav_<rate>` a WAV, all
//! lasting about 60 ms a character. The stream variant sends the same bytes
//! in chunks without a length. Under `rate-limited`, requests beyond the
//! configured concurrency are refused 429 `too_many_concurrent_requests`.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use crate::Sim;
use crate::content::random_id;
use crate::dropped::dropped_connection;
use crate::mp3::{self, Mp3Format};
use crate::state::{Endpoint, Refusal};
use crate::tone;

/// The longest text one request may carry.
const MAX_TEXT_CHARS: usize = 5_000;
const PCM_RATES: [u32; 6] = [8_000, 16_000, 22_050, 24_000, 44_100, 48_000];

/// The ElevenLabs routes, relative to `/v1`.
pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route("/text-to-speech/{voice_id}", post(speak))
        .route("/text-to-speech/{voice_id}/stream", post(speak_stream))
}

/// A requested `output_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Mp3(Mp3Format),
    Pcm(u32),
    Wav(u32),
}

impl Output {
    fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split('_');
        let kind = parts.next()?;
        let rate: u32 = parts.next()?.parse().ok()?;
        let extra = parts.next();
        if parts.next().is_some() {
            return None;
        }
        match (kind, extra) {
            ("mp3", Some(kbps)) => Mp3Format::new(rate, kbps.parse().ok()?).map(Self::Mp3),
            ("pcm", None) if PCM_RATES.contains(&rate) => Some(Self::Pcm(rate)),
            ("wav", None) if PCM_RATES.contains(&rate) => Some(Self::Wav(rate)),
            _ => None,
        }
    }

    fn mime(self) -> &'static str {
        match self {
            Self::Mp3(_) => "audio/mpeg",
            Self::Pcm(_) => "audio/pcm",
            Self::Wav(_) => "audio/wav",
        }
    }

    fn render(self, chars: usize) -> Vec<u8> {
        let duration = tone::speech_duration(chars);
        match self {
            Self::Mp3(format) => mp3::silent(format, duration),
            Self::Pcm(rate) => tone::pcm_bytes(&tone::soft_tone(rate, duration)),
            Self::Wav(rate) => {
                rose_shared::audio::build_wav(rate, &tone::soft_tone(rate, duration), None)
            }
        }
    }
}

/// An ElevenLabs error answer: a status, a JSON body and maybe `retry-after`.
#[derive(Debug)]
struct ElevenError {
    status: StatusCode,
    body: Value,
    retry_after: Option<String>,
}

impl IntoResponse for ElevenError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(value) = self
            .retry_after
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            response.headers_mut().insert(RETRY_AFTER, value);
        }
        response
    }
}

/// An ElevenLabs `{"detail": {"status", "message"}}` error.
fn detail(status: StatusCode, code: &str, message: &str) -> ElevenError {
    ElevenError {
        status,
        body: json!({"detail": {"status": code, "message": message}}),
        retry_after: None,
    }
}

/// A FastAPI validation error (422).
fn unprocessable(loc: &[&str], msg: &str, kind: &str) -> ElevenError {
    ElevenError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        body: json!({"detail": [{"loc": loc, "msg": msg, "type": kind}]}),
        retry_after: None,
    }
}

async fn speak(
    State(sim): State<Sim>,
    Path(voice_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&sim, &voice_id, &uri, &headers, &body, false).await
}

async fn speak_stream(
    State(sim): State<Sim>,
    Path(voice_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&sim, &voice_id, &uri, &headers, &body, true).await
}

async fn handle(
    sim: &Sim,
    voice_id: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    stream: bool,
) -> Response {
    let _in_flight = sim.state().arrive(Endpoint::TextToSpeech);
    match run(sim, voice_id, uri, headers, body, stream).await {
        Ok(response) | Err(response) => response,
    }
}

async fn run(
    sim: &Sim,
    voice_id: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    stream: bool,
) -> Result<Response, Response> {
    let fail = IntoResponse::into_response;
    let key = headers
        .get("xi-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or_default();
    if key.is_empty() {
        return Err(fail(detail(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "Invalid API key",
        )));
    }
    let format = query_param(uri, "output_format").unwrap_or("mp3_44100_128");
    let output = Output::parse(format).ok_or_else(|| {
        fail(unprocessable(
            &["query", "output_format"],
            &format!("invalid output format {format:?}: expected mp3_<rate>_<kbps>, pcm_<rate> or wav_<rate>"),
            "value_error",
        ))
    })?;
    let body = json_body(headers, body).map_err(fail)?;
    let text = validate(&body).map_err(fail)?;
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        let message =
            format!("Text is too long: {chars} characters, the maximum is {MAX_TEXT_CHARS}.");
        return Err(fail(detail(
            StatusCode::BAD_REQUEST,
            "text_too_long",
            &message,
        )));
    }
    let _grant = sim
        .state()
        .gate(Endpoint::TextToSpeech, 0)
        .map_err(refusal)?;
    sim.state().wait(Endpoint::TextToSpeech).await;
    let audio = output.render(chars);
    tracing::debug!(voice_id, chars, bytes = audio.len(), "sim speech rendered");

    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(output.mime()));
    let extra = [
        ("request-id", random_id("", 20)),
        ("character-cost", chars.to_string()),
        ("history-item-id", random_id("", 20)),
    ];
    for (name, value) in extra {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    let body = if stream {
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> = audio
            .chunks(4_096)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Body::from_stream(futures::stream::iter(chunks))
    } else {
        Body::from(audio)
    };
    Ok((headers, body).into_response())
}

fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// The JSON object body, or FastAPI's 422.
fn json_body(headers: &HeaderMap, body: &Bytes) -> Result<Map<String, Value>, ElevenError> {
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"));
    if !is_json {
        return Err(unprocessable(
            &["body"],
            "value is not a valid dict",
            "type_error.dict",
        ));
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(unprocessable(
            &["body"],
            "value is not a valid dict",
            "type_error.dict",
        )),
        Err(e) => Err(unprocessable(
            &["body"],
            &format!("Expecting value: {e}"),
            "value_error.jsondecode",
        )),
    }
}

/// Checks `text`, `model_id` and `voice_settings`; returns the text.
fn validate(body: &Map<String, Value>) -> Result<&str, ElevenError> {
    let text = match body.get("text") {
        None | Some(Value::Null) => {
            return Err(unprocessable(
                &["body", "text"],
                "field required",
                "value_error.missing",
            ));
        }
        Some(Value::String(t)) if t.trim().is_empty() => {
            return Err(unprocessable(
                &["body", "text"],
                "ensure this value has at least 1 characters",
                "value_error.any_str.min_length",
            ));
        }
        Some(Value::String(t)) => t.as_str(),
        Some(_) => {
            return Err(unprocessable(
                &["body", "text"],
                "str type expected",
                "type_error.str",
            ));
        }
    };
    if let Some(model) = body.get("model_id").filter(|v| !v.is_null())
        && !model.is_string()
    {
        return Err(unprocessable(
            &["body", "model_id"],
            "str type expected",
            "type_error.str",
        ));
    }
    match body.get("voice_settings") {
        None | Some(Value::Null) => {}
        Some(Value::Object(settings)) => {
            for name in ["stability", "similarity_boost", "style"] {
                let Some(value) = settings.get(name).filter(|v| !v.is_null()) else {
                    continue;
                };
                let loc = ["body", "voice_settings", name];
                let Some(number) = value.as_f64() else {
                    return Err(unprocessable(
                        &loc,
                        "value is not a valid float",
                        "type_error.float",
                    ));
                };
                if number < 0.0 {
                    return Err(unprocessable(
                        &loc,
                        "ensure this value is greater than or equal to 0",
                        "value_error.number.not_ge",
                    ));
                }
                if number > 1.0 {
                    return Err(unprocessable(
                        &loc,
                        "ensure this value is less than or equal to 1",
                        "value_error.number.not_le",
                    ));
                }
            }
        }
        Some(_) => {
            return Err(unprocessable(
                &["body", "voice_settings"],
                "value is not a valid dict",
                "type_error.dict",
            ));
        }
    }
    Ok(text)
}

/// Renders a gate refusal in ElevenLabs' shape (or drops the connection).
fn refusal(refusal: Refusal) -> Response {
    let error = match refusal {
        Refusal::Fault {
            status,
            retry_after,
            body,
        } => {
            let mut error = status_error(status);
            if let Some(body) = body {
                error.body = body;
            }
            error.retry_after = retry_after.map(|secs| secs.to_string());
            error
        }
        Refusal::Outage => status_error(StatusCode::SERVICE_UNAVAILABLE),
        Refusal::Flaky(status) => status_error(status),
        Refusal::Dropped => return dropped_connection(),
        Refusal::Busy { limit } => detail(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_concurrent_requests",
            &format!(
                "Too many concurrent requests: your plan allows {limit} at a time (simulated)."
            ),
        ),
        Refusal::RateLimited { .. } => status_error(StatusCode::TOO_MANY_REQUESTS),
    };
    error.into_response()
}

fn status_error(status: StatusCode) -> ElevenError {
    let (code, message) = match status.as_u16() {
        400 => ("bad_request", "Bad request (simulated fault)."),
        401 => ("invalid_api_key", "Invalid API key"),
        402 => ("payment_required", "Payment required (simulated fault)."),
        404 => (
            "voice_not_found",
            "A voice with that id was not found (simulated fault).",
        ),
        429 => (
            "too_many_concurrent_requests",
            "Too many concurrent requests: your plan allows 2 at a time (simulated).",
        ),
        500 => ("internal_error", "Internal server error (simulated)."),
        502 => ("bad_gateway", "Bad gateway (simulated)."),
        503 => (
            "service_unavailable",
            "The simulated voice service is unavailable.",
        ),
        _ => ("simulated_error", "Simulated provider error."),
    };
    detail(status, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_output_formats() {
        assert!(matches!(
            Output::parse("mp3_44100_128"),
            Some(Output::Mp3(_))
        ));
        assert!(matches!(
            Output::parse("mp3_22050_32"),
            Some(Output::Mp3(_))
        ));
        assert_eq!(Output::parse("pcm_16000"), Some(Output::Pcm(16_000)));
        assert_eq!(Output::parse("wav_44100"), Some(Output::Wav(44_100)));
        for bad in [
            "",
            "mp3",
            "mp3_44100",
            "mp3_44100_127",
            "pcm_12345",
            "ulaw_8000",
            "opus_48000_64",
            "wav_16000_1",
        ] {
            assert_eq!(Output::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_query_parameters() {
        let uri: Uri = "/v1/text-to-speech/x?enable_logging&output_format=pcm_24000"
            .parse()
            .expect("uri");
        assert_eq!(query_param(&uri, "output_format"), Some("pcm_24000"));
        assert_eq!(query_param(&uri, "enable_logging"), Some(""));
        assert_eq!(query_param(&uri, "missing"), None);
    }

    #[test]
    fn renders_each_kind() {
        let pcm = Output::Pcm(16_000).render(10);
        assert_eq!(pcm.len(), 19_200); // 0.6 s of 16-bit samples at 16 kHz
        let wav = Output::Wav(16_000).render(10);
        let info = rose_shared::audio::wav_info(&wav).expect("a wav");
        assert!((info.duration_secs.unwrap_or_default() - 0.6).abs() < 0.01);
    }
}
