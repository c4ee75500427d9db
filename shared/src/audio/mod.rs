//! Audio container detection by magic bytes, the check that a container
//! really holds decodable audio, and the WAV facts Rose reads.
//!
//! Uploads are accepted when their first bytes name one of the containers the
//! speech-to-text providers take (WAV, WebM, Ogg, MP3, FLAC, MP4/M4A); the
//! declared `Content-Type` and file name are never trusted. [`sniff`] only
//! reads the magic; [`check`] then walks the container's structure as a
//! demuxer would, far enough to see at least one audio frame or packet, and
//! says why when there is none. It never decodes: a file that passes can
//! still hold silence, and a codec bitstream is not verified beyond its
//! headers. The walk skips elements by their sizes and stops at the first
//! audio it finds, so its cost follows the number of elements before that
//! audio, not the number of bytes.
//!
//! One module per container: `wav`, `ebml` (WebM/Matroska), `ogg`,
//! `mpeg` (MP3), `flac`, `mp4`; [`samples`] builds small valid and
//! broken files of each for tests.

mod ebml;
mod flac;
pub mod join;
mod mp4;
mod mpeg;
mod ogg;
pub mod samples;
mod wav;

/// An audio container Rose accepts, told from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioFormat {
    Wav,
    WebM,
    Ogg,
    Mp3,
    Flac,
    Mp4,
}

impl AudioFormat {
    /// The MIME type to store and serve the bytes with.
    #[must_use]
    pub fn mime(self) -> &'static str {
        match self {
            Self::Wav => "audio/wav",
            Self::WebM => "audio/webm",
            Self::Ogg => "audio/ogg",
            Self::Mp3 => "audio/mpeg",
            Self::Flac => "audio/flac",
            Self::Mp4 => "audio/mp4",
        }
    }

    /// A file extension providers recognise (they look at the upload's name).
    #[must_use]
    pub fn extension(self) -> &'static str {
        match self {
            Self::Wav => "wav",
            Self::WebM => "webm",
            Self::Ogg => "ogg",
            Self::Mp3 => "mp3",
            Self::Flac => "flac",
            Self::Mp4 => "m4a",
        }
    }

    /// The short name used in logs and error messages.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Wav => "wav",
            Self::WebM => "webm",
            Self::Ogg => "ogg",
            Self::Mp3 => "mp3",
            Self::Flac => "flac",
            Self::Mp4 => "mp4",
        }
    }
}

/// Tells the container from the first bytes, or `None` when it is none Rose accepts.
#[must_use]
pub fn sniff(bytes: &[u8]) -> Option<AudioFormat> {
    if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WAVE" {
        return Some(AudioFormat::Wav);
    }
    if bytes.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        return Some(AudioFormat::WebM);
    }
    if bytes.starts_with(b"OggS") {
        return Some(AudioFormat::Ogg);
    }
    if bytes.starts_with(b"fLaC") {
        return Some(AudioFormat::Flac);
    }
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return Some(AudioFormat::Mp4);
    }
    if bytes.starts_with(b"ID3") || is_mpeg_audio_frame(bytes) {
        return Some(AudioFormat::Mp3);
    }
    None
}

/// Why an upload is not audio Rose can send on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudioError {
    /// The first bytes name none of the accepted containers.
    #[error("the audio is not WAV, WebM, Ogg, MP3, FLAC or MP4/M4A")]
    UnknownContainer,
    /// A known container with no decodable audio in it.
    #[error("the {} file holds no decodable audio: {reason}", .format.name())]
    Undecodable {
        /// The container its magic bytes named.
        format: AudioFormat,
        /// What is missing or impossible, in words (no audio bytes).
        reason: String,
    },
}

/// What a container check found wrong (the reason of [`AudioError::Undecodable`]).
type Verdict = Result<(), String>;

/// Tells the container from its magic bytes and checks that it holds at
/// least one decodable audio frame: a sane WAV `fmt ` and a `data` chunk
/// with a whole frame, a WebM audio track with a block, an Ogg audio stream
/// with a packet past its headers, chaining MPEG audio frames, a FLAC
/// STREAMINFO and frame, an MP4 sound track with media bytes.
///
/// # Errors
/// [`AudioError::UnknownContainer`] when the magic is none Rose accepts,
/// [`AudioError::Undecodable`] when the container holds no audio a decoder
/// could play (a provider would refuse it too).
pub fn check(bytes: &[u8]) -> Result<AudioFormat, AudioError> {
    let format = sniff(bytes).ok_or(AudioError::UnknownContainer)?;
    let verdict = match format {
        AudioFormat::Wav => wav::check(bytes),
        AudioFormat::WebM => ebml::check(bytes),
        AudioFormat::Ogg => ogg::check(bytes),
        AudioFormat::Mp3 => mpeg::check(bytes),
        AudioFormat::Flac => flac::check(bytes),
        AudioFormat::Mp4 => mp4::check(bytes),
    };
    verdict
        .map(|()| format)
        .map_err(|reason| AudioError::Undecodable { format, reason })
}

