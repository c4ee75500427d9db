//! Groq and any OpenAI-compatible server: `POST {base}/audio/transcriptions`
//! (multipart `file`, `model`), `POST {base}/chat/completions` and
//! `POST {base}/audio/speech`, all with `Authorization: Bearer`.

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::Body;
use reqwest::multipart::{Form, Part};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use futures::StreamExt;

use super::{
    ChatModel, ChatRequest, ProviderError, Speech, SpeechToText, TextStream, TextToSpeech,
};
use crate::audio::AudioFormat;

const PROVIDER: &str = "groq";

/// A client for one OpenAI-compatible base URL.
pub struct OpenAiClient {
    http: reqwest::Client,
    base: String,
    key: SecretString,
    stt_model: String,
}

impl OpenAiClient {
    /// `base` is e.g. `https://api.groq.com/openai/v1`.
    #[must_use]
    pub fn new(http: reqwest::Client, base: &str, key: SecretString, stt_model: String) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key,
            stt_model,
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ProviderError> {
        let response = request
            .bearer_auth(self.key.expose_secret())
            .send()
            .await
            .map_err(|e| ProviderError::from_reqwest(PROVIDER, &e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let headers = response.headers().clone();
        let body = super::body::read_error_body(response).await;
        Err(ProviderError::from_status(
            PROVIDER,
            status.as_u16(),
            &headers,
            &body,
        ))
    }
}

#[derive(Deserialize)]
struct Transcription {
    text: String,
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
}

/// The reply a completion holds.
fn completion_text(completion: Completion) -> Result<String, ProviderError> {
    completion
        .choices
        .into_iter()
        .next()
        .and_then(|c| c.message.content)
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ProviderError::transient(PROVIDER, None, "empty completion"))
}

#[async_trait]
impl SpeechToText for OpenAiClient {
    async fn transcribe(&self, audio: Bytes, format: AudioFormat) -> Result<String, ProviderError> {
        let length = audio.len() as u64;
        let file = Part::stream_with_length(Body::from(audio), length)
            .file_name(format!("speech.{}", format.extension()))
            .mime_str(format.mime())
            .map_err(|e| ProviderError::permanent(PROVIDER, None, e.to_string()))?;
        let form = Form::new()
            .part("file", file)
            .text("model", self.stt_model.clone())
            .text("response_format", "json");
        let url = format!("{}/audio/transcriptions", self.base);
        let response = self
            .send(self.http.post(url).multipart(form))
            .await
            .map_err(|mut e| {
                // A 400 about the file means the audio itself cannot be decoded.
                if e.status == Some(400) && e.message.to_ascii_lowercase().contains("file") {
                    e.kind = super::ErrorKind::InvalidAudio;
                }
                e
            })?;
        let body: Transcription = super::body::read_json(PROVIDER, response).await?;
        Ok(body.text.trim().to_owned())
    }
}

fn chat_body(request: &ChatRequest) -> serde_json::Value {
    let mut body = json!({
        "model": request.model,
        "messages": request.messages,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
    });
    if request.json {
        body["response_format"] = json!({"type": "json_object"});
    }
    body
}

/// One `chat.completion.chunk` as far as Rose reads it.
#[derive(Deserialize)]
struct StreamChunk {
    #[serde(default)]
    choices: Vec<StreamChoice>,
}

#[derive(Deserialize)]
struct StreamChoice {
    #[serde(default)]
    delta: Delta,
}

#[derive(Deserialize, Default)]
struct Delta {
    content: Option<String>,
}

/// Reads an OpenAI-compatible event stream: `data: {chunk}` lines, ending
/// with `data: [DONE]`. Comments, other fields and blank lines are skipped;
/// an `error` object in the stream, a chunk that is not JSON, or the end of
/// the body before `[DONE]` is a transient failure.
#[derive(Default)]
pub struct SseText {
    buffer: Vec<u8>,
    done: bool,
}

impl SseText {
    /// Adds received bytes; returns the text pieces of the complete lines.
    ///
    /// # Errors
    /// A malformed chunk or an error event.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, ProviderError> {
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            if self.done {
                continue;
            }
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let data = data.trim_start();
            if data == "[DONE]" {
                self.done = true;
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(data).map_err(|_| {
                ProviderError::bad_answer(PROVIDER, "malformed chunk in the reply stream")
            })?;
            if let Some(error) = value.get("error") {
                let message = error
                    .get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or("error in the reply stream");
                return Err(ProviderError::transient(PROVIDER, None, message));
            }
            let chunk: StreamChunk = serde_json::from_value(value).map_err(|_| {
                ProviderError::bad_answer(PROVIDER, "malformed chunk in the reply stream")
            })?;
            if let Some(text) = chunk
                .choices
                .into_iter()
                .next()
                .and_then(|c| c.delta.content)
                .filter(|t| !t.is_empty())
            {
                out.push(text);
            }
        }
        if self.buffer.len() > super::body::MAX_JSON_ANSWER {
            return Err(ProviderError::bad_answer(
                PROVIDER,
                "a line of the reply stream is larger than Rose reads",
            ));
        }
        Ok(out)
    }

