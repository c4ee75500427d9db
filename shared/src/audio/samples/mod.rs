//! Small files of each container, valid and broken, built byte by byte: the
//! samples the container checks are tested on, and what tests upload when
//! they need a recording of a given shape. The valid ones are real files a
//! decoder plays (silence, or a short tone in the WAV), except the Vorbis
//! one, whose setup header is a stand-in: its structure is right, its codec
//! setup is not (`tests/fixtures/audio/vorbis.ogg` is a real one).

mod mp4;

pub use mp4::{Mp4, mp4};

use super::build_wav;
use super::flac::crc8;
use super::ogg::crc;

/// A 0.1 s 16 kHz mono PCM WAV of a soft tone.
#[must_use]
pub fn wav() -> Vec<u8> {
    let samples: Vec<i16> = (0..1_600)
        .map(|i| (f64::from(i) * 0.1).sin().mul_add(2_000.0, 0.0) as i16)
        .collect();
    build_wav(16_000, &samples, None)
}

/// A RIFF/WAVE header with a zero-length `fmt ` chunk and no `data`.
#[must_use]
pub fn wav_zero_fmt() -> Vec<u8> {
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&12u32.to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&0u32.to_le_bytes());
    out
}

/// A WAV with a sane `fmt ` chunk and no `data` chunk.
#[must_use]
pub fn wav_without_data() -> Vec<u8> {
    let mut out = wav();
    out.truncate(36);
    out[4..8].copy_from_slice(&28u32.to_le_bytes());
    out
}

/// A WAV whose 16-byte `fmt ` says `tag`, `channels`, `rate`, `block_align`
/// and `bits`, with `data_len` bytes of silence.
#[must_use]
pub fn wav_with(
    tag: u16,
    channels: u16,
    rate: u32,
    block_align: u16,
    bits: u16,
    data_len: usize,
) -> Vec<u8> {
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(36 + data_len as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * u32::from(block_align)).to_le_bytes());
    out.extend_from_slice(&block_align.to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data_len as u32).to_le_bytes());
    out.resize(out.len() + data_len, 0);
    out
}

// --- WebM -----------------------------------------------------------------

