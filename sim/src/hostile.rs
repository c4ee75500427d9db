//! Hostile answers on demand (`POST /__sim/faults` with `answer`): the
//! next requests to an endpoint get a 200 that is not what the API
//! promises, to prove Rose survives a provider (or a proxy in front of it)
//! that misbehaves:
//! - `not_json`: an HTML error page with status 200 (and a JSON or audio
//!   content type, as a broken proxy sends it);
//! - `huge`: a 50 MB body, streamed, never built in memory;
//! - `endless`: the headers and a first byte, then nothing, for good.
//!
//! The request's body is read first (as a real server does), then the
//! answer replaces the endpoint's own.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::Sim;
use crate::state::Endpoint;

/// What a hostile answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Hostile {
    NotJson,
    Huge,
    Endless,
}

impl Hostile {
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "not_json" => Some(Self::NotJson),
            "huge" => Some(Self::Huge),
            "endless" => Some(Self::Endless),
            _ => None,
        }
    }
}

/// A `huge` answer's size.
pub(crate) const HUGE_BYTES: usize = 50 * 1024 * 1024;

/// The provider endpoint a path names, if any.
fn endpoint_of(path: &str) -> Option<Endpoint> {
    if path.ends_with("/audio/transcriptions") {
        Some(Endpoint::Transcriptions)
    } else if path.ends_with("/chat/completions") {
        Some(Endpoint::ChatCompletions)
    } else if path.contains("/text-to-speech/") {
        Some(Endpoint::TextToSpeech)
    } else if path.ends_with("/audio/speech") {
        Some(Endpoint::Speech)
    } else {
        None
    }
}

/// Answers with a queued hostile answer for the request's endpoint, if
/// one is queued; else lets the request through.
pub(crate) async fn hostile(State(sim): State<Sim>, req: Request, next: Next) -> Response {
    let Some(endpoint) = endpoint_of(req.uri().path()) else {
        return next.run(req).await;
    };
    let Some(answer) = sim.state().take_hostile(endpoint) else {
        return next.run(req).await;
    };
    let _ = axum::body::to_bytes(req.into_body(), crate::MAX_BODY_BYTES).await;
    let content_type = match endpoint {
        Endpoint::TextToSpeech | Endpoint::Speech => "audio/mpeg",
        _ => "application/json",
    };
    let body = match answer {
        Hostile::NotJson => {
            Body::from("<html><body><h1>502 Bad Gateway</h1><p>upstream hiccup</p></body></html>")
        }
        Hostile::Huge => {
            let block = Bytes::from(vec![b' '; 64 * 1024]);
            let parts = HUGE_BYTES / block.len();
            Body::from_stream(futures::stream::iter(
                (0..parts).map(move |_| Ok::<_, Infallible>(block.clone())),
            ))
        }
        Hostile::Endless => {
            let first = futures::stream::once(async { Ok::<_, Infallible>(Bytes::from("{")) });
            Body::from_stream(futures::StreamExt::chain(first, futures::stream::pending()))
        }
    };
    let mut response = (StatusCode::OK, body).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
