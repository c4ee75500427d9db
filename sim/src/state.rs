//! The simulator's shared state and the *gate* every provider answer passes.
//!
//! Counters are atomics; everything else sits behind short `std` mutexes that
//! are never held across an `.await`. After a request is authenticated and
//! valid, [`Inner::gate`] decides, in this order, whether it is refused:
//! an injected fault for its endpoint (consumed one per request), the
//! `outage` profile, the `flaky` profile's one-in-five dice, the fixed
//! 60-second request window (`rate-limited`: 20/min transcriptions, 30/min
//! chat), and the ElevenLabs concurrency slots (`rate-limited`: 2). A granted
//! request carries the window's numbers for Groq's `x-ratelimit-*` headers
//! and, for ElevenLabs, a slot held until the answer is built.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use rand::Rng as _;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::record::RequestLog;
use crate::{Latency, Profile, RequestCounts, SimConfig, Stats};

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

    /// The name used in stats and fault requests.
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

    fn index(self) -> usize {
        self as usize
    }

    /// Requests per fixed window: Groq's free tier under `rate-limited`,
    /// otherwise a generous figure only shown in headers.
    fn request_limit(self, rate_limited: bool) -> u64 {
        match (self, rate_limited) {
            (Self::Transcriptions, true) => 20,
            (Self::ChatCompletions, true) => 30,
            _ => 14_400,
        }
    }

    fn token_limit(self, rate_limited: bool) -> u64 {
        if rate_limited { 6_000 } else { 300_000 }
    }
}

/// The length of a rate-limit window.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// ElevenLabs' free-tier concurrency under `rate-limited`.
const TTS_CONCURRENCY: usize = 2;

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
    /// The `outage` profile.
    Outage,
    /// The `flaky` profile's dice.
    Flaky(StatusCode),
    /// The request window is used up.
    RateLimited { limit: u64, reset: Duration },
    /// No ElevenLabs concurrency slot is free.
    Busy,
}

/// The numbers behind Groq's `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateInfo {
    pub limit_requests: u64,
    pub remaining_requests: u64,
    pub reset_requests: Duration,
    pub limit_tokens: u64,
    pub remaining_tokens: u64,
    pub reset_tokens: Duration,
}

/// Permission to answer successfully.
#[derive(Debug)]
pub(crate) struct Grant {
    pub rate: RateInfo,
    /// Held until the answer is built; frees an ElevenLabs slot on drop.
    _slot: Option<OwnedSemaphorePermit>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    requests: u64,
    tokens: u64,
}

impl Window {
    fn fresh(now: Instant) -> Self {
        Self {
            start: now,
            requests: 0,
            tokens: 0,
        }
    }

    fn roll(&mut self, now: Instant) {
        if now.duration_since(self.start) >= WINDOW {
            *self = Self::fresh(now);
        }
    }

    fn reset_in(&self, now: Instant) -> Duration {
        WINDOW.saturating_sub(now.duration_since(self.start))
    }
}

/// Everything a [`crate::Sim`] handle shares.
pub(crate) struct Inner {
    profile: Option<Profile>,
    latency: Mutex<Latency>,
    counts: [AtomicU64; 4],
    faults: Mutex<VecDeque<Fault>>,
    windows: Mutex<[Window; 4]>,
    tts_slots: Arc<Semaphore>,
    pub(crate) log: Mutex<RequestLog>,
}

