//! The web client in a real browser: runs `tests/browser` (node's test
//! runner, playwright-core, Debian's Chromium) against this build's `rose`.
//!
//! Outside CI, a machine without Node.js, Chromium, the npm packages,
//! espeak-ng or the sqlite3 shell skips the test and says why; `scripts/test`
//! installs them, and under CI a missing piece fails the test instead.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROSE: &str = env!("CARGO_BIN_EXE_rose");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// What is missing to run the browser tests, if anything.
fn missing(dir: &Path, chromium: &str) -> Option<String> {
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Some("node is not installed".to_owned());
    }
    if !Path::new(chromium).exists() {
        return Some(format!(
            "{chromium} is not installed (Debian package chromium)"
        ));
    }
    if !dir.join("node_modules/playwright-core").exists() {
        return Some("playwright-core is not installed (npm ci in tests/browser)".to_owned());
    }
    let espeak = Command::new("espeak-ng").arg("--version").output();
    if !espeak.is_ok_and(|o| o.status.success()) {
        return Some("espeak-ng is not installed".to_owned());
    }
    // The memory test reads the embedded database beside the running server.
    let sqlite = Command::new("sqlite3").arg("-version").output();
    if !sqlite.is_ok_and(|o| o.status.success()) {
        return Some("sqlite3 is not installed (Debian package sqlite3)".to_owned());
    }
    None
}

#[test]
fn web_client_in_chromium() {
    let root = repo();
    let dir = root.join("tests/browser");
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if let Some(why) = missing(&dir, &chromium) {
        assert!(
            std::env::var_os("CI").is_none(),
            "browser tests cannot run under CI: {why}"
        );
        eprintln!("SKIPPED web_client_in_chromium: {why}; scripts/test installs it");
        return;
    }
    let artifacts = root.join("target/browser-artifacts");
    let output = Command::new("node")
        .args([
            "--test",
            "--test-concurrency=1",
            "--test-timeout=120000",
            ".",
        ])
        .current_dir(&dir)
        .env("ROSE_BIN", ROSE)
        .env("ROSE_ARTIFACTS", &artifacts)
        .env("CHROMIUM_PATH", &chromium)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "browser tests failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("# fail 0") && !stdout.contains("# pass 0"),
        "{stdout}"
    );
    println!("{stdout}\nscreenshots in {}", artifacts.display());
}
