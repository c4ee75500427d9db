//! Ogg: pages that start with `OggS`, carry a valid CRC and fit in the file,
//! a logical stream whose first packet names an audio codec (Opus, Vorbis,
//! FLAC-in-Ogg, Speex), and at least one audio packet past that codec's
//! header packets.
//!
//! Packets are reassembled from the pages' lacing values, per stream, but
//! only their first bytes are kept (enough for the codec headers). The walk
//! stops at the first page that is not valid: what follows a broken page is
//! not counted, as a demuxer that cannot resync would not play it.

use super::Verdict;

/// At most this many logical streams are followed.
const MAX_STREAMS: usize = 16;
/// Bytes of each packet kept: the longest header read is Speex's (80).
const KEEP: usize = 96;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Opus,
    Vorbis,
    Flac,
    Speex,
}

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Self::Opus => "Opus",
            Self::Vorbis => "Vorbis",
            Self::Flac => "FLAC",
            Self::Speex => "Speex",
        }
    }
}

/// One logical stream being reassembled.
#[derive(Debug)]
struct Stream {
    serial: u32,
    /// `None` until the first packet is read, or when it names no audio codec.
    codec: Option<Codec>,
    /// Header packets the codec has before audio (`u32::MAX`: unknown yet).
    headers: u32,
    /// Complete packets seen.
    packets: u32,
    /// The packet being reassembled: its length and first bytes.
    partial: usize,
    head: Vec<u8>,
    /// A packet continued from a page this walk never saw is skipped.
    skipping: bool,
}

pub(super) fn check(bytes: &[u8]) -> Verdict {
    let mut streams: Vec<Stream> = Vec::new();
    let mut pos = 0;
    let mut pages = 0u32;
    while pos < bytes.len() {
        let page = match page_at(bytes, pos) {
            Ok(page) => page,
            Err(why) if pages == 0 => return Err(why),
            Err(_) => break,
        };
        pages += 1;
        pos += page.len;
        if page.header_type & 0x02 != 0 && streams.len() < MAX_STREAMS {
            streams.retain(|s| s.serial != page.serial);
            streams.push(Stream {
                serial: page.serial,
                codec: None,
                headers: u32::MAX,
                packets: 0,
                partial: 0,
                head: Vec::new(),
                skipping: false,
            });
        }
        let Some(stream) = streams.iter_mut().find(|s| s.serial == page.serial) else {
            continue;
        };
        if page.header_type & 0x01 == 0 {
            // A fresh packet starts here: anything unfinished was abandoned.
            stream.partial = 0;
            stream.head.clear();
            stream.skipping = false;
        } else if stream.partial == 0 {
            stream.skipping = true;
        }
        let mut offset = 0;
        for &lacing in page.lacing {
            let lacing = usize::from(lacing);
            let piece = &page.body[offset..offset + lacing];
            offset += lacing;
            if !stream.skipping {
                let room = KEEP.saturating_sub(stream.head.len());
                stream
                    .head
                    .extend_from_slice(&piece[..piece.len().min(room)]);
                stream.partial += lacing;
            }
            if lacing < 255 {
                if !stream.skipping && packet(stream)? {
                    return Ok(());
                }
                stream.partial = 0;
                stream.head.clear();
                stream.skipping = false;
            }
        }
    }
    let Some(stream) = streams.iter().find(|s| s.codec.is_some()) else {
        return Err("no stream is Opus, Vorbis, FLAC or Speex audio".to_owned());
    };
    let name = stream.codec.map_or("audio", Codec::name);
    Err(format!(
        "the {name} stream has its headers but no audio packet"
    ))
}

