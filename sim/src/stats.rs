//! Per-endpoint counters behind `GET /__sim/stats`: requests, refusals
//! (rate limits), injected failures, the requests in flight now and the most
//! ever in flight at once, and the most arrivals within any sliding window
//! as long as the rate-limit window (60 s unless configured).
//!
//! A provider handler calls [`Counters::arrive`] first thing; the returned
//! [`InFlight`] guard counts the request, records its arrival time and keeps
//! it "in flight" while it lives. It owns its share of the counters, so a
//! streamed answer carries it in its body and stays in flight until its last
//! byte; other answers drop it once built (or when the handler is
//! cancelled). The gate reports refusals and failures through
//! [`Counters::refused`] and [`Counters::failed`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::state::{Endpoint, lock};

/// A number per provider endpoint.
///
/// In [`Stats::requests`] it counts every request received, whatever the
/// answer; the other [`Stats`] fields reuse the shape for their own figures.
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

impl RequestCounts {
    fn from_fn(mut f: impl FnMut(Endpoint) -> u64) -> Self {
        Self {
            transcriptions: f(Endpoint::Transcriptions),
            chat_completions: f(Endpoint::ChatCompletions),
            text_to_speech: f(Endpoint::TextToSpeech),
            speech: f(Endpoint::Speech),
        }
    }
}

/// What `GET /__sim/stats` answers; `POST /__sim/reset` zeroes all of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests received per endpoint, whatever the answer.
    pub requests: RequestCounts,
    /// The sum of the per-endpoint request counts.
    pub total: u64,
    /// Answers that were 429 because of the `rate-limited` profile: a used-up
    /// request window or no free concurrency slot (injected 429 faults count
    /// as `failed`).
    #[serde(default)]
    pub refused: RequestCounts,
    /// Answers that were injected failures: a queued fault, the `flaky`
    /// profile (dropped connections included), or an outage (profile or
    /// `POST /__sim/outage`).
    #[serde(default)]
    pub failed: RequestCounts,
    /// The most requests to each endpoint handled at the same moment, from
    /// arrival to answer (a stream until its last byte), under any profile.
    #[serde(default)]
    pub max_concurrent: RequestCounts,
    /// The requests to each endpoint being handled right now, streams until
    /// their last byte. A reset leaves it alone: those requests are still
    /// running.
    #[serde(default)]
    pub in_flight: RequestCounts,
    /// The most requests to each endpoint that arrived within any 60-second
    /// sliding window, whatever their answer.
    #[serde(default)]
    pub max_in_window: RequestCounts,
}

/// Arrival times within the last window, and the most ever seen in one.
#[derive(Debug, Default)]
struct Arrivals {
    times: VecDeque<Instant>,
    max: u64,
}

impl Arrivals {
    /// Records an arrival at `now`; returns how many arrived in the window
    /// ending at `now` (those less than `window` before it, `now` included).
    fn record(&mut self, now: Instant, window: Duration) -> u64 {
        while let Some(&first) = self.times.front() {
            if now.saturating_duration_since(first) >= window {
                self.times.pop_front();
            } else {
                break;
            }
        }
        self.times.push_back(now);
        let in_window = u64::try_from(self.times.len()).unwrap_or(u64::MAX);
        self.max = self.max.max(in_window);
        in_window
    }
}

/// The counters, all per endpoint.
#[derive(Debug)]
pub(crate) struct Counters {
    /// The span of `max_in_window`.
    window: Duration,
    requests: [AtomicU64; 4],
    refused: [AtomicU64; 4],
    failed: [AtomicU64; 4],
    in_flight: [AtomicU64; 4],
    max_concurrent: [AtomicU64; 4],
    arrivals: Mutex<[Arrivals; 4]>,
}

/// One request being handled; leaves the in-flight count when dropped.
#[derive(Debug)]
#[must_use = "the request counts as in flight only while the guard lives"]
pub(crate) struct InFlight {
    counters: Arc<Counters>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counters.in_flight[self.index].fetch_sub(1, Ordering::AcqRel);
    }
}

