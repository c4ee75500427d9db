//! `POST …/chat/completions`: Groq's OpenAI-compatible chat endpoint.
//!
//! The body is validated field by field with Groq's message style
//! (`'messages.0.role' : value must be one of …`); an unknown model is a 404
//! `model_not_found`; JSON mode needs the word "json" in the messages, as
//! Groq insists, and cannot stream. The reply is deterministic for the same
//! last user message ([`crate::content::reply`]) and says it is simulated;
//! JSON mode answers Rose's extraction JSON (see [`crate::extract`]). Usage
//! counts about four characters a token. When the last message is the
//! assistant's, the model continues it, as Groq's "assistant message
//! prefilling" does: if the full reply starts with that text, only the rest
//! is answered. `tools` with a forced `tool_choice` answer a `tool_calls`
//! message instead (see [`crate::tools`]); tool results and assistant tool
//! calls in `messages`, and content given as text parts, are read as Groq
//! reads them.
//!
//! Timing: the answer starts after the time to first token; a non-streamed
//! answer then waits for the whole generation, a stream (`stream: true`)
//! sends its `chat.completion.chunk` events as the words are generated
//! ([`crate::chat_stream`]) and stays in flight until `data: [DONE]`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::Sim;
use crate::chat_fields;
use crate::chat_stream::{self, Chunk, Ending};
use crate::content::{self, random_id};
use crate::groq::{CHAT_MODELS, GroqError, authorize, json_object, rate_headers, refusal};
use crate::pacing::{paced_body, pause};
use crate::state::{Endpoint, StreamBreak};
use crate::stats::InFlight;
use crate::tools::{self, Tool};

/// What a valid request asks for.
#[derive(Debug)]
struct ChatRequest {
    model: String,
    json_mode: bool,
    stream: bool,
    max_tokens: Option<u64>,
    prompt_chars: usize,
    last_user: String,
    /// The text of a last assistant message, which the answer continues.
    prefill: Option<String>,
    /// `stream_options.include_usage`.
    include_usage: bool,
    /// The tool a forced `tool_choice` calls.
    tool_call: Option<Tool>,
}

/// What the simulated model answers.
#[derive(Debug)]
pub(crate) enum Reply {
    Text(String),
    /// One tool call: its id, the tool's name and the arguments (a JSON string).
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
}

/// The handler.
pub(crate) async fn complete(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    let in_flight = sim.state().arrive(Endpoint::ChatCompletions);
    match run(&sim, &headers, &body, in_flight).await {
        Ok(response) | Err(response) => response,
    }
}

async fn run(
    sim: &Sim,
    headers: &HeaderMap,
    body: &Bytes,
    in_flight: InFlight,
) -> Result<Response, Response> {
    authorize(headers).map_err(IntoResponse::into_response)?;
    let body = json_object(headers, body).map_err(IntoResponse::into_response)?;
    let request = validate(&body).map_err(IntoResponse::into_response)?;

    let (reply, finish_reason) = answer(&request);
    let completion_chars = match &reply {
        Reply::Text(text) => text.chars().count(),
        Reply::ToolCall {
            name, arguments, ..
        } => name.chars().count() + arguments.chars().count(),
    };
    let prompt_tokens = content::tokens(request.prompt_chars);
    let completion_tokens = content::tokens(completion_chars);
    let total_tokens = prompt_tokens + completion_tokens;

    let grant = sim
        .state()
        .gate(Endpoint::ChatCompletions, total_tokens)
        .map_err(|r| refusal(r, &request.model))?;
    let timing = sim.state().timing();
    let first_token = sim.state().first_wait(&timing, Endpoint::ChatCompletions);
    let generation = timing.generating(completion_tokens);

    let request_id = random_id("req_", 26);
    let id = random_id("chatcmpl-", 29);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let completion_time = if generation.is_zero() {
        0.05
    } else {
        generation.as_secs_f64()
    };
    let usage = json!({
        "queue_time": 0.01,
        "prompt_tokens": prompt_tokens,
        "prompt_time": 0.002,
        "completion_tokens": completion_tokens,
        "completion_time": completion_time,
        "total_tokens": total_tokens,
        "total_time": 0.002 + completion_time,
    });
    let headers = rate_headers(&grant.rate, &request_id);
    if request.stream {
        pause(first_token).await;
        let chunk = Chunk {
            id: &id,
            created,
            model: &request.model,
            request_id: &request_id,
        };
        let ending = Ending {
            finish_reason,
            usage: &usage,
            include_usage: request.include_usage,
        };
        let mut events = chat_stream::events(&chunk, &reply, &ending, &timing);
        let fault = sim.state().take_stream_fault();
        let hang = fault.is_some_and(|(kind, _)| kind == StreamBreak::Stall);
        if let Some((kind, words)) = fault {
            chat_stream::break_off(&mut events, kind, words);
        }
        let sse = [
            (CONTENT_TYPE, "text/event-stream"),
            (CACHE_CONTROL, "no-cache"),
        ];
        let body = if hang {
            crate::pacing::paced_then_silent_body(events, in_flight)
        } else {
            paced_body(events, in_flight)
        };
        return Ok((headers, sse, body).into_response());
    }
    pause(first_token.saturating_add(generation)).await;
    let body = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": request.model,
        "choices": [{
            "index": 0,
            "message": message(&reply),
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": usage,
        "usage_breakdown": null,
        "system_fingerprint": "fp_sim",
        "x_groq": {"id": request_id},
        "service_tier": "on_demand",
    });
    Ok((headers, axum::Json(body)).into_response())
}

