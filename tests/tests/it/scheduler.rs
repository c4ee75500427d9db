//! The maintenance scheduler: leadership across replicas on one Redis, and
//! each job on rows of known ages, on both deployments.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rose_scheduler::{Task, run_task};
use rose_shared::domain::{SessionId, now_ms};
use rose_shared::memory::{DIMENSIONS, NewMemory};
use rose_shared::queue::{Queue, VOICE_QUEUE};
use rose_tests::{AppOptions, Deployment, SPOKEN_WAV, TestApp, spawn_app, spawn_app_with, unique};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(30);
const HOUR_MS: i64 = 3_600_000;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn submit(app: &TestApp, session: &str, audio: &[u8]) -> String {
    let response = app.upload(session, audio, None).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    body["job_id"].as_str().expect("job_id").to_owned()
}

async fn finished(app: &TestApp, session: &str, audio: &[u8]) -> Value {
    let id = submit(app, session, audio).await;
    let job = app.wait_for_job(&id, LIMIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    job
}

/// `(runner, tick)` of every scheduled run of `name`, oldest first.
async fn runs(app: &TestApp, name: &str) -> Vec<(String, i64)> {
    let sql = "SELECT runner, scheduled_for FROM schedule_runs \
               WHERE name = $1 AND scheduled_for IS NOT NULL ORDER BY scheduled_for";
    match &app.rose.db {
        rose_shared::store::Database::Sqlite(pool) => {
            sqlx::query_as(sql).bind(name).fetch_all(pool).await
        }
        rose_shared::store::Database::Postgres(pool) => {
            sqlx::query_as(sql).bind(name).fetch_all(pool).await
        }
    }
    .expect("runs")
}

#[tokio::test]
async fn two_schedulers_run_each_tick_once_and_a_standby_takes_over() {
    let never = "0 0 0 1 1 *";
    let app = spawn_app_with(
        Deployment::Scaled,
        AppOptions {
            no_worker: true,
            env: env(&[
                ("ROSE_SCHEDULE_STALE_JOBS", "* * * * * *"),
                ("ROSE_SCHEDULE_AUDIO_CLEANUP", never),
                ("ROSE_SCHEDULE_SESSION_CLEANUP", never),
                ("ROSE_SCHEDULE_MEMORY_PRUNING", never),
                ("ROSE_SCHEDULER_LEASE_MS", "1000"),
            ]),
            ..AppOptions::default()
        },
    )
    .await;
    let token = CancellationToken::new();
    let first = tokio::spawn(rose_scheduler::run(
        app.rose.clone(),
        "first".to_owned(),
        token.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = tokio::spawn(rose_scheduler::run(
        app.rose.clone(),
        "second".to_owned(),
        token.clone(),
    ));

    // Both replicas fire every second; only the leader runs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = runs(&app, "stale_jobs").await;
    assert!(before.len() >= 3, "a run per second: {before:?}");
    let runners: HashSet<&str> = before.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(runners.len(), 1, "one leader ran every tick: {before:?}");
    let ticks: HashSet<i64> = before.iter().map(|(_, t)| *t).collect();
    assert_eq!(ticks.len(), before.len(), "no tick ran twice: {before:?}");

    // The leader dies without releasing its lease: the standby takes over.
    let leader = before[0].0.clone();
    let (dead, survivor) = if leader == "first" {
        (first, second)
    } else {
        (second, first)
    };
    dead.abort();
    let killed_at = now_ms();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = runs(&app, "stale_jobs").await;
    let taken_over: Vec<&(String, i64)> = after.iter().filter(|(r, _)| *r != leader).collect();
    assert!(
        !taken_over.is_empty(),
        "the standby ran after the leader died: {after:?}"
    );
    // How soon is a figure, not an assertion (machines are noisy).
    eprintln!(
        "first tick after the leader died: {} ms later (lease 1 s)",
        taken_over[0].1 - killed_at
    );
    let ticks: HashSet<i64> = after.iter().map(|(_, t)| *t).collect();
    assert_eq!(ticks.len(), after.len(), "no tick ran twice: {after:?}");
    let failed = app
        .scalar("SELECT COUNT(*) FROM schedule_runs WHERE outcome <> 'ok'")
        .await;
    assert_eq!(failed, 0);

    token.cancel();
    let _ = survivor.await;
    app.stop().await;
}

/// Reply audio older than the retention loses its bytes and answers
/// `expired`; fresh audio stays.
async fn audio_cleanup(app: TestApp) {
    let session = app.start_session().await;
    let old = finished(&app, &session, SPOKEN_WAV).await;
    let fresh = finished(&app, &session, SPOKEN_WAV).await;
    let old_audio = old["result"]["audio_url"]
        .as_str()
        .expect("audio")
        .to_owned();
    let fresh_audio = fresh["result"]["audio_url"]
        .as_str()
        .expect("audio")
        .to_owned();
    let old_id = old_audio.rsplit('/').next().expect("id");
    let aged = now_ms() - 25 * HOUR_MS;
    app.execute(&format!(
        "UPDATE audio SET created_at = {aged} WHERE id = '{old_id}'"
    ))
    .await;

    let report = run_task(&app.rose, Task::AudioCleanup, None, "test")
        .await
        .expect("run")
        .expect("recorded");
    assert_eq!(report.outcome, "ok", "{report:?}");
    assert_eq!(report.counts["deleted"], 1, "{report:?}");

    let gone = app
        .http
        .get(format!("{}{old_audio}", app.url))
        .send()
        .await
        .expect("get");
    assert_eq!(gone.status(), 404);
    let body: Value = gone.json().await.expect("json");
    assert_eq!(body["error"]["code"], "expired");
    let kept = app
        .http
        .get(format!("{}{fresh_audio}", app.url))
        .send()
        .await
        .expect("get");
    assert_eq!(kept.status(), 200);
    let recorded = app
        .scalar(
            "SELECT COUNT(*) FROM schedule_runs WHERE name = 'audio_cleanup' AND outcome = 'ok'",
        )
        .await;
    assert_eq!(recorded, 1);
    app.stop().await;
}

#[tokio::test]
async fn embedded_audio_cleanup_expires_only_old_audio() {
    audio_cleanup(spawn_app(Deployment::Embedded).await).await;
}

#[tokio::test]
async fn scaled_audio_cleanup_expires_only_old_audio() {
    audio_cleanup(spawn_app(Deployment::Scaled).await).await;
}

/// Sessions idle past the retention are erased with their turns, jobs,
/// audio and memories; active ones stay whole.
async fn session_cleanup(app: TestApp) {
    let (old_user, fresh_user) = (unique("old"), unique("fresh"));
    let old = app.start_session_for(&old_user).await;
    let fresh = app.start_session_for(&fresh_user).await;
    finished(
        &app,
        &old,
        &rose_shared::audio::build_wav(16_000, &[0; 1_600], Some("My mother loved the sea.")),
    )
    .await;
    finished(
        &app,
        &fresh,
        &rose_shared::audio::build_wav(16_000, &[0; 1_600], Some("My father loved jazz.")),
    )
    .await;
    app.wait_completed(rose_shared::queue::MEMORY_QUEUE, 2, LIMIT)
        .await;
    assert_eq!(
        app.rose.memory.store.count(&old_user).await.expect("count"),
        1
    );
    let idle = now_ms() - 8 * 24 * HOUR_MS;
    app.execute(&format!(
        "UPDATE sessions SET last_active_at = {idle} WHERE id = '{old}'"
    ))
    .await;

    let report = run_task(&app.rose, Task::SessionCleanup, None, "test")
        .await
        .expect("run")
        .expect("recorded");
    assert_eq!(report.outcome, "ok", "{report:?}");
    assert_eq!(report.counts["deleted"], 1, "{report:?}");
    assert_eq!(report.counts["memories_deleted"], 1, "{report:?}");

    for table in ["turns", "voice_jobs", "audio"] {
        let left = app
            .scalar(&format!(
                "SELECT COUNT(*) FROM {table} WHERE session_id = '{old}'"
            ))
            .await;
        assert_eq!(left, 0, "{table} of the idle session");
        let kept = app
            .scalar(&format!(
                "SELECT COUNT(*) FROM {table} WHERE session_id = '{fresh}'"
            ))
            .await;
        assert!(kept > 0, "{table} of the active session");
    }
    assert_eq!(app.count_rows("sessions").await, 1);
    assert_eq!(
        app.rose.memory.store.count(&old_user).await.expect("count"),
        0
    );
    assert_eq!(
        app.rose
            .memory
            .store
            .count(&fresh_user)
            .await
            .expect("count"),
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn embedded_session_cleanup_erases_idle_sessions_and_their_memories() {
    session_cleanup(spawn_app(Deployment::Embedded).await).await;
}

#[tokio::test]
async fn scaled_session_cleanup_erases_idle_sessions_and_their_memories() {
    session_cleanup(spawn_app(Deployment::Scaled).await).await;
}

fn one_hot(i: usize) -> Vec<f32> {
    let mut v = vec![0.0; DIMENSIONS];
    v[i % DIMENSIONS] = 1.0;
    v
}

/// Memories of owners that no longer exist go; each person keeps their
/// most recently recalled up to the cap.
async fn memory_pruning(app: TestApp) {
    let store = &app.rose.memory.store;
    let person = unique("person");
    app.start_session_for(&person).await;
    let ghost = unique("ghost");
    let mut ids = Vec::new();
    for (i, owner) in [&person, &person, &person, &person, &ghost]
        .into_iter()
        .enumerate()
    {
        let id = store
            .add(NewMemory {
                owner: owner.clone(),
                session_id: SessionId::new(),
                text: format!("Fact number {i}."),
                vector: one_hot(i),
                source_job: None,
            })
            .await
            .expect("add");
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // The two oldest were recalled last: they are the ones to keep.
    tokio::time::sleep(Duration::from_millis(3)).await;
    store.touch(&person, &ids[..2]).await.expect("touch");
    // Profile lines follow the same rule: the ghost's go, the person's stay.
    let people = &app.rose.store;
    for owner in [&person, &ghost] {
        people
            .add_profile_line(owner, "name", "Their name is Ada.", None)
            .await
            .expect("line");
        people
            .forget(owner, "Their dog is Rex.", None)
            .await
            .expect("forget");
    }

    let report = run_task(&app.rose, Task::MemoryPruning, None, "test")
        .await
        .expect("run")
        .expect("recorded");
    assert_eq!(report.outcome, "ok", "{report:?}");
    assert_eq!(report.counts["orphaned"], 1, "{report:?}");
    assert_eq!(report.counts["over_cap"], 2, "{report:?}");
    assert_eq!(report.counts["profile_lines_orphaned"], 1, "{report:?}");
    assert!(people.profile(&ghost).await.expect("profile").is_empty());
    assert!(
        !people
            .is_forgotten(&ghost, "Their dog is Rex.", None)
            .await
            .expect("forgotten")
    );
    assert_eq!(people.profile(&person).await.expect("profile").len(), 1);
    assert!(
        people
            .is_forgotten(&person, "Their dog is Rex.", None)
            .await
            .expect("forgotten")
    );
    assert_eq!(store.count(&ghost).await.expect("count"), 0);
    assert_eq!(store.count(&person).await.expect("count"), 2);
    let left: HashSet<String> = store
        .search(&person, &one_hot(0), 10)
        .await
        .expect("search")
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(left, ids[..2].iter().cloned().collect::<HashSet<_>>());
    app.stop().await;
}

fn capped() -> AppOptions {
    AppOptions {
        env: env(&[("ROSE_MEMORY_CAP_PER_USER", "2")]),
        ..AppOptions::default()
    }
}

#[tokio::test]
async fn embedded_memory_pruning_drops_orphans_and_caps_per_person() {
    memory_pruning(spawn_app_with(Deployment::Embedded, capped()).await).await;
}

#[tokio::test]
async fn scaled_memory_pruning_drops_orphans_and_caps_per_person() {
    memory_pruning(spawn_app_with(Deployment::Scaled, capped()).await).await;
}

/// A job left `processing` whose message was lost with its worker is pushed
/// again and finishes; a stale job the queue still holds is left to it.
async fn reaper(app: TestApp) {
    let session = app.start_session().await;
    let lost = submit(&app, &session, SPOKEN_WAV).await;
    // The message is lost (its worker died with it).
    match &app.rose.queue {
        Queue::Redis(q) => {
            let mut conn = q.connection();
            let _: i64 = redis::cmd("DEL")
                .arg(q.stream_key(VOICE_QUEUE))
                .query_async(&mut conn)
                .await
                .expect("del");
        }
        Queue::Sqlite(_) => {
            app.execute("DELETE FROM Jobs").await;
        }
    }
    let held = submit(&app, &session, SPOKEN_WAV).await;
    let stale = now_ms() - 10 * 60_000;
    app.execute(&format!(
        "UPDATE voice_jobs SET status = 'processing', stage = 'stt', attempts = 1, updated_at = {stale} WHERE id = '{lost}'"
    ))
    .await;
    app.execute(&format!(
        "UPDATE voice_jobs SET updated_at = {stale} WHERE id = '{held}'"
    ))
    .await;

    let report = run_task(&app.rose, Task::StaleJobs, None, "test")
        .await
        .expect("run")
        .expect("recorded");
    assert_eq!(report.counts["stale"], 2, "{report:?}");
    assert_eq!(
        report.counts["count"], 1,
        "only the lost one is pushed again: {report:?}"
    );
    assert_eq!(app.queued_messages().await, 2);

    // A worker starts: both finish, each once.
    let token = CancellationToken::new();
    let options = rose_worker::WorkerOptions {
        concurrency: 4,
        name: rose_worker::unique_name(),
    };
    let worker = tokio::spawn(rose_worker::run(app.rose.clone(), options, token.clone()));
    for id in [&lost, &held] {
        let job = app.wait_for_job(id, LIMIT).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    assert_eq!(app.sim.count("transcriptions"), 2, "one STT call per job");
    token.cancel();
    let _ = worker.await;
    app.stop().await;
}

fn idle() -> AppOptions {
    AppOptions {
        no_worker: true,
        ..AppOptions::default()
    }
}

#[tokio::test]
async fn embedded_reaper_finishes_a_job_its_worker_lost() {
    reaper(spawn_app_with(Deployment::Embedded, idle()).await).await;
}

#[tokio::test]
async fn scaled_reaper_finishes_a_job_its_worker_lost() {
    reaper(spawn_app_with(Deployment::Scaled, idle()).await).await;
}

/// The schedules through the admin API: hidden without a token, refused
/// with a wrong one, listed and run by hand with the right one.
#[tokio::test]
async fn admin_api_lists_and_runs_schedules() {
    let closed = spawn_app(Deployment::Embedded).await;
    let hidden = closed
        .http
        .get(format!("{}/api/admin/schedules", closed.url))
        .bearer_auth("anything")
        .send()
        .await
        .expect("get");
    assert_eq!(
        hidden.status(),
        404,
        "no token configured: the routes do not exist"
    );
    closed.stop().await;

    let app = spawn_app_with(
        Deployment::Embedded,
        AppOptions {
            env: env(&[("ROSE_ADMIN_TOKEN", "s3cret-admin-token-0123456789abcdef")]),
            ..AppOptions::default()
        },
    )
    .await;
    let url = format!("{}/api/admin/schedules", app.url);
    let anonymous = app.http.get(&url).send().await.expect("get");
    assert_eq!(anonymous.status(), 401);
    let wrong = app
        .http
        .get(&url)
        .bearer_auth("s3cret-admin-tokem")
        .send()
        .await
        .expect("get");
    assert_eq!(wrong.status(), 401);
    let body: Value = wrong.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unauthorized");

    let run = app
        .http
        .post(format!("{url}/stale_jobs/run"))
        .bearer_auth("s3cret-admin-token-0123456789abcdef")
        .send()
        .await
        .expect("run");
    assert_eq!(run.status(), 200);
    let run: Value = run.json().await.expect("json");
    assert_eq!(run["run"]["outcome"], "ok", "{run}");
    assert_eq!(run["run"]["counts"]["count"], 0, "{run}");

    let unknown = app
        .http
        .post(format!("{url}/defragment/run"))
        .bearer_auth("s3cret-admin-token-0123456789abcdef")
        .send()
        .await
        .expect("run");
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.expect("json");
    assert_eq!(body["error"]["code"], "schedule_not_found");

    let listed: Value = app
        .http
        .get(&url)
        .bearer_auth("s3cret-admin-token-0123456789abcdef")
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let schedules = listed["schedules"].as_array().expect("schedules");
    let names: Vec<&str> = schedules
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    for name in [
        "audio_cleanup",
        "session_cleanup",
        "memory_pruning",
        "stale_jobs",
    ] {
        assert!(names.contains(&name), "{listed}");
    }
    let stale = schedules
        .iter()
        .find(|s| s["name"] == "stale_jobs")
        .expect("stale_jobs");
    assert_eq!(stale["cron"], "0 * * * * *");
    assert!(
        stale["next_run"]
            .as_str()
            .is_some_and(|t| t.ends_with(":00.000Z")),
        "{stale}"
    );
    assert_eq!(stale["last_run"]["triggered_by"], "manual", "{stale}");
    assert_eq!(stale["last_run"]["outcome"], "ok", "{stale}");
    let audio = schedules
        .iter()
        .find(|s| s["name"] == "audio_cleanup")
        .expect("audio_cleanup");
    assert!(audio["last_run"].is_null(), "{audio}");
    app.stop().await;
}

/// A callback still `pending` whose task was lost is queued again.
async fn reaper_requeues_lost_callbacks(app: TestApp) {
    let session = app.start_session().await;
    let id = submit(&app, &session, SPOKEN_WAV).await;
    let old = now_ms() - 10 * 60_000;
    app.execute(&format!(
        "UPDATE voice_jobs SET status = 'succeeded', callback_url = 'http://127.0.0.1:9/hook', \
         callback_status = 'pending', updated_at = {old} WHERE id = '{id}'"
    ))
    .await;
    let held = |app: &TestApp| {
        let queue = app.rose.queue.clone();
        async move {
            queue
                .held_ids(rose_shared::queue::CALLBACK_QUEUE)
                .await
                .expect("held")
                .expect("listable")
        }
    };
    assert!(!held(&app).await.contains(&id));
    let report = run_task(&app.rose, Task::StaleJobs, None, "test")
        .await
        .expect("run")
        .expect("recorded");
    assert_eq!(report.counts["callbacks"], 1, "{report:?}");
    assert!(
        held(&app).await.contains(&id),
        "the delivery is queued again"
    );
    // Held now: a second run leaves it alone.
    let again = run_task(&app.rose, Task::StaleJobs, None, "test")
        .await
        .expect("run")
        .expect("recorded");
    assert_eq!(again.counts["callbacks"], 0, "{again:?}");
    app.stop().await;
}

#[tokio::test]
async fn embedded_reaper_requeues_lost_callbacks() {
    reaper_requeues_lost_callbacks(spawn_app_with(Deployment::Embedded, idle()).await).await;
}

#[tokio::test]
async fn scaled_reaper_requeues_lost_callbacks() {
    reaper_requeues_lost_callbacks(spawn_app_with(Deployment::Scaled, idle()).await).await;
}

/// A run whose process died mid-run (its row still says `running`, its
/// heartbeat long silent) is shown and then recorded as `abandoned`; a run
/// still beating stays `running`.
async fn abandoned_runs(app: TestApp) {
    const TOKEN: &str = "an-admin-token-of-at-least-32-characters";
    let now = now_ms();
    let insert = |id: &str, name: &str, alive_at: i64| {
        format!(
            "INSERT INTO schedule_runs (id, name, scheduled_for, triggered_by, runner, started_at, outcome, alive_at) \
             VALUES ('{id}', '{name}', NULL, 'manual', 'gone-runner', {alive_at}, 'running', {alive_at})"
        )
    };
    app.execute(&insert("dead-run", "backup", now - 10 * 60_000))
        .await;
    app.execute(&insert("live-run", "memory_pruning", now))
        .await;
    let schedules: Value = app
        .http
        .get(format!("{}/api/admin/schedules", app.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let outcome = |name: &str| {
        schedules["schedules"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["name"] == name))
            .map(|s| s["last_run"]["outcome"].clone())
            .unwrap_or_else(|| panic!("{name} in {schedules}"))
    };
    assert_eq!(outcome("backup"), "abandoned", "{schedules}");
    assert_eq!(outcome("memory_pruning"), "running", "{schedules}");

    run_task(&app.rose, Task::StaleJobs, None, "test")
        .await
        .expect("run")
        .expect("ran");
    let recorded = |id: &'static str| {
        let sql = format!(
            "SELECT COUNT(*) FROM schedule_runs WHERE id = '{id}' AND outcome = 'abandoned'"
        );
        let app = &app;
        async move { app.scalar(&sql).await }
    };
    assert_eq!(recorded("dead-run").await, 1, "recorded as abandoned");
    assert_eq!(recorded("live-run").await, 0, "a live run is left alone");
    app.stop().await;
}

fn with_admin() -> AppOptions {
    AppOptions {
        env: env(&[(
            "ROSE_ADMIN_TOKEN",
            "an-admin-token-of-at-least-32-characters",
        )]),
        ..AppOptions::default()
    }
}

#[tokio::test]
async fn embedded_runs_of_a_dead_process_are_abandoned() {
    abandoned_runs(spawn_app_with(Deployment::Embedded, with_admin()).await).await;
}

#[tokio::test]
async fn scaled_runs_of_a_dead_process_are_abandoned() {
    abandoned_runs(spawn_app_with(Deployment::Scaled, with_admin()).await).await;
}
