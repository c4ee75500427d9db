//! Property tests of the upload path on random input: whatever bytes
//! arrive, `POST /api/voice/process` answers with a JSON error or accepts,
//! never a 5xx and never a panic, and neither the audio sniffer nor the
//! container check ever panics.

use std::collections::HashMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rose_shared::audio::{check, samples, sniff};
use rose_tests::{AppOptions, Deployment, SPOKEN_WAV, TestApp, spawn_app_with};

/// One request's body and content type.
#[derive(Debug, Clone)]
struct Input {
    content_type: String,
    body: Vec<u8>,
}

const BOUNDARY: &str = "fuzzboundary";

/// A multipart body from parts: (name, filename, bytes).
fn multipart(parts: &[(String, Option<String>, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, filename, bytes) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        let disposition = match filename {
            Some(f) => {
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n")
            }
            None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n"),
        };
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// Audio-ish bytes: random, or a real container's magic with random tails.
fn audio() -> impl Strategy<Value = Vec<u8>> {
    let magic = prop_oneof![
        Just(Vec::new()),
        Just(b"RIFF\0\0\0\0WAVE".to_vec()),
        Just(vec![0x1A, 0x45, 0xDF, 0xA3]),
        Just(b"OggS".to_vec()),
        Just(b"ID3".to_vec()),
        Just(b"fLaC".to_vec()),
        Just(SPOKEN_WAV[..64].to_vec()),
    ];
    (magic, prop::collection::vec(any::<u8>(), 0..512)).prop_map(|(mut m, tail)| {
        m.extend(tail);
        m
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("audio".to_owned()),
        Just("text".to_owned()),
        Just("session_id".to_owned()),
        Just("callback_url".to_owned()),
        "[a-z_]{0,12}",
    ]
}

fn part(session: String) -> impl Strategy<Value = (String, Option<String>, Vec<u8>)> {
    (
        field_name(),
        prop::option::of("[a-zA-Z0-9._ -]{0,16}"),
        prop_oneof![
            audio(),
            Just(session.into_bytes()),
            prop::collection::vec(any::<u8>(), 0..64),
            "\\PC{0,80}".prop_map(String::into_bytes),
        ],
    )
}

fn input(session: String) -> impl Strategy<Value = Input> {
    let structured = prop::collection::vec(part(session), 0..5).prop_map(|parts| Input {
        content_type: format!("multipart/form-data; boundary={BOUNDARY}"),
        body: multipart(&parts),
    });
    let raw = (
        prop_oneof![
            Just(format!("multipart/form-data; boundary={BOUNDARY}")),
            Just("multipart/form-data".to_owned()),
            Just("application/json".to_owned()),
            "[ -~]{0,40}",
        ],
        prop::collection::vec(any::<u8>(), 0..1024),
    )
        .prop_map(|(content_type, body)| Input { content_type, body });
    prop_oneof![3 => structured, 1 => raw]
}

async fn send(app: &TestApp, input: &Input, wait: bool) -> Result<(), TestCaseError> {
    let query = if wait { "?wait=0" } else { "" };
    let response = app
        .http
        .post(format!("{}/api/voice/process{query}", app.url))
        .header("content-type", input.content_type.as_str())
        .body(input.body.clone())
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
    let status = response.status();
    prop_assert!(!status.is_server_error(), "{status} for {input:?}");
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| TestCaseError::fail(format!("not JSON: {e}")))?;
    if status.is_client_error() {
        prop_assert!(body["error"]["code"].is_string(), "{body}");
    } else {
        prop_assert!(body["job_id"].is_string(), "{body}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_uploads_never_get_a_server_error() {
    let app = spawn_app_with(
        Deployment::Embedded,
        AppOptions {
            no_worker: true,
            env: HashMap::new(),
            ..AppOptions::default()
        },
    )
    .await;
    let session = app.start_session().await;
    let strategy = input(session);
    let handle = tokio::runtime::Handle::current();
    let result = tokio::task::block_in_place(|| {
        let mut runner = TestRunner::new(Config {
            cases: 200,
            failure_persistence: None,
            ..Config::default()
        });
        runner.run(&strategy, |input| {
            handle.block_on(send(&app, &input, rand_wait(&input)))
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    app.stop().await;
}

/// Half of the cases also ask to wait (0 s), which takes another path.
fn rand_wait(input: &Input) -> bool {
    input.body.len().is_multiple_of(2)
}

proptest! {
    #![proptest_config(Config { cases: 2000, failure_persistence: None, ..Config::default() })]

    #[test]
    fn sniffing_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = sniff(&bytes);
    }

    #[test]
    fn checking_never_panics(bytes in audio()) {
        let _ = check(&bytes);
    }

    /// Real structures with bytes changed and cut: deep paths of every walk.
    #[test]
    fn checking_damaged_samples_never_panics(
        which in 0usize..8,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = match which {
            0 => samples::wav(),
            1 => samples::webm(),
            2 => samples::ogg_opus(2),
            3 => samples::ogg_flac(1),
            4 => samples::mp3(3),
            5 => samples::flac(2),
            6 => samples::mp4(samples::Mp4::default()),
            _ => samples::mp4(samples::Mp4 { fragmented: true, ..samples::Mp4::default() }),
        };
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let _ = check(&bytes);
    }
}
