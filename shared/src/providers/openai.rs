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

use super::{ChatModel, ChatRequest, ProviderError, Speech, SpeechToText, TextToSpeech};
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
        let body = response.text().await.unwrap_or_default();
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

fn bad_body(e: &reqwest::Error) -> ProviderError {
    ProviderError::transient(PROVIDER, None, format!("unreadable answer: {e}"))
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
        let body: Transcription = response.json().await.map_err(|e| bad_body(&e))?;
        Ok(body.text.trim().to_owned())
    }
}

#[async_trait]
impl ChatModel for OpenAiClient {
    async fn complete(&self, request: ChatRequest) -> Result<String, ProviderError> {
        let mut body = json!({
            "model": request.model,
            "messages": request.messages,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        });
        if request.json {
            body["response_format"] = json!({"type": "json_object"});
        }
        let url = format!("{}/chat/completions", self.base);
        let response = self.send(self.http.post(url).json(&body)).await?;
        let completion: Completion = response.json().await.map_err(|e| bad_body(&e))?;
        completion
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| ProviderError::transient(PROVIDER, None, "empty completion"))
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
        let bytes = response.bytes().await.map_err(|e| bad_body(&e))?;
        Ok(Speech {
            bytes: bytes.to_vec(),
            mime,
        })
    }
}