/// Locks a mutex, ignoring poisoning: every critical section leaves the data consistent.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    pub(crate) fn new(config: SimConfig) -> Self {
        let now = Instant::now();
        Self {
            profile: config.profile,
            latency: Mutex::new(config.latency),
            counts: Default::default(),
            faults: Mutex::new(VecDeque::new()),
            windows: Mutex::new([Window::fresh(now); 4]),
            tts_slots: Arc::new(Semaphore::new(TTS_CONCURRENCY)),
            log: Mutex::new(RequestLog::default()),
        }
    }

    pub(crate) fn profile(&self) -> Option<Profile> {
        self.profile
    }

    /// Counts one request to `endpoint`.
    pub(crate) fn count(&self, endpoint: Endpoint) {
        self.counts[endpoint.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> Stats {
        let get = |e: Endpoint| self.counts[e.index()].load(Ordering::Relaxed);
        let requests = RequestCounts {
            transcriptions: get(Endpoint::Transcriptions),
            chat_completions: get(Endpoint::ChatCompletions),
            text_to_speech: get(Endpoint::TextToSpeech),
            speech: get(Endpoint::Speech),
        };
        let total = Endpoint::ALL.into_iter().map(get).sum();
        Stats { requests, total }
    }

    /// Zeroes the counters, the request log and the rate-limit windows.
    pub(crate) fn reset(&self) {
        for c in &self.counts {
            c.store(0, Ordering::Relaxed);
        }
        lock(&self.log).clear();
        *lock(&self.windows) = [Window::fresh(Instant::now()); 4];
    }

    /// The configured latencies (before the `slow` profile's floors).
    pub(crate) fn latency(&self) -> Latency {
        *lock(&self.latency)
    }

    pub(crate) fn set_latency(&self, latency: Latency) {
        *lock(&self.latency) = latency;
    }

    /// How long a successful answer from `endpoint` waits.
    pub(crate) fn latency_for(&self, endpoint: Endpoint) -> Duration {
        let latency = self.latency();
        let (configured, slow_floor) = match endpoint {
            Endpoint::Transcriptions => (latency.stt, 1_500),
            Endpoint::ChatCompletions => (latency.llm, 3_000),
            Endpoint::TextToSpeech | Endpoint::Speech => (latency.tts, 2_000),
        };
        if self.profile == Some(Profile::Slow) {
            configured.max(Duration::from_millis(slow_floor))
        } else {
            configured
        }
    }

    /// Waits `endpoint`'s latency.
    pub(crate) async fn wait(&self, endpoint: Endpoint) {
        let delay = self.latency_for(endpoint);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
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
    }

    /// Consumes one injected failure for `endpoint`, oldest first.
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

    /// Decides whether a valid request to `endpoint` (costing `tokens`) is answered.
    pub(crate) fn gate(&self, endpoint: Endpoint, tokens: u64) -> Result<Grant, Refusal> {
        if let Some(refusal) = self.take_fault(endpoint) {
            return Err(refusal);
        }
        match self.profile {
            Some(Profile::Outage) => return Err(Refusal::Outage),
            Some(Profile::Flaky) => {
                let mut rng = rand::rng();
                if rng.random_ratio(1, 5) {
                    let statuses = [
                        StatusCode::INTERNAL_SERVER_ERROR,
                        StatusCode::BAD_GATEWAY,
                        StatusCode::SERVICE_UNAVAILABLE,
                    ];
                    return Err(Refusal::Flaky(
                        statuses[rng.random_range(0..statuses.len())],
                    ));
                }
            }
            _ => {}
        }
        let rate_limited = self.profile == Some(Profile::RateLimited);
        let rate = self.take_window(endpoint, tokens, rate_limited)?;
        let slot = if endpoint == Endpoint::TextToSpeech && rate_limited {
            Some(
                Arc::clone(&self.tts_slots)
                    .try_acquire_owned()
                    .map_err(|_| Refusal::Busy)?,
            )
        } else {
            None
        };
        Ok(Grant { rate, _slot: slot })
    }

    /// Takes one request from `endpoint`'s window, or refuses when it is used up.
    fn take_window(
        &self,
        endpoint: Endpoint,
        tokens: u64,
        rate_limited: bool,
    ) -> Result<RateInfo, Refusal> {
        let now = Instant::now();
        let mut windows = lock(&self.windows);
        let window = &mut windows[endpoint.index()];
        window.roll(now);
        let limit = endpoint.request_limit(rate_limited);
        let enforced = rate_limited
            && matches!(
                endpoint,
                Endpoint::Transcriptions | Endpoint::ChatCompletions
            );
        if enforced && window.requests >= limit {
            return Err(Refusal::RateLimited {
                limit,
                reset: window.reset_in(now),
            });
        }
        window.requests += 1;
        window.tokens = window.tokens.saturating_add(tokens);
        let limit_tokens = endpoint.token_limit(rate_limited);
        let used_tokens = window.tokens.min(limit_tokens);
        Ok(RateInfo {
            limit_requests: limit,
            remaining_requests: limit.saturating_sub(window.requests),
            reset_requests: window.reset_in(now),
            limit_tokens,
            remaining_tokens: limit_tokens - used_tokens,
            // Tokens replenish continuously over the window.
            reset_tokens: WINDOW.mul_f64(used_tokens as f64 / limit_tokens as f64),
        })
    }
}

/// Formats a duration the way Groq's headers do (Go's `time.Duration`):
/// `7.66s`, `2m59.56s`, `1h0m5s`, `120ms`, `0s`.
pub(crate) fn go_duration(d: Duration) -> String {
    let centis = d.as_millis().div_ceil(10);
    if centis == 0 {
        return "0s".to_owned();
    }
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis().max(1));
    }
    let hours = centis / 360_000;
    let minutes = (centis / 6_000) % 60;
    let seconds = (centis % 6_000) as f64 / 100.0;
    let secs = format!("{seconds}s");
    match (hours, minutes) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner(profile: Option<Profile>) -> Inner {
        Inner::new(SimConfig {
            latency: Latency::default(),
            profile,
        })
    }

    #[test]
    fn formats_go_durations() {
        assert_eq!(go_duration(Duration::from_millis(7_660)), "7.66s");
        assert_eq!(go_duration(Duration::from_millis(179_560)), "2m59.56s");
        assert_eq!(go_duration(Duration::from_millis(120)), "120ms");
        assert_eq!(go_duration(Duration::from_secs(3_605)), "1h0m5s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_secs(60)), "1m0s");
    }

    #[test]
    fn slow_profile_raises_latency_floors() {
        let slow = inner(Some(Profile::Slow));
        assert_eq!(
            slow.latency_for(Endpoint::Transcriptions),
            Duration::from_millis(1_500)
        );
        assert_eq!(
            slow.latency_for(Endpoint::ChatCompletions),
            Duration::from_millis(3_000)
        );
        assert_eq!(
            slow.latency_for(Endpoint::TextToSpeech),
            Duration::from_millis(2_000)
        );
        slow.set_latency(Latency {
            stt: Duration::from_secs(5),
            ..Latency::default()
        });
        assert_eq!(
            slow.latency_for(Endpoint::Transcriptions),
            Duration::from_secs(5)
        );
        assert_eq!(inner(None).latency_for(Endpoint::Speech), Duration::ZERO);
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
        // Other endpoints have their own windows.
        assert!(sim.gate(Endpoint::Transcriptions, 0).is_ok());
    }

    #[test]
    fn outage_refuses_everything() {
        let sim = inner(Some(Profile::Outage));
        for e in Endpoint::ALL {
            assert!(matches!(sim.gate(e, 0), Err(Refusal::Outage)));
        }
    }
}
