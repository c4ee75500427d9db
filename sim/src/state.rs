//! The simulator's shared state and the *gate* every provider answer passes.
//!
//! Counters are atomics ([`crate::stats`]); everything else sits behind short
//! `std` mutexes that are never held across an `.await`. After a request is
//! authenticated and valid, [`Inner::gate`] decides, in this order, whether it
//! is refused: an injected fault for its endpoint (consumed one per request),
//! a run-time outage (`POST /__sim/outage`), the `outage` profile (for good
//! or for its configured span), the `flaky` profile's dice (its configured
//! rate; then a 500, a 503 or a dropped connection, one in three each), the
//! fixed 60-second request window (`rate-limited`: [`crate::SimLimits`]
//! requests per minute on transcriptions and chat), and the ElevenLabs
//! concurrency slots (`rate-limited`: `tts_concurrency`). Refusals are counted
//! as `refused` (window, slots) or `failed` (everything else). A granted
//! request carries the window's numbers for Groq's `x-ratelimit-*` headers
//! and, for ElevenLabs, a slot held until the answer's last byte.
//!
//! The latency and pacing can change at run time (`PUT /__sim/latency`); a
//! request takes one [`Timing`] snapshot and keeps it to its end.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use rand::Rng as _;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::outage::{Outages, ProfileOutage};
use crate::pacing::Timing;
use crate::record::RequestLog;
use crate::stats::{Counters, InFlight};
use crate::window::{RateInfo, Windows};
use crate::{Latency, Pacing, Profile, SimConfig, SimLimits, Stats, latency};

/// A provider endpoint the simulator counts and can fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Transcriptions,
    ChatCompletions,
    TextToSpeech,
    Speech,
}

impl Endpoint {
    pub(crate) const ALL: [Self; 4] = [
        Self::Transcriptions,
        Self::ChatCompletions,
        Self::TextToSpeech,
        Self::Speech,
    ];

    /// The name used in stats, fault and outage requests.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Transcriptions => "transcriptions",
            Self::ChatCompletions => "chat_completions",
            Self::TextToSpeech => "text_to_speech",
            Self::Speech => "speech",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// How a streamed chat answer breaks (`POST /__sim/faults` with `stream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum StreamBreak {
    /// The body ends without the finish chunk and `[DONE]`.
    Cut,
    /// A chunk that is not JSON, then the end.
    Malformed,
    /// Nothing more is sent, and the answer never ends.
    Stall,
}

impl StreamBreak {
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "cut" => Some(Self::Cut),
            "malformed" => Some(Self::Malformed),
            "stall" => Some(Self::Stall),
            _ => None,
        }
    }
}

/// A streamed chat answer that breaks after `after_words` words, for the
/// next `count` streamed chat requests.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StreamFault {
    pub stream: StreamBreak,
    pub after_words: usize,
    pub count: u32,
}

/// Hostile answers queued by `POST /__sim/faults` with `answer`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HostileFault {
    pub endpoint: &'static str,
    pub answer: crate::hostile::Hostile,
    pub count: u32,
}

/// A one-shot failure queued by `POST /__sim/faults`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Fault {
    pub endpoint: &'static str,
    pub status: u16,
    /// Requests still to fail.
    pub count: u32,
    pub retry_after: Option<f64>,
    pub body: Option<Value>,
}

/// Why the gate refused a request; each provider module renders its own shape.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// An injected fault.
    Fault {
        status: StatusCode,
        retry_after: Option<f64>,
        body: Option<Value>,
    },
    /// The `outage` profile or a run-time outage: a 503.
    Outage,
    /// The `flaky` profile's dice: an error status.
    Flaky(StatusCode),
    /// The `flaky` profile's dice: close the connection without an answer.
    Dropped,
    /// The request window is used up.
    RateLimited { limit: u64, reset: Duration },
    /// No ElevenLabs concurrency slot is free; `limit` slots exist.
    Busy { limit: u32 },
}

impl Refusal {
    /// Whether this is a rate-limit refusal (counted as `refused`) rather
    /// than an injected failure (counted as `failed`).
    fn is_rate_limit(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Busy { .. })
    }
}

/// Permission to answer successfully.
#[derive(Debug)]
pub(crate) struct Grant {
    pub rate: RateInfo,
    /// Held until the answer's last byte; frees an ElevenLabs slot on drop.
    _slot: Option<OwnedSemaphorePermit>,
}

/// Everything a [`crate::Sim`] handle shares.
pub(crate) struct Inner {
    profile: Option<Profile>,
    limits: SimLimits,
    /// The `flaky` profile's failure share, within `[0, 1]`.
    flaky_rate: f64,
    profile_outage: ProfileOutage,
    latency: Mutex<Latency>,
    pacing: Mutex<Pacing>,
    counters: Arc<Counters>,
    faults: Mutex<VecDeque<Fault>>,
    stream_faults: Mutex<VecDeque<StreamFault>>,
    hostile: Mutex<VecDeque<HostileFault>>,
    outages: Outages,
    windows: Mutex<Windows>,
    tts_slots: Arc<Semaphore>,
    pub(crate) log: Mutex<RequestLog>,
}

