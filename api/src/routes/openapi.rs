//! `GET /api/openapi.json`: the OpenAPI 3.1 document of every `/api` route.
//!
//! Routes are registered through `utoipa_axum`'s `routes!`, which takes the
//! path and method from each handler's `#[utoipa::path]`, so a route cannot
//! be served without being documented; bodies are the handlers' own types.

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use rose_shared::Rose;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi};

/// The document's frame: title, version, tags and the admin token scheme.
#[must_use]
pub fn base() -> OpenApi {
    let mut doc = OpenApi::default();
    doc.info = InfoBuilder::new()
        .title("Rose")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Rose, a voice companion for people carrying grief: upload a recording (or typed \
             words), follow the job by polling, Server-Sent Events or a signed callback, and \
             fetch Rose's spoken reply.",
        ))
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "admin_token",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    doc
}

/// Serves the finished document.
pub fn router(doc: OpenApi) -> Router<Rose> {
    let doc = Arc::new(doc);
    Router::new().route(
        "/api/openapi.json",
        get(move || {
            let doc = Arc::clone(&doc);
            async move { Json(doc.as_ref().clone()) }
        }),
    )
}
