//! Groq transcriptions, speech, models and routing, over loopback HTTP (chat: `chat.rs`).

mod common;

use common::{KEY, TestSim, chat_body, error_of, wav};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

/// The fixed phrases for audio without a comment.
const PHRASES: [&str; 8] = [
    "I keep thinking about my father.",
    "I miss her more than I can say.",
    "Some days the house feels so quiet.",
    "I found his old letters today.",
    "The anniversary is coming up and I don't know how to feel.",
    "I wish I had said goodbye properly.",
    "Everyone says it gets easier, but it hasn't yet.",
    "I dreamed about my grandmother last night.",
];

/// A few silent MPEG-1 Layer III frames.
fn mp3_bytes(seed: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..4 {
        out.extend_from_slice(&[0xFF, 0xFB, 0x90, 0xC4]);
        out.extend(std::iter::repeat_n(0u8, 413));
    }
    out.push(seed);
    out
}

#[tokio::test]
async fn transcript_is_the_wav_comment() {
    let sim = TestSim::start().await;
    let spoken = "I lost my mother last spring, and I still talk to her every night.";
    let response = sim
        .transcribe(wav(Some(spoken)), "whisper-large-v3-turbo")
        .await;
    assert_eq!(response.status(), 200);
    for header in [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    ] {
        assert!(response.headers().contains_key(header), "missing {header}");
    }
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["text"], spoken);
    assert!(
        body["x_groq"]["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("req_"))
    );
}

#[tokio::test]
async fn same_bytes_same_phrase_for_audio_without_comment() {
    let sim = TestSim::start().await;
    let mut texts = Vec::new();
    for audio in [mp3_bytes(1), mp3_bytes(1), wav(None)] {
        let response = sim.transcribe(audio, "whisper-large-v3").await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        let text = body["text"].as_str().expect("text").to_owned();
        assert!(PHRASES.contains(&text.as_str()), "{text}");
        texts.push(text);
    }
    assert_eq!(texts[0], texts[1]);
    // Different bytes spread over the phrases.
    let mut seen = std::collections::HashSet::new();
    for seed in 0..24 {
        let body: Value = sim
            .transcribe(mp3_bytes(seed), "distil-whisper-large-v3-en")
            .await
            .json()
            .await
            .expect("json");
        seen.insert(body["text"].as_str().expect("text").to_owned());
    }
    assert!(seen.len() >= 3, "{seen:?}");
}

