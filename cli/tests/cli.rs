//! The `rose` binary as a user runs it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rose_tests::process::{Proc, free_port};
use serde_json::Value;

const ROSE: &str = env!("CARGO_BIN_EXE_rose");

fn rose() -> Command {
    let mut cmd = Command::new(ROSE);
    // A clean environment: only what the test sets.
    for var in [
        "DATABASE_URL",
        "REDIS_URL",
        "GROQ_API_KEY",
        "PORT",
        "ROSE_DATA_DIR",
        "BACKUP_DIR",
        "QDRANT_URL",
        "ROSE_PERSON_KEY_SECRET",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["api", "--help"],
        vec!["worker", "--help"],
        vec!["migrate", "--help"],
        vec!["scheduler", "--help"],
        vec!["backup", "--help"],
        vec!["sim", "--help"],
    ] {
        let out = rose().args(&args).output().expect("run rose");
        assert!(out.status.success(), "rose {args:?} --help failed");
        assert!(!out.stdout.is_empty());
    }
}

#[test]
fn a_bad_setting_stops_with_one_line_naming_it() {
    let out = rose()
        .arg("migrate")
        .env("PORT", "eighty")
        .env("MEMORY_TOP_K", "-3")
        .output()
        .expect("run rose");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("PORT") && stderr.contains("MEMORY_TOP_K"),
        "{stderr}"
    );
}

#[test]
fn a_short_admin_token_stops_rose_naming_the_variable() {
    let out = rose()
        .arg("migrate")
        .env("ROSE_ADMIN_TOKEN", "adm")
        .output()
        .expect("run rose");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("ROSE_ADMIN_TOKEN") && stderr.contains("32"),
        "{stderr}"
    );
}

#[test]
fn scaled_roles_require_their_services() {
    let out = rose().arg("worker").output().expect("run rose");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DATABASE_URL") && stderr.contains("REDIS_URL"),
        "{stderr}"
    );
}

#[test]
fn the_scaled_api_requires_the_person_key_secret() {
    // Services named (not reached): the secret is checked before any connection.
    let out = rose()
        .arg("api")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .expect("run rose");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ROSE_PERSON_KEY_SECRET"), "{stderr}");
    // A short one is refused by name too, whatever the role.
    let out = rose()
        .arg("migrate")
        .env("ROSE_PERSON_KEY_SECRET", "short")
        .output()
        .expect("run rose");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ROSE_PERSON_KEY_SECRET") && stderr.contains("32"),
        "{stderr}"
    );
}

#[test]
fn migrate_creates_the_embedded_database() {
    let dir = tempfile::tempdir().expect("dir");
    let out = rose()
        .arg("migrate")
        .env("ROSE_DATA_DIR", dir.path())
        .output()
        .expect("run rose");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("rose.db").exists());
}

