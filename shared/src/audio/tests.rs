use super::*;

#[test]
fn sniffs_every_accepted_container() {
    let wav = build_wav(16_000, &[0; 160], None);
    assert_eq!(sniff(&wav), Some(AudioFormat::Wav));
    assert_eq!(
        sniff(&[0x1A, 0x45, 0xDF, 0xA3, 0x01]),
        Some(AudioFormat::WebM)
    );
    assert_eq!(sniff(b"OggS\0\x02rest"), Some(AudioFormat::Ogg));
    assert_eq!(sniff(b"fLaC\0\0\0\x22"), Some(AudioFormat::Flac));
    assert_eq!(sniff(b"\0\0\0\x20ftypM4A \0\0\0\0"), Some(AudioFormat::Mp4));
    assert_eq!(sniff(b"ID3\x04\0\0\0\0\0\0"), Some(AudioFormat::Mp3));
    assert_eq!(sniff(&[0xFF, 0xFB, 0x90, 0x64]), Some(AudioFormat::Mp3));
}

#[test]
fn refuses_other_bytes() {
    assert_eq!(sniff(b""), None);
    assert_eq!(sniff(b"hello, this is text"), None);
    assert_eq!(sniff(b"%PDF-1.7"), None);
    assert_eq!(sniff(b"\x89PNG\r\n\x1a\n"), None);
    // Sync bits with a reserved version are not MPEG audio.
    assert_eq!(sniff(&[0xFF, 0xEA, 0x90, 0x00]), None);
}

#[test]
fn reads_comment_and_duration() {
    let wav = build_wav(8_000, &vec![0; 8_000], Some("I miss my mother"));
    let info = wav_info(&wav).expect("a wav");
    assert_eq!(info.comment.as_deref(), Some("I miss my mother"));
    let secs = info.duration_secs.expect("a duration");
    assert!((secs - 1.0).abs() < 1e-9, "{secs}");
}

#[test]
fn truncated_wav_does_not_panic() {
    let wav = build_wav(8_000, &[1, 2, 3], Some("odd"));
    for cut in 0..wav.len() {
        let _ = wav_info(&wav[..cut]);
    }
}

// --- the container check ----------------------------------------------------

use super::samples::{self, Mp4};

/// Real recordings and encoder outputs (tests/fixtures/audio/README.md).
const FIXTURES: [(&str, &[u8]); 22] = {
    macro_rules! fixture {
        ($name:literal) => {
            (
                $name,
                include_bytes!(concat!("../../../tests/fixtures/audio/", $name)).as_slice(),
            )
        };
    }
    [
        fixture!("chrome.webm"),
        fixture!("chrome-50ms.webm"),
        fixture!("chrome.mp4"),
        fixture!("ffmpeg.webm"),
        fixture!("opus.ogg"),
        fixture!("vorbis.ogg"),
        fixture!("flac.oga"),
        fixture!("speex.ogg"),
        fixture!("lame.mp3"),
        fixture!("noid3.mp3"),
        fixture!("native.flac"),
        fixture!("aac.m4a"),
        fixture!("aac-moov-last.m4a"),
        fixture!("frag.mp4"),
        fixture!("s16.wav"),
        fixture!("f32.wav"),
        fixture!("alaw.wav"),
        fixture!("mulaw.wav"),
        fixture!("ext24.wav"),
        fixture!("msadpcm.wav"),
        fixture!("ima.wav"),
        fixture!("u8.wav"),
    ]
};

const SPOKEN: &[u8] = include_bytes!("../../../tests/fixtures/spoken.wav");

