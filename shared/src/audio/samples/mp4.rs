//! MP4 samples: a plain M4A (`ftyp`, `moov`, `mdat`) and a fragmented one
//! like Safari's MediaRecorder (`moov` with empty sample tables and `mvex`,
//! then `moof` + `mdat`), holding 16-bit PCM (`sowt`) silence.

/// What an MP4 sample holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mp4 {
    /// The track's handler is `soun` (else `vide`).
    pub sound: bool,
    /// 16-bit samples of silence in the `mdat` (0: an empty `mdat`).
    pub media_samples: u32,
    /// Fragmented (`moof`/`mdat` after a `moov` with `mvex`).
    pub fragmented: bool,
}

impl Default for Mp4 {
    fn default() -> Self {
        Self {
            sound: true,
            media_samples: 160,
            fragmented: false,
        }
    }
}

const RATE: u32 = 16_000;

fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    out
}

/// A full box: version 0 and `flags`.
fn full(kind: &[u8; 4], flags: u32, body: &[u8]) -> Vec<u8> {
    let mut inner = flags.to_be_bytes().to_vec();
    inner.extend_from_slice(body);
    boxed(kind, &inner)
}

fn words(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

fn mvhd(duration: u32) -> Vec<u8> {
    let mut body = words(&[0, 0, RATE, duration, 0x0001_0000]);
    body.extend_from_slice(&[0x01, 0x00]);
    body.extend_from_slice(&[0; 10]);
    body.extend(words(&MATRIX));
    body.extend_from_slice(&[0; 24]);
    body.extend(words(&[2]));
    full(b"mvhd", 0, &body)
}

fn trak(options: Mp4, duration: u32, tables: &[u8]) -> Vec<u8> {
    let mut tkhd = words(&[0, 0, 1, 0, duration, 0, 0]);
    tkhd.extend_from_slice(&[0, 0, 0, 0, 0x01, 0x00, 0, 0]);
    tkhd.extend(words(&MATRIX));
    tkhd.extend(words(&[0, 0]));
    let mut mdhd = words(&[0, 0, RATE, duration]);
    mdhd.extend_from_slice(&[0x55, 0xC4, 0, 0]);
    let handler: &[u8; 4] = if options.sound { b"soun" } else { b"vide" };
    let mut hdlr = words(&[0]);
    hdlr.extend_from_slice(handler);
    hdlr.extend_from_slice(&[0; 12]);
    hdlr.extend_from_slice(b"Handler\0");
    // A sound sample entry: 16-bit little-endian PCM, mono.
    let mut sowt = vec![0; 6];
    sowt.extend_from_slice(&1u16.to_be_bytes());
    sowt.extend_from_slice(&[0; 8]);
    sowt.extend_from_slice(&1u16.to_be_bytes());
    sowt.extend_from_slice(&16u16.to_be_bytes());
    sowt.extend_from_slice(&[0; 4]);
    sowt.extend(words(&[RATE << 16]));
    let mut stsd = words(&[1]);
    stsd.extend(boxed(b"sowt", &sowt));
    let stbl = [full(b"stsd", 0, &stsd), tables.to_vec()].concat();
    let mut dref = words(&[1]);
    dref.extend(full(b"url ", 1, &[]));
    let header = if options.sound {
        full(b"smhd", 0, &[0; 4])
    } else {
        full(b"vmhd", 1, &[0; 8])
    };
    let minf = [
        header,
        boxed(b"dinf", &full(b"dref", 0, &dref)),
        boxed(b"stbl", &stbl),
    ]
    .concat();
    let mdia = [
        full(b"mdhd", 0, &mdhd),
        full(b"hdlr", 0, &hdlr),
        boxed(b"minf", &minf),
    ]
    .concat();
    boxed(
        b"trak",
        &[full(b"tkhd", 3, &tkhd), boxed(b"mdia", &mdia)].concat(),
    )
}

/// An MP4 of `options`.
#[must_use]
pub fn mp4(options: Mp4) -> Vec<u8> {
    let samples = options.media_samples;
    let media = vec![0u8; samples as usize * 2];
    if options.fragmented {
        let ftyp = boxed(b"ftyp", b"iso5\0\0\x02\0iso5iso6mp41");
        let empty = [
            full(b"stts", 0, &words(&[0])),
            full(b"stsc", 0, &words(&[0])),
            full(b"stsz", 0, &words(&[0, 0])),
            full(b"stco", 0, &words(&[0])),
        ]
        .concat();
        let mvex = boxed(b"mvex", &full(b"trex", 0, &words(&[1, 1, 1, 2, 0])));
        let moov = boxed(b"moov", &[mvhd(0), trak(options, 0, &empty), mvex].concat());
        // The trun's data offset is counted from the moof's first byte.
        let traf = |offset: u32| {
            [
                full(b"tfhd", 0x02_0000, &words(&[1])),
                full(b"tfdt", 0, &words(&[0])),
                full(b"trun", 0x00_0001, &words(&[samples, offset])),
            ]
            .concat()
        };
        let moof_len = boxed(b"moof", &[full(b"mfhd", 0, &words(&[1])), traf(0)].concat()).len();
        let moof = boxed(
            b"moof",
            &[full(b"mfhd", 0, &words(&[1])), traf(moof_len as u32 + 8)].concat(),
        );
        return [ftyp, moov, moof, boxed(b"mdat", &media)].concat();
    }
    let ftyp = boxed(b"ftyp", b"M4A \0\0\x02\0M4A isommp42");
    let moov = |offset: u32| {
        let tables = [
            full(b"stts", 0, &words(&[1, samples, 1])),
            full(b"stsc", 0, &words(&[1, 1, samples, 1])),
            full(b"stsz", 0, &words(&[2, samples])),
            full(b"stco", 0, &words(&[1, offset])),
        ]
        .concat();
        boxed(
            b"moov",
            &[mvhd(samples), trak(options, samples, &tables)].concat(),
        )
    };
    let offset = ftyp.len() + moov(0).len() + 8;
    [ftyp, moov(offset as u32), boxed(b"mdat", &media)].concat()
}
