//! MP3 (MPEG-1/2/2.5 audio, layers I–III): ID3v2 tags skipped, then frame
//! headers that chain — each next header exactly where the previous frame's
//! computed length ends — for [`CHAIN`] frames, or whole frames up to the end
//! of the file (or to a trailing ID3v1/APE tag).
//!
//! One valid-looking header is easy to meet by chance in random bytes; three
//! that chain by their lengths are not. A first frame that does not chain is
//! looked for again in the next [`RESYNC`] bytes (encoders may leave junk
//! after a tag). Free-format streams (bitrate index 0) cannot be chained by
//! length and are refused: no browser or phone records them.

use super::Verdict;

/// Consecutive frames that prove an MPEG audio stream.
const CHAIN: usize = 3;
/// How far past the tags a first frame is looked for.
const RESYNC: usize = 4096;

/// Kilobits per second by bitrate index: MPEG-1 layers I, II, III, then
/// MPEG-2/2.5 layer I, then MPEG-2/2.5 layers II and III.
const BITRATES: [[u16; 15]; 5] = [
    [
        0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448,
    ],
    [
        0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
    ],
    [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ],
    [
        0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256,
    ],
    [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],
];

/// A frame header's facts: what must stay the same along a stream, and the
/// frame's length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    /// Version, layer and sample-rate bits.
    kind: (u8, u8, u8),
    len: usize,
}

/// Parses the four-byte header at the start of `bytes`.
fn frame(bytes: &[u8]) -> Option<Frame> {
    let [b0, b1, b2, b3, ..] = *bytes else {
        return None;
    };
    if b0 != 0xFF || b1 & 0xE0 != 0xE0 {
        return None;
    }
    let version = (b1 >> 3) & 0b11; // 0: MPEG-2.5, 2: MPEG-2, 3: MPEG-1
    let layer = (b1 >> 1) & 0b11; // 1: III, 2: II, 3: I
    let bitrate_index = usize::from(b2 >> 4);
    let rate_index = (b2 >> 2) & 0b11;
    let padding = usize::from((b2 >> 1) & 1);
    if version == 1 || layer == 0 || bitrate_index == 0 || bitrate_index == 15 {
        return None;
    }
    if rate_index == 3 || b3 & 0b11 == 0b10 {
        return None;
    }
    let mpeg1 = version == 3;
    let table = match (mpeg1, layer) {
        (true, 3) => 0,
        (true, 2) => 1,
        (true, _) => 2,
        (false, 3) => 3,
        (false, _) => 4,
    };
    let bitrate = u32::from(BITRATES[table][bitrate_index]) * 1000;
    let base: u32 = match version {
        3 => [44_100, 48_000, 32_000][usize::from(rate_index)],
        2 => [22_050, 24_000, 16_000][usize::from(rate_index)],
        _ => [11_025, 12_000, 8_000][usize::from(rate_index)],
    };
    let len = match layer {
        3 => (12 * bitrate / base) as usize * 4 + padding * 4,
        2 => (144 * bitrate / base) as usize + padding,
        _ if mpeg1 => (144 * bitrate / base) as usize + padding,
        _ => (72 * bitrate / base) as usize + padding,
    };
    Some(Frame {
        kind: (version, layer, rate_index),
        len,
    })
}

pub(super) fn check(bytes: &[u8]) -> Verdict {
    let start = after_tags(bytes)?;
    let window_end = start.saturating_add(RESYNC).min(bytes.len());
    let mut seen_header = false;
    for pos in start..window_end {
        if bytes[pos] != 0xFF {
            continue;
        }
        if let Some(first) = frame(&bytes[pos..]) {
            seen_header = true;
            if chains(bytes, pos, first) {
                return Ok(());
            }
        }
    }
    if seen_header {
        Err("its MPEG audio frame headers do not chain into a stream".to_owned())
    } else {
        Err("there is no MPEG audio frame".to_owned())
    }
}

/// Whether frames from `pos` chain for [`CHAIN`] frames, or to the end.
fn chains(bytes: &[u8], mut pos: usize, first: Frame) -> bool {
    let mut whole = 0;
    while whole < CHAIN {
        let Some(frame) = frame(&bytes[pos..]).filter(|f| f.kind == first.kind) else {
            return false;
        };
        let next = pos + frame.len;
        if next > bytes.len() {
            // Cut short: the frames before the cut still play.
            return whole > 0;
        }
        whole += 1;
        pos = next;
        let rest = &bytes[pos..];
        if rest.is_empty() || rest.starts_with(b"TAG") || rest.starts_with(b"APETAGEX") {
            return true;
        }
    }
    true
}

/// Where the audio starts: past any ID3v2 tags and the zero padding after them.
fn after_tags(bytes: &[u8]) -> Result<usize, String> {
    let mut pos = 0;
    while bytes[pos..].starts_with(b"ID3") {
        let header = bytes.get(pos..pos + 10).ok_or("the ID3 tag is cut short")?;
        let size = &header[6..10];
        if size.iter().any(|b| b & 0x80 != 0) {
            return Err("the ID3 tag's size is not a syncsafe integer".to_owned());
        }
        let size = size
            .iter()
            .fold(0usize, |acc, b| (acc << 7) | usize::from(*b));
        let footer = if header[5] & 0x10 != 0 { 10 } else { 0 };
        pos = pos + 10 + size + footer;
        if pos >= bytes.len() {
            return Err("the file is an ID3 tag with no audio after it".to_owned());
        }
    }
    while bytes.get(pos) == Some(&0) {
        pos += 1;
    }
    Ok(pos)
}