/// An EBML element with a known size.
fn el(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = id_bytes(id);
    let len = body.len() as u64;
    if len < 0x7F {
        out.push(0x80 | len as u8);
    } else if len < 0x3FFF {
        out.extend_from_slice(&(0x4000 | len as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&(0x1000_0000 | len as u32).to_be_bytes());
    }
    out.extend_from_slice(body);
    out
}

/// The head of an element of unknown size (as live recorders write it).
fn el_unknown(id: u32) -> Vec<u8> {
    let mut out = id_bytes(id);
    out.extend_from_slice(&[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    out
}

fn id_bytes(id: u32) -> Vec<u8> {
    let bytes = id.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

fn el_uint(id: u32, value: u64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(7);
    el(id, &bytes[skip..])
}

/// A mono 48 kHz Opus `OpusHead`.
fn opus_head() -> Vec<u8> {
    let mut out = b"OpusHead".to_vec();
    out.extend_from_slice(&[1, 1]);
    out.extend_from_slice(&312u16.to_le_bytes());
    out.extend_from_slice(&48_000u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0]);
    out
}

/// A 20 ms Opus packet of silence (CELT fullband, mono).
const OPUS_SILENCE: [u8; 3] = [0xF8, 0xFF, 0xFE];

/// The EBML header and the start of an unknown-size Segment with its Info
/// and one track of `track_type` (2: audio, 1: video).
fn webm_head(track_type: u64) -> Vec<u8> {
    let header = [
        el_uint(0x4286, 1),
        el_uint(0x42F7, 1),
        el_uint(0x42F2, 4),
        el_uint(0x42F3, 8),
        el(0x4282, b"webm"),
        el_uint(0x4287, 4),
        el_uint(0x4285, 2),
    ]
    .concat();
    let info = [
        el_uint(0x2A_D7B1, 1_000_000),
        el(0x4D80, b"rose"),
        el(0x5741, b"rose"),
    ]
    .concat();
    let (codec, private, settings): (&[u8], Vec<u8>, Vec<u8>) = if track_type == 2 {
        let audio = [el(0xB5, &48_000f64.to_be_bytes()), el_uint(0x9F, 1)].concat();
        (b"A_OPUS", el(0x63A2, &opus_head()), el(0xE1, &audio))
    } else {
        let video = [el_uint(0xB0, 16), el_uint(0xBA, 16)].concat();
        (b"V_VP8", Vec::new(), el(0xE0, &video))
    };
    let entry = [
        el_uint(0xD7, 1),
        el_uint(0x73C5, 1),
        el_uint(0x83, track_type),
        el(0x86, codec),
        private,
        settings,
    ]
    .concat();
    [
        el(0x1A45_DFA3, &header),
        el_unknown(0x1853_8067),
        el(0x1549_A966, &info),
        el(0x1654_AE6B, &el(0xAE, &entry)),
    ]
    .concat()
}

/// A WebM like Chrome's MediaRecorder writes: unknown-size Segment and
/// Cluster, one Opus track, `blocks` SimpleBlocks of 20 ms, no Cues.
#[must_use]
pub fn webm_with(track_type: u64, blocks: usize) -> Vec<u8> {
    let mut out = webm_head(track_type);
    if blocks > 0 {
        out.extend(el_unknown(0x1F43_B675));
        out.extend(el_uint(0xE7, 0));
        for i in 0..blocks {
            let mut block = vec![0x81];
            block.extend_from_slice(&((i * 20) as u16).to_be_bytes());
            block.push(0x80);
            block.extend_from_slice(&OPUS_SILENCE);
            out.extend(el(0xA3, &block));
        }
    }
    out
}

/// A Chrome-style WebM with 10 blocks (0.2 s of Opus silence).
#[must_use]
pub fn webm() -> Vec<u8> {
    webm_with(2, 10)
}

/// A 600-byte WebM with an audio track and no frames: header, Segment,
/// Info, Tracks, then a Void element.
#[must_use]
pub fn webm_without_frames() -> Vec<u8> {
    let mut out = webm_head(2);
    let pad = 600 - out.len() - 3;
    out.push(0xEC);
    out.extend_from_slice(&(0x4000 | pad as u16).to_be_bytes());
    out.resize(600, 0);
    out
}

// --- Ogg ------------------------------------------------------------------

/// Ogg pages of one logical stream, one packet a page, the first flagged
/// beginning-of-stream and the last end-of-stream.
#[must_use]
pub fn ogg(packets: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, packet) in packets.iter().enumerate() {
        let mut flags = 0;
        if i == 0 {
            flags |= 0x02;
        }
        if i + 1 == packets.len() {
            flags |= 0x04;
        }
        let mut lacing = vec![255u8; packet.len() / 255];
        lacing.push((packet.len() % 255) as u8);
        let mut page = b"OggS\0".to_vec();
        page.push(flags);
        page.extend_from_slice(&(i as u64 * 960).to_le_bytes());
        page.extend_from_slice(&0x524F_5345u32.to_le_bytes());
        page.extend_from_slice(&(i as u32).to_le_bytes());
        page.extend_from_slice(&[0; 4]);
        page.push(lacing.len() as u8);
        page.extend_from_slice(&lacing);
        page.extend_from_slice(packet);
        let sum = crc(&page);
        page[22..26].copy_from_slice(&sum.to_le_bytes());
        out.extend(page);
    }
    out
}

/// Ogg/Opus as Firefox records it: `OpusHead`, `OpusTags`, then
/// `audio` packets of 20 ms silence.
#[must_use]
pub fn ogg_opus(audio: usize) -> Vec<u8> {
    let mut tags = b"OpusTags".to_vec();
    tags.extend_from_slice(&4u32.to_le_bytes());
    tags.extend_from_slice(b"rose");
    tags.extend_from_slice(&0u32.to_le_bytes());
    let mut packets = vec![opus_head(), tags];
    packets.extend(std::iter::repeat_n(OPUS_SILENCE.to_vec(), audio));
    ogg(&packets)
}

/// Ogg/Vorbis's three headers (identification, comment, a stand-in setup
/// that a decoder would refuse) and `audio` packets.
#[must_use]
pub fn ogg_vorbis(audio: usize) -> Vec<u8> {
    let mut id = b"\x01vorbis".to_vec();
    id.extend_from_slice(&0u32.to_le_bytes());
    id.push(1);
    id.extend_from_slice(&16_000u32.to_le_bytes());
    id.extend_from_slice(&[0; 12]);
    id.extend_from_slice(&[0xB8, 1]);
    let mut comment = b"\x03vorbis".to_vec();
    comment.extend_from_slice(&4u32.to_le_bytes());
    comment.extend_from_slice(b"rose");
    comment.extend_from_slice(&0u32.to_le_bytes());
    comment.push(1);
    let setup = b"\x05vorbis\x00".to_vec();
    let mut packets = vec![id, comment, setup];
    packets.extend(std::iter::repeat_n(vec![0x00, 0x00], audio));
    ogg(&packets)
}

/// FLAC-in-Ogg: the mapping header with STREAMINFO, a comment block, then
/// `audio` FLAC frames.
#[must_use]
pub fn ogg_flac(audio: usize) -> Vec<u8> {
    let mut head = b"\x7fFLAC\x01\x00".to_vec();
    head.extend_from_slice(&1u16.to_be_bytes());
    head.extend_from_slice(b"fLaC");
    head.extend_from_slice(&[0x00, 0, 0, 34]);
    head.extend_from_slice(&stream_info());
    // A last VORBIS_COMMENT block: vendor "rose", no comments.
    let comment = vec![
        0x84, 0, 0, 12, 4, 0, 0, 0, b'r', b'o', b's', b'e', 0, 0, 0, 0,
    ];
    let mut packets = vec![head, comment];
    packets.extend(std::iter::repeat_n(flac_frame(0), audio));
    ogg(&packets)
}

/// Ogg/Speex: the 80-byte header, a comment, then `audio` packets.
#[must_use]
pub fn ogg_speex(audio: usize) -> Vec<u8> {
    let mut head = b"Speex   ".to_vec();
    let mut version = b"1.2".to_vec();
    version.resize(20, 0);
    head.extend(version);
    for value in [1u32, 80, 16_000, 1, 4, 1, u32::MAX, 320, 0, 1, 0, 0, 0] {
        head.extend_from_slice(&value.to_le_bytes());
    }
    let mut comment = 4u32.to_le_bytes().to_vec();
    comment.extend_from_slice(b"rose");
    comment.extend_from_slice(&0u32.to_le_bytes());
    let mut packets = vec![head, comment];
    packets.extend(std::iter::repeat_n(vec![0x1D; 10], audio));
    ogg(&packets)
}

// --- MP3 ------------------------------------------------------------------

/// One silent MPEG-1 layer III frame, 128 kbps, 44.1 kHz, mono: 417 bytes.
#[must_use]
pub fn mp3_frame() -> Vec<u8> {
    let mut frame = vec![0xFF, 0xFB, 0x90, 0xC4];
    frame.resize(417, 0);
    frame
}

/// `frames` silent MP3 frames after an ID3v2 tag.
#[must_use]
pub fn mp3(frames: usize) -> Vec<u8> {
    let mut out = b"ID3\x04\x00\x00\x00\x00\x00\x0a".to_vec();
    out.extend_from_slice(&[0; 10]);
    for _ in 0..frames {
        out.extend(mp3_frame());
    }
    out
}

// --- FLAC -----------------------------------------------------------------

/// STREAMINFO: 16-sample blocks, 16 kHz, mono, 16 bits, 16 samples.
fn stream_info() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&16u16.to_be_bytes());
    out.extend_from_slice(&16u16.to_be_bytes());
    out.extend_from_slice(&[0; 6]);
    // 20 bits rate, 3 bits channels - 1, 5 bits bits - 1, 36 bits samples.
    let packed: u64 = (16_000u64 << 44) | (15u64 << 36) | 16;
    out.extend_from_slice(&packed.to_be_bytes());
    out.extend_from_slice(&[0; 16]);
    out
}

/// A FLAC frame of 16 silent samples (a CONSTANT subframe), numbered `n` (< 128).
fn flac_frame(n: u8) -> Vec<u8> {
    // Sync, fixed blocking; 8-bit block size follows, 16 kHz; mono, 16 bits.
    let mut frame = vec![0xFF, 0xF8, 0x65, 0x08, n, 15];
    frame.push(crc8(&frame));
    frame.extend_from_slice(&[0x00, 0x00, 0x00]);
    let sum = crc16(&frame);
    frame.extend_from_slice(&sum.to_be_bytes());
    frame
}

/// FLAC's frame CRC-16 (polynomial 0x8005, initial 0).
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &byte| {
        let mut crc = crc ^ (u16::from(byte) << 8);
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x8005
            } else {
                crc << 1
            };
        }
        crc
    })
}

/// A native FLAC file: `fLaC`, STREAMINFO, then `frames` frames.
#[must_use]
pub fn flac(frames: usize) -> Vec<u8> {
    let mut out = b"fLaC".to_vec();
    out.extend_from_slice(&[0x80, 0, 0, 34]);
    out.extend(stream_info());
    for n in 0..frames {
        out.extend(flac_frame((n % 128) as u8));
    }
    out
}
