//! Speaking a reply sentence by sentence (`ROSE_STREAMING`, on by default).
//!
//! The reply model's answer is read as it is written (`stream: true`) and
//! cut into sentences ([`rose_shared::sentences`]); each sentence goes to
//! speech the moment it is complete, while the model writes on. Sentences
//! are synthesised side by side, as many as the shared speech budget lets
//! through (a reply's first sentence ahead of other replies' later ones,
//! `ROSE_TTS_ORDER`), and announced strictly in order as chunks of the job
//! (`result.chunks`, the `audio` event) as soon as their speech starts:
//! the chunk's `audio_url` streams the speech as it arrives, through the
//! relay, and its stored audio once whole (see [`crate::voicing`]). When the
//! reply has been spoken, the chunks' audio is joined into one file
//! (`result.audio_url`) for clients that want the whole reply.
//!
//! Resuming: a delivery that finds chunks stored speaks only what follows
//! them (and, into its announced id, a sentence whose speech a dead worker
//! had started but not stored). When the reply was stored whole, that is the rest of its
//! sentences; when the model had not finished, the model is asked to go on
//! from the spoken part, sent as the start of its own answer (an assistant
//! prefix), so nothing heard is said twice or contradicted. The same
//! continuation mends a reply stream that breaks (ends without `[DONE]`,
//! sends a malformed chunk, or stays silent past the provider timeout):
//! the model goes on from the last complete sentence, up to
//! `ROSE_PROVIDER_TRIES` streams in all; after that the stage fails like any
//! provider failure, and the job's next attempt resumes after its chunks.
//!
//! A sentence that speech refuses or fails is delivered as text (its
//! chunk has no audio, the job is `degraded: ["tts"]`) and the rest is still
//! spoken: never silence. Timings follow the turn's critical path:
//! `first_token` and `first_audio` from the job's creation, `llm` the
//! model's writing, `tts` the speech that trails it.

use std::collections::HashMap;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rose_shared::audio::join::join;
use rose_shared::domain::{Job, Session, Stage, now_ms, spoken_text};
use rose_shared::metrics;
use rose_shared::providers::{ChatMessage, ChatRequest, ProviderError, Speech, SpeechContext};
use rose_shared::resilience::{Provider, jittered};
use rose_shared::sentences::Splitter;
use rose_shared::store::{AudioLookup, NewAudio};
use tokio::sync::mpsc;

use crate::failure::StageError;
use crate::pipeline::{Pipeline, elapsed_ms, mark_degraded, patiently};
use crate::voicing::Line;

/// Where the reply comes from.
pub(crate) enum Source<'a> {
    /// Known whole: stored by an earlier delivery, or a silent turn's prompt.
    Known(&'a str),
    /// The model writes it now; `earlier` is how many turns its prompt holds.
    Model {
        request: ChatRequest,
        session: &'a Session,
        earlier: usize,
    },
}

/// What the reply's writer tells its speaker.
enum Piece {
    /// The first token arrived, this many ms after the job's creation.
    FirstToken(i64),
    /// A complete sentence, with the one after it when already known.
    Sentence { text: String, next: Option<String> },
    /// The model finished: the whole reply (what an earlier delivery spoke
    /// included) and how long this delivery's writing took.
    Done { text: String, llm_ms: i64 },
}

/// How much of what was said before a sentence goes with it as context.
const CONTEXT_CHARS: usize = 300;

