//! A crisis turn on a real `rose serve`: the reply carries the resource, and
//! the process's whole log — debug level, api, worker and the memory
//! extraction that follows — holds none of the turn's words, and no line
//! at info or above names the mark.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rose_tests::process::{Proc, free_port, wait_for_api};
use serde_json::Value;

const ROSE: &str = env!("CARGO_BIN_EXE_rose");
const WORDS: &str = "Nobody knows this, but I have been thinking about ending my life.";
const ADMIN: &str = "safety-test-admin-token-0123456789abcdef";

/// Waits until the memory extraction queued by the turn has run (its queue
/// counts a completed task), so its log lines are in. Without the embedding
/// model the extraction waits for it instead (delayed), having logged why.
async fn wait_for_extraction(http: &reqwest::Client, base: &str) {
    let model = rose_tests::model_dir().join("model.safetensors").exists();
    let started = Instant::now();
    loop {
        let stats: Value = http
            .get(format!("{base}/api/admin/queues"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("queue stats")
            .json()
            .await
            .expect("json");
        let done = stats["queues"]
            .as_array()
            .unwrap_or_else(|| panic!("queue stats: {stats}"))
            .iter()
            .any(|q| {
                q["queue"] == "memory"
                    && (q["completed"].as_u64().unwrap_or(0) >= 1
                        || (!model && q["delayed"].as_u64().unwrap_or(0) >= 1))
            });
        if done {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "memory extraction did not run: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_crisis_turn_leaves_no_words_and_no_mark_in_the_log() {
    let dir = tempfile::tempdir().expect("dir");
    let log_path = dir.path().join("rose.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let port = free_port();
    let _server = Proc(
        Command::new(ROSE)
            .args(["serve", "--port", &port.to_string()])
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("GROQ_API_KEY")
            .env_remove("ROSE_CRISIS_RESOURCES")
            .env("ROSE_DATA_DIR", dir.path().join("data"))
            .env("ROSE_ADMIN_TOKEN", ADMIN)
            .env("ROSE_RATE_LIMIT_PER_MIN", "0")
            .env("EMBEDDING_MODEL_DIR", rose_tests::model_dir())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "debug")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start rose serve"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_for_api(&http, &base).await;

    let session: Value = http
        .post(format!("{base}/api/session/start"))
        .send()
        .await
        .expect("session")
        .json()
        .await
        .expect("json");
    let form = reqwest::multipart::Form::new()
        .text(
            "session_id",
            session["session_id"].as_str().expect("id").to_owned(),
        )
        .text("text", WORDS);
    let job: Value = http
        .post(format!("{base}/api/voice/process?wait=30"))
        .multipart(form)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["safety"], "crisis", "{job}");
    let resource = &job["result"]["resource"];
    let url = resource["url"].as_str().expect("resource url");
    assert_eq!(
        url, "https://findahelpline.com",
        "the international default"
    );
    let reply = job["result"]["text"].as_str().expect("reply");
    assert!(reply.ends_with(url), "{reply}");
    let model_words = reply
        .strip_suffix(&format!(
            "{} {url}",
            resource["text"].as_str().expect("text")
        ))
        .expect("the reply ends with the resource")
        .trim_end();
    wait_for_extraction(&http, &base).await;

    let text = std::fs::read_to_string(&log_path).expect("log");
    let id = job["job_id"].as_str().expect("job id");
    assert!(
        text.lines().any(|l| l.contains(id)),
        "the job was logged (by id): {text}"
    );
    let mut fragments = vec![WORDS, model_words, "thinking about ending"];
    fragments.extend(WORDS.split(", "));
    for line in text.lines() {
        let lower = line.to_lowercase();
        for fragment in &fragments {
            assert!(
                !lower.contains(&fragment.to_lowercase()),
                "{fragment:?} in a log line: {line}"
            );
        }
        // The mark is the row's and the job JSON's, never a log line's (at
        // debug, the migrations' own text names the column's values).
        let parsed: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if parsed["level"] != "DEBUG" && parsed["level"] != "TRACE" {
            assert!(!lower.contains("crisis"), "the mark in a log line: {line}");
        }
    }
}
