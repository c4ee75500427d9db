//! Replies spoken sentence by sentence, on both deployments: each sentence
//! stored and announced (`audio` events, `result.chunks`) in order before
//! the end, the whole reply as one file at the end, first sentences first
//! under a shared speech budget, and cancelling a job.

use std::time::Duration;

use rose_shared::audio::{AudioFormat, sniff};
use rose_shared::sentences::split;
use rose_sim::{Latency, Pacing, SimConfig, reply_for};
use rose_tests::{
    AppOptions, Deployment, TestApp, read_events, spawn_app_with, words_with_sentences,
};
use serde_json::{Value, json};

use futures::StreamExt as _;

const LIMIT: Duration = Duration::from_secs(30);

fn options(env: &[(&str, &str)], sim: SimConfig) -> AppOptions {
    AppOptions {
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        sim,
        ..AppOptions::default()
    }
}

fn tts_latency(ms: u64) -> SimConfig {
    SimConfig {
        latency: Latency {
            tts: Duration::from_millis(ms),
            ..Latency::default()
        },
        ..SimConfig::default()
    }
}

async fn speaks_sentence_by_sentence(app: TestApp) {
    let words = words_with_sentences(3, "speaks");
    let session = app.start_session().await;
    let id = app.submit_text(&session, &words).await;
    let events = read_events(&app.http, &format!("{}/api/jobs/{id}/events", app.url)).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.last(), Some(&"succeeded"), "{names:?}");
    let audio: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "audio")
        .map(|(_, data)| data)
        .collect();
    let indices: Vec<u64> = audio.iter().filter_map(|a| a["index"].as_u64()).collect();
    assert_eq!(
        indices,
        [0, 1, 2],
        "one audio event per sentence, in order: {names:?}"
    );
    let job = &events.last().expect("final").1;
    let reply = job["result"]["text"].as_str().expect("reply text");
    let sentences = split(reply);
    for (event, sentence) in audio.iter().zip(&sentences) {
        assert_eq!(event["text"], sentence.as_str());
        let url = event["audio_url"]
            .as_str()
            .expect("each sentence has speech");
        let bytes = app
            .http
            .get(format!("{}{url}", app.url))
            .send()
            .await
            .expect("chunk audio")
            .bytes()
            .await
            .expect("chunk bytes");
        assert_eq!(sniff(&bytes), Some(AudioFormat::Mp3));
    }
    // The job JSON holds the same chunks, and the whole reply as one file.
    let chunks = job["result"]["chunks"].as_array().expect("chunks");
    assert_eq!(chunks.len(), 3, "{job}");
    assert_eq!(&&chunks[1], &audio[1], "the event is the chunk");
    let whole = job["result"]["audio_url"]
        .as_str()
        .expect("the whole reply");
    let bytes = app
        .http
        .get(format!("{}{whole}", app.url))
        .send()
        .await
        .expect("whole audio")
        .bytes()
        .await
        .expect("whole bytes");
    assert_eq!(sniff(&bytes), Some(AudioFormat::Mp3));
    let timings = &job["timings_ms"];
    let first_token = timings["first_token"].as_i64().expect("first_token");
    let first_audio = timings["first_audio"].as_i64().expect("first_audio");
    let total = timings["total"].as_i64().expect("total");
    assert!(
        first_token <= first_audio && first_audio <= total,
        "{timings}"
    );
    // Each sentence went to speech once, the later ones with what came before.
    // (Side by side: in whatever order they reached the provider.)
    let mut spoken = app.sim.spoken_texts().await;
    spoken.sort();
    let mut expected = sentences.clone();
    expected.sort();
    assert_eq!(spoken, expected, "one speech request per sentence");
    let requests = app.sim.requests().await;
    let speech: Vec<&Value> = requests
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.contains("/text-to-speech/"))
        })
        .collect();
    assert!(
        speech
            .iter()
            .all(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/stream"))),
        "the streaming endpoint: {speech:?}"
    );
    let second = speech
        .iter()
        .find(|r| r["body"]["text"] == sentences[1].as_str())
        .expect("the second sentence");
    assert_eq!(second["body"]["previous_text"], sentences[0].as_str());

    // A late follower gets every sentence, then the end.
    let again = read_events(&app.http, &format!("{}/api/jobs/{id}/events", app.url)).await;
    let names: Vec<&str> = again.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["audio", "audio", "audio", "succeeded"]);
    app.stop().await;
}

