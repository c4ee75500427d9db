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
        json!({"model": "llama-3.1-8b-instant", "messages": [{"role": "user", "content": "x"}], "n": 2}),
        json!({"model": "llama-3.1-8b-instant", "messages": [{"role": "user", "content": "x"}], "top_p": 1.5}),
        json!({"model": "llama-3.1-8b-instant", "messages": [{"role": "user", "content": "x"}], "presence_penalty": -3}),
        json!({"model": "llama-3.1-8b-instant", "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}),
        json!({"model": "llama-3.1-8b-instant", "messages": [{"role": "user", "content": "x"}], "logprobs": true}),
        json!({"model": "llama-3.1-8b-instant", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"42": 1}}),
        json!({"model": "llama-3.1-8b-instant", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}),
        json!({"model": "llama-3.1-8b-instant", "messages": [{"role": "user", "content": "x", "name": "ann"}]}),
        json!({"model": "llama-3.1-8b-instant", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
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

    // Shapes Groq answers: text parts, sampling fields within bounds.
    let mut parts = chat_body("ignored");
    parts["messages"][1]["content"] =
        json!([{"type": "text", "text": "I miss "}, {"type": "text", "text": "my dad so much."}]);
    parts["top_p"] = json!(0.9);
    parts["stop"] = json!(["\n\n"]);
    parts["seed"] = json!(7);
    parts["logprobs"] = json!(false);
    let response = sim.chat(parts).await;
    assert_eq!(response.status(), 200);
    let by_parts: Value = response.json().await.expect("json");
    let plain: Value = sim
        .chat(chat_body("I miss my dad so much."))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        by_parts["choices"][0]["message"]["content"], plain["choices"][0]["message"]["content"],
        "text parts are read as the same words"
    );
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
    assert_eq!(
        content,
        json!({"profile": [{"op": "add", "field": "name", "text": "Their name is Maria."}], "memories": []})
    );
    let body: Value = ask("It rained all day.").await.json().await.expect("json");
    let content: Value = serde_json::from_str(
        body["choices"][0]["message"]["content"]
            .as_str()
            .expect("content"),
    )
    .expect("content is JSON");
    assert_eq!(content, json!({"profile": [], "memories": []}));
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
    let latency = sim.get_json("/__sim/latency").await;
    assert_eq!(
        [&latency["stt_ms"], &latency["llm_ms"], &latency["tts_ms"]],
        [&json!(0), &json!(250), &json!(0)]
    );
    assert_eq!(latency["effective"]["ttft_ms"], 250);
}

/// A chat body offering a weather tool and a note tool.
fn with_tools(tool_choice: Value) -> Value {
    let mut body = chat_body("What is the weather in Lisbon for the next days?");
    body["tools"] = json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "The forecast for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "minLength": 2},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                    "hourly": {"type": "boolean"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["city", "unit", "days"],
            },
        }},
        {"type": "function", "function": {"name": "save_note", "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string"}, "pinned": {"type": ["boolean", "null"]}},
            "required": ["text", "pinned"],
        }}},
    ]);
    body["tool_choice"] = tool_choice;
    body
}

/// The one tool call of an answer, after checking the message's shape.
fn tool_call(body: &Value) -> (String, Value) {
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
    let message = &choice["message"];
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["content"], Value::Null);
    let calls = message["tool_calls"].as_array().expect("tool_calls");
    assert_eq!(calls.len(), 1, "{body}");
    let call = &calls[0];
    assert!(
        call["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("call_")),
        "{call}"
    );
    assert_eq!(call["type"], "function");
    let arguments = call["function"]["arguments"]
        .as_str()
        .expect("a JSON string");
    let arguments: Value = serde_json::from_str(arguments).expect("arguments are JSON");
    (
        call["function"]["name"].as_str().expect("name").to_owned(),
        arguments,
    )
}

