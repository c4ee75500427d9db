//! The observability figures of `GET /__sim/stats` (refused, failed,
//! max_concurrent, max_in_window, reset) and the configurable rate limits,
//! over loopback HTTP.

mod common;

use std::time::Duration;

use common::{TestSim, chat_body, wav};
use rose_sim::{Latency, Profile, SimConfig, SimLimits, Stats};
use serde_json::{Value, json};

fn rate_limited(limits: SimLimits, latency: Latency) -> SimConfig {
    SimConfig {
        latency,
        profile: Some(Profile::RateLimited),
        limits,
        ..SimConfig::default()
    }
}

async fn fetch_stats(sim: &TestSim) -> Stats {
    let value = sim.get_json("/__sim/stats").await;
    serde_json::from_value(value).expect("stats shape")
}

#[tokio::test]
async fn configured_llm_rpm_refuses_the_fourth_chat() {
    let limits = SimLimits {
        llm_rpm: 3,
        ..SimLimits::default()
    };
    let sim = TestSim::with(rate_limited(limits, Latency::default())).await;
    for i in 0..3 {
        let response = sim.chat(chat_body("hi")).await;
        assert_eq!(response.status(), 200, "chat {i}");
        assert_eq!(response.headers()["x-ratelimit-limit-requests"], "3");
        assert_eq!(
            response.headers()["x-ratelimit-remaining-requests"],
            (2 - i).to_string().as_str()
        );
    }
    let refused = sim.chat(chat_body("hi")).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["x-ratelimit-limit-requests"], "3");
    assert_eq!(refused.headers()["x-ratelimit-remaining-requests"], "0");
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("Limit 3, Used 3"), "{message}");

    let stats = fetch_stats(&sim).await;
    assert_eq!(stats.requests.chat_completions, 4);
    assert_eq!(stats.refused.chat_completions, 1);
    assert_eq!(stats.failed.chat_completions, 0);
    // Every arrival counts towards the window, refused or not.
    assert_eq!(stats.max_in_window.chat_completions, 4);
    // Transcriptions keep the default budget.
    let stt = sim.transcribe(wav(None), "whisper-large-v3").await;
    assert_eq!(stt.headers()["x-ratelimit-limit-requests"], "20");
}

#[tokio::test]
async fn configured_stt_rpm_refuses_beyond_the_budget() {
    let limits = SimLimits {
        stt_rpm: 2,
        ..SimLimits::default()
    };
    let sim = TestSim::with(rate_limited(limits, Latency::default())).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            sim.transcribe(wav(None), "whisper-large-v3")
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    let stats = sim.sim.stats();
    assert_eq!(stats.refused.transcriptions, 2);
    assert_eq!(stats.max_in_window.transcriptions, 4);
    // Chat keeps the default budget.
    assert_eq!(
        sim.chat(chat_body("hi")).await.headers()["x-ratelimit-limit-requests"],
        "30"
    );
}

#[tokio::test]
async fn configured_tts_concurrency_caps_simultaneous_requests() {
    let latency = Latency {
        tts: Duration::from_millis(300),
        ..Latency::default()
    };
    let limits = SimLimits {
        tts_concurrency: 1,
        ..SimLimits::default()
    };
    let sim = TestSim::with(rate_limited(limits, latency)).await;
    let body = json!({"text": "Breathe."});
    let (a, b) = tokio::join!(sim.tts(body.clone(), ""), sim.tts(body.clone(), ""));
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 429]);
    let refused = if a.status() == 429 { a } else { b };
    let detail: Value = refused.json().await.expect("json");
    assert_eq!(detail["detail"]["status"], "too_many_concurrent_requests");
    let message = detail["detail"]["message"].as_str().expect("message");
    assert!(message.contains("allows 1 at a time"), "{message}");
    let stats = sim.sim.stats();
    assert_eq!(stats.refused.text_to_speech, 1);
    assert_eq!(stats.failed.text_to_speech, 0);

    // Three slots: three at once pass, a fourth is refused.
    let limits = SimLimits {
        tts_concurrency: 3,
        ..SimLimits::default()
    };
    let sim = TestSim::with(rate_limited(limits, latency)).await;
    let (a, b, c, d) = tokio::join!(
        sim.tts(body.clone(), ""),
        sim.tts(body.clone(), ""),
        sim.tts(body.clone(), ""),
        sim.tts(body.clone(), "")
    );
    let mut statuses: Vec<u16> = [a, b, c, d].iter().map(|r| r.status().as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(sim.sim.stats().refused.text_to_speech, 1);
}

