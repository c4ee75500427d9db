//! The request recorder: a middleware that keeps the last `log_capacity`
//! provider requests for `GET /__sim/requests`.
//!
//! It buffers each body once (bounded by [`crate::MAX_BODY_BYTES`]), writes a
//! summary into the log *when the request arrives* (`at_ms`; the log is in
//! arrival order, newest last), fills in the status when the answer's head
//! leaves and `done_ms` when its body is over: the body is wrapped so that
//! the moment hyper lets go of it (after the last byte of a stream, before
//! the end of the response reaches the client) is written down.
//! Secrets never reach the log: `authorization`, `xi-api-key`, cookies and
//! every header whose name contains "key" or "token" are replaced by
//! `[redacted]`. Bodies are summarised: JSON as parsed, multipart as its text
//! fields plus `{filename, content_type, size}` per file, anything else as
//! `{size}`. A connection the flaky profile dropped is logged with
//! `"status": null, "dropped": true` and no `done_ms`. Requests under `/__sim` are not
//! recorded. Each request is traced at debug level only, without its body.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::dropped::Dropped;
use crate::form::{self, FieldValue};
use crate::state::lock;
use crate::{MAX_BODY_BYTES, Sim};

/// One recorded request.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Entry {
    #[serde(skip)]
    id: u64,
    method: String,
    path: String,
    query: Option<String>,
    /// `None` while the answer is still being prepared, or when it was never
    /// sent (`dropped`).
    status: Option<u16>,
    /// The flaky profile closed the connection instead of answering; shown
    /// only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dropped: bool,
    headers: Map<String, Value>,
    body: Value,
    /// When the request arrived (unix ms).
    at_ms: u64,
    /// When the answer's last byte was sent (unix ms); `None` while it is
    /// being answered or streamed, and for a dropped connection.
    done_ms: Option<u64>,
}

/// The bounded log, oldest first.
#[derive(Debug)]
pub(crate) struct RequestLog {
    entries: VecDeque<Entry>,
    next_id: u64,
    capacity: usize,
}

impl RequestLog {
    /// A log keeping the last `capacity` requests (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            next_id: 0,
            capacity: capacity.max(1),
        }
    }

    fn push(&mut self, mut entry: Entry) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        entry.id = id;
        if self.entries.len() >= self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
        id
    }

    fn set_status(&mut self, id: u64, status: StatusCode) {
        if let Some(entry) = self.entries.iter_mut().rev().find(|e| e.id == id) {
            entry.status = Some(status.as_u16());
        }
    }

    fn set_done(&mut self, id: u64, at_ms: u64) {
        if let Some(entry) = self.entries.iter_mut().rev().find(|e| e.id == id) {
            entry.done_ms = Some(at_ms);
        }
    }

    fn set_dropped(&mut self, id: u64) {
        if let Some(entry) = self.entries.iter_mut().rev().find(|e| e.id == id) {
            entry.dropped = true;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    pub(crate) fn snapshot(&self) -> Vec<Entry> {
        self.entries.iter().cloned().collect()
    }
}

/// Records every request outside `/__sim`, then passes it on with its body intact.
pub(crate) async fn record(State(sim): State<Sim>, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/__sim") {
        return next.run(req).await;
    }
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let mut entry = Entry {
        id: 0,
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        status: None,
        dropped: false,
        headers: redacted_headers(&parts.headers),
        body: Value::Null,
        at_ms: unix_ms(),
        done_ms: None,
    };
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::debug!(method = %entry.method, path = %entry.path, %error, "sim request body refused");
            entry.status = Some(StatusCode::PAYLOAD_TOO_LARGE.as_u16());
            let id = lock(&sim.state().log).push(entry);
            return recorded(too_large(), sim, id);
        }
    };
    entry.body = summarize(&parts, &bytes).await;
    let (method, path) = (entry.method.clone(), entry.path.clone());
    let id = lock(&sim.state().log).push(entry);
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let dropped = response.extensions().get::<Dropped>().is_some();
    if dropped {
        lock(&sim.state().log).set_dropped(id);
    } else {
        lock(&sim.state().log).set_status(id, response.status());
    }
    tracing::debug!(
        %method,
        %path,
        status = response.status().as_u16(),
        dropped,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "sim request"
    );
    if dropped {
        response
    } else {
        recorded(response, sim, id)
    }
}

