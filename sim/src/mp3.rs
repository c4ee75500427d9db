//! Valid, silent MP3: a run of real MPEG Layer III frames.
//!
//! Each frame is a 4-byte header (mono, no CRC) followed by zeroed side
//! information and main data. Zero side information means
//! `main_data_begin = 0` and `part2_3_length = 0` in every granule, which
//! every decoder plays as silence. MPEG-1 (32/44.1/48 kHz, 1152 samples a
//! frame) and MPEG-2 (16/22.05/24 kHz, 576 samples) are supported. Padding
//! bits are set the way encoders set them, so the stream keeps the nominal
//! bitrate exactly (e.g. 44.1 kHz at 128 kbps mixes 417- and 418-byte frames).

use std::time::Duration;

/// MPEG-1 Layer III bitrates (kbps) by index.
const MPEG1_KBPS: [u32; 15] = [
    0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
];
/// MPEG-2 Layer III bitrates (kbps) by index.
const MPEG2_KBPS: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
const MPEG1_RATES: [u32; 3] = [44_100, 48_000, 32_000];
const MPEG2_RATES: [u32; 3] = [22_050, 24_000, 16_000];

/// A sample rate and bitrate that make a valid Layer III stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mp3Format {
    mpeg1: bool,
    rate_index: u8,
    bitrate_index: u8,
    sample_rate: u32,
    kbps: u32,
}

impl Mp3Format {
    /// `None` when the pair is not a Layer III combination.
    pub(crate) fn new(sample_rate: u32, kbps: u32) -> Option<Self> {
        let (mpeg1, rate_index) =
            if let Some(i) = MPEG1_RATES.iter().position(|r| *r == sample_rate) {
                (true, i)
            } else {
                (false, MPEG2_RATES.iter().position(|r| *r == sample_rate)?)
            };
        let table = if mpeg1 { &MPEG1_KBPS } else { &MPEG2_KBPS };
        let bitrate_index = table.iter().skip(1).position(|k| *k == kbps)? + 1;
        Some(Self {
            mpeg1,
            rate_index: u8::try_from(rate_index).ok()?,
            bitrate_index: u8::try_from(bitrate_index).ok()?,
            sample_rate,
            kbps,
        })
    }

    fn samples_per_frame(self) -> u64 {
        if self.mpeg1 { 1152 } else { 576 }
    }

    /// Bytes per frame times the sample rate (frame length = this / rate).
    fn frame_numerator(self) -> u64 {
        let factor = if self.mpeg1 { 144 } else { 72 };
        factor * u64::from(self.kbps) * 1000
    }

    fn header(self, padded: bool) -> [u8; 4] {
        // Sync, version (11 = MPEG-1, 10 = MPEG-2), layer III (01), no CRC.
        let b1 = if self.mpeg1 { 0xFB } else { 0xF3 };
        let b2 = (self.bitrate_index << 4) | (self.rate_index << 2) | (u8::from(padded) << 1);
        // Mono, no mode extension, not copyrighted, original, no emphasis.
        [0xFF, b1, b2, 0xC4]
    }
}

/// A silent stream at `format` lasting at least `duration`.
pub(crate) fn silent(format: Mp3Format, duration: Duration) -> Vec<u8> {
    let rate = u64::from(format.sample_rate);
    let samples = (duration.as_secs_f64() * rate as f64).ceil() as u64;
    let frames = samples.div_ceil(format.samples_per_frame()).max(1);
    let numerator = format.frame_numerator();
    let base = numerator / rate;
    let total = |n: u64| n * numerator / rate;
    let mut out = Vec::with_capacity(usize::try_from(total(frames)).unwrap_or(0));
    for n in 0..frames {
        let len = total(n + 1) - total(n);
        let header = format.header(len > base);
        out.extend_from_slice(&header);
        let body = usize::try_from(len)
            .unwrap_or(0)
            .saturating_sub(header.len());
        // Zeroed side information (17 bytes MPEG-1, 9 MPEG-2) and main data: silence.
        out.resize(out.len() + body, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks frame headers; returns (frames, samples) or the offset of the first bad header.
    fn walk(bytes: &[u8]) -> Result<(u64, u64), usize> {
        let mut pos = 0;
        let (mut frames, mut samples) = (0, 0);
        while pos < bytes.len() {
            let h = bytes.get(pos..pos + 4).ok_or(pos)?;
            if h[0] != 0xFF || h[1] & 0xE0 != 0xE0 {
                return Err(pos);
            }
            let mpeg1 = (h[1] >> 3) & 0b11 == 0b11;
            let table = if mpeg1 { MPEG1_KBPS } else { MPEG2_KBPS };
            let rates = if mpeg1 { MPEG1_RATES } else { MPEG2_RATES };
            let kbps = u64::from(*table.get(usize::from(h[2] >> 4)).ok_or(pos)?);
            let rate = u64::from(*rates.get(usize::from((h[2] >> 2) & 0b11)).ok_or(pos)?);
            let pad = u64::from((h[2] >> 1) & 1);
            let len = if mpeg1 { 144 } else { 72 } * kbps * 1000 / rate + pad;
            pos += len as usize;
            frames += 1;
            samples += if mpeg1 { 1152 } else { 576 };
        }
        if pos == bytes.len() {
            Ok((frames, samples))
        } else {
            Err(pos)
        }
    }

    #[test]
    fn frames_walk_and_keep_the_bitrate() {
        let format = Mp3Format::new(44_100, 128).expect("valid");
        let bytes = silent(format, Duration::from_secs(3));
        assert_eq!(&bytes[..4], &[0xFF, 0xFB, 0x90, 0xC4]);
        let (frames, samples) = walk(&bytes).expect("valid frames");
        assert_eq!(frames, 115);
        assert!(samples >= 3 * 44_100);
        let kbps = bytes.len() as f64 * 8.0 / (samples as f64 / 44_100.0) / 1000.0;
        assert!((kbps - 128.0).abs() < 0.5, "{kbps}");
        assert_eq!(
            rose_shared::audio::sniff(&bytes),
            Some(rose_shared::audio::AudioFormat::Mp3)
        );
    }

    #[test]
    fn mpeg2_rates_work() {
        for (rate, kbps) in [
            (22_050, 32),
            (24_000, 48),
            (16_000, 8),
            (48_000, 192),
            (32_000, 320),
        ] {
            let format = Mp3Format::new(rate, kbps).expect("valid");
            let bytes = silent(format, Duration::from_millis(500));
            let (_, samples) = walk(&bytes).expect("valid frames");
            assert!(samples >= u64::from(rate) / 2, "{rate} {kbps}");
        }
    }

    #[test]
    fn refuses_impossible_pairs() {
        assert!(Mp3Format::new(44_100, 8).is_none());
        assert!(Mp3Format::new(22_050, 320).is_none());
        assert!(Mp3Format::new(8_000, 32).is_none());
        assert!(Mp3Format::new(44_100, 0).is_none());
    }
}