impl Pipeline {
    /// Speaks the reply from `source` sentence by sentence, storing and
    /// announcing each sentence as a chunk, then the whole file.
    pub(crate) async fn speak_streamed(
        &self,
        job: &mut Job,
        source: Source<'_>,
    ) -> Result<(), StageError> {
        let Some(tts) = self.rose.providers.tts.clone() else {
            return Ok(());
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut said = spoken_text(&job.chunks);
        let (writing, session) = match source {
            Source::Known(reply) => {
                self.enter(job, Stage::Tts).await?;
                let rest = crate::safety::remaining_sentences(reply, job);
                for (i, text) in rest.iter().enumerate() {
                    let next = rest.get(i + 1).cloned();
                    let _ = tx.send(Piece::Sentence {
                        text: text.clone(),
                        next,
                    });
                }
                drop(tx);
                (None, None)
            }
            Source::Model {
                request,
                session,
                earlier,
            } => (Some((request, tx)), Some((session, earlier))),
        };
        let created_at = job.created_at;
        let prefix = said.clone();
        let writer = async move {
            match writing {
                Some((request, tx)) => self.write_reply(request, prefix, created_at, tx).await,
                None => Ok(()),
            }
        };
        tokio::pin!(writer);
        let mut written = None;
        let (progress_tx, mut progress_rx) = mpsc::unbounded_channel();
        let mut synthesising = FuturesUnordered::new();
        let mut line = Line::new(u32::try_from(job.chunks.len()).unwrap_or(u32::MAX));
        // Sentences an earlier delivery announced but did not store the
        // audio of are spoken again, into the id they were announced with.
        let mut before = String::new();
        for chunk in job.chunks.clone() {
            if let Some(id) = chunk.audio_id
                && !self.rose.store.audio_exists(id).await?
            {
                let context = SpeechContext {
                    previous_text: tail(&before, CONTEXT_CHARS),
                    next_text: None,
                };
                line.add_announced(chunk.index, chunk.text.clone());
                synthesising.push(self.synthesise(
                    &*tts,
                    chunk.index,
                    chunk.text.clone(),
                    context,
                    Some(id),
                    progress_tx.clone(),
                ));
            }
            append(&mut before, &chunk.text);
        }
        let mut next_index = u32::try_from(job.chunks.len()).unwrap_or(u32::MAX);
        // The speech that trails the reply's writing is timed from its end
        // (or from now, when the reply is known).
        let mut clock = session.is_none().then(Instant::now);
        let mut listening = true;
        loop {
            if written.is_some() && !listening && synthesising.is_empty() {
                // Every sentence reported: take in what is left, and stop.
                while let Ok(progress) = progress_rx.try_recv() {
                    let tts_ms = clock.map_or(0, elapsed_ms);
                    self.advance(job, &mut line, progress, tts_ms).await?;
                }
                break;
            }
            tokio::select! {
                done = &mut writer, if written.is_none() => written = Some(done),
                piece = rx.recv(), if listening => match piece {
                    None => listening = false,
                    Some(Piece::FirstToken(ms)) => {
                        job.timings.first_token.get_or_insert(ms);
                    }
                    Some(Piece::Sentence { text, next }) => {
                        let context = SpeechContext {
                            previous_text: tail(&said, CONTEXT_CHARS),
                            next_text: next,
                        };
                        append(&mut said, &text);
                        line.add(next_index, text.clone());
                        synthesising.push(self.synthesise(&*tts, next_index, text, context, None, progress_tx.clone()));
                        next_index = next_index.saturating_add(1);
                    }
                    Some(Piece::Done { text, llm_ms }) => {
                        self.reply_written(job, text, llm_ms, session).await?;
                        clock = Some(Instant::now());
                        // On a marked turn the resource is said after the model's words.
                        for text in crate::safety::resource_sentences(job) {
                            let context = SpeechContext {
                                previous_text: tail(&said, CONTEXT_CHARS),
                                next_text: None,
                            };
                            append(&mut said, &text);
                            line.add(next_index, text.clone());
                            synthesising.push(self.synthesise(&*tts, next_index, text, context, None, progress_tx.clone()));
                            next_index = next_index.saturating_add(1);
                        }
                    }
                },
                Some(progress) = progress_rx.recv() => {
                    let tts_ms = clock.map_or(0, elapsed_ms);
                    self.advance(job, &mut line, progress, tts_ms).await?;
                }
                Some(()) = synthesising.next(), if !synthesising.is_empty() => {}
            }
        }
        // What was spoken stays spoken, whatever the model did after.
        written.unwrap_or(Ok(()))?;
        if job.chunks.iter().any(|c| c.audio_id.is_none()) {
            mark_degraded(job, "tts");
        }
        let tts_ms = clock.map_or(0, elapsed_ms);
        metrics::stage(
            "tts",
            std::time::Duration::from_millis(u64::try_from(tts_ms).unwrap_or(0)),
        );
        tracing::info!(event = "job_stage", job_id = %job.id, stage = "tts", sentences = job.chunks.len(), tts_duration_ms = tts_ms, "job_stage");
        self.join_speech(job, line.into_speech(), tts_ms).await
    }

    /// Reads the reply model's stream into sentences for the speaker,
    /// continuing from `said` (what was already spoken); see the module
    /// documentation for broken streams.
    async fn write_reply(
        &self,
        request: ChatRequest,
        mut said: String,
        created_at: i64,
        tx: mpsc::UnboundedSender<Piece>,
    ) -> Result<(), StageError> {
        let llm = self.rose.providers.llm.clone();
        let policy = self.rose.resilience.policy;
        let idle = self.rose.config.provider_timeout;
        let started = Instant::now();
        let mut first = true;
        let mut streams = 0usize;
        loop {
            streams += 1;
            let mut request = request.clone();
            if !said.is_empty() {
                request
                    .messages
                    .push(ChatMessage::new("assistant", said.clone()));
            }
            let mut stream = self
                .rose
                .resilience
                .call(Provider::Llm, || llm.stream(request.clone()))
                .await
                .map_err(StageError::from_call(Stage::Llm))?;
            let mut splitter = Splitter::new();
            let broken = loop {
                match tokio::time::timeout(idle, stream.next()).await {
                    Err(_) => {
                        break Some(ProviderError::transient(
                            "groq",
                            None,
                            "the reply stream stalled",
                        ));
                    }
                    Ok(None) => break None,
                    Ok(Some(Err(e))) => break Some(e),
                    Ok(Some(Ok(piece))) => {
                        if first {
                            first = false;
                            let _ = tx.send(Piece::FirstToken(now_ms() - created_at));
                        }
                        for text in splitter.push(&piece) {
                            append(&mut said, &text);
                            let _ = tx.send(Piece::Sentence { text, next: None });
                        }
                    }
                }
            };
            let Some(error) = broken else {
                if let Some(text) = splitter.finish() {
                    append(&mut said, &text);
                    let _ = tx.send(Piece::Sentence { text, next: None });
                }
                let _ = tx.send(Piece::Done {
                    text: said,
                    llm_ms: elapsed_ms(started),
                });
                return Ok(());
            };
            self.rose
                .resilience
                .breakers
                .record(Provider::Llm, false)
                .await;
            if !error.is_retryable() || streams >= policy.tries.max(1) {
                return Err(StageError::Provider {
                    stage: Stage::Llm,
                    error,
                });
            }
            let step = policy
                .base
                .saturating_mul(1u32 << streams.min(10))
                .min(policy.cap);
            let wait = jittered(step, None);
            metrics::provider_retry("llm");
            tracing::info!(provider = "llm", error = %error, wait_ms = wait.as_millis() as u64, "reply stream broke; continuing from its last sentence");
            tokio::time::sleep(wait).await;
        }
    }

    /// The model finished: the reply (with the resource on a marked turn)
    /// is checkpointed with the turns, and the background work queued.
    async fn reply_written(
        &self,
        job: &mut Job,
        text: String,
        llm_ms: i64,
        session: Option<(&Session, usize)>,
    ) -> Result<(), StageError> {
        metrics::stage(
            "llm",
            std::time::Duration::from_millis(u64::try_from(llm_ms).unwrap_or(0)),
        );
        tracing::info!(event = "job_stage", job_id = %job.id, stage = "llm", groq_duration_ms = llm_ms, "job_stage");
        let reply = crate::safety::finish(text, job);
        job.reply_text = Some(reply.clone());
        let store = &self.rose.store;
        self.checkpoint(job, async |job, next| {
            patiently(|| store.save_reply(job, &reply, llm_ms, next)).await
        })
        .await?;
        // Followers see the stage move on to the speech that trails the reply.
        self.rose.events.publish_progress(job.id).await;
        if let Some((session, earlier)) = session {
            self.queue_background(job, session, earlier).await;
        }
        Ok(())
    }

    /// Joins the chunks' audio into the reply's one file, when every
    /// sentence was spoken and the parts can be joined.
    async fn join_speech(
        &self,
        job: &mut Job,
        mut fresh: HashMap<u32, Speech>,
        tts_ms: i64,
    ) -> Result<(), StageError> {
        if job.reply_audio_id.is_some()
            || job.chunks.is_empty()
            || job.chunks.iter().any(|c| c.audio_id.is_none())
        {
            return Ok(());
        }
        let mut parts = Vec::with_capacity(job.chunks.len());
        for chunk in &job.chunks {
            if let Some(speech) = fresh.remove(&chunk.index) {
                parts.push((speech.mime, speech.bytes));
                continue;
            }
            let Some(id) = chunk.audio_id else {
                return Ok(());
            };
            match self.rose.store.get_audio(id).await? {
                AudioLookup::Found(audio) => parts.push((audio.mime, audio.bytes)),
                AudioLookup::Expired | AudioLookup::Missing => {
                    tracing::warn!(job_id = %job.id, "a spoken sentence is no longer stored; no whole-reply file");
                    return Ok(());
                }
            }
        }
        let mime = parts.first().map(|(m, _)| m.clone()).unwrap_or_default();
        let joined = parts
            .iter()
            .all(|(m, _)| *m == mime)
            .then(|| {
                let bytes: Vec<&[u8]> = parts.iter().map(|(_, b)| b.as_slice()).collect();
                join(&mime, &bytes)
            })
            .flatten();
        let Some(bytes) = joined else {
            tracing::warn!(job_id = %job.id, mime = %mime, "the spoken sentences cannot be joined into one file");
            return Ok(());
        };
        let id = self
            .rose
            .store
            .save_speech(job, NewAudio { bytes, mime }, tts_ms)
            .await?;
        job.reply_audio_id = Some(id);
        Ok(())
    }
}

/// Adds a sentence to what was said.
fn append(said: &mut String, sentence: &str) {
    if !said.is_empty() {
        said.push(' ');
    }
    said.push_str(sentence);
}

/// The last `max` characters of `text` (whole words), or `None` when empty.
fn tail(text: &str, max: usize) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    let count = text.chars().count();
    if count <= max {
        return Some(text.to_owned());
    }
    let start = text.char_indices().nth(count - max).map_or(0, |(b, _)| b);
    let cut = &text[start..];
    let cut = cut.split_once(' ').map_or(cut, |(_, rest)| rest);
    Some(cut.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_the_tail_in_whole_words() {
        assert_eq!(tail("", 10), None);
        assert_eq!(tail("I hear you.", 50).as_deref(), Some("I hear you."));
        assert_eq!(
            tail("One two three. Four five.", 12).as_deref(),
            Some("Four five.")
        );
        let mut said = String::new();
        append(&mut said, "First.");
        append(&mut said, "Second.");
        assert_eq!(said, "First. Second.");
    }
}