/// Locks a mutex, ignoring poisoning: every critical section leaves the data consistent.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A probability from a configured rate: clamped to `[0, 1]`, NaN as 0.
fn probability(rate: f64) -> f64 {
    if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    }
}

impl Inner {
    pub(crate) fn new(config: SimConfig) -> Self {
        let now = Instant::now();
        let profile_outage = if config.profile == Some(Profile::Outage) {
            ProfileOutage::starting(now, config.outage)
        } else {
            ProfileOutage::None
        };
        let slots = usize::try_from(config.limits.tts_concurrency)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        Self {
            profile: config.profile,
            limits: config.limits,
            flaky_rate: probability(config.flaky_rate),
            profile_outage,
            latency: Mutex::new(config.latency),
            pacing: Mutex::new(config.pacing),
            counters: Arc::new(Counters::new(config.limits.window)),
            faults: Mutex::new(VecDeque::new()),
            stream_faults: Mutex::new(VecDeque::new()),
            hostile: Mutex::new(VecDeque::new()),
            outages: Outages::default(),
            windows: Mutex::new(Windows::new(now, config.limits.window)),
            tts_slots: Arc::new(Semaphore::new(slots)),
            log: Mutex::new(RequestLog::new(config.log_capacity)),
        }
    }

    pub(crate) fn profile(&self) -> Option<Profile> {
        self.profile
    }

    /// Counts a request to `endpoint` arriving now; it is in flight (for
    /// `in_flight` and `max_concurrent`) until the guard is dropped.
    pub(crate) fn arrive(&self, endpoint: Endpoint) -> InFlight {
        self.counters.arrive(endpoint)
    }

    pub(crate) fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Zeroes the counters, the request log and the rate-limit windows.
    pub(crate) fn reset(&self) {
        self.counters.reset();
        lock(&self.log).clear();
        *lock(&self.windows) = Windows::new(Instant::now(), self.limits.window);
    }

    /// The configured latencies (before the `slow` profile's floors).
    pub(crate) fn latency(&self) -> Latency {
        *lock(&self.latency)
    }

    pub(crate) fn set_latency(&self, latency: Latency) {
        *lock(&self.latency) = latency;
    }

    /// The configured pacing (unset knobs as `None`).
    pub(crate) fn pacing(&self) -> Pacing {
        *lock(&self.pacing)
    }

    pub(crate) fn set_pacing(&self, pacing: Pacing) {
        *lock(&self.pacing) = pacing;
    }

    /// The timing a request starting now keeps: the latency and pacing
    /// resolved under the profile.
    pub(crate) fn timing(&self) -> Timing {
        Timing::resolve(self.latency(), self.pacing(), self.profile)
    }

    /// The wait before `endpoint` starts answering under `timing`; under
    /// `slow`, sometimes four times as long.
    pub(crate) fn first_wait(&self, timing: &Timing, endpoint: Endpoint) -> Duration {
        let delay = timing.first(endpoint);
        if self.profile == Some(Profile::Slow) {
            latency::with_tail(delay, rand::rng().random::<f64>())
        } else {
            delay
        }
    }

    pub(crate) fn add_fault(&self, fault: Fault) {
        lock(&self.faults).push_back(fault);
    }

    pub(crate) fn faults(&self) -> Vec<Fault> {
        lock(&self.faults).iter().cloned().collect()
    }

    pub(crate) fn clear_faults(&self) {
        lock(&self.faults).clear();
        lock(&self.stream_faults).clear();
        lock(&self.hostile).clear();
    }

    /// The run-time outages (`/__sim/outage`).
    pub(crate) fn outages(&self) -> &Outages {
        &self.outages
    }

    /// Consumes one injected failure for `endpoint`, oldest first.
    pub(crate) fn add_hostile(&self, fault: HostileFault) {
        lock(&self.hostile).push_back(fault);
    }

    pub(crate) fn hostile_faults(&self) -> Vec<HostileFault> {
        lock(&self.hostile).iter().cloned().collect()
    }

    /// Consumes one use of the oldest hostile answer queued for `endpoint`.
    pub(crate) fn take_hostile(&self, endpoint: Endpoint) -> Option<crate::hostile::Hostile> {
        let mut faults = lock(&self.hostile);
        let index = faults.iter().position(|f| f.endpoint == endpoint.name())?;
        let fault = faults.get_mut(index)?;
        fault.count = fault.count.saturating_sub(1);
        let answer = fault.answer;
        if fault.count == 0 {
            faults.remove(index);
        }
        Some(answer)
    }

