//! What happens to a message whose handler failed: one policy, applied by
//! the queue layer of both carriers (the Redis Streams backend and the
//! embedded SQLite one), so a handler error means the same thing on every
//! deployment.
//!
//! A failed attempt is retried after an exponential, fully jittered backoff
//! (`uniform(0, min(cap, base · 2^(n-1)))` after the `n`th failure) until
//! the message has had `max_attempts`; then it goes to the dead letters. A
//! handler steers this with its error: [`Abort`] sends the message to the
//! dead letters at once (trying again will not help), [`RetryAfter`] asks
//! for the next attempt after an exact wait (still bounded by
//! `max_attempts`), [`Defer`] for a later attempt that does not count. A panic in a handler is caught before it reaches the
//! queue and counts as a failed attempt like any other error.

use std::time::Duration;

use apalis_core::error::BoxDynError;
use rand::Rng;

use super::{Abort, Defer, RetryAfter};

/// How a failed attempt is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all before a failing message goes to the dead letters.
    pub max_attempts: u32,
    /// First backoff step (doubling, fully jittered, capped at `cap`).
    pub base: Duration,
    /// Largest backoff.
    pub cap: Duration,
}

/// What to do with a message after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Run it again after this wait.
    Retry(Duration),
    /// Run it again after this wait, the failed attempt not counted.
    Defer(Duration),
    /// Keep it in the dead letters, with its last error.
    Bury(String),
}

impl Default for RetryPolicy {
    /// 5 attempts, backoff 1 s doubling to 5 min.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The settlement of a message whose attempt number `attempts` (counting
    /// this one, from 1) failed with `error`.
    #[must_use]
    pub fn settle(&self, attempts: u32, error: &BoxDynError) -> Settle {
        let reason = error.to_string();
        if error.downcast_ref::<Abort>().is_some() {
            return Settle::Bury(reason);
        }
        if let Some(d) = error.downcast_ref::<Defer>() {
            return Settle::Defer(d.after);
        }
        if attempts >= self.max_attempts {
            return Settle::Bury(reason);
        }
        match error.downcast_ref::<RetryAfter>() {
            Some(r) => Settle::Retry(r.after),
            None => Settle::Retry(self.backoff(attempts)),
        }
    }

    /// The wait after the `attempts`th failure: full jitter over
    /// `min(cap, base · 2^(attempts-1))`.
    #[must_use]
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(20);
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.cap);
        ceiling.mul_f64(rand::rng().random_range(0.0..=1.0))
    }
}

/// The error a handler's panic becomes: the attempt fails with it, and the
/// message is settled by the [`RetryPolicy`] like any failed attempt.
#[derive(Debug, Clone, thiserror::Error)]
#[error("internal_error: the handler panicked: {0}")]
pub struct Panicked(pub String);

impl Panicked {
    /// The panic's message, when it carried one.
    #[must_use]
    pub fn from_payload(payload: &(dyn std::any::Any + Send)) -> Self {
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        Self(text.chars().take(300).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(e: impl std::error::Error + Send + Sync + 'static) -> BoxDynError {
        Box::new(e)
    }

    #[test]
    fn failures_back_off_then_bury() {
        let policy = RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(150),
        };
        let error = boxed(std::io::Error::other("store down"));
        for attempts in 1..3 {
            match policy.settle(attempts, &error) {
                Settle::Retry(wait) => assert!(wait <= Duration::from_millis(150)),
                other => panic!("attempt {attempts}: {other:?}"),
            }
        }
        assert_eq!(
            policy.settle(3, &error),
            Settle::Bury("store down".to_owned())
        );
    }

    #[test]
    fn handlers_steer_with_their_errors() {
        let policy = RetryPolicy::default();
        let abort = boxed(Abort("bad message".to_owned()));
        assert_eq!(
            policy.settle(1, &abort),
            Settle::Bury("bad message".to_owned())
        );
        let later = boxed(RetryAfter {
            after: Duration::from_secs(42),
            reason: "later".to_owned(),
        });
        assert_eq!(
            policy.settle(1, &later),
            Settle::Retry(Duration::from_secs(42))
        );
        assert!(matches!(policy.settle(5, &later), Settle::Bury(_)));
        let defer = boxed(Defer {
            after: Duration::from_secs(600),
            reason: "no model".to_owned(),
        });
        assert_eq!(
            policy.settle(99, &defer),
            Settle::Defer(Duration::from_secs(600))
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_full_jitter() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
        };
        let mut highest = [Duration::ZERO; 5];
        for _ in 0..2000 {
            for (i, n) in (1..=5).enumerate() {
                let wait = policy.backoff(n);
                let ceiling =
                    (Duration::from_millis(100) * 2u32.pow(n - 1)).min(Duration::from_millis(400));
                assert!(wait <= ceiling);
                highest[i] = highest[i].max(wait);
            }
        }
        assert!(highest[0] > Duration::from_millis(90));
        assert!(highest[2] > Duration::from_millis(360));
        assert!(highest[4] <= Duration::from_millis(400));
    }

    #[test]
    fn a_panic_payload_becomes_its_message() {
        let text: Box<dyn std::any::Any + Send> = Box::new("boom");
        assert_eq!(Panicked::from_payload(text.as_ref()).0, "boom");
        let owned: Box<dyn std::any::Any + Send> = Box::new(String::from("owned boom"));
        assert_eq!(Panicked::from_payload(owned.as_ref()).0, "owned boom");
        let other: Box<dyn std::any::Any + Send> = Box::new(7u8);
        assert_eq!(Panicked::from_payload(other.as_ref()).0, "no message");
    }
}