#[tokio::test]
async fn transcription_formats() {
    let sim = TestSim::start().await;
    let send = |format: &str| {
        let form = Form::new()
            .part(
                "file",
                Part::bytes(wav(Some("Hello there."))).file_name("a.wav"),
            )
            .text("model", "whisper-large-v3-turbo")
            .text("language", "en")
            .text("temperature", "0")
            .text("response_format", format.to_owned());
        sim.http
            .post(sim.url("/v1/audio/transcriptions"))
            .bearer_auth(KEY)
            .multipart(form)
            .send()
    };
    let text = send("text").await.expect("send");
    assert_eq!(text.status(), 200);
    assert!(
        text.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/plain")
    );
    assert_eq!(text.text().await.expect("body"), "Hello there.");

    let verbose: Value = send("verbose_json")
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(verbose["task"], "transcribe");
    assert_eq!(verbose["language"], "english");
    assert_eq!(verbose["text"], "Hello there.");
    assert!((verbose["duration"].as_f64().expect("duration") - 0.1).abs() < 0.011);
    assert_eq!(verbose["segments"][0]["id"], 0);
    assert!(verbose["segments"][0]["end"].is_number());

    let bad = send("srt").await.expect("send");
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn every_groq_endpoint_requires_a_bearer_key() {
    let sim = TestSim::start().await;
    for base in ["/openai/v1", "/v1"] {
        let form = Form::new()
            .part("file", Part::bytes(wav(None)).file_name("a.wav"))
            .text("model", "whisper-large-v3");
        let requests = [
            sim.http
                .post(sim.url(&format!("{base}/audio/transcriptions")))
                .multipart(form),
            sim.http
                .post(sim.url(&format!("{base}/chat/completions")))
                .json(&chat_body("hi")),
            sim.http
                .post(sim.url(&format!("{base}/audio/speech")))
                .bearer_auth("")
                .json(&json!({"model": "tts-1", "input": "hi", "voice": "alloy"})),
            sim.http
                .get(sim.url(&format!("{base}/models")))
                .header("authorization", "Basic abc"),
        ];
        for request in requests {
            let (status, body) = error_of(request.send().await.expect("send")).await;
            assert_eq!(status, 401);
            assert_eq!(
                body,
                json!({"error": {"message": "Invalid API Key", "type": "invalid_request_error", "code": "invalid_api_key"}})
            );
        }
    }
    let stats = sim.sim.stats();
    assert_eq!(stats.requests.transcriptions, 2);
    assert_eq!(stats.requests.chat_completions, 2);
    assert_eq!(stats.requests.speech, 2);
}

#[tokio::test]
async fn transcription_validation() {
    let sim = TestSim::start().await;
    let post = |form: Form| {
        sim.http
            .post(sim.groq("/audio/transcriptions"))
            .bearer_auth(KEY)
            .multipart(form)
            .send()
    };
    // No file.
    let (status, body) = error_of(
        post(Form::new().text("model", "whisper-large-v3"))
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    // A file field without a filename is not a file.
    let form = Form::new()
        .text("file", "abc")
        .text("model", "whisper-large-v3");
    assert_eq!(post(form).await.expect("send").status(), 400);
    // No model.
    let form = Form::new().part("file", Part::bytes(wav(None)).file_name("a.wav"));
    let (status, body) = error_of(post(form).await.expect("send")).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("model")
    );
    // Unknown model.
    let (status, body) = error_of(sim.transcribe(wav(None), "whisper-tiny").await).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("`whisper-tiny`")
    );
    // Not audio.
    let (status, body) = error_of(
        sim.transcribe(b"%PDF-1.7 not audio".to_vec(), "whisper-large-v3")
            .await,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"]["message"],
        "file must be one of the following types: [flac mp3 mp4 mpeg mpga m4a ogg opus wav webm]"
    );
    // Not multipart.
    let response = sim
        .http
        .post(sim.groq("/audio/transcriptions"))
        .bearer_auth(KEY)
        .json(&json!({"model": "whisper-large-v3"}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    // Bad temperature.
    let form = Form::new()
        .part("file", Part::bytes(wav(None)).file_name("a.wav"))
        .text("model", "whisper-large-v3")
        .text("temperature", "7");
    assert_eq!(post(form).await.expect("send").status(), 400);
    assert_eq!(sim.sim.stats().requests.transcriptions, 7);
}

#[tokio::test]
async fn oversized_upload_is_413() {
    let sim = TestSim::start().await;
    let mut audio = wav(None);
    audio.resize(26 * 1024 * 1024, 0);
    let (status, body) = error_of(sim.transcribe(audio, "whisper-large-v3").await).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "request_too_large");
}

#[tokio::test]
async fn speech_and_models() {
    let sim = TestSim::start().await;
    for (format, mime) in [("mp3", "audio/mpeg"), ("wav", "audio/wav")] {
        let response = sim
            .http
            .post(sim.groq("/audio/speech"))
            .bearer_auth(KEY)
            .json(&json!({"model": "tts-1", "input": "Breathe with me.", "voice": "alloy", "response_format": format}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], mime);
        let bytes = response.bytes().await.expect("bytes");
        let sniffed = rose_shared::audio::sniff(&bytes).expect("audio").mime();
        assert_eq!(sniffed, mime);
    }
    let missing = sim
        .http
        .post(sim.groq("/audio/speech"))
        .bearer_auth(KEY)
        .json(&json!({"model": "tts-1", "input": "", "voice": "alloy"}))
        .send()
        .await
        .expect("send");
    assert_eq!(missing.status(), 400);

    let models: Value = sim
        .http
        .get(sim.groq("/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    for id in [
        "whisper-large-v3-turbo",
        "llama-3.3-70b-versatile",
        "openai/gpt-oss-20b",
    ] {
        assert!(ids.contains(&id), "{id}");
    }
    let one = sim
        .http
        .get(sim.groq("/models/openai/gpt-oss-120b"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("send");
    assert_eq!(one.status(), 200);
}

#[tokio::test]
async fn unknown_urls_answer_in_groq_shape() {
    let sim = TestSim::start().await;
    let (status, body) = error_of(
        sim.http
            .post(sim.groq("/completions"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "unknown_url");
    let (status, _) = error_of(
        sim.http
            .get(sim.groq("/chat/completions"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 405);
}

/// Groq's answer to a file its decoder cannot read.
fn undecodable() -> Value {
    json!({"error": {"message": "could not process file - is it a valid media file?", "type": "invalid_request_error"}})
}

#[tokio::test]
async fn audio_without_decodable_frames_gets_groqs_400() {
    use rose_shared::audio::samples;
    let sim = TestSim::start().await;
    for (name, audio) in [
        ("a RIFF header with an empty fmt", samples::wav_zero_fmt()),
        ("a WAV without data", samples::wav_without_data()),
        (
            "a 600-byte WebM without frames",
            samples::webm_without_frames(),
        ),
        ("Ogg/Opus headers only", samples::ogg_opus(0)),
        (
            "an MP4 without a sound track",
            samples::mp4(samples::Mp4 {
                sound: false,
                ..samples::Mp4::default()
            }),
        ),
    ] {
        let (status, body) = error_of(sim.transcribe(audio, "whisper-large-v3-turbo").await).await;
        assert_eq!((status, body), (400, undecodable()), "{name}");
    }
    // What decodes still transcribes: the WAV comment, and a browser recording.
    let spoken = "Some days the house feels so quiet.";
    let response = sim
        .transcribe(wav(Some(spoken)), "whisper-large-v3-turbo")
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["text"], spoken);
    for audio in [samples::webm(), samples::ogg_opus(3), samples::mp3(4)] {
        assert_eq!(
            sim.transcribe(audio, "whisper-large-v3").await.status(),
            200
        );
    }
}
