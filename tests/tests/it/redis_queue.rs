//! The Redis Streams queue against a real Redis: backlogs, crashes,
//! retries, dead letters, trimming and graceful shutdown.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::AsyncCommands;
use rose_shared::queue::{ListStatus, RedisQueue, RetryPolicy, StreamOptions};
use rose_tests::probe::{ProbeJob, done_counts, run_probe, starts};
use rose_tests::{delete_prefix, redis_url, unique};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const QUEUE: &str = "probe";

async fn queue() -> RedisQueue {
    RedisQueue::connect(&redis_url(), &unique("rose_qtest"))
        .await
        .expect("Redis must be running (scripts/test starts it)")
}

fn jobs(range: std::ops::Range<u64>, sleep_ms: u64) -> Vec<(String, ProbeJob)> {
    range
        .map(|n| {
            (
                n.to_string(),
                ProbeJob {
                    n,
                    sleep_ms,
                    ..ProbeJob::default()
                },
            )
        })
        .collect()
}

fn options(consumer: &str, visibility: Duration) -> StreamOptions {
    StreamOptions {
        prefetch: 50,
        visibility_timeout: visibility,
        block: Duration::from_secs(2),
        retry: RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(20),
            cap: Duration::from_millis(100),
        },
        ..StreamOptions::new(consumer)
    }
}

/// Waits until `check` holds, polling; panics with `what` after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pel_len(q: &RedisQueue) -> u64 {
    let stats = q.stats(QUEUE).await.expect("stats");
    stats.running
}

#[tokio::test]
async fn a_backlog_of_20000_is_processed_exactly_once_by_two_workers() {
    let q = queue().await;
    q.push_bulk(QUEUE, &jobs(0..20_000, 0)).await.expect("push");
    let before = q.stats(QUEUE).await.expect("stats");
    assert_eq!(before.pending, 20_000);

    let stop = CancellationToken::new();
    let a = tokio::spawn({
        let (q, stop) = (q.clone(), stop.clone());
        async move {
            run_probe(
                &q,
                QUEUE,
                options("worker-a", Duration::from_secs(30)),
                50,
                stop,
            )
            .await
        }
    });
    let b = tokio::spawn({
        let (q, stop) = (q.clone(), stop.clone());
        async move {
            run_probe(
                &q,
                QUEUE,
                options("worker-b", Duration::from_secs(30)),
                50,
                stop,
            )
            .await
        }
    });
    let mut conn = q.connection();
    eventually(Duration::from_secs(120), "20,000 completions", || {
        let mut conn = conn.clone();
        let prefix = q.prefix().to_owned();
        async move { done_counts(&mut conn, &prefix).await.len() == 20_000 }
    })
    .await;
    stop.cancel();
    a.await.expect("join a").expect("worker a");
    b.await.expect("join b").expect("worker b");

    let done = done_counts(&mut conn, q.prefix()).await;
    assert!(
        done.values().all(|&c| c == 1),
        "every job completed exactly once"
    );
    let started = starts(&mut conn, q.prefix()).await;
    assert_eq!(started.len(), 20_000, "no job started twice");
    let by: HashSet<&str> = started.iter().map(|(_, c, _)| c.as_str()).collect();
    assert_eq!(by.len(), 2, "both workers took part");
    let after = q.stats(QUEUE).await.expect("stats");
    assert_eq!((after.pending, after.running, after.dead), (0, 0, 0));
    assert_eq!(after.completed, 20_000);
    // Trimming: finished entries are deleted, the stream holds nothing.
    let len: u64 = conn.xlen(q.stream_key(QUEUE)).await.expect("xlen");
    assert_eq!(len, 0);
    delete_prefix(conn, q.prefix()).await;
}

