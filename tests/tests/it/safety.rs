//! Safety on both deployments: a turn whose speaker speaks of ending their
//! life is marked `safety: "crisis"`, its reply prompt asks for warmth and
//! the human resource, and its reply carries the configured resource —
//! appended by Rose, once, even when the job runs again; ordinary grief is
//! left unmarked.

use std::collections::HashMap;
use std::time::Duration;

use rose_shared::domain::VoiceTask;
use rose_tests::{AppOptions, Deployment, TestApp, spawn_app_with};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(30);
const CRISIS: &str = "I don't want to be here anymore. I keep thinking about ending my life.";
const GRIEF: &str = "I feel like I died with her.";
/// Words of the reply prompt's safety instruction (and of no other prompt).
const GUIDANCE_MARK: &str = "spoken of ending their life";
const RESOURCE_TEXT: &str = "Please talk to someone tonight: the Rose test line is open all hours.";

/// A resource no one but this configuration names, so a reply carrying it
/// carries it because Rose appended it.
fn resource_url() -> String {
    format!(
        "https://help.example/{}",
        rose_tests::unique("line").replace('_', "-")
    )
}

async fn spawn(deployment: Deployment, url: &str) -> TestApp {
    let env = HashMap::from([(
        "ROSE_CRISIS_RESOURCES".to_owned(),
        json!({"text": RESOURCE_TEXT, "url": url}).to_string(),
    )]);
    spawn_app_with(
        deployment,
        AppOptions {
            env,
            ..AppOptions::default()
        },
    )
    .await
}

async fn type_words(app: &TestApp, session: &str, words: &str) -> Value {
    let form = reqwest::multipart::Form::new()
        .text("session_id", session.to_owned())
        .text("text", words.to_owned());
    let response = app
        .http
        .post(format!("{}/api/voice/process?wait=30", app.url))
        .multipart(form)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let job: Value = response.json().await.expect("json");
    assert_eq!(job["status"], "succeeded", "{job}");
    job
}

/// The `text` of every TTS request the simulator received, oldest first.
async fn spoken_texts(app: &TestApp) -> Vec<String> {
    let log: Value = reqwest::get(format!("{}/__sim/requests", app.sim.url))
        .await
        .expect("sim log")
        .json()
        .await
        .expect("sim log json");
    log["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter(|e| {
            e["path"]
                .as_str()
                .is_some_and(|p| p.contains("text-to-speech"))
        })
        .filter_map(|e| e["body"]["text"].as_str().map(str::to_owned))
        .collect()
}

