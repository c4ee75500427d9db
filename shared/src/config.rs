//! Typed configuration, read from the environment in this one place.
//!
//! [`Config::from_env`] reads every variable named in the interface contract
//! (plus Rose's own `ROSE_*` tuning knobs), applies defaults, and reports
//! *every* bad setting at once in a single line that names each variable, so
//! an operator fixes them in one pass. Secrets are [`SecretString`]s and never
//! appear in `Debug` output or logs.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;

use crate::safety::CrisisResource;

/// Groq's OpenAI-compatible base URL.
pub const DEFAULT_GROQ_BASE_URL: &str = "https://api.groq.com/openai/v1";
/// ElevenLabs' API root.
pub const DEFAULT_ELEVENLABS_BASE_URL: &str = "https://api.elevenlabs.io";
/// A stock ElevenLabs voice (calm, warm) used when `ELEVENLABS_VOICE_ID` is unset.
pub const DEFAULT_ELEVENLABS_VOICE_ID: &str = "21m00Tcm4TlvDq8ikWAM";

/// The shortest `ROSE_ADMIN_TOKEN` Rose starts with: a guessable operator
/// token is refused at start rather than accepted without a word
/// (`openssl rand -hex 32` makes a good one).
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// The shortest `ROSE_PERSON_KEY_SECRET`, `ROSE_USER_TOKEN_SECRET` and
/// `ROSE_API_KEY` Rose starts with (`openssl rand -hex 32` makes a good one).
pub const MIN_SECRET_CHARS: usize = 32;

/// Which text-to-speech backend speaks Rose's replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtsProvider {
    /// ElevenLabs `POST /v1/text-to-speech/{voice_id}`.
    ElevenLabs,
    /// OpenAI-compatible `POST {GROQ_BASE_URL}/audio/speech`.
    OpenAi,
    /// Local `espeak-ng`, no network.
    Espeak,
    /// Text replies only.
    None,
}

impl FromStr for TtsProvider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "elevenlabs" => Ok(Self::ElevenLabs),
            "openai" => Ok(Self::OpenAi),
            "espeak" => Ok(Self::Espeak),
            "none" => Ok(Self::None),
            other => Err(format!(
                "expected one of elevenlabs, openai, espeak, none, got {other:?}"
            )),
        }
    }
}

/// The order in which waiting sentences get the shared speech budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtsOrder {
    /// A reply's first sentence goes ahead of another reply's later ones
    /// (ties: first come, first served), so first audio stays quick under load.
    FirstSentences,
    /// First come, first served.
    Arrival,
}

impl FromStr for TtsOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "first-sentences" => Ok(Self::FirstSentences),
            "arrival" => Ok(Self::Arrival),
            other => Err(format!(
                "expected first-sentences or arrival, got {other:?}"
            )),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "pretty" | "text" => Ok(Self::Pretty),
            other => Err(format!("expected json or pretty, got {other:?}")),
        }
    }
}

/// The database Rose keeps its rows in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite:` URL (the embedded deployment).
    Sqlite(String),
    /// `postgres:`/`postgresql:` URL (the scaled deployment).
    Postgres(String),
}

impl DatabaseUrl {
    /// The URL as given.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::Sqlite(s) | Self::Postgres(s) => s,
        }
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.starts_with("sqlite:") {
            Ok(Self::Sqlite(s.to_owned()))
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(Self::Postgres(s.to_owned()))
        } else {
            Err("expected a sqlite: or postgres:// URL".to_owned())
        }
    }
}

