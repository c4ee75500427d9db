//! Delayed jobs start no earlier than due, and within 100 ms after.
//! (Its own test binary, so no other test loads the machine meanwhile.)

use std::time::Duration;

use apalis::prelude::*;
use futures::FutureExt;
use rose_shared::domain::now_ms;
use rose_shared::queue::{ListStatus, RedisQueue, StreamOptions};
use rose_tests::{delete_prefix, redis_url, unique};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Timed {
    label: String,
}

async fn record(
    job: Timed,
    tx: Data<mpsc::UnboundedSender<(String, i64)>>,
) -> Result<(), BoxDynError> {
    let _ = tx.send((job.label, now_ms()));
    Ok(())
}

#[tokio::test]
async fn delayed_jobs_start_when_due_and_not_before() {
    let q = RedisQueue::connect(&redis_url(), &unique("rose_delay"))
        .await
        .expect("Redis must be running (scripts/test starts it)");
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, i64)>();
    let stop = CancellationToken::new();
    let worker = tokio::spawn({
        let (q, stop) = (q.clone(), stop.clone());
        async move {
            let backend = q.backend::<Timed>("timed", StreamOptions::new("timer"));
            WorkerBuilder::new("timer")
                .backend(backend)
                .data(tx)
                .build(record)
                .run_until(stop.cancelled_owned().map(Ok::<(), std::io::Error>))
                .await
        }
    });
    // Let the idle worker settle into its blocking read first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delays = [400u64, 700, 1000, 250, 550];
    for (i, delay) in delays.iter().enumerate() {
        let job = Timed {
            label: format!("job-{i}"),
        };
        q.push_delayed("timed", &job.label, &job, Duration::from_millis(*delay))
            .await
            .expect("push delayed");
    }
    let scheduled = q
        .list("timed", ListStatus::Delayed, 10)
        .await
        .expect("list");
    assert_eq!(scheduled.len(), delays.len());
    for _ in 0..delays.len() {
        let (label, started) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a delayed job ran")
            .expect("channel open");
        let due = scheduled
            .iter()
            .find(|e| e.id == label)
            .and_then(|e| e.due_at)
            .expect("due time");
        assert!(started >= due, "{label} started {} ms early", due - started);
        assert!(
            started - due <= 100,
            "{label} started {} ms late",
            started - due
        );
    }
    stop.cancel();
    worker.await.expect("join").expect("worker");
    delete_prefix(q.connection(), q.prefix()).await;
}
