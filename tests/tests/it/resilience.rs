//! Rose against misbehaving providers: flaky answers, outages shorter and
//! longer than a job's deadline, speech down. Real Redis and PostgreSQL,
//! the simulator's fault profiles.

use std::collections::HashMap;
use std::time::Duration;

use rose_shared::queue::{ListStatus, MEMORY_QUEUE, Queue, VOICE_QUEUE};
use rose_sim::{Profile, SimConfig};
use rose_tests::{AppOptions, Deployment, SPOKEN_WAV, TestApp, spawn_app_with};
use serde_json::{Value, json};

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Submits `n` jobs, each in its own session (so no session grows long
/// enough for a summary call to join the providers' counts).
async fn submit_all(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let session = app.start_session().await;
        let response = app.upload(&session, SPOKEN_WAV, None).await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.expect("json");
        ids.push(body["job_id"].as_str().expect("id").to_owned());
    }
    ids
}

async fn finish_all(app: &TestApp, ids: &[String], limit: Duration) -> Vec<Value> {
    let mut jobs = Vec::with_capacity(ids.len());
    for id in ids {
        jobs.push(app.wait_for_job(id, limit).await);
    }
    jobs
}

async fn sim_stats(app: &TestApp) -> Value {
    serde_json::to_value(app.sim.sim.stats()).expect("stats")
}

async fn outage(app: &TestApp, endpoint: &str, seconds: f64) {
    let response = app
        .http
        .post(format!("{}/__sim/outage", app.sim.url))
        .json(&json!({"endpoint": endpoint, "seconds": seconds}))
        .send()
        .await
        .expect("outage");
    assert!(response.status().is_success());
}

#[tokio::test]
async fn flaky_providers_cost_only_the_retries_they_cause() {
    let app = spawn_app_with(
        Deployment::Scaled,
        AppOptions {
            sim: SimConfig {
                profile: Some(Profile::Flaky),
                flaky_rate: 0.3,
                ..SimConfig::default()
            },
            env: env(&[
                ("ROSE_PROVIDER_TRIES", "3"),
                ("ROSE_JOB_MAX_ATTEMPTS", "8"),
                // Keep the breakers out of this test's way.
                ("ROSE_BREAKER_FAILURES", "1000"),
            ]),
            ..AppOptions::default()
        },
    )
    .await;
    let n = 30;
    let ids = submit_all(&app, n).await;
    let jobs = finish_all(&app, &ids, Duration::from_secs(60)).await;
    let degraded = jobs
        .iter()
        .filter(|j| j["result"]["degraded"] == json!(["tts"]))
        .count() as u64;
    for job in &jobs {
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    // Memory extraction (one small-model call per turn) settles too.
    app.wait_idle(MEMORY_QUEUE, Duration::from_secs(60)).await;
    let stats = sim_stats(&app).await;
    let succeeded = |e: &str| {
        stats["requests"][e].as_u64().unwrap_or(0) - stats["failed"][e].as_u64().unwrap_or(0)
    };
    assert!(
        stats["failed"]["chat_completions"].as_u64().unwrap_or(0) > 0,
        "the profile did fail calls: {stats}"
    );
    // Every call beyond one success per stage was a failure that was retried:
    // no stage ran again once it had succeeded.
    assert_eq!(succeeded("transcriptions"), n as u64, "{stats}");
    assert_eq!(
        succeeded("chat_completions"),
        2 * n as u64,
        "one reply and one memory extraction per job: {stats}"
    );
    assert_eq!(succeeded("text_to_speech"), n as u64 - degraded, "{stats}");
    assert_eq!(app.count_rows("turns").await, 2 * n as i64);
    app.stop().await;
}

#[tokio::test]
async fn speech_down_delivers_text_only_and_opens_its_breaker() {
    let app = spawn_app_with(
        Deployment::Scaled,
        AppOptions {
            env: env(&[("ROSE_BREAKER_FAILURES", "3")]),
            ..AppOptions::default()
        },
    )
    .await;
    outage(&app, "text_to_speech", 60.0).await;
    let ids = submit_all(&app, 6).await;
    for job in finish_all(&app, &ids, Duration::from_secs(30)).await {
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["result"]["degraded"], json!(["tts"]));
        assert_eq!(job["result"]["audio_url"], Value::Null);
        assert!(job["result"]["text"].is_string());
    }
    let health: Value = app
        .http
        .get(format!("{}/api/health", app.url))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(
        health["circuit_breakers"]["tts"]["state"], "OPEN",
        "{health}"
    );
    assert_eq!(health["services"]["elevenlabs"], "unhealthy");
    assert_eq!(health["status"], "degraded");
    // Once open, the breaker spares the provider: fewer calls than jobs × tries.
    assert!(app.sim.count("text_to_speech") < 6);
    app.stop().await;
}