    pub(crate) fn add_stream_fault(&self, fault: StreamFault) {
        lock(&self.stream_faults).push_back(fault);
    }

    pub(crate) fn stream_faults(&self) -> Vec<StreamFault> {
        lock(&self.stream_faults).iter().cloned().collect()
    }

    /// Consumes one use of the oldest stream fault: how the next streamed
    /// chat answer breaks, and after how many words.
    pub(crate) fn take_stream_fault(&self) -> Option<(StreamBreak, usize)> {
        let mut faults = lock(&self.stream_faults);
        let fault = faults.front_mut()?;
        fault.count = fault.count.saturating_sub(1);
        let taken = (fault.stream, fault.after_words);
        if fault.count == 0 {
            faults.pop_front();
        }
        Some(taken)
    }

    fn take_fault(&self, endpoint: Endpoint) -> Option<Refusal> {
        let mut faults = lock(&self.faults);
        let index = faults.iter().position(|f| f.endpoint == endpoint.name())?;
        let fault = faults.get_mut(index)?;
        fault.count = fault.count.saturating_sub(1);
        let refusal = Refusal::Fault {
            status: StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            retry_after: fault.retry_after,
            body: fault.body.clone(),
        };
        if fault.count == 0 {
            faults.remove(index);
        }
        Some(refusal)
    }

    /// Decides whether a valid request to `endpoint` (costing `tokens`) is
    /// answered, and counts a refusal as `refused` or `failed`.
    pub(crate) fn gate(&self, endpoint: Endpoint, tokens: u64) -> Result<Grant, Refusal> {
        let decision = self.decide(endpoint, tokens);
        if let Err(refusal) = &decision {
            if refusal.is_rate_limit() {
                self.counters.refused(endpoint);
            } else {
                self.counters.failed(endpoint);
            }
        }
        decision
    }

