//! Domain types: identifiers parsed once at the edge, and the rows clients read.
//!
//! Every identifier is a ULID in form (26 URL-safe characters). Job ids are
//! time-ordered ULIDs (48 bits of time, 80 random), so job listings page by
//! id; session and audio ids — what gives access to a person's conversation
//! and voice — are 128 random bits from the operating system's CSPRNG-seeded
//! generator, as unguessable as a UUIDv4 and more. A job's
//! stage outputs (`transcript`, `reply_text`, `reply_audio_id`) are its
//! checkpoints: a re-run job starts at the first one that is missing.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

/// A fresh time-ordered ULID.
fn time_ordered() -> Ulid {
    Ulid::generate()
}

/// 128 random bits in ULID form.
fn random() -> Ulid {
    Ulid::from(rand::random::<u128>())
}

macro_rules! ulid_id {
    ($(#[$doc:meta])* $name:ident, $make:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Ulid);

        impl $name {
            /// A fresh id.
            #[must_use]
            pub fn new() -> Self {
                Self($make())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = ulid::DecodeError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ulid::from_string(s.trim()).map(Self)
            }
        }
    };
}

ulid_id!(
    /// A voice job (time-ordered).
    JobId,
    time_ordered
);
ulid_id!(
    /// A conversation session (128 random bits).
    SessionId,
    random
);
ulid_id!(
    /// A stored audio blob, an upload or a reply (128 random bits).
    AudioId,
    random
);

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Processing,
    Succeeded,
    Failed,
    /// The person (or their client) stopped it: a queued job never ran, a
    /// running one stopped where it was.
    Cancelled,
}

impl JobStatus {
    /// The stored and serialised name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// No further change will happen.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "queued" => Ok(Self::Queued),
            "processing" => Ok(Self::Processing),
            "succeeded" => Ok(Self::Succeeded),
            "failed" => Ok(Self::Failed),
            "cancelled" => Ok(Self::Cancelled),
            other => Err(format!("unknown job status {other:?}")),
        }
    }
}

/// A pipeline stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Stt,
    Memory,
    Llm,
    Tts,
}

impl Stage {
    /// The stored and serialised name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stt => "stt",
            Self::Memory => "memory",
            Self::Llm => "llm",
            Self::Tts => "tts",
        }
    }
}

impl FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stt" => Ok(Self::Stt),
            "memory" => Ok(Self::Memory),
            "llm" => Ok(Self::Llm),
            "tts" => Ok(Self::Tts),
            other => Err(format!("unknown stage {other:?}")),
        }
    }
}

/// A conversation session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    pub id: SessionId,
    pub user_id: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// When the person last sent a turn (or opened the session), unix
    /// milliseconds: idle-session cleanup and `active_sessions` count from it.
    pub last_active_at: i64,
    /// The rolling summary of the turns up to `summarized_until`.
    pub summary: Option<String>,
    /// `created_at` of the last turn folded into `summary` (0: none).
    pub summarized_until: i64,
}

/// Who spoke a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    /// The stored name (also the chat API's role name).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

/// What a profile line may be about: the person's name, who they are
/// grieving and their relationship, important dates, what helps, what to
/// avoid, and anything else about who they are.
pub const PROFILE_FIELDS: [&str; 6] = ["name", "grieving", "date", "helps", "avoid", "about"];
/// Most profile lines a person has.
pub const PROFILE_MAX_LINES: usize = 12;
/// Most characters of all a person's profile lines together.
pub const PROFILE_MAX_CHARS: usize = 800;

/// One line of a person's profile (see [`crate::store::PersonStore`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileLine {
    pub id: String,
    /// What the line is about: one of [`PROFILE_FIELDS`].
    pub field: String,
    pub text: String,
    /// The job it was learnt from.
    pub source_job: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
}

/// One utterance in a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Turn {
    pub role: Role,
    pub text: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A stored audio blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audio {
    pub id: AudioId,
    pub bytes: Vec<u8>,
    pub mime: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// Why a job failed: a stable code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobError {
    /// Stable snake_case code, e.g. `stt_failed`, `provider_unavailable`.
    pub code: String,
    pub message: String,
}

/// Milliseconds spent per part of a job; absent parts did not run (yet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// Push → first stage start.
    pub queue_wait: Option<i64>,
    pub stt: Option<i64>,
    pub memory: Option<i64>,
    pub llm: Option<i64>,
    pub tts: Option<i64>,
    /// Creation → finish.
    pub total: Option<i64>,
    /// Creation → the reply's first token.
    pub first_token: Option<i64>,
    /// Creation → the reply's first stored sentence of speech.
    pub first_audio: Option<i64>,
}

