//! `rose queue` and `/api/admin/…` on both deployments: a job dies, it is
//! seen dead, it is retried, it succeeds; the counts follow the jobs.

use std::collections::HashMap;
use std::process::Output;

use std::time::Duration;
use tokio::process::Command;

use rose_tests::{AppOptions, Deployment, SPOKEN_WAV, TestApp, redis_url, spawn_app_with};
use serde_json::{Value, json};

const TOKEN: &str = "admin-test-token-7f3a-0123456789abcdef";
const LIMIT: Duration = Duration::from_secs(30);

/// Runs `rose queue …` without blocking the runtime the test's Rose runs on
/// (a blocked runtime could hold a SQLite write lock the command waits for).
async fn rose_queue(app: &TestApp, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rose"));
    cmd.arg("queue").args(args);
    for var in ["DATABASE_URL", "REDIS_URL", "ROSE_DATA_DIR", "GROQ_API_KEY"] {
        cmd.env_remove(var);
    }
    match app.database_url() {
        // Scaled: the test's schema and its Redis key prefix.
        Some(url) => {
            cmd.env("DATABASE_URL", url)
                .env("REDIS_URL", redis_url())
                .env("ROSE_REDIS_PREFIX", &app.rose.config.redis_prefix);
        }
        None => {
            cmd.env(
                "DATABASE_URL",
                format!("sqlite://{}", app.sqlite_path().display()),
            );
        }
    }
    cmd.output().await.expect("run rose queue")
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn voice(stats: &Value) -> Value {
    stats
        .as_array()
        .expect("stats array")
        .iter()
        .find(|q| q["queue"] == "voice")
        .cloned()
        .unwrap_or_else(|| panic!("voice queue in {stats}"))
}

async fn admin(app: &TestApp, method: reqwest::Method, path: &str) -> (u16, Value) {
    let response = app
        .http
        .request(method, format!("{}{path}", app.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("admin request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn submit(app: &TestApp, session: &str) -> String {
    let response = app.upload(session, SPOKEN_WAV, None).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    body["job_id"].as_str().expect("job id").to_owned()
}

async fn round_trip(deployment: Deployment) {
    let env: HashMap<String, String> = [
        ("ROSE_ADMIN_TOKEN", TOKEN),
        // One try per call and per job: a transient failure kills the job.
        ("ROSE_PROVIDER_TRIES", "1"),
        ("ROSE_JOB_MAX_ATTEMPTS", "1"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let app = spawn_app_with(
        deployment,
        AppOptions {
            env,
            ..AppOptions::default()
        },
    )
    .await;
    let session = app.start_session().await;

    // Two jobs succeed.
    for _ in 0..2 {
        let id = submit(&app, &session).await;
        assert_eq!(app.wait_for_job(&id, LIMIT).await["status"], "succeeded");
    }
    // The third meets a provider failure and dies.
    app.http
        .post(format!("{}/__sim/faults", app.sim.url))
        .json(&json!({"endpoint": "transcriptions", "status": 500, "count": 1}))
        .send()
        .await
        .expect("inject fault");
    let dead_id = submit(&app, &session).await;
    let job = app.wait_for_job(&dead_id, LIMIT).await;
    assert_eq!(job["status"], "failed", "{job}");

    // Seen dead, by the CLI and the admin API.
    let mut stats = voice(&json_of(&rose_queue(&app, &["stats", "--json"]).await));
    for _ in 0..100 {
        if stats["dead"] == 1 && stats["completed"].as_u64() >= Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stats = voice(&json_of(&rose_queue(&app, &["stats", "--json"]).await));
    }
    assert_eq!(stats["dead"], 1, "{stats}");
    assert_eq!(stats["completed"], 2, "{stats}");
    assert_eq!(stats["pending"], 0, "{stats}");
    let table = rose_queue(&app, &["stats"]).await;
    assert!(String::from_utf8_lossy(&table.stdout).contains("voice"));
    let dead = json_of(&rose_queue(&app, &["list", "--status", "dead", "--json"]).await);
    let ids: Vec<&str> = dead
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(ids, [dead_id.as_str()], "{dead}");
    let (status, queues) = admin(&app, reqwest::Method::GET, "/api/admin/queues").await;
    assert_eq!(status, 200);
    assert_eq!(voice(&queues["queues"])["dead"], 1, "{queues}");
    let (status, failed) = admin(&app, reqwest::Method::GET, "/api/admin/jobs?status=dead").await;
    assert_eq!(status, 200);
    assert_eq!(failed["jobs"].as_array().map(Vec::len), Some(1), "{failed}");
    assert_eq!(failed["jobs"][0]["job_id"], dead_id.as_str());
    let (_, all) = admin(&app, reqwest::Method::GET, "/api/admin/jobs?limit=2").await;
    assert_eq!(all["jobs"].as_array().map(Vec::len), Some(2));
    let cursor = all["next_cursor"].as_str().expect("a next page");
    let (_, rest) = admin(
        &app,
        reqwest::Method::GET,
        &format!("/api/admin/jobs?limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(
        rest["jobs"].as_array().map(Vec::len),
        Some(1),
        "three jobs in all"
    );
    assert!(rest["next_cursor"].is_null());

    // Bad repairs: a clear error and exit code 1.
    let unknown = rose_queue(&app, &["retry", &ulid::Ulid::generate().to_string()]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no job"));
    let (status, body) = admin(
        &app,
        reqwest::Method::POST,
        &format!("/api/admin/jobs/{}/retry", ids_first_ok(&all)),
    )
    .await;
    assert_eq!(status, 409, "a succeeded job is not retried: {body}");
    assert_eq!(body["error"]["code"], "job_not_failed");

    // Retried, it succeeds (the fault is spent).
    let out = rose_queue(&app, &["retry", &dead_id]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = app.wait_for_job(&dead_id, LIMIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let mut stats = voice(&json_of(&rose_queue(&app, &["stats", "--json"]).await));
    for _ in 0..100 {
        if stats["completed"].as_u64() >= Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stats = voice(&json_of(&rose_queue(&app, &["stats", "--json"]).await));
    }
    assert_eq!(stats["dead"], 0, "{stats}");
    assert_eq!(
        stats["completed"], 3,
        "three jobs, each completed once: {stats}"
    );
    assert_eq!(stats["pending"], 0, "{stats}");
    app.stop().await;
}

/// The id of the newest job in a listing that succeeded.
fn ids_first_ok(listing: &Value) -> String {
    listing["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["status"] == "succeeded")
        .and_then(|j| j["job_id"].as_str())
        .expect("a succeeded job")
        .to_owned()
}

#[tokio::test]
async fn embedded_queue_round_trip() {
    round_trip(Deployment::Embedded).await;
}

#[tokio::test]
async fn scaled_queue_round_trip() {
    round_trip(Deployment::Scaled).await;
}

#[tokio::test]
async fn admin_routes_need_the_token() {
    let app = spawn_app_with(
        Deployment::Embedded,
        AppOptions {
            env: HashMap::from([("ROSE_ADMIN_TOKEN".to_owned(), TOKEN.to_owned())]),
            ..AppOptions::default()
        },
    )
    .await;
    for (method, path) in [
        (reqwest::Method::GET, "/api/admin/queues"),
        (reqwest::Method::GET, "/api/admin/jobs"),
        (
            reqwest::Method::POST,
            "/api/admin/jobs/01J0000000000000000000000/retry",
        ),
        (reqwest::Method::GET, "/api/admin/schedules"),
    ] {
        for auth in [None, Some("Bearer wrong"), Some("Basic abc")] {
            let mut request = app
                .http
                .request(method.clone(), format!("{}{path}", app.url));
            if let Some(a) = auth {
                request = request.header("authorization", a);
            }
            let response = request.send().await.expect("request");
            assert_eq!(response.status(), 401, "{method} {path} with {auth:?}");
            let body: Value = response.json().await.expect("json");
            assert_eq!(body["error"]["code"], "unauthorized");
            assert!(body.get("queues").is_none() && body.get("jobs").is_none());
        }
    }
    // Bad queries are 400s, not 500s.
    for path in [
        "/api/admin/jobs?status=bogus",
        "/api/admin/jobs?limit=0",
        "/api/admin/jobs?limit=abc",
        "/api/admin/jobs?cursor=not-an-id",
    ] {
        let (status, body) = admin(&app, reqwest::Method::GET, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query");
    }
    let (status, _) = admin(&app, reqwest::Method::POST, "/api/admin/jobs/nope/retry").await;
    assert_eq!(status, 404);
    app.stop().await;
}
