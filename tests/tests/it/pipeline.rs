//! The voice pipeline end to end, on both deployments: upload → queue →
//! worker → polled result, against the real databases, Redis and the simulator.

use std::time::Duration;

use rose_shared::audio::{AudioFormat, samples, sniff};
use rose_shared::domain::{Role, VoiceTask};
use rose_shared::store::{JobInput, NewJob};
use rose_tests::{Deployment, SPOKEN_TEXT, SPOKEN_WAV, TestApp, spawn_app};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(30);

async fn submit(app: &TestApp, session: &str) -> String {
    let response = app.upload(session, SPOKEN_WAV, None).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "queued");
    let job_id = body["job_id"].as_str().expect("job_id").to_owned();
    assert_eq!(body["status_url"], format!("/api/jobs/{job_id}"));
    assert_eq!(body["events_url"], format!("/api/jobs/{job_id}/events"));
    job_id
}

async fn round_trip(app: TestApp) {
    let session = app.start_session().await;
    let job_id = submit(&app, &session).await;
    let job = app.wait_for_job(&job_id, LIMIT).await;

    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["session_id"], session.as_str());
    let result = &job["result"];
    assert_eq!(result["transcript"], SPOKEN_TEXT);
    let text = result["text"].as_str().expect("reply text");
    assert!(
        text.contains("imulated"),
        "the simulator's reply says so: {text}"
    );
    assert_eq!(result["degraded"], json!([]));
    for part in ["queue_wait", "stt", "llm", "tts", "total"] {
        assert!(
            job["timings_ms"][part].is_i64(),
            "timings_ms.{part} in {job}"
        );
    }

    // The reply audio is served and is real MP3.
    let audio_url = result["audio_url"].as_str().expect("audio_url");
    let audio = app
        .http
        .get(format!("{}{audio_url}", app.url))
        .send()
        .await
        .expect("audio");
    assert_eq!(audio.status(), 200);
    assert_eq!(audio.headers()["content-type"], "audio/mpeg");
    let bytes = audio.bytes().await.expect("audio bytes");
    assert_eq!(sniff(&bytes), Some(AudioFormat::Mp3));

    // Both turns are stored, in order.
    let turns = app
        .rose
        .store
        .recent_turns(session.parse().expect("session id"), 10)
        .await
        .expect("turns");
    assert_eq!(turns.len(), 2);
    assert_eq!(
        (turns[0].role, turns[0].text.as_str()),
        (Role::User, SPOKEN_TEXT)
    );
    assert_eq!(
        (turns[1].role, turns[1].text.as_str()),
        (Role::Assistant, text)
    );

    // What Rose sent: the persona as system prompt and the user's words last.
    let sent: Value = app
        .http
        .get(format!("{}/__sim/requests", app.sim.url))
        .send()
        .await
        .expect("sim requests")
        .json()
        .await
        .expect("sim json");
    let chat = sent["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .find(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/chat/completions"))
        })
        .expect("a chat request");
    let messages = chat["body"]["messages"].as_array().expect("messages");
    assert_eq!(messages[0]["role"], "system");
    assert!(
        messages[0]["content"]
            .as_str()
            .unwrap_or_default()
            .contains("Rose")
    );
    assert_eq!(messages.last().expect("last")["content"], SPOKEN_TEXT);
    assert_eq!(chat["headers"]["authorization"], "[redacted]");
    app.stop().await;
}

#[tokio::test]
async fn embedded_voice_job_round_trip() {
    round_trip(spawn_app(Deployment::Embedded).await).await;
}

#[tokio::test]
async fn scaled_voice_job_round_trip() {
    round_trip(spawn_app(Deployment::Scaled).await).await;
}

