//! The ElevenLabs text-to-speech surface, over loopback HTTP.

mod common;

use std::time::Duration;

use common::{KEY, TestSim};
use rose_shared::audio::{AudioFormat, sniff};
use rose_sim::{Latency, Profile};
use serde_json::{Value, json};

/// Walks MPEG audio frames from the first byte to the last; returns the
/// number of frames and samples, or panics at the first invalid header.
fn walk_mp3(bytes: &[u8]) -> (usize, u64) {
    const V1_KBPS: [u64; 15] = [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ];
    const V2_KBPS: [u64; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    let (mut pos, mut frames, mut samples) = (0usize, 0usize, 0u64);
    while pos < bytes.len() {
        let h = &bytes[pos..pos + 4];
        assert!(
            h[0] == 0xFF && h[1] & 0xE0 == 0xE0,
            "no frame sync at {pos}"
        );
        let version = (h[1] >> 3) & 0b11;
        assert!(version == 0b11 || version == 0b10, "bad version at {pos}");
        assert_eq!((h[1] >> 1) & 0b11, 0b01, "not layer III at {pos}");
        let bitrate_index = usize::from(h[2] >> 4);
        assert!((1..15).contains(&bitrate_index), "bad bitrate at {pos}");
        let rate_index = usize::from((h[2] >> 2) & 0b11);
        assert!(rate_index < 3, "bad sample rate at {pos}");
        let mpeg1 = version == 0b11;
        let (kbps, rate, factor, per_frame) = if mpeg1 {
            (
                V1_KBPS[bitrate_index],
                [44_100, 48_000, 32_000][rate_index],
                144,
                1152,
            )
        } else {
            (
                V2_KBPS[bitrate_index],
                [22_050, 24_000, 16_000][rate_index],
                72,
                576,
            )
        };
        let padding = u64::from((h[2] >> 1) & 1);
        let len = (factor * kbps * 1000 / rate + padding) as usize;
        assert!(pos + len <= bytes.len(), "truncated frame at {pos}");
        pos += len;
        frames += 1;
        samples += per_frame;
    }
    (frames, samples)
}

#[tokio::test]
async fn default_output_is_valid_mp3_of_the_right_length() {
    let sim = TestSim::start().await;
    let text = "I am here with you, and we can take this one breath at a time.";
    let response = sim
        .tts(
            json!({"text": text, "model_id": "eleven_multilingual_v2", "voice_settings": {"stability": 0.6, "similarity_boost": 0.75}}),
            "",
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/mpeg");
    let chars = text.chars().count();
    assert_eq!(
        response.headers()["character-cost"],
        chars.to_string().as_str()
    );
    assert!(response.headers().contains_key("request-id"));
    assert!(response.headers().contains_key("history-item-id"));
    let bytes = response.bytes().await.expect("bytes");
    assert_eq!(&bytes[..4], &[0xFF, 0xFB, 0x90, 0xC4]);
    assert_eq!(sniff(&bytes), Some(AudioFormat::Mp3));
    let (frames, samples) = walk_mp3(&bytes);
    assert!(frames > 10);
    let secs = samples as f64 / 44_100.0;
    let expected = chars as f64 * 0.060;
    assert!((secs - expected).abs() < 0.03, "{secs} s for {chars} chars");
}

#[tokio::test]
async fn other_output_formats() {
    let sim = TestSim::start().await;
    let text = "Ten chars.";
    let short = sim
        .tts(json!({"text": "Hi"}), "?output_format=mp3_22050_32")
        .await;
    assert_eq!(short.status(), 200);
    let (_, samples) = walk_mp3(&short.bytes().await.expect("bytes"));
    let secs = samples as f64 / 22_050.0;
    assert!((0.5..0.53).contains(&secs), "minimum duration, got {secs}");

    let pcm = sim
        .tts(json!({"text": text}), "?output_format=pcm_16000")
        .await;
    assert_eq!(pcm.status(), 200);
    assert_eq!(pcm.headers()["content-type"], "audio/pcm");
    assert_eq!(pcm.bytes().await.expect("bytes").len(), 16_000 * 2 * 6 / 10);

    let wav = sim
        .tts(json!({"text": text}), "?output_format=wav_24000")
        .await;
    assert_eq!(wav.headers()["content-type"], "audio/wav");
    let info = rose_shared::audio::wav_info(&wav.bytes().await.expect("bytes")).expect("a wav");
    assert!((info.duration_secs.expect("duration") - 0.6).abs() < 0.01);

    for bad in ["ulaw_8000", "mp3_44100_100", "flac", "pcm_1"] {
        let response = sim
            .tts(json!({"text": text}), &format!("?output_format={bad}"))
            .await;
        assert_eq!(response.status(), 422, "{bad}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["detail"][0]["loc"], json!(["query", "output_format"]));
    }
}

#[tokio::test]
async fn stream_endpoint_sends_the_same_audio() {
    let sim = TestSim::start().await;
    let response = sim
        .http
        .post(sim.url("/v1/text-to-speech/abc/stream?output_format=mp3_44100_128"))
        .header("xi-api-key", KEY)
        .json(&json!({"text": "A long enough sentence to need several chunks of audio data."}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.expect("bytes");
    let (frames, _) = walk_mp3(&bytes);
    assert!(frames > 100);
}

#[tokio::test]
async fn errors_in_elevenlabs_shapes() {
    let sim = TestSim::start().await;
    let no_key = sim
        .http
        .post(sim.url("/v1/text-to-speech/abc"))
        .json(&json!({"text": "hello"}))
        .send()
        .await
        .expect("send");
    assert_eq!(no_key.status(), 401);
    assert_eq!(
        no_key.json::<Value>().await.expect("json"),
        json!({"detail": {"status": "invalid_api_key", "message": "Invalid API key"}})
    );

    let missing = sim.tts(json!({"model_id": "eleven_turbo_v2_5"}), "").await;
    assert_eq!(missing.status(), 422);
    assert_eq!(
        missing.json::<Value>().await.expect("json"),
        json!({"detail": [{"loc": ["body", "text"], "msg": "field required", "type": "value_error.missing"}]})
    );

    let settings = sim
        .tts(
            json!({"text": "hi", "voice_settings": {"stability": 1.5, "similarity_boost": 0.5}}),
            "",
        )
        .await;
    assert_eq!(settings.status(), 422);
    let body: Value = settings.json().await.expect("json");
    assert_eq!(
        body["detail"][0]["loc"],
        json!(["body", "voice_settings", "stability"])
    );

    let not_number = sim
        .tts(
            json!({"text": "hi", "voice_settings": {"similarity_boost": "high"}}),
            "",
        )
        .await;
    assert_eq!(not_number.status(), 422);

    let long = sim.tts(json!({"text": "a".repeat(5_001)}), "").await;
    assert_eq!(long.status(), 400);
    let body: Value = long.json().await.expect("json");
    assert_eq!(body["detail"]["status"], "text_too_long");

    let not_json = sim
        .http
        .post(sim.url("/v1/text-to-speech/abc"))
        .header("xi-api-key", KEY)
        .body("text=hello")
        .send()
        .await
        .expect("send");
    assert_eq!(not_json.status(), 422);
    assert_eq!(sim.sim.stats().requests.text_to_speech, 6);
}

#[tokio::test]
async fn third_concurrent_request_is_refused_when_rate_limited() {
    let latency = Latency {
        tts: Duration::from_millis(400),
        ..Latency::default()
    };
    let sim = TestSim::with_profile(Profile::RateLimited, latency).await;
    let body = json!({"text": "Breathe in, and out."});
    let (a, b, c) = tokio::join!(
        sim.tts(body.clone(), ""),
        sim.tts(body.clone(), ""),
        sim.tts(body.clone(), "")
    );
    let mut statuses: Vec<u16> = [&a, &b, &c].iter().map(|r| r.status().as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 429]);
    let refused = [a, b, c]
        .into_iter()
        .find(|r| r.status() == 429)
        .expect("one refused");
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["detail"]["status"], "too_many_concurrent_requests");
    // Slots are free again once the answers are out.
    assert_eq!(sim.tts(json!({"text": "again"}), "").await.status(), 200);
}

#[tokio::test]
async fn concurrency_is_unlimited_without_a_profile() {
    let latency = Latency {
        tts: Duration::from_millis(200),
        ..Latency::default()
    };
    let sim = TestSim::with(rose_sim::SimConfig {
        latency,
        profile: None,
        ..rose_sim::SimConfig::default()
    })
    .await;
    let body = json!({"text": "Breathe."});
    let (a, b, c) = tokio::join!(
        sim.tts(body.clone(), ""),
        sim.tts(body.clone(), ""),
        sim.tts(body.clone(), "")
    );
    assert!([a, b, c].iter().all(|r| r.status() == 200));
}