/// `rose serve`, then the README's curl flow, then a clean SIGTERM.
#[tokio::test]
async fn serve_answers_a_voice_job_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let mut server = Proc(
        rose()
            .args(["serve", "--port", &port.to_string()])
            .env("ROSE_DATA_DIR", dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("serve.log")).expect("log file"),
            ))
            .spawn()
            .expect("start rose serve"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    let health: Value = loop {
        if let Ok(r) = http.get(format!("{base}/api/health")).send().await {
            break r.json().await.expect("health json");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "rose serve did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health["status"], "healthy");
    assert_eq!(
        health["services"]["groq"], "simulated",
        "no key: the simulator, said loudly"
    );

    let session: Value = http
        .post(format!("{base}/api/session/start"))
        .send()
        .await
        .expect("session")
        .json()
        .await
        .expect("json");
    let wav = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/spoken.wav"
    ))
    .expect("fixture");
    let form = reqwest::multipart::Form::new()
        .part(
            "audio",
            reqwest::multipart::Part::bytes(wav).file_name("x.wav"),
        )
        .text(
            "session_id",
            session["session_id"].as_str().expect("id").to_owned(),
        );
    let accepted: Value = http
        .post(format!("{base}/api/voice/process"))
        .multipart(form)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    let job_id = accepted["job_id"].as_str().expect("job id");
    let job: Value = http
        .get(format!("{base}/api/jobs/{job_id}?wait=30"))
        .send()
        .await
        .expect("poll")
        .json()
        .await
        .expect("json");
    assert_eq!(job["status"], "succeeded", "{job}");
    let audio_url = job["result"]["audio_url"].as_str().expect("audio url");
    let audio = http
        .get(format!("{base}{audio_url}"))
        .send()
        .await
        .expect("audio");
    assert_eq!(audio.status(), 200);
    assert!(!audio.bytes().await.expect("bytes").is_empty());

    let status = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = server.0.try_wait().expect("wait") {
            let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
            assert!(
                status.success(),
                "rose serve exits 0 on SIGTERM: {status}; its log:\n{log}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rose serve did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn an_invalid_schedule_stops_rose_naming_the_variable() {
    let out = rose()
        .arg("migrate")
        .env("ROSE_SCHEDULE_BACKUP", "at two every night")
        .output()
        .expect("run rose");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ROSE_SCHEDULE_BACKUP"), "{stderr}");
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run rose");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn backup_create_list_verify_restore_from_the_command_line() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let with_env = |cmd: &mut Command| {
        cmd.env("ROSE_DATA_DIR", &data).env("RUST_LOG", "warn");
    };
    let mut migrate = rose();
    with_env(&mut migrate);
    run_ok(migrate.arg("migrate"));

    let mut create = rose();
    with_env(&mut create);
    let created = run_ok(create.args(["backup", "create"]));
    assert!(created.contains("backup created"), "{created}");

    let mut list = rose();
    with_env(&mut list);
    let listed: Value =
        serde_json::from_str(&run_ok(list.args(["backup", "list", "--json"]))).expect("json");
    let files = listed.as_array().expect("array");
    assert_eq!(files.len(), 1, "{listed}");
    let file = files[0]["path"].as_str().expect("path").to_owned();
    assert!(
        file.starts_with(&data.join("backups").display().to_string()),
        "{file}"
    );

    let mut verify = rose();
    with_env(&mut verify);
    run_ok(verify.args(["backup", "verify", &file]));

    // A truncated copy fails verify with a non-zero exit.
    let bytes = std::fs::read(&file).expect("read");
    let damaged = dir.path().join("damaged.sqlite");
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).expect("write");
    let mut bad = rose();
    with_env(&mut bad);
    let out = bad
        .args(["backup", "verify"])
        .arg(&damaged)
        .output()
        .expect("run");
    assert!(!out.status.success());

    // Restore into the (empty) configured database.
    let mut restore = rose();
    with_env(&mut restore);
    let restored = run_ok(restore.args(["backup", "restore", &file]));
    assert!(restored.contains("0 sessions, 0 jobs"), "{restored}");
}

/// `rose sim` with the realistic profile and a pacing flag: the flag wins,
/// the profile fills the rest; a rate that cannot pace is refused by name.
#[tokio::test]
async fn sim_takes_the_realistic_profile_and_pacing_flags() {
    let out = rose()
        .args(["sim", "--tokens-per-s", "0"])
        .output()
        .expect("run rose");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tokens-per-s"), "{stderr}");

    let port = free_port().to_string();
    let _sim = Proc(
        rose()
            .args(["sim", "--port", &port, "--profile", "realistic"])
            .args(["--ttft-ms", "80", "--tts-speed", "3"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rose sim"),
    );
    let url = format!("http://127.0.0.1:{port}/__sim/latency");
    let http = reqwest::Client::new();
    let started = Instant::now();
    let latency: Value = loop {
        if let Ok(r) = http.get(&url).send().await {
            break r.json().await.expect("latency json");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "rose sim did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(latency["ttft_ms"], 80);
    let effective = &latency["effective"];
    assert_eq!(effective["ttft_ms"], 80);
    assert_eq!(effective["tts_speed"], 3.0);
    assert_eq!(effective["tokens_per_s"], 250.0);
    assert_eq!(effective["tts_ttfb_ms"], 200);
    assert_eq!(effective["stt_speed"], 216.0);
}
