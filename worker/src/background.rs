//! Work kept off the reply's critical path: memory extraction (queue
//! `memory`) and the rolling summary (queue `summary`).
//!
//! Extraction asks the small model, in JSON mode, whether what the person
//! said holds a durable personal fact; a fact is kept for the session's
//! owner unless an existing memory scores ≥ 0.90 against it (then that one is
//! refreshed). The summary folds all but a session's last 10 turns into its
//! running summary once more than 30 turns are unsummarized, so prompts stay
//! bounded however long a conversation runs. Malformed model output is logged
//! and dropped; a provider or store failure is returned for the queue to retry.
//! While the embedding model is unavailable an extraction is not attempted
//! (no model call is paid for a fact that could not be kept): the task waits
//! for the model, for a bounded time (see the worker's `MODEL_WAIT`).

use rose_shared::Rose;
use rose_shared::domain::{MemoryTask, Role, SummaryTask};
use rose_shared::memory::{Remembered, owner_of};
use rose_shared::providers::{ChatMessage, ChatRequest};
use rose_shared::queue::{MEMORY_QUEUE, SUMMARY_QUEUE};
use rose_shared::resilience::{CallError, Provider};
use serde::Deserialize;

use crate::pipeline::is_silent;

/// Turns kept verbatim after a summary.
pub const KEEP_RECENT: usize = 10;
/// Unsummarized turns that trigger a summary.
pub const SUMMARIZE_AFTER: i64 = 30;

const EXTRACT_PROMPT: &str = "\
You help a grief companion remember what matters to the person she talks with. Read what the \
person just said. If it holds a durable personal fact worth remembering in later conversations \
(a name, a loss, a relationship, a lasting feeling, a goal, something that helps them), answer \
with JSON {\"fact\": \"<one short third-person sentence about the user>\"}. Otherwise answer \
{\"fact\": null}. Answer with the JSON object only.";

const SUMMARY_PROMPT: &str = "\
You keep the running summary of a conversation between a grieving person and Rose, their \
companion. Given the summary so far and the next part of the conversation, write the updated \
summary: who the person is, what they shared, how they feel, what helped. At most eight plain \
sentences, no lists.";

#[derive(Debug, Deserialize)]
struct Extraction {
    fact: Option<String>,
}

/// A background failure worth retrying.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct Retry {
    pub reason: String,
    /// Set when the embedding model is unavailable: the task waits for it
    /// (see `MODEL_WAIT` in the worker) instead of spending its attempts.
    /// The job's creation time, unix ms.
    pub waiting_for_model_since: Option<i64>,
}

impl Retry {
    /// A failure that is not the model's.
    #[must_use]
    pub fn new(reason: String) -> Self {
        Self {
            reason,
            waiting_for_model_since: None,
        }
    }
}

fn retry(e: impl std::fmt::Display) -> Retry {
    Retry::new(e.to_string())
}

/// Parses the model's answer: `Some(fact)`, `None` for "nothing to keep", or
/// an error for output that is not the expected JSON.
fn parse_fact(content: &str) -> Result<Option<String>, String> {
    let parsed: Extraction = serde_json::from_str(content.trim()).map_err(|e| e.to_string())?;
    Ok(parsed
        .fact
        .map(|f| f.trim().to_owned())
        .filter(|f| !f.is_empty() && f.chars().count() <= 300))
}

