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
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.last(), Some(&"succeeded"), "{names:?}");
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

    // After the end: the final event at once, and nothing else.
    let again = read_events(&app.http, &format!("{}/api/jobs/{id}/events", app.url)).await;
    let names: Vec<&str> = again.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["succeeded"]);

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
