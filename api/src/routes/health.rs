//! `GET /api/health`: the database and the queue are checked for real (each
//! bounded by a short timeout); providers are reported without spending
//! their quota: `simulated` when the simulator answers, `disabled` when not
//! used. 503 only when Rose cannot serve at all (database or queue down).

use std::future::Future;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use rose_shared::Rose;
use rose_shared::config::TtsProvider;
use rose_shared::queue::Queue;
use serde_json::{Value, json};

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Health routes.
pub fn router() -> Router<Rose> {
    Router::new().route("/api/health", get(health))
}

async fn check<E: std::fmt::Display>(
    what: &str,
    fut: impl Future<Output = Result<(), E>>,
) -> &'static str {
    match tokio::time::timeout(CHECK_TIMEOUT, fut).await {
        Ok(Ok(())) => "healthy",
        Ok(Err(e)) => {
            tracing::warn!(service = what, error = %e, "health check failed");
            "unhealthy"
        }
        Err(_) => {
            tracing::warn!(service = what, "health check timed out");
            "unhealthy"
        }
    }
}

async fn health(State(rose): State<Rose>) -> (StatusCode, Json<Value>) {
    let (database, queue) = tokio::join!(
        check("database", rose.store.ping()),
        check("queue", rose.queue.ping()),
    );
    let redis = match rose.queue {
        Queue::Redis(_) => queue,
        Queue::Sqlite(_) => "disabled",
    };
    let provider = if rose.providers.simulated {
        "simulated"
    } else {
        "healthy"
    };
    let elevenlabs = match rose.config.tts_provider {
        TtsProvider::ElevenLabs => provider,
        _ => "disabled",
    };
    let status = if database == "unhealthy" || queue == "unhealthy" {
        "unhealthy"
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
        "services": {
            "database": database,
            "queue": queue,
            "redis": redis,
            "qdrant": "disabled",
            "groq": provider,
            "elevenlabs": elevenlabs,
        },
        "deployment": {
            "database": rose.store.backend(),
            "queue": rose.queue.kind(),
        },
        "circuit_breakers": {},
    });
    (code, Json(body))
}
