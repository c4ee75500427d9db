//! What operators see of a real `rose serve` process: Prometheus metrics
//! that move with the jobs, JSON logs whose job lines carry the request id
//! the client sent, and no words of the conversation in any log line.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use rose_tests::process::{Proc, free_port, wait_for_api};
use rose_tests::{SPOKEN_TEXT, SPOKEN_WAV};
use serde_json::Value;

const ROSE: &str = env!("CARGO_BIN_EXE_rose");
const JOBS: usize = 4;
const TYPED: &str = "Nobody at work knows that my brother died in March.";

/// Samples of a Prometheus text exposition, keyed `name{labels}` as written;
/// panics on a line that is not valid exposition format.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().expect("type name");
            let kind = parts.next().expect("type kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value.parse().expect("numeric sample value");
        let name = key.split('{').next().expect("name");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name {name}"
        );
        if let Some(labels) = key.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| typed.contains(*f))
            .unwrap_or(name);
        assert!(typed.contains(family), "no # TYPE before {line}");
        samples.insert(key.to_owned(), value);
    }
    samples
}

async fn scrape(http: &reqwest::Client, base: &str) -> HashMap<String, f64> {
    let response = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain"),
    );
    parse(&response.text().await.expect("body"))
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_with_the_jobs_and_logs_carry_request_ids_but_no_words() {
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
            .env("ROSE_DATA_DIR", dir.path().join("data"))
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start rose serve"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_for_api(&http, &base).await;

    let before = scrape(&http, &base).await;
    assert!(
        before
            .get(r#"rose_http_requests_total{method="GET",status="200"}"#)
            .is_some_and(|n| *n >= 1.0),
        "requests before the first scrape are counted: {before:?}"
    );
    let session: Value = http
        .post(format!("{base}/api/session/start"))
        .send()
        .await
        .expect("session")
        .json()
        .await
        .expect("json");
    let session = session["session_id"].as_str().expect("id").to_owned();
    let mut jobs = Vec::new();
    for n in 0..JOBS {
        let form = reqwest::multipart::Form::new().text("session_id", session.clone());
        // Spoken jobs, and one typed, so both kinds of words are watched for.
        let form = if n == 0 {
            form.text("text", TYPED)
        } else {
            form.part(
                "audio",
                reqwest::multipart::Part::bytes(SPOKEN_WAV.to_vec()).file_name("x.wav"),
            )
        };
        let request_id = format!("client-req-{n}");
        let job: Value = http
            .post(format!("{base}/api/voice/process?wait=30"))
            .header("x-request-id", &request_id)
            .multipart(form)
            .send()
            .await
            .expect("upload")
            .json()
            .await
            .expect("json");
        assert_eq!(job["status"], "succeeded", "{job}");
        jobs.push((request_id, job));
    }
    let after = scrape(&http, &base).await;

    let n = JOBS as f64;
    let spoken = n - 1.0;
    // One speech request per sentence of each reply.
    let sentences: usize = jobs
        .iter()
        .map(|(_, job)| job["result"]["chunks"].as_array().map_or(0, Vec::len))
        .sum();
    for (key, expected) in [
        (r#"rose_jobs_enqueued_total{queue="voice"}"#, n),
        (r#"rose_jobs_succeeded_total{queue="voice"}"#, n),
        (r#"rose_job_duration_seconds_count{queue="voice"}"#, n),
        (r#"rose_queue_wait_seconds_count{queue="voice"}"#, n),
        (r#"rose_stage_duration_seconds_count{stage="stt"}"#, spoken),
        (r#"rose_stage_duration_seconds_count{stage="llm"}"#, n),
        (r#"rose_stage_duration_seconds_count{stage="tts"}"#, n),
        (
            r#"rose_provider_requests_total{provider="stt",status="200"}"#,
            spoken,
        ),
        (
            r#"rose_provider_requests_total{provider="tts",status="200"}"#,
            sentences as f64,
        ),
        (r#"rose_first_audio_seconds_count"#, n),
        (r#"rose_http_requests_total{method="POST",status="200"}"#, n),
    ] {
        assert_eq!(delta(&before, &after, key), expected, "{key}");
    }
    assert!(
        after.contains_key(r#"rose_queue_depth{queue="voice",state="pending"}"#),
        "queue depth is reported"
    );
    assert!(
        after.contains_key(r#"rose_circuit_breaker_state{provider="llm"}"#),
        "breaker states are reported"
    );

    // Logs: give the background tasks (memory extraction) a moment to log.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = std::fs::read_to_string(&log_path).expect("log");
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 10, "the run logged: {text}");
    let start = lines
        .iter()
        .find(|l| l["event"] == "start")
        .unwrap_or_else(|| panic!("a start line: {text}"));
    assert_eq!(start["role"], "serve");
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(start["database"], "sqlite");
    assert_eq!(start["queue"], "sqlite");
    assert_eq!(start["providers"], "simulated");
    for (request_id, job) in &jobs {
        let id = job["job_id"].as_str().expect("job id");
        let of_job: Vec<&Value> = lines
            .iter()
            .filter(|l| l["span"]["job_id"] == id || l["job_id"] == id)
            .collect();
        assert!(of_job.len() >= 3, "worker lines for {id}: {of_job:?}");
        let in_span: Vec<&&Value> = of_job
            .iter()
            .filter(|l| l["span"]["name"] == "job")
            .collect();
        assert!(!in_span.is_empty(), "lines inside the job span for {id}");
        for line in in_span {
            assert_eq!(line["span"]["request_id"], request_id.as_str(), "{line}");
        }
        // The request line of the upload carries the same id.
        assert!(
            lines
                .iter()
                .any(|l| l["event"] == "request" && l["request_id"] == request_id.as_str()),
            "request line for {request_id}"
        );
    }

    // Privacy: no transcript, typed words or reply in any line.
    let mut words = vec![SPOKEN_TEXT.to_owned(), TYPED.to_owned()];
    for (_, job) in &jobs {
        words.push(job["result"]["text"].as_str().expect("reply").to_owned());
    }
    for line in text.lines() {
        for w in &words {
            assert!(!line.contains(w.as_str()), "words in a log line: {line}");
        }
    }
}
