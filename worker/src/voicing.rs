//! Each sentence of a streamed reply through speech: synthesised as soon as
//! it is complete (ranked in the shared speech budget), relayed to
//! listeners from its first bytes ([`rose_shared::relay`]), announced in
//! index order as a chunk of the job, stored when whole.
//!
//! A sentence is announced once its speech has started (its `audio_url`
//! streams from the relay until the audio is stored, then from the
//! database) or once speech failed for it (announced as text), and only
//! after every sentence before it was announced. Its audio is stored when
//! it is whole; speech that breaks after the announcement takes the audio
//! back (the chunk keeps its text) and the job is `degraded: ["tts"]`.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use futures::StreamExt;
use rose_shared::config::TtsOrder;
use rose_shared::domain::{AudioId, Job, ReplyChunk, now_ms};
use rose_shared::metrics;
use rose_shared::providers::{ProviderError, Speech, SpeechContext, TextToSpeech, body};
use rose_shared::resilience::Provider;
use rose_shared::store::NewAudio;
use tokio::sync::mpsc;

use crate::failure::StageError;
use crate::pipeline::{Pipeline, mark_degraded, patiently};

/// Bytes of speech looked at before it is relayed as audio.
const SNIFF_BYTES: usize = 16;

/// What a sentence's synthesis reports.
pub(crate) enum Progress {
    /// Its first bytes arrived: relayed under `audio_id` from now on.
    Started { index: u32, audio_id: AudioId },
    /// Its audio is whole.
    Spoken {
        index: u32,
        audio_id: AudioId,
        speech: Speech,
    },
    /// Speech failed for it, before or after its first bytes.
    Failed { index: u32, error: String },
}

enum State {
    Waiting,
    Started(AudioId),
    Spoken(AudioId, Speech),
    Failed,
}

struct Slot {
    text: String,
    state: State,
    announced: bool,
    /// Its audio is in the database.
    stored: bool,
}

/// The sentences of one reply on their way through speech.
pub(crate) struct Line {
    slots: BTreeMap<u32, Slot>,
    next_announce: u32,
}

impl Line {
    /// New sentences will be numbered from `first_index`.
    pub(crate) fn new(first_index: u32) -> Self {
        Self {
            slots: BTreeMap::new(),
            next_announce: first_index,
        }
    }

    /// A sentence about to be synthesised.
    pub(crate) fn add(&mut self, index: u32, text: String) {
        self.slots.insert(
            index,
            Slot {
                text,
                state: State::Waiting,
                announced: false,
                stored: false,
            },
        );
    }

    /// A sentence announced by an earlier delivery whose audio was never
    /// stored: spoken again into its announced id.
    pub(crate) fn add_announced(&mut self, index: u32, text: String) {
        self.slots.insert(
            index,
            Slot {
                text,
                state: State::Waiting,
                announced: true,
                stored: false,
            },
        );
    }

    /// The whole audio of each sentence spoken by this delivery.
    pub(crate) fn into_speech(self) -> HashMap<u32, Speech> {
        self.slots
            .into_iter()
            .filter_map(|(index, slot)| match slot.state {
                State::Spoken(_, speech) => Some((index, speech)),
                _ => None,
            })
            .collect()
    }
}

impl Pipeline {
    /// One sentence through the shared speech budget (ranked by its place
    /// in the reply unless `ROSE_TTS_ORDER=arrival`), relayed as it comes,
    /// reported on `tx`. `preset`: the audio id it was announced with.
    pub(crate) async fn synthesise(
        &self,
        tts: &dyn TextToSpeech,
        index: u32,
        text: String,
        context: SpeechContext,
        preset: Option<AudioId>,
        tx: mpsc::UnboundedSender<Progress>,
    ) {
        let rank = match self.rose.config.tts_order {
            TtsOrder::FirstSentences => index,
            TtsOrder::Arrival => 0,
        };
        let started = self
            .rose
            .resilience
            .call_holding(Provider::Tts, rank, || {
                tts.speak_sentence_stream(&text, &context)
            })
            .await;
        let (stream, permit) = match started {
            Ok(started) => started,
            Err(e) => {
                let _ = tx.send(Progress::Failed {
                    index,
                    error: e.to_string(),
                });
                return;
            }
        };
        let audio_id = preset.unwrap_or_default();
        let idle = self.rose.config.provider_timeout;
        let mut parts = stream.bytes;
        let mut relay = None;
        let mut bytes = Vec::new();
        let outcome = loop {
            match tokio::time::timeout(idle, parts.next()).await {
                Err(_) => {
                    break Err(ProviderError::transient(
                        "elevenlabs",
                        None,
                        "the speech stream stalled",
                    ));
                }
                Ok(None) => break body::check_audio("elevenlabs", &bytes),
                Ok(Some(Err(e))) => break Err(e),
                Ok(Some(Ok(part))) if part.is_empty() => {}
                Ok(Some(Ok(part))) if bytes.len() + part.len() > body::MAX_AUDIO_ANSWER => {
                    break Err(ProviderError::bad_answer(
                        "elevenlabs",
                        "the speech is larger than Rose reads",
                    ));
                }
                Ok(Some(Ok(part))) => {
                    bytes.extend_from_slice(&part);
                    if relay.is_none() {
                        // Relayed once its first bytes show it is audio.
                        if bytes.len() < SNIFF_BYTES {
                            continue;
                        }
                        if let Err(e) = body::check_audio("elevenlabs", &bytes) {
                            break Err(e);
                        }
                        let mut opened = self.rose.relay.open(audio_id, &stream.mime).await;
                        opened.push(&Bytes::copy_from_slice(&bytes)).await;
                        relay = Some(opened);
                        let _ = tx.send(Progress::Started { index, audio_id });
                    } else if let Some(relay) = &mut relay {
                        relay.push(&part).await;
                    }
                }
            }
        };
        drop(permit);
        let ok = outcome.is_ok();
        if let Some(relay) = relay {
            relay.finish(ok).await;
        }
        let progress = match outcome {
            Ok(()) => Progress::Spoken {
                index,
                audio_id,
                speech: Speech {
                    bytes,
                    mime: stream.mime,
                },
            },
            Err(e) => {
                self.rose
                    .resilience
                    .breakers
                    .record(Provider::Tts, false)
                    .await;
                Progress::Failed {
                    index,
                    error: e.to_string(),
                }
            }
        };
        let _ = tx.send(progress);
    }

