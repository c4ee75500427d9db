//! When an answer starts and how fast it flows: the [`Pacing`] knobs, the
//! `realistic` profile's published figures, and the paced bodies that
//! deliver streams piece by piece.
//!
//! Every successful answer waits a *first wait* (the transcription's
//! overhead, the chat's time to first token, the speech's time to first
//! byte), then its *generation*: seconds of audio divided by the
//! transcription speed factor, completion tokens divided by tokens per
//! second, seconds of speech divided by the speech speed factor. A streamed
//! answer (chat with `stream: true`, ElevenLabs `/stream`) sends its first
//! piece after the first wait and the rest as it is generated; every other
//! answer is sent whole once its generation is over. A rate left unset is
//! instant, so without the `realistic` profile and without knobs the
//! simulator answers as it always has: the configured latency, then
//! everything at once.
//!
//! The `realistic` profile fills every unset knob with a published figure
//! and raises the latencies to its floors (an explicit time to first token
//! or first byte is taken as given):
//! - transcription: [`REALISTIC_STT_OVERHEAD`] (250 ms; an assumption: Groq
//!   publishes no fixed overhead, this is a round trip with an upload and a
//!   queue) plus the audio at [`REALISTIC_STT_SPEED`] times real time (216:
//!   Groq's "real-time speed factor" for `whisper-large-v3-turbo`,
//!   console.groq.com/docs/speech-text);
//! - chat: first token after [`REALISTIC_TTFT`] (250 ms: Artificial
//!   Analysis' median time to first token for Groq's Llama 70B models), then
//!   [`REALISTIC_TOKENS_PER_S`] tokens a second (250: a little under the
//!   275–280 tokens/s Groq and Artificial Analysis publish for
//!   `llama-3.3-70b-versatile`);
//! - speech: first byte after [`REALISTIC_TTS_TTFB`] (200 ms: ElevenLabs
//!   documents about 75 ms of model time for its Flash models and about
//!   300 ms for Turbo, elevenlabs.io/docs/api-reference/reducing-latency,
//!   before the network), then audio [`REALISTIC_TTS_SPEED`] times faster
//!   than it plays (4: an assumption; ElevenLabs publishes no generation
//!   speed, and a stream must outrun playback to be worth streaming).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};

use crate::state::Endpoint;
use crate::{Latency, Profile, latency};

/// The `realistic` profile's transcription overhead: an assumed round trip
/// with an upload and a queue (Groq publishes no fixed overhead).
pub const REALISTIC_STT_OVERHEAD: Duration = Duration::from_millis(250);
/// The `realistic` profile's transcription speed, seconds of audio a second:
/// Groq's real-time speed factor for `whisper-large-v3-turbo`
/// (console.groq.com/docs/speech-text).
pub const REALISTIC_STT_SPEED: f64 = 216.0;
/// The `realistic` profile's chat time to first token: Artificial Analysis'
/// figure for Groq's Llama 70B models.
pub const REALISTIC_TTFT: Duration = Duration::from_millis(250);
/// The `realistic` profile's chat tokens a second after the first: a little
/// under the 275–280 Groq and Artificial Analysis publish for
/// `llama-3.3-70b-versatile`.
pub const REALISTIC_TOKENS_PER_S: f64 = 250.0;
/// The `realistic` profile's speech time to first byte: ElevenLabs' ~75 ms
/// (Flash) to ~300 ms (Turbo) of model time, plus the network
/// (elevenlabs.io/docs/api-reference/reducing-latency).
pub const REALISTIC_TTS_TTFB: Duration = Duration::from_millis(200);
/// The `realistic` profile's speech speed, seconds of audio a second: an
/// assumption (ElevenLabs publishes none); a stream must outrun playback.
pub const REALISTIC_TTS_SPEED: f64 = 4.0;