impl Counters {
    /// Counters whose `max_in_window` spans `window`.
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            requests: Default::default(),
            refused: Default::default(),
            failed: Default::default(),
            in_flight: Default::default(),
            max_concurrent: Default::default(),
            arrivals: Mutex::default(),
        }
    }

    /// Counts a request to `endpoint` arriving now; it is in flight until the
    /// guard is dropped.
    pub(crate) fn arrive(self: &Arc<Self>, endpoint: Endpoint) -> InFlight {
        let i = endpoint.index();
        self.requests[i].fetch_add(1, Ordering::Relaxed);
        lock(&self.arrivals)[i].record(Instant::now(), self.window);
        let now_in_flight = self.in_flight[i].fetch_add(1, Ordering::AcqRel) + 1;
        self.max_concurrent[i].fetch_max(now_in_flight, Ordering::Relaxed);
        InFlight {
            counters: Arc::clone(self),
            index: i,
        }
    }

    /// Counts a 429 caused by a rate-limit window or the concurrency cap.
    pub(crate) fn refused(&self, endpoint: Endpoint) {
        self.refused[endpoint.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an injected failure (fault, flaky, outage).
    pub(crate) fn failed(&self, endpoint: Endpoint) {
        self.failed[endpoint.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let load = |counters: &[AtomicU64; 4]| {
            RequestCounts::from_fn(|e| counters[e.index()].load(Ordering::Relaxed))
        };
        let requests = load(&self.requests);
        let arrivals = lock(&self.arrivals);
        Stats {
            requests,
            total: Endpoint::ALL
                .into_iter()
                .map(|e| self.requests[e.index()].load(Ordering::Relaxed))
                .sum(),
            refused: load(&self.refused),
            failed: load(&self.failed),
            max_concurrent: load(&self.max_concurrent),
            in_flight: load(&self.in_flight),
            max_in_window: RequestCounts::from_fn(|e| arrivals[e.index()].max),
        }
    }

    /// Zeroes every figure. Requests still in flight stay counted as in
    /// flight, so later maxima remain true.
    pub(crate) fn reset(&self) {
        for counters in [
            &self.requests,
            &self.refused,
            &self.failed,
            &self.max_concurrent,
        ] {
            for c in counters {
                c.store(0, Ordering::Relaxed);
            }
        }
        *lock(&self.arrivals) = Default::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_serialise_in_the_documented_shape() {
        let value = serde_json::to_value(Stats::default()).expect("serialise");
        let zero = serde_json::json!({"transcriptions": 0, "chat_completions": 0, "text_to_speech": 0, "speech": 0});
        assert_eq!(
            value,
            serde_json::json!({
                "requests": zero,
                "total": 0,
                "refused": zero,
                "failed": zero,
                "max_concurrent": zero,
                "in_flight": zero,
                "max_in_window": zero,
            })
        );
        // The older shape still reads, the new figures as zero.
        let old: Stats = serde_json::from_value(serde_json::json!({"requests": zero, "total": 0}))
            .expect("deserialise");
        assert_eq!(old, Stats::default());
    }

    #[test]
    fn sliding_window_keeps_the_largest_count() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let window = Duration::from_secs(60);
        let mut arrivals = Arrivals::default();
        assert_eq!(arrivals.record(at(0), window), 1);
        assert_eq!(arrivals.record(at(10_000), window), 2);
        assert_eq!(arrivals.record(at(59_999), window), 3);
        // The first arrival is exactly a window old: it no longer counts.
        assert_eq!(arrivals.record(at(60_000), window), 3);
        assert_eq!(arrivals.record(at(60_001), window), 4);
        assert_eq!(arrivals.max, 4);
        // Much later, alone in its window; the maximum stays.
        assert_eq!(arrivals.record(at(200_000), window), 1);
        assert_eq!(arrivals.max, 4);
        assert_eq!(arrivals.times.len(), 1);
    }

    #[test]
    fn window_spanning_a_fixed_minute_boundary_is_counted() {
        // Three at the end of one minute and three at the start of the next:
        // a fixed window sees three each, the sliding window six.
        let start = Instant::now();
        let window = Duration::from_secs(60);
        let mut arrivals = Arrivals::default();
        for ms in [58_000, 58_500, 59_000, 61_000, 61_500, 62_000] {
            arrivals.record(start + Duration::from_millis(ms), window);
        }
        assert_eq!(arrivals.max, 6);
    }

    #[test]
    fn in_flight_guards_track_the_maximum() {
        let counters = Arc::new(Counters::new(Duration::from_secs(60)));
        let a = counters.arrive(Endpoint::Speech);
        let b = counters.arrive(Endpoint::Speech);
        drop(a);
        let c = counters.arrive(Endpoint::Speech);
        let stats = counters.snapshot();
        assert_eq!(stats.in_flight.speech, 2);
        assert_eq!(stats.max_concurrent.speech, 2);
        assert_eq!(stats.requests.speech, 3);
        assert_eq!(stats.max_in_window.speech, 3);
        assert_eq!(stats.total, 3);
        drop((b, c));
        assert_eq!(counters.snapshot().in_flight, RequestCounts::default());
        counters.refused(Endpoint::ChatCompletions);
        counters.failed(Endpoint::Transcriptions);
        let stats = counters.snapshot();
        assert_eq!(stats.refused.chat_completions, 1);
        assert_eq!(stats.failed.transcriptions, 1);
        counters.reset();
        assert_eq!(counters.snapshot(), Stats::default());
        let _d = counters.arrive(Endpoint::Speech);
        assert_eq!(counters.snapshot().max_concurrent.speech, 1);
    }
}
