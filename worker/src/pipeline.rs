//! The voice pipeline: STT → memory recall → LLM → TTS, one checkpoint per stage.
//!
//! Each stage stores its output in the job row before the next begins, so a
//! job that is run again (a retry, a redelivery after a worker died) starts at
//! its first unfinished stage: no provider is paid twice for the same stage
//! and no turn is stored twice.
//!
//! Every provider call goes through [`Resilience::call`] (breaker, shared
//! rate limit, in-call retries). What is left is decided here, per job:
//! - a provider that stays unavailable: the job is put back on the queue
//!   after a fully jittered, exponential backoff (never sooner than the
//!   provider asked), up to `ROSE_JOB_MAX_ATTEMPTS` attempts, then it fails
//!   with `provider_unavailable` and goes to the dead letters;
//! - an open STT or LLM breaker: the job is deferred until the next trial
//!   without spending an attempt, until its deadline (`ROSE_JOB_DEADLINE_SECS`
//!   after creation), then `provider_unavailable`;
//! - a failure that will not pass (bad audio, a refused request): the job
//!   fails at once with a stable code;
//! - speech failing: the text reply is delivered, `degraded: ["tts"]`;
//! - memory failing (or its breaker open, or slower than 5 s): the reply is
//!   written without recalled memories, `degraded: ["memory"]`;
//! - a silent turn (nothing but filler or noise was heard): a short gentle
//!   prompt is the reply, without a model call, memory or history;
//! - a storage failure: handed back to the queue, which retries the message.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rose_shared::Rose;
use rose_shared::audio::sniff;
use rose_shared::domain::{
    AudioId, Job, JobError, JobId, JobStatus, MemoryTask, Session, Stage, SummaryTask, VoiceTask,
    now_ms,
};
use rose_shared::events::JobWatch;
use rose_shared::memory::owner_of;
use rose_shared::metrics;
use rose_shared::providers::{ChatRequest, ErrorKind, ProviderError};
use rose_shared::queue::{MEMORY_QUEUE, QueueError, SUMMARY_QUEUE, VOICE_QUEUE};
use rose_shared::resilience::{Provider, jittered};
use rose_shared::store::{AudioLookup, NewAudio, Store, StoreError, StoreResult};
use tracing::{Instrument, info_span};

use crate::background::SUMMARIZE_AFTER;
use crate::failure::StageError;
pub use crate::silence::is_silent;
use crate::silence::silent_reply;
use crate::speaking::Source;

/// The longest the memory stage may take before the reply goes on without it.
const MEMORY_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a running job re-reads its row for a cancel it may not have
/// heard (a notification lost with a Redis connection); a heard cancel
/// stops it at once.
const CANCEL_RECHECK: Duration = Duration::from_secs(2);

/// How a job run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Succeeded or failed for good; nothing more to do.
    Finished,
    /// Put back on the queue for a later attempt.
    Rescheduled,
    /// Attempts or time ran out: failed, and its message belongs in the dead letters.
    GaveUp(String),
}

/// A failure the queue should retry (the job row could not be read or written,
/// or the job could not be put back on the queue).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The upload for speech-to-text, held for the first attempt only: the
/// request body owns it and drops it once sent, so jobs waiting for their
/// transcription do not each hold their upload. A retry reads it again; if that
/// read fails, the attempt ends with a permanent error and `lost` says why.
struct Upload<'a> {
    store: &'a dyn Store,
    id: AudioId,
    first: Mutex<Option<Bytes>>,
    lost: Mutex<Option<StageError>>,
}

impl Upload<'_> {
    async fn take(&self) -> Result<Bytes, ProviderError> {
        if let Some(bytes) = self.first.lock().ok().and_then(|mut f| f.take()) {
            return Ok(bytes);
        }
        let lost = match self.store.get_audio(self.id).await {
            Ok(AudioLookup::Found(audio)) => return Ok(Bytes::from(audio.bytes)),
            Ok(AudioLookup::Expired | AudioLookup::Missing) => StageError::AudioGone,
            Err(e) => StageError::Store(e),
        };
        let message = lost.to_string();
        if let Ok(mut slot) = self.lost.lock() {
            *slot = Some(lost);
        }
        Err(ProviderError::permanent("rose", None, message))
    }
}

