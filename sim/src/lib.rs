//! The provider simulator behind `rose sim`: an HTTP server that answers the
//! Groq (OpenAI-compatible) and ElevenLabs request shapes.
//!
//! Design: one [`Sim`] handle (an `Arc` around the private `state::Inner`) is the axum
//! state of every route. Provider handlers follow one order, so that faults
//! and rate limits behave like the real services: count the request, check
//! the credential, validate the body strictly (errors in the provider's own
//! shape), then ask the state's *gate* whether this request is refused (an
//! injected fault, the outage or flaky profile, a rate-limit window, the
//! ElevenLabs concurrency slots), then wait the endpoint's latency and answer
//! deterministically. Every request outside `/__sim` passes a recording
//! middleware that keeps the last 200 requests (secrets redacted) for
//! `GET /__sim/requests`.
//!
//! Routes: Groq under both `/openai/v1` and `/v1` (`audio/transcriptions`,
//! `chat/completions`, `audio/speech`, `models`); ElevenLabs at
//! `/v1/text-to-speech/{voice_id}[/stream]`; control under `/__sim`.
//! Nothing here pretends to be real: chat replies start with "(Simulated reply)".

mod chat;
mod content;
mod control;
mod elevenlabs;
mod form;
mod groq;
mod mp3;
mod record;
mod state;
mod tone;
mod transcription;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How the simulator behaves: its latencies and an optional failure profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimConfig {
    /// Time each successful provider answer waits before it is sent.
    pub latency: Latency,
    /// A failure profile, or `None` for a well-behaved provider.
    pub profile: Option<Profile>,
}

/// Per-endpoint answer latency; parses from `"STT,LLM,TTS"` in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// Speech-to-text (`audio/transcriptions`).
    pub stt: Duration,
    /// Chat completions.
    pub llm: Duration,
    /// Text-to-speech (ElevenLabs and `audio/speech`).
    pub tts: Duration,
}

/// Why a `--latency-ms` value was refused.
#[derive(Debug, thiserror::Error)]
pub enum LatencyParseError {
    /// Not three comma-separated values.
    #[error(
        "expected three comma-separated millisecond values STT,LLM,TTS (e.g. 300,500,400), got {0:?}"
    )]
    Shape(String),
    /// One value is not a whole number of milliseconds.
    #[error("{stage} latency {value:?} is not a whole number of milliseconds")]
    Number {
        /// `STT`, `LLM` or `TTS`.
        stage: &'static str,
        /// The text that failed to parse.
        value: String,
        /// The parser's complaint.
        #[source]
        source: std::num::ParseIntError,
    },
}

impl FromStr for Latency {
    type Err = LatencyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let values: Vec<&str> = s.split(',').map(str::trim).collect();
        let [stt, llm, tts] = values.as_slice() else {
            return Err(LatencyParseError::Shape(s.to_owned()));
        };
        let ms = |stage: &'static str, value: &str| {
            value
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|source| LatencyParseError::Number {
                    stage,
                    value: value.to_owned(),
                    source,
                })
        };
        Ok(Self {
            stt: ms("STT", stt)?,
            llm: ms("LLM", llm)?,
            tts: ms("TTS", tts)?,
        })
    }
}

/// A failure profile (`--profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Groq free-tier request limits (20/min transcriptions, 30/min chat) and
    /// ElevenLabs concurrency 2, answered with the providers' 429 shapes.
    RateLimited,
    /// About one provider request in five answers 500, 502 or 503.
    Flaky,
    /// Every provider request answers 503.
    Outage,
    /// Latencies of at least 1500 ms (STT), 3000 ms (LLM) and 2000 ms (TTS).
    Slow,
}

impl Profile {
    /// The name used on the command line.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate-limited",
            Self::Flaky => "flaky",
            Self::Outage => "outage",
            Self::Slow => "slow",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown `--profile` name.
#[derive(Debug, thiserror::Error)]
#[error("unknown profile {0:?}: expected rate-limited, flaky, outage or slow")]
pub struct ProfileParseError(String);

impl FromStr for Profile {
    type Err = ProfileParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "rate-limited" => Ok(Self::RateLimited),
            "flaky" => Ok(Self::Flaky),
            "outage" => Ok(Self::Outage),
            "slow" => Ok(Self::Slow),
            other => Err(ProfileParseError(other.to_owned())),
        }
    }
}