/// The second turn of a session carries the first as context.
async fn conversation_context(app: TestApp) {
    let session = app.start_session().await;
    let first = submit(&app, &session).await;
    let first = app.wait_for_job(&first, LIMIT).await;
    let reply = first["result"]["text"].as_str().expect("reply").to_owned();
    let second = submit(&app, &session).await;
    assert_eq!(
        app.wait_for_job(&second, LIMIT).await["status"],
        "succeeded"
    );

    let chats = app.reply_requests().await;
    assert_eq!(chats.len(), 2);
    let messages = chats[1]["messages"].as_array().expect("messages");
    // The persona first; then, once the first turn's extraction has kept
    // something, the profile (system); then the conversation.
    assert_eq!(messages[0]["role"], "system");
    let turns: Vec<&Value> = messages.iter().filter(|m| m["role"] != "system").collect();
    let roles: Vec<&str> = turns.iter().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    assert_eq!(turns[1]["content"], reply.as_str());
    app.stop().await;
}

/// Typed words go through the same job with the STT stage skipped.
async fn typed_round_trip(app: TestApp) {
    let session = app.start_session().await;
    let form = reqwest::multipart::Form::new()
        .text("session_id", session.clone())
        .text("text", "  I keep setting two cups out in the morning.  ");
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
    let typed = "I keep setting two cups out in the morning.";
    assert_eq!(job["result"]["transcript"], typed, "trimmed, as typed");
    assert!(
        job["result"]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    assert!(job["result"]["audio_url"].is_string(), "Rose still speaks");
    assert!(job["timings_ms"].get("stt").is_none(), "{job}");
    assert_eq!(app.sim.count("transcriptions"), 0, "no STT for typed words");
    let replies = app.reply_requests().await;
    assert_eq!(replies.len(), 1);
    let messages = replies[0]["messages"].as_array().expect("messages");
    assert_eq!(messages.last().expect("last")["content"], typed);
    let sentences = job["result"]["chunks"].as_array().map_or(0, Vec::len);
    assert_eq!(
        app.count_rows("audio").await,
        i64::try_from(sentences).expect("count") + 1,
        "only the reply audio: its sentences and the whole"
    );
    let turns = app
        .rose
        .store
        .recent_turns(session.parse().expect("session id"), 10)
        .await
        .expect("turns");
    assert_eq!((turns[0].role, turns[0].text.as_str()), (Role::User, typed));
    app.stop().await;
}

#[tokio::test]
async fn embedded_typed_message_skips_stt() {
    typed_round_trip(spawn_app(Deployment::Embedded).await).await;
}

#[tokio::test]
async fn scaled_typed_message_skips_stt() {
    typed_round_trip(spawn_app(Deployment::Scaled).await).await;
}

#[tokio::test]
async fn embedded_second_turn_has_context() {
    conversation_context(spawn_app(Deployment::Embedded).await).await;
}

#[tokio::test]
async fn scaled_second_turn_has_context() {
    conversation_context(spawn_app(Deployment::Scaled).await).await;
}

/// A job whose LLM stage fails after STT resumes at LLM: STT is paid once.
async fn resumes_after_stt(app: TestApp) {
    let fault = app
        .http
        .post(format!("{}/__sim/faults", app.sim.url))
        .json(&json!({"endpoint": "chat_completions", "status": 503, "count": 1}))
        .send()
        .await
        .expect("inject fault");
    assert!(fault.status().is_success());

    let session = app.start_session().await;
    let job_id = submit(&app, &session).await;
    let job = app.wait_for_job(&job_id, LIMIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "one failed attempt, then a resumed one");
    assert_eq!(app.sim.count("transcriptions"), 1, "STT called once");
    assert_eq!(
        app.reply_requests().await.len(),
        2,
        "reply LLM called twice"
    );
    assert_eq!(app.sim.count("text_to_speech"), 1);
    assert_eq!(app.count_rows("turns").await, 2, "turns stored once");
    app.stop().await;
}

#[tokio::test]
async fn embedded_job_resumes_after_stt() {
    resumes_after_stt(spawn_app(Deployment::Embedded).await).await;
}

#[tokio::test]
async fn scaled_job_resumes_after_stt() {
    resumes_after_stt(spawn_app(Deployment::Scaled).await).await;
}

/// A permanent provider failure fails the job at once with a stable code.
async fn permanent_failure(app: TestApp) {
    app.http
        .post(format!("{}/__sim/faults", app.sim.url))
        .json(&json!({"endpoint": "chat_completions", "status": 400, "count": 5}))
        .send()
        .await
        .expect("inject fault");
    let session = app.start_session().await;
    let job_id = submit(&app, &session).await;
    let job = app.wait_for_job(&job_id, LIMIT).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["code"], "llm_failed");
    assert_eq!(job["attempts"], 1, "no retry of a permanent failure");
    assert_eq!(job["result"], Value::Null);
    assert_eq!(app.sim.count("chat_completions"), 1);
    app.stop().await;
}

