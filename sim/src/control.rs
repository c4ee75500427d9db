//! The simulator's own control routes under `/__sim` (no auth; loopback use).
//!
//! `GET stats`, `GET requests` (the recorder's log), `POST reset`,
//! `GET|POST|DELETE faults` and `GET|PUT latency`. Errors here are Rose's own
//! shape, `{"error": {"code", "message"}}`, since no provider answers them.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::state::{Endpoint, Fault, lock};
use crate::{Latency, Sim, Stats};

/// The control routes, relative to `/__sim`.
pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route("/stats", get(stats))
        .route("/requests", get(requests))
        .route("/reset", post(reset))
        .route(
            "/faults",
            get(list_faults).post(add_fault).delete(clear_faults),
        )
        .route("/latency", get(latency).put(set_latency))
}

fn bad_request(message: impl Into<String>) -> Response {
    let body = json!({"error": {"code": "invalid_request", "message": message.into()}});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

async fn stats(State(sim): State<Sim>) -> Json<Stats> {
    Json(sim.stats())
}

async fn requests(State(sim): State<Sim>) -> Json<Value> {
    let entries = lock(&sim.state().log).snapshot();
    Json(json!({ "requests": entries }))
}

/// Zeroes counters, the request log and rate-limit windows; faults and latency stay.
async fn reset(State(sim): State<Sim>) -> Json<Stats> {
    sim.state().reset();
    Json(sim.stats())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    endpoint: String,
    status: u16,
    #[serde(default = "one")]
    count: u32,
    #[serde(default)]
    retry_after: Option<f64>,
    #[serde(default)]
    body: Option<Value>,
}

fn one() -> u32 {
    1
}

fn faults_body(sim: &Sim) -> Json<Value> {
    Json(json!({ "faults": sim.state().faults() }))
}

async fn list_faults(State(sim): State<Sim>) -> Json<Value> {
    faults_body(&sim)
}

async fn add_fault(State(sim): State<Sim>, body: Bytes) -> Response {
    let request: FaultRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid fault: {e}")),
    };
    let Some(endpoint) = Endpoint::parse(&request.endpoint) else {
        return bad_request(format!(
            "unknown endpoint {:?}: expected transcriptions, chat_completions, text_to_speech or speech",
            request.endpoint
        ));
    };
    if !(400..=599).contains(&request.status) {
        return bad_request("status must be an error status, 400 to 599");
    }
    if request.count == 0 {
        return bad_request("count must be at least 1");
    }
    if let Some(secs) = request.retry_after
        && !(secs.is_finite() && secs >= 0.0)
    {
        return bad_request("retry_after must be a non-negative number of seconds");
    }
    sim.state().add_fault(Fault {
        endpoint: endpoint.name(),
        status: request.status,
        count: request.count,
        retry_after: request.retry_after,
        body: request.body,
    });
    tracing::debug!(
        endpoint = endpoint.name(),
        status = request.status,
        count = request.count,
        "sim fault queued"
    );
    (StatusCode::CREATED, faults_body(&sim)).into_response()
}

async fn clear_faults(State(sim): State<Sim>) -> Json<Value> {
    sim.state().clear_faults();
    faults_body(&sim)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyRequest {
    stt_ms: Option<u64>,
    llm_ms: Option<u64>,
    tts_ms: Option<u64>,
}

fn latency_body(latency: Latency) -> Json<Value> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Json(json!({"stt_ms": ms(latency.stt), "llm_ms": ms(latency.llm), "tts_ms": ms(latency.tts)}))
}

async fn latency(State(sim): State<Sim>) -> Json<Value> {
    latency_body(sim.state().latency())
}

/// Sets the latencies given; the others keep their values.
async fn set_latency(State(sim): State<Sim>, body: Bytes) -> Response {
    let request: LatencyRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid latency: {e}")),
    };
    let mut latency = sim.state().latency();
    if let Some(ms) = request.stt_ms {
        latency.stt = Duration::from_millis(ms);
    }
    if let Some(ms) = request.llm_ms {
        latency.llm = Duration::from_millis(ms);
    }
    if let Some(ms) = request.tts_ms {
        latency.tts = Duration::from_millis(ms);
    }
    sim.state().set_latency(latency);
    latency_body(latency).into_response()
}
