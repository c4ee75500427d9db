//! Real `rose` processes against Qdrant: four `rose serve` starting together
//! on an empty Qdrant, a `rose serve` started before Qdrant is up, and
//! `rose backup create` keeping Qdrant's snapshots to `BACKUP_KEEP`.
//!
//! Qdrant here is the stand-in of `rose_tests::qdrant` (no Qdrant server can
//! be installed on this machine): real gRPC and HTTP on loopback, answering
//! the calls Rose makes with Qdrant 1.15's status codes and messages.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use rose_shared::memory::qdrant::COLLECTION;
use rose_tests::process::{Proc, free_port};
use rose_tests::qdrant::StandIn;
use serde_json::Value;
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(60);

fn rose(dir: &std::path::Path, qdrant_url: &str, rest_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rose"));
    for var in [
        "DATABASE_URL",
        "REDIS_URL",
        "GROQ_API_KEY",
        "PORT",
        "BACKUP_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("ROSE_DATA_DIR", dir)
        .env("QDRANT_URL", qdrant_url)
        .env("QDRANT_REST_URL", rest_url)
        .env("EMBEDDING_MODEL_DIR", rose_tests::model_dir())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    cmd
}

/// Waits for `GET /api/health` to report Qdrant healthy; panics if `server`
/// exits first, with its log.
async fn until_qdrant_healthy(server: &mut Proc, base: &str, log: &std::path::Path) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = server.0.try_wait().expect("wait") {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("rose serve exited ({status}) before it served:\n{log}");
        }
        if let Ok(response) = http.get(format!("{base}/api/health")).send().await {
            let health: Value = response.json().await.expect("health json");
            assert_eq!(health["services"]["qdrant"], "healthy", "{health}");
            return;
        }
        assert!(Instant::now() < deadline, "{base} did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_servers_starting_together_on_an_empty_qdrant_all_serve() {
    let qdrant = StandIn::start().await;
    // All four are told the collection is missing, as when they start at once.
    qdrant.hold_exists_until(4);
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().expect("dir")).collect();
    let mut servers = Vec::new();
    for dir in &dirs {
        let port = free_port();
        let log = dir.path().join("serve.log");
        let server = Proc(
            rose(dir.path(), &qdrant.grpc_url, &qdrant.rest_url)
                .args(["serve", "--port", &port.to_string()])
                .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
                .spawn()
                .expect("start rose serve"),
        );
        servers.push((server, format!("http://127.0.0.1:{port}"), log));
    }
    for (server, base, log) in &mut servers {
        until_qdrant_healthy(server, base, log).await;
    }
    assert_eq!(
        qdrant.calls("create_collection"),
        4,
        "all four raced to create it"
    );
    let made = qdrant.collection(COLLECTION).expect("collection");
    assert_eq!(made.size, 384);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_before_qdrant_waits_for_it() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("dir");
    let api = free_port();
    let mut server = Proc(
        rose(
            dir.path(),
            &format!("http://127.0.0.1:{port}"),
            "http://127.0.0.1:1",
        )
        .args(["serve", "--port", &api.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rose serve"),
    );
    // The log (on stdout) says it is waiting.
    let stdout = server.0.stdout.take().expect("stdout");
    let (lines, said) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + LIMIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match said.recv_timeout(left) {
            Ok(line) if line.contains("Qdrant not answering yet; retrying") => break,
            Ok(line) => seen.push(line),
            Err(_) => panic!(
                "no retry was logged (exited: {:?}):\n{}",
                server.0.try_wait(),
                seen.join("\n")
            ),
        }
    }
    // Qdrant comes up on its port.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let _qdrant = StandIn::start_on(listener).await;
    let log = dir.path().join("none.log");
    until_qdrant_healthy(&mut server, &format!("http://127.0.0.1:{api}"), &log).await;
}

// Multi-threaded: the stand-in answers while this thread waits for `rose`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_create_keeps_qdrant_snapshots_to_backup_keep() {
    let qdrant = StandIn::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let backups = dir.path().join("backups");
    let run = |args: &[&str]| {
        let out = rose(dir.path(), &qdrant.grpc_url, &qdrant.rest_url)
            .env("BACKUP_DIR", &backups)
            .env("BACKUP_KEEP", "1")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run rose");
        assert!(
            out.status.success(),
            "rose {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["migrate"]);
    for _ in 0..3 {
        run(&["backup", "create"]);
    }
    assert_eq!(
        qdrant.snapshot_names(COLLECTION),
        Vec::<String>::new(),
        "no snapshot left on Qdrant"
    );
    let listed: Value = serde_json::from_str(&run(&["backup", "list", "--json"])).expect("json");
    let kinds: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|f| f["kind"].as_str())
        .collect();
    assert_eq!(kinds.len(), 2, "{listed}");
    assert!(
        kinds.contains(&"sqlite") && kinds.contains(&"qdrant"),
        "{listed}"
    );
    let database = listed
        .as_array()
        .expect("array")
        .iter()
        .find(|f| f["kind"] == "sqlite")
        .and_then(|f| f["path"].as_str())
        .expect("database backup")
        .to_owned();
    let verified = run(&["backup", "verify", &database]);
    assert_eq!(verified.lines().count(), 2, "both verified: {verified}");
}