#[tokio::test]
async fn embedded_permanent_failure_fails_at_once() {
    permanent_failure(spawn_app(Deployment::Embedded).await).await;
}

#[tokio::test]
async fn scaled_permanent_failure_fails_at_once() {
    permanent_failure(spawn_app(Deployment::Scaled).await).await;
}

/// A stored recording with no decodable audio (it bypassed the api's check:
/// written through the store, as an older Rose or a restored backup would
/// have kept it) reaches the provider, which refuses it as Groq does: the job
/// fails at once with `invalid_audio`.
async fn undecodable_stored_audio(app: TestApp) {
    let session = app.start_session().await;
    let (job, _) = app
        .rose
        .store
        .create_job(NewJob {
            session_id: session.parse().expect("session id"),
            input: JobInput::Audio {
                bytes: samples::wav_zero_fmt(),
                mime: "audio/wav".to_owned(),
            },
            idempotency_key: None,
            request_id: None,
            callback_url: None,
            max_in_flight: None,
        })
        .await
        .expect("job stored");
    app.rose
        .queue
        .push_voice(&VoiceTask {
            job_id: job.id,
            request_id: None,
        })
        .await
        .expect("job queued");
    let job = app.wait_for_job(&job.id.to_string(), LIMIT).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "invalid_audio", "{job}");
    assert_eq!(job["attempts"], 1, "a refused file is not retried");
    assert_eq!(app.sim.count("transcriptions"), 1, "the provider was asked");
    assert_eq!(app.sim.count("chat_completions"), 0);
    app.stop().await;
}

#[tokio::test]
async fn embedded_undecodable_stored_audio_fails_with_invalid_audio() {
    undecodable_stored_audio(spawn_app(Deployment::Embedded).await).await;
}

#[tokio::test]
async fn scaled_undecodable_stored_audio_fails_with_invalid_audio() {
    undecodable_stored_audio(spawn_app(Deployment::Scaled).await).await;
}

/// Speech failing for good still delivers the text reply, marked degraded.
async fn tts_fallback(app: TestApp) {
    app.http
        .post(format!("{}/__sim/faults", app.sim.url))
        .json(&json!({"endpoint": "text_to_speech", "status": 500, "count": 10}))
        .send()
        .await
        .expect("inject fault");
    let session = app.start_session().await;
    let job_id = submit(&app, &session).await;
    let job = app.wait_for_job(&job_id, LIMIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["degraded"], json!(["tts"]));
    assert_eq!(job["result"]["audio_url"], Value::Null);
    assert!(job["result"]["text"].is_string());
    app.stop().await;
}

#[tokio::test]
async fn embedded_tts_failure_degrades() {
    tts_fallback(spawn_app(Deployment::Embedded).await).await;
}

#[tokio::test]
async fn scaled_tts_failure_degrades() {
    tts_fallback(spawn_app(Deployment::Scaled).await).await;
}

