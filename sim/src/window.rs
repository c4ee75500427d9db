//! Fixed 60-second request windows per endpoint, the numbers behind Groq's
//! `x-ratelimit-*` headers, and Go-style duration formatting for them.
//!
//! Under `rate-limited` the transcription and chat windows are enforced with
//! the configured [`SimLimits`]; otherwise the windows only feed the headers
//! with generous figures. A window starts with its first request and resets
//! 60 seconds later.

use std::time::{Duration, Instant};

use crate::SimLimits;
use crate::state::{Endpoint, Refusal};

/// The default length of a rate-limit window.
#[cfg(test)]
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

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

    fn roll(&mut self, now: Instant, length: Duration) {
        if now.duration_since(self.start) >= length {
            *self = Self::fresh(now);
        }
    }

    fn reset_in(&self, now: Instant, length: Duration) -> Duration {
        length.saturating_sub(now.duration_since(self.start))
    }
}

/// One window per endpoint, all of one length.
#[derive(Debug)]
pub(crate) struct Windows {
    windows: [Window; 4],
    length: Duration,
}

impl Windows {
    pub(crate) fn new(now: Instant, length: Duration) -> Self {
        Self {
            windows: [Window::fresh(now); 4],
            length,
        }
    }

    /// Takes one request (costing `tokens`) from `endpoint`'s window, or
    /// refuses when `limits` (the `rate-limited` profile's) are used up.
    pub(crate) fn take(
        &mut self,
        endpoint: Endpoint,
        tokens: u64,
        limits: Option<&SimLimits>,
        now: Instant,
    ) -> Result<RateInfo, Refusal> {
        let length = self.length;
        let window = &mut self.windows[endpoint.index()];
        window.roll(now, length);
        let enforced = limits.and_then(|limits| match endpoint {
            Endpoint::Transcriptions => Some(u64::from(limits.stt_rpm)),
            Endpoint::ChatCompletions => Some(u64::from(limits.llm_rpm)),
            Endpoint::TextToSpeech | Endpoint::Speech => None,
        });
        // Un-enforced windows show a generous figure in the headers.
        let limit = enforced.unwrap_or(14_400);
        if enforced.is_some() && window.requests >= limit {
            return Err(Refusal::RateLimited {
                limit,
                reset: window.reset_in(now, length),
            });
        }
        window.requests += 1;
        window.tokens = window.tokens.saturating_add(tokens);
        let limit_tokens: u64 = if limits.is_some() { 6_000 } else { 300_000 };
        let used_tokens = window.tokens.min(limit_tokens);
        Ok(RateInfo {
            limit_requests: limit,
            remaining_requests: limit.saturating_sub(window.requests),
            reset_requests: window.reset_in(now, length),
            limit_tokens,
            remaining_tokens: limit_tokens - used_tokens,
            // Tokens replenish continuously over the window.
            reset_tokens: length.mul_f64(used_tokens as f64 / limit_tokens as f64),
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
    fn configured_limit_is_enforced_and_the_window_resets() {
        let start = Instant::now();
        let limits = SimLimits {
            stt_rpm: 2,
            ..SimLimits::default()
        };
        let mut windows = Windows::new(start, WINDOW);
        for remaining in [1, 0] {
            let rate = windows
                .take(Endpoint::Transcriptions, 0, Some(&limits), start)
                .expect("within the limit");
            assert_eq!(rate.limit_requests, 2);
            assert_eq!(rate.remaining_requests, remaining);
        }
        let later = start + Duration::from_secs(59);
        assert!(matches!(
            windows.take(Endpoint::Transcriptions, 0, Some(&limits), later),
            Err(Refusal::RateLimited { limit: 2, .. })
        ));
        // Chat keeps its own (default) limit.
        let chat = windows
            .take(Endpoint::ChatCompletions, 0, Some(&limits), later)
            .expect("chat");
        assert_eq!(chat.limit_requests, 30);
        // A fixed window: a fresh one starts 60 s after the first request.
        let next = start + WINDOW;
        assert!(
            windows
                .take(Endpoint::Transcriptions, 0, Some(&limits), next)
                .is_ok()
        );
    }

    #[test]
    fn unenforced_windows_never_refuse() {
        let start = Instant::now();
        let zero = SimLimits {
            stt_rpm: 0,
            llm_rpm: 0,
            tts_concurrency: 0,
            window: WINDOW,
        };
        let mut windows = Windows::new(start, WINDOW);
        for _ in 0..100 {
            assert!(
                windows
                    .take(Endpoint::Transcriptions, 1, None, start)
                    .is_ok()
            );
            assert!(
                windows
                    .take(Endpoint::Speech, 1, Some(&zero), start)
                    .is_ok()
            );
        }
        assert!(
            windows
                .take(Endpoint::ChatCompletions, 1, Some(&zero), start)
                .is_err()
        );
    }
}
