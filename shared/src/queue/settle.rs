//! The layer that settles each task once its handler returned, for both
//! carriers: success acknowledges the message; an error is settled by the
//! carrier's [`RetryPolicy`](super::RetryPolicy) (retry later, or bury).
//!
//! A message is *held* from its fetch until its settlement was attempted,
//! on every path (a guard, not a call at each exit): while held, the
//! carrier's heartbeat keeps its claim fresh; once let go, a message whose
//! settlement failed (the carrier unreachable at that moment) or whose
//! handler unwound is no longer renewed, ages past the visibility timeout
//! and is reclaimed and run again instead of staying claimed for good.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use futures::future::BoxFuture;
use tower::{Layer, Service};

use super::QueueError;

/// What a carrier's backend does to settle its messages.
pub trait Carrier: Send + Sync + 'static {
    /// What each task carries about its message (in the task's data).
    type Meta: Send + Sync + 'static;

    /// The message's claim id (a stream entry id, a task id).
    fn claim(meta: &Self::Meta) -> &str;

    /// The messages this consumer holds.
    fn held(&self) -> &Held;

    /// Acknowledges a finished message.
    fn complete(&self, meta: &Self::Meta) -> BoxFuture<'_, Result<(), QueueError>>;

    /// Settles a failed attempt as the retry policy says.
    fn fail<'a>(
        &'a self,
        meta: &'a Self::Meta,
        error: &'a BoxDynError,
    ) -> BoxFuture<'a, Result<(), QueueError>>;
}

/// The claim ids a consumer holds (fetched, buffered or running), for its heartbeat.
#[derive(Debug, Default)]
pub struct Held(Mutex<HashSet<String>>);

impl Held {
    /// Starts holding `id`.
    pub fn hold(&self, id: &str) {
        if let Ok(mut set) = self.0.lock() {
            set.insert(id.to_owned());
        }
    }

    /// Lets `id` go.
    pub fn release(&self, id: &str) {
        if let Ok(mut set) = self.0.lock() {
            set.remove(id);
        }
    }

    /// The ids held now.
    #[must_use]
    pub fn snapshot(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Lets a message go when dropped: settled, failed to settle, or unwound.
struct Release<'a> {
    held: &'a Held,
    id: &'a str,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.held.release(self.id);
    }
}

/// See the module documentation.
pub struct AckLayer<C> {
    carrier: Arc<C>,
}

impl<C> AckLayer<C> {
    pub(crate) fn new(carrier: Arc<C>) -> Self {
        Self { carrier }
    }
}

impl<C> Clone for AckLayer<C> {
    fn clone(&self) -> Self {
        Self {
            carrier: self.carrier.clone(),
        }
    }
}

impl<S, C> Layer<S> for AckLayer<C> {
    type Service = AckService<S, C>;
    fn layer(&self, inner: S) -> AckService<S, C> {
        AckService {
            inner,
            carrier: self.carrier.clone(),
        }
    }
}

/// See [`AckLayer`].
pub struct AckService<S, C> {
    inner: S,
    carrier: Arc<C>,
}

impl<S: Clone, C> Clone for AckService<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            carrier: self.carrier.clone(),
        }
    }
}

impl<S, C, Args> Service<Task<Args>> for AckService<S, C>
where
    C: Carrier,
    S: Service<Task<Args>, Error = BoxDynError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<S::Response, BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxDynError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        let meta = task.ctx().data().get::<Arc<C::Meta>>().cloned();
        let carrier = self.carrier.clone();
        let fut = self.inner.call(task);
        Box::pin(async move {
            let _release = meta.as_deref().map(|meta| Release {
                held: carrier.held(),
                id: C::claim(meta),
            });
            let result = fut.await;
            if let Some(meta) = meta.as_deref() {
                let settled = match &result {
                    Ok(_) => carrier.complete(meta).await,
                    Err(e) => carrier.fail(meta, e).await,
                };
                if let Err(e) = settled {
                    // No longer held, the message ages out and is reclaimed
                    // and run again; stage checkpoints make that cheap.
                    tracing::warn!(claim = C::claim(meta), error = %e, "queue settle failed; the message will be reclaimed");
                }
            }
            result
        })
    }
}