#[tokio::test]
async fn embedded_replies_are_spoken_sentence_by_sentence() {
    let app = spawn_app_with(Deployment::Embedded, options(&[], SimConfig::default())).await;
    speaks_sentence_by_sentence(app).await;
}

#[tokio::test]
async fn scaled_replies_are_spoken_sentence_by_sentence() {
    let app = spawn_app_with(Deployment::Scaled, options(&[], SimConfig::default())).await;
    speaks_sentence_by_sentence(app).await;
}

/// `ROSE_STREAMING=false`: the whole reply, then the whole speech, once.
#[tokio::test]
async fn without_streaming_the_reply_is_spoken_whole() {
    let app = spawn_app_with(
        Deployment::Embedded,
        options(&[("ROSE_STREAMING", "false")], SimConfig::default()),
    )
    .await;
    let words = words_with_sentences(3, "whole");
    let session = app.start_session().await;
    let id = app.submit_text(&session, &words).await;
    let job = app.wait_for_job(&id, LIMIT).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["result"]["chunks"], json!([]));
    assert!(job["result"]["audio_url"].is_string());
    let spoken = app.sim.spoken_texts().await;
    assert_eq!(spoken, [job["result"]["text"].as_str().expect("text")]);
    app.stop().await;
}

/// With one speech slot, the second job's first sentence is spoken before
/// the first job's third (first sentences first); in arrival order it
/// would wait behind them all.
async fn first_sentences_first(order: &str) -> (usize, usize) {
    let app = spawn_app_with(
        Deployment::Scaled,
        options(
            &[("ROSE_TTS_CONCURRENCY", "1"), ("ROSE_TTS_ORDER", order)],
            tts_latency(300),
        ),
    )
    .await;
    let a_words = words_with_sentences(3, "first");
    let b_words = words_with_sentences(3, "second");
    let a_session = app.start_session().await;
    let b_session = app.start_session().await;
    let a = app.submit_text(&a_session, &a_words).await;
    // B comes once A's first sentence is being spoken (its others wait).
    let deadline = tokio::time::Instant::now() + LIMIT;
    while app.sim.spoken_texts().await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "A never spoke");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b = app.submit_text(&b_session, &b_words).await;
    let a_job = app.wait_for_job(&a, LIMIT).await;
    let b_job = app.wait_for_job(&b, LIMIT).await;
    let a_sentences = split(a_job["result"]["text"].as_str().expect("a"));
    let b_sentences = split(b_job["result"]["text"].as_str().expect("b"));
    let spoken = app.sim.spoken_texts().await;
    let at = |s: &String| spoken.iter().position(|t| t == s).expect("spoken");
    let positions = (at(&b_sentences[0]), at(&a_sentences[2]));
    app.stop().await;
    positions
}

#[tokio::test]
async fn first_sentences_go_first_under_a_shared_speech_budget() {
    let (b_first, a_third) = first_sentences_first("first-sentences").await;
    assert!(
        b_first < a_third,
        "B's first at {b_first}, A's third at {a_third}"
    );
    let (b_first, a_third) = first_sentences_first("arrival").await;
    assert!(
        b_first > a_third,
        "in arrival order B waits: {b_first} vs {a_third}"
    );
}

