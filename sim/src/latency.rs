//! How long a successful answer waits.
//!
//! The base is the configured latency of the endpoint's stage. The `slow`
//! profile raises it to a floor (1500 ms STT, 3000 ms LLM, 2000 ms TTS) and
//! adds a long tail: about one successful answer in twenty
//! ([`SLOW_TAIL_SHARE`]) waits [`SLOW_TAIL_FACTOR`] times its base instead.

use std::time::Duration;

use crate::Latency;
use crate::state::Endpoint;

/// The share of successful answers under `slow` that land in the tail.
pub(crate) const SLOW_TAIL_SHARE: f64 = 0.05;
/// How many times its base latency a tail answer waits.
pub(crate) const SLOW_TAIL_FACTOR: u32 = 4;

/// The base wait for `endpoint`: the configured latency, raised to the
/// `slow` profile's floor when `slow`.
pub(crate) fn base(latency: Latency, endpoint: Endpoint, slow: bool) -> Duration {
    let (configured, slow_floor_ms) = match endpoint {
        Endpoint::Transcriptions => (latency.stt, 1_500),
        Endpoint::ChatCompletions => (latency.llm, 3_000),
        Endpoint::TextToSpeech | Endpoint::Speech => (latency.tts, 2_000),
    };
    if slow {
        configured.max(Duration::from_millis(slow_floor_ms))
    } else {
        configured
    }
}

/// The `slow` profile's tail: `base` times [`SLOW_TAIL_FACTOR`] when `roll`
/// (uniform in `[0, 1)`) falls below [`SLOW_TAIL_SHARE`], else `base`.
pub(crate) fn with_tail(base: Duration, roll: f64) -> Duration {
    if roll < SLOW_TAIL_SHARE {
        base.saturating_mul(SLOW_TAIL_FACTOR)
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng as _, SeedableRng as _};

    use super::*;

    #[test]
    fn slow_profile_raises_latency_floors() {
        let none = Latency::default();
        assert_eq!(
            base(none, Endpoint::Transcriptions, true),
            Duration::from_millis(1_500)
        );
        assert_eq!(
            base(none, Endpoint::ChatCompletions, true),
            Duration::from_millis(3_000)
        );
        assert_eq!(
            base(none, Endpoint::TextToSpeech, true),
            Duration::from_millis(2_000)
        );
        assert_eq!(
            base(none, Endpoint::Speech, true),
            Duration::from_millis(2_000)
        );
        let long = Latency {
            stt: Duration::from_secs(5),
            ..Latency::default()
        };
        assert_eq!(
            base(long, Endpoint::Transcriptions, true),
            Duration::from_secs(5)
        );
        assert_eq!(base(none, Endpoint::Speech, false), Duration::ZERO);
        assert_eq!(
            base(long, Endpoint::Transcriptions, false),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn tail_is_four_times_the_base_below_the_share() {
        let base = Duration::from_millis(3_000);
        assert_eq!(with_tail(base, 0.0), Duration::from_millis(12_000));
        assert_eq!(with_tail(base, 0.049), Duration::from_millis(12_000));
        assert_eq!(with_tail(base, 0.05), base);
        assert_eq!(with_tail(base, 0.5), base);
        assert_eq!(with_tail(base, 0.999), base);
        assert_eq!(with_tail(Duration::MAX, 0.0), Duration::MAX);
    }

    #[test]
    fn about_one_answer_in_twenty_is_in_the_tail() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let base = Duration::from_millis(2_000);
        let draws = 20_000;
        let mut tail = 0;
        for _ in 0..draws {
            let wait = with_tail(base, rng.random::<f64>());
            if wait == base * 4 {
                tail += 1;
            } else {
                assert_eq!(wait, base);
            }
        }
        // 5 % of 20 000 is 1 000; the standard deviation is about 31.
        assert!((850..=1_150).contains(&tail), "{tail} tail answers");
    }
}
