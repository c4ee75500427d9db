//! A dropped connection, as the `flaky` profile sends it.
//!
//! The answer is a response whose body stream fails at once. Hyper buffers
//! the head, polls the body, gets the error and closes the connection before
//! anything is flushed, so the client sees a transport error (for example
//! "connection closed before message completed") instead of an answer. The
//! nominal status is 500, so even a client that somehow read the head would
//! not see a success. The response carries a [`Dropped`] extension so the
//! recorder logs it as dropped rather than with that status.

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::Response;

/// Marks a response that drops its connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dropped;

/// A response that closes the connection without a complete answer.
pub(crate) fn dropped_connection() -> Response {
    let failure = futures::stream::once(async {
        Err::<Bytes, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "simulated dropped connection",
        ))
    });
    let mut response = Response::new(Body::from_stream(failure));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response.extensions_mut().insert(Dropped);
    response
}