/// Requests received per provider endpoint (every request, whatever the answer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// `POST …/audio/transcriptions`.
    pub transcriptions: u64,
    /// `POST …/chat/completions`.
    pub chat_completions: u64,
    /// ElevenLabs `POST /v1/text-to-speech/{voice_id}[/stream]`.
    pub text_to_speech: u64,
    /// OpenAI-shaped `POST …/audio/speech`.
    pub speech: u64,
}

/// What `GET /__sim/stats` answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Per-endpoint counts.
    pub requests: RequestCounts,
    /// The sum of the per-endpoint counts.
    pub total: u64,
}

/// A handle on one simulator's state; clones share it.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<state::Inner>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("profile", &self.inner.profile())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Bodies above this are refused before any handler runs (Groq's own file
/// limit, 25 MB, is checked by the transcription handler).
const MAX_BODY_BYTES: usize = 100 * 1024 * 1024;

impl Sim {
    /// A simulator with `config`'s latencies and profile, counters at zero.
    #[must_use]
    pub fn new(config: SimConfig) -> Self {
        Self {
            inner: Arc::new(state::Inner::new(config)),
        }
    }

    /// Every route: Groq under `/openai/v1` and `/v1`, ElevenLabs under `/v1`,
    /// control under `/__sim`.
    pub fn router(&self) -> Router {
        let v1 = groq::routes().merge(elevenlabs::routes());
        Router::new()
            .nest("/openai/v1", groq::routes())
            .nest("/v1", v1)
            .nest("/__sim", control::routes())
            .fallback(groq::unknown_url)
            .method_not_allowed_fallback(groq::method_not_allowed)
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                record::record,
            ))
            // The recorder bounds the body itself; handlers see it whole.
            .layer(DefaultBodyLimit::disable())
            .with_state(self.clone())
    }

    /// The request counts, as `GET /__sim/stats` reports them.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    pub(crate) fn state(&self) -> &state::Inner {
        &self.inner
    }
}

/// Serves `sim` on `listener` until `shutdown` is cancelled.
///
/// # Errors
/// When the server fails to accept or serve connections.
pub async fn serve(
    listener: TcpListener,
    sim: Sim,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().ok();
    tracing::debug!(?addr, profile = ?sim.inner.profile(), "provider simulator serving");
    axum::serve(listener, sim.router())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("provider simulator server failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_latency() {
        let l: Latency = "300, 500,400".parse().expect("valid");
        assert_eq!(l.stt, Duration::from_millis(300));
        assert_eq!(l.llm, Duration::from_millis(500));
        assert_eq!(l.tts, Duration::from_millis(400));
        assert!(matches!(
            "300,500".parse::<Latency>(),
            Err(LatencyParseError::Shape(_))
        ));
        let err = "300,fast,400".parse::<Latency>().expect_err("invalid");
        assert!(err.to_string().contains("LLM"), "{err}");
        assert!("1,2,3,4".parse::<Latency>().is_err());
        assert!("-1,2,3".parse::<Latency>().is_err());
    }

    #[test]
    fn parses_profiles() {
        for p in [
            Profile::RateLimited,
            Profile::Flaky,
            Profile::Outage,
            Profile::Slow,
        ] {
            assert_eq!(p.as_str().parse::<Profile>().expect("round trip"), p);
        }
        let err = "fast".parse::<Profile>().expect_err("unknown");
        assert!(err.to_string().contains("rate-limited"));
    }

    #[test]
    fn stats_serialise_in_the_documented_shape() {
        let value = serde_json::to_value(Stats::default()).expect("serialise");
        assert_eq!(
            value,
            serde_json::json!({"requests": {"transcriptions": 0, "chat_completions": 0, "text_to_speech": 0, "speech": 0}, "total": 0})
        );
    }
}