/// `response` with a body that writes `done_ms` into entry `id` when it is over.
fn recorded(response: Response, sim: Sim, id: u64) -> Response {
    response.map(|inner| {
        Body::new(Recorded {
            inner,
            _done: Done { sim, id },
        })
    })
}

/// Writes the entry's `done_ms` when dropped.
struct Done {
    sim: Sim,
    id: u64,
}

impl Drop for Done {
    fn drop(&mut self) {
        lock(&self.sim.state().log).set_done(self.id, unix_ms());
    }
}

/// An answer's body, unchanged, with the [`Done`] that outlives its last byte.
struct Recorded {
    inner: Body,
    _done: Done,
}

impl http_body::Body for Recorded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn too_large() -> Response {
    let body = json!({"error": {
        "message": "Request Entity Too Large",
        "type": "invalid_request_error",
        "code": "request_too_large",
    }});
    (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether a header's value must not be shown.
fn is_secret(name: &str) -> bool {
    matches!(
        name,
        "authorization" | "proxy-authorization" | "xi-api-key" | "cookie" | "set-cookie"
    ) || name.contains("key")
        || name.contains("token")
}

/// Headers by lowercase name; repeated headers joined with ", ".
pub(crate) fn redacted_headers(headers: &HeaderMap) -> Map<String, Value> {
    let mut out = Map::new();
    for name in headers.keys() {
        let name = name.as_str();
        let value = if is_secret(name) {
            "[redacted]".to_owned()
        } else {
            headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.insert(name.to_owned(), Value::String(value));
    }
    out
}

/// What the log shows of a body.
async fn summarize(parts: &Parts, bytes: &Bytes) -> Value {
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let size = json!({"size": bytes.len()});
    if content_type.starts_with("multipart/form-data") {
        return match form::parse(parts, bytes.clone()).await {
            Ok(form) => {
                let mut out = Map::new();
                for (name, value) in form.fields {
                    let shown = match value {
                        FieldValue::Text(text) => Value::String(text),
                        FieldValue::File(file) => json!({
                            "filename": file.filename,
                            "content_type": file.content_type,
                            "size": file.data.len(),
                        }),
                    };
                    out.insert(name, shown);
                }
                Value::Object(out)
            }
            Err(_) => size,
        };
    }
    if content_type.contains("json") {
        return serde_json::from_slice(bytes).unwrap_or(size);
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn redacts_secrets_only() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer s3cret"));
        headers.insert("xi-api-key", HeaderValue::from_static("s3cret"));
        headers.insert("x-session-token", HeaderValue::from_static("s3cret"));
        headers.insert("idempotency-key", HeaderValue::from_static("s3cret"));
        headers.insert("cookie", HeaderValue::from_static("a=b"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("accept", HeaderValue::from_static("a/b"));
        headers.append("accept", HeaderValue::from_static("c/d"));
        let shown = redacted_headers(&headers);
        for name in [
            "authorization",
            "xi-api-key",
            "x-session-token",
            "idempotency-key",
            "cookie",
        ] {
            assert_eq!(shown[name], "[redacted]", "{name}");
        }
        assert_eq!(shown["content-type"], "application/json");
        assert_eq!(shown["accept"], "a/b, c/d");
    }

    #[test]
    fn log_keeps_the_newest() {
        const CAPACITY: usize = crate::config::DEFAULT_LOG_CAPACITY;
        let mut log = RequestLog::new(CAPACITY);
        for i in 0..(CAPACITY + 5) {
            let id = log.push(Entry {
                id: 0,
                method: "GET".to_owned(),
                path: format!("/{i}"),
                query: None,
                status: None,
                dropped: false,
                headers: Map::new(),
                body: Value::Null,
                at_ms: 0,
                done_ms: None,
            });
            log.set_done(id, 7);
            log.set_status(id, StatusCode::OK);
        }
        let entries = log.snapshot();
        assert_eq!(entries.len(), CAPACITY);
        assert_eq!(entries[0].path, "/5");
        assert_eq!(entries[CAPACITY - 1].path, format!("/{}", CAPACITY + 4));
        assert!(entries.iter().all(|e| e.status == Some(200)));
        assert!(entries.iter().all(|e| e.done_ms == Some(7)));
    }
}
