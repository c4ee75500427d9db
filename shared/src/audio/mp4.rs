//! MP4 / M4A (ISO base media): an `ftyp` box, a `moov` with a `trak` whose
//! `mdia/hdlr` handler is `soun`, and an `mdat` with media bytes in it.
//!
//! Boxes may come in any order (`moov` after `mdat` when a file was not
//! "fast-started"). A fragmented file — Safari's and Chrome's MediaRecorder
//! write one: a `moov` whose sample tables are empty and an `mvex`, then
//! `moof`/`mdat` pairs — passes the same way: its sound track is declared in
//! `moov` and its media are in the `mdat`s.

use super::Verdict;

/// The boxes in `bytes`: type and body (clamped to the buffer). Stops at a
/// box whose size is impossible.
fn boxes(bytes: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    let mut pos: usize = 0;
    std::iter::from_fn(move || {
        let header = bytes.get(pos..pos.checked_add(8)?)?;
        let kind: [u8; 4] = [header[4], header[5], header[6], header[7]];
        let (size, header_len) =
            match u32::from_be_bytes([header[0], header[1], header[2], header[3]]) {
                // Extends to the end of the file.
                0 => (bytes.len() - pos, 8),
                1 => {
                    let large = bytes.get(pos + 8..pos + 16)?;
                    let large = u64::from_be_bytes(large.try_into().ok()?);
                    (usize::try_from(large).unwrap_or(usize::MAX), 16)
                }
                n => (n as usize, 8),
            };
        if size < header_len {
            return None;
        }
        let end = pos.saturating_add(size).min(bytes.len());
        let body = bytes.get(pos + header_len..end).unwrap_or_default();
        pos = pos.saturating_add(size);
        Some((kind, body))
    })
}

pub(super) fn check(bytes: &[u8]) -> Verdict {
    let mut moov = false;
    let mut sound = false;
    let mut media = false;
    for (kind, body) in boxes(bytes) {
        match &kind {
            b"moov" => {
                moov = true;
                sound |= has_sound_track(body);
            }
            b"mdat" => media |= !body.is_empty(),
            _ => {}
        }
        if sound && media {
            return Ok(());
        }
    }
    let why = if !moov {
        "there is no `moov` box (the file's index is missing)"
    } else if !sound {
        "no track is a sound track (a `trak` with a `soun` handler)"
    } else {
        "there is no `mdat` box with media in it"
    };
    Err(why.to_owned())
}

fn has_sound_track(moov: &[u8]) -> bool {
    boxes(moov).any(|(kind, trak)| {
        &kind == b"trak"
            && boxes(trak).any(|(kind, mdia)| {
                &kind == b"mdia"
                    && boxes(mdia).any(|(kind, hdlr)| {
                        // Full box: version and flags, pre_defined, then the handler type.
                        &kind == b"hdlr" && hdlr.get(8..12) == Some(b"soun".as_slice())
                    })
            })
    })
}