#[tokio::test]
async fn the_stream_stays_bounded_while_jobs_complete() {
    let q = queue().await;
    let stop = CancellationToken::new();
    let worker = tokio::spawn({
        let (q, stop) = (q.clone(), stop.clone());
        async move {
            run_probe(
                &q,
                QUEUE,
                options("trim", Duration::from_secs(30)),
                20,
                stop,
            )
            .await
        }
    });
    let mut conn = q.connection();
    let mut longest = 0u64;
    for round in 0..20u64 {
        q.push_bulk(QUEUE, &jobs(round * 100..(round + 1) * 100, 0))
            .await
            .expect("push");
        eventually(Duration::from_secs(30), "a round completes", || {
            let mut conn = conn.clone();
            let prefix = q.prefix().to_owned();
            let want = ((round + 1) * 100) as usize;
            async move { done_counts(&mut conn, &prefix).await.len() == want }
        })
        .await;
        let len: u64 = conn.xlen(q.stream_key(QUEUE)).await.expect("xlen");
        longest = longest.max(len);
    }
    stop.cancel();
    worker.await.expect("join").expect("worker");
    let len: u64 = conn.xlen(q.stream_key(QUEUE)).await.expect("xlen");
    assert_eq!(len, 0, "after 2,000 completed jobs the stream is empty");
    assert!(
        longest <= 100,
        "the stream never held more than one round: {longest}"
    );
    delete_prefix(conn, q.prefix()).await;
}

