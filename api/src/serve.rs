//! The accept loop: HTTP/1.1 and HTTP/2 over cleartext (h2c, prior
//! knowledge) on each accepted connection, with time bounds a client cannot
//! stretch.
//!
//! `axum::serve` gives hyper no timer, so none of hyper's own timeouts runs:
//! a client could trickle a request head forever (the request timeout only
//! starts once the head is in) or park idle connections until the process
//! runs out of them. Here, with `bound` = `ROSE_HEADER_READ_TIMEOUT_SECS`:
//!
//! - an HTTP/1.1 request head must be in within `bound` of hyper starting to
//!   wait for it (when the connection opens, and after each answer on a
//!   kept-alive connection), else the connection is closed unanswered;
//! - a connection with no request in flight for `bound` is closed gracefully:
//!   one that never sends anything, a kept-alive HTTP/1.1 connection between
//!   requests, an HTTP/2 connection without an open stream. A request in
//!   flight is never cut by it — a long-poll or an event stream counts until
//!   its last byte is sent — the request timeout bounds those;
//! - on shutdown no connection is taken any more, the open ones finish their
//!   requests and close, and [`serve`] returns when all have.
//!
//! Every request carries [`ConnectInfo`] with the peer's address (the rate
//! limit reads it).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// Serves `app` on `listener` until `shutdown`, then drains the open
/// connections. `bound` is the longest a request head may take to arrive and
/// the longest a connection may stay open with no request in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    bound: Duration,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(bound);
    // Pings find HTTP/2 peers that went away without closing.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(bound)
        .keep_alive_timeout(bound);
    let builder = Arc::new(builder);
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                connections.spawn(connection(
                    Arc::clone(&builder),
                    stream,
                    peer,
                    app.clone(),
                    bound,
                    shutdown.clone(),
                ));
            }
            // The peer gave up between SYN and accept: nothing to do.
            Err(e) if is_connection_error(&e) => {}
            // Out of file descriptors and the like: wait instead of spinning.
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection until it ends, closing it gracefully on shutdown or
/// when it has had no request in flight for `bound`.
async fn connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    bound: Duration,
    shutdown: CancellationToken,
) {
    let activity = Arc::new(Activity::default());
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let in_flight = InFlight::begin(&activity);
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(Body::new)).await?;
                Ok::<_, Infallible>(response.map(|body| Tracked {
                    body,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    let mut conn = pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), service));
    let mut stop = pin!(shutdown.cancelled());
    let mut idle = pin!(activity.idle_for(bound));
    let mut closing = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "connection closed with an error");
                }
                return;
            }
            () = &mut stop, if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = &mut idle, if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The requests of one connection in flight: from their head's arrival to
/// the last byte of their answer.
#[derive(Debug, Default)]
struct Activity {
    in_flight: AtomicUsize,
    changed: Notify,
}

impl Activity {
    /// Returns once the connection has had no request in flight for `bound`.
    async fn idle_for(&self, bound: Duration) {
        loop {
            let changed = self.changed.notified();
            let mut changed = pin!(changed);
            // Registered before the count is read, so no change slips between.
            changed.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) > 0 {
                changed.await;
            } else if tokio::time::timeout(bound, changed).await.is_err() {
                return;
            }
        }
    }
}

/// One request in flight, until dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.changed.notify_waiters();
        Self(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// An answer's body, holding its request in flight until hyper has sent
/// (or dropped) it.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
