//! One file from the sentences of a reply spoken one by one, so clients that
//! want the whole reply (`result.audio_url`, callbacks) get it without a
//! second synthesis.
//!
//! - MPEG audio (`audio/mpeg`): frames follow one another, so the parts are
//!   concatenated; an ID3v2 tag at the start of a later part is dropped (a
//!   tag belongs at the start of the file).
//! - WAV (`audio/wav`, `audio/x-wav`): the `data` of every part under the
//!   first part's `fmt `; every part must have the same format.
//!
//! Anything else, or parts that do not agree, cannot be joined: `None`.

use super::{AudioFormat, sniff};

/// The parts (all of `mime`) as one file, or `None` when they cannot be joined.
#[must_use]
pub fn join(mime: &str, parts: &[&[u8]]) -> Option<Vec<u8>> {
    match (mime, parts) {
        (_, []) => None,
        (_, [one]) => Some(one.to_vec()),
        ("audio/mpeg" | "audio/mp3", _) => Some(join_mpeg(parts)),
        ("audio/wav" | "audio/x-wav" | "audio/wave", _) => join_wav(parts),
        _ => None,
    }
}

fn join_mpeg(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for (i, part) in parts.iter().enumerate() {
        out.extend_from_slice(if i == 0 { part } else { skip_id3(part) });
    }
    out
}

/// `bytes` after a leading ID3v2 tag (10-byte header, syncsafe size, an
/// optional 10-byte footer).
fn skip_id3(bytes: &[u8]) -> &[u8] {
    let Some(header) = bytes.get(..10) else {
        return bytes;
    };
    if &header[..3] != b"ID3" || header[6..10].iter().any(|b| b & 0x80 != 0) {
        return bytes;
    }
    let size = header[6..10]
        .iter()
        .fold(0usize, |acc, b| (acc << 7) | usize::from(*b));
    let footer = if header[5] & 0x10 != 0 { 10 } else { 0 };
    bytes.get(10 + size + footer..).unwrap_or(bytes)
}

/// The `fmt ` and `data` bodies of a WAV file.
fn wav_parts(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    if sniff(bytes) != Some(AudioFormat::Wav) {
        return None;
    }
    let (mut fmt, mut data) = (None, None);
    let mut pos = 12usize;
    while let Some(header) = bytes.get(pos..pos.checked_add(8)?) {
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let start = pos + 8;
        let body = bytes.get(start..start.saturating_add(len).min(bytes.len()))?;
        match &header[..4] {
            b"fmt " => fmt = Some(body),
            b"data" => data = Some(body),
            _ => {}
        }
        pos = start.saturating_add(len).saturating_add(len & 1);
    }
    Some((fmt?, data?))
}

fn join_wav(parts: &[&[u8]]) -> Option<Vec<u8>> {
    let (fmt, _) = wav_parts(parts.first()?)?;
    let mut data = Vec::new();
    for part in parts {
        let (this_fmt, this_data) = wav_parts(part)?;
        if this_fmt != fmt {
            return None;
        }
        data.extend_from_slice(this_data);
    }
    let fmt_len = u32::try_from(fmt.len()).ok()?;
    let data_len = u32::try_from(data.len()).ok()?;
    let pad = fmt.len() & 1;
    let riff_len = 4 + 8 + fmt_len + u32::try_from(pad).ok()? + 8 + data_len;
    let mut out = Vec::with_capacity(riff_len as usize + 8);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&riff_len.to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&fmt_len.to_le_bytes());
    out.extend_from_slice(fmt);
    if pad == 1 {
        out.push(0);
    }
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(&data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{build_wav, wav_info};

    #[test]
    fn wav_parts_join_into_one_playable_file() {
        let a = build_wav(16_000, &[1; 16_000], Some("first"));
        let b = build_wav(16_000, &[2; 8_000], None);
        let joined = join("audio/wav", &[&a, &b]).expect("same format joins");
        let info = wav_info(&joined).expect("a WAV file");
        assert_eq!(info.duration_secs, Some(1.5));
        let other_rate = build_wav(8_000, &[2; 8_000], None);
        assert_eq!(join("audio/wav", &[&a, &other_rate]), None);
        assert_eq!(join("audio/wav", &[&a, b"not a wav"]), None);
    }

    #[test]
    fn mpeg_parts_concatenate_and_later_tags_are_dropped() {
        let frame = [0xFF, 0xFB, 0x90, 0x64, 1, 2, 3];
        let mut tagged = b"ID3\x04\x00\x00\x00\x00\x00\x02".to_vec();
        tagged.extend_from_slice(&[9, 9]);
        tagged.extend_from_slice(&frame);
        let joined = join("audio/mpeg", &[&tagged, &tagged]).expect("mpeg joins");
        let mut expected = tagged.clone();
        expected.extend_from_slice(&frame);
        assert_eq!(joined, expected);
        assert_eq!(join("audio/ogg", &[&frame, &frame]), None);
        assert_eq!(join("audio/ogg", &[&frame]), Some(frame.to_vec()));
        assert_eq!(join("audio/mpeg", &[]), None);
    }
}
