//! `GET /api/health`: the database, the queue and vector memory are checked
//! for real (each
//! bounded by a short timeout); providers are reported from their circuit
//! breakers, without spending their quota: `unhealthy` while a breaker is
//! open, `degraded` while it is half-open or counting failures, otherwise
//! `healthy` (or `simulated` when the simulator answers); `disabled` when not
//! used. `memory` is long-term memory as a whole — the embedding model and
//! the vector store — `unhealthy` when either cannot work, with the reason
//! under `reasons.memory` (`qdrant` stays the store alone). The overall
//! status is `degraded` when a provider or memory is not healthy; 503 only
//! when Rose cannot serve at all (database or queue down).

use std::future::Future;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use rose_shared::Rose;
use rose_shared::config::TtsProvider;
use rose_shared::queue::Queue;
use rose_shared::resilience::{Snapshot, State as Breaker};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Health routes.
pub fn router() -> OpenApiRouter<Rose> {
    OpenApiRouter::new().routes(routes!(health))
}

async fn check<E: std::fmt::Display>(
    what: &str,
    fut: impl Future<Output = Result<(), E>>,
) -> &'static str {
    check_why(what, fut).await.0
}

/// [`check`], with the reason when it failed.
async fn check_why<E: std::fmt::Display>(
    what: &str,
    fut: impl Future<Output = Result<(), E>>,
) -> (&'static str, Option<String>) {
    match tokio::time::timeout(CHECK_TIMEOUT, fut).await {
        Ok(Ok(())) => ("healthy", None),
        Ok(Err(e)) => {
            tracing::warn!(service = what, error = %e, "health check failed");
            ("unhealthy", Some(e.to_string()))
        }
        Err(_) => {
            tracing::warn!(service = what, "health check timed out");
            ("unhealthy", Some(format!("no answer in {CHECK_TIMEOUT:?}")))
        }
    }
}

/// `{"status", "simulated", "services": {database, queue, redis, qdrant,
/// memory, groq, elevenlabs}, "reasons": {service: why}, "deployment",
/// "circuit_breakers"}`.
#[utoipa::path(
    get,
    path = "/api/health",
    tag = "operations",
    responses(
        (status = 200, description = "Rose can serve (`healthy` or `degraded`)", body = serde_json::Value),
        (status = 503, description = "The database or the queue is down", body = serde_json::Value),
    )
)]
async fn health(State(rose): State<Rose>) -> (StatusCode, Json<Value>) {
    let (database, queue, memory, breakers) = tokio::join!(
        check("database", rose.store.ping()),
        check("queue", rose.queue.ping()),
        async {
            let started = std::time::Instant::now();
            let state = check_why("memory", rose.memory.store.ping()).await;
            tracing::debug!(
                store = rose.memory.store.kind(),
                state = state.0,
                qdrant_duration_ms = started.elapsed().as_millis() as u64,
                "vector memory checked"
            );
            state
        },
        rose.resilience.breaker_states(),
    );
    let healthy = if rose.providers.simulated {
        "simulated"
    } else {
        "healthy"
    };
    let judge = |providers: &[&str]| {
        let states: Vec<&Snapshot> = providers.iter().filter_map(|p| breakers.get(p)).collect();
        if states.iter().any(|s| s.state == Breaker::Open) {
            "unhealthy"
        } else if states
            .iter()
            .any(|s| s.state == Breaker::HalfOpen || s.failures > 0)
        {
            "degraded"
        } else {
            healthy
        }
    };
    let redis = match rose.queue {
        Queue::Redis(_) => queue,
        Queue::Sqlite(_) => "disabled",
    };
    let (store, store_reason) = memory;
    // The embedded store lives in the database: its check is the database's.
    let qdrant = match rose.memory.store.kind() {
        "qdrant" => store,
        _ => "disabled",
    };
    let mut reasons = serde_json::Map::new();
    let memory = match (rose.memory.model_health(), store_reason) {
        (Ok(()), None) => "healthy",
        (model, store) => {
            let why: Vec<String> = model.err().into_iter().chain(store).collect();
            reasons.insert("memory".to_owned(), Value::String(why.join("; ")));
            "unhealthy"
        }
    };
    let groq = judge(&["stt", "llm"]);
    let elevenlabs = match rose.config.tts_provider {
        TtsProvider::ElevenLabs => judge(&["tts"]),
        _ => "disabled",
    };
    let status = if database == "unhealthy" || queue == "unhealthy" {
        "unhealthy"
    } else if [groq, elevenlabs, qdrant, memory]
        .iter()
        .any(|s| matches!(*s, "unhealthy" | "degraded"))
    {
        "degraded"
    } else {
        "healthy"
    };
    let code = if status == "unhealthy" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = json!({
        "status": status,
        "timestamp": rose_shared::domain::rfc3339(rose_shared::domain::now_ms()),
        "version": env!("CARGO_PKG_VERSION"),
        // The providers are Rose's simulator, not Groq and ElevenLabs.
        "simulated": rose.providers.simulated,
        "services": {
            "database": database,
            "queue": queue,
            "redis": redis,
            "qdrant": qdrant,
            "memory": memory,
            "groq": groq,
            "elevenlabs": elevenlabs,
        },
        // Why a service is not healthy, where Rose can tell.
        "reasons": reasons,
        "deployment": {
            "database": rose.store.backend(),
            "queue": rose.queue.kind(),
            "memory": rose.memory.store.kind(),
        },
        "circuit_breakers": breakers,
    });
    (code, Json(body))
}
