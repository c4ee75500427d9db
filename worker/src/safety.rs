//! The pipeline's safety step, kept apart from the prompt so each can change
//! on its own: mark a crisis turn once its words are known, guide the reply
//! model, and make the stored reply carry the human resource.
//!
//! - [`mark`] runs the pattern set ([`rose_shared::safety::crisis_rule`]) on
//!   the transcript before the reply is written and keeps the mark on the
//!   row with the configured resource (`ROSE_CRISIS_RESOURCES`), so a retry or
//!   redelivery keeps both, and a job that then fails still says
//!   `safety: "crisis"`. A silent turn is never marked.
//! - [`guide`] adds the safety instruction to a marked turn's reply prompt,
//!   just before the person's words.
//! - [`finish`] appends the resource to the model's reply (once): the person
//!   meets it whatever the model said. The reply is checkpointed with it, so
//!   a redelivery never appends it twice.
//! - [`spoken`]: the speech says the resource's words but not its URL.
//!
//! Nothing of the turn is logged here: not its words, not the mark (the row
//! and the job JSON hold it; `rose_safety_marked_total` counts marks).

use rose_shared::Rose;
use rose_shared::domain::Job;
use rose_shared::metrics;
use rose_shared::providers::ChatMessage;
use rose_shared::safety::{self, Safety};
use rose_shared::store::StoreResult;

use crate::silence::is_silent;

/// The reply prompt's instruction on a marked turn. It does not hold the
/// resource's URL or number: Rose appends those herself, exactly as
/// configured, so the model neither has to remember nor can garble them.
pub const CRISIS_GUIDANCE: &str = "\
The person has just spoken of ending their life or harming themselves. Stay with them: answer \
with warmth and presence, in a few plain spoken sentences, as someone sitting beside them. Take \
what they said seriously and calmly; thank them for telling you; do not diagnose, lecture, argue, \
or promise secrecy. Gently encourage them to reach a person who can be with them now, and say \
that you are sharing a way to find one: the details follow your words, so do not give any \
number, name of a service or web address yourself. If they said they are safe, believe them \
and still leave the door open.";

/// Marks `job` a crisis turn when its words say so and nothing is replied
/// yet; `job.safety` follows the row (a job marked earlier keeps its mark
/// and resource).
///
/// # Errors
/// When the row cannot be written.
pub async fn mark(rose: &Rose, job: &mut Job, transcript: &str) -> StoreResult<()> {
    if job.safety.is_some()
        || job.reply_text.is_some()
        || is_silent(transcript)
        || !safety::is_crisis(transcript)
    {
        return Ok(());
    }
    let resource = rose.config.crisis_resource.clone();
    if rose.store.mark_crisis(job.id, &resource).await? {
        metrics::safety_marked();
        job.safety = Some(Safety::Crisis(resource));
    } else if let Some(row) = rose.store.get_job(job.id).await? {
        // Another delivery marked it first: its resource is the one.
        job.safety = row.safety;
    }
    Ok(())
}

/// Adds the safety instruction to a marked turn's reply prompt, just before
/// the person's words (its last message).
pub fn guide(messages: &mut Vec<ChatMessage>, job: &Job) {
    if job.safety.is_some() {
        let at = messages.len().saturating_sub(1);
        messages.insert(at, ChatMessage::new("system", CRISIS_GUIDANCE));
    }
}

/// The reply to store and deliver: on a marked turn, the model's words
/// followed by the resource.
#[must_use]
pub fn finish(reply: String, job: &Job) -> String {
    match &job.safety {
        Some(mark) => safety::with_resource(&reply, mark.resource()),
        None => reply,
    }
}

/// What is spoken of `reply`: on a marked turn, all of it but the URL.
#[must_use]
pub fn spoken<'a>(reply: &'a str, job: &Job) -> &'a str {
    match &job.safety {
        Some(mark) => safety::spoken(reply, mark.resource()),
        None => reply,
    }
}

/// The sentences of `reply` still to be spoken after `job`'s stored
/// chunks: what [`spoken`] says of it, cut as the streamed reply is, past
/// the place each chunk's words were found (in order; when they cannot be
/// found, the chunks' count of sentences is skipped).
#[must_use]
pub fn remaining_sentences(reply: &str, job: &Job) -> Vec<String> {
    let full = spoken(reply, job);
    let mut offset = 0;
    for chunk in &job.chunks {
        match full[offset..].find(chunk.text.as_str()) {
            Some(at) => offset += at + chunk.text.len(),
            None => {
                return rose_shared::sentences::split(full)
                    .into_iter()
                    .skip(job.chunks.len())
                    .collect();
            }
        }
    }
    rose_shared::sentences::split(&full[offset..])
}

/// On a marked turn, the sentences of the resource as spoken after the
/// model's words (its text, not its URL); empty otherwise.
#[must_use]
pub fn resource_sentences(job: &Job) -> Vec<String> {
    match &job.safety {
        Some(mark) => {
            let line = mark.resource().line();
            rose_shared::sentences::split(safety::spoken(&line, mark.resource()))
        }
        None => Vec::new(),
    }
}
