//! The simulator's own control routes under `/__sim` (no auth; loopback use).
//!
//! `GET stats`, `GET requests` (the recorder's log), `POST reset`,
//! `GET|POST|DELETE faults`, `GET|PUT|POST latency` and
//! `GET|POST|DELETE outage`.
//!
//! `POST faults` takes `{"endpoint", "status", "count", "retry_after",
//! "body"}` (the next `count` requests to that endpoint answer `status`), or
//! for a broken reply stream `{"endpoint": "chat_completions", "stream":
//! "cut" | "malformed" | "stall", "after_words": n, "count"}`: the next
//! `count` streamed chat answers send `n` words, then end without `[DONE]`,
//! send a chunk that is not JSON, or go silent for good; or a hostile 200,
//! `{"endpoint", "answer": "not_json" | "huge" | "endless", "count"}` (see
//! `hostile.rs`).
//! Errors here are Rose's own shape, `{"error": {"code", "message"}}`, since
//! no provider answers them; an invalid control body is a 400.
//!
//! `POST outage` takes `{"endpoint": name | null, "seconds": number}` and
//! makes that endpoint (every provider endpoint when `endpoint` is null or
//! absent) answer 503 in its provider's shape for the next `seconds`,
//! whatever the profile; `DELETE outage` ends such outages now. All three
//! answer `{"outages": {name: seconds_left | null, …}}`.
//!
//! `PUT latency` (or `POST`) changes the timing of later requests (a
//! running stream keeps its own): `stt_ms`, `llm_ms`, `tts_ms` set the
//! latencies; `ttft_ms`, `tokens_per_s`, `tts_ttfb_ms`, `tts_speed` and
//! `stt_speed` set the pacing knobs, and `null` unsets one (back to the
//! latency, instant, or the `realistic` profile's figure). Fields left out
//! keep their values. `GET latency` shows the same fields, then under
//! `effective` what a request starting now gets (`null` rates are
//! instant).

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::hostile::Hostile;
use crate::pacing::Timing;
use crate::state::{Endpoint, Fault, HostileFault, StreamBreak, StreamFault, lock};
use crate::{Latency, Pacing, Sim, Stats};

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
        .route("/latency", get(latency).put(set_latency).post(set_latency))
        .route(
            "/outage",
            get(list_outages).post(start_outage).delete(end_outage),
        )
}

fn bad_request(message: impl Into<String>) -> Response {
    let body = json!({"error": {"code": "invalid_request", "message": message.into()}});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// An endpoint by name, or the message of a 400.
fn parse_endpoint(name: &str) -> Result<Endpoint, String> {
    Endpoint::parse(name).ok_or_else(|| {
        format!(
            "unknown endpoint {name:?}: expected transcriptions, chat_completions, text_to_speech or speech"
        )
    })
}

async fn stats(State(sim): State<Sim>) -> Json<Stats> {
    Json(sim.stats())
}

async fn requests(State(sim): State<Sim>) -> Json<Value> {
    let entries = lock(&sim.state().log).snapshot();
    Json(json!({ "requests": entries }))
}

/// Zeroes every stats figure, the request log and rate-limit windows; faults,
/// outages and latency stay.
async fn reset(State(sim): State<Sim>) -> Json<Stats> {
    sim.state().reset();
    Json(sim.stats())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    endpoint: String,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    answer: Option<String>,
    #[serde(default)]
    after_words: usize,
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
    Json(json!({
        "faults": sim.state().faults(),
        "stream_faults": sim.state().stream_faults(),
        "hostile": sim.state().hostile_faults(),
    }))
}

async fn list_faults(State(sim): State<Sim>) -> Json<Value> {
    faults_body(&sim)
}

async fn add_fault(State(sim): State<Sim>, body: Bytes) -> Response {
    let request: FaultRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid fault: {e}")),
    };
    let endpoint = match parse_endpoint(&request.endpoint) {
        Ok(endpoint) => endpoint,
        Err(message) => return bad_request(message),
    };
    if request.count == 0 {
        return bad_request("count must be at least 1");
    }
    if let Some(answer) = &request.answer {
        let Some(answer) = Hostile::parse(answer) else {
            return bad_request("answer must be not_json, huge or endless");
        };
        sim.state().add_hostile(HostileFault {
            endpoint: endpoint.name(),
            answer,
            count: request.count,
        });
        return (StatusCode::CREATED, faults_body(&sim)).into_response();
    }
    if let Some(stream) = &request.stream {
        let Some(stream) = StreamBreak::parse(stream) else {
            return bad_request("stream must be cut, malformed or stall");
        };
        if endpoint != Endpoint::ChatCompletions {
            return bad_request("a broken stream is a chat_completions fault");
        }
        sim.state().add_stream_fault(StreamFault {
            stream,
            after_words: request.after_words,
            count: request.count,
        });
        return (StatusCode::CREATED, faults_body(&sim)).into_response();
    }
    let Some(status) = request.status.filter(|s| (400..=599).contains(s)) else {
        return bad_request("status must be an error status, 400 to 599");
    };
    if let Some(secs) = request.retry_after
        && !(secs.is_finite() && secs >= 0.0)
    {
        return bad_request("retry_after must be a non-negative number of seconds");
    }
    sim.state().add_fault(Fault {
        endpoint: endpoint.name(),
        status,
        count: request.count,
        retry_after: request.retry_after,
        body: request.body,
    });
    tracing::debug!(
        endpoint = endpoint.name(),
        status,
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
    /// Absent: unchanged; `null`: unset; a value: set.
    #[serde(default, deserialize_with = "present")]
    ttft_ms: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    tokens_per_s: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    tts_ttfb_ms: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    tts_speed: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    stt_speed: Option<Option<f64>>,
}

/// A field that is present, possibly `null`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn latency_body(latency: Latency, pacing: Pacing, timing: Timing) -> Json<Value> {
    Json(json!({
        "stt_ms": ms(latency.stt),
        "llm_ms": ms(latency.llm),
        "tts_ms": ms(latency.tts),
        "ttft_ms": pacing.ttft.map(ms),
        "tokens_per_s": pacing.tokens_per_s,
        "tts_ttfb_ms": pacing.tts_ttfb.map(ms),
        "tts_speed": pacing.tts_speed,
        "stt_speed": pacing.stt_speed,
        "effective": {
            "stt_ms": ms(timing.stt_first),
            "stt_speed": timing.stt_speed,
            "ttft_ms": ms(timing.ttft),
            "tokens_per_s": timing.tokens_per_s,
            "tts_ttfb_ms": ms(timing.tts_ttfb),
            "tts_speed": timing.tts_speed,
        },
    }))
}