/// How answers are paced; `None` leaves a knob to the profile.
///
/// Without the `realistic` profile an unset time to first token is the LLM
/// latency, an unset time to first byte the TTS latency, and an unset rate
/// instant. Under `realistic` each unset knob takes that profile's figure
/// (see the module constants). Rates that are not finite and positive count
/// as unset. Equality compares rates bit for bit, so it is an equivalence.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pacing {
    /// Chat time to first token (the role chunk of a stream), replacing the
    /// LLM latency.
    pub ttft: Option<Duration>,
    /// Chat completion tokens generated a second after the first.
    pub tokens_per_s: Option<f64>,
    /// Text-to-speech time to first byte, replacing the TTS latency.
    pub tts_ttfb: Option<Duration>,
    /// How many times faster than real time speech audio is generated.
    pub tts_speed: Option<f64>,
    /// How many seconds of audio a transcription handles a second.
    pub stt_speed: Option<f64>,
}

impl PartialEq for Pacing {
    fn eq(&self, other: &Self) -> bool {
        let bits = |rate: Option<f64>| rate.map(f64::to_bits);
        self.ttft == other.ttft
            && self.tts_ttfb == other.tts_ttfb
            && bits(self.tokens_per_s) == bits(other.tokens_per_s)
            && bits(self.tts_speed) == bits(other.tts_speed)
            && bits(self.stt_speed) == bits(other.stt_speed)
    }
}

impl Eq for Pacing {}

/// A rate that can pace: finite and positive.
fn usable(rate: Option<f64>) -> Option<f64> {
    rate.filter(|r| r.is_finite() && *r > 0.0)
}

/// `amount` at `rate` a second; zero when unpaced.
fn at_rate(amount: f64, rate: Option<f64>) -> Duration {
    match rate {
        Some(rate) => Duration::try_from_secs_f64(amount / rate).unwrap_or(Duration::MAX),
        None => Duration::ZERO,
    }
}

/// The timing of answers, resolved from the latency, the pacing and the
/// profile at one moment; a request keeps the one it started with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Timing {
    pub stt_first: Duration,
    pub stt_speed: Option<f64>,
    pub ttft: Duration,
    pub tokens_per_s: Option<f64>,
    pub tts_ttfb: Duration,
    pub tts_speed: Option<f64>,
}

impl Timing {
    pub(crate) fn resolve(latency: Latency, pacing: Pacing, profile: Option<Profile>) -> Self {
        let realistic = profile == Some(Profile::Realistic);
        let rate =
            |set: Option<f64>, figure: f64| usable(set).or_else(|| realistic.then_some(figure));
        let first = |endpoint| latency::base(latency, endpoint, profile);
        Self {
            stt_first: first(Endpoint::Transcriptions),
            stt_speed: rate(pacing.stt_speed, REALISTIC_STT_SPEED),
            ttft: pacing
                .ttft
                .unwrap_or_else(|| first(Endpoint::ChatCompletions)),
            tokens_per_s: rate(pacing.tokens_per_s, REALISTIC_TOKENS_PER_S),
            tts_ttfb: pacing
                .tts_ttfb
                .unwrap_or_else(|| first(Endpoint::TextToSpeech)),
            tts_speed: rate(pacing.tts_speed, REALISTIC_TTS_SPEED),
        }
    }

    /// The wait before `endpoint` starts answering (before the slow tail).
    pub(crate) fn first(&self, endpoint: Endpoint) -> Duration {
        match endpoint {
            Endpoint::Transcriptions => self.stt_first,
            Endpoint::ChatCompletions => self.ttft,
            Endpoint::TextToSpeech | Endpoint::Speech => self.tts_ttfb,
        }
    }

    /// How long transcribing `audio_secs` of audio takes after the first wait.
    pub(crate) fn transcribing(&self, audio_secs: f64) -> Duration {
        at_rate(audio_secs.max(0.0), self.stt_speed)
    }

    /// How long generating `tokens` completion tokens takes.
    pub(crate) fn generating(&self, tokens: u64) -> Duration {
        at_rate(tokens as f64, self.tokens_per_s)
    }

    /// How long generating `audio` of speech takes.
    pub(crate) fn speaking(&self, audio: Duration) -> Duration {
        at_rate(audio.as_secs_f64(), self.tts_speed)
    }
}

/// Sleeps `duration` unless it is zero.
pub(crate) async fn pause(duration: Duration) {
    if !duration.is_zero() {
        tokio::time::sleep(duration).await;
    }
}