/// Everything Rose reads from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `PORT`: the api's listening port (default 8080; `--port` wins).
    pub port: u16,
    /// `DATABASE_URL`: where rows live; unset on `rose serve` means a SQLite
    /// file `rose.db` under `ROSE_DATA_DIR`.
    pub database_url: Option<DatabaseUrl>,
    /// `REDIS_URL`: the queue, job events and shared limits on the scaled deployment.
    pub redis_url: Option<String>,
    /// `ROSE_REDIS_PREFIX`: every Redis key Rose touches starts with this (default `rose`).
    pub redis_prefix: String,
    /// `ROSE_DATA_DIR`: the embedded deployment's files (default `./data`).
    pub data_dir: PathBuf,

    /// `GROQ_API_KEY`: speech-to-text and chat; unset means the built-in simulator.
    pub groq_api_key: Option<SecretString>,
    /// `ROSE_SIMULATOR_URL`: without a Groq key, use the provider simulator
    /// already running there (e.g. one `rose sim` shared by all workers)
    /// instead of starting one in-process.
    pub simulator_url: Option<String>,
    /// `GROQ_BASE_URL`: any OpenAI-compatible server.
    pub groq_base_url: String,
    /// `ELEVENLABS_API_KEY`.
    pub elevenlabs_api_key: Option<SecretString>,
    /// `ELEVENLABS_BASE_URL`.
    pub elevenlabs_base_url: String,
    /// `ELEVENLABS_VOICE_ID`.
    pub elevenlabs_voice_id: String,
    /// `TTS_PROVIDER` (default `elevenlabs`).
    pub tts_provider: TtsProvider,
    /// `STT_MODEL` (default `whisper-large-v3-turbo`).
    pub stt_model: String,
    /// `LLM_MODEL` (default `llama-3.3-70b-versatile`).
    pub llm_model: String,
    /// `LLM_SMALL_MODEL` (default `llama-3.1-8b-instant`): memory extraction and summaries.
    pub llm_small_model: String,
    /// `TTS_MODEL` (default `eleven_flash_v2_5`).
    pub tts_model: String,
    /// `ROSE_PROVIDER_TIMEOUT_SECS`: per provider call (default 30).
    pub provider_timeout: Duration,

    /// `QDRANT_URL`: vector memory in Qdrant; unset means the embedded store.
    pub qdrant_url: Option<String>,
    /// `QDRANT_API_KEY`.
    pub qdrant_api_key: Option<SecretString>,
    /// `QDRANT_REST_URL`: Qdrant's REST API, for snapshot download and
    /// upload (gRPC has neither). Default: `QDRANT_URL` with Qdrant's gRPC
    /// port 6334 swapped for its REST port 6333 (see [`Config::qdrant_rest`]).
    pub qdrant_rest_url: Option<String>,
    /// `ROSE_QDRANT_START_TIMEOUT_SECS`: how long a starting process waits for
    /// Qdrant to answer, retrying with backoff (default 60; 0: no retry).
    pub qdrant_start_timeout: Duration,
    /// `MEMORY_TOP_K` (default 3).
    pub memory_top_k: usize,
    /// `EMBEDDING_MODEL_DIR`: `model.safetensors`, `tokenizer.json`, `config.json`.
    pub embedding_model_dir: Option<PathBuf>,

    /// `SESSION_RETENTION_DAYS` (default 7).
    pub session_retention_days: u32,
    /// `AUDIO_RETENTION_HOURS` (default 24).
    pub audio_retention_hours: u32,
    /// `BACKUP_DIR` (default `<ROSE_DATA_DIR>/backups`).
    pub backup_dir: PathBuf,
    /// `BACKUP_KEEP` (default 7).
    pub backup_keep: usize,

    /// `ROSE_ADMIN_TOKEN`: the admin API is off (404) when unset; when set,
    /// at least [`MIN_ADMIN_TOKEN_CHARS`] characters, or Rose does not start.
    pub admin_token: Option<SecretString>,
    /// `ROSE_PERSON_KEY_SECRET`: the key under which person keys are hashed
    /// into owners (see [`crate::identity`]). Required by `rose api`; `rose
    /// serve` makes one into `ROSE_DATA_DIR` when unset.
    pub person_key_secret: Option<SecretString>,
    /// `ROSE_USER_TOKEN_SECRET`: the HS256 key of integrators' user tokens;
    /// unset: user tokens are refused.
    pub user_token_secret: Option<SecretString>,
    /// `ROSE_API_KEY`: the server-to-server credential that may name a bare
    /// `user_id`; unset: a bare `user_id` is always refused.
    pub api_key: Option<SecretString>,
    /// `ROSE_WEBHOOK_SECRET`: `whsec_` + base64 key for signing callbacks.
    pub webhook_secret: Option<SecretString>,
    /// `ROSE_CALLBACK_ALLOW_PRIVATE`: let callbacks reach loopback, private,
    /// link-local and metadata addresses (local setups and tests; default false).
    pub callback_allow_private: bool,
    /// `ROSE_CALLBACK_RETRY_DELAYS_MS`: waits before each retry of a failed
    /// delivery, comma-separated (default 5 s, 5 min, 30 min, 2 h, 5 h, 10 h).
    pub callback_retry_delays: Vec<Duration>,

    /// `ALLOWED_ORIGINS`: comma-separated origins (`https://app.example`)
    /// whose pages may call the api from a browser (CORS); empty: none.
    pub allowed_origins: Vec<String>,
    /// `ROSE_RATE_LIMIT_VOICE_PER_MIN`: voice jobs one client address may
    /// submit per minute (default 10; 0: no limit).
    pub rate_limit_voice: u32,
    /// `ROSE_RATE_LIMIT_PER_MIN`: other api requests per client address per
    /// minute (default 60; 0: no limit). Health and metrics are not counted.
    pub rate_limit_other: u32,
    /// `ROSE_SESSION_MAX_IN_FLIGHT`: a session's jobs queued or processing at
    /// once (default 2; 0: no limit).
    pub session_max_in_flight: u32,
    /// `ROSE_TRUST_FORWARDED_FOR`: the client address is the first one in
    /// `X-Forwarded-For` (behind a proxy you run; default false: the peer).
    pub trust_forwarded_for: bool,
    /// `ROSE_METRICS_PORT`: where `rose worker` and `rose scheduler` serve
    /// `GET /metrics` (off when unset; the api serves it on its own port).
    pub metrics_port: Option<u16>,
    /// `ROSE_REQUEST_TIMEOUT_SECS`: an api request taking longer is answered
    /// 408 (default 90, above the longest `?wait=` of 60).
    pub request_timeout: Duration,
    /// `ROSE_HEADER_READ_TIMEOUT_SECS`: how long a client may take to send a
    /// request's head, and how long a connection may stay open with no
    /// request in flight, before the api closes it (default 10, 1-3600).
    pub header_read_timeout: Duration,

    /// `LOG_FORMAT` (default `pretty`).
    pub log_format: LogFormat,

    /// `ROSE_CRISIS_RESOURCES`: the human resource a crisis turn's reply
    /// carries and the web client's "Need help now?" link points to. JSON
    /// `{"text": "…", "url": "https://…"}` or `text|url` (see
    /// [`CrisisResource::parse`]); default [`CrisisResource::international`].
    pub crisis_resource: CrisisResource,

    /// `ROSE_WORKER_CONCURRENCY`: voice jobs one worker process runs at once (default 32).
    pub worker_concurrency: usize,
    /// `ROSE_HISTORY_TURNS`: at most this many turns not yet folded into the
    /// session's summary go with each chat request (default 32: the summary
    /// folds a session down to its last 10 once it passes 30).
    pub history_turns: usize,
    /// `ROSE_STREAMING`: speak a reply sentence by sentence as it is written
    /// (default true); `false` writes the whole reply, then speaks it whole.
    pub streaming: bool,
    /// `ROSE_TTS_ORDER`: who gets the shared speech budget first when
    /// sentences wait for it: `first-sentences` (default) or `arrival`.
    pub tts_order: TtsOrder,
    /// `ROSE_QUEUE_VISIBILITY_TIMEOUT_SECS`: how long a silent consumer keeps a
    /// Redis job before another worker reclaims it (default 60).
    pub queue_visibility_timeout: Duration,

    /// `ROSE_JOB_MAX_ATTEMPTS`: failed attempts before a job fails for good (default 5).
    pub job_max_attempts: u32,
    /// `ROSE_JOB_DEADLINE_SECS`: a job waiting on an unavailable provider
    /// fails with `provider_unavailable` this long after it was created (default 600).
    pub job_deadline: Duration,
    /// `ROSE_JOB_RETRY_BASE_MS` / `ROSE_JOB_RETRY_CAP_MS`: the backoff between
    /// a job's attempts (default 2,000 ms doubling up to 60,000 ms, fully jittered).
    pub job_retry_base: Duration,
    pub job_retry_cap: Duration,
    /// `ROSE_PROVIDER_TRIES`: tries per provider call before the job itself is
    /// rescheduled (default 3); `ROSE_PROVIDER_RETRY_BASE_MS` their first backoff step (250).
    pub provider_tries: usize,
    pub provider_retry_base: Duration,
    /// `ROSE_BREAKER_FAILURES` (5), `ROSE_BREAKER_WINDOW_SECS` (60),
    /// `ROSE_BREAKER_COOLDOWN_MS` (30,000): the circuit breakers.
    pub breaker_failures: u32,
    pub breaker_window: Duration,
    pub breaker_cooldown: Duration,
    /// `ROSE_{STT,LLM,TTS}_RPM` and `ROSE_{STT,LLM,TTS}_CONCURRENCY`: shared
    /// budgets per provider (0 = unlimited). Unset, real providers get the free
    /// tiers (STT 20/min, LLM 30/min, TTS 2 at once) and the simulator none.
    pub stt_rpm: Option<u32>,
    pub llm_rpm: Option<u32>,
    pub tts_rpm: Option<u32>,
    pub stt_concurrency: Option<u32>,
    pub llm_concurrency: Option<u32>,
    pub tts_concurrency: Option<u32>,
    /// `ROSE_RATE_WINDOW_MS`: the span the `*_RPM` budgets apply to (default
    /// 60,000: providers count per minute).
    pub rate_window: Duration,
    /// `ROSE_SHUTDOWN_GRACE_SECS`: how long a stopping worker lets running
    /// jobs finish before handing them back (default 25).
    pub shutdown_grace: Duration,

    /// The maintenance schedules (`ROSE_SCHEDULE_*`), validated cron.
    pub schedules: Schedules,
    /// `ROSE_STALE_JOB_SECS`: a `processing` job without progress for this
    /// long is taken back by the reaper (default 300).
    pub stale_job_after: Duration,
    /// `ROSE_MEMORY_CAP_PER_USER`: memories kept per person by pruning,
    /// the most recently recalled first (default 500).
    pub memory_cap_per_user: usize,
    /// `ROSE_SCHEDULER_LEASE_MS`: the scheduler leader's lease; a standby
    /// takes over within this long after the leader dies (default 15,000).
    pub scheduler_lease: Duration,
}