fn current_latency(sim: &Sim) -> Json<Value> {
    let state = sim.state();
    latency_body(state.latency(), state.pacing(), state.timing())
}

async fn latency(State(sim): State<Sim>) -> Json<Value> {
    current_latency(&sim)
}

/// A rate that can pace: finite and positive.
fn check_rate(name: &str, rate: Option<Option<f64>>) -> Result<(), String> {
    match rate {
        Some(Some(r)) if !(r.is_finite() && r > 0.0) => {
            Err(format!("{name} must be a positive number"))
        }
        _ => Ok(()),
    }
}

/// Sets the latencies and pacing knobs given; the others keep their values.
async fn set_latency(State(sim): State<Sim>, body: Bytes) -> Response {
    let request: LatencyRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid latency: {e}")),
    };
    for (name, rate) in [
        ("tokens_per_s", request.tokens_per_s),
        ("tts_speed", request.tts_speed),
        ("stt_speed", request.stt_speed),
    ] {
        if let Err(message) = check_rate(name, rate) {
            return bad_request(message);
        }
    }
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
    let mut pacing = sim.state().pacing();
    if let Some(ttft) = request.ttft_ms {
        pacing.ttft = ttft.map(Duration::from_millis);
    }
    if let Some(ttfb) = request.tts_ttfb_ms {
        pacing.tts_ttfb = ttfb.map(Duration::from_millis);
    }
    if let Some(rate) = request.tokens_per_s {
        pacing.tokens_per_s = rate;
    }
    if let Some(speed) = request.tts_speed {
        pacing.tts_speed = speed;
    }
    if let Some(speed) = request.stt_speed {
        pacing.stt_speed = speed;
    }
    sim.state().set_latency(latency);
    sim.state().set_pacing(pacing);
    current_latency(&sim).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutageRequest {
    #[serde(default)]
    endpoint: Option<String>,
    seconds: f64,
}

fn outages_body(sim: &Sim) -> Json<Value> {
    let outages: serde_json::Map<String, Value> = sim
        .state()
        .outages()
        .remaining(Instant::now())
        .into_iter()
        .map(|(endpoint, left)| {
            let left = left.map_or(Value::Null, |d| json!(d.as_secs_f64()));
            (endpoint.name().to_owned(), left)
        })
        .collect();
    Json(json!({ "outages": outages }))
}

async fn list_outages(State(sim): State<Sim>) -> Json<Value> {
    outages_body(&sim)
}

/// Starts a run-time outage on one endpoint or all four.
async fn start_outage(State(sim): State<Sim>, body: Bytes) -> Response {
    let request: OutageRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid outage: {e}")),
    };
    let endpoint = match request.endpoint.as_deref().map(parse_endpoint).transpose() {
        Ok(endpoint) => endpoint,
        Err(message) => return bad_request(message),
    };
    if !(request.seconds.is_finite() && request.seconds > 0.0) {
        return bad_request("seconds must be a positive number");
    }
    let until = Duration::try_from_secs_f64(request.seconds)
        .ok()
        .and_then(|d| Instant::now().checked_add(d));
    let Some(until) = until else {
        return bad_request("seconds is too large");
    };
    sim.state().outages().start(endpoint, until);
    tracing::debug!(
        endpoint = endpoint.map_or("all", Endpoint::name),
        seconds = request.seconds,
        "sim outage started"
    );
    outages_body(&sim).into_response()
}

/// Ends every run-time outage now (the `outage` profile's is not affected).
async fn end_outage(State(sim): State<Sim>) -> Json<Value> {
    sim.state().outages().end();
    outages_body(&sim)
}
