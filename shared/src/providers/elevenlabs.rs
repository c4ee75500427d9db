//! ElevenLabs: `POST {base}/v1/text-to-speech/{voice_id}?output_format=mp3_44100_128`
//! with `xi-api-key`, body `text`, `model_id`, `voice_settings`.
//!
//! A 429 whose body says `too_many_concurrent_requests` means "wait for a
//! slot"; `system_busy` means back off. Both are rate limits to the caller.

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use futures::StreamExt;

use super::{ProviderError, Speech, SpeechContext, SpeechStream, TextToSpeech};

const PROVIDER: &str = "elevenlabs";

/// The ElevenLabs text-to-speech client.
pub struct ElevenLabs {
    http: reqwest::Client,
    base: String,
    key: SecretString,
    voice_id: String,
    model_id: String,
}

impl ElevenLabs {
    /// `base` is e.g. `https://api.elevenlabs.io`.
    #[must_use]
    pub fn new(
        http: reqwest::Client,
        base: &str,
        key: SecretString,
        voice_id: String,
        model_id: String,
    ) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key,
            voice_id,
            model_id,
        }
    }
}

#[async_trait]
impl TextToSpeech for ElevenLabs {
    async fn speak(&self, text: &str) -> Result<Speech, ProviderError> {
        let url = format!("{}/v1/text-to-speech/{}", self.base, self.voice_id);
        self.synthesise(url, text, &SpeechContext::default()).await
    }

    /// `POST /v1/text-to-speech/{voice_id}/stream` with `previous_text` and
    /// `next_text`, so the voice's prosody runs on across sentences.
    async fn speak_sentence(
        &self,
        text: &str,
        context: &SpeechContext,
    ) -> Result<Speech, ProviderError> {
        let stream = self.speak_sentence_stream(text, context).await?;
        let mut bytes = Vec::new();
        let mut parts = stream.bytes;
        while let Some(part) = parts.next().await {
            let part = part?;
            if bytes.len() + part.len() > super::body::MAX_AUDIO_ANSWER {
                return Err(ProviderError::bad_answer(
                    PROVIDER,
                    "the speech is larger than Rose reads",
                ));
            }
            bytes.extend_from_slice(&part);
        }
        super::body::check_audio(PROVIDER, &bytes)?;
        Ok(Speech {
            bytes,
            mime: stream.mime,
        })
    }

    /// The `/stream` endpoint's audio as it is generated: its first bytes
    /// come long before its last.
    async fn speak_sentence_stream(
        &self,
        text: &str,
        context: &SpeechContext,
    ) -> Result<SpeechStream, ProviderError> {
        let url = format!("{}/v1/text-to-speech/{}/stream", self.base, self.voice_id);
        let response = self.request(url, text, context).await?;
        let mime = mime_of(&response);
        let bytes = response
            .bytes_stream()
            .map(|part| part.map_err(|e| ProviderError::from_reqwest(PROVIDER, &e)));
        Ok(SpeechStream {
            mime,
            bytes: Box::pin(bytes),
        })
    }
}

impl ElevenLabs {
    async fn synthesise(
        &self,
        url: String,
        text: &str,
        context: &SpeechContext,
    ) -> Result<Speech, ProviderError> {
        let response = self.request(url, text, context).await?;
        let mime = mime_of(&response);
        let bytes = super::body::read_audio(PROVIDER, response).await?;
        Ok(Speech {
            bytes: bytes.to_vec(),
            mime,
        })
    }

    /// Sends one request; the answer when it is a success.
    async fn request(
        &self,
        url: String,
        text: &str,
        context: &SpeechContext,
    ) -> Result<reqwest::Response, ProviderError> {
        // A calm, steady voice: high stability, natural similarity.
        let mut body = json!({
            "text": text,
            "model_id": self.model_id,
            "voice_settings": {"stability": 0.6, "similarity_boost": 0.75},
        });
        if let Some(previous) = context.previous_text.as_deref().filter(|t| !t.is_empty()) {
            body["previous_text"] = json!(previous);
        }
        if let Some(next) = context.next_text.as_deref().filter(|t| !t.is_empty()) {
            body["next_text"] = json!(next);
        }
        let response = self
            .http
            .post(url)
            .query(&[("output_format", "mp3_44100_128")])
            .header("xi-api-key", self.key.expose_secret())
            .header(reqwest::header::ACCEPT, "audio/mpeg")
            .json(&body)
            .send()
            .await
            .map_err(|e| ProviderError::from_reqwest(PROVIDER, &e))?;
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let body = super::body::read_error_body(response).await;
            return Err(ProviderError::from_status(
                PROVIDER,
                status.as_u16(),
                &headers,
                &body,
            ));
        }
        Ok(response)
    }
}

/// The audio type an answer declares (MP3 unless it says otherwise).
fn mime_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("audio/mpeg")
        .to_owned()
}
