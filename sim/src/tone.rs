//! Synthetic speech audio: how long a text "sounds", and a soft tone to fill it.
//!
//! Durations follow a calm speaking pace of about 60 ms a character, clamped
//! to 0.5–30 s. PCM and WAV answers carry a quiet 220 Hz tone with short
//! fades (no clicks); MP3 answers are silent frames (see [`crate::mp3`]).

use std::f64::consts::TAU;
use std::time::Duration;

/// How long speaking `chars` characters takes.
pub(crate) fn speech_duration(chars: usize) -> Duration {
    let ms = u64::try_from(chars).unwrap_or(u64::MAX).saturating_mul(60);
    Duration::from_millis(ms.clamp(500, 30_000))
}

/// A soft tone at `sample_rate` lasting `duration`, as 16-bit mono samples.
pub(crate) fn soft_tone(sample_rate: u32, duration: Duration) -> Vec<i16> {
    const FREQ: f64 = 220.0;
    const AMPLITUDE: f64 = 1_200.0;
    let rate = f64::from(sample_rate);
    let count = (duration.as_secs_f64() * rate).round() as usize;
    let fade = (0.02 * rate) as usize;
    (0..count)
        .map(|i| {
            let edge = i.min(count - 1 - i);
            let envelope = if fade == 0 {
                1.0
            } else {
                (edge as f64 / fade as f64).min(1.0)
            };
            let value = (TAU * FREQ * i as f64 / rate).sin() * AMPLITUDE * envelope;
            value.round() as i16
        })
        .collect()
}

/// Little-endian bytes of `samples` (raw `pcm_<rate>` output).
pub(crate) fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_clamp() {
        assert_eq!(speech_duration(1), Duration::from_millis(500));
        assert_eq!(speech_duration(50), Duration::from_secs(3));
        assert_eq!(speech_duration(100_000), Duration::from_secs(30));
    }

    #[test]
    fn tone_is_quiet_and_faded() {
        let samples = soft_tone(16_000, Duration::from_millis(500));
        assert_eq!(samples.len(), 8_000);
        assert_eq!(samples[0], 0);
        assert!(samples.iter().all(|s| s.unsigned_abs() <= 1_200));
        assert!(samples.iter().any(|s| s.unsigned_abs() > 1_000));
        assert_eq!(pcm_bytes(&samples).len(), 16_000);
    }
}