/// Breaker settings that notice an outage fast and probe it often.
fn outage_env(deadline_secs: &str) -> HashMap<String, String> {
    env(&[
        ("ROSE_BREAKER_FAILURES", "2"),
        ("ROSE_BREAKER_COOLDOWN_MS", "300"),
        ("ROSE_JOB_DEADLINE_SECS", deadline_secs),
        ("ROSE_JOB_MAX_ATTEMPTS", "3"),
    ])
}

#[tokio::test]
async fn jobs_wait_out_an_llm_outage_shorter_than_their_deadline() {
    let app = spawn_app_with(
        Deployment::Scaled,
        AppOptions {
            env: outage_env("60"),
            ..AppOptions::default()
        },
    )
    .await;
    outage(&app, "chat_completions", 3.0).await;
    let started = tokio::time::Instant::now();
    let ids = submit_all(&app, 5).await;
    let jobs = finish_all(&app, &ids, Duration::from_secs(45)).await;
    for job in &jobs {
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "they finished after the outage"
    );
    // More runs than the attempt limit allows failures: the waits were deferrals.
    let runs: i64 = jobs
        .iter()
        .map(|j| j["attempts"].as_i64().unwrap_or(0))
        .sum();
    assert!(runs > 5, "jobs were retried during the outage");
    assert_eq!(app.sim.count("transcriptions"), 5, "STT paid once per job");
    app.stop().await;
}

#[tokio::test]
async fn jobs_fail_to_the_dead_letters_when_the_outage_outlasts_their_deadline() {
    let app = spawn_app_with(
        Deployment::Scaled,
        AppOptions {
            env: outage_env("3"),
            ..AppOptions::default()
        },
    )
    .await;
    outage(&app, "chat_completions", 120.0).await;
    let ids = submit_all(&app, 4).await;
    for job in finish_all(&app, &ids, Duration::from_secs(30)).await {
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["error"]["code"], "provider_unavailable");
    }
    let Queue::Redis(queue) = &app.rose.queue else {
        panic!("the scaled deployment runs on Redis");
    };
    let dead = queue
        .list(VOICE_QUEUE, ListStatus::Dead, 100)
        .await
        .expect("dead letters");
    let mut dead_ids: Vec<&str> = dead.iter().map(|e| e.id.as_str()).collect();
    dead_ids.sort_unstable();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(dead_ids, want, "every given-up job is in the dead letters");
    app.stop().await;
}

#[tokio::test]
async fn the_embedded_deployment_retries_through_its_queue_too() {
    let app = spawn_app_with(
        Deployment::Embedded,
        AppOptions {
            env: outage_env("60"),
            ..AppOptions::default()
        },
    )
    .await;
    outage(&app, "chat_completions", 2.0).await;
    let ids = submit_all(&app, 3).await;
    for job in finish_all(&app, &ids, Duration::from_secs(45)).await {
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    assert_eq!(app.sim.count("transcriptions"), 3);
    app.stop().await;
}
