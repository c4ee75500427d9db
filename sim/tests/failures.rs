//! Configurable failures over loopback HTTP: the flaky rate (500, 503 and
//! dropped connections), the timed `outage` profile, and run-time outages
//! through `POST|DELETE /__sim/outage`.

mod common;

use std::time::{Duration, Instant};

use common::{KEY, TestSim, chat_body, wav};
use rose_sim::{Profile, SimConfig};
use serde_json::{Value, json};

/// What the client saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Status(u16),
    /// No answer: the connection broke.
    Transport,
}

/// A chat request that reports transport errors instead of panicking.
async fn try_chat(sim: &TestSim) -> (Seen, Option<Value>) {
    let sent = sim
        .http
        .post(sim.groq("/chat/completions"))
        .bearer_auth(KEY)
        .json(&chat_body("hi"))
        .send()
        .await;
    match sent {
        Err(_) => (Seen::Transport, None),
        Ok(response) => {
            let status = response.status().as_u16();
            // A body cut short is a transport error too.
            match response.bytes().await {
                Ok(bytes) => (Seen::Status(status), serde_json::from_slice(&bytes).ok()),
                Err(_) => (Seen::Transport, None),
            }
        }
    }
}

fn flaky(rate: f64) -> SimConfig {
    SimConfig {
        profile: Some(Profile::Flaky),
        flaky_rate: rate,
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn flaky_rate_one_fails_every_request_with_500_503_or_a_dropped_connection() {
    let sim = TestSim::with(flaky(1.0)).await;
    let (mut s500, mut s503, mut dropped) = (0, 0, 0);
    for i in 0..30 {
        match try_chat(&sim).await {
            (Seen::Transport, _) => dropped += 1,
            (Seen::Status(status @ (500 | 503)), body) => {
                let body = body.unwrap_or_default();
                assert!(body["error"]["message"].is_string(), "{i}: {body}");
                if status == 500 {
                    s500 += 1;
                } else {
                    s503 += 1;
                }
            }
            other => panic!("request {i}: unexpected {other:?}"),
        }
    }
    // About ten each; a category missing entirely has odds near 1 in 100 000.
    assert!(dropped >= 1, "500: {s500}, 503: {s503}, dropped: {dropped}");
    assert!(s500 >= 1 && s503 >= 1, "500: {s500}, 503: {s503}");
    let stats = sim.sim.stats();
    assert_eq!(stats.failed.chat_completions, 30);
    assert_eq!(stats.requests.chat_completions, 30);

    // The log shows dropped connections without a status.
    let log = sim.get_json("/__sim/requests").await;
    let entries = log["requests"].as_array().expect("requests");
    let logged_drops = entries.iter().filter(|e| e["dropped"] == true).count();
    assert_eq!(logged_drops, dropped);
    assert!(
        entries
            .iter()
            .filter(|e| e["dropped"] == true)
            .all(|e| e["status"].is_null())
    );

    // ElevenLabs fails the same way, in its own shape.
    let mut tts_dropped = 0;
    for i in 0..30 {
        let sent = sim
            .http
            .post(sim.url("/v1/text-to-speech/voice123"))
            .header("xi-api-key", KEY)
            .json(&json!({"text": "hello"}))
            .send()
            .await;
        match sent {
            Err(_) => tts_dropped += 1,
            Ok(response) => {
                let status = response.status().as_u16();
                assert!(status == 500 || status == 503, "{i}: {status}");
                let body: Value = response.json().await.expect("json");
                assert!(body["detail"]["status"].is_string(), "{body}");
            }
        }
    }
    assert!(tts_dropped >= 1);
    // The server is still serving after all those drops.
    assert_eq!(
        sim.get_json("/__sim/stats").await["failed"]["text_to_speech"],
        30
    );
}

#[tokio::test]
async fn flaky_rate_zero_never_fails() {
    let sim = TestSim::with(flaky(0.0)).await;
    for i in 0..30 {
        let (seen, _) = try_chat(&sim).await;
        assert_eq!(seen, Seen::Status(200), "request {i}");
    }
    assert_eq!(sim.sim.stats().failed.chat_completions, 0);
}

#[tokio::test]
async fn timed_outage_profile_fails_then_recovers() {
    let outage = Duration::from_millis(400);
    let started = Instant::now();
    let sim = TestSim::with(SimConfig {
        profile: Some(Profile::Outage),
        outage: Some(outage),
        ..SimConfig::default()
    })
    .await;
    let chat = sim.chat(chat_body("hi")).await;
    let tts = sim.tts(json!({"text": "hi"}), "").await;
    let stt = sim.transcribe(wav(None), "whisper-large-v3").await;
    assert!(
        started.elapsed() < outage,
        "the first requests took too long to test the outage"
    );
    assert_eq!(chat.status(), 503);
    let body: Value = chat.json().await.expect("json");
    assert_eq!(body["error"]["code"], "service_unavailable");
    assert_eq!(tts.status(), 503);
    let body: Value = tts.json().await.expect("json");
    assert_eq!(body["detail"]["status"], "service_unavailable");
    assert_eq!(stt.status(), 503);

    tokio::time::sleep((outage + Duration::from_millis(50)).saturating_sub(started.elapsed()))
        .await;
    assert_eq!(sim.chat(chat_body("hi")).await.status(), 200);
    assert_eq!(sim.tts(json!({"text": "hi"}), "").await.status(), 200);
    assert_eq!(
        sim.transcribe(wav(None), "whisper-large-v3").await.status(),
        200
    );
    let stats = sim.sim.stats();
    assert_eq!(stats.failed.chat_completions, 1);
    assert_eq!(stats.failed.text_to_speech, 1);
    assert_eq!(stats.failed.transcriptions, 1);
}

async fn post_outage(sim: &TestSim, body: Value) -> reqwest::Response {
    sim.http
        .post(sim.url("/__sim/outage"))
        .json(&body)
        .send()
        .await
        .expect("send")
}

async fn speech_status(sim: &TestSim) -> u16 {
    sim.http
        .post(sim.groq("/audio/speech"))
        .bearer_auth(KEY)
        .json(&json!({"model": "tts-1", "input": "hi", "voice": "alloy"}))
        .send()
        .await
        .expect("send")
        .status()
        .as_u16()
}

#[tokio::test]
async fn outage_route_fails_one_endpoint_for_a_while() {
    let sim = TestSim::start().await;
    let started = Instant::now();
    let response = post_outage(
        &sim,
        json!({"endpoint": "chat_completions", "seconds": 0.3}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    let left = body["outages"]["chat_completions"]
        .as_f64()
        .expect("seconds left");
    assert!(left > 0.0 && left <= 0.3, "{left}");
    assert_eq!(body["outages"]["transcriptions"], Value::Null);

    let chat = sim.chat(chat_body("hi")).await;
    assert_eq!(chat.status(), 503);
    let error: Value = chat.json().await.expect("json");
    assert_eq!(error["error"]["code"], "service_unavailable");
    assert!(error["error"]["message"].is_string());
    // Other endpoints are fine.
    assert_eq!(
        sim.transcribe(wav(None), "whisper-large-v3").await.status(),
        200
    );
    assert_eq!(sim.tts(json!({"text": "hi"}), "").await.status(), 200);
    assert!(started.elapsed() < Duration::from_millis(300));

    tokio::time::sleep(Duration::from_millis(350).saturating_sub(started.elapsed())).await;
    assert_eq!(sim.chat(chat_body("hi")).await.status(), 200);
    let listed = sim.get_json("/__sim/outage").await;
    assert_eq!(listed["outages"]["chat_completions"], Value::Null);
    assert_eq!(sim.sim.stats().failed.chat_completions, 1);
}

#[tokio::test]
async fn outage_route_for_every_endpoint_ends_early_on_delete() {
    // Whatever the profile.
    let sim = TestSim::with(SimConfig {
        profile: Some(Profile::RateLimited),
        ..SimConfig::default()
    })
    .await;
    for body in [
        json!({"seconds": 30}),
        json!({"endpoint": null, "seconds": 30.0}),
    ] {
        assert_eq!(post_outage(&sim, body).await.status(), 200);
        assert_eq!(sim.chat(chat_body("hi")).await.status(), 503);
        let tts = sim.tts(json!({"text": "hi"}), "").await;
        assert_eq!(tts.status(), 503);
        let detail: Value = tts.json().await.expect("json");
        assert_eq!(detail["detail"]["status"], "service_unavailable");
        assert_eq!(
            sim.transcribe(wav(None), "whisper-large-v3").await.status(),
            503
        );
        assert_eq!(speech_status(&sim).await, 503);
        // Authentication is still checked first.
        let anonymous = sim
            .http
            .post(sim.groq("/chat/completions"))
            .json(&chat_body("hi"))
            .send()
            .await
            .expect("send");
        assert_eq!(anonymous.status(), 401);

        let ended = sim
            .http
            .delete(sim.url("/__sim/outage"))
            .send()
            .await
            .expect("send");
        assert_eq!(ended.status(), 200);
        let body: Value = ended.json().await.expect("json");
        assert!(
            body["outages"]
                .as_object()
                .expect("outages")
                .values()
                .all(Value::is_null),
            "{body}"
        );
        assert_eq!(sim.chat(chat_body("hi")).await.status(), 200);
        assert_eq!(sim.tts(json!({"text": "hi"}), "").await.status(), 200);
        assert_eq!(speech_status(&sim).await, 200);
    }
    let stats = sim.sim.stats();
    assert_eq!(stats.failed.speech, 2);
    assert_eq!(stats.failed.chat_completions, 2);
    assert_eq!(stats.refused.chat_completions, 0);
}

#[tokio::test]
async fn delete_does_not_end_the_profile_outage() {
    let sim = TestSim::with(SimConfig {
        profile: Some(Profile::Outage),
        ..SimConfig::default()
    })
    .await;
    let ended = sim
        .http
        .delete(sim.url("/__sim/outage"))
        .send()
        .await
        .expect("send");
    assert_eq!(ended.status(), 200);
    assert_eq!(sim.chat(chat_body("hi")).await.status(), 503);
}

#[tokio::test]
async fn outage_route_validates_its_body() {
    let sim = TestSim::start().await;
    for bad in [
        json!({}),
        json!({"seconds": 0}),
        json!({"seconds": -1.5}),
        json!({"seconds": "5"}),
        json!({"seconds": 1e300}),
        json!({"endpoint": "embeddings", "seconds": 1}),
        json!({"endpoint": 3, "seconds": 1}),
        json!({"seconds": 1, "until": 5}),
        json!([1]),
    ] {
        let response = post_outage(&sim, bad.clone()).await;
        assert_eq!(response.status(), 400, "{bad}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "invalid_request", "{bad}");
    }
    let not_json = sim
        .http
        .post(sim.url("/__sim/outage"))
        .body("seconds=5")
        .send()
        .await
        .expect("send");
    assert_eq!(not_json.status(), 400);
    // Nothing was started.
    assert_eq!(sim.chat(chat_body("hi")).await.status(), 200);
    let listed = sim.get_json("/__sim/outage").await;
    assert_eq!(
        listed,
        json!({"outages": {"transcriptions": null, "chat_completions": null, "text_to_speech": null, "speech": null}})
    );
}
