//! `GET /api/resources`: the human resources Rose points a person to — what
//! the web client's always-visible "Need help now?" link opens, and what a
//! crisis turn's reply carries (`ROSE_CRISIS_RESOURCES`). Public, without a
//! rate limit: someone looking for help is never turned away.

use axum::Json;
use axum::extract::State;
use rose_shared::Rose;
use rose_shared::safety::CrisisResource;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Resource routes.
pub fn router() -> OpenApiRouter<Rose> {
    OpenApiRouter::new().routes(routes!(resources))
}

/// The resources Rose offers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Resources {
    /// For a person thinking of ending their life or harming themselves.
    pub crisis: CrisisResource,
}

/// The crisis resource (text and URL) the web client's "Need help now?"
/// link points to and a crisis turn's reply ends with.
#[utoipa::path(
    get,
    path = "/api/resources",
    tag = "safety",
    responses((status = 200, description = "The configured resources", body = Resources))
)]
async fn resources(State(rose): State<Rose>) -> Json<Resources> {
    Json(Resources {
        crisis: rose.config.crisis_resource.clone(),
    })
}
