//! `rose loadtest` against a real `rose serve`: the smoke test CI runs.
//! It asserts only that every job succeeds and the report is complete;
//! timing targets live in BENCHMARKS.md, never here.

use std::process::{Command, Stdio};

use rose_tests::process::{Proc, free_port, wait_for_api};
use serde_json::Value;

const ROSE: &str = env!("CARGO_BIN_EXE_rose");

/// Runs `rose loadtest --url URL ARGS… --json`; its report once it succeeded.
async fn loadtest(url: &str, args: &[&str]) -> Value {
    let out = tokio::process::Command::new(ROSE)
        .args(["loadtest", "--url", url])
        .args(args)
        .arg("--json")
        .output()
        .await
        .expect("run rose loadtest");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json report")
}

#[tokio::test]
async fn fifty_jobs_all_succeed() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let _server = Proc(
        Command::new(ROSE)
            .args(["serve", "--port", &port.to_string()])
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("GROQ_API_KEY")
            .env("ROSE_DATA_DIR", dir.path())
            .env("ROSE_RATE_LIMIT_VOICE_PER_MIN", "0")
            .env("ROSE_RATE_LIMIT_PER_MIN", "0")
            .env("ROSE_SESSION_MAX_IN_FLIGHT", "0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rose serve"),
    );
    let url = format!("http://127.0.0.1:{port}");
    wait_for_api(&reqwest::Client::new(), &url).await;
    let report = loadtest(&url, &["--jobs", "50", "--concurrency", "8"]).await;
    assert_eq!(report["jobs"], 50, "{report}");
    assert_eq!(report["succeeded"], 50, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    for part in ["queue_wait", "stt", "llm", "tts", "total"] {
        assert_eq!(report["stages_ms"][part]["count"], 50, "{part}: {report}");
    }
    assert_eq!(report["end_to_end_ms"]["count"], 50);
    assert_eq!(report["overhead_ms"]["count"], 50);

    // Open loop: six jobs at 4 per second start over 1.25 s, however fast
    // each one ends (a closed loop of eight lanes would be done at once).
    let report = loadtest(&url, &["--jobs", "6", "--rate", "4", "--concurrency", "8"]).await;
    assert_eq!(report["succeeded"], 6, "{report}");
    assert_eq!(report["offered_rate_jobs_per_sec"], 4.0, "{report}");
    assert!(report["late_starts"].as_u64().is_some(), "{report}");
    let wall = report["wall_secs"].as_f64().expect("wall_secs");
    assert!(wall >= 1.25, "the last job starts 1.25 s in: {report}");
    // Submit only: each job counts at its 202; none is followed, so no
    // job's timings are read.
    let report = loadtest(
        &url,
        &["--jobs", "5", "--concurrency", "2", "--submit-only"],
    )
    .await;
    assert_eq!(report["succeeded"], 5, "{report}");
    assert_eq!(report["submit_only"], true, "{report}");
    assert_eq!(report["upload_ms"]["count"], 5, "{report}");
    assert_eq!(report["stages_ms"]["total"]["count"], 0, "{report}");

    let out = tokio::process::Command::new(ROSE)
        .args(["loadtest", "--url", &url, "--jobs", "1", "--rate", "0"])
        .output()
        .await
        .expect("run rose loadtest --rate 0");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a rate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Against nothing: a clear error, not a hang.
    let dead = free_port();
    let out = tokio::process::Command::new(ROSE)
        .args([
            "loadtest",
            "--url",
            &format!("http://127.0.0.1:{dead}"),
            "--jobs",
            "1",
        ])
        .output()
        .await
        .expect("run rose loadtest");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not answer"));
}
