//! A streamed chat answer as Groq sends it: server-sent
//! `chat.completion.chunk` events, each with its moment.
//!
//! The role chunk comes first (once the time to first token has passed);
//! then one chunk a word, each when the tokens up to and including it have
//! been generated at the configured rate (a tool call comes whole, as Groq
//! sends it, once all of it is generated); then the chunk with the finish
//! reason and `x_groq.usage`, the `usage` chunk with no choices when
//! `stream_options.include_usage` asks for it, and `data: [DONE]`. Unpaced,
//! every moment is zero and the events leave together.

use std::time::Duration;

use axum::body::Bytes;
use serde_json::{Value, json};

use crate::chat::Reply;
use crate::content;
use crate::pacing::Timing;
use crate::state::StreamBreak;

/// What every chunk of one streamed answer repeats.
pub(crate) struct Chunk<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    pub request_id: &'a str,
}

impl Chunk<'_> {
    fn event(&self, choices: Value, x_groq_usage: Option<&Value>, usage: Option<&Value>) -> Bytes {
        let mut x_groq = json!({"id": self.request_id});
        if let Some(usage) = x_groq_usage {
            x_groq["usage"] = usage.clone();
        }
        let mut event = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_sim",
            "choices": choices,
            "x_groq": x_groq,
        });
        if let Some(usage) = usage {
            event["usage"] = usage.clone();
        }
        Bytes::from(format!("data: {event}\n\n"))
    }

    fn delta(&self, delta: Value, finish: Value, usage: Option<&Value>) -> Bytes {
        let choices =
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
        self.event(choices, usage, None)
    }
}

/// How a stream ends.
pub(crate) struct Ending<'a> {
    pub finish_reason: &'a str,
    pub usage: &'a Value,
    /// `stream_options.include_usage`: a last chunk with the usage and no choices.
    pub include_usage: bool,
}

/// The events of `reply` with their offsets from the first one, paced by
/// `timing`'s tokens a second.
pub(crate) fn events(
    chunk: &Chunk<'_>,
    reply: &Reply,
    ending: &Ending<'_>,
    timing: &Timing,
) -> Vec<(Duration, Bytes)> {
    let mut out = Vec::new();
    let mut at = Duration::ZERO;
    match reply {
        Reply::Text(text) => {
            let role = json!({"role": "assistant", "content": ""});
            out.push((at, chunk.delta(role, Value::Null, None)));
            let mut chars = 0;
            let words = text.split(' ').filter(|_| !text.is_empty());
            for (i, word) in words.enumerate() {
                let piece = if i == 0 {
                    word.to_owned()
                } else {
                    format!(" {word}")
                };
                chars += piece.chars().count();
                at = timing.generating(content::tokens(chars));
                out.push((
                    at,
                    chunk.delta(json!({"content": piece}), Value::Null, None),
                ));
            }
        }
        Reply::ToolCall {
            id,
            name,
            arguments,
        } => {
            let chars = name.chars().count() + arguments.chars().count();
            at = timing.generating(content::tokens(chars));
            let delta = json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": arguments}}],
            });
            out.push((at, chunk.delta(delta, Value::Null, None)));
        }
    }
    let finish = json!(ending.finish_reason);
    out.push((at, chunk.delta(json!({}), finish, Some(ending.usage))));
    if ending.include_usage {
        out.push((at, chunk.event(json!([]), None, Some(ending.usage))));
    }
    out.push((at, Bytes::from_static(b"data: [DONE]\n\n")));
    out
}

/// Breaks a stream's `events` after the role chunk and `words` words: cut
/// there, or a chunk that is not JSON, or (a stall) nothing more.
pub(crate) fn break_off(events: &mut Vec<(Duration, Bytes)>, kind: StreamBreak, words: usize) {
    events.truncate(words.saturating_add(1).min(events.len()));
    if kind == StreamBreak::Malformed {
        let at = events.last().map_or(Duration::ZERO, |(at, _)| *at);
        events.push((
            at,
            Bytes::from_static(b"data: {\"choices\": [{\"delta\"\n\n"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pacing::Pacing;
    use crate::{Latency, Profile};

    fn text_events(text: &str, pacing: Pacing, include_usage: bool) -> Vec<(Duration, String)> {
        let chunk = Chunk {
            id: "chatcmpl-x",
            created: 1,
            model: "llama-3.3-70b-versatile",
            request_id: "req_x",
        };
        let usage = json!({"total_tokens": 3});
        let ending = Ending {
            finish_reason: "stop",
            usage: &usage,
            include_usage,
        };
        let timing = Timing::resolve(Latency::default(), pacing, None::<Profile>);
        events(&chunk, &Reply::Text(text.to_owned()), &ending, &timing)
            .into_iter()
            .map(|(at, bytes)| (at, String::from_utf8_lossy(&bytes).into_owned()))
            .collect()
    }

    #[test]
    fn words_are_paced_by_their_tokens() {
        let pacing = Pacing {
            tokens_per_s: Some(10.0),
            ..Pacing::default()
        };
        // "Take" is 1 token, " all" 2 in total, " the" 3, " time." 5.
        let events = text_events("Take all the time.", pacing, false);
        let at: Vec<u64> = events.iter().map(|(at, _)| at.as_millis() as u64).collect();
        assert_eq!(at, [0, 100, 200, 300, 500, 500, 500]);
        assert!(events[0].1.contains(r#""role":"assistant""#));
        assert!(events[4].1.contains(r#""content":" time.""#));
        assert!(events[5].1.contains(r#""finish_reason":"stop""#));
        assert_eq!(events[6].1, "data: [DONE]\n\n");
    }

    #[test]
    fn unpaced_and_empty_streams() {
        let events = text_events("", Pacing::default(), true);
        // Role, finish, usage, done: no empty word chunk.
        assert_eq!(events.len(), 4);
        assert!(events.iter().all(|(at, _)| at.is_zero()));
        assert!(events[2].1.contains(r#""choices":[]"#));
        assert!(events[2].1.contains(r#""usage":{"total_tokens":3}"#));
    }
}