async fn cancels_a_queued_job(deployment: Deployment) {
    let app = spawn_app_with(
        deployment,
        AppOptions {
            no_worker: true,
            ..AppOptions::default()
        },
    )
    .await;
    let session = app.start_session().await;
    let id = app.submit_text(&session, "Are you there?").await;
    let response = app.cancel(&id).await;
    assert_eq!(response.status(), 200);
    let job: Value = response.json().await.expect("json");
    assert_eq!(job["status"], "cancelled");
    // Repeating is harmless.
    let again = app.cancel(&id).await;
    assert_eq!(again.status(), 200);
    let events = read_events(&app.http, &format!("{}/api/jobs/{id}/events", app.url)).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["cancelled"]);
    // A worker that comes later takes the message and calls no provider.
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(rose_worker::run(
        app.rose.clone(),
        rose_worker::WorkerOptions {
            concurrency: 2,
            name: rose_worker::unique_name(),
        },
        shutdown.clone(),
    ));
    app.wait_idle(rose_shared::queue::VOICE_QUEUE, LIMIT).await;
    let stats = serde_json::to_value(app.sim.sim.stats()).expect("stats");
    assert_eq!(stats["total"], 0, "no provider called: {stats}");
    let job = app.wait_for_job(&id, LIMIT).await;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["result"], Value::Null, "nothing was said");
    assert_eq!(app.count_rows("turns").await, 0, "no trace in the history");

    // Unknown: 404; not an id: 400; finished: 409.
    let unknown = app.cancel("01M8J3YRYH5MTVK6HFKY847806").await;
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.expect("json");
    assert_eq!(body["error"]["code"], "job_not_found");
    let malformed = app.cancel("not-a-job").await;
    assert_eq!(malformed.status(), 400);
    let body: Value = malformed.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_job_id");
    let done = app.submit_text(&session, "Thank you, Rose.").await;
    assert_eq!(app.wait_for_job(&done, LIMIT).await["status"], "succeeded");
    let finished = app.cancel(&done).await;
    assert_eq!(finished.status(), 409);
    let body: Value = finished.json().await.expect("json");
    assert_eq!(body["error"]["code"], "job_finished");
    shutdown.cancel();
    app.stop().await;
}

#[tokio::test]
async fn embedded_a_cancelled_queued_job_never_starts() {
    cancels_a_queued_job(Deployment::Embedded).await;
}

#[tokio::test]
async fn scaled_a_cancelled_queued_job_never_starts() {
    cancels_a_queued_job(Deployment::Scaled).await;
}

/// A job cancelled after its first sentence was heard: it ends
/// `cancelled`, its other sentences are never spoken, and the next turn's
/// prompt holds only what was heard.
async fn cancels_while_speaking(deployment: Deployment) {
    let app = spawn_app_with(
        deployment,
        options(&[("ROSE_TTS_CONCURRENCY", "1")], tts_latency(400)),
    )
    .await;
    let words = words_with_sentences(3, "interrupted");
    let session = app.start_session().await;
    let id = app.submit_text(&session, &words).await;
    let url = format!("{}/api/jobs/{id}/events", app.url);
    let mut events = app.http.get(&url).send().await.expect("events");
    let mut buffer = String::new();
    let heard = loop {
        let chunk = tokio::time::timeout(LIMIT, events.chunk())
            .await
            .expect("an event in time")
            .expect("events body")
            .expect("the stream goes on until the first sentence");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(start) = buffer.find("event: audio\ndata: ") {
            let rest = &buffer[start + "event: audio\ndata: ".len()..];
            if let Some(end) = rest.find('\n') {
                let data: Value = serde_json::from_str(&rest[..end]).expect("audio data");
                break data["text"].as_str().expect("text").to_owned();
            }
        }
    };
    let response = app.cancel(&id).await;
    assert_eq!(response.status(), 200);
    let cancelled: Value = response.json().await.expect("json");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["result"]["text"], heard.as_str(), "{cancelled}");
    assert_eq!(
        cancelled["result"]["chunks"].as_array().map(Vec::len),
        Some(1)
    );

    // The next turn: its prompt holds what was heard, not what was not.
    let next = app.submit_text(&session, "Thank you for that.").await;
    assert_eq!(app.wait_for_job(&next, LIMIT).await["status"], "succeeded");
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
    let job = app.wait_for_job(&id, LIMIT).await;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["result"]["chunks"].as_array().map(Vec::len), Some(1));
    app.stop().await;
}

#[tokio::test]
async fn embedded_a_running_job_stops_and_the_history_keeps_what_was_heard() {
    cancels_while_speaking(Deployment::Embedded).await;
}

#[tokio::test]
async fn scaled_a_running_job_stops_and_the_history_keeps_what_was_heard() {
    cancels_while_speaking(Deployment::Scaled).await;
}

