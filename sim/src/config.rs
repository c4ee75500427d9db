//! What a simulator is told at start: [`SimConfig`] with its latencies, its
//! pacing ([`Pacing`]), a profile and the profiles' knobs ([`SimLimits`],
//! the flaky rate, the outage length), and the command-line parsers for
//! [`Latency`] and [`Profile`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::Pacing;

/// How the simulator behaves: its latencies and pacing, an optional profile
/// and the profiles' settings.
///
/// `SimConfig::default()` is a well-behaved provider with no latency that
/// answers everything at once; the profile settings default to the figures
/// the profiles have always used. Equality compares `flaky_rate` (and the
/// pacing's rates) bit for bit, so it is an equivalence.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Time each successful provider answer waits before it starts.
    pub latency: Latency,
    /// Time to first token or byte and generation speeds; unset knobs are
    /// instant (or the `realistic` profile's figures).
    pub pacing: Pacing,
    /// A profile, or `None` for a well-behaved, instant provider.
    pub profile: Option<Profile>,
    /// The limits [`Profile::RateLimited`] enforces.
    pub limits: SimLimits,
    /// The share of valid provider requests [`Profile::Flaky`] fails, from 0
    /// to 1 (values outside are clamped; NaN counts as 0). Default 0.2.
    pub flaky_rate: f64,
    /// How long [`Profile::Outage`] lasts after the simulator is created;
    /// `None` (the default) keeps the outage for good. Ignored under other
    /// profiles.
    pub outage: Option<Duration>,
    /// How many requests `GET /__sim/requests` keeps, oldest dropped first
    /// (default [`DEFAULT_LOG_CAPACITY`]; a test that accounts for every
    /// request of a long run raises it).
    pub log_capacity: usize,
}

/// Requests the log keeps unless told otherwise.
pub const DEFAULT_LOG_CAPACITY: usize = 200;

/// The flaky profile's default failure share: one request in five.
pub const DEFAULT_FLAKY_RATE: f64 = 0.2;

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            latency: Latency::default(),
            pacing: Pacing::default(),
            profile: None,
            limits: SimLimits::default(),
            flaky_rate: DEFAULT_FLAKY_RATE,
            outage: None,
            log_capacity: DEFAULT_LOG_CAPACITY,
        }
    }
}

impl PartialEq for SimConfig {
    fn eq(&self, other: &Self) -> bool {
        self.latency == other.latency
            && self.pacing == other.pacing
            && self.profile == other.profile
            && self.limits == other.limits
            && self.flaky_rate.to_bits() == other.flaky_rate.to_bits()
            && self.outage == other.outage
            && self.log_capacity == other.log_capacity
    }
}

impl Eq for SimConfig {}

/// The limits of [`Profile::RateLimited`]: Groq's free tier and ElevenLabs'
/// concurrency by default. Requests are counted in fixed windows of
/// `window` (a minute, like Groq's; tests shorten it). A zero refuses every
/// request of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SimLimits {
    /// Transcriptions allowed per window (default 20).
    pub stt_rpm: u32,
    /// Chat completions allowed per window (default 30).
    pub llm_rpm: u32,
    /// ElevenLabs text-to-speech requests answered at the same time (default 2).
    pub tts_concurrency: u32,
    /// The rate-limit window, also the span of `max_in_window` (default 60 s).
    pub window: Duration,
}

impl Default for SimLimits {
    fn default() -> Self {
        Self {
            stt_rpm: 20,
            llm_rpm: 30,
            tts_concurrency: 2,
            window: Duration::from_secs(60),
        }
    }
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

/// A profile (`--profile`): four failure modes, or realistic timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Request limits per fixed 60-second window on transcriptions and chat,
    /// and a cap on concurrent ElevenLabs requests ([`SimLimits`]; by default
    /// Groq's free tier, 20/min and 30/min, and ElevenLabs' 2), answered with
    /// the providers' 429 shapes.
    RateLimited,
    /// A share of provider requests ([`SimConfig::flaky_rate`], one in five by
    /// default) fails: a 500, a 503 or a dropped connection, one in three each.
    Flaky,
    /// Every provider request answers 503, for good or for
    /// [`SimConfig::outage`] after the simulator starts.
    Outage,
    /// Latencies of at least 1500 ms (STT), 3000 ms (LLM) and 2000 ms (TTS),
    /// with a long tail: about one successful answer in twenty waits four
    /// times as long.
    Slow,
    /// Published provider timings: Groq's Whisper overhead and speed factor,
    /// Llama 70B's time to first token and tokens a second, ElevenLabs' time
    /// to first byte and a speech stream faster than playback (see
    /// [`Pacing`] and the `REALISTIC_*` constants). Unset pacing knobs take
    /// these figures; latencies are raised to them.
    Realistic,
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
            Self::Realistic => "realistic",
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
#[error("unknown profile {0:?}: expected rate-limited, flaky, outage, slow or realistic")]
pub struct ProfileParseError(String);

impl FromStr for Profile {
    type Err = ProfileParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "rate-limited" => Ok(Self::RateLimited),
            "flaky" => Ok(Self::Flaky),
            "outage" => Ok(Self::Outage),
            "slow" => Ok(Self::Slow),
            "realistic" => Ok(Self::Realistic),
            other => Err(ProfileParseError(other.to_owned())),
        }
    }
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
            Profile::Realistic,
        ] {
            assert_eq!(p.as_str().parse::<Profile>().expect("round trip"), p);
        }
        let err = "fast".parse::<Profile>().expect_err("unknown");
        assert!(err.to_string().contains("rate-limited"));
    }

    #[test]
    fn defaults_are_the_historic_figures() {
        let config = SimConfig::default();
        assert_eq!(config.latency, Latency::default());
        assert_eq!(config.pacing, Pacing::default());
        assert_eq!(config.profile, None);
        assert_eq!(
            config.limits,
            SimLimits {
                stt_rpm: 20,
                llm_rpm: 30,
                tts_concurrency: 2,
                window: std::time::Duration::from_secs(60),
            }
        );
        assert!((config.flaky_rate - 0.2).abs() < f64::EPSILON);
        assert_eq!(config.outage, None);
        assert_eq!(config, SimConfig::default());
        let other = SimConfig {
            flaky_rate: 0.3,
            ..SimConfig::default()
        };
        assert_ne!(config, other);
    }
}
