//! The reply prompt: who Rose is, what she knows of the person, what was
//! said before, and what was just said.

use rose_shared::domain::{Job, Session};
use rose_shared::memory::owner_of;
use rose_shared::providers::ChatMessage;

use crate::failure::StageError;
use crate::persona::PERSONA;
use crate::pipeline::Pipeline;

/// Earlier sessions looked at for the person's last conversation.
const LAST_TIME_SESSIONS: usize = 6;

impl Pipeline {
    /// The reply prompt: the persona, the person's profile (always), the
    /// summary of their previous session (until this one has its own),
    /// recalled memories as short facts, the session's running summary, the turns since that summary (at most
    /// `ROSE_HISTORY_TURNS`), and what was just said; with how many earlier
    /// turns it holds.
    pub(crate) async fn prompt(
        &self,
        job: &Job,
        session: &Session,
        memories: &[String],
    ) -> Result<(Vec<ChatMessage>, usize), StageError> {
        let history = self
            .rose
            .store
            .turns_since(
                session.id,
                session.summarized_until,
                self.rose.config.history_turns,
            )
            .await?;
        let earlier = history.len();
        let mut messages = Vec::with_capacity(earlier + 6);
        messages.push(ChatMessage::new("system", PERSONA));
        let owner = owner_of(session);
        let profile = self.rose.store.profile(&owner).await?;
        if !profile.is_empty() {
            let mut text = "What you know about this person (true across conversations; \
                let it shape how you speak, use their name now and then, never recite it):"
                .to_owned();
            for line in &profile {
                text.push_str("\n- ");
                text.push_str(&line.text);
            }
            messages.push(ChatMessage::new("system", text));
        }
        if let Some(last_time) = self.last_time(session, &owner).await? {
            messages.push(ChatMessage::new(
                "system",
                format!(
                    "Last time you spoke about this (the summary of your previous conversation; \
                     pick up the thread gently if it fits, without quoting it):\n{last_time}"
                ),
            ));
        }
        if !memories.is_empty() {
            let mut text = "What this person shared in earlier conversations \
                (weave it in gently, only where it fits; never recite it):"
                .to_owned();
            for fact in memories {
                text.push_str("\n- ");
                text.push_str(fact);
            }
            messages.push(ChatMessage::new("system", text));
        }
        if let Some(summary) = session.summary.as_deref().filter(|s| !s.trim().is_empty()) {
            messages.push(ChatMessage::new(
                "system",
                format!("Summary of this conversation so far:\n{summary}"),
            ));
        }
        messages.extend(
            history
                .into_iter()
                .map(|turn| ChatMessage::new(turn.role.as_str(), turn.text)),
        );
        messages.push(ChatMessage::new(
            "user",
            job.transcript.clone().unwrap_or_default(),
        ));
        Ok((messages, earlier))
    }

    /// The closing summary of the person's previous session, for a session
    /// that has not yet a summary of its own; `None` for anonymous sessions
    /// (no earlier session can be theirs) and first conversations.
    async fn last_time(
        &self,
        session: &Session,
        owner: &str,
    ) -> Result<Option<String>, StageError> {
        if session.user_id.is_none() || session.summary.is_some() {
            return Ok(None);
        }
        // The newest earlier session with a summary: sessions opened without
        // a word in between have none.
        Ok(self
            .rose
            .store
            .sessions_of(owner, LAST_TIME_SESSIONS)
            .await?
            .into_iter()
            .filter(|s| s.id != session.id && s.created_at <= session.created_at)
            .find_map(|s| s.summary.filter(|s| !s.trim().is_empty())))
    }
}