    fn decide(&self, endpoint: Endpoint, tokens: u64) -> Result<Grant, Refusal> {
        if let Some(refusal) = self.take_fault(endpoint) {
            return Err(refusal);
        }
        let now = Instant::now();
        if self.outages.active(endpoint, now) || self.profile_outage.active(now) {
            return Err(Refusal::Outage);
        }
        if self.profile == Some(Profile::Flaky) {
            let mut rng = rand::rng();
            if rng.random_bool(self.flaky_rate) {
                return Err(match rng.random_range(0..3) {
                    0 => Refusal::Flaky(StatusCode::INTERNAL_SERVER_ERROR),
                    1 => Refusal::Flaky(StatusCode::SERVICE_UNAVAILABLE),
                    _ => Refusal::Dropped,
                });
            }
        }
        let rate_limited = self.profile == Some(Profile::RateLimited);
        let limits = rate_limited.then_some(&self.limits);
        let rate = lock(&self.windows).take(endpoint, tokens, limits, now)?;
        let slot = if endpoint == Endpoint::TextToSpeech && rate_limited {
            Some(
                Arc::clone(&self.tts_slots)
                    .try_acquire_owned()
                    .map_err(|_| Refusal::Busy {
                        limit: self.limits.tts_concurrency,
                    })?,
            )
        } else {
            None
        };
        Ok(Grant { rate, _slot: slot })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::WINDOW;

    fn inner(profile: Option<Profile>) -> Inner {
        Inner::new(SimConfig {
            profile,
            ..SimConfig::default()
        })
    }

    #[test]
    fn slow_profile_raises_latency_floors() {
        let slow = inner(Some(Profile::Slow));
        assert_eq!(
            slow.timing().first(Endpoint::ChatCompletions),
            Duration::from_millis(3_000)
        );
        slow.set_latency(Latency {
            stt: Duration::from_secs(5),
            ..Latency::default()
        });
        assert_eq!(
            slow.timing().first(Endpoint::Transcriptions),
            Duration::from_secs(5)
        );
        assert_eq!(inner(None).timing().first(Endpoint::Speech), Duration::ZERO);
    }

    #[test]
    fn pacing_changes_at_run_time() {
        let sim = inner(None);
        assert_eq!(sim.timing().generating(100), Duration::ZERO);
        sim.set_pacing(Pacing {
            tokens_per_s: Some(100.0),
            ttft: Some(Duration::from_millis(40)),
            ..Pacing::default()
        });
        let timing = sim.timing();
        assert_eq!(timing.generating(100), Duration::from_secs(1));
        assert_eq!(
            sim.first_wait(&timing, Endpoint::ChatCompletions),
            Duration::from_millis(40)
        );
    }

    #[test]
    fn faults_are_consumed_in_order() {
        let sim = inner(None);
        sim.add_fault(Fault {
            endpoint: "speech",
            status: 503,
            count: 2,
            retry_after: Some(1.0),
            body: None,
        });
        assert!(sim.gate(Endpoint::ChatCompletions, 1).is_ok());
        assert!(matches!(
            sim.gate(Endpoint::Speech, 0),
            Err(Refusal::Fault { .. })
        ));
        assert_eq!(sim.faults()[0].count, 1);
        assert!(matches!(
            sim.gate(Endpoint::Speech, 0),
            Err(Refusal::Fault { .. })
        ));
        assert!(sim.faults().is_empty());
        assert!(sim.gate(Endpoint::Speech, 0).is_ok());
        assert_eq!(sim.stats().failed.speech, 2);
        assert_eq!(sim.stats().refused.speech, 0);
    }

    #[test]
    fn rate_window_limits_chat_at_thirty() {
        let sim = inner(Some(Profile::RateLimited));
        for i in 0..30 {
            let grant = sim
                .gate(Endpoint::ChatCompletions, 10)
                .expect("within the limit");
            assert_eq!(grant.rate.remaining_requests, 29 - i);
        }
        match sim.gate(Endpoint::ChatCompletions, 10) {
            Err(Refusal::RateLimited { limit, reset }) => {
                assert_eq!(limit, 30);
                assert!(reset <= WINDOW && reset > Duration::from_secs(50));
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        assert_eq!(sim.stats().refused.chat_completions, 1);
        assert_eq!(sim.stats().failed.chat_completions, 0);
        // Other endpoints have their own windows.
        assert!(sim.gate(Endpoint::Transcriptions, 0).is_ok());
    }

    #[test]
    fn concurrency_cap_follows_the_limits() {
        let sim = Inner::new(SimConfig {
            profile: Some(Profile::RateLimited),
            limits: SimLimits {
                tts_concurrency: 1,
                ..SimLimits::default()
            },
            ..SimConfig::default()
        });
        let held = sim.gate(Endpoint::TextToSpeech, 0).expect("a slot");
        assert!(matches!(
            sim.gate(Endpoint::TextToSpeech, 0),
            Err(Refusal::Busy { limit: 1 })
        ));
        drop(held);
        assert!(sim.gate(Endpoint::TextToSpeech, 0).is_ok());
        assert_eq!(sim.stats().refused.text_to_speech, 1);
    }

    #[test]
    fn outage_refuses_everything() {
        let sim = inner(Some(Profile::Outage));
        for e in Endpoint::ALL {
            assert!(matches!(sim.gate(e, 0), Err(Refusal::Outage)));
        }
        assert_eq!(sim.stats().failed.speech, 1);
    }

    #[test]
    fn flaky_rates_at_the_extremes() {
        let always = Inner::new(SimConfig {
            profile: Some(Profile::Flaky),
            flaky_rate: 1.0,
            ..SimConfig::default()
        });
        let (mut s500, mut s503, mut dropped) = (0, 0, 0);
        for _ in 0..300 {
            match always.gate(Endpoint::ChatCompletions, 1) {
                Err(Refusal::Flaky(StatusCode::INTERNAL_SERVER_ERROR)) => s500 += 1,
                Err(Refusal::Flaky(StatusCode::SERVICE_UNAVAILABLE)) => s503 += 1,
                Err(Refusal::Dropped) => dropped += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        // About a hundred each; the standard deviation is about 8.
        for n in [s500, s503, dropped] {
            assert!((60..=140).contains(&n), "{s500}/{s503}/{dropped}");
        }
        assert_eq!(always.stats().failed.chat_completions, 300);
        for rate in [0.0, -1.0, f64::NAN] {
            let never = Inner::new(SimConfig {
                profile: Some(Profile::Flaky),
                flaky_rate: rate,
                ..SimConfig::default()
            });
            for _ in 0..200 {
                assert!(never.gate(Endpoint::Speech, 0).is_ok(), "rate {rate}");
            }
        }
        // Above one is clamped to one.
        let clamped = Inner::new(SimConfig {
            profile: Some(Profile::Flaky),
            flaky_rate: 7.0,
            ..SimConfig::default()
        });
        assert!(clamped.gate(Endpoint::Speech, 0).is_err());
    }

    #[test]
    fn run_time_outage_applies_under_any_profile() {
        let sim = inner(Some(Profile::RateLimited));
        let until = Instant::now() + Duration::from_secs(30);
        sim.outages().start(Some(Endpoint::Speech), until);
        assert!(matches!(
            sim.gate(Endpoint::Speech, 0),
            Err(Refusal::Outage)
        ));
        assert!(sim.gate(Endpoint::ChatCompletions, 0).is_ok());
        sim.outages().end();
        assert!(sim.gate(Endpoint::Speech, 0).is_ok());
    }
}