/// The reply and its finish reason: a tool call when the choice forces one,
/// else words (cut to `max_tokens`).
fn answer(request: &ChatRequest) -> (Reply, &'static str) {
    if let Some(tool) = &request.tool_call {
        let call = Reply::ToolCall {
            id: random_id("call_", 24),
            name: tool.name.clone(),
            arguments: tool.arguments(),
        };
        return (call, "tool_calls");
    }
    let full = if request.json_mode {
        crate::extract::extraction_json(&request.last_user)
    } else {
        content::reply(&request.last_user)
    };
    let mut content = match &request.prefill {
        Some(prefill) => continuation(&full, prefill),
        None => full,
    };
    let mut finish_reason = "stop";
    if let Some(limit) = request.max_tokens
        && !request.json_mode
        && content::tokens(content.chars().count()) > limit
    {
        let keep = usize::try_from(limit.saturating_mul(4)).unwrap_or(usize::MAX);
        content = content.chars().take(keep).collect();
        finish_reason = "length";
    }
    (Reply::Text(content), finish_reason)
}

/// What follows `prefill` in `full` (compared trimmed, without the space
/// between them), or all of `full` when it does not start that way.
fn continuation(full: &str, prefill: &str) -> String {
    match full.trim().strip_prefix(prefill.trim()) {
        Some(rest) => rest.trim_start().to_owned(),
        None => full.to_owned(),
    }
}

/// The assistant message of a non-streamed answer.
fn message(reply: &Reply) -> Value {
    match reply {
        Reply::Text(text) => json!({"role": "assistant", "content": text}),
        Reply::ToolCall {
            id,
            name,
            arguments,
        } => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}],
        }),
    }
}

