//! `POST …/audio/transcriptions`: Groq's Whisper endpoint.
//!
//! Checks run in Groq's order: bearer auth, a multipart body with a `file`
//! part (with a file name) and a `model` field, a known Whisper model, the
//! 25 MB size limit, audio bytes by magic number, then the optional fields.
//! Past the rate gate the file is "decoded": a container with no decodable
//! audio in it (see [`rose_shared::audio::check`]: an empty `fmt `, a WebM
//! without frames, an MP4 without a sound track) gets the 400 Groq's decoder
//! answers, before any latency is spent. The transcript is deterministic
//! (see [`crate::content::transcript`]): a WAV's `LIST/INFO/ICMT` comment,
//! else a phrase picked by SHA-256. The answer waits the STT latency, then
//! the audio's length divided by the configured speed factor (Groq's 216
//! under the `realistic` profile; instant otherwise).

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::Sim;
use crate::content::{random_id, transcript};
use crate::form::{self, FormError};
use crate::groq::{GroqError, STT_MODELS, authorize, rate_headers, refusal};
use crate::pacing::pause;
use crate::state::Endpoint;

/// Groq's upload limit.
const MAX_FILE_BYTES: usize = 25 * 1024 * 1024;
const TYPES_MESSAGE: &str =
    "file must be one of the following types: [flac mp3 mp4 mpeg mpga m4a ogg opus wav webm]";
/// What Groq answers when its decoder finds no audio in a file.
const UNDECODABLE_MESSAGE: &str = "could not process file - is it a valid media file?";

/// How the answer is shaped (`response_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Text,
    Verbose,
}

/// The handler.
pub(crate) async fn transcribe(State(sim): State<Sim>, request: Request) -> Response {
    let _in_flight = sim.state().arrive(Endpoint::Transcriptions);
    match run(&sim, request).await {
        Ok(response) | Err(response) => response,
    }
}

async fn run(sim: &Sim, request: Request) -> Result<Response, Response> {
    let fail = IntoResponse::into_response;
    let (parts, body) = request.into_parts();
    authorize(&parts.headers).map_err(fail)?;
    // The recorder already buffered and bounded the body.
    let bytes: Bytes = axum::body::to_bytes(body, usize::MAX).await.map_err(|e| {
        fail(GroqError::invalid(format!(
            "could not read the request body: {e}"
        )))
    })?;
    let form = form::parse(&parts, bytes).await.map_err(|e| {
        fail(match e {
            FormError::NotMultipart(_) => {
                GroqError::invalid("request Content-Type isn't multipart/form-data")
            }
            FormError::Malformed(e) => {
                GroqError::invalid(format!("could not parse multipart form: {e}"))
            }
        })
    })?;
    let Some(file) = form.file("file") else {
        let message = if form.text("file").is_some() {
            "'file' must be an uploaded file with a filename"
        } else {
            "file or url must be provided"
        };
        return Err(fail(GroqError::invalid(message)));
    };
    let model = form
        .text("model")
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| fail(GroqError::invalid("property 'model' is missing")))?;
    if !STT_MODELS.contains(&model) {
        return Err(fail(GroqError::model_not_found(model)));
    }
    if file.data.len() > MAX_FILE_BYTES {
        let error = GroqError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!(
                "Request Entity Too Large: file is {} bytes, the maximum is 25 MB",
                file.data.len()
            ),
        );
        return Err(fail(error.code("request_too_large")));
    }
    let Some(audio_format) = rose_shared::audio::sniff(&file.data) else {
        return Err(fail(GroqError::invalid(TYPES_MESSAGE)));
    };
    let format = match form.text("response_format").map(str::trim) {
        None | Some("" | "json") => Format::Json,
        Some("text") => Format::Text,
        Some("verbose_json") => Format::Verbose,
        Some(other) => {
            return Err(fail(GroqError::invalid(format!(
                "response_format must be one of [json text verbose_json], got {other:?}"
            ))));
        }
    };
    if let Some(t) = form
        .text("temperature")
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let ok = t.parse::<f64>().is_ok_and(|t| (0.0..=1.0).contains(&t));
        if !ok {
            return Err(fail(GroqError::invalid(
                "temperature must be a number between 0 and 1",
            )));
        }
    }
    let language = match form
        .text("language")
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        None => "english".to_owned(),
        Some(code)
            if (2..=3).contains(&code.len()) && code.chars().all(|c| c.is_ascii_alphabetic()) =>
        {
            language_name(code).map_or_else(|| code.to_ascii_lowercase(), str::to_owned)
        }
        Some(code) => {
            return Err(fail(GroqError::invalid(format!(
                "invalid language {code:?}: expected an ISO-639-1 code"
            ))));
        }
    };
    let grant = sim
        .state()
        .gate(Endpoint::Transcriptions, 0)
        .map_err(|r| refusal(r, model))?;
    if rose_shared::audio::check(&file.data).is_err() {
        return Err(fail(GroqError::invalid(UNDECODABLE_MESSAGE)));
    }
    let text = transcript(&file.data);
    let duration = duration_secs(&file.data, audio_format);
    let timing = sim.state().timing();
    let first = sim.state().first_wait(&timing, Endpoint::Transcriptions);
    pause(first.saturating_add(timing.transcribing(duration))).await;

    let request_id = random_id("req_", 26);
    let headers = rate_headers(&grant.rate, &request_id);
    let x_groq = json!({"id": request_id});
    let response = match format {
        Format::Text => {
            (headers, [(CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
        }
        Format::Json => {
            (headers, axum::Json(json!({"text": text, "x_groq": x_groq}))).into_response()
        }
        Format::Verbose => {
            let body = json!({
                "task": "transcribe",
                "language": language,
                "duration": duration,
                "text": text,
                "segments": [{
                    "id": 0,
                    "seek": 0,
                    "start": 0.0,
                    "end": duration,
                    "text": format!(" {text}"),
                    "tokens": [],
                    "temperature": 0.0,
                    "avg_logprob": -0.2,
                    "compression_ratio": 1.1,
                    "no_speech_prob": 0.01,
                }],
                "x_groq": x_groq,
            });
            (headers, axum::Json(body)).into_response()
        }
    };
    Ok(response)
}

/// A WAV's real duration; other containers estimated at 16 kB/s (128 kbps).
fn duration_secs(data: &[u8], format: rose_shared::audio::AudioFormat) -> f64 {
    let wav = (format == rose_shared::audio::AudioFormat::Wav)
        .then(|| rose_shared::audio::wav_info(data).and_then(|i| i.duration_secs))
        .flatten();
    let secs = wav.unwrap_or(data.len() as f64 / 16_000.0);
    (secs * 100.0).round() / 100.0
}

/// Whisper's name for an ISO-639-1 code (a common subset; others are echoed).
fn language_name(code: &str) -> Option<&'static str> {
    let name = match code.to_ascii_lowercase().as_str() {
        "en" => "english",
        "es" => "spanish",
        "fr" => "french",
        "de" => "german",
        "it" => "italian",
        "pt" => "portuguese",
        "nl" => "dutch",
        "pl" => "polish",
        "ru" => "russian",
        "uk" => "ukrainian",
        "tr" => "turkish",
        "ar" => "arabic",
        "hi" => "hindi",
        "ja" => "japanese",
        "ko" => "korean",
        "zh" => "chinese",
        "sv" => "swedish",
        "no" => "norwegian",
        "da" => "danish",
        "fi" => "finnish",
        _ => return None,
    };
    Some(name)
}
