//! Work kept off the reply's critical path: memory extraction (queue
//! `memory`) and the rolling summary (queue `summary`).
//!
//! Extraction shows the small model, in JSON mode, the person's profile and
//! what they just said, and takes back operations on the profile (`add`,
//! `update`, `remove` of its lines) and new episodic memories, validated
//! against that schema ([`parse_extraction`]); output outside it is logged
//! (by the rule it broke, never its text) and dropped. The profile stays
//! within 12 lines and 800 characters; a memory is kept for the session's
//! owner unless an existing memory scores ≥ 0.90 against it (then that one is
//! refreshed); nothing the person asked to forget is learnt again. The
//! summary folds all but a session's last 10 turns into its running summary
//! once more than 30 turns are unsummarized, so prompts stay bounded however
//! long a conversation runs; a closing summary (queued when the person starts
//! a new session) folds them all, for the next session's prompt. A provider
//! or store failure is returned for the queue to retry.
//! While the embedding model is unavailable an extraction is not attempted
//! (no model call is paid for a fact that could not be kept): the task waits
//! for the model, for a bounded time (see the worker's `MODEL_WAIT`).

use rose_shared::Rose;
use rose_shared::domain::{
    MemoryTask, PROFILE_FIELDS, PROFILE_MAX_CHARS, PROFILE_MAX_LINES, ProfileLine, Role,
    SummaryTask,
};
use rose_shared::memory::{Remembered, owner_of};
use rose_shared::providers::{ChatMessage, ChatRequest};
use rose_shared::queue::{MEMORY_QUEUE, SUMMARY_QUEUE};
use rose_shared::resilience::{CallError, Provider};
use rose_shared::store::person::fingerprint;
use serde::Deserialize;

use crate::silence::is_silent;

/// Turns kept verbatim after a summary.
pub const KEEP_RECENT: usize = 10;
/// Unsummarized turns that trigger a summary.
pub const SUMMARIZE_AFTER: i64 = 30;

const EXTRACT_PROMPT: &str = "\
You help a grief companion remember what matters to the person she talks with. You get the \
person's profile (numbered lines) and what they just said. Answer with one JSON object: \
{\"profile\": [operations], \"memories\": [sentences]}. The profile holds only lasting \
essentials, one short third-person line each: field \"name\" (their name), \"grieving\" (who \
they are grieving and how they were related), \"date\" (an important date), \"helps\" (what \
helps them), \"avoid\" (what to avoid), \"about\" (who they are). Operations: \
{\"op\": \"add\", \"field\": \"name\", \"text\": \"Their name is Anna.\"}, \
{\"op\": \"update\", \"line\": 2, \"text\": \"<the corrected line>\"}, \
{\"op\": \"remove\", \"line\": 3} (for a line that is no longer true). Everything else worth \
remembering in later conversations (a memory of the one they lost, a place, a story, a lasting \
feeling) goes into \"memories\" as short third-person sentences. With nothing to keep, answer \
{\"profile\": [], \"memories\": []}. Answer with the JSON object only.";

const SUMMARY_PROMPT: &str = "\
You keep the running summary of a conversation between a grieving person and Rose, their \
companion. Given the summary so far and the next part of the conversation, write the updated \
summary: who the person is, what they shared, how they feel, what helped. At most eight plain \
sentences, no lists.";

/// What the small model answers (see `EXTRACT_PROMPT`).
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Extraction {
    #[serde(default)]
    profile: Vec<ProfileOp>,
    #[serde(default)]
    memories: Vec<String>,
}

/// One change to the profile; `line` numbers the lines as the prompt
/// showed them, from 1.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum ProfileOp {
    Add { field: String, text: String },
    Update { line: usize, text: String },
    Remove { line: usize },
}

/// Longest profile line or memory, in characters.
const MAX_LINE_CHARS: usize = 200;
/// Most profile operations and memories one turn may bring.
const MAX_OPS: usize = 12;

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

/// Parses and validates the model's answer against `lines` (the profile
/// it was shown): every operation names a known field or an existing line,
/// every text is 1-200 characters once trimmed, at most 12 of each. One
/// violation refuses the whole answer (the model misread the task).
fn parse_extraction(content: &str, lines: usize) -> Result<Extraction, String> {
    let mut parsed: Extraction = serde_json::from_str(content.trim()).map_err(|e| e.to_string())?;
    if parsed.profile.len() > MAX_OPS || parsed.memories.len() > MAX_OPS {
        return Err("too many operations".to_owned());
    }
    let text_ok = |t: &str| {
        let n = t.trim().chars().count();
        (1..=MAX_LINE_CHARS).contains(&n)
    };
    for op in &mut parsed.profile {
        match op {
            ProfileOp::Add { field, text } => {
                if !PROFILE_FIELDS.contains(&field.as_str()) {
                    return Err(format!("unknown profile field {field:?}"));
                }
                if !text_ok(text) {
                    return Err("a profile line is empty or too long".to_owned());
                }
                *text = text.trim().to_owned();
            }
            ProfileOp::Update { line, text } => {
                if !(1..=lines).contains(line) {
                    return Err(format!("no profile line {line}"));
                }
                if !text_ok(text) {
                    return Err("a profile line is empty or too long".to_owned());
                }
                *text = text.trim().to_owned();
            }
            ProfileOp::Remove { line } => {
                if !(1..=lines).contains(line) {
                    return Err(format!("no profile line {line}"));
                }
            }
        }
    }
    for memory in &mut parsed.memories {
        if !text_ok(memory) {
            return Err("a memory is empty or too long".to_owned());
        }
        *memory = memory.trim().to_owned();
    }
    Ok(parsed)
}

