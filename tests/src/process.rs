//! Real `rose` processes in tests: a guard that stops them, free ports, and
//! waiting for an api to answer.

use std::net::TcpListener;
use std::process::Child;
use std::time::{Duration, Instant};

/// A child process killed (and reaped) when the guard drops.
pub struct Proc(pub Child);

impl Proc {
    /// Kills it with SIGKILL, as a crash or the OOM killer would (it is
    /// reaped when the guard drops).
    ///
    /// # Panics
    /// When the signal cannot be sent.
    pub fn kill9(&self) {
        let status = std::process::Command::new("kill")
            .args(["-KILL", &self.0.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "SIGKILL to {}", self.0.id());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on right now.
///
/// # Panics
/// When no port can be bound.
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Waits until `GET {base}/api/health` answers at all (any status).
///
/// # Panics
/// When it does not within a minute.
pub async fn wait_for_api(http: &reqwest::Client, base: &str) {
    let started = Instant::now();
    while http.get(format!("{base}/api/health")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{base} did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
