//! Paced answers over loopback HTTP: chat streams and ElevenLabs streams
//! delivered piece by piece, requests in flight until their last byte, the
//! request log's end times, assistant prefill, the strict streaming checks,
//! the `realistic` profile and run-time pacing.
//!
//! No assertion bounds a duration from above: only lower bounds and facts
//! of order ("still in flight when the first chunk arrived").

mod common;

use std::time::{Duration, Instant};

use common::{TestSim, chat_body, error_of};
use rose_sim::{Pacing, Profile, SimConfig, SimLimits, Stats, reply_for};
use serde_json::{Value, json};

fn paced(pacing: Pacing) -> SimConfig {
    SimConfig {
        pacing,
        ..SimConfig::default()
    }
}

async fn fetch_stats(sim: &TestSim) -> Stats {
    serde_json::from_value(sim.get_json("/__sim/stats").await).expect("stats shape")
}

async fn log(sim: &TestSim) -> Vec<Value> {
    let log = sim.get_json("/__sim/requests").await;
    log["requests"].as_array().cloned().unwrap_or_default()
}

fn sentences(text: &str) -> usize {
    text.matches(['.', '?', '!']).count()
}

/// A user message whose simulated reply has three sentences.
fn three_sentence_message() -> String {
    (0..1_000)
        .map(|i| format!("I keep thinking about the day {i}."))
        .find(|m| sentences(&reply_for(m)) == 3)
        .expect("some message gets three sentences")
}

/// The rest of the body after `first`, and how many reads it took in all.
async fn read_rest(mut response: reqwest::Response, first: &[u8]) -> (Vec<u8>, usize) {
    let mut bytes = first.to_vec();
    let mut reads = 1;
    while let Some(chunk) = response.chunk().await.expect("read") {
        reads += 1;
        bytes.extend_from_slice(&chunk);
    }
    (bytes, reads)
}

/// The content of an SSE chat stream, and its events (without `[DONE]`).
fn stream_content(text: &str) -> (String, Vec<Value>) {
    let mut content = String::new();
    let mut events = Vec::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            continue;
        }
        let event: Value = serde_json::from_str(line).expect("chunk json");
        if let Some(piece) = event["choices"][0]["delta"]["content"].as_str() {
            content.push_str(piece);
        }
        events.push(event);
    }
    (content, events)
}

fn streamed(mut body: Value) -> Value {
    body["stream"] = json!(true);
    body
}

#[tokio::test]
async fn a_paced_chat_stream_arrives_in_pieces_and_is_in_flight_until_done() {
    let sim = TestSim::with(paced(Pacing {
        tokens_per_s: Some(40.0),
        ..Pacing::default()
    }))
    .await;
    let message = three_sentence_message();
    let mut response = sim.chat(streamed(chat_body(&message))).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let first = response
        .chunk()
        .await
        .expect("read")
        .expect("a first chunk");

    let during = fetch_stats(&sim).await;
    assert_eq!(during.in_flight.chat_completions, 1, "{during:?}");
    assert_eq!(during.max_concurrent.chat_completions, 1);
    let entry = log(&sim).await.pop().expect("the chat is logged");
    assert_eq!(entry["status"], 200);
    assert!(entry["done_ms"].is_null(), "{entry}");

    let (bytes, reads) = read_rest(response, &first).await;
    let text = String::from_utf8(bytes).expect("utf-8");
    assert!(reads >= 3, "{reads} reads");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let (content, events) = stream_content(&text);
    assert_eq!(content, reply_for(&message));
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let last = events.last().expect("events");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert!(last["x_groq"]["usage"]["completion_tokens"].as_u64() > Some(0));

    let after = fetch_stats(&sim).await;
    assert_eq!(after.in_flight, rose_sim::RequestCounts::default());
    let entry = log(&sim).await.pop().expect("the chat is logged");
    let (at, done) = (entry["at_ms"].as_u64(), entry["done_ms"].as_u64());
    assert!(done.is_some() && done >= at, "{entry}");
}

#[tokio::test]
async fn answers_wait_at_least_the_time_to_first_token_and_the_generation() {
    let ttft = Duration::from_millis(150);
    let sim = TestSim::with(paced(Pacing {
        ttft: Some(ttft),
        tokens_per_s: Some(200.0),
        ..Pacing::default()
    }))
    .await;
    let started = Instant::now();
    let plain = sim.chat(chat_body("hello")).await;
    let elapsed = started.elapsed();
    let body: Value = plain.json().await.expect("json");
    let tokens = body["usage"]["completion_tokens"].as_u64().expect("tokens");
    let generation = Duration::from_secs_f64(tokens as f64 / 200.0);
    assert!(elapsed >= ttft + generation, "{elapsed:?}");

    let started = Instant::now();
    let mut stream = sim.chat(streamed(chat_body("hello"))).await;
    stream.chunk().await.expect("read").expect("a first chunk");
    assert!(started.elapsed() >= ttft);
}