impl Timings {
    /// The `timings_ms` object clients read: only the parts that ran.
    #[must_use]
    pub fn to_map(&self) -> BTreeMap<&'static str, i64> {
        [
            ("queue_wait", self.queue_wait),
            ("stt", self.stt),
            ("memory", self.memory),
            ("llm", self.llm),
            ("tts", self.tts),
            ("total", self.total),
            ("first_token", self.first_token),
            ("first_audio", self.first_audio),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

/// A voice job row: the truth clients read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    pub session_id: SessionId,
    pub status: JobStatus,
    pub stage: Option<Stage>,
    pub attempts: i64,
    /// The uploaded recording; `None` when the person typed instead.
    pub input_audio_id: Option<AudioId>,
    /// STT checkpoint.
    pub transcript: Option<String>,
    /// LLM checkpoint.
    pub reply_text: Option<String>,
    /// TTS checkpoint: the whole reply as one file.
    pub reply_audio_id: Option<AudioId>,
    /// The reply's sentences announced so far, in index order: each is a
    /// checkpoint (a redelivered job resumes after the last one).
    pub chunks: Vec<ReplyChunk>,
    /// Memory checkpoint: the facts recalled for this reply.
    pub memories: Option<Vec<String>>,
    /// Stages that fell back (e.g. `tts`).
    pub degraded: Vec<String>,
    pub error: Option<JobError>,
    pub timings: Timings,
    pub idempotency_key: Option<String>,
    pub request_id: Option<String>,
    pub callback_url: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
    /// Attempts that do not count against `ROSE_JOB_MAX_ATTEMPTS`: runs put
    /// off because a provider's breaker was open, and every attempt before an
    /// operator revived the job.
    pub deferrals: i64,
    /// Delivery of the finished job to `callback_url`, once it was queued.
    pub callback: Option<CallbackState>,
    /// The turn's safety mark (`None`: an ordinary turn).
    pub safety: Option<crate::safety::Safety>,
}

/// One sentence of a reply, stored and announced as soon as it was spoken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyChunk {
    /// 0 for the reply's first sentence.
    pub index: u32,
    pub text: String,
    /// Its speech; `None` when the speech provider refused this sentence
    /// (the text is still delivered).
    pub audio_id: Option<AudioId>,
}

/// What the person has heard of `chunks`: their texts, in order, joined by spaces.
#[must_use]
pub fn spoken_text(chunks: &[ReplyChunk]) -> String {
    let mut out = String::new();
    for chunk in chunks {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&chunk.text);
    }
    out
}

/// Where a callback delivery stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CallbackState {
    /// `pending`, `delivered`, `exhausted` or `gone`.
    pub status: String,
    pub attempts: i64,
    /// The receiver's last HTTP status (`None`: no answer, e.g. a timeout).
    pub last_status_code: Option<i64>,
}

/// The `callbacks` queue's message: deliver this finished job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackTask {
    pub job_id: JobId,
}

impl Job {
    /// Attempts that ran into a failure or are running, deferrals excluded.
    #[must_use]
    pub fn counted_attempts(&self) -> i64 {
        self.attempts - self.deferrals
    }
}

/// The job message a queue carries: the row is the truth, the message only points at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoiceTask {
    pub job_id: JobId,
    /// The HTTP request that created the job, so worker logs join the api's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The `memory` queue's message: extract a fact from this job's words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryTask {
    pub job_id: JobId,
    /// Earlier failed runs of this task.
    #[serde(default)]
    pub attempt: u32,
}

/// The `summary` queue's message: fold this session's older turns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryTask {
    pub session_id: SessionId,
    /// Earlier failed runs of this task.
    #[serde(default)]
    pub attempt: u32,
    /// Fold every unsummarized turn: the session is over (its person began
    /// a new one), and its summary is what the next session is told.
    #[serde(default)]
    pub close: bool,
}

/// Unix milliseconds now.
#[must_use]
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// RFC 3339 (UTC, milliseconds) for a unix-milliseconds timestamp.
#[must_use]
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = JobId::new();
        assert_eq!(id.to_string().parse::<JobId>().ok(), Some(id));
        assert!("not-a-ulid".parse::<SessionId>().is_err());
        assert!("".parse::<SessionId>().is_err());
    }

    #[test]
    fn access_ids_carry_no_clock() {
        // Time-ordered ULIDs made together share their 48-bit time prefix;
        // session and audio ids share nothing but chance.
        let sessions: Vec<u128> = (0..64).map(|_| SessionId::new().0.0).collect();
        let audio: Vec<u128> = (0..64).map(|_| AudioId::new().0.0).collect();
        for ids in [&sessions, &audio] {
            let high: std::collections::HashSet<u128> = ids.iter().map(|v| v >> 80).collect();
            assert!(high.len() > 60, "the top 48 bits vary: {}", high.len());
            let s = SessionId(Ulid::from(ids[0]));
            assert_eq!(s.to_string().parse::<SessionId>().ok(), Some(s));
        }
        let jobs: std::collections::HashSet<u128> =
            (0..64).map(|_| JobId::new().0.0 >> 80).collect();
        assert!(jobs.len() <= 2, "job ids stay time-ordered");
    }

    #[test]
    fn timings_map_has_only_measured_parts() {
        let t = Timings {
            stt: Some(12),
            total: Some(40),
            ..Timings::default()
        };
        let m = t.to_map();
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("stt"), Some(&12));
    }

    #[test]
    fn rfc3339_is_utc_millis() {
        assert_eq!(rfc3339(1_614_265_330_123), "2021-02-25T15:02:10.123Z");
    }
}