#[tokio::test]
async fn max_concurrent_counts_overlapping_requests() {
    let latency = Latency {
        stt: Duration::ZERO,
        llm: Duration::from_millis(300),
        tts: Duration::from_millis(300),
    };
    let sim = TestSim::with(SimConfig {
        latency,
        ..SimConfig::default()
    })
    .await;
    let body = json!({"text": "Breathe."});
    let (a, b, c) = tokio::join!(
        sim.tts(body.clone(), ""),
        sim.tts(body.clone(), ""),
        sim.tts(body.clone(), "")
    );
    assert!([a, b, c].iter().all(|r| r.status() == 200));
    // Four chats at once, one of them invalid: it still counts while handled,
    // but answers at once, so the maximum is at least the three that wait.
    let (a, b, c, d) = tokio::join!(
        sim.chat(chat_body("one")),
        sim.chat(chat_body("two")),
        sim.chat(chat_body("three")),
        sim.chat(json!({"model": "llama-3.3-70b-versatile"}))
    );
    assert_eq!(d.status(), 400);
    assert!([a, b, c].iter().all(|r| r.status() == 200));
    // One after another: never more than one at a time.
    for _ in 0..3 {
        sim.transcribe(wav(None), "whisper-large-v3").await;
    }
    let stats = fetch_stats(&sim).await;
    assert_eq!(stats.max_concurrent.text_to_speech, 3);
    assert!(
        (3..=4).contains(&stats.max_concurrent.chat_completions),
        "{:?}",
        stats.max_concurrent
    );
    assert_eq!(stats.max_concurrent.transcriptions, 1);
    assert_eq!(stats.max_concurrent.speech, 0);
    assert_eq!(stats.max_in_window.chat_completions, 4);
    assert_eq!(stats.max_in_window.transcriptions, 3);
    assert_eq!(stats.refused, rose_sim::RequestCounts::default());
    assert_eq!(stats.failed, rose_sim::RequestCounts::default());
}

#[tokio::test]
async fn refusals_and_failures_are_told_apart_and_reset_zeroes_everything() {
    let limits = SimLimits {
        llm_rpm: 1,
        ..SimLimits::default()
    };
    let sim = TestSim::with(rate_limited(limits, Latency::default())).await;
    // An injected 429 is a failure, not a rate-limit refusal.
    sim.fault(json!({"endpoint": "transcriptions", "status": 429, "count": 2}))
        .await;
    for _ in 0..3 {
        sim.transcribe(wav(None), "whisper-large-v3").await;
    }
    assert_eq!(sim.chat(chat_body("a")).await.status(), 200);
    assert_eq!(sim.chat(chat_body("b")).await.status(), 429);
    // Invalid requests are neither refused nor failed.
    assert_eq!(sim.tts(json!({}), "").await.status(), 422);

    let stats = fetch_stats(&sim).await;
    assert_eq!(stats.failed.transcriptions, 2);
    assert_eq!(stats.refused.transcriptions, 0);
    assert_eq!(stats.refused.chat_completions, 1);
    assert_eq!(stats.failed.chat_completions, 0);
    assert_eq!(stats.requests.text_to_speech, 1);
    assert_eq!(
        stats.refused.text_to_speech + stats.failed.text_to_speech,
        0
    );
    assert_eq!(stats.max_in_window.transcriptions, 3);
    assert_eq!(stats.total, 6);

    let reset: Value = sim
        .http
        .post(sim.url("/__sim/reset"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let zero =
        json!({"transcriptions": 0, "chat_completions": 0, "text_to_speech": 0, "speech": 0});
    let all_zero = json!({
        "requests": zero, "total": 0, "refused": zero, "failed": zero,
        "max_concurrent": zero, "in_flight": zero, "max_in_window": zero,
    });
    assert_eq!(reset, all_zero);
    assert_eq!(sim.get_json("/__sim/stats").await, all_zero);

    // The window was reset too: the next chat passes and counts afresh.
    assert_eq!(sim.chat(chat_body("c")).await.status(), 200);
    let stats = fetch_stats(&sim).await;
    assert_eq!(stats.max_in_window.chat_completions, 1);
    assert_eq!(stats.max_concurrent.chat_completions, 1);
    assert_eq!(stats.refused.chat_completions, 0);
}

#[tokio::test]
async fn a_shorter_window_resets_sooner_and_bounds_max_in_window() {
    let limits = SimLimits {
        llm_rpm: 1,
        window: Duration::from_millis(300),
        ..SimLimits::default()
    };
    let sim = TestSim::with(rate_limited(limits, Latency::default())).await;
    assert_eq!(sim.chat(chat_body("hi")).await.status(), 200);
    assert_eq!(sim.chat(chat_body("hi")).await.status(), 429);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        sim.chat(chat_body("hi")).await.status(),
        200,
        "a fresh window"
    );
    let stats = fetch_stats(&sim).await;
    assert_eq!(
        stats.max_in_window.chat_completions, 2,
        "the window spans 300 ms"
    );
}
