//! The voice pipeline: STT → LLM → TTS, one checkpoint per stage.
//!
//! Each stage stores its output in the job row before the next begins, so a
//! job that is run again (a retry, a redelivery after a worker died) starts at
//! its first unfinished stage: no provider is paid twice for the same stage
//! and no turn is stored twice.
//!
//! Failures are sorted three ways: a provider failure that may pass is
//! retried after an exponential, fully jittered backoff that honours the
//! provider's own wait hint, up to [`RetryPolicy::max_attempts`] attempts; a
//! failure that will not pass fails the job at once with a stable code; a
//! storage failure is handed back to the queue (the job is redelivered).
//! Text-to-speech is optional: when it fails, the text reply is delivered and
//! the job is marked `degraded: ["tts"]`.

use std::time::{Duration, Instant};

use rand::Rng;
use rose_shared::Rose;
use rose_shared::audio::sniff;
use rose_shared::domain::{Job, JobError, JobId, Stage, VoiceTask};
use rose_shared::providers::{ChatMessage, ChatRequest, ErrorKind, ProviderError};
use rose_shared::store::{AudioLookup, NewAudio, StoreError};
use tracing::{Instrument, info_span};

use crate::persona::PERSONA;

/// How often and how patiently a job is tried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: i64,
    /// The backoff's first step.
    pub base: Duration,
    /// The backoff's ceiling (a provider's own wait hint may exceed it).
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`: full jitter over
    /// `min(cap, base · 2^(attempt-1))`, never below the provider's hint.
    #[must_use]
    pub fn delay(&self, attempt: i64, hint: Option<Duration>) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.cap);
        let jittered = ceiling.mul_f64(rand::rng().random_range(0.0..=1.0));
        jittered.max(hint.unwrap_or_default().min(Duration::from_secs(120)))
    }
}

/// Why an attempt stopped.
#[derive(Debug, thiserror::Error)]
enum StageError {
    #[error("{stage:?} provider failed: {error}")]
    Provider { stage: Stage, error: ProviderError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no speech was heard in the recording")]
    NoSpeech,
    #[error("the uploaded audio is no longer stored")]
    AudioGone,
}

impl StageError {
    fn provider(stage: Stage) -> impl FnOnce(ProviderError) -> Self {
        move |error| Self::Provider { stage, error }
    }

    /// The stable code and message a failed job carries.
    fn job_error(&self) -> JobError {
        let (code, message) = match self {
            Self::Provider { error, .. } if error.kind == ErrorKind::InvalidAudio => (
                "invalid_audio",
                "the recording could not be decoded".to_owned(),
            ),
            Self::Provider { error, .. } if matches!(error.status, Some(401 | 403)) => (
                "provider_auth_failed",
                format!("{} refused Rose's credentials", error.provider),
            ),
            Self::Provider { stage, error } if error.is_retryable() => (
                "provider_unavailable",
                format!(
                    "{} stage: {} stayed unavailable",
                    stage.as_str(),
                    error.provider
                ),
            ),
            Self::Provider { stage, error } => {
                let code = match stage {
                    Stage::Stt => "stt_failed",
                    Stage::Llm => "llm_failed",
                    Stage::Tts => "tts_failed",
                    Stage::Memory => "memory_failed",
                };
                (code, error.to_string())
            }
            Self::NoSpeech => ("no_speech_detected", self.to_string()),
            Self::AudioGone => ("audio_unavailable", self.to_string()),
            Self::Store(_) => ("storage_unavailable", "storage failed".to_owned()),
        };
        JobError {
            code: code.to_owned(),
            message,
        }
    }
}

/// Runs voice jobs.
#[derive(Debug, Clone)]
pub struct Pipeline {
    rose: Rose,
    retry: RetryPolicy,
}

impl Pipeline {
    /// A pipeline on `rose`'s store and providers.
    #[must_use]
    pub fn new(rose: Rose, retry: RetryPolicy) -> Self {
        Self { rose, retry }
    }

    /// Runs the job to an end: succeeded, failed, or (on a storage failure)
    /// an error for the queue to redeliver later.
    ///
    /// # Errors
    /// [`StoreError`] when the job row cannot be read or written.
    pub async fn process(&self, task: &VoiceTask) -> Result<(), StoreError> {
        let span = info_span!(
            "job",
            job_id = %task.job_id,
            request_id = task.request_id.as_deref().unwrap_or_default()
        );
        self.process_job(task.job_id).instrument(span).await
    }

    async fn process_job(&self, id: JobId) -> Result<(), StoreError> {
        let store = &self.rose.store;
        loop {
            let Some(job) = store.begin_attempt(id).await? else {
                tracing::warn!(job_id = %id, "queued job has no row; dropping the message");
                return Ok(());
            };
            if job.status.is_terminal() {
                return Ok(());
            }
            self.rose.events.publish(id).await;
            let attempt = job.attempts;
            let failure = match self.run_stages(job).await {
                Ok(()) => {
                    self.rose.events.publish(id).await;
                    return Ok(());
                }
                Err(StageError::Store(e)) => return Err(e),
                Err(failure) => failure,
            };
            if let StageError::Provider { stage, error } = &failure
                && error.is_retryable()
                && attempt < self.retry.max_attempts
            {
                let wait = self.retry.delay(attempt, error.retry_after);
                tracing::warn!(
                    job_id = %id,
                    stage = stage.as_str(),
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    error = %error,
                    "stage failed; retrying"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            let error = failure.job_error();
            tracing::warn!(job_id = %id, code = %error.code, error = %failure, "job failed");
            store.fail_job(id, &error).await?;
            self.rose.events.publish(id).await;
            return Ok(());
        }
    }

    async fn run_stages(&self, mut job: Job) -> Result<(), StageError> {
        if job.transcript.is_none() {
            job.transcript = Some(self.transcribe(&job).await?);
        }
        let reply = match job.reply_text.clone() {
            Some(reply) => reply,
            None => self.reply(&job).await?,
        };
        let mut degraded = Vec::new();
        if job.reply_audio_id.is_none()
            && let Some(tts) = &self.rose.providers.tts
        {
            self.enter(&job, Stage::Tts).await?;
            let started = Instant::now();
            match tts.speak(&reply).await {
                Ok(speech) => {
                    let ms = elapsed_ms(started);
                    let audio = NewAudio {
                        bytes: speech.bytes,
                        mime: speech.mime,
                    };
                    self.rose.store.save_speech(&job, audio, ms).await?;
                    tracing::info!(event = "job_stage", job_id = %job.id, stage = "tts", tts_duration_ms = ms, "job_stage");
                }
                Err(e) => {
                    tracing::warn!(job_id = %job.id, error = %e, "speech failed; delivering the text reply");
                    degraded.push("tts".to_owned());
                }
            }
        }
        self.rose.store.complete_job(job.id, &degraded).await?;
        tracing::info!(job_id = %job.id, "job succeeded");
        Ok(())
    }

    async fn enter(&self, job: &Job, stage: Stage) -> Result<(), StageError> {
        self.rose.store.set_stage(job.id, stage).await?;
        self.rose.events.publish(job.id).await;
        Ok(())
    }

    async fn transcribe(&self, job: &Job) -> Result<String, StageError> {
        self.enter(job, Stage::Stt).await?;
        let audio = match self.rose.store.get_audio(job.input_audio_id).await? {
            AudioLookup::Found(audio) => audio,
            AudioLookup::Expired | AudioLookup::Missing => return Err(StageError::AudioGone),
        };
        let Some(format) = sniff(&audio.bytes) else {
            let error = ProviderError {
                kind: ErrorKind::InvalidAudio,
                ..ProviderError::permanent("rose", None, "stored audio is not a known container")
            };
            return Err(StageError::provider(Stage::Stt)(error));
        };
        let started = Instant::now();
        let text = self
            .rose
            .providers
            .stt
            .transcribe(audio.bytes, format)
            .await
            .map_err(StageError::provider(Stage::Stt))?;
        let ms = elapsed_ms(started);
        tracing::info!(event = "job_stage", job_id = %job.id, stage = "stt", groq_duration_ms = ms, "job_stage");
        if text.trim().is_empty() {
            return Err(StageError::NoSpeech);
        }
        self.rose.store.save_transcript(job.id, &text, ms).await?;
        Ok(text)
    }

    async fn reply(&self, job: &Job) -> Result<String, StageError> {
        self.enter(job, Stage::Llm).await?;
        let config = &self.rose.config;
        let history = self
            .rose
            .store
            .recent_turns(job.session_id, config.history_turns)
            .await?;
        let mut messages = Vec::with_capacity(history.len() + 2);
        messages.push(ChatMessage::new("system", PERSONA));
        messages.extend(
            history
                .into_iter()
                .map(|turn| ChatMessage::new(turn.role.as_str(), turn.text)),
        );
        messages.push(ChatMessage::new(
            "user",
            job.transcript.clone().unwrap_or_default(),
        ));
        let request = ChatRequest {
            model: config.llm_model.clone(),
            messages,
            temperature: 0.7,
            max_tokens: 200,
            json: false,
        };
        let started = Instant::now();
        let reply = self
            .rose
            .providers
            .llm
            .complete(request)
            .await
            .map_err(StageError::provider(Stage::Llm))?;
        let ms = elapsed_ms(started);
        tracing::info!(event = "job_stage", job_id = %job.id, stage = "llm", groq_duration_ms = ms, "job_stage");
        self.rose.store.save_reply(job, &reply, ms).await?;
        Ok(reply)
    }
}

fn elapsed_ms(started: Instant) -> i64 {
    i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_hints() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
        };
        for _ in 0..200 {
            assert!(policy.delay(1, None) <= Duration::from_millis(100));
            assert!(policy.delay(3, None) <= Duration::from_millis(400));
            assert!(policy.delay(10, None) <= Duration::from_millis(400));
            assert!(policy.delay(1, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
        }
    }

    #[test]
    fn failures_map_to_stable_codes() {
        let transient = ProviderError::transient("groq", Some(503), "busy");
        let e = StageError::Provider {
            stage: Stage::Llm,
            error: transient,
        };
        assert_eq!(e.job_error().code, "provider_unavailable");
        let auth = ProviderError::permanent("groq", Some(401), "bad key");
        let e = StageError::Provider {
            stage: Stage::Stt,
            error: auth,
        };
        assert_eq!(e.job_error().code, "provider_auth_failed");
        let bad = ProviderError::permanent("groq", Some(400), "nope");
        let e = StageError::Provider {
            stage: Stage::Llm,
            error: bad,
        };
        assert_eq!(e.job_error().code, "llm_failed");
        assert_eq!(StageError::NoSpeech.job_error().code, "no_speech_detected");
    }
}