#[tokio::test]
async fn a_last_assistant_message_is_continued() {
    let sim = TestSim::start().await;
    let message = three_sentence_message();
    let full = reply_for(&message);
    let end = full.find(['.', '?', '!']).expect("a sentence") + 1;
    let (prefix, rest) = (&full[..end], full[end..].trim_start());
    let with_prefill = |prefill: &str| {
        let mut body = chat_body(&message);
        body["messages"]
            .as_array_mut()
            .expect("messages")
            .push(json!({"role": "assistant", "content": prefill}));
        body
    };
    let content = |body: &Value| {
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    let answer: Value = sim
        .chat(with_prefill(prefix))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(content(&answer), rest);
    let padded = format!("  {prefix} \n");
    let answer: Value = sim
        .chat(with_prefill(&padded))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(content(&answer), rest);

    let stream = sim.chat(streamed(with_prefill(prefix))).await;
    let text = stream.text().await.expect("text");
    assert_eq!(stream_content(&text).0, rest);

    let answer: Value = sim
        .chat(with_prefill("Something else entirely."))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(content(&answer), full);
}

#[tokio::test]
async fn streaming_requests_are_checked_as_groq_checks_them() {
    let sim = TestSim::start().await;
    let with = |extra: Value| {
        let mut body = chat_body("Tell me in json what you remember.");
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
        body
    };
    for (extra, needle) in [
        (
            json!({"stream_options": {"include_usage": true}}),
            "only allowed when 'stream' is true",
        ),
        (
            json!({"stream": false, "stream_options": {"include_usage": true}}),
            "only allowed",
        ),
        (
            json!({"stream": true, "stream_options": {"include_usage": "yes"}}),
            "include_usage",
        ),
        (
            json!({"stream": true, "stream_options": [true]}),
            "must be an object",
        ),
        (
            json!({"stream": true, "stream_options": {"include_usage": true, "chunked": 1}}),
            "'stream_options.chunked'",
        ),
        (
            json!({"stream": true, "response_format": {"type": "json_object"}}),
            "does not support streaming",
        ),
        (json!({"stream": true, "n": 2}), "'n'"),
    ] {
        let (status, body) = error_of(sim.chat(with(extra.clone())).await).await;
        assert_eq!(status, 400, "{extra}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{extra}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{extra}: {message}");
    }

    let usage = sim
        .chat(with(
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ))
        .await;
    assert_eq!(usage.status(), 200);
    let (_, events) = stream_content(&usage.text().await.expect("text"));
    let last = events.last().expect("events");
    assert_eq!(last["choices"], json!([]));
    assert!(last["usage"]["total_tokens"].as_u64() > Some(0), "{last}");
}

#[tokio::test]
async fn elevenlabs_checks_the_stitching_fields() {
    let sim = TestSim::start().await;
    let ok = sim
        .tts(
            json!({
                "text": "And then we breathe.",
                "previous_text": "We sit together.",
                "next_text": "Slowly.",
                "previous_request_ids": ["a", "b", "c"],
            }),
            "",
        )
        .await;
    assert_eq!(ok.status(), 200);
    for (body, loc, kind) in [
        (
            json!({"text": "x", "previous_text": 5}),
            json!(["body", "previous_text"]),
            "type_error.str",
        ),
        (
            json!({"text": "x", "next_text": {"a": 1}}),
            json!(["body", "next_text"]),
            "type_error.str",
        ),
        (
            json!({"text": "x", "next_request_ids": "abc"}),
            json!(["body", "next_request_ids"]),
            "type_error.list",
        ),
        (
            json!({"text": "x", "previous_request_ids": ["a", 7]}),
            json!(["body", "previous_request_ids", 1]),
            "type_error.str",
        ),
        (
            json!({"text": "x", "next_request_ids": ["a", "b", "c", "d"]}),
            json!(["body", "next_request_ids"]),
            "value_error.list.max_items",
        ),
    ] {
        let (status, error) = error_of(sim.tts(body.clone(), "/stream").await).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(error["detail"][0]["loc"], loc, "{body}");
        assert_eq!(error["detail"][0]["type"], kind, "{body}");
    }
}

#[tokio::test]
async fn a_paced_speech_stream_holds_its_slot_until_the_last_byte() {
    let sim = TestSim::with(SimConfig {
        profile: Some(Profile::RateLimited),
        limits: SimLimits {
            tts_concurrency: 1,
            ..SimLimits::default()
        },
        pacing: Pacing {
            tts_speed: Some(8.0),
            ..Pacing::default()
        },
        ..SimConfig::default()
    })
    .await;
    // About six seconds of speech: under a second to generate at 8x.
    let text = "Take a slow breath with me, and let it go. There is no hurry here at all, none.";
    let whole = sim.tts(json!({"text": text}), "").await;
    assert_eq!(whole.status(), 200);
    let whole = whole.bytes().await.expect("bytes");

    let mut stream = sim.tts(json!({"text": text}), "/stream").await;
    assert_eq!(stream.status(), 200);
    let first = stream.chunk().await.expect("read").expect("a first chunk");
    assert_eq!(fetch_stats(&sim).await.in_flight.text_to_speech, 1);
    let busy = sim.tts(json!({"text": "Meanwhile."}), "/stream").await;
    assert_eq!(busy.status(), 429);

    let (bytes, reads) = read_rest(stream, &first).await;
    assert!(reads >= 3, "{reads} reads");
    assert_eq!(bytes, whole.to_vec());
    assert_eq!(fetch_stats(&sim).await.in_flight.text_to_speech, 0);
    assert_eq!(
        sim.tts(json!({"text": "Now."}), "/stream").await.status(),
        200
    );
}

#[tokio::test]
async fn the_log_shows_when_each_answer_ended_and_what_was_spoken() {
    let sim = TestSim::start().await;
    let texts = ["First, a breath.", "Then another.", "And rest."];
    for text in texts {
        let response = sim.tts(json!({"text": text}), "/stream").await;
        assert_eq!(response.status(), 200);
        response.bytes().await.expect("bytes");
    }
    let entries = log(&sim).await;
    let spoken: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["body"]["text"].as_str())
        .collect();
    assert_eq!(spoken, texts);
    let times: Vec<(u64, u64)> = entries
        .iter()
        .map(|e| {
            let at = e["at_ms"].as_u64().expect("at_ms");
            (at, e["done_ms"].as_u64().expect("done_ms"))
        })
        .collect();
    for (i, (at, done)) in times.iter().enumerate() {
        assert!(done >= at, "{times:?}");
        if let Some((next_at, _)) = times.get(i + 1) {
            assert!(next_at >= done, "one after the other: {times:?}");
        }
    }
}

