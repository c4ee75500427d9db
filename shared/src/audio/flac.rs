//! FLAC: `fLaC`, a STREAMINFO block first with sane values, the metadata
//! blocks to the one flagged last, then a frame: a sync code and a header
//! whose reserved values are unused and whose CRC-8 matches.
//!
//! The first frame is looked for where the metadata ends, and in the next
//! [`RESYNC`] bytes if a writer left something there.

use super::Verdict;

/// How far past the metadata a first frame is looked for.
const RESYNC: usize = 4096;

pub(super) fn check(bytes: &[u8]) -> Verdict {
    let mut pos = 4;
    let mut first = true;
    loop {
        let header = bytes
            .get(pos..pos + 4)
            .ok_or("the metadata blocks are cut short")?;
        let last = header[0] & 0x80 != 0;
        let kind = header[0] & 0x7F;
        let len =
            usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
        let body = bytes
            .get(pos + 4..pos + 4 + len)
            .ok_or("the metadata blocks are cut short")?;
        if first {
            if kind != 0 || len != 34 {
                return Err("the first metadata block is not a 34-byte STREAMINFO".to_owned());
            }
            stream_info(body)?;
            first = false;
        } else if kind == 0 || kind == 127 {
            return Err(format!("a metadata block of type {kind}"));
        }
        pos += 4 + len;
        if last {
            break;
        }
    }
    let window_end = pos.saturating_add(RESYNC).min(bytes.len());
    if (pos..window_end).any(|at| frame_header(&bytes[at..])) {
        Ok(())
    } else {
        Err("there is no audio frame after the metadata".to_owned())
    }
}

fn stream_info(body: &[u8]) -> Verdict {
    let min_block = u16::from_be_bytes([body[0], body[1]]);
    let max_block = u16::from_be_bytes([body[2], body[3]]);
    let rate = u32::from(body[10]) << 12 | u32::from(body[11]) << 4 | u32::from(body[12]) >> 4;
    let bits = ((body[12] & 1) << 4 | body[13] >> 4) + 1;
    if min_block < 16 || max_block < min_block {
        return Err(format!(
            "STREAMINFO block sizes {min_block}..{max_block} are impossible"
        ));
    }
    if rate == 0 || rate > 655_350 {
        return Err(format!("STREAMINFO says {rate} Hz"));
    }
    if bits < 4 {
        return Err(format!("STREAMINFO says {bits} bits per sample"));
    }
    Ok(())
}

/// A frame header at the start of `bytes`: sync, valid codes, matching CRC-8.
fn frame_header(bytes: &[u8]) -> bool {
    let [b0, b1, b2, b3, ..] = *bytes else {
        return false;
    };
    // 14 sync bits, a reserved 0, the blocking strategy.
    if b0 != 0xFF || b1 & 0xFE != 0xF8 {
        return false;
    }
    let block_code = b2 >> 4;
    let rate_code = b2 & 0x0F;
    let channels = b3 >> 4;
    let sample_size = (b3 >> 1) & 0b111;
    if block_code == 0
        || rate_code == 0x0F
        || channels > 0b1010
        || sample_size == 0b011
        || b3 & 1 != 0
    {
        return false;
    }
    // The frame or sample number, UTF-8 style: 1 to 7 bytes.
    let Some(&lead) = bytes.get(4) else {
        return false;
    };
    let extra = match lead.leading_ones() {
        0 => 0,
        n @ 2..=7 => n as usize - 1,
        _ => return false,
    };
    let mut len = 5 + extra;
    match bytes.get(5..len) {
        Some(rest) if rest.iter().all(|b| b & 0xC0 == 0x80) => {}
        _ => return false,
    }
    len += match block_code {
        6 => 1,
        7 => 2,
        _ => 0,
    };
    len += match rate_code {
        12 => 1,
        13 | 14 => 2,
        _ => 0,
    };
    match (bytes.get(..len), bytes.get(len)) {
        (Some(header), Some(&sum)) => crc8(header) == sum,
        _ => false,
    }
}

/// CRC-8, polynomial 0x07, initial 0.
pub(super) fn crc8(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |crc, &byte| {
        let mut crc = crc ^ byte;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
        crc
    })
}
