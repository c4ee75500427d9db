//! Faults survived, with real processes and real services: a hundred voice
//! jobs through `rose api` and two `rose worker` processes on PostgreSQL
//! and Redis, a fault injected while they run, and then the promises
//! checked — every job ends `succeeded`, no provider stage was paid twice
//! (the simulator's request log), nothing was stored twice, and new work is
//! served once the fault has cleared.
//!
//! Each case owns what it breaks: a Redis it starts on its own port, a TCP
//! gate in front of PostgreSQL it can close, its own `rose api` process, a
//! tmpfs it mounts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rose_sim::{Latency, SimConfig};
use rose_tests::process::{Proc, free_port, wait_for_api};
use rose_tests::{
    AppOptions, Deployment, SPOKEN_WAV, TestApp, audio_form, spawn_app_with, start_session_at,
    wait_for_job_at,
};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

const JOBS: usize = 100;
const LIMIT: Duration = Duration::from_secs(120);

/// Provider latencies long enough that a fault lands while jobs are
/// between stages, short enough that a hundred jobs take seconds.
fn sim() -> SimConfig {
    SimConfig {
        latency: Latency {
            stt: Duration::from_millis(100),
            llm: Duration::from_millis(150),
            tts: Duration::from_millis(100),
        },
        // Every request of the run is accounted for.
        log_capacity: 100_000,
        ..SimConfig::default()
    }
}

/// Where this case's processes write their logs (kept for a failure's
/// post-mortem under `target/fault-logs/`).
fn log_dir(case: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/fault-logs")
        .join(case);
    std::fs::create_dir_all(&dir).expect("log dir");
    dir
}

/// A `rose` process with `env`, its output in `logs/name.log`.
fn rose(args: &[&str], env: &HashMap<String, String>, logs: &Path, name: &str) -> Proc {
    let log = std::fs::File::create(logs.join(format!("{name}.log"))).expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rose"));
    cmd.args(args)
        .env_remove("GROQ_API_KEY")
        .env_remove("ELEVENLABS_API_KEY")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env("RUST_LOG", "warn")
        .envs(env)
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
    Proc(cmd.spawn().expect("start rose"))
}

/// A Redis of this test's own, on its own port and directory.
struct OwnRedis {
    port: u16,
    aof: bool,
    also: Vec<String>,
    dir: tempfile::TempDir,
    proc: Option<Proc>,
}

impl OwnRedis {
    async fn start(aof: bool) -> Self {
        Self::start_on(aof, &[]).await
    }