fn system_texts(request: &Value) -> Vec<String> {
    request["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "system")
        .filter_map(|m| m["content"].as_str().map(str::to_owned))
        .collect()
}

async fn crisis_turn(deployment: Deployment) {
    let url = resource_url();
    let app = spawn(deployment, &url).await;
    let session = app.start_session().await;

    let job = type_words(&app, &session, CRISIS).await;
    assert_eq!(job["safety"], "crisis", "{job}");
    assert_eq!(
        job["result"]["resource"],
        json!({"text": RESOURCE_TEXT, "url": url}),
        "{job}"
    );
    let text = job["result"]["text"].as_str().expect("reply");
    let line = format!("{RESOURCE_TEXT} {url}");
    assert!(
        text.ends_with(&line),
        "the reply ends with the resource: {text}"
    );
    assert_eq!(text.matches(url.as_str()).count(), 1, "once: {text}");
    let model_part = text.strip_suffix(&line).expect("suffix").trim_end();
    assert!(
        model_part.starts_with("(Simulated reply)") && !model_part.is_empty(),
        "the model's words come first: {text}"
    );

    // The reply prompt asked for warmth and the resource, without the URL:
    // the reply carries it because Rose appended it, not the model.
    let prompts = app.reply_requests().await;
    assert_eq!(prompts.len(), 1);
    let guidance = system_texts(&prompts[0]);
    assert!(
        guidance
            .iter()
            .any(|s| s.contains(GUIDANCE_MARK) && s.contains("warm")),
        "the safety instruction is in the prompt: {guidance:?}"
    );
    let prompt = prompts[0].to_string();
    assert!(!prompt.contains(&url), "the URL is not in the prompt");
    let messages = prompts[0]["messages"].as_array().expect("messages");
    assert_eq!(messages.last().expect("last")["content"], CRISIS);

    // Rose speaks the resource's words after her own, not its web address.
    let spoken = spoken_texts(&app).await;
    let chunks = job["result"]["chunks"].as_array().expect("chunks");
    assert_eq!(
        chunks.last().and_then(|c| c["text"].as_str()),
        Some(RESOURCE_TEXT),
        "the last sentence: {job}"
    );
    assert!(spoken.iter().any(|s| s == RESOURCE_TEXT), "{spoken:?}");
    assert!(spoken.iter().all(|s| !s.contains(&url)), "{spoken:?}");
    assert_eq!(
        spoken.len(),
        job["result"]["chunks"].as_array().map_or(0, Vec::len),
        "one speech request per spoken sentence"
    );

    // The row keeps the mark: run the job again from its reply checkpoint
    // (a redelivery after the reply was stored) and the resource is still
    // there once, with the mark.
    let id = job["job_id"].as_str().expect("id").to_owned();
    app.execute(&format!(
        "UPDATE voice_jobs SET status = 'queued', reply_audio_id = NULL WHERE id = '{id}'"
    ))
    .await;
    app.rose
        .queue
        .push_voice(&VoiceTask {
            job_id: id.parse().expect("job id"),
            request_id: None,
        })
        .await
        .expect("queued again");
    let again = app.wait_for_job(&id, LIMIT).await;
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(again["safety"], "crisis");
    assert_eq!(again["result"]["text"], text, "appended once");
    assert_eq!(again["result"]["resource"]["url"], url.as_str());
    assert_eq!(app.reply_requests().await.len(), 1, "no second reply");
    assert_eq!(
        spoken_texts(&app).await,
        spoken,
        "its sentences were all spoken: none is spoken again"
    );
    assert!(again["result"]["audio_url"].is_string(), "{again}");

    // The stored conversation holds what Rose said, resource included.
    let turns = app
        .rose
        .store
        .recent_turns(session.parse().expect("session id"), 10)
        .await
        .expect("turns");
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[1].text, text);

    // The next, ordinary turn is not marked.
    let next = type_words(&app, &session, "Thank you for staying with me.").await;
    assert_eq!(next["safety"], Value::Null, "{next}");
    assert_eq!(next["result"]["resource"], Value::Null, "{next}");
    app.stop().await;
}

#[tokio::test]
async fn embedded_crisis_turn_carries_the_resource() {
    crisis_turn(Deployment::Embedded).await;
}

#[tokio::test]
async fn scaled_crisis_turn_carries_the_resource() {
    crisis_turn(Deployment::Scaled).await;
}

async fn grief_turn(deployment: Deployment) {
    let url = resource_url();
    let app = spawn(deployment, &url).await;
    let session = app.start_session().await;
    let job = type_words(&app, &session, GRIEF).await;
    assert_eq!(job["safety"], Value::Null, "{job}");
    assert_eq!(job["result"]["resource"], Value::Null, "{job}");
    let text = job["result"]["text"].as_str().expect("reply");
    assert!(!text.contains(&url), "{text}");
    let prompts = app.reply_requests().await;
    assert!(
        system_texts(&prompts[0])
            .iter()
            .all(|s| !s.contains(GUIDANCE_MARK)),
        "no safety instruction on an ordinary turn"
    );
    app.stop().await;
}

#[tokio::test]
async fn embedded_ordinary_grief_is_unmarked() {
    grief_turn(Deployment::Embedded).await;
}

#[tokio::test]
async fn scaled_ordinary_grief_is_unmarked() {
    grief_turn(Deployment::Scaled).await;
}

/// The resource the web client's "Need help now?" link points to: public,
/// the configured one.
#[tokio::test]
async fn the_resource_is_public() {
    let url = resource_url();
    let app = spawn(Deployment::Embedded, &url).await;
    let response = app
        .http
        .get(format!("{}/api/resources", app.url))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body, json!({"crisis": {"text": RESOURCE_TEXT, "url": url}}));
    app.stop().await;
}
