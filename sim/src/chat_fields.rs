//! Checks of a chat request that do not shape the reply: each message as
//! Groq reads it, the sampling fields with Groq's bounds and messages, and
//! what Groq refuses around streaming.

use serde_json::{Map, Value};

use crate::groq::GroqError;

const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// One message's role and text, checked as Groq checks them: a known role,
/// content as a string or text parts, `tool_call_id` on a tool result,
/// well-formed `tool_calls` on an assistant turn (whose content may then be
/// absent).
pub(crate) fn read_message(i: usize, message: &Value) -> Result<(&str, String), GroqError> {
    let Some(message) = message.as_object() else {
        return Err(GroqError::invalid(format!(
            "'messages.{i}' : value must be an object"
        )));
    };
    let role = message
        .get("role")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !ROLES.contains(&role) {
        return Err(GroqError::invalid(format!(
            "'messages.{i}.role' : value must be one of [system user assistant tool]"
        )));
    }
    if message.get("name").is_some_and(|v| !v.is_null()) {
        return Err(GroqError::invalid(format!(
            "'messages.{i}.name' : property 'name' is unsupported"
        )));
    }
    if role == "tool" && !message.get("tool_call_id").is_some_and(Value::is_string) {
        return Err(GroqError::invalid(format!(
            "'messages.{i}' : for 'role:tool' the following must be satisfied[('messages.{i}.tool_call_id' : property 'tool_call_id' is missing)]"
        )));
    }
    let calls = message.get("tool_calls").filter(|v| !v.is_null());
    if let Some(calls) = calls {
        let well_formed = role == "assistant"
            && calls.as_array().is_some_and(|calls| {
                calls.iter().all(|c| {
                    c["id"].is_string()
                        && c["function"]["name"].is_string()
                        && c["function"]["arguments"].is_string()
                })
            });
        if !well_formed {
            return Err(GroqError::invalid(format!(
                "'messages.{i}.tool_calls' : value must be an array of function calls with 'id', 'function.name' and 'function.arguments'"
            )));
        }
    }
    let text = match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) if role != "assistant" || calls.is_none() => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("text"), Some(piece)) => text.push_str(piece),
                    (Some("text"), None) => {
                        return Err(GroqError::invalid(format!(
                            "'messages.{i}.content.{j}.text' : property 'text' is missing"
                        )));
                    }
                    (Some(kind), _) => {
                        return Err(GroqError::invalid(format!(
                            "'messages.{i}.content.{j}.type' : {kind:?} content is not supported by the simulated text models"
                        )));
                    }
                    (None, _) => {
                        return Err(GroqError::invalid(format!(
                            "'messages.{i}.content.{j}.type' : property 'type' is missing"
                        )));
                    }
                }
            }
            text
        }
        // An assistant turn that only calls tools has no content.
        None | Some(Value::Null) if calls.is_some() => String::new(),
        _ => {
            return Err(GroqError::invalid(format!(
                "'messages.{i}.content' : value must be a string"
            )));
        }
    };
    Ok((role, text))
}

/// `top_p` (0-1), `frequency_penalty` and `presence_penalty` (-2-2),
/// `seed` (an integer), `stop` (a string or up to 4); `logprobs`,
/// `top_logprobs` and `logit_bias` are refused, as Groq documents.
pub(crate) fn check_sampling(body: &Map<String, Value>) -> Result<(), GroqError> {
    let present = |name: &str| body.get(name).filter(|v| !v.is_null());
    for (name, low, high) in [
        ("top_p", 0.0, 1.0),
        ("frequency_penalty", -2.0, 2.0),
        ("presence_penalty", -2.0, 2.0),
    ] {
        if let Some(value) = present(name) {
            let Some(value) = value.as_f64() else {
                return Err(GroqError::invalid(format!(
                    "'{name}' : value must be a number"
                )));
            };
            if !(low..=high).contains(&value) {
                return Err(GroqError::invalid(format!(
                    "'{name}' : number must be between {low} and {high}"
                )));
            }
        }
    }
    if let Some(seed) = present("seed")
        && !(seed.is_i64() || seed.is_u64())
    {
        return Err(GroqError::invalid("'seed' : value must be an integer"));
    }
    match present("stop") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(stops)) if stops.len() <= 4 && stops.iter().all(Value::is_string) => {}
        Some(Value::Array(stops)) if stops.len() > 4 => {
            return Err(GroqError::invalid("'stop' : maximum number of items is 4"));
        }
        Some(_) => {
            return Err(GroqError::invalid(
                "'stop' : value must be a string or an array of strings",
            ));
        }
    }
    for name in ["logprobs", "top_logprobs", "logit_bias"] {
        if present(name).is_some_and(|v| v != &Value::Bool(false)) {
            return Err(GroqError::invalid(format!(
                "'{name}' : property '{name}' is unsupported"
            )));
        }
    }
    Ok(())
}

/// What Groq refuses around streaming: `stream_options` without
/// `stream: true`, or not an object of known fields, `include_usage` that is
/// not a boolean, and JSON mode with `stream: true` (Groq answers
/// "response_format` does not support streaming"). Returns
/// `stream_options.include_usage`.
pub(crate) fn check_streaming(
    body: &Map<String, Value>,
    stream: bool,
    json_mode: bool,
) -> Result<bool, GroqError> {
    let mut include_usage = false;
    if let Some(options) = body.get("stream_options").filter(|v| !v.is_null()) {
        if !stream {
            return Err(GroqError::invalid(
                "'stream_options' : stream_options are only allowed when 'stream' is true",
            ));
        }
        let Some(options) = options.as_object() else {
            return Err(GroqError::invalid(
                "'stream_options' : value must be an object",
            ));
        };
        for (name, value) in options {
            match (name.as_str(), value) {
                ("include_usage", Value::Bool(b)) => include_usage = *b,
                ("include_usage", Value::Null) => {}
                ("include_usage", _) => {
                    return Err(GroqError::invalid(
                        "'stream_options.include_usage' : value must be a boolean",
                    ));
                }
                (other, _) => {
                    return Err(GroqError::invalid(format!(
                        "'stream_options.{other}' : property '{other}' is unsupported"
                    )));
                }
            }
        }
    }
    if stream && json_mode {
        return Err(GroqError::invalid(
            "response_format` does not support streaming",
        ));
    }
    Ok(include_usage)
}