    /// Listening on loopback and on `also`.
    async fn start_on(aof: bool, also: &[&str]) -> Self {
        let mut redis = Self {
            port: free_port(),
            aof,
            also: also.iter().map(|a| (*a).to_owned()).collect(),
            dir: tempfile::tempdir().expect("redis dir"),
            proc: None,
        };
        redis.run().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn run(&mut self) {
        let aof = if self.aof { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(&self.also)
            // The namespace's worker is not on loopback; this Redis is the test's own.
            .args(["--protected-mode", "no"])
            .args(["--save", "", "--appendonly", aof, "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server)");
        self.proc = Some(Proc(child));
        let client = redis::Client::open(self.url()).expect("redis url");
        let started = Instant::now();
        loop {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
                // With AOF on, Redis answers LOADING until the file is read.
                if pong.is_ok() {
                    return;
                }
            }
            assert!(started.elapsed() < LIMIT, "redis did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Dies as a machine losing power would, then comes back on the same
    /// port and directory after `down`.
    async fn crash_and_restart(&mut self, down: Duration) {
        if let Some(p) = self.proc.take() {
            p.kill9();
        }
        tokio::time::sleep(down).await;
        self.run().await;
    }
}

/// A TCP gate in front of PostgreSQL: open, it forwards; cut, it drops
/// every connection through it and refuses new ones, as a database that
/// went away does.
struct Gate {
    port: u16,
    open: watch::Sender<bool>,
}

impl Gate {
    async fn start(upstream: SocketAddr) -> Self {
        Self::start_on("127.0.0.1", upstream).await
    }

    /// A gate listening on `host` (an address of this machine).
    async fn start_on(host: &str, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind((host, 0)).await.expect("bind gate");
        let port = listener.local_addr().expect("gate addr").port();
        let (open, rx) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut rx = rx.clone();
                if !*rx.borrow() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Self { port, open }
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn mend(&self) {
        self.open.send_replace(true);
    }
}

/// `host:port` of a `postgres://user@host:port/db…` URL.
fn pg_host(url: &str) -> &str {
    let rest = url.split_once('@').map_or(url, |(_, r)| r);
    rest.split('/').next().expect("host")
}

/// The environment every role of a case shares.
fn fleet_env(app: &TestApp, database_url: String, redis_url: String) -> HashMap<String, String> {
    HashMap::from([
        ("DATABASE_URL".to_owned(), database_url),
        ("REDIS_URL".to_owned(), redis_url),
        ("ROSE_REDIS_PREFIX".to_owned(), app.prefix.clone()),
        ("ROSE_SIMULATOR_URL".to_owned(), app.sim.url.clone()),
        (
            "ROSE_PERSON_KEY_SECRET".to_owned(),
            rose_tests::PERSON_KEY_SECRET.to_owned(),
        ),
        (
            "EMBEDDING_MODEL_DIR".to_owned(),
            rose_tests::model_dir().display().to_string(),
        ),
        // A hundred jobs from one address and one session: no abuse limits.
        ("ROSE_RATE_LIMIT_VOICE_PER_MIN".to_owned(), "0".to_owned()),
        ("ROSE_RATE_LIMIT_PER_MIN".to_owned(), "0".to_owned()),
        ("ROSE_SESSION_MAX_IN_FLIGHT".to_owned(), "0".to_owned()),
        // Longer than any outage here: a worker that could not renew its
        // messages while Redis was away keeps them (a visibility timeout
        // shorter than an outage hands a live worker's jobs to another, and
        // both pay for the stage in progress).
        (
            "ROSE_QUEUE_VISIBILITY_TIMEOUT_SECS".to_owned(),
            "10".to_owned(),
        ),
        ("ROSE_WORKER_CONCURRENCY".to_owned(), "25".to_owned()),
        ("ROSE_JOB_RETRY_BASE_MS".to_owned(), "200".to_owned()),
        ("ROSE_JOB_RETRY_CAP_MS".to_owned(), "2000".to_owned()),
    ])
}

/// A case's world: the test's own app (its schema, simulator and a view
/// of the database for the checks), with `rose api` and two `rose worker`
/// processes on it.
struct Fleet {
    app: TestApp,
    env: HashMap<String, String>,
    logs: PathBuf,
    api: Option<Proc>,
    api_port: u16,
    workers: Vec<Proc>,
    _scheduler: Option<Proc>,
}

impl Fleet {
    async fn start(case: &str, redis_url: String, extra: &[(&str, &str)]) -> Self {
        Self::start_with(case, redis_url, str::to_owned, extra).await
    }

    /// `database` turns the test's own database URL into the one the
    /// processes are given (through a gate, under a name).
    async fn start_with(
        case: &str,
        redis_url: String,
        database: impl FnOnce(&str) -> String,
        extra: &[(&str, &str)],
    ) -> Self {
        let app = spawn_app_with(
            Deployment::Scaled,
            AppOptions {
                no_worker: true,
                sim: sim(),
                env: HashMap::from([("REDIS_URL".to_owned(), redis_url.clone())]),
            },
        )
        .await;
        let database_url = database(&app.database_url().expect("scaled"));
        let mut env = fleet_env(&app, database_url, redis_url);
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let logs = log_dir(case);
        let workers = vec![
            rose(&["worker"], &env, &logs, "worker-1"),
            rose(&["worker"], &env, &logs, "worker-2"),
        ];
        let mut fleet = Self {
            app,
            env,
            logs,
            api: None,
            api_port: free_port(),
            workers,
            _scheduler: None,
        };
        fleet.start_api().await;
        fleet
    }

    async fn start_api(&mut self) {
        let port = self.api_port.to_string();
        self.api = Some(rose(
            &["api", "--port", &port],
            &self.env,
            &self.logs,
            "api",
        ));
        self.app.url = format!("http://127.0.0.1:{port}");
        wait_for_api(&self.app.http, &self.app.url).await;
    }

    fn start_scheduler(&mut self) {
        self._scheduler = Some(rose(&["scheduler"], &self.env, &self.logs, "scheduler"));
    }

    /// Uploads `n` recordings; the ids of those the api took.
    async fn upload(&self, session: &str, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let response = self.app.upload(session, SPOKEN_WAV, None).await;
            let status = response.status();
            let body: Value = response.json().await.expect("answer json");
            assert_eq!(status, 202, "upload taken: {body}");
            ids.push(body["job_id"].as_str().expect("job_id").to_owned());
        }
        ids
    }

    /// Starts a session and uploads [`JOBS`] recordings; returns the
    /// session once `replies` reply streams have begun, so a fault lands
    /// while jobs are in flight.
    async fn load(&self, replies: u64) -> String {
        let session = self.app.start_session().await;
        self.upload(&session, JOBS).await;
        self.in_flight(replies).await;
        session
    }

    /// Waits until the simulator has seen `n` chat requests.
    async fn in_flight(&self, n: u64) {
        self.wait_until("jobs in flight", async || {
            self.app.sim.count("chat_completions") >= n
        })
        .await;
    }

    async fn wait_until(&self, what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + LIMIT;
        while !check().await {
            assert!(
                Instant::now() < deadline,
                "timed out: {what} (logs in {})",
                self.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every job row ends `succeeded`; each was transcribed, answered and
    /// spoken once; each stored its two turns once. Then new work is served.
    async fn assert_whole(&self, session: &str) {
        let logs = self.logs.display().to_string();
        self.wait_until("every job ends", async || {
            let rows = self.app.count_rows("voice_jobs").await;
            self.app.count_jobs("succeeded").await + self.app.count_jobs("failed").await == rows
        })
        .await;
        let rows = self.app.count_rows("voice_jobs").await;
        assert_eq!(
            self.app.count_jobs("succeeded").await,
            rows,
            "every job succeeded (logs in {logs})"
        );
        assert_eq!(
            self.app.sim.count("transcriptions"),
            rows as u64,
            "each recording transcribed once"
        );
        assert_eq!(
            self.app.reply_requests().await.len(),
            rows as usize,
            "each reply asked for once"
        );
        let spoken = self.app.sim.spoken_texts().await.len();
        let chunks = self
            .app
            .scalar(
                "SELECT COUNT(*) FROM voice_jobs, json_array_elements(chunks::json) c \
                 WHERE c->>'audio_id' IS NOT NULL",
            )
            .await;
        assert_eq!(spoken as i64, chunks, "each sentence spoken once");
        assert_eq!(
            self.app.count_rows("turns").await,
            2 * rows,
            "each job's turns stored once"
        );
        // New work after the fault.
        for id in self.upload(session, 3).await {
            let job = self.app.wait_for_job(&id, LIMIT).await;
            assert_eq!(job["status"], "succeeded", "served after the fault: {job}");
        }
    }

    /// New work is served (after a fault whose stages were paid again).
    async fn assert_whole_again(&self, session: &str) {
        for id in self.upload(session, 3).await {
            let job = self.app.wait_for_job(&id, LIMIT).await;
            assert_eq!(job["status"], "succeeded", "served after the fault: {job}");
        }
    }

    async fn stop(self) {
        drop(self.workers);
        drop(self.api);
        self.app.stop().await;
    }
}

/// Redis dies mid-load and comes back with its append-only file: the
/// queued and claimed messages are all still there, and every job ends once.
#[tokio::test]
async fn redis_killed_mid_load_with_aof_loses_nothing() {
    let mut redis = OwnRedis::start(true).await;
    // Few at once, so most messages wait in Redis when it dies.
    let fleet = Fleet::start(
        "redis_aof",
        redis.url(),
        &[("ROSE_WORKER_CONCURRENCY", "5")],
    )
    .await;
    let session = fleet.load(10).await;
    redis.crash_and_restart(Duration::from_secs(2)).await;
    fleet.assert_whole(&session).await;
    fleet.stop().await;
}

/// Redis dies mid-load and comes back empty (no persistence): the messages
/// are gone, and the scheduler's stale-job reaper pushes the jobs again from
/// their rows; their checkpoints keep every stage paid once.
#[tokio::test]
async fn redis_killed_mid_load_without_persistence_loses_nothing() {
    let mut redis = OwnRedis::start(false).await;
    let mut fleet = Fleet::start(
        "redis_volatile",
        redis.url(),
        &[
            ("ROSE_STALE_JOB_SECS", "3"),
            ("ROSE_SCHEDULE_STALE_JOBS", "*/2 * * * * *"),
            // Few at once, so most messages still wait in Redis when it dies.
            ("ROSE_WORKER_CONCURRENCY", "5"),
        ],
    )
    .await;
    fleet.start_scheduler();
    let session = fleet.load(10).await;
    redis.crash_and_restart(Duration::from_secs(1)).await;
    fleet.assert_whole(&session).await;
    let requeued = fleet
        .app
        .scalar(
            "SELECT COALESCE(SUM(CAST(counts::json->>'count' AS BIGINT)), 0)::BIGINT \
             FROM schedule_runs WHERE name = 'stale_jobs'",
        )
        .await;
    assert!(requeued > 0, "the reaper pushed the lost jobs again");
    fleet.stop().await;
}

/// Rose's connections to PostgreSQL are terminated by the server mid-load
/// (`pg_terminate_backend`, as an administrator or a failover does): the
/// pools open new ones, and the jobs caught in a write wait and resume.
#[tokio::test]
async fn postgres_connections_killed_mid_load_lose_nothing() {
    // The processes name their connections, so only theirs are terminated.
    let name = rose_tests::unique("rose_fault");
    let fleet = Fleet::start_with(
        "pg_terminate",
        rose_tests::redis_url(),
        |own| format!("{own}&application_name={name}"),
        &[],
    )
    .await;
    let session = fleet.app.start_session().await;
    fleet.upload(&session, JOBS).await;
    let terminate = format!(
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{name}'"
    );
    let mut terminated = 0;
    for at in [10, 40, 70] {
        fleet.in_flight(at).await;
        terminated += fleet.app.scalar(&terminate).await;
    }
    assert!(terminated >= 3, "Rose's connections were terminated");
    fleet.assert_whole(&session).await;
    fleet.stop().await;
}

/// PostgreSQL out of reach for 10 s mid-load: uploads answer 503
/// `database_unavailable` and store nothing, `/api/health` says the
/// database is down, the jobs in flight wait without spending their
/// attempts, and everything finishes once it is back.
#[tokio::test]
async fn postgres_unreachable_for_10_s_answers_503_and_recovers() {
    let own = rose_tests::database_url();
    let upstream: SocketAddr = tokio::net::lookup_host(pg_host(&own))
        .await
        .expect("resolve the database host")
        .next()
        .expect("an address");
    let gate = Arc::new(Gate::start(upstream).await);
    let through = format!("127.0.0.1:{}", gate.port);
    let fleet = Fleet::start_with(
        "pg_unreachable",
        rose_tests::redis_url(),
        |own| own.replacen(pg_host(own), &through, 1),
        &[],
    )
    .await;
    let session = fleet.load(10).await;
    gate.cut();
    let cut_at = Instant::now();
    let rows = fleet.app.count_rows("voice_jobs").await;
    for _ in 0..5 {
        let response = fleet.app.upload(&session, SPOKEN_WAV, None).await;
        assert_eq!(
            response.status(),
            503,
            "an upload while the database is away"
        );
        assert!(response.headers().contains_key("retry-after"));
        let body: Value = response.json().await.expect("error json");
        assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
    }
    let health = fleet
        .app
        .http
        .get(format!("{}/api/health", fleet.app.url))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 503);
    let health: Value = health.json().await.expect("health json");
    assert_eq!(health["services"]["database"], "unhealthy", "{health}");
    assert_eq!(
        fleet.app.count_rows("voice_jobs").await,
        rows,
        "nothing stored from the refused uploads"
    );
    tokio::time::sleep_until(cut_at + Duration::from_secs(10)).await;
    gate.mend();
    fleet.assert_whole(&session).await;
    let health = fleet
        .app
        .http
        .get(format!("{}/api/health", fleet.app.url))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200, "healthy again");
    fleet.stop().await;
}

/// Hostile provider answers mid-load — a transcript of 50 MB, replies that
/// are not JSON or never end, speech that is not audio: each call is
/// refused within Rose's limits and tried again, the jobs succeed (a
/// sentence whose speech was not audio is delivered as text), and both
/// workers serve on.
#[tokio::test]
async fn hostile_answers_mid_load_are_retried_and_the_workers_serve_on() {
    let mut fleet = Fleet::start(
        "hostile",
        rose_tests::redis_url(),
        &[("ROSE_PROVIDER_TIMEOUT_SECS", "2")],
    )
    .await;
    let session = fleet.app.start_session().await;
    fleet.app.sim.hostile("transcriptions", "huge", 2).await;
    fleet
        .app
        .sim
        .hostile("chat_completions", "not_json", 2)
        .await;
    fleet
        .app
        .sim
        .hostile("chat_completions", "endless", 1)
        .await;
    fleet.app.sim.hostile("text_to_speech", "not_json", 2).await;
    fleet.upload(&session, JOBS).await;
    fleet
        .wait_until("every job ends", async || {
            let rows = fleet.app.count_rows("voice_jobs").await;
            fleet.app.count_jobs("succeeded").await + fleet.app.count_jobs("failed").await == rows
        })
        .await;
    let pending: Value = reqwest::get(format!("{}/__sim/faults", fleet.app.sim.url))
        .await
        .expect("faults")
        .json()
        .await
        .expect("faults json");
    assert_eq!(
        pending["hostile"],
        serde_json::json!([]),
        "every hostile answer was given"
    );
    let rows = fleet.app.count_rows("voice_jobs").await;
    assert_eq!(
        fleet.app.count_jobs("succeeded").await,
        rows,
        "every job succeeded"
    );
    // The simulator counts the requests it answered properly (a hostile
    // answer is given before the count).
    assert_eq!(
        fleet.app.sim.count("transcriptions") as i64,
        rows,
        "each recording transcribed once"
    );
    let replies = fleet.app.reply_requests().await.len() as i64;
    assert!(
        (rows..=rows + 3).contains(&replies),
        "each reply asked for once, besides the hostile answers: {replies} for {rows} jobs"
    );
    assert_eq!(
        fleet.app.count_rows("turns").await,
        2 * rows,
        "each job's turns stored once"
    );
    let logs = fleet.logs.display().to_string();
    for worker in &mut fleet.workers {
        let exited = worker.0.try_wait().expect("worker status");
        assert!(
            exited.is_none(),
            "a worker exited: {exited:?} (logs in {logs})"
        );
    }
    fleet.assert_whole_again(&session).await;
    fleet.stop().await;
}

/// The voice queue's messages as (entry id, job id) pairs.
async fn queued_job_ids(redis_url: &str, prefix: &str) -> Vec<String> {
    let client = redis::Client::open(redis_url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{prefix}:q:voice:stream"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("xrange");
    entries
        .ids
        .iter()
        .filter_map(|e| e.get::<String>("id"))
        .collect()
}

/// `rose api` killed with SIGKILL while uploads stream in, then started
/// again: no job row lacks its recording, no queue message lacks its row,
/// and every job the api took (and any it wrote but could not push before
/// it died, which the stale-job reaper pushes) ends once.
#[tokio::test]
async fn api_killed_during_uploads_leaves_nothing_half_stored() {
    let mut fleet = Fleet::start(
        "api_killed",
        rose_tests::redis_url(),
        &[
            ("ROSE_STALE_JOB_SECS", "3"),
            ("ROSE_SCHEDULE_STALE_JOBS", "*/2 * * * * *"),
        ],
    )
    .await;
    fleet.start_scheduler();
    let session = fleet.app.start_session().await;
    // Ten clients uploading side by side while the api dies under them.
    let url = fleet.app.url.clone();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (url, session, http) = (url.clone(), session.clone(), fleet.app.http.clone());
        clients.spawn(async move {
            let mut taken = 0;
            for _ in 0..10 {
                let sent = http
                    .post(format!("{url}/api/voice/process"))
                    .multipart(audio_form(&session, SPOKEN_WAV))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 202 => taken += 1,
                    Ok(r) => panic!("an upload answered {}", r.status()),
                    // The api died under this one.
                    Err(_) => break,
                }
            }
            taken
        });
    }
    fleet
        .wait_until("uploads are coming in", async || {
            fleet.app.count_rows("voice_jobs").await >= 30
        })
        .await;
    fleet.api.as_ref().expect("the api").kill9();
    let mut taken = 0;
    while let Some(n) = clients.join_next().await {
        taken += n.expect("a client");
    }
    let orphans = fleet
        .app
        .scalar(
            "SELECT COUNT(*) FROM voice_jobs j WHERE j.input_audio_id IS NULL \
             OR NOT EXISTS (SELECT 1 FROM audio a WHERE a.id = j.input_audio_id)",
        )
        .await;
    assert_eq!(orphans, 0, "no job row without its recording");
    for id in queued_job_ids(&rose_tests::redis_url(), &fleet.app.prefix).await {
        let rows = fleet
            .app
            .scalar(&format!(
                "SELECT COUNT(*) FROM voice_jobs WHERE id = '{id}'"
            ))
            .await;
        assert_eq!(rows, 1, "queue message {id} has its row");
    }
    let rows = fleet.app.count_rows("voice_jobs").await;
    assert!(rows >= taken, "every upload answered 202 has its row");
    fleet.api = None;
    fleet.start_api().await;
    fleet.assert_whole(&session).await;
    fleet.stop().await;
}

/// A tmpfs mounted for this test, unmounted when it ends.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// `None` when this machine cannot mount one (not root).
    fn mount(megabytes: u32) -> Option<Self> {
        let dir = tempfile::tempdir().expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(Self(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Fills what is left of `dir`'s file system with 1 MB files, then frees
/// `keep` of them; returns the rest, to free later.
fn fill(dir: &Path, keep: usize) -> Vec<PathBuf> {
    use std::io::Write;
    let block = vec![7u8; 1 << 20];
    let mut files = Vec::new();
    for i in 0.. {
        let path = dir.join(format!("filler-{i}"));
        let mut file = std::fs::File::create(&path).expect("filler");
        let written = file.write_all(&block).and_then(|()| file.sync_all());
        files.push(path);
        if written.is_err() {
            break;
        }
    }
    for path in files.drain(files.len().saturating_sub(keep + 1)..) {
        std::fs::remove_file(path).expect("free a filler");
    }
    files
}

/// The embedded deployment with its data directory on a 32 MB tmpfs that
/// fills up: uploads answer 507 `storage_full` and store nothing, the SQLite
/// file stays whole (`PRAGMA integrity_check`), and once space is freed the
/// jobs caught by the full disk finish and new uploads are taken.
#[tokio::test]
async fn a_full_disk_answers_507_and_recovers() {
    let Some(tmpfs) = Tmpfs::mount(32) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root and must mount a tmpfs"
        );
        eprintln!("skipped: a_full_disk_answers_507_and_recovers: mounting a tmpfs needs root");
        return;
    };
    let sim = rose_tests::TestSim::start(sim()).await;
    let port = free_port();
    let env = HashMap::from([
        (
            "ROSE_DATA_DIR".to_owned(),
            tmpfs.path().display().to_string(),
        ),
        ("ROSE_SIMULATOR_URL".to_owned(), sim.url.clone()),
        (
            "EMBEDDING_MODEL_DIR".to_owned(),
            rose_tests::model_dir().display().to_string(),
        ),
        ("ROSE_RATE_LIMIT_VOICE_PER_MIN".to_owned(), "0".to_owned()),
        ("ROSE_RATE_LIMIT_PER_MIN".to_owned(), "0".to_owned()),
        ("ROSE_SESSION_MAX_IN_FLIGHT".to_owned(), "0".to_owned()),
        ("ROSE_JOB_RETRY_BASE_MS".to_owned(), "200".to_owned()),
        ("ROSE_JOB_RETRY_CAP_MS".to_owned(), "2000".to_owned()),
    ]);
    let logs = log_dir("disk_full");
    let _serve = rose(
        &["serve", "--port", &port.to_string()],
        &env,
        &logs,
        "serve",
    );
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_for_api(&http, &base).await;
    let session = start_session_at(&http, &base).await;
    let upload = async || {
        http.post(format!("{base}/api/voice/process"))
            .multipart(audio_form(&session, SPOKEN_WAV))
            .send()
            .await
            .expect("upload")
    };
    let database = tmpfs.path().join("rose.db");
    let pool = rose_tests::sqlite_pool(&database).await;
    let rows = async || -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM voice_jobs")
            .fetch_one(&pool)
            .await
            .expect("count jobs")
    };
    let fillers = fill(tmpfs.path(), 3);
    let mut taken = Vec::new();
    let mut refused = None;
    for _ in 0..60 {
        let before = rows().await;
        let response = upload().await;
        match response.status().as_u16() {
            202 => {
                let body: Value = response.json().await.expect("accepted");
                taken.push(body["job_id"].as_str().expect("job_id").to_owned());
            }
            507 => {
                let body: Value = response.json().await.expect("error json");
                assert_eq!(
                    rows().await,
                    before,
                    "nothing stored from the refused upload"
                );
                refused = Some(body);
                break;
            }
            other => panic!(
                "an upload on a filling disk answered {other} (logs in {})",
                logs.display()
            ),
        }
    }
    let refused = refused.expect("the disk filled up");
    assert_eq!(refused["error"]["code"], "storage_full", "{refused}");
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await
        .expect("integrity check");
    assert_eq!(check, "ok", "the database is whole on a full disk");
    for path in fillers {
        std::fs::remove_file(path).expect("free space");
    }
    let response = upload().await;
    assert_eq!(response.status(), 202, "taken once space is freed");
    let body: Value = response.json().await.expect("accepted");
    taken.push(body["job_id"].as_str().expect("job_id").to_owned());
    for id in &taken {
        let job = wait_for_job_at(&http, &base, id, LIMIT).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    pool.close().await;
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace joined to this one by a veth pair: `host` is this
/// side's address, `inside` the namespace's. Setting the link down is a
/// partition: packets are dropped, connections hang, nothing is refused.
struct Island {
    name: String,
    link: String,
    host: String,
}

impl Island {
    /// `None` when this machine cannot make one (not root).
    fn create() -> Option<Self> {
        let probe = Command::new("ip").args(["netns", "list"]).output().ok()?;
        if !probe.status.success() || not_root() {
            return None;
        }
        let id = ulid::Ulid::generate().to_string().to_lowercase();
        let tag = &id[id.len() - 6..];
        let octet = 16 + (u32::from_str_radix(&id[id.len() - 2..], 32).unwrap_or(0) % 200);
        let island = Self {
            name: format!("rose-part-{tag}"),
            link: format!("rp{tag}h"),
            host: format!("10.201.{octet}.1"),
        };
        let inside = format!("10.201.{octet}.2");
        let peer = format!("rp{tag}n");
        ip(&["netns", "add", &island.name]);
        ip(&[
            "link",
            "add",
            &island.link,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &island.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", island.host),
            "dev",
            &island.link,
        ]);
        ip(&["link", "set", &island.link, "up"]);
        let ns = |args: &[&str]| {
            let mut all = vec!["-n", island.name.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        };
        ns(&["link", "set", "lo", "up"]);
        ns(&["addr", "add", &format!("{inside}/30"), "dev", &peer]);
        ns(&["link", "set", &peer, "up"]);
        Some(island)
    }

    fn cut(&self) {
        ip(&["link", "set", &self.link, "down"]);
    }

    fn mend(&self) {
        ip(&["link", "set", &self.link, "up"]);
    }
}

impl Drop for Island {
    fn drop(&mut self) {
        // Deleting the namespace deletes the pair with it.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// Whether this process lacks root (namespaces need it).
fn not_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() != "0")
        .unwrap_or(true)
}

/// The voice messages `consumer_pid`'s worker holds (its consumer name
/// carries its process id).
async fn held_by(redis_url: &str, prefix: &str, consumer_pid: u32) -> usize {
    let client = redis::Client::open(redis_url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let pending: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(format!("{prefix}:q:voice:stream"))
        .arg("workers")
        .arg("-")
        .arg("+")
        .arg(1000)
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    let mark = format!("-{consumer_pid}-");
    pending
        .ids
        .iter()
        .filter(|p| p.consumer.contains(&mark))
        .count()
}

/// A worker cut off from Redis, PostgreSQL and the providers for 20 s by a
/// network partition (its own namespace, the veth link set down): its jobs
/// are reclaimed and finished by the other worker; when the link is back it
/// finishes none of them a second time — at most the one stage each had in
/// flight when the link went down is paid again — and it serves on.
#[tokio::test]
async fn a_worker_partitioned_for_20_s_finishes_nothing_twice() {
    let Some(island) = Island::create() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root and must make a network namespace"
        );
        eprintln!(
            "skipped: a_worker_partitioned_for_20_s_finishes_nothing_twice: network namespaces need root"
        );
        return;
    };
    let redis = OwnRedis::start_on(true, &[island.host.as_str()]).await;
    let own = rose_tests::database_url();
    let postgres: SocketAddr = tokio::net::lookup_host(pg_host(&own))
        .await
        .expect("resolve the database host")
        .next()
        .expect("an address");
    let pg_gate = Gate::start_on(&island.host, postgres).await;
    let mut fleet = Fleet::start(
        "partition",
        redis.url(),
        &[
            // Shorter than the partition: the other worker takes its jobs.
            ("ROSE_QUEUE_VISIBILITY_TIMEOUT_SECS", "5"),
            ("ROSE_WORKER_CONCURRENCY", "10"),
        ],
    )
    .await;
    let sim: SocketAddr = fleet
        .app
        .sim
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("sim address");
    let sim_gate = Gate::start_on(&island.host, sim).await;
    // The first worker moves to the island, reaching everything through it.
    let mut env = fleet.env.clone();
    let own_url = fleet.app.database_url().expect("scaled");
    env.insert(
        "DATABASE_URL".to_owned(),
        own_url.replacen(
            pg_host(&own_url),
            &format!("{}:{}", island.host, pg_gate.port),
            1,
        ),
    );
    env.insert(
        "REDIS_URL".to_owned(),
        format!("redis://{}:{}", island.host, redis.port),
    );
    env.insert(
        "ROSE_SIMULATOR_URL".to_owned(),
        format!("http://{}:{}", island.host, sim_gate.port),
    );
    let exec = [
        "netns",
        "exec",
        island.name.as_str(),
        env!("CARGO_BIN_EXE_rose"),
        "worker",
    ];
    let log = std::fs::File::create(fleet.logs.join("islander.log")).expect("log");
    let islander = Proc(
        Command::new("ip")
            .args(exec)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env("RUST_LOG", "warn")
            .envs(&env)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the islander"),
    );
    fleet.workers[0] = islander;
    let pid = fleet.workers[0].0.id();
    let session = fleet.app.start_session().await;
    fleet.upload(&session, JOBS).await;
    let mut held = 0;
    fleet
        .wait_until("the islander holds jobs", async || {
            held = held_by(&redis.url(), &fleet.app.prefix, pid).await;
            held > 0
        })
        .await;
    island.cut();
    let cut_at = Instant::now();
    fleet
        .wait_until("the islander's jobs are reclaimed", async || {
            held_by(&redis.url(), &fleet.app.prefix, pid).await == 0
        })
        .await;
    tokio::time::sleep_until(cut_at + Duration::from_secs(20)).await;
    island.mend();
    fleet
        .wait_until("every job ends", async || {
            fleet.app.count_jobs("succeeded").await == JOBS as i64
        })
        .await;
    // Let the islander come back and try to go on with what it held.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = fleet.app.count_rows("voice_jobs").await;
    assert_eq!(fleet.app.count_jobs("succeeded").await, rows);
    assert_eq!(
        fleet.app.count_rows("turns").await,
        2 * rows,
        "no job's turns stored twice"
    );
    let repeated = fleet
        .app
        .scalar(
            "SELECT COUNT(*) FROM (SELECT j.id, c->>'index' FROM voice_jobs j, \
             json_array_elements(j.chunks::json) c GROUP BY 1, 2 HAVING COUNT(*) > 1) r",
        )
        .await;
    assert_eq!(repeated, 0, "no sentence announced twice");
    let paid = fleet.app.sim.count("transcriptions") as i64 - rows;
    let replies = fleet.app.reply_requests().await.len() as i64 - rows;
    let spoken = fleet.app.sim.spoken_texts().await.len() as i64;
    let sentences = fleet
        .app
        .scalar("SELECT COUNT(*) FROM voice_jobs, json_array_elements(chunks::json) c")
        .await;
    eprintln!(
        "partition: the islander held {held} jobs; paid again: {paid} transcriptions, {replies} replies, {} sentences' speech",
        spoken - sentences
    );
    assert!(
        paid + replies <= held as i64,
        "at most the stage in flight paid again for each of the {held} jobs the islander held \
         ({paid} transcriptions and {replies} replies more than jobs)"
    );
    assert!(
        fleet.workers[0].0.try_wait().expect("status").is_none(),
        "the islander is still up (logs in {})",
        fleet.logs.display()
    );
    fleet.assert_whole_again(&session).await;
    drop(sim_gate);
    drop(pg_gate);
    fleet.stop().await;
    drop(redis);
}