/// The same Idempotency-Key in the same session returns the same job.
async fn idempotent(app: TestApp) {
    let session = app.start_session().await;
    let first = app.upload(&session, SPOKEN_WAV, Some("take-1")).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.expect("json");
    let again = app.upload(&session, SPOKEN_WAV, Some("take-1")).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.expect("json");
    assert_eq!(first["job_id"], again["job_id"]);

    let other_session = app.start_session().await;
    let other: Value = app
        .upload(&other_session, SPOKEN_WAV, Some("take-1"))
        .await
        .json()
        .await
        .expect("json");
    assert_ne!(
        other["job_id"], first["job_id"],
        "keys are scoped to a session"
    );

    let job_id = first["job_id"].as_str().expect("id");
    app.wait_for_job(job_id, LIMIT).await;
    app.wait_for_job(other["job_id"].as_str().expect("id"), LIMIT)
        .await;
    assert_eq!(app.count_rows("voice_jobs").await, 2);
    assert_eq!(app.sim.count("transcriptions"), 2);
    // Replaying after it finished still answers the same job.
    let late: Value = app
        .upload(&session, SPOKEN_WAV, Some("take-1"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(late["job_id"], first["job_id"]);
    assert_eq!(late["status"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn embedded_idempotency_key_returns_the_same_job() {
    idempotent(spawn_app(Deployment::Embedded).await).await;
}

#[tokio::test]
async fn scaled_idempotency_key_returns_the_same_job() {
    idempotent(spawn_app(Deployment::Scaled).await).await;
}

/// `?wait=` on submit answers 200 with the finished job.
async fn long_poll_submit(app: TestApp) {
    let session = app.start_session().await;
    let form = reqwest::multipart::Form::new()
        .part(
            "audio",
            reqwest::multipart::Part::bytes(SPOKEN_WAV.to_vec()).file_name("a.wav"),
        )
        .text("session_id", session);
    let response = app
        .http
        .post(format!("{}/api/voice/process?wait=20", app.url))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 200);
    let job: Value = response.json().await.expect("json");
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["result"]["transcript"], SPOKEN_TEXT);
    app.stop().await;
}

#[tokio::test]
async fn embedded_submit_with_wait_returns_the_result() {
    long_poll_submit(spawn_app(Deployment::Embedded).await).await;
}

#[tokio::test]
async fn scaled_submit_with_wait_returns_the_result() {
    long_poll_submit(spawn_app(Deployment::Scaled).await).await;
}

async fn health(app: TestApp) {
    let response = app
        .http
        .get(format!("{}/api/health", app.url))
        .send()
        .await
        .expect("health");
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["services"]["database"], "healthy");
    assert_eq!(body["services"]["groq"], "simulated");
    assert_eq!(body["services"]["elevenlabs"], "simulated");
    let redis = if app.deployment == Deployment::Scaled {
        "healthy"
    } else {
        "disabled"
    };
    assert_eq!(body["services"]["redis"], redis);
    app.stop().await;
}

#[tokio::test]
async fn embedded_health_reports_real_checks() {
    health(spawn_app(Deployment::Embedded).await).await;
}

#[tokio::test]
async fn scaled_health_reports_real_checks() {
    health(spawn_app(Deployment::Scaled).await).await;
}

#[tokio::test]
async fn request_id_is_honoured_and_echoed() {
    let app = spawn_app(Deployment::Embedded).await;
    let response = app
        .http
        .get(format!("{}/api/health", app.url))
        .header("X-Request-ID", "trace-abc-123")
        .send()
        .await
        .expect("health");
    assert_eq!(response.headers()["x-request-id"], "trace-abc-123");
    let session = app.start_session().await;
    let form = reqwest::multipart::Form::new()
        .part(
            "audio",
            reqwest::multipart::Part::bytes(SPOKEN_WAV.to_vec()).file_name("a.wav"),
        )
        .text("session_id", session);
    let body: Value = app
        .http
        .post(format!("{}/api/voice/process", app.url))
        .header("X-Request-ID", "upload-42")
        .multipart(form)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    let job = app
        .rose
        .store
        .get_job(
            body["job_id"]
                .as_str()
                .expect("id")
                .parse()
                .expect("job id"),
        )
        .await
        .expect("get job")
        .expect("job row");
    assert_eq!(
        job.request_id.as_deref(),
        Some("upload-42"),
        "the job carries the request id"
    );
    app.stop().await;
}
