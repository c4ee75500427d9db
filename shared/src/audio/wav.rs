//! RIFF/WAVE: a `fmt ` chunk a decoder can use and a `data` chunk with at
//! least one whole frame (block).
//!
//! Chunks may come in any order and unknown ones are skipped. A `data` size
//! of 0 with bytes after it is read as "until the end of the file", as
//! streaming writers leave it and demuxers take it; a size past the end is
//! clamped (a cut recording still plays up to the cut).

use super::Verdict;

/// The codecs a WAV may name, with the bits per sample each allows
/// (`None`: any, for compressed formats whose field is 0 or nominal).
const CODECS: [(u16, &str, Option<&[u16]>); 9] = [
    (0x0001, "PCM", None),
    (0x0002, "MS ADPCM", Some(&[4])),
    (0x0003, "IEEE float", Some(&[32, 64])),
    (0x0006, "A-law", Some(&[8])),
    (0x0007, "µ-law", Some(&[8])),
    (0x0011, "IMA ADPCM", Some(&[4])),
    (0x0031, "GSM 6.10", None),
    (0x0050, "MPEG", None),
    (0x0055, "MPEG layer 3", None),
];
const EXTENSIBLE: u16 = 0xFFFE;
/// Sample rates a recording can have (telephone 8 kHz and below, studio 768 kHz).
const RATES: std::ops::RangeInclusive<u32> = 1_000..=768_000;
const MAX_CHANNELS: u16 = 64;

/// The facts of a `fmt ` chunk a decoder needs.
#[derive(Debug)]
struct Fmt {
    block_align: u16,
}

pub(super) fn check(bytes: &[u8]) -> Verdict {
    let mut fmt = None;
    let mut data_len = None;
    let mut pos: usize = 12;
    while let Some(header) = pos.checked_add(8).and_then(|end| bytes.get(pos..end)) {
        let id = &header[0..4];
        let declared = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let start = pos + 8;
        let end = start.saturating_add(declared).min(bytes.len());
        match id {
            b"fmt " if fmt.is_none() => fmt = Some(parse_fmt(&bytes[start..end], declared)?),
            b"data" if data_len.is_none() => {
                data_len = Some(if declared == 0 {
                    bytes.len() - start
                } else {
                    end - start
                });
            }
            _ => {}
        }
        if fmt.is_some() && data_len.is_some() {
            break;
        }
        pos = start.saturating_add(declared).saturating_add(declared & 1);
    }
    let Some(fmt) = fmt else {
        return Err("there is no `fmt ` chunk".to_owned());
    };
    let Some(data_len) = data_len else {
        return Err("there is no `data` chunk".to_owned());
    };
    if data_len < usize::from(fmt.block_align) {
        return Err(format!(
            "the `data` chunk holds {data_len} bytes, less than one {}-byte frame",
            fmt.block_align
        ));
    }
    Ok(())
}

fn parse_fmt(body: &[u8], declared: usize) -> Result<Fmt, String> {
    if declared < 16 || body.len() < 16 {
        return Err(format!(
            "the `fmt ` chunk is {} bytes; it needs at least 16",
            declared.min(body.len())
        ));
    }
    let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
    let mut tag = u16_at(0);
    let channels = u16_at(2);
    let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
    let block_align = u16_at(12);
    let bits = u16_at(14);
    if tag == EXTENSIBLE {
        // cbSize, valid bits, channel mask, then the sub-format GUID whose
        // first two bytes are the real format tag.
        if body.len() < 40 || u16_at(16) < 22 {
            return Err("the extensible `fmt ` chunk is shorter than 40 bytes".to_owned());
        }
        if u16_at(18) > bits {
            return Err(format!(
                "{} valid bits do not fit in {bits}-bit samples",
                u16_at(18)
            ));
        }
        tag = u16_at(24);
    }
    let Some((_, name, allowed_bits)) = CODECS.iter().find(|(t, _, _)| *t == tag) else {
        return Err(format!(
            "the format tag 0x{tag:04x} is no known audio codec"
        ));
    };
    if channels == 0 || channels > MAX_CHANNELS {
        return Err(format!("{channels} channels"));
    }
    if !RATES.contains(&rate) {
        return Err(format!("a sample rate of {rate} Hz"));
    }
    if let Some(allowed) = allowed_bits
        && !allowed.contains(&bits)
    {
        return Err(format!("{name} with {bits} bits per sample"));
    }
    if block_align == 0 {
        return Err("a block alignment of 0 bytes".to_owned());
    }
    // Uncompressed samples fill whole bytes: one frame is a sample per channel.
    if matches!(tag, 0x0001 | 0x0003 | 0x0006 | 0x0007) {
        if bits == 0 || bits > 64 {
            return Err(format!("{name} with {bits} bits per sample"));
        }
        let frame = u32::from(channels) * u32::from(bits.div_ceil(8));
        if u32::from(block_align) != frame {
            return Err(format!(
                "a block alignment of {block_align} bytes for {channels} channels of {bits}-bit {name} ({frame} expected)"
            ));
        }
    }
    Ok(Fmt { block_align })
}