/// How long a write of work a provider was paid for waits for the database
/// to come back before the attempt gives up (and the job's retry pays that
/// stage again).
pub(crate) const CHECKPOINT_PATIENCE: Duration = Duration::from_secs(30);

/// Runs `write` until it succeeds or fails for another reason than a
/// database out of reach or a full disk: those are tried again every
/// 0.5–1 s for up to [`CHECKPOINT_PATIENCE`], so a short outage costs the
/// job a wait, not a second payment for what it is storing. A cancelled job
/// drops the wait with the rest of its work.
pub(crate) async fn patiently<T, F>(write: impl Fn() -> F) -> StoreResult<T>
where
    F: std::future::Future<Output = StoreResult<T>>,
{
    let started = Instant::now();
    let mut warned = false;
    loop {
        match write().await {
            Err(e)
                if (e.is_unavailable() || e.is_full())
                    && started.elapsed() < CHECKPOINT_PATIENCE =>
            {
                if !warned {
                    tracing::warn!(error = %e, "paid-for work could not be stored; trying again while the database is away");
                    warned = true;
                }
                let wait = Duration::from_millis(rand::random_range(500..1_000));
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// Runs voice jobs.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub(crate) rose: Rose,
}

impl Pipeline {
    /// A pipeline on `rose`'s store, queue, providers and resilience settings.
    #[must_use]
    pub fn new(rose: Rose) -> Self {
        Self { rose }
    }

    /// Runs one delivery of a job.
    ///
    /// # Errors
    /// [`PipelineError`] when the job row or the queue cannot be written; the
    /// queue then retries the message.
    pub async fn process(&self, task: &VoiceTask) -> Result<Outcome, PipelineError> {
        let span = info_span!(
            "job",
            job_id = %task.job_id,
            request_id = task.request_id.as_deref().unwrap_or_default()
        );
        self.process_job(task).instrument(span).await
    }

    async fn process_job(&self, task: &VoiceTask) -> Result<Outcome, PipelineError> {
        let id = task.job_id;
        let store = &self.rose.store;
        // Listening before the row is read: a cancel from here on is heard.
        let mut watch = self.rose.events.watch(id);
        let Some(job) = store.begin_attempt(id).await? else {
            crate::orphan_message(VOICE_QUEUE, &id.to_string());
            return Ok(Outcome::Finished);
        };
        if job.status.is_terminal() {
            return Ok(Outcome::Finished);
        }
        if job.attempts == 1
            && let Some(wait) = job.timings.queue_wait
        {
            metrics::queue_wait(VOICE_QUEUE, ms(wait));
        }
        self.rose.events.publish_progress(id).await;
        let run = tokio::select! {
            // Dropping the run drops its provider requests in flight.
            () = self.cancelled(id, &mut watch) => {
                self.stopped(id).await;
                return Ok(Outcome::Finished);
            }
            run = self.run_stages(job.clone()) => run,
        };
        let failure = match run {
            Ok(()) => {
                metrics::job_succeeded(VOICE_QUEUE, ms(now_ms() - job.created_at));
                self.rose.events.publish(id).await;
                self.queue_callback(&job).await;
                return Ok(Outcome::Finished);
            }
            Err(StageError::Store(e)) => return Err(e.into()),
            Err(StageError::Moved) => {
                tracing::info!(job_id = %id, "job ended elsewhere; this delivery stops");
                return Ok(Outcome::Finished);
            }
            Err(failure) => self.as_deferral(failure).await,
        };
        let config = &self.rose.config;
        let deadline =
            job.created_at + i64::try_from(config.job_deadline.as_millis()).unwrap_or(i64::MAX / 2);
        let later = match &failure {
            StageError::Open { retry_in, .. } => {
                // Spread the wake-ups of jobs deferred together.
                let wait = *retry_in + jittered(Duration::from_millis(500), None);
                Some((wait, true))
            }
            StageError::Provider { error, .. }
                if error.is_retryable()
                    && job.counted_attempts() < i64::from(config.job_max_attempts) =>
            {
                let wait = job_backoff(
                    config.job_retry_base,
                    config.job_retry_cap,
                    job.counted_attempts(),
                    error.retry_after,
                );
                Some((wait, false))
            }
            _ => None,
        };
        let give_up = matches!(&failure, StageError::Open { .. })
            || matches!(&failure, StageError::Provider { error, .. } if error.is_retryable());
        match later {
            Some((wait, deferred)) if now_ms() + wait.as_millis() as i64 <= deadline => {
                store.reschedule_job(id, deferred).await?;
                metrics::job_retried(VOICE_QUEUE, deferred);
                self.rose
                    .queue
                    .push_delayed(VOICE_QUEUE, &id.to_string(), task, wait)
                    .await?;
                self.rose.events.publish(id).await;
                tracing::warn!(
                    job_id = %id,
                    attempt = job.attempts,
                    wait_ms = wait.as_millis() as u64,
                    breaker_open = deferred,
                    error = %failure,
                    "job rescheduled"
                );
                Ok(Outcome::Rescheduled)
            }
            _ => {
                let error = failure.job_error();
                tracing::warn!(job_id = %id, code = %error.code, error = %failure, "job failed");
                store.fail_job(id, &error).await?;
                metrics::job_failed(VOICE_QUEUE, &error.code, ms(now_ms() - job.created_at));
                self.rose.events.publish(id).await;
                self.queue_callback(&job).await;
                Ok(if give_up {
                    Outcome::GaveUp(error.message)
                } else {
                    Outcome::Finished
                })
            }
        }
    }

    /// Fails a job whose run panicked with `internal_error` (unless it already
    /// ended): a panic is a defect, not a passing fault, and running the job
    /// again could pay a provider twice for the stage that panicked. The
    /// person is told at once instead of after every retry.
    ///
    /// # Errors
    /// When the row cannot be read or written.
    pub async fn fail_internal(&self, id: JobId) -> Result<(), PipelineError> {
        let Some(job) = self.rose.store.get_job(id).await? else {
            return Ok(());
        };
        if job.status.is_terminal() {
            return Ok(());
        }
        let error = JobError {
            code: "internal_error".to_owned(),
            message: "Rose met an internal error while answering".to_owned(),
        };
        self.rose.store.fail_job(id, &error).await?;
        metrics::job_failed(VOICE_QUEUE, &error.code, ms(now_ms() - job.created_at));
        self.rose.events.publish(id).await;
        self.queue_callback(&job).await;
        Ok(())
    }

    /// Resolves once job `id` is cancelled: at its cancel notification, or
    /// when a re-read of the row (on missed notifications, and every
    /// [`CANCEL_RECHECK`]) finds it cancelled or gone.
    async fn cancelled(&self, id: JobId, watch: &mut JobWatch) {
        loop {
            tokio::select! {
                heard = watch.cancelled() => if heard { return },
                () = tokio::time::sleep(CANCEL_RECHECK) => {}
            }
            match self.rose.store.get_job(id).await {
                Ok(Some(job)) if job.status != JobStatus::Cancelled => {}
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(job_id = %id, error = %e, "cannot re-read the job for a cancel");
                }
            }
        }
    }

    /// A cancelled job's work was dropped (its provider requests in flight
    /// with it): how long after the cancel, for `rose_cancel_stop_seconds`.
    async fn stopped(&self, id: JobId) {
        let cancelled_at = match self.rose.store.get_job(id).await {
            Ok(Some(job)) => job.updated_at,
            _ => now_ms(),
        };
        let stop_ms = (now_ms() - cancelled_at).max(0);
        metrics::cancel_stop(ms(stop_ms));
        tracing::info!(job_id = %id, stop_ms, "job cancelled; stopped");
    }

    /// A transient failure that opened its provider's breaker, or failed the
    /// half-open trial, is part of an outage: the job waits it out like any
    /// job that meets the open breaker, without spending an attempt.
    async fn as_deferral(&self, failure: StageError) -> StageError {
        let StageError::Provider { stage, error } = &failure else {
            return failure;
        };
        let provider = match stage {
            Stage::Stt => Provider::Stt,
            Stage::Llm => Provider::Llm,
            _ => return failure,
        };
        if !error.is_retryable() {
            return failure;
        }
        match self.rose.resilience.breakers.open_for(provider).await {
            Some(retry_in) => StageError::Open {
                stage: *stage,
                retry_in,
            },
            None => failure,
        }
    }

    async fn run_stages(&self, mut job: Job) -> Result<(), StageError> {
        // `job.stage` follows the row: `begin_attempt` and each checkpoint
        // show the next stage, so entering it usually costs no write.
        if job.transcript.is_none() {
            self.transcribe(&mut job).await?;
        }
        let transcript = job.transcript.clone().unwrap_or_default();
        crate::safety::mark(&self.rose, &mut job, &transcript).await?;
        let streaming = self.rose.config.streaming
            && self.rose.providers.tts.is_some()
            && job.reply_audio_id.is_none();
        // What went without, as the row says so far: a memory failure is
        // saved with the reply, so a redelivery after that checkpoint
        // still reports it.
        let reply = match job.reply_text.clone() {
            Some(reply) => reply,
            None if is_silent(&transcript) => {
                let reply = silent_reply(&job);
                job.reply_text = Some(reply.to_owned());
                let store = &self.rose.store;
                self.checkpoint(&mut job, async |job, next| {
                    patiently(|| store.save_silent_reply(job.id, reply, next)).await
                })
                .await?;
                tracing::info!(job_id = %job.id, "silent turn; answered without the model");
                reply.to_owned()
            }
            None => {
                let session = self
                    .rose
                    .store
                    .get_session(job.session_id)
                    .await?
                    .ok_or(StageError::SessionGone)?;
                let memories = match job.memories.clone() {
                    Some(memories) => memories,
                    None => match self.recall(&mut job, &session, &transcript).await? {
                        Some(memories) => memories,
                        None => {
                            mark_degraded(&mut job, "memory");
                            Vec::new()
                        }
                    },
                };
                if streaming {
                    self.enter(&mut job, Stage::Llm).await?;
                    let (request, earlier) = self.reply_request(&job, &session, &memories).await?;
                    let source = Source::Model {
                        request,
                        session: &session,
                        earlier,
                    };
                    self.speak_streamed(&mut job, source).await?;
                    return self.complete(&job).await;
                }
                self.reply(&mut job, &session, &memories).await?
            }
        };
        if streaming {
            self.speak_streamed(&mut job, Source::Known(&reply)).await?;
        } else if job.reply_audio_id.is_none()
            && let Some(tts) = &self.rose.providers.tts
        {
            self.enter(&mut job, Stage::Tts).await?;
            let started = Instant::now();
            let spoken = self
                .rose
                .resilience
                .call(Provider::Tts, || {
                    tts.speak(crate::safety::spoken(&reply, &job))
                })
                .await;
            match spoken {
                Ok(speech) => {
                    let ms = elapsed_ms(started);
                    let audio = NewAudio {
                        bytes: speech.bytes,
                        mime: speech.mime,
                    };
                    let store = &self.rose.store;
                    patiently(|| store.save_speech(&job, audio.clone(), ms)).await?;
                    metrics::stage("tts", started.elapsed());
                    metrics::first_audio(self::ms(now_ms() - job.created_at));
                    tracing::info!(event = "job_stage", job_id = %job.id, stage = "tts", tts_duration_ms = ms, "job_stage");
                }
                Err(e) => {
                    tracing::warn!(job_id = %job.id, error = %e, "speech failed; delivering the text reply");
                    mark_degraded(&mut job, "tts");
                }
            }
        }
        self.complete(&job).await
    }

    /// Marks the job succeeded; [`StageError::Moved`] when it had ended
    /// meanwhile (cancelled while its last write was on the way).
    async fn complete(&self, job: &Job) -> Result<(), StageError> {
        if !self.rose.store.complete_job(job.id, &job.degraded).await? {
            return Err(StageError::Moved);
        }
        tracing::info!(job_id = %job.id, "job succeeded");
        Ok(())
    }

    /// Queues the delivery of a finished job to its `callback_url` (once).
    async fn queue_callback(&self, job: &Job) {
        self.rose.queue_callback(job).await;
    }

    /// Shows `stage` on the row (unless it already does) and tells the
    /// job's followers.
    pub(crate) async fn enter(&self, job: &mut Job, stage: Stage) -> Result<(), StageError> {
        if job.stage != Some(stage) {
            self.rose.store.set_stage(job.id, stage).await?;
            job.stage = Some(stage);
        }
        self.rose.events.publish_progress(job.id).await;
        Ok(())
    }

    /// The stage `job` goes to next, as its checkpoints so far tell (the
    /// order of [`Self::run_stages`]); `None` when none is left.
    fn upcoming(&self, job: &Job) -> Option<Stage> {
        let Some(transcript) = job.transcript.as_deref() else {
            return Some(Stage::Stt);
        };
        if job.reply_text.is_none() && !is_silent(transcript) {
            return Some(if job.memories.is_none() {
                Stage::Memory
            } else {
                Stage::Llm
            });
        }
        (job.reply_audio_id.is_none() && self.rose.providers.tts.is_some()).then_some(Stage::Tts)
    }

    /// Stores a stage's output (already set on `job`) with `save`, which shows
    /// the stage that comes next in the same write; `job.stage` follows.
    pub(crate) async fn checkpoint(
        &self,
        job: &mut Job,
        save: impl AsyncFnOnce(&Job, Option<Stage>) -> StoreResult<()>,
    ) -> Result<(), StageError> {
        let next = self.upcoming(job);
        save(job, next).await?;
        job.stage = next.or(job.stage);
        Ok(())
    }

    /// The STT stage: sets `job.transcript`.
    async fn transcribe(&self, job: &mut Job) -> Result<(), StageError> {
        self.enter(job, Stage::Stt).await?;
        // A typed job has its transcript from the start and never gets here.
        let Some(audio_id) = job.input_audio_id else {
            return Err(StageError::AudioGone);
        };
        let audio = match self.rose.store.get_audio(audio_id).await? {
            AudioLookup::Found(audio) => audio,
            AudioLookup::Expired | AudioLookup::Missing => return Err(StageError::AudioGone),
        };
        let Some(format) = sniff(&audio.bytes) else {
            let error = ProviderError {
                kind: ErrorKind::InvalidAudio,
                ..ProviderError::permanent("rose", None, "stored audio is not a known container")
            };
            return Err(StageError::Provider {
                stage: Stage::Stt,
                error,
            });
        };
        let upload = Upload {
            store: self.rose.store.as_ref(),
            id: audio_id,
            first: Mutex::new(Some(Bytes::from(audio.bytes))),
            lost: Mutex::new(None),
        };
        let started = Instant::now();
        let stt = &self.rose.providers.stt;
        let text = self
            .rose
            .resilience
            .call(Provider::Stt, || async {
                stt.transcribe(upload.take().await?, format).await
            })
            .await;
        if let Some(lost) = upload.lost.lock().ok().and_then(|mut l| l.take()) {
            return Err(lost);
        }
        let text = text.map_err(StageError::from_call(Stage::Stt))?;
        let ms = elapsed_ms(started);
        metrics::stage("stt", started.elapsed());
        tracing::info!(event = "job_stage", job_id = %job.id, stage = "stt", groq_duration_ms = ms, "job_stage");
        let text = text.trim().to_owned();
        job.transcript = Some(text.clone());
        let store = &self.rose.store;
        self.checkpoint(job, async |job, next| {
            patiently(|| store.save_transcript(job.id, &text, ms, next)).await
        })
        .await
    }

    /// The memory stage: what the session's owner shared before that bears on
    /// `transcript`. `None` when memory failed (the reply goes on without it).
    async fn recall(
        &self,
        job: &mut Job,
        session: &Session,
        transcript: &str,
    ) -> Result<Option<Vec<String>>, StageError> {
        self.enter(job, Stage::Memory).await?;
        let breakers = &self.rose.resilience.breakers;
        if breakers.allow(Provider::Memory).await.is_err() {
            tracing::warn!(job_id = %job.id, "memory breaker open; replying without memories");
            return Ok(None);
        }
        let started = Instant::now();
        let owner = owner_of(session);
        let top_k = self.rose.config.memory_top_k;
        let found = tokio::time::timeout(
            MEMORY_TIMEOUT,
            self.rose.memory.recall(&owner, transcript, top_k),
        )
        .await;
        let ms = elapsed_ms(started);
        metrics::stage("memory", started.elapsed());
        match found {
            Ok(Ok(found)) => {
                breakers.record(Provider::Memory, true).await;
                let facts: Vec<String> = found.into_iter().map(|m| m.text).collect();
                job.memories = Some(facts.clone());
                let store = &self.rose.store;
                self.checkpoint(job, async |job, next| {
                    patiently(|| store.save_memories(job.id, &facts, ms, next)).await
                })
                .await?;
                tracing::info!(event = "job_stage", job_id = %job.id, stage = "memory", recalled = facts.len(), qdrant_duration_ms = ms, "job_stage");
                Ok(Some(facts))
            }
            Ok(Err(e)) => {
                breakers.record(Provider::Memory, false).await;
                tracing::warn!(job_id = %job.id, error = %e, qdrant_duration_ms = ms, "memory recall failed; replying without memories");
                Ok(None)
            }
            Err(_) => {
                breakers.record(Provider::Memory, false).await;
                tracing::warn!(job_id = %job.id, qdrant_duration_ms = ms, "memory recall timed out; replying without memories");
                Ok(None)
            }
        }
    }

    /// The reply model's request for `job`, with how many earlier turns
    /// its prompt holds.
    async fn reply_request(
        &self,
        job: &Job,
        session: &Session,
        memories: &[String],
    ) -> Result<(ChatRequest, usize), StageError> {
        let (mut messages, earlier) = self.prompt(job, session, memories).await?;
        crate::safety::guide(&mut messages, job);
        let request = ChatRequest {
            model: self.rose.config.llm_model.clone(),
            messages,
            temperature: 0.7,
            max_tokens: 200,
            json: false,
        };
        Ok((request, earlier))
    }

    async fn reply(
        &self,
        job: &mut Job,
        session: &Session,
        memories: &[String],
    ) -> Result<String, StageError> {
        self.enter(job, Stage::Llm).await?;
        let (request, earlier) = self.reply_request(job, session, memories).await?;
        let started = Instant::now();
        let llm = &self.rose.providers.llm;
        let reply = self
            .rose
            .resilience
            .call(Provider::Llm, || llm.complete(request.clone()))
            .await
            .map_err(StageError::from_call(Stage::Llm))?;
        let ms = elapsed_ms(started);
        metrics::stage("llm", started.elapsed());
        tracing::info!(event = "job_stage", job_id = %job.id, stage = "llm", groq_duration_ms = ms, "job_stage");
        let reply = crate::safety::finish(reply, job);
        job.reply_text = Some(reply.clone());
        let store = &self.rose.store;
        self.checkpoint(job, async |job, next| {
            patiently(|| store.save_reply(job, &reply, ms, next)).await
        })
        .await?;
        self.queue_background(job, session, earlier).await;
        Ok(reply)
    }

    /// Queues what follows a stored turn off the reply's path: memory
    /// extraction always, the rolling summary once the session has more than
    /// [`SUMMARIZE_AFTER`] unsummarized turns. Losing these is not worth
    /// failing a reply for: a failure is logged. `earlier`: the unsummarized
    /// turns the prompt held; when that was all of them (fewer than the
    /// history limit) the count needs no query.
    pub(crate) async fn queue_background(&self, job: &Job, session: &Session, earlier: usize) {
        let queue = &self.rose.queue;
        let extract = MemoryTask {
            job_id: job.id,
            attempt: 0,
        };
        if let Err(e) = queue
            .push(MEMORY_QUEUE, &job.id.to_string(), &extract)
            .await
        {
            tracing::warn!(job_id = %job.id, error = %e, "could not queue memory extraction");
        }
        let counted = if earlier < self.rose.config.history_turns {
            // This job's own two turns came after the prompt was read.
            Ok(i64::try_from(earlier).unwrap_or(i64::MAX).saturating_add(2))
        } else {
            self.rose
                .store
                .count_turns_since(session.id, session.summarized_until)
                .await
        };
        let unsummarized = match counted {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "could not count the session's turns");
                return;
            }
        };
        if unsummarized > SUMMARIZE_AFTER {
            let summary = SummaryTask {
                session_id: session.id,
                attempt: 0,
                close: false,
            };
            if let Err(e) = queue
                .push(SUMMARY_QUEUE, &session.id.to_string(), &summary)
                .await
            {
                tracing::warn!(session_id = %session.id, error = %e, "could not queue the session summary");
            }
        }
    }
}

