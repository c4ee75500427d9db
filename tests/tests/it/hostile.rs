//! Hostile provider answers: a 200 that is not JSON, a 50 MB body, an
//! answer that never ends. Each fails or retries its call with a clear
//! code, reads no more than Rose's limits, and the worker goes on serving.

use std::time::Duration;

use rose_sim::SimConfig;
use rose_tests::{AppOptions, Deployment, TestApp, spawn_app_with};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

async fn app(env: &[(&str, &str)]) -> TestApp {
    spawn_app_with(
        Deployment::Scaled,
        AppOptions {
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            sim: SimConfig::default(),
            ..AppOptions::default()
        },
    )
    .await
}

/// After the fault: the same worker answers a new job.
async fn still_serves(app: &TestApp) {
    let session = app.start_session().await;
    let id = app.submit_text(&session, "Are you still there?").await;
    let job = app.wait_for_job(&id, LIMIT).await;
    assert_eq!(job["status"], "succeeded", "the worker serves on: {job}");
}

/// Every attempt (one try each, three attempts) meets `answer` at
/// `endpoint`; the job fails with `code`, whose message says why.
async fn fails_with(app: &TestApp, endpoint: &str, answer: &str, code: &str, says: &str) {
    app.sim.hostile(endpoint, answer, 3).await;
    let session = app.start_session().await;
    let id = if endpoint == "transcriptions" {
        let response = app.upload(&session, rose_tests::SPOKEN_WAV, None).await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.expect("json");
        body["job_id"].as_str().expect("job id").to_owned()
    } else {
        app.submit_text(&session, "I keep her garden as she left it.")
            .await
    };
    let job = app.wait_for_job(&id, LIMIT).await;
    assert_eq!(job["status"], "failed", "{answer} at {endpoint}: {job}");
    assert_eq!(job["error"]["code"], code, "{job}");
    let message = job["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{message}");
    assert_eq!(job["attempts"], 3, "retried, then given up: {job}");
}

#[tokio::test]
async fn a_reply_that_is_not_json_fails_with_provider_bad_answer() {
    let app = app(&[]).await;
    fails_with(
        &app,
        "chat_completions",
        "not_json",
        "provider_bad_answer",
        "JSON",
    )
    .await;
    still_serves(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_transcript_of_fifty_megabytes_is_refused_unread() {
    let app = app(&[]).await;
    fails_with(
        &app,
        "transcriptions",
        "huge",
        "provider_bad_answer",
        "larger than",
    )
    .await;
    still_serves(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_reply_that_never_ends_times_out_and_is_retried() {
    let app = app(&[("ROSE_PROVIDER_TIMEOUT_SECS", "1")]).await;
    fails_with(
        &app,
        "chat_completions",
        "endless",
        "provider_unavailable",
        "timed out",
    )
    .await;
    still_serves(&app).await;
    app.stop().await;
}

/// Speech that is not audio, or never ends: those sentences are delivered
/// as text (never relayed as audio), the others spoken.
#[tokio::test]
async fn speech_that_is_not_audio_or_never_ends_is_delivered_as_text() {
    let app = app(&[
        ("ROSE_PROVIDER_TIMEOUT_SECS", "1"),
        ("ROSE_TTS_CONCURRENCY", "1"),
    ])
    .await;
    app.sim.hostile("text_to_speech", "not_json", 1).await;
    app.sim.hostile("text_to_speech", "endless", 1).await;
    let words = rose_tests::words_with_sentences(3, "hostile");
    let session = app.start_session().await;
    let id = app.submit_text(&session, &words).await;
    let job = app.wait_for_job(&id, LIMIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["degraded"], json!(["tts"]));
    let chunks = job["result"]["chunks"].as_array().expect("chunks");
    assert_eq!(chunks.len(), 3, "{job}");
    let voiced: Vec<bool> = chunks.iter().map(|c| c["audio_url"].is_string()).collect();
    assert_eq!(
        voiced,
        [false, false, true],
        "first sentences first met the faults: {job}"
    );
    still_serves(&app).await;
    app.stop().await;
}