/// Hand-built files that hold audio, by name.
fn valid_samples() -> Vec<(&'static str, Vec<u8>)> {
    let mut streaming = samples::wav();
    // A writer that could not seek back leaves the data size 0.
    streaming[40..44].copy_from_slice(&0u32.to_le_bytes());
    let mut clamped = samples::wav();
    clamped[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
    let chrome = samples::webm();
    vec![
        ("wav", samples::wav()),
        ("wav with comment", build_wav(8_000, &[0; 8], Some("hello"))),
        ("wav u8", samples::wav_with(1, 1, 8_000, 1, 8, 8)),
        ("wav s24 stereo", samples::wav_with(1, 2, 48_000, 6, 24, 60)),
        ("wav float", samples::wav_with(3, 1, 44_100, 4, 32, 40)),
        ("wav a-law", samples::wav_with(6, 1, 8_000, 1, 8, 80)),
        ("wav µ-law", samples::wav_with(7, 1, 8_000, 1, 8, 80)),
        ("wav streaming size", streaming),
        ("wav size past the end", clamped),
        ("webm", chrome.clone()),
        ("webm one block", samples::webm_with(2, 1)),
        ("webm cut mid-block", chrome[..chrome.len() - 2].to_vec()),
        ("ogg opus", samples::ogg_opus(1)),
        ("ogg vorbis", samples::ogg_vorbis(1)),
        ("ogg flac", samples::ogg_flac(1)),
        ("ogg speex", samples::ogg_speex(1)),
        ("mp3", samples::mp3(5)),
        ("mp3 one frame", samples::mp3(1)),
        ("mp3 no tag", samples::mp3_frame().repeat(3)),
        ("mp3 cut short", samples::mp3(3)[..1_000].to_vec()),
        ("mp3 id3v1 tag", [samples::mp3(2), b"TAG".to_vec()].concat()),
        ("flac", samples::flac(2)),
        ("mp4", samples::mp4(Mp4::default())),
        (
            "mp4 fragmented",
            samples::mp4(Mp4 {
                fragmented: true,
                ..Mp4::default()
            }),
        ),
        ("spoken.wav", SPOKEN.to_vec()),
    ]
}

/// Hand-built files of a known container with no audio in them, with a
/// word of the reason each is refused.
fn broken_samples() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let wav = |tag, channels, rate, align, bits, data| {
        samples::wav_with(tag, channels, rate, align, bits, data)
    };
    let mut header_only = samples::wav();
    header_only.truncate(12);
    let mut bad_doc = samples::webm();
    let at = bad_doc
        .windows(4)
        .position(|w| w == b"webm")
        .expect("doc type");
    bad_doc[at..at + 4].copy_from_slice(b"mkvx");
    let other_track: Vec<u8> = {
        let webm = samples::webm();
        let mut out = Vec::new();
        let mut i = 0;
        while i < webm.len() {
            if webm[i..].starts_with(&[0xA3, 0x87, 0x81]) {
                out.extend_from_slice(&[0xA3, 0x87, 0x82]);
                i += 3;
            } else {
                out.push(webm[i]);
                i += 1;
            }
        }
        out
    };
    let mut bad_crc = samples::ogg_opus(2);
    bad_crc[40] ^= 0x01;
    let mut wrong_tags = samples::ogg_opus(0);
    let at = wrong_tags
        .windows(8)
        .position(|w| w == b"OpusTags")
        .expect("tags");
    wrong_tags[at..at + 8].copy_from_slice(b"OpusTagz");
    let wrong_tags = reframe_ogg(&wrong_tags);
    let theora = samples::ogg(&[b"\x80theora\x03\x02\x01".to_vec(), vec![0; 20]]);
    let mut flac_no_rate = samples::flac(1);
    // STREAMINFO's 20 rate bits start at byte 18.
    flac_no_rate[18] = 0;
    flac_no_rate[19] = 0;
    flac_no_rate[20] &= 0x0F;
    let mut flac_bad_crc = samples::flac(1);
    let frame_at = 4 + 4 + 34;
    flac_bad_crc[frame_at + 6] ^= 0xFF;
    let mp3_junk = [samples::mp3_frame()[..4].to_vec(), vec![0x55; 900]].concat();
    vec![
        (
            "wav zero fmt",
            samples::wav_zero_fmt(),
            "`fmt ` chunk is 0 bytes",
        ),
        (
            "wav no data",
            samples::wav_without_data(),
            "no `data` chunk",
        ),
        ("wav header only", header_only, "no `fmt ` chunk"),
        (
            "wav no channels",
            wav(1, 0, 16_000, 2, 16, 32),
            "0 channels",
        ),
        ("wav no rate", wav(1, 1, 0, 2, 16, 32), "0 Hz"),
        (
            "wav huge rate",
            wav(1, 1, 5_000_000, 2, 16, 32),
            "5000000 Hz",
        ),
        (
            "wav unknown codec",
            wav(0x1234, 1, 16_000, 2, 16, 32),
            "0x1234",
        ),
        (
            "wav frame size",
            wav(1, 1, 16_000, 3, 16, 32),
            "block alignment of 3",
        ),
        (
            "wav no block",
            wav(0x55, 1, 16_000, 0, 0, 32),
            "block alignment of 0",
        ),
        ("wav float bits", wav(3, 1, 16_000, 2, 12, 32), "12 bits"),
        (
            "wav pcm bits",
            wav(1, 1, 16_000, 2, 0, 32),
            "PCM with 0 bits",
        ),
        (
            "wav half a frame",
            wav(1, 2, 16_000, 4, 16, 3),
            "less than one 4-byte frame",
        ),
        ("wav empty data", wav(1, 1, 16_000, 2, 16, 0), "0 bytes"),
        (
            "webm without frames",
            samples::webm_without_frames(),
            "no frames",
        ),
        (
            "webm video only",
            samples::webm_with(1, 5),
            "no track is an audio track",
        ),
        ("webm doc type", bad_doc, "document type"),
        ("webm other track", other_track, "no block belongs"),
        (
            "webm header only",
            samples::webm()[..20].to_vec(),
            "EBML header",
        ),
        (
            "ogg headers only",
            samples::ogg_opus(0),
            "Opus stream has its headers",
        ),
        (
            "ogg vorbis headers",
            samples::ogg_vorbis(0),
            "Vorbis stream",
        ),
        ("ogg flac headers", samples::ogg_flac(0), "FLAC stream"),
        ("ogg speex headers", samples::ogg_speex(0), "Speex stream"),
        ("ogg bad crc", bad_crc, "CRC"),
        ("ogg cut", samples::ogg_opus(1)[..30].to_vec(), "cut short"),
        ("ogg no opustags", wrong_tags, "header packet 1"),
        ("ogg theora", theora, "no stream is Opus"),
        ("mp3 tag only", samples::mp3(0), "no audio after it"),
        (
            "mp3 junk",
            [samples::mp3(0), vec![0x55; 50]].concat(),
            "no MPEG audio frame",
        ),
        ("mp3 lone header", mp3_junk, "do not chain"),
        (
            "mp3 first frame cut",
            samples::mp3_frame()[..200].to_vec(),
            "do not chain",
        ),
        ("flac no frame", samples::flac(0), "no audio frame"),
        ("flac bad frame crc", flac_bad_crc, "no audio frame"),
        ("flac no rate", flac_no_rate, "0 Hz"),
        ("flac cut", b"fLaC\x80\0\0\x22".to_vec(), "cut short"),
        (
            "mp4 video only",
            samples::mp4(Mp4 {
                sound: false,
                ..Mp4::default()
            }),
            "sound track",
        ),
        (
            "mp4 empty mdat",
            samples::mp4(Mp4 {
                media_samples: 0,
                ..Mp4::default()
            }),
            "no `mdat`",
        ),
        (
            "mp4 fragmented empty",
            samples::mp4(Mp4 {
                media_samples: 0,
                fragmented: true,
                ..Mp4::default()
            }),
            "no `mdat`",
        ),
        (
            "mp4 ftyp only",
            samples::mp4(Mp4::default())[..24].to_vec(),
            "no `moov`",
        ),
    ]
}

