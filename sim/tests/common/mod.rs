//! A simulator on a random loopback port per test, and request helpers.

#![allow(dead_code)]

use rose_sim::{Latency, Profile, Sim, SimConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const KEY: &str = "test-key";

/// A running simulator; stops when dropped.
pub struct TestSim {
    pub url: String,
    pub sim: Sim,
    pub http: reqwest::Client,
    token: CancellationToken,
}

impl TestSim {
    pub async fn start() -> Self {
        Self::with(SimConfig::default()).await
    }

    pub async fn with_profile(profile: Profile, latency: Latency) -> Self {
        Self::with(SimConfig {
            latency,
            profile: Some(profile),
            ..SimConfig::default()
        })
        .await
    }

    pub async fn with(config: SimConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let sim = Sim::new(config);
        let token = CancellationToken::new();
        tokio::spawn(rose_sim::serve(listener, sim.clone(), token.clone()));
        Self {
            url,
            sim,
            http: reqwest::Client::new(),
            token,
        }
    }

    /// `path` under Groq's base.
    pub fn groq(&self, path: &str) -> String {
        format!("{}/openai/v1{path}", self.url)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// A transcription request with `file` and `model`.
    pub async fn transcribe(&self, audio: Vec<u8>, model: &str) -> reqwest::Response {
        let form = reqwest::multipart::Form::new()
            .part(
                "file",
                reqwest::multipart::Part::bytes(audio).file_name("speech.wav"),
            )
            .text("model", model.to_owned());
        self.http
            .post(self.groq("/audio/transcriptions"))
            .bearer_auth(KEY)
            .multipart(form)
            .send()
            .await
            .expect("send")
    }

    pub async fn chat(&self, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.groq("/chat/completions"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .expect("send")
    }

    pub async fn tts(&self, body: serde_json::Value, query: &str) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/v1/text-to-speech/voice123{query}")))
            .header("xi-api-key", KEY)
            .json(&body)
            .send()
            .await
            .expect("send")
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json")
    }

    pub async fn fault(&self, body: serde_json::Value) {
        let response = self
            .http
            .post(self.url("/__sim/faults"))
            .json(&body)
            .send()
            .await
            .expect("send");
        assert!(response.status().is_success(), "{}", response.status());
    }
}

impl Drop for TestSim {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A chat body with one user message.
pub fn chat_body(user: &str) -> serde_json::Value {
    serde_json::json!({
        "model": "llama-3.3-70b-versatile",
        "messages": [
            {"role": "system", "content": "You are Rose, a gentle healer."},
            {"role": "user", "content": user},
        ],
        "temperature": 0.7,
    })
}

/// A short spoken-looking WAV with `comment` as its ICMT.
pub fn wav(comment: Option<&str>) -> Vec<u8> {
    let samples: Vec<i16> = (0..1_600).map(|i| ((i % 40) * 100) as i16).collect();
    rose_shared::audio::build_wav(16_000, &samples, comment)
}

/// The status and JSON body of an error answer.
pub async fn error_of(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    (status, response.json().await.expect("json error body"))
}