/// An MPEG audio frame header: 11 sync bits, a valid version, layer,
/// bitrate and sample-rate index.
fn is_mpeg_audio_frame(bytes: &[u8]) -> bool {
    let [b0, b1, b2, ..] = bytes else {
        return false;
    };
    let sync = *b0 == 0xFF && (b1 & 0xE0) == 0xE0;
    let version_ok = (b1 >> 3) & 0b11 != 0b01;
    let layer_ok = (b1 >> 1) & 0b11 != 0b00;
    let bitrate_ok = (b2 >> 4) != 0b1111;
    let rate_ok = (b2 >> 2) & 0b11 != 0b11;
    sync && version_ok && layer_ok && bitrate_ok && rate_ok
}

/// Facts from a RIFF/WAVE file's chunks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WavInfo {
    /// Duration in seconds, from the `fmt ` byte rate and the `data` size.
    pub duration_secs: Option<f64>,
    /// The `LIST`/`INFO` chunk's `ICMT` comment, when present.
    pub comment: Option<String>,
}

/// Walks a WAV file's chunks; `None` when the bytes are not RIFF/WAVE.
#[must_use]
pub fn wav_info(bytes: &[u8]) -> Option<WavInfo> {
    if sniff(bytes) != Some(AudioFormat::Wav) {
        return None;
    }
    let mut info = WavInfo::default();
    let mut byte_rate: Option<u32> = None;
    let mut data_len: Option<usize> = None;
    let mut pos = 12;
    while let Some((id, body, next)) = chunk_at(bytes, pos) {
        match id {
            b"fmt " if body.len() >= 12 => {
                byte_rate = Some(u32::from_le_bytes([body[8], body[9], body[10], body[11]]));
            }
            b"data" => data_len = Some(body.len()),
            b"LIST" if body.len() >= 4 && &body[0..4] == b"INFO" => {
                let mut sub = 4;
                while let Some((sid, sbody, snext)) = chunk_at(body, sub) {
                    if sid == b"ICMT" {
                        let text = String::from_utf8_lossy(sbody);
                        let text = text.trim_end_matches('\0').trim();
                        if !text.is_empty() {
                            info.comment = Some(text.to_owned());
                        }
                    }
                    sub = snext;
                }
            }
            _ => {}
        }
        pos = next;
    }
    if let (Some(rate), Some(len)) = (byte_rate, data_len)
        && rate > 0
    {
        info.duration_secs = Some(len as f64 / f64::from(rate));
    }
    Some(info)
}

/// The chunk at `pos`: its id, its body (clamped to the buffer) and the next chunk's offset.
fn chunk_at(bytes: &[u8], pos: usize) -> Option<(&[u8; 4], &[u8], usize)> {
    let header = bytes.get(pos..pos.checked_add(8)?)?;
    let id: &[u8; 4] = header[0..4].try_into().ok()?;
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let start = pos + 8;
    let end = start.saturating_add(len).min(bytes.len());
    // Chunks are padded to an even length.
    let next = start.saturating_add(len).saturating_add(len & 1);
    Some((id, &bytes[start..end], next))
}

/// Builds a 16-bit mono PCM WAV around `samples`, with an optional `ICMT` comment.
///
/// Used by tests and the simulator to make real, decodable files.
#[must_use]
pub fn build_wav(sample_rate: u32, samples: &[i16], comment: Option<&str>) -> Vec<u8> {
    let mut data = Vec::with_capacity(samples.len() * 2);
    for s in samples {
        data.extend_from_slice(&s.to_le_bytes());
    }
    let mut list = Vec::new();
    if let Some(text) = comment {
        let mut value = text.as_bytes().to_vec();
        value.push(0);
        list.extend_from_slice(b"INFO");
        list.extend_from_slice(b"ICMT");
        list.extend_from_slice(&(value.len() as u32).to_le_bytes());
        list.extend_from_slice(&value);
        if value.len() % 2 == 1 {
            list.push(0);
        }
    }
    let mut out = Vec::with_capacity(44 + data.len() + list.len() + 8);
    out.extend_from_slice(b"RIFF");
    let riff_len =
        4 + (8 + 16) + (8 + data.len()) + if list.is_empty() { 0 } else { 8 + list.len() };
    out.extend_from_slice(&(riff_len as u32).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    if !list.is_empty() {
        out.extend_from_slice(b"LIST");
        out.extend_from_slice(&(list.len() as u32).to_le_bytes());
        out.extend_from_slice(&list);
    }
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out
}

#[cfg(test)]
mod tests;