/// Takes one complete packet of `stream`; `Ok(true)` when it is audio.
fn packet(stream: &mut Stream) -> Result<bool, String> {
    let index = stream.packets;
    stream.packets = stream.packets.saturating_add(1);
    if index == 0 {
        identify(stream);
        return Ok(false);
    }
    let head = stream.head.as_slice();
    let Some(codec) = stream.codec else {
        return Ok(false);
    };
    let expected: Option<&[u8]> = match (codec, index) {
        (Codec::Opus, 1) => Some(b"OpusTags"),
        (Codec::Vorbis, 1) => Some(b"\x03vorbis"),
        (Codec::Vorbis, 2) => Some(b"\x05vorbis"),
        _ => None,
    };
    if let Some(magic) = expected
        && !head.starts_with(magic)
    {
        return Err(format!(
            "the {} stream's header packet {index} is missing",
            codec.name()
        ));
    }
    let audio = if stream.headers == u32::MAX {
        // FLAC-in-Ogg that did not count its headers: frames start with a sync code.
        head.len() >= 2 && head[0] == 0xFF && head[1] & 0xFE == 0xF8
    } else {
        index >= stream.headers
    };
    Ok(audio && stream.partial > 0)
}

/// Reads a stream's first packet: which codec, and how many header packets.
fn identify(stream: &mut Stream) {
    let head = stream.head.as_slice();
    let u32_le = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let (codec, headers) = if head.starts_with(b"OpusHead") && stream.partial >= 19 {
        // Version 0.x, at least one channel.
        if head[8] >> 4 != 0 || head[9] == 0 {
            return;
        }
        (Codec::Opus, 2)
    } else if head.starts_with(b"\x01vorbis") && stream.partial >= 30 {
        if u32_le(7) != 0 || head[11] == 0 || u32_le(12) == 0 {
            return;
        }
        (Codec::Vorbis, 3)
    } else if head.starts_with(b"\x7fFLAC") && stream.partial >= 51 && &head[9..13] == b"fLaC" {
        let count = u16::from_be_bytes([head[7], head[8]]);
        let headers = if count == 0 {
            u32::MAX
        } else {
            1 + u32::from(count)
        };
        (Codec::Flac, headers)
    } else if head.starts_with(b"Speex   ") && stream.partial >= 80 {
        // A rate, channels, and the count of extra headers after the comment.
        if u32_le(36) == 0 || u32_le(48) == 0 {
            return;
        }
        let extra = u32_le(68).min(16);
        (Codec::Speex, 2 + extra)
    } else {
        return;
    };
    stream.codec = Some(codec);
    stream.headers = headers;
}

/// One page: its header type, serial, lacing values and body.
struct Page<'a> {
    header_type: u8,
    serial: u32,
    lacing: &'a [u8],
    body: &'a [u8],
    len: usize,
}

fn page_at(bytes: &[u8], pos: usize) -> Result<Page<'_>, String> {
    let rest = &bytes[pos..];
    if rest.len() < 27 || &rest[0..4] != b"OggS" {
        return Err(format!("there is no Ogg page at byte {pos}"));
    }
    if rest[4] != 0 {
        return Err(format!("an Ogg page of version {}", rest[4]));
    }
    let segments = usize::from(rest[26]);
    let lacing = rest
        .get(27..27 + segments)
        .ok_or("an Ogg page is cut short")?;
    let body_len: usize = lacing.iter().map(|l| usize::from(*l)).sum();
    let len = 27 + segments + body_len;
    let page = rest.get(..len).ok_or("an Ogg page is cut short")?;
    let stored = u32::from_le_bytes([page[22], page[23], page[24], page[25]]);
    if crc(page) != stored {
        return Err(format!("the Ogg page at byte {pos} fails its CRC"));
    }
    Ok(Page {
        header_type: page[5],
        serial: u32::from_le_bytes([page[14], page[15], page[16], page[17]]),
        lacing,
        body: &page[27 + segments..],
        len,
    })
}

/// Ogg's CRC-32 (polynomial 0x04C11DB7, not reflected, initial 0) over a
/// page whose CRC field counts as zero.
pub(super) fn crc(page: &[u8]) -> u32 {
    page.iter().enumerate().fold(0u32, |crc, (i, &byte)| {
        let byte = if (22..26).contains(&i) { 0 } else { byte };
        (crc << 8) ^ CRC_TABLE[usize::from((crc >> 24) as u8 ^ byte)]
    })
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            r = if r & 0x8000_0000 != 0 {
                (r << 1) ^ 0x04C1_1DB7
            } else {
                r << 1
            };
            bit += 1;
        }
        table[i] = r;
        i += 1;
    }
    table
};
