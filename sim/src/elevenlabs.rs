//! ElevenLabs text-to-speech: `POST /v1/text-to-speech/{voice_id}` and its
//! `/stream` twin.
//!
//! Errors use ElevenLabs' two shapes (see [`crate::elevenlabs_body`], which
//! also checks the body): 401 `invalid_api_key`, 400 `text_too_long`, 429
//! `too_many_concurrent_requests`, and FastAPI's 422s. Audio follows
//! `output_format`: `mp3_<rate>_<kbps>` is a run of valid silent MPEG frames,
//! `pcm_<rate>` raw 16-bit little-endian samples, `wav_<rate>` a WAV, all
//! lasting about 60 ms a character. The plain endpoint answers once the
//! whole file is generated (the time to first byte, then the audio at the
//! configured speed); the stream sends the same bytes in chunks without a
//! length, the first after the time to first byte and each next one as its
//! audio is generated, and holds its request in flight (and, under
//! `rate-limited`, its concurrency slot) until the last byte. Requests
//! beyond the configured concurrency are refused 429
//! `too_many_concurrent_requests`.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::Sim;
use crate::content::random_id;
use crate::dropped::dropped_connection;
use crate::elevenlabs_body::{ElevenError, detail, json_body, unprocessable, validate};
use crate::mp3::{self, Mp3Format};
use crate::pacing::{paced_body, pause};
use crate::state::{Endpoint, Grant, Refusal};
use crate::tone;

/// The longest text one request may carry.
const MAX_TEXT_CHARS: usize = 5_000;
/// The size of a streamed chunk.
const CHUNK_BYTES: usize = 4_096;
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
    let in_flight = sim.state().arrive(Endpoint::TextToSpeech);
    let speech = match run(sim, voice_id, uri, headers, body).await {
        Ok(speech) => speech,
        Err(response) => return response,
    };
    let timing = sim.state().timing();
    let first_byte = sim.state().first_wait(&timing, Endpoint::TextToSpeech);
    let generation = timing.speaking(speech.duration);
    let body = if stream {
        pause(first_byte).await;
        let pieces = audio_pieces(speech.audio, generation);
        paced_body(pieces, (in_flight, speech.grant))
    } else {
        pause(first_byte.saturating_add(generation)).await;
        Body::from(speech.audio)
    };
    (speech.headers, body).into_response()
}

/// A valid, granted request's answer, before any wait.
struct Speech {
    headers: HeaderMap,
    audio: Vec<u8>,
    /// How long the audio plays.
    duration: Duration,
    /// Holds the concurrency slot, if any.
    grant: Grant,
}

async fn run(
    sim: &Sim,
    voice_id: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Speech, Response> {
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
    let grant = sim
        .state()
        .gate(Endpoint::TextToSpeech, 0)
        .map_err(refusal)?;
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
    Ok(Speech {
        headers,
        audio,
        duration: tone::speech_duration(chars),
        grant,
    })
}

/// The audio in chunks: the first at once, each next one when the audio up
/// to its end is generated, the last when `generation` is over.
fn audio_pieces(audio: Vec<u8>, generation: Duration) -> Vec<(Duration, Bytes)> {
    let total = audio.len().max(1) as f64;
    let audio = Bytes::from(audio);
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < audio.len() {
        let end = (start + CHUNK_BYTES).min(audio.len());
        let at = if start == 0 {
            Duration::ZERO
        } else {
            generation.mul_f64(end as f64 / total)
        };
        pieces.push((at, audio.slice(start..end)));
        start = end;
    }
    pieces
}

fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find_map(|(k, v)| (k == name).then_some(v))
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
    fn stream_chunks_follow_the_generation() {
        let pieces = audio_pieces(vec![0; 10_000], Duration::from_millis(1_000));
        let sizes: Vec<usize> = pieces.iter().map(|(_, b)| b.len()).collect();
        assert_eq!(sizes, [4_096, 4_096, 1_808]);
        let at: Vec<u128> = pieces.iter().map(|(at, _)| at.as_millis()).collect();
        assert_eq!(at, [0, 819, 1_000]);
        assert!(audio_pieces(Vec::new(), Duration::from_secs(1)).is_empty());
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