/// Records that `job` went without `what` (`memory`, `tts`), once.
pub(crate) fn mark_degraded(job: &mut Job, what: &str) {
    if !job.degraded.iter().any(|d| d == what) {
        job.degraded.push(what.to_owned());
    }
}

/// The wait before a job's next attempt after `attempts` counted ones: full
/// jitter over `min(cap, base · 2^(attempts-1))`, never below the provider's
/// hint (itself capped at 10 minutes).
#[must_use]
pub fn job_backoff(
    base: Duration,
    cap: Duration,
    attempts: i64,
    hint: Option<Duration>,
) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let step = base.saturating_mul(2u32.saturating_pow(exp)).min(cap);
    jittered(step, hint.map(|h| h.min(Duration::from_secs(600))))
}

/// Milliseconds as a duration (negative clamps to zero).
fn ms(millis: i64) -> Duration {
    Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

pub(crate) fn elapsed_ms(started: Instant) -> i64 {
    i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_backoff_doubles_is_capped_and_honours_hints() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_millis(400);
        let mut highest = [Duration::ZERO; 5];
        for _ in 0..2000 {
            for (i, attempts) in (1..=5).enumerate() {
                let d = job_backoff(base, cap, attempts, None);
                let ceiling = (base * 2u32.pow(attempts as u32 - 1)).min(cap);
                assert!(d <= ceiling, "attempt {attempts}: {d:?} > {ceiling:?}");
                highest[i] = highest[i].max(d);
            }
        }
        // Full jitter reaches close to each ceiling: 100, 200, 400, 400, 400 ms.
        assert!(highest[0] > Duration::from_millis(90));
        assert!(highest[1] > Duration::from_millis(180));
        assert!(highest[4] > Duration::from_millis(360) && highest[4] <= cap);
        let hinted = job_backoff(base, cap, 1, Some(Duration::from_secs(7)));
        assert!(hinted >= Duration::from_secs(7));
        let huge = job_backoff(base, cap, 1, Some(Duration::from_secs(86_400)));
        assert_eq!(huge, Duration::from_secs(600), "a hint is capped");
    }
}
