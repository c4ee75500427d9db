//! Why a pipeline attempt stops, and the stable code a job that fails for
//! good carries (`error.code` in the job JSON).

use std::time::Duration;

use rose_shared::domain::{JobError, Stage};
use rose_shared::providers::{ErrorKind, ProviderError};
use rose_shared::resilience::CallError;
use rose_shared::store::StoreError;

/// Why an attempt stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StageError {
    #[error("{} provider failed: {error}", stage.as_str())]
    Provider { stage: Stage, error: ProviderError },
    #[error("{} circuit breaker is open", stage.as_str())]
    Open { stage: Stage, retry_in: Duration },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the session was erased while its job ran")]
    SessionGone,
    #[error("the uploaded audio is no longer stored")]
    AudioGone,
    /// The row moved on without this delivery: the job was cancelled, or
    /// another delivery finished it. Nothing more is written.
    #[error("the job ended elsewhere (cancelled, or finished by another delivery)")]
    Moved,
}

impl StageError {
    pub(crate) fn from_call(stage: Stage) -> impl FnOnce(CallError) -> Self {
        move |e| match e {
            CallError::Provider(error) => Self::Provider { stage, error },
            CallError::Open(open) => Self::Open {
                stage,
                retry_in: open.retry_in,
            },
        }
    }

    /// The stable code and message a failed job carries.
    pub(crate) fn job_error(&self) -> JobError {
        let (code, message) = match self {
            Self::Provider { error, .. } if error.kind == ErrorKind::InvalidAudio => (
                "invalid_audio",
                "the recording could not be decoded".to_owned(),
            ),
            Self::Provider { error, .. } if matches!(error.status, Some(401 | 403)) => (
                "provider_auth_failed",
                format!("{} refused Rose's credentials", error.provider),
            ),
            Self::Provider { stage, error } if error.is_bad_answer() => (
                "provider_bad_answer",
                format!(
                    "{} stage: {} kept answering what Rose cannot read ({})",
                    stage.as_str(),
                    error.provider,
                    error.message
                ),
            ),
            Self::Provider { stage, error } if error.is_retryable() => (
                "provider_unavailable",
                format!(
                    "{} stage: {} stayed unavailable (last: {})",
                    stage.as_str(),
                    error.provider,
                    error.message
                ),
            ),
            Self::Open { stage, .. } => (
                "provider_unavailable",
                format!(
                    "{} stage: the provider stayed unavailable until the job's deadline",
                    stage.as_str()
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
            Self::SessionGone => ("session_not_found", self.to_string()),
            Self::AudioGone => ("audio_unavailable", self.to_string()),
            Self::Moved => ("job_moved", self.to_string()),
            Self::Store(_) => ("database_unavailable", "storage failed".to_owned()),
        };
        JobError {
            code: code.to_owned(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_stable_codes() {
        let transient = ProviderError::transient("groq", Some(503), "busy");
        let e = StageError::Provider {
            stage: Stage::Llm,
            error: transient,
        };
        assert_eq!(e.job_error().code, "provider_unavailable");
        let open = StageError::Open {
            stage: Stage::Stt,
            retry_in: Duration::from_secs(3),
        };
        assert_eq!(open.job_error().code, "provider_unavailable");
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
        assert_eq!(
            StageError::SessionGone.job_error().code,
            "session_not_found"
        );
    }
}