    /// Takes in one sentence's progress: announces every sentence that can
    /// be, in order, and stores (or takes back) the audio it reported.
    pub(crate) async fn advance(
        &self,
        job: &mut Job,
        line: &mut Line,
        progress: Progress,
        tts_ms: i64,
    ) -> Result<(), StageError> {
        let index = match progress {
            Progress::Started { index, audio_id } => {
                if let Some(slot) = line.slots.get_mut(&index)
                    && matches!(slot.state, State::Waiting)
                {
                    slot.state = State::Started(audio_id);
                }
                index
            }
            Progress::Spoken {
                index,
                audio_id,
                speech,
            } => {
                if let Some(slot) = line.slots.get_mut(&index) {
                    slot.state = State::Spoken(audio_id, speech);
                }
                index
            }
            Progress::Failed { index, error } => {
                tracing::warn!(job_id = %job.id, index, error = %error, "a sentence could not be spoken; delivering its text");
                mark_degraded(job, "tts");
                if let Some(slot) = line.slots.get_mut(&index) {
                    slot.state = State::Failed;
                }
                index
            }
        };
        self.announce_ready(job, line, tts_ms).await?;
        let Some(slot) = line.slots.get_mut(&index) else {
            return Ok(());
        };
        if !slot.announced {
            return Ok(());
        }
        match &slot.state {
            State::Spoken(audio_id, speech) if !slot.stored => {
                let audio = NewAudio {
                    bytes: speech.bytes.clone(),
                    mime: speech.mime.clone(),
                };
                let store = &self.rose.store;
                let done: &Job = job;
                patiently(|| store.save_chunk_audio(done, *audio_id, audio.clone())).await?;
                slot.stored = true;
            }
            State::Failed => {
                let position = job.chunks.iter().position(|c| c.index == index);
                if let Some(position) = position
                    && job.chunks[position].audio_id.is_some()
                {
                    let mut chunks = job.chunks.clone();
                    chunks[position].audio_id = None;
                    if !self.rose.store.replace_chunks(job, &chunks).await? {
                        return Err(StageError::Moved);
                    }
                    job.chunks = chunks;
                    self.rose.events.publish_progress(job.id).await;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Announces the sentences next in line whose speech started, ended or
    /// failed.
    async fn announce_ready(
        &self,
        job: &mut Job,
        line: &mut Line,
        tts_ms: i64,
    ) -> Result<(), StageError> {
        while let Some(slot) = line.slots.get_mut(&line.next_announce) {
            if slot.announced {
                line.next_announce += 1;
                continue;
            }
            let (audio_id, audio) = match &slot.state {
                State::Waiting => break,
                State::Started(id) => (Some(*id), None),
                State::Spoken(id, speech) => (
                    Some(*id),
                    Some(NewAudio {
                        bytes: speech.bytes.clone(),
                        mime: speech.mime.clone(),
                    }),
                ),
                State::Failed => (None, None),
            };
            let stored = audio.is_some();
            let chunk = ReplyChunk {
                index: line.next_announce,
                text: slot.text.clone(),
                audio_id,
            };
            let store = &self.rose.store;
            let done: &Job = job;
            let saved =
                patiently(|| store.save_chunk(done, chunk.clone(), audio.clone(), tts_ms)).await?;
            let Some(chunk) = saved else {
                return Err(StageError::Moved);
            };
            if chunk.audio_id.is_some() && job.timings.first_audio.is_none() {
                let after = now_ms() - job.created_at;
                job.timings.first_audio = Some(after);
                metrics::first_audio(std::time::Duration::from_millis(
                    u64::try_from(after).unwrap_or(0),
                ));
            }
            job.chunks.push(chunk);
            slot.announced = true;
            slot.stored = stored;
            line.next_announce += 1;
            self.rose.events.publish_progress(job.id).await;
        }
        Ok(())
    }
}