    /// Whether `[DONE]` was seen.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.done
    }
}

#[async_trait]
impl ChatModel for OpenAiClient {
    async fn stream(&self, request: ChatRequest) -> Result<TextStream, ProviderError> {
        let mut body = chat_body(&request);
        body["stream"] = json!(true);
        let url = format!("{}/chat/completions", self.base);
        let response = self.send(self.http.post(url).json(&body)).await?;
        let event_stream = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/event-stream"));
        if !event_stream {
            // A server that does not stream may answer the whole completion;
            // anything else is not an answer.
            let completion: Completion = super::body::read_json(PROVIDER, response).await?;
            let text = completion_text(completion)?;
            return Ok(Box::pin(futures::stream::once(async move { Ok(text) })));
        }
        let bytes = response.bytes_stream();
        let state = (
            bytes,
            SseText::default(),
            std::collections::VecDeque::new(),
            false,
        );
        let stream =
            futures::stream::unfold(state, |(mut bytes, mut sse, mut ready, ended)| async move {
                loop {
                    if let Some(text) = ready.pop_front() {
                        return Some((Ok(text), (bytes, sse, ready, ended)));
                    }
                    if ended || sse.is_done() {
                        return None;
                    }
                    match bytes.next().await {
                        Some(Ok(chunk)) => match sse.push(&chunk) {
                            Ok(pieces) => ready.extend(pieces),
                            Err(e) => return Some((Err(e), (bytes, sse, ready, true))),
                        },
                        Some(Err(e)) => {
                            let e = ProviderError::from_reqwest(PROVIDER, &e);
                            return Some((Err(e), (bytes, sse, ready, true)));
                        }
                        None => {
                            let e = ProviderError::transient(
                                PROVIDER,
                                None,
                                "the reply stream ended before [DONE]",
                            );
                            return Some((Err(e), (bytes, sse, ready, true)));
                        }
                    }
                }
            });
        Ok(Box::pin(stream))
    }

    async fn complete(&self, request: ChatRequest) -> Result<String, ProviderError> {
        let body = chat_body(&request);
        let url = format!("{}/chat/completions", self.base);
        let response = self.send(self.http.post(url).json(&body)).await?;
        let completion: Completion = super::body::read_json(PROVIDER, response).await?;
        completion_text(completion)
    }
}

#[async_trait]
impl TextToSpeech for OpenAiClient {
    async fn speak(&self, text: &str) -> Result<Speech, ProviderError> {
        let body =
            json!({"model": "tts-1", "input": text, "voice": "alloy", "response_format": "mp3"});
        let url = format!("{}/audio/speech", self.base);
        let response = self.send(self.http.post(url).json(&body)).await?;
        let mime = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("audio/mpeg")
            .to_owned();
        let bytes = super::body::read_audio(PROVIDER, response).await?;
        Ok(Speech {
            bytes: bytes.to_vec(),
            mime,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_streams_yield_text_until_done() {
        let mut sse = SseText::default();
        let first = sse
            .push(b": keep-alive\n\ndata: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n")
            .expect("valid");
        assert_eq!(first, vec!["Hel".to_owned()]);
        // A line split across reads waits for its end.
        assert!(
            sse.push(b"data: {\"choices\":[{\"delta\":{\"content\":\"lo.\"")
                .expect("partial")
                .is_empty()
        );
        assert_eq!(sse.push(b"}}]}\r\n").expect("rest"), vec!["lo.".to_owned()]);
        assert!(!sse.is_done());
        assert!(sse.push(b"data: [DONE]\n\n").expect("done").is_empty());
        assert!(sse.is_done());
    }

    #[test]
    fn broken_streams_are_transient_failures() {
        let mut sse = SseText::default();
        let e = sse.push(b"data: {not json\n").expect_err("malformed");
        assert!(e.is_retryable());
        let mut sse = SseText::default();
        let e = sse
            .push(b"data: {\"error\":{\"message\":\"overloaded\"}}\n")
            .expect_err("error event");
        assert!(e.is_retryable());
        assert!(e.message.contains("overloaded"));
    }
}