/// Cron expressions for the maintenance jobs, UTC, with seconds
/// (`sec min hour day month weekday`); a five-field expression gets second 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedules {
    /// `ROSE_SCHEDULE_AUDIO_CLEANUP` (hourly: `0 0 * * * *`).
    pub audio_cleanup: String,
    /// `ROSE_SCHEDULE_SESSION_CLEANUP` (daily 03:00: `0 0 3 * * *`).
    pub session_cleanup: String,
    /// `ROSE_SCHEDULE_MEMORY_PRUNING` (daily 03:30: `0 30 3 * * *`).
    pub memory_pruning: String,
    /// `ROSE_SCHEDULE_BACKUP` (daily 02:00: `0 0 2 * * *`).
    pub backup: String,
    /// `ROSE_SCHEDULE_STALE_JOBS` (every minute: `0 * * * * *`).
    pub stale_jobs: String,
}

/// Parses a cron expression the way the scheduler runs it: seconds first
/// (a five-field expression gets second 0), day-of-month and weekday both
/// required when both are given.
///
/// # Errors
/// The parser's reason.
pub fn parse_cron(expression: &str) -> Result<(String, croner::Cron), String> {
    let trimmed = expression.split_whitespace().collect::<Vec<_>>().join(" ");
    let full = if trimmed.split(' ').count() == 5 {
        format!("0 {trimmed}")
    } else {
        trimmed
    };
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(&full)
        .map(|cron| (full, cron))
        .map_err(|e| e.to_string())
}

