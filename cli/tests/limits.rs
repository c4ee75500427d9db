//! Abuse limits: per-client budgets shared by two `rose api` processes on
//! one Redis, a per-session cap on jobs in flight, `429` with `Retry-After`.

use std::collections::HashMap;
use std::process::{Command, Stdio};

use reqwest::multipart::{Form, Part};
use rose_tests::process::{Proc, free_port, wait_for_api};
use rose_tests::{AppOptions, Deployment, SPOKEN_WAV, spawn_app_with};
use serde_json::Value;

fn form(session: &str) -> Form {
    Form::new()
        .part("audio", Part::bytes(SPOKEN_WAV.to_vec()).file_name("a.wav"))
        .text("session_id", session.to_owned())
}

async fn expect_429(response: reqwest::Response, code: &str) {
    assert_eq!(response.status(), 429, "{code}");
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry >= 1, "retry-after {retry}");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], code, "{body}");
}

#[tokio::test]
async fn two_api_processes_share_one_budget_per_client() {
    // The schema and key prefix two `rose api` processes will share.
    let app = spawn_app_with(
        Deployment::Scaled,
        AppOptions {
            no_worker: true,
            ..AppOptions::default()
        },
    )
    .await;
    let env: HashMap<&str, String> = HashMap::from([
        ("DATABASE_URL", app.database_url().expect("scaled")),
        ("REDIS_URL", rose_tests::redis_url()),
        ("ROSE_REDIS_PREFIX", app.prefix.clone()),
        ("ROSE_SIMULATOR_URL", app.sim.url.clone()),
        ("ROSE_RATE_LIMIT_VOICE_PER_MIN", "4".to_owned()),
        ("ROSE_RATE_LIMIT_PER_MIN", "1000".to_owned()),
        ("ROSE_SESSION_MAX_IN_FLIGHT", "0".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
        ("ROSE_PERSON_KEY_SECRET", "p".repeat(32)),
    ]);
    let mut bases = Vec::new();
    let mut procs = Vec::new();
    for _ in 0..2 {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rose"));
        cmd.args(["api", "--port", &port.to_string()])
            .env_remove("GROQ_API_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        procs.push(Proc(cmd.spawn().expect("start rose api")));
        bases.push(format!("http://127.0.0.1:{port}"));
    }
    let http = reqwest::Client::new();
    for base in &bases {
        wait_for_api(&http, base).await;
    }
    let session = app.start_session().await;

    // Six uploads alternating between the two processes: four pass.
    let mut accepted = 0;
    let mut refused = Vec::new();
    for n in 0..6 {
        let base = &bases[n % 2];
        let response = http
            .post(format!("{base}/api/voice/process"))
            .multipart(form(&session))
            .send()
            .await
            .expect("upload");
        match response.status().as_u16() {
            202 => accepted += 1,
            429 => refused.push(response),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(accepted, 4, "the budget is shared, not per process");
    assert_eq!(refused.len(), 2);
    for response in refused {
        expect_429(response, "rate_limited").await;
    }
    assert_eq!(
        app.count_rows("voice_jobs").await,
        4,
        "refused uploads stored nothing"
    );
    // Other requests have their own budget.
    let health = http
        .get(format!("{}/api/jobs/{}", bases[0], ulid::Ulid::generate()))
        .send()
        .await
        .expect("get");
    assert_eq!(health.status(), 404);
    drop(procs);
    app.stop().await;
}

#[tokio::test]
async fn a_session_has_at_most_its_cap_in_flight_and_other_requests_their_budget() {
    let app = spawn_app_with(
        Deployment::Embedded,
        AppOptions {
            no_worker: true,
            env: HashMap::from([
                ("ROSE_SESSION_MAX_IN_FLIGHT".to_owned(), "2".to_owned()),
                ("ROSE_RATE_LIMIT_PER_MIN".to_owned(), "5".to_owned()),
            ]),
            ..AppOptions::default()
        },
    )
    .await;
    let session = app.start_session().await;
    for _ in 0..2 {
        assert_eq!(app.upload(&session, SPOKEN_WAV, None).await.status(), 202);
    }
    expect_429(app.upload(&session, SPOKEN_WAV, None).await, "session_busy").await;
    assert_eq!(app.count_rows("voice_jobs").await, 2);
    assert_eq!(
        app.count_rows("audio").await,
        2,
        "the refused upload stored nothing"
    );

    // Session start was one "other" request; four more pass, then 429.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = app
            .http
            .get(format!("{}/api/jobs/{}", app.url, ulid::Ulid::generate()))
            .send()
            .await
            .expect("get");
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            expect_429(r, "rate_limited").await;
        }
    }
    assert_eq!(statuses, [404, 404, 404, 404, 429]);
    // Health checks are never limited.
    for _ in 0..10 {
        let r = app
            .http
            .get(format!("{}/api/health", app.url))
            .send()
            .await
            .expect("health");
        assert_eq!(r.status(), 200);
    }
    app.stop().await;
}
