//! Provider clients: speech-to-text, chat and text-to-speech.
//!
//! Each capability is a small trait so the pipeline does not care who
//! answers: Groq or any OpenAI-compatible server ([`openai`]), ElevenLabs
//! ([`elevenlabs`]), or local espeak-ng ([`espeak`]). Every failure is a
//! [`ProviderError`] that says whether trying again can help.

pub mod body;
pub mod elevenlabs;
pub mod error;
pub mod espeak;
pub mod openai;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::audio::AudioFormat;
use crate::config::{Config, TtsProvider};

pub use error::{ErrorKind, ProviderError};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` (`system`, `user`, `assistant`).
    #[must_use]
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_owned(),
            content: content.into(),
        }
    }
}

/// A chat request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub temperature: f64,
    pub max_tokens: u32,
    /// Ask for a JSON object reply.
    pub json: bool,
}

/// Synthesised speech.
#[derive(Debug, Clone)]
pub struct Speech {
    pub bytes: Vec<u8>,
    pub mime: String,
}

/// Turns recorded speech into text.
#[async_trait]
pub trait SpeechToText: Send + Sync {
    /// # Errors
    /// [`ProviderError`], classified.
    /// `audio` is shared, not copied: a retry sends the same buffer again.
    async fn transcribe(&self, audio: Bytes, format: AudioFormat) -> Result<String, ProviderError>;
}

/// A reply's text as the model writes it: pieces in order. An item that
/// is an error ends the stream (a broken or stalled answer is transient: the
/// caller may ask again).
pub type TextStream = Pin<Box<dyn Stream<Item = Result<String, ProviderError>> + Send>>;

/// Writes replies.
#[async_trait]
pub trait ChatModel: Send + Sync {
    /// The whole reply at once.
    ///
    /// # Errors
    /// [`ProviderError`], classified.
    async fn complete(&self, request: ChatRequest) -> Result<String, ProviderError>;

    /// The reply as it is written. Unless a client streams for real, the
    /// whole reply as one piece.
    ///
    /// # Errors
    /// [`ProviderError`], classified, when the answer does not start.
    async fn stream(&self, request: ChatRequest) -> Result<TextStream, ProviderError> {
        let text = self.complete(request).await?;
        Ok(Box::pin(futures::stream::once(async move { Ok(text) })))
    }
}

/// Speech as it is synthesised: its type, then its bytes in order (an
/// item that is an error ends them).
pub struct SpeechStream {
    pub mime: String,
    pub bytes: Pin<Box<dyn Stream<Item = Result<Bytes, ProviderError>> + Send>>,
}

impl std::fmt::Debug for SpeechStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeechStream")
            .field("mime", &self.mime)
            .finish_non_exhaustive()
    }
}

/// What surrounds a sentence spoken on its own, so the voice carries on
/// across sentences instead of starting afresh each time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpeechContext {
    /// What was said before it in the same reply.
    pub previous_text: Option<String>,
    /// What follows, when already known.
    pub next_text: Option<String>,
}

/// Speaks replies.
#[async_trait]
pub trait TextToSpeech: Send + Sync {
    /// # Errors
    /// [`ProviderError`], classified.
    async fn speak(&self, text: &str) -> Result<Speech, ProviderError>;

    /// One sentence of a longer reply, with what surrounds it. Unless a
    /// client uses the context, the same as [`Self::speak`].
    ///
    /// # Errors
    /// [`ProviderError`], classified.
    async fn speak_sentence(
        &self,
        text: &str,
        context: &SpeechContext,
    ) -> Result<Speech, ProviderError> {
        let _ = context;
        self.speak(text).await
    }

    /// [`Self::speak_sentence`] as its audio arrives, so it can be relayed
    /// before it is whole. Unless a client streams for real, the whole
    /// audio as one piece.
    ///
    /// # Errors
    /// [`ProviderError`], classified, when the speech does not start.
    async fn speak_sentence_stream(
        &self,
        text: &str,
        context: &SpeechContext,
    ) -> Result<SpeechStream, ProviderError> {
        let speech = self.speak_sentence(text, context).await?;
        let bytes = Bytes::from(speech.bytes);
        Ok(SpeechStream {
            mime: speech.mime,
            bytes: Box::pin(futures::stream::once(async move { Ok(bytes) })),
        })
    }
}

/// Where the providers are.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub groq_base_url: String,
    pub groq_api_key: SecretString,
    pub elevenlabs_base_url: String,
    pub elevenlabs_api_key: SecretString,
}

impl Endpoints {
    /// The configured providers; `None` when the simulator must stand in.
    #[must_use]
    pub fn from_config(config: &Config) -> Option<Self> {
        let groq_api_key = config.groq_api_key.clone()?;
        Some(Self {
            groq_base_url: config.groq_base_url.clone(),
            groq_api_key,
            elevenlabs_base_url: config.elevenlabs_base_url.clone(),
            elevenlabs_api_key: config
                .elevenlabs_api_key
                .clone()
                .unwrap_or_else(|| SecretString::from(String::new())),
        })
    }

    /// The simulator at `base` (e.g. `http://127.0.0.1:9090`), with placeholder keys.
    #[must_use]
    pub fn simulator(base: &str) -> Self {
        let base = base.trim_end_matches('/');
        Self {
            groq_base_url: format!("{base}/openai/v1"),
            groq_api_key: SecretString::from("sim-key".to_owned()),
            elevenlabs_base_url: base.to_owned(),
            elevenlabs_api_key: SecretString::from("sim-key".to_owned()),
        }
    }
}

/// The provider set a worker uses.
#[derive(Clone)]
pub struct Providers {
    pub stt: Arc<dyn SpeechToText>,
    pub llm: Arc<dyn ChatModel>,
    /// `None` when `TTS_PROVIDER=none`.
    pub tts: Option<Arc<dyn TextToSpeech>>,
    /// Answers come from the simulator, not real providers.
    pub simulated: bool,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("tts", &self.tts.is_some())
            .field("simulated", &self.simulated)
            .finish_non_exhaustive()
    }
}

impl Providers {
    /// Builds the clients for `endpoints`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        config: &Config,
        endpoints: &Endpoints,
        simulated: bool,
    ) -> Result<Self, ProviderError> {
        let http = http_client(config.provider_timeout)?;
        let openai = Arc::new(openai::OpenAiClient::new(
            http.clone(),
            &endpoints.groq_base_url,
            endpoints.groq_api_key.clone(),
            config.stt_model.clone(),
        ));
        let tts: Option<Arc<dyn TextToSpeech>> = match config.tts_provider {
            TtsProvider::ElevenLabs => Some(Arc::new(elevenlabs::ElevenLabs::new(
                http,
                &endpoints.elevenlabs_base_url,
                endpoints.elevenlabs_api_key.clone(),
                config.elevenlabs_voice_id.clone(),
                config.tts_model.clone(),
            ))),
            TtsProvider::OpenAi => Some(openai.clone()),
            TtsProvider::Espeak => Some(Arc::new(espeak::Espeak::default())),
            TtsProvider::None => None,
        };
        Ok(Self {
            stt: openai.clone(),
            llm: openai,
            tts,
            simulated,
        })
    }
}

/// The HTTP client every provider call goes through: bounded by `timeout`,
/// no redirects (a provider never needs one; a redirect is a misconfiguration).
///
/// # Errors
/// When TLS cannot be initialised.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("rose/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderError::permanent("http", None, e.to_string()))
}
