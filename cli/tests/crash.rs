//! No job lost when a worker dies: real `rose worker` and `rose serve`
//! processes killed with SIGKILL while jobs are in flight.

use std::process::{Command, Stdio};
use std::time::Duration;

use rose_sim::{Latency, SimConfig};
use rose_tests::process::{Proc, free_port};
use rose_tests::{AppOptions, Deployment, SPOKEN_WAV, TestSim, spawn_app_with};
use serde_json::Value;
use tokio::time::Instant;

const JOBS: usize = 100;

fn rose(args: &[&str], env: &[(&str, String)]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rose"));
    cmd.args(args)
        .env_remove("GROQ_API_KEY")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env("RUST_LOG", "warn")
        // A hundred jobs from one address and one session: no abuse limits.
        .env("ROSE_RATE_LIMIT_VOICE_PER_MIN", "0")
        .env("ROSE_RATE_LIMIT_PER_MIN", "0")
        .env("ROSE_SESSION_MAX_IN_FLIGHT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().expect("start rose"))
}

/// Latencies long enough that a kill lands while jobs are mid-pipeline.
fn slow_sim() -> SimConfig {
    SimConfig {
        latency: Latency {
            stt: Duration::from_millis(150),
            llm: Duration::from_millis(250),
            tts: Duration::from_millis(150),
        },
        ..SimConfig::default()
    }
}

async fn until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_worker_killed_with_jobs_in_flight_loses_none_on_redis() {
    // The api in this process; two worker processes on the same schema and prefix.
    let app = spawn_app_with(
        Deployment::Scaled,
        AppOptions {
            no_worker: true,
            sim: slow_sim(),
            ..AppOptions::default()
        },
    )
    .await;
    let env = vec![
        ("DATABASE_URL", app.database_url().expect("scaled")),
        ("REDIS_URL", rose_tests::redis_url()),
        ("ROSE_REDIS_PREFIX", app.prefix.clone()),
        ("ROSE_SIMULATOR_URL", app.sim.url.clone()),
        ("ROSE_QUEUE_VISIBILITY_TIMEOUT_SECS", "2".to_owned()),
        ("ROSE_WORKER_CONCURRENCY", "25".to_owned()),
    ];
    let doomed = rose(&["worker"], &env);
    let _survivor = rose(&["worker"], &env);

    let session = app.start_session().await;
    for _ in 0..JOBS {
        assert_eq!(app.upload(&session, SPOKEN_WAV, None).await.status(), 202);
    }
    until("jobs are in flight", Duration::from_secs(30), async || {
        app.sim.count("chat_completions") >= 10
    })
    .await;
    doomed.kill9();
    until("all jobs succeed", Duration::from_secs(60), async || {
        app.count_jobs("succeeded").await == JOBS as i64
    })
    .await;
    assert_eq!(app.count_jobs("failed").await, 0);
    assert_eq!(
        app.count_rows("turns").await,
        2 * JOBS as i64,
        "each job's turns stored exactly once"
    );
    app.stop().await;
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

#[tokio::test]
async fn rose_serve_killed_and_restarted_loses_none() {
    let sim = TestSim::start(slow_sim()).await;
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let env = vec![
        ("ROSE_DATA_DIR", dir.path().display().to_string()),
        ("ROSE_SIMULATOR_URL", sim.url.clone()),
        ("ROSE_WORKER_CONCURRENCY", "25".to_owned()),
    ];
    let serve = || rose(&["serve", "--port", &port.to_string()], &env);
    let http = reqwest::Client::new();
    let first = serve();
    until("rose serve answers", Duration::from_secs(30), async || {
        get_json(&http, &format!("{base}/api/health"))
            .await
            .is_some()
    })
    .await;
    let session: Value = http
        .post(format!("{base}/api/session/start"))
        .send()
        .await
        .expect("session")
        .json()
        .await
        .expect("json");
    let session = session["session_id"].as_str().expect("id").to_owned();
    let mut jobs = Vec::new();
    for _ in 0..JOBS {
        let form = reqwest::multipart::Form::new()
            .part(
                "audio",
                reqwest::multipart::Part::bytes(SPOKEN_WAV.to_vec()).file_name("a.wav"),
            )
            .text("session_id", session.clone());
        let body: Value = http
            .post(format!("{base}/api/voice/process"))
            .multipart(form)
            .send()
            .await
            .expect("upload")
            .json()
            .await
            .expect("json");
        jobs.push(body["job_id"].as_str().expect("job id").to_owned());
    }
    until("jobs are in flight", Duration::from_secs(30), async || {
        sim.count("chat_completions") >= 10
    })
    .await;
    first.kill9();
    drop(first);
    let _second = serve();
    until(
        "all jobs succeed after the restart",
        Duration::from_secs(90),
        async || {
            for id in &jobs {
                let Some(job) = get_json(&http, &format!("{base}/api/jobs/{id}")).await else {
                    return false;
                };
                if job["status"] != "succeeded" {
                    return false;
                }
            }
            true
        },
    )
    .await;
    // Each job's two turns, once: read the file the server writes.
    let url = format!("sqlite://{}", dir.path().join("rose.db").display());
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .expect("open the database");
    let turns: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM turns")
        .fetch_one(&pool)
        .await
        .expect("count turns");
    assert_eq!(turns, 2 * JOBS as i64);
}

/// Two worker processes share one budget: the simulator, as strict as Groq's
/// free tier (here with a 2 s window so the test is short), never has to
/// refuse a request, and never sees more speech calls at once than allowed.
#[tokio::test]
async fn two_workers_stay_within_the_providers_limits() {
    let window = Duration::from_secs(2);
    let app = spawn_app_with(
        Deployment::Scaled,
        AppOptions {
            no_worker: true,
            sim: SimConfig {
                profile: Some(rose_sim::Profile::RateLimited),
                limits: rose_sim::SimLimits {
                    stt_rpm: 20,
                    llm_rpm: 20,
                    tts_concurrency: 2,
                    window,
                },
                latency: Latency {
                    tts: Duration::from_millis(20),
                    ..Latency::default()
                },
                ..SimConfig::default()
            },
            ..AppOptions::default()
        },
    )
    .await;
    // Rose's budget sits a little under the provider's, as an operator sets it.
    let env = vec![
        ("DATABASE_URL", app.database_url().expect("scaled")),
        ("REDIS_URL", rose_tests::redis_url()),
        ("ROSE_REDIS_PREFIX", app.prefix.clone()),
        ("ROSE_SIMULATOR_URL", app.sim.url.clone()),
        ("ROSE_WORKER_CONCURRENCY", "25".to_owned()),
        ("ROSE_STT_RPM", "16".to_owned()),
        ("ROSE_LLM_RPM", "16".to_owned()),
        ("ROSE_TTS_CONCURRENCY", "2".to_owned()),
        ("ROSE_RATE_WINDOW_MS", window.as_millis().to_string()),
    ];
    let _a = rose(&["worker"], &env);
    let _b = rose(&["worker"], &env);
    let n = 200;
    let session = app.start_session().await;
    for _ in 0..n {
        assert_eq!(app.upload(&session, SPOKEN_WAV, None).await.status(), 202);
    }
    until("all jobs succeed", Duration::from_secs(60), async || {
        app.count_jobs("succeeded").await == n as i64
    })
    .await;
    let stats = serde_json::to_value(app.sim.sim.stats()).expect("stats");
    for endpoint in ["transcriptions", "chat_completions", "text_to_speech"] {
        assert_eq!(stats["refused"][endpoint], 0, "{endpoint} refused: {stats}");
        assert_eq!(stats["failed"][endpoint], 0, "{stats}");
    }
    assert!(
        stats["max_concurrent"]["text_to_speech"]
            .as_u64()
            .unwrap_or(99)
            <= 2,
        "{stats}"
    );
    // What the provider enforces is its own window, and it refused nothing
    // (above). The most requests that *arrived* within any sliding window is
    // shown, not asserted: Rose admits at most 16 per sliding window, but on
    // a loaded machine requests admitted in different windows can arrive
    // bunched (their sending delayed by the scheduler), so that figure is a
    // timing measurement, not a behaviour.
    eprintln!(
        "most transcriptions arriving within one sliding window: {}",
        stats["max_in_window"]["transcriptions"]
    );
    assert_eq!(
        stats["requests"]["transcriptions"], n,
        "no call wasted on a refusal"
    );
    app.stop().await;
}

/// `(runner, tick)` of every scheduled `stale_jobs` run, oldest first.
async fn scheduled_runs(app: &rose_tests::TestApp) -> Vec<(String, i64)> {
    let sql = "SELECT runner, scheduled_for FROM schedule_runs \
               WHERE name = 'stale_jobs' AND scheduled_for IS NOT NULL ORDER BY scheduled_for";
    match &app.rose.db {
        rose_shared::store::Database::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await,
        rose_shared::store::Database::Sqlite(pool) => sqlx::query_as(sql).fetch_all(pool).await,
    }
    .expect("runs")
}

/// The pid in a runner name (`host-pid-random`).
fn pid_of(runner: &str) -> u32 {
    let mut parts = runner.rsplitn(3, '-');
    parts.next();
    parts
        .next()
        .and_then(|p| p.parse().ok())
        .expect("pid in runner name")
}

#[tokio::test]
async fn two_scheduler_processes_run_each_tick_once_and_survive_the_leaders_death() {
    let app = spawn_app_with(
        Deployment::Scaled,
        AppOptions {
            no_worker: true,
            ..AppOptions::default()
        },
    )
    .await;
    let never = "0 0 0 1 1 *".to_owned();
    let env = vec![
        ("DATABASE_URL", app.database_url().expect("scaled")),
        ("REDIS_URL", rose_tests::redis_url()),
        ("ROSE_REDIS_PREFIX", app.prefix.clone()),
        ("ROSE_SCHEDULE_STALE_JOBS", "* * * * * *".to_owned()),
        ("ROSE_SCHEDULE_AUDIO_CLEANUP", never.clone()),
        ("ROSE_SCHEDULE_SESSION_CLEANUP", never.clone()),
        ("ROSE_SCHEDULE_MEMORY_PRUNING", never.clone()),
        ("ROSE_SCHEDULE_BACKUP", never),
        ("ROSE_SCHEDULER_LEASE_MS", "1500".to_owned()),
    ];
    let one = rose(&["scheduler"], &env);
    let two = rose(&["scheduler"], &env);
    until("a few ticks ran", Duration::from_secs(30), async || {
        scheduled_runs(&app).await.len() >= 4
    })
    .await;
    let before = scheduled_runs(&app).await;
    let leader = before[0].0.clone();
    assert!(
        before.iter().all(|(runner, _)| *runner == leader),
        "only the leader runs: {before:?}"
    );
    let leader_pid = pid_of(&leader);
    let (doomed, _standby) = if one.0.id() == leader_pid {
        (one, two)
    } else {
        (two, one)
    };
    assert_eq!(doomed.0.id(), leader_pid, "the leader is one of ours");
    doomed.kill9();
    let killed = std::time::Instant::now();
    until(
        "the standby takes over",
        Duration::from_secs(15),
        async || {
            scheduled_runs(&app)
                .await
                .iter()
                .any(|(runner, _)| *runner != leader)
        },
    )
    .await;
    // How soon is a figure, not an assertion (machines are noisy): the lease
    // design bounds it by one lease period plus the next tick.
    eprintln!(
        "standby took over {:?} after the leader died (lease 1.5 s)",
        killed.elapsed()
    );
    let after = scheduled_runs(&app).await;
    let mut ticks: Vec<i64> = after.iter().map(|(_, t)| *t).collect();
    ticks.dedup();
    assert_eq!(ticks.len(), after.len(), "no tick ran twice: {after:?}");
    app.stop().await;
}

#[tokio::test]
async fn events_from_a_worker_process_reach_the_api_stream_in_order() {
    let app = spawn_app_with(
        Deployment::Scaled,
        AppOptions {
            no_worker: true,
            sim: slow_sim(),
            ..AppOptions::default()
        },
    )
    .await;
    let env = vec![
        ("DATABASE_URL", app.database_url().expect("scaled")),
        ("REDIS_URL", rose_tests::redis_url()),
        ("ROSE_REDIS_PREFIX", app.prefix.clone()),
        ("ROSE_SIMULATOR_URL", app.sim.url.clone()),
    ];
    let _worker = rose(&["worker"], &env);
    let session = app.start_session().await;
    let response = app.upload(&session, SPOKEN_WAV, None).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    let id = body["job_id"].as_str().expect("job_id").to_owned();
    let events =
        rose_tests::read_events(&app.http, &format!("{}/api/jobs/{id}/events", app.url)).await;
    // States only: spoken sentences are `audio` events between them.
    let names: Vec<&str> = events
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| *n != "audio")
        .collect();
    let order = ["queued", "stt", "memory", "llm", "tts", "succeeded"];
    let ranks: Vec<usize> = names
        .iter()
        .map(|n| order.iter().position(|o| o == n).expect("a known state"))
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] < w[1]), "in order: {names:?}");
    for expected in ["stt", "llm", "tts", "succeeded"] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    assert_eq!(names.last(), Some(&"succeeded"));
    app.stop().await;
}
