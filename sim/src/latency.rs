//! How long a successful answer waits before it starts.
//!
//! The base is the configured latency of the endpoint's stage. The `slow`
//! profile raises it to a floor (1500 ms STT, 3000 ms LLM, 2000 ms TTS) and
//! adds a long tail: about one successful answer in twenty
//! ([`SLOW_TAIL_SHARE`]) waits [`SLOW_TAIL_FACTOR`] times its base instead.
//! The `realistic` profile raises it to the published figures (250 ms STT
//! overhead, 250 ms to the first token, 200 ms to the first byte of speech;
//! see [`crate::pacing`]).

use std::time::Duration;

use crate::state::Endpoint;
use crate::{Latency, Profile, pacing};

/// The share of successful answers under `slow` that land in the tail.
pub(crate) const SLOW_TAIL_SHARE: f64 = 0.05;
/// How many times its base latency a tail answer waits.
pub(crate) const SLOW_TAIL_FACTOR: u32 = 4;

/// The base wait for `endpoint`: the configured latency, raised to the
/// floor of the `slow` or `realistic` profile.
pub(crate) fn base(latency: Latency, endpoint: Endpoint, profile: Option<Profile>) -> Duration {
    let (configured, slow_floor, realistic_floor) = match endpoint {
        Endpoint::Transcriptions => (
            latency.stt,
            Duration::from_millis(1_500),
            pacing::REALISTIC_STT_OVERHEAD,
        ),
        Endpoint::ChatCompletions => (
            latency.llm,
            Duration::from_millis(3_000),
            pacing::REALISTIC_TTFT,
        ),
        Endpoint::TextToSpeech | Endpoint::Speech => (
            latency.tts,
            Duration::from_millis(2_000),
            pacing::REALISTIC_TTS_TTFB,
        ),
    };
    match profile {
        Some(Profile::Slow) => configured.max(slow_floor),
        Some(Profile::Realistic) => configured.max(realistic_floor),
        _ => configured,
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

    const SLOW: Option<Profile> = Some(Profile::Slow);

    #[test]
    fn slow_profile_raises_latency_floors() {
        let none = Latency::default();
        assert_eq!(
            base(none, Endpoint::Transcriptions, SLOW),
            Duration::from_millis(1_500)
        );
        assert_eq!(
            base(none, Endpoint::ChatCompletions, SLOW),
            Duration::from_millis(3_000)
        );
        assert_eq!(
            base(none, Endpoint::TextToSpeech, SLOW),
            Duration::from_millis(2_000)
        );
        assert_eq!(
            base(none, Endpoint::Speech, SLOW),
            Duration::from_millis(2_000)
        );
        let long = Latency {
            stt: Duration::from_secs(5),
            ..Latency::default()
        };
        assert_eq!(
            base(long, Endpoint::Transcriptions, SLOW),
            Duration::from_secs(5)
        );
        assert_eq!(base(none, Endpoint::Speech, None), Duration::ZERO);
        assert_eq!(
            base(long, Endpoint::Transcriptions, None),
            Duration::from_secs(5)
        );
        let realistic = Some(Profile::Realistic);
        assert_eq!(
            base(none, Endpoint::ChatCompletions, realistic),
            Duration::from_millis(250)
        );
        assert_eq!(
            base(long, Endpoint::Transcriptions, realistic),
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