/// With the model writing slowly, the first sentence is heard while the
/// model is still writing the last: its `audio` event arrives while the
/// reply stream is still open at the simulator.
async fn speaks_before_the_reply_is_written(deployment: Deployment) {
    let sim = SimConfig {
        pacing: Pacing {
            tokens_per_s: Some(10.0),
            ..Pacing::default()
        },
        ..SimConfig::default()
    };
    let app = spawn_app_with(deployment, options(&[], sim)).await;
    let words = words_with_sentences(3, "early");
    let session = app.start_session().await;
    let id = app.submit_text(&session, &words).await;
    let response = app
        .http
        .get(format!("{}/api/jobs/{id}/events", app.url))
        .send()
        .await
        .expect("events");
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    let writing = loop {
        let chunk = tokio::time::timeout(LIMIT, body.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on until the first sentence")
            .expect("events body");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if seen.contains("event: audio") {
            let stats = serde_json::to_value(app.sim.sim.stats()).expect("stats");
            break stats["in_flight"]["chat_completions"].as_u64();
        }
        assert!(
            !seen.contains("event: succeeded"),
            "no audio event before the end: {seen}"
        );
    };
    assert_eq!(writing, Some(1), "the reply was still being written");
    let job = app.wait_for_job(&id, LIMIT).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["result"]["chunks"].as_array().map(Vec::len), Some(3));
    app.stop().await;
}

#[tokio::test]
async fn embedded_the_first_sentence_is_heard_while_the_model_writes() {
    speaks_before_the_reply_is_written(Deployment::Embedded).await;
}

#[tokio::test]
async fn scaled_the_first_sentence_is_heard_while_the_model_writes() {
    speaks_before_the_reply_is_written(Deployment::Scaled).await;
}

/// Injects a fault into `app`'s simulator.
async fn fault(app: &TestApp, body: Value) {
    let response = app
        .http
        .post(format!("{}/__sim/faults", app.sim.url))
        .json(&body)
        .send()
        .await
        .expect("fault request");
    assert_eq!(response.status(), 201, "{body}");
}

/// A reply stream that breaks after its first sentence (cut short, a chunk
/// that is not JSON, or silent past the provider timeout) is continued from
/// what was spoken: the reply is whole, every sentence spoken once; within
/// the call when it has tries left, else by the job's next attempt.
async fn mends_a_broken_stream(kind: &str, tries: &str) {
    let app = spawn_app_with(
        Deployment::Scaled,
        options(
            &[
                ("ROSE_PROVIDER_TRIES", tries),
                ("ROSE_PROVIDER_TIMEOUT_SECS", "1"),
            ],
            SimConfig::default(),
        ),
    )
    .await;
    let words = words_with_sentences(3, &format!("broken {kind} {tries}"));
    let sentences = split(&reply_for(&words));
    // Past the first sentence and the first word of the second, so the
    // first is complete and spoken before the break.
    let after = sentences[0].split(' ').count() + 1;
    fault(
        &app,
        json!({"endpoint": "chat_completions", "stream": kind, "after_words": after}),
    )
    .await;
    let session = app.start_session().await;
    let id = app.submit_text(&session, &words).await;
    let job = app.wait_for_job(&id, LIMIT).await;
    assert_eq!(job["status"], "succeeded", "{kind}, {tries} tries: {job}");
    assert_eq!(
        job["result"]["text"].as_str().map(split),
        Some(sentences.clone()),
        "{kind}: the reply is whole, nothing twice"
    );
    let mut spoken = app.sim.spoken_texts().await;
    spoken.sort();
    let mut expected = sentences.clone();
    expected.sort();
    assert_eq!(spoken, expected, "{kind}: each spoken once");
    let prompts = app.reply_requests().await;
    assert_eq!(prompts.len(), 2, "{kind}: asked again once");
    let last = prompts[1]["messages"]
        .as_array()
        .and_then(|m| m.last())
        .expect("a last message");
    assert_eq!(last["role"], "assistant", "{kind}: continued");
    assert_eq!(last["content"], sentences[0].as_str());
    let attempts = job["attempts"].as_i64().expect("attempts");
    assert_eq!(attempts, if tries == "1" { 2 } else { 1 }, "{kind}: {job}");
    app.stop().await;
}

#[tokio::test]
async fn a_reply_stream_cut_short_is_continued_in_the_call() {
    mends_a_broken_stream("cut", "2").await;
}

