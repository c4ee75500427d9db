//! How provider calls survive rate limits and failures: a shared rate
//! limiter ([`limiter`]), a circuit breaker per provider ([`breaker`]), and
//! in-call retries with exponential, fully jittered backoff (backon's
//! schedule, jitter drawn over the whole step) that never waits less than
//! the provider asked for.
//!
//! [`Resilience::call`] wraps one provider call:
//! breaker → limiter → call → classify. A rate limit pauses every worker for
//! the provider's wait and is retried without counting against the breaker;
//! ElevenLabs' `too_many_concurrent_requests` just waits for a slot, its
//! `system_busy` backs off; transient failures count toward opening the
//! breaker and are retried; permanent ones return at once.

pub mod breaker;
pub mod limiter;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rand::Rng;

use crate::providers::{ErrorKind, ProviderError};

pub use breaker::{BreakerConfig, Breakers, Open, Snapshot, State};
pub use limiter::{Limiter, Limits, MAX_RANK, Permit, Rank};

/// What a breaker and a budget are kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    Stt,
    Llm,
    Tts,
    Memory,
}

impl Provider {
    /// Every provider, in report order.
    pub const ALL: [Provider; 4] = [Self::Stt, Self::Llm, Self::Tts, Self::Memory];

    /// The reported and logged name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stt => "stt",
            Self::Llm => "llm",
            Self::Tts => "tts",
            Self::Memory => "memory",
        }
    }
}

/// In-call retry tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallPolicy {
    /// Tries per call, the first included.
    pub tries: usize,
    /// The backoff's first step.
    pub base: Duration,
    /// The backoff's ceiling (a provider's own wait may exceed it).
    pub cap: Duration,
    /// The longest provider-requested wait honoured inside one call; longer
    /// waits end the call and the job is rescheduled instead.
    pub max_hint: Duration,
}

impl Default for CallPolicy {
    fn default() -> Self {
        Self {
            tries: 3,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(8),
            max_hint: Duration::from_secs(30),
        }
    }
}

/// Why a guarded call gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The provider failed (after the in-call retries, when retryable).
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The provider's breaker is open; try again after `retry_in`.
    #[error("the circuit breaker is open; next trial in {:?}", .0.retry_in)]
    Open(Open),
}

/// Full jitter: uniform over `[0, step]`, never below the provider's hint.
#[must_use]
pub fn jittered(step: Duration, hint: Option<Duration>) -> Duration {
    step.mul_f64(rand::rng().random_range(0.0..=1.0))
        .max(hint.unwrap_or_default())
}

/// Limiter, breakers and retry policy, shared by a process's calls.
#[derive(Clone)]
pub struct Resilience {
    pub limiter: Limiter,
    pub breakers: Breakers,
    pub policy: CallPolicy,
}