#[tokio::test]
async fn retries_back_off_then_exhausted_jobs_reach_the_dead_letters() {
    let q = queue().await;
    let mut conn = q.connection();
    // Succeeds on its third attempt.
    let flaky = ProbeJob {
        n: 1,
        fail_times: 2,
        ..ProbeJob::default()
    };
    // Fails every attempt.
    let hopeless = ProbeJob {
        n: 2,
        fail_times: 99,
        ..ProbeJob::default()
    };
    q.push(QUEUE, "job-1", &flaky).await.expect("push");
    q.push(QUEUE, "job-2", &hopeless).await.expect("push");
    let stop = CancellationToken::new();
    let worker = tokio::spawn({
        let (q, stop) = (q.clone(), stop.clone());
        async move {
            run_probe(
                &q,
                QUEUE,
                options("retry", Duration::from_secs(30)),
                4,
                stop,
            )
            .await
        }
    });
    eventually(
        Duration::from_secs(20),
        "one success and one burial",
        || {
            let q = q.clone();
            async move {
                let s = q.stats(QUEUE).await.expect("stats");
                s.completed == 1 && s.dead == 1
            }
        },
    )
    .await;
    let started = starts(&mut conn, q.prefix()).await;
    let attempts_of = |n: u64| -> Vec<u32> {
        started
            .iter()
            .filter(|(m, ..)| *m == n)
            .map(|(_, _, a)| *a)
            .collect()
    };
    assert_eq!(attempts_of(1), [1, 2, 3], "retried through the delayed set");
    assert_eq!(attempts_of(2), [1, 2, 3], "three attempts, then dead");
    let stats = q.stats(QUEUE).await.expect("stats");
    assert_eq!(stats.retried, 4);
    assert_eq!((stats.pending, stats.delayed, stats.running), (0, 0, 0));

    let dead = q
        .list(QUEUE, ListStatus::Dead, 10)
        .await
        .expect("list dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, "job-2");
    assert_eq!(dead[0].attempt, 3);
    assert_eq!(dead[0].error.as_deref(), Some("planned failure"));

    // Revived, it runs again with its attempts reset (and fails again to the dead letters).
    assert_eq!(
        q.revive("job-2").await.expect("revive"),
        Some(QUEUE.to_owned())
    );
    assert_eq!(
        q.revive("job-2").await.expect("revive again"),
        None,
        "it left the dead letters"
    );
    eventually(Duration::from_secs(20), "the revived job ran again", || {
        let mut conn = conn.clone();
        let prefix = q.prefix().to_owned();
        async move {
            starts(&mut conn, &prefix)
                .await
                .iter()
                .filter(|(n, ..)| *n == 2)
                .count()
                == 6
        }
    })
    .await;
    stop.cancel();
    worker.await.expect("join").expect("worker");
    delete_prefix(conn, q.prefix()).await;
}

#[tokio::test]
async fn an_abort_goes_straight_to_the_dead_letters_and_revive_all_brings_it_back() {
    let q = queue().await;
    let mut conn = q.connection();
    let job = ProbeJob {
        n: 7,
        fail_until_healed: true,
        ..ProbeJob::default()
    };
    q.push(QUEUE, "job-7", &job).await.expect("push");
    let stop = CancellationToken::new();
    let worker = tokio::spawn({
        let (q, stop) = (q.clone(), stop.clone());
        async move {
            run_probe(
                &q,
                QUEUE,
                options("abort", Duration::from_secs(30)),
                2,
                stop,
            )
            .await
        }
    });
    eventually(Duration::from_secs(20), "the aborted job is dead", || {
        let q = q.clone();
        async move { q.stats(QUEUE).await.expect("stats").dead == 1 }
    })
    .await;
    assert_eq!(
        starts(&mut conn, q.prefix()).await.len(),
        1,
        "an abort is not retried"
    );
    let _: () = conn
        .set(format!("{}:probe:heal", q.prefix()), 1)
        .await
        .expect("heal");
    assert_eq!(q.revive_all(QUEUE).await.expect("revive all"), 1);
    eventually(Duration::from_secs(20), "the revived job completes", || {
        let mut conn = conn.clone();
        let prefix = q.prefix().to_owned();
        async move { done_counts(&mut conn, &prefix).await.get(&7) == Some(&1) }
    })
    .await;
    assert_eq!(q.purge(QUEUE, ListStatus::Dead).await.expect("purge"), 0);
    assert!(
        q.purge(QUEUE, ListStatus::Running).await.is_err(),
        "running jobs cannot be purged"
    );
    stop.cancel();
    worker.await.expect("join").expect("worker");
    delete_prefix(conn, q.prefix()).await;
}

struct Probe(Child);

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_probe(q: &RedisQueue, concurrency: usize, visibility_ms: u64) -> Probe {
    let child = Command::new(env!("CARGO_BIN_EXE_queue_probe"))
        .args([
            redis_url(),
            q.prefix().to_owned(),
            QUEUE.to_owned(),
            concurrency.to_string(),
            visibility_ms.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start queue-probe");
    Probe(child)
}

fn signal(probe: &Probe, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &probe.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test]
async fn a_worker_killed_mid_job_has_its_jobs_reclaimed_by_another() {
    let q = queue().await;
    let mut conn = q.connection();
    let doomed = spawn_probe(&q, 4, 1500);
    q.push_bulk(QUEUE, &jobs(0..8, 1500)).await.expect("push");
    eventually(
        Duration::from_secs(20),
        "the first worker started jobs",
        || {
            let mut conn = conn.clone();
            let prefix = q.prefix().to_owned();
            async move { starts(&mut conn, &prefix).await.len() >= 4 }
        },
    )
    .await;
    signal(&doomed, "-KILL");
    let killed_pid = format!("probe-{}", doomed.0.id());
    let _survivor = spawn_probe(&q, 4, 1500);
    eventually(Duration::from_secs(60), "all 8 jobs complete", || {
        let mut conn = conn.clone();
        let prefix = q.prefix().to_owned();
        async move { done_counts(&mut conn, &prefix).await.len() == 8 }
    })
    .await;
    let done = done_counts(&mut conn, q.prefix()).await;
    assert!(
        done.values().all(|&c| c == 1),
        "each completed once: {done:?}"
    );
    let started = starts(&mut conn, q.prefix()).await;
    let by_killed: Vec<u64> = started
        .iter()
        .filter(|(_, c, _)| *c == killed_pid)
        .map(|(n, ..)| *n)
        .collect();
    assert!(!by_killed.is_empty());
    for n in by_killed {
        assert!(
            started.iter().any(|(m, c, _)| *m == n && *c != killed_pid),
            "job {n} started by the killed worker was run again by the survivor"
        );
    }
    assert!(q.stats(QUEUE).await.expect("stats").reclaimed >= 4);
    delete_prefix(conn, q.prefix()).await;
}

#[tokio::test]
async fn a_long_job_on_a_live_worker_is_never_reclaimed() {
    let q = queue().await;
    let mut conn = q.connection();
    // Two live workers with a 600 ms visibility timeout; the job takes 3 s.
    let _a = spawn_probe(&q, 2, 600);
    let _b = spawn_probe(&q, 2, 600);
    tokio::time::sleep(Duration::from_millis(300)).await;
    q.push_bulk(QUEUE, &jobs(0..2, 3000)).await.expect("push");
    eventually(Duration::from_secs(30), "the long jobs complete", || {
        let mut conn = conn.clone();
        let prefix = q.prefix().to_owned();
        async move { done_counts(&mut conn, &prefix).await.len() == 2 }
    })
    .await;
    let started = starts(&mut conn, q.prefix()).await;
    assert_eq!(started.len(), 2, "each long job started once: {started:?}");
    assert_eq!(q.stats(QUEUE).await.expect("stats").reclaimed, 0);
    delete_prefix(conn, q.prefix()).await;
}

#[tokio::test]
async fn sigterm_during_a_burst_loses_nothing() {
    let q = queue().await;
    let mut conn = q.connection();
    let mut first = spawn_probe(&q, 4, 60_000);
    q.push_bulk(QUEUE, &jobs(0..200, 50)).await.expect("push");
    eventually(Duration::from_secs(20), "the burst is under way", || {
        let mut conn = conn.clone();
        let prefix = q.prefix().to_owned();
        async move { starts(&mut conn, &prefix).await.len() >= 8 }
    })
    .await;
    signal(&first, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = first.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "graceful exit: {status}");
    // Nothing is stranded under the stopped worker: its unstarted jobs were
    // handed back, not left for the visibility timeout (60 s here).
    assert_eq!(
        pel_len(&q).await,
        0,
        "no job left pending under the stopped worker"
    );
    let finished_by_first = done_counts(&mut conn, q.prefix()).await.len();
    assert!(finished_by_first < 200, "the burst was interrupted");

    let _second = spawn_probe(&q, 4, 60_000);
    eventually(Duration::from_secs(60), "all 200 jobs complete", || {
        let mut conn = conn.clone();
        let prefix = q.prefix().to_owned();
        async move { done_counts(&mut conn, &prefix).await.len() == 200 }
    })
    .await;
    let done = done_counts(&mut conn, q.prefix()).await;
    assert!(
        done.values().all(|&c| c == 1),
        "each completed exactly once"
    );
    delete_prefix(conn, q.prefix()).await;
}

#[tokio::test]
async fn inspection_reports_each_state() {
    let q = queue().await;
    q.push_bulk(QUEUE, &jobs(0..3, 0)).await.expect("push");
    q.push_delayed(
        QUEUE,
        "later",
        &ProbeJob {
            n: 99,
            ..ProbeJob::default()
        },
        Duration::from_secs(600),
    )
    .await
    .expect("push delayed");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stats = q.stats(QUEUE).await.expect("stats");
    assert_eq!(
        (stats.pending, stats.delayed, stats.running, stats.dead),
        (3, 1, 0, 0)
    );
    assert!(stats.oldest_pending_age_ms.is_some_and(|age| age >= 10));
    assert_eq!(q.queue_names().await.expect("names"), [QUEUE]);

    let pending = q.list(QUEUE, ListStatus::Pending, 10).await.expect("list");
    let ids: Vec<&str> = pending.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["0", "1", "2"]);
    let delayed = q.list(QUEUE, ListStatus::Delayed, 10).await.expect("list");
    assert_eq!(delayed.len(), 1);
    assert_eq!(delayed[0].id, "later");
    assert!(delayed[0].due_at.is_some());
    assert_eq!(q.purge(QUEUE, ListStatus::Delayed).await.expect("purge"), 1);
    assert_eq!(q.stats(QUEUE).await.expect("stats").delayed, 0);
    delete_prefix(q.connection(), q.prefix()).await;
}

#[tokio::test]
async fn an_idle_worker_sends_nothing_but_its_blocking_read() {
    use futures::StreamExt;
    let q = queue().await;
    let stop = CancellationToken::new();
    // Default timings: reads block 30 s, heartbeat and reclaim every 20-30 s.
    let worker = tokio::spawn({
        let (q, stop) = (q.clone(), stop.clone());
        async move { run_probe(&q, QUEUE, StreamOptions::new("idle"), 4, stop).await }
    });
    // Let it start (group, first reclaim scan, first read) before listening.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = redis::Client::open(redis_url()).expect("client");
    let monitor = client.get_async_monitor().await.expect("monitor");
    let mut lines = monitor.into_on_message::<String>();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut ours = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout_at(deadline, lines.next()).await {
        if line.contains(q.prefix()) {
            ours.push(line);
        }
    }
    assert!(ours.is_empty(), "an idle worker sent commands: {ours:?}");
    // And it is awake: a push is picked up at once.
    q.push(
        QUEUE,
        "1",
        &ProbeJob {
            n: 1,
            ..ProbeJob::default()
        },
    )
    .await
    .expect("push");
    let conn = q.connection();
    eventually(Duration::from_secs(5), "the pushed job runs", || {
        let mut conn = conn.clone();
        let prefix = q.prefix().to_owned();
        async move { done_counts(&mut conn, &prefix).await.len() == 1 }
    })
    .await;
    stop.cancel();
    worker.await.expect("join").expect("worker");
    delete_prefix(conn, q.prefix()).await;
}
