//! An idle Rose costs next to nothing: `rose serve` (the embedded default,
//! which runs on laptops) and the scaled roles `rose api` and `rose worker`
//! each use under 2 % of one core over 10 s with nothing to do. They wake on
//! events (a push, a blocking read, a timer for the next due job), never on
//! a polling loop.

use std::process::{Command, Stdio};
use std::time::Duration;

use rose_tests::process::{Proc, free_port, wait_for_api};
use rose_tests::{AppOptions, Deployment, spawn_app_with};
use tokio::time::Instant;

/// The budget: 2 % of one core.
const BUDGET: f64 = 0.02;
/// The window measured.
const WINDOW: Duration = Duration::from_secs(10);

/// Clock ticks per second of `/proc/*/stat`.
fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process runs");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / ticks_per_second()
}

/// The share of one core `pid` used over `window`.
async fn usage(pid: u32, window: Duration) -> f64 {
    let before = cpu_seconds(pid);
    tokio::time::sleep(window).await;
    (cpu_seconds(pid) - before) / window.as_secs_f64()
}

/// Waits for the start-up work (migrations, the embedding model) to end:
/// one quiet second in a row. A process that never goes quiet fails here.
async fn settle(name: &str, pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let share = usage(pid, Duration::from_secs(1)).await;
        if share < BUDGET {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never went quiet: {:.1} % of a core in its last second",
            share * 100.0
        );
    }
}

async fn assert_idle(name: &str, pid: u32) {
    settle(name, pid).await;
    let share = usage(pid, WINDOW).await;
    assert!(
        share < BUDGET,
        "an idle {name} used {:.2} % of a core over {WINDOW:?} (budget {:.0} %)",
        share * 100.0,
        BUDGET * 100.0
    );
}

fn rose(args: &[&str], env: &[(&str, String)]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rose"));
    cmd.args(args)
        .env_remove("GROQ_API_KEY")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("QDRANT_URL")
        .env("RUST_LOG", "warn")
        .env("EMBEDDING_MODEL_DIR", rose_tests::model_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().expect("start rose"))
}

#[tokio::test]
async fn an_idle_rose_serve_costs_next_to_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let serve = rose(
        &["serve", "--port", &port.to_string()],
        &[("ROSE_DATA_DIR", dir.path().display().to_string())],
    );
    wait_for_api(&reqwest::Client::new(), &format!("http://127.0.0.1:{port}")).await;
    assert_idle("rose serve", serve.0.id()).await;
}

#[tokio::test]
async fn idle_scaled_roles_cost_next_to_nothing() {
    // A schema, a key prefix and a simulator of this test's own; no roles in
    // this process.
    let app = spawn_app_with(
        Deployment::Scaled,
        AppOptions {
            no_worker: true,
            ..AppOptions::default()
        },
    )
    .await;
    let env = vec![
        ("DATABASE_URL", app.database_url().expect("scaled")),
        ("REDIS_URL", rose_tests::redis_url()),
        ("ROSE_REDIS_PREFIX", app.prefix.clone()),
        ("ROSE_SIMULATOR_URL", app.sim.url.clone()),
        ("ROSE_PERSON_KEY_SECRET", "p".repeat(32)),
    ];
    let port = free_port();
    let api = rose(&["api", "--port", &port.to_string()], &env);
    let worker = rose(&["worker"], &env);
    wait_for_api(&reqwest::Client::new(), &format!("http://127.0.0.1:{port}")).await;
    let (api_id, worker_id) = (api.0.id(), worker.0.id());
    tokio::join!(
        assert_idle("rose api", api_id),
        assert_idle("rose worker", worker_id)
    );
    drop((api, worker));
    app.stop().await;
}
