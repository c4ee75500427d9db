//! Groq chat completions, over loopback HTTP.

mod common;

use std::time::{Duration, Instant};

use common::{KEY, TestSim, chat_body, error_of, wav};
use serde_json::{Value, json};

#[tokio::test]
async fn chat_reply_is_deterministic_and_simulated() {
    let sim = TestSim::start().await;
    let first = sim.chat(chat_body("I miss my dad so much.")).await;
    assert_eq!(first.status(), 200);
    assert!(first.headers().contains_key("x-ratelimit-remaining-tokens"));
    let first: Value = first.json().await.expect("json");
    let second: Value = sim
        .chat(chat_body("I miss my dad so much."))
        .await
        .json()
        .await
        .expect("json");
    let content = first["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert!(content.contains("imulated"), "{content}");
    assert_eq!(
        content,
        second["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
    );
    assert_ne!(first["id"], second["id"]);
    assert!(
        first["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-"))
    );
    assert_eq!(first["object"], "chat.completion");
    assert_eq!(first["model"], "llama-3.3-70b-versatile");
    assert_eq!(first["choices"][0]["finish_reason"], "stop");
    assert_eq!(first["choices"][0]["message"]["role"], "assistant");
    assert_eq!(first["system_fingerprint"], "fp_sim");
    let usage = &first["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_u64().expect("prompt"),
        usage["completion_tokens"].as_u64().expect("completion"),
    );
    assert!(prompt >= 1 && completion >= 1);
    assert_eq!(usage["total_tokens"].as_u64(), Some(prompt + completion));
    assert_eq!(completion, (content.chars().count() as u64).div_ceil(4));
}

#[tokio::test]
async fn chat_validation() {
    let sim = TestSim::start().await;
    let mut json_mode = chat_body("remember me");
    json_mode["response_format"] = json!({"type": "json_object"});
    let (status, body) = error_of(sim.chat(json_mode).await).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("json")
    );

    let mut unknown = chat_body("hi");
    unknown["model"] = json!("gpt-5");
    let (status, body) = error_of(sim.chat(unknown).await).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");

    for bad in [
        json!({"messages": [{"role": "user", "content": "hi"}]}),
        json!({"model": "llama-3.1-8b-instant", "messages": []}),
        json!({"model": "llama-3.1-8b-instant", "messages": [{"role": "bot", "content": "hi"}]}),
        json!({"model": "llama-3.1-8b-instant", "messages": [{"role": "user"}]}),
        json!({"model": "llama-3.1-8b-instant", "messages": [{"role": "user", "content": "x"}], "temperature": 3}),
        json!({"model": "llama-3.1-8b-instant", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
    ] {
        let (status, body) = error_of(sim.chat(bad.clone()).await).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    let malformed = sim
        .http
        .post(sim.groq("/chat/completions"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(malformed.status(), 400);
    let form = sim
        .http
        .post(sim.groq("/chat/completions"))
        .bearer_auth(KEY)
        .body(chat_body("hi").to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(form.status(), 400, "no JSON content type");
}

#[tokio::test]
async fn json_mode_extracts_a_name() {
    let sim = TestSim::start().await;
    let ask = |user: &str| {
        let mut body = chat_body(user);
        body["messages"][0]["content"] = json!("Extract one fact as JSON.");
        body["response_format"] = json!({"type": "json_object"});
        body["model"] = json!("llama-3.1-8b-instant");
        sim.chat(body)
    };
    let body: Value = ask("Hello, my name is Maria and I lost my husband.")
        .await
        .json()
        .await
        .expect("json");
    let content: Value = serde_json::from_str(
        body["choices"][0]["message"]["content"]
            .as_str()
            .expect("content"),
    )
    .expect("content is JSON");
    assert_eq!(content, json!({"fact": "The user's name is Maria."}));
    let body: Value = ask("It rained all day.").await.json().await.expect("json");
    let content: Value = serde_json::from_str(
        body["choices"][0]["message"]["content"]
            .as_str()
            .expect("content"),
    )
    .expect("content is JSON");
    assert_eq!(content, json!({"fact": null}));
}

#[tokio::test]
async fn max_tokens_truncates() {
    let sim = TestSim::start().await;
    let mut body = chat_body("Tell me something.");
    body["max_tokens"] = json!(2);
    let body: Value = sim.chat(body).await.json().await.expect("json");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn streaming_chat_sends_chunks() {
    let sim = TestSim::start().await;
    let mut body = chat_body("I miss my dad so much.");
    let plain: Value = sim.chat(body.clone()).await.json().await.expect("json");
    body["stream"] = json!(true);
    let response = sim.chat(body).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.expect("text");
    let mut content = String::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(line).expect("chunk json");
        assert_eq!(chunk["object"], "chat.completion.chunk");
        content.push_str(
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_default(),
        );
    }
    assert!(text.trim_end().ends_with("data: [DONE]"));
    assert_eq!(
        content,
        plain["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
    );
}

#[tokio::test]
async fn llm_latency_is_applied_and_changeable() {
    let sim = TestSim::start().await;
    let put = sim
        .http
        .put(sim.url("/__sim/latency"))
        .json(&json!({"llm_ms": 250}))
        .send()
        .await
        .expect("send");
    assert_eq!(put.status(), 200);
    let now = Instant::now();
    assert_eq!(sim.chat(chat_body("hi")).await.status(), 200);
    assert!(now.elapsed() >= Duration::from_millis(250));
    // Other endpoints keep their latency; errors do not wait.
    let now = Instant::now();
    assert_eq!(
        sim.transcribe(wav(None), "whisper-large-v3").await.status(),
        200
    );
    let mut bad = chat_body("hi");
    bad["model"] = json!("nope");
    assert_eq!(sim.chat(bad).await.status(), 404);
    assert!(now.elapsed() < Duration::from_millis(250));
    assert_eq!(
        sim.get_json("/__sim/latency").await,
        json!({"stt_ms": 0, "llm_ms": 250, "tts_ms": 0})
    );
}