/// A body that sends each piece at its offset from now, in order, and holds
/// `keep` (the in-flight guard, a concurrency slot) until the last piece is
/// out, so a stream counts as being answered until its end.
pub(crate) fn paced_body<K>(pieces: Vec<(Duration, Bytes)>, keep: K) -> Body
where
    K: Send + 'static,
{
    let start = tokio::time::Instant::now();
    let stream = futures::stream::unfold(
        (pieces.into_iter(), keep),
        move |(mut pieces, keep)| async move {
            let (offset, bytes) = pieces.next()?;
            if !offset.is_zero()
                && let Some(at) = start.checked_add(offset)
            {
                tokio::time::sleep_until(at).await;
            }
            Some((Ok::<_, Infallible>(bytes), (pieces, keep)))
        },
    );
    Body::from_stream(stream)
}

/// [`paced_body`], after which the body never ends (a stalled answer):
/// the client sees nothing more until it gives up.
pub(crate) fn paced_then_silent_body<K>(pieces: Vec<(Duration, Bytes)>, keep: K) -> Body
where
    K: Send + 'static,
{
    let start = tokio::time::Instant::now();
    let stream = futures::stream::unfold(
        (pieces.into_iter(), keep),
        move |(mut pieces, keep)| async move {
            let Some((offset, bytes)) = pieces.next() else {
                return std::future::pending().await;
            };
            if !offset.is_zero()
                && let Some(at) = start.checked_add(offset)
            {
                tokio::time::sleep_until(at).await;
            }
            Some((Ok::<_, Infallible>(bytes), (pieces, keep)))
        },
    );
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn defaults_are_instant_and_follow_the_latency() {
        let latency = Latency {
            stt: MS(10),
            llm: MS(20),
            tts: MS(30),
        };
        let timing = Timing::resolve(latency, Pacing::default(), None);
        assert_eq!(timing.first(Endpoint::Transcriptions), MS(10));
        assert_eq!(timing.first(Endpoint::ChatCompletions), MS(20));
        assert_eq!(timing.first(Endpoint::Speech), MS(30));
        assert_eq!(timing.generating(1_000), Duration::ZERO);
        assert_eq!(timing.speaking(Duration::from_secs(9)), Duration::ZERO);
        assert_eq!(timing.transcribing(60.0), Duration::ZERO);
    }

    #[test]
    fn realistic_fills_what_is_unset() {
        let realistic = Some(Profile::Realistic);
        let timing = Timing::resolve(Latency::default(), Pacing::default(), realistic);
        assert_eq!(
            timing.first(Endpoint::Transcriptions),
            REALISTIC_STT_OVERHEAD
        );
        assert_eq!(timing.first(Endpoint::ChatCompletions), REALISTIC_TTFT);
        assert_eq!(timing.first(Endpoint::TextToSpeech), REALISTIC_TTS_TTFB);
        assert_eq!(timing.generating(250), Duration::from_secs(1));
        assert_eq!(
            timing.speaking(Duration::from_secs(4)),
            Duration::from_secs(1)
        );
        assert_eq!(timing.transcribing(216.0), Duration::from_secs(1));
        // Knobs win over the profile; a larger latency raises its floor.
        let pacing = Pacing {
            ttft: Some(MS(5)),
            tokens_per_s: Some(1_000.0),
            ..Pacing::default()
        };
        let latency = Latency {
            tts: MS(900),
            ..Latency::default()
        };
        let timing = Timing::resolve(latency, pacing, realistic);
        assert_eq!(timing.ttft, MS(5));
        assert_eq!(timing.generating(1_000), Duration::from_secs(1));
        assert_eq!(timing.tts_ttfb, MS(900));
    }

    #[test]
    fn unusable_rates_are_unset() {
        for rate in [0.0, -3.0, f64::NAN, f64::INFINITY] {
            let pacing = Pacing {
                tokens_per_s: Some(rate),
                ..Pacing::default()
            };
            let timing = Timing::resolve(Latency::default(), pacing, None);
            assert_eq!(timing.generating(10), Duration::ZERO, "{rate}");
        }
        assert_eq!(
            Pacing {
                tts_speed: Some(f64::NAN),
                ..Pacing::default()
            },
            Pacing {
                tts_speed: Some(f64::NAN),
                ..Pacing::default()
            }
        );
    }
}