/// Runs one extraction.
///
/// # Errors
/// [`Retry`] when a provider, the store or the memory store failed.
pub async fn extract(rose: &Rose, task: &MemoryTask) -> Result<(), Retry> {
    let Some(job) = rose.store.get_job(task.job_id).await.map_err(retry)? else {
        crate::orphan_message(MEMORY_QUEUE, &task.job_id.to_string());
        return Ok(());
    };
    let Some(transcript) = job.transcript.filter(|t| !is_silent(t)) else {
        return Ok(());
    };
    let Some(session) = rose
        .store
        .get_session(job.session_id)
        .await
        .map_err(retry)?
    else {
        return Ok(());
    };
    // Without the model a fact could not be kept: wait for it before paying
    // for the extraction.
    if let Err(e) = rose.memory.embedder().await {
        return Err(Retry {
            waiting_for_model_since: e.is_model_unavailable().then_some(job.created_at),
            reason: e.to_string(),
        });
    }
    let request = ChatRequest {
        model: rose.config.llm_small_model.clone(),
        messages: vec![
            ChatMessage::new("system", EXTRACT_PROMPT),
            ChatMessage::new("user", transcript),
        ],
        temperature: 0.1,
        max_tokens: 120,
        json: true,
    };
    let llm = &rose.providers.llm;
    let content = match rose
        .resilience
        .call(Provider::Llm, || llm.complete(request.clone()))
        .await
    {
        Ok(content) => content,
        Err(CallError::Provider(e)) if !e.is_retryable() => {
            tracing::warn!(job_id = %job.id, error = %e, "memory extraction refused; skipped");
            return Ok(());
        }
        Err(e) => return Err(retry(e)),
    };
    let fact = match parse_fact(&content) {
        Ok(Some(fact)) => fact,
        Ok(None) => return Ok(()),
        Err(reason) => {
            tracing::warn!(job_id = %job.id, %reason, "memory extraction answered malformed JSON; dropped");
            return Ok(());
        }
    };
    let owner = owner_of(&session);
    let outcome = rose
        .memory
        .remember(&owner, session.id, &fact, Some(job.id.to_string()))
        .await
        .map_err(|e| Retry {
            waiting_for_model_since: e.is_model_unavailable().then_some(job.created_at),
            reason: e.to_string(),
        })?;
    match outcome {
        Remembered::Added(id) => {
            tracing::info!(job_id = %job.id, memory = %id, "memory added");
            // The session may have been erased while the model was thinking:
            // what it owned must not outlive it.
            if rose
                .store
                .get_session(session.id)
                .await
                .map_err(retry)?
                .is_none()
            {
                rose.memory
                    .store
                    .delete_session(session.id)
                    .await
                    .map_err(retry)?;
            }
        }
        Remembered::Refreshed(id) => {
            tracing::info!(job_id = %job.id, memory = %id, "memory refreshed")
        }
    }
    Ok(())
}

/// Folds all but the last [`KEEP_RECENT`] unsummarized turns into the
/// session's summary (when there are more than [`SUMMARIZE_AFTER`]).
///
/// # Errors
/// [`Retry`] when the provider or the store failed.
pub async fn summarize(rose: &Rose, task: &SummaryTask) -> Result<(), Retry> {
    let Some(session) = rose
        .store
        .get_session(task.session_id)
        .await
        .map_err(retry)?
    else {
        crate::orphan_message(SUMMARY_QUEUE, &task.session_id.to_string());
        return Ok(());
    };
    let turns = rose
        .store
        .turns_since(session.id, session.summarized_until, 10_000)
        .await
        .map_err(retry)?;
    if (turns.len() as i64) <= SUMMARIZE_AFTER {
        return Ok(());
    }
    // Turns stored in the same millisecond as the boundary are folded with
    // it: the summary's mark is a timestamp, so splitting them would drop one.
    let mut cut = turns.len() - KEEP_RECENT;
    while cut < turns.len() && cut > 0 && turns[cut].created_at == turns[cut - 1].created_at {
        cut += 1;
    }
    let fold = &turns[..cut];
    let Some(until) = fold.last().map(|t| t.created_at) else {
        return Ok(());
    };
    let mut text = format!(
        "Summary so far: {}\n\nNext part of the conversation:\n",
        session.summary.as_deref().unwrap_or("(none yet)")
    );
    for turn in fold {
        let who = match turn.role {
            Role::User => "Person",
            Role::Assistant => "Rose",
        };
        text.push_str(&format!("{who}: {}\n", turn.text));
    }
    let request = ChatRequest {
        model: rose.config.llm_small_model.clone(),
        messages: vec![
            ChatMessage::new("system", SUMMARY_PROMPT),
            ChatMessage::new("user", text),
        ],
        temperature: 0.2,
        max_tokens: 400,
        json: false,
    };
    let llm = &rose.providers.llm;
    let summary = rose
        .resilience
        .call(Provider::Llm, || llm.complete(request.clone()))
        .await
        .map_err(retry)?;
    let saved = rose
        .store
        .save_summary(session.id, &summary, until, session.summarized_until)
        .await
        .map_err(retry)?;
    tracing::info!(session_id = %session.id, folded = fold.len(), saved, "session summary updated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_parsed_and_malformed_output_is_refused() {
        assert_eq!(
            parse_fact(r#"{"fact": "The user's name is Anna."}"#),
            Ok(Some("The user's name is Anna.".to_owned()))
        );
        assert_eq!(parse_fact(r#"{"fact": null}"#), Ok(None));
        assert_eq!(parse_fact(r#"{"fact": "   "}"#), Ok(None));
        assert_eq!(
            parse_fact(&format!(r#"{{"fact": "{}"}}"#, "x".repeat(301))),
            Ok(None)
        );
        assert!(parse_fact("The user's name is Anna.").is_err());
        assert!(parse_fact(r#"{"fact": 42}"#).is_err());
        assert!(parse_fact("").is_err());
    }
}