#[tokio::test]
async fn a_malformed_reply_stream_is_continued_by_the_next_attempt() {
    mends_a_broken_stream("malformed", "1").await;
}

#[tokio::test]
async fn a_stalled_reply_stream_is_given_up_and_continued() {
    mends_a_broken_stream("stall", "2").await;
}

/// A sentence speech refuses (a 4xx): its text is delivered, the others
/// are spoken, and the job is `degraded: ["tts"]` without a whole file.
#[tokio::test]
async fn a_sentence_speech_refuses_is_delivered_as_text() {
    let app = spawn_app_with(
        Deployment::Embedded,
        options(&[("ROSE_TTS_CONCURRENCY", "1")], SimConfig::default()),
    )
    .await;
    fault(
        &app,
        json!({"endpoint": "text_to_speech", "status": 400, "count": 1}),
    )
    .await;
    let words = words_with_sentences(3, "refused");
    let session = app.start_session().await;
    let id = app.submit_text(&session, &words).await;
    let job = app.wait_for_job(&id, LIMIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["degraded"], json!(["tts"]));
    assert_eq!(job["result"]["audio_url"], Value::Null);
    let chunks = job["result"]["chunks"].as_array().expect("chunks");
    assert_eq!(chunks.len(), 3, "every sentence delivered: {job}");
    assert_eq!(
        chunks[0]["audio_url"],
        Value::Null,
        "the refused one: {job}"
    );
    assert!(
        chunks[1..].iter().all(|c| c["audio_url"].is_string()),
        "{job}"
    );
    assert_eq!(chunks[0]["text"], split(&reply_for(&words))[0].as_str());
    app.stop().await;
}

/// A sentence is announced as soon as its speech starts: its `audio_url`
/// streams the speech as it arrives, before the audio is stored, and gives
/// the same bytes as the stored audio afterwards.
async fn relays_speech_as_it_arrives(deployment: Deployment) {
    let sim = SimConfig {
        pacing: Pacing {
            tts_ttfb: Some(Duration::from_millis(50)),
            tts_speed: Some(2.0),
            ..Pacing::default()
        },
        ..SimConfig::default()
    };
    let app = spawn_app_with(deployment, options(&[], sim)).await;
    let words = words_with_sentences(3, "relayed");
    let session = app.start_session().await;
    let id = app.submit_text(&session, &words).await;
    let response = app
        .http
        .get(format!("{}/api/jobs/{id}/events", app.url))
        .send()
        .await
        .expect("events");
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    let first: Value = loop {
        let chunk = tokio::time::timeout(LIMIT, body.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on until the first sentence")
            .expect("events body");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(start) = seen.find("event: audio\ndata: ") {
            let rest = &seen[start + "event: audio\ndata: ".len()..];
            if let Some(end) = rest.find('\n') {
                break serde_json::from_str(&rest[..end]).expect("audio data");
            }
        }
    };
    let url = first["audio_url"]
        .as_str()
        .expect("the first sentence has speech");
    let audio_id = url.trim_start_matches("/api/audio/");
    let stored_then = app
        .scalar(&format!(
            "SELECT COUNT(*) FROM audio WHERE id = '{audio_id}'"
        ))
        .await;
    let live = app
        .http
        .get(format!("{}{url}", app.url))
        .send()
        .await
        .expect("live audio");
    assert_eq!(live.status(), 200);
    assert_eq!(live.headers()["content-type"], "audio/mpeg");
    let live = live.bytes().await.expect("the whole sentence");
    assert_eq!(stored_then, 0, "announced before its audio was stored");
    let job = app.wait_for_job(&id, LIMIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let stored = app
        .http
        .get(format!("{}{url}", app.url))
        .send()
        .await
        .expect("stored audio")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(live, stored, "the relayed speech is the stored speech");
    assert_eq!(sniff(&stored), Some(AudioFormat::Mp3));
    app.stop().await;
}

#[tokio::test]
async fn embedded_speech_is_relayed_as_it_arrives() {
    relays_speech_as_it_arrives(Deployment::Embedded).await;
}

#[tokio::test]
async fn scaled_speech_is_relayed_as_it_arrives() {
    relays_speech_as_it_arrives(Deployment::Scaled).await;
}