/// Recomputes the CRC of every page of a one-packet-a-page Ogg file.
fn reframe_ogg(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut pos = 0;
    while pos + 27 <= out.len() {
        let segments = usize::from(out[pos + 26]);
        let body: usize = out[pos + 27..pos + 27 + segments]
            .iter()
            .map(|l| usize::from(*l))
            .sum();
        let len = 27 + segments + body;
        let sum = super::ogg::crc(&out[pos..pos + len]);
        out[pos + 22..pos + 26].copy_from_slice(&sum.to_le_bytes());
        pos += len;
    }
    out
}

#[test]
fn real_recordings_and_encoder_outputs_hold_audio() {
    for (name, bytes) in FIXTURES {
        let format = check(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(Some(format), sniff(bytes), "{name}");
    }
}

#[test]
fn hand_built_audio_passes() {
    for (name, bytes) in valid_samples() {
        check(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn containers_without_audio_are_refused_with_the_reason() {
    for (name, bytes, why) in broken_samples() {
        match check(&bytes) {
            Err(AudioError::Undecodable { format, reason }) => {
                assert_eq!(Some(format), sniff(&bytes), "{name}");
                assert!(reason.contains(why), "{name}: {reason:?} lacks {why:?}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn the_uploads_of_the_report_are_refused() {
    // A RIFF header with a zero-length `fmt ` and no data; a 600-byte WebM
    // with no audio frames.
    let webm = samples::webm_without_frames();
    assert_eq!(webm.len(), 600);
    for bytes in [samples::wav_zero_fmt(), webm] {
        assert!(matches!(check(&bytes), Err(AudioError::Undecodable { .. })));
    }
    let error = check(&samples::wav_zero_fmt()).expect_err("refused");
    assert_eq!(
        error.to_string(),
        "the wav file holds no decodable audio: the `fmt ` chunk is 0 bytes; it needs at least 16"
    );
}

#[test]
fn unknown_magic_is_not_a_container() {
    for bytes in [&b""[..], b"%PDF-1.7", b"hello there", b"\x89PNG\r\n\x1a\n"] {
        assert_eq!(check(bytes), Err(AudioError::UnknownContainer));
    }
}

#[test]
fn no_prefix_of_any_sample_panics() {
    let mut all: Vec<Vec<u8>> = FIXTURES.iter().map(|(_, b)| b.to_vec()).collect();
    all.extend(valid_samples().into_iter().map(|(_, b)| b));
    all.extend(broken_samples().into_iter().map(|(_, b, _)| b));
    for bytes in all {
        let step = (bytes.len() / 400).max(1);
        for cut in (0..bytes.len()).step_by(step) {
            let _ = check(&bytes[..cut]);
            // A flipped byte anywhere must not panic either.
            let mut flipped = bytes.clone();
            flipped[cut] ^= 0xA5;
            let _ = check(&flipped);
        }
    }
}

#[test]
fn a_real_espeak_recording_passes() {
    let dir = std::env::temp_dir().join(format!("rose-espeak-{}", std::process::id()));
    let path = dir.join("spoken.wav");
    let _ = std::fs::create_dir_all(&dir);
    let made = std::process::Command::new("espeak-ng")
        .args(["-w", &path.display().to_string(), "I still talk to her."])
        .output();
    if !made.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: espeak-ng is not installed");
        return;
    }
    let bytes = std::fs::read(&path).expect("espeak wrote a file");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(check(&bytes), Ok(AudioFormat::Wav));
}
