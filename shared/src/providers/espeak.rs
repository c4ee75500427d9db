//! Local text-to-speech with `espeak-ng` (no network, no key): WAV on stdout.

use std::process::Stdio;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use super::{ProviderError, Speech, TextToSpeech};

const PROVIDER: &str = "espeak";

/// Runs `espeak-ng` per reply.
#[derive(Debug, Clone)]
pub struct Espeak {
    /// The binary to run.
    pub program: String,
    /// The voice, e.g. `en-us+f3` (a softer female variant).
    pub voice: String,
    /// Words per minute; slower reads calmer.
    pub speed: u32,
}

impl Default for Espeak {
    fn default() -> Self {
        Self {
            program: "espeak-ng".to_owned(),
            voice: "en-us+f3".to_owned(),
            speed: 145,
        }
    }
}

#[async_trait]
impl TextToSpeech for Espeak {
    async fn speak(&self, text: &str) -> Result<Speech, ProviderError> {
        let mut child = tokio::process::Command::new(&self.program)
            .args([
                "--stdout",
                "--stdin",
                "-v",
                &self.voice,
                "-s",
                &self.speed.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                ProviderError::permanent(
                    PROVIDER,
                    None,
                    format!("cannot run {}: {e}", self.program),
                )
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(text.as_bytes())
                .await
                .map_err(|e| ProviderError::transient(PROVIDER, None, e.to_string()))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| ProviderError::transient(PROVIDER, None, e.to_string()))?;
        if !out.status.success() || out.stdout.is_empty() {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            return Err(ProviderError::permanent(
                PROVIDER,
                None,
                format!("espeak-ng failed: {err}"),
            ));
        }
        Ok(Speech {
            bytes: out.stdout,
            mime: "audio/wav".to_owned(),
        })
    }
}