#[tokio::test]
async fn a_forced_tool_choice_answers_a_tool_call() {
    let sim = TestSim::start().await;
    let forced = json!({"type": "function", "function": {"name": "get_weather"}});
    let response = sim.chat(with_tools(forced)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    let (name, arguments) = tool_call(&body);
    assert_eq!(name, "get_weather");
    // Valid against the tool's schema: every required property, typed.
    assert!(
        arguments["city"]
            .as_str()
            .is_some_and(|c| c.chars().count() >= 2)
    );
    assert!(["celsius", "fahrenheit"].contains(&arguments["unit"].as_str().unwrap_or_default()));
    assert!((1..=7).contains(&arguments["days"].as_i64().expect("days")));
    for optional in ["hourly", "tags"] {
        assert!(arguments.get(optional).is_none_or(|v| !v.is_null()));
    }
    assert!(body["usage"]["completion_tokens"].as_u64() >= Some(1));

    // "required" calls a tool too (the first); a type list takes its first type.
    let body: Value = sim
        .chat(with_tools(json!("required")))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(tool_call(&body).0, "get_weather");
    let forced = json!({"type": "function", "function": {"name": "save_note"}});
    let body: Value = sim
        .chat(with_tools(forced))
        .await
        .json()
        .await
        .expect("json");
    let (name, arguments) = tool_call(&body);
    assert_eq!(name, "save_note");
    assert!(arguments["text"].is_string() && arguments["pinned"].is_boolean());

    // "none" and "auto" answer in words.
    for choice in [json!("none"), json!("auto"), Value::Null] {
        let body: Value = sim
            .chat(with_tools(choice.clone()))
            .await
            .json()
            .await
            .expect("json");
        let message = &body["choices"][0]["message"];
        assert!(message["content"].is_string(), "{choice}: {body}");
        assert!(message.get("tool_calls").is_none(), "{choice}: {body}");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
    }
}

#[tokio::test]
async fn a_forced_tool_call_streams_as_chunks() {
    let sim = TestSim::start().await;
    let mut body = with_tools(json!({"type": "function", "function": {"name": "get_weather"}}));
    body["stream"] = json!(true);
    let response = sim.chat(body).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.expect("text");
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|l| *l != "[DONE]")
        .map(|l| serde_json::from_str(l).expect("chunk json"))
        .collect();
    let mut arguments = String::new();
    let mut name = None;
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        for call in chunk["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert_eq!(call["index"], 0);
            if let Some(n) = call["function"]["name"].as_str() {
                name = Some(n.to_owned());
            }
            arguments.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    assert_eq!(name.as_deref(), Some("get_weather"));
    let arguments: Value = serde_json::from_str(&arguments).expect("arguments are JSON");
    assert!(arguments["city"].is_string());
    let last = chunks.last().expect("chunks");
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn tool_requests_groq_refuses_are_refused() {
    let sim = TestSim::start().await;
    let unknown = json!({"type": "function", "function": {"name": "book_flight"}});
    let (status, body) = error_of(sim.chat(with_tools(unknown)).await).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("tool"),
        "{body}"
    );

    let mut no_tools = chat_body("hi");
    no_tools["tool_choice"] = json!("required");
    let mut nameless = with_tools(json!("auto"));
    nameless["tools"][0]["function"]
        .as_object_mut()
        .expect("function")
        .remove("name");
    let mut not_function = with_tools(json!("auto"));
    not_function["tools"][0]["type"] = json!("retrieval");
    let mut tools_object = with_tools(json!("auto"));
    tools_object["tools"] = json!({"name": "get_weather"});
    let mut tool_result_without_id = chat_body("hi");
    tool_result_without_id["messages"] = json!([
        {"role": "user", "content": "hi"},
        {"role": "tool", "content": "sunny"},
    ]);
    for (what, bad) in [
        ("a bad string", with_tools(json!("always"))),
        ("a bad shape", with_tools(json!({"type": "function"}))),
        ("required without tools", no_tools),
        ("a tool without a name", nameless),
        ("a tool that is not a function", not_function),
        ("tools not an array", tools_object),
        ("a tool result without tool_call_id", tool_result_without_id),
    ] {
        let (status, body) = error_of(sim.chat(bad).await).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{what}");
    }

    // A full tool round trip is a valid conversation.
    let mut round_trip = with_tools(json!("auto"));
    round_trip["messages"] = json!([
        {"role": "user", "content": "Weather in Lisbon?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Lisbon\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 C"},
    ]);
    assert_eq!(sim.chat(round_trip).await.status(), 200);
}
