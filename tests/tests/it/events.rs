//! `GET /api/jobs/{id}/events`: the job's states as Server-Sent Events, in
//! order, ending after the final one, on both deployments.

use std::time::Duration;

use rose_sim::{Latency, SimConfig};
use rose_tests::{AppOptions, Deployment, SPOKEN_WAV, TestApp, read_events, spawn_app_with};
use serde_json::Value;

/// Stages slow enough to be seen one by one.
fn paced() -> AppOptions {
    AppOptions {
        sim: SimConfig {
            latency: Latency {
                stt: Duration::from_millis(150),
                llm: Duration::from_millis(150),
                tts: Duration::from_millis(150),
            },
            ..SimConfig::default()
        },
        ..AppOptions::default()
    }
}

async fn submit(app: &TestApp) -> String {
    let session = app.start_session().await;
    let response = app.upload(&session, SPOKEN_WAV, None).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    body["job_id"].as_str().expect("job_id").to_owned()
}

async fn follows_a_job(app: TestApp) {
    let id = submit(&app).await;
    let events = read_events(&app.http, &format!("{}/api/jobs/{id}/events", app.url)).await;
    let all: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(all.last(), Some(&"succeeded"), "{all:?}");
    // Each spoken sentence is an `audio` event, before the end.
    let sentences = all.iter().filter(|n| **n == "audio").count();
    assert!(sentences >= 1, "{all:?}");
    let names: Vec<&str> = all.iter().copied().filter(|n| *n != "audio").collect();
    for stage in ["stt", "llm", "tts"] {
        assert!(names.contains(&stage), "{stage} in {names:?}");
    }
    let order = ["queued", "stt", "memory", "llm", "tts", "succeeded"];
    let ranks: Vec<usize> = names
        .iter()
        .map(|n| order.iter().position(|o| o == n).expect("a known state"))
        .collect();
    assert!(
        ranks.windows(2).all(|w| w[0] < w[1]),
        "in order, each once: {names:?}"
    );
    let (_, last) = events.last().expect("final event");
    assert_eq!(last["job_id"], id.as_str());
    assert_eq!(last["status"], "succeeded");
    assert!(last["result"]["text"].is_string(), "{last}");

    // After the end: the spoken sentences and the final event at once,
    // and nothing else.
    let again = read_events(&app.http, &format!("{}/api/jobs/{id}/events", app.url)).await;
    let names: Vec<&str> = again.iter().map(|(n, _)| n.as_str()).collect();
    let mut expected = vec!["audio"; sentences];
    expected.push("succeeded");
    assert_eq!(names, expected);

    // An unknown job: 404.
    let unknown = app
        .http
        .get(format!(
            "{}/api/jobs/01M8J3YRYH5MTVK6HFKY847806/events",
            app.url
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.expect("json");
    assert_eq!(body["error"]["code"], "job_not_found");
    app.stop().await;
}

#[tokio::test]
async fn embedded_events_follow_a_job_to_its_end() {
    follows_a_job(spawn_app_with(Deployment::Embedded, paced()).await).await;
}

#[tokio::test]
async fn scaled_events_follow_a_job_to_its_end() {
    follows_a_job(spawn_app_with(Deployment::Scaled, paced()).await).await;
}

/// A job queued with `?wait=` whose row cannot be read while it waits (the
/// database failing after the commit) answers 202 with the job: it was
/// accepted, and a client that retried on a 5xx would pay for a second one.
async fn a_wait_that_fails_after_queueing_answers_202(deployment: Deployment) {
    let app = spawn_app_with(
        deployment,
        AppOptions {
            no_worker: true,
            ..AppOptions::default()
        },
    )
    .await;
    let session = app.start_session().await;
    let form = reqwest::multipart::Form::new()
        .part(
            "audio",
            reqwest::multipart::Part::bytes(SPOKEN_WAV.to_vec()).file_name("speech.wav"),
        )
        .text("session_id", session);
    let request = app
        .http
        .post(format!("{}/api/voice/process?wait=20", app.url))
        .multipart(form)
        .send();
    let waiting = tokio::spawn(request);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app.count_rows("voice_jobs").await == 0 || app.queued_messages().await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job was not queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id: String = {
        let sql = "SELECT id FROM voice_jobs";
        match &app.rose.db {
            rose_shared::store::Database::Sqlite(pool) => {
                sqlx::query_scalar(sql).fetch_one(pool).await
            }
            rose_shared::store::Database::Postgres(pool) => {
                sqlx::query_scalar(sql).fetch_one(pool).await
            }
        }
        .expect("the job's id")
    };
    app.execute("ALTER TABLE voice_jobs RENAME TO voice_jobs_away")
        .await;
    let response = waiting.await.expect("join").expect("response");
    app.execute("ALTER TABLE voice_jobs_away RENAME TO voice_jobs")
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["job_id"], id.as_str());
    assert_eq!(body["status"], "queued");
    assert_eq!(app.count_rows("voice_jobs").await, 1, "one job, no second");
    app.stop().await;
}

#[tokio::test]
async fn embedded_wait_failing_after_queueing_answers_202() {
    a_wait_that_fails_after_queueing_answers_202(Deployment::Embedded).await;
}

#[tokio::test]
async fn scaled_wait_failing_after_queueing_answers_202() {
    a_wait_that_fails_after_queueing_answers_202(Deployment::Scaled).await;
}