impl std::fmt::Debug for Resilience {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resilience")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Resilience {
    /// Runs `call` against `provider` under the breaker, the limiter and the
    /// retry policy.
    ///
    /// # Errors
    /// [`CallError::Open`] at once while the breaker is open;
    /// [`CallError::Provider`] for a permanent failure, or the last failure
    /// once the tries are spent.
    pub async fn call<T, F, Fut>(&self, provider: Provider, call: F) -> Result<T, CallError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        self.call_ranked(provider, 0, call).await
    }

    /// [`Self::call`], waiting for a concurrency slot ahead of callers of a
    /// higher `rank` (see [`limiter`]).
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn call_ranked<T, F, Fut>(
        &self,
        provider: Provider,
        rank: Rank,
        call: F,
    ) -> Result<T, CallError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        self.call_holding(provider, rank, call)
            .await
            .map(|(value, _permit)| value)
    }

    /// [`Self::call_ranked`] for a call whose answer goes on after it
    /// returns (a stream): the concurrency slot comes back with the value
    /// and is held until the caller drops it.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn call_holding<T, F, Fut>(
        &self,
        provider: Provider,
        rank: Rank,
        call: F,
    ) -> Result<(T, Permit), CallError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let mut steps = ExponentialBuilder::new()
            .with_min_delay(self.policy.base)
            .with_max_delay(self.policy.cap)
            .with_max_times(self.policy.tries.saturating_sub(1))
            .build();
        loop {
            self.breakers
                .allow(provider)
                .await
                .map_err(CallError::Open)?;
            let permit = self.limiter.acquire_ranked(provider, rank).await;
            let result = call().await;
            let error = match result {
                Ok(value) => {
                    crate::metrics::provider_request(provider.as_str(), Some(200));
                    self.breakers.record(provider, true).await;
                    return Ok((value, permit));
                }
                Err(e) => {
                    drop(permit);
                    e
                }
            };
            crate::metrics::provider_request(provider.as_str(), error.status);
            let hint = error.retry_after;
            let wait_for_slot = error.code.as_deref() == Some("too_many_concurrent_requests");
            match error.kind {
                ErrorKind::RateLimited if wait_for_slot => {}
                ErrorKind::RateLimited => {
                    let pause = hint.unwrap_or(Duration::from_secs(1));
                    self.limiter.pause(provider, pause).await;
                    if pause > self.policy.max_hint {
                        return Err(error.into());
                    }
                }
                ErrorKind::Transient => self.breakers.record(provider, false).await,
                ErrorKind::Permanent | ErrorKind::InvalidAudio => return Err(error.into()),
            }
            let Some(step) = steps.next() else {
                return Err(error.into());
            };
            let wait = if wait_for_slot {
                jittered(Duration::from_millis(500), None)
            } else {
                jittered(step, hint.map(|h| h.min(self.policy.max_hint)))
            };
            tracing::info!(
                provider = provider.as_str(),
                status = error.status,
                wait_ms = wait.as_millis() as u64,
                "provider call failed; retrying"
            );
            crate::metrics::provider_retry(provider.as_str());
            tokio::time::sleep(wait).await;
        }
    }

    /// The breakers' states by provider name, for health.
    pub async fn breaker_states(&self) -> HashMap<&'static str, Snapshot> {
        self.breakers
            .snapshot()
            .await
            .into_iter()
            .map(|(p, s)| (p.as_str(), s))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn resilience(tries: usize) -> Resilience {
        Resilience {
            limiter: Limiter::local(
                HashMap::new(),
                Duration::from_secs(60),
                Duration::from_secs(60),
            ),
            breakers: Breakers::local(BreakerConfig::default()),
            policy: CallPolicy {
                tries,
                base: Duration::from_millis(100),
                cap: Duration::from_secs(1),
                max_hint: Duration::from_secs(30),
            },
        }
    }

    #[test]
    fn full_jitter_stays_within_the_step_and_above_the_hint() {
        for _ in 0..500 {
            assert!(jittered(Duration::from_millis(100), None) <= Duration::from_millis(100));
            let d = jittered(Duration::from_millis(100), Some(Duration::from_secs(2)));
            assert!(d >= Duration::from_secs(2));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_then_given_up() {
        let r = resilience(3);
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = r
            .call(Provider::Llm, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(ProviderError::transient("groq", Some(503), "busy"))
            })
            .await;
        assert!(matches!(result, Err(CallError::Provider(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_are_not_retried() {
        let r = resilience(3);
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = r
            .call(Provider::Stt, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(ProviderError::permanent("groq", Some(400), "bad"))
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_waits_at_least_the_providers_hint() {
        let r = resilience(2);
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let result = r
            .call(Provider::Llm, || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    let mut e = ProviderError::transient("groq", Some(429), "slow down");
                    e.kind = ErrorKind::RateLimited;
                    e.retry_after = Some(Duration::from_millis(7660));
                    Err(e)
                } else {
                    Ok(42)
                }
            })
            .await;
        assert_eq!(result, Ok(42));
        assert!(started.elapsed() >= Duration::from_millis(7660));
        // A rate limit is not a sign of ill health.
        assert_eq!(r.breakers.snapshot().await[&Provider::Llm].failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_refuses_at_once() {
        let r = resilience(1);
        for _ in 0..5 {
            r.breakers.record(Provider::Llm, false).await;
        }
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = r
            .call(Provider::Llm, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .await;
        assert!(matches!(result, Err(CallError::Open(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }
}