#[tokio::test]
async fn the_realistic_profile_uses_the_published_figures() {
    assert_eq!(
        "realistic".parse::<Profile>().ok(),
        Some(Profile::Realistic)
    );
    let sim = TestSim::with(SimConfig {
        profile: Some(Profile::Realistic),
        ..SimConfig::default()
    })
    .await;
    let latency = sim.get_json("/__sim/latency").await;
    assert_eq!(
        latency["effective"],
        json!({
            "stt_ms": 250, "stt_speed": 216.0,
            "ttft_ms": 250, "tokens_per_s": 250.0,
            "tts_ttfb_ms": 200, "tts_speed": 4.0,
        })
    );
    assert!(latency["ttft_ms"].is_null());
    let started = Instant::now();
    assert_eq!(sim.chat(chat_body("hello")).await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn pacing_changes_at_run_time() {
    let sim = TestSim::start().await;
    let set = |body: Value| sim.http.put(sim.url("/__sim/latency")).json(&body).send();
    let changed = set(json!({"ttft_ms": 120, "tokens_per_s": 50, "tts_speed": 2.5}))
        .await
        .expect("send");
    assert_eq!(changed.status(), 200);
    let shown: Value = changed.json().await.expect("json");
    assert_eq!(shown["ttft_ms"], 120);
    assert_eq!(shown["tokens_per_s"], 50.0);
    assert_eq!(shown["effective"]["tts_speed"], 2.5);
    assert_eq!(shown["effective"]["tts_ttfb_ms"], 0);

    let started = Instant::now();
    let mut stream = sim.chat(streamed(chat_body("hello"))).await;
    stream.chunk().await.expect("read").expect("a first chunk");
    assert!(started.elapsed() >= Duration::from_millis(120));
    drop(stream);

    let unset = sim
        .http
        .post(sim.url("/__sim/latency"))
        .json(&json!({"ttft_ms": null, "tokens_per_s": null, "llm_ms": 5}))
        .send()
        .await
        .expect("send");
    let shown: Value = unset.json().await.expect("json");
    assert!(shown["ttft_ms"].is_null() && shown["tokens_per_s"].is_null());
    assert_eq!(shown["effective"]["ttft_ms"], 5);
    assert!(shown["effective"]["tokens_per_s"].is_null());
    assert_eq!(shown["tts_speed"], 2.5, "left out, kept");

    for bad in [
        json!({"tokens_per_s": 0}),
        json!({"tts_speed": -1}),
        json!({"ttft_ms": "soon"}),
        json!({"pace": 1}),
    ] {
        let response = set(bad.clone()).await.expect("send");
        assert_eq!(response.status(), 400, "{bad}");
    }
}
