//! The embedded queue: a push in the same process wakes the idle worker; the
//! poll interval is only a fallback.

use std::time::Duration;

use apalis::prelude::*;
use futures::FutureExt;
use rose_shared::queue::{ConsumerOptions, SqliteQueue};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ping {
    n: u32,
}

async fn record(job: Ping, tx: Data<mpsc::UnboundedSender<u32>>) -> Result<(), BoxDynError> {
    let _ = tx.send(job.n);
    Ok(())
}

#[tokio::test]
async fn a_push_wakes_the_idle_embedded_worker() {
    let dir = tempfile::tempdir().expect("dir");
    let pool = rose_tests::sqlite_pool(&dir.path().join("q.db")).await;
    SqliteQueue::setup(&pool).await.expect("setup");
    // With an hour between polls, only the in-process wake-up can deliver
    // (the wait below is 5 s).
    let queue = SqliteQueue::new(pool).with_fallback_poll(Duration::from_secs(3600));
    let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
    let stop = CancellationToken::new();
    let backend = queue.backend::<Ping>("pings", ConsumerOptions::new("pinger"));
    let worker = tokio::spawn(
        WorkerBuilder::new("pinger")
            .backend(backend)
            .data(tx)
            .build(record)
            .run_until(stop.clone().cancelled_owned().map(Ok::<(), std::io::Error>)),
    );
    // Idle first: the worker has polled and found nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 1..=3 {
        queue
            .push("pings", &n.to_string(), &Ping { n })
            .await
            .expect("push");
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the push woke the worker")
            .expect("channel open");
        assert_eq!(got, n);
    }
    stop.cancel();
    worker.await.expect("join").expect("worker");
}
