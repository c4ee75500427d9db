//! `GET /metrics` reads what it reports at a bounded cost: however often
//! and however concurrently it is scraped, the queue depths are read at most
//! once per `DEPTH_EVERY`.

use rose_shared::domain::{JobId, VoiceTask};
use rose_tests::{AppOptions, Deployment, spawn_app_with};

async fn pending_voice(http: &reqwest::Client, url: &str) -> f64 {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    text.lines()
        .find(|l| l.starts_with(r#"rose_queue_depth{queue="voice",state="pending"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no voice depth in: {text}"))
}

#[tokio::test]
async fn scrapes_read_the_queues_at_most_once_per_interval() {
    let app = spawn_app_with(
        Deployment::Embedded,
        AppOptions {
            no_worker: true,
            ..AppOptions::default()
        },
    )
    .await;
    assert_eq!(pending_voice(&app.http, &app.url).await, 0.0);
    for _ in 0..3 {
        app.rose
            .queue
            .push_voice(&VoiceTask {
                job_id: JobId::new(),
                request_id: None,
            })
            .await
            .expect("push");
    }
    // Twenty scrapes at once, right after the first: none reads the queues
    // again, so all still show what the first one read.
    let scrapes: Vec<_> = (0..20)
        .map(|_| {
            let (http, url) = (app.http.clone(), app.url.clone());
            tokio::spawn(async move { pending_voice(&http, &url).await })
        })
        .collect();
    for scrape in scrapes {
        assert_eq!(scrape.await.expect("join"), 0.0);
    }
    assert_eq!(
        app.rose.queue.depth("voice").await.expect("depth").pending,
        3,
        "the queue itself holds them"
    );
    app.stop().await;
}
