//! Speaking sentence by sentence with real `rose worker` processes: a
//! cancel heard across processes stops a job where it is, and a worker
//! killed after a reply's first sentence leaves the rest to another worker
//! without a sentence spoken or announced twice.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rose_shared::sentences::split;
use rose_sim::{Latency, Pacing, SimConfig, reply_for};
use rose_tests::process::Proc;
use rose_tests::{
    AppOptions, Deployment, TestApp, read_events, spawn_app_with, words_with_sentences,
};
use serde_json::Value;
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(60);

fn rose_worker(app: &TestApp, extra: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rose"));
    cmd.arg("worker")
        .env_remove("GROQ_API_KEY")
        .env("RUST_LOG", "warn")
        .env("DATABASE_URL", app.database_url().expect("scaled"))
        .env("REDIS_URL", rose_tests::redis_url())
        .env("ROSE_REDIS_PREFIX", &app.prefix)
        .env("ROSE_SIMULATOR_URL", &app.sim.url)
        .env("ROSE_PERSON_KEY_SECRET", rose_tests::PERSON_KEY_SECRET)
        .env("EMBEDDING_MODEL_DIR", rose_tests::model_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().expect("start rose worker"))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn job(app: &TestApp, id: &str) -> Value {
    app.http
        .get(format!("{}/api/jobs/{id}", app.url))
        .send()
        .await
        .expect("job")
        .json()
        .await
        .expect("job json")
}

/// Polls the job until `check` holds; panics after [`LIMIT`].
async fn until(app: &TestApp, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let job = job(app, id).await;
        if check(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "timed out: {what}: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn chunks(job: &Value) -> usize {
    job["result"]["chunks"].as_array().map_or(0, Vec::len)
}

/// The api here, the worker in its own process: the cancel reaches it over
/// Redis, the job ends `cancelled`, and the simulator sees no request that
/// started after the cancel was answered.
#[tokio::test]
async fn a_cancel_stops_a_job_running_in_another_process() {
    let app = spawn_app_with(
        Deployment::Scaled,
        AppOptions {
            no_worker: true,
            sim: SimConfig {
                latency: Latency {
                    tts: Duration::from_millis(500),
                    ..Latency::default()
                },
                ..SimConfig::default()
            },
            ..AppOptions::default()
        },
    )
    .await;
    let _worker = rose_worker(&app, &[("ROSE_TTS_CONCURRENCY", "1")]);
    let session = app.start_session().await;
    let id = app
        .submit_text(&session, &words_with_sentences(3, "cancel"))
        .await;
    let spoke = until(&app, &id, "the first sentence is spoken", |j| {
        chunks(j) == 1
    })
    .await;
    let heard = spoke["result"]["chunks"][0]["text"]
        .as_str()
        .expect("text")
        .to_owned();
    let response = app.cancel(&id).await;
    let acknowledged = unix_ms();
    assert_eq!(response.status(), 200);
    let cancelled: Value = response.json().await.expect("json");
    assert_eq!(cancelled["status"], "cancelled");

    // The worker lets the job go: its message is settled.
    app.wait_idle(rose_shared::queue::VOICE_QUEUE, LIMIT).await;
    let requests = app.sim.requests().await;
    let late: Vec<&Value> = requests
        .iter()
        .filter(|r| r["at_ms"].as_u64().is_some_and(|at| at > acknowledged))
        .collect();
    assert!(late.is_empty(), "requests after the cancel: {late:?}");
    let spoken = app.sim.spoken_texts().await;
    assert!(
        spoken.len() <= 2,
        "the third sentence never went out: {spoken:?}"
    );
    let job = job(&app, &id).await;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(chunks(&job), 1, "{job}");
    assert_eq!(job["result"]["text"], heard.as_str());

    // The next turn, run by the same worker: its prompt holds what was
    // heard of the cancelled reply, and nothing more.
    let next = app.submit_text(&session, "Thank you for that.").await;
    let done = until(&app, &next, "the next turn ends", |j| {
        j["status"] == "succeeded" || j["status"] == "failed"
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let prompts = app.reply_requests().await;
    let last = prompts.last().expect("the next turn's prompt");
    let assistant: Vec<&str> = last["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "assistant")
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(assistant, [heard.as_str()], "{last}");
    app.stop().await;
}

/// A worker killed with SIGKILL after a reply's first of three sentences,
/// while the model still writes: another worker continues the reply from
/// what was spoken; sentences 0, 1, 2 are each announced once and each went
/// to speech once.
#[tokio::test]
async fn a_worker_killed_after_the_first_sentence_leaves_no_repeats() {
    let app = spawn_app_with(
        Deployment::Scaled,
        AppOptions {
            no_worker: true,
            sim: SimConfig {
                pacing: Pacing {
                    tokens_per_s: Some(6.0),
                    ..Pacing::default()
                },
                ..SimConfig::default()
            },
            ..AppOptions::default()
        },
    )
    .await;
    let reclaim = [("ROSE_QUEUE_VISIBILITY_TIMEOUT_SECS", "2")];
    let doomed = rose_worker(&app, &reclaim);
    let session = app.start_session().await;
    let words = words_with_sentences(3, "killed");
    let id = app.submit_text(&session, &words).await;
    let follower = {
        let (http, url) = (
            app.http.clone(),
            format!("{}/api/jobs/{id}/events", app.url),
        );
        tokio::spawn(async move { read_events(&http, &url).await })
    };
    let spoke = until(&app, &id, "the first sentence is spoken", |j| {
        chunks(j) == 1
    })
    .await;
    // Stored, not only announced (its speech relayed): a sentence cut off
    // mid-speech is spoken again by the next delivery.
    let audio_id = spoke["result"]["chunks"][0]["audio_url"]
        .as_str()
        .expect("speech")
        .trim_start_matches("/api/audio/")
        .to_owned();
    let deadline = Instant::now() + LIMIT;
    while app
        .scalar(&format!(
            "SELECT COUNT(*) FROM audio WHERE id = '{audio_id}'"
        ))
        .await
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the first sentence's audio is stored"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = Command::new("kill")
        .args(["-KILL", &doomed.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let _survivor = rose_worker(&app, &reclaim);
    let done = until(&app, &id, "the job finishes", |j| {
        j["status"] == "succeeded" || j["status"] == "failed"
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let indices: Vec<u64> = done["result"]["chunks"]
        .as_array()
        .expect("chunks")
        .iter()
        .filter_map(|c| c["index"].as_u64())
        .collect();
    assert_eq!(indices, [0, 1, 2]);
    let sentences = split(&reply_for(&words));
    assert_eq!(
        done["result"]["text"].as_str().map(split),
        Some(sentences.clone()),
        "the reply continued from what was spoken, nothing said twice"
    );
    // Side by side, in whatever order they reached the provider.
    let mut spoken = app.sim.spoken_texts().await;
    spoken.sort();
    let mut expected = sentences.clone();
    expected.sort();
    assert_eq!(spoken, expected, "each sentence went to speech once");
    let events = follower.await.expect("follower");
    let announced: Vec<u64> = events
        .iter()
        .filter(|(name, _)| name == "audio")
        .filter_map(|(_, data)| data["index"].as_u64())
        .collect();
    assert_eq!(announced, [0, 1, 2], "each sentence announced once");
    let replies = app.reply_requests().await;
    let resumed = replies.last().expect("the continued reply");
    let last = resumed["messages"]
        .as_array()
        .and_then(|m| m.last())
        .expect("a last message");
    assert_eq!(last["role"], "assistant", "continued from what was spoken");
    assert_eq!(last["content"], sentences[0].as_str());
    app.stop().await;
}