/// Every problem found in the environment, reported at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `(variable, what is wrong)` pairs, in the order found.
    pub problems: Vec<(String, String)>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration: ")?;
        for (i, (var, problem)) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{var}: {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads variables from a map and records what is wrong with them.
struct Reader<'a> {
    vars: &'a HashMap<String, String>,
    problems: Vec<(String, String)>,
}

impl Reader<'_> {
    /// The variable's value; empty values count as unset.
    fn raw(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.raw(name).unwrap_or(default).to_owned()
    }

    fn secret(&self, name: &str) -> Option<SecretString> {
        self.raw(name).map(|v| SecretString::from(v.to_owned()))
    }

    fn parse<T: FromStr>(&mut self, name: &str, expected: &str) -> Option<T>
    where
        T::Err: fmt::Display,
    {
        let raw = self.raw(name)?;
        match raw.parse::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                let msg = format!("{expected}, got {raw:?} ({e})");
                self.problems.push((name.to_owned(), msg));
                None
            }
        }
    }

    /// A positive integer within `min..=max`.
    fn bounded<T>(&mut self, name: &str, default: T, min: T, max: T) -> T
    where
        T: FromStr + PartialOrd + Copy + fmt::Display,
        T::Err: fmt::Display,
    {
        let expected = format!("expected an integer from {min} to {max}");
        match self.parse::<T>(name, &expected) {
            Some(v) if v >= min && v <= max => v,
            Some(v) => {
                self.problems
                    .push((name.to_owned(), format!("{expected}, got {v}")));
                default
            }
            None => default,
        }
    }

    /// A count where 0 means "no limit"; `None` when unset.
    fn optional_count(&mut self, name: &str) -> Option<u32> {
        self.raw(name)?;
        let v = self.bounded(name, 0u32, 0, 1_000_000);
        Some(v)
    }

    fn flag(&mut self, name: &str) -> bool {
        self.flag_or(name, false)
    }

    /// A boolean that is `default` when unset.
    fn flag_or(&mut self, name: &str, default: bool) -> bool {
        match self.raw(name).map(str::to_ascii_lowercase).as_deref() {
            None => default,
            Some("false" | "0" | "no") => false,
            Some("true" | "1" | "yes") => true,
            Some(other) => {
                self.problems.push((
                    name.to_owned(),
                    format!("expected true or false, got {other:?}"),
                ));
                false
            }
        }
    }

    /// Comma-separated milliseconds.
    fn delays(&mut self, name: &str, default: &[u64]) -> Vec<Duration> {
        let Some(raw) = self.raw(name).map(str::to_owned) else {
            return default
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect();
        };
        let parsed: Result<Vec<u64>, _> = raw.split(',').map(|p| p.trim().parse::<u64>()).collect();
        match parsed {
            Ok(list) if !list.is_empty() && list.len() <= 50 => {
                list.into_iter().map(Duration::from_millis).collect()
            }
            _ => {
                self.problems.push((
                    name.to_owned(),
                    format!("expected comma-separated milliseconds (at most 50), got {raw:?}"),
                ));
                default
                    .iter()
                    .map(|ms| Duration::from_millis(*ms))
                    .collect()
            }
        }
    }

    /// A cron expression (see [`parse_cron`]), normalised to six fields.
    fn cron(&mut self, name: &str, default: &str) -> String {
        let Some(raw) = self.raw(name).map(str::to_owned) else {
            return default.to_owned();
        };
        match parse_cron(&raw) {
            Ok((full, _)) => full,
            Err(e) => {
                self.problems.push((
                    name.to_owned(),
                    format!("expected a cron expression (sec min hour day month weekday), got {raw:?} ({e})"),
                ));
                default.to_owned()
            }
        }
    }

    /// Comma-separated origins: scheme, host and optional port, no path.
    fn origins(&mut self, name: &str) -> Vec<String> {
        let Some(raw) = self.raw(name).map(str::to_owned) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for origin in raw.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let origin = origin.trim_end_matches('/');
            let valid = url::Url::parse(origin).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && u.query().is_none()
                    && u.username().is_empty()
            });
            if valid {
                out.push(origin.to_owned());
            } else {
                self.problems.push((
                    name.to_owned(),
                    format!(
                        "expected comma-separated origins like https://app.example, got {origin:?}"
                    ),
                ));
            }
        }
        out
    }

    /// A crisis resource (see [`CrisisResource::parse`]); the default when unset.
    fn crisis_resource(&mut self, name: &str) -> CrisisResource {
        let Some(raw) = self.raw(name).map(str::to_owned) else {
            return CrisisResource::international();
        };
        CrisisResource::parse(&raw).unwrap_or_else(|problem| {
            self.problems.push((name.to_owned(), problem));
            CrisisResource::international()
        })
    }

    fn url(&mut self, name: &str, default: Option<&str>) -> Option<String> {
        let value = self.raw(name).or(default)?;
        let trimmed = value.trim_end_matches('/');
        if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
            Some(trimmed.to_owned())
        } else {
            self.problems.push((
                name.to_owned(),
                format!("expected an http:// or https:// URL, got {value:?}"),
            ));
            None
        }
    }
}

