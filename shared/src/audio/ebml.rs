//! WebM / Matroska: an EBML header of doc type `webm` or `matroska`, a
//! Segment whose Tracks hold an audio track (TrackType 2), and at least one
//! SimpleBlock or BlockGroup of that track with a frame in it.
//!
//! Browsers record live, so the Segment and each Cluster have an unknown
//! size and there are no Cues: the walk never needs a size for those two.
//! It steps into them instead of over them and reads their children in line
//! (the only elements Matroska lets have an unknown size). A recording cut
//! off mid-block still counts the blocks before the cut.

use super::Verdict;

const EBML: u32 = 0x1A45_DFA3;
const DOC_TYPE: u32 = 0x4282;
const SEGMENT: u32 = 0x1853_8067;
const TRACKS: u32 = 0x1654_AE6B;
const TRACK_ENTRY: u32 = 0xAE;
const TRACK_NUMBER: u32 = 0xD7;
const TRACK_TYPE: u32 = 0x83;
const CODEC_ID: u32 = 0x86;
const CLUSTER: u32 = 0x1F43_B675;
const SIMPLE_BLOCK: u32 = 0xA3;
const BLOCK_GROUP: u32 = 0xA0;
const BLOCK: u32 = 0xA1;
/// TrackType of an audio track.
const AUDIO: u64 = 2;
/// At most this many audio tracks and blocked track numbers are remembered.
const MAX_TRACKS: usize = 64;

/// An element's header: its id (with the length marker, as the spec writes
/// ids), its size (`None`: unknown) and where its body starts.
#[derive(Debug)]
struct Element {
    id: u32,
    size: Option<u64>,
    body: usize,
}

impl Element {
    /// Where the body ends, clamped to `limit`; `None` for an unknown size.
    fn end(&self, limit: usize) -> Option<usize> {
        let size = usize::try_from(self.size?).unwrap_or(usize::MAX);
        Some(self.body.saturating_add(size).min(limit))
    }
}

fn element_at(bytes: &[u8], pos: usize) -> Option<Element> {
    let first = *bytes.get(pos)?;
    let id_len = first.leading_zeros() as usize + 1;
    if id_len > 4 {
        return None;
    }
    let id = bytes
        .get(pos..pos + id_len)?
        .iter()
        .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
    let (size, size_len) = vint(bytes, pos + id_len)?;
    Some(Element {
        id,
        size,
        body: pos + id_len + size_len,
    })
}

/// A variable-size integer at `pos`: its value (`None` when every value bit
/// is set, which means "unknown") and its length in bytes.
fn vint(bytes: &[u8], pos: usize) -> Option<(Option<u64>, usize)> {
    let first = *bytes.get(pos)?;
    if first == 0 {
        return None;
    }
    let len = first.leading_zeros() as usize + 1;
    let rest = bytes.get(pos + 1..pos + len)?;
    let first_bits = u64::from(first) & (0xFF >> len);
    let value = rest
        .iter()
        .fold(first_bits, |acc, b| (acc << 8) | u64::from(*b));
    let unknown = (1u64 << (7 * len)) - 1;
    Some(((value != unknown).then_some(value), len))
}

fn uint(body: &[u8]) -> Option<u64> {
    (body.len() <= 8).then(|| body.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// The children of a known-size master element, in `[start, end)`.
fn children(bytes: &[u8], start: usize, end: usize) -> impl Iterator<Item = (u32, &[u8])> {
    let mut pos = start;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let element = element_at(bytes, pos)?;
        let child_end = element.end(end)?;
        let body = bytes.get(element.body..child_end)?;
        pos = child_end;
        Some((element.id, body))
    })
}