/// What the extraction is shown: the profile as numbered lines, then what
/// the person said.
fn extraction_input(profile: &[ProfileLine], transcript: &str) -> String {
    let mut text = String::from("Profile:\n");
    if profile.is_empty() {
        text.push_str("(empty)\n");
    }
    for (i, line) in profile.iter().enumerate() {
        text.push_str(&format!("{}. [{}] {}\n", i + 1, line.field, line.text));
    }
    text.push_str("\nThe person just said:\n");
    text.push_str(transcript);
    text
}

/// Whether `lines` with `text` added (or one line replaced by it) stays
/// within the profile's bounds.
fn fits(lines: &[ProfileLine], replacing: Option<&str>, text: &str) -> bool {
    let count = lines.len() + usize::from(replacing.is_none());
    let chars: usize = lines
        .iter()
        .filter(|l| Some(l.id.as_str()) != replacing)
        .map(|l| l.text.chars().count())
        .sum::<usize>()
        + text.chars().count();
    count <= PROFILE_MAX_LINES && chars <= PROFILE_MAX_CHARS
}

/// Applies the profile operations for `owner`, learnt from `job`: a
/// forgotten text is not learnt again; `name` holds one line (a second
/// name replaces the first); a line already there is not added twice; an
/// addition past the bounds (12 lines, 800 characters) is dropped.
async fn apply_profile(
    rose: &Rose,
    owner: &str,
    job: &str,
    shown: &[ProfileLine],
    ops: Vec<ProfileOp>,
) -> Result<(), Retry> {
    let store = &rose.store;
    // Line numbers name the lines as shown, whatever the earlier ops did.
    let id_of = |line: usize| shown.get(line - 1).map(|l| l.id.clone());
    for op in ops {
        let lines = store.profile(owner).await.map_err(retry)?;
        match op {
            ProfileOp::Remove { line } => {
                if let Some(id) = id_of(line) {
                    store.delete_profile_line(owner, &id).await.map_err(retry)?;
                }
            }
            ProfileOp::Update { line, text } => {
                let Some(id) = id_of(line) else { continue };
                if store
                    .is_forgotten(owner, &text, Some(job))
                    .await
                    .map_err(retry)?
                    || !fits(&lines, Some(&id), &text)
                {
                    continue;
                }
                store
                    .update_profile_line(owner, &id, &text)
                    .await
                    .map_err(retry)?;
            }
            ProfileOp::Add { field, text } => {
                let same = fingerprint(&text);
                if lines.iter().any(|l| fingerprint(&l.text) == same)
                    || store
                        .is_forgotten(owner, &text, Some(job))
                        .await
                        .map_err(retry)?
                {
                    continue;
                }
                let named = (field == "name")
                    .then(|| lines.iter().find(|l| l.field == "name"))
                    .flatten();
                if let Some(old) = named {
                    if fits(&lines, Some(&old.id), &text) {
                        store
                            .update_profile_line(owner, &old.id, &text)
                            .await
                            .map_err(retry)?;
                    }
                } else if fits(&lines, None, &text) {
                    store
                        .add_profile_line(owner, &field, &text, Some(job))
                        .await
                        .map_err(retry)?;
                } else {
                    tracing::info!(job_id = %job, "profile full; a line was not added");
                }
            }
        }
    }
    Ok(())
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
    let owner = owner_of(&session);
    let job_id = job.id.to_string();
    let profile = rose.store.profile(&owner).await.map_err(retry)?;
    let request = ChatRequest {
        model: rose.config.llm_small_model.clone(),
        messages: vec![
            ChatMessage::new("system", EXTRACT_PROMPT),
            ChatMessage::new("user", extraction_input(&profile, &transcript)),
        ],
        temperature: 0.1,
        max_tokens: 400,
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
    let extraction = match parse_extraction(&content, profile.len()) {
        Ok(extraction) => extraction,
        Err(reason) => {
            // The reason names the rule broken, never the text.
            tracing::warn!(job_id = %job.id, %reason, "memory extraction answered outside the schema; dropped");
            return Ok(());
        }
    };
    let (ops, facts) = (extraction.profile.len(), extraction.memories.len());
    apply_profile(rose, &owner, &job_id, &profile, extraction.profile).await?;
    for fact in extraction.memories {
        if rose
            .store
            .is_forgotten(&owner, &fact, Some(&job_id))
            .await
            .map_err(retry)?
        {
            continue;
        }
        let outcome = rose
            .memory
            .remember(&owner, session.id, &fact, Some(job_id.clone()))
            .await
            .map_err(|e| Retry {
                waiting_for_model_since: e.is_model_unavailable().then_some(job.created_at),
                reason: e.to_string(),
            })?;
        match outcome {
            Remembered::Added(id) => {
                tracing::info!(job_id = %job.id, memory = %id, "memory added")
            }
            Remembered::Refreshed(id) => {
                tracing::info!(job_id = %job.id, memory = %id, "memory refreshed")
            }
        }
    }
    tracing::info!(job_id = %job.id, profile_ops = ops, memories = facts, "memory extraction done");
    // The session (or the person) may have been erased while the model was
    // thinking: what it owned must not outlive it.
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
        if rose
            .store
            .sessions_of(&owner, 1)
            .await
            .map_err(retry)?
            .is_empty()
        {
            rose.store.erase_owner(&owner).await.map_err(retry)?;
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
    // A closing summary folds every turn; a rolling one waits for more than
    // SUMMARIZE_AFTER and keeps the last KEEP_RECENT verbatim.
    let keep = if task.close { 0 } else { KEEP_RECENT };
    if turns.is_empty() || (!task.close && (turns.len() as i64) <= SUMMARIZE_AFTER) {
        return Ok(());
    }
    // Turns stored in the same millisecond as the boundary are folded with
    // it: the summary's mark is a timestamp, so splitting them would drop one.
    let mut cut = turns.len() - keep;
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
    fn extractions_are_validated_against_the_schema() {
        let ok = parse_extraction(
            r#"{"profile": [{"op": "add", "field": "name", "text": " Their name is Anna. "},
                            {"op": "update", "line": 1, "text": "Their mother died last spring."},
                            {"op": "remove", "line": 2}],
                "memories": ["Their mother loved roses."]}"#,
            2,
        )
        .expect("valid");
        assert_eq!(
            ok.profile[0],
            ProfileOp::Add {
                field: "name".to_owned(),
                text: "Their name is Anna.".to_owned()
            }
        );
        assert_eq!(ok.memories, vec!["Their mother loved roses.".to_owned()]);
        assert_eq!(
            parse_extraction(r#"{"profile": [], "memories": []}"#, 0),
            Ok(Extraction {
                profile: vec![],
                memories: vec![]
            })
        );
        assert!(
            parse_extraction("{}", 0).is_ok(),
            "both lists may be left out"
        );
        let long = "x".repeat(201);
        for bad in [
            "Their name is Anna.".to_owned(),
            String::new(),
            r#"{"fact": "The user's name is Anna."}"#.to_owned(),
            r#"{"profile": [{"op": "add", "field": "shoe size", "text": "42"}]}"#.to_owned(),
            r#"{"profile": [{"op": "add", "field": "name", "text": "  "}]}"#.to_owned(),
            r#"{"profile": [{"op": "update", "line": 3, "text": "x"}]}"#.to_owned(),
            r#"{"profile": [{"op": "remove", "line": 0}]}"#.to_owned(),
            r#"{"profile": [{"op": "rename", "line": 1}]}"#.to_owned(),
            r#"{"memories": [42]}"#.to_owned(),
            format!(r#"{{"memories": ["{long}"]}}"#),
            format!(r#"{{"memories": [{}]}}"#, vec![r#""a""#; 13].join(",")),
        ] {
            assert!(parse_extraction(&bad, 2).is_err(), "{bad}");
        }
    }

    fn line(id: &str, text: &str) -> ProfileLine {
        ProfileLine {
            id: id.to_owned(),
            field: "about".to_owned(),
            text: text.to_owned(),
            source_job: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn the_profile_stays_within_its_bounds() {
        let full: Vec<ProfileLine> = (0..12).map(|i| line(&i.to_string(), "short")).collect();
        assert!(!fits(&full, None, "one more"));
        assert!(fits(&full, Some("3"), "a replacement"));
        let long: Vec<ProfileLine> = (0..4)
            .map(|i| line(&i.to_string(), &"x".repeat(200)))
            .collect();
        assert!(!fits(&long, None, "y"), "801 characters");
        assert!(fits(&long, Some("0"), &"y".repeat(200)));
        let shown = extraction_input(&full[..2], "hello");
        assert!(shown.starts_with("Profile:\n1. [about] short\n2. [about] short\n"));
        assert!(shown.ends_with("The person just said:\nhello"));
    }
}