impl Config {
    /// Qdrant's REST URL: `QDRANT_REST_URL`, else `QDRANT_URL` with port
    /// 6334 (gRPC) replaced by 6333 (REST), else `QDRANT_URL` itself.
    #[must_use]
    pub fn qdrant_rest(&self) -> Option<String> {
        if let Some(url) = &self.qdrant_rest_url {
            return Some(url.clone());
        }
        let grpc = self.qdrant_url.as_ref()?;
        Some(match grpc.strip_suffix(":6334") {
            Some(base) => format!("{base}:6333"),
            None => grpc.clone(),
        })
    }

    /// Reads the process environment.
    ///
    /// # Errors
    /// [`ConfigError`] listing every variable that is malformed.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::from_map(&vars)
    }

    /// Reads configuration from `vars` (the environment, or a test's map).
    ///
    /// # Errors
    /// [`ConfigError`] listing every variable that is malformed.
    pub fn from_map(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut r = Reader {
            vars,
            problems: Vec::new(),
        };
        let data_dir = PathBuf::from(r.string("ROSE_DATA_DIR", "./data"));
        let redis_url = r.raw("REDIS_URL").map(str::to_owned);
        if let Some(url) = &redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            r.problems.push((
                "REDIS_URL".to_owned(),
                format!("expected a redis:// or rediss:// URL, got {url:?}"),
            ));
        }
        let webhook_secret = r.secret("ROSE_WEBHOOK_SECRET");
        if let Some(raw) = r.raw("ROSE_WEBHOOK_SECRET")
            && crate::webhook::decode_secret(raw).is_none()
        {
            r.problems.push((
                "ROSE_WEBHOOK_SECRET".to_owned(),
                "expected whsec_ followed by base64".to_owned(),
            ));
        }
        if let Some(raw) = r.raw("ROSE_ADMIN_TOKEN")
            && raw.chars().count() < MIN_ADMIN_TOKEN_CHARS
        {
            r.problems.push((
                "ROSE_ADMIN_TOKEN".to_owned(),
                format!(
                    "must be at least {MIN_ADMIN_TOKEN_CHARS} characters (e.g. `openssl rand -hex 32`), got {}",
                    raw.chars().count()
                ),
            ));
        }
        for name in [
            "ROSE_PERSON_KEY_SECRET",
            "ROSE_USER_TOKEN_SECRET",
            "ROSE_API_KEY",
        ] {
            if let Some(raw) = r.raw(name)
                && raw.chars().count() < MIN_SECRET_CHARS
            {
                let problem = format!(
                    "must be at least {MIN_SECRET_CHARS} characters (e.g. `openssl rand -hex 32`), got {}",
                    raw.chars().count()
                );
                r.problems.push((name.to_owned(), problem));
            }
        }
        let redis_prefix = r.string("ROSE_REDIS_PREFIX", "rose");
        if redis_prefix.contains(char::is_whitespace) {
            r.problems.push((
                "ROSE_REDIS_PREFIX".to_owned(),
                "must not contain whitespace".to_owned(),
            ));
        }

        let config = Config {
            port: r.bounded("PORT", 8080u16, 1, u16::MAX),
            database_url: r.parse("DATABASE_URL", "expected a sqlite: or postgres:// URL"),
            redis_url,
            redis_prefix,
            groq_api_key: r.secret("GROQ_API_KEY"),
            simulator_url: r.url("ROSE_SIMULATOR_URL", None),
            groq_base_url: r
                .url("GROQ_BASE_URL", Some(DEFAULT_GROQ_BASE_URL))
                .unwrap_or_else(|| DEFAULT_GROQ_BASE_URL.to_owned()),
            elevenlabs_api_key: r.secret("ELEVENLABS_API_KEY"),
            elevenlabs_base_url: r
                .url("ELEVENLABS_BASE_URL", Some(DEFAULT_ELEVENLABS_BASE_URL))
                .unwrap_or_else(|| DEFAULT_ELEVENLABS_BASE_URL.to_owned()),
            elevenlabs_voice_id: r.string("ELEVENLABS_VOICE_ID", DEFAULT_ELEVENLABS_VOICE_ID),
            tts_provider: r
                .parse("TTS_PROVIDER", "expected a TTS provider")
                .unwrap_or(TtsProvider::ElevenLabs),
            stt_model: r.string("STT_MODEL", "whisper-large-v3-turbo"),
            llm_model: r.string("LLM_MODEL", "llama-3.3-70b-versatile"),
            llm_small_model: r.string("LLM_SMALL_MODEL", "llama-3.1-8b-instant"),
            tts_model: r.string("TTS_MODEL", "eleven_flash_v2_5"),
            provider_timeout: Duration::from_secs(r.bounded(
                "ROSE_PROVIDER_TIMEOUT_SECS",
                30u64,
                1,
                600,
            )),
            qdrant_url: r.url("QDRANT_URL", None),
            qdrant_api_key: r.secret("QDRANT_API_KEY"),
            qdrant_rest_url: r.url("QDRANT_REST_URL", None),
            qdrant_start_timeout: Duration::from_secs(r.bounded(
                "ROSE_QDRANT_START_TIMEOUT_SECS",
                60u64,
                0,
                3_600,
            )),
            memory_top_k: r.bounded("MEMORY_TOP_K", 3usize, 1, 50),
            embedding_model_dir: r.raw("EMBEDDING_MODEL_DIR").map(PathBuf::from),
            session_retention_days: r.bounded("SESSION_RETENTION_DAYS", 7u32, 1, 36_500),
            audio_retention_hours: r.bounded("AUDIO_RETENTION_HOURS", 24u32, 1, 876_000),
            backup_dir: r
                .raw("BACKUP_DIR")
                .map_or_else(|| data_dir.join("backups"), PathBuf::from),
            backup_keep: r.bounded("BACKUP_KEEP", 7usize, 1, 10_000),
            admin_token: r.secret("ROSE_ADMIN_TOKEN"),
            person_key_secret: r.secret("ROSE_PERSON_KEY_SECRET"),
            user_token_secret: r.secret("ROSE_USER_TOKEN_SECRET"),
            api_key: r.secret("ROSE_API_KEY"),
            webhook_secret,
            callback_allow_private: r.flag("ROSE_CALLBACK_ALLOW_PRIVATE"),
            callback_retry_delays: r.delays(
                "ROSE_CALLBACK_RETRY_DELAYS_MS",
                &[5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000],
            ),
            allowed_origins: r.origins("ALLOWED_ORIGINS"),
            rate_limit_voice: r.bounded("ROSE_RATE_LIMIT_VOICE_PER_MIN", 10u32, 0, 1_000_000),
            rate_limit_other: r.bounded("ROSE_RATE_LIMIT_PER_MIN", 60u32, 0, 1_000_000),
            session_max_in_flight: r.bounded("ROSE_SESSION_MAX_IN_FLIGHT", 2u32, 0, 100_000),
            trust_forwarded_for: r.flag("ROSE_TRUST_FORWARDED_FOR"),
            metrics_port: r
                .raw("ROSE_METRICS_PORT")
                .is_some()
                .then(|| r.bounded("ROSE_METRICS_PORT", 0u16, 1, u16::MAX)),
            request_timeout: Duration::from_secs(r.bounded(
                "ROSE_REQUEST_TIMEOUT_SECS",
                90u64,
                61,
                3_600,
            )),
            header_read_timeout: Duration::from_secs(r.bounded(
                "ROSE_HEADER_READ_TIMEOUT_SECS",
                10u64,
                1,
                3_600,
            )),
            log_format: r
                .parse("LOG_FORMAT", "expected json or pretty")
                .unwrap_or(LogFormat::Pretty),
            crisis_resource: r.crisis_resource("ROSE_CRISIS_RESOURCES"),
            worker_concurrency: r.bounded("ROSE_WORKER_CONCURRENCY", 32usize, 1, 100_000),
            history_turns: r.bounded("ROSE_HISTORY_TURNS", 32usize, 0, 200),
            streaming: r.flag_or("ROSE_STREAMING", true),
            tts_order: r
                .parse("ROSE_TTS_ORDER", "expected a speech order")
                .unwrap_or(TtsOrder::FirstSentences),
            queue_visibility_timeout: Duration::from_secs(r.bounded(
                "ROSE_QUEUE_VISIBILITY_TIMEOUT_SECS",
                60u64,
                1,
                86_400,
            )),
            job_max_attempts: r.bounded("ROSE_JOB_MAX_ATTEMPTS", 5u32, 1, 1000),
            job_deadline: Duration::from_secs(r.bounded(
                "ROSE_JOB_DEADLINE_SECS",
                600u64,
                1,
                604_800,
            )),
            job_retry_base: Duration::from_millis(r.bounded(
                "ROSE_JOB_RETRY_BASE_MS",
                2_000u64,
                1,
                3_600_000,
            )),
            job_retry_cap: Duration::from_millis(r.bounded(
                "ROSE_JOB_RETRY_CAP_MS",
                60_000u64,
                1,
                86_400_000,
            )),
            provider_tries: r.bounded("ROSE_PROVIDER_TRIES", 3usize, 1, 20),
            provider_retry_base: Duration::from_millis(r.bounded(
                "ROSE_PROVIDER_RETRY_BASE_MS",
                250u64,
                1,
                60_000,
            )),
            breaker_failures: r.bounded("ROSE_BREAKER_FAILURES", 5u32, 1, 1000),
            breaker_window: Duration::from_secs(r.bounded(
                "ROSE_BREAKER_WINDOW_SECS",
                60u64,
                1,
                86_400,
            )),
            breaker_cooldown: Duration::from_millis(r.bounded(
                "ROSE_BREAKER_COOLDOWN_MS",
                30_000u64,
                1,
                3_600_000,
            )),
            stt_rpm: r.optional_count("ROSE_STT_RPM"),
            llm_rpm: r.optional_count("ROSE_LLM_RPM"),
            tts_rpm: r.optional_count("ROSE_TTS_RPM"),
            stt_concurrency: r.optional_count("ROSE_STT_CONCURRENCY"),
            llm_concurrency: r.optional_count("ROSE_LLM_CONCURRENCY"),
            tts_concurrency: r.optional_count("ROSE_TTS_CONCURRENCY"),
            rate_window: Duration::from_millis(r.bounded(
                "ROSE_RATE_WINDOW_MS",
                60_000u64,
                100,
                86_400_000,
            )),
            shutdown_grace: Duration::from_secs(r.bounded(
                "ROSE_SHUTDOWN_GRACE_SECS",
                25u64,
                0,
                3600,
            )),
            schedules: Schedules {
                audio_cleanup: r.cron("ROSE_SCHEDULE_AUDIO_CLEANUP", "0 0 * * * *"),
                session_cleanup: r.cron("ROSE_SCHEDULE_SESSION_CLEANUP", "0 0 3 * * *"),
                memory_pruning: r.cron("ROSE_SCHEDULE_MEMORY_PRUNING", "0 30 3 * * *"),
                backup: r.cron("ROSE_SCHEDULE_BACKUP", "0 0 2 * * *"),
                stale_jobs: r.cron("ROSE_SCHEDULE_STALE_JOBS", "0 * * * * *"),
            },
            stale_job_after: Duration::from_secs(r.bounded(
                "ROSE_STALE_JOB_SECS",
                300u64,
                1,
                604_800,
            )),
            memory_cap_per_user: r.bounded("ROSE_MEMORY_CAP_PER_USER", 500usize, 1, 10_000_000),
            scheduler_lease: Duration::from_millis(r.bounded(
                "ROSE_SCHEDULER_LEASE_MS",
                15_000u64,
                500,
                600_000,
            )),
            data_dir,
        };
        if r.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                problems: r.problems,
            })
        }
    }

    /// True when no Groq key is set: Rose talks to its built-in simulator.
    #[must_use]
    pub fn uses_simulator(&self) -> bool {
        self.groq_api_key.is_none()
    }

    /// The database for `rose serve`: `DATABASE_URL`, else `rose.db` under `ROSE_DATA_DIR`.
    #[must_use]
    pub fn embedded_database_url(&self) -> DatabaseUrl {
        self.database_url.clone().unwrap_or_else(|| {
            DatabaseUrl::Sqlite(format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("rose.db").display()
            ))
        })
    }

    /// The shared budgets: explicit settings win; otherwise real providers get
    /// the free tiers and the simulator no limit.
    #[must_use]
    pub fn provider_limits(
        &self,
        simulated: bool,
    ) -> HashMap<crate::resilience::Provider, crate::resilience::Limits> {
        use crate::resilience::{Limits, Provider};
        let tier = |free: u32| if simulated { 0 } else { free };
        HashMap::from([
            (
                Provider::Stt,
                Limits {
                    rpm: self.stt_rpm.unwrap_or(tier(20)),
                    concurrency: self.stt_concurrency.unwrap_or(0),
                },
            ),
            (
                Provider::Llm,
                Limits {
                    rpm: self.llm_rpm.unwrap_or(tier(30)),
                    concurrency: self.llm_concurrency.unwrap_or(0),
                },
            ),
            (
                Provider::Tts,
                Limits {
                    rpm: self.tts_rpm.unwrap_or(0),
                    concurrency: self.tts_concurrency.unwrap_or(tier(2)),
                },
            ),
        ])
    }

    /// Checks what `rose api` needs beyond [`Config::require_scaled`]: the
    /// person-key secret, which every api replica must share (a secret made
    /// per process would make every person a stranger on the next replica).
    ///
    /// # Errors
    /// [`ConfigError`] naming `ROSE_PERSON_KEY_SECRET` when unset.
    pub fn require_person_key_secret(&self) -> Result<(), ConfigError> {
        if self.person_key_secret.is_some() {
            return Ok(());
        }
        Err(ConfigError {
            problems: vec![(
                "ROSE_PERSON_KEY_SECRET".to_owned(),
                format!(
                    "required for `rose api` (at least {MIN_SECRET_CHARS} characters, the same on every replica; `openssl rand -hex 32`)"
                ),
            )],
        })
    }

    /// Checks what the scaled roles (`rose api|worker|scheduler`) need.
    ///
    /// # Errors
    /// [`ConfigError`] naming `DATABASE_URL` and/or `REDIS_URL` when unset.
    pub fn require_scaled(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.database_url.is_none() {
            problems.push((
                "DATABASE_URL".to_owned(),
                "required for this role (postgres://… on the scaled deployment)".to_owned(),
            ));
        }
        if self.redis_url.is_none() {
            problems.push((
                "REDIS_URL".to_owned(),
                "required for this role (redis://…)".to_owned(),
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_apply_to_an_empty_environment() {
        let c = Config::from_map(&HashMap::new()).expect("defaults are valid");
        assert_eq!(c.port, 8080);
        assert_eq!(c.memory_top_k, 3);
        assert_eq!(c.groq_base_url, DEFAULT_GROQ_BASE_URL);
        assert_eq!(c.tts_provider, TtsProvider::ElevenLabs);
        assert!(c.uses_simulator());
        assert!(
            matches!(c.embedded_database_url(), DatabaseUrl::Sqlite(u) if u.contains("rose.db"))
        );
    }

    #[test]
    fn every_bad_variable_is_named_in_one_line() {
        let err = Config::from_map(&vars(&[
            ("PORT", "eighty"),
            ("MEMORY_TOP_K", "0"),
            ("DATABASE_URL", "mysql://x"),
            ("TTS_PROVIDER", "polly"),
            ("GROQ_BASE_URL", "ftp://x"),
        ]))
        .expect_err("invalid");
        let line = err.to_string();
        assert!(!line.contains('\n'));
        for var in [
            "PORT",
            "MEMORY_TOP_K",
            "DATABASE_URL",
            "TTS_PROVIDER",
            "GROQ_BASE_URL",
        ] {
            assert!(line.contains(var), "{var} missing from {line}");
        }
        assert_eq!(err.problems.len(), 5);
    }

    #[test]
    fn allowed_origins_are_checked() {
        let c = Config::from_map(&vars(&[(
            "ALLOWED_ORIGINS",
            "https://app.example, http://localhost:3000/",
        )]))
        .expect("valid");
        assert_eq!(
            c.allowed_origins,
            ["https://app.example", "http://localhost:3000"]
        );
        for bad in ["*", "app.example", "https://app.example/path", "ftp://x"] {
            let err = Config::from_map(&vars(&[("ALLOWED_ORIGINS", bad)])).expect_err(bad);
            assert!(err.to_string().contains("ALLOWED_ORIGINS"), "{bad}");
        }
    }

    #[test]
    fn parses_set_values() {
        let c = Config::from_map(&vars(&[
            ("PORT", "9000"),
            ("DATABASE_URL", "postgres://localhost/rose"),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("GROQ_API_KEY", "gsk_x"),
            ("GROQ_BASE_URL", "http://127.0.0.1:9090/openai/v1/"),
            ("TTS_PROVIDER", "espeak"),
            ("LOG_FORMAT", "json"),
        ]))
        .expect("valid");
        assert_eq!(c.port, 9000);
        assert!(matches!(c.database_url, Some(DatabaseUrl::Postgres(_))));
        assert_eq!(c.groq_base_url, "http://127.0.0.1:9090/openai/v1");
        assert_eq!(c.tts_provider, TtsProvider::Espeak);
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(!c.uses_simulator());
        assert!(c.require_scaled().is_ok());
    }

    #[test]
    fn scaled_roles_need_database_and_redis() {
        let c = Config::from_map(&HashMap::new()).expect("valid");
        let err = c.require_scaled().expect_err("missing");
        let line = err.to_string();
        assert!(
            line.contains("DATABASE_URL") && line.contains("REDIS_URL"),
            "{line}"
        );
    }

    #[test]
    fn the_crisis_resource_has_a_default_and_is_checked() {
        let c = Config::from_map(&HashMap::new()).expect("valid");
        assert_eq!(c.crisis_resource, CrisisResource::international());
        let c = Config::from_map(&vars(&[(
            "ROSE_CRISIS_RESOURCES",
            r#"{"text": "Call or text 988.", "url": "tel:988"}"#,
        )]))
        .expect("valid");
        assert_eq!(c.crisis_resource.url, "tel:988");
        let c = Config::from_map(&vars(&[(
            "ROSE_CRISIS_RESOURCES",
            "Samaritans, 116 123|https://www.samaritans.org",
        )]))
        .expect("valid");
        assert_eq!(c.crisis_resource.text, "Samaritans, 116 123");
        let err = Config::from_map(&vars(&[
            ("ROSE_CRISIS_RESOURCES", "Help|ftp://x"),
            ("PORT", "eighty"),
        ]))
        .expect_err("bad");
        let line = err.to_string();
        assert!(
            line.contains("ROSE_CRISIS_RESOURCES") && line.contains("PORT"),
            "{line}"
        );
    }

    #[test]
    fn webhook_secret_must_be_whsec() {
        let err = Config::from_map(&vars(&[("ROSE_WEBHOOK_SECRET", "plain")])).expect_err("bad");
        assert!(err.to_string().contains("ROSE_WEBHOOK_SECRET"));
        let ok = Config::from_map(&vars(&[(
            "ROSE_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )]));
        assert!(ok.is_ok());
    }

    #[test]
    fn the_admin_token_is_long_enough_or_refused() {
        let almost = "x".repeat(31);
        for short in ["adm", "  adm  ", almost.as_str()] {
            let err = Config::from_map(&vars(&[("ROSE_ADMIN_TOKEN", short)])).expect_err(short);
            assert_eq!(err.problems.len(), 1, "{err}");
            assert_eq!(err.problems[0].0, "ROSE_ADMIN_TOKEN", "{err}");
            assert!(err.to_string().contains("32"), "{err}");
            assert!(
                !err.to_string().contains(short.trim()),
                "the token is not echoed: {err}"
            );
        }
        let token = "x".repeat(32);
        let c = Config::from_map(&vars(&[("ROSE_ADMIN_TOKEN", &token)])).expect("valid");
        assert!(c.admin_token.is_some());
        let c = Config::from_map(&HashMap::new()).expect("valid");
        assert!(c.admin_token.is_none(), "unset: the admin api is off");
    }

    #[test]
    fn schedules_are_cron_named_when_wrong() {
        let c =
            Config::from_map(&vars(&[("ROSE_SCHEDULE_STALE_JOBS", "*/5 * * * *")])).expect("valid");
        assert_eq!(
            c.schedules.stale_jobs, "0 */5 * * * *",
            "five fields get second 0"
        );
        assert_eq!(c.schedules.backup, "0 0 2 * * *");
        let err =
            Config::from_map(&vars(&[("ROSE_SCHEDULE_BACKUP", "every night")])).expect_err("bad");
        assert_eq!(err.problems.len(), 1);
        assert!(err.to_string().contains("ROSE_SCHEDULE_BACKUP"), "{err}");
        let err = Config::from_map(&vars(&[("ROSE_SCHEDULE_AUDIO_CLEANUP", "0 61 * * * *")]))
            .expect_err("bad");
        assert!(
            err.to_string().contains("ROSE_SCHEDULE_AUDIO_CLEANUP"),
            "{err}"
        );
    }
}
