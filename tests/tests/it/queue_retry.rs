//! One retry policy on both deployments: a handler error (a store failure
//! injected with a real trigger, a panic) is retried with backoff by the
//! queue layer, the same way on SQLite and on Redis; a message naming no row
//! is acknowledged once; a message whose settlement failed is reclaimed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use apalis::prelude::*;
use futures::FutureExt;
use rose_shared::audio::build_wav;
use rose_shared::domain::{CallbackTask, JobId, MemoryTask, SessionId, SummaryTask, VoiceTask};
use rose_shared::queue::{
    CALLBACK_QUEUE, ConsumerOptions, MEMORY_QUEUE, Queue, RedisQueue, RetryPolicy, SUMMARY_QUEUE,
    SqliteQueue, VOICE_QUEUE,
};
use rose_tests::{
    AppOptions, Deployment, TestApp, delete_prefix, redis_url, spawn_app, spawn_app_with, unique,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(30);

async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Makes every `op` (`UPDATE`, `INSERT`) on `table` fail inside the database.
async fn inject_fault(app: &TestApp, op: &str, table: &str) {
    inject_fault_when(app, op, table, "TRUE").await;
}

/// Makes every `op` on `table` whose new row matches `when` (SQL on `NEW`) fail.
async fn inject_fault_when(app: &TestApp, op: &str, table: &str, when: &str) {
    match app.deployment {
        Deployment::Embedded => {
            app.execute(&format!(
                "CREATE TRIGGER injected_fault BEFORE {op} ON {table} WHEN {when} \
                 BEGIN SELECT RAISE(ABORT, 'injected store failure'); END"
            ))
            .await;
        }
        Deployment::Scaled => {
            app.execute(
                "CREATE FUNCTION injected_fault() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'injected store failure'; END $$",
            )
            .await;
            app.execute(&format!(
                "CREATE TRIGGER injected_fault BEFORE {op} ON {table} \
                 FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION injected_fault()"
            ))
            .await;
        }
    }
}

async fn heal_fault(app: &TestApp, table: &str) {
    match app.deployment {
        Deployment::Embedded => app.execute("DROP TRIGGER injected_fault").await,
        Deployment::Scaled => {
            app.execute(&format!("DROP TRIGGER injected_fault ON {table}"))
                .await
        }
    };
}

/// Failed attempts the queue layer scheduled again on `queue` (the same
/// figure on both carriers: retries, not counting the first attempt).
async fn retried(app: &TestApp, queue: &str) -> u64 {
    match &app.rose.queue {
        Queue::Redis(q) => q.stats(queue).await.expect("stats").retried,
        Queue::Sqlite(q) => {
            let n: i64 = sqlx::query_scalar(
                "SELECT COALESCE(SUM(attempts), 0) FROM Jobs WHERE job_type = $1",
            )
            .bind(queue)
            .fetch_one(q.pool())
            .await
            .expect("count attempts");
            u64::try_from(n).unwrap_or(0)
        }
    }
}

async fn dead(app: &TestApp, queue: &str) -> u64 {
    app.rose.queue.depth(queue).await.expect("depth").dead
}

async fn submit(app: &TestApp, audio: &[u8]) -> String {
    let session = app.start_session().await;
    let response = app.upload(&session, audio, None).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    body["job_id"].as_str().expect("job_id").to_owned()
}

/// The job's row cannot be written when its first attempt begins: the
/// attempt fails, the queue retries it with backoff (not once and for good),
/// and once the database heals the job succeeds.
async fn a_store_failure_is_retried(deployment: Deployment) {
    // Backoff long enough that the attempts are not spent before the test
    // heals the database.
    let app = spawn_app_with(
        deployment,
        AppOptions {
            env: HashMap::from([
                ("ROSE_JOB_RETRY_BASE_MS".to_owned(), "500".to_owned()),
                ("ROSE_JOB_RETRY_CAP_MS".to_owned(), "2000".to_owned()),
                ("ROSE_JOB_MAX_ATTEMPTS".to_owned(), "10".to_owned()),
            ]),
            ..AppOptions::default()
        },
    )
    .await;
    inject_fault(&app, "UPDATE", "voice_jobs").await;
    let job = submit(&app, rose_tests::SPOKEN_WAV).await;
    eventually(LIMIT, "a failed attempt scheduled again", || async {
        retried(&app, VOICE_QUEUE).await >= 1
    })
    .await;
    assert_eq!(dead(&app, VOICE_QUEUE).await, 0, "not buried");
    heal_fault(&app, "voice_jobs").await;
    let done = app.wait_for_job(&job, LIMIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    app.stop().await;
}

#[tokio::test]
async fn embedded_store_failure_is_retried_by_the_queue() {
    a_store_failure_is_retried(Deployment::Embedded).await;
}

#[tokio::test]
async fn scaled_store_failure_is_retried_by_the_queue() {
    a_store_failure_is_retried(Deployment::Scaled).await;
}

/// Recall fails (its table is gone), so the reply goes without memories;
/// then the reply's speech cannot be stored, so the job is run again after
/// its reply checkpoint. The second run still reports `degraded: ["memory"]`.
async fn degraded_memory_survives_a_redelivery(deployment: Deployment) {
    let app = spawn_app_with(
        deployment,
        AppOptions {
            env: HashMap::from([
                ("ROSE_JOB_RETRY_BASE_MS".to_owned(), "500".to_owned()),
                ("ROSE_JOB_RETRY_CAP_MS".to_owned(), "2000".to_owned()),
                ("ROSE_JOB_MAX_ATTEMPTS".to_owned(), "10".to_owned()),
            ]),
            ..AppOptions::default()
        },
    )
    .await;
    app.execute("ALTER TABLE memories RENAME TO memories_away")
        .await;
    inject_fault_when(&app, "INSERT", "audio", "NEW.kind = 'reply'").await;
    let job = submit(&app, rose_tests::SPOKEN_WAV).await;
    eventually(LIMIT, "the attempt after the reply failed", || async {
        retried(&app, VOICE_QUEUE).await >= 1
    })
    .await;
    heal_fault(&app, "audio").await;
    let done = app.wait_for_job(&job, LIMIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["result"]["degraded"],
        serde_json::json!(["memory"]),
        "{done}"
    );
    assert!(
        done["result"]["audio_url"].is_string(),
        "spoken the second time"
    );
    app.execute("ALTER TABLE memories_away RENAME TO memories")
        .await;
    app.stop().await;
}

#[tokio::test]
async fn embedded_degraded_memory_survives_a_redelivery() {
    degraded_memory_survives_a_redelivery(Deployment::Embedded).await;
}

#[tokio::test]
async fn scaled_degraded_memory_survives_a_redelivery() {
    degraded_memory_survives_a_redelivery(Deployment::Scaled).await;
}

/// A memory the extraction cannot store at first is stored once the store
/// heals: the task is retried by the queue, not dropped.
async fn a_memory_task_survives_a_store_failure(deployment: Deployment) {
    let app = spawn_app(deployment).await;
    inject_fault(&app, "INSERT", "memories").await;
    let audio = build_wav(16_000, &[0; 1_600], Some("My mother loved roses."));
    let job = submit(&app, &audio).await;
    let done = app.wait_for_job(&job, LIMIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    eventually(LIMIT, "the extraction retried", || async {
        retried(&app, MEMORY_QUEUE).await >= 1
    })
    .await;
    assert_eq!(app.count_rows("memories").await, 0);
    heal_fault(&app, "memories").await;
    eventually(LIMIT, "the memory stored", || async {
        app.count_rows("memories").await == 1
    })
    .await;
    assert_eq!(dead(&app, MEMORY_QUEUE).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn embedded_memory_task_survives_a_store_failure() {
    a_memory_task_survives_a_store_failure(Deployment::Embedded).await;
}

#[tokio::test]
async fn scaled_memory_task_survives_a_store_failure() {
    a_memory_task_survives_a_store_failure(Deployment::Scaled).await;
}

/// Messages naming rows that do not exist (a database restored from an
/// older backup) are acknowledged: none retried, none dead, none left.
async fn orphans_are_acknowledged(deployment: Deployment) {
    let app = spawn_app(deployment).await;
    let queue = &app.rose.queue;
    let job = JobId::new();
    queue
        .push_voice(&VoiceTask {
            job_id: job,
            request_id: None,
        })
        .await
        .expect("push voice");
    queue
        .push(
            MEMORY_QUEUE,
            &job.to_string(),
            &MemoryTask {
                job_id: job,
                attempt: 0,
            },
        )
        .await
        .expect("push memory");
    let session = SessionId::new();
    queue
        .push(
            SUMMARY_QUEUE,
            &session.to_string(),
            &SummaryTask {
                session_id: session,
                attempt: 0,
                close: false,
            },
        )
        .await
        .expect("push summary");
    queue
        .push(
            CALLBACK_QUEUE,
            &job.to_string(),
            &CallbackTask { job_id: job },
        )
        .await
        .expect("push callback");
    for name in [VOICE_QUEUE, MEMORY_QUEUE, SUMMARY_QUEUE, CALLBACK_QUEUE] {
        app.wait_completed(name, 1, LIMIT).await;
        app.wait_idle(name, LIMIT).await;
        assert_eq!(dead(&app, name).await, 0, "{name}: nothing dead");
        assert_eq!(retried(&app, name).await, 0, "{name}: nothing retried");
    }
    let metrics = rose_shared::metrics::render();
    assert!(
        metrics.contains("rose_orphan_messages_total"),
        "orphans are counted"
    );
    app.stop().await;
}

#[tokio::test]
async fn embedded_orphan_messages_are_acknowledged_once() {
    orphans_are_acknowledged(Deployment::Embedded).await;
}

#[tokio::test]
async fn scaled_orphan_messages_are_acknowledged_once() {
    orphans_are_acknowledged(Deployment::Scaled).await;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Touchy {
    n: u32,
}

/// Counts attempts; panics on the first.
#[derive(Clone, Default)]
struct Attempts(Arc<AtomicU32>);

impl Attempts {
    /// Counts one attempt; returns how many came before it.
    fn bump(&self) -> u32 {
        self.0.fetch_add(1, Ordering::SeqCst)
    }

    fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

async fn panics_once(_: Touchy, attempts: Data<Attempts>) -> Result<(), BoxDynError> {
    if attempts.bump() == 0 {
        panic!("a handler bug");
    }
    Ok(())
}

fn quick_retry(name: &str) -> ConsumerOptions {
    ConsumerOptions {
        retry: RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(10),
            cap: Duration::from_millis(20),
        },
        visibility_timeout: Duration::from_millis(600),
        ..ConsumerOptions::new(name)
    }
}

/// A panic in a handler fails that attempt; the message is retried and
/// finished, and the worker lives on: on each carrier.
#[tokio::test]
async fn a_panicking_handler_fails_its_attempt_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    let pool = rose_tests::sqlite_pool(&dir.path().join("q.db")).await;
    SqliteQueue::setup(&pool).await.expect("setup");
    let queue = SqliteQueue::new(pool.clone());
    queue
        .push("touchy", "1", &Touchy { n: 1 })
        .await
        .expect("push");
    let attempts = Attempts::default();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(
        WorkerBuilder::new("touchy")
            .backend(queue.backend::<Touchy>("touchy", quick_retry("touchy")))
            .layer(rose_worker::catch_panics())
            .data(attempts.clone())
            .build(panics_once)
            .run_until(stop.clone().cancelled_owned().map(Ok::<(), std::io::Error>)),
    );
    eventually(LIMIT, "the retry finished it", || async {
        let done: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM Jobs WHERE job_type = 'touchy' AND status = 'Done'",
        )
        .fetch_one(&pool)
        .await
        .expect("count");
        done == 1
    })
    .await;
    assert_eq!(attempts.get(), 2);
    stop.cancel();
    worker
        .await
        .expect("join")
        .expect("the worker survived the panic");
}

#[tokio::test]
async fn a_panicking_handler_fails_its_attempt_on_redis() {
    let prefix = unique("rose_test");
    let q = RedisQueue::connect(&redis_url(), &prefix)
        .await
        .expect("Redis must be running");
    q.push("touchy", "1", &Touchy { n: 1 }).await.expect("push");
    let attempts = Attempts::default();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(
        WorkerBuilder::new("touchy")
            .backend(q.backend::<Touchy>("touchy", quick_retry("touchy")))
            .layer(rose_worker::catch_panics())
            .data(attempts.clone())
            .build(panics_once)
            .run_until(stop.clone().cancelled_owned().map(Ok::<(), std::io::Error>)),
    );
    eventually(LIMIT, "the retry finished it", || async {
        let s = q.stats("touchy").await.expect("stats");
        s.completed == 1
    })
    .await;
    let s = q.stats("touchy").await.expect("stats");
    assert_eq!((s.retried, s.dead), (1, 0));
    assert_eq!(attempts.get(), 2);
    stop.cancel();
    worker
        .await
        .expect("join")
        .expect("the worker survived the panic");
    delete_prefix(q.connection(), &prefix).await;
}

/// Waits for a handler to start, lets the test break settlement, then ends.
async fn held_up(
    _: Touchy,
    gate: Data<Arc<tokio::sync::Notify>>,
    attempts: Data<Attempts>,
) -> Result<(), BoxDynError> {
    if attempts.bump() == 0 {
        gate.notified().await;
    }
    Ok(())
}

/// Redis refuses the acknowledgement of a finished job (its user lost the
/// right to `XACK` at that moment): the entry is no longer renewed, ages
/// past the visibility timeout and is reclaimed and finished, instead of
/// staying claimed by this worker until it restarts.
#[tokio::test]
async fn an_entry_whose_settlement_failed_is_reclaimed() {
    let prefix = unique("rose_test");
    let user = unique("ackless");
    let admin = RedisQueue::connect(&redis_url(), &prefix)
        .await
        .expect("Redis must be running");
    let mut conn = admin.connection();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">secret")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut conn)
        .await
        .expect("acl user");
    let url = redis_url().replacen("redis://", &format!("redis://{user}:secret@"), 1);
    let q = RedisQueue::connect(&url, &prefix)
        .await
        .expect("as the user");
    q.push("held", "1", &Touchy { n: 1 }).await.expect("push");
    let gate = Arc::new(tokio::sync::Notify::new());
    let attempts = Attempts::default();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(
        WorkerBuilder::new("held")
            .backend(q.backend::<Touchy>("held", quick_retry("held")))
            .data(gate.clone())
            .data(attempts.clone())
            .build(held_up)
            .run_until(stop.clone().cancelled_owned().map(Ok::<(), std::io::Error>)),
    );
    eventually(LIMIT, "the handler started", || async {
        attempts.get() == 1
    })
    .await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("-xack")
        .query_async(&mut conn)
        .await
        .expect("revoke xack");
    gate.notify_one();
    // The acknowledgement fails. A heartbeat (every 200 ms) would renew the
    // entry if the worker still held it; allow acknowledging again before
    // the entry could have aged out (600 ms), so its second run succeeds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("+xack")
        .query_async(&mut conn)
        .await
        .expect("grant xack");
    eventually(LIMIT, "the entry reclaimed and finished", || async {
        let s = q.stats("held").await.expect("stats");
        s.completed == 1 && s.running == 0
    })
    .await;
    assert_eq!(attempts.get(), 2, "run again once");
    stop.cancel();
    worker.await.expect("join").expect("worker");
    let _: Result<i64, _> = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut conn)
        .await;
    delete_prefix(admin.connection(), &prefix).await;
}

/// A stopped Redis worker leaves no task behind (its acknowledger used to
/// live on forever), and the embedded queue's delayed pushes spawn none.
#[tokio::test]
async fn queue_loops_end_with_their_worker_and_delays_spawn_nothing() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let prefix = unique("rose_test");
    let q = RedisQueue::connect(&redis_url(), &prefix)
        .await
        .expect("Redis must be running");
    let dir = tempfile::tempdir().expect("dir");
    let pool = rose_tests::sqlite_pool(&dir.path().join("q.db")).await;
    SqliteQueue::setup(&pool).await.expect("setup");
    let sqlite = SqliteQueue::new(pool);
    // One push opens what the pool keeps open; then count.
    sqlite
        .push_delayed("later", &Touchy { n: 0 }, Duration::from_secs(3600))
        .await
        .expect("push delayed");
    let baseline = metrics.num_alive_tasks();
    for n in 1..200 {
        sqlite
            .push_delayed("later", &Touchy { n }, Duration::from_secs(3600))
            .await
            .expect("push delayed");
    }
    // A task per delayed push would be 199 more.
    assert!(
        metrics.num_alive_tasks() < baseline + 10,
        "delayed pushes spawned tasks: {} alive, {baseline} before",
        metrics.num_alive_tasks()
    );
    let baseline = metrics.num_alive_tasks();
    q.push("loops", "1", &Touchy { n: 1 }).await.expect("push");
    let attempts = Attempts::default();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(
        WorkerBuilder::new("loops")
            .backend(q.backend::<Touchy>("loops", quick_retry("loops")))
            .data(attempts.clone())
            .build(succeeds)
            .run_until(stop.clone().cancelled_owned().map(Ok::<(), std::io::Error>)),
    );
    eventually(LIMIT, "the job finished", || async {
        q.stats("loops").await.expect("stats").completed == 1
    })
    .await;
    stop.cancel();
    worker.await.expect("join").expect("worker");
    eventually(LIMIT, "every loop of the worker ended", || async {
        metrics.num_alive_tasks() <= baseline
    })
    .await;
    delete_prefix(q.connection(), &prefix).await;
}

async fn succeeds(_: Touchy) -> Result<(), BoxDynError> {
    Ok(())
}
