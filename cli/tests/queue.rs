//! `rose queue` against a real Redis.

use std::process::Command;
use std::time::Duration;

use redis::AsyncCommands;
use rose_shared::queue::{RedisQueue, StreamOptions};
use rose_tests::probe::{ProbeJob, done_counts, run_probe};
use rose_tests::{delete_prefix, redis_url, unique};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn rose_queue(prefix: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rose"))
        .arg("queue")
        .args(args)
        .env("REDIS_URL", redis_url())
        .env("ROSE_REDIS_PREFIX", prefix)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run rose queue")
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn rose_queue_retry_revives_a_dead_job() {
    let q = RedisQueue::connect(&redis_url(), &unique("rose_cli"))
        .await
        .expect("Redis must be running (scripts/test starts it)");
    let prefix = q.prefix().to_owned();
    let job = ProbeJob {
        n: 5,
        fail_until_healed: true,
        ..ProbeJob::default()
    };
    q.push("probe", "job-5", &job).await.expect("push");
    let stop = CancellationToken::new();
    let worker = tokio::spawn({
        let (q, stop) = (q.clone(), stop.clone());
        async move { run_probe(&q, "probe", StreamOptions::new("cli-probe"), 2, stop).await }
    });
    wait_until("the job is dead", async || {
        q.stats("probe").await.expect("stats").dead == 1
    })
    .await;

    let stats = rose_queue(&prefix, &["stats", "--json"]);
    assert!(stats.status.success());
    let stats: Value = serde_json::from_slice(&stats.stdout).expect("stats json");
    assert_eq!(stats[0]["queue"], "probe");
    assert_eq!(stats[0]["dead"], 1);
    let table = rose_queue(&prefix, &["stats"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("probe"));
    let dead = rose_queue(
        &prefix,
        &["list", "--status", "dead", "--queue", "probe", "--json"],
    );
    let dead: Value = serde_json::from_slice(&dead.stdout).expect("list json");
    assert_eq!(dead[0]["id"], "job-5");
    assert_eq!(dead[0]["error"], "not healed yet");

    let mut conn = q.connection();
    let _: () = conn
        .set(format!("{prefix}:probe:heal"), 1)
        .await
        .expect("heal");
    let retry = rose_queue(&prefix, &["retry", "job-5"]);
    assert!(
        retry.status.success(),
        "{}",
        String::from_utf8_lossy(&retry.stderr)
    );
    assert!(String::from_utf8_lossy(&retry.stdout).contains("revived job-5 into probe"));
    wait_until("the revived job completes", async || {
        done_counts(&mut conn, &prefix).await.get(&5) == Some(&1)
    })
    .await;

    let missing = rose_queue(&prefix, &["retry", "job-404"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("job-404"));
    let bad = rose_queue(
        &prefix,
        &["purge", "--status", "running", "--queue", "probe"],
    );
    assert!(!bad.status.success());

    stop.cancel();
    worker.await.expect("join").expect("worker");
    delete_prefix(q.connection(), &prefix).await;
}