pub(super) fn check(bytes: &[u8]) -> Verdict {
    let header = element_at(bytes, 0)
        .filter(|e| e.id == EBML)
        .ok_or("the EBML header is unreadable")?;
    let header_end = header
        .end(usize::MAX)
        .ok_or("the EBML header has an unknown size")?;
    if header_end > bytes.len() {
        return Err("the EBML header is cut short".to_owned());
    }
    let doc_type = children(bytes, header.body, header_end)
        .find(|(id, _)| *id == DOC_TYPE)
        .map_or(b"matroska".as_slice(), |(_, body)| body);
    let doc_type = String::from_utf8_lossy(doc_type);
    let doc_type = doc_type.trim_end_matches('\0');
    if doc_type != "webm" && doc_type != "matroska" {
        return Err(format!(
            "the EBML document type is {doc_type:?}, not webm or matroska"
        ));
    }
    let mut pos = header_end;
    let segment = loop {
        let element = element_at(bytes, pos).ok_or("there is no Segment")?;
        if element.id == SEGMENT {
            break element;
        }
        pos = element.end(bytes.len()).ok_or("there is no Segment")?;
    };
    segment_audio(bytes, &segment)
}

/// Walks a Segment until a block of an audio track is found.
fn segment_audio(bytes: &[u8], segment: &Element) -> Verdict {
    let end = segment.end(bytes.len()).unwrap_or(bytes.len());
    let mut audio_tracks: Vec<u64> = Vec::new();
    let mut blocked: Vec<u64> = Vec::new();
    let mut saw_tracks = false;
    let mut pos = segment.body;
    while pos < end {
        let Some(element) = element_at(bytes, pos) else {
            break;
        };
        let element_end = element.end(end);
        let body = |element_end: Option<usize>| {
            element_end
                .and_then(|e| bytes.get(element.body..e))
                .unwrap_or_default()
        };
        match element.id {
            CLUSTER => {
                // Its children follow in line, whether its size is known or not.
                pos = element.body;
                continue;
            }
            TRACKS => {
                let tracks_end = element_end.ok_or("the Tracks element has an unknown size")?;
                saw_tracks = true;
                for (id, entry) in children(bytes, element.body, tracks_end) {
                    if id == TRACK_ENTRY
                        && let Some(number) = audio_track(entry)
                        && audio_tracks.len() < MAX_TRACKS
                    {
                        audio_tracks.push(number);
                    }
                }
            }
            SIMPLE_BLOCK => note(&mut blocked, block_track(body(element_end))),
            BLOCK_GROUP => {
                let group = body(element_end);
                for (id, block) in children(group, 0, group.len()) {
                    if id == BLOCK {
                        note(&mut blocked, block_track(block));
                    }
                }
            }
            _ => {}
        }
        if blocked.iter().any(|t| audio_tracks.contains(t)) {
            return Ok(());
        }
        // Past an element of unknown size there is no telling where the next starts.
        let Some(next) = element_end else {
            break;
        };
        pos = next;
    }
    if !saw_tracks {
        Err("there is no Tracks element".to_owned())
    } else if audio_tracks.is_empty() {
        Err("no track is an audio track".to_owned())
    } else if blocked.is_empty() {
        Err("the audio track has no frames (no SimpleBlock or BlockGroup)".to_owned())
    } else {
        Err("no block belongs to the audio track".to_owned())
    }
}

fn note(blocked: &mut Vec<u64>, track: Option<u64>) {
    if let Some(track) = track
        && !blocked.contains(&track)
        && blocked.len() < MAX_TRACKS
    {
        blocked.push(track);
    }
}

/// The number of a TrackEntry that is an audio track with a codec.
fn audio_track(entry: &[u8]) -> Option<u64> {
    let mut number = None;
    let mut kind = None;
    let mut codec = false;
    for (id, body) in children(entry, 0, entry.len()) {
        match id {
            TRACK_NUMBER => number = uint(body),
            TRACK_TYPE => kind = uint(body),
            CODEC_ID => codec = !body.iter().all(|b| *b == 0),
            _ => {}
        }
    }
    number.filter(|n| *n > 0 && kind == Some(AUDIO) && codec)
}

/// The track of a (Simple)Block with at least one byte of frame data:
/// track number, a 16-bit timecode, flags, then the frame(s).
fn block_track(body: &[u8]) -> Option<u64> {
    let (track, len) = vint(body, 0)?;
    (body.len() > len + 3).then_some(track).flatten()
}