/// Checks the body against Groq's schema and rules.
fn validate(body: &Map<String, Value>) -> Result<ChatRequest, GroqError> {
    let model = match body.get("model") {
        None | Some(Value::Null) => {
            return Err(GroqError::invalid("'model' : property 'model' is missing"));
        }
        Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
        Some(_) => {
            return Err(GroqError::invalid(
                "'model' : value must be a non-empty string",
            ));
        }
    };
    let messages = match body.get("messages") {
        None | Some(Value::Null) => {
            return Err(GroqError::invalid(
                "'messages' : property 'messages' is missing",
            ));
        }
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(GroqError::invalid(
                "'messages' : minimum number of items is 1",
            ));
        }
        Some(Value::Array(items)) => items,
        Some(_) => return Err(GroqError::invalid("'messages' : value must be an array")),
    };
    let mut prompt_chars = 0;
    let mut mentions_json = false;
    let mut last_user = String::new();
    let mut prefill = None;
    for (i, message) in messages.iter().enumerate() {
        let (role, text) = chat_fields::read_message(i, message)?;
        prompt_chars += text.chars().count();
        mentions_json |= text.to_ascii_lowercase().contains("json");
        prefill = (role == "assistant" && !text.trim().is_empty()).then(|| text.clone());
        if role == "user" {
            last_user = text;
        }
    }
    if let Some(t) = present(body, "temperature") {
        let t = t
            .as_f64()
            .ok_or_else(|| GroqError::invalid("'temperature' : value must be a number"))?;
        if t < 0.0 {
            return Err(GroqError::invalid(
                "'temperature' : number must be at least 0",
            ));
        }
        if t > 2.0 {
            return Err(GroqError::invalid(
                "'temperature' : number must be at most 2",
            ));
        }
    }
    let mut max_tokens = None;
    for name in ["max_tokens", "max_completion_tokens"] {
        if let Some(v) = present(body, name) {
            let n = v.as_i64().ok_or_else(|| {
                GroqError::invalid(format!("'{name}' : value must be an integer"))
            })?;
            let n = u64::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
                GroqError::invalid(format!("'{name}' : number must be at least 1"))
            })?;
            max_tokens = Some(n);
        }
    }
    if let Some(n) = present(body, "n")
        && n.as_i64() != Some(1)
    {
        return Err(GroqError::invalid("'n' : number must be at most 1"));
    }
    let stream = match present(body, "stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(GroqError::invalid("'stream' : value must be a boolean")),
    };
    let json_mode = match present(body, "response_format") {
        None => false,
        Some(Value::Object(format)) => match format.get("type").and_then(Value::as_str) {
            Some("text") => false,
            Some("json_object") => true,
            _ => {
                return Err(GroqError::invalid(
                    "'response_format.type' : value must be one of [text json_object]",
                ));
            }
        },
        Some(_) => {
            return Err(GroqError::invalid(
                "'response_format' : value must be an object",
            ));
        }
    };
    chat_fields::check_sampling(body)?;
    let include_usage = chat_fields::check_streaming(body, stream, json_mode)?;
    let tool_call = tools::forced_tool(body)?;
    if !CHAT_MODELS.contains(&model.as_str()) {
        return Err(GroqError::model_not_found(&model));
    }
    if json_mode && !mentions_json {
        return Err(GroqError::invalid(
            "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
        ));
    }
    Ok(ChatRequest {
        model,
        json_mode,
        stream,
        max_tokens,
        prompt_chars,
        last_user,
        prefill,
        include_usage,
        tool_call,
    })
}

/// A field that is present and not `null`.
fn present<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|v| !v.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: Value) -> Result<ChatRequest, String> {
        let Value::Object(map) = body else {
            return Err("not an object".to_owned());
        };
        validate(&map).map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn accepts_a_plain_request() {
        let ok = check(json!({
            "model": "llama-3.3-70b-versatile",
            "messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hello"}],
            "temperature": 0.7,
            "max_tokens": null,
        }))
        .expect("valid");
        assert_eq!(ok.last_user, "hello");
        assert_eq!(ok.prompt_chars, 13);
        assert!(!ok.json_mode && !ok.stream);
    }

    #[test]
    fn refuses_bad_fields() {
        let base = |extra: Value| {
            let mut body = json!({"model": "llama-3.1-8b-instant", "messages": [{"role": "user", "content": "hi"}]});
            if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
                b.extend(e);
            }
            body
        };
        for (extra, needle) in [
            (json!({"temperature": 2.5}), "at most 2"),
            (json!({"temperature": "hot"}), "number"),
            (json!({"max_tokens": 0}), "at least 1"),
            (json!({"max_completion_tokens": -3}), "at least 1"),
            (json!({"messages": []}), "minimum number"),
            (
                json!({"messages": [{"role": "robot", "content": "x"}]}),
                "messages.0.role",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages.0.content",
            ),
            (json!({"n": 2}), "'n'"),
            (
                json!({"response_format": {"type": "xml"}}),
                "response_format.type",
            ),
            (
                json!({"response_format": {"type": "json_object"}}),
                "word 'json'",
            ),
            (json!({"model": "gpt-9"}), "model_not_found"),
        ] {
            let err = check(base(extra.clone())).expect_err("invalid");
            assert!(err.contains(needle), "{extra}: {err}");
        }
    }
}
