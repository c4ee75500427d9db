//! The provider simulator behind `rose sim`: an HTTP server that answers the
//! Groq (OpenAI-compatible) and ElevenLabs request shapes.
//!
//! Design: one [`Sim`] handle (an `Arc` around the private `state::Inner`) is the axum
//! state of every route. Provider handlers follow one order, so that faults
//! and rate limits behave like the real services: count the request (and
//! hold it "in flight" until its answer's last byte), check the credential,
//! validate the body strictly (errors in the provider's own shape), then ask
//! the state's *gate* whether this request is refused (an injected fault, a
//! run-time or profile outage, the flaky profile, a rate-limit window, the
//! ElevenLabs concurrency slots), then answer deterministically on the
//! provider's clock: a first wait (the latency, or the time to first token
//! or byte), then the generation (tokens a second, speech faster than real
//! time, a transcription speed factor), streamed piece by piece where the
//! provider streams (chat with `stream: true`, ElevenLabs `/stream`).
//! Unset, the pacing is instant, so tests stay fast; the `realistic`
//! profile fills it with published figures (Groq's Whisper speed factor and
//! Llama 70B's time to first token and tokens a second, ElevenLabs' time to
//! first byte; each source is on its constant, [`REALISTIC_TTFT`] and its
//! siblings). Every request outside
//! `/__sim` passes a recording middleware that keeps the last 200 requests
//! (secrets redacted, arrival and end times) for `GET /__sim/requests`.
//!
//! Routes: Groq under both `/openai/v1` and `/v1` (`audio/transcriptions`,
//! `chat/completions`, `audio/speech`, `models`); ElevenLabs at
//! `/v1/text-to-speech/{voice_id}[/stream]`; control under `/__sim`
//! (`stats`, `requests`, `reset`, `faults`, `latency`, `outage`).
//! Nothing here pretends to be real: chat replies start with "(Simulated
//! reply)", and [`reply_for`] tells a test which reply a message gets.
//!
//! Module map: `config` (what a simulator is told), `pacing` (first waits,
//! generation speeds, paced bodies), `state` (the gate), `stats`
//! (counters), `window` (rate-limit windows), `latency` (profile floors and
//! the slow tail), `outage`, `dropped` (flaky dropped connections),
//! `control` (the `/__sim` routes), `record` (the request log), `groq`,
//! `transcription`, `chat` (with `chat_fields` and `chat_stream`),
//! `elevenlabs` (with `elevenlabs_body`) (the provider surfaces) and their
//! helpers `content`, `extract`, `tools`, `form`, `mp3`, `tone`.

mod chat;
mod chat_fields;
mod chat_stream;
mod config;
mod content;
mod control;
mod dropped;
mod elevenlabs;
mod elevenlabs_body;
mod extract;
mod form;
mod groq;
mod hostile;
mod latency;
mod mp3;
mod outage;
mod pacing;
mod record;
mod state;
mod stats;
mod tone;
mod tools;
mod transcription;
mod window;

use std::fmt;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{
    DEFAULT_FLAKY_RATE, DEFAULT_LOG_CAPACITY, Latency, LatencyParseError, Profile,
    ProfileParseError, SimConfig, SimLimits,
};
pub use pacing::{
    Pacing, REALISTIC_STT_OVERHEAD, REALISTIC_STT_SPEED, REALISTIC_TOKENS_PER_S, REALISTIC_TTFT,
    REALISTIC_TTS_SPEED, REALISTIC_TTS_TTFB,
};
pub use stats::{RequestCounts, Stats};

/// The reply the simulated chat model gives when `last_user` is the last
/// user message (without an assistant prefill, JSON mode, a forced tool or
/// a `max_tokens` cut): one to three sentences after "(Simulated reply)",
/// the same every time.
#[must_use]
pub fn reply_for(last_user: &str) -> String {
    content::reply(last_user)
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
    /// A simulator with `config`'s latencies, profile and profile settings,
    /// counters at zero. A timed outage ([`SimConfig::outage`]) starts now.
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
                hostile::hostile,
            ))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                record::record,
            ))
            // The recorder bounds the body itself; handlers see it whole.
            .layer(DefaultBodyLimit::disable())
            .with_state(self.clone())
    }

    /// The counters, as `GET /__sim/stats` reports them.
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
