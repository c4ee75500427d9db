//! The `/__sim` control routes, faults and failure profiles, over loopback HTTP.

mod common;

use std::time::Duration;

use common::{KEY, TestSim, chat_body, wav};
use reqwest::multipart::{Form, Part};
use rose_sim::{Latency, Profile, Sim, SimConfig};
use serde_json::{Value, json};

#[tokio::test]
async fn stats_count_every_request_per_endpoint() {
    let sim = TestSim::start().await;
    sim.transcribe(wav(None), "whisper-large-v3").await;
    sim.transcribe(wav(None), "no-such-model").await;
    sim.chat(chat_body("one")).await;
    sim.tts(json!({"text": "hello"}), "").await;
    sim.tts(json!({}), "").await;
    sim.tts(json!({"text": "x"}), "").await;
    sim.http
        .post(sim.url("/v1/audio/speech"))
        .bearer_auth(KEY)
        .json(&json!({"model": "tts-1", "input": "hi", "voice": "alloy"}))
        .send()
        .await
        .expect("send");
    let zero =
        json!({"transcriptions": 0, "chat_completions": 0, "text_to_speech": 0, "speech": 0});
    let one_each =
        json!({"transcriptions": 1, "chat_completions": 1, "text_to_speech": 1, "speech": 1});
    let expected = json!({
        "requests": {"transcriptions": 2, "chat_completions": 1, "text_to_speech": 3, "speech": 1},
        "total": 7,
        "refused": zero,
        "failed": zero,
        // One request at a time, all within a minute.
        "max_concurrent": one_each,
        "in_flight": zero,
        "max_in_window": {"transcriptions": 2, "chat_completions": 1, "text_to_speech": 3, "speech": 1},
    });
    assert_eq!(sim.get_json("/__sim/stats").await, expected);
    assert_eq!(
        serde_json::to_value(sim.sim.stats()).expect("serialise"),
        expected
    );

    let reset = sim
        .http
        .post(sim.url("/__sim/reset"))
        .send()
        .await
        .expect("send");
    assert_eq!(reset.status(), 200);
    assert_eq!(sim.sim.stats(), rose_sim::Stats::default());
    assert_eq!(sim.get_json("/__sim/requests").await["requests"], json!([]));
}

#[tokio::test]
async fn request_log_redacts_secrets_and_shows_form_fields() {
    let sim = TestSim::start().await;
    let audio = wav(Some("I miss him."));
    let size = audio.len();
    let form = Form::new()
        .part(
            "file",
            Part::bytes(audio)
                .file_name("speech.wav")
                .mime_str("audio/wav")
                .expect("mime"),
        )
        .text("model", "whisper-large-v3-turbo")
        .text("response_format", "json");
    sim.http
        .post(sim.groq("/audio/transcriptions"))
        .bearer_auth("super-secret")
        .header("x-custom-token", "also-secret")
        .header("x-api-key", "third-secret")
        .multipart(form)
        .send()
        .await
        .expect("send");
    sim.chat(chat_body("hello there")).await;
    sim.tts(json!({"text": "hi"}), "?output_format=pcm_16000")
        .await;

    let log = sim.get_json("/__sim/requests").await;
    let text = log.to_string();
    assert!(
        !text.contains("super-secret")
            && !text.contains("also-secret")
            && !text.contains("third-secret")
            && !text.contains(KEY)
    );
    let requests = log["requests"].as_array().expect("requests");
    assert_eq!(requests.len(), 3, "control requests are not logged");

    let stt = &requests[0];
    assert_eq!(stt["method"], "POST");
    assert_eq!(stt["path"], "/openai/v1/audio/transcriptions");
    assert_eq!(stt["status"], 200);
    assert_eq!(stt["headers"]["authorization"], "[redacted]");
    assert_eq!(stt["headers"]["x-custom-token"], "[redacted]");
    assert_eq!(stt["headers"]["x-api-key"], "[redacted]");
    assert!(
        stt["headers"]["content-type"]
            .as_str()
            .unwrap_or_default()
            .starts_with("multipart/form-data")
    );
    assert_eq!(stt["body"]["model"], "whisper-large-v3-turbo");
    assert_eq!(
        stt["body"]["file"],
        json!({"filename": "speech.wav", "content_type": "audio/wav", "size": size})
    );
    assert!(
        stt["at_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 1_600_000_000_000)
    );

    let chat = &requests[1];
    assert_eq!(chat["body"]["messages"][1]["content"], "hello there");
    assert_eq!(chat["headers"]["authorization"], "[redacted]");

    let tts = &requests[2];
    assert_eq!(tts["path"], "/v1/text-to-speech/voice123");
    assert_eq!(tts["query"], "output_format=pcm_16000");
    assert_eq!(tts["headers"]["xi-api-key"], "[redacted]");
    assert_eq!(tts["body"], json!({"text": "hi"}));
}

#[tokio::test]
async fn request_log_keeps_the_last_two_hundred() {
    let sim = TestSim::start().await;
    for i in 0..205 {
        sim.http
            .get(sim.url(&format!("/nowhere/{i}")))
            .send()
            .await
            .expect("send");
    }
    let log = sim.get_json("/__sim/requests").await;
    let requests = log["requests"].as_array().expect("requests");
    assert_eq!(requests.len(), 200);
    assert_eq!(requests[0]["path"], "/nowhere/5");
    assert_eq!(requests[199]["path"], "/nowhere/204");
    assert_eq!(requests[199]["status"], 404);
    assert_eq!(requests[199]["body"], json!({"size": 0}));
}

#[tokio::test]
async fn a_fault_fails_exactly_count_requests() {
    let sim = TestSim::start().await;
    sim.fault(json!({"endpoint": "chat_completions", "status": 503, "count": 1, "retry_after": 2}))
        .await;
    // Invalid requests do not consume the fault.
    assert_eq!(
        sim.chat(json!({"model": "llama-3.3-70b-versatile"}))
            .await
            .status(),
        400
    );
    let failed = sim.chat(chat_body("hi")).await;
    assert_eq!(failed.status(), 503);
    assert_eq!(failed.headers()["retry-after"], "2");
    assert!(!failed.headers().contains_key("x-ratelimit-reset-requests"));
    let body: Value = failed.json().await.expect("json");
    assert!(body["error"]["message"].is_string());
    assert_eq!(sim.chat(chat_body("hi")).await.status(), 200);
    assert_eq!(sim.sim.stats().requests.chat_completions, 3);

    // A custom body, on ElevenLabs, twice; then cleared.
    sim.fault(json!({"endpoint": "text_to_speech", "status": 429, "count": 5, "body": {"detail": {"status": "quota_exceeded", "message": "no"}}}))
        .await;
    let refused = sim.tts(json!({"text": "hi"}), "").await;
    assert_eq!(refused.status(), 429);
    assert_eq!(
        refused.json::<Value>().await.expect("json")["detail"]["status"],
        "quota_exceeded"
    );
    let listed = sim.get_json("/__sim/faults").await;
    assert_eq!(listed["faults"][0]["count"], 4);
    let cleared = sim
        .http
        .delete(sim.url("/__sim/faults"))
        .send()
        .await
        .expect("send");
    assert_eq!(cleared.status(), 200);
    assert_eq!(sim.tts(json!({"text": "hi"}), "").await.status(), 200);

    // Bad fault requests.
    for bad in [
        json!({"endpoint": "embeddings", "status": 500}),
        json!({"endpoint": "speech", "status": 200}),
        json!({"endpoint": "speech", "status": 500, "count": 0}),
        json!({"status": 500}),
    ] {
        let response = sim
            .http
            .post(sim.url("/__sim/faults"))
            .json(&bad)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn rate_limited_profile_refuses_the_twenty_first_transcription() {
    let sim = TestSim::with_profile(Profile::RateLimited, Latency::default()).await;
    for i in 0..20 {
        let response = sim.transcribe(wav(None), "whisper-large-v3-turbo").await;
        assert_eq!(response.status(), 200, "request {i}");
        let remaining = response.headers()["x-ratelimit-remaining-requests"]
            .to_str()
            .expect("ascii");
        assert_eq!(remaining, (19 - i).to_string());
        assert_eq!(response.headers()["x-ratelimit-limit-requests"], "20");
    }
    let refused = sim.transcribe(wav(None), "whisper-large-v3-turbo").await;
    assert_eq!(refused.status(), 429);
    let headers = refused.headers().clone();
    let retry_after: u64 = headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole seconds");
    assert!((50..=60).contains(&retry_after), "{retry_after}");
    let reset = headers["x-ratelimit-reset-requests"]
        .to_str()
        .expect("ascii");
    assert!(
        reset.ends_with('s') && reset.chars().next().is_some_and(|c| c.is_ascii_digit()),
        "{reset}"
    );
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["type"], "requests");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("Rate limit reached for model `whisper-large-v3-turbo`"),
        "{message}"
    );
    assert!(message.contains("Please try again in "), "{message}");
    // Chat has its own window.
    assert_eq!(
        sim.chat(chat_body("hi")).await.headers()["x-ratelimit-limit-requests"],
        "30"
    );
    assert_eq!(sim.sim.stats().requests.transcriptions, 21);
}

#[tokio::test]
async fn outage_profile_fails_every_provider_endpoint() {
    let sim = TestSim::with_profile(Profile::Outage, Latency::default()).await;
    let stt = sim.transcribe(wav(None), "whisper-large-v3").await;
    assert_eq!(stt.status(), 503);
    assert!(stt.json::<Value>().await.expect("json")["error"]["message"].is_string());
    let chat = sim.chat(chat_body("hi")).await;
    assert_eq!(chat.status(), 503);
    let tts = sim.tts(json!({"text": "hi"}), "").await;
    assert_eq!(tts.status(), 503);
    assert!(tts.json::<Value>().await.expect("json")["detail"]["status"].is_string());
    // Auth is still checked first.
    let unauthorized = sim
        .http
        .post(sim.groq("/chat/completions"))
        .json(&chat_body("hi"))
        .send()
        .await
        .expect("send");
    assert_eq!(unauthorized.status(), 401);
}

#[tokio::test]
async fn flaky_profile_fails_some_requests() {
    let sim = TestSim::with_profile(Profile::Flaky, Latency::default()).await;
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..100 {
        let sent = sim
            .http
            .post(sim.groq("/chat/completions"))
            .bearer_auth(KEY)
            .json(&chat_body("hi"))
            .send()
            .await;
        match sent.map(|r| r.status().as_u16()) {
            Ok(200) => ok += 1,
            // A dropped connection is a transport error.
            Ok(500 | 503) | Err(_) => failed += 1,
            Ok(other) => panic!("unexpected status {other}"),
        }
    }
    // One in five by default.
    assert!(failed >= 3 && ok >= 60, "ok {ok}, failed {failed}");
    assert_eq!(sim.sim.stats().failed.chat_completions, failed);
}

#[tokio::test]
async fn serve_stops_when_cancelled() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let token = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(rose_sim::serve(
        listener,
        Sim::new(SimConfig::default()),
        token.clone(),
    ));
    token.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("stops in time")
        .expect("no panic");
    assert!(result.is_ok(), "{result:?}");
}
